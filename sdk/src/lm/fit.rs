//! Batching and the differentiable quantities LM trainers need: padded batches of
//! (prompt, response) token ids, per-sequence response log-probabilities, the SFT loss, and the
//! value head at each sequence's last token. Shared by every scheduler that trains a [`Llama`].

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng as _;

use crate::lm::llama::Llama;
use crate::rng::Rng;
use crate::train::{Stage, Trainer, finite_loss};
use crate::{LossOutput, Objective, TensorMap};

/// Prompt ids (BOS first) and response ids (EOS last when the response ended).
pub type Pair = (Vec<u32>, Vec<u32>);

/// Right-padded `[B, T]` ids of prompt + response (padded with `pad`), and the `[B, T−1]` mask
/// of the positions whose *target* is a response token.
pub fn pad_batch(pairs: &[Pair], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let t = pairs
        .iter()
        .map(|(p, r)| p.len() + r.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut ids = Vec::with_capacity(pairs.len() * t);
    let mut mask = Vec::with_capacity(pairs.len() * (t - 1));
    for (p, r) in pairs {
        let len = p.len() + r.len();
        ids.extend(p.iter().chain(r).map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad as i64, t - len));
        mask.extend((1..t).map(|target| (target >= p.len() && target < len) as u8 as f32));
    }
    (
        Tensor::from_data(TensorData::new(ids, [pairs.len(), t]), device),
        Tensor::from_data(TensorData::new(mask, [pairs.len(), t - 1]), device),
    )
}

/// `Σ_t log p(response_t | prompt, response_<t)` of each pair, `[B]` (differentiable when the
/// model is on an autodiff device).
pub fn response_logprobs(model: &Llama, pairs: &[Pair], pad: u32, device: &Device) -> Tensor<1> {
    let (ids, mask) = pad_batch(pairs, pad, device);
    let zeros = vec![0; pairs.len()];
    let lp = model.token_logprobs(ids, &zeros, 1.0);
    lp.mask_fill(mask.equal_elem(0.0), 0.0)
        .sum_dim(1)
        .squeeze_dim(1)
}

/// The SFT objective (any objective reading `logprobs` and `mask`) on a batch of pairs.
pub fn sft_loss(
    model: &Llama,
    objective: &dyn Objective,
    pairs: &[Pair],
    pad: u32,
    device: &Device,
) -> anyhow::Result<LossOutput> {
    let (ids, mask) = pad_batch(pairs, pad, device);
    let zeros = vec![0; pairs.len()];
    let lp = model.token_logprobs(ids, &zeros, 1.0);
    objective.loss(&TensorMap::new().with("logprobs", lp).with("mask", mask))
}

/// Supervised fine-tuning of `model` (on an autodiff device) for `stage.steps` steps, each on
/// `stage.batch_size` pairs drawn uniformly with replacement from `data` with `r`, through
/// `objective` (one reading `logprobs` and `mask`). Returns the trained model and each step's
/// loss; a non-finite loss is an error naming `what`.
#[allow(clippy::too_many_arguments)]
pub fn fit_sft(
    model: Llama,
    objective: &dyn Objective,
    data: &[Pair],
    stage: &Stage,
    pad: u32,
    device: &Device,
    r: &mut Rng,
    pb: &indicatif::ProgressBar,
    what: &str,
) -> anyhow::Result<(Llama, Vec<f64>)> {
    anyhow::ensure!(!data.is_empty(), "{what}: no data to train on");
    let mut trainer = Trainer::new(model, stage.optim.clone(), stage.steps);
    let mut losses = Vec::with_capacity(stage.steps as usize);
    while trainer.step < stage.steps {
        let batch: Vec<Pair> = (0..stage.batch_size.max(1))
            .map(|_| data[r.random_range(0..data.len())].clone())
            .collect();
        let out = sft_loss(&trainer.model, objective, &batch, pad, device)?;
        losses.push(finite_loss(&out.loss, what, trainer.step)?);
        trainer.step(out.loss);
        pb.inc(1);
    }
    Ok((trainer.model, losses))
}

/// The value head at each pair's last token (the outcome score of the whole sequence), `[B]`.
/// Errors when the model has no value head.
pub fn final_values(
    model: &Llama,
    pairs: &[Pair],
    pad: u32,
    device: &Device,
) -> anyhow::Result<Tensor<1>> {
    let (ids, _) = pad_batch(pairs, pad, device);
    let zeros = vec![0; pairs.len()];
    let values = model
        .values(model.forward_hidden(ids, &zeros, None))
        .ok_or_else(|| anyhow::anyhow!("the model has no value head"))?;
    let last: Vec<i64> = pairs
        .iter()
        .map(|(p, r)| (p.len() + r.len()).max(1) as i64 - 1)
        .collect();
    let index = Tensor::<2, Int>::from_data(TensorData::new(last, [pairs.len(), 1]), device);
    Ok(values.gather(1, index).squeeze_dim(1))
}

/// `f` over `pairs` in chunks of `chunk`, concatenated: evaluation without building one huge
/// batch.
pub fn in_chunks(
    pairs: &[Pair],
    chunk: usize,
    mut f: impl FnMut(&[Pair]) -> anyhow::Result<Tensor<1>>,
) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(pairs.len());
    for c in pairs.chunks(chunk.max(1)) {
        out.extend(
            f(c)?
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
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
        };
        Llama::init(config, &mut rng(3, 0), &crate::device::test_device()).unwrap()
    }

    #[test]
    fn response_logprobs_sum_the_response_tokens_only_and_ignore_batch_padding() {
        let model = tiny(false);
        let d = crate::device::test_device();
        let a: Pair = (vec![1, 5, 6], vec![7, 8, 2]);
        let b: Pair = (vec![1, 4], vec![9]);
        let together = response_logprobs(&model, &[a.clone(), b.clone()], 0, &d)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let alone_a = response_logprobs(&model, &[a.clone()], 0, &d).into_scalar::<f32>();
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
    fn final_values_read_the_last_real_token() {
        let model = tiny(true);
        let d = crate::device::test_device();
        let a: Pair = (vec![1, 5, 6], vec![7, 8, 2]);
        let b: Pair = (vec![1, 4], vec![9]);
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
        assert!(final_values(&tiny(false), &[(vec![1], vec![2])], 0, &d).is_err());
    }
}
