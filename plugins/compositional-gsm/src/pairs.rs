//! Compositional pairs: two problems chained so that Q2 uses X, the answer to Q1 (Hosseini et
//! al. 2024), their prompts and answer formats, and the three sources of pairs: generated
//! GSM-lite problems, GSM8K, and a JSONL file.
//!
//! **Construction.** One number of Q2 is replaced by X = answer(Q1). Q2's answer is recomputed
//! from its executable form ([`Program`]). The pair is kept when every recomputed step is
//! finite and non-negative and the new answer is a positive integer, different from the old
//! one and not far from it: `|new − old| ≤ max(old, 10)` ([`near`]). For each Q2 (in order),
//! the Q1 candidates are the next problems after it (cyclically, at most [`Q1_WINDOW`]), each
//! used as Q1 once; the first that makes a valid pair is taken.
//!
//! - **Generated** (`source = "generated"`): `arith` problems; X replaces the start value
//!   (`Mia has X pens.`), the program is the solution's equations.
//! - **GSM8K** (`source = "gsm8k"`): the number replaced appears once in Q2's question, is a
//!   whole number, is not one of the usual unit constants ([`UNIT_CONSTANTS`]: 2 may be
//!   "twice", 60 "an hour"), is not also the result of a calculator step, and is a literal of
//!   at least one of GSM8K's `<<a op b=c>>` annotations. Every annotation must re-evaluate to
//!   its stated result and the last one must equal `#### N`. Among the numbers that qualify,
//!   the one closest to X (in ratio) is replaced. Of GSM8K's 1319 test problems this keeps
//!   840 pairs; of the 6973 training problems (all but the last 500), 4679.
//! - **File** (`source = "file"`): one pair per line,
//!   `{"q1": …, "a1": …, "q2": …, "a2": …, "q2_standalone": …}` (answers as numbers or
//!   strings; an optional `"id"`); Q2 must contain `X`. The test split; no worked solutions.

use std::path::{Path, PathBuf};

use lmlab_sdk::registry::ConfigError;
use lmlab_sdk::tasks::arith::{Arith, ArithConfig, equations};
use lmlab_sdk::tasks::{TextProblem, answers_equal, final_answer};
use lmlab_sdk::{Split, Task};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::program::{Program, show};

/// One compositional pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub id: String,
    pub q1: String,
    pub a1: String,
    /// Q2 with X in place of the number it replaced.
    pub q2: String,
    /// Q2's answer with X = a1.
    pub a2: String,
    /// Q2 with X written as its value (S2 is measured on these).
    pub q2_standalone: String,
    /// Q1's worked steps (`7+5=12. 12-3=9.`), when known: demonstrations and training.
    pub s1: Option<String>,
    /// The standalone Q2's worked steps, when known.
    pub s2: Option<String>,
    /// Q2's executable form ([`Program`]'s text), when known.
    pub program: Option<String>,
    /// The number X replaced in Q2, when known.
    pub x_was: Option<String>,
}

/// The composed question (the paper's prompt): Q1, then Q2 with X.
pub fn pair_question(q1: &str, q2: &str) -> String {
    format!(
        "Let X be the answer to the Q1:\nQ1: {}\nSolve it and use the value of X to solve Q2. Explain your answer step by step.\nQ2: {}",
        q1.trim(),
        q2.trim()
    )
}

/// The answer to a single problem: its steps, then `The final answer is A.`
pub fn single_answer(steps: &str, a: &str) -> String {
    format!("{} The final answer is {a}.", steps.trim())
}

/// The answer to a pair: `… The Q1 answer is A1. Therefore X=A1. … The final answer is A2.`
pub fn pair_answer(s1: &str, a1: &str, s2: &str, a2: &str) -> String {
    format!(
        "{} The Q1 answer is {a1}. Therefore X={a1}. {} The final answer is {a2}.",
        s1.trim(),
        s2.trim()
    )
}

