//! A `cargo` command without the variables cargo sets for a crate it runs. Shared through
//! `#[path]` by xtask and the tests that start cargo themselves.

use std::process::Command;

/// Whether `name` is one of the variables cargo sets for a crate it runs (`cargo xtask` runs
/// xtask; a test inherits its own). Build scripts that read them through `cc` (ring,
/// torch-sys) rerun when one changes, so a cargo started with them set rebuilds the
/// dependency stack: the test suite is built, and builds, without them.
pub fn is_crate_env(name: &str) -> bool {
    const SET_BY_CARGO: [&str; 7] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    SET_BY_CARGO.iter().any(|p| name.starts_with(p))
}

/// `$CARGO` (or `cargo`) without [`is_crate_env`]'s variables.
pub fn cargo_cmd() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(is_crate_env) {
            cmd.env_remove(k);
        }
    }
    cmd
}
