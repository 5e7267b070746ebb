//! Text tasks: problems with a prompt, a reference solution and a final answer, checked
//! exactly. Generators make the default data (a fresh clone runs offline); loaders read real
//! data sets.

pub mod arith;
pub mod gsm8k;
pub mod steps;
pub mod toy_tldr;

use serde::{Deserialize, Serialize};

use crate::Task;

/// One text problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextProblem {
    /// Stable identifier within the task.
    pub id: String,
    /// What the model is given, exactly (a trailing newline included): the prompt the policy
    /// encodes and continues.
    pub prompt: String,
    /// A reference solution (chain of thought ending in `#### answer`).
    pub solution: String,
    /// The final answer, as the checker compares it.
    pub answer: String,
}

/// A task over text problems whose outputs are text.
pub type TextTask = dyn Task<Problem = TextProblem, Output = str>;

/// The final answer of a solution: the text after the last `####`, trimmed, with thousands
/// separators removed (`#### 1,234` → `1234`). `None` when there is no `####`.
pub fn final_answer(text: &str) -> Option<String> {
    let (_, tail) = text.rsplit_once("####")?;
    let line = tail.trim_start().lines().next().unwrap_or("").trim();
    let cleaned: String = line.chars().filter(|c| *c != ',').collect();
    let cleaned = cleaned.trim_end_matches('.').trim().to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// A final answer in canonical form for voting: numbers as numbers (`6.0` and `06` vote
/// together), anything else as written; `None` without a final answer.
pub fn vote_key(text: &str) -> Option<String> {
    let a = final_answer(text)?;
    Some(match a.parse::<f64>() {
        Ok(x) if x.is_finite() => format!("{x}"),
        _ => a,
    })
}

/// The text a model is given for `p` (and asked to continue with a solution).
pub fn prompt_text(p: &TextProblem) -> String {
    p.prompt.clone()
}

/// Prompt and solution as one text (what a tokenizer is built from).
pub fn training_text(p: &TextProblem) -> String {
    format!("{}{}", prompt_text(p), p.solution)
}

/// Whether two answers are equal: as numbers when both parse (so `6`, `6.0` and `06` agree),
/// else as strings.
pub fn answers_equal(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers() {
        assert_eq!(final_answer("3+4=7. #### 7").as_deref(), Some("7"));
        assert_eq!(final_answer("a #### 1,234\nmore").as_deref(), Some("1234"));
        assert_eq!(final_answer("#### 5 #### 6").as_deref(), Some("6"));
        assert_eq!(final_answer("no answer"), None);
        assert_eq!(final_answer("####  "), None);
        assert!(answers_equal("6", "6.0"));
        assert!(!answers_equal("6", "7"));
        assert_eq!(vote_key("1+2=3. #### 3"), vote_key("#### 3.0"));
        assert_eq!(vote_key("no answer"), None);
    }
}
