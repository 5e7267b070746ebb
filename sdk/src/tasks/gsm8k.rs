//! Task `gsm8k`: GSM8K (Cobbe et al., 2021) from its JSONL files (`question`, `answer` ending
//! in `#### N`), read from a data directory (`LMLAB_DATA_DIR`, default `../shared/data`).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{TextProblem, TextTask, answers_equal, final_answer};
use crate::{Split, Task};

/// Configuration of `gsm8k`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Gsm8kConfig {
    /// The folder with `train.jsonl` and `test.jsonl` (none: `$LMLAB_DATA_DIR/gsm8k`, or
    /// `../shared/data/gsm8k`).
    pub dir: Option<PathBuf>,
    /// Keep at most this many problems per split (none: all).
    pub limit: Option<usize>,
}

impl Default for Gsm8kConfig {
    fn default() -> Self {
        Self {
            dir: None,
            limit: None,
        }
    }
}

#[derive(Deserialize)]
struct Row {
    question: String,
    answer: String,
}

/// Parses GSM8K JSONL text; errors name the line.
pub fn parse_jsonl(text: &str, split: Split) -> anyhow::Result<Vec<TextProblem>> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: Row =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        let answer = final_answer(&row.answer)
            .ok_or_else(|| anyhow::anyhow!("line {}: no `#### answer`", i + 1))?;
        out.push(TextProblem {
            id: format!("{split}-{i}"),
            prompt: format!("{}\n", row.question),
            solution: row.answer,
            answer,
        });
    }
    Ok(out)
}

/// GSM8K from disk.
pub struct Gsm8k {
    dir: PathBuf,
    limit: Option<usize>,
}

impl Gsm8k {
    pub fn new(config: Gsm8kConfig) -> Self {
        let dir = config
            .dir
            .unwrap_or_else(|| crate::data_dir().join("gsm8k"));
        Self {
            dir,
            limit: config.limit,
        }
    }

    fn file(&self, split: Split) -> PathBuf {
        self.dir.join(match split {
            Split::Test => "test.jsonl",
            _ => "train.jsonl",
        })
    }
}

impl Task for Gsm8k {
    type Problem = TextProblem;
    type Output = str;

    /// `train.jsonl` serves Train (all but its last 500) and Validation (its last 500).
    fn problems(&self, split: Split) -> anyhow::Result<Vec<TextProblem>> {
        let path = self.file(split);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (set LMLAB_DATA_DIR or the task's `dir`)",
                path.display()
            )
        })?;
        let mut all =
            parse_jsonl(&text, split).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let n = all.len();
        match split {
            Split::Train => all.truncate(n.saturating_sub(500)),
            Split::Validation => {
                all = all.split_off(n.saturating_sub(500));
            }
            Split::Test => {}
        }
        if let Some(l) = self.limit {
            all.truncate(l);
        }
        Ok(all)
    }

    fn check(&self, problem: &TextProblem, output: &str) -> bool {
        final_answer(output).is_some_and(|a| answers_equal(&a, &problem.answer))
    }

    fn answer(&self, output: &str) -> Option<String> {
        super::vote_key(output)
    }
}

/// Whether `dir` holds GSM8K.
pub fn present(dir: &Path) -> bool {
    dir.join("test.jsonl").is_file()
}

crate::register_component! {
    kind: Task,
    name: "gsm8k",
    description: "GSM8K grade-school math (JSONL from the data directory), exact final-answer check",
    config: Gsm8kConfig,
    build: |config: Gsm8kConfig, _ctx| Ok(Box::new(Gsm8k::new(config)) as Box<TextTask>),
}

/// A GSM8K-style solution without its calculator annotations (`<<48/2=24>>`).
pub fn plain_solution(solution: &str) -> String {
    let mut out = String::with_capacity(solution.len());
    let mut rest = solution;
    while let Some(at) = rest.find("<<") {
        out.push_str(&rest[..at]);
        match rest[at..].find(">>") {
            Some(end) => rest = &rest[at + end + 2..],
            None => {
                rest = &rest[at..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The few-shot prompt of `q`: each example as `Question: …\nAnswer: …` (blank line between),
/// then `Question: {q}\nAnswer:`.
pub fn few_shot_prompt(examples: &[TextProblem], q: &str) -> String {
    let mut s = String::new();
    for e in examples {
        s += &format!(
            "Question: {}\nAnswer: {}\n\n",
            e.prompt.trim_end_matches('\n'),
            plain_solution(&e.solution)
        );
    }
    s + &format!("Question: {q}\nAnswer:")
}

/// The first `problems` test problems of `task` and their few-shot prompts ([`few_shot_prompt`]),
/// each led by the first `shots` training problems as worked examples.
pub fn few_shot_test(
    task: &TextTask,
    problems: usize,
    shots: usize,
) -> anyhow::Result<(Vec<TextProblem>, Vec<String>)> {
    let test: Vec<TextProblem> = task
        .problems(Split::Test)?
        .into_iter()
        .take(problems)
        .collect();
    anyhow::ensure!(!test.is_empty(), "the task has no test problems");
    let examples: Vec<TextProblem> = task
        .problems(Split::Train)?
        .into_iter()
        .take(shots)
        .collect();
    let prompts = test
        .iter()
        .map(|p| few_shot_prompt(&examples, p.prompt.trim_end_matches('\n')))
        .collect();
    Ok((test, prompts))
}

/// The end of a candidate's own answer: before the next `Question:` it may start.
pub fn own_answer(text: &str) -> &str {
    text.split("\n\nQuestion:").next().unwrap_or(text).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_carry_plain_worked_examples_and_answers_end_before_the_next_question() {
        assert_eq!(
            plain_solution("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"),
            "She sold 48/2 = 24 clips.\n#### 72"
        );
        assert_eq!(plain_solution("a <<b"), "a <<b");
        let ex = TextProblem {
            id: String::new(),
            prompt: "What is 1+1?\n".into(),
            solution: "1+1=<<1+1=2>>2\n#### 2".into(),
            answer: "2".into(),
        };
        assert_eq!(
            few_shot_prompt(&[ex], "What is 2+2?"),
            "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\nQuestion: What is 2+2?\nAnswer:"
        );
        assert_eq!(
            own_answer(" 2+2=4\n#### 4\n\nQuestion: Tom has"),
            "2+2=4\n#### 4"
        );
    }

    #[test]
    fn parses_answers_with_separators() {
        let text = r#"{"question": "q1", "answer": "a\n#### 1,234"}
{"question": "q2", "answer": "b #### 7"}"#;
        let p = parse_jsonl(text, Split::Test).unwrap();
        assert_eq!(p[0].answer, "1234");
        assert_eq!(p[1].answer, "7");
        assert!(
            parse_jsonl("{\"question\": \"q\", \"answer\": \"none\"}", Split::Test)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse_jsonl("{oops", Split::Test).is_err());
    }
}
