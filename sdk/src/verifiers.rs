//! Standard verifiers, each a recipe table (`[verifier] use = "…"`):
//!
//! - fixed: `oracle` (the task's checker), `majority` (the share of the problem's candidates
//!   with the same parsed answer), `likelihood` (the log-probability of the candidate under the
//!   policy the scheduler hands over, summed or per token);
//! - fitted: `dpo` (V-STaR: DPO from the handed-over policy, which is also the reference, on
//!   every {correct} × {incorrect} pair of each problem; the score is log V(ŷ|x)) and `orm`
//!   (an outcome reward model: the policy plus a value head read at the last token, trained
//!   with binary cross-entropy on the candidates' labels, optionally with the LM loss on the
//!   correct ones).
//!
//! A fitted verifier's table holds its objective inline (`objective = { use = "dpo",
//! beta = 0.1 }`), its training stage (`steps`, `batch_size`, `optim`) and its selection
//! (`select = { heldout = 0.1, every = 50, patience = 4 }`): the candidates of a fraction of
//! the training problems are held out, and the model kept is the one whose AUROC on them was
//! best, checked every `every` steps from the initial model on, with early stopping
//! ([`crate::fit::EarlyStopping`]). [`score_variants`] gives a language-model verifier's three
//! scores (summed, implicit reward against a reference, length-normalised).

use burn::module::Module;
use std::collections::BTreeMap;

use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::auroc_within;
use crate::fit::{EarlyStopping, FitCx, FitLog, FitOptions, Fitted, Selection, fit};
use crate::lm::Llama;
use crate::lm::fit::{final_values, in_chunks, response_logprobs, sft_loss};
use crate::lm::policy::LmPolicy;
use crate::policy::Sequence;
use crate::registry::{ConfigError, InlineObjective};
use crate::tasks::TextProblem;
use crate::train::{LrSchedule, OptimConfig, Stage, Trainer};
use crate::verifier::{Candidate, Verifier, VerifierSpec, draw_batch, split_by_problem};
use crate::{LossOutput, Objective, TensorMap};

fn sequences(candidates: &[Candidate]) -> Vec<Sequence> {
    candidates.iter().map(|c| c.completion.sequence()).collect()
}

/// Scores 1 for a correct candidate and 0 otherwise: the upper bound any verifier aims at.
pub struct Oracle;

impl Verifier for Oracle {
    fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(candidates.iter().map(|c| c.correct as u8 as f32).collect())
    }
}

/// Scores a candidate by the share of its problem's candidates that reached the same parsed
/// answer (0 without one): Best-of-k with it picks an answer the whole pool agrees on.
pub struct Majority;

impl Verifier for Majority {
    fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
        let mut totals: BTreeMap<usize, usize> = BTreeMap::new();
        for c in candidates {
            *totals.entry(c.problem).or_default() += 1;
            if let Some(a) = &c.answer {
                *counts.entry((c.problem, a.as_str())).or_default() += 1;
            }
        }
        Ok(candidates
            .iter()
            .map(|c| match &c.answer {
                Some(a) => counts[&(c.problem, a.as_str())] as f32 / totals[&c.problem] as f32,
                None => 0.0,
            })
            .collect())
    }
}

/// Scores a candidate by its log-probability under `policy`: summed over the response tokens,
/// or their mean (`per_token`).
pub struct Likelihood {
    pub policy: LmPolicy,
    pub per_token: bool,
    /// Sequences scored per forward pass.
    pub batch: usize,
}

impl Likelihood {
    /// The summed log-probability under `policy`, as `likelihood`'s defaults score it.
    pub fn summed(policy: LmPolicy) -> Self {
        let LikelihoodConfig { per_token, batch } = LikelihoodConfig::default();
        Self {
            policy,
            per_token,
            batch,
        }
    }
}

impl Verifier for Likelihood {
    fn policy(&self) -> Option<&LmPolicy> {
        Some(&self.policy)
    }

    fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        let seqs = sequences(candidates);
        let (model, pad, device) = (
            &self.policy.model,
            self.policy.tokenizer.pad(),
            &self.policy.device,
        );
        let sums = in_chunks(&seqs, self.batch, |c| {
            Ok(response_logprobs(model, c, pad, device))
        })?;
        Ok(if self.per_token {
            sums.iter()
                .zip(&seqs)
                .map(|(s, q)| s / q.response.len().max(1) as f32)
                .collect()
        } else {
            sums
        })
    }
}

/// The names of the three scores a language-model verifier gives a candidate, in the order
/// [`score_variants`] returns them.
pub const SCORE_VARIANTS: [&str; 3] = [
    "summed log-likelihood",
    "implicit reward",
    "length-normalised",
];

/// The three scores of a language-model verifier V from its summed response log-probabilities
/// `sums` (log V(ŷ|x)), those of a reference policy (`reference`, log G_SFT(ŷ|x)) and the
/// response lengths |ŷ|: the summed log-likelihood `log V`, the implicit reward
/// `log V − log G_SFT` (DPO's reward over β; `None` without a reference) and the
/// length-normalised `log V / |ŷ|`.
pub fn score_variants(
    sums: &[f32],
    reference: Option<&[f32]>,
    lengths: &[usize],
) -> [Option<Vec<f32>>; 3] {
    let implicit = reference.map(|r| sums.iter().zip(r).map(|(v, g)| v - g).collect());
    let normalised = sums
        .iter()
        .zip(lengths)
        .map(|(v, &n)| v / n.max(1) as f32)
        .collect();
    [Some(sums.to_vec()), implicit, Some(normalised)]
}

/// Scores a candidate by a value head read at its last token (an outcome reward model).
pub struct ValueHead {
    /// A model with a value head, for inference.
    pub model: Llama,
    pub pad: u32,
    pub device: burn::tensor::Device,
    pub batch: usize,
}

impl ValueHead {
    /// The value of each sequence.
    pub fn values(&self, seqs: &[Sequence]) -> anyhow::Result<Vec<f32>> {
        in_chunks(seqs, self.batch, |c| {
            final_values(&self.model, c, self.pad, &self.device)
        })
    }
}

impl Verifier for ValueHead {
    fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        self.values(&sequences(candidates))
    }
}

/// `oracle` and `majority` have no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

struct Fixed<F: Fn() -> Box<dyn Verifier> + Send + Sync>(&'static str, F);

impl<F: Fn() -> Box<dyn Verifier> + Send + Sync> VerifierSpec for Fixed<F> {
    fn label(&self) -> String {
        self.0.into()
    }
    fn fit(
        &self,
        _: &mut FitCx<'_>,
        _: &[TextProblem],
        _: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        Ok(Fitted::fixed((self.1)()))
    }
}

crate::register_component! {
    kind: Verifier,
    name: "oracle",
    description: "the task's checker: 1 for a correct candidate, 0 otherwise",
    config: NoConfig,
    build: |_c: NoConfig, _ctx| Ok(Box::new(Fixed("oracle", || Box::new(Oracle))) as Box<dyn VerifierSpec>),
}

crate::register_component! {
    kind: Verifier,
    name: "majority",
    description: "the share of the problem's candidates with the same parsed answer",
    config: NoConfig,
    build: |_c: NoConfig, _ctx| Ok(Box::new(Fixed("majority vote", || Box::new(Majority))) as Box<dyn VerifierSpec>),
}

/// Configuration of `likelihood`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodConfig {
    /// Mean log-probability per response token instead of the sum.
    pub per_token: bool,
    /// Sequences scored per forward pass.
    pub batch: usize,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        Self {
            per_token: false,
            batch: 256,
        }
    }
}

struct LikelihoodSpec(LikelihoodConfig);

impl VerifierSpec for LikelihoodSpec {
    fn label(&self) -> String {
        if self.0.per_token {
            "per-token log-likelihood"
        } else {
            "log-likelihood"
        }
        .into()
    }
    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        _: &[TextProblem],
        _: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        Ok(Fitted::fixed(Box::new(Likelihood {
            policy: cx.init.inference(),
            per_token: self.0.per_token,
            batch: self.0.batch,
        })))
    }
}

