//! Gemma-3-270M (the pretrained base model, Q4_K_M: F32, Q8_0, Q5_0, Q4_K and Q6_K tensors,
//! 262,144 tokens) against llama.cpp on the same file: tokenizer ids, greedy decoding on the
//! native path (the file's own blocks) and on the f32 burn model. `cargo xtask fetch gemma3`
//! puts the file in the cache; llama.cpp is `llama-cpp-python` in the cached virtualenv
//! (`cargo xtask setup-python`).

mod common;

use common::{gemma3, lmlab, python_with, reference, run};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_tokenizer_ids_equal_llama_cpp() {
    let Some(model) = gemma3() else { return };
    let Some(python) = python_with(&["llama_cpp"]) else {
        return;
    };
    let texts = [
        "The capital of France is",
        "In 2024, 1234567 people paid $3.50 each.",
        "  leading spaces,\ttabs\t\tand   runs    of spaces\n\n\nnewlines",
        "naïve café — déjà vu; Ελληνικά, русский, 日本語のテキスト, emoji 🙂👍",
        "<start_of_turn>user\nHi<end_of_turn>\ncode: fn main() { println!(\"{}\", x); }",
        "",
    ];
    let tok = lmlab::lm::load::tokenizer(&model, None).unwrap();
    let as_text = tok.with_special_as_text();
    for (command, tok) in [
        ("llama-tokenize", &as_text),
        ("llama-tokenize-special", &tok),
    ] {
        let mut args = vec![command.to_string(), model.display().to_string()];
        args.extend(texts.iter().map(|t| t.to_string()));
        let want = reference(&python, &args);
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(tok.encode(text, false), ids(&want[i]), "{command} {text:?}");
        }
    }
    // Parsed as special tokens, the chat template's turn markers are single tokens.
    let turn = tok.encode("<start_of_turn>user\n", false);
    assert_eq!(turn.len(), 3, "{turn:?}");
    let hi = tok.encode("Hello world", false);
    assert_eq!(tok.decode(&hi, None), "Hello world");
}

/// The number of leading tokens on which `ours` (greedy under `logits`) equals `theirs`, up to
/// a first disagreement that must be a near-tie: there, `logits` (after the common prefix)
/// rank our token above theirs by at most `tie` (float summation orders differ between CPUs'
/// kernels, and a near-tie may flip; past it the continuations differ by construction).
fn agreed_up_to_a_tie(
    what: &str,
    ours: &[u32],
    theirs: &[u32],
    tie: f32,
    logits: &dyn Fn(&[u32]) -> Vec<f32>,
) -> usize {
    let n = ours.len().min(theirs.len());
    let Some(k) = (0..n).find(|&i| ours[i] != theirs[i]) else {
        return n;
    };
    let l = logits(&ours[..k]);
    let (a, b) = (l[ours[k] as usize], l[theirs[k] as usize]);
    assert!(
        a - b <= tie,
        "{what}: token {k}: ours {} (logit {a}) vs the reference's {} (logit {b}): {} apart, \
         more than a near-tie ({tie})",
        ours[k],
        theirs[k],
        a - b
    );
    println!(
        "{what}: equal on {k} tokens, then a near-tie at token {k}: {} vs {}, {} apart",
        ours[k],
        theirs[k],
        a - b
    );
    k
}

