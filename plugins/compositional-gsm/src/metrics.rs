//! The paper's measurements, as pure functions of per-pair outcomes.
//!
//! - `S1`: accuracy on the Q1 set; `S2`: on the standalone (modified) Q2 set; `S_comp`: on the
//!   pairs, right only when the final (Q2) answer is.
//! - **Δ = S_comp − S1 · S2.** The paper reports the *reasoning gap* as −Δ; our tables say
//!   which sign they show.
//! - **Distraction:** Q1's accuracy alone (`S1`) against inside the pair (the `The Q1 answer
//!   is` line of the composed answer).
//! - **Second hop:** Q2's accuracy given Q1 was right in the pair, against `S2`.
//! - **Control:** the pair with X written as its value (Q1 present, nothing to carry over),
//!   against `S2`.
//! - **Fréchet bounds:** whatever the dependence between Q1 and Q2 being right,
//!   `max(0, S1 + S2 − 1) ≤ P(Q1 ∧ Q2 right) ≤ min(S1, S2)`; so a composition that is right
//!   exactly when both are has `max(0, S1 + S2 − 1) − S1·S2 ≤ Δ ≤ min(S1, S2) − S1·S2`, and one
//!   right no more often than both keeps the upper bound.

use serde::{Deserialize, Serialize};

/// What one pair's four prompts got right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Q1 alone.
    pub q1: bool,
    /// The standalone Q2 alone.
    pub q2: bool,
    /// The pair (its final answer).
    pub comp: bool,
    /// Q1's answer inside the pair.
    pub comp_q1: bool,
    /// The control: the pair with X given as a number.
    pub control: bool,
}

/// The measurements over a set of pairs (fractions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub pairs: usize,
    pub s1: f64,
    pub s2: f64,
    pub s_comp: f64,
    /// S_comp − S1·S2.
    pub delta: f64,
    /// P(Q1 right alone and Q2 right alone), over the same pairs.
    pub both: f64,
    /// Q1's accuracy inside the pair.
    pub s1_in_pair: f64,
    /// P(pair right | Q1 right inside it); `None` when Q1 was never right inside a pair.
    pub s2_given_q1: Option<f64>,
    /// The control's accuracy.
    pub control: f64,
}

impl Scores {
    /// Distraction: `S1 − S1 in the pair` (positive: Q1 suffers from the pair's context).
    pub fn distraction(&self) -> f64 {
        self.s1 - self.s1_in_pair
    }

    /// Second hop: `S2 − P(Q2 right | Q1 right in the pair)` (positive: using X costs).
    pub fn second_hop(&self) -> Option<f64> {
        self.s2_given_q1.map(|c| self.s2 - c)
    }

    /// Control gap: `S2 − control` (positive: Q1's presence alone costs Q2).
    pub fn control_gap(&self) -> f64 {
        self.s2 - self.control
    }
}

fn rate(outcomes: &[Outcome], f: impl Fn(&Outcome) -> bool) -> f64 {
    if outcomes.is_empty() {
        return 0.0;
    }
    outcomes.iter().filter(|o| f(o)).count() as f64 / outcomes.len() as f64
}

/// The measurements of `outcomes`.
pub fn scores(outcomes: &[Outcome]) -> Scores {
    let (s1, s2, s_comp) = (
        rate(outcomes, |o| o.q1),
        rate(outcomes, |o| o.q2),
        rate(outcomes, |o| o.comp),
    );
    let q1_in: Vec<Outcome> = outcomes.iter().copied().filter(|o| o.comp_q1).collect();
    Scores {
        pairs: outcomes.len(),
        s1,
        s2,
        s_comp,
        delta: s_comp - s1 * s2,
        both: rate(outcomes, |o| o.q1 && o.q2),
        s1_in_pair: rate(outcomes, |o| o.comp_q1),
        s2_given_q1: (!q1_in.is_empty()).then(|| rate(&q1_in, |o| o.comp)),
        control: rate(outcomes, |o| o.control),
    }
}

/// The Fréchet bounds on Δ for a composition right exactly when both parts are:
/// `(max(0, S1 + S2 − 1) − S1·S2, min(S1, S2) − S1·S2)`.
pub fn frechet_bounds(s1: f64, s2: f64) -> (f64, f64) {
    ((s1 + s2 - 1.0).max(0.0) - s1 * s2, s1.min(s2) - s1 * s2)
}

