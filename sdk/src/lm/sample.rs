//! Sampling from a [`Llama`]: temperature, top-k, top-p, stop on EOS or a stop condition, a
//! KV cache (or full recomputation), seeded.
//!
//! The log-prob reported for each sampled token is `log softmax(logits / T)` at that token
//! (`T = 1` for greedy), before top-k/top-p truncation: exactly what a trainer recomputes from
//! the same logits with [`Llama::token_logprobs`].

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng as _;

use crate::lm::llama::{KvCache, Llama};
use crate::policy::SamplingParams;
use crate::rng::Rng;

/// One sampled continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    /// Generated ids (prompt excluded; EOS included when generated).
    pub tokens: Vec<u32>,
    /// One log-prob per generated token.
    pub logprobs: Vec<f32>,
    /// Stopped on EOS or the stop condition.
    pub finished: bool,
}

/// `log softmax(logits / t)` at `index`, in f64.
pub fn logprob_at(logits: &[f32], t: f32, index: usize) -> f32 {
    let (t, lse) = log_normalizer(logits, t);
    (logits[index] as f64 / t - lse) as f32
}

/// The temperature as used (`t ≤ 0`: 1) and `log Σ exp(logits / t)`, in f64: `log softmax`
/// of logit `x` is `x / t − lse`.
pub fn log_normalizer(logits: &[f32], t: f32) -> (f64, f64) {
    let t = if t > 0.0 { t as f64 } else { 1.0 };
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 / t - max).exp())
            .sum::<f64>()
            .ln();
    (t, lse)
}

/// The first index of the largest value.
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Draws the next token from `logits` with temperature, top-k and top-p (`T = 0`: greedy).
pub fn sample_next(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> usize {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature as f64;
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - max) / t).exp()))
        .collect();
    let k = params.top_k.unwrap_or(probs.len()).clamp(1, probs.len());
    let p = params.top_p.map(|p| p.clamp(0.0, 1.0) as f64);
    if k < probs.len() || p.is_some_and(|p| p < 1.0) {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        probs.truncate(k);
        if let Some(p) = p {
            let total: f64 = probs.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                acc += x.1 / total;
                if acc >= p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
    }
    let total: f64 = probs.iter().map(|x| x.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(i, w) in &probs {
        if u < w {
            return i;
        }
        u -= w;
    }
    probs.last().map(|x| x.0).unwrap_or(0)
}

/// Samples a continuation of every prompt (token ids, BOS included if wanted). Prompts of
/// different lengths are left-padded with `pad_id`. `stop(row, tokens)` ends a row early
/// (stop strings). With `use_cache` false every step recomputes the whole sequence.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    eos: Option<u32>,
    pad_id: u32,
    use_cache: bool,
    rng: &mut Rng,
    stop: &dyn Fn(usize, &[u32]) -> bool,
    device: &Device,
) -> Vec<Sequence> {
    let b = prompts.len();
    if b == 0 {
        return Vec::new();
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let room = model.config.max_seq_len.saturating_sub(longest);
    let steps = params.max_new_tokens.min(room);
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len().max(1)).collect();
    let mut rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![pad_id; longest - p.len().max(1)];
            if p.is_empty() {
                r.push(pad_id);
            } else {
                r.extend_from_slice(p);
            }
            r
        })
        .collect();
    let mut out: Vec<Sequence> = vec![
        Sequence {
            tokens: vec![],
            logprobs: vec![],
            finished: false
        };
        b
    ];
    let mut cache = KvCache::with_capacity(model.config.n_layers, pad.clone(), longest + steps);
    let vocab = model.config.vocab_size;
    let mut fed = 0usize; // positions already in the cache
    // Rows with the same prompt (the `n` samples of one prompt) share one prefill: it runs once
    // per distinct prompt, and its cache and next-token logits are copied to each such row.
    let mut first: Option<Vec<f32>> = None;
    let (firsts, of) = crate::lm::llama::runs(prompts);
    if use_cache && steps > 0 && firsts.len() < b {
        let ids: Vec<i64> = firsts
            .iter()
            .flat_map(|&i| rows[i].iter().map(|&x| x as i64))
            .collect();
        let upad: Vec<usize> = firsts.iter().map(|&i| pad[i]).collect();
        let mut shared =
            KvCache::with_capacity(model.config.n_layers, upad.clone(), longest + steps);
        let input =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [firsts.len(), longest]), device);
        let logits = model.forward(input, &upad, Some(&mut shared));
        let last: Vec<f32> = logits
            .narrow(1, longest - 1, 1)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 logits");
        shared.select_rows(&of, device);
        (cache, fed) = (shared, longest);
        first = Some(
            of.iter()
                .flat_map(|&u| last[u * vocab..(u + 1) * vocab].iter().copied())
                .collect(),
        );
    }
    for _ in 0..steps {
        if out.iter().all(|s| s.finished) {
            break;
        }
        let last = match first.take() {
            Some(l) => l,
            None => step_logits(model, &rows, &mut fed, use_cache, &mut cache, &pad, device),
        };
        for (i, row) in rows.iter_mut().enumerate() {
            let seq = &mut out[i];
            if seq.finished {
                row.push(pad_id);
                continue;
            }
            let l = &last[i * vocab..(i + 1) * vocab];
            let next = sample_next(l, params, rng);
            seq.tokens.push(next as u32);
            seq.logprobs.push(logprob_at(l, params.temperature, next));
            row.push(next as u32);
            if eos == Some(next as u32) || stop(i, &seq.tokens) {
                seq.finished = true;
            }
        }
    }
    out
}

