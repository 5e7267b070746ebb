//! The in-process transformer as a [`Policy`] ([`LmPolicy`]), and the two `[policy]`
//! components that make one: `llama` (a model trained from scratch: its size and the
//! tokenizer built from the task's texts) and `checkpoint` (anything [`lm::load`](crate::lm::load)
//! reads: llama2.c `.bin`, Hugging Face safetensors, GGUF).

use std::path::PathBuf;
use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lm::llama::{Llama, LlamaConfig};
use crate::lm::sample;
use crate::lm::tokenizer::{CharTokenizer, Tokenizer, train_bpe};
use crate::policy::{Completion, Policy, PolicyInit, SamplingParams, Sequence, SequenceLogProbs};
use crate::registry::ConfigError;
use crate::rng::{Rng, rng};

/// A [`Llama`] with its tokenizer, on `device` (an autodiff device while it trains). Prompts
/// are encoded with BOS first; the response follows the prompt's tokens directly.
#[derive(Clone)]
pub struct LmPolicy {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

impl LmPolicy {
    /// An inference copy (no autodiff) on the inner device: what to sample from or score with.
    pub fn inference(&self) -> LmPolicy {
        let model = self.model.valid();
        let device = model.embed.val().device();
        LmPolicy {
            model,
            tokenizer: self.tokenizer.clone(),
            device,
        }
    }

    /// The model's parameter count.
    pub fn params(&self) -> usize {
        self.model.config.num_params()
    }

    /// The same tokenizer with another model (e.g. a trained copy).
    pub fn with_model(&self, model: Llama) -> LmPolicy {
        let device = model.embed.val().device();
        LmPolicy {
            model,
            tokenizer: self.tokenizer.clone(),
            device,
        }
    }

    /// Prompt and response ids, encoded separately and concatenated (so the response's tokens
    /// are the same whatever the prompt).
    pub fn encode_pair(&self, prompt: &str, response: &str) -> Sequence {
        Sequence::new(
            self.tokenizer.encode(prompt, true),
            self.tokenizer.encode(response, false),
        )
    }

    /// A training sequence: the prompt (BOS first) and `response` followed by EOS, truncated to
    /// the model's context.
    pub fn training_sequence(&self, prompt: &str, response: &str) -> Sequence {
        let p = self.tokenizer.encode(prompt, true);
        let mut r = self.tokenizer.encode(response, false);
        r.push(self.tokenizer.eos());
        r.truncate(self.model.config.max_seq_len.saturating_sub(p.len()));
        Sequence::new(p, r)
    }

    /// Right-padded `[B, T]` ids of prompt + response and the `[B, T−1]` response-target
    /// mask ([`pad_batch`](crate::lm::fit::pad_batch) with this tokenizer's padding id).
    pub fn batch(&self, seqs: &[Sequence], device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
        crate::lm::fit::pad_batch(seqs, self.tokenizer.pad(), device)
    }
}

impl Policy for LmPolicy {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn num_params(&self) -> usize {
        self.model.config.num_params()
    }

    fn generate(
        &self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>> {
        let n = params.n.max(1);
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(self.tokenizer.encode(p, true), n))
            .collect();
        let stop =
            |_: usize, toks: &[u32]| crate::policy::ends_with_stop(&self.tokenizer, params, toks);
        let mut r = rng(params.seed, 7);
        let seqs = sample::generate(
            &self.model,
            &encoded,
            params,
            Some(self.tokenizer.eos()),
            self.tokenizer.pad(),
            true,
            &mut r,
            &stop,
            &self.device,
        );
        let mut out: Vec<Vec<Completion>> = Vec::with_capacity(prompts.len());
        for (i, (s, prompt)) in seqs.into_iter().zip(encoded).enumerate() {
            if i % n == 0 {
                out.push(Vec::with_capacity(n));
            }
            let text = self.tokenizer.decode(&s.tokens, None);
            out.last_mut().expect("pushed").push(Completion {
                prompt,
                token_ids: s.tokens,
                text,
                logprobs: s.logprobs,
                finished: s.finished,
            });
        }
        Ok(out)
    }

