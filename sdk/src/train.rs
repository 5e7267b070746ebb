//! Training machinery shared by every method: AdamW with warmup and a decay schedule,
//! gradient clipping, and atomic checkpoints (model, optimiser state, step, random streams)
//! that a killed run resumes from exactly.
//!
//! It is generic over the model (any burn [`Module`]) and knows nothing of batches: a
//! scheduler computes a loss however it likes and hands it to [`Trainer::step`].

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::optim::{AdamWSettings, FusedAdamW};
use crate::registry::ConfigError;

/// The optimiser state's file in a checkpoint: the fused AdamW's, or burn's.
const FUSED_STATE: &str = "optim.safetensors";
const BURN_STATE: &str = "optim.bpk";
use crate::run::write_atomic;

/// How the learning rate decays after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Linear,
    Cosine,
    /// Reduce on plateau: constant after warmup, multiplied by `plateau_factor` whenever the
    /// metric handed to [`Trainer::observe`] (higher is better) has not improved for more than
    /// `plateau_patience` consecutive observations (PyTorch's `ReduceLROnPlateau`, mode `max`,
    /// threshold 0).
    Plateau,
}

/// AdamW and its learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Steps of linear warmup from `lr / warmup_steps` to `lr`.
    pub warmup_steps: u64,
    /// Decay after warmup.
    pub schedule: LrSchedule,
    /// The final learning rate as a fraction of `lr` (linear and cosine).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (none: no clipping).
    pub grad_clip_norm: Option<f32>,
    /// `plateau` schedule: the factor applied to the learning rate on a plateau.
    pub plateau_factor: f64,
    /// `plateau` schedule: observations without improvement tolerated before reducing.
    pub plateau_patience: u32,
    /// `plateau` schedule: only observations made at multiples of this many steps count (an
    /// epoch-sized interval, as PyTorch's `ReduceLROnPlateau` stepped once per epoch); 0:
    /// every observation counts.
    pub plateau_every: u64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            min_lr_ratio: 0.0,
            grad_clip_norm: Some(1.0),
            plateau_factor: 0.5,
            plateau_patience: 2,
            plateau_every: 0,
        }
    }
}

impl OptimConfig {
    /// Errors naming the field when the settings cannot train: `lr` positive, `β₁`, `β₂` in
    /// `[0, 1)`, `eps` positive, `weight_decay` non-negative, `min_lr_ratio` in `[0, 1]`,
    /// `grad_clip_norm` positive, `plateau_factor` in `(0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, m: &str| Err(ConfigError::field(f, m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        for (f, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(f, "must be in [0, 1)");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", "must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio", "must be in [0, 1]");
        }
        if self
            .grad_clip_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return bad(
                "grad_clip_norm",
                "must be a positive number (or absent: no clipping)",
            );
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor <= 1.0) {
            return bad("plateau_factor", "must be in (0, 1]");
        }
        Ok(())
    }
}

/// Where a `plateau` schedule stands: the best metric so far, the observations since it
/// improved, and the factor the learning rate is multiplied by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub best: Option<f64>,
    pub bad: u32,
    pub scale: f64,
}

impl Default for Plateau {
    fn default() -> Self {
        Self {
            best: None,
            bad: 0,
            scale: 1.0,
        }
    }
}

impl Plateau {
    /// Records `metric` (higher is better); returns whether the learning rate was reduced.
    pub fn observe(&mut self, metric: f64, factor: f64, patience: u32) -> bool {
        if self.best.is_none_or(|b| metric > b) {
            self.best = Some(metric);
            self.bad = 0;
            return false;
        }
        self.bad += 1;
        if self.bad > patience {
            self.scale *= factor;
            self.bad = 0;
            return true;
        }
        false
    }
}

/// The learning rate of 0-based `step` out of `total_steps`:
/// warmup `lr·(step+1)/warmup`, then `lr·(m + (1−m)·d(p))` with `p` the fraction of the decay
/// phase done, `m = min_lr_ratio`, and `d(p) = 1` (constant), `1 − p` (linear) or
/// `(1 + cos πp)/2` (cosine).
pub fn learning_rate(cfg: &OptimConfig, step: u64, total_steps: u64) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(cfg.warmup_steps).max(1);
    let p = ((step - cfg.warmup_steps) as f64 / decay_steps as f64).clamp(0.0, 1.0);
    let d = match cfg.schedule {
        LrSchedule::Constant | LrSchedule::Plateau => 1.0,
        LrSchedule::Linear => 1.0 - p,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    };
    cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * d)
}

