//! Reasoning metrics over sampled candidates: pass@k, Best-of-k (Verifier@k) and majority
//! vote@k. Pure functions of numbers, property-tested against their definitions.

use std::collections::BTreeMap;

use rand::seq::index::sample;

use crate::rng::rng;

/// The mean and the sample standard deviation (`n − 1` in the denominator; 0 for fewer than
/// two values) of `xs`: how recipes report a metric over seeds. An empty slice gives `(0, 0)`.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

/// The median of `xs` (the mean of the two middle values for an even count; NaN-free input;
/// 0 for an empty slice): how benches summarise repeated timings.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// pass@k, the unbiased estimator of Chen et al. (2021): with `n` samples of which `c` are
/// correct, the probability that a random `k`-subset holds at least one correct sample,
///
/// ```text
/// pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)
/// ```
///
/// computed in the product form (no factorials, stable for any `n`). It is 1 when
/// `n − c < k`. Needs `1 ≤ k ≤ n` and `c ≤ n`; returns `None` otherwise.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let fail: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    Some(1.0 - fail)
}

/// The order in which Best-of-k ranks candidates: score descending; among equal scores (and
/// NaN, which ranks last) the lower index first. Deterministic, and independent of how the
/// sort is implemented.
pub fn rank_by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x).then(a.cmp(&b)),
        }
    });
    order
}

/// Best-of-k, V-STaR's Verifier@k (Hosseini et al., 2024, Eq. 2): the expected correctness of
/// the top-scored candidate of a uniformly random `k`-subset of the `N` candidates. With the
/// candidates sorted by score descending ([`rank_by_score`]) and `α_i` the correctness of the
/// `i`-th,
///
/// ```text
/// V@k = Σ_{i=0}^{N−k} C(N−i−1, k−1) · α_i / C(N, k)
/// ```
///
/// (candidate `i` is the subset's top exactly when the subset holds it and `k−1` of the
/// `N−i−1` candidates ranked below it). The weights are computed as a running product:
/// `w_0 = k/N`, `w_{i+1} = w_i · (N−i−k)/(N−i−1)`. Needs `1 ≤ k ≤ N = scores.len() =
/// correct.len()`; returns `None` otherwise.
pub fn best_of_k(scores: &[f32], correct: &[bool], k: usize) -> Option<f64> {
    let n = scores.len();
    if k == 0 || k > n || correct.len() != n {
        return None;
    }
    let order = rank_by_score(scores);
    let mut w = k as f64 / n as f64;
    let mut total = 0.0;
    for (i, &idx) in order.iter().enumerate().take(n - k + 1) {
        if correct[idx] {
            total += w;
        }
        if i + 1 < n {
            w *= (n - i - k) as f64 / (n - i - 1) as f64;
        }
    }
    Some(total.clamp(0.0, 1.0))
}

/// The most frequent answer among `answers` (`None` entries, unparseable answers, do not
/// vote). Ties go to the smallest answer string, so the result depends only on the multiset.
pub fn majority_vote<'a>(answers: impl IntoIterator<Item = Option<&'a str>>) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers.into_iter().flatten() {
        *counts.entry(a).or_default() += 1;
    }
    // BTreeMap iterates in ascending order; keep the first of the highest count.
    counts
        .into_iter()
        .fold(None, |best: Option<(&str, usize)>, (a, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((a, n)),
        })
        .map(|(a, _)| a)
}