    /// `token_logprobs` and `mask` are `[B, T−1]` over the padded prompt + response positions
    /// (mask 1 where the target is a response token), or `[B, R]` over the response positions
    /// when consecutive sequences share their prompt (each distinct prompt then runs once:
    /// [`shared_prompt_logprobs`](crate::lm::fit::shared_prompt_logprobs)).
    fn log_probs(&self, seqs: &[Sequence], temperature: f32) -> anyhow::Result<SequenceLogProbs> {
        let device = self.model.embed.val().device();
        let (lp, mask) = crate::lm::fit::shared_prompt_logprobs(
            &self.model,
            seqs,
            self.tokenizer.pad(),
            temperature,
            &device,
        );
        let sum = lp.clone().sum_dim(1).squeeze_dim(1);
        Ok(SequenceLogProbs {
            token_logprobs: lp,
            mask,
            sum,
        })
    }
}

/// The transformer's size (the vocabulary comes from the tokenizer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSize {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub hidden_dim: usize,
    pub max_seq_len: usize,
}

impl ModelSize {
    /// The Llama configuration of this size over `vocab_size` tokens (tied embeddings, no value
    /// head, RoPE θ = 10⁴, RMSNorm ε = 1e-5).
    pub fn llama_config(&self, vocab_size: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size,
            dim: self.dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            hidden_dim: self.hidden_dim,
            max_seq_len: self.max_seq_len,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
            arch: Default::default(),
        }
    }

    /// Whether the size is buildable and not absurdly large (what a config check reports).
    pub fn validate(&self) -> Result<(), String> {
        if self.dim > 8192
            || self.n_layers > 128
            || self.hidden_dim > 65536
            || self.max_seq_len > 1 << 16
        {
            return Err("too large for this trainer".into());
        }
        self.llama_config(1).validate()
    }
}

impl Default for ModelSize {
    fn default() -> Self {
        Self {
            dim: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            hidden_dim: 352,
            max_seq_len: 160,
        }
    }
}

/// How the vocabulary of a model trained from scratch is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per character seen in the task.
    Char,
    /// A byte-level BPE trained on the training texts (digits never merged with digits).
    Bpe,
}

/// The tokenizer of a model trained from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    pub kind: TokenizerKind,
    /// Merges of the BPE (ignored for `char`).
    pub bpe_merges: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            kind: TokenizerKind::Bpe,
            bpe_merges: 200,
        }
    }
}

impl TokenizerConfig {
    /// Builds the tokenizer from the texts a model will see (deterministic in them).
    pub fn build(&self, texts: &[String]) -> anyhow::Result<Tokenizer> {
        Ok(match self.kind {
            TokenizerKind::Char => {
                let mut chars: Vec<char> = texts.iter().flat_map(|t| t.chars()).collect();
                chars.sort_unstable();
                chars.dedup();
                Tokenizer::Char(CharTokenizer::new(&chars.iter().collect::<String>()))
            }
            TokenizerKind::Bpe => train_bpe(texts.iter().map(String::as_str), self.bpe_merges)?,
        })
    }

    /// One line for a summary table.
    pub fn describe(&self, t: &Tokenizer) -> String {
        match self.kind {
            TokenizerKind::Char => format!("{} tokens, one per character", t.vocab_size()),
            TokenizerKind::Bpe => format!(
                "{} tokens: byte-level BPE trained on the training split ({} merges asked)",
                t.vocab_size(),
                self.bpe_merges
            ),
        }
    }
}

/// Configuration of the `llama` policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaPolicyConfig {
    pub model: ModelSize,
    pub tokenizer: TokenizerConfig,
}

/// Policy `llama`: a Llama-style transformer trained from scratch, its weights drawn from the
/// run's random stream (`N(0, 0.02²)`, output projections scaled by `1/√(2·layers)`).
pub struct LlamaInit {
    pub config: LlamaPolicyConfig,
}

