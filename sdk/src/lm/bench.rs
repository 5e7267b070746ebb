//! Speed measurements of the LM core on any device: the train-step models of the benches, a
//! forward-pass agreement check between a device and the `cpu` backend, and KV-cached decoding
//! speed with peak memory. `lmlab bench` prints them as JSON lines; `benches/lm.rs`,
//! `cargo xtask bench-compare` and the GPU bundle's `gpu-check.sh` use them, and
//! `benches/pytorch_reference.py` builds the same models in PyTorch.

use std::time::Instant;

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::error::Error;
use crate::lm::quant::QLlama;
use crate::lm::sample::generate;
use crate::lm::{Llama, LlamaConfig};
use crate::metrics::median;
use crate::policy::SamplingParams;
use crate::rng::rng;
use crate::train::{OptimConfig, Trainer};

/// A benchmark model and the batch it trains on.
#[derive(Clone, Debug)]
pub struct BenchModel {
    pub name: &'static str,
    pub config: LlamaConfig,
    pub batch: usize,
    /// Tokens per row (the step predicts `seq − 1` of them).
    pub seq: usize,
}

/// The bench models, smallest first: the `sft-arith` recipe's transformer, a 4.4M-parameter one,
/// and a ~125M-parameter one (SmolLM2's vocabulary, GPT-2-small's width and depth) for GPUs.
/// `benches/pytorch_reference.py` lists the same ones.
pub fn bench_models() -> Vec<BenchModel> {
    let small = LlamaConfig {
        vocab_size: 64,
        dim: 128,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        hidden_dim: 352,
        max_seq_len: 256,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
        value_head: false,
        arch: Default::default(),
    };
    let medium = LlamaConfig {
        dim: 256,
        n_layers: 6,
        n_heads: 8,
        n_kv_heads: 4,
        hidden_dim: 704,
        ..small.clone()
    };
    let large = LlamaConfig {
        vocab_size: 49_152,
        dim: 768,
        n_layers: 12,
        n_heads: 12,
        n_kv_heads: 12,
        hidden_dim: 2048,
        max_seq_len: 1024,
        ..small.clone()
    };
    vec![
        BenchModel {
            name: "sft-arith-0.75M",
            config: small,
            batch: 32,
            seq: 100,
        },
        BenchModel {
            name: "4.4M",
            config: medium,
            batch: 16,
            seq: 128,
        },
        BenchModel {
            name: "125M",
            config: large,
            batch: 8,
            seq: 512,
        },
    ]
}

/// The bench model called `name`.
pub fn bench_model(name: &str) -> Result<BenchModel, Error> {
    let all = bench_models();
    let names: Vec<&str> = all.iter().map(|m| m.name).collect();
    all.iter().find(|m| m.name == name).cloned().ok_or_else(|| {
        Error::Usage(format!(
            "unknown bench model `{name}`: use one of {}",
            names.join(", ")
        ))
    })
}

/// The bench batch: token `i` (row-major) is `7919·i mod vocab`, as in the PyTorch reference.
pub fn bench_tokens(m: &BenchModel) -> Vec<i64> {
    (0..m.batch * m.seq)
        .map(|i| (i * 7919 % m.config.vocab_size) as i64)
        .collect()
}

/// Sets the device's default float type (`f32` or `bf16`). Must come before any tensor is made
/// on the device.
pub fn set_float_dtype(device: &mut Device, dtype: &str) -> Result<(), Error> {
    let float = match dtype {
        "f32" => FloatDType::F32,
        "bf16" => FloatDType::BF16,
        other => {
            return Err(Error::Usage(format!(
                "unknown dtype `{other}`: use f32 or bf16"
            )));
        }
    };
    if float == FloatDType::F32 {
        return Ok(());
    }
    device
        .configure(float)
        .map_err(|e| Error::Usage(format!("dtype {dtype} on this device: {e:?}")))
}

/// Train-step timings of one bench model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainTiming {
    pub model: String,
    pub params: usize,
    /// Tokens predicted per step: `batch · (seq − 1)`.
    pub tokens: usize,
    /// Median over the timed steps.
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// `6 · params · tokens / time`, in TFLOP/s (the usual dense-transformer estimate).
    pub tflops: f64,
    pub steps: usize,
    /// The parameters' dtype as the device holds them (`F32`, `BF16`).
    pub param_dtype: String,
}

/// Times `steps` train steps (forward, backward, AdamW: the mean next-token NLL, as
/// `benches/pytorch_reference.py`) after `warmup` untimed ones. `device` is the plain device;
/// the model trains on its autodiff twin. Each step ends with a device sync.
pub fn time_train_steps(
    m: &BenchModel,
    device: &Device,
    warmup: usize,
    steps: usize,
) -> Result<TrainTiming, Error> {
    let device = device.clone().autodiff();
    let model = Llama::init(m.config.clone(), &mut rng(0, 0), &device).map_err(Error::Usage)?;
    let param_dtype = format!("{:?}", model.embed.val().dtype());
    let mut trainer = Trainer::new(model, OptimConfig::default(), 1_000_000);
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(bench_tokens(m), [m.batch, m.seq]), &device);
    let pad = vec![0; m.batch];
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = -trainer
            .model
            .token_logprobs(tokens.clone(), &pad, 1.0)
            .mean();
        trainer.step(loss);
        device
            .sync()
            .map_err(|e| Error::Usage(format!("device sync: {e:?}")))?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let secs = median(&times);
    let params = m.config.num_params();
    let predicted = m.batch * (m.seq - 1);
    Ok(TrainTiming {
        model: m.name.to_string(),
        params,
        tokens: predicted,
        ms_per_step: 1000.0 * secs,
        tokens_per_s: predicted as f64 / secs,
        tflops: 6.0 * params as f64 * predicted as f64 / secs / 1e12,
        steps,
        param_dtype,
    })
}

