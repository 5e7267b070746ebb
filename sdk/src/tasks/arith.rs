//! Task `arith`: generated multi-step arithmetic word problems with chain-of-thought solutions
//! ending in `#### N`.
//!
//! ```text
//! prompt:   Mia has 7 pens. She gets 5 more. She gives away 3. How many pens does Mia have?⏎
//! solution: 7+5=12. 12-3=9. #### 9
//! ```
//!
//! Knobs: steps, operators, number range, distractor sentences (facts about someone else that
//! the solution must ignore). Splits are deterministic in the seed and disjoint: a test
//! problem's prompt never appears in the training split.

use std::collections::HashSet;

use rand::Rng as _;
use rand::seq::IndexedRandom;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{TextProblem, TextTask, answers_equal, final_answer};
use crate::registry::ConfigError;
use crate::rng::{Rng, rng};
use crate::{Split, Task};

/// An arithmetic operator of the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Op {
    #[serde(rename = "+")]
    Add,
    #[serde(rename = "-")]
    Sub,
    #[serde(rename = "*")]
    Mul,
}

/// Configuration of `arith`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ArithConfig {
    /// Fewest operations in a problem.
    pub min_steps: usize,
    /// Most operations in a problem.
    pub max_steps: usize,
    /// Operators used.
    pub operators: Vec<Op>,
    /// Operands are drawn from 1..=max_number (multipliers from 2..=4).
    pub max_number: u32,
    /// Distractor sentences per problem.
    pub distractors: usize,
    pub n_train: usize,
    pub n_validation: usize,
    pub n_test: usize,
    /// Test problems have exactly this many steps (none: the same range as training).
    pub test_steps: Option<usize>,
}

impl Default for ArithConfig {
    fn default() -> Self {
        Self {
            min_steps: 2,
            max_steps: 3,
            operators: vec![Op::Add, Op::Sub],
            max_number: 20,
            distractors: 0,
            n_train: 20_000,
            n_validation: 200,
            n_test: 500,
            test_steps: Some(2),
        }
    }
}

const NAMES: &[(&str, &str)] = &[
    ("Mia", "She"),
    ("Tom", "He"),
    ("Ana", "She"),
    ("Sam", "He"),
    ("Zoe", "She"),
    ("Leo", "He"),
    ("Ivy", "She"),
    ("Max", "He"),
];
const ITEMS: &[&str] = &[
    "apples", "pens", "cards", "books", "coins", "stamps", "shells", "cups",
];

/// The generator.
pub struct Arith {
    config: ArithConfig,
    seed: u64,
}

impl Arith {
    /// Validates `config`.
    pub fn new(config: ArithConfig, seed: u64) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            field: Some(field.into()),
            message,
        };
        if config.min_steps == 0 || config.min_steps > config.max_steps || config.max_steps > 8 {
            return Err(err(
                "min_steps",
                "need 1 ≤ min_steps ≤ max_steps ≤ 8".into(),
            ));
        }
        if config.operators.is_empty() {
            return Err(err(
                "operators",
                "give at least one of \"+\", \"-\", \"*\"".into(),
            ));
        }
        if !(2..=1000).contains(&config.max_number) {
            return Err(err("max_number", "must be between 2 and 1000".into()));
        }
        if config.distractors > 4 {
            return Err(err("distractors", "at most 4".into()));
        }
        if let Some(t) = config.test_steps
            && !(1..=8).contains(&t)
        {
            return Err(err("test_steps", "must be between 1 and 8".into()));
        }
        for (f, n) in [
            ("n_train", config.n_train),
            ("n_validation", config.n_validation),
            ("n_test", config.n_test),
        ] {
            if n > 1_000_000 {
                return Err(err(f, "at most 1000000".into()));
            }
        }
        Ok(Self { config, seed })
    }

    /// One random problem with `steps` operations.
    fn problem(&self, r: &mut Rng, steps: usize) -> TextProblem {
        let c = &self.config;
        let &(name, pronoun) = NAMES.choose(r).expect("names");
        let item = *ITEMS.choose(r).expect("items");
        let mut value = r.random_range(1..=c.max_number) as i64;
        let mut sentences = vec![format!("{name} has {value} {item}.")];
        let mut work = Vec::new();
        for _ in 0..steps {
            let mut op = *c.operators.choose(r).expect("operators");
            if op == Op::Sub && value < 2 {
                op = Op::Add;
            }
            let (n, next, sentence) = match op {
                Op::Add => {
                    let n = r.random_range(1..=c.max_number) as i64;
                    (n, value + n, format!("{pronoun} gets {n} more."))
                }
                Op::Sub => {
                    let n = r.random_range(1..=value.min(c.max_number as i64));
                    (n, value - n, format!("{pronoun} gives away {n}."))
                }
                Op::Mul => {
                    let n = r.random_range(2..=4);
                    (
                        n,
                        value * n,
                        format!("{pronoun} makes it {n} times as many."),
                    )
                }
            };
            let sym = match op {
                Op::Add => '+',
                Op::Sub => '-',
                Op::Mul => '*',
            };
            work.push(format!("{value}{sym}{n}={next}."));
            sentences.push(sentence);
            value = next;
        }
        for _ in 0..c.distractors {
            let (other, _) = *NAMES
                .iter()
                .filter(|n| n.0 != name)
                .collect::<Vec<_>>()
                .choose(r)
                .expect("names");
            let thing = *ITEMS.choose(r).expect("items");
            let at = r.random_range(1..=sentences.len());
            sentences.insert(
                at,
                format!("{other} has {} {thing}.", r.random_range(1..=c.max_number)),
            );
        }
        let prompt = format!(
            "{} How many {item} does {name} have?\n",
            sentences.join(" ")
        );
        TextProblem {
            id: String::new(),
            prompt,
            solution: format!("{} #### {value}", work.join(" ")),
            answer: value.to_string(),
        }
    }

    fn generate(&self, split: Split) -> Vec<TextProblem> {
        let c = &self.config;
        // Test and validation are drawn first from their own streams; training skips any
        // prompt they contain, so the splits are disjoint.
        let draw = |stream: u64, n: usize, steps: Option<usize>, avoid: &HashSet<String>| {
            let mut r = rng(self.seed, stream);
            let mut out: Vec<TextProblem> = Vec::with_capacity(n);
            let mut seen: HashSet<String> = HashSet::new();
            let mut attempts = 0usize;
            while out.len() < n && attempts < n * 20 + 1000 {
                attempts += 1;
                let s = steps.unwrap_or_else(|| r.random_range(c.min_steps..=c.max_steps));
                let mut p = self.problem(&mut r, s);
                if avoid.contains(&p.prompt) || !seen.insert(p.prompt.clone()) {
                    continue;
                }
                p.id = format!("{split}-{}", out.len());
                out.push(p);
            }
            out
        };
        let empty = HashSet::new();
        match split {
            Split::Test => draw(101, c.n_test, c.test_steps, &empty),
            Split::Validation => draw(102, c.n_validation, None, &empty),
            Split::Train => {
                let held: HashSet<String> = draw(101, c.n_test, c.test_steps, &empty)
                    .into_iter()
                    .chain(draw(102, c.n_validation, None, &empty))
                    .map(|p| p.prompt)
                    .collect();
                draw(103, c.n_train, None, &held)
            }
        }
    }
}

