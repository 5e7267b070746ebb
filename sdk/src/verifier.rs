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

/// Splits `candidates` by problem: a random `fraction` of the problems (at least one when the
/// fraction is positive, never all of them) is held out. Returns the indices of the training
/// candidates and of the held-out ones (each in order) and the held-out problem count; the
/// candidates of one problem all land on the same side.
pub fn split_by_problem(
    candidates: &[Candidate],
    fraction: f64,
    rng: &mut crate::rng::Rng,
) -> (Vec<usize>, Vec<usize>, usize) {
    use rand::seq::SliceRandom as _;
    let mut problems: Vec<usize> = candidates.iter().map(|c| c.problem).collect();
    problems.sort_unstable();
    problems.dedup();
    let p = problems.len();
    let held = if fraction <= 0.0 || p < 2 {
        0
    } else {
        ((fraction * p as f64).round() as usize).clamp(1, p - 1)
    };
    problems.shuffle(rng);
    let out: std::collections::BTreeSet<usize> = problems[..held].iter().copied().collect();
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (i, c) in candidates.iter().enumerate() {
        if out.contains(&c.problem) {
            heldout.push(i)
        } else {
            train.push(i)
        }
    }
    (train, heldout, held)
}

/// `b` indices into `labels`, drawn with replacement: uniformly, or with `balanced` half (the
/// first `b / 2`) from the positives and the rest from the negatives, when there are both
/// (the balanced batches of the GenRM paper's verifiers).
pub fn draw_batch(
    labels: &[bool],
    b: usize,
    balanced: bool,
    rng: &mut crate::rng::Rng,
) -> Vec<usize> {
    use rand::Rng as _;
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
    if !balanced || pos.is_empty() || neg.is_empty() {
        return (0..b)
            .map(|_| rng.random_range(0..labels.len().max(1)))
            .collect();
    }
    (0..b)
        .map(|j| {
            let side = if j < b / 2 { &pos } else { &neg };
            side[rng.random_range(0..side.len())]
        })
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

    /// Each candidate's sampled judgements, for a verifier whose score is their mean (GenRM-CoT:
    /// p(" Yes") after each of K sampled rationales, in sampling order): the mean of the first
    /// `K` is the score with `K` samples, so one call gives the whole curve over `K`. `None`
    /// (the default) for a verifier that samples nothing; then [`scores`](Self::scores) is all.
    fn sampled_scores(
        &self,
        _problems: &[TextProblem],
        _candidates: &[Candidate],
    ) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        Ok(None)
    }

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A one-token candidate of `problem`.
    pub(crate) fn cand(problem: usize, answer: Option<&str>, correct: bool) -> Candidate {
        Candidate {
            problem,
            completion: Completion {
                prompt: vec![1],
                token_ids: vec![2],
                text: String::new(),
                logprobs: vec![0.0],
                finished: true,
            },
            correct,
            answer: answer.map(String::from),
        }
    }

    #[test]
    fn balanced_batches_take_half_from_each_label() {
        let labels: Vec<bool> = (0..100).map(|i| i % 10 == 0).collect();
        let mut r = crate::rng::rng(1, 0);
        let idx = draw_batch(&labels, 32, true, &mut r);
        assert_eq!(idx.iter().filter(|&&i| labels[i]).count(), 16);
        let idx = draw_batch(&labels, 1000, false, &mut r);
        let pos = idx.iter().filter(|&&i| labels[i]).count();
        assert!(
            (60..=140).contains(&pos),
            "uniform draws: {pos} positives of 1000"
        );
        // One label only: uniform.
        assert_eq!(draw_batch(&[false; 5], 4, true, &mut r).len(), 4);
    }

    proptest! {
        /// The split partitions the candidates, keeps each problem on one side, and holds out
        /// round(fraction · problems) of them (at least one, never all).
        #[test]
        fn split_by_problem_holds_out_whole_problems(
            problems in proptest::collection::vec(0usize..12, 1..80),
            fraction in 0.0f64..0.9,
            seed in 0u64..100,
        ) {
            let c: Vec<Candidate> = problems.iter().enumerate().map(|(i, &p)| cand(p, None, i % 3 == 0)).collect();
            let (train, held, n) = split_by_problem(&c, fraction, &mut crate::rng::rng(seed, 0));
            let mut all: Vec<usize> = train.iter().chain(&held).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..c.len()).collect::<Vec<_>>());
            let side = |i: &usize| c[*i].problem;
            let tp: std::collections::BTreeSet<usize> = train.iter().map(side).collect();
            let hp: std::collections::BTreeSet<usize> = held.iter().map(side).collect();
            prop_assert!(tp.is_disjoint(&hp));
            prop_assert_eq!(hp.len(), n);
            let p = tp.len() + hp.len();
            let want = if fraction == 0.0 || p < 2 { 0 } else { ((fraction * p as f64).round() as usize).clamp(1, p - 1) };
            prop_assert_eq!(n, want);
            prop_assert!(!train.is_empty());
        }
    }
}
