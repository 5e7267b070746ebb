//! The paper's algorithmic tasks, generated in code: last-letter concatenation and word
//! sorting. Training problems have `min_words..=max_words` words, test problems exactly
//! `test_words` (longer: out of distribution). Each reference solution works step by step and
//! ends with `The answer is …`, which the checker reads exactly.
//!
//! ```text
//! last-letter  Take the last letters of the words in "apple bird" and concatenate them.⏎
//!              The last letter of "apple" is "e".⏎The last letter of "bird" is "d".⏎
//!              Concatenating them is "ed".⏎The answer is ed.
//! word-sort    Sort the following words alphabetically: List: pear apple fig⏎
//!              Start with "pear".⏎Insert "apple": apple pear.⏎Insert "fig": apple fig pear.⏎
//!              The answer is apple fig pear.
//! ```

use std::collections::HashSet;

use lmlab_sdk::registry::ConfigError;
use lmlab_sdk::rng::{Rng, rng};
use lmlab_sdk::tasks::{TextProblem, TextTask};
use lmlab_sdk::{Split, Task};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The words problems are drawn from (distinct, lowercase, 3–7 letters).
pub const WORDS: &[&str] = &[
    "apple", "bird", "cat", "dog", "egg", "fig", "goat", "hat", "ink", "jam", "kite", "lamp",
    "moon", "nest", "owl", "pear", "queen", "rain", "sun", "tree", "umbrella", "vase", "wolf",
    "yarn", "zebra", "acorn", "bread", "cloud", "drum", "eagle", "flame", "grape", "horse",
    "island", "jelly", "koala", "lemon", "mango", "night", "ocean", "piano", "quilt", "river",
    "stone", "tiger", "uncle", "violin", "whale", "young", "zinc", "arrow", "basket", "candle",
    "desk", "engine", "forest", "garden", "hammer", "igloo", "jacket", "kettle", "ladder",
    "mirror", "needle", "orange", "pencil", "rabbit", "saddle", "turtle", "valley", "window",
    "anchor", "bottle", "carpet", "dragon", "empire", "finger", "guitar", "helmet", "insect",
    "jungle", "kitten", "lizard", "magnet", "napkin", "oyster", "parrot", "rocket", "silver",
    "tunnel", "velvet", "wizard", "button", "coffee", "dinner", "flower", "ginger", "honey",
    "market", "number", "pepper", "salad", "table", "water", "yellow", "copper", "planet",
    "shadow", "spider", "summer", "winter", "bridge", "castle", "circle", "cotton", "field",
    "glass", "heart", "knife", "light", "metal", "music", "paper", "plant", "smile", "snake",
    "sound", "space", "storm", "sugar", "train", "truck", "voice", "wheel", "world", "beach",
    "chair", "crown", "dream", "earth", "frost", "ghost", "house", "juice", "money", "mouse",
    "north", "party", "queue", "robot", "sheep", "south", "toast", "watch", "bell", "coin", "duck",
    "frog", "gold", "iron", "king", "leaf", "milk", "nose", "park", "ring", "ship", "star", "wind",
    "box", "cup", "fox", "jar", "key", "map", "pen", "rug", "toy", "van",
];

/// Which of the two tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Concatenate the last letters of the words.
    LastLetter,
    /// Sort the words alphabetically.
    WordSort,
}

/// Configuration of `last-letter` and `word-sort`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WordTaskConfig {
    /// Fewest words of a training problem.
    pub min_words: usize,
    /// Most words of a training problem.
    pub max_words: usize,
    /// Words of every test problem (none: the paper's, 6 for last-letter and 5 for word
    /// sorting).
    pub test_words: Option<usize>,
    pub n_train: usize,
    pub n_validation: usize,
    pub n_test: usize,
}

impl Default for WordTaskConfig {
    fn default() -> Self {
        Self {
            min_words: 2,
            max_words: 4,
            test_words: None,
            n_train: 5000,
            n_validation: 200,
            n_test: 200,
        }
    }
}

/// The generator of either task.
pub struct WordTask {
    kind: Kind,
    config: WordTaskConfig,
    seed: u64,
}

/// The words of a problem in the order given.
pub fn problem_words(kind: Kind, prompt: &str) -> Option<Vec<String>> {
    let list = match kind {
        Kind::LastLetter => prompt
            .strip_prefix("Take the last letters of the words in \"")?
            .split_once('"')?
            .0
            .to_string(),
        Kind::WordSort => prompt
            .strip_prefix("Sort the following words alphabetically: List: ")?
            .trim_end()
            .to_string(),
    };
    let words: Vec<String> = list.split_whitespace().map(String::from).collect();
    (!words.is_empty()).then_some(words)
}

