//! `lmlab serve` on 127.0.0.1, serving SmolLM2 (`cargo xtask fetch smollm2`): driven by the
//! `openai` policy (whose answers must equal in-process native decoding and scoring of the
//! same file exactly: the server batches, but per row its arithmetic is the decoder's) and by
//! the official `openai` Python client (in the cached virtualenv: `cargo xtask setup-python`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lmlab::Policy;
use lmlab::lm::openai::{OpenAiConfig, OpenAiPolicy};

/// Starts `lmlab serve --model MODEL --port 0 ARGS`; its base URL (`…/v1`) from the line it
/// prints once listening.
fn serve(model: &Path, args: &[&str]) -> (common::Server, String) {
    let mut child = common::lmlab()
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", "0", "--name", "smollm2"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("lmlab serve starts");
    let stdout = child.stdout.take().unwrap();
    let server = common::Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("lmlab serve printed its address within 60 s");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (server, url)
}

/// The `openai` policy pointed at `lmlab serve` gets what the in-process native policy gets:
/// greedy tokens, and echo + logprobs scores, exactly; concurrent requests (the policy sends
/// 4 at once) are batched by the server without changing them.
#[test]
fn the_openai_policy_against_lmlab_serve_equals_in_process() {
    let Some(model) = common::smollm2() else {
        return;
    };
    let (_server, base) = serve(&model, &[]);
    let served = OpenAiPolicy::new(OpenAiConfig {
        base_url: base.clone(),
        model: "smollm2".into(),
        tokenizer: model.clone(),
        timeout_s: 120.0,
        retries: 0,
        concurrency: 4,
        ..Default::default()
    })
    .unwrap();
    let native = common::native_policy(&model);
    let mut prompts = common::server_prompts();
    prompts.push("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n".into());
    let greedy = common::greedy(16);
    let t0 = Instant::now();
    let theirs = served.generate(&prompts, &greedy).unwrap();
    println!(
        "4 greedy completions of 16 tokens, batched: {:?}",
        t0.elapsed()
    );
    let ours = native.generate(&prompts, &greedy).unwrap();
    for ((p, a), b) in prompts.iter().zip(&theirs).zip(&ours) {
        let (a, b) = (&a[0], &b[0]);
        assert_eq!(
            a.token_ids, b.token_ids,
            "{p:?}: {:?} vs {:?}",
            a.text, b.text
        );
        assert_eq!(a.logprobs, b.logprobs, "{p:?}");
        assert_eq!(a.finished, b.finished, "{p:?}");
    }
    // Scoring sampled continuations through echo + logprobs: the in-process scores, exactly
    // (f32 values through JSON round-trip).
    let sampled = native
        .generate(
            &prompts,
            &lmlab::SamplingParams {
                temperature: 1.0,
                max_new_tokens: 10,
                seed: 4,
                ..Default::default()
            },
        )
        .unwrap();
    let seqs: Vec<lmlab::Sequence> = sampled.iter().map(|c| c[0].sequence()).collect();
    let remote = served.log_probs(&seqs, 1.0).unwrap();
    let local = native.log_probs(&seqs, 1.0).unwrap();
    assert_eq!(remote.per_token().unwrap(), local.per_token().unwrap());
    // Sampling with n: n choices, reproducible under the same seed.
    let params = lmlab::SamplingParams {
        temperature: 1.0,
        n: 3,
        max_new_tokens: 6,
        seed: 11,
        ..Default::default()
    };
    let a = served.generate(&prompts[..2], &params).unwrap();
    let b = served.generate(&prompts[..2], &params).unwrap();
    assert!(a.iter().all(|c| c.len() == 3));
    let ids = |x: &Vec<Vec<lmlab::Completion>>| -> Vec<Vec<Vec<u32>>> {
        x.iter()
            .map(|c| c.iter().map(|c| c.token_ids.clone()).collect())
            .collect()
    };
    assert_eq!(ids(&a), ids(&b));
}

