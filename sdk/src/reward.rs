//! The [`RewardModel`] trait.

/// A scalar reward for (prompt, response): learned (a Bradley–Terry head read at EOS) or
/// programmatic (a gold function).
///
/// # Example
///
/// ```
/// use lmlab_sdk::RewardModel;
///
/// /// Prefers short responses: reward = −(characters) / 10.
/// struct Brevity;
///
/// impl RewardModel for Brevity {
///     fn rewards(&self, _prompts: &[String], responses: &[String]) -> anyhow::Result<Vec<f32>> {
///         Ok(responses.iter().map(|r| -(r.chars().count() as f32) / 10.0).collect())
///     }
/// }
///
/// let r = Brevity.rewards(&["q".into(), "q".into()], &["ok".into(), "a long answer".into()]).unwrap();
/// assert!(r[0] > r[1]);
/// ```
pub trait RewardModel: Send + Sync {
    /// One reward per `(prompts[i], responses[i])`.
    fn rewards(&self, prompts: &[String], responses: &[String]) -> anyhow::Result<Vec<f32>>;
}