/// The next-token logits `[B · vocab]` of every row, feeding what the cache has not seen
/// (`fed` positions so far) or, without a cache, the whole rows.
fn step_logits(
    model: &Llama,
    rows: &[Vec<u32>],
    fed: &mut usize,
    use_cache: bool,
    cache: &mut KvCache,
    pad: &[usize],
    device: &Device,
) -> Vec<f32> {
    let (b, t_now) = (rows.len(), rows[0].len());
    let from = if use_cache { *fed } else { 0 };
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[from..].iter().map(|&x| x as i64))
        .collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t_now - from]), device);
    let logits = model.forward(input, pad, use_cache.then_some(cache));
    *fed = t_now;
    logits
        .narrow(1, t_now - from - 1, 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample_next(&[0.0, 3.0, 3.0], &p, &mut rng(0, 0)), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        let mut r = rng(1, 0);
        assert!((0..50).all(|_| sample_next(&logits, &p, &mut r) == 2));
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[sample_next(&logits, &p, &mut r)] += 1;
        }
        let expected = [0.1, 0.2, 0.7];
        for (c, e) in counts.iter().zip(expected) {
            assert!((*c as f64 / 20_000.0 - e).abs() < 0.015, "{counts:?}");
        }
        // top-p 0.75 keeps {0.7, 0.2}: token 0 never appears.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.75),
            ..Default::default()
        };
        assert!((0..2000).all(|_| sample_next(&logits, &p, &mut r) != 0));
    }

    /// Rows that share a prompt (one prefill, copied) sample what each would alone, and the
    /// cached and recomputed paths agree, with left padding and grouped-query attention.
    #[test]
    fn rows_sharing_a_prompt_decode_as_each_prompt_alone() {
        let config = crate::lm::llama::LlamaConfig {
            vocab_size: 13,
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            hidden_dim: 24,
            max_seq_len: 32,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
            arch: Default::default(),
        };
        let d = crate::device::test_device();
        let model = Llama::init(config, &mut rng(4, 0), &d).unwrap();
        let p = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 9,
            ..Default::default()
        };
        let (a, b) = (vec![1u32, 5, 7, 9], vec![1u32, 3]);
        let prompts = vec![a.clone(), a.clone(), a.clone(), b.clone(), b.clone()];
        let never = |_: usize, _: &[u32]| false;
        let run = |prompts: &[Vec<u32>], cache: bool| {
            generate(
                &model,
                prompts,
                &p,
                None,
                0,
                cache,
                &mut rng(0, 0),
                &never,
                &d,
            )
            .into_iter()
            .map(|s| s.tokens)
            .collect::<Vec<_>>()
        };
        let shared = run(&prompts, true);
        assert_eq!(shared, run(&prompts, false));
        let alone_a = run(std::slice::from_ref(&a), true).remove(0);
        let alone_b = run(std::slice::from_ref(&b), true).remove(0);
        assert_eq!(
            shared,
            vec![
                alone_a.clone(),
                alone_a.clone(),
                alone_a,
                alone_b.clone(),
                alone_b
            ]
        );
        assert!(shared.iter().all(|t| t.len() == 9));
    }

    #[test]
    fn logprob_matches_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64 / 2.0).exp()).sum();
        assert!((logprob_at(&l, 2.0, 1) as f64 - (1.0 - z.ln())).abs() < 1e-6);
    }
}
