//! The [`Verifier`] trait, the [`Candidate`]s it scores, and [`VerifierSpec`], what a recipe's
//! `[verifier]` table builds (a fixed verifier, or a fitter that trains one).

use serde::{Deserialize, Serialize};

use crate::fit::{FitCx, Fitted};
use crate::policy::Completion;
use crate::tasks::TextProblem;

/// One sampled solution of a problem, checked by the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The index of its problem in the list it was sampled for.
    pub problem: usize,
    pub completion: Completion,
    /// Whether the task's checker accepts it.
    pub correct: bool,
    /// Its final answer in the task's canonical form (for voting), if it has one.
    pub answer: Option<String>,
}

/// Every {correct} × {incorrect} pair of each problem's candidates, as indices into
/// `candidates`: problems in order, then correct ones in order, each with every incorrect one
/// in order. DPO verifiers and reward models learn from these.
pub fn correct_incorrect_pairs(candidates: &[Candidate]) -> Vec<(usize, usize)> {
    let mut by_problem: std::collections::BTreeMap<usize, (Vec<usize>, Vec<usize>)> =
        Default::default();
    for (i, c) in candidates.iter().enumerate() {
        let e = by_problem.entry(c.problem).or_default();
        if c.correct { e.0.push(i) } else { e.1.push(i) }
    }
    by_problem
        .values()
        .flat_map(|(c, w)| c.iter().flat_map(move |&a| w.iter().map(move |&b| (a, b))))
        .collect()
}

/// Scores that rank the candidates of each problem: higher means more likely correct. Oracle
/// checkers, majority vote, likelihoods, outcome reward models, DPO verifiers and generative
/// verifiers all implement it, so Best-of-k code never cares which one it has.
///
/// # Example
///
/// ```
/// use lmlab_sdk::tasks::TextProblem;
/// use lmlab_sdk::verifier::{Candidate, Verifier};
///
/// /// Prefers shorter solutions.
/// struct Shortest;
///
/// impl Verifier for Shortest {
///     fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
///         Ok(candidates.iter().map(|c| -(c.completion.token_ids.len() as f32)).collect())
///     }
/// }
/// # let _ = Shortest;
/// ```
pub trait Verifier: Send + Sync {
    /// One score per candidate; `problems[c.problem]` is candidate `c`'s problem.
    fn scores(
        &self,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Vec<f32>>;

    /// The language model it scores with, when it is one (a likelihood or DPO verifier): what
    /// a run saves and exports.
    fn policy(&self) -> Option<&crate::lm::policy::LmPolicy> {
        None
    }
}

/// What a recipe's verifier table builds. Fixed verifiers (oracle, majority, likelihood) ignore
/// the data; fitted ones (DPO, ORM, GenRM) train from the policy in the [`FitCx`] on the
/// labelled candidates the scheduler hands over when the run reaches that point.
pub trait VerifierSpec: Send + Sync {
    /// How it is called in tables and progress bars ("DPO verifier", "ORM").
    fn label(&self) -> String;

    /// Whether it trains.
    fn fitted(&self) -> bool {
        false
    }

    /// The verifier, trained when it is fitted.
    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>>;
}