/// The official `openai` Python client: models, completions (greedy, echo scoring, several
/// prompts with n), chat completions with the model's template, and bad requests answered
/// with OpenAI-style 4xx errors while the server keeps serving.
#[test]
fn lmlab_serve_answers_the_openai_python_client() {
    let Some(model) = common::smollm2() else {
        return;
    };
    let Some(python) = common::python_with(&["openai"]) else {
        return;
    };
    let (_server, base) = serve(&model, &["--max-batch-rows", "64"]);
    let script = common::root().join("tests/fixtures/openai_client.py");
    let (code, out, err) = common::run(std::process::Command::new(&python).arg(script).arg(&base));
    assert_eq!(code, 0, "openai_client.py: {err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    println!("{v:#}");
    assert_eq!(v["models"], serde_json::json!(["smollm2"]));
    // The in-process native decoder's greedy text for the same prompt.
    let loaded = lmlab::lm::load::load_quantized(&model, None, None).unwrap();
    let chat_prompt = loaded
        .chat_prompt("What is the capital of France?")
        .unwrap();
    let native = lmlab::lm::policy::NativePolicy::new(loaded);
    let greedy = common::greedy(8);
    let want = native
        .generate(&["The capital of France is".to_string()], &greedy)
        .unwrap();
    assert_eq!(v["greedy_text"], want[0][0].text.as_str());
    assert_eq!(v["greedy_finish"], "length");
    assert_eq!(v["usage"][1], 8);
    // Echo: the prompt's own tokens (no BOS: SmolLM2 has none), the first without a
    // log-probability, the rest equal to in-process scoring; offsets point into the text.
    let text = "The capital of France is Paris";
    assert_eq!(v["echo_text"], text);
    let ids = native.tokenizer.encode(text, true);
    let scores = native.model.score(&ids, 1, 1.0).unwrap();
    let lps = v["echo_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), ids.len());
    assert!(lps[0].is_null());
    for (a, b) in lps[1..].iter().zip(&scores) {
        assert_eq!(a.as_f64().unwrap() as f32, *b);
    }
    let tokens: Vec<&str> = v["echo_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    let offsets: Vec<usize> = v["echo_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() as usize)
        .collect();
    for (t, o) in tokens.iter().zip(&offsets) {
        assert!(text[*o..].starts_with(t), "{t:?} at {o}");
    }
    // Top alternatives: two per scored position, the best at least the token's own.
    for (top, lp) in v["echo_top"].as_array().unwrap()[1..].iter().zip(&lps[1..]) {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 2);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(best >= lp.as_f64().unwrap());
    }
    // Two prompts × n = 2: choices indexed prompt-major.
    let multi = v["multi"].as_array().unwrap();
    let idx: Vec<u64> = multi.iter().map(|c| c[0].as_u64().unwrap()).collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    // Chat: SmolLM2's own template; the in-process greedy answer to the same turn.
    let want = native
        .generate(&[chat_prompt], &common::greedy(12))
        .unwrap();
    assert_eq!(v["chat"], want[0][0].text.as_str());
    assert!(v["chat_logprobs"].as_u64().unwrap() >= 1);
    for (name, e) in v["errors"].as_object().unwrap() {
        assert_eq!(e[0], 400, "{name}: {e}");
        assert_eq!(e[1], name.as_str(), "{name}: {e}");
    }
    let raw = &v["raw"];
    for (name, status) in [
        ("not_json", 400),
        ("array", 400),
        ("huge", 413),
        ("no_route", 404),
        ("stream", 400),
    ] {
        assert_eq!(raw[name][0], status, "{name}: {}", raw[name]);
        assert!(
            raw[name][1]["error"]["message"].is_string(),
            "{name}: {}",
            raw[name]
        );
    }
    assert_eq!(v["after"], 200);
}

/// Flags are checked before the model loads.
#[test]
fn lmlab_serve_refuses_bad_flags() {
    for (args, needle) in [
        (vec!["--weights", "q3"], "--weights"),
        (vec!["--host", "localhost:1"], "--host"),
        (vec!["--max-batch-rows", "0"], "--max-batch-rows"),
    ] {
        let out = common::run(
            common::lmlab()
                .args(["serve", "--model", "/nonexistent.gguf"])
                .args(&args),
        );
        common::assert_user_error(&out, &[needle]);
    }
    let out = common::run(common::lmlab().args(["serve", "--model", "/nonexistent.gguf"]));
    common::assert_user_error(&out, &["nonexistent"]);
}