/// A prompt: each demonstration `(question, answer)` as `Question: …\nAnswer: …` with a blank
/// line between, then `Question: {q}\nAnswer:` (zero demonstrations: just the last part).
pub fn prompt(demos: &[(String, String)], q: &str) -> String {
    let mut s = String::new();
    for (dq, da) in demos {
        s += &format!("Question: {dq}\nAnswer: {da}\n\n");
    }
    s + &format!("Question: {q}\nAnswer:")
}

/// The number after the first `phrase` in `text`: `$`, commas and a final full stop removed
/// (`The final answer is $1,234.` → `1234`).
pub fn number_after(text: &str, phrase: &str) -> Option<String> {
    let at = text.find(phrase)? + phrase.len();
    let rest = text[at..].trim_start().trim_start_matches('$');
    let n: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-'))
        .filter(|c| *c != ',')
        .collect();
    let n = n.trim_end_matches('.');
    n.parse::<f64>().ok().map(|_| n.to_string())
}

/// The model's final answer: the number after `The final answer is`.
pub fn final_answer_of(text: &str) -> Option<String> {
    number_after(text, "The final answer is")
}

/// The model's answer to Q1 inside a pair: the number after `The Q1 answer is`.
pub fn q1_answer_of(text: &str) -> Option<String> {
    number_after(text, "The Q1 answer is")
}

/// Whether `got` is the answer `want`.
pub fn right(got: Option<String>, want: &str) -> bool {
    got.is_some_and(|g| answers_equal(&g, want))
}

/// How far a recomputed answer may move: `|new − old| ≤ max(old, 10)`.
pub fn near(new: f64, old: f64) -> bool {
    (new - old).abs() <= old.abs().max(10.0)
}

/// Whether `new` is an acceptable recomputed answer for `old`: a positive integer, not `old`,
/// [`near`] it.
pub fn acceptable(new: f64, old: f64) -> bool {
    new > 0.0 && (new - new.round()).abs() < 1e-9 && new.round() != old && near(new, old)
}

/// Q1 candidates tried per Q2.
pub const Q1_WINDOW: usize = 100;

/// Numbers not replaced in GSM8K questions: they often stand for a word or a unit ("twice",
/// "a dozen", "an hour", "percent") that the annotations use as a literal too.
pub const UNIT_CONSTANTS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 7.0, 10.0, 12.0, 24.0, 30.0, 52.0, 60.0, 100.0, 365.0,
];

/// A Q2 that can take X: how to rewrite its text and recompute its answer.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Byte range of the number in the question.
    pub at: (usize, usize),
    pub x_was: f64,
    pub program: Program,
    pub old_answer: f64,
}

impl Slot {
    /// The pair with Q1 `(q1, a1, s1)` when the rule holds.
    fn pair(&self, id: String, q2: &str, q1: (&str, f64, Option<String>)) -> Option<Pair> {
        let (q1, x, s1) = q1;
        let results = self.program.run(x)?;
        if results.iter().any(|r| !r.is_finite() || *r < 0.0) {
            return None;
        }
        let new = *results.last()?;
        if !acceptable(new, self.old_answer) {
            return None;
        }
        let (a, b) = self.at;
        Some(Pair {
            id,
            q1: q1.trim().to_string(),
            a1: show(x),
            q2: format!("{}X{}", &q2[..a], &q2[b..]).trim().to_string(),
            a2: show(new),
            q2_standalone: format!("{}{}{}", &q2[..a], show(x), &q2[b..])
                .trim()
                .to_string(),
            s1,
            s2: self.program.worked(x),
            program: Some(self.program.to_string()),
            x_was: Some(show(self.x_was)),
        })
    }
}

/// A problem as the pairing sees it: its question, answer, worked steps and slots.
struct Source {
    q: String,
    answer: f64,
    steps: Option<String>,
    slots: Vec<Slot>,
}