impl Task for Arith {
    type Problem = TextProblem;
    type Output = str;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<TextProblem>> {
        Ok(self.generate(split))
    }

    fn check(&self, problem: &TextProblem, output: &str) -> bool {
        final_answer(output).is_some_and(|a| answers_equal(&a, &problem.answer))
    }

    fn answer(&self, output: &str) -> Option<String> {
        super::vote_key(output)
    }
}

crate::register_component! {
    kind: Task,
    name: "arith",
    description: "generated multi-step arithmetic word problems with chain-of-thought solutions (#### N)",
    config: ArithConfig,
    build: |config: ArithConfig, ctx| Ok(Box::new(Arith::new(config, ctx.seed)?) as Box<TextTask>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Arith {
        Arith::new(
            ArithConfig {
                n_train: 2000,
                n_test: 200,
                n_validation: 50,
                distractors: 1,
                ..Default::default()
            },
            7,
        )
        .unwrap()
    }

    #[test]
    fn solutions_are_correct_and_checked_exactly() {
        let t = task();
        for p in t.problems(Split::Train).unwrap() {
            // Recompute the chain from the solution's equations.
            let mut last = None;
            for eq in p.solution.split(". ").filter(|s| s.contains('=')) {
                let (lhs, rhs) = eq.trim_end_matches('.').split_once('=').unwrap();
                let pos = lhs.find(['+', '-', '*']).unwrap();
                let (a, b): (i64, i64) =
                    (lhs[..pos].parse().unwrap(), lhs[pos + 1..].parse().unwrap());
                let v = match &lhs[pos..pos + 1] {
                    "+" => a + b,
                    "-" => a - b,
                    _ => a * b,
                };
                assert_eq!(v, rhs.parse::<i64>().unwrap(), "{}", p.solution);
                assert!(v >= 0);
                last = Some(v);
            }
            assert_eq!(last.unwrap().to_string(), p.answer);
            assert!(t.check(&p, &p.solution));
            assert!(!t.check(&p, &format!("#### {}", last.unwrap() + 1)));
            assert!(!t.check(&p, "no final answer"));
        }
    }

    #[test]
    fn splits_are_deterministic_disjoint_and_test_has_two_steps() {
        let t = task();
        let train = t.problems(Split::Train).unwrap();
        let test = t.problems(Split::Test).unwrap();
        assert_eq!(test, task().problems(Split::Test).unwrap());
        let train_prompts: HashSet<&str> = train.iter().map(|p| p.prompt.as_str()).collect();
        assert!(
            test.iter()
                .all(|p| !train_prompts.contains(p.prompt.as_str()))
        );
        assert!(test.iter().all(|p| p.solution.matches('=').count() == 2));
        assert_eq!(test.len(), 200);
    }

    #[test]
    fn bad_knobs_are_config_errors() {
        let e = Arith::new(
            ArithConfig {
                operators: vec![],
                ..Default::default()
            },
            0,
        )
        .err()
        .unwrap();
        assert_eq!(e.field.as_deref(), Some("operators"));
        assert!(
            Arith::new(
                ArithConfig {
                    min_steps: 3,
                    max_steps: 2,
                    ..Default::default()
                },
                0
            )
            .is_err()
        );
    }
}