/// The words sorted alphabetically.
pub fn sorted(words: &[String]) -> Vec<String> {
    let mut s = words.to_vec();
    s.sort();
    s
}

/// `list` with `word` inserted where it sorts (after any equal word).
pub fn insert_sorted(list: &[String], word: &str) -> Vec<String> {
    let at = list.partition_point(|w| w.as_str() <= word);
    let mut out = list.to_vec();
    out.insert(at, word.to_string());
    out
}

/// The last letter of `word` as a string (empty for an empty word).
pub fn last_letter(word: &str) -> String {
    word.chars().last().map(String::from).unwrap_or_default()
}

/// The final answer of a solution: the rest of the line after the last `The answer is `,
/// trimmed, without a final full stop, words separated by single spaces. `None` without one.
pub fn final_answer(text: &str) -> Option<String> {
    let (_, tail) = text.rsplit_once("The answer is ")?;
    let line = tail.lines().next().unwrap_or("").trim();
    let line = line.strip_suffix('.').unwrap_or(line);
    let words: Vec<&str> = line.split_whitespace().collect();
    (!words.is_empty()).then(|| words.join(" "))
}

impl WordTask {
    /// Words of every test problem.
    pub fn test_words(&self) -> usize {
        self.config.test_words.unwrap_or(match self.kind {
            Kind::LastLetter => 6,
            Kind::WordSort => 5,
        })
    }

    /// Validates `config`.
    pub fn new(kind: Kind, config: WordTaskConfig, seed: u64) -> Result<Self, ConfigError> {
        let c = &config;
        if c.min_words == 0 || c.min_words > c.max_words || c.max_words > 12 {
            return Err(ConfigError::field(
                "min_words",
                "need 1 ≤ min_words ≤ max_words ≤ 12",
            ));
        }
        if c.test_words.is_some_and(|n| !(1..=12).contains(&n)) {
            return Err(ConfigError::field("test_words", "must be between 1 and 12"));
        }
        for (f, n) in [
            ("n_train", c.n_train),
            ("n_validation", c.n_validation),
            ("n_test", c.n_test),
        ] {
            if n > 1_000_000 {
                return Err(ConfigError::field(f, "at most 1000000"));
            }
        }
        Ok(Self { kind, config, seed })
    }

    /// The problem over `words`.
    pub fn problem(kind: Kind, words: &[String]) -> TextProblem {
        let list = words.join(" ");
        let (prompt, solution, answer) = match kind {
            Kind::LastLetter => {
                let letters: String = words.iter().map(|w| last_letter(w)).collect();
                let mut s: String = words
                    .iter()
                    .map(|w| format!("The last letter of \"{w}\" is \"{}\".\n", last_letter(w)))
                    .collect();
                s += &format!("Concatenating them is \"{letters}\".\nThe answer is {letters}.");
                (
                    format!(
                        "Take the last letters of the words in \"{list}\" and concatenate them.\n"
                    ),
                    s,
                    letters,
                )
            }
            Kind::WordSort => {
                let mut s = format!("Start with \"{}\".\n", words[0]);
                let mut current = vec![words[0].clone()];
                for w in &words[1..] {
                    current = insert_sorted(&current, w);
                    s += &format!("Insert \"{w}\": {}.\n", current.join(" "));
                }
                let answer = current.join(" ");
                s += &format!("The answer is {answer}.");
                (
                    format!("Sort the following words alphabetically: List: {list}\n"),
                    s,
                    answer,
                )
            }
        };
        TextProblem {
            id: String::new(),
            prompt,
            solution,
            answer,
        }
    }

    fn draw_words(r: &mut Rng, n: usize) -> Vec<String> {
        rand::seq::index::sample(r, WORDS.len(), n.min(WORDS.len()))
            .into_iter()
            .map(|i| WORDS[i].to_string())
            .collect()
    }

    fn generate(&self, split: Split) -> Vec<TextProblem> {
        let c = &self.config;
        // Test and validation come from their own streams; training skips their prompts.
        let draw = |stream: u64, n: usize, words: Option<usize>, avoid: &HashSet<String>| {
            let mut r = rng(self.seed, stream);
            let (mut out, mut seen) = (Vec::with_capacity(n), HashSet::new());
            let mut attempts = 0usize;
            while out.len() < n && attempts < n * 20 + 1000 {
                attempts += 1;
                let k = words.unwrap_or_else(|| r.random_range(c.min_words..=c.max_words));
                let mut p = Self::problem(self.kind, &Self::draw_words(&mut r, k));
                if avoid.contains(&p.prompt) || !seen.insert(p.prompt.clone()) {
                    continue;
                }
                p.id = format!("{split}-{}", out.len());
                out.push(p);
            }
            out
        };
        let none = HashSet::new();
        match split {
            Split::Test => draw(201, c.n_test, Some(self.test_words()), &none),
            Split::Validation => draw(202, c.n_validation, None, &none),
            Split::Train => {
                let held: HashSet<String> = draw(201, c.n_test, Some(self.test_words()), &none)
                    .into_iter()
                    .chain(draw(202, c.n_validation, None, &none))
                    .map(|p| p.prompt)
                    .collect();
                draw(203, c.n_train, None, &held)
            }
        }
    }
}

