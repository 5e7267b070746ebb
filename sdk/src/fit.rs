//! The fit loop every trainer uses: batch → objective → optimiser step, with losses and
//! metrics brought to the host only every `sync_every` steps (each host read is a device sync
//! on CUDA), the finite check done on what was brought, and hooks for periodic evaluation,
//! logging and checkpoints.
//!
//! ```
//! use lmlab_sdk::burn::module::{Module, Param};
//! use lmlab_sdk::burn::tensor::{Device, Tensor};
//! use lmlab_sdk::fit::{FitOptions, fit};
//! use lmlab_sdk::train::{OptimConfig, Trainer};
//! use lmlab_sdk::LossOutput;
//!
//! #[derive(Module, Debug)]
//! struct Scalar { w: Param<Tensor<1>> }
//!
//! let device = Device::flex().autodiff();
//! let model = Scalar { w: Param::from_tensor(Tensor::from_floats([3.0], &device)) };
//! let optim = OptimConfig { lr: 0.1, grad_clip_norm: None, ..Default::default() };
//! let mut trainer = Trainer::new(model, optim, 50);
//! // Minimise w².
//! let log = fit(&mut trainer, &FitOptions::new("w²"), |m: &Scalar, _step| {
//!     Ok(LossOutput::new(m.w.val().powi_scalar(2).sum()))
//! }, &mut ()).unwrap();
//! assert_eq!(log.steps.len(), 50);
//! assert!(log.steps[49].loss < 0.01 * log.steps[0].loss);
//! ```

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::LossOutput;
use crate::progress::ProgressBar;
use crate::train::Trainer;

/// How [`fit`] runs.
#[derive(Clone, Debug)]
pub struct FitOptions<'a> {
    /// Names the training in errors ("the DPO verifier").
    pub what: &'a str,
    /// Losses and metrics reach the host every this many steps (and after the last).
    pub sync_every: u64,
    /// Advanced by one per step.
    pub progress: Option<&'a ProgressBar>,
}

impl<'a> FitOptions<'a> {
    /// Syncing every 16 steps, no progress bar.
    pub fn new(what: &'a str) -> Self {
        Self {
            what,
            sync_every: 16,
            progress: None,
        }
    }

    /// With a progress bar.
    pub fn progress(mut self, pb: &'a ProgressBar) -> Self {
        self.progress = Some(pb);
        self
    }

    /// Syncing every `n` steps.
    pub fn sync_every(mut self, n: u64) -> Self {
        self.sync_every = n.max(1);
        self
    }
}

/// One step as the host saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The optimiser steps taken after this one (1 for the first).
    pub step: u64,
    /// The learning rate it used.
    pub lr: f64,
    pub loss: f64,
    /// The objective's metrics, reduced to numbers.
    pub metrics: Vec<(String, f64)>,
}

/// The `metrics.jsonl` record of a training step: `{"step", "split": "train", "loss", "lr",
/// <the objective's metrics>}`.
pub fn train_record(s: &StepLog) -> serde_json::Value {
    let mut rec =
        serde_json::json!({ "step": s.step, "split": "train", "loss": s.loss, "lr": s.lr });
    for (k, v) in &s.metrics {
        rec[k] = (*v).into();
    }
    rec
}

/// Every step of a [`fit`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FitLog {
    pub steps: Vec<StepLog>,
}

impl FitLog {
    /// Every step's loss.
    pub fn losses(&self) -> Vec<f64> {
        self.steps.iter().map(|s| s.loss).collect()
    }

    /// Every step's value of the objective's metric `name` (steps without it are skipped).
    pub fn metric(&self, name: &str) -> Vec<f64> {
        self.steps
            .iter()
            .filter_map(|s| s.metrics.iter().find(|(n, _)| n == name).map(|m| m.1))
            .collect()
    }

    /// The mean loss over the first and last `window` steps, and the mean `accuracy` metric
    /// over the last `window` (when the objective reports one).
    pub fn summary(&self, stage: &str, window: usize) -> FitSummary {
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
        let losses = self.losses();
        let acc = self.metric("accuracy");
        let n = window.min(losses.len());
        FitSummary {
            stage: stage.to_string(),
            loss_start: mean(&losses[..n]),
            loss_end: mean(&losses[losses.len() - n..]),
            accuracy_end: (!acc.is_empty())
                .then(|| mean(&acc[acc.len() - window.min(acc.len())..])),
        }
    }
}

