//! Scheduler `sft`: supervised fine-tuning (or training from scratch) of the recipe's
//! `[policy]` on a text task's reference solutions, with pass@1 on held-out problems drawn by
//! the recipe's `[sampler]` (greedy in `sft-arith`), checkpoints, resume, and plots.

use burn::module::Module;
use std::cell::RefCell;
use std::fmt::Write as _;

use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fit::{FitLog, FitOptions, Hooks, StepLog, fit, train_record};
use crate::lm::fit::sft_loss;
use crate::lm::llama::Llama;
use crate::lm::policy::LmPolicy;
use crate::lm::tokenizer::Tokenizer;
use crate::plot::{Series, line_plot};
use crate::policy::{PolicyInit, Sequence};
use crate::progress::ProgressBar;
use crate::rng::{Rng, RngState, rng};
use crate::tasks::{TextProblem, TextTask, prompt_text, training_text};
use crate::train::{LrSchedule, OptimConfig, Trainer, resume_run};
use crate::{Components, Objective, Role, RunContext, Sampler, Scheduler};

/// Configuration of `sft`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SftTrainerConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub log_every: u64,
    /// Evaluate pass@1 every this many steps (on `eval_problems` test problems; the final
    /// evaluation uses the whole test split).
    pub eval_every: u64,
    pub eval_problems: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub optim: OptimConfig,
}

impl Default for SftTrainerConfig {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch_size: 32,
            log_every: 25,
            eval_every: 500,
            eval_problems: 200,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            optim: OptimConfig {
                lr: 2e-3,
                weight_decay: 0.01,
                warmup_steps: 100,
                schedule: LrSchedule::Cosine,
                min_lr_ratio: 0.05,
                ..OptimConfig::default()
            },
        }
    }
}

/// The scheduler.
pub struct SftTrainer {
    config: SftTrainerConfig,
}

const WHO: &str = "scheduler `sft`";

/// pass@1 of `policy` (inference) on `problems`, its candidates drawn by `sampler`.
pub fn pass_at_1(
    sampler: &dyn Sampler,
    policy: &LmPolicy,
    task: &TextTask,
    problems: &[TextProblem],
) -> anyhow::Result<f64> {
    if problems.is_empty() {
        return Ok(0.0);
    }
    let (cands, _) = crate::sampling::sample_candidates(
        sampler,
        policy,
        task,
        problems,
        0,
        &ProgressBar::hidden(),
    )?;
    Ok(crate::eval::pass_at_1(&cands))
}

struct SftHooks<'a> {
    ctx: &'a mut RunContext,
    cfg: &'a SftTrainerConfig,
    evaluate: &'a dyn Fn(&Llama, &[TextProblem]) -> anyhow::Result<f64>,
    eval_subset: &'a [TextProblem],
    data_rng: &'a RefCell<Rng>,
    curve: Vec<(f64, f64)>,
    losses: Vec<(f64, f64)>,
}

impl Hooks<Llama> for SftHooks<'_> {
    fn sync_at(&self, step: u64) -> bool {
        step.is_multiple_of(self.cfg.log_every.max(1))
    }

    fn logged(&mut self, _: &Trainer<Llama>, steps: &[StepLog]) -> anyhow::Result<()> {
        for s in steps
            .iter()
            .filter(|s| s.step % self.cfg.log_every.max(1) == 0)
        {
            self.ctx.log(train_record(s))?;
            self.losses.push((s.step as f64, s.loss));
        }
        Ok(())
    }

    fn after_step(&mut self, t: &mut Trainer<Llama>, _: &FitLog) -> anyhow::Result<()> {
        let (step, cfg) = (t.step, self.cfg);
        let last = step == cfg.steps;
        if step % cfg.eval_every.max(1) == 0 && !last {
            let acc = (self.evaluate)(&t.model, self.eval_subset)?;
            self.ctx.log(serde_json::json!({ "step": step, "split": "test", "problems": self.eval_subset.len(), "pass@1": acc }))?;
            self.curve.push((step as f64, acc));
            tracing::info!(step, pass_at_1 = acc, "eval");
        }
        if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || last {
            let state = serde_json::json!({ "data_rng": RngState::of(&self.data_rng.borrow()) });
            t.save_checkpoint(
                &self.ctx.run.checkpoints_dir(),
                &state,
                cfg.keep_checkpoints,
            )?;
        }
        Ok(())
    }
}

impl Scheduler for SftTrainer {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>("task", "the problems and their reference solutions"),
            Role::policy("policy", "the model to train: from scratch or a checkpoint"),
            Role::objective("objective", &["logprobs", "mask"], "the fine-tuning loss"),
            Role::sampler("sampler", "how held-out answers are drawn for pass@1"),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = parts.take("task", WHO)?;
        let init: Box<dyn PolicyInit> = parts.take("policy", WHO)?;
        let objective: Box<dyn Objective> = parts.take("objective", WHO)?;
        let sampler: Box<dyn Sampler> = parts.take("sampler", WHO)?;
        let (train, test) = crate::task::train_and_test(task.as_ref(), WHO)?;

        let tokenizer = init.tokenizer(&mut || train.iter().map(training_text).collect())?;
        if let Tokenizer::Hf { inner, .. } = &tokenizer {
            let json = inner
                .to_string(false)
                .map_err(|e| anyhow::anyhow!("{WHO}: {e}"))?;
            crate::run::write_atomic(&ctx.run.path().join("tokenizer.json"), json.as_bytes())?;
        }
        let device = ctx.device.clone().autodiff();
        let policy = init.init(&tokenizer, &mut rng(ctx.seed, 1), &device)?;
        let params = policy.model.config.num_params();
        let mut trainer = Trainer::new(policy.model.clone(), cfg.optim.clone(), cfg.steps);
        let mut data_rng = rng(ctx.seed, 2);
        let mut resumed_from = None;
        if let Some(state) = resume_run(&mut trainer, ctx)? {
            data_rng = serde_json::from_value::<RngState>(state["data_rng"].clone())?.restore();
            resumed_from = Some(trainer.step);
        }

