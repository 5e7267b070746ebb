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
//! - scheduler `supervised`: minibatch training of an MLP regressor (linear when it has no
//!   hidden layers) through any objective, with evaluation, checkpoints and resume.

pub mod cross_entropy;
pub mod dpo;
pub mod lm_sft;
pub mod mse;
pub mod regression;
pub mod rl;
pub mod sft;
pub mod supervised;
