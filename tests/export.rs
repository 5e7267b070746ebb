//! Export: a model written as a Hugging Face folder or a GGUF file reads back with the same
//! logits and tokens; `transformers` reproduces an exported fine-tuned model's logits and
//! llama.cpp its greedy continuation.

mod common;

use std::path::Path;

use common::{assert_user_error, data_dir, lmlab, only_run_dir, python_with, run};
use lmlab::burn::tensor::{Device, Int, Tensor, TensorData};
use lmlab::lm::export::{self, GgufType};
use lmlab::lm::kernels::max_abs_diff;
use lmlab::lm::load::load;
use lmlab::lm::{Llama, LlamaConfig, Tokenizer};

const IDS: [u32; 12] = [1, 403, 407, 261, 378, 285, 431, 267, 300, 296, 280, 321];

fn logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
    model
        .forward(tokens, &[0], None)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Texts whose ids must agree: prose, digits, whitespace runs, punctuation, non-ASCII.
const TEXTS: [&str; 7] = [
    "Once upon a time, there was a little girl named Lily.",
    "She had 3 cats and 12 dogs; 2024 was a good year.",
    "  two spaces,\tone tab\nand a newline  ",
    "Tom said: \"Let's go!\" (and they went...)",
    "héllo wörld — café, naïve, 日本",
    "",
    "x",
];

fn same_ids(a: &Tokenizer, b: &Tokenizer, what: &str) {
    for t in TEXTS {
        assert_eq!(a.encode(t, true), b.encode(t, true), "{what}: {t:?}");
    }
}