impl PolicyInit for LlamaInit {
    fn tokenizer(&self, texts: &mut dyn FnMut() -> Vec<String>) -> anyhow::Result<Tokenizer> {
        self.config.tokenizer.build(&texts())
    }

    fn tokenizer_with_phrases(
        &self,
        texts: &mut dyn FnMut() -> Vec<String>,
        phrases: &[&str],
    ) -> anyhow::Result<Tokenizer> {
        Ok(self.tokenizer(texts)?.with_phrases(phrases))
    }

    fn init(
        &self,
        tokenizer: &Tokenizer,
        rng: &mut Rng,
        device: &Device,
    ) -> anyhow::Result<LmPolicy> {
        let config = self.config.model.llama_config(tokenizer.vocab_size());
        let model =
            Llama::init(config, rng, device).map_err(|e| anyhow::anyhow!("policy `llama`: {e}"))?;
        Ok(LmPolicy {
            model,
            tokenizer: tokenizer.clone(),
            device: device.clone(),
        })
    }

    fn describe(&self, params: usize) -> String {
        let m = &self.config.model;
        format!(
            "a {params}-parameter Llama trained from scratch (dim {}, {} layers, {} heads ({} KV), SwiGLU {}, context {})",
            m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.hidden_dim, m.max_seq_len
        )
    }
}

crate::register_component! {
    kind: Policy,
    name: "llama",
    description: "a Llama-style transformer trained from scratch (size and tokenizer built from the task's texts)",
    config: LlamaPolicyConfig,
    build: |config: LlamaPolicyConfig, _ctx| {
        config.model.validate().map_err(|e| ConfigError::field("model", e))?;
        Ok(Box::new(LlamaInit { config }) as Box<dyn PolicyInit>)
    },
}

/// How a `checkpoint` policy holds its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// The burn model on dequantized f32 weights, on the run's device: trainable.
    #[default]
    F32,
    /// Block-quantized CPU inference ([`QLlama`](crate::lm::quant::QLlama): a GGUF file's own
    /// blocks, other formats quantized to Q8_0): sampling and scoring, not training.
    Native,
}

/// `path` with a leading `~/` replaced by the home directory (`$HOME`), as a shell would: a
/// recipe names a model fetched into the cache (`~/.cache/lmlab/…`) the same way everywhere.
pub fn expand_home(path: &std::path::Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// Configuration of the `checkpoint` policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// The checkpoint: a llama2.c `.bin`, a Hugging Face folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`) or a GGUF file; the format is detected. A
    /// leading `~/` is the home directory.
    pub path: PathBuf,
    /// The tokenizer, when it is not the one beside the model.
    pub tokenizer: Option<PathBuf>,
    /// `f32` (trainable, any device) or `native` (block-quantized CPU inference).
    pub weights: Weights,
}

/// Policy `checkpoint`: a pretrained model loaded with [`lm::load`](crate::lm::load), in f32
/// on the run's device (trainable), or with `weights = "native"` for block-quantized CPU
/// inference. The file is read once, when the scheduler first asks.
pub struct CheckpointInit {
    pub config: CheckpointConfig,
    loaded: Mutex<Option<crate::lm::load::Loaded>>,
    native: Mutex<Option<std::sync::Arc<NativePolicy>>>,
}

impl CheckpointInit {
    fn with_loaded<T>(
        &self,
        f: impl FnOnce(&crate::lm::load::Loaded) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let loaded = crate::lm::load::load(
                &self.config.path,
                self.config.tokenizer.as_deref(),
                &Device::flex(),
            )?;
            *slot = Some(loaded);
        }
        f(slot.as_ref().expect("loaded"))
    }

    /// The block-quantized policy, loaded once.
    fn native(&self) -> anyhow::Result<std::sync::Arc<NativePolicy>> {
        let mut slot = self.native.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let loaded = crate::lm::load::load_quantized(
                &self.config.path,
                self.config.tokenizer.as_deref(),
                None,
            )?;
            *slot = Some(std::sync::Arc::new(NativePolicy::new(loaded)));
        }
        Ok(slot.clone().expect("loaded"))
    }
}

