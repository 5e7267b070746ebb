//! llama.cpp's own tokenizer tests: the vocabulary-only GGUF files in the `llama-cpp-python`
//! source distribution (`vendor/llama.cpp/models/ggml-vocab-*.gguf`), each with `.inp` test
//! strings (separated by `\n__ggml_vocab_test__\n`) and `.out` expected ids (one line per
//! string), tokenized without BOS and with special tokens as plain text. `cargo xtask fetch
//! llama-vocabs` unpacks them into the cache.
//!
//! Every vocabulary whose tokenizer model and pre-tokenizer lmlab supports must give exactly
//! the expected ids; the others are listed with the reason.

mod common;

use std::path::PathBuf;

/// Where `cargo xtask fetch llama-vocabs` puts the files (or `LMLAB_LLAMA_VOCABS`).
fn vocab_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LMLAB_LLAMA_VOCABS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("LMLAB_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lmlab")
                });
            cache.join("llama-vocabs")
        });
    let how = "run `cargo xtask fetch llama-vocabs`";
    lmlab::require_data(&dir.join("ggml-vocab-gpt-2.gguf"), how)
        .unwrap_or_else(|e| panic!("{e}"))
        .then_some(dir)
}

/// The vocabularies the SDK must tokenize exactly as llama.cpp does.
const REQUIRED: [&str; 6] = [
    "llama-spm",
    "phi-3",
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "gemma-4",
];

#[test]
fn gguf_tokenizers_pass_llama_cpps_tokenizer_tests() {
    let Some(dir) = vocab_dir() else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| {
            n.strip_prefix("ggml-vocab-")?
                .strip_suffix(".gguf")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let (mut report, mut failed, mut supported) = (Vec::new(), Vec::new(), Vec::new());
    for name in &names {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let (Ok(inp), Ok(out)) = (
            std::fs::read_to_string(path.with_extension("gguf.inp")),
            std::fs::read_to_string(path.with_extension("gguf.out")),
        ) else {
            report.push(format!("{name:<18} no tests"));
            continue;
        };
        let tok = match lmlab::lm::load::tokenizer(&path, None) {
            Ok(t) => t.with_special_as_text(),
            Err(e) => {
                let why = e.to_string();
                let why = why.rsplit(": ").next().unwrap_or(&why).to_string();
                report.push(format!("{name:<18} not supported: {why}"));
                assert!(!REQUIRED.contains(&name.as_str()), "{name}: {e}");
                continue;
            }
        };
        supported.push(name.clone());
        let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        if texts.last() == Some(&"") {
            texts.pop();
        }
        let expected: Vec<Vec<u32>> = out
            .lines()
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert_eq!(texts.len(), expected.len(), "{name}: .inp and .out differ");
        let mut pass = 0;
        for (text, want) in texts.iter().zip(&expected) {
            let got = tok.encode(text, false);
            if &got == want {
                pass += 1;
            } else if failed.len() < 20 {
                failed.push(format!(
                    "{name}: {text:?}\n   want {want:?}\n   got  {got:?}"
                ));
            }
        }
        report.push(format!("{name:<18} {pass}/{} pass", texts.len()));
        if pass != texts.len() {
            failed.push(format!("{name}: {pass}/{} pass", texts.len()));
        }
    }
    println!("llama.cpp tokenizer tests:\n{}", report.join("\n"));
    for r in REQUIRED {
        assert!(
            supported.iter().any(|s| s == r),
            "{r} is missing from {}",
            dir.display()
        );
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn tokenize_prints_ids_for_a_vocabulary_only_gguf() {
    use common::{assert_user_error, lmlab, run};
    let Some(dir) = vocab_dir() else {
        return;
    };
    let vocab = dir.join("ggml-vocab-gpt-2.gguf");
    let ids = |extra: &[&str]| {
        let (code, out, err) = run(lmlab()
            .args(["tokenize", "--model"])
            .arg(&vocab)
            .args(extra));
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    assert_eq!(ids(&["--text", "Hello world"]), "15496 995");
    // Special tokens are text unless --special; --bos puts BOS (50256) first.
    assert_eq!(
        ids(&["--text", "<|endoftext|>"]),
        "27 91 437 1659 5239 91 29"
    );
    assert_eq!(ids(&["--text", "<|endoftext|>", "--special"]), "50256");
    assert_eq!(ids(&["--text", "Hello", "--bos"]), "50256 15496");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "Hello world").unwrap();
    assert_eq!(ids(&["--file", file.path().to_str().unwrap()]), "15496 995");
    let out = run(lmlab().args(["tokenize", "--model"]).arg(&vocab));
    assert_user_error(&out, &["give --text or --file"]);
}