crate::register_component! {
    kind: Verifier,
    name: "likelihood",
    description: "the candidate's log-probability (summed or per token) under the policy the scheduler hands over",
    config: LikelihoodConfig,
    build: |c: LikelihoodConfig, _ctx| {
        if c.batch == 0 { return Err(ConfigError::field("batch", "must be at least 1").into()); }
        Ok(Box::new(LikelihoodSpec(c)) as Box<dyn VerifierSpec>)
    },
}

/// A verifier's default training stage: 600 steps of `batch_size` at learning rate `lr`, 20
/// warm-up steps, cosine to a tenth.
pub fn fine_tune(lr: f64, batch_size: usize) -> Stage {
    Stage::new(
        600,
        batch_size,
        OptimConfig {
            lr,
            warmup_steps: 20,
            schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        },
    )
}

/// How a fitted verifier is chosen: by its AUROC within problems (correct against incorrect
/// candidates of the same problem, averaged over problems) on the candidates of held-out
/// training problems, checked as it trains, with early stopping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    /// The fraction of the training problems whose candidates are held out of training to
    /// choose the model on (0: no selection; the last step's model).
    pub heldout: f64,
    /// Steps between checks (the initial model is checked too).
    pub every: u64,
    /// Checks in a row without a better AUROC before training stops (0: all steps).
    pub patience: u32,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            heldout: 0.1,
            every: 50,
            patience: 4,
        }
    }
}

impl SelectConfig {
    /// Errors naming the field (`select.heldout`, `select.every`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=0.9).contains(&self.heldout) {
            return Err(ConfigError::field("select.heldout", "must be in [0, 0.9]"));
        }
        if self.every == 0 {
            return Err(ConfigError::field("select.every", "must be at least 1"));
        }
        Ok(())
    }
}

/// Trains `trainer` with `batch`; with held-out candidates (their `labels`, their problems and
/// a scorer for them), keeps the model of the check with the best held-out AUROC within
/// problems (how well it re-ranks each problem's candidates) and stops early as `select` says. Returns the log, the selection, and the chosen model.
pub fn fit_selected(
    trainer: &mut Trainer<Llama>,
    opts: &FitOptions,
    select: &SelectConfig,
    heldout: (&[bool], &[usize], usize),
    mut score: impl FnMut(&Llama) -> anyhow::Result<Vec<f32>>,
    batch: impl FnMut(&Llama, u64) -> anyhow::Result<LossOutput>,
) -> anyhow::Result<(FitLog, Option<Selection>, Llama)> {
    let (labels, groups, problems) = heldout;
    if labels.is_empty() {
        let log = fit(trainer, opts, batch, &mut ())?;
        return Ok((log, None, trainer.model.clone()));
    }
    let mut es = EarlyStopping::new(select.every, select.patience, |m: &Llama| {
        Ok(auroc_within(&score(m)?, labels, groups))
    });
    es.observe_initial(&trainer.model)?;
    let log = fit(trainer, opts, batch, &mut es)?;
    let selection = es.best().map(|(best_step, best)| Selection {
        metric: "AUROC within problems".into(),
        heldout: labels.len(),
        heldout_problems: problems,
        curve: es.curve.clone(),
        best_step,
        best,
        steps: trainer.step,
    });
    let model = es.into_best().unwrap_or_else(|| trainer.model.clone());
    Ok((log, selection, model))
}

/// Configuration of `dpo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DpoVerifierConfig {
    /// The preference loss, inline (`{ use = "dpo", beta = 0.1 }`).
    pub objective: InlineObjective,
    pub steps: u64,
    /// Preference pairs per step.
    pub batch_size: usize,
    pub optim: OptimConfig,
    /// Model selection on held-out problems (AUROC within problems of the score log V(ŷ|x)).
    pub select: SelectConfig,
    /// Sequences scored per forward pass.
    pub batch: usize,
}

impl Default for DpoVerifierConfig {
    fn default() -> Self {
        let st = fine_tune(3e-4, 16);
        Self {
            objective: InlineObjective::named("dpo"),
            steps: st.steps,
            batch_size: st.batch_size,
            optim: st.optim,
            select: SelectConfig::default(),
            batch: 256,
        }
    }
}