/// Pairs from `problems` ([module](self) rule): each problem's slots (closest to X first)
/// tried with the next problems as Q1.
fn pair_up(problems: &[Source], prefix: &str) -> Vec<Pair> {
    let n = problems.len();
    let mut used = vec![false; n];
    let mut out = Vec::new();
    for (i, p2) in problems.iter().enumerate() {
        if p2.slots.is_empty() {
            continue;
        }
        for d in 1..=Q1_WINDOW.min(n.saturating_sub(1)) {
            let j = (i + d) % n;
            let p1 = &problems[j];
            let x = p1.answer;
            if used[j] || x <= 0.0 || (x - x.round()).abs() > 1e-9 {
                continue;
            }
            let mut slots: Vec<&Slot> = p2.slots.iter().collect();
            slots.sort_by(|a, b| {
                let r = |s: &Slot| (x / s.x_was).ln().abs();
                r(a).total_cmp(&r(b))
            });
            let id = format!("{prefix}-{}", out.len());
            if let Some(pair) = slots
                .iter()
                .find_map(|s| s.pair(id.clone(), &p2.q, (&p1.q, x, p1.steps.clone())))
            {
                used[j] = true;
                out.push(pair);
                break;
            }
        }
    }
    out
}

/// Pairs of generated `arith` problems: X replaces the start value.
pub fn arith_pairs(problems: &[TextProblem], prefix: &str) -> Vec<Pair> {
    let sources: Vec<Source> = problems
        .iter()
        .filter_map(|p| {
            let eqs = equations(&p.solution)?;
            let start = eqs[0].0;
            let steps: Vec<(String, f64)> = eqs
                .iter()
                .map(|&(a, op, b, c)| (format!("{a}{op}{b}"), c as f64))
                .collect();
            let worked = eqs
                .iter()
                .map(|&(a, op, b, c)| format!("{a}{op}{b}={c}."))
                .collect::<Vec<_>>()
                .join(" ");
            let q = p.prompt.trim().to_string();
            let needle = format!(" has {start} ");
            let at = q.find(&needle)? + " has ".len();
            let slot = Program::from_steps(&steps, start as f64).map(|program| Slot {
                at: (at, at + start.to_string().len()),
                x_was: start as f64,
                program,
                old_answer: p.answer.parse().unwrap_or(f64::NAN),
            });
            Some(Source {
                q,
                answer: p.answer.parse().ok()?,
                steps: Some(worked),
                slots: slot.into_iter().collect(),
            })
        })
        .collect();
    pair_up(&sources, prefix)
}

/// The calculator annotations of a GSM8K solution: `(expression, result)` in order.
pub fn annotations(solution: &str) -> Option<Vec<(String, f64)>> {
    let mut out = Vec::new();
    let mut rest = solution;
    while let Some(at) = rest.find("<<") {
        let end = rest[at..].find(">>")? + at;
        let inner = &rest[at + 2..end];
        let (expr, result) = inner.rsplit_once('=')?;
        let r: String = result.chars().filter(|c| *c != ',').collect();
        out.push((expr.to_string(), r.trim().parse().ok()?));
        rest = &rest[end + 2..];
    }
    Some(out)
}

/// The whole numbers written in `q` with their byte ranges (`1,200` is one number; `3rd` and
/// `2.5` are not whole numbers).
pub fn numbers(q: &str) -> Vec<((usize, usize), f64)> {
    let b = q.as_bytes();
    let digit = |i: usize| i < b.len() && b[i].is_ascii_digit();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let glued_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b".,".contains(&b[i - 1]));
        if !digit(i) || glued_before {
            i += 1;
            continue;
        }
        let start = i;
        // Digits, and thousands separators (a comma before a digit).
        while digit(i) || (i < b.len() && b[i] == b',' && digit(i + 1)) {
            i += 1;
        }
        let end = i;
        let decimal = b.get(i) == Some(&b'.') && digit(i + 1);
        let glued_after = i < b.len() && b[i].is_ascii_alphabetic();
        let text: String = q[start..end].chars().filter(|c| *c != ',').collect();
        if !decimal
            && !glued_after
            && let Ok(v) = text.parse::<f64>()
        {
            out.push(((start, end), v));
        }
        // The rest of this token (`3rd`, `2.5`).
        while i < b.len() && (b[i].is_ascii_alphanumeric() || (b[i] == b'.' && digit(i + 1))) {
            i += 1;
        }
    }
    out
}

