//! LM-core benches: one train step (forward + backward + AdamW) of the sft-arith transformer at
//! two sizes, generation tokens/s with and without the KV cache, and stories260K greedy
//! tokens/s (skipped when `../shared/data` is absent).
//!
//! `cargo bench --bench lm`. `benches/pytorch_reference.py` times the identical train step in
//! PyTorch eager; `benches/README.md` records both.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lmlab::burn::tensor::{Device, Int, Tensor, TensorData};
use lmlab::lm::sample::generate;
use lmlab::lm::{Llama, LlamaConfig};
use lmlab::policy::SamplingParams;
use lmlab::rng::rng;
use lmlab::train::{OptimConfig, Trainer};

/// The benchmark models: (name, config, batch, sequence length).
fn sizes() -> Vec<(&'static str, LlamaConfig, usize, usize)> {
    let base = LlamaConfig {
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
    };
    let large = LlamaConfig {
        dim: 256,
        n_layers: 6,
        n_heads: 8,
        n_kv_heads: 4,
        hidden_dim: 704,
        ..base.clone()
    };
    vec![("sft-arith-0.75M", base, 32, 100), ("4.4M", large, 16, 128)]
}

fn train_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for (name, config, batch, seq) in sizes() {
        let model = Llama::init(config.clone(), &mut rng(0, 0), &device).unwrap();
        let mut trainer = Trainer::new(model, OptimConfig::default(), 1_000_000);
        let ids: Vec<i64> = (0..batch * seq)
            .map(|i| (i * 7919 % config.vocab_size) as i64)
            .collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
        let pad = vec![0; batch];
        group.throughput(Throughput::Elements((batch * seq) as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let loss = -trainer
                    .model
                    .token_logprobs(tokens.clone(), &pad, 1.0)
                    .mean();
                black_box(trainer.step(loss));
            })
        });
    }
    group.finish();
}

fn generation(c: &mut Criterion) {
    let device = Device::flex();
    let (_, config, _, _) = sizes().remove(0);
    let model = Llama::init(config, &mut rng(0, 0), &device).unwrap();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| vec![1, 5 + i, 9, 11]).collect();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 64,
        ..Default::default()
    };
    let mut group = c.benchmark_group("generate_8x64");
    group.sample_size(10);
    group.throughput(Throughput::Elements(8 * 64));
    for (name, cache) in [("kv_cache", true), ("recompute", false)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut r = rng(0, 0);
                black_box(generate(
                    &model,
                    &prompts,
                    &params,
                    None,
                    0,
                    cache,
                    &mut r,
                    &|_, _| false,
                    &device,
                ))
            })
        });
    }
    group.finish();
}

fn stories260k(c: &mut Criterion) {
    let dir = std::env::var_os("LMLAB_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = dir.join("stories260k/stories260K.bin");
    if !path.is_file() {
        println!("SKIPPED stories260k: {} is absent", path.display());
        return;
    }
    let device = Device::flex();
    let loaded = lmlab::lm::load::load(&path, None, &device).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 199,
        ..Default::default()
    };
    let mut group = c.benchmark_group("stories260k_greedy");
    group.sample_size(10);
    group.throughput(Throughput::Elements(199));
    group.bench_function("199_tokens", |b| {
        b.iter(|| {
            let mut r = rng(0, 0);
            black_box(generate(
                &loaded.model,
                &[vec![1]],
                &params,
                None,
                0,
                true,
                &mut r,
                &|_, _| false,
                &device,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, train_step, generation, stories260k);
criterion_main!(benches);
