//! The [`RewardModel`] trait and [`RewardSpec`], what a recipe's `[reward_model]` table builds
//! (a programmatic reward, or a fitter that trains one).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fit::{FitCx, Fitted};
use crate::lm::Llama;
use crate::policy::Sequence;
use crate::tasks::{TextProblem, TextTask};
use crate::verifier::Candidate;

/// A scalar reward for a completion of a problem: learned (a Bradley–Terry head read at EOS)
/// or programmatic (a task's gold reward).
///
/// # Example
///
/// ```
/// use lmlab_sdk::RewardModel;
/// use lmlab_sdk::tasks::TextProblem;
/// use lmlab_sdk::verifier::Candidate;
///
/// /// Prefers short responses: reward = −(tokens) / 10.
/// struct Brevity;
///
/// impl RewardModel for Brevity {
///     fn rewards(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
///         Ok(candidates.iter().map(|c| -(c.completion.token_ids.len() as f32) / 10.0).collect())
///     }
/// }
/// # let _ = Brevity;
/// ```
pub trait RewardModel: Send + Sync {
    /// One reward per candidate; `problems[c.problem]` is candidate `c`'s problem.
    fn rewards(
        &self,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Vec<f32>>;

    /// Rewards of bare sequences, for models that need no problem (learned ones).
    fn score_sequences(&self, _seqs: &[Sequence]) -> Option<anyhow::Result<Vec<f32>>> {
        None
    }

    /// A trainable copy of the model behind a learned reward on `device`, value head
    /// included: how PPO's critic starts. `None` for programmatic rewards.
    fn critic(&self, _device: &burn::tensor::Device) -> Option<anyhow::Result<Llama>> {
        None
    }
}

/// A preference pair as token ids: the prompt, the preferred and the other response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl Preference {
    pub fn chosen(&self) -> Sequence {
        Sequence::new(self.prompt.clone(), self.chosen.clone())
    }

    pub fn rejected(&self) -> Sequence {
        Sequence::new(self.prompt.clone(), self.rejected.clone())
    }
}

/// What a recipe's reward-model table builds: a programmatic reward, or a fitter trained from
/// the policy in the [`FitCx`] on preference pairs (and normalised on reference responses).
pub trait RewardSpec: Send + Sync {
    /// How it is called in tables.
    fn label(&self) -> String;

    /// Whether it trains.
    fn fitted(&self) -> bool {
        false
    }

    /// The reward model, trained when it is fitted. `task` gives the gold reward.
    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        task: &Arc<TextTask>,
        preferences: &[Preference],
        references: &[Sequence],
    ) -> anyhow::Result<Fitted<dyn RewardModel>>;
}
