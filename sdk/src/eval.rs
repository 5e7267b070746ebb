//! Evaluation over sampled candidates: pass@k curves, Best-of-k curves for any set of
//! verifiers over the same candidates, majority vote@k, verifier-weighted majority, and the
//! AUROC of a verifier's scores. Built on the pure functions of [`crate::metrics`] and
//! property-tested against their definitions.
//!
//! Candidates are flat lists ([`Candidate`]), each naming the problem it answers; curves are
//! means over problems of the per-problem value, skipping problems with fewer than `k`
//! candidates.

use std::collections::BTreeMap;

use crate::metrics::{best_of_k, majority_at_k, pass_at_k};
use crate::rng::rng;
use crate::tasks::{TextProblem, answers_equal};
use crate::verifier::Candidate;

/// The `k` values of a Best-of-k table: powers of two up to `n`.
pub fn ks(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |k| k.checked_mul(2))
        .take_while(|&k| k <= n)
        .collect()
}

/// The candidates of each problem `0..problems`, as indices into `candidates`, in order.
pub fn by_problem(candidates: &[Candidate], problems: usize) -> Vec<Vec<usize>> {
    let mut g = vec![Vec::new(); problems];
    for (i, c) in candidates.iter().enumerate() {
        if let Some(v) = g.get_mut(c.problem) {
            v.push(i);
        }
    }
    g
}

/// The fraction of correct candidates (pass@1 with every candidate counted once).
pub fn pass_at_1(candidates: &[Candidate]) -> f64 {
    candidates.iter().filter(|c| c.correct).count() as f64 / candidates.len().max(1) as f64
}

/// The correct candidates' token sequences (prompt and response ids): the fine-tuning data of
/// rejection sampling (RFT, STaR, V-STaR's D_GEN).
pub fn correct_sequences(candidates: &[Candidate]) -> Vec<crate::Sequence> {
    let correct = candidates.iter().filter(|c| c.correct);
    correct.map(|c| c.completion.sequence()).collect()
}

fn mean_of(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        sum += v;
        n += 1;
    }
    sum / n.max(1) as f64
}

/// pass@k (Chen et al. 2021) for each `k`, averaged over the problems of `groups`.
pub fn pass_at_k_curve(groups: &[Vec<usize>], correct: &[bool], ks: &[usize]) -> Vec<f64> {
    ks.iter()
        .map(|&k| {
            mean_of(
                groups.iter().filter_map(|g| {
                    pass_at_k(g.len(), g.iter().filter(|&&i| correct[i]).count(), k)
                }),
            )
        })
        .collect()
}

/// Best-of-k (V-STaR's Verifier@k, [`best_of_k`]) by `scores` (one per candidate) for each
/// `k`, averaged over the problems of `groups`.
pub fn best_of_k_curve(
    groups: &[Vec<usize>],
    scores: &[f32],
    correct: &[bool],
    ks: &[usize],
) -> Vec<f64> {
    ks.iter()
        .map(|&k| {
            mean_of(groups.iter().filter_map(|g| {
                let s: Vec<f32> = g.iter().map(|&i| scores[i]).collect();
                let c: Vec<bool> = g.iter().map(|&i| correct[i]).collect();
                best_of_k(&s, &c, k)
            }))
        })
        .collect()
}

/// Best-of-k curves of several verifiers over the same candidates: `(name, curve)` in the
/// order given.
pub fn best_of_k_curves<'a>(
    groups: &[Vec<usize>],
    scores: impl IntoIterator<Item = (&'a str, &'a [f32])>,
    correct: &[bool],
    ks: &[usize],
) -> Vec<(String, Vec<f64>)> {
    scores
        .into_iter()
        .map(|(name, s)| (name.to_string(), best_of_k_curve(groups, s, correct, ks)))
        .collect()
}

