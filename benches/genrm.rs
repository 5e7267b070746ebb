//! The cost of scoring the N = 32 candidates of one out-of-distribution `last-letter` problem
//! (6 words) three ways: an ORM (value head at the last token), GenRM-Direct (p(" Yes") after
//! the question) and GenRM-CoT with K = 8 rationales per candidate (sampled at the recipe's
//! temperature, then p(" Yes") after each). The model is the `genrm` recipe's size over a BPE
//! built as the recipe builds it (the header and instructions one token each). Its weights are
//! untrained, so each rationale runs for as many tokens as the re-executed rationale of the
//! reference solution has: the longest a trained verifier writes (one that finds a wrong step
//! stops there). The 32 candidates are distinct (the recipe scores identical ones once).
//!
//! `cargo bench --bench genrm`; `benches/README.md` records the numbers (per candidate: the
//! time over 32).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lmlab::Sequence;
use lmlab::burn::tensor::Device;
use lmlab::lm::fit::final_values;
use lmlab::lm::policy::{LmPolicy, ModelSize};
use lmlab::lm::tokenizer::train_bpe;
use lmlab::lm::{Llama, LlamaConfig};
use lmlab::lmlab_plugin_genrm::critic::{cot_target, critique, rationale};
use lmlab::lmlab_plugin_genrm::format::PHRASES;
use lmlab::lmlab_plugin_genrm::tasks::{Kind, WordTask, WordTaskConfig};
use lmlab::lmlab_plugin_genrm::verifier::{CotConfig, GenRm, Mode, ScoreConfig};
use lmlab::rng::rng;
use lmlab::tasks::training_text;
use lmlab::{Candidate, Completion, Split, Task, Verifier};

const N: usize = 32;

fn scoring(c: &mut Criterion) {
    let task = WordTask::new(Kind::LastLetter, WordTaskConfig::default(), 0).unwrap();
    let train = task.problems(Split::Train).unwrap();
    let problem = task.problems(Split::Test).unwrap().remove(0);
    let mut texts: Vec<String> = train.iter().take(2000).map(training_text).collect();
    for p in train.iter().take(500) {
        texts.push(cot_target(p, &p.solution, true).unwrap());
    }
    let recipe: toml::Table = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/genrm.toml"))
            .expect("recipes/genrm.toml"),
    )
    .expect("the recipe parses");
    let merges = recipe["policy"]["tokenizer"]["bpe_merges"]
        .as_integer()
        .expect("[policy.tokenizer] bpe_merges") as usize;
    let tok = train_bpe(texts.iter().map(String::as_str), merges)
        .unwrap()
        .with_phrases(&PHRASES);
    let size: ModelSize = recipe["policy"]["model"]
        .clone()
        .try_into()
        .expect("[policy.model] is a model size");
    let device = Device::flex();
    let config = LlamaConfig {
        value_head: true,
        ..size.llama_config(tok.vocab_size())
    };
    let model = Llama::init(config, &mut rng(0, 0), &device).unwrap();
    let policy = LmPolicy {
        model: model.clone(),
        tokenizer: tok.clone(),
        device: device.clone(),
    };
    // 32 distinct candidates: the reference solution, and 31 with one letter of the answer
    // changed (position i % 6 to the letter i / 6 + 'p'): what a sampled pool of one
    // problem looks like after identical samples are merged.
    let letters: Vec<char> = problem.answer.chars().collect();
    let candidates: Vec<Candidate> = (0..N)
        .map(|i| {
            let mut answer = letters.clone();
            if i > 0 {
                answer[i % letters.len()] = (b'p' + (i / letters.len()) as u8) as char;
            }
            let answer: String = answer.iter().collect();
            let text = problem.solution.replace(&problem.answer, &answer);
            Candidate {
                problem: 0,
                completion: Completion {
                    prompt: tok.encode(&problem.prompt, true),
                    token_ids: tok.encode(&text, false),
                    text,
                    logprobs: vec![],
                    finished: true,
                },
                correct: answer == problem.answer,
                answer: Some(answer),
            }
        })
        .collect();
    let problems = std::slice::from_ref(&problem);
    let (steps, _) = rationale(&critique(&problem, &problem.solution).unwrap());
    let rationale_tokens = tok.encode(&steps, false).len();
    let seqs: Vec<Sequence> = candidates.iter().map(|c| c.completion.sequence()).collect();
    let score = ScoreConfig::default();
    let direct = GenRm::of(policy.clone(), Mode::Direct, score.clone(), 0);
    let cot = GenRm::of(
        policy,
        Mode::Cot(CotConfig {
            k: 8,
            temperature: 0.7,
            max_new_tokens: rationale_tokens,
        }),
        score,
        0,
    );

    let mut group = c.benchmark_group("score_32_candidates");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("orm_value_head", |b| {
        b.iter(|| black_box(final_values(&model, &seqs, tok.pad(), &device).unwrap()))
    });
    group.bench_function("genrm_direct", |b| {
        b.iter(|| black_box(direct.scores(problems, &candidates).unwrap()))
    });
    group.bench_function("genrm_cot_k8", |b| {
        b.iter(|| black_box(cot.scores(problems, &candidates).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
