//! # lmlab-sdk
//!
//! The SDK every lmlab method plugin is written against:
//!
//! - the core traits: [`Task`], [`Policy`], [`RewardModel`], [`Verifier`], [`Sampler`],
//!   [`Objective`] and [`Scheduler`];
//! - the [`registry`] through which plugins register components (statically with
//!   [`register_component!`], or from a `cdylib` loaded at run time, see [`dynamic`]);
//! - the [`recipe`] runner: parse a recipe, apply `--set` overrides, build components, run;
//! - [`run`] directories (`runs/<recipe>/<time>/`: resolved config, `metrics.jsonl`, summary);
//! - the generic [`train`] machinery (AdamW, schedules, clipping, atomic checkpoints, resume)
//!   and the one [`fit`] loop every trainer uses;
//! - what methods share: [`sampling`] (samplers and labelling), [`verifiers`] and
//!   [`reward_models`] (fixed and fitted), [`rl`] (rollouts, the learner, RL methods by name),
//!   [`eval`] (pass@k, Best-of-k, majority, AUROC), [`experiment`] (seeds × grids, resume per
//!   unit) and [`report`] (tables, claims and verdicts);
//! - standard [`components`] shared by every plugin.
//!
//! Tensors are burn 0.22 tensors: the [`Device`](burn::tensor::Device) picks the backend at run
//! time, so every component is written once for the CPU default (`flex`) and libtorch (`tch`).

pub mod cli;
pub mod components;
pub mod device;
pub mod dynamic;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod fit;
pub mod lm;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod pipeline;
pub mod plot;
pub mod policy;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod reward;
pub mod reward_models;
pub mod rl;
pub mod rng;
pub mod run;
pub mod sampler;
pub mod sampling;
pub mod scheduler;
pub mod schema;
pub mod stages;
pub mod task;
pub mod tasks;
pub mod tensor_map;
pub mod train;
pub mod verifier;
pub mod verifiers;

pub use error::{Error, Result};
pub use objective::{LossOutput, Objective};
pub use policy::{Completion, Policy, PolicyInit, SamplingParams, Sequence, SequenceLogProbs};
pub use registry::{Built, Components, Kind, Role};
pub use reward::{RewardModel, RewardSpec};
pub use sampler::Sampler;
pub use scheduler::{RunContext, Scheduler};
pub use task::{Split, Task};
pub use tensor_map::TensorMap;
pub use verifier::{Candidate, Verifier, VerifierSpec};

/// The shared data folder: `LMLAB_DATA_DIR`, default `../shared/data`.
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("LMLAB_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("../shared/data"))
}

/// Whether missing shared data is an error (`LMLAB_REQUIRE_DATA=1`, as CI sets it) rather
/// than a skip with a printed reason (a user's fresh clone has no `../shared`).
pub fn data_required() -> bool {
    std::env::var("LMLAB_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

/// `Ok` when `path` exists; otherwise an error under [`data_required`], else a printed
/// `SKIPPED:` line with `how` (how to get the file) and `Ok(false)`.
pub fn require_data(path: &std::path::Path, how: &str) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(true);
    }
    anyhow::ensure!(
        !data_required(),
        "{} is absent and LMLAB_REQUIRE_DATA=1 ({how})",
        path.display()
    );
    println!("SKIPPED: {} is absent ({how})", path.display());
    Ok(false)
}

// Re-exported so plugins use the exact versions the SDK was built with.
pub use anyhow;
pub use burn;
pub use inventory;
pub use schemars;
pub use serde;
pub use serde_json;
pub use toml;
pub use tracing;