        // Training sequences: [BOS] prompt "\n" solution [EOS], truncated to the context.
        let encoded: Vec<Sequence> = train
            .iter()
            .map(|p| policy.training_sequence(&prompt_text(p), &p.solution))
            .collect();
        let truncated = encoded
            .iter()
            .filter(|s| s.response.last() != Some(&tokenizer.eos()))
            .count();
        if truncated > 0 {
            tracing::warn!(
                truncated,
                "training sequences truncated to the context length"
            );
        }
        let eval_subset: Vec<TextProblem> = test
            .iter()
            .take(cfg.eval_problems.max(1))
            .cloned()
            .collect();
        let mut curve: Vec<(f64, f64)> = Vec::new();
        let mut losses: Vec<(f64, f64)> = Vec::new();
        for r in crate::run::read_metrics(&ctx.run.path().join(crate::run::METRICS_FILE))? {
            if let (Some(s), Some(v)) = (r["step"].as_f64(), r["pass@1"].as_f64()) {
                curve.push((s, v));
            }
            if let (Some(s), Some(v)) = (r["step"].as_f64(), r["loss"].as_f64()) {
                losses.push((s, v));
            }
        }
        let evaluate = |model: &Llama, problems: &[TextProblem]| -> anyhow::Result<f64> {
            pass_at_1(
                sampler.as_ref(),
                &policy.with_model(model.valid()),
                task.as_ref(),
                problems,
            )
        };
        let pb = ctx.progress(cfg.steps, "sft");
        pb.set_position(trainer.step);
        let train_started = std::time::Instant::now();
        let data_rng = RefCell::new(data_rng);
        let mut hooks = SftHooks {
            ctx: &mut *ctx,
            cfg: &cfg,
            evaluate: &evaluate,
            eval_subset: &eval_subset,
            data_rng: &data_rng,
            curve,
            losses,
        };
        let pad = tokenizer.pad();
        fit(
            &mut trainer,
            &FitOptions::new(WHO).progress(&pb).sync_every(cfg.log_every),
            |model: &Llama, _| {
                let mut r = data_rng.borrow_mut();
                let batch: Vec<Sequence> = (0..cfg.batch_size.max(1))
                    .map(|_| encoded[r.random_range(0..encoded.len())].clone())
                    .collect();
                sft_loss(model, objective.as_ref(), &batch, pad, &device)
            },
            &mut hooks,
        )?;
        let (mut curve, losses) = (hooks.curve, hooks.losses);
        pb.finish_and_clear();
        let train_secs = train_started.elapsed().as_secs_f64();
        let final_acc = evaluate(&trainer.model, &test)?;
        ctx.log(serde_json::json!({ "step": trainer.step, "split": "test", "problems": test.len(), "pass@1": final_acc }))?;
        curve.push((trainer.step as f64, final_acc));
        let saved = ctx
            .run
            .save_model("final", &trainer.model.valid(), &tokenizer)?;
        tracing::info!(model = %saved.display(), "saved the trained model");

        line_plot(
            &ctx.run.plots_dir().join("loss.svg"),
            "SFT training loss",
            "step",
            "NLL per response token",
            &[Series {
                name: "train",
                points: losses,
            }],
        )?;
        line_plot(
            &ctx.run.plots_dir().join("pass_at_1.svg"),
            "pass@1 on held-out problems",
            "step",
            "pass@1",
            &[Series {
                name: "test",
                points: curve,
            }],
        )?;

        let mut t = crate::report::Table::new(["quantity", "value"]);
        t.row(["model", &init.describe(params)]);
        t.row(["vocabulary", &format!("{} tokens", tokenizer.vocab_size())]);
        t.row(["training problems", &train.len().to_string()]);
        t.row([
            "steps × batch",
            &format!("{} × {}", cfg.steps, cfg.batch_size),
        ]);
        t.row([
            "training time",
            &format!(
                "{train_secs:.0} s{}",
                resumed_from
                    .map(|r| format!(" (resumed at step {r})"))
                    .unwrap_or_default()
            ),
        ]);
        t.row(["held-out test problems", &test.len().to_string()]);
        t.row([
            "**pass@1 (held out)**",
            &format!("**{:.1}%**", 100.0 * final_acc),
        ]);
        t.row(["total wall time", &format!("{:.0} s", ctx.elapsed_secs())]);
        let mut s = String::new();
        writeln!(
            s,
            "# {} — supervised training of a transformer on reasoning problems\n",
            ctx.recipe
        )?;
        s.push_str(&t.markdown());
        writeln!(s, "\nPlots: `plots/loss.svg`, `plots/pass_at_1.svg`.")?;
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

crate::register_component! {
    kind: Scheduler,
    name: "sft",
    description: "supervised fine-tuning of the [policy] on a text task's solutions; pass@1 on held-out problems",
    config: SftTrainerConfig,
    build: |config: SftTrainerConfig, _ctx| {
        if config.batch_size == 0 || config.batch_size > 4096 {
            return Err(crate::registry::ConfigError::field("batch_size", "must be between 1 and 4096").into());
        }
        config.optim.validate().map_err(|e| e.within("optim"))?;
        Ok(Box::new(SftTrainer { config }) as Box<dyn Scheduler>)
    },
}
