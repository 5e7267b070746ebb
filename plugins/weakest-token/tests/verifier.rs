//! The verifier `weakest-token` builds from its recipe table, refuses unknown fields, and
//! scores a candidate by its least likely token.

use lmlab_sdk::burn::tensor::Device;
use lmlab_sdk::fit::FitCx;
use lmlab_sdk::lm::Llama;
use lmlab_sdk::lm::policy::{LmPolicy, ModelSize};
use lmlab_sdk::lm::tokenizer::{CharTokenizer, Tokenizer};
use lmlab_sdk::registry::{self, BuildContext, Kind};
use lmlab_sdk::rng::rng;
use lmlab_sdk::{Candidate, Completion, Policy, Sequence, VerifierSpec};

fn spec(table: &str) -> anyhow::Result<Box<dyn VerifierSpec>> {
    // Naming the crate links it, and with it its registration.
    let _ = lmlab_plugin_weakest_token::Spec;
    let factory = registry::find(Kind::Verifier, "weakest-token").expect("registered");
    let device = Device::flex();
    let ctx = BuildContext {
        device: &device,
        seed: 0,
        role: "verifier",
    };
    let built = (factory.build)(&lmlab_sdk::toml::from_str(table)?, &ctx)?;
    Ok(built.downcast().ok().expect("a verifier"))
}

#[test]
fn weakest_token_scores_the_least_likely_response_token() {
    let tokenizer = Tokenizer::Char(CharTokenizer::new("ab"));
    let size = ModelSize {
        dim: 16,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        hidden_dim: 24,
        max_seq_len: 16,
    };
    let device = Device::flex();
    let model = Llama::init(
        size.llama_config(tokenizer.vocab_size()),
        &mut rng(1, 0),
        &device,
    )
    .unwrap();
    let policy = LmPolicy {
        model,
        tokenizer,
        device: device.clone(),
    };
    let seq = Sequence::new(
        policy.tokenizer.encode("ab", true),
        policy.tokenizer.encode("bba", false),
    );
    let completion = Completion {
        prompt: seq.prompt.clone(),
        token_ids: seq.response.clone(),
        text: "bba".into(),
        logprobs: vec![],
        finished: false,
    };
    let candidates = vec![Candidate {
        problem: 0,
        completion,
        correct: true,
        answer: None,
    }];
    let mut r = rng(0, 0);
    let mut cx = FitCx {
        init: &policy,
        device: &device,
        rng: &mut r,
        quiet: true,
        label: "test",
    };
    let verifier = spec("")
        .unwrap()
        .fit(&mut cx, &[], &candidates)
        .unwrap()
        .model;
    let tokens = policy
        .log_probs(&[seq], 1.0)
        .unwrap()
        .per_token()
        .unwrap()
        .remove(0);
    assert_eq!(tokens.len(), 3);
    let least = tokens.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(verifier.scores(&[], &candidates).unwrap(), vec![least]);
    assert!(
        spec("batch = 4")
            .err()
            .unwrap()
            .to_string()
            .contains("batch")
    );
}
