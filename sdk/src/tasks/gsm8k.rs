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

#[cfg(test)]
mod tests {
    use super::*;

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
