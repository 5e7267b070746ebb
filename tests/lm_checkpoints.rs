//! Real checkpoints: stories260K (llama2.c) reproduces llama2.c's greedy output byte for byte,
//! with and without the KV cache; damaged files are refused with a message.

mod common;

use common::{assert_user_error, data_dir, lmlab, run};

#[test]
fn stories260k_greedy_matches_llama2c_byte_for_byte() {
    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let model = data.join("stories260k/stories260K.bin");
    let golden = std::fs::read(data.join("stories260k/expected_greedy_200steps.txt")).unwrap();
    for extra in [&[][..], &["--no-cache"][..]] {
        let out = lmlab()
            .args([
                "generate",
                "--max-tokens",
                "200",
                "--temperature",
                "0",
                "--model",
            ])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&golden),
            "generate {extra:?}"
        );
    }
}

#[test]
fn stories260k_ids_start_with_bos_and_prompts_are_encoded() {
    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let model = data.join("stories260k/stories260K.bin");
    let (code, out, err) = run(lmlab()
        .args([
            "generate",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--ids",
            "--prompt",
            "Once upon a time",
            "--model",
        ])
        .arg(&model));
    assert_eq!(code, 0, "{err}");
    let ids: Vec<u32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(
        ids.len(),
        13,
        "12 forward steps: the BOS and 12 sampled tokens"
    );
    let tok = lmlab::lm::llama2c::Llama2cTokenizer::load(&data.join("stories260k/tok512.bin"), 512)
        .unwrap();
    let prompt = tok.encode("Once upon a time", true, false);
    assert_eq!(&ids[..prompt.len()], &prompt[..]);
    assert_eq!(tok.decode(&prompt[1..], true), "Once upon a time");
}

#[test]
fn truncated_or_corrupt_llama2c_files_are_refused() {
    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(data.join("stories260k/stories260K.bin")).unwrap();
    std::fs::copy(
        data.join("stories260k/tok512.bin"),
        dir.path().join("tok512.bin"),
    )
    .unwrap();
    for (name, content) in [
        ("cut.bin", bytes[..bytes.len() / 2].to_vec()),
        ("header.bin", bytes[..20].to_vec()),
        ("garbage.bin", vec![0xff; 4096]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = run(lmlab()
            .args(["generate", "--max-tokens", "5", "--model"])
            .arg(&path));
        assert_user_error(&out, &[name]);
    }
    let tok = std::fs::read(data.join("stories260k/tok512.bin")).unwrap();
    std::fs::write(dir.path().join("tok512.bin"), &tok[..tok.len() / 3]).unwrap();
    let model = dir.path().join("model.bin");
    std::fs::write(&model, &bytes).unwrap();
    let out = run(lmlab()
        .args(["generate", "--max-tokens", "5", "--model"])
        .arg(&model));
    assert_user_error(&out, &["tok512.bin", "truncated at token"]);
}

#[test]
fn stories260k_safetensors_round_trip_gives_the_same_logits() {
    use lmlab::burn::tensor::{Device, Int, Tensor, TensorData};
    use lmlab::lm::{Llama, hf, llama2c};

    let Some(data) = data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let device = Device::flex();
    let (config, weights) =
        llama2c::load_checkpoint(&data.join("stories260k/stories260K.bin")).unwrap();
    let original = Llama::from_weights(config, weights, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    hf::save(&original, dir.path(), 1, 2).unwrap();
    let names = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    assert!(
        String::from_utf8_lossy(&names[..4096.min(names.len())])
            .contains("model.layers.0.self_attn.q_proj.weight")
    );
    let (config, weights) = hf::load(dir.path()).unwrap();
    let reloaded = Llama::from_weights(config, weights, &device).unwrap();
    let ids: Vec<i64> = vec![1, 403, 407, 261, 378, 285, 431, 267, 300, 296, 280, 321];
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
    let a = original
        .forward(tokens.clone(), &[0], None)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let b = reloaded
        .forward(tokens, &[0], None)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "max |Δlogit| = {worst}");

    // Damaged copies are refused with a message.
    let st = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::write(dir.path().join("model.safetensors"), &st[..5]).unwrap();
    assert!(hf::load(dir.path()).is_err());
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 64").unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn gpt2_tokenizer_ids_match() {
    let Some(data) = data_dir("gpt2_tokenizer/tokenizer.notrunc.json") else {
        return;
    };
    let tok = lmlab::lm::Tokenizer::from_hf_file(
        &data.join("gpt2_tokenizer/tokenizer.notrunc.json"),
        None,
        50256,
    )
    .unwrap();
    assert_eq!(tok.encode("Hello world", false), vec![15496, 995]);
    assert_eq!(tok.decode(&[15496, 995], None), "Hello world");
}

/// The SmolLM2 GGUF that `cargo xtask fetch smollm2` puts in the cache, if it is there.
fn smollm2() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("LMLAB_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("lmlab"))
        })
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/lmlab")
        });
    let path = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "SKIPPED: {} is absent (run `cargo xtask fetch smollm2`)",
            path.display()
        );
        None
    }
}

#[test]
fn smollm2_gguf_chat_answer_is_sensible() {
    let Some(model) = smollm2() else { return };
    let (code, out, err) = run(lmlab()
        .args([
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "80",
            "--chat",
            "What is the capital of France?",
            "--model",
        ])
        .arg(&model));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Paris"), "answer: {out}");
}

#[test]
fn smollm2_gguf_tokenizer_matches_its_token_list() {
    let Some(model) = smollm2() else { return };
    let g = lmlab::lm::gguf::load(&model).unwrap();
    let tokens = g.tokens().unwrap();
    let tok = g.tokenizer().unwrap();
    let lmlab::lm::Tokenizer::Hf { inner, .. } = &tok else {
        panic!("a tokenizers BPE")
    };
    for text in [
        "Hello world",
        "The year 2024 had 366 days.",
        "naïve café — déjà vu",
        "  two  spaces\nand a newline",
    ] {
        let ids = tok.encode(text, false);
        assert!(!ids.is_empty());
        for &id in &ids {
            assert_eq!(
                inner.id_to_token(id).as_deref(),
                Some(tokens[id as usize].as_str()),
                "{text}"
            );
        }
        assert_eq!(tok.decode(&ids, None), text);
    }
    // Special tokens in the text are parsed as single tokens.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false);
    assert_eq!(
        ids[0],
        tokens.iter().position(|t| t == "<|im_start|>").unwrap() as u32
    );
    assert_eq!(
        *ids.last().unwrap(),
        tokens.iter().position(|t| t == "<|im_end|>").unwrap() as u32
    );
    // Digits are split one by one (SmolLM's pre-tokenizer).
    assert_eq!(tok.encode("2024", false).len(), 4);
}

#[test]
fn truncated_gguf_is_refused() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&model).unwrap();
    for (name, cut) in [("head.gguf", 64usize), ("half.gguf", bytes.len() / 2)] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let out = run(lmlab()
            .args(["generate", "--max-tokens", "5", "--model"])
            .arg(&path));
        assert_user_error(&out, &[name, "GGUF"]);
    }
}
