//! The [`Task`] trait: problems with an exact checker, in deterministic splits.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A part of a task's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        })
    }
}

/// Problems and the exact checker that says whether an output solves one.
///
/// A task is data: generators (seeded, so a split is the same on every machine) or loaders of
/// real files. `Problem` is what a model sees and what the checker needs; `Output` is what a
/// model produces (`str` for language tasks).
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Split, Task};
///
/// /// "What is a + b?" for small numbers; the checker compares integers exactly.
/// struct Addition;
///
/// impl Task for Addition {
///     type Problem = (u32, u32);
///     type Output = str;
///     fn problems(&self, split: Split) -> anyhow::Result<Vec<(u32, u32)>> {
///         let offset = if split == Split::Train { 0 } else { 100 };
///         Ok((0..10).map(|i| (offset + i, 2 * i)).collect())
///     }
///     fn check(&self, p: &(u32, u32), output: &str) -> bool {
///         output.trim().parse::<u32>() == Ok(p.0 + p.1)
///     }
/// }
///
/// let test = Addition.problems(Split::Test).unwrap();
/// assert!(Addition.check(&test[1], " 103"));
/// assert!(!Addition.check(&test[1], "104"));
/// ```
pub trait Task: Send + Sync {
    /// One problem.
    type Problem: Clone + Send + Sync + 'static;
    /// What a model answers (`str` for text).
    type Output: ?Sized;

    /// The problems of `split`, identical for the same configuration.
    fn problems(&self, split: Split) -> anyhow::Result<Vec<Self::Problem>>;

    /// Whether `output` solves `problem`, exactly as the task defines it.
    fn check(&self, problem: &Self::Problem, output: &Self::Output) -> bool;

    /// The final answer of `output` in a canonical form, for voting (`6.0` and `06` the same);
    /// `None` when it has none or the task does not parse answers.
    fn answer(&self, _output: &Self::Output) -> Option<String> {
        None
    }

    /// A programmatic (gold) reward of `output`, when the task defines one; `finished` says
    /// whether generation ended by itself (EOS) rather than at the length limit.
    fn reward(
        &self,
        _problem: &Self::Problem,
        _output: &Self::Output,
        _finished: bool,
    ) -> Option<f32> {
        None
    }
}

/// The train and test splits of `task`, refusing an empty one; `user` (e.g. "scheduler
/// `sft`") names who needs them in the error.
pub fn train_and_test<T: Task + ?Sized>(
    task: &T,
    user: &str,
) -> anyhow::Result<(Vec<T::Problem>, Vec<T::Problem>)> {
    let train = task.problems(Split::Train)?;
    let test = task.problems(Split::Test)?;
    anyhow::ensure!(
        !train.is_empty() && !test.is_empty(),
        "{user}: the task has an empty train or test split"
    );
    Ok((train, test))
}