/// The standard error of Δ under independence (`S_comp` a proportion around `S1·S2`), over
/// `n` pairs.
pub fn delta_se(s1: f64, s2: f64, n: usize) -> f64 {
    let p = s1 * s2;
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmlab_sdk::rng::rng;
    use proptest::prelude::*;
    use rand::Rng as _;

    fn outcome(bits: u8) -> Outcome {
        Outcome {
            q1: bits & 1 != 0,
            q2: bits & 2 != 0,
            comp: bits & 4 != 0,
            comp_q1: bits & 8 != 0,
            control: bits & 16 != 0,
        }
    }

    proptest! {
        /// Δ within the Fréchet bounds when the composition is right exactly when both parts
        /// are, and under the upper bound when it is right no more often.
        #[test]
        fn delta_lies_within_the_frechet_bounds(bits in prop::collection::vec(0u8..32, 1..200)) {
            let raw: Vec<Outcome> = bits.iter().map(|&b| outcome(b)).collect();
            let exact: Vec<Outcome> = raw.iter().map(|o| Outcome { comp: o.q1 && o.q2, ..*o }).collect();
            let s = scores(&exact);
            let (lo, hi) = frechet_bounds(s.s1, s.s2);
            prop_assert!((s.s_comp - s.both).abs() < 1e-12);
            prop_assert!(lo - 1e-12 <= s.delta && s.delta <= hi + 1e-12, "{lo} ≤ {} ≤ {hi}", s.delta);
            // Right at most when both are: the upper bound still holds.
            let fewer: Vec<Outcome> = raw.iter().map(|o| Outcome { comp: o.comp && o.q1 && o.q2, ..*o }).collect();
            let f = scores(&fewer);
            prop_assert!(f.s_comp <= f.both + 1e-12);
            prop_assert!(f.delta <= frechet_bounds(f.s1, f.s2).1 + 1e-12);
        }

        /// The analyses are their definitions: counts over the outcomes.
        #[test]
        fn analyses_count_what_they_define(bits in prop::collection::vec(0u8..32, 1..100)) {
            let o: Vec<Outcome> = bits.iter().map(|&b| outcome(b)).collect();
            let s = scores(&o);
            let n = o.len() as f64;
            let count = |f: &dyn Fn(&Outcome) -> bool| o.iter().filter(|x| f(x)).count() as f64;
            prop_assert_eq!(s.s1, count(&|x| x.q1) / n);
            prop_assert_eq!(s.delta, count(&|x| x.comp) / n - (count(&|x| x.q1) / n) * (count(&|x| x.q2) / n));
            prop_assert_eq!(s.distraction(), s.s1 - count(&|x| x.comp_q1) / n);
            let k = count(&|x| x.comp_q1);
            prop_assert_eq!(s.s2_given_q1, (k > 0.0).then(|| count(&|x| x.comp_q1 && x.comp) / k));
            prop_assert_eq!(s.control_gap(), s.s2 - count(&|x| x.control) / n);
        }

        /// Independent answers: the composition right exactly when two independent draws are
        /// gives Δ ≈ 0, within 4 standard errors.
        #[test]
        fn independence_gives_no_gap(p1 in 0.05f64..0.95, p2 in 0.05f64..0.95, seed in 0u64..1000) {
            let mut r = rng(seed, 0);
            let n = 20_000;
            let o: Vec<Outcome> = (0..n).map(|_| {
                let (a, b) = (r.random_bool(p1), r.random_bool(p2));
                Outcome { q1: a, q2: b, comp: a && b, ..Default::default() }
            }).collect();
            let s = scores(&o);
            let se = delta_se(s.s1, s.s2, n);
            prop_assert!(s.delta.abs() <= 4.0 * se, "Δ = {} with SE {se}", s.delta);
        }
    }

    #[test]
    fn a_dependent_composition_shows_a_gap() {
        // Q2 is right only when Q1 is wrong: P(both) = 0, Δ = −S1·S2 = the lower bound.
        let o: Vec<Outcome> = (0..100)
            .map(|i| {
                let a = i < 40;
                Outcome {
                    q1: a,
                    q2: !a,
                    comp: false,
                    ..Default::default()
                }
            })
            .collect();
        let s = scores(&o);
        assert!((s.delta + 0.4 * 0.6).abs() < 1e-12);
        assert!((frechet_bounds(0.4, 0.6).0 + 0.24).abs() < 1e-12);
        assert_eq!(scores(&[]).pairs, 0);
    }
}