/// Steps, batch and optimiser of one training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Stage {
    pub steps: u64,
    /// Sequences (SFT, ORM) or preference pairs (DPO) per step.
    pub batch_size: usize,
    pub optim: OptimConfig,
}

impl Default for Stage {
    fn default() -> Self {
        Self {
            steps: 500,
            batch_size: 32,
            optim: OptimConfig {
                lr: 3e-3,
                weight_decay: 0.01,
                warmup_steps: 40,
                schedule: LrSchedule::Cosine,
                min_lr_ratio: 0.05,
                ..OptimConfig::default()
            },
        }
    }
}

impl Stage {
    /// `steps` of `batch_size` with `optim`.
    pub fn new(steps: u64, batch_size: usize, optim: OptimConfig) -> Self {
        Self {
            steps,
            batch_size,
            optim,
        }
    }

    /// Errors naming the field: at least one step and one example per batch, and a valid
    /// optimiser (`optim.lr`, …).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.steps == 0 {
            return Err(ConfigError::field("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::field("batch_size", "must be at least 1"));
        }

        self.optim.validate().map_err(|e| e.within("optim"))
    }
}

/// Scales every gradient of `model` by `min(1, max_norm / (‖g‖ + 1e-6))`, where `‖g‖` is the
/// global norm `√(Σ over all parameters of Σ g²)`: PyTorch's `clip_grad_norm_`. Returns the
/// norm before clipping (a `[1]` tensor; read it on the host only when needed).
pub fn clip_global_norm<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f32,
) -> Option<Tensor<1>> {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        scale: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let scaled = g * self.scale.clone().unsqueeze::<D>();
                self.grads.register::<D>(param.id, scaled);
            }
        }
    }
    let mut sum = SumSquares { grads, total: None };
    model.visit(&mut sum);
    let norm = sum.total?.sqrt();
    let scale = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    model.visit(&mut Scale { grads, scale });
    Some(norm)
}

/// The loss's value; an error naming `what` and the step when it is not finite.
pub fn finite_loss(loss: &Tensor<1>, what: &str, step: u64) -> anyhow::Result<f64> {
    let v = loss.clone().into_scalar::<f32>();
    anyhow::ensure!(v.is_finite(), "{what} loss became {v} at step {}", step + 1);
    Ok(v as f64)
}

/// A model, its optimiser, and the step count.
pub struct Trainer<M: Module> {
    /// The model being trained (on an autodiff device).
    pub model: M,
    optim: Optim,
    config: OptimConfig,
    /// Optimiser steps taken.
    pub step: u64,
    /// Steps the run will take (for the schedule).
    pub total_steps: u64,
    /// The `plateau` schedule's state (unused by the other schedules).
    pub plateau: Plateau,
}

/// The optimiser: the [fused AdamW](crate::optim::FusedAdamW) on `cpu` (burn's `flex`),
/// burn's AdamW (after [`clip_global_norm`]) elsewhere.
enum Optim {
    Fused(FusedAdamW),
    Burn(ModuleOptimizer),
}

/// Whether the fused optimiser takes the model (the first parameter's device says).
fn on_host<M: Module>(model: &M) -> bool {
    let devices = model.devices();
    devices.first().is_none_or(crate::optim::host_device)
}

impl<M: Module> Trainer<M> {
    /// A trainer for `model` (already on an autodiff device).
    pub fn new(model: M, config: OptimConfig, total_steps: u64) -> Self {
        // Clipping is ours (the fused optimiser's, or [`clip_global_norm`]): burn's
        // `GradientClippingConfig::Norm` clips each parameter tensor by its own norm.
        let optim = if on_host(&model) && crate::lm::fused::switched_on() {
            Optim::Fused(FusedAdamW::new(AdamWSettings {
                beta1: config.beta1,
                beta2: config.beta2,
                eps: config.eps,
                weight_decay: config.weight_decay,
            }))
        } else {
            Optim::Burn(
                AdamWConfig::new()
                    .with_beta_1(config.beta1)
                    .with_beta_2(config.beta2)
                    .with_epsilon(config.eps)
                    .with_weight_decay(config.weight_decay)
                    .init(),
            )
        };
        Self {
            model,
            optim,
            config,
            step: 0,
            total_steps,
            plateau: Plateau::default(),
        }
    }

    /// The learning rate the next step will use.
    pub fn lr(&self) -> f64 {
        learning_rate(&self.config, self.step, self.total_steps) * self.plateau.scale
    }