/// The largest difference between `device`'s logits and the `cpu` backend's for the same small
/// model and batch (one row left-padded, so the masked path is checked too), relative to the
/// largest logit: `(max |a − b|, max |b|)`.
pub fn forward_check(device: &Device) -> Result<(f32, f32), Error> {
    let config = LlamaConfig {
        vocab_size: 97,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        hidden_dim: 160,
        max_seq_len: 64,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        value_head: false,
        arch: Default::default(),
    };
    let cpu = Device::flex();
    let reference = Llama::init(config.clone(), &mut rng(7, 0), &cpu).map_err(Error::Usage)?;
    let other =
        Llama::from_weights(config, reference.to_weights(), device).map_err(Error::Usage)?;
    let (b, t) = (3, 24);
    let ids: Vec<i64> = (0..b * t).map(|i| (i * 31 % 97) as i64).collect();
    let pad = [0, 5, 0];
    let logits = |model: &Llama, dev: &Device| -> Vec<f32> {
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), dev);
        let out = model.forward(tokens, &pad, None);
        out.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    };
    let want = logits(&reference, &cpu);
    let got = logits(&other, device);
    if want.len() != got.len() || want.is_empty() {
        return Err(Error::Usage(format!(
            "forward check: {} logits on the device, {} on cpu",
            got.len(),
            want.len()
        )));
    }
    let mut diff = 0f32;
    let mut scale = 0f32;
    // Padding positions' outputs are never used: skip them.
    for (row, &p) in pad.iter().enumerate() {
        for pos in p..t {
            let at = (row * t + pos) * 97;
            for j in at..at + 97 {
                diff = diff.max((want[j] - got[j]).abs());
                scale = scale.max(want[j].abs());
            }
        }
    }
    Ok((diff, scale))
}

/// KV-cached greedy decoding speed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeTiming {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The process's peak resident memory so far (`VmHWM`), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// Greedy decoding of `new_tokens` tokens after `prompt` with the KV cache, never stopping
/// early (no EOS), timed from the first forward pass to the last token.
pub fn time_decode(
    model: &Llama,
    prompt: &[u32],
    new_tokens: usize,
    device: &Device,
) -> DecodeTiming {
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = generate(
        model,
        &[prompt.to_vec()],
        &params,
        None,
        0,
        true,
        &mut rng(0, 0),
        &|_, _| false,
        device,
    );
    let seconds = t0.elapsed().as_secs_f64();
    let made = out.first().map_or(0, |s| s.tokens.len());
    DecodeTiming {
        prompt_tokens: prompt.len(),
        new_tokens: made,
        seconds,
        tokens_per_s: made as f64 / seconds,
        peak_rss_bytes: peak_rss_bytes(),
    }
}

/// [`time_decode`] for the block-quantized CPU engine.
pub fn time_quantized_decode(model: &QLlama, prompt: &[u32], new_tokens: usize) -> DecodeTiming {
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = model.generate(prompt, &params, &[], &mut rng(0, 0));
    let seconds = t0.elapsed().as_secs_f64();
    DecodeTiming {
        prompt_tokens: prompt.len(),
        new_tokens: out.tokens.len(),
        seconds,
        tokens_per_s: out.tokens.len() as f64 / seconds,
        peak_rss_bytes: peak_rss_bytes(),
    }
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;

    #[test]
    fn bench_models_match_their_names() {
        let models = bench_models();
        let params: Vec<usize> = models.iter().map(|m| m.config.num_params()).collect();
        assert_eq!(params[0], 746_624);
        assert_eq!(params[1], 4_443_392);
        assert!(
            (110_000_000..140_000_000).contains(&params[2]),
            "{}",
            params[2]
        );
        assert!(bench_model("4.4M").is_ok());
        let e = bench_model("7B").unwrap_err().to_string();
        assert!(e.contains("sft-arith-0.75M, 4.4M, 125M"), "{e}");
    }

    #[test]
    fn test_device_agrees_with_cpu() {
        let (diff, scale) = forward_check(&test_device()).unwrap();
        assert!(scale > 0.0);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "max |Δ| {diff} at scale {scale}"
        );
    }

    #[test]
    fn a_timed_step_and_decode_report_what_they_measured() {
        let mut m = bench_model("sft-arith-0.75M").unwrap();
        m.batch = 2;
        m.seq = 9;
        let t = time_train_steps(&m, &test_device(), 0, 2).unwrap();
        assert_eq!((t.tokens, t.steps, t.params), (16, 2, 746_624));
        assert!(t.ms_per_step > 0.0 && t.tokens_per_s.is_finite());
        let model = Llama::init(m.config, &mut rng(0, 0), &test_device()).unwrap();
        let d = time_decode(&model, &[1, 2, 3], 5, &test_device());
        assert_eq!((d.prompt_tokens, d.new_tokens), (3, 5));
        assert!(d.tokens_per_s > 0.0);
        #[cfg(target_os = "linux")]
        assert!(d.peak_rss_bytes.unwrap() > 1 << 20);
    }
}
