//! Standard samplers and the labelling of what they draw.
//!
//! - sampler `temperature`: temperature / top-k / top-p, `n` completions per prompt, in calls
//!   of `batch` sequences;
//! - sampler `budget`: a compute budget per prompt, in FLOPs (`2 · parameters · generated
//!   tokens`) or in generated tokens, that decides `n` per prompt: completions are drawn one
//!   per prompt at a time until each prompt's spending reaches the budget (so it overshoots by
//!   less than one completion), and the spending is reported;
//! - [`label`]: completions checked by the task, as [`Candidate`]s.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Completion, Policy, SamplingParams};
use crate::progress::ProgressBar;
use crate::registry::ConfigError;
use crate::sampler::{Sampled, Sampler};
use crate::tasks::{TextProblem, TextTask};
use crate::verifier::Candidate;

/// The distribution a completion is drawn from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TemperatureConfig {
    /// Softmax temperature; `0` is greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Completions per prompt.
    pub n: usize,
    /// Most tokens generated after the prompt.
    pub max_new_tokens: usize,
    /// Sequences generated per call of the policy (`batch / n` prompts at a time).
    pub batch: usize,
    /// Stop when a completion ends with one of these strings.
    pub stop: Vec<String>,
}

impl Default for TemperatureConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            n: 1,
            max_new_tokens: 64,
            batch: 256,
            stop: Vec::new(),
        }
    }
}

impl TemperatureConfig {
    /// Errors naming the field when the settings cannot sample.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params(self.n, 0).validate()?;
        if self.max_new_tokens == 0 {
            return Err(ConfigError::field("max_new_tokens", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(ConfigError::field("batch", "must be at least 1"));
        }
        Ok(())
    }

    fn params(&self, n: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            n,
            stop: self.stop.clone(),
            seed,
        }
    }
}

/// Sampler `temperature`.
#[derive(Clone, Debug)]
pub struct TemperatureSampler {
    pub config: TemperatureConfig,
}

/// FLOPs of generating `tokens` tokens with a model of `params` parameters: `2 · P · tokens`.
pub fn sampling_flops(params: usize, tokens: u64) -> f64 {
    2.0 * params as f64 * tokens as f64
}

/// Samples per problem that spend, with a model of `params` parameters writing `tokens`
/// tokens per sample on average, what `reference_samples` samples of a model of
/// `reference_params` parameters writing `reference_tokens` spend: compute matching
/// (Bansal et al. 2024), `S = S_ref · P_ref · W_ref / (P · W)` rounded to the nearest whole
/// sample, at least 1. With `W = W_ref` it is the paper's `S_WC = (P_SE / P_WC) · S_SE`.
pub fn compute_matched_samples(
    reference_samples: usize,
    reference_params: usize,
    reference_tokens: f64,
    params: usize,
    tokens: f64,
) -> usize {
    let reference = reference_samples as f64 * reference_params as f64 * reference_tokens;
    let per_sample = params as f64 * tokens;
    if per_sample.is_nan() || per_sample <= 0.0 || !reference.is_finite() {
        return reference_samples.max(1);
    }
    ((reference / per_sample).round() as usize).max(1)
}

impl Sampler for TemperatureSampler {
    /// Calls of `batch / n` prompts; call `c` draws with seed `seed + c`.
    fn sample(
        &self,
        policy: &dyn Policy,
        prompts: &[String],
        seed: u64,
        pb: &ProgressBar,
    ) -> anyhow::Result<Sampled> {
        let n = self.config.n;
        let per_call = (self.config.batch / n).max(1);
        let mut out = Sampled::default();
        for (c, chunk) in prompts.chunks(per_call).enumerate() {
            let params = self.config.params(n, seed.wrapping_add(c as u64));
            let got = policy.generate(chunk, &params)?;
            out.add(got, policy.num_params());
            pb.inc(chunk.len() as u64);
        }
        Ok(out)
    }

    fn temperature(&self) -> f32 {
        self.config.temperature
    }

    fn n(&self) -> Option<usize> {
        Some(self.config.n)
    }

    fn max_new_tokens(&self) -> usize {
        self.config.max_new_tokens
    }

    fn scaled(&self, times: usize) -> Box<dyn Sampler> {
        let mut config = self.config.clone();
        config.n *= times.max(1);
        Box::new(TemperatureSampler { config })
    }
}

crate::register_component! {
    kind: Sampler,
    name: "temperature",
    description: "n completions per prompt at a temperature (top-k, top-p, stop strings)",
    config: TemperatureConfig,
    build: |config: TemperatureConfig, _ctx| {
        config.validate()?;
        Ok(Box::new(TemperatureSampler { config }) as Box<dyn Sampler>)
    },
}

/// A compute budget per prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// How completions are drawn (`n` is ignored: the budget decides it).
    pub sampling: TemperatureConfig,
    /// FLOPs per prompt (`2 · parameters · generated tokens`); exclusive with `tokens`.
    pub flops: Option<f64>,
    /// Generated tokens per prompt; exclusive with `flops`.
    pub tokens: Option<u64>,
    /// Completions per prompt at most, whatever the budget.
    pub max_samples: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            sampling: TemperatureConfig::default(),
            flops: None,
            tokens: Some(1024),
            max_samples: 1024,
        }
    }
}

