//! Task `toy-tldr`: a generated stand-in for TL;DR summarisation with a programmatic gold
//! reward, so RLHF's whole pipeline (SFT on human-like references, a reward model on
//! preferences, RL against the proxy, evaluation by the gold reward) runs offline in minutes.
//!
//! A document is a string of lowercase letters in which a few key letters are marked by being
//! uppercase (`qbKaeMtr`). Its ideal summary is the key letters in order (`KM`), then EOS. The
//! gold reward of a response is the F1 of its letters against the key letters (as multisets)
//! minus `length_penalty` per letter beyond the ideal length, and −1 when it has no EOS.
//! Reference ("human") summaries are ideal ones corrupted at `reference_corruption`; preference
//! pairs are two corruptions of the ideal at random rates, labelled by a Bradley–Terry draw on
//! their gold rewards.
//!
//! Both RLHF papers on TL;DR summarisation (asynchronous off-policy RLHF, the PPO
//! implementation details) run on it at CPU scale.

use crate::rng::{Rng, rng};
use crate::tasks::TextProblem;
use crate::{Split, Task};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of `toy-tldr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ToyTldrConfig {
    /// Training documents (SFT, preferences and RL prompts all come from them).
    pub n_train: usize,
    /// Held-out documents for evaluation.
    pub n_test: usize,
    /// Preference pairs (each on a training document).
    pub n_preferences: usize,
    /// Letters in the alphabet (`a`.. and their uppercase key forms), 2 to 26.
    pub letters: usize,
    pub doc_min_len: usize,
    pub doc_max_len: usize,
    pub min_keys: usize,
    pub max_keys: usize,
    /// Probability that a reference summary's letter is dropped or replaced, and that an
    /// extra letter is inserted.
    pub reference_corruption: f32,
    /// Gold reward lost per letter beyond the ideal summary's length.
    pub length_penalty: f32,
    /// Temperature τ of the preference draw: P(a ≻ b) = σ((gold(a) − gold(b)) / τ).
    pub preference_temperature: f32,
}

impl Default for ToyTldrConfig {
    fn default() -> Self {
        Self {
            n_train: 4000,
            n_test: 256,
            n_preferences: 4000,
            letters: 12,
            doc_min_len: 8,
            doc_max_len: 14,
            min_keys: 2,
            max_keys: 4,
            reference_corruption: 0.3,
            length_penalty: 0.1,
            preference_temperature: 0.1,
        }
    }
}

impl ToyTldrConfig {
    /// Errors naming the field when the settings cannot generate documents.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(2..=26).contains(&self.letters) {
            return Err(("letters", "must be between 2 and 26".into()));
        }
        if self.doc_min_len == 0 || self.doc_min_len > self.doc_max_len || self.doc_max_len > 64 {
            return Err((
                "doc_min_len",
                "need 1 ≤ doc_min_len ≤ doc_max_len ≤ 64".into(),
            ));
        }
        if self.min_keys == 0 || self.min_keys > self.max_keys || self.max_keys > self.doc_min_len {
            return Err((
                "min_keys",
                "need 1 ≤ min_keys ≤ max_keys ≤ doc_min_len".into(),
            ));
        }
        if self.n_train == 0 || self.n_test == 0 {
            return Err(("n_train", "n_train and n_test must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.reference_corruption) {
            return Err(("reference_corruption", "must be in [0, 1]".into()));
        }
        if !(self.length_penalty.is_finite() && self.length_penalty >= 0.0) {
            return Err(("length_penalty", "must be a non-negative number".into()));
        }
        if !(self.preference_temperature.is_finite() && self.preference_temperature > 0.0) {
            return Err(("preference_temperature", "must be positive".into()));
        }
        Ok(())
    }
}

/// One document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    /// The document, key letters uppercase.
    pub text: String,
    /// A human-like reference summary (the ideal one, corrupted).
    pub reference: String,
}

impl Document {
    /// What the model is given: the document then `=`.
    pub fn prompt(&self) -> String {
        format!("{}=", self.text)
    }

    /// The ideal summary: the key letters in order.
    pub fn ideal(&self) -> String {
        self.text.chars().filter(char::is_ascii_uppercase).collect()
    }

    /// As a text problem: the prompt, the reference as its solution, the ideal as its answer.
    pub fn problem(&self) -> TextProblem {
        TextProblem {
            id: self.id.clone(),
            prompt: self.prompt(),
            solution: self.reference.clone(),
            answer: self.ideal(),
        }
    }
}

/// A labelled preference pair on a training document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    /// Index into the training split.
    pub document: usize,
    pub chosen: String,
    pub rejected: String,
}

/// The F1 of `summary`'s letters against `keys`' letters, as multisets (0 when either is
/// empty and they differ; 1 when both are empty).
pub fn key_f1(summary: &str, keys: &str) -> f32 {
    let (s, k): (Vec<char>, Vec<char>) = (summary.chars().collect(), keys.chars().collect());
    if s.is_empty() || k.is_empty() {
        return (s.is_empty() && k.is_empty()) as u8 as f32;
    }
    let mut pool = k.clone();
    let mut overlap = 0usize;
    for c in &s {
        if let Some(i) = pool.iter().position(|x| x == c) {
            pool.swap_remove(i);
            overlap += 1;
        }
    }
    if overlap == 0 {
        return 0.0;
    }
    let p = overlap as f32 / s.len() as f32;
    let r = overlap as f32 / k.len() as f32;
    2.0 * p * r / (p + r)
}

/// The gold reward of a response whose ideal summary is `ideal`:
/// `key_f1 − length_penalty · max(0, |y| − |ideal|)` when it finished (EOS), −1 when it did not.
pub fn gold_reward(ideal: &str, response: &str, finished: bool, length_penalty: f32) -> f32 {
    if !finished {
        return -1.0;
    }
    let extra = response
        .chars()
        .count()
        .saturating_sub(ideal.chars().count());
    key_f1(response, ideal) - length_penalty * extra as f32
}

/// The generated task.
#[derive(Clone, Debug)]
pub struct ToyTldrTask {
    pub config: ToyTldrConfig,
    seed: u64,
}

fn letter(i: usize) -> char {
    (b'a' + i as u8) as char
}

impl ToyTldrTask {
    pub fn new(config: ToyTldrConfig, seed: u64) -> Self {
        Self { config, seed }
    }

    fn document(&self, id: String, r: &mut Rng) -> Document {
        let c = &self.config;
        let len = r.random_range(c.doc_min_len..=c.doc_max_len);
        let keys = r.random_range(c.min_keys..=c.max_keys.min(len));
        let mut chars: Vec<char> = (0..len)
            .map(|_| letter(r.random_range(0..c.letters)))
            .collect();
        let mut positions: Vec<usize> = (0..len).collect();
        for i in 0..keys {
            let j = r.random_range(i..len);
            positions.swap(i, j);
        }
        for &p in &positions[..keys] {
            chars[p] = chars[p].to_ascii_uppercase();
        }
        let text: String = chars.into_iter().collect();
        let mut doc = Document {
            id,
            text,
            reference: String::new(),
        };
        doc.reference = self.corrupt(&doc, c.reference_corruption, r);
        doc
    }

    /// The ideal summary of `doc` with each letter dropped or replaced by a random unmarked
    /// document letter with probability `rate`, and an extra such letter inserted with
    /// probability `rate`.
    pub fn corrupt(&self, doc: &Document, rate: f32, r: &mut Rng) -> String {
        let plain: Vec<char> = doc
            .text
            .chars()
            .filter(|c| c.is_ascii_lowercase())
            .collect();
        let filler = |r: &mut Rng| -> char {
            if plain.is_empty() {
                letter(0)
            } else {
                plain[r.random_range(0..plain.len())]
            }
        };
        let mut out: Vec<char> = Vec::new();
        for c in doc.ideal().chars() {
            if r.random::<f32>() < rate {
                if r.random::<bool>() {
                    out.push(filler(r));
                } // else dropped
            } else {
                out.push(c);
            }
        }
        if r.random::<f32>() < rate {
            let at = r.random_range(0..=out.len());
            let c = filler(r);
            out.insert(at, c);
        }
        out.into_iter().collect()
    }

    /// The documents of `split` (seeded by the task seed and the split).
    pub fn documents(&self, split: Split) -> Vec<Document> {
        let (n, stream) = match split {
            Split::Train => (self.config.n_train, 1),
            Split::Validation => (self.config.n_test, 2),
            Split::Test => (self.config.n_test, 3),
        };
        let mut r = rng(self.seed, 400 + stream);
        (0..n)
            .map(|i| self.document(format!("{split}-{i}"), &mut r))
            .collect()
    }

    /// `n_preferences` labelled pairs over the training documents: two corruptions of the
    /// ideal summary at rates drawn uniformly from `[0, 0.8]`, the first chosen with
    /// probability `σ((gold(a) − gold(b)) / τ)`.
    pub fn preferences(&self, train: &[Document]) -> Vec<Preference> {
        let mut r = rng(self.seed, 410);
        let lp = self.config.length_penalty;
        (0..self.config.n_preferences)
            .map(|_| {
                let d = r.random_range(0..train.len());
                let doc = &train[d];
                let a = self.corrupt(doc, r.random_range(0.0..0.8), &mut r);
                let b = self.corrupt(doc, r.random_range(0.0..0.8), &mut r);
                let ideal = doc.ideal();
                let margin = (gold_reward(&ideal, &a, true, lp)
                    - gold_reward(&ideal, &b, true, lp))
                    / self.config.preference_temperature;
                let p_a = 1.0 / (1.0 + (-margin).exp());
                let (chosen, rejected) = if r.random::<f32>() < p_a {
                    (a, b)
                } else {
                    (b, a)
                };
                Preference {
                    document: d,
                    chosen,
                    rejected,
                }
            })
            .collect()
    }

    /// The gold reward with this task's length penalty.
    pub fn gold(&self, doc: &Document, response: &str, finished: bool) -> f32 {
        gold_reward(&doc.ideal(), response, finished, self.config.length_penalty)
    }
}

impl Task for ToyTldrTask {
    type Problem = TextProblem;
    type Output = str;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<TextProblem>> {
        Ok(self
            .documents(split)
            .iter()
            .map(Document::problem)
            .collect())
    }

    /// Solved when the output is exactly the ideal summary.
    fn check(&self, p: &TextProblem, output: &str) -> bool {
        output == p.answer
    }

    fn reward(&self, p: &TextProblem, output: &str, finished: bool) -> Option<f32> {
        Some(gold_reward(
            &p.answer,
            output,
            finished,
            self.config.length_penalty,
        ))
    }
}

crate::register_component! {
    kind: Task,
    name: "toy-tldr",
    description: "generated summarisation: copy a document's marked key letters in order; gold reward = key F1 − length penalty, −1 without EOS; corrupted references and Bradley–Terry-labelled preferences",
    config: ToyTldrConfig,
    build: |config: ToyTldrConfig, ctx| {
        config.validate().map_err(|(f, m)| -> anyhow::Error {
            crate::registry::ConfigError { field: Some(f.into()), message: m }.into()
        })?;
        Ok(Box::new(ToyTldrTask::new(config, ctx.seed)) as Box<ToyTldrTask>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task() -> ToyTldrTask {
        ToyTldrTask::new(
            ToyTldrConfig {
                n_train: 200,
                n_test: 50,
                n_preferences: 400,
                ..Default::default()
            },
            3,
        )
    }

    #[test]
    fn documents_are_deterministic_with_marked_keys() {
        let t = task();
        let a = t.documents(Split::Train);
        assert_eq!(a, t.documents(Split::Train));
        assert_ne!(a[..10], t.documents(Split::Test)[..10]);
        for d in &a {
            let k = d.ideal().len();
            assert!(
                (2..=4).contains(&k) && (8..=14).contains(&d.text.len()),
                "{d:?}"
            );
            assert!(t.check(&d.problem(), &d.ideal()));
            assert_eq!(
                t.reward(&d.problem(), &d.reference, true),
                Some(t.gold(d, &d.reference, true))
            );
            assert_eq!(t.gold(d, &d.ideal(), true), 1.0);
            assert_eq!(t.gold(d, &d.ideal(), false), -1.0);
        }
        // References are corrupted at about the configured rate: below the ideal on average.
        let mean: f32 =
            a.iter().map(|d| t.gold(d, &d.reference, true)).sum::<f32>() / a.len() as f32;
        assert!(mean > 0.4 && mean < 0.9, "{mean}");
    }

    #[test]
    fn preferences_mostly_follow_the_gold_reward() {
        let t = task();
        let train = t.documents(Split::Train);
        let prefs = t.preferences(&train);
        let (mut agree, mut decided) = (0, 0);
        for p in &prefs {
            let (c, r) = (
                t.gold(&train[p.document], &p.chosen, true),
                t.gold(&train[p.document], &p.rejected, true),
            );
            if c != r {
                decided += 1;
                agree += (c > r) as usize;
            }
        }
        assert!(agree as f64 / decided as f64 > 0.75, "{agree}/{decided}");
    }

    proptest! {
        #[test]
        fn f1_is_symmetric_bounded_and_order_free(a in "[a-eA-E]{0,6}", b in "[a-eA-E]{0,6}") {
            let f = key_f1(&a, &b);
            prop_assert!((0.0..=1.0).contains(&f));
            prop_assert!((f - key_f1(&b, &a)).abs() < 1e-6);
            let rev: String = a.chars().rev().collect();
            prop_assert!((f - key_f1(&rev, &b)).abs() < 1e-6);
            prop_assert_eq!(key_f1(&a, &a), 1.0);
        }
    }
}
