//! Ordered Memory against the parameter-matched LSTM baseline: one forward + backward pass
//! (cross-entropy on the last output) over a batch of ListOps sequences, at the
//! `ordered-memory` recipe's model sizes. Criterion reports time per batch; divide by the
//! batch's tokens (printed) for time per token.
//!
//! `cargo bench --bench ordered_memory`; `benches/README.md` records the numbers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lmlab::burn::module::Module;
use lmlab::burn::tensor::Device;
use lmlab::components::cross_entropy::CrossEntropy;
use lmlab::rng::rng;
use lmlab::train::{OptimConfig, Trainer};
use lmlab::{Objective, TensorMap};
use lmlab_plugin_ordered_memory::listops::{Example, ListOpsConfig, ListOpsTask};
use lmlab_plugin_ordered_memory::model::{Batch, LstmClassifier, OrderedMemory};
use lmlab_plugin_ordered_memory::{Classifier, OrderedMemoryConfig};

/// The recipe's scheduler table, so the bench measures the models the recipe trains.
fn recipe_config() -> OrderedMemoryConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes/ordered-memory.toml"
    ))
    .expect("recipes/ordered-memory.toml");
    let recipe: toml::Table = toml::from_str(&text).expect("the recipe parses");
    let mut sched = recipe["scheduler"].as_table().expect("[scheduler]").clone();
    sched.remove("use");
    sched
        .try_into()
        .expect("the scheduler table is an OrderedMemoryConfig")
}

fn step<M: Classifier>(model: &M, batch: &Batch) {
    let logits = model.logits(batch, &mut None);
    let out = CrossEntropy
        .loss(
            &TensorMap::new()
                .with("logits", logits)
                .with("labels", batch.labels.clone()),
        )
        .expect("a loss");
    black_box(out.loss.backward());
}

fn bench(c: &mut Criterion) {
    let cfg = recipe_config();
    let task = ListOpsTask::new(
        ListOpsConfig {
            n_train: 128,
            n_validation: 1,
            n_test: 1,
            n_long: 0,
            min_len: 20,
            max_len: 20,
            ..Default::default()
        },
        0,
    );
    let [train, _, _, _] = task.generated().expect("generated");
    let examples: Vec<&Example> = train.iter().collect();
    let device = Device::flex().autodiff();
    let batch = Batch::new(&examples, &device);
    let tokens = examples.len() * 20;
    let om = OrderedMemory::init(&cfg.om, &mut rng(0, 0), &device);
    let embed = cfg.lstm.embed.unwrap_or(cfg.om.hidden);
    let hidden = cfg
        .lstm
        .hidden
        .unwrap_or_else(|| LstmClassifier::matched_hidden(embed, om.num_params()));
    let lstm = LstmClassifier::init(&cfg.lstm, embed, hidden, &mut rng(0, 1), &device);
    eprintln!(
        "batch {} × 20 = {tokens} tokens; Ordered Memory {} parameters ({} slots), LSTM {} (hidden {hidden})",
        examples.len(),
        om.num_params(),
        cfg.om.slots,
        lstm.num_params()
    );
    // A trained Ordered Memory (its pointer sharp, so many slots are active on few rows):
    // `LMLAB_OM_CHECKPOINT` names a checkpoint directory of the recipe's Ordered Memory
    // (`runs/ordered-memory/<time>/checkpoints/ordered-memory-seed0`).
    let trained = std::env::var_os("LMLAB_OM_CHECKPOINT").map(|dir| {
        let mut t = Trainer::new(om.clone(), OptimConfig::default(), 1);
        t.load_latest(std::path::Path::new(&dir))
            .expect("a readable checkpoint")
            .expect("LMLAB_OM_CHECKPOINT holds a checkpoint");
        eprintln!(
            "trained Ordered Memory from {} (step {})",
            dir.to_string_lossy(),
            t.step
        );
        t.model
    });
    let mut g = c.benchmark_group("forward+backward per batch of 128 × 20 tokens");
    g.sample_size(10);
    g.bench_function("ordered-memory", |b| b.iter(|| step(&om, &batch)));
    if let Some(m) = &trained {
        let every = m.clone().with_row_gathering(false);
        let gathered = m.clone().with_row_gathering(true);
        g.bench_function("ordered-memory trained, cells on every row", |b| {
            b.iter(|| step(&every, &batch))
        });
        g.bench_function("ordered-memory trained, cells on active rows", |b| {
            b.iter(|| step(&gathered, &batch))
        });
    }
    g.bench_function("lstm", |b| b.iter(|| step(&lstm, &batch)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