/// Majority vote@k: the fraction of `subsets` uniformly random `k`-subsets of the candidates
/// whose [`majority_vote`] answer is correct (`is_correct`). The candidates are put in a
/// canonical order (by answer) before subsets are drawn with `seed`, so the value is invariant
/// to permuting the candidates. With `k = N` it is exact (one subset: all candidates). Needs
/// `1 ≤ k ≤ N`; returns `None` otherwise.
pub fn majority_at_k(
    answers: &[Option<String>],
    is_correct: impl Fn(&str) -> bool,
    k: usize,
    subsets: usize,
    seed: u64,
) -> Option<f64> {
    let n = answers.len();
    if k == 0 || k > n {
        return None;
    }
    let mut canon: Vec<Option<&str>> = answers.iter().map(|a| a.as_deref()).collect();
    canon.sort_unstable();
    if k == n {
        return Some(majority_vote(canon.iter().copied()).is_some_and(&is_correct) as u8 as f64);
    }
    let mut r = rng(seed, 0x6d616a);
    let subsets = subsets.max(1);
    let hits = (0..subsets)
        .filter(|_| {
            let idx = sample(&mut r, n, k);
            majority_vote(idx.iter().map(|i| canon[i])).is_some_and(&is_correct)
        })
        .count();
    Some(hits as f64 / subsets as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
    use proptest::prelude::*;

    /// All k-subsets of 0..n.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n)
            .filter(|m| m.count_ones() as usize == k)
            .map(|m| (0..n).filter(|i| m >> i & 1 == 1).collect())
            .collect()
    }

    fn labels() -> impl Strategy<Value = Vec<bool>> {
        prop::collection::vec(any::<bool>(), 1..=10)
    }

    proptest! {
        #[test]
        fn pass_at_k_definition(correct in labels(), k in 1usize..=10) {
            let n = correct.len();
            prop_assume!(k <= n);
            let c = correct.iter().filter(|&&x| x).count();
            let p = pass_at_k(n, c, k).unwrap();
            prop_assert!((0.0..=1.0).contains(&p));
            let all = subsets(n, k);
            let brute = all.iter().filter(|s| s.iter().any(|&i| correct[i])).count() as f64 / all.len() as f64;
            prop_assert!((p - brute).abs() < 1e-12, "{p} vs {brute}");
            if k == 1 {
                prop_assert!((p - c as f64 / n as f64).abs() < 1e-12);
            }
            if n - c < k {
                prop_assert_eq!(p, 1.0);
            }
            if k < n {
                prop_assert!(pass_at_k(n, c, k + 1).unwrap() >= p - 1e-12);
            }
            if c < n {
                prop_assert!(pass_at_k(n, c + 1, k).unwrap() >= p - 1e-12);
            }
        }

        #[test]
        fn pass_at_k_is_stable_for_large_n(n in 1usize..5000, c_frac in 0.0f64..=1.0, k_frac in 0.0f64..=1.0) {
            let c = (c_frac * n as f64) as usize;
            let k = ((k_frac * n as f64) as usize).clamp(1, n);
            let p = pass_at_k(n, c, k).unwrap();
            prop_assert!(p.is_finite() && (0.0..=1.0).contains(&p));
        }

        #[test]
        fn best_of_k_definition(
            items in prop::collection::vec((0u8..4, any::<bool>()), 1..=10),
            k in 1usize..=10,
        ) {
            let n = items.len();
            prop_assume!(k <= n);
            // Small integer scores, so ties happen.
            let scores: Vec<f32> = items.iter().map(|x| x.0 as f32).collect();
            let correct: Vec<bool> = items.iter().map(|x| x.1).collect();
            let v = best_of_k(&scores, &correct, k).unwrap();
            let rank = rank_by_score(&scores);
            let pos: Vec<usize> = {
                let mut p = vec![0; n];
                for (r, &i) in rank.iter().enumerate() { p[i] = r; }
                p
            };
            let all = subsets(n, k);
            let brute = all.iter().filter(|s| {
                let top = *s.iter().min_by_key(|&&i| pos[i]).unwrap();
                correct[top]
            }).count() as f64 / all.len() as f64;
            prop_assert!((v - brute).abs() < 1e-12, "{v} vs {brute}");
            let c = correct.iter().filter(|&&x| x).count();
            let mean = c as f64 / n as f64;
            if k == 1 {
                prop_assert!((v - mean).abs() < 1e-12);
            }
            if k == n {
                prop_assert_eq!(v, correct[rank[0]] as u8 as f64);
            }
            prop_assert!(v <= pass_at_k(n, c, k).unwrap() + 1e-12);
            if c == n {
                prop_assert!((v - 1.0).abs() < 1e-12);
            }
        }

        #[test]
        fn majority_is_permutation_invariant(
            answers in prop::collection::vec(prop::option::of(0u8..5), 1..=16),
            k_frac in 0.0f64..=1.0,
            shuffle_seed in any::<u64>(),
        ) {
            let answers: Vec<Option<String>> = answers.into_iter().map(|a| a.map(|x| x.to_string())).collect();
            let n = answers.len();
            let k = ((k_frac * n as f64) as usize).clamp(1, n);
            let mut shuffled = answers.clone();
            rand::seq::SliceRandom::shuffle(&mut shuffled[..], &mut rng(shuffle_seed, 0));
            let ok = |a: &str| a == "2";
            let a = majority_at_k(&answers, ok, k, 64, 3).unwrap();
            let b = majority_at_k(&shuffled, ok, k, 64, 3).unwrap();
            prop_assert_eq!(a, b);
            prop_assert!((0.0..=1.0).contains(&a));
            prop_assert_eq!(
                majority_vote(answers.iter().map(|a| a.as_deref())),
                majority_vote(shuffled.iter().map(|a| a.as_deref()))
            );
        }
    }

    #[test]
    fn majority_counts_and_breaks_ties_by_answer() {
        assert_eq!(
            majority_vote([Some("3"), Some("5"), Some("5"), None, None, None]),
            Some("5")
        );
        assert_eq!(majority_vote([Some("7"), Some("3")]), Some("3"));
        assert_eq!(majority_vote([None, None]), None);
        let answers = vec![Some("4".to_string()), Some("4".into()), Some("1".into())];
        assert_eq!(majority_at_k(&answers, |a| a == "4", 3, 1, 0), Some(1.0));
        assert_eq!(majority_at_k(&answers, |a| a == "4", 4, 1, 0), None);
    }

    #[test]
    fn out_of_range_arguments_give_none() {
        assert_eq!(pass_at_k(3, 4, 1), None);
        assert_eq!(pass_at_k(3, 1, 0), None);
        assert_eq!(best_of_k(&[1.0], &[true, false], 1), None);
        assert_eq!(best_of_k(&[], &[], 1), None);
    }

    #[test]
    fn nan_scores_rank_last() {
        assert_eq!(rank_by_score(&[f32::NAN, 1.0, 2.0, 2.0]), vec![2, 3, 1, 0]);
        assert_eq!(best_of_k(&[f32::NAN, 0.0], &[false, true], 2), Some(1.0));
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        assert_eq!(mean_std(&[]), (0.0, 0.0));
    }
}
