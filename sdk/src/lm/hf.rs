//! Hugging Face Llama checkpoints: `config.json` + `model.safetensors` (+ `tokenizer.json`),
//! with the weight names and layout the checkpoint has (`model.layers.N.self_attn.q_proj.weight`
//! as `[out, in]`, F32, F16 or BF16).
//!
//! Hugging Face applies rotary embeddings to the two halves of each head
//! (`rotate_half`), where llama2.c, GGUF and this crate use interleaved pairs; the q/k
//! projection rows are permuted accordingly on load and on save, as Meta→HF conversion does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::lm::llama::{LayerWeights, Llama, LlamaConfig, LlamaWeights};

/// The fields of a Hugging Face Llama `config.json` that matter here.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HfConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_ctx() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}

impl HfConfig {
    /// The lmlab configuration.
    pub fn to_llama(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            dim: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            hidden_dim: self.intermediate_size,
            max_seq_len: self.max_position_embeddings,
            rope_theta: self.rope_theta as f32,
            norm_eps: self.rms_norm_eps as f32,
            tie_embeddings: self.tie_word_embeddings,
            value_head: false,
            arch: Default::default(),
        }
    }

    /// From an lmlab configuration.
    pub fn from_llama(c: &LlamaConfig, bos: Option<u32>, eos: u32) -> Self {
        Self {
            hidden_size: c.dim,
            intermediate_size: c.hidden_dim,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: Some(c.n_kv_heads),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_seq_len,
            rms_norm_eps: c.norm_eps as f64,
            rope_theta: c.rope_theta as f64,
            tie_word_embeddings: c.tie_embeddings,
            model_type: Some("llama".into()),
            architectures: Some(vec!["LlamaForCausalLM".into()]),
            bos_token_id: bos,
            eos_token_id: Some(eos.into()),
        }
    }
}

/// Interleaved (Meta) rows → half-split (HF) rows, per head; `inverse` undoes it.
pub fn permute_rope_rows(w: &[f32], n_heads: usize, cols: usize, inverse: bool) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for s in 0..2 {
                let meta = h * hd + 2 * j + s;
                let hf = h * hd + s * half + j;
                let (from, to) = if inverse { (hf, meta) } else { (meta, hf) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "tensor dtype {other:?} is not supported (F32, F16, BF16 are)"
            ));
        }
    })
}

/// The `config.json` and safetensors files of a checkpoint given as a directory or as the
/// `.safetensors` file.
pub fn files(path: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let weights = if path.is_dir() {
        dir.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    Ok((dir.join("config.json"), weights))
}

/// Reads a Hugging Face Llama checkpoint.
pub fn load(path: &Path) -> Result<(LlamaConfig, LlamaWeights), Error> {
    let (config_path, weights_path) = files(path)?;
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::io("read", &config_path, e))?;
    let config =
        parse_config(&text).map_err(|e| Error::Usage(format!("{}: {e}", config_path.display())))?;
    let bytes = std::fs::read(&weights_path).map_err(|e| Error::io("read", &weights_path, e))?;
    let weights = parse_weights(&bytes, &config).map_err(|e| {
        Error::Usage(format!(
            "{}: not a valid safetensors checkpoint: {e}",
            weights_path.display()
        ))
    })?;
    Ok((config, weights))
}

/// A Llama `config.json`'s text as a checked [`LlamaConfig`].
pub fn parse_config(text: &str) -> Result<LlamaConfig, String> {
    let hf: HfConfig =
        serde_json::from_str(text).map_err(|e| format!("not a Llama config.json: {e}"))?;
    if let Some(t) = &hf.model_type
        && t != "llama"
    {
        return Err(format!("model_type `{t}` is not `llama`"));
    }
    let config = hf.to_llama();
    config.validate()?;
    Ok(config)
}

