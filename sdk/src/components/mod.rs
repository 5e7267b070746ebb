//! Standard components shared by every plugin, registered like any plugin's.
//!
//! - task `linear-regression`: generated `y = w·x + b + noise` data, with the closed-form
//!   least-squares optimum to compare against;
//! - objective `mse`: mean squared error;
//! - objective `cross-entropy`: multi-class classification from logits;
//! - objectives `dpo` (Direct Preference Optimisation) and `bce` (binary cross-entropy on
//!   logits);
//! - objectives `ppo`, `clipped-value`, `rloo` and `bradley-terry`, with the RLHF functions
//!   around them (online-DPO pairing, KL-penalised rewards, GAE, whitening, RLOO advantages);
//! - objective `sft`: the masked NLL of response tokens;
//! - scheduler `supervised`: minibatch training of an MLP regressor (linear when it has no
//!   hidden layers) through any objective, with evaluation, checkpoints and resume;
//! - scheduler `sft`: fine-tuning of the recipe's `[policy]` on a text task's solutions, pass@1
//!   by the `[sampler]`.
//!
//! The other standard components live with what they share: policies in
//! [`crate::lm::policy`], samplers in [`crate::sampling`], verifiers in [`crate::verifiers`],
//! reward models in [`crate::reward_models`], RL methods in [`crate::rl::methods`].

pub mod best_of_n;
pub mod cross_entropy;
pub mod dpo;
pub mod lm_sft;
pub mod mse;
pub mod regression;
pub mod rl;
pub mod sft;
pub mod supervised;
