//! Trees induced by a model's pointer, and unlabeled bracket F1 against the gold trees.
//!
//! Ordered Memory's pointer `d_t = argmax_i p_t^i` says how far up the memory the structure
//! read so far is reduced before token `t` is placed just below: [`induce_spans`] turns the
//! distances into a binary tree by that greedy bracketing (the reference code's `build_tree`),
//! and [`BracketScore`] scores its spans as EVALB does (unlabeled, multiset matching,
//! micro-averaged over the corpus, the whole-sentence bracket included).

/// The spans (half-open, at least two tokens, the root included) of the binary tree that the
/// distances `d` (one per token; `d[0]` is ignored and taken as the root level `n_slots`)
/// induce over `d.len()` tokens.
pub fn induce_spans(d: &[usize], n_slots: usize) -> Vec<(usize, usize)> {
    let n = d.len();
    let mut spans = Vec::new();
    if n < 2 {
        return spans;
    }
    // The stack holds the start of each subtree; a subtree ends where the next one starts.
    let mut stack: Vec<usize> = vec![0];
    let mut head = n_slots as i64 - 1;
    for (t, &point) in d.iter().enumerate().skip(1) {
        let reduce = point as i64 - head;
        for _ in 0..reduce.max(0) {
            if stack.len() == 1 {
                break;
            }
            stack.pop();
            spans.push((*stack.last().expect("two on the stack"), t));
        }
        stack.push(t);
        head = point as i64 - 1;
    }
    while stack.len() > 1 {
        stack.pop();
        spans.push((*stack.last().expect("two on the stack"), n));
    }
    spans.sort_unstable();
    spans
}

/// The left-branching tree over `n` tokens: `((((a b) c) d) e)`.
pub fn left_branching(n: usize) -> Vec<(usize, usize)> {
    (2..=n).map(|k| (0, k)).collect()
}

/// The right-branching tree over `n` tokens: `(a (b (c (d e))))`.
pub fn right_branching(n: usize) -> Vec<(usize, usize)> {
    (0..n.saturating_sub(1)).map(|k| (k, n)).collect()
}

/// Matched, predicted and gold bracket counts over a corpus.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BracketScore {
    pub matched: usize,
    pub predicted: usize,
    pub gold: usize,
}

impl BracketScore {
    /// Adds one sentence (spans as multisets: a span matches at most one equal span).
    pub fn add(&mut self, predicted: &[(usize, usize)], gold: &[(usize, usize)]) {
        let mut g = gold.to_vec();
        g.sort_unstable();
        let mut used = vec![false; g.len()];
        for s in predicted {
            if let Some(i) = (0..g.len()).find(|&i| !used[i] && g[i] == *s) {
                used[i] = true;
                self.matched += 1;
            }
        }
        self.predicted += predicted.len();
        self.gold += gold.len();
    }

    /// `2PR/(P+R)`, or `None` when nothing was predicted or there is no gold bracket.
    pub fn f1(&self) -> Option<f64> {
        if self.predicted == 0 || self.gold == 0 {
            return None;
        }
        let p = self.matched as f64 / self.predicted as f64;
        let r = self.matched as f64 / self.gold as f64;
        Some(if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn left_branching_distances_rebuild_the_gold_tree() {
        // `[MAX 2 9 ]`, gold ((([MAX 2) 9) ]), with 10 slots. The pointer of token 2 is forced
        // to the root (slot 9); pointing at the root again for `9` and `]` reduces once each.
        let spans = induce_spans(&[10, 9, 9, 9], 10);
        assert_eq!(spans, vec![(0, 2), (0, 3), (0, 4)]);
        // Moving one slot down per token never reduces: everything closes at the end.
        let spans = induce_spans(&[10, 9, 8, 7], 10);
        assert_eq!(spans, vec![(0, 4), (1, 4), (2, 4)]);
    }

    proptest! {
        #[test]
        fn any_distances_give_a_full_binary_tree(d in proptest::collection::vec(0usize..12, 1..40)) {
            let spans = induce_spans(&d, 12);
            let n = d.len();
            prop_assert_eq!(spans.len(), n.saturating_sub(1), "a binary tree over n leaves has n−1 brackets");
            if n >= 2 { prop_assert!(spans.contains(&(0, n))); }
            // Brackets nest or are disjoint.
            for a in &spans { for b in &spans {
                let disjoint = a.1 <= b.0 || b.1 <= a.0;
                let nested = (a.0 <= b.0 && b.1 <= a.1) || (b.0 <= a.0 && a.1 <= b.1);
                prop_assert!(disjoint || nested, "{:?} crosses {:?}", a, b);
            }}
        }

        #[test]
        fn f1_of_a_tree_against_itself_is_one(d in proptest::collection::vec(0usize..12, 2..40)) {
            let spans = induce_spans(&d, 12);
            let mut s = BracketScore::default();
            s.add(&spans, &spans);
            prop_assert_eq!(s.f1(), Some(1.0));
        }
    }

    #[test]
    fn branching_baselines_are_binary_trees() {
        assert_eq!(left_branching(4), vec![(0, 2), (0, 3), (0, 4)]);
        assert_eq!(right_branching(4), vec![(0, 4), (1, 4), (2, 4)]);
        assert_eq!(left_branching(1), vec![]);
        assert_eq!(right_branching(1), vec![]);
    }

    #[test]
    fn f1_counts_matches_as_multisets() {
        let mut s = BracketScore::default();
        s.add(&[(0, 2), (0, 2), (0, 4)], &[(0, 2), (0, 4), (2, 4)]);
        assert_eq!((s.matched, s.predicted, s.gold), (2, 3, 3));
        assert!((s.f1().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(BracketScore::default().f1(), None);
    }
}
