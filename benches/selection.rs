//! The cost of choosing one of N = 64 candidate solutions for one problem, three ways (the
//! V-STaR recipe's selection methods): majority vote over the final answers, an ORM (value head
//! at the last token), and the DPO verifier (sequence log-likelihood). Both model-based methods
//! use the `v-star` recipe's model size (dim 64, 3 layers) with a 362-token BPE vocabulary.
//!
//! `cargo bench --bench selection`; `benches/README.md` records the numbers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lmlab::Sequence;
use lmlab::burn::tensor::Device;
use lmlab::lm::fit::{final_values, response_logprobs};
use lmlab::lm::policy::ModelSize;
use lmlab::lm::tokenizer::train_bpe;
use lmlab::lm::{Llama, LlamaConfig};
use lmlab::metrics::{best_of_k, majority_vote};
use lmlab::rng::rng;
use lmlab::tasks::final_answer;

const N: usize = 64;

fn candidates() -> (String, Vec<String>) {
    let prompt =
        "Mia has 7 pens. She gets 15 more. She gives away 3. How many pens does Mia have?\n"
            .to_string();
    let cands = (0..N)
        .map(|i| {
            let (a, b) = (7 + 15 + i % 5, 7 + 15 + i % 5 - 3);
            format!("7+15={a}. {a}-3={b}. #### {b}")
        })
        .collect();
    (prompt, cands)
}

fn selection(c: &mut Criterion) {
    let (prompt, cands) = candidates();
    let texts: Vec<String> = cands.iter().map(|s| format!("{prompt}{s}")).collect();
    let tok = train_bpe(texts.iter().map(String::as_str).cycle().take(2000), 200).unwrap();
    let device = Device::flex();
    // The `v-star` recipe's model size, with a value head for the ORM.
    let recipe: toml::Table = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/v-star.toml"))
            .expect("recipes/v-star.toml"),
    )
    .expect("the recipe parses");
    let size: ModelSize = recipe["policy"]["model"]
        .clone()
        .try_into()
        .expect("[policy.model] is a model size");
    let config = LlamaConfig {
        value_head: true,
        arch: Default::default(),
        ..size.llama_config(362.max(tok.vocab_size()))
    };
    let model = Llama::init(config, &mut rng(0, 0), &device).unwrap();
    let pairs: Vec<Sequence> = cands
        .iter()
        .map(|s| {
            let mut r = tok.encode(s, false);
            r.push(tok.eos());
            Sequence::new(tok.encode(&prompt, true), r)
        })
        .collect();
    let correct: Vec<bool> = cands.iter().map(|s| s.ends_with("#### 19")).collect();

    let mut group = c.benchmark_group("select_one_of_64");
    group.sample_size(20);
    group.bench_function("majority_vote", |b| {
        b.iter(|| {
            let answers: Vec<Option<String>> = cands.iter().map(|s| final_answer(s)).collect();
            black_box(majority_vote(answers.iter().map(|a| a.as_deref())).map(str::to_owned))
        })
    });
    group.bench_function("orm_value_head", |b| {
        b.iter(|| {
            let scores = final_values(&model, &pairs, tok.pad(), &device)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            black_box(best_of_k(&scores, &correct, 1))
        })
    });
    group.bench_function("dpo_verifier_loglik", |b| {
        b.iter(|| {
            let scores = response_logprobs(&model, &pairs, tok.pad(), &device)
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            black_box(best_of_k(&scores, &correct, 1))
        })
    });
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
