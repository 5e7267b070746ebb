//! [`LmPolicy`]: the in-process transformer as a [`Policy`].

use burn::tensor::{Device, Int, Tensor};

use crate::lm::llama::Llama;
use crate::lm::sample;
use crate::lm::tokenizer::Tokenizer;
use crate::policy::{Completion, Policy, SamplingParams, SequenceLogProbs};
use crate::rng::rng;

/// A [`Llama`] with its tokenizer. Prompts are encoded with BOS first; the response follows
/// the prompt's tokens directly.
pub struct LmPolicy {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

impl LmPolicy {
    /// Prompt and response ids, encoded separately and concatenated (so the response's tokens
    /// are the same whatever the prompt).
    pub fn encode_pair(&self, prompt: &str, response: &str) -> (Vec<u32>, Vec<u32>) {
        (
            self.tokenizer.encode(prompt, true),
            self.tokenizer.encode(response, false),
        )
    }

    /// Right-padded `[B, T]` ids of prompt + response and the `[B, T−1]` response-target
    /// mask ([`pad_batch`](crate::lm::fit::pad_batch) with this tokenizer's padding id).
    pub fn batch(
        &self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2>) {
        crate::lm::fit::pad_batch(pairs, self.tokenizer.pad(), device)
    }
}

impl Policy for LmPolicy {
    fn generate(
        &mut self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>> {
        let n = params.n.max(1);
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(self.tokenizer.encode(p, true), n))
            .collect();
        let tokenizer = &self.tokenizer;
        let stop = |_: usize, toks: &[u32]| {
            !params.stop.is_empty() && {
                let text = tokenizer.decode(toks, None);
                params.stop.iter().any(|s| text.ends_with(s.as_str()))
            }
        };
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
        for (i, s) in seqs.into_iter().enumerate() {
            if i % n == 0 {
                out.push(Vec::with_capacity(n));
            }
            let text = self.tokenizer.decode(&s.tokens, None);
            out.last_mut().expect("pushed").push(Completion {
                token_ids: s.tokens,
                text,
                logprobs: s.logprobs,
                finished: s.finished,
            });
        }
        Ok(out)
    }

    /// `token_logprobs` and `mask` are `[B, T−1]` over the padded prompt + response positions
    /// (mask 1 where the target is a response token).
    fn log_probs(
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
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| self.encode_pair(p, r))
            .collect();
        let device = self.model.embed.val().device();
        let (ids, mask) = self.batch(&pairs, &device);
        let pad = vec![0; pairs.len()];
        let lp = self.model.token_logprobs(ids, &pad, temperature) * mask.clone();
        let sum = lp.clone().sum_dim(1).squeeze_dim(1);
        Ok(SequenceLogProbs {
            token_logprobs: lp,
            mask,
            sum,
        })
    }
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
        };
        let device = crate::device::test_device();
        let model = Llama::init(config, &mut rng(5, 0), &device).unwrap();
        let mut policy = LmPolicy {
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
                    let pair = (policy.tokenizer.encode(p, true), c.token_ids.clone());
                    let (ids, mask) = policy.batch(&[pair], &policy.device);
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
                rope_theta: 10_000.0, norm_eps: 1e-5, tie_embeddings: true, value_head: false,
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
                for (row, (p, r)) in pairs.iter().enumerate() {
                    for j in p.len() + r.len()..t {
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
