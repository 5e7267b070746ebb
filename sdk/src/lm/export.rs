//! Export: a model trained or loaded here, written for other tools.
//!
//! - **Hugging Face folder** ([`write_hf`]): `config.json` + `model.safetensors` (F32, the
//!   names and layout `transformers`' `LlamaForCausalLM` loads) + `tokenizer.json` +
//!   `tokenizer_config.json`.
//! - **GGUF file** ([`write_gguf`]): llama.cpp's format, architecture `llama`, weights in F32 or
//!   Q8_0 (norms stay F32), the tokenizer in the metadata: byte-level BPE tokenizers as
//!   `gpt2` (vocabulary, merges, pre-tokenizer), llama2.c vocabularies as `llama`
//!   (SentencePiece pieces and scores).
//!
//! Both read back through [`crate::lm::load`]. A model with a value head (a reward model or
//! an ORM) is refused: neither format has a place for the head on a causal LM.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::error::Error;
use crate::lm::llama::Llama;
use crate::lm::llama2c::{self, Llama2cTokenizer};
use crate::lm::quant::{QKind, quantize_rows};
use crate::lm::tokenizer::{CHAR_SPECIALS, Tokenizer};

/// What `lmlab export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A Hugging Face folder.
    Hf,
    /// A GGUF file.
    Gguf,
}

/// The weight type of an exported GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GgufType {
    F32,
    #[serde(rename = "q8_0")]
    Q8_0,
}

/// A recipe's `[export]` table: what the run's trained models (`models/*`) are written as,
/// under `export/`, when the run ends (as `lmlab export RUN_DIR` writes them afterwards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub formats: Vec<Format>,
    /// The weight type of GGUF files.
    pub gguf_type: GgufType,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            formats: vec![Format::Hf],
            gguf_type: GgufType::F32,
        }
    }
}

/// Writes every model a run saved (`run_dir/models/<name>/`) in `format` under `out`:
/// `out/<name>/` (hf) or `out/<name>.gguf`. Returns what it wrote.
pub fn export_run(
    run_dir: &Path,
    format: Format,
    ty: GgufType,
    out: &Path,
) -> Result<Vec<std::path::PathBuf>, Error> {
    let models = run_dir.join("models");
    let mut names: Vec<String> = std::fs::read_dir(&models)
        .map_err(|e| Error::io("read", &models, e))?
        .flatten()
        .filter(|e| e.path().join("config.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "{}: this run saved no models",
            run_dir.display()
        )));
    }
    let mut written = Vec::new();
    for name in names {
        let to = match format {
            Format::Hf => out.join(&name),
            Format::Gguf => out.join(format!("{name}.gguf")),
        };
        export_model(&models.join(&name), None, format, ty, &name, &to)?;
        written.push(to);
    }
    Ok(written)
}

/// Loads the checkpoint at `from` (any format lmlab reads) and writes it in `format` at `to`.
pub fn export_model(
    from: &Path,
    tokenizer: Option<&Path>,
    format: Format,
    ty: GgufType,
    name: &str,
    to: &Path,
) -> Result<(), Error> {
    let loaded = crate::lm::load::load(from, tokenizer, &burn::tensor::Device::flex())?;
    match format {
        Format::Hf => write_hf(&loaded.model, &loaded.tokenizer, to),
        Format::Gguf => write_gguf(&loaded.model, &loaded.tokenizer, to, ty, name),
    }
}

fn refuse_value_head(model: &Llama) -> Result<(), Error> {
    if model.config.value_head {
        return Err(Error::Usage(
            "this model has a value head (a reward model or ORM): only language models export"
                .into(),
        ));
    }
    if model.config.gemma3().is_some() {
        return Err(Error::Usage(
            "Gemma 3 models do not export yet (the Llama architecture does)".into(),
        ));
    }
    Ok(())
}

