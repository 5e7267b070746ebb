//! Standard reward models, each a recipe table (`[reward_model] use = "…"`):
//!
//! - `gold`: the task's programmatic reward ([`Task::reward`](crate::Task::reward));
//! - `bradley-terry` (fitted): the handed-over policy plus a scalar head read at the last token
//!   (EOS), trained on preference pairs with the `bradley-terry` objective; its mean score on
//!   reference responses is subtracted, so a reference scores 0 on average. Its
//!   [`critic`](RewardModel::critic) is the model itself, value head included, with the same
//!   bias subtracted: PPO's critic starts there, its first values the normalised rewards.

use burn::module::Module;
use std::sync::Arc;

use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fit::{FitCx, FitOptions, Fitted, fit};
use crate::lm::Llama;
use crate::lm::fit::final_values;
use crate::policy::Sequence;
use crate::registry::{ConfigError, InlineObjective};
use crate::reward::{Preference, RewardModel, RewardSpec};
use crate::tasks::{TextProblem, TextTask};
use crate::train::{LrSchedule, OptimConfig, Stage, Trainer};
use crate::verifier::Candidate;
use crate::verifiers::ValueHead;
use crate::{Objective, TensorMap};

/// The task's programmatic reward.
pub struct Gold {
    pub task: Arc<TextTask>,
}

impl RewardModel for Gold {
    fn rewards(
        &self,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Vec<f32>> {
        candidates
            .iter()
            .map(|c| {
                let p = problems.get(c.problem).ok_or_else(|| {
                    anyhow::anyhow!("candidate of problem {} of {}", c.problem, problems.len())
                })?;
                self.task
                    .reward(p, &c.completion.text, c.completion.finished)
                    .ok_or_else(|| {
                        anyhow::anyhow!("the task defines no gold reward (reward model `gold`)")
                    })
            })
            .collect()
    }
}

/// `gold` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoldConfig {}

struct GoldSpec;

impl RewardSpec for GoldSpec {
    fn label(&self) -> String {
        "gold reward".into()
    }
    fn fit(
        &self,
        _: &mut FitCx<'_>,
        task: &Arc<TextTask>,
        _: &[Preference],
        _: &[Sequence],
    ) -> anyhow::Result<Fitted<dyn RewardModel>> {
        Ok(Fitted::fixed(Box::new(Gold { task: task.clone() })))
    }
}

crate::register_component! {
    kind: RewardModel,
    name: "gold",
    description: "the task's programmatic (gold) reward",
    config: GoldConfig,
    build: |_c: GoldConfig, _ctx| Ok(Box::new(GoldSpec) as Box<dyn RewardSpec>),
}

/// A learned reward: a value head read at the last token, minus a bias.
pub struct Learned {
    pub head: ValueHead,
    /// Subtracted from every score (the mean on reference responses).
    pub bias: f32,
}

impl Learned {
    /// The scores of sequences, bias removed.
    pub fn score(&self, seqs: &[Sequence]) -> anyhow::Result<Vec<f32>> {
        Ok(self
            .head
            .values(seqs)?
            .into_iter()
            .map(|x| x - self.bias)
            .collect())
    }
}

impl RewardModel for Learned {
    fn rewards(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        let seqs: Vec<Sequence> = candidates.iter().map(|c| c.completion.sequence()).collect();
        self.score(&seqs)
    }

    fn score_sequences(&self, seqs: &[Sequence]) -> Option<anyhow::Result<Vec<f32>>> {
        Some(self.score(seqs))
    }

    /// The reward model itself, its value head's bias lowered by [`bias`](Self::bias): the
    /// critic starts out predicting the normalised rewards it will fit, not the raw scores.
    fn critic(&self, device: &burn::tensor::Device) -> Option<anyhow::Result<Llama>> {
        Some(
            self.head
                .model
                .trainable_copy(device)
                .map(|mut m| {
                    m.offset_value(-self.bias);
                    m
                })
                .map_err(|e| anyhow::anyhow!(e)),
        )
    }
}

/// Configuration of `bradley-terry`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BradleyTerryConfig {
    /// The preference loss, inline (`{ use = "bradley-terry" }`).
    pub objective: InlineObjective,
    pub steps: u64,
    /// Preference pairs per step.
    pub batch_size: usize,
    pub optim: OptimConfig,
    /// Subtract the mean score of this many reference responses (0: no normalisation).
    pub bias_references: usize,
    /// Sequences scored per forward pass.
    pub batch: usize,
}

impl Default for BradleyTerryConfig {
    fn default() -> Self {
        Self {
            objective: InlineObjective::named("bradley-terry"),
            steps: 400,
            batch_size: 32,
            optim: OptimConfig {
                lr: 5e-4,
                weight_decay: 0.01,
                warmup_steps: 20,
                schedule: LrSchedule::Cosine,
                min_lr_ratio: 0.1,
                ..OptimConfig::default()
            },
            bias_references: 512,
            batch: 128,
        }
    }
}

