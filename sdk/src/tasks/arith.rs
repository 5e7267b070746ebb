//! Task `arith`: generated multi-step arithmetic word problems with chain-of-thought solutions
//! ending in `#### N`.
//!
//! ```text
//! prompt:   Mia has 7 pens. She gets 5 more. She gives away 3. How many pens does Mia have?⏎
//! solution: 7+5=12. 12-3=9. #### 9
//! ```
//!
//! Knobs: steps, operators, number range, distractor sentences (facts about someone else that
//! the solution must ignore), and the order of the reference solution's steps: as the story
//! tells them, or (`solution_order = "any"`, `+`/`-` only) a random order of the same
//! operations, so that a problem has many right solutions. Splits are deterministic in the seed
//! and disjoint: a test problem's prompt never appears in the training split.
//!
//! [`step_checks`] re-executes a solution's every step against the problem: a right final
//! answer behind a wrong step is found.

use std::collections::HashSet;

use rand::Rng as _;
use rand::seq::{IndexedRandom, SliceRandom};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::steps::{StepCheck, answer_check};
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

/// The order of a reference solution's steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SolutionOrder {
    /// As the story tells the events.
    #[default]
    Narrative,
    /// A random order of the same operations whose intermediate results stay non-negative
    /// (`+` and `-` commute; not with `*`).
    Any,
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
    /// The order of the reference solutions' steps.
    pub solution_order: SolutionOrder,
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
            test_steps: None,
            solution_order: SolutionOrder::Narrative,
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
        if config.solution_order == SolutionOrder::Any && config.operators.contains(&Op::Mul) {
            return Err(err(
                "solution_order",
                "\"any\" reorders the steps, which only `+` and `-` allow: drop \"*\" from `operators` or use \"narrative\"".into(),
            ));
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
        let start = value;
        let mut sentences = vec![format!("{name} has {value} {item}.")];
        let mut ops: Vec<(char, i64)> = Vec::new();
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
            ops.push((sym, n));
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
        if c.solution_order == SolutionOrder::Any {
            // A random order whose running value stays non-negative (the story's order does,
            // so a few shuffles find one), drawn from the prompt's own stream: both orders
            // give the same problems.
            let h = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut shuffle = rng(self.seed ^ h, 104);
            for _ in 0..8 {
                let mut order = ops.clone();
                order.shuffle(&mut shuffle);
                if order
                    .iter()
                    .scan(start, |v, &(op, n)| {
                        *v = apply(*v, op, n);
                        Some(*v)
                    })
                    .all(|v| v >= 0)
                {
                    ops = order;
                    break;
                }
            }
        }
        let mut work = Vec::new();
        let mut v = start;
        for (op, n) in ops {
            let next = apply(v, op, n);
            work.push(format!("{v}{op}{n}={next}."));
            v = next;
        }
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

/// One equation `a op b = c` of an `arith` solution.
pub type Equation = (i64, char, i64, i64);

/// `a op b` for `op` in `+`, `-`, `*`.
pub fn apply(a: i64, op: char, b: i64) -> i64 {
    match op {
        '+' => a + b,
        '-' => a - b,
        _ => a * b,
    }
}

/// The work of a solution: its steps before `####`, split at full stops, trimmed.
fn work_steps(solution: &str) -> impl Iterator<Item = &str> {
    let work = solution.split("####").next().unwrap_or("");
    work.split('.').map(str::trim).filter(|s| !s.is_empty())
}

/// The equations of an `arith` solution (`7+5=12. 12-3=9. #### 9`), in order; `None` when it
/// has none or one does not parse.
pub fn equations(solution: &str) -> Option<Vec<Equation>> {
    let eqs: Option<Vec<Equation>> = work_steps(solution).map(equation).collect();
    eqs.filter(|e| !e.is_empty())
}

/// One equation `a op b = c` (the left operand may be negative).
pub fn equation(s: &str) -> Option<Equation> {
    let (lhs, rhs) = s.split_once('=')?;
    let at = lhs
        .char_indices()
        .skip(1)
        .find(|(_, c)| "+-*".contains(*c))?
        .0;
    let op = lhs[at..].chars().next()?;
    Some((
        lhs[..at].trim().parse().ok()?,
        op,
        lhs[at + 1..].trim().parse().ok()?,
        rhs.trim().parse().ok()?,
    ))
}

/// Every step of `solution` re-executed against `problem` (an `arith` problem: its reference
/// solution gives the start value and the operations), then its final answer; `None` when the
/// reference has no equations (not an `arith` problem).
///
/// A step is right when it applies one of the problem's operations not used yet to the
/// solution's own previous result (the start value first) and computes it exactly. The
/// operations may come in any order when they are all `+` and `-` (they commute; intermediate
/// results may then go negative), else in the problem's order. A step is re-executed on the
/// solution's own earlier results, so an error is not counted twice. The final answer must be
/// the last step's result, after as many steps as the problem has.
pub fn step_checks(problem: &TextProblem, solution: &str) -> Option<Vec<StepCheck>> {
    let reference = equations(&problem.solution)?;
    let commute = reference.iter().all(|e| e.1 != '*');
    let mut left: Vec<(char, i64)> = reference.iter().map(|e| (e.1, e.2)).collect();
    let mut out = Vec::new();
    let mut last: Option<i64> = None;
    for (i, step) in work_steps(solution).enumerate() {
        let Some((a, op, b, c)) = equation(step) else {
            out.push(StepCheck::wrong(format!("\"{step}\" is not an equation")));
            continue;
        };
        let ea = last.unwrap_or(reference[0].0);
        let expected: Vec<(char, i64)> = if commute {
            left.clone()
        } else {
            reference
                .get(i)
                .map(|e| vec![(e.1, e.2)])
                .unwrap_or_default()
        };
        let check = if expected.is_empty() {
            StepCheck::wrong(format!("the problem has {} steps", reference.len()))
        } else if a != ea || !expected.contains(&(op, b)) {
            let asks: Vec<String> = expected
                .iter()
                .map(|(o, n)| format!("{ea}{o}{n}"))
                .collect();
            let one = if asks.len() == 1 { "" } else { "one of " };
            StepCheck::wrong(format!(
                "the problem asks for {one}{}, not {a}{op}{b}",
                asks.join(", ")
            ))
        } else if apply(a, op, b) != c {
            StepCheck::wrong(format!("{a}{op}{b} is {}, not {c}", apply(a, op, b)))
        } else {
            StepCheck::ok(format!("{a}{op}{b}={c}"))
        };
        if commute && let Some(at) = left.iter().position(|x| *x == (op, b)) {
            left.remove(at);
        }
        out.push(check);
        last = Some(c);
    }
    let answer = final_answer(solution);
    out.push(match (answer, last) {
        (None, _) => StepCheck::wrong("there is no final answer after the steps"),
        (Some(_), Some(_)) if out.len() != reference.len() => {
            StepCheck::wrong(format!("the problem has {} steps", reference.len()))
        }
        (a, l) => answer_check(a, l.map(|x| x.to_string()).as_deref(), "no step was taken"),
    });
    Some(out)
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
                test_steps: Some(2),
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

    fn problem(solution: &str) -> TextProblem {
        TextProblem {
            id: String::new(),
            prompt: String::new(),
            answer: final_answer(solution).unwrap(),
            solution: solution.into(),
        }
    }

    fn rights(p: &TextProblem, s: &str) -> Vec<bool> {
        step_checks(p, s).unwrap().iter().map(|c| c.right).collect()
    }

    #[test]
    fn step_checks_find_a_wrong_step_behind_a_right_answer() {
        let p = problem("7+5=12. 12-3=9. #### 9");
        assert_eq!(rights(&p, &p.solution), [true, true, true]);
        // A planted arithmetic slip that the next step cancels: the answer is right.
        let s = "7+5=13. 13-3=9. #### 9";
        assert!(Arith::new(ArithConfig::default(), 0).unwrap().check(&p, s));
        assert_eq!(rights(&p, s), [false, false, true]);
        // A wrong operand with a right answer.
        assert_eq!(rights(&p, "7+4=11. 11-2=9. #### 9"), [false, false, true]);
        // Steps missing or added, answers missing or not the last result.
        assert_eq!(rights(&p, "7+5=12. #### 12"), [true, false]);
        assert_eq!(rights(&p, "7+5=12. 12-3=9."), [true, true, false]);
        assert_eq!(rights(&p, "7+5=12. 12-3=9. #### 8"), [true, true, false]);
        assert_eq!(
            rights(&p, "7+5=12. 12-3=9. 9+0=9. #### 9"),
            [true, true, false, false]
        );
        assert_eq!(rights(&p, "seven. 12-3=9. #### 9"), [false, false, true]);
        // The grader says why.
        let says = step_checks(&p, "7+5=13. 13-3=10. #### 10").unwrap();
        assert_eq!(says[0].says, "7+5 is 12, not 13");
        assert_eq!(says[1].says, "13-3=10");
    }

    #[test]
    fn plus_and_minus_steps_may_come_in_any_order_but_times_may_not() {
        let p = problem("7+5=12. 12-3=9. 9+4=13. #### 13");
        assert_eq!(rights(&p, "7-3=4. 4+4=8. 8+5=13. #### 13"), [true; 4]);
        // Each operation once.
        assert_eq!(
            rights(&p, "7+5=12. 12+5=17. 17-4=13. #### 13"),
            [true, false, false, true]
        );
        let says = step_checks(&p, "7+5=12. 12+3=15. 15-2=13. #### 13").unwrap();
        assert_eq!(
            says[1].says,
            "the problem asks for one of 12-3, 12+4, not 12+3"
        );
        let q = problem("7+5=12. 12*2=24. #### 24");
        assert_eq!(rights(&q, &q.solution), [true, true, true]);
        assert_eq!(rights(&q, "7*2=14. 14+5=19. #### 19"), [false, false, true]);
        // Negative intermediates are arithmetic too.
        let r = problem("3+5=8. 8-6=2. #### 2");
        assert_eq!(rights(&r, "3-6=-3. -3+5=2. #### 2"), [true; 3]);
        assert!(step_checks(&problem("#### 4"), "#### 4").is_none());
    }

    #[test]
    fn any_order_solutions_are_right_reorderings_of_the_story() {
        let config = ArithConfig {
            min_steps: 2,
            max_steps: 5,
            n_train: 500,
            n_test: 50,
            n_validation: 10,
            solution_order: SolutionOrder::Any,
            ..Default::default()
        };
        let t = Arith::new(config.clone(), 3).unwrap();
        let narrative = Arith::new(
            ArithConfig {
                solution_order: SolutionOrder::Narrative,
                ..config
            },
            3,
        )
        .unwrap();
        let (any, story) = (
            t.problems(Split::Train).unwrap(),
            narrative.problems(Split::Train).unwrap(),
        );
        let mut reordered = 0;
        for (p, q) in any.iter().zip(&story) {
            assert_eq!((&p.prompt, &p.answer), (&q.prompt, &q.answer));
            assert!(step_checks(p, &p.solution).unwrap().iter().all(|c| c.right));
            // The story's order is a right solution of the reordered problem, and back.
            assert!(step_checks(p, &q.solution).unwrap().iter().all(|c| c.right));
            assert!(step_checks(q, &p.solution).unwrap().iter().all(|c| c.right));
            assert!(equations(&p.solution).unwrap().iter().all(|e| e.3 >= 0));
            reordered += usize::from(p.solution != q.solution);
        }
        assert!(reordered > any.len() / 3, "{reordered} of {}", any.len());
        let e = Arith::new(
            ArithConfig {
                operators: vec![Op::Add, Op::Mul],
                solution_order: SolutionOrder::Any,
                ..Default::default()
            },
            0,
        )
        .err()
        .unwrap();
        assert_eq!(e.field.as_deref(), Some("solution_order"));
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