/// A llama2.c piece as SentencePiece writes it: `▁` for spaces, `<s>` and `</s>` for BOS and
/// EOS.
fn spm_piece(t: &Llama2cTokenizer, id: usize) -> String {
    match id as u32 {
        llama2c::BOS => "<s>".into(),
        llama2c::EOS => "</s>".into(),
        _ => String::from_utf8_lossy(&t.pieces()[id]).replace(' ', "\u{2581}"),
    }
}

fn is_byte_piece(p: &str) -> bool {
    p.len() == 6 && p.starts_with("<0x") && p.ends_with('>')
}

fn special(id: usize, content: &str) -> Json {
    json!({ "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true })
}

/// `bos $A`: what `transformers` adds when asked for special tokens (lmlab adds BOS itself).
fn bos_template(bos: Option<(u32, String)>) -> Json {
    let Some((id, token)) = bos else {
        return Json::Null;
    };
    json!({ "type": "TemplateProcessing",
        "single": [ { "SpecialToken": { "id": token, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } } ],
        "pair": [ { "SpecialToken": { "id": token, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } },
                  { "Sequence": { "id": "B", "type_id": 1 } } ],
        "special_tokens": { token.clone(): { "id": token, "ids": [id], "tokens": [token] } } })
}

/// `tokenizer` as a Hugging Face `tokenizer.json` that encodes as it does (without BOS; its
/// post-processor adds BOS for `transformers`' `add_special_tokens`).
pub fn tokenizer_json(tokenizer: &Tokenizer) -> Result<Json, Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Usage(format!("exporting the tokenizer: {e}"));
    let json = match tokenizer {
        Tokenizer::Hf { inner, bos, .. } => {
            let mut j: Json = serde_json::from_str(&inner.to_string(false).map_err(|e| fail(&e))?)
                .map_err(|e| fail(&e))?;
            if j["post_processor"].is_null() {
                let token = bos.and_then(|b| inner.id_to_token(b).map(|t| (b, t)));
                j["post_processor"] = bos_template(token);
            }
            j
        }
        Tokenizer::Char(t) => {
            let mut vocab = serde_json::Map::new();
            for (i, s) in CHAR_SPECIALS.iter().enumerate() {
                vocab.insert(s.to_string(), i.into());
            }
            for (i, c) in t.alphabet().chars().enumerate() {
                vocab.insert(c.to_string(), (i + CHAR_SPECIALS.len()).into());
            }
            let added: Vec<Json> = CHAR_SPECIALS
                .iter()
                .enumerate()
                .map(|(i, s)| special(i, s))
                .collect();
            json!({ "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": { "type": "Split", "pattern": { "Regex": "[\\s\\S]" }, "behavior": "Isolated", "invert": false },
                "post_processor": bos_template(Some((1, CHAR_SPECIALS[1].into()))),
                "decoder": { "type": "Fuse" },
                "model": { "type": "WordLevel", "vocab": vocab, "unk_token": CHAR_SPECIALS[3] } })
        }
        Tokenizer::Llama2c(t) => {
            let pieces: Vec<String> = (0..t.vocab_size()).map(|i| spm_piece(t, i)).collect();
            let added: Vec<Json> = (0..3.min(pieces.len()))
                .map(|i| special(i, &pieces[i]))
                .collect();
            let is_byte = |i: usize| i > 2 && is_byte_piece(&pieces[i]);
            let mut j = crate::lm::tokenizer::spm_bpe_json(
                &pieces,
                t.scores(),
                &is_byte,
                added,
                Some("<unk>"),
                true,
            );
            j["post_processor"] = bos_template(Some((llama2c::BOS, "<s>".into())));
            j
        }
    };
    // What we write must be what the `tokenizers` crate (and so `transformers`) reads.
    json.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| fail(&e))?;
    Ok(json)
}

