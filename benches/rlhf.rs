//! Generation and training throughput of the `async-rlhf` recipe's run shape, measured
//! separately: `G` = one generation round (sampling 32 prompts × 2 samples with the KV cache,
//! reward-model scores and reference log-probs) and `T` = one learner update (online DPO, PPO
//! with its critic, RLOO). The async speed-up bound is `(G + T) / max(G, T)` per round.
//!
//! `cargo bench --bench rlhf`; `benches/README.md` records the numbers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lmlab::Objective;
use lmlab::burn::tensor::Device;
use lmlab::components::dpo::Dpo;
use lmlab::components::rl::{ClippedValue, Ppo, Rloo};
use lmlab::pipeline::{Generator, Learner, Tagged};
use lmlab_plugin_async_rlhf::toy_tldr::{ToyTldrConfig, ToyTldrTask};
use lmlab_plugin_async_rlhf::{AsyncRlhfConfig, Method, throughput_setup};

/// The recipe's scheduler table, so the bench measures the shapes the recipe runs.
fn recipe_config() -> AsyncRlhfConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes/async-rlhf.toml"
    ))
    .expect("recipes/async-rlhf.toml");
    let recipe: toml::Table = toml::from_str(&text).expect("the recipe parses");
    let mut sched = recipe["scheduler"].as_table().expect("[scheduler]").clone();
    sched.remove("use");
    sched
        .try_into()
        .expect("the scheduler table is an AsyncRlhfConfig")
}

fn bench(c: &mut Criterion) {
    let cfg = recipe_config();
    let task = ToyTldrTask::new(
        ToyTldrConfig {
            n_train: 1000,
            ..Default::default()
        },
        0,
    );
    let device = Device::flex();
    let (dpo, ppo, value, rloo) = (
        Dpo { beta: 0.3 },
        Ppo { clip: 0.2 },
        ClippedValue { clip: 0.2 },
        Rloo { clip: 0.2 },
    );
    let mut group = c.benchmark_group("rlhf");
    group.sample_size(30);
    let setups: [(Method, &dyn Objective, Option<&dyn Objective>); 3] = [
        (Method::OnlineDpo, &dpo, None),
        (Method::Ppo, &ppo, Some(&value)),
        (Method::Rloo, &rloo, None),
    ];
    for (i, (method, objective, value_objective)) in setups.into_iter().enumerate() {
        let (mut generator, mut learner) =
            throughput_setup(&cfg, &task, method, 1, objective, value_objective, &device)
                .expect("setup");
        let weights = learner.weights();
        if i == 0 {
            group.bench_function(
                "G: generate one round (32 prompts x 2 samples, RM, reference)",
                |b| b.iter(|| black_box(generator.generate(0, &weights).expect("generate"))),
            );
        }
        let batch = generator.generate(0, &weights).expect("generate").remove(0);
        group.bench_function(format!("T: learner update ({})", method.name()), |b| {
            b.iter(|| {
                let tagged = Tagged {
                    round: 0,
                    minibatch: 0,
                    version: 0,
                    data: batch.clone(),
                };
                learner.learn(tagged, 0).expect("learn")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
