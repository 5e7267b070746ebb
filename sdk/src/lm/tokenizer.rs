//! Tokenizers: llama2.c's; for generated tasks, a character-level one or a small byte-level BPE
//! trained in process ([`train_bpe`]); and (through the `tokenizers` crate) Hugging Face
//! `tokenizer.json`.

use std::collections::HashMap;

use crate::lm::llama2c::{self, Llama2cTokenizer};

/// A character-level vocabulary: `<pad>` 0, `<bos>` 1, `<eos>` 2, `<unk>` 3, then one token
/// per character of the alphabet, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

/// Special tokens of [`CharTokenizer`].
pub const CHAR_SPECIALS: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<unk>"];

impl CharTokenizer {
    /// A tokenizer over the distinct characters of `alphabet`.
    pub fn new(alphabet: &str) -> Self {
        let mut chars = Vec::new();
        for c in alphabet.chars() {
            if !chars.contains(&c) {
                chars.push(c);
            }
        }
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, (i + CHAR_SPECIALS.len()) as u32))
            .collect();
        Self { chars, index }
    }

    /// The alphabet.
    pub fn alphabet(&self) -> String {
        self.chars.iter().collect()
    }
}

/// A tokenizer of any supported kind.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    Llama2c(Llama2cTokenizer),
    Char(CharTokenizer),
    /// A Hugging Face `tokenizer.json`, with its BOS and EOS ids.
    Hf {
        inner: Box<tokenizers::Tokenizer>,
        bos: Option<u32>,
        eos: u32,
    },
}

impl Tokenizer {
    /// Token ids of `text`, with BOS first when `bos`.
    pub fn encode(&self, text: &str, bos: bool) -> Vec<u32> {
        match self {
            Tokenizer::Llama2c(t) => t.encode(text, bos, false),
            Tokenizer::Hf { inner, bos: b, .. } => {
                let mut ids: Vec<u32> = Vec::new();
                if bos && let Some(b) = b {
                    ids.push(*b);
                }
                if let Ok(enc) = inner.encode(text, false) {
                    ids.extend_from_slice(enc.get_ids());
                }
                ids
            }
            Tokenizer::Char(t) => {
                let mut ids = Vec::with_capacity(text.len() + 1);
                if bos {
                    ids.push(1);
                }
                ids.extend(text.chars().map(|c| t.index.get(&c).copied().unwrap_or(3)));
                ids
            }
        }
    }

    /// This tokenizer with special tokens read as plain text (llama.cpp's
    /// `parse_special = false`): `"<|endoftext|>"` in a text is its characters, not the
    /// special token. Only Hugging Face tokenizers have special tokens to parse.
    pub fn with_special_as_text(&self) -> Tokenizer {
        let mut t = self.clone();
        if let Tokenizer::Hf { inner, .. } = &mut t {
            inner.set_encode_special_tokens(true);
        }
        t
    }

    /// The text of `ids` (special tokens dropped), as a continuation of `prev` when given.
    /// [`decode`](Self::decode) with special tokens written out (`<|im_end|>`), so that a
    /// server that parses special tokens in text (as OpenAI-compatible servers do) reads the
    /// same ids back. Only Hugging Face tokenizers have such tokens in text form.
    pub fn decode_with_special(&self, ids: &[u32], prev: Option<u32>) -> String {
        match self {
            Tokenizer::Hf { inner, .. } => inner.decode(ids, false).unwrap_or_default(),
            _ => self.decode(ids, prev),
        }
    }

