//! `lmlab`: the recipe runner with every bundled plugin linked in.

// Keep the umbrella library (and through it every bundled plugin's registrations) linked.
use lmlab as _;

fn main() -> std::process::ExitCode {
    lmlab::sdk::cli::main()
}
