//! GGUF checkpoints (llama.cpp's format), Llama architecture: metadata, tensors in F32, F16,
//! BF16, Q8_0 and Q4_1 (dequantized on load), the tokenizer rebuilt from the metadata as
//! llama.cpp builds it (byte-level BPE with its pre-tokenizer regexes, SentencePiece, Gemma 4's
//! BPE; checked against llama.cpp's own tokenizer tests in `tests/llama_vocabs.rs`), and the
//! chat template. Vocabulary-only files (no tensors) read too.
//!
//! Layout (version 2 and 3, little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; metadata entries (string key, u32 type, value); tensor infos (name, u32
//! dimension count, u64 dimensions innermost first, u32 ggml type, u64 offset); then the data,
//! aligned to `general.alignment` (32 by default). llama.cpp's q/k projections already use
//! interleaved rotary pairs, as this crate does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::error::Error;
use crate::lm::llama::{Arch, Gemma3, GemmaNorms, LayerWeights, LlamaConfig, LlamaWeights};
use crate::lm::tokenizer::{Bpe, Tokenizer, assemble};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(v) => Some(*v),
            Value::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::UInt(v) => Some(*v as f64),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// A parsed GGUF file (data kept as bytes).
pub struct Gguf {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).ok_or("size overflow")?;
        let s = self
            .b
            .get(self.pos..end)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        if n > (1 << 30) {
            return Err(format!("a string of {n} bytes"));
        }
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::UInt(self.take(1)?[0] as u64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::UInt(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::UInt(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let et = self.u32()?;
                let n = self.u64()?;
                if n > (self.b.len() as u64) {
                    return Err(format!(
                        "an array of {n} elements in a {}-byte file",
                        self.b.len()
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::UInt(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_1: u32 = 3;
const Q5_0: u32 = 6;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;
const Q6_K: u32 = 14;
const BF16: u32 = 30;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// Q4_K's 6-bit scale and minimum of sub-block `j` (0..8) from its 12 packed bytes.
pub(crate) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Byte `b` spread over eight bytes, bit k to 16 or 0 in byte k (Q5_0's fifth bits).
pub(crate) fn spread_bits() -> &'static [u64; 256] {
    static SPREAD: OnceLock<[u64; 256]> = OnceLock::new();
    SPREAD.get_or_init(|| {
        std::array::from_fn(|b| (0..8).map(|k| (((b >> k) & 1) as u64) << (8 * k + 4)).sum())
    })
}

/// Q5_0 block (22 bytes: f16 `d`, 4 bytes of fifth bits, 16 bytes of nibbles): its 32
/// values' `q − 16` (`x = d·(q − 16)`).
#[inline(always)]
pub(crate) fn q5_0_values(block: &[u8], out: &mut [i8; 32]) {
    // Value i's fifth bit is bit i of the 32-bit `qh`: each byte of it spread into eight bytes
    // of 0 or 16 by a table, so the loops below have constant shifts and vectorise.
    let spread = spread_bits();
    let mut hi = [0u8; 32];
    for (k, chunk) in hi.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&spread[block[2 + k] as usize].to_le_bytes());
    }
    let qs = &block[6..22];
    for j in 0..16 {
        out[j] = ((qs[j] & 0x0f) | hi[j]) as i8 - 16;
        out[j + 16] = ((qs[j] >> 4) | hi[j + 16]) as i8 - 16;
    }
}

/// Q6_K super-block (210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8 scales,
/// f16 `d`): its 256 values' `q − 32` (`x = d · scale[i/16] · (q − 32)`).
#[inline(always)]
pub(crate) fn q6_k_values(block: &[u8], out: &mut [i8; QK_K]) {
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            y[l] = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
            y[l + 32] = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// Values per block and bytes per block of ggml type `ty` (`None`: not read here).
pub fn block_layout(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q4_1 => (32, 20),
        Q5_0 => (32, 22),
        Q8_0 => (32, 34),
        Q4_K => (QK_K, 144),
        Q6_K => (QK_K, 210),
        _ => return None,
    })
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantizes `n` values of ggml type `ty` from `bytes`.
pub fn dequantize(ty: u32, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let need = |per_block: usize, block_bytes: usize| -> Result<usize, String> {
        if n % per_block != 0 {
            return Err(format!("{n} values are not whole blocks of {per_block}"));
        }
        let size = n / per_block * block_bytes;
        if bytes.len() < size {
            return Err(format!("needs {size} bytes, has {}", bytes.len()));
        }
        Ok(size)
    };
    Ok(match ty {
        F32 => {
            let s = need(1, 4)?;
            bytes[..s]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        F16 => {
            let s = need(1, 2)?;
            bytes[..s].chunks_exact(2).map(f16).collect()
        }
        BF16 => {
            let s = need(1, 2)?;
            bytes[..s]
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        }
        Q8_0 => {
            // 32 values: f16 scale d, 32 × i8 q; x = d·q.
            let s = need(32, 34)?;
            let mut out = Vec::with_capacity(n);
            for block in bytes[..s].chunks_exact(34) {
                let d = f16(&block[..2]);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
            }
            out
        }
        Q4_1 => {
            // 32 values: f16 scale d, f16 minimum m, 16 bytes of nibbles; low nibbles are
            // values 0..16, high nibbles 16..32; x = d·q + m.
            let s = need(32, 20)?;
            let mut out = Vec::with_capacity(n);
            for block in bytes[..s].chunks_exact(20) {
                let (d, m) = (f16(&block[..2]), f16(&block[2..4]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
            out
        }
        Q5_0 => {
            let s = need(32, 22)?;
            let mut out = Vec::with_capacity(n);
            let mut q = [0i8; 32];
            for block in bytes[..s].chunks_exact(22) {
                let d = f16(&block[..2]);
                q5_0_values(block, &mut q);
                out.extend(q.iter().map(|&v| d * v as f32));
            }
            out
        }
        Q4_K => {
            // 256 values: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and minimums,
            // 128 bytes of nibbles; sub-block j (32 values) is the low (even j) or high (odd
            // j) nibbles of bytes 32·(j/2)..; x = d·sc_j·q − dmin·m_j.
            let s = need(QK_K, 144)?;
            let mut out = Vec::with_capacity(n);
            for block in bytes[..s].chunks_exact(144) {
                let (d, dmin) = (f16(&block[..2]), f16(&block[2..4]));
                let (scales, qs) = (&block[4..16], &block[16..]);
                for j in 0..8 {
                    let (sc, m) = q4k_scale_min(j, scales);
                    let (dj, mj) = (d * sc as f32, dmin * m as f32);
                    let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let shift = 4 * (j % 2);
                    out.extend(q.iter().map(|&b| dj * ((b >> shift) & 0xf) as f32 - mj));
                }
            }
            out
        }
        Q6_K => {
            let s = need(QK_K, 210)?;
            let mut out = Vec::with_capacity(n);
            let mut q = [0i8; QK_K];
            for block in bytes[..s].chunks_exact(210) {
                let d = f16(&block[208..210]);
                q6_k_values(block, &mut q);
                let scales = &block[192..208];
                out.extend(
                    q.iter()
                        .enumerate()
                        .map(|(i, &v)| d * (scales[i / 16] as i8) as f32 * v as f32),
                );
            }
            out
        }
        other => {
            return Err(format!(
                "ggml tensor type {other} is not supported (F32, F16, BF16, Q8_0, Q4_1, Q5_0, Q4_K, Q6_K are)"
            ));
        }
    })
}

impl Gguf {
    /// Parses GGUF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let mut g = Self::parse_head(&data)?;
        // A vocabulary-only file (no tensors) may end before the alignment padding.
        if g.tensors.is_empty() {
            g.data_start = g.data_start.min(data.len());
        }
        if g.data_start > data.len() {
            return Err("truncated before the tensor data".into());
        }
        g.data = data;
        Ok(g)
    }

    /// The header, metadata and tensor table at the start of `data`, without the tensor data
    /// (which may be absent from `data`).
    fn parse_head(data: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b: data, pos: 0 };
        if r.take(4)? != b"GGUF" {
            return Err("no GGUF magic".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} (2 and 3 are read)"));
        }
        let n_tensors = r.u64()?;
        let n_meta = r.u64()?;
        if n_tensors > 1 << 20 || n_meta > 1 << 20 {
            return Err("implausible tensor or metadata count".into());
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_meta {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r
                .value(ty, 0)
                .map_err(|e| format!("metadata `{key}`: {e}"))?;
            metadata.insert(key, v);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()?;
            if nd > 4 {
                return Err(format!("tensor `{name}` has {nd} dimensions"));
            }
            let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    ggml_type,
                    offset,
                },
            );
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        Ok(Self {
            version,
            metadata,
            tensors,
            data: Vec::new(),
            data_start,
        })
    }

    /// Removes the tokenizer's arrays from the metadata (tokens, merges, scores, types), once
    /// the tokenizer is built, keeping the vocabulary size as `{arch}.vocab_size`.
    pub fn drop_vocabulary(&mut self) {
        if let Some(Value::Array(tokens)) = self.metadata.get("tokenizer.ggml.tokens") {
            let n = tokens.len() as u64;
            let arch = self
                .metadata
                .get("general.architecture")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.metadata
                .entry(format!("{arch}.vocab_size"))
                .or_insert(Value::UInt(n));
        }
        for key in ["tokens", "merges", "scores", "token_type"] {
            self.metadata.remove(&format!("tokenizer.ggml.{key}"));
        }
    }

    fn meta_u64(&self, key: &str) -> Result<u64, String> {
        self.metadata
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("metadata `{key}` is missing"))
    }

    /// A tensor as f32 values, checking its dimensions (innermost first).
    pub fn tensor(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>, String> {
        let (ty, start) = self.raw(name, dims)?;
        let n = dims.iter().product::<u64>() as usize;
        dequantize(ty, &self.data[start..], n).map_err(|e| format!("tensor `{name}`: {e}"))
    }

    /// A tensor's ggml type and where its bytes start in [`into_bytes`](Self::into_bytes)'s
    /// buffer, checking its dimensions (innermost first) and that its bytes are all there.
    pub fn raw(&self, name: &str, dims: &[u64]) -> Result<(u32, usize), String> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        if info.dims != dims {
            return Err(format!(
                "tensor `{name}` has dimensions {:?}, expected {dims:?}",
                info.dims
            ));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= usize::MAX as u64 / 4)
            .ok_or_else(|| format!("tensor `{name}`: its dimensions overflow"))?
            as usize;
        let Some((per, bytes)) = block_layout(info.ggml_type) else {
            return Err(format!(
                "tensor `{name}`: ggml type {} is not supported (F32, F16, BF16, Q8_0, Q4_1, Q5_0, Q4_K, Q6_K are)",
                info.ggml_type
            ));
        };
        if n % per != 0 {
            return Err(format!(
                "tensor `{name}`: {n} values are not whole blocks of {per}"
            ));
        }
        let size = n / per * bytes;
        let start = self
            .data_start
            .checked_add(info.offset as usize)
            .ok_or("offset overflow")?;
        if start
            .checked_add(size)
            .is_none_or(|end| end > self.data.len())
        {
            return Err(format!("tensor `{name}` runs past the end of the file"));
        }
        Ok((info.ggml_type, start))
    }

    /// The file's bytes (tensor data included), for readers that keep the blocks as they are.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The decoder's configuration from the metadata: `llama`, or `gemma3` (with llama.cpp's
    /// defaults for what the file leaves out: every 6th layer global, local rotary base 10⁴,
    /// attention scale `1/√head_dim`, `1/√(dim/heads)` for the 62-layer 27B).
    pub fn config(&self) -> Result<LlamaConfig, String> {
        let arch = self
            .metadata
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if arch != "llama" && arch != "gemma3" {
            return Err(format!(
                "architecture `{arch}` is not supported (`llama` and `gemma3` are)"
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let float = |k: &str| self.metadata.get(&key(k)).and_then(Value::as_f64);
        let heads = self.meta_u64(&key("attention.head_count"))? as usize;
        let vocab = match self.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => t.len(),
            _ => self.meta_u64(&key("vocab_size"))? as usize,
        };
        let dim = self.meta_u64(&key("embedding_length"))? as usize;
        let n_layers = self.meta_u64(&key("block_count"))? as usize;
        // Each layer is at least 9 tensors: a count the file cannot hold is refused before
        // anything is built for its layers.
        if n_layers > self.tensors.len() / 9 {
            return Err(format!(
                "{n_layers} layers claimed, and the file holds {} tensors",
                self.tensors.len()
            ));
        }
        let arch = if arch == "gemma3" {
            let head_dim = self.meta_u64(&key("attention.key_length"))? as usize;
            let value_dim = self
                .metadata
                .get(&key("attention.value_length"))
                .and_then(Value::as_u64)
                .map_or(head_dim, |v| v as usize);
            if value_dim != head_dim {
                return Err(format!("key width {head_dim} ≠ value width {value_dim}"));
            }
            let global_every = match self.metadata.get(&key("attention.sliding_window_pattern")) {
                None => 6,
                Some(v) => v.as_u64().ok_or(
                    "a per-layer `attention.sliding_window_pattern` array is not supported",
                )? as usize,
            };
            let linear = self
                .metadata
                .get(&key("rope.scaling.type"))
                .and_then(Value::as_str)
                .is_none_or(|t| t == "linear" || t == "none");
            if !linear {
                return Err("only linear RoPE scaling is supported".into());
            }
            let attn_width = if n_layers == 62 {
                dim / heads
            } else {
                head_dim
            };
            Arch::Gemma3(Gemma3 {
                head_dim,
                sliding_window: self.meta_u64(&key("attention.sliding_window"))? as usize,
                global_every,
                rope_local_theta: float("rope.freq_base_swa").unwrap_or(10_000.0) as f32,
                rope_scale: float("rope.scaling.factor").unwrap_or(1.0) as f32,
                query_scale: 1.0 / (attn_width as f32).sqrt(),
            })
        } else {
            Arch::Llama
        };
        let c = LlamaConfig {
            vocab_size: vocab,
            dim,
            n_layers,
            n_heads: heads,
            n_kv_heads: self
                .metadata
                .get(&key("attention.head_count_kv"))
                .and_then(Value::as_u64)
                .map_or(heads, |v| v as usize),
            hidden_dim: self.meta_u64(&key("feed_forward_length"))? as usize,
            max_seq_len: self.meta_u64(&key("context_length"))? as usize,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            tie_embeddings: !self.tensors.contains_key("output.weight"),
            value_head: false,
            arch,
        };
        c.validate()?;
        Ok(c)
    }

    /// Every weight, dequantized, in checkpoint layout.
    pub fn weights(&self, c: &LlamaConfig) -> Result<LlamaWeights, String> {
        let (d, h, v) = (c.dim as u64, c.hidden_dim as u64, c.vocab_size as u64);
        let kv = (c.n_kv_heads * c.head_dim()) as u64;
        let (q, hd) = (c.q_dim() as u64, c.head_dim() as u64);
        let mut layers = Vec::with_capacity(c.n_layers.min(self.tensors.len()));
        for i in 0..c.n_layers {
            let t = |n: &str, dims: &[u64]| self.tensor(&format!("blk.{i}.{n}.weight"), dims);
            layers.push(LayerWeights {
                attn_norm: t("attn_norm", &[d])?,
                wq: t("attn_q", &[d, q])?,
                wk: t("attn_k", &[d, kv])?,
                wv: t("attn_v", &[d, kv])?,
                wo: t("attn_output", &[q, d])?,
                ffn_norm: t("ffn_norm", &[d])?,
                w1: t("ffn_gate", &[d, h])?,
                w2: t("ffn_down", &[h, d])?,
                w3: t("ffn_up", &[d, h])?,
                gemma: match c.gemma3() {
                    None => None,
                    Some(_) => Some(GemmaNorms {
                        q_norm: t("attn_q_norm", &[hd])?,
                        k_norm: t("attn_k_norm", &[hd])?,
                        post_attn_norm: t("post_attention_norm", &[d])?,
                        post_ffn_norm: t("post_ffw_norm", &[d])?,
                    }),
                },
            });
        }
        Ok(LlamaWeights {
            embed: self.tensor("token_embd.weight", &[d, v])?,
            layers,
            final_norm: self.tensor("output_norm.weight", &[d])?,
            lm_head: if c.tie_embeddings {
                None
            } else {
                Some(self.tensor("output.weight", &[d, v])?)
            },
        })
    }

    /// The first id of the token `text` (without copying the token list).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a
                .iter()
                .position(|v| v.as_str() == Some(text))
                .map(|i| i as u32),
            _ => None,
        }
    }

    /// The token list.
    pub fn tokens(&self) -> Result<Vec<String>, String> {
        match self.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "a token is not a string".to_string())
                })
                .collect(),
            _ => Err("metadata `tokenizer.ggml.tokens` is missing".into()),
        }
    }

    /// The tokenizer, rebuilt from the metadata as a `tokenizers` BPE that encodes as
    /// llama.cpp does (checked against llama.cpp's own tokenizer tests):
    ///
    /// - `gpt2`: byte-level BPE, its pre-tokenizer the regexes llama.cpp uses for the file's
    ///   `tokenizer.ggml.pre` (`gpt-2`, `llama-bpe`, `qwen2`, `smollm`, …);
    /// - `llama`: SentencePiece (`▁` for spaces, a space prefix unless
    ///   `tokenizer.ggml.add_space_prefix` is false, byte fallback), its scores turned into
    ///   merge ranks;
    /// - `gemma4`: a BPE over raw UTF-8 with `▁` for spaces, split at newlines.
    ///
    /// Control tokens are special tokens; user-defined ones are added tokens.
    pub fn tokenizer(&self) -> Result<Tokenizer, String> {
        let model = self
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        let tokens = self.tokens()?;
        let types: Vec<u64> = match self.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let merges = || -> Result<Vec<(String, String)>, String> {
            match self.metadata.get("tokenizer.ggml.merges") {
                Some(Value::Array(a)) => Ok(a
                    .iter()
                    .filter_map(|v| v.as_str()?.split_once(' '))
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()),
                _ => Err("metadata `tokenizer.ggml.merges` is missing".into()),
            }
        };
        // The first id of each token.
        let vocab = || -> Vec<(String, u32)> {
            let mut seen = std::collections::HashSet::new();
            tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| seen.insert(t.as_str()))
                .map(|(i, t)| (t.clone(), i as u32))
                .collect()
        };
        let bpe = |byte_fallback: bool, ignore_merges: bool| -> Result<Bpe, String> {
            Ok(Bpe {
                vocab: vocab(),
                merges: merges()?,
                unk: None,
                fuse_unk: false,
                byte_fallback,
                ignore_merges,
            })
        };
        let flag = |key: &str, default: bool| {
            self.metadata
                .get(key)
                .map_or(default, |v| *v == Value::Bool(true))
        };
        let added = added_tokens(&tokens, &types);
        let (rest, bpe) = match model {
            "gpt2" => {
                let pre = self
                    .metadata
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let (regexes, ignore_merges) = bpe_pre_tokenizer(pre)?;
                let splits: Vec<Json> = regexes
                    .iter()
                    .map(|r| serde_json::json!({ "type": "Split", "pattern": { "Regex": r }, "behavior": "Isolated", "invert": false }))
                    .chain([serde_json::json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false })])
                    .collect();
                let rest = serde_json::json!({
                    "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
                    "pre_tokenizer": { "type": "Sequence", "pretokenizers": splits },
                    "post_processor": null,
                    "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
                });
                (rest, bpe(false, ignore_merges)?)
            }
            "llama" => {
                let scores: Vec<f32> = match self.metadata.get("tokenizer.ggml.scores") {
                    Some(Value::Array(a)) => {
                        a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
                    }
                    _ => return Err("metadata `tokenizer.ggml.scores` is missing".into()),
                };
                if scores.len() != tokens.len() {
                    return Err(
                        "`tokenizer.ggml.scores` and `tokenizer.ggml.tokens` differ in length"
                            .into(),
                    );
                }
                let unk = self
                    .metadata
                    .get("tokenizer.ggml.unknown_token_id")
                    .and_then(Value::as_u64)
                    .and_then(|u| tokens.get(u as usize));
                let byte = |i: usize| types.get(i) == Some(&6);
                crate::lm::tokenizer::spm_bpe(
                    &tokens,
                    &scores,
                    &byte,
                    unk.map(String::as_str),
                    flag("tokenizer.ggml.add_space_prefix", true),
                )
            }
            "gemma4" => {
                let rest = serde_json::json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "normalizer": { "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" },
                    "pre_tokenizer": { "type": "Split", "pattern": { "Regex": "[^\\n]+|[\\n]+" }, "behavior": "Isolated", "invert": false },
                    "post_processor": null,
                    "decoder": { "type": "Sequence", "decoders": [
                        { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
                        { "type": "ByteFallback" }, { "type": "Fuse" } ] },
                });
                (rest, bpe(true, false)?)
            }
            other => {
                return Err(format!(
                    "tokenizer model `{other}` is not supported (byte-level BPE `gpt2`, SentencePiece `llama` and `gemma4` are)"
                ));
            }
        };
        let inner = assemble(rest, bpe, &added)?;
        let id = |key: &str| {
            self.metadata
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let add_bos = flag("tokenizer.ggml.add_bos_token", true);
        let eos = id("tokenizer.ggml.eos_token_id").unwrap_or(2);
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos: id("tokenizer.ggml.bos_token_id").filter(|_| add_bos),
            eos,
        })
    }

    /// The chat template (Jinja): the file's own, or for a Gemma 3 file without one (the base
    /// models ship none) Gemma's turn format.
    pub fn chat_template(&self) -> Option<&str> {
        let own = self
            .metadata
            .get("tokenizer.chat_template")
            .and_then(Value::as_str);
        let arch = self
            .metadata
            .get("general.architecture")
            .and_then(Value::as_str);
        own.or((arch == Some("gemma3")).then_some(GEMMA3_CHAT_TEMPLATE))
    }
}

