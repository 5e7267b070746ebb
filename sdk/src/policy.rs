//! The [`Policy`] trait: a language model you can sample from and score.

use burn::tensor::{Device, Tensor};

use crate::lm::Tokenizer;
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

impl SamplingParams {
    /// Errors naming the field when these cannot sample: a negative or non-finite
    /// temperature, `top_k = 0`, `top_p` outside (0, 1], `n = 0`. Every place that takes
    /// sampling settings from a user (recipes, `lmlab generate`, served requests) checks them
    /// here.
    pub fn validate(&self) -> Result<(), crate::registry::ConfigError> {
        use crate::registry::ConfigError;
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            let message = "must be 0 (greedy) or positive";
            return Err(ConfigError::field("temperature", message));
        }
        if self.top_k == Some(0) {
            return Err(ConfigError::field("top_k", "must be at least 1"));
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ConfigError::field("top_p", "must be in (0, 1]"));
        }
        if self.n == 0 {
            return Err(ConfigError::field("n", "must be at least 1"));
        }
        Ok(())
    }
}

/// A prompt and a response as token ids (the prompt with BOS first; the response with EOS last
/// when it ended): what a policy scores and a trainer batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl Sequence {
    pub fn new(prompt: Vec<u32>, response: Vec<u32>) -> Self {
        Self { prompt, response }
    }

    /// Prompt and response tokens together.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    /// Whether it has no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sampled completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The prompt's token ids, as the policy saw them.
    pub prompt: Vec<u32>,
    /// Generated token ids (prompt excluded).
    pub token_ids: Vec<u32>,
    /// The decoded text of `token_ids`.
    pub text: String,
    /// log p(token) under the sampling distribution (logits / temperature), one per token.
    pub logprobs: Vec<f32>,
    /// Whether generation stopped on EOS or a stop string (not on the length limit).
    pub finished: bool,
}

impl Completion {
    /// Its prompt and response ids.
    pub fn sequence(&self) -> Sequence {
        Sequence::new(self.prompt.clone(), self.token_ids.clone())
    }
}

/// Per-token and summed log-probabilities of responses given prompts, differentiable when the
/// policy is trainable.
#[derive(Clone, Debug)]
pub struct SequenceLogProbs {
    /// `[batch, positions]` log p(token), zero where `mask` is zero. Positions are the
    /// policy's choice (all of prompt + response for [`LmPolicy`](crate::lm::policy::LmPolicy),
    /// just the response for others): only masked-in entries mean anything, in order.
    pub token_logprobs: Tensor<2>,
    /// `[batch, positions]` 1 for response tokens, 0 for prompt and padding.
    pub mask: Tensor<2>,
    /// `[batch]` the sum over response tokens.
    pub sum: Tensor<1>,
}

impl SequenceLogProbs {
    /// From per-token log-probabilities computed on the host (one row per sequence, its
    /// response tokens in order): `[batch, longest]` tensors on the CPU, zero-padded. Not
    /// differentiable: what an inference-only policy (block-quantized, served) returns.
    pub fn from_host(rows: &[Vec<f32>]) -> Self {
        let device = Device::flex();
        let (b, w) = (
            rows.len(),
            rows.iter().map(Vec::len).max().unwrap_or(0).max(1),
        );
        let (mut lp, mut mask) = (vec![0f32; b * w], vec![0f32; b * w]);
        for (i, r) in rows.iter().enumerate() {
            lp[i * w..i * w + r.len()].copy_from_slice(r);
            mask[i * w..i * w + r.len()].fill(1.0);
        }
        let sums: Vec<f32> = rows.iter().map(|r| r.iter().sum()).collect();
        let t = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(burn::tensor::TensorData::new(v, shape), &device)
        };
        Self {
            token_logprobs: t(lp, [b, w]),
            mask: t(mask, [b, w]),
            sum: Tensor::<1>::from_data(burn::tensor::TensorData::new(sums, [b]), &device),
        }
    }

    /// The summed log-probability of each sequence, on the host.
    pub fn sums(&self) -> anyhow::Result<Vec<f32>> {
        crate::rl::host(self.sum.clone())
    }

    /// Each sequence's response-token log-probabilities, on the host.
    pub fn per_token(&self) -> anyhow::Result<Vec<Vec<f32>>> {
        let [b, w] = self.mask.dims();
        let lp = crate::rl::host(self.token_logprobs.clone())?;
        let mask = crate::rl::host(self.mask.clone())?;
        Ok((0..b)
            .map(|i| {
                (0..w)
                    .filter(|&j| mask[i * w + j] > 0.0)
                    .map(|j| lp[i * w + j])
                    .collect()
            })
            .collect())
    }
}