impl PolicyInit for CheckpointInit {
    fn tokenizer(&self, _texts: &mut dyn FnMut() -> Vec<String>) -> anyhow::Result<Tokenizer> {
        match self.config.weights {
            Weights::F32 => self.with_loaded(|l| Ok(l.tokenizer.clone())),
            Weights::Native => Ok(self.native()?.tokenizer.clone()),
        }
    }

    fn init(
        &self,
        tokenizer: &Tokenizer,
        _rng: &mut Rng,
        device: &Device,
    ) -> anyhow::Result<LmPolicy> {
        anyhow::ensure!(
            self.config.weights == Weights::F32,
            "[policy] weights = \"native\" is for inference (sampling and scoring); this \
             scheduler trains its policy: use weights = \"f32\""
        );
        let model = self.with_loaded(|l| {
            l.model
                .trainable_copy(device)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?;
        Ok(LmPolicy {
            model,
            tokenizer: tokenizer.clone(),
            device: device.clone(),
        })
    }

    fn trainable(&self) -> bool {
        self.config.weights == Weights::F32
    }

    fn inference(&self, tokenizer: &Tokenizer, device: &Device) -> anyhow::Result<Box<dyn Policy>> {
        match self.config.weights {
            Weights::F32 => {
                let p = self.init(tokenizer, &mut rng(0, 0), device)?;
                Ok(Box::new(p.inference()))
            }
            Weights::Native => Ok(Box::new(self.native()?)),
        }
    }

    fn describe(&self, params: usize) -> String {
        let how = match self.config.weights {
            Weights::F32 => "",
            Weights::Native => " (block-quantized, CPU)",
        };
        format!(
            "the {params}-parameter checkpoint `{}`{how}",
            self.config.path.display()
        )
    }

    fn summary(&self, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        match self.config.weights {
            Weights::F32 => {
                let policy = self.init(tokenizer, &mut rng(0, 0), &Device::flex())?;
                Ok(self.describe(policy.params()))
            }
            Weights::Native => Ok(self.describe(self.native()?.num_params())),
        }
    }
}

/// Most token rows in one forward pass of [`NativePolicy`]'s sampling (as `lmlab serve`'s
/// default `--max-batch-rows`).
pub const NATIVE_BATCH_ROWS: usize = 256;

/// A checkpoint on the block-quantized CPU path ([`QLlama`](crate::lm::quant::QLlama)) as a
/// [`Policy`]: sampling runs all prompts through the serving engine's
/// [`Batcher`](crate::lm::engine::Batcher) (each prompt fed once in chunks, its `n` samples
/// forked from its cache and decoded together, one row each); scoring runs each sequence
/// through [`QLlama::score`](crate::lm::quant::QLlama::score) in one batch. Log-probabilities
/// come back as host values (not differentiable).
pub struct NativePolicy {
    pub model: std::sync::Arc<crate::lm::quant::QLlama>,
    pub tokenizer: Tokenizer,
    /// Generation stops after any of these (EOS, end-of-turn tokens).
    pub stop_ids: Vec<u32>,
}

impl NativePolicy {
    pub fn new(loaded: crate::lm::load::Loaded<crate::lm::quant::QLlama>) -> Self {
        Self {
            model: std::sync::Arc::new(loaded.model),
            tokenizer: loaded.tokenizer,
            stop_ids: loaded.stop_ids,
        }
    }
}

impl Policy for NativePolicy {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn num_params(&self) -> usize {
        self.model.config.num_params()
    }

    fn generate(
        &self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>> {
        use crate::lm::engine::{Batcher, Finish, Request};
        use rand::Rng as _;
        params.validate()?;
        // Each prompt its own seed (the engine seeds a request's i-th sample with (seed, i)).
        let mut r = rng(params.seed, 7);
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p, true))
            .collect();
        let requests: Vec<Request> = encoded
            .iter()
            .map(|prompt| Request {
                prompt: prompt.clone(),
                params: SamplingParams {
                    n: params.n.max(1),
                    seed: r.random(),
                    ..params.clone()
                },
                echo: false,
                top_logprobs: 0,
            })
            .collect();
        let mut batcher = Batcher::new(
            self.model.clone(),
            self.tokenizer.clone(),
            self.stop_ids.clone(),
            NATIVE_BATCH_ROWS,
        );
        batcher
            .run_all(requests)
            .into_iter()
            .zip(encoded)
            .map(|(answer, prompt)| {
                let answer = answer.map_err(|e| anyhow::anyhow!(e))?;
                Ok(answer
                    .choices
                    .into_iter()
                    .map(|c| Completion {
                        prompt: prompt.clone(),
                        text: self.tokenizer.decode(&c.tokens, None),
                        logprobs: c.scored.iter().map(|s| s.logprob).collect(),
                        token_ids: c.tokens,
                        finished: c.finish == Finish::Stop,
                    })
                    .collect())
            })
            .collect()
    }

    fn log_probs(&self, seqs: &[Sequence], temperature: f32) -> anyhow::Result<SequenceLogProbs> {
        if seqs
            .iter()
            .any(|s| !s.response.is_empty() && s.prompt.is_empty())
        {
            anyhow::bail!("a sequence to score needs at least one prompt token");
        }
        let ids: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| [s.prompt.as_slice(), &s.response].concat())
            .collect();
        // Runs of consecutive sequences that share a prefix (the candidates of one problem
        // after one header) are scored together, the prefix fed once.
        let scored: Vec<usize> = (0..seqs.len())
            .filter(|&i| !seqs[i].response.is_empty())
            .collect();
        let mut rows = vec![Vec::new(); seqs.len()];
        let mut start = 0;
        while start < scored.len() {
            let first = &ids[scored[start]];
            let (mut end, mut shared) = (start + 1, usize::MAX);
            while end < scored.len() {
                let common = first
                    .iter()
                    .zip(&ids[scored[end]])
                    .take_while(|(a, b)| a == b)
                    .count();
                // A run ends where the prefix it shares would halve.
                if shared != usize::MAX && common * 2 < shared {
                    break;
                }
                shared = shared.min(common);
                end += 1;
            }
            let run: Vec<(&[u32], usize)> = scored[start..end]
                .iter()
                .map(|&i| (ids[i].as_slice(), seqs[i].prompt.len()))
                .collect();
            let out = self
                .model
                .score_many(&run, temperature)
                .map_err(|e| anyhow::anyhow!(e))?;
            for (&i, r) in scored[start..end].iter().zip(out) {
                rows[i] = r;
            }
            start = end;
        }
        Ok(SequenceLogProbs::from_host(&rows))
    }
}