/// Writes `model` and `tokenizer` as a Hugging Face folder `dir`.
pub fn write_hf(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<(), Error> {
    refuse_value_head(model)?;
    let tok = tokenizer_json(tokenizer)?;
    crate::lm::hf::save(model, dir, tokenizer.bos(), tokenizer.eos())?;
    let token = |id: Option<u32>| -> Json {
        let Some(id) = id else { return Json::Null };
        tok["added_tokens"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["id"] == id))
            .map_or(Json::Null, |t| t["content"].clone())
    };
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(tokenizer.bos()),
        "eos_token": token(Some(tokenizer.eos())),
        "model_max_length": model.config.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    let pretty = |j: &Json| serde_json::to_string_pretty(j).expect("serialises");
    crate::run::write_atomic(&dir.join("tokenizer.json"), pretty(&tok).as_bytes())?;
    crate::run::write_atomic(
        &dir.join("tokenizer_config.json"),
        pretty(&config).as_bytes(),
    )?;
    Ok(())
}

/// A GGUF metadata value.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

const GGUF_U32: u32 = 4;
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_BOOL: u32 = 7;
const GGUF_STR: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const ALIGN: usize = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_meta(out: &mut Vec<u8>, key: &str, v: &Meta) {
    put_str(out, key);
    let array = |out: &mut Vec<u8>, ty: u32, n: usize| {
        out.extend(GGUF_ARRAY.to_le_bytes());
        out.extend(ty.to_le_bytes());
        out.extend((n as u64).to_le_bytes());
    };
    match v {
        Meta::U32(x) => {
            out.extend(GGUF_U32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Meta::F32(x) => {
            out.extend(GGUF_F32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Meta::Bool(x) => {
            out.extend(GGUF_BOOL.to_le_bytes());
            out.push(*x as u8);
        }
        Meta::Str(s) => {
            out.extend(GGUF_STR.to_le_bytes());
            put_str(out, s);
        }
        Meta::Strs(v) => {
            array(out, GGUF_STR, v.len());
            v.iter().for_each(|s| put_str(out, s));
        }
        Meta::F32s(v) => {
            array(out, GGUF_F32, v.len());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        Meta::I32s(v) => {
            array(out, GGUF_I32, v.len());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

/// GGUF token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

/// The `tokenizer.ggml.*` metadata of `tokenizer`.
fn tokenizer_meta(tokenizer: &Tokenizer) -> Result<Vec<(&'static str, Meta)>, Error> {
    let mut m: Vec<(&'static str, Meta)> = Vec::new();
    match tokenizer {
        Tokenizer::Llama2c(t) => {
            let pieces: Vec<String> = (0..t.vocab_size()).map(|i| spm_piece(t, i)).collect();
            let types = (0..pieces.len())
                .map(|i| match i {
                    0 => UNKNOWN,
                    1 | 2 => CONTROL,
                    _ if is_byte_piece(&pieces[i]) => BYTE,
                    _ => NORMAL,
                })
                .collect();
            m.push(("tokenizer.ggml.model", Meta::Str("llama".into())));
            m.push(("tokenizer.ggml.tokens", Meta::Strs(pieces)));
            m.push(("tokenizer.ggml.scores", Meta::F32s(t.scores().to_vec())));
            m.push(("tokenizer.ggml.token_type", Meta::I32s(types)));
            m.push(("tokenizer.ggml.unknown_token_id", Meta::U32(0)));
            m.push(("tokenizer.ggml.add_space_prefix", Meta::Bool(true)));
        }
        Tokenizer::Hf { inner, .. } => {
            let j: Json = serde_json::from_str(
                &inner
                    .to_string(false)
                    .map_err(|e| Error::Usage(format!("exporting the tokenizer: {e}")))?,
            )
            .map_err(|e| Error::Usage(format!("exporting the tokenizer: {e}")))?;
            let pre = j["pre_tokenizer"].to_string();
            let byte_level = pre.contains("ByteLevel");
            // SentencePiece converted to a BPE (as `tokenizer_json` writes llama2.c's, and as
            // Llama 2's tokenizer.json is): `▁` for spaces, byte fallback.
            let spm = !byte_level && j["model"]["byte_fallback"] == true;
            if j["model"]["type"] != "BPE" || !(byte_level || spm) {
                return Err(Error::Usage(
                    "GGUF export takes byte-level BPE tokenizers (GPT-2 style) and SentencePiece vocabularies (llama2.c's, or a byte-fallback BPE with `▁`); this tokenizer.json is neither".into(),
                ));
            }
            let n = inner.get_vocab_size(true);
            let mut tokens = vec![String::new(); n];
            for (t, id) in inner.get_vocab(true) {
                if let Some(slot) = tokens.get_mut(id as usize) {
                    *slot = t;
                }
            }
            let specials: Vec<u64> = j["added_tokens"]
                .as_array()
                .map(|a| a.iter().filter(|t| t["special"] == true))
                .into_iter()
                .flatten()
                .filter_map(|t| t["id"].as_u64())
                .collect();
            let merges: Vec<(String, String)> = j["model"]["merges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    let (a, b) = match m {
                        Json::String(s) => s.split_once(' ')?,
                        Json::Array(p) => (p.first()?.as_str()?, p.get(1)?.as_str()?),
                        _ => return None,
                    };
                    Some((a.to_string(), b.to_string()))
                })
                .collect();
            if spm {
                // A merge's rank becomes its result's score: llama.cpp merges the adjacent
                // pair whose result scores highest, as the BPE merges the lowest rank.
                let mut scores = vec![0f32; n];
                let mut scored = vec![false; n];
                for (rank, (a, b)) in merges.iter().enumerate() {
                    if let Some(id) = inner.token_to_id(&format!("{a}{b}")) {
                        let i = id as usize;
                        if i < n && !scored[i] {
                            (scores[i], scored[i]) = (-(rank as f32) - 1.0, true);
                        }
                    }
                }
                let unk = j["model"]["unk_token"]
                    .as_str()
                    .and_then(|u| inner.token_to_id(u));
                let types = (0..n)
                    .map(|i| match i {
                        _ if Some(i as u32) == unk => UNKNOWN,
                        _ if specials.contains(&(i as u64)) => CONTROL,
                        _ if is_byte_piece(&tokens[i]) => BYTE,
                        _ => NORMAL,
                    })
                    .collect();
                m.push(("tokenizer.ggml.model", Meta::Str("llama".into())));
                m.push(("tokenizer.ggml.tokens", Meta::Strs(tokens)));
                m.push(("tokenizer.ggml.scores", Meta::F32s(scores)));
                m.push(("tokenizer.ggml.token_type", Meta::I32s(types)));
                if let Some(unk) = unk {
                    m.push(("tokenizer.ggml.unknown_token_id", Meta::U32(unk)));
                }
                m.push(("tokenizer.ggml.add_space_prefix", Meta::Bool(true)));
            } else {
                let types = (0..n as u64)
                    .map(|i| {
                        if specials.contains(&i) {
                            CONTROL
                        } else {
                            NORMAL
                        }
                    })
                    .collect();
                let merges = merges
                    .into_iter()
                    .map(|(a, b)| format!("{a} {b}"))
                    .collect();
                // SmolLM's pre-tokenizer splits digits first; llama.cpp calls it `smollm`.
                let pre_name = if pre.contains("Digits") {
                    "smollm"
                } else {
                    "gpt-2"
                };
                m.push(("tokenizer.ggml.model", Meta::Str("gpt2".into())));
                m.push(("tokenizer.ggml.pre", Meta::Str(pre_name.into())));
                m.push(("tokenizer.ggml.tokens", Meta::Strs(tokens)));
                m.push(("tokenizer.ggml.token_type", Meta::I32s(types)));
                m.push(("tokenizer.ggml.merges", Meta::Strs(merges)));
            }
        }
        Tokenizer::Char(_) => {
            return Err(Error::Usage(
                "a character-level vocabulary has no GGUF tokenizer model: train with `tokenizer.kind = \"bpe\"` to export GGUF, or export `--format hf`".into(),
            ));
        }
    }
    if let Some(bos) = tokenizer.bos() {
        m.push(("tokenizer.ggml.bos_token_id", Meta::U32(bos)));
    }
    m.push((
        "tokenizer.ggml.add_bos_token",
        Meta::Bool(tokenizer.bos().is_some()),
    ));
    m.push(("tokenizer.ggml.add_eos_token", Meta::Bool(false)));
    m.push(("tokenizer.ggml.eos_token_id", Meta::U32(tokenizer.eos())));
    m.push((
        "tokenizer.ggml.padding_token_id",
        Meta::U32(tokenizer.pad()),
    ));
    Ok(m)
}

/// Writes `model` and `tokenizer` as a GGUF file at `path`, `name` as `general.name`.
pub fn write_gguf(
    model: &Llama,
    tokenizer: &Tokenizer,
    path: &Path,
    ty: GgufType,
    name: &str,
) -> Result<(), Error> {
    refuse_value_head(model)?;
    let c = &model.config;
    let w = model.to_weights();
    let (d, h, v) = (c.dim, c.hidden_dim, c.vocab_size);
    let kv = c.n_kv_heads * c.head_dim();
    // (name, dims innermost first, data); matrices are [rows, cols] row-major.
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    tensors.push(("token_embd.weight".into(), vec![d, v], w.embed));
    for (i, l) in w.layers.into_iter().enumerate() {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((b("attn_norm"), vec![d], l.attn_norm));
        tensors.push((b("attn_q"), vec![d, d], l.wq));
        tensors.push((b("attn_k"), vec![d, kv], l.wk));
        tensors.push((b("attn_v"), vec![d, kv], l.wv));
        tensors.push((b("attn_output"), vec![d, d], l.wo));
        tensors.push((b("ffn_norm"), vec![d], l.ffn_norm));
        tensors.push((b("ffn_gate"), vec![d, h], l.w1));
        tensors.push((b("ffn_down"), vec![h, d], l.w2));
        tensors.push((b("ffn_up"), vec![d, h], l.w3));
    }
    tensors.push(("output_norm.weight".into(), vec![d], w.final_norm));
    if let Some(head) = w.lm_head {
        tensors.push(("output.weight".into(), vec![d, v], head));
    }
    let file_type = match ty {
        GgufType::F32 => 0,
        GgufType::Q8_0 => 7,
    };
    let mut meta: Vec<(&str, Meta)> = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("general.name", Meta::Str(name.into())),
        ("general.file_type", Meta::U32(file_type)),
        ("llama.vocab_size", Meta::U32(v as u32)),
        ("llama.context_length", Meta::U32(c.max_seq_len as u32)),
        ("llama.embedding_length", Meta::U32(d as u32)),
        ("llama.block_count", Meta::U32(c.n_layers as u32)),
        ("llama.feed_forward_length", Meta::U32(h as u32)),
        ("llama.attention.head_count", Meta::U32(c.n_heads as u32)),
        (
            "llama.attention.head_count_kv",
            Meta::U32(c.n_kv_heads as u32),
        ),
        ("llama.rope.dimension_count", Meta::U32(c.head_dim() as u32)),
        ("llama.rope.freq_base", Meta::F32(c.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(c.norm_eps),
        ),
    ];
    meta.extend(tokenizer_meta(tokenizer)?);

    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, m) in &meta {
        put_meta(&mut out, k, m);
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, dims, values) in &tensors {
        // Norms (1-D) and rows that are not whole blocks stay F32.
        let quantize = ty == GgufType::Q8_0 && dims.len() == 2 && dims[0] % 32 == 0;
        let (ggml, bytes) = if quantize {
            (8u32, quantize_rows(values, QKind::Q8_0))
        } else {
            (0u32, values.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        data.resize(data.len().div_ceil(ALIGN) * ALIGN, 0);
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter()
            .for_each(|&n| out.extend((n as u64).to_le_bytes()));
        out.extend(ggml.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        data.extend(bytes);
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    out.extend(data);
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    crate::run::write_atomic(path, &out)
}