/// A language model you can sample from and score: the verbs of lm-eval's model API, token
/// ids first.
///
/// Temperature is applied the same way in both: [`log_probs`](Self::log_probs) with the
/// sampling temperature recomputes (within float error) the `logprobs` that
/// [`generate`](Self::generate) returned.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Completion, Policy, SamplingParams, Sequence, SequenceLogProbs};
/// use lmlab_sdk::burn::tensor::{Device, Tensor, TensorData};
/// use lmlab_sdk::lm::tokenizer::{CharTokenizer, Tokenizer};
///
/// /// Answers every prompt with "a" or "b", each with probability 1/2.
/// struct CoinFlip(Tokenizer);
///
/// impl Policy for CoinFlip {
///     fn tokenizer(&self) -> &Tokenizer { &self.0 }
///     fn num_params(&self) -> usize { 0 }
///     fn generate(&self, prompts: &[String], p: &SamplingParams)
///         -> anyhow::Result<Vec<Vec<Completion>>> {
///         Ok(prompts.iter().map(|prompt| (0..p.n as u64).map(|i| {
///             let tok = self.0.encode(["a", "b"][((p.seed + i) % 2) as usize], false)[0];
///             Completion { prompt: self.0.encode(prompt, true), token_ids: vec![tok],
///                          text: self.0.decode(&[tok], None), logprobs: vec![0.5f32.ln()],
///                          finished: true }
///         }).collect()).collect())
///     }
///     fn log_probs(&self, seqs: &[Sequence], _temperature: f32)
///         -> anyhow::Result<SequenceLogProbs> {
///         let device = Device::flex();
///         let len = seqs.iter().map(|s| s.response.len()).max().unwrap_or(0);
///         let (mut lp, mut mask) = (vec![], vec![]);
///         for s in seqs {
///             for i in 0..len {
///                 let real = i < s.response.len();
///                 lp.push(if real { 0.5f32.ln() } else { 0.0 });
///                 mask.push(real as u8 as f32);
///             }
///         }
///         let shape = [seqs.len(), len];
///         let token_logprobs = Tensor::<2>::from_data(TensorData::new(lp, shape), &device);
///         let mask = Tensor::<2>::from_data(TensorData::new(mask, shape), &device);
///         let sum = token_logprobs.clone().sum_dim(1).squeeze_dim(1);
///         Ok(SequenceLogProbs { token_logprobs, mask, sum })
///     }
/// }
///
/// let policy = CoinFlip(Tokenizer::Char(CharTokenizer::new("ab")));
/// let out = policy.generate(&["x".into()], &SamplingParams { n: 2, ..Default::default() }).unwrap();
/// assert_eq!(out[0].len(), 2);
/// let scored = policy.log_probs(&[out[0][0].sequence()], 1.0).unwrap();
/// assert!((scored.sums().unwrap()[0] - out[0][0].logprobs[0]).abs() < 1e-6);
/// ```
pub trait Policy: Send + Sync {
    /// The tokenizer its ids are in.
    fn tokenizer(&self) -> &Tokenizer;

    /// Its parameter count (what sampling FLOPs are counted with: `2 · params · tokens`).
    fn num_params(&self) -> usize;

    /// `params.n` completions for each prompt (text; BOS is added), in prompt order.
    fn generate(
        &self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>>;

    /// log p(response | prompt) per token and summed for each sequence, with logits divided
    /// by `temperature` (`1.0` for the model's own distribution).
    fn log_probs(&self, seqs: &[Sequence], temperature: f32) -> anyhow::Result<SequenceLogProbs>;

    /// [`log_probs`](Self::log_probs) of texts: prompts encoded with BOS, responses without.
    /// Decode → re-encode does not round-trip under BPE, so score the ids a completion carries
    /// when there are any.
    fn log_probs_text(
        &self,
        prompts: &[String],
        responses: &[String],
        temperature: f32,
    ) -> anyhow::Result<SequenceLogProbs> {
        anyhow::ensure!(
            prompts.len() == responses.len(),
            "{} prompts for {} responses",
            prompts.len(),
            responses.len()
        );
        let t = self.tokenizer();
        let seqs: Vec<Sequence> = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| Sequence::new(t.encode(p, true), t.encode(r, false)))
            .collect();
        self.log_probs(&seqs, temperature)
    }
}