/// Sampler `budget`.
#[derive(Clone, Debug)]
pub struct BudgetSampler {
    pub config: BudgetConfig,
}

impl BudgetSampler {
    /// The cost of a completion of `tokens` tokens, in the budget's unit.
    fn cost(&self, params: usize, tokens: usize) -> f64 {
        match self.config.flops {
            Some(_) => sampling_flops(params, tokens as u64),
            None => tokens as f64,
        }
    }

    fn budget(&self) -> f64 {
        self.config
            .flops
            .or(self.config.tokens.map(|t| t as f64))
            .unwrap_or(0.0)
    }
}

impl Sampler for BudgetSampler {
    /// Waves of one completion per prompt whose spending is still below the budget; wave `w`
    /// draws with seeds from `seed + w · 1_000_003` (one per call of `batch` prompts).
    fn sample(
        &self,
        policy: &dyn Policy,
        prompts: &[String],
        seed: u64,
        pb: &ProgressBar,
    ) -> anyhow::Result<Sampled> {
        let params = policy.num_params();
        let budget = self.budget();
        let mut spent = vec![0.0f64; prompts.len()];
        let mut out = Sampled {
            completions: vec![Vec::new(); prompts.len()],
            ..Default::default()
        };
        let per_call = self.config.sampling.batch.max(1);
        for wave in 0..self.config.max_samples.max(1) {
            let open: Vec<usize> = (0..prompts.len()).filter(|&i| spent[i] < budget).collect();
            if open.is_empty() {
                break;
            }
            let wave_seed = seed.wrapping_add((wave as u64).wrapping_mul(1_000_003));
            for (c, idx) in open.chunks(per_call).enumerate() {
                let chunk: Vec<String> = idx.iter().map(|&i| prompts[i].clone()).collect();
                let p = self
                    .config
                    .sampling
                    .params(1, wave_seed.wrapping_add(c as u64));
                for (&i, mut got) in idx.iter().zip(policy.generate(&chunk, &p)?) {
                    for comp in got.drain(..) {
                        spent[i] += self.cost(params, comp.token_ids.len());
                        out.tokens += comp.token_ids.len() as u64;
                        out.completions[i].push(comp);
                    }
                }
            }
            pb.inc(open.len() as u64);
        }
        out.flops = sampling_flops(params, out.tokens);
        Ok(out)
    }

    fn temperature(&self) -> f32 {
        self.config.sampling.temperature
    }

    fn n(&self) -> Option<usize> {
        None
    }

    fn max_new_tokens(&self) -> usize {
        self.config.sampling.max_new_tokens
    }

    fn scaled(&self, times: usize) -> Box<dyn Sampler> {
        let mut config = self.config.clone();
        let t = times.max(1);
        config.flops = config.flops.map(|f| f * t as f64);
        config.tokens = config.tokens.map(|x| x * t as u64);
        config.max_samples *= t;
        Box::new(BudgetSampler { config })
    }
}

crate::register_component! {
    kind: Sampler,
    name: "budget",
    description: "completions per prompt until a compute budget (FLOPs = 2·params·tokens, or tokens) is spent",
    config: BudgetConfig,
    build: |config: BudgetConfig, _ctx| {
        config.sampling.validate().map_err(|e| e.within("sampling"))?;
        match (config.flops, config.tokens) {
            (Some(f), None) if f.is_finite() && f > 0.0 => {}
            (None, Some(t)) if t > 0 => {}
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::field("flops", "give exactly one of `flops` and `tokens`").into())
            }
            _ => return Err(ConfigError::field("flops", "the budget must be positive").into()),
        }
        if config.max_samples == 0 {
            return Err(ConfigError::field("max_samples", "must be at least 1").into());
        }
        Ok(Box::new(BudgetSampler { config }) as Box<dyn Sampler>)
    },
}

/// The completions of `problems` (one list per problem, in order), checked by `task`: one
/// [`Candidate`] each, problem by problem.
pub fn label(
    task: &TextTask,
    problems: &[TextProblem],
    sampled: Vec<Vec<Completion>>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, (p, comps)) in problems.iter().zip(sampled).enumerate() {
        for completion in comps {
            out.push(Candidate {
                problem: i,
                correct: task.check(p, &completion.text),
                answer: task.answer(&completion.text),
                completion,
            });
        }
    }
    out
}

/// The prompts of `problems`, as the policy sees them.
pub fn prompts(problems: &[TextProblem]) -> Vec<String> {
    problems.iter().map(crate::tasks::prompt_text).collect()
}