type Json = serde_json::Value;

/// Gemma 3's chat format (its instruction-tuned models' template, text only): turns
/// `<start_of_turn>{user|model}\n…<end_of_turn>\n`, a system message prefixed to the first
/// user turn.
const GEMMA3_CHAT_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// Control tokens (type 3) as special tokens and user-defined ones (type 4) as added tokens.
fn added_tokens(tokens: &[String], types: &[u64]) -> Vec<Json> {
    tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({ "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[i] == 3 })
        })
        .collect()
}

/// How llama.cpp pre-tokenizes a byte-level BPE, by its `tokenizer.ggml.pre`: regexes applied
/// one after the other (each splits the pieces of the last, keeping what it does not match),
/// before the byte-level mapping; and whether a piece that is itself a token skips the merges
/// (`ignore_merges`, as Llama 3's tokenizer does).
pub fn bpe_pre_tokenizer(pre: &str) -> Result<(Vec<&'static str>, bool), String> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => (vec![GPT2], false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3], false),
        "qwen2" | "stablelm2" | "hunyuan" | "solar-open" => (vec![QWEN2], false),
        "qwen35" => (vec![QWEN35], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "falcon" => (
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
        ),
        "deepseek-llm" => (
            vec![
                "[\r\n]",
                "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
                "\\s+$",
                "[一-龥ࠀ-一가-퟿]+",
                "\\p{N}+",
            ],
            false,
        ),
        "deepseek-coder" => (
            vec![
                "[\r\n]",
                "\\s?\\p{L}+",
                "\\s?\\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                "\\p{N}",
            ],
            false,
        ),
        "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
        ),
        other => {
            return Err(format!(
                "pre-tokenizer `{other}` is not supported (gpt-2, llama-bpe, qwen2, qwen35, smollm, starcoder, refact, command-r, falcon, deepseek-llm, deepseek-coder, mpt, default are)"
            ));
        }
    })
}

