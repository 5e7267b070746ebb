//! Scheduler `supervised`: minibatch training of an MLP regressor through an objective.

use std::fmt::Write as _;

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::regression::{RegressionExample, RegressionTask, least_squares, linear_mse};
use crate::rng::{Rng, RngState, rng};
use crate::train::{OptimConfig, Trainer, resume_run};
use crate::{Components, Objective, RunContext, Scheduler, TensorMap};

/// Configuration of `supervised`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Hidden layer widths of the MLP (empty: a linear model).
    pub hidden: Vec<usize>,
    /// Log the training loss every this many steps.
    pub log_every: u64,
    /// Evaluate on the test split every this many steps.
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// The optimiser.
    pub optim: OptimConfig,
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        Self {
            steps: 400,
            batch_size: 64,
            hidden: Vec::new(),
            log_every: 10,
            eval_every: 50,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            optim: OptimConfig {
                lr: 0.05,
                ..OptimConfig::default()
            },
        }
    }
}

/// A dense layer `x·W + b`.
#[derive(Module, Debug)]
pub struct Dense {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    /// `U(−k, k)` weights with `k = 1/√d_in` and zero bias, drawn from `r`.
    pub fn init(d_in: usize, d_out: usize, r: &mut Rng, device: &Device) -> Self {
        let k = 1.0 / (d_in as f32).sqrt();
        let w: Vec<f32> = (0..d_in * d_out).map(|_| r.random_range(-k..k)).collect();
        Self {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [d_in, d_out]),
                device,
            )),
            bias: Param::from_tensor(Tensor::zeros([d_out], device)),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim(0)
    }
}

/// An MLP with ReLU between layers.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
}

impl Mlp {
    pub fn init(d_in: usize, hidden: &[usize], d_out: usize, r: &mut Rng, device: &Device) -> Self {
        let dims: Vec<usize> = std::iter::once(d_in)
            .chain(hidden.iter().copied())
            .chain([d_out])
            .collect();
        Self {
            layers: dims
                .windows(2)
                .map(|w| Dense::init(w[0], w[1], r, device))
                .collect(),
        }
    }

    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// `[n, dim]` inputs and `[n, 1]` targets.
fn tensors(examples: &[&RegressionExample], device: &Device) -> (Tensor<2>, Tensor<2>) {
    let dim = examples[0].x.len();
    let x: Vec<f32> = examples.iter().flat_map(|e| e.x.iter().copied()).collect();
    let y: Vec<f32> = examples.iter().map(|e| e.y).collect();
    (
        Tensor::from_data(TensorData::new(x, [examples.len(), dim]), device),
        Tensor::from_data(TensorData::new(y, [examples.len(), 1]), device),
    )
}

/// The `supervised` scheduler.
pub struct Supervised {
    config: SupervisedConfig,
}

struct Eval {
    mse: f64,
    accuracy: f64,
}

fn evaluate(
    model: &Mlp,
    task: &RegressionTask,
    examples: &[RegressionExample],
    device: &Device,
) -> anyhow::Result<Eval> {
    let model = model.valid();
    let refs: Vec<&RegressionExample> = examples.iter().collect();
    let (x, _) = tensors(&refs, device);
    let pred: Vec<f32> = model
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let n = examples.len() as f64;
    let mse = examples
        .iter()
        .zip(&pred)
        .map(|(e, p)| ((e.y - p) as f64).powi(2))
        .sum::<f64>()
        / n;
    let correct = examples
        .iter()
        .zip(&pred)
        .filter(|(e, p)| task.check(e, p))
        .count();
    Ok(Eval {
        mse,
        accuracy: correct as f64 / n,
    })
}

const WHO: &str = "scheduler `supervised`";

impl Scheduler for Supervised {
    fn roles(&self) -> Vec<crate::Role> {
        vec![
            crate::Role::task::<RegressionTask>("task", "the regression examples"),
            crate::Role::objective(
                "objective",
                &["prediction", "target"],
                "the regression loss",
            ),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<RegressionTask> = parts.take("task", WHO)?;
        let objective: Box<dyn Objective> = parts.take("objective", WHO)?;
        let (train, test) = crate::task::train_and_test(task.as_ref(), WHO)?;
        let dim = train[0].x.len();
        anyhow::ensure!(
            train.iter().chain(&test).all(|e| e.x.len() == dim),
            "{WHO}: examples of different dimensions"
        );

        let device = ctx.device.clone().autodiff();
        let model = Mlp::init(dim, &cfg.hidden, 1, &mut rng(ctx.seed, 1), &device);
        let params = model.num_params();
        let mut trainer = Trainer::new(model, cfg.optim.clone(), cfg.steps);
        let mut data_rng = rng(ctx.seed, 2);
        let ckpt_dir = ctx.run.checkpoints_dir();

        let mut resumed_from = None;
        if let Some(state) = resume_run(&mut trainer, ctx)? {
            data_rng = serde_json::from_value::<RngState>(state["data_rng"].clone())?.restore();
            resumed_from = Some(trainer.step);
        }
        if resumed_from.is_none() {
            let e = evaluate(&trainer.model, task.as_ref(), &test, &ctx.device)?;
            ctx.log(serde_json::json!({ "step": 0, "split": "test", "mse": e.mse, "accuracy": e.accuracy }))?;
        }

        let pb = ctx.progress(cfg.steps, "supervised");
        pb.set_position(trainer.step);
        let data_rng = std::cell::RefCell::new(data_rng);
        struct Hooks<'a> {
            ctx: &'a mut RunContext,
            cfg: &'a SupervisedConfig,
            task: &'a RegressionTask,
            test: &'a [RegressionExample],
            data_rng: &'a std::cell::RefCell<Rng>,
            ckpt_dir: std::path::PathBuf,
            last: Option<Eval>,
        }
        impl crate::fit::Hooks<Mlp> for Hooks<'_> {
            fn logged(
                &mut self,
                _: &Trainer<Mlp>,
                steps: &[crate::fit::StepLog],
            ) -> anyhow::Result<()> {
                for s in steps
                    .iter()
                    .filter(|s| s.step % self.cfg.log_every.max(1) == 0)
                {
                    self.ctx.log(crate::fit::train_record(s))?;
                }
                Ok(())
            }
            fn after_step(
                &mut self,
                t: &mut Trainer<Mlp>,
                _: &crate::fit::FitLog,
            ) -> anyhow::Result<()> {
                let (step, cfg) = (t.step, self.cfg);
                if step % cfg.eval_every.max(1) == 0 || step == cfg.steps {
                    let e = evaluate(&t.model, self.task, self.test, &self.ctx.device)?;
                    self.ctx.log(serde_json::json!({ "step": step, "split": "test", "mse": e.mse, "accuracy": e.accuracy }))?;
                    self.last = Some(e);
                }
                if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)
                    || step == cfg.steps
                {
                    let state =
                        serde_json::json!({ "data_rng": RngState::of(&self.data_rng.borrow()) });
                    t.save_checkpoint(&self.ckpt_dir, &state, cfg.keep_checkpoints)?;
                }
                Ok(())
            }
        }
        let mut hooks = Hooks {
            ctx: &mut *ctx,
            cfg: &cfg,
            task: task.as_ref(),
            test: &test,
            data_rng: &data_rng,
            ckpt_dir,
            last: None,
        };
        let opts = crate::fit::FitOptions::new(WHO)
            .progress(&pb)
            .sync_every(cfg.log_every);
        crate::fit::fit(
            &mut trainer,
            &opts,
            |model: &Mlp, _| {
                let mut r = data_rng.borrow_mut();
                let batch: Vec<&RegressionExample> = (0..cfg.batch_size.max(1))
                    .map(|_| &train[r.random_range(0..train.len())])
                    .collect();
                let (x, y) = tensors(&batch, &device);
                objective.loss(
                    &TensorMap::new()
                        .with("prediction", model.forward(x))
                        .with("target", y),
                )
            },
            &mut hooks,
        )?;
        let last = hooks.last;
        pb.finish_and_clear();
        let last = match last {
            Some(e) => e,
            None => evaluate(&trainer.model, task.as_ref(), &test, &ctx.device)?,
        };