/// A GSM8K problem as a pairing source: its slots by the GSM8K rule ([module](self)).
fn gsm8k_source(p: &TextProblem) -> Option<Source> {
    let answer: f64 = p.answer.parse().ok()?;
    let q = p.prompt.trim().to_string();
    let steps = annotations(&p.solution).filter(|s| !s.is_empty());
    let worked = steps.as_ref().map(|s| {
        s.iter()
            .map(|(e, r)| format!("{}={}.", e.trim(), show(*r)))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut slots = Vec::new();
    if let Some(steps) = &steps
        && steps.last().is_some_and(|l| l.1 == answer)
        && !q.contains('X')
    {
        let nums = numbers(&q);
        for &(at, v) in &nums {
            if nums.iter().filter(|(_, w)| *w == v).count() != 1
                || UNIT_CONSTANTS.contains(&v)
                || steps.iter().any(|s| s.1 == v)
            {
                continue;
            }
            if let Some(program) = Program::from_steps(steps, v) {
                slots.push(Slot {
                    at,
                    x_was: v,
                    program,
                    old_answer: answer,
                });
            }
        }
    }
    Some(Source {
        q,
        answer,
        steps: worked,
        slots,
    })
}

/// Pairs of GSM8K problems (the [module](self) rule).
pub fn gsm8k_pairs(problems: &[TextProblem], prefix: &str) -> Vec<Pair> {
    let sources: Vec<Source> = problems.iter().filter_map(gsm8k_source).collect();
    pair_up(&sources, prefix)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Option<String>,
    q1: String,
    a1: serde_json::Value,
    q2: String,
    a2: serde_json::Value,
    q2_standalone: String,
}

fn answer_text(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().replace([',', '$'], ""),
        _ => return None,
    };
    s.parse::<f64>().ok().map(|_| s)
}

/// Pairs from JSONL text (`{"q1", "a1", "q2", "a2", "q2_standalone"}` per line, blank lines
/// skipped); an error names the line and what is wrong.
pub fn parse_pairs(text: &str) -> anyhow::Result<Vec<Pair>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let l: Line = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "line {n}: {e} (each line is {{\"q1\", \"a1\", \"q2\", \"a2\", \"q2_standalone\"}})"
            )
        })?;
        let a1 = answer_text(&l.a1)
            .ok_or_else(|| anyhow::anyhow!("line {n}: `a1` must be a number, got {}", l.a1))?;
        let a2 = answer_text(&l.a2)
            .ok_or_else(|| anyhow::anyhow!("line {n}: `a2` must be a number, got {}", l.a2))?;
        for (f, v) in [
            ("q1", &l.q1),
            ("q2", &l.q2),
            ("q2_standalone", &l.q2_standalone),
        ] {
            anyhow::ensure!(!v.trim().is_empty(), "line {n}: `{f}` is empty");
        }
        anyhow::ensure!(
            l.q2.contains('X'),
            "line {n}: `q2` must use X (the answer to Q1)"
        );
        out.push(Pair {
            id: l.id.unwrap_or_else(|| format!("file-{}", out.len())),
            q1: l.q1,
            a1,
            q2: l.q2,
            a2,
            q2_standalone: l.q2_standalone,
            s1: None,
            s2: None,
            program: None,
            x_was: None,
        });
    }
    Ok(out)
}

/// Where pairs come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PairSource {
    /// Generated GSM-lite (`arith`) problems: `generated` sets them.
    #[default]
    Generated,
    /// GSM8K's train (demonstrations) and test files, from `dir`.
    Gsm8k,
    /// A JSONL file of pairs (`path`): the test split.
    File,
}

/// Configuration of the task `compositional-gsm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompositionalGsmConfig {
    pub source: PairSource,
    /// The generated problems (`source = "generated"`): every split's problems are paired
    /// within the split.
    pub generated: ArithConfig,
    /// GSM8K's folder (`source = "gsm8k"`; none: `$LMLAB_DATA_DIR/gsm8k`).
    pub dir: Option<PathBuf>,
    /// The pairs file (`source = "file"`).
    pub path: Option<PathBuf>,
    /// Keep at most this many pairs per split (none: all).
    pub limit: Option<usize>,
}

