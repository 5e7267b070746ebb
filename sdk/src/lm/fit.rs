//! Batching and the differentiable quantities LM trainers need: padded batches of
//! [`Sequence`]s, per-sequence and per-token response log-probabilities, the SFT loss, the
//! value head at each sequence's last token, and supervised fine-tuning through the
//! [fit loop](crate::fit::fit). Shared by every scheduler that trains a [`Llama`].

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng as _;

use crate::fit::{FitLog, FitOptions, fit};
use crate::lm::llama::Llama;
use crate::policy::Sequence;
use crate::rng::Rng;
use crate::train::{Stage, Trainer};
use crate::{LossOutput, Objective, TensorMap};

/// Right-padded `[B, T]` ids of prompt + response (padded with `pad`), and the `[B, T−1]` mask
/// of the positions whose *target* is a response token.
pub fn pad_batch(seqs: &[Sequence], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let t = seqs.iter().map(Sequence::len).max().unwrap_or(2).max(2);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * (t - 1));
    for s in seqs {
        let len = s.len();
        ids.extend(s.prompt.iter().chain(&s.response).map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad as i64, t - len));
        mask.extend((1..t).map(|target| (target >= s.prompt.len() && target < len) as u8 as f32));
    }
    (
        Tensor::from_data(TensorData::new(ids, [seqs.len(), t]), device),
        Tensor::from_data(TensorData::new(mask, [seqs.len(), t - 1]), device),
    )
}

/// Per-position log-probs `[B, T−1]` of the sequences' responses at `temperature`, zero off
/// the response, and the mask (differentiable when the model is on an autodiff device).
pub fn response_token_logprobs_tensor(
    model: &Llama,
    seqs: &[Sequence],
    pad: u32,
    temperature: f32,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let (ids, mask) = pad_batch(seqs, pad, device);
    let zeros = vec![0; seqs.len()];
    let lp = model.token_logprobs(ids, &zeros, temperature);
    (lp.mask_fill(mask.clone().equal_elem(0.0), 0.0), mask)
}

/// Like [`response_token_logprobs_tensor`], for sequences where consecutive ones share their
/// prompt (the K continuations of one prompt): each distinct prompt runs once, and its cache
/// serves its responses. Returns `[B, R]` log-probs of the response tokens (`R` the longest
/// response), zero past each response, and the mask. Without a shared prompt it is
/// [`response_token_logprobs_tensor`] (`[B, T−1]` over prompt + response positions).
pub fn shared_prompt_logprobs(
    model: &Llama,
    seqs: &[Sequence],
    pad: u32,
    temperature: f32,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let prompts: Vec<&[u32]> = seqs.iter().map(|s| s.prompt.as_slice()).collect();
    let (firsts, of) = crate::lm::llama::runs(&prompts);
    let r = seqs.iter().map(|s| s.response.len()).max().unwrap_or(0);
    if firsts.len() == seqs.len() || r == 0 || prompts.iter().any(|p| p.is_empty()) {
        return response_token_logprobs_tensor(model, seqs, pad, temperature, device);
    }
    let b = seqs.len();
    let lp_max = firsts.iter().map(|&i| prompts[i].len()).max().unwrap_or(1);
    let upad: Vec<usize> = firsts.iter().map(|&i| lp_max - prompts[i].len()).collect();
    let ids: Vec<i64> = firsts
        .iter()
        .zip(&upad)
        .flat_map(|(&i, &p)| {
            std::iter::repeat_n(pad as i64, p).chain(prompts[i].iter().map(|&x| x as i64))
        })
        .collect();
    let mut cache = crate::lm::llama::KvCache::new(model.config.n_layers, upad);
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [firsts.len(), lp_max]), device);
    let rows: Vec<i64> = of.iter().map(|&u| u as i64).collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), device);
    let after_prompt = model
        .forward(input, &cache.pad.clone(), Some(&mut cache))
        .narrow(1, lp_max - 1, 1)
        .select(0, rows);
    cache.select_rows(&of, device);
    let mut resp = Vec::with_capacity(b * r);
    let mut mask = Vec::with_capacity(b * r);
    for s in seqs {
        resp.extend(s.response.iter().map(|&x| x as i64));
        resp.extend(std::iter::repeat_n(pad as i64, r - s.response.len()));
        mask.extend((0..r).map(|j| (j < s.response.len()) as u8 as f32));
    }
    let targets = Tensor::<2, Int>::from_data(TensorData::new(resp, [b, r]), device);
    let logits = if r > 1 {
        let inner = model.forward(
            targets.clone().narrow(1, 0, r - 1),
            &cache.pad.clone(),
            Some(&mut cache),
        );
        Tensor::cat(vec![after_prompt, inner], 1)
    } else {
        after_prompt
    };
    let logits = if temperature > 0.0 && temperature != 1.0 {
        logits / temperature as f64
    } else {
        logits
    };
    let lp = burn::tensor::activation::log_softmax(logits, 2)
        .gather(2, targets.reshape([b, r, 1]))
        .reshape([b, r]);
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, r]), device);
    (lp.mask_fill(mask.clone().equal_elem(0.0), 0.0), mask)
}