/// How one training stage went: the mean loss over its first and last steps, and the mean
/// accuracy over its last ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitSummary {
    pub stage: String,
    pub loss_start: f64,
    pub loss_end: f64,
    pub accuracy_end: Option<f64>,
}

/// What a fitted component (a verifier, a reward model) is handed when the run reaches it.
pub struct FitCx<'a> {
    /// The policy it starts from (trainable, on the training device) or, for fixed ones,
    /// scores with.
    pub init: &'a crate::lm::policy::LmPolicy,
    /// The inference device (its scores are computed there).
    pub device: &'a burn::tensor::Device,
    /// Its random stream (value-head initialisation, batches).
    pub rng: &'a mut crate::rng::Rng,
    /// `--quiet`: no progress bars.
    pub quiet: bool,
    /// The stage's name, for progress bars and errors ("seed 0: DPO verifier").
    pub label: &'a str,
}

/// A component a fitter made, and how its training went.
pub struct Fitted<T: ?Sized> {
    pub model: Box<T>,
    /// Every training step (`None` for a fixed component, or when there was nothing to train
    /// on).
    pub log: Option<FitLog>,
    /// The training examples it had (preference pairs, labelled candidates).
    pub examples: usize,
    /// How the model was selected on held-out data (`None`: the last step's model).
    pub selection: Option<Selection>,
}

impl<T: ?Sized> Fitted<T> {
    /// A component that did not train.
    pub fn fixed(model: Box<T>) -> Self {
        Self {
            model,
            log: None,
            examples: 0,
            selection: None,
        }
    }
}

/// A fitted model chosen on held-out data: what was held out, every check's metric, and the
/// check the model comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The metric (`"AUROC within problems"`).
    pub metric: String,
    /// Held-out examples (candidates) and the problems they belong to.
    pub heldout: usize,
    pub heldout_problems: usize,
    /// (step, metric) of every check; step 0 is the initial model.
    pub curve: Vec<(u64, f64)>,
    /// The step of the chosen model, and its metric.
    pub best_step: u64,
    pub best: f64,
    /// Steps trained before stopping (fewer than configured when stopped early).
    pub steps: u64,
}

/// What a trainer does around the loop: log the steps that reached the host, evaluate,
/// checkpoint. Every method has a default that does nothing; `()` is the trainer without hooks.
pub trait Hooks<M: Module> {
    /// Whether to bring the losses to the host after `step` as well (e.g. a checkpoint step).
    fn sync_at(&self, _step: u64) -> bool {
        false
    }

    /// The steps a host sync brought, in order.
    fn logged(&mut self, _trainer: &Trainer<M>, _steps: &[StepLog]) -> anyhow::Result<()> {
        Ok(())
    }

    /// After every optimiser step (and after the sync, when there was one).
    fn after_step(&mut self, _trainer: &mut Trainer<M>, _log: &FitLog) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<M: Module> Hooks<M> for () {}

/// Model selection on a held-out metric, with early stopping: every `every` steps (and at the
/// end) `metric` scores the model being trained (higher is better; `None`: not measurable,
/// ignored); the best-scoring model is kept, and training stops after `patience` checks in a
/// row without improvement (0: never early). Give it the initial model's score with
/// [`observe_initial`](Self::observe_initial) so training must beat its starting point.
pub struct EarlyStopping<M, F> {
    every: u64,
    patience: u32,
    metric: F,
    bad: u32,
    best: Option<(u64, f64)>,
    best_model: Option<M>,
    /// (step, metric) of every check, the initial one (step 0) included.
    pub curve: Vec<(u64, f64)>,
}

impl<M: Module, F: FnMut(&M) -> anyhow::Result<Option<f64>>> EarlyStopping<M, F> {
    pub fn new(every: u64, patience: u32, metric: F) -> Self {
        Self {
            every: every.max(1),
            patience,
            metric,
            bad: 0,
            best: None,
            best_model: None,
            curve: Vec::new(),
        }
    }

    /// Scores the model before training (step 0).
    pub fn observe_initial(&mut self, model: &M) -> anyhow::Result<()> {
        self.check(0, model)
    }

    fn check(&mut self, step: u64, model: &M) -> anyhow::Result<()> {
        let Some(m) = (self.metric)(model)?.filter(|m| m.is_finite()) else {
            return Ok(());
        };
        self.curve.push((step, m));
        if self.best.is_none_or(|(_, b)| m > b) {
            self.best = Some((step, m));
            self.best_model = Some(model.clone());
            self.bad = 0;
        } else {
            self.bad += 1;
        }
        Ok(())
    }

