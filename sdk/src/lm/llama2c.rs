//! llama2.c checkpoints (`.bin`, legacy "version 0" export) and tokenizers (`tok*.bin`).
//!
//! Checkpoint: seven little-endian i32 — `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//! vocab_size, seq_len` (a negative vocab size means an untied output layer) — then f32 arrays:
//! token embedding `[vocab, dim]`, attention norms `[L, dim]`, `wq [L, dim, dim]`,
//! `wk [L, kv, dim]`, `wv [L, kv, dim]`, `wo [L, dim, dim]`, FFN norms `[L, dim]`,
//! `w1 [L, hidden, dim]`, `w2 [L, dim, hidden]`, `w3 [L, hidden, dim]`, final norm `[dim]`,
//! two unused RoPE tables `[seq_len, head_dim/2]`, and the output layer `[vocab, dim]` when
//! untied. Matrices are `[out, in]`.
//!
//! Tokenizer: i32 `max_token_length`, then per token `f32 score, i32 len, len bytes`.

use std::path::Path;

use crate::error::Error;
use crate::lm::llama::{LayerWeights, LlamaConfig, LlamaWeights};

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Usage(format!(
        "{}: not a valid llama2.c file: {}",
        path.display(),
        reason.into()
    ))
}

/// A little-endian reader that reports truncation instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn f32(&mut self) -> Option<f32> {
        self.take(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let bytes = self.take(n.checked_mul(4)?)?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    }
}

/// Reads a llama2.c checkpoint.
pub fn load_checkpoint(path: &Path) -> Result<(LlamaConfig, LlamaWeights), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    parse_checkpoint(&bytes).map_err(|reason| bad(path, reason))
}

/// Parses checkpoint bytes.
pub fn parse_checkpoint(bytes: &[u8]) -> Result<(LlamaConfig, LlamaWeights), String> {
    let mut r = Reader { bytes, pos: 0 };
    let mut header = [0i32; 7];
    for h in header.iter_mut() {
        *h = r
            .i32()
            .ok_or("the file is shorter than the 28-byte header")?;
    }
    let [dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len] = header;
    let tied = vocab > 0;
    let as_size = |name: &str, v: i32, max: i32| -> Result<usize, String> {
        if v <= 0 || v > max {
            Err(format!("header field {name} = {v} is out of range"))
        } else {
            Ok(v as usize)
        }
    };
    let config = LlamaConfig {
        dim: as_size("dim", dim, 1 << 16)?,
        hidden_dim: as_size("hidden_dim", hidden, 1 << 18)?,
        n_layers: as_size("n_layers", n_layers, 1024)?,
        n_heads: as_size("n_heads", n_heads, 1024)?,
        n_kv_heads: as_size("n_kv_heads", n_kv_heads, 1024)?,
        vocab_size: as_size("vocab_size", vocab.checked_abs().unwrap_or(0), 1 << 22)?,
        max_seq_len: as_size("seq_len", seq_len, 1 << 20)?,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: tied,
        value_head: false,
        arch: Default::default(),
    };
    config.validate()?;
    let (d, h, l, v) = (
        config.dim,
        config.hidden_dim,
        config.n_layers,
        config.vocab_size,
    );
    let kv = config.n_kv_heads * config.head_dim();
    let expected = 4
        * (7 + v * d
            + l * (2 * d + 2 * d * d + 2 * kv * d + 3 * h * d)
            + d
            + config.max_seq_len * config.head_dim()
            + if tied { 0 } else { v * d });
    if bytes.len() < expected {
        return Err(format!(
            "the file has {} bytes; its header implies {expected} (truncated?)",
            bytes.len()
        ));
    }
    let short = || "truncated".to_string();
    let embed = r.f32s(v * d).ok_or_else(short)?;
    let mut per_layer = |n: usize| -> Result<Vec<Vec<f32>>, String> {
        (0..l).map(|_| r.f32s(n).ok_or_else(short)).collect()
    };
    let attn_norm = per_layer(d)?;
    let wq = per_layer(d * d)?;
    let wk = per_layer(kv * d)?;
    let wv = per_layer(kv * d)?;
    let wo = per_layer(d * d)?;
    let ffn_norm = per_layer(d)?;
    let w1 = per_layer(h * d)?;
    let w2 = per_layer(d * h)?;
    let w3 = per_layer(h * d)?;
    let final_norm = r.f32s(d).ok_or_else(short)?;
    r.take(config.max_seq_len * config.head_dim() * 4)
        .ok_or_else(short)?; // freq_cis_real + imag
    let lm_head = if tied {
        None
    } else {
        Some(r.f32s(v * d).ok_or_else(short)?)
    };
    let mut layers = Vec::with_capacity(l);
    let mut its = (
        attn_norm.into_iter(),
        wq.into_iter(),
        wk.into_iter(),
        wv.into_iter(),
        wo.into_iter(),
        ffn_norm.into_iter(),
        w1.into_iter(),
        w2.into_iter(),
        w3.into_iter(),
    );
    for _ in 0..l {
        layers.push(LayerWeights {
            attn_norm: its.0.next().expect("n_layers"),
            wq: its.1.next().expect("n_layers"),
            wk: its.2.next().expect("n_layers"),
            wv: its.3.next().expect("n_layers"),
            wo: its.4.next().expect("n_layers"),
            ffn_norm: its.5.next().expect("n_layers"),
            w1: its.6.next().expect("n_layers"),
            w2: its.7.next().expect("n_layers"),
            w3: its.8.next().expect("n_layers"),
            gemma: None,
        });
    }
    Ok((
        config,
        LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        },
    ))
}