/// `Σ_t log p(response_t | prompt, response_<t)` of each sequence, `[B]` (differentiable
/// when the model is on an autodiff device).
pub fn response_logprobs(model: &Llama, seqs: &[Sequence], pad: u32, device: &Device) -> Tensor<1> {
    let (lp, _) = response_token_logprobs_tensor(model, seqs, pad, 1.0, device);
    lp.sum_dim(1).squeeze_dim(1)
}

/// Each response token's log-prob at `temperature`, on the host (inference, in chunks of 128
/// sequences).
pub fn response_token_logprobs(
    model: &Llama,
    seqs: &[Sequence],
    pad: u32,
    temperature: f32,
    device: &Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(128) {
        let (lp, _) = response_token_logprobs_tensor(model, chunk, pad, temperature, device);
        out.extend(crate::rl::gather(chunk, &crate::rl::host(lp)?));
    }
    Ok(out)
}

/// The SFT objective (any objective reading `logprobs` and `mask`) on a batch of sequences;
/// errors when no sequence has a response token.
pub fn sft_loss(
    model: &Llama,
    objective: &dyn Objective,
    seqs: &[Sequence],
    pad: u32,
    device: &Device,
) -> anyhow::Result<LossOutput> {
    anyhow::ensure!(
        seqs.iter().any(|s| !s.response.is_empty()),
        "a batch without response tokens to train on"
    );
    let (ids, mask) = pad_batch(seqs, pad, device);
    let zeros = vec![0; seqs.len()];
    let lp = model.token_logprobs(ids, &zeros, 1.0);
    objective.loss(&TensorMap::new().with("logprobs", lp).with("mask", mask))
}

/// Supervised fine-tuning of `model` (on an autodiff device) for `stage.steps` steps, each on
/// `stage.batch_size` sequences drawn uniformly with replacement from `data` with `r`,
/// through `objective` (one reading `logprobs` and `mask`). Returns the trained model and
/// every step's log; a non-finite loss is an error naming `what`.
#[allow(clippy::too_many_arguments)]
pub fn fit_sft(
    model: Llama,
    objective: &dyn Objective,
    data: &[Sequence],
    stage: &Stage,
    pad: u32,
    device: &Device,
    r: &mut Rng,
    pb: &indicatif::ProgressBar,
    what: &str,
) -> anyhow::Result<(Llama, FitLog)> {
    anyhow::ensure!(!data.is_empty(), "{what}: no data to train on");
    let mut trainer = Trainer::new(model, stage.optim.clone(), stage.steps);
    let log = fit(
        &mut trainer,
        &FitOptions::new(what).progress(pb),
        |model: &Llama, _| {
            let batch: Vec<Sequence> = (0..stage.batch_size.max(1))
                .map(|_| data[r.random_range(0..data.len())].clone())
                .collect();
            sft_loss(model, objective, &batch, pad, device)
        },
        &mut (),
    )?;
    Ok((trainer.model, log))
}

/// The value head at each sequence's last token (the outcome score of the whole sequence),
/// `[B]`. Errors when the model has no value head.
pub fn final_values(
    model: &Llama,
    seqs: &[Sequence],
    pad: u32,
    device: &Device,
) -> anyhow::Result<Tensor<1>> {
    let (ids, _) = pad_batch(seqs, pad, device);
    let zeros = vec![0; seqs.len()];
    let values = model
        .values(model.forward_hidden(ids, &zeros, None))
        .ok_or_else(|| anyhow::anyhow!("the model has no value head"))?;
    let last: Vec<i64> = seqs.iter().map(|s| s.len().max(1) as i64 - 1).collect();
    let index = Tensor::<2, Int>::from_data(TensorData::new(last, [seqs.len(), 1]), device);
    Ok(values.gather(1, index).squeeze_dim(1))
}