/// Draws from `sampler` for `problems` and labels the draws with `task`: the sampling loop of
/// every method that learns from or ranks its own samples.
pub fn sample_candidates(
    sampler: &dyn Sampler,
    policy: &dyn Policy,
    task: &TextTask,
    problems: &[TextProblem],
    seed: u64,
    pb: &ProgressBar,
) -> anyhow::Result<(Vec<Candidate>, Sampled)> {
    let mut sampled = sampler.sample(policy, &prompts(problems), seed, pb)?;
    let completions = std::mem::take(&mut sampled.completions);
    Ok((label(task, problems, completions), sampled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::tokenizer::{CharTokenizer, Tokenizer};
    use crate::policy::{Sequence, SequenceLogProbs};

    /// Answers every prompt with `len` copies of "a", spending `len` tokens.
    struct Fixed {
        tok: Tokenizer,
        len: usize,
        calls: std::sync::Mutex<Vec<(usize, u64)>>,
    }

    impl Policy for Fixed {
        fn tokenizer(&self) -> &Tokenizer {
            &self.tok
        }
        fn num_params(&self) -> usize {
            1000
        }
        fn generate(
            &self,
            prompts: &[String],
            p: &SamplingParams,
        ) -> anyhow::Result<Vec<Vec<Completion>>> {
            self.calls.lock().unwrap().push((prompts.len(), p.seed));
            Ok(prompts
                .iter()
                .map(|_| {
                    (0..p.n)
                        .map(|_| Completion {
                            prompt: vec![1],
                            token_ids: vec![4; self.len],
                            text: "a".repeat(self.len),
                            logprobs: vec![0.0; self.len],
                            finished: true,
                        })
                        .collect()
                })
                .collect())
        }
        fn log_probs(&self, _: &[Sequence], _: f32) -> anyhow::Result<SequenceLogProbs> {
            anyhow::bail!("not needed")
        }
    }

    fn fixed(len: usize) -> Fixed {
        Fixed {
            tok: Tokenizer::Char(CharTokenizer::new("a")),
            len,
            calls: Default::default(),
        }
    }

    proptest::proptest! {
        /// S · P · W of the matched side equals the reference's up to rounding (half a
        /// sample), and equal token counts give the paper's `(P_SE / P_WC) · S_SE`.
        #[test]
        fn compute_matched_samples_spend_the_reference_compute(
            s_ref in 1usize..64,
            p_ref in 1_000usize..10_000_000,
            w_ref in 1.0f64..500.0,
            p in 1_000usize..10_000_000,
            w in 1.0f64..500.0,
        ) {
            let s = compute_matched_samples(s_ref, p_ref, w_ref, p, w);
            let (spent, reference) = (s as f64 * p as f64 * w, s_ref as f64 * p_ref as f64 * w_ref);
            let one = p as f64 * w;
            proptest::prop_assert!(
                (spent - reference).abs() <= one / 2.0 + 1e-6 * reference || (s == 1 && reference < one),
                "{s} samples spend {spent}, the reference {reference}"
            );
            let paper = compute_matched_samples(s_ref, 3 * p, w, p, w);
            proptest::prop_assert_eq!(paper, 3 * s_ref);
        }
    }

    #[test]
    fn temperature_sampler_calls_in_batches_with_consecutive_seeds() {
        let s = TemperatureSampler {
            config: TemperatureConfig {
                n: 4,
                batch: 8,
                ..Default::default()
            },
        };
        let policy = fixed(3);
        let prompts: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let out = s
            .sample(&policy, &prompts, 100, &ProgressBar::hidden())
            .unwrap();
        assert_eq!(
            *policy.calls.lock().unwrap(),
            vec![(2, 100), (2, 101), (1, 102)]
        );
        assert_eq!(
            out.completions.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4; 5]
        );
        assert_eq!(out.tokens, 5 * 4 * 3);
        assert_eq!(out.flops, 2.0 * 1000.0 * 60.0);
        assert_eq!(s.scaled(3).n(), Some(12));
    }

    #[test]
    fn budget_sampler_spends_until_the_budget_and_overshoots_by_less_than_one_sample() {
        for (len, tokens) in [(3usize, 10u64), (5, 5), (4, 1)] {
            let s = BudgetSampler {
                config: BudgetConfig {
                    tokens: Some(tokens),
                    ..Default::default()
                },
            };
            let out = s
                .sample(
                    &fixed(len),
                    &["x".into(), "y".into()],
                    0,
                    &ProgressBar::hidden(),
                )
                .unwrap();
            for c in &out.completions {
                let spent = (c.len() * len) as u64;
                assert!(
                    spent >= tokens && spent - (len as u64) < tokens,
                    "len {len}: {spent} for {tokens}"
                );
            }
        }
        // A FLOPs budget buys samples in inverse proportion to the model's size (here 1000
        // parameters × 4 tokens = 8000 FLOPs a sample).
        let s = BudgetSampler {
            config: BudgetConfig {
                flops: Some(24_000.0),
                tokens: None,
                ..Default::default()
            },
        };
        let out = s
            .sample(&fixed(4), &["x".into()], 0, &ProgressBar::hidden())
            .unwrap();
        assert_eq!(out.completions[0].len(), 3);
        assert_eq!(out.flops, 24_000.0);
    }
}
