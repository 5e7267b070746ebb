//! The stages of an LM method's run, as a paper's scheduler calls them: fine-tune a policy,
//! fit a verifier or a reward model, draw labelled candidates. Each stage shows its progress
//! bar, names itself in errors, draws from the run's random stream in order, and records how
//! its training went ([`FitSummary`]) for the summary's training table.

use std::sync::Arc;

use burn::tensor::Device;

use crate::fit::{FitCx, FitSummary, Fitted};
use crate::lm::fit::fit_sft;
use crate::lm::policy::LmPolicy;
use crate::policy::Sequence;
use crate::reward::{Preference, RewardModel, RewardSpec};
use crate::rng::Rng;
use crate::sampling::sample_candidates;
use crate::tasks::{TextProblem, TextTask};
use crate::train::Stage;
use crate::verifier::{Candidate, Verifier, VerifierSpec};
use crate::{Objective, Sampler};

/// One unit's stages (a seed's, say).
pub struct Stages<'t> {
    /// The task candidates are checked by ([`draw`](Self::draw)); `None` for stages that only
    /// train ([`training`](Self::training)).
    pub task: Option<&'t TextTask>,
    /// Prefixes progress bars and errors ("seed 0").
    pub prefix: String,
    /// The inference device.
    pub device: Device,
    pub quiet: bool,
    /// The stream every training stage draws from, in the order the stages run.
    pub rng: Rng,
    /// How each training stage went, in order.
    pub fits: Vec<FitSummary>,
}

/// The steps a [`FitSummary`] averages its start and end losses over.
pub const SUMMARY_WINDOW: usize = 20;

impl<'t> Stages<'t> {
    pub fn new(
        task: &'t TextTask,
        prefix: impl Into<String>,
        device: &Device,
        quiet: bool,
        rng: Rng,
    ) -> Self {
        Self {
            task: Some(task),
            prefix: prefix.into(),
            device: device.clone(),
            quiet,
            rng,
            fits: Vec::new(),
        }
    }

    /// The stages of one seed's unit: named `seed {seed}`, on the unit's device, drawing from
    /// the seed's training stream (`rng(seed, 11)`).
    pub fn for_seed(task: &'t TextTask, seed: u64, cx: &crate::experiment::UnitCx) -> Self {
        Self::new(
            task,
            format!("seed {seed}"),
            cx.device(),
            cx.quiet(),
            crate::rng::rng(seed, 11),
        )
    }

    /// The stages of one seed's unit that only train (a scheduler that evaluates by itself,
    /// over problems of its own type): as [`for_seed`](Self::for_seed), with no task to
    /// [`draw`](Self::draw) for.
    pub fn training(seed: u64, cx: &crate::experiment::UnitCx) -> Self {
        Self {
            task: None,
            prefix: format!("seed {seed}"),
            device: cx.device().clone(),
            quiet: cx.quiet(),
            rng: crate::rng::rng(seed, 11),
            fits: Vec::new(),
        }
    }

    /// The training (autodiff) device.
    pub fn train_device(&self) -> Device {
        self.device.clone().autodiff()
    }

    fn bar(&self, len: usize, name: &str) -> crate::progress::ProgressBar {
        crate::progress::bar(len as u64, &format!("{}: {name}", self.prefix), self.quiet)
    }

    /// Supervised fine-tuning of `init` (trainable) on `data` for `stage`, recorded as `name`.
    pub fn sft(
        &mut self,
        init: &LmPolicy,
        objective: &dyn Objective,
        data: &[Sequence],
        stage: &Stage,
        name: &str,
    ) -> anyhow::Result<LmPolicy> {
        let pb = self.bar(stage.steps as usize, name);
        let what = format!("the {}: {name}", self.prefix);
        let pad = init.tokenizer.pad();
        let device = init.device.clone();
        let (model, log) = fit_sft(
            init.model.clone(),
            objective,
            data,
            stage,
            pad,
            &device,
            &mut self.rng,
            &pb,
            &what,
        )?;
        pb.finish_and_clear();
        self.fits.push(log.summary(name, SUMMARY_WINDOW));
        Ok(init.with_model(model))
    }

    fn cx<'a>(&'a mut self, init: &'a LmPolicy, label: &'a str) -> FitCx<'a> {
        FitCx {
            init,
            device: &self.device,
            rng: &mut self.rng,
            quiet: self.quiet,
            label,
        }
    }

    /// `spec` fitted from `init` on `candidates` (fixed verifiers just take `init`), recorded
    /// as `name` when it trained.
    pub fn verifier(
        &mut self,
        spec: &dyn VerifierSpec,
        init: &LmPolicy,
        problems: &[TextProblem],
        candidates: &[Candidate],
        name: &str,
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        let label = format!("{}: {name}", self.prefix);
        let f = spec.fit(&mut self.cx(init, &label), problems, candidates)?;
        if let Some(log) = &f.log {
            self.fits.push(log.summary(name, SUMMARY_WINDOW));
        }
        Ok(f)
    }

    /// `spec` fitted from `init` on preference pairs (normalised on `references`), recorded as
    /// `name` when it trained.
    pub fn reward(
        &mut self,
        spec: &dyn RewardSpec,
        init: &LmPolicy,
        task: &Arc<TextTask>,
        preferences: &[Preference],
        references: &[Sequence],
        name: &str,
    ) -> anyhow::Result<Fitted<dyn RewardModel>> {
        let label = format!("{}: {name}", self.prefix);
        let f = spec.fit(&mut self.cx(init, &label), task, preferences, references)?;
        if let Some(log) = &f.log {
            self.fits.push(log.summary(name, SUMMARY_WINDOW));
        }
        Ok(f)
    }

    /// Candidates for `problems` drawn by `sampler` from `policy` (an inference copy of it)
    /// with `seed`, checked by the task.
    pub fn draw(
        &self,
        sampler: &dyn Sampler,
        policy: &LmPolicy,
        problems: &[TextProblem],
        seed: u64,
        name: &str,
    ) -> anyhow::Result<Vec<Candidate>> {
        let task = self.task.ok_or_else(|| {
            anyhow::anyhow!("{}: drawing candidates ({name}) needs a task", self.prefix)
        })?;
        let pb = self.bar(problems.len(), &format!("sampling ({name})"));
        let (cands, _) =
            sample_candidates(sampler, &policy.inference(), task, problems, seed, &pb)?;
        pb.finish_and_clear();
        Ok(cands)
    }
}