/// `f` over `seqs` in chunks of `chunk`, concatenated on the host: evaluation without
/// building one huge batch.
pub fn in_chunks(
    seqs: &[Sequence],
    chunk: usize,
    mut f: impl FnMut(&[Sequence]) -> anyhow::Result<Tensor<1>>,
) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(seqs.len());
    for c in seqs.chunks(chunk.max(1)) {
        out.extend(crate::rl::host(f(c)?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::llama::LlamaConfig;
    use crate::rng::rng;

    fn tiny(value_head: bool) -> Llama {
        let config = LlamaConfig {
            vocab_size: 11,
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            hidden_dim: 24,
            max_seq_len: 32,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head,
            arch: Default::default(),
        };
        Llama::init(config, &mut rng(3, 0), &crate::device::test_device()).unwrap()
    }

    #[test]
    fn response_logprobs_sum_the_response_tokens_only_and_ignore_batch_padding() {
        let model = tiny(false);
        let d = crate::device::test_device();
        let a = Sequence::new(vec![1, 5, 6], vec![7, 8, 2]);
        let b = Sequence::new(vec![1, 4], vec![9]);
        let together = response_logprobs(&model, &[a.clone(), b.clone()], 0, &d)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let alone_a =
            response_logprobs(&model, std::slice::from_ref(&a), 0, &d).into_scalar::<f32>();
        let alone_b = response_logprobs(&model, &[b], 0, &d).into_scalar::<f32>();
        assert!((together[0] - alone_a).abs() < 1e-4 && (together[1] - alone_b).abs() < 1e-4);
        // By hand: the log-probs of 7, 8, 2 after their prefixes.
        let (ids, _) = pad_batch(&[a], 0, &d);
        let lp = model
            .token_logprobs(ids, &[0], 1.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((alone_a - (lp[2] + lp[3] + lp[4])).abs() < 1e-4);
    }

    #[test]
    fn shared_prompts_score_as_each_sequence_alone() {
        let model = tiny(false);
        let d = crate::device::test_device();
        let seqs = [
            Sequence::new(vec![1, 5, 6], vec![7, 8, 2]),
            Sequence::new(vec![1, 5, 6], vec![9]),
            Sequence::new(vec![1, 5, 6], vec![4, 4]),
            Sequence::new(vec![1, 4], vec![3, 5, 7, 9]),
            Sequence::new(vec![1, 4], vec![6]),
            Sequence::new(vec![1, 9, 9, 8], vec![2]),
        ];
        for t in [1.0, 0.7] {
            let (lp, mask) = shared_prompt_logprobs(&model, &seqs, 0, t, &d);
            assert_eq!(lp.dims(), [6, 4], "the response positions only");
            let flat = crate::rl::host(lp).unwrap();
            let shared: Vec<&[f32]> = seqs
                .iter()
                .enumerate()
                .map(|(i, s)| &flat[i * 4..i * 4 + s.response.len()])
                .collect();
            let alone = response_token_logprobs(&model, &seqs, 0, t, &d).unwrap();
            for (a, b) in shared.iter().zip(&alone) {
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
                }
            }
            assert_eq!(crate::rl::host(mask.sum()).unwrap()[0], 12.0);
        }
    }

    #[test]
    fn a_batch_without_response_tokens_is_refused() {
        let d = crate::device::test_device();
        let model = tiny(false);
        let e = sft_loss(
            &model,
            &crate::components::sft::Sft,
            &[Sequence::new(vec![1, 4], vec![])],
            0,
            &d,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("without response tokens"), "{e}");
    }

    #[test]
    fn final_values_read_the_last_real_token() {
        let model = tiny(true);
        let d = crate::device::test_device();
        let a = Sequence::new(vec![1, 5, 6], vec![7, 8, 2]);
        let b = Sequence::new(vec![1, 4], vec![9]);
        let both = final_values(&model, &[a.clone(), b.clone()], 0, &d)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let va = final_values(&model, &[a], 0, &d)
            .unwrap()
            .into_scalar::<f32>();
        let vb = final_values(&model, &[b], 0, &d)
            .unwrap()
            .into_scalar::<f32>();
        assert!(
            (both[0] - va).abs() < 1e-4 && (both[1] - vb).abs() < 1e-4,
            "{both:?} {va} {vb}"
        );
        assert!(final_values(&tiny(false), &[Sequence::new(vec![1], vec![2])], 0, &d).is_err());
    }
}