impl Task for WordTask {
    type Problem = TextProblem;
    type Output = str;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<TextProblem>> {
        Ok(self.generate(split))
    }

    fn check(&self, problem: &TextProblem, output: &str) -> bool {
        final_answer(output).is_some_and(|a| a == problem.answer)
    }

    fn answer(&self, output: &str) -> Option<String> {
        final_answer(output)
    }
}

lmlab_sdk::register_component! {
    kind: Task,
    name: "last-letter",
    description: "last-letter concatenation (GenRM's algorithmic task): train on 2–4 words, test on 6, step-by-step solutions ending in `The answer is …`",
    config: WordTaskConfig,
    build: |c: WordTaskConfig, ctx| Ok(Box::new(WordTask::new(Kind::LastLetter, c, ctx.seed)?) as Box<TextTask>),
}

lmlab_sdk::register_component! {
    kind: Task,
    name: "word-sort",
    description: "word sorting by insertion (GenRM's algorithmic task): train on 2–4 words, test on 5, step-by-step solutions ending in `The answer is …`",
    config: WordTaskConfig,
    build: |c: WordTaskConfig, ctx| Ok(Box::new(WordTask::new(Kind::WordSort, c, ctx.seed)?) as Box<TextTask>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(kind: Kind) -> WordTask {
        let mut c = WordTaskConfig::default();
        c.n_train = 500;
        c.n_test = 50;
        WordTask::new(kind, c, 3).unwrap()
    }

    #[test]
    fn the_word_list_has_no_repeats() {
        let set: HashSet<&str> = WORDS.iter().copied().collect();
        assert_eq!(set.len(), WORDS.len());
    }

    #[test]
    fn reference_solutions_solve_their_problems_and_wrong_answers_fail() {
        for kind in [Kind::LastLetter, Kind::WordSort] {
            let t = task(kind);
            for split in [Split::Train, Split::Test] {
                for p in t.problems(split).unwrap() {
                    let words = problem_words(kind, &p.prompt).unwrap();
                    let want = match kind {
                        Kind::LastLetter => words.iter().map(|w| last_letter(w)).collect(),
                        Kind::WordSort => sorted(&words).join(" "),
                    };
                    assert_eq!(p.answer, want);
                    assert!(t.check(&p, &p.solution), "{}", p.solution);
                    assert!(!t.check(&p, "The answer is zz."));
                    assert!(!t.check(&p, "no answer"));
                    if split == Split::Test {
                        assert_eq!(words.len(), t.test_words());
                        assert_eq!(words.len(), [6, 5][kind as usize]);
                    } else {
                        assert!((2..=4).contains(&words.len()));
                    }
                }
            }
        }
    }

    #[test]
    fn splits_are_deterministic_and_disjoint() {
        let t = task(Kind::LastLetter);
        let train = t.problems(Split::Train).unwrap();
        let test = t.problems(Split::Test).unwrap();
        assert_eq!(
            train,
            task(Kind::LastLetter).problems(Split::Train).unwrap()
        );
        let seen: HashSet<&str> = train.iter().map(|p| p.prompt.as_str()).collect();
        assert!(test.iter().all(|p| !seen.contains(p.prompt.as_str())));
        assert_eq!((train.len(), test.len()), (500, 50));
    }

    #[test]
    fn answers_are_read_from_the_last_answer_line() {
        assert_eq!(final_answer("x\nThe answer is ed.").as_deref(), Some("ed"));
        assert_eq!(
            final_answer("The answer is a  b c.\nmore").as_deref(),
            Some("a b c")
        );
        assert_eq!(
            final_answer("The answer is x. The answer is y.").as_deref(),
            Some("y")
        );
        assert_eq!(final_answer("The answer is ."), None);
        assert_eq!(
            insert_sorted(&["b".into(), "d".into()], "c"),
            vec!["b", "c", "d"]
        );
    }

    #[test]
    fn bad_knobs_are_config_errors() {
        let mut c = WordTaskConfig::default();
        c.min_words = 5;
        let e = WordTask::new(Kind::WordSort, c, 0).err().unwrap();
        assert_eq!(e.field.as_deref(), Some("min_words"));
    }
}
