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

const LIB_RS: &str = r#"//! lmlab plugin `{name}`.
//!
//! It registers one component, the reward model `{name}`: a programmatic reward that prefers
//! responses of a target length. Replace it with your method's components (see
//! CONTRIBUTING.md): one trait implementation, a config struct, and a `register_component!`.

use lmlab_sdk::RewardModel;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of `{name}`: what a recipe's table may set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The preferred response length, in characters.
    pub target_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { target_len: 20 }
    }
}

/// Reward `−|len(response) − target_len| / target_len`: 0 at the target length, lower away
/// from it.
pub struct LengthReward {
    config: Config,
}

impl RewardModel for LengthReward {
    fn rewards(&self, _prompts: &[String], responses: &[String]) -> anyhow::Result<Vec<f32>> {
        let target = self.config.target_len.max(1) as f32;
        Ok(responses
            .iter()
            .map(|r| -((r.chars().count() as f32 - target).abs()) / target)
            .collect())
    }
}

lmlab_sdk::register_component! {
    kind: RewardModel,
    name: "{name}",
    description: "prefers responses of a target length (scaffolded example)",
    config: Config,
    build: |config: Config, _ctx| Ok(Box::new(LengthReward { config }) as Box<dyn RewardModel>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmlab_sdk::registry::{self, BuildContext, Kind};

    #[test]
    fn builds_from_the_registry_and_rewards_the_target_length() {
        let factory = registry::find(Kind::RewardModel, "{name}").expect("registered");
        let table: lmlab_sdk::toml::Table = lmlab_sdk::toml::from_str("target_len = 4").unwrap();
        let device = lmlab_sdk::burn::tensor::Device::flex();
        let ctx = BuildContext { device: &device, seed: 0, role: "reward_model" };
        let built = (factory.build)(&table, &ctx).unwrap();
        let rm: Box<dyn RewardModel> = built.downcast().ok().expect("a reward model");
        let r = rm
            .rewards(&["p".into(), "p".into()], &["abcd".into(), "abcdefgh".into()])
            .unwrap();
        assert_eq!(r, vec![0.0, -1.0]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let factory = registry::find(Kind::RewardModel, "{name}").unwrap();
        let table: lmlab_sdk::toml::Table = lmlab_sdk::toml::from_str("target_lenn = 4").unwrap();
        let device = lmlab_sdk::burn::tensor::Device::flex();
        let ctx = BuildContext { device: &device, seed: 0, role: "reward_model" };
        let err = (factory.build)(&table, &ctx).err().expect("refused");
        assert!(err.to_string().contains("target_lenn"), "{err}");
    }
}
"#;

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
    std::fs::write(dir.join("Cargo.toml"), CARGO_TOML.replace("{name}", name))?;
    std::fs::write(dir.join("src/lib.rs"), LIB_RS.replace("{name}", name))?;

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