    /// The step the best model was taken at, and its metric.
    pub fn best(&self) -> Option<(u64, f64)> {
        self.best
    }

    /// The best model (`None` when no check was measurable).
    pub fn into_best(self) -> Option<M> {
        self.best_model
    }
}

impl<M: Module, F: FnMut(&M) -> anyhow::Result<Option<f64>>> Hooks<M> for EarlyStopping<M, F> {
    fn after_step(&mut self, trainer: &mut Trainer<M>, _: &FitLog) -> anyhow::Result<()> {
        let step = trainer.step;
        if step.is_multiple_of(self.every) || step == trainer.total_steps {
            self.check(step, &trainer.model)?;
            if self.patience > 0 && self.bad >= self.patience {
                trainer.stop();
            }
        }
        Ok(())
    }
}

/// Losses and metrics of steps not yet on the host.
struct Pending {
    steps: Vec<(u64, f64)>,
    losses: Vec<Tensor<1>>,
    metrics: Vec<Vec<(String, Tensor<1>)>>,
}

fn host(t: Tensor<1>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

impl Pending {
    /// Brings everything pending to the host (one read for the losses, one per metric), and
    /// errors on a non-finite loss, naming its step.
    fn sync(&mut self, what: &str) -> anyhow::Result<Vec<StepLog>> {
        if self.losses.is_empty() {
            return Ok(Vec::new());
        }
        let losses = host(Tensor::cat(std::mem::take(&mut self.losses), 0))?;
        let metrics = std::mem::take(&mut self.metrics);
        let names: Vec<String> = metrics
            .first()
            .map(|m| m.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let same_names = metrics
            .iter()
            .all(|m| m.len() == names.len() && m.iter().zip(&names).all(|(a, b)| &a.0 == b));
        let mut columns: Vec<Vec<f32>> = Vec::new();
        if same_names {
            for j in 0..names.len() {
                let col: Vec<Tensor<1>> = metrics.iter().map(|m| m[j].1.clone()).collect();
                columns.push(host(Tensor::cat(col, 0))?);
            }
        }
        let steps = std::mem::take(&mut self.steps);
        let mut out = Vec::with_capacity(steps.len());
        for (i, ((step, lr), loss)) in steps.into_iter().zip(losses).enumerate() {
            anyhow::ensure!(loss.is_finite(), "{what} loss became {loss} at step {step}");
            let m = if same_names {
                names
                    .iter()
                    .zip(&columns)
                    .map(|(n, c)| (n.clone(), c[i] as f64))
                    .collect()
            } else {
                metrics[i]
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), host(t.clone())?[0] as f64)))
                    .collect::<anyhow::Result<_>>()?
            };
            out.push(StepLog {
                step,
                lr,
                loss: loss as f64,
                metrics: m,
            });
        }
        Ok(out)
    }
}

