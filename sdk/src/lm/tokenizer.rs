//! Tokenizers: llama2.c's, a character-level one built in process for generated tasks, and
//! (through the `tokenizers` crate) Hugging Face `tokenizer.json`.

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

    /// The text of `ids` (special tokens dropped), as a continuation of `prev` when given.
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
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            crate::Error::Usage(format!(
                "{}: not a readable tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos,
            eos,
        })
    }
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

    #[test]
    fn unknown_characters_map_to_unk() {
        let t = Tokenizer::Char(CharTokenizer::new("ab"));
        assert_eq!(t.encode("aXb", false), vec![4, 3, 5]);
    }
}