    /// Hands a validation metric (higher is better) to the `plateau` schedule; returns whether
    /// the learning rate was reduced. Other schedules ignore it, and so does `plateau` between
    /// multiples of `plateau_every` steps.
    pub fn observe(&mut self, metric: f64) -> bool {
        if self.config.schedule != LrSchedule::Plateau || !metric.is_finite() {
            return false;
        }
        if !self.plateau_counts_at(self.step) {
            return false;
        }
        self.plateau.observe(
            metric,
            self.config.plateau_factor,
            self.config.plateau_patience,
        )
    }

    /// Ends training after the current step: a [`crate::fit::fit`] loop stops before its next
    /// batch (early stopping). The schedule of the steps taken is unchanged.
    pub fn stop(&mut self) {
        self.total_steps = self.step;
    }

    /// Whether an observation after `step` steps counts for the `plateau` schedule.
    pub fn plateau_counts_at(&self, step: u64) -> bool {
        let every = self.config.plateau_every;
        self.config.schedule == LrSchedule::Plateau && (every == 0 || step.is_multiple_of(every))
    }

    /// Back-propagates `loss` (computed from `self.model`) and takes one optimiser step;
    /// returns the learning rate used.
    pub fn step(&mut self, loss: Tensor<1>) -> f64 {
        let lr = self.lr();
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let clip = self.config.grad_clip_norm;
        match &mut self.optim {
            Optim::Fused(optim) => {
                self.model = optim.step(lr, self.model.clone(), grads, clip).0;
            }
            Optim::Burn(optim) => {
                if let Some(max) = clip {
                    clip_global_norm(&self.model, &mut grads, max);
                }
                self.model = optim.step(lr, self.model.clone(), grads);
            }
        }
        self.step += 1;
        lr
    }

    /// Writes a checkpoint of the model, optimiser, step and `state` (the scheduler's own
    /// resumable state: random streams, data position, ...) under `dir/step-NNNNNNNN/`,
    /// atomically, and points `dir/LATEST` at it. Keeps the `keep` newest checkpoints.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        state: &serde_json::Value,
        keep: usize,
    ) -> anyhow::Result<PathBuf> {
        let name = format!("step-{:08}", self.step);
        let tmp = dir.join(format!(".tmp-{name}"));
        let final_dir = dir.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let model = self
            .model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("serialising the model: {e:?}"))?;
        write_atomic(&tmp.join("model.bpk"), &model)?;
        match &self.optim {
            Optim::Fused(optim) => write_atomic(&tmp.join(FUSED_STATE), &optim.to_bytes()?)?,
            Optim::Burn(optim) => {
                let bytes = optim
                    .into_bytes()
                    .map_err(|e| anyhow::anyhow!("serialising the optimiser: {e:?}"))?;
                write_atomic(&tmp.join(BURN_STATE), &bytes)?
            }
        }
        let meta = serde_json::json!({
            "step": self.step,
            "total_steps": self.total_steps,
            "plateau": self.plateau,
            "state": state,
        });
        write_atomic(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir)?;
        write_atomic(&dir.join("LATEST"), name.as_bytes())?;
        // Drop old checkpoints.
        let mut all: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
            })
            .collect();
        all.sort();
        while all.len() > keep.max(1) {
            let old = all.remove(0);
            let _ = fs::remove_dir_all(old);
        }
        Ok(final_dir)
    }

    /// Loads the checkpoint `dir/LATEST` points to into this trainer (whose model must have
    /// the same architecture); returns the scheduler state saved with it, or `None` when there
    /// is no checkpoint.
    pub fn load_latest(&mut self, dir: &Path) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(ckpt) = latest_checkpoint(dir)? else {
            return Ok(None);
        };
        let model = fs::read(ckpt.join("model.bpk"))
            .with_context(|| format!("reading {}", ckpt.join("model.bpk").display()))?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(model))
            .map_err(|e| anyhow::anyhow!("{}: not a model checkpoint: {e:?}", ckpt.display()))?;
        self.model =
            self.model.clone().try_load_record(record).map_err(|e| {
                anyhow::anyhow!("{}: does not fit this model: {e:?}", ckpt.display())
            })?;
        let read = |name: &str| {
            fs::read(ckpt.join(name)).with_context(|| {
                format!(
                    "{}: no {name} (the checkpoint was written by the other optimiser: \
                     resume on the device that wrote it, or with the same LMLAB_FUSED)",
                    ckpt.display()
                )
            })
        };
        match &mut self.optim {
            Optim::Fused(optim) => optim
                .load_bytes(&read(FUSED_STATE)?)
                .with_context(|| format!("{}: bad optimiser state", ckpt.display()))?,
            Optim::Burn(optim) => {
                let bytes = read(BURN_STATE)?;
                let fresh = std::mem::replace(optim, AdamWConfig::new().init());
                *optim = fresh
                    .from_bytes(Bytes::from_bytes_vec(bytes))
                    .map_err(|e| {
                        anyhow::anyhow!("{}: bad optimiser state: {e:?}", ckpt.display())
                    })?;
            }
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(ckpt.join("state.json"))?)
                .with_context(|| format!("{}: bad state.json", ckpt.display()))?;
        let Some(step) = meta["step"].as_u64() else {
            bail!("{}: state.json has no step", ckpt.display());
        };
        self.step = step;
        self.plateau = match meta.get("plateau") {
            Some(p) => serde_json::from_value(p.clone())
                .with_context(|| format!("{}: bad plateau state", ckpt.display()))?,
            None => Plateau::default(),
        };
        Ok(Some(meta["state"].clone()))
    }
}