impl Default for CompositionalGsmConfig {
    fn default() -> Self {
        Self {
            source: PairSource::Generated,
            generated: ArithConfig {
                min_steps: 1,
                max_steps: 3,
                operators: vec![
                    lmlab_sdk::tasks::arith::Op::Add,
                    lmlab_sdk::tasks::arith::Op::Sub,
                    lmlab_sdk::tasks::arith::Op::Mul,
                ],
                max_number: 20,
                ..ArithConfig::default()
            },
            dir: None,
            path: None,
            limit: None,
        }
    }
}

/// The task: pairs of a split; an output is right when its final answer is Q2's.
pub struct CompositionalGsm {
    config: CompositionalGsmConfig,
    arith: Option<Arith>,
}

/// A task over compositional pairs.
pub type PairTask = dyn Task<Problem = Pair, Output = str>;

impl CompositionalGsm {
    pub fn new(config: CompositionalGsmConfig, seed: u64) -> Result<Self, ConfigError> {
        let arith = match config.source {
            PairSource::Generated => Some(
                Arith::new(config.generated.clone(), seed).map_err(|e| e.within("generated"))?,
            ),
            PairSource::File if config.path.is_none() => {
                return Err(ConfigError::field(
                    "path",
                    "`source = \"file\"` needs the pairs file's `path`",
                ));
            }
            _ => None,
        };
        Ok(Self { config, arith })
    }

    fn gsm8k_dir(&self) -> PathBuf {
        self.config
            .dir
            .clone()
            .unwrap_or_else(|| lmlab_sdk::data_dir().join("gsm8k"))
    }
}