/// What `bradley-terry` hands its objective.
pub const BT_INPUTS: &[&str] = &["chosen", "rejected"];

struct BradleyTerrySpec {
    objective: Box<dyn Objective>,
    stage: Stage,
    bias_references: usize,
    batch: usize,
}

impl RewardSpec for BradleyTerrySpec {
    fn label(&self) -> String {
        "Bradley–Terry reward model".into()
    }

    fn fitted(&self) -> bool {
        true
    }

    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        _: &Arc<TextTask>,
        prefs: &[Preference],
        references: &[Sequence],
    ) -> anyhow::Result<Fitted<dyn RewardModel>> {
        let st = &self.stage;
        let device = cx.init.device.clone();
        let pad = cx.init.tokenizer.pad();
        let model = cx.init.model.clone().with_value_head(cx.rng, &device);
        // Without pairs the head stays as initialised (and says so), like a DPO verifier
        // without pairs stays its initial policy.
        let steps = if prefs.is_empty() {
            tracing::warn!(
                "{}: no preference pairs; the reward model is the untrained value head",
                cx.label
            );
            0
        } else {
            st.steps
        };
        let mut trainer = Trainer::new(model, st.optim.clone(), steps);
        let pb = crate::progress::bar(st.steps, cx.label, cx.quiet);
        let what = format!("the {}", cx.label);
        let rng = &mut *cx.rng;
        let log = fit(
            &mut trainer,
            &FitOptions::new(&what).progress(&pb),
            |model: &Llama, _| {
                let idx: Vec<usize> = (0..st.batch_size)
                    .map(|_| rng.random_range(0..prefs.len()))
                    .collect();
                let seqs: Vec<Sequence> = idx
                    .iter()
                    .map(|&i| prefs[i].chosen())
                    .chain(idx.iter().map(|&i| prefs[i].rejected()))
                    .collect();
                let v = final_values(model, &seqs, pad, &device)?;
                let m = idx.len();
                self.objective.loss(
                    &TensorMap::new()
                        .with("chosen", v.clone().narrow(0, 0, m))
                        .with("rejected", v.narrow(0, m, m)),
                )
            },
            &mut (),
        )?;
        pb.finish_and_clear();
        let head = ValueHead {
            model: trainer.model.valid(),
            pad,
            device: cx.device.clone(),
            batch: self.batch,
        };
        let refs = &references[..self.bias_references.min(references.len())];
        let bias = if refs.is_empty() {
            0.0
        } else {
            let raw = head.values(refs)?;
            raw.iter().sum::<f32>() / raw.len() as f32
        };
        Ok(Fitted {
            model: Box::new(Learned { head, bias }),
            log: (steps > 0).then_some(log),
            examples: prefs.len(),
            selection: None,
        })
    }
}

crate::register_component! {
    kind: RewardModel,
    name: "bradley-terry",
    description: "the handed-over policy plus a scalar head at EOS, Bradley–Terry on preference pairs, mean on references subtracted",
    config: BradleyTerryConfig,
    build: |c: BradleyTerryConfig, ctx| {
        let objective = c.objective.build(ctx, BT_INPUTS)?;
        let stage = Stage::new(c.steps, c.batch_size, c.optim.clone());
        stage.validate()?;
        if c.batch == 0 { return Err(ConfigError::field("batch", "must be at least 1").into()); }
        Ok(Box::new(BradleyTerrySpec { objective, stage, bias_references: c.bias_references, batch: c.batch }) as Box<dyn RewardSpec>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::LlamaConfig;

    /// At initialisation the critic's value at EOS is the normalised reward the reward model
    /// gives the same sequence.
    #[test]
    fn the_critic_starts_at_the_normalised_reward() {
        let config = LlamaConfig {
            vocab_size: 10,
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            hidden_dim: 24,
            max_seq_len: 16,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
            arch: Default::default(),
        };
        let device = crate::device::test_device();
        let mut r = crate::rng::rng(4, 0);
        let model = Llama::init(config, &mut r, &device)
            .unwrap()
            .with_value_head(&mut r, &device);
        let head = ValueHead {
            model,
            pad: 0,
            device: device.clone(),
            batch: 8,
        };
        let seqs = vec![
            Sequence::new(vec![1, 4, 5], vec![6, 2]),
            Sequence::new(vec![1, 7], vec![8, 9, 2]),
        ];
        let raw = head.values(&seqs).unwrap();
        let learned = Learned { head, bias: 0.8 };
        let rewards = learned.score(&seqs).unwrap();
        let train = device.clone().autodiff();
        let critic = learned.critic(&train).unwrap().unwrap();
        let values: Vec<f32> = final_values(&critic, &seqs, 0, &train)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        for ((v, r), x) in values.iter().zip(&rewards).zip(&raw) {
            assert!((v - r).abs() < 1e-5, "critic {v} vs normalised reward {r}");
            assert!((x - r - 0.8).abs() < 1e-5, "the raw score is {x}");
        }
    }
}