/// The inputs the `dpo` and `orm` fitters hand their objective.
pub const DPO_INPUTS: &[&str] = &[
    "policy_chosen",
    "policy_rejected",
    "reference_chosen",
    "reference_rejected",
];
/// What the `orm` fitter hands its objective.
pub const ORM_INPUTS: &[&str] = &["logits", "labels"];

struct DpoSpec {
    objective: Box<dyn Objective>,
    stage: Stage,
    select: SelectConfig,
    batch: usize,
}

impl VerifierSpec for DpoSpec {
    fn label(&self) -> String {
        "DPO verifier".into()
    }

    fn fitted(&self) -> bool {
        true
    }

    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        _: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        // Held-out problems (for selection) and every {correct} × {incorrect} pair of each
        // training problem.
        let (train_idx, held_idx, held_problems) =
            split_by_problem(candidates, self.select.heldout, cx.rng);
        let train: Vec<Candidate> = train_idx.iter().map(|&i| candidates[i].clone()).collect();
        let prefs = crate::verifier::correct_incorrect_pairs(&train);
        let verifier = |policy: LmPolicy| {
            Box::new(Likelihood {
                policy,
                per_token: false,
                batch: self.batch,
            })
        };
        if prefs.is_empty() {
            tracing::warn!(
                "{}: no training problem has both a correct and an incorrect candidate; the verifier stays the initial policy",
                cx.label
            );
            return Ok(Fitted::fixed(verifier(cx.init.inference())));
        }
        let seqs = sequences(&train);
        let inference = cx.init.inference();
        let pad = inference.tokenizer.pad();
        let reference = in_chunks(&seqs, self.batch, |c| {
            Ok(response_logprobs(
                &inference.model,
                c,
                pad,
                &inference.device,
            ))
        })?;
        let held_seqs: Vec<Sequence> = held_idx
            .iter()
            .map(|&i| candidates[i].completion.sequence())
            .collect();
        let held_labels: Vec<bool> = held_idx.iter().map(|&i| candidates[i].correct).collect();
        let held_groups: Vec<usize> = held_idx.iter().map(|&i| candidates[i].problem).collect();
        let st = &self.stage;
        let train_device = cx.init.device.clone();
        let mut trainer = Trainer::new(cx.init.model.clone(), st.optim.clone(), st.steps);
        let pb = crate::progress::bar(st.steps, cx.label, cx.quiet);
        let what = format!("the {}", cx.label);
        let b = st.batch_size;
        let rng = &mut *cx.rng;
        let (log, selection, model) = fit_selected(
            &mut trainer,
            &FitOptions::new(&what).progress(&pb),
            &self.select,
            (&held_labels, &held_groups, held_problems),
            |m: &Llama| {
                let m = m.valid();
                in_chunks(&held_seqs, self.batch, |c| {
                    Ok(response_logprobs(&m, c, pad, &inference.device))
                })
            },
            |model: &Llama, _| {
                let chosen: Vec<(usize, usize)> = (0..b)
                    .map(|_| prefs[rng.random_range(0..prefs.len())])
                    .collect();
                let batch: Vec<Sequence> = chosen
                    .iter()
                    .map(|&(c, _)| seqs[c].clone())
                    .chain(chosen.iter().map(|&(_, w)| seqs[w].clone()))
                    .collect();
                let lp = response_logprobs(model, &batch, pad, &train_device);
                let refs = |f: &dyn Fn(&(usize, usize)) -> usize| {
                    crate::tensor_map::t1(
                        chosen.iter().map(|p| reference[f(p)]).collect(),
                        &train_device,
                    )
                };
                self.objective.loss(
                    &TensorMap::new()
                        .with("policy_chosen", lp.clone().narrow(0, 0, b))
                        .with("policy_rejected", lp.narrow(0, b, b))
                        .with("reference_chosen", refs(&|p| p.0))
                        .with("reference_rejected", refs(&|p| p.1)),
                )
            },
        )?;
        pb.finish_and_clear();
        let mut policy = cx.init.inference();
        policy.model = model.valid();
        Ok(Fitted {
            model: verifier(policy),
            log: Some(log),
            examples: prefs.len(),
            selection,
        })
    }
}