#[test]
fn stories260k_exports_read_back_with_the_same_logits_and_ids() {
    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let src = load(
        &data.join("stories260k/stories260K.bin"),
        None,
        &Device::flex(),
    )
    .unwrap();
    let golden =
        std::fs::read_to_string(data.join("stories260k/expected_greedy_200steps.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let want = logits(&src.model, &IDS);
    let hf = dir.path().join("hf");
    export::write_hf(&src.model, &src.tokenizer, &hf).unwrap();
    for ty in [GgufType::F32, GgufType::Q8_0] {
        let path = dir.path().join(format!("{ty:?}.gguf"));
        export::write_gguf(&src.model, &src.tokenizer, &path, ty, "stories260K").unwrap();
    }
    // The Hugging Face folder's tokenizer (a byte-fallback BPE) goes on into GGUF as
    // SentencePiece again.
    let hf_gguf = dir.path().join("hf.gguf");
    export::export_model(
        &hf,
        None,
        export::Format::Gguf,
        GgufType::F32,
        "s",
        &hf_gguf,
    )
    .unwrap();
    // Q8_0: the file's blocks are the ones lmlab's own Q8_0 quantization makes, so block-
    // quantized decoding of the file and of the original quantized in memory agree exactly.
    let quantized = |path: &Path, kind| {
        let m = lmlab::lm::load::load_quantized(path, None, kind)
            .unwrap()
            .model;
        let mut s = m.session();
        IDS.iter()
            .flat_map(|&t| s.feed(t).to_vec())
            .collect::<Vec<f32>>()
    };
    let in_memory = quantized(
        &data.join("stories260k/stories260K.bin"),
        Some(lmlab::lm::quant::QKind::Q8_0),
    );
    let from_file = quantized(&dir.path().join("Q8_0.gguf"), None);
    assert_eq!(max_abs_diff(&in_memory, &from_file), 0.0, "Q8_0 blocks");
    let files = [
        ("hf", 1e-5),
        ("F32.gguf", 1e-5),
        ("hf.gguf", 1e-5),
        ("Q8_0.gguf", 0.5),
    ];
    for (name, tolerance) in files {
        let back = load(&dir.path().join(name), None, &Device::flex()).unwrap();
        let worst = max_abs_diff(&want, &logits(&back.model, &IDS));
        assert!(worst <= tolerance, "{name}: max |Δlogit| = {worst}");
        // The tokenizer as a BPE (tokenizer.json) and as SentencePiece metadata (GGUF) encodes
        // as llama2.c's does, on the test texts and on every line of the golden story.
        same_ids(&src.tokenizer, &back.tokenizer, name);
        for line in golden.lines() {
            assert_eq!(
                src.tokenizer.encode(line, true),
                back.tokenizer.encode(line, true),
                "{name}: {line:?}"
            );
        }
        println!("{name}: max |Δlogit| = {worst:.2e}");
    }
}

fn tiny(vocab: usize) -> Llama {
    let config = LlamaConfig {
        vocab_size: vocab,
        dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        hidden_dim: 64,
        max_seq_len: 32,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
        value_head: false,
        arch: Default::default(),
    };
    Llama::init(config, &mut lmlab::rng::rng(0, 0), &Device::flex()).unwrap()
}

#[test]
fn tokenizers_of_models_trained_here_export_and_read_back() {
    let texts: Vec<String> = TEXTS.iter().map(|t| t.repeat(3)).collect();
    let bpe = lmlab::lm::tokenizer::train_bpe(texts.iter().map(String::as_str), 80).unwrap();
    let chars = lmlab::lm::tokenizer::CharTokenizer::new("abcdefghijklmnopqrstuvwxyz ,.!");
    let char_tok = Tokenizer::Char(chars);
    let dir = tempfile::tempdir().unwrap();
    for (name, tok) in [("bpe", &bpe), ("char", &char_tok)] {
        let model = tiny(tok.vocab_size());
        let hf = dir.path().join(name);
        export::write_hf(&model, tok, &hf).unwrap();
        let back = load(&hf, None, &Device::flex()).unwrap();
        same_ids(tok, &back.tokenizer, name);
        let ids = tok.encode("a cab, bad.", true);
        assert_eq!(back.tokenizer.decode(&ids, None), "a cab, bad.", "{name}");
        let worst = max_abs_diff(&logits(&model, &ids), &logits(&back.model, &ids));
        assert!(worst <= 1e-5, "{name}: max |Δlogit| = {worst}");
    }
    // The byte-level BPE goes into GGUF as `gpt2`; a character vocabulary has no GGUF model.
    let model = tiny(bpe.vocab_size());
    let path = dir.path().join("bpe.gguf");
    export::write_gguf(&model, &bpe, &path, GgufType::F32, "bpe").unwrap();
    let back = load(&path, None, &Device::flex()).unwrap();
    same_ids(&bpe, &back.tokenizer, "bpe.gguf");
    let e = export::write_gguf(
        &tiny(char_tok.vocab_size()),
        &char_tok,
        &dir.path().join("c.gguf"),
        GgufType::F32,
        "c",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("character-level vocabulary"), "{e}");
    // A value head has no place in either format.
    let mut rm = tiny(bpe.vocab_size());
    rm = rm.with_value_head(&mut lmlab::rng::rng(0, 1), &Device::flex());
    let e = export::write_hf(&rm, &bpe, &dir.path().join("rm"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("value head"), "{e}");
}

#[test]
fn a_bad_export_table_is_refused_at_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::root().join("recipes/sft-arith.toml")).unwrap();
    for (table, needle) in [
        ("formats = [\"onnx\"]", "unknown variant `onnx`"),
        ("gguf_type = \"q4_k\"", "unknown variant `q4_k`"),
        ("format = [\"hf\"]", "unknown field `format`"),
    ] {
        let recipe = dir.path().join("bad.toml");
        std::fs::write(&recipe, format!("{text}\n[export]\n{table}\n")).unwrap();
        let out = run(lmlab().arg("recipe").arg(&recipe).arg("--dry-run"));
        assert_user_error(&out, &["bad.toml", "[export]", needle]);
    }
}

#[test]
fn export_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().display().to_string();
    for (args, needle) in [
        (
            vec!["--format", "onnx"],
            "unknown --format `onnx`: use hf or gguf",
        ),
        (
            vec!["--format", "gguf", "--type", "q4_k"],
            "unknown --type `q4_k`: use f32 or q8_0",
        ),
        (vec!["--type", "q8_0"], "--type applies to --format gguf"),
        (vec![], "name the output with --out"),
    ] {
        let out = run(lmlab().arg("export").arg(&model).args(args));
        assert_user_error(&out, &[needle]);
    }
}