/// Majority vote@k ([`majority_at_k`], `subsets` random k-subsets per problem) for each `k`,
/// averaged over problems. `is_right(problem, answer)` says whether an answer is correct;
/// problem `p` draws its subsets with seed `seed · 7919 + p`.
pub fn majority_curve(
    groups: &[Vec<usize>],
    answers: &[Option<String>],
    is_right: impl Fn(usize, &str) -> bool,
    ks: &[usize],
    subsets: usize,
    seed: u64,
) -> Vec<f64> {
    ks.iter()
        .map(|&k| {
            mean_of(groups.iter().enumerate().filter_map(|(p, g)| {
                let a: Vec<Option<String>> = g.iter().map(|&i| answers[i].clone()).collect();
                majority_at_k(
                    &a,
                    |x| is_right(p, x),
                    k,
                    subsets,
                    seed.wrapping_mul(7919).wrapping_add(p as u64),
                )
            }))
        })
        .collect()
}

/// The answer with the largest summed weight among `(answer, weight)` pairs (unparseable
/// answers do not vote); ties go to the smallest answer string. With all weights 1 this is
/// majority vote.
pub fn weighted_vote<'a>(
    votes: impl IntoIterator<Item = (Option<&'a str>, f64)>,
) -> Option<&'a str> {
    let mut total: BTreeMap<&str, f64> = BTreeMap::new();
    for (a, w) in votes {
        if let Some(a) = a {
            *total.entry(a).or_default() += w;
        }
    }
    total
        .into_iter()
        .fold(None, |best: Option<(&str, f64)>, (a, w)| match best {
            Some((_, m)) if m >= w => best,
            _ => Some((a, w)),
        })
        .map(|(a, _)| a)
}

/// Verifier-weighted majority vote@k (weighted self-consistency): the fraction of `subsets`
/// random k-subsets of one problem's candidates whose [`weighted_vote`] answer, each candidate
/// voting with its score, is correct. Candidates are put in a canonical order (by answer, then
/// score) before subsets are drawn, so the value is invariant to permuting them; `k = N` is
/// exact. `None` unless `1 ≤ k ≤ N` and the slices have equal lengths.
pub fn weighted_majority_at_k(
    answers: &[Option<String>],
    scores: &[f32],
    is_correct: impl Fn(&str) -> bool,
    k: usize,
    subsets: usize,
    seed: u64,
) -> Option<f64> {
    let n = answers.len();
    if k == 0 || k > n || scores.len() != n {
        return None;
    }
    let mut canon: Vec<(Option<&str>, f32)> = answers
        .iter()
        .map(|a| a.as_deref())
        .zip(scores.iter().copied())
        .collect();
    canon.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let vote = |idx: &mut dyn Iterator<Item = usize>| {
        weighted_vote(idx.map(|i| (canon[i].0, canon[i].1 as f64))).is_some_and(&is_correct)
    };
    if k == n {
        return Some(vote(&mut (0..n)) as u8 as f64);
    }
    let mut r = rng(seed, 0x77_6d616a);
    let subsets = subsets.max(1);
    let hits = (0..subsets)
        .filter(|_| vote(&mut rand::seq::index::sample(&mut r, n, k).into_iter()))
        .count();
    Some(hits as f64 / subsets as f64)
}

/// [`best_of_k_curve`] of candidates for `problems` problems, by `scores` (one per candidate).
pub fn best_of_k_of(
    candidates: &[Candidate],
    problems: usize,
    scores: &[f32],
    ks: &[usize],
) -> Vec<f64> {
    let correct: Vec<bool> = candidates.iter().map(|c| c.correct).collect();
    best_of_k_curve(&by_problem(candidates, problems), scores, &correct, ks)
}

/// [`pass_at_k_curve`] of candidates for `problems` problems.
pub fn pass_at_k_of(candidates: &[Candidate], problems: usize, ks: &[usize]) -> Vec<f64> {
    let correct: Vec<bool> = candidates.iter().map(|c| c.correct).collect();
    pass_at_k_curve(&by_problem(candidates, problems), &correct, ks)
}