/// The stage of a fitter's `steps`, `batch_size` and `optim` fields, validated.
pub fn stage_of(steps: u64, batch_size: usize, optim: &OptimConfig) -> Result<Stage, ConfigError> {
    let st = Stage::new(steps, batch_size, optim.clone());
    st.validate()?;
    Ok(st)
}

crate::register_component! {
    kind: Verifier,
    name: "dpo",
    description: "V-STaR's verifier: DPO from the handed-over policy (also the reference) on every correct × incorrect pair; scores log V(ŷ|x)",
    config: DpoVerifierConfig,
    build: |c: DpoVerifierConfig, ctx| {
        let objective = c.objective.build(ctx, DPO_INPUTS)?;
        if c.batch == 0 { return Err(ConfigError::field("batch", "must be at least 1").into()); }
        c.select.validate()?;
        Ok(Box::new(DpoSpec { objective, stage: stage_of(c.steps, c.batch_size, &c.optim)?, select: c.select, batch: c.batch }) as Box<dyn VerifierSpec>)
    },
}

/// Configuration of `orm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OrmConfig {
    /// The classification loss, inline (`{ use = "bce" }`).
    pub objective: InlineObjective,
    pub steps: u64,
    /// Candidates per step.
    pub batch_size: usize,
    pub optim: OptimConfig,
    /// Weight of the LM loss (the `sft` NLL) on the batch's correct candidates, added to the
    /// classification loss (0: none).
    pub lm_loss_weight: f32,
    /// Model selection on held-out problems (AUROC within problems of the value head's score).
    pub select: SelectConfig,
    /// Half of each batch from the correct candidates and half from the incorrect ones (the
    /// GenRM paper's balanced data); otherwise uniform over the candidates.
    pub balanced: bool,
    /// Sequences scored per forward pass.
    pub batch: usize,
}

impl Default for OrmConfig {
    fn default() -> Self {
        let st = fine_tune(1e-3, 32);
        Self {
            objective: InlineObjective::named("bce"),
            steps: st.steps,
            batch_size: st.batch_size,
            optim: st.optim,
            lm_loss_weight: 0.0,
            select: SelectConfig::default(),
            balanced: false,
            batch: 256,
        }
    }
}

struct OrmSpec {
    objective: Box<dyn Objective>,
    stage: Stage,
    lm_loss_weight: f32,
    select: SelectConfig,
    balanced: bool,
    batch: usize,
}

impl VerifierSpec for OrmSpec {
    fn label(&self) -> String {
        "ORM".into()
    }

    fn fitted(&self) -> bool {
        true
    }

    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        _: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        anyhow::ensure!(
            !candidates.is_empty(),
            "{}: no candidates to train on",
            cx.label
        );
        let (train_idx, held_idx, held_problems) =
            split_by_problem(candidates, self.select.heldout, cx.rng);
        let st = &self.stage;
        let device = cx.init.device.clone();
        let pad = cx.init.tokenizer.pad();
        let model = cx.init.model.clone().with_value_head(cx.rng, &device);
        let mut trainer = Trainer::new(model, st.optim.clone(), st.steps);
        let pb = crate::progress::bar(st.steps, cx.label, cx.quiet);
        let train: Vec<&Candidate> = train_idx.iter().map(|&i| &candidates[i]).collect();
        let seqs: Vec<Sequence> = train.iter().map(|c| c.completion.sequence()).collect();
        let held_seqs: Vec<Sequence> = held_idx
            .iter()
            .map(|&i| candidates[i].completion.sequence())
            .collect();
        let held_labels: Vec<bool> = held_idx.iter().map(|&i| candidates[i].correct).collect();
        let held_groups: Vec<usize> = held_idx.iter().map(|&i| candidates[i].problem).collect();
        let labels: Vec<bool> = train.iter().map(|c| c.correct).collect();
        let what = format!("the {}", cx.label);
        let (b, w) = (st.batch_size, self.lm_loss_weight);
        let rng = &mut *cx.rng;
        let head = |m: Llama| ValueHead {
            model: m,
            pad,
            device: cx.device.clone(),
            batch: self.batch,
        };
        let (log, selection, model) = fit_selected(
            &mut trainer,
            &FitOptions::new(&what).progress(&pb),
            &self.select,
            (&held_labels, &held_groups, held_problems),
            |m: &Llama| head(m.valid()).values(&held_seqs),
            |model: &Llama, _| {
                let idx = draw_batch(&labels, b, self.balanced, rng);
                let batch: Vec<Sequence> = idx.iter().map(|&i| seqs[i].clone()).collect();
                let labels: Vec<f32> = idx.iter().map(|&i| train[i].correct as u8 as f32).collect();
                let logits = final_values(model, &batch, pad, &device)?;
                let out = self.objective.loss(
                    &TensorMap::new()
                        .with("logits", logits)
                        .with("labels", crate::tensor_map::t1(labels, &device)),
                )?;
                let correct: Vec<Sequence> = idx
                    .iter()
                    .filter(|&&i| train[i].correct)
                    .map(|&i| seqs[i].clone())
                    .collect();
                if w == 0.0 || correct.is_empty() {
                    return Ok(out);
                }
                let lm = sft_loss(model, &crate::components::sft::Sft, &correct, pad, &device)?;
                Ok(LossOutput::new(out.loss + lm.loss.clone() * w as f64)
                    .with_metrics(out.metrics)
                    .with_metric("lm_loss", lm.loss))
            },
        )?;
        pb.finish_and_clear();
        Ok(Fitted {
            model: Box::new(head(model.valid())),
            log: Some(log),
            examples: train.len(),
            selection,
        })
    }
}

