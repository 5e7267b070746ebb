//! The [`Sampler`] trait: how candidates are drawn from a policy.

use crate::policy::{Completion, Policy};
use crate::progress::ProgressBar;

/// What a sampler drew and what it cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampled {
    /// The completions of each prompt, in prompt order.
    pub completions: Vec<Vec<Completion>>,
    /// Tokens generated.
    pub tokens: u64,
    /// Sampling FLOPs: `2 · parameters · tokens`.
    pub flops: f64,
}

impl Sampled {
    /// Appends the completions of more prompts, drawn by a policy of `params` parameters.
    pub fn add(&mut self, completions: Vec<Vec<Completion>>, params: usize) {
        let tokens: u64 = completions
            .iter()
            .flatten()
            .map(|c| c.token_ids.len() as u64)
            .sum();
        self.tokens += tokens;
        self.flops += crate::sampling::sampling_flops(params, tokens);
        self.completions.extend(completions);
    }
}

/// How candidates are drawn from a policy: temperature / top-k / top-p and `n` per prompt, or a
/// compute budget that decides `n`. Samplers are recipe components (`[sampler]`,
/// `[test_sampler]`, …), so a recipe swaps them by editing TOML; see
/// [`crate::sampling`] for the standard ones.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Policy, Sampler, SamplingParams};
/// use lmlab_sdk::sampler::Sampled;
/// use lmlab_sdk::progress::ProgressBar;
///
/// /// Greedy decoding, one completion per prompt.
/// struct Greedy { max_new_tokens: usize }
///
/// impl Sampler for Greedy {
///     fn sample(&self, policy: &dyn Policy, prompts: &[String], seed: u64, pb: &ProgressBar)
///         -> anyhow::Result<Sampled> {
///         let params = SamplingParams { temperature: 0.0, n: 1, seed,
///                                       max_new_tokens: self.max_new_tokens, ..Default::default() };
///         let mut out = Sampled::default();
///         out.add(policy.generate(prompts, &params)?, policy.num_params());
///         pb.inc(prompts.len() as u64);
///         Ok(out)
///     }
///     fn temperature(&self) -> f32 { 1.0 }
///     fn n(&self) -> Option<usize> { Some(1) }
///     fn max_new_tokens(&self) -> usize { self.max_new_tokens }
///     fn scaled(&self, _times: usize) -> Box<dyn Sampler> { Box::new(Greedy { ..*self }) }
/// }
/// # let _ = Greedy { max_new_tokens: 8 };
/// ```
pub trait Sampler: Send + Sync {
    /// Candidates for each prompt, in prompt order, drawn with `seed`; advances `pb` by one per
    /// prompt done.
    fn sample(
        &self,
        policy: &dyn Policy,
        prompts: &[String],
        seed: u64,
        pb: &ProgressBar,
    ) -> anyhow::Result<Sampled>;

    /// The temperature its log-probabilities are under (what a learner scores with).
    fn temperature(&self) -> f32;

    /// Completions per prompt when fixed (`None`: decided per prompt, e.g. by a budget).
    fn n(&self) -> Option<usize>;

    /// The most tokens a completion has.
    fn max_new_tokens(&self) -> usize;

    /// The same sampler drawing `times` as many completions per prompt (or with `times` the
    /// budget), in calls of the same size.
    fn scaled(&self, times: usize) -> Box<dyn Sampler>;
}