/// [`majority_curve`] of candidates for `problems` problems, on their parsed answers.
pub fn majority_of(
    candidates: &[Candidate],
    problems: usize,
    is_right: impl Fn(usize, &str) -> bool,
    ks: &[usize],
    subsets: usize,
    seed: u64,
) -> Vec<f64> {
    let answers: Vec<Option<String>> = candidates.iter().map(|c| c.answer.clone()).collect();
    majority_curve(
        &by_problem(candidates, problems),
        &answers,
        is_right,
        ks,
        subsets,
        seed,
    )
}

/// The two references of every Best-of-k table, over the same candidates of `problems`:
/// majority vote@k on the parsed answers (right when they equal the problem's answer;
/// `subsets` random k-subsets per problem) and the oracle pass@k.
pub fn majority_and_oracle(
    candidates: &[Candidate],
    problems: &[TextProblem],
    ks: &[usize],
    subsets: usize,
    seed: u64,
) -> [Vec<f64>; 2] {
    let (n, right) = (problems.len(), |pi: usize, a: &str| {
        answers_equal(a, &problems[pi].answer)
    });
    [
        majority_of(candidates, n, right, ks, subsets, seed),
        pass_at_k_of(candidates, n, ks),
    ]
}

/// Weighted self-consistency@k over candidates for `problems`: for each `k`, the mean over
/// problems of [`weighted_majority_at_k`] (each candidate votes for its parsed answer with its
/// score; right when the winner equals the problem's answer), `subsets` random k-subsets per
/// problem, problem `p` seeded with `seed · 7919 + p`.
pub fn weighted_majority_of(
    candidates: &[Candidate],
    problems: &[TextProblem],
    scores: &[f32],
    ks: &[usize],
    subsets: usize,
    seed: u64,
) -> Vec<f64> {
    let groups = by_problem(candidates, problems.len());
    ks.iter()
        .map(|&k| {
            mean_of(groups.iter().enumerate().filter_map(|(p, g)| {
                let a: Vec<Option<String>> =
                    g.iter().map(|&i| candidates[i].answer.clone()).collect();
                let s: Vec<f32> = g.iter().map(|&i| scores[i]).collect();
                weighted_majority_at_k(
                    &a,
                    &s,
                    |x| answers_equal(x, &problems[p].answer),
                    k,
                    subsets,
                    seed.wrapping_mul(7919).wrapping_add(p as u64),
                )
            }))
        })
        .collect()
}

/// The AUROC of `scores` as a detector of the candidates' correctness.
pub fn auroc_of(candidates: &[Candidate], scores: &[f32]) -> Option<f64> {
    let labels: Vec<bool> = candidates.iter().map(|c| c.correct).collect();
    auroc(scores, &labels)
}

/// The AUROC within problems ([`auroc_within`], grouped by `Candidate::problem`) of `scores` as
/// a detector of the candidates' correctness.
pub fn auroc_within_of(candidates: &[Candidate], scores: &[f32]) -> Option<f64> {
    let labels: Vec<bool> = candidates.iter().map(|c| c.correct).collect();
    let groups: Vec<usize> = candidates.iter().map(|c| c.problem).collect();
    auroc_within(scores, &labels, &groups)
}

/// The AUROC within problems: the mean, over the groups (problems) that have both a positive
/// and a negative, of each group's own [`auroc`]; `None` when no group has both or the lengths
/// differ. This is what re-ranking a problem's candidates needs: unlike the pooled AUROC it is
/// blind to how scores compare across problems (a per-problem offset changes nothing).
pub fn auroc_within(scores: &[f32], labels: &[bool], groups: &[usize]) -> Option<f64> {
    if scores.len() != labels.len() || scores.len() != groups.len() {
        return None;
    }
    let mut by: std::collections::BTreeMap<usize, (Vec<f32>, Vec<bool>)> = Default::default();
    for ((&s, &l), &g) in scores.iter().zip(labels).zip(groups) {
        let e = by.entry(g).or_default();
        e.0.push(s);
        e.1.push(l);
    }
    let each: Vec<f64> = by.values().filter_map(|(s, l)| auroc(s, l)).collect();
    (!each.is_empty()).then(|| each.iter().sum::<f64>() / each.len() as f64)
}