/// Reads a GGUF file.
pub fn load(path: &Path) -> Result<Gguf, Error> {
    load_with(path, |_| ()).map(|(g, ())| g)
}

/// Reads a GGUF file in two passes: the metadata first, on which `before_data` runs (to build
/// the tokenizer and [drop](Gguf::drop_vocabulary) what it no longer needs), then the tensor
/// data. The vocabulary's strings and the weights are then never in memory together, which
/// keeps the peak of a load near the weights plus the tokenizer.
pub fn load_with<R>(
    path: &Path,
    before_data: impl FnOnce(&mut Gguf) -> R,
) -> Result<(Gguf, R), Error> {
    use std::io::Read;
    let invalid =
        |e: String| Error::Usage(format!("{}: not a valid GGUF file: {e}", path.display()));
    let io = |e| Error::io("read", path, e);
    let len = std::fs::metadata(path).map_err(io)?.len() as usize;
    // The metadata is at the start: read 8 MiB, more while the header runs past it.
    let mut want = len.min(8 << 20);
    let mut g = loop {
        let mut head = Vec::with_capacity(want);
        std::fs::File::open(path)
            .map_err(io)?
            .take(want as u64)
            .read_to_end(&mut head)
            .map_err(io)?;
        match Gguf::parse_head(&head) {
            Ok(g) => break g,
            // A header cut short (or a count checked against the bytes read) is read again
            // longer; errors stand only once the whole file is read.
            Err(_) if want < len => want = len.min(want * 4),
            Err(e) => return Err(invalid(e)),
        }
    };
    let r = before_data(&mut g);
    // Hand the metadata's freed strings back to the system before the weights arrive (glibc
    // keeps freed heap memory mapped otherwise, and it would count in the peak).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    let data = std::fs::read(path).map_err(io)?;
    if data.len() != len {
        return Err(invalid("the file changed while it was read".into()));
    }
    if g.tensors.is_empty() {
        g.data_start = g.data_start.min(data.len());
    }
    if g.data_start > data.len() {
        return Err(invalid("truncated before the tensor data".into()));
    }
    g.data = data;
    Ok((g, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_and_q8_0_blocks_dequantize_by_definition() {
        let mut q41 = Vec::new();
        q41.extend(half::f16::from_f32(0.5).to_le_bytes());
        q41.extend(half::f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let x = dequantize(Q4_1, &q41, 32).unwrap();
        assert_eq!(x[0], -1.0);
        assert_eq!(x[3], 0.5);
        assert_eq!(x[16], 0.5 * 15.0 - 1.0);
        let mut q80 = Vec::new();
        q80.extend(half::f16::from_f32(0.25).to_le_bytes());
        q80.extend((0..32).map(|i: i8| (i - 16) as u8));
        let y = dequantize(Q8_0, &q80, 32).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[31], 3.75);
        assert!(dequantize(Q4_1, &q41[..10], 32).is_err());
        assert!(dequantize(12, &q41, 32).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Gguf::parse(b"GGUF".to_vec()).is_err());
        assert!(Gguf::parse(b"nope".to_vec()).is_err());
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(u64::MAX.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        assert!(Gguf::parse(v).is_err());
    }
}