/// llama2.c's tokenizer: a SentencePiece-style vocabulary merged greedily by score, with byte
/// fallback (`<0xNN>` tokens at ids 3..259).
#[derive(Clone, Debug)]
pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    lookup: std::collections::HashMap<Vec<u8>, u32>,
}

/// BOS id in llama2.c vocabularies.
pub const BOS: u32 = 1;
/// EOS id in llama2.c vocabularies.
pub const EOS: u32 = 2;

impl Llama2cTokenizer {
    /// Reads a `tok*.bin` file with `vocab_size` entries.
    pub fn load(path: &Path, vocab_size: usize) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Self::parse(&bytes, vocab_size).map_err(|reason| bad(path, reason))
    }

    /// Parses tokenizer bytes.
    pub fn parse(bytes: &[u8], vocab_size: usize) -> Result<Self, String> {
        let mut r = Reader { bytes, pos: 0 };
        r.i32()
            .ok_or("the file is shorter than its 4-byte header")?;
        let mut pieces = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        for i in 0..vocab_size {
            let score = r.f32().ok_or_else(|| format!("truncated at token {i}"))?;
            let len = r.i32().ok_or_else(|| format!("truncated at token {i}"))?;
            if !(0..=4096).contains(&len) {
                return Err(format!("token {i} has length {len}"));
            }
            let piece = r
                .take(len as usize)
                .ok_or_else(|| format!("truncated at token {i}"))?;
            pieces.push(piece.to_vec());
            scores.push(score);
        }
        Ok(Self::from_pieces(pieces, scores))
    }

    /// A tokenizer from its pieces (bytes, spaces as `' '`, BOS `"\n<s>\n"` and EOS
    /// `"\n</s>\n"` as llama2.c writes them) and their merge scores.
    fn from_pieces(pieces: Vec<Vec<u8>>, scores: Vec<f32>) -> Self {
        let lookup = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        Self {
            pieces,
            scores,
            lookup,
        }
    }

    /// The pieces, by id (bytes; spaces as `' '`, BOS `"\n<s>\n"` and EOS `"\n</s>\n"` as
    /// llama2.c writes them).
    pub fn pieces(&self) -> &[Vec<u8>] {
        &self.pieces
    }

    /// The merge scores, by id (a higher score merges first).
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Encodes `text` as llama2.c does: a leading space token, code points looked up (bytes
    /// `+3` when absent), then the best-scoring adjacent merge repeatedly.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens: Vec<u32> = Vec::new();
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty()
            && let Some(&space) = self.lookup.get(b" ".as_slice())
        {
            tokens.push(space);
        }
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let s = ch.encode_utf8(&mut buf).as_bytes();
            match self.lookup.get(s) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(s.iter().map(|&b| b as u32 + 3)),
            }
        }
        let start = usize::from(bos);
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in start..tokens.len().saturating_sub(1) {
                let mut merged = self.pieces[tokens[i] as usize].clone();
                merged.extend_from_slice(&self.pieces[tokens[i + 1] as usize]);
                if let Some(&id) = self.lookup.get(&merged) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        if eos {
            tokens.push(EOS);
        }
        tokens
    }

    /// The bytes `token` prints after `prev` (llama2.c's `decode`): a leading space is dropped
    /// after BOS, and `<0xNN>` pieces are the raw byte.
    pub fn decode_piece(&self, prev: u32, token: u32) -> Vec<u8> {
        let Some(piece) = self.pieces.get(token as usize) else {
            return Vec::new();
        };
        let mut piece = piece.as_slice();
        if prev == BOS && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        if piece.len() == 6
            && piece.starts_with(b"<0x")
            && piece[5] == b'>'
            && let Ok(s) = std::str::from_utf8(&piece[3..5])
            && let Ok(byte) = u8::from_str_radix(s, 16)
        {
            return vec![byte];
        }
        piece.to_vec()
    }

    /// What llama2.c's `safe_printf` prints of a piece: nothing for a single control byte.
    pub fn printable(piece: &[u8]) -> &[u8] {
        match piece {
            [b] if !(b.is_ascii_graphic() || b.is_ascii_whitespace()) => &[],
            _ => piece,
        }
    }

    /// Decodes `tokens` (the first is taken as following BOS when `after_bos`).
    pub fn decode(&self, tokens: &[u32], after_bos: bool) -> String {
        let mut out = Vec::new();
        let mut prev = if after_bos { BOS } else { 0 };
        for &t in tokens {
            out.extend_from_slice(Self::printable(&self.decode_piece(prev, t)));
            prev = t;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