/// Reads a file for the task, naming it in errors.
fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Task for CompositionalGsm {
    type Problem = Pair;
    type Output = str;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<Pair>> {
        let mut pairs = match self.config.source {
            PairSource::Generated => {
                let arith = self.arith.as_ref().expect("built with the generator");
                arith_pairs(&arith.problems(split)?, &split.to_string())
            }
            PairSource::Gsm8k => {
                let task =
                    lmlab_sdk::tasks::gsm8k::Gsm8k::new(lmlab_sdk::tasks::gsm8k::Gsm8kConfig {
                        dir: Some(self.gsm8k_dir()),
                        limit: None,
                    });
                gsm8k_pairs(&task.problems(split)?, &split.to_string())
            }
            PairSource::File => {
                if split != Split::Test {
                    return Ok(Vec::new());
                }
                let path = self.config.path.as_ref().expect("checked at build");
                parse_pairs(&read(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
        };
        if let Some(l) = self.config.limit {
            pairs.truncate(l);
        }
        Ok(pairs)
    }

    fn check(&self, pair: &Pair, output: &str) -> bool {
        right(final_answer_of(output), &pair.a2)
    }

    fn answer(&self, output: &str) -> Option<String> {
        final_answer_of(output)
    }
}

/// GSM8K's ground truth of a solution (`#### 1,234` → `1234`).
pub fn gsm8k_truth(solution: &str) -> Option<String> {
    final_answer(solution)
}

/// Re-checks a constructed pair against its executable form: Q2's program run with X = A1
/// gives A2 through non-negative steps, its worked steps are the standalone Q2's solution,
/// the standalone Q2 is Q2 with X written as A1, and A2 obeys the rule against the answer
/// with the number X replaced ([`acceptable`]). `None` for a pair without a program (a
/// user's file); `Err` says what does not hold.
pub fn recompute(p: &Pair) -> Option<Result<(), String>> {
    let program = p.program.as_deref()?;
    Some((|| {
        let program = Program::parse(program).ok_or(format!("`{program}` does not parse"))?;
        let x: f64 =
            p.a1.parse()
                .map_err(|_| format!("A1 `{}` is not a number", p.a1))?;
        let was: f64 = p
            .x_was
            .as_deref()
            .and_then(|w| w.parse().ok())
            .ok_or("no number X replaced")?;
        let results = program
            .run(x)
            .ok_or("the program does not run with X = A1")?;
        if results.iter().any(|r| *r < 0.0) {
            return Err(format!("a step goes negative: {results:?}"));
        }
        let new = *results.last().ok_or("an empty program")?;
        if show(new) != p.a2 {
            return Err(format!(
                "the program gives {}, the pair says {}",
                show(new),
                p.a2
            ));
        }
        let old = program
            .answer(was)
            .ok_or("the program does not run with the old number")?;
        if !acceptable(new, old) {
            return Err(format!(
                "{} against the old answer {} breaks the rule",
                p.a2,
                show(old)
            ));
        }
        if p.s2 != program.worked(x) {
            return Err(format!("the worked Q2 {:?} is not the program's", p.s2));
        }
        let standalone = p.q2.replacen('X', &p.a1, 1);
        if p.q2.matches('X').count() != 1 || standalone != p.q2_standalone {
            return Err(format!("the standalone Q2 is not Q2 with X = {}", p.a1));
        }
        Ok(())
    })())
}

lmlab_sdk::register_component! {
    kind: Task,
    name: "compositional-gsm",
    description: "compositional GSM pairs (Q2 uses X, the answer to Q1): generated GSM-lite problems, GSM8K test pairs, or a JSONL file of pairs",
    config: CompositionalGsmConfig,
    build: |config: CompositionalGsmConfig, ctx| Ok(Box::new(CompositionalGsm::new(config, ctx.seed)?) as Box<PairTask>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_from_both_formats() {
        assert_eq!(
            final_answer_of("so 3. The final answer is $1,234.").as_deref(),
            Some("1234")
        );
        assert_eq!(
            final_answer_of("The final answer is 7").as_deref(),
            Some("7")
        );
        assert_eq!(
            final_answer_of("The final answer is 2.5.").as_deref(),
            Some("2.5")
        );
        assert_eq!(
            final_answer_of("The final answer is -3.").as_deref(),
            Some("-3")
        );
        assert_eq!(final_answer_of("The final answer is unknown."), None);
        assert_eq!(final_answer_of("#### 5"), None);
        assert_eq!(
            q1_answer_of("4+5=9. The Q1 answer is 9. Therefore X=9.").as_deref(),
            Some("9")
        );
        assert_eq!(gsm8k_truth("work\n#### 1,234").as_deref(), Some("1234"));
        assert!(right(Some("1234".into()), "1234.0"));
        assert!(!right(None, "3"));
    }

    #[test]
    fn prompts_follow_the_paper() {
        let q = pair_question("Q one?", "Q two with X?");
        assert_eq!(
            q,
            "Let X be the answer to the Q1:\nQ1: Q one?\nSolve it and use the value of X to solve Q2. Explain your answer step by step.\nQ2: Q two with X?"
        );
        assert_eq!(
            pair_answer("1+2=3.", "3", "3*2=6.", "6"),
            "1+2=3. The Q1 answer is 3. Therefore X=3. 3*2=6. The final answer is 6."
        );
        assert_eq!(prompt(&[], "q"), "Question: q\nAnswer:");
        assert_eq!(
            prompt(&[("a".into(), "b".into())], "q"),
            "Question: a\nAnswer: b\n\nQuestion: q\nAnswer:"
        );
    }

    #[test]
    fn the_closeness_rule() {
        assert!(acceptable(15.0, 10.0));
        assert!(!acceptable(10.0, 10.0));
        assert!(!acceptable(2.5, 10.0));
        assert!(!acceptable(0.0, 4.0));
        assert!(acceptable(14.0, 4.0));
        assert!(!acceptable(15.0, 4.0));
        assert!(!acceptable(61.0, 30.0));
    }

    #[test]
    fn numbers_in_questions() {
        let q = "Tom has 1,200 cards and 3rd place, 2.5 kg, $40 each, 7 days.";
        let got: Vec<f64> = numbers(q).into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, [1200.0, 40.0, 7.0]);
        let ((a, b), _) = numbers(q)[1];
        assert_eq!(&q[a..b], "40");
    }

    #[test]
    fn a_gsm8k_problem_pairs_and_recomputes() {
        let p2 = TextProblem {
            id: "t-0".into(),
            prompt: "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?\n".into(),
            solution: "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72".into(),
            answer: "72".into(),
        };
        let p1 = TextProblem {
            id: "t-1".into(),
            prompt: "Sam has 5 bags of 8 apples. How many apples?\n".into(),
            solution: "5*8=<<5*8=40>>40\n#### 40".into(),
            answer: "40".into(),
        };
        let pairs = gsm8k_pairs(&[p2, p1], "test");
        // Q2 = Natalia with X = 40 (Q1, Sam); Sam's Q2 has no slot (5 and 8 are fine, but the
        // next problem's answer 72 moves 40 too far from either).
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        let p = &pairs[0];
        assert_eq!(p.a1, "40");
        assert!(p.q2.contains("clips to X of her friends"));
        assert!(p.q2_standalone.contains("clips to 40 of her friends"));
        assert_eq!(p.a2, "60");
        assert_eq!(p.s2.as_deref(), Some("40/2=20. 40+20=60."));
        assert_eq!(p.s1.as_deref(), Some("5*8=40."));
        let program = Program::parse(p.program.as_ref().unwrap()).unwrap();
        assert_eq!(program.answer(40.0), Some(60.0));
        assert_eq!(program.answer(48.0), Some(72.0));
    }

    #[test]
    fn every_generated_pair_recomputes_to_its_answer() {
        let t = CompositionalGsm::new(
            CompositionalGsmConfig {
                generated: ArithConfig {
                    n_train: 3000,
                    n_test: 500,
                    n_validation: 100,
                    distractors: 1,
                    ..CompositionalGsmConfig::default().generated
                },
                ..Default::default()
            },
            3,
        )
        .unwrap();
        for split in [Split::Train, Split::Test] {
            let pairs = t.problems(split).unwrap();
            // Most problems find a partner.
            assert!(
                pairs.len() * 10 > [3000, 500][usize::from(split == Split::Test)] * 7,
                "{}",
                pairs.len()
            );
            for p in &pairs {
                assert_eq!(recompute(p), Some(Ok(())), "{p:?}");
                assert!(t.check(p, &format!("The final answer is {}.", p.a2)));
                assert!(!t.check(p, &format!("The final answer is {}.", p.a1)) || p.a1 == p.a2);
            }
        }
        // A tampered pair fails.
        let mut p = t.problems(Split::Test).unwrap()[0].clone();
        p.a2 = format!("{}", p.a2.parse::<i64>().unwrap() + 1);
        assert!(recompute(&p).unwrap().is_err());
    }

    #[test]
    fn the_pairs_file_refuses_malformed_lines_by_number() {
        let good = r#"{"q1": "a?", "a1": 3, "q2": "X b?", "a2": "1,200", "q2_standalone": "3 b?"}"#;
        let p = parse_pairs(&format!("{good}\n\n{good}")).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].a1.as_str(), p[0].a2.as_str()), ("3", "1200"));
        let bad = |line: &str| {
            parse_pairs(&format!("{good}\n{line}"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("{oops").starts_with("line 2:"));
        assert!(
            bad(r#"{"q1": "a?", "a1": 3, "q2": "X b?", "a2": 4}"#)
                .contains("line 2: missing field `q2_standalone`")
        );
        assert!(
            bad(r#"{"q1": "a?", "a1": "three", "q2": "X b?", "a2": 4, "q2_standalone": "3 b?"}"#)
                .contains("line 2: `a1` must be a number")
        );
        assert!(
            bad(r#"{"q1": "a?", "a1": 3, "q2": "b?", "a2": 4, "q2_standalone": "3 b?"}"#)
                .contains("line 2: `q2` must use X")
        );
        assert!(
            bad(r#"{"q1": " ", "a1": 3, "q2": "X b?", "a2": 4, "q2_standalone": "3 b?"}"#)
                .contains("line 2: `q1` is empty")
        );
        assert!(bad(r#"{"q1": "a", "a1": 3, "q2": "X b?", "a2": 4, "q2_standalone": "3 b?", "extra": 1}"#).contains("line 2: unknown field `extra`"));
    }
}