/// A shared policy is a policy (one loaded model handed to several roles).
impl<P: Policy + ?Sized> Policy for std::sync::Arc<P> {
    fn tokenizer(&self) -> &Tokenizer {
        (**self).tokenizer()
    }
    fn num_params(&self) -> usize {
        (**self).num_params()
    }
    fn generate(
        &self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>> {
        (**self).generate(prompts, params)
    }
    fn log_probs(&self, seqs: &[Sequence], temperature: f32) -> anyhow::Result<SequenceLogProbs> {
        (**self).log_probs(seqs, temperature)
    }
}

/// Whether decoded `tokens` end with one of `params.stop`'s strings (every policy's stop-string
/// test). Only the tail that can hold a stop string is decoded (twice its length in tokens,
/// and 8 more: every token but a special one is at least a byte), so the test costs the same
/// at every step of a long completion.
pub fn ends_with_stop(tokenizer: &Tokenizer, params: &SamplingParams, tokens: &[u32]) -> bool {
    let Some(longest) = params.stop.iter().map(String::len).max() else {
        return false;
    };
    let tail = &tokens[tokens.len().saturating_sub(2 * longest + 8)..];
    let text = tokenizer.decode(tail, None);
    params.stop.iter().any(|s| text.ends_with(s.as_str()))
}

/// What a recipe's `[policy]` table builds: the model a scheduler starts from, made when the
/// scheduler needs it (a model trained from scratch needs a tokenizer built from the task's
/// texts and a seed; a checkpoint brings both).
pub trait PolicyInit: Send + Sync {
    /// The tokenizer: built from `texts` (a model trained from scratch) or read from the
    /// checkpoint (`texts` is then not called).
    fn tokenizer(&self, texts: &mut dyn FnMut() -> Vec<String>) -> anyhow::Result<Tokenizer>;

    /// [`tokenizer`](Self::tokenizer), keeping each of `phrases` whole (one token) when the
    /// tokenizer is built here ([`Tokenizer::with_phrases`]); a checkpoint's tokenizer is its
    /// own, unchanged. For strings every input of a method repeats verbatim (GenRM's header).
    fn tokenizer_with_phrases(
        &self,
        texts: &mut dyn FnMut() -> Vec<String>,
        phrases: &[&str],
    ) -> anyhow::Result<Tokenizer> {
        let _ = phrases;
        self.tokenizer(texts)
    }

    /// A fresh policy with `tokenizer` on `device` (an autodiff device to train it), its
    /// initial weights drawn from `rng` when it has any to draw.
    fn init(
        &self,
        tokenizer: &Tokenizer,
        rng: &mut crate::rng::Rng,
        device: &Device,
    ) -> anyhow::Result<crate::lm::policy::LmPolicy>;

    /// Whether [`init`](Self::init) gives a trainable policy (false for inference-only
    /// weights such as a checkpoint's `weights = "native"`): the runner refuses, already at
    /// `--dry-run`, such a policy in a role that trains.
    fn trainable(&self) -> bool {
        true
    }

    /// A policy for sampling and scoring only (nothing is trained through it): by default an
    /// inference copy of [`init`](Self::init)'s, drawn from a fixed seed.
    fn inference(&self, tokenizer: &Tokenizer, device: &Device) -> anyhow::Result<Box<dyn Policy>> {
        let policy = self.init(tokenizer, &mut crate::rng::rng(0, 0), device)?;
        Ok(Box::new(policy.inference()))
    }

    /// One line for a summary ("a 162K-parameter Llama trained from scratch").
    fn describe(&self, params: usize) -> String;

    /// [`describe`](Self::describe) with the parameter count of the policy this builds with
    /// `tokenizer` (one initialisation on the CPU, from a fixed seed).
    fn summary(&self, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        let policy = self.init(tokenizer, &mut crate::rng::rng(0, 0), &Device::flex())?;
        Ok(self.describe(policy.params()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Decoding only the tail says what decoding the whole completion says.
        #[test]
        fn the_stop_test_reads_the_tail_as_the_whole(
            text in "[ab \n.]{0,80}",
            stop in prop::collection::vec("[ab \n.]{1,6}", 1..3),
        ) {
            let texts = ["ab ba. a\nb", "a b a b. ba ab\n"];
            let t = crate::lm::tokenizer::train_bpe(texts.iter().copied().cycle().take(20), 12).unwrap();
            let ids = t.encode(&text, false);
            let params = SamplingParams { stop: stop.clone(), ..Default::default() };
            for n in 0..=ids.len() {
                let whole = t.decode(&ids[..n], None);
                let want = stop.iter().any(|s| whole.ends_with(s.as_str()));
                prop_assert_eq!(ends_with_stop(&t, &params, &ids[..n]), want, "{:?}", whole);
            }
        }
    }
}