/// The area under the ROC curve of `scores` as a detector of `labels` (true = positive): the
/// probability that a random positive scores above a random negative, ties counting ½
/// (the Mann–Whitney statistic). `None` without both a positive and a negative, or when the
/// lengths differ. NaN scores rank lowest.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(scores[a]).total_cmp(&key(scores[b])));
    // Sum of the positives' mid-ranks (1-based), ties sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && key(scores[order[j + 1]]) == key(scores[order[i]]) {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * order[i..=j].iter().filter(|&&o| labels[o]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ks_are_powers_of_two_up_to_n() {
        assert_eq!(ks(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(ks(5), vec![1, 2, 4]);
        assert!(ks(0).is_empty());
    }

    #[test]
    fn auroc_within_averages_the_problems_that_have_both_labels() {
        // Problem 0 ranks perfectly, problem 1 backwards, problem 2 has no negative.
        let scores = [0.9, 0.1, 0.2, 0.8, 0.5];
        let labels = [true, false, true, false, true];
        let groups = [0, 0, 1, 1, 2];
        assert_eq!(auroc_within(&scores, &labels, &groups), Some(0.5));
        // Pooled, problem 1's low scores count against problem 0's.
        assert_eq!(auroc(&scores, &labels), Some(4.0 / 6.0));
        assert_eq!(auroc_within(&[0.5], &[true], &[0]), None);
        assert_eq!(auroc_within(&[0.5, 0.4], &[true, false], &[0]), None);
    }

    #[test]
    fn auroc_of_perfect_reversed_and_tied_scores() {
        let labels = [true, true, false, false];
        assert_eq!(auroc(&[0.9, 0.8, 0.1, 0.2], &labels), Some(1.0));
        assert_eq!(auroc(&[0.1, 0.2, 0.9, 0.8], &labels), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(auroc(&[0.5, 0.4], &[true, true]), None);
    }

    #[test]
    fn weighted_vote_follows_the_weights() {
        let v = [
            (Some("3"), 0.2),
            (Some("3"), 0.2),
            (Some("4"), 0.9),
            (None, 5.0),
        ];
        assert_eq!(weighted_vote(v), Some("4"));
        let equal = [(Some("3"), 1.0), (Some("3"), 1.0), (Some("4"), 1.0)];
        assert_eq!(weighted_vote(equal), Some("3"));
        assert_eq!(
            weighted_vote([(Some("b"), 1.0), (Some("a"), 1.0)]),
            Some("a")
        );
    }

    #[test]
    fn weighted_majority_of_averages_the_problems() {
        use crate::verifier::tests::cand;
        let problem = |answer: &str| TextProblem {
            id: String::new(),
            prompt: String::new(),
            solution: String::new(),
            answer: answer.into(),
        };
        let problems = [problem("3"), problem("5")];
        // Problem 0: two votes for 3 (right) outweigh one confident 4; problem 1: one
        // confident 6 outweighs two unsure 5s.
        let c = vec![
            cand(0, Some("3"), true),
            cand(0, Some("3"), true),
            cand(0, Some("4"), false),
            cand(1, Some("5"), true),
            cand(1, Some("5"), true),
            cand(1, Some("6"), false),
        ];
        let scores = [0.4, 0.4, 0.7, 0.1, 0.1, 0.9];
        assert_eq!(
            weighted_majority_of(&c, &problems, &scores, &[3], 16, 0),
            vec![0.5]
        );
        let ones = [1.0; 6];
        assert_eq!(
            weighted_majority_of(&c, &problems, &ones, &[3], 16, 0),
            vec![1.0]
        );
    }

    proptest! {
        #[test]
        fn auroc_is_the_pairwise_definition(items in prop::collection::vec((0u8..5, any::<bool>()), 2..30)) {
            let scores: Vec<f32> = items.iter().map(|x| x.0 as f32).collect();
            let labels: Vec<bool> = items.iter().map(|x| x.1).collect();
            let (mut wins, mut pairs) = (0.0, 0.0);
            for (i, &li) in labels.iter().enumerate() {
                for (j, &lj) in labels.iter().enumerate() {
                    if li && !lj {
                        pairs += 1.0;
                        wins += if scores[i] > scores[j] { 1.0 } else if scores[i] == scores[j] { 0.5 } else { 0.0 };
                    }
                }
            }
            match auroc(&scores, &labels) {
                Some(a) => prop_assert!((a - wins / pairs).abs() < 1e-12, "{a} vs {}", wins / pairs),
                None => prop_assert_eq!(pairs, 0.0),
            }
        }

        #[test]
        fn auroc_within_ignores_per_problem_offsets(
            items in prop::collection::vec((0u8..5, any::<bool>(), 0usize..4), 2..30),
            offsets in prop::collection::vec(-100i32..100, 4),
        ) {
            let scores: Vec<f32> = items.iter().map(|x| x.0 as f32).collect();
            let labels: Vec<bool> = items.iter().map(|x| x.1).collect();
            let groups: Vec<usize> = items.iter().map(|x| x.2).collect();
            let shifted: Vec<f32> = items.iter().map(|x| x.0 as f32 + offsets[x.2] as f32).collect();
            prop_assert_eq!(auroc_within(&scores, &labels, &groups), auroc_within(&shifted, &labels, &groups));
            // One problem: the pooled AUROC.
            prop_assert_eq!(auroc_within(&scores, &labels, &vec![7; scores.len()]), auroc(&scores, &labels));
        }

        #[test]
        fn weighted_majority_with_equal_weights_is_majority(
            answers in prop::collection::vec(prop::option::of(0u8..3), 1..9), k in 1usize..9, seed in 0u64..100,
        ) {
            prop_assume!(k <= answers.len());
            let a: Vec<Option<String>> = answers.iter().map(|x| x.map(|v| v.to_string())).collect();
            let ones = vec![1.0f32; a.len()];
            let right = |x: &str| x == "1";
            if k == a.len() {
                prop_assert_eq!(
                    weighted_majority_at_k(&a, &ones, right, k, 64, seed),
                    majority_at_k(&a, right, k, 64, seed)
                );
            }
            let w = weighted_majority_at_k(&a, &ones, right, k, 64, seed).unwrap();
            // With k-subsets the estimate is a frequency over 64 draws.
            prop_assert!((w * 64.0 - (w * 64.0).round()).abs() < 1e-9);
        }

        #[test]
        fn curves_average_the_per_problem_definitions(
            sizes in prop::collection::vec(1usize..6, 1..5), seed in 0u64..1000,
        ) {
            let mut r = rng(seed, 1);
            let mut groups = Vec::new();
            let (mut scores, mut correct) = (Vec::new(), Vec::new());
            for &s in &sizes {
                let start = scores.len();
                for _ in 0..s {
                    scores.push(rand::Rng::random_range(&mut r, 0..4) as f32);
                    correct.push(rand::Rng::random_bool(&mut r, 0.5));
                }
                groups.push((start..start + s).collect::<Vec<_>>());
            }
            let k = ks(6);
            let curve = best_of_k_curve(&groups, &scores, &correct, &k);
            let pass = pass_at_k_curve(&groups, &correct, &k);
            for (i, &kk) in k.iter().enumerate() {
                let per: Vec<f64> = groups.iter().filter_map(|g| {
                    let s: Vec<f32> = g.iter().map(|&j| scores[j]).collect();
                    let c: Vec<bool> = g.iter().map(|&j| correct[j]).collect();
                    best_of_k(&s, &c, kk)
                }).collect();
                let expected = per.iter().sum::<f64>() / per.len().max(1) as f64;
                prop_assert!((curve[i] - expected).abs() < 1e-12);
                // An oracle verifier (score = correctness) attains pass@k.
                let oracle: Vec<f32> = correct.iter().map(|&c| c as u8 as f32).collect();
                let best = best_of_k_curve(&groups, &oracle, &correct, &[kk])[0];
                prop_assert!((best - pass[i]).abs() < 1e-9, "{best} vs {}", pass[i]);
            }
        }
    }
}
