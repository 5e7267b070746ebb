//! The [`Policy`] trait: a language model you can sample from and score.

use burn::tensor::Tensor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to sample: the same knobs for every policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (none: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (none: all).
    pub top_p: Option<f32>,
    /// Most tokens generated after the prompt.
    pub max_new_tokens: usize,
    /// Samples per prompt.
    pub n: usize,
    /// Stop when the completion ends with one of these strings (kept in the text).
    pub stop: Vec<String>,
    /// Seed of the sampling random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            max_new_tokens: 64,
            n: 1,
            stop: Vec::new(),
            seed: 0,
        }
    }
}

/// One sampled completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Generated token ids (prompt excluded).
    pub token_ids: Vec<u32>,
    /// The decoded text of `token_ids`.
    pub text: String,
    /// log p(token) under the sampling distribution (logits / temperature), one per token.
    pub logprobs: Vec<f32>,
    /// Whether generation stopped on EOS or a stop string (not on the length limit).
    pub finished: bool,
}

/// Per-token and summed log-probabilities of responses given prompts, differentiable when the
/// policy is trainable.
#[derive(Clone, Debug)]
pub struct SequenceLogProbs {
    /// `[batch, positions]` log p(token), zero where `mask` is zero. Positions are the
    /// policy's choice (all of prompt + response for [`LmPolicy`](crate::lm::policy::LmPolicy),
    /// just the response for others): only masked-in entries mean anything.
    pub token_logprobs: Tensor<2>,
    /// `[batch, positions]` 1 for response tokens, 0 for prompt and padding.
    pub mask: Tensor<2>,
    /// `[batch]` the sum over response tokens.
    pub sum: Tensor<1>,
}

/// A language model you can sample from and score: two verbs, as small as lm-eval's.
///
/// Temperature is applied the same way in both: [`log_probs`](Self::log_probs) with the
/// sampling temperature recomputes (within float error) the `logprobs` that
/// [`generate`](Self::generate) returned.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Completion, Policy, SamplingParams, SequenceLogProbs};
/// use lmlab_sdk::burn::tensor::{Device, Tensor, TensorData};
///
/// /// Answers every prompt with "a" or "b", each with probability 1/2.
/// struct CoinFlip;
///
/// impl Policy for CoinFlip {
///     fn generate(&mut self, prompts: &[String], p: &SamplingParams)
///         -> anyhow::Result<Vec<Vec<Completion>>> {
///         Ok(prompts.iter().map(|_| (0..p.n as u64).map(|i| {
///             let tok = ((p.seed + i) % 2) as u32;
///             Completion { token_ids: vec![tok], text: ["a", "b"][tok as usize].into(),
///                          logprobs: vec![0.5f32.ln()], finished: true }
///         }).collect()).collect())
///     }
///     fn log_probs(&self, _prompts: &[String], responses: &[String], _temperature: f32)
///         -> anyhow::Result<SequenceLogProbs> {
///         let device = Device::flex();
///         let len = responses.iter().map(|r| r.len()).max().unwrap_or(0);
///         let (mut lp, mut mask) = (vec![], vec![]);
///         for r in responses {
///             for i in 0..len {
///                 let real = i < r.len();
///                 lp.push(if real { 0.5f32.ln() } else { 0.0 });
///                 mask.push(real as u8 as f32);
///             }
///         }
///         let shape = [responses.len(), len];
///         let token_logprobs = Tensor::<2>::from_data(TensorData::new(lp, shape), &device);
///         let mask = Tensor::<2>::from_data(TensorData::new(mask, shape), &device);
///         let sum = token_logprobs.clone().sum_dim(1).squeeze_dim(1);
///         Ok(SequenceLogProbs { token_logprobs, mask, sum })
///     }
/// }
///
/// let mut policy = CoinFlip;
/// let out = policy.generate(&["x".into()], &SamplingParams { n: 2, ..Default::default() }).unwrap();
/// assert_eq!(out[0].len(), 2);
/// let scored = policy.log_probs(&["x".into()], &[out[0][0].text.clone()], 1.0).unwrap();
/// assert!((scored.sum.into_scalar::<f32>() - out[0][0].logprobs[0]).abs() < 1e-6);
/// ```
pub trait Policy: Send {
    /// `params.n` completions for each prompt, in prompt order.
    fn generate(
        &mut self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>>;

    /// log p(response | prompt) per token and summed, for `prompts[i]`, `responses[i]`, with
    /// logits divided by `temperature` (use `1.0` for the model's own distribution).
    fn log_probs(
        &self,
        prompts: &[String],
        responses: &[String],
        temperature: f32,
    ) -> anyhow::Result<SequenceLogProbs>;
}
