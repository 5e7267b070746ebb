//! `cargo xtask plugin new NAME`: a plugin crate that builds, registers one component, and has
//! a passing test; linked into the umbrella crate so recipes can use it.

use std::path::Path;

use anyhow::{Context, bail};

const CARGO_TOML: &str = r#"[package]
name = "lmlab-plugin-{name}"
description = "lmlab plugin `{name}`"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true

[lib]
# Add "cdylib" to load this plugin at run time with `lmlab --plugin` (see CONTRIBUTING.md).
crate-type = ["rlib"]

[dependencies]
lmlab-sdk.workspace = true
anyhow.workspace = true
serde.workspace = true
schemars.workspace = true
"#;

/// The plugin a scaffold starts from: CONTRIBUTING.md's example verifier, renamed.
const LIB_RS: &str = include_str!("../../plugins/weakest-token/src/lib.rs");
const TEST_RS: &str = include_str!("../../plugins/weakest-token/tests/verifier.rs");

/// The example with `name` in place of `weakest-token`.
fn renamed(text: &str, name: &str) -> String {
    text.replace("weakest-token", name)
        .replace("weakest_token", &name.replace('-', "_"))
}

/// Markers in the umbrella crate where bundled plugins are listed.
const DEP_MARKER: &str = "# bundled plugins (cargo xtask plugin new adds here)";
const USE_MARKER: &str = "// bundled plugins (cargo xtask plugin new adds here)";

pub fn new_plugin(root: &Path, name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin names are lowercase letters, digits and `-`, starting with a letter (got `{name}`)"
        );
    }
    let dir = root.join("plugins").join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::write(dir.join("Cargo.toml"), CARGO_TOML.replace("{name}", name))?;
    std::fs::write(dir.join("src/lib.rs"), renamed(LIB_RS, name))?;
    std::fs::write(dir.join("tests/verifier.rs"), renamed(TEST_RS, name))?;

    // Link it into the umbrella crate so the runner knows it.
    let crate_name = format!("lmlab-plugin-{name}");
    let manifest = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    let text = text.replacen(
        DEP_MARKER,
        &format!("{DEP_MARKER}\n{crate_name} = {{ path = \"plugins/{name}\" }}"),
        1,
    );
    if !text.contains(&crate_name) {
        bail!("{} lacks the line `{DEP_MARKER}`", manifest.display());
    }
    std::fs::write(&manifest, text)?;
    let lib = root.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).context("reading src/lib.rs")?;
    let ident = crate_name.replace('-', "_");
    let text = text.replacen(USE_MARKER, &format!("{USE_MARKER}\npub use {ident};"), 1);
    if !text.contains(&ident) {
        bail!("{} lacks the line `{USE_MARKER}`", lib.display());
    }
    std::fs::write(&lib, text)?;
    println!(
        "created {} (crate {crate_name}), linked into the lmlab runner.\n\
         next: cargo test -p {crate_name}; then see CONTRIBUTING.md",
        dir.display()
    );
    Ok(())
}
