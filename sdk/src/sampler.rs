//! The [`Sampler`] trait.

use crate::{Completion, Policy};

/// How candidates are drawn from a policy: temperature/top-p/top-k, `n` per prompt, a
/// compute-matched budget, or a selection rule (best-of-N, majority vote) on top.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Completion, Policy, Sampler, SamplingParams};
///
/// /// Draws `n` samples at a fixed temperature, with a seed per call.
/// struct Fixed { n: usize, temperature: f32 }
///
/// impl Sampler for Fixed {
///     fn sample(&self, policy: &mut dyn Policy, prompts: &[String], seed: u64)
///         -> anyhow::Result<Vec<Vec<Completion>>> {
///         let params = SamplingParams { n: self.n, temperature: self.temperature, seed,
///                                       ..Default::default() };
///         policy.generate(prompts, &params)
///     }
/// }
/// # let _ = Fixed { n: 4, temperature: 0.7 };
/// ```
pub trait Sampler: Send + Sync {
    /// Candidates for each prompt, in prompt order, drawn with `seed`.
    fn sample(
        &self,
        policy: &mut dyn Policy,
        prompts: &[String],
        seed: u64,
    ) -> anyhow::Result<Vec<Vec<Completion>>>;
}