#[test]
fn a_fine_tuned_stories260k_exports_for_transformers_and_llama_cpp() {
    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let Some(python) = python_with(&["torch", "transformers", "llama_cpp"]) else {
        return;
    };
    // Fine-tune through `[policy] use = "checkpoint"`: the run saves `models/final`, and its
    // `[export]` table writes it as a Hugging Face folder and a GGUF file.
    let out = tempfile::tempdir().unwrap();
    let model = data.join("stories260k/stories260K.bin");
    let recipe = out.path().join("sft-export.toml");
    let text = std::fs::read_to_string(common::root().join("recipes/sft-arith.toml")).unwrap();
    std::fs::write(
        &recipe,
        format!("{text}\n[export]\nformats = [\"hf\", \"gguf\"]\n"),
    )
    .unwrap();
    let (code, _, err) = run(lmlab()
        .arg("recipe")
        .arg(&recipe)
        .args(["--smoke", "--quiet"])
        .args(["--set", "policy.use=checkpoint"])
        .arg("--set")
        .arg(format!("policy.path={}", model.display()))
        .args([
            "--set",
            "scheduler.steps=20",
            "--set",
            "scheduler.log_every=5",
        ])
        .args(["--set", "scheduler.eval_every=1000"])
        .args([
            "--set",
            "scheduler.checkpoint_every=0",
            "--set",
            "task.n_test=4",
        ])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let run_dir = only_run_dir(out.path(), "sft-export");
    let (hf, gguf) = (
        run_dir.join("export/final"),
        run_dir.join("export/final.gguf"),
    );
    assert!(hf.join("model.safetensors").is_file() && gguf.is_file());
    // `lmlab export` writes the same afterwards, here as Q8_0.
    let q8 = out.path().join("q8");
    let (code, stdout, err) = run(lmlab()
        .arg("export")
        .arg(&run_dir)
        .args(["--format", "gguf", "--type", "q8_0", "--out"])
        .arg(&q8));
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.trim(), q8.join("final.gguf").display().to_string());
    load(&q8.join("final.gguf"), None, &Device::flex()).unwrap();
    let trained = load(&run_dir.join("models/final"), None, &Device::flex()).unwrap();
    let original = load(&model, None, &Device::flex()).unwrap();
    let ours = logits(&trained.model, &IDS);
    assert!(
        max_abs_diff(&ours, &logits(&original.model, &IDS)) > 1e-3,
        "fine-tuning changed the model"
    );

    // transformers: the same logits.
    let mut args = vec!["hf-logits".to_string(), hf.display().to_string()];
    args.extend(IDS.iter().map(u32::to_string));
    let r = common::reference(&python, &args);
    let theirs: Vec<f32> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let worst = max_abs_diff(&ours, &theirs);
    println!("transformers: max |Δlogit| = {worst:.2e}");
    assert!(worst <= 1e-4, "transformers: max |Δlogit| = {worst}");
    let prompt = trained.tokenizer.encode("Once upon a time", false);
    let encoded: Vec<u32> = r["encoded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(encoded, prompt, "transformers' tokenizer: the same ids");

    // llama.cpp: the same greedy continuation as lmlab's, token for token.
    let n = 40;
    let (code, stdout, err) = run(lmlab()
        .args(["generate", "--temperature", "0", "--ids", "--prompt"])
        .arg("Once upon a time")
        .args(["--max-new-tokens", &n.to_string(), "--model"])
        .arg(run_dir.join("models/final")));
    assert_eq!(code, 0, "{err}");
    let all: Vec<u32> = stdout
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let prompt_len = prompt.len() + 1;
    let (prompt_ids, ours) = all.split_at(prompt_len);
    let ours: Vec<u32> = ours
        .iter()
        .copied()
        .take_while(|t| ![1, 2].contains(t))
        .collect();
    let mut args = vec![
        "llama-greedy".to_string(),
        gguf.display().to_string(),
        n.to_string(),
    ];
    args.extend(prompt_ids.iter().map(u32::to_string));
    let r = common::reference(&python, &args);
    let theirs: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert!(ours.len() >= 10, "a continuation: {ours:?}");
    assert_eq!(theirs, ours, "llama.cpp's greedy tokens");
    let text = trained.tokenizer.decode(&ours, prompt_ids.last().copied());
    assert_eq!(r["text"].as_str().unwrap(), text, "llama.cpp's text");
}

#[test]
fn a_missing_reference_python_fails_under_require_data() {
    if data_dir("stories260k/stories260K.bin").is_none() {
        return;
    }
    let (passed, text) = common::rerun_test(
        "a_fine_tuned_stories260k_exports_for_transformers_and_llama_cpp",
        &[
            ("LMLAB_PYTHON", "/nonexistent/python3"),
            ("LMLAB_REQUIRE_DATA", "1"),
        ],
    );
    assert!(!passed, "{text}");
    assert!(
        text.contains("cannot import") && text.contains("LMLAB_REQUIRE_DATA=1"),
        "{text}"
    );
}