/// Parses safetensors bytes into checkpoint-layout weights for `config`.
pub fn parse_weights(bytes: &[u8], config: &LlamaConfig) -> Result<LlamaWeights, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
        let view = st
            .tensor(name)
            .map_err(|_| format!("missing tensor `{name}`"))?;
        if view.shape() != shape {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        to_f32(&view)
    };
    let (d, h, v) = (config.dim, config.hidden_dim, config.vocab_size);
    let kv = config.n_kv_heads * config.head_dim();
    // Not the claimed count: a config.json may claim more layers than the file holds.
    let mut layers = Vec::with_capacity(config.n_layers.min(st.len()));
    for i in 0..config.n_layers {
        let p = format!("model.layers.{i}");
        layers.push(LayerWeights {
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[d])?,
            wq: permute_rope_rows(
                &get(&format!("{p}.self_attn.q_proj.weight"), &[d, d])?,
                config.n_heads,
                d,
                true,
            ),
            wk: permute_rope_rows(
                &get(&format!("{p}.self_attn.k_proj.weight"), &[kv, d])?,
                config.n_kv_heads,
                d,
                true,
            ),
            wv: get(&format!("{p}.self_attn.v_proj.weight"), &[kv, d])?,
            wo: get(&format!("{p}.self_attn.o_proj.weight"), &[d, d])?,
            ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
            w1: get(&format!("{p}.mlp.gate_proj.weight"), &[h, d])?,
            w2: get(&format!("{p}.mlp.down_proj.weight"), &[d, h])?,
            w3: get(&format!("{p}.mlp.up_proj.weight"), &[h, d])?,
            gemma: None,
        });
    }
    let lm_head = if config.tie_embeddings {
        None
    } else {
        Some(get("lm_head.weight", &[v, d])?)
    };
    Ok(LlamaWeights {
        embed: get("model.embed_tokens.weight", &[v, d])?,
        layers,
        final_norm: get("model.norm.weight", &[d])?,
        lm_head,
    })
}

/// Writes `model` as `dir/config.json` + `dir/model.safetensors` (F32).
pub fn save(model: &Llama, dir: &Path, bos: Option<u32>, eos: u32) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let c = &model.config;
    let w = model.to_weights();
    let (d, h, v) = (c.dim, c.hidden_dim, c.vocab_size);
    let kv = c.n_kv_heads * c.head_dim();
    let mut tensors: BTreeMap<String, (Vec<f32>, Vec<usize>)> = BTreeMap::new();
    tensors.insert("model.embed_tokens.weight".into(), (w.embed, vec![v, d]));
    tensors.insert("model.norm.weight".into(), (w.final_norm, vec![d]));
    if let Some(head) = w.lm_head {
        tensors.insert("lm_head.weight".into(), (head, vec![v, d]));
    }
    for (i, l) in w.layers.into_iter().enumerate() {
        let p = format!("model.layers.{i}");
        tensors.insert(
            format!("{p}.input_layernorm.weight"),
            (l.attn_norm, vec![d]),
        );
        tensors.insert(
            format!("{p}.self_attn.q_proj.weight"),
            (permute_rope_rows(&l.wq, c.n_heads, d, false), vec![d, d]),
        );
        tensors.insert(
            format!("{p}.self_attn.k_proj.weight"),
            (
                permute_rope_rows(&l.wk, c.n_kv_heads, d, false),
                vec![kv, d],
            ),
        );
        tensors.insert(format!("{p}.self_attn.v_proj.weight"), (l.wv, vec![kv, d]));
        tensors.insert(format!("{p}.self_attn.o_proj.weight"), (l.wo, vec![d, d]));
        tensors.insert(
            format!("{p}.post_attention_layernorm.weight"),
            (l.ffn_norm, vec![d]),
        );
        tensors.insert(format!("{p}.mlp.gate_proj.weight"), (l.w1, vec![h, d]));
        tensors.insert(format!("{p}.mlp.down_proj.weight"), (l.w2, vec![d, h]));
        tensors.insert(format!("{p}.mlp.up_proj.weight"), (l.w3, vec![h, d]));
    }
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, (data, shape))| {
            (
                name,
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape,
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(name, bytes, shape)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Usage(format!("serialising safetensors: {e}")))?;
    crate::run::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let config =
        serde_json::to_string_pretty(&HfConfig::from_llama(c, bos, eos)).expect("serialises");
    crate::run::write_atomic(&dir.join("config.json"), config.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_round_trips() {
        let w: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect();
        let hf = permute_rope_rows(&w, 2, 3, false);
        // Head 0 rows (meta 0,1,2,3) → hf rows (0,2,1,3).
        assert_eq!(&hf[3..6], &w[6..9]);
        assert_eq!(permute_rope_rows(&hf, 2, 3, true), w);
    }
}