        // The yardsticks: the closed-form least-squares fit, and predicting the mean.
        let ols = least_squares(&train).map(|(w, b)| linear_mse(&w, b, &test));
        let mean = train.iter().map(|e| e.y as f64).sum::<f64>() / train.len() as f64;
        let mean_mse = test
            .iter()
            .map(|e| (e.y as f64 - mean).powi(2))
            .sum::<f64>()
            / test.len() as f64;
        let mut s = String::new();
        writeln!(s, "# {} — supervised regression\n", ctx.recipe)?;
        writeln!(
            s,
            "Model: MLP {dim} → {:?} → 1 ({params} parameters), {} steps of batch {}, seed {}.",
            cfg.hidden, cfg.steps, cfg.batch_size, ctx.seed
        )?;
        if let Some(step) = resumed_from {
            writeln!(s, "Resumed from the checkpoint at step {step}.")?;
        }
        writeln!(s, "\n| quantity | test MSE |\n|---|---|")?;
        writeln!(s, "| trained model | {:.5} |", last.mse)?;
        if let Some(o) = ols {
            writeln!(
                s,
                "| least-squares optimum (closed form, same train set) | {o:.5} |"
            )?;
        }
        writeln!(s, "| predict the train mean | {mean_mse:.5} |")?;
        writeln!(
            s,
            "\nTest accuracy (prediction within the task's tolerance): {:.1}%.",
            100.0 * last.accuracy
        )?;
        if let Some(o) = ols {
            let holds = last.mse <= 1.1 * o;
            writeln!(
                s,
                "\nClaim: gradient training reaches the least-squares optimum (test MSE within 10%). \
                 Measured ratio {:.3}: **{}**.",
                last.mse / o,
                if holds { "holds" } else { "does not hold" }
            )?;
        }
        writeln!(s, "\nWall time: {:.2} s.", ctx.elapsed_secs())?;
        ctx.run.write_summary(&s)?;
        tracing::info!(mse = last.mse, accuracy = last.accuracy, "finished");
        Ok(())
    }
}

crate::register_component! {
    kind: Scheduler,
    name: "supervised",
    description: "minibatch training of an MLP regressor through any objective (eval, checkpoints, resume)",
    config: SupervisedConfig,
    build: |config: SupervisedConfig, _ctx| {
        let limit = |field: &str, v: usize, max: usize| -> anyhow::Result<()> {
            if v == 0 || v > max {
                return Err(crate::registry::ConfigError::field(field, format!("must be between 1 and {max} (got {v})")).into());
            }
            Ok(())
        };
        limit("batch_size", config.batch_size, 1 << 20)?;
        for h in &config.hidden {
            limit("hidden", *h, 1 << 16)?;
        }
        config.optim.validate().map_err(|e| e.within("optim"))?;
        Ok(Box::new(Supervised { config }) as Box<dyn Scheduler>)
    },
}
