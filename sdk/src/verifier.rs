//! The [`Verifier`] trait.

/// A score meant to rank the candidate solutions of one problem: higher means more likely
/// correct. Oracle checkers, outcome reward models, DPO verifiers and generative verifiers all
/// implement it, so Best-of-k code never cares which one it has.
///
/// # Example
///
/// ```
/// use lmlab_sdk::Verifier;
///
/// /// Scores 1 when the candidate's final answer (after `####`) is the known one.
/// struct Oracle { answer: String }
///
/// impl Verifier for Oracle {
///     fn scores(&self, _problem: &str, candidates: &[String]) -> anyhow::Result<Vec<f32>> {
///         Ok(candidates.iter().map(|c| {
///             let last = c.rsplit("####").next().unwrap_or("").trim();
///             (last == self.answer) as u8 as f32
///         }).collect())
///     }
/// }
///
/// let v = Oracle { answer: "4".into() };
/// let s = v.scores("2+2?", &["2+2=4 #### 4".into(), "#### 5".into()]).unwrap();
/// assert_eq!(s, vec![1.0, 0.0]);
/// ```
pub trait Verifier: Send + Sync {
    /// One score per candidate for `problem`.
    fn scores(&self, problem: &str, candidates: &[String]) -> anyhow::Result<Vec<f32>>;
}