    pub fn decode(&self, ids: &[u32], prev: Option<u32>) -> String {
        match self {
            Tokenizer::Llama2c(t) => {
                let mut out = Vec::new();
                let mut p = prev.unwrap_or(0);
                for &id in ids {
                    if id != llama2c::BOS && id != llama2c::EOS {
                        out.extend_from_slice(Llama2cTokenizer::printable(&t.decode_piece(p, id)));
                    }
                    p = id;
                }
                String::from_utf8_lossy(&out).into_owned()
            }
            Tokenizer::Hf { inner, .. } => inner.decode(ids, true).unwrap_or_default(),
            Tokenizer::Char(t) => ids
                .iter()
                .filter_map(|&id| {
                    (id as usize)
                        .checked_sub(CHAR_SPECIALS.len())
                        .and_then(|i| t.chars.get(i))
                        .copied()
                })
                .collect(),
        }
    }

    /// This tokenizer with each of `phrases` as one whole token (after the existing ids), where
    /// it can hold multi-character tokens: a byte-level BPE or another Hugging Face tokenizer.
    /// Text containing a phrase encodes it as that token (the longest phrase first) and
    /// decodes it back unchanged. For strings a method repeats verbatim in every input (a fixed
    /// header, an instruction), so that a model trained from scratch spends one position on
    /// them; never for a checkpoint's tokenizer, whose model has no row for a new id. Other
    /// tokenizers are returned unchanged.
    pub fn with_phrases(&self, phrases: &[&str]) -> Tokenizer {
        let mut t = self.clone();
        if let Tokenizer::Hf { inner, .. } = &mut t {
            let added: Vec<tokenizers::AddedToken> = phrases
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| tokenizers::AddedToken::from(p.to_string(), false))
                .collect();
            inner.add_tokens(&added);
        }
        t
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Llama2c(t) => t.vocab_size(),
            Tokenizer::Char(t) => t.chars.len() + CHAR_SPECIALS.len(),
            Tokenizer::Hf { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// The beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Hf { bos, .. } => *bos,
            _ => Some(1),
        }
    }

    /// The end-of-sequence id.
    pub fn eos(&self) -> u32 {
        match self {
            Tokenizer::Hf { eos, .. } => *eos,
            _ => 2,
        }
    }

    /// The id used for padding (never attended to).
    pub fn pad(&self) -> u32 {
        match self {
            Tokenizer::Hf { eos, .. } => *eos,
            _ => 0,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`; `bos`/`eos` name its special tokens' ids.
    pub fn from_hf_file(
        path: &std::path::Path,
        bos: Option<u32>,
        eos: u32,
    ) -> Result<Self, crate::Error> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::io("read", path, e))?;
        Self::from_hf_bytes(&bytes, bos, eos).map_err(|e| {
            crate::Error::Usage(format!(
                "{}: not a readable tokenizer.json: {e}",
                path.display()
            ))
        })
    }

    /// A Hugging Face `tokenizer.json`'s bytes as a tokenizer.
    pub fn from_hf_bytes(bytes: &[u8], bos: Option<u32>, eos: u32) -> Result<Self, String> {
        // tokenizers 0.22 panics (`expect("Helper")` in its decoder's deserializer) on some
        // malformed JSON: the syntax is checked first, and any other panic in it is caught
        // and reported as a bad file.
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| "the tokenizers library failed on this file".to_string())?;
        let inner = parsed.map_err(|e| e.to_string())?;
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos,
            eos,
        })
    }
}

/// Special tokens of a BPE trained by [`train_bpe`]: `<pad>` 0, `<bos>` 1, `<eos>` 2.
pub const BPE_SPECIALS: [&str; 3] = ["<pad>", "<bos>", "<eos>"];

/// Trains a byte-level BPE (GPT-2's pre-tokenizer and byte alphabet, so every string round
/// trips) on `texts` with at most `merges` merges.
///
/// Deterministic: each round merges the most frequent adjacent pair, ties broken by the pair's
/// strings. Two pieces that both hold a digit are never merged, so numbers stay one token per
/// digit (a leading space may join the first digit), which keeps arithmetic learnable. Stops
/// early when no pair occurs twice. Ids: [`BPE_SPECIALS`], the 256 byte symbols, then the
/// merged tokens in merge order.
pub fn train_bpe<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    merges: usize,
) -> Result<Tokenizer, crate::Error> {
    use std::collections::BTreeMap;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let fail = |e: &dyn std::fmt::Display| crate::Error::Usage(format!("training a BPE: {e}"));
    let pre = ByteLevel::new(false, true, true);
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    for text in texts {
        let mut pts = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut pts).map_err(|e| fail(&e))?;
        for (piece, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(piece.to_owned()).or_default() += 1;
        }
    }
    let mut symbols: Vec<(Vec<String>, u64)> = words
        .into_iter()
        .map(|(w, n)| (w.chars().map(String::from).collect(), n))
        .collect();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut vocab: Vec<String> = BPE_SPECIALS.iter().map(|s| s.to_string()).collect();
    vocab.extend(alphabet.iter().map(|c| c.to_string()));
    let has_digit = |s: &str| s.chars().any(|c| c.is_ascii_digit());
    let mut merge_list: Vec<(String, String)> = Vec::new();
    while merge_list.len() < merges {
        let mut pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (w, n) in &symbols {
            for p in w.windows(2) {
                if !(has_digit(&p[0]) && has_digit(&p[1])) {
                    *pairs.entry((&p[0], &p[1])).or_default() += n;
                }
            }
        }
        // Highest count; among equal counts the smallest pair (BTreeMap order, first wins).
        let Some(((a, b), count)) = pairs.into_iter().fold(
            None,
            |best: Option<((&str, &str), u64)>, (p, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((p, n)),
            },
        ) else {
            break;
        };
        if count < 2 {
            break;
        }
        let (a, b) = (a.to_owned(), b.to_owned());
        let joined = format!("{a}{b}");
        for (w, _) in &mut symbols {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        vocab.push(joined);
        merge_list.push((a, b));
    }
    let vocab_map: tokenizers::models::bpe::Vocab = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let model = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab_map, merge_list)
        .build()
        .map_err(|e| fail(&e))?;
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(ByteLevel::new(false, true, true)));
    inner.add_special_tokens(
        &BPE_SPECIALS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect::<Vec<_>>(),
    );
    Ok(Tokenizer::Hf {
        inner: Box::new(inner),
        bos: Some(1),
        eos: 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &str = "0123456789+-*=#. abcdefghijklmnopqrstuvwxyz?\n";

    proptest! {
        #[test]
        fn char_round_trip(s in "[0-9+*=#. a-z?\n-]{0,64}") {
            let t = Tokenizer::Char(CharTokenizer::new(ALPHABET));
            let ids = t.encode(&s, true);
            prop_assert_eq!(ids[0], 1);
            prop_assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size() && i != 3));
            prop_assert_eq!(t.decode(&ids, None), s);
        }
    }

    fn arith_bpe() -> Tokenizer {
        let texts = [
            "Mia has 7 pens. She gets 15 more. How many pens does Mia have?\n7+15=22. #### 22",
            "Tom has 12 cards. He gives away 3. How many cards does Tom have?\n12-3=9. #### 9",
        ];
        train_bpe(texts.iter().copied().cycle().take(20), 60).unwrap()
    }

    #[test]
    fn phrases_become_one_token_and_decode_unchanged() {
        let header = "When asked \"Q?\", answer.\n\n";
        let t = arith_bpe().with_phrases(&[header, "Q?"]);
        assert_eq!(t.vocab_size(), arith_bpe().vocab_size() + 2);
        let text = format!("{header}Mia has 7 pens. Q? Yes");
        let ids = t.encode(&text, true);
        let plain = arith_bpe().encode(&text, true);
        // The header is one token (the "Q?" inside it is not matched on its own), the later
        // "Q?" another.
        assert_eq!(ids[1] as usize, arith_bpe().vocab_size());
        assert_eq!(
            ids.iter()
                .filter(|&&i| i as usize == arith_bpe().vocab_size() + 1)
                .count(),
            1
        );
        assert!(ids.len() + 10 < plain.len(), "{ids:?}");
        assert_eq!(t.decode(&ids, None), text);
        // Without the phrase the text encodes as before.
        assert_eq!(
            t.encode("Mia has 7 pens.", false),
            arith_bpe().encode("Mia has 7 pens.", false)
        );
    }

    proptest! {
        #[test]
        fn bpe_round_trip(s in "[0-9+*=#. a-zA-Z?\n-]{0,64}") {
            let t = arith_bpe();
            let ids = t.encode(&s, true);
            prop_assert_eq!(ids[0], 1);
            prop_assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            prop_assert_eq!(t.decode(&ids, None), s);
        }
    }

    #[test]
    fn bpe_merges_words_not_digits_and_is_deterministic() {
        let t = arith_bpe();
        assert_eq!(t.vocab_size(), arith_bpe().vocab_size());
        let text = " pens 1234";
        let ids = t.encode(text, false);
        assert_eq!(ids, arith_bpe().encode(text, false));
        // " pens" is one token; "1234" is one token per digit (the space may join the "1").
        let pieces: Vec<String> = ids.iter().map(|&i| t.decode(&[i], None)).collect();
        assert_eq!(pieces[0], " pens", "{pieces:?}");
        assert!(
            pieces
                .iter()
                .all(|p| p.chars().filter(|c| c.is_ascii_digit()).count() <= 1)
        );
        assert_eq!(pieces.concat(), text);
        assert!(ids.len() < text.len());
        assert_eq!(t.bos(), Some(1));
        assert_eq!(t.eos(), 2);
        assert_eq!(t.decode(&[1, 2, 0], None), "");
    }

    #[test]
    fn unknown_characters_map_to_unk() {
        let t = Tokenizer::Char(CharTokenizer::new("ab"));
        assert_eq!(t.encode("aXb", false), vec![4, 3, 5]);
    }
}

/// A BPE model's vocabulary, merges and options, built straight into a `tokenizers` BPE by
/// [`assemble`] (no `tokenizer.json` document in between: for a 49,152-token vocabulary the
/// document and its text took ~50 MB at load) or written into one by [`Bpe::into_json`].
pub(crate) struct Bpe {
    pub vocab: Vec<(String, u32)>,
    pub merges: Vec<(String, String)>,
    pub unk: Option<String>,
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    pub ignore_merges: bool,
}

impl Bpe {
    /// The `model` object of a `tokenizer.json`.
    pub fn into_json(self) -> serde_json::Value {
        let vocab: serde_json::Map<String, serde_json::Value> =
            self.vocab.into_iter().map(|(p, i)| (p, i.into())).collect();
        let merges: Vec<serde_json::Value> = self
            .merges
            .into_iter()
            .map(|(a, b)| serde_json::json!([a, b]))
            .collect();
        serde_json::json!({ "type": "BPE", "dropout": null, "unk_token": self.unk,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": self.fuse_unk, "byte_fallback": self.byte_fallback,
            "ignore_merges": self.ignore_merges, "vocab": vocab, "merges": merges })
    }
}

/// The tokenizer of `rest` (a `tokenizer.json` document without its model and added tokens)
/// with `model` and the `added` tokens (`tokenizer.json`'s `added_tokens` entries), which
/// take their ids from the model's vocabulary as when the whole document is read.
pub(crate) fn assemble(
    mut rest: serde_json::Value,
    model: Bpe,
    added: &[serde_json::Value],
) -> Result<tokenizers::Tokenizer, String> {
    rest["model"] = serde_json::json!({ "type": "BPE", "vocab": {}, "merges": [] });
    rest["added_tokens"] = serde_json::json!([]);
    let mut inner: tokenizers::Tokenizer =
        serde_json::from_value(rest).map_err(|e| format!("rebuilding the tokenizer: {e}"))?;
    let vocab: tokenizers::models::bpe::Vocab = model.vocab.into_iter().collect();
    let mut builder = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab, model.merges)
        .fuse_unk(model.fuse_unk)
        .byte_fallback(model.byte_fallback)
        .ignore_merges(model.ignore_merges);
    if let Some(unk) = model.unk {
        builder = builder.unk_token(unk);
    }
    inner.with_model(
        builder
            .build()
            .map_err(|e| format!("rebuilding the tokenizer: {e}"))?,
    );
    let flag = |v: &serde_json::Value, key: &str| v[key].as_bool().unwrap_or(false);
    let added: Vec<tokenizers::AddedToken> = added
        .iter()
        .map(|v| tokenizers::AddedToken {
            content: v["content"].as_str().unwrap_or_default().to_string(),
            single_word: flag(v, "single_word"),
            lstrip: flag(v, "lstrip"),
            rstrip: flag(v, "rstrip"),
            normalized: flag(v, "normalized"),
            special: flag(v, "special"),
        })
        .collect();
    inner.add_tokens(&added);
    Ok(inner)
}

/// A SentencePiece vocabulary (pieces with `▁` for spaces, their scores) as a `tokenizer.json`
/// BPE that encodes as SentencePiece's BPE and llama.cpp do: every split of a piece into two
/// pieces is a merge, ranked by the merged piece's score (highest first, then by id); `▁`
/// replaces spaces, with one prepended when `add_space_prefix`; characters outside the
/// vocabulary fall back to their `<0xNN>` byte pieces (`is_byte`). Returns the document
/// without its model and added tokens, and the model (see [`assemble`]).
pub(crate) fn spm_bpe(
    pieces: &[String],
    scores: &[f32],
    is_byte: &dyn Fn(usize) -> bool,
    unk: Option<&str>,
    add_space_prefix: bool,
) -> (serde_json::Value, Bpe) {
    use serde_json::json;
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, p) in pieces.iter().enumerate() {
        index.entry(p.as_str()).or_insert(i);
    }
    let piece = |s: &str| index.get(s).copied().filter(|&i| !is_byte(i));
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (id, p) in pieces.iter().enumerate() {
        if is_byte(id) || index.get(p.as_str()) != Some(&id) {
            continue;
        }
        for (k, _) in p.char_indices().skip(1) {
            let (a, b) = p.split_at(k);
            if piece(a).is_some() && piece(b).is_some() {
                ranked.push((scores.get(id).copied().unwrap_or(0.0), id, a, b));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = ranked
        .iter()
        .map(|m| (m.2.to_string(), m.3.to_string()))
        .collect();
    drop(ranked);
    let mut vocab: Vec<(String, u32)> = index
        .iter()
        .map(|(p, &i)| (p.to_string(), i as u32))
        .collect();
    vocab.sort_by_key(|v| v.1);
    let space = json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" });
    let normalizer = if add_space_prefix {
        json!({ "type": "Sequence", "normalizers": [ { "type": "Prepend", "prepend": "\u{2581}" }, space ] })
    } else {
        space
    };
    let mut decoders = vec![
        json!({ "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " }),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if add_space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    let rest = json!({ "version": "1.0", "truncation": null, "padding": null,
        "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": decoders } });
    let model = Bpe {
        vocab,
        merges,
        unk: unk.map(str::to_string),
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
    };
    (rest, model)
}

/// [`spm_bpe`] as a whole `tokenizer.json` document with `added` as its added tokens.
pub(crate) fn spm_bpe_json(
    pieces: &[String],
    scores: &[f32],
    is_byte: &dyn Fn(usize) -> bool,
    added: Vec<serde_json::Value>,
    unk: Option<&str>,
    add_space_prefix: bool,
) -> serde_json::Value {
    let (mut json, model) = spm_bpe(pieces, scores, is_byte, unk, add_space_prefix);
    json["model"] = model.into_json();
    json["added_tokens"] = added.into();
    json
}