/// Greedy continuations of three prompts: the native path (the file's blocks, activations
/// rounded to 8 bits like llama.cpp's) equals llama.cpp on the prefix where llama.cpp itself
/// agrees between prompt batches of 1 and 64, and the f32 burn model on the dequantized
/// weights agrees on the first 8 tokens; each up to a first disagreement that must be a
/// near-tie of its own logits (see [`agreed_up_to_a_tie`]), and 8 tokens per prompt on
/// average at least.
#[test]
fn gemma3_greedy_decoding_equals_llama_cpp() {
    use lmlab::burn::tensor::{Int, Tensor, TensorData};

    let Some(model) = gemma3() else { return };
    let Some(python) = python_with(&["llama_cpp"]) else {
        return;
    };
    let native = lmlab::lm::load::load_quantized(&model, None, None).unwrap();
    let device = lmlab::burn::tensor::Device::flex();
    let f32_model = lmlab::lm::load::load(&model, None, &device).unwrap();
    let n = 24;
    let params = lmlab::SamplingParams {
        temperature: 0.0,
        max_new_tokens: n,
        ..Default::default()
    };
    // llama.cpp keeps keys and values in f16 and its kernels differ by CPU: its AVX-512 and
    // AVX2 builds pick different tokens after "The capital of France is … in France" (" and"
    // vs ".", 0.035 apart in our logits). A real error moves logits by far more than 0.1.
    let tie = 0.1;
    let (mut compared, mut compared_f32) = (0, 0);
    for prompt in [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "Water boils at 100 degrees Celsius, which is",
    ] {
        let prompt_ids = native.tokenizer.encode(prompt, true);
        let mut args = vec![
            "llama-greedy-batches".to_string(),
            model.display().to_string(),
            n.to_string(),
        ];
        args.extend(prompt_ids.iter().map(|i| i.to_string()));
        let r = reference(&python, &args);
        let (one, many) = (ids(&r["1"]), ids(&r["64"]));
        let agreed = one.iter().zip(&many).take_while(|(a, b)| a == b).count();
        assert!(
            agreed >= 8,
            "{prompt:?}: llama.cpp's batch sizes agree on {agreed} tokens"
        );
        let ours = native
            .model
            .generate(&prompt_ids, &params, &[], &mut lmlab::rng::rng(0, 0))
            .tokens;
        let native_logits = |generated: &[u32]| {
            let mut s = native.model.session();
            let mut last = Vec::new();
            for &t in prompt_ids.iter().chain(generated) {
                last = s.feed(t).to_vec();
            }
            last
        };
        compared += agreed_up_to_a_tie(
            &format!(
                "{prompt:?}: native {:?} vs llama.cpp {:?}",
                native.tokenizer.decode(&ours, None),
                native.tokenizer.decode(&one, None)
            ),
            &ours,
            &one[..agreed],
            tie,
            &native_logits,
        );
        let f32_ours = lmlab::lm::sample::generate(
            &f32_model.model,
            &[prompt_ids.clone()],
            &lmlab::SamplingParams {
                max_new_tokens: 8,
                ..params.clone()
            },
            None,
            0,
            true,
            &mut lmlab::rng::rng(0, 0),
            &|_, _| false,
            &device,
        );
        let f32_logits = |generated: &[u32]| {
            let row: Vec<i64> = prompt_ids
                .iter()
                .chain(generated)
                .map(|&t| t as i64)
                .collect();
            let t = row.len();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(row, [1, t]), &device);
            let all: Vec<f32> = f32_model
                .model
                .forward(tokens, &[0], None)
                .into_data()
                .try_into_vec()
                .unwrap();
            all[all.len() - f32_model.model.config.vocab_size..].to_vec()
        };
        compared_f32 += agreed_up_to_a_tie(
            &format!("{prompt:?}: the f32 model"),
            &f32_ours[0].tokens,
            &one[..8],
            tie,
            &f32_logits,
        );
    }
    println!(
        "native greedy equals llama.cpp on {compared} tokens, the f32 model on {compared_f32}, \
         over 3 prompts"
    );
    assert!(compared >= 24, "native: {compared} tokens compared");
    assert!(compared_f32 >= 16, "f32: {compared_f32} tokens compared");
}

/// The base model continues a prompt on topic (greedy: " the capital of the country of
/// France. It is …", llama.cpp's continuation too) and completes a question with the fact.
#[test]
fn gemma3_continues_the_capital_of_france() {
    let Some(model) = gemma3() else { return };
    for (prompt, want) in [
        ("The capital of France is", "France"),
        ("Question: What is the capital of France?\nAnswer:", "Paris"),
    ] {
        let (code, out, err) = run(lmlab()
            .args([
                "generate",
                "--weights",
                "native",
                "--temperature",
                "0",
                "--max-new-tokens",
                "12",
                "--prompt",
                prompt,
                "--model",
            ])
            .arg(&model));
        assert_eq!(code, 0, "{err}");
        let continuation = out.trim_start_matches(prompt);
        assert!(continuation.contains(want), "{prompt:?} → {continuation:?}");
    }
}

/// The `checkpoint` policy on the native path (Gemma 3's own K-quant blocks): scoring a
/// completion in one batch gives the log-probabilities its sampler reported token by token,
/// and is close to the f32 burn model's (activations rounded to 8 bits).
#[test]
fn gemma3_native_policy_scores_as_it_samples() {
    use lmlab::Policy;
    let Some(model) = gemma3() else { return };
    let native = lmlab::lm::policy::NativePolicy::new(
        lmlab::lm::load::load_quantized(&model, None, None).unwrap(),
    );
    let params = lmlab::SamplingParams {
        temperature: 0.8,
        n: 2,
        max_new_tokens: 12,
        seed: 3,
        ..Default::default()
    };
    let prompts = vec!["The three primary colours are".to_string()];
    let out = native.generate(&prompts, &params).unwrap();
    let seqs: Vec<lmlab::Sequence> = out[0].iter().map(|c| c.sequence()).collect();
    let scored = native.log_probs(&seqs, 0.8).unwrap().per_token().unwrap();
    for (c, lp) in out[0].iter().zip(&scored) {
        assert_eq!(lp.len(), c.logprobs.len());
        for (a, b) in lp.iter().zip(&c.logprobs) {
            assert!((a - b).abs() <= 1e-4, "batched {a} vs decoded {b}");
        }
    }
    let f32_policy = lmlab::lm::policy::LmPolicy {
        model: lmlab::lm::load::load(&model, None, &lmlab::burn::tensor::Device::flex())
            .unwrap()
            .model,
        tokenizer: native.tokenizer.clone(),
        device: lmlab::burn::tensor::Device::flex(),
    };
    let want = f32_policy
        .log_probs(&seqs, 0.8)
        .unwrap()
        .per_token()
        .unwrap();
    let (mut worst, mut total, mut n) = (0f32, 0f32, 0);
    for (a, b) in scored.iter().flatten().zip(want.iter().flatten()) {
        worst = worst.max((a - b).abs());
        total += (a - b).abs();
        n += 1;
    }
    println!(
        "native vs f32 log-probs: max |Δ| {worst}, mean {}",
        total / n as f32
    );
    assert!(
        total / (n as f32) < 0.2 && worst < 1.0,
        "max {worst}, mean {}",
        total / n as f32
    );
}