crate::register_component! {
    kind: Verifier,
    name: "orm",
    description: "outcome reward model: the handed-over policy plus a value head at the last token, BCE on the candidates' labels (optional LM loss)",
    config: OrmConfig,
    build: |c: OrmConfig, ctx| {
        let objective = c.objective.build(ctx, ORM_INPUTS)?;
        if !(c.lm_loss_weight.is_finite() && c.lm_loss_weight >= 0.0) {
            return Err(ConfigError::field("lm_loss_weight", "must be a non-negative number").into());
        }
        if c.batch == 0 { return Err(ConfigError::field("batch", "must be at least 1").into()); }
        c.select.validate()?;
        Ok(Box::new(OrmSpec { objective, stage: stage_of(c.steps, c.batch_size, &c.optim)?, lm_loss_weight: c.lm_loss_weight, select: c.select, balanced: c.balanced, batch: c.batch }) as Box<dyn VerifierSpec>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::tests::cand;

    proptest::proptest! {
        /// The implicit reward plus the reference is the summed score; the length-normalised
        /// score times the length is the summed score (an empty response counts as length 1).
        #[test]
        fn score_variants_follow_their_definitions(
            v in proptest::collection::vec((-80.0f32..0.0, -80.0f32..0.0, 0usize..40), 1..30),
        ) {
            let sums: Vec<f32> = v.iter().map(|x| x.0).collect();
            let refs: Vec<f32> = v.iter().map(|x| x.1).collect();
            let lens: Vec<usize> = v.iter().map(|x| x.2).collect();
            let [s, i, n] = score_variants(&sums, Some(&refs), &lens);
            proptest::prop_assert_eq!(s.unwrap(), sums.clone());
            for (k, (i, n)) in i.unwrap().iter().zip(n.unwrap()).enumerate() {
                proptest::prop_assert!((i + refs[k] - sums[k]).abs() <= 1e-4 * (1.0 + sums[k].abs()));
                proptest::prop_assert!((n * lens[k].max(1) as f32 - sums[k]).abs() <= 1e-4 * (1.0 + sums[k].abs()));
            }
            let [_, none, _] = score_variants(&sums, None, &lens);
            proptest::prop_assert!(none.is_none());
        }
    }

    #[test]
    fn oracle_and_majority_scores_follow_their_definitions() {
        let c = vec![
            cand(0, Some("3"), true),
            cand(0, Some("3"), true),
            cand(0, Some("4"), false),
            cand(0, None, false),
            cand(1, Some("3"), false),
        ];
        assert_eq!(
            Oracle.scores(&[], &c).unwrap(),
            vec![1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            Majority.scores(&[], &c).unwrap(),
            vec![0.5, 0.5, 0.25, 0.0, 1.0]
        );
    }
}
