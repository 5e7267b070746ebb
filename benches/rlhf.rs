//! Generation and training throughput of the `async-rlhf` recipe's run shape, measured
//! separately: `G` = one generation round (sampling 32 prompts × 2 samples with the KV cache,
//! reward-model scores and reference log-probs) and `T` = one learner update of each
//! registered RL method (online DPO, PPO with its critic, RLOO). The async speed-up bound is
//! `(G + T) / max(G, T)` per round.
//!
//! `cargo bench --bench rlhf`; `benches/README.md` records the numbers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lmlab::burn::module::Module;
use lmlab::burn::tensor::Device;
use lmlab::components::dpo::Dpo;
use lmlab::components::rl::{ClippedValue, Ppo, Rloo};
use lmlab::lm::Llama;
use lmlab::lm::policy::{LmPolicy, ModelSize, TokenizerConfig, TokenizerKind};
use lmlab::pipeline::{Generator, Learner, Tagged};
use lmlab::reward_models::Learned;
use lmlab::rl::{RlConfig, RlLearner, RolloutGenerator, methods};
use lmlab::rng::rng;
use lmlab::sampling::{TemperatureConfig, TemperatureSampler};
use lmlab::tasks::TextProblem;
use lmlab::train::Trainer;
use lmlab::verifiers::ValueHead;
use lmlab::{Objective, RewardModel, Split};
use lmlab_sdk::tasks::toy_tldr::{Document, ToyTldrConfig, ToyTldrTask};

/// A table of the `async-rlhf` recipe, so the bench measures the shapes the recipe runs.
fn recipe_table<T: lmlab::serde::de::DeserializeOwned>(path: &[&str]) -> T {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes/async-rlhf.toml"
    ))
    .expect("recipes/async-rlhf.toml");
    let mut v: toml::Value = toml::from_str(&text).expect("the recipe parses");
    for p in path {
        v = v[p].clone();
    }
    if let toml::Value::Table(t) = &mut v {
        t.remove("use");
    }
    v.try_into().expect("the recipe's table")
}

fn bench(c: &mut Criterion) {
    let task = ToyTldrTask::new(
        ToyTldrConfig {
            n_train: 1000,
            ..Default::default()
        },
        0,
    );
    let docs = task.documents(Split::Train);
    let problems: Vec<TextProblem> = docs.iter().map(Document::problem).collect();
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|d| [d.prompt(), d.reference.clone(), d.ideal()])
        .collect();
    let tok = TokenizerConfig {
        kind: TokenizerKind::Char,
        bpe_merges: 0,
    }
    .build(&texts)
    .unwrap();
    let size: ModelSize = recipe_table(&["policy", "model"]);
    let sampler = TemperatureSampler {
        config: recipe_table::<TemperatureConfig>(&["sampler"]),
    };
    let config = size.llama_config(tok.vocab_size());
    let (device, train_device) = (Device::flex(), Device::flex().autodiff());
    let mut r = rng(0, 0);
    let policy = Llama::init(config.clone(), &mut r, &train_device).unwrap();
    let rm_model = Llama::init(config, &mut r, &device)
        .unwrap()
        .with_value_head(&mut r, &device);
    let rm = Learned {
        head: ValueHead {
            model: rm_model,
            pad: tok.pad(),
            device: device.clone(),
            batch: 128,
        },
        bias: 0.0,
    };
    let reference = LmPolicy {
        model: policy.valid(),
        tokenizer: tok.clone(),
        device: device.clone(),
    };
    let rl = RlConfig::default();
    let mut generator = RolloutGenerator {
        problems: &problems,
        tokenizer: &tok,
        sampler: &sampler,
        reward: &rm,
        gold: None,
        reference: &reference,
        prompts_per_minibatch: rl.prompts_per_minibatch,
        n: 1,
        seed: 0,
        device: device.clone(),
    };
    let weights = policy.valid();
    let (dpo, ppo, value, rloo) = (
        Dpo { beta: 0.3 },
        Ppo { clip: 0.2 },
        ClippedValue { clip: 0.2 },
        Rloo { clip: 0.2 },
    );
    let objective = |role: &str| -> &dyn Objective {
        match role {
            "dpo_objective" => &dpo,
            "ppo_objective" => &ppo,
            "value_objective" => &value,
            _ => &rloo,
        }
    };
    let mut group = c.benchmark_group("rlhf");
    group.sample_size(30);
    group.bench_function(
        "G: generate one round (32 prompts x 2 samples, RM, reference)",
        |b| b.iter(|| black_box(generator.generate(0, &weights).expect("generate"))),
    );
    let batch = generator.generate(0, &weights).expect("generate").remove(0);
    for method in methods::all() {
        let critic = method.needs_critic().then(|| {
            Trainer::new(
                rm.critic(&train_device).unwrap().unwrap(),
                rl.value_optim.clone(),
                rl.updates,
            )
        });
        let mut learner = RlLearner {
            method: method.as_ref(),
            policy: Trainer::new(policy.clone(), rl.optim.clone(), rl.updates),
            critic,
            objectives: method.roles().iter().map(|r| objective(r.role)).collect(),
            cfg: rl.clone(),
            temperature: 1.0,
            k: 2,
            pad: tok.pad(),
            device: train_device.clone(),
            records: Vec::new(),
            gold: Vec::new(),
        };
        group.bench_function(format!("T: learner update ({})", method.label()), |b| {
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