/// What `--resume` does for a trainer: when the run is resumed, load the run directory's
/// latest checkpoint (if it has one) and drop the metrics logged after it, so they are written
/// once, by the resumed run. Returns the scheduler state saved with the checkpoint.
pub fn resume_run<M: Module>(
    trainer: &mut Trainer<M>,
    ctx: &mut crate::RunContext,
) -> anyhow::Result<Option<serde_json::Value>> {
    if !ctx.resume {
        return Ok(None);
    }
    let state = trainer.load_latest(&ctx.run.checkpoints_dir())?;
    ctx.run.truncate_metrics_after(trainer.step)?;
    Ok(state)
}

/// The checkpoint directory `dir/LATEST` names, if any.
pub fn latest_checkpoint(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let latest = dir.join("LATEST");
    match fs::read_to_string(&latest) {
        Ok(name) => {
            let p = dir.join(name.trim());
            if !p.is_dir() {
                bail!(
                    "{} names {}, which does not exist",
                    latest.display(),
                    p.display()
                );
            }
            Ok(Some(p))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", latest.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn schedule_matches_its_formula(
            lr in 1e-5f64..1.0, warmup in 0u64..50, total in 1u64..500, step in 0u64..600,
            min in 0.0f64..1.0, kind in 0usize..3,
        ) {
            let schedule = [LrSchedule::Constant, LrSchedule::Linear, LrSchedule::Cosine][kind];
            let cfg = OptimConfig { lr, warmup_steps: warmup, schedule, min_lr_ratio: min, ..Default::default() };
            let got = learning_rate(&cfg, step, total);
            prop_assert!(got > 0.0 || (min == 0.0 && step >= warmup));
            prop_assert!(got <= lr * (1.0 + 1e-12));
            if step < warmup {
                prop_assert!((got - lr * (step + 1) as f64 / warmup as f64).abs() < 1e-12);
            } else if schedule == LrSchedule::Constant {
                prop_assert!((got - lr).abs() < 1e-12);
            } else if step >= total {
                prop_assert!((got - lr * min).abs() < 1e-9);
            }
        }
    }

    proptest! {
        #[test]
        fn plateau_reduces_only_after_patience_is_exceeded(
            metrics in proptest::collection::vec(0.0f64..1.0, 1..40), patience in 0u32..4,
        ) {
            // Reference: PyTorch's ReduceLROnPlateau (mode max, threshold 0, cooldown 0).
            let mut p = Plateau::default();
            let (mut best, mut bad, mut scale) = (f64::NEG_INFINITY, 0u32, 1.0f64);
            for &m in &metrics {
                if m > best { best = m; bad = 0; } else { bad += 1; }
                if bad > patience { scale *= 0.5; bad = 0; }
                p.observe(m, 0.5, patience);
                prop_assert_eq!(p.scale, scale);
                prop_assert_eq!(p.bad, bad);
            }
        }
    }

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<2>>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// With loss = Σ cₐ·a + Σ c_b·b the gradients are the coefficients: clipping must
        /// scale all of them by min(1, max / (‖(cₐ, c_b)‖ + 1e-6)), one factor for all.
        #[test]
        fn clipping_scales_by_the_global_norm(
            ca in proptest::collection::vec(-3.0f32..3.0, 3),
            cb in proptest::collection::vec(-3.0f32..3.0, 4),
            max in 0.05f32..8.0,
        ) {
            use burn::tensor::TensorData;
            let device = crate::device::test_device().autodiff();
            let t1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [3]), &device);
            let model = Two {
                a: Param::from_tensor(t1(vec![0.5; 3])),
                b: Param::from_tensor(Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 4], [2, 2]), &device)),
            };
            let coef_b = Tensor::<2>::from_data(TensorData::new(cb.clone(), [2, 2]), &device);
            let loss = (model.a.val() * t1(ca.clone())).sum() + (model.b.val() * coef_b).sum();
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            let norm = clip_global_norm(&model, &mut grads, max).unwrap().into_scalar::<f32>();
            let want = ca.iter().chain(&cb).map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            prop_assert!((norm as f64 - want).abs() <= 1e-4 * (1.0 + want));
            let scale = (max as f64 / (want + 1e-6)).min(1.0);
            let ga: Vec<f32> = grads.get::<1>(model.a.id).unwrap().into_data().convert::<f32>().try_into_vec().unwrap();
            let gb: Vec<f32> = grads.get::<2>(model.b.id).unwrap().into_data().convert::<f32>().try_into_vec().unwrap();
            for (g, c) in ga.iter().chain(&gb).zip(ca.iter().chain(&cb)) {
                prop_assert!((*g as f64 - scale * *c as f64).abs() <= 1e-5 * (1.0 + c.abs() as f64), "{g} vs {scale}·{c}");
            }
        }
    }

    /// With `plateau_every`, only observations at multiples of it count: a metric that never
    /// improves, observed every 100 steps with an interval of 700 and patience 2, halves the
    /// rate first at step 4 × 700 (the first observation sets the best, three more are bad),
    /// however many observations fall between.
    #[test]
    fn plateau_counts_only_every_interval() {
        use burn::tensor::TensorData;
        let device = crate::device::test_device().autodiff();
        let model = Two {
            a: Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(vec![0.0f32; 3], [3]),
                &device,
            )),
            b: Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(vec![0.0f32; 4], [2, 2]),
                &device,
            )),
        };
        let cfg = OptimConfig {
            schedule: LrSchedule::Plateau,
            plateau_every: 700,
            plateau_patience: 2,
            ..OptimConfig::default()
        };
        let mut every = Trainer::new(
            model.clone(),
            OptimConfig {
                plateau_every: 0,
                ..cfg.clone()
            },
            10_000,
        );
        let mut t = Trainer::new(model, cfg, 10_000);
        let mut first_every = None;
        let mut reductions = Vec::new();
        for step in (100..=7000).step_by(100) {
            t.step = step;
            every.step = step;
            if t.observe(0.5) {
                reductions.push(step);
            }
            if every.observe(0.5) && first_every.is_none() {
                first_every = Some(step);
            }
        }
        // After a reduction the count starts over (the best stays): 2800, 4900, 7000.
        assert_eq!(reductions, vec![2800, 4900, 7000]);
        assert_eq!(t.plateau.scale, 0.125);
        // Counting every observation, the rate halves at the fourth one (step 400).
        assert_eq!(first_every, Some(400));
    }

    #[test]
    fn optimiser_settings_are_validated_by_field() {
        let ok = OptimConfig::default();
        assert!(ok.validate().is_ok());
        for (cfg, field) in [
            (
                OptimConfig {
                    lr: 0.0,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                OptimConfig {
                    lr: f64::NAN,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                OptimConfig {
                    beta1: 2.0,
                    ..ok.clone()
                },
                "beta1",
            ),
            (
                OptimConfig {
                    beta2: 1.0,
                    ..ok.clone()
                },
                "beta2",
            ),
            (
                OptimConfig {
                    eps: 0.0,
                    ..ok.clone()
                },
                "eps",
            ),
            (
                OptimConfig {
                    weight_decay: -1.0,
                    ..ok.clone()
                },
                "weight_decay",
            ),
            (
                OptimConfig {
                    min_lr_ratio: 1.5,
                    ..ok.clone()
                },
                "min_lr_ratio",
            ),
            (
                OptimConfig {
                    grad_clip_norm: Some(0.0),
                    ..ok.clone()
                },
                "grad_clip_norm",
            ),
            (
                OptimConfig {
                    plateau_factor: 0.0,
                    ..ok.clone()
                },
                "plateau_factor",
            ),
        ] {
            assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some(field));
        }
        let st = Stage {
            optim: OptimConfig { lr: -1.0, ..ok },
            ..Stage::default()
        };
        assert_eq!(
            st.validate().unwrap_err().field.as_deref(),
            Some("optim.lr")
        );
        assert_eq!(
            Stage {
                steps: 0,
                ..Stage::default()
            }
            .validate()
            .unwrap_err()
            .field
            .as_deref(),
            Some("steps")
        );
    }

    #[test]
    fn cosine_midpoint_is_half_way() {
        let cfg = OptimConfig {
            lr: 1.0,
            schedule: LrSchedule::Cosine,
            ..Default::default()
        };
        assert!((learning_rate(&cfg, 50, 100) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(&cfg, 0, 100), 1.0);
    }
}