crate::register_component! {
    kind: Policy,
    name: "checkpoint",
    description: "a pretrained checkpoint (llama2.c .bin, Hugging Face safetensors or GGUF): f32 and trainable, or weights = \"native\" for block-quantized CPU inference",
    config: CheckpointConfig,
    build: |config: CheckpointConfig, _ctx| {
        let config = CheckpointConfig {
            path: expand_home(&config.path),
            tokenizer: config.tokenizer.as_deref().map(expand_home),
            ..config
        };
        if !config.path.exists() {
            return Err(ConfigError::field("path", format!("{} does not exist", config.path.display())).into());
        }
        if let Some(t) = &config.tokenizer && !t.exists() {
            return Err(ConfigError::field("tokenizer", format!("{} does not exist", t.display())).into());
        }
        Ok(Box::new(CheckpointInit { config, loaded: Mutex::new(None), native: Mutex::new(None) }) as Box<dyn PolicyInit>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::llama::LlamaConfig;
    use crate::lm::tokenizer::CharTokenizer;

    #[test]
    fn recomputed_logprobs_match_the_samplers() {
        let config = LlamaConfig {
            vocab_size: 12,
            dim: 16,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            hidden_dim: 32,
            max_seq_len: 40,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
            arch: Default::default(),
        };
        let device = crate::device::test_device();
        let model = Llama::init(config, &mut rng(5, 0), &device).unwrap();
        let policy = LmPolicy {
            model,
            tokenizer: Tokenizer::Char(CharTokenizer::new("abcdefgh")),
            device,
        };
        for temperature in [0.7f32, 1.0, 1.6] {
            let params = SamplingParams {
                temperature,
                n: 3,
                max_new_tokens: 10,
                seed: 9,
                ..Default::default()
            };
            let prompts = vec!["abc".to_string(), "hgfedc".to_string()];
            let out = policy.generate(&prompts, &params).unwrap();
            for (p, comps) in prompts.iter().zip(&out) {
                for c in comps {
                    if c.token_ids.iter().any(|&t| t < 4 && t != 2) {
                        continue; // special tokens do not round-trip through text
                    }
                    assert_eq!(c.prompt, policy.tokenizer.encode(p, true));
                    let (ids, mask) = policy.batch(&[c.sequence()], &policy.device);
                    let lp = policy.model.token_logprobs(ids, &[0], temperature);
                    let lp: Vec<f32> = lp.into_data().try_into_vec().unwrap();
                    let m: Vec<f32> = mask.into_data().try_into_vec().unwrap();
                    let got: Vec<f32> = lp
                        .iter()
                        .zip(&m)
                        .filter(|(_, m)| **m > 0.0)
                        .map(|(l, _)| *l)
                        .collect();
                    assert_eq!(got.len(), c.logprobs.len());
                    for (a, b) in got.iter().zip(&c.logprobs) {
                        assert!((a - b).abs() <= 1e-4, "T={temperature}: {a} vs {b}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;
    use crate::components::sft::Sft;
    use crate::lm::llama::LlamaConfig;
    use crate::lm::tokenizer::CharTokenizer;
    use crate::{Objective, TensorMap};
    use burn::tensor::TensorData;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        /// The SFT loss of a batch does not change when the padding token or the prompt
        /// positions' predictions change: only response tokens count.
        #[test]
        fn sft_loss_ignores_padding_tokens(seed in 0u64..500, pad_a in 0u32..12, pad_b in 0u32..12,
                                           r1 in "[a-h]{1,6}", r2 in "[a-h]{1,3}") {
            let config = LlamaConfig {
                vocab_size: 12, dim: 16, n_layers: 1, n_heads: 2, n_kv_heads: 2, hidden_dim: 24, max_seq_len: 32,
                rope_theta: 10_000.0, norm_eps: 1e-5, tie_embeddings: true, value_head: false, arch: Default::default(),
            };
            let device = crate::device::test_device();
            let model = Llama::init(config, &mut rng(seed, 0), &device).unwrap();
            let policy = LmPolicy { model, tokenizer: Tokenizer::Char(CharTokenizer::new("abcdefgh")), device: device.clone() };
            let pairs = vec![policy.encode_pair("ab", &r1), policy.encode_pair("abcdef", &r2)];
            let loss_with_pad = |pad: u32| {
                let (ids, mask) = policy.batch(&pairs, &device);
                let filled: Vec<i64> = ids.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
                let t = filled.len() / 2;
                let mut repadded = filled.clone();
                for (row, s) in pairs.iter().enumerate() {
                    for j in s.len()..t {
                        repadded[row * t + j] = pad as i64;
                    }
                }
                let ids = Tensor::<2, Int>::from_data(TensorData::new(repadded, [2, t]), &device);
                let lp = policy.model.token_logprobs(ids, &[0, 0], 1.0);
                Sft.loss(&TensorMap::new().with("logprobs", lp).with("mask", mask)).unwrap().loss.into_scalar::<f32>()
            };
            prop_assert_eq!(loss_with_pad(pad_a), loss_with_pad(pad_b));
        }
    }
}
