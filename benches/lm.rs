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
use lmlab::lm::Llama;
use lmlab::lm::bench::{bench_models, bench_tokens};
use lmlab::lm::sample::generate;
use lmlab::policy::SamplingParams;
use lmlab::rng::rng;
use lmlab::train::{OptimConfig, Trainer};

fn train_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    // The CPU-sized bench models (the 125M one is for `gpu-check.sh`).
    for m in bench_models().into_iter().take(2) {
        let (name, batch, seq) = (m.name, m.batch, m.seq);
        let model = Llama::init(m.config.clone(), &mut rng(0, 0), &device).unwrap();
        let mut trainer = Trainer::new(model, OptimConfig::default(), 1_000_000);
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(bench_tokens(&m), [batch, seq]), &device);
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
    let config = bench_models().remove(0).config;
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