/// Trains `trainer.model` until `trainer.step` reaches `trainer.total_steps`: each step asks
/// `batch(model, step)` for the loss of one batch (`step` counts from 0; after a resume it
/// continues where the checkpoint was), steps the optimiser, and calls the hooks. Returns
/// every step's host values.
pub fn fit<M: Module>(
    trainer: &mut Trainer<M>,
    opts: &FitOptions,
    mut batch: impl FnMut(&M, u64) -> anyhow::Result<LossOutput>,
    hooks: &mut impl Hooks<M>,
) -> anyhow::Result<FitLog> {
    let mut log = FitLog::default();
    let mut pending = Pending {
        steps: Vec::new(),
        losses: Vec::new(),
        metrics: Vec::new(),
    };
    let every = opts.sync_every.max(1);
    while trainer.step < trainer.total_steps {
        let out = batch(&trainer.model, trainer.step)?;
        pending.losses.push(out.loss.clone().inner().reshape([1]));
        pending.metrics.push(
            out.metrics
                .iter()
                .map(|(n, t)| (n.clone(), t.clone().inner().reshape([1])))
                .collect(),
        );
        let lr = trainer.step(out.loss);
        pending.steps.push((trainer.step, lr));
        if let Some(pb) = opts.progress {
            pb.inc(1);
        }
        let s = trainer.step;
        if s.is_multiple_of(every) || s == trainer.total_steps || hooks.sync_at(s) {
            let synced = pending.sync(opts.what)?;
            hooks.logged(trainer, &synced)?;
            log.steps.extend(synced);
        }
        hooks.after_step(trainer, &log)?;
    }
    let synced = pending.sync(opts.what)?;
    hooks.logged(trainer, &synced)?;
    log.steps.extend(synced);
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::OptimConfig;
    use burn::module::Param;
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Scalar {
        w: Param<Tensor<1>>,
    }

    fn trainer(steps: u64) -> Trainer<Scalar> {
        let device = Device::flex().autodiff();
        let model = Scalar {
            w: Param::from_tensor(Tensor::from_floats([2.0], &device)),
        };
        let optim = OptimConfig {
            lr: 0.05,
            grad_clip_norm: None,
            ..Default::default()
        };
        Trainer::new(model, optim, steps)
    }

    struct Record(Vec<u64>, Vec<u64>);
    impl Hooks<Scalar> for Record {
        fn sync_at(&self, step: u64) -> bool {
            step == 5
        }
        fn logged(&mut self, _: &Trainer<Scalar>, steps: &[StepLog]) -> anyhow::Result<()> {
            self.0.push(steps.last().map_or(0, |s| s.step));
            Ok(())
        }
        fn after_step(&mut self, t: &mut Trainer<Scalar>, log: &FitLog) -> anyhow::Result<()> {
            self.1.push(t.step - log.steps.len() as u64);
            Ok(())
        }
    }

    /// The best check's model is kept, and training stops after `patience` checks without
    /// improvement: scripted metrics 0.5 (initial), then every 2 steps 0.6, 0.7, 0.65, 0.7
    /// (a tie is no improvement), 0.69 → best at step 4, stop at step 10 of 100.
    #[test]
    fn early_stopping_keeps_the_best_and_stops_after_patience() {
        let mut t = trainer(100);
        let script = [0.5, 0.6, 0.7, 0.65, 0.7, 0.69, 0.99];
        let (mut calls, mut seen) = (0usize, Vec::new());
        let mut es = EarlyStopping::new(2, 3, |m: &Scalar| {
            seen.push(m.w.val().into_scalar::<f32>());
            calls += 1;
            Ok(Some(script[calls - 1]))
        });
        es.observe_initial(&t.model).unwrap();
        fit(
            &mut t,
            &FitOptions::new("test"),
            |m: &Scalar, _| Ok(LossOutput::new(m.w.val().powi_scalar(2).sum())),
            &mut es,
        )
        .unwrap();
        assert_eq!(t.step, 10, "stopped after three checks without improvement");
        assert_eq!(es.best(), Some((4, 0.7)));
        assert_eq!(
            es.curve,
            vec![
                (0, 0.5),
                (2, 0.6),
                (4, 0.7),
                (6, 0.65),
                (8, 0.7),
                (10, 0.69)
            ]
        );
        let best = es.into_best().unwrap().w.val().into_scalar::<f32>();
        drop(t);
        assert_eq!(best, seen[2], "the model of step 4");
        assert!(seen[2] < seen[0], "training moved w");
    }

    #[test]
    fn syncs_on_schedule_and_logs_every_step_once_with_metrics() {
        let mut t = trainer(10);
        let mut hooks = Record(Vec::new(), Vec::new());
        let log = fit(
            &mut t,
            &FitOptions::new("test").sync_every(4),
            |m: &Scalar, _| {
                let loss = m.w.val().powi_scalar(2).sum();
                Ok(LossOutput::new(loss.clone()).with_metric("w", m.w.val().sum()))
            },
            &mut hooks,
        )
        .unwrap();
        assert_eq!(
            log.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            hooks.0,
            vec![4, 5, 8, 10, 0],
            "syncs at 4, 5 (asked), 8 and the end"
        );
        // Steps not yet synced, seen from after_step.
        assert_eq!(hooks.1, vec![1, 2, 3, 0, 0, 1, 2, 0, 1, 0]);
        let w = log.metric("w");
        for (s, wv) in log.steps.iter().zip(&w) {
            assert!(
                (s.loss - wv * wv).abs() < 1e-5,
                "loss = w² of the same step"
            );
        }
    }

    #[test]
    fn a_non_finite_loss_names_its_step() {
        let mut t = trainer(10);
        let err = fit(
            &mut t,
            &FitOptions::new("the probe").sync_every(3),
            |m: &Scalar, step| {
                let loss = m.w.val().sum();
                Ok(LossOutput::new(if step == 6 { loss / 0.0 } else { loss }))
            },
            &mut (),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "the probe loss became inf at step 7");
    }
}
