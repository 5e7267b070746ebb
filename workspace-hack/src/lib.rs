//! No code. Cargo unifies a dependency's features over what one build needs: `cargo test`
//! of the whole workspace builds the dev-dependencies too (criterion, jsonschema, proptest,
//! tempfile), and they turn on features (`serde_json/float_roundtrip`, `memchr/default`, …)
//! that a build of one test target or of the binary alone does not. Every such difference
//! gives the crates below them (the whole burn stack) a second set of hashes, so building a
//! single target after the test suite compiled most of the stack again (the scaffold test,
//! `cargo xtask plugin new`, a `cargo run` after `cargo test`). Depending on this crate turns
//! those features on for every build: one set of artefacts.
//!
//! The same idea as cargo-hakari's workspace-hack crates, kept by hand:
//! `xtask/tests/workspace_hack.rs` checks it with `cargo tree`.
