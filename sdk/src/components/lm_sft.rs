//! Scheduler `sft`: supervised fine-tuning (or training from scratch) of a Llama-style
//! transformer on a text task's reference solutions, with greedy pass@1 evaluation on held-out
//! problems, checkpoints, resume, and plots.

use std::fmt::Write as _;

use burn::module::Module;
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lm::fit::sft_loss;
use crate::lm::llama::{Llama, LlamaConfig};
use crate::lm::policy::LmPolicy;
use crate::lm::tokenizer::{CharTokenizer, Tokenizer, train_bpe};
use crate::plot::{Series, line_plot};
use crate::policy::SamplingParams;
use crate::rng::{RngState, rng};
use crate::tasks::{TextProblem, TextTask};
use crate::train::{LrSchedule, OptimConfig, Trainer, resume_run};
use crate::{Components, Objective, Policy, RunContext, Scheduler};

/// The transformer's size (the vocabulary comes from the tokenizer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSize {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub hidden_dim: usize,
    pub max_seq_len: usize,
}

impl ModelSize {
    /// The Llama configuration of this size over `vocab_size` tokens (tied embeddings, no value
    /// head, RoPE θ = 10⁴, RMSNorm ε = 1e-5).
    pub fn llama_config(&self, vocab_size: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size,
            dim: self.dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            hidden_dim: self.hidden_dim,
            max_seq_len: self.max_seq_len,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
        }
    }

    /// Whether the size is buildable and not absurdly large (what a config check reports).
    pub fn validate(&self) -> Result<(), String> {
        if self.dim > 8192
            || self.n_layers > 128
            || self.hidden_dim > 65536
            || self.max_seq_len > 1 << 16
        {
            return Err("too large for this trainer".into());
        }
        self.llama_config(1).validate()
    }
}

impl Default for ModelSize {
    fn default() -> Self {
        Self {
            dim: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            hidden_dim: 352,
            max_seq_len: 160,
        }
    }
}

/// How the vocabulary of a model trained from scratch is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per character seen in the task.
    Char,
    /// A byte-level BPE trained on the training texts (digits never merged with digits).
    Bpe,
}

/// The tokenizer of a model trained from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    pub kind: TokenizerKind,
    /// Merges of the BPE (ignored for `char`).
    pub bpe_merges: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            kind: TokenizerKind::Bpe,
            bpe_merges: 200,
        }
    }
}

impl TokenizerConfig {
    /// Builds the tokenizer from the texts a model will see (deterministic in them).
    pub fn build(&self, texts: &[String]) -> anyhow::Result<Tokenizer> {
        Ok(match self.kind {
            TokenizerKind::Char => {
                let mut chars: Vec<char> = texts.iter().flat_map(|t| t.chars()).collect();
                chars.sort_unstable();
                chars.dedup();
                Tokenizer::Char(CharTokenizer::new(&chars.iter().collect::<String>()))
            }
            TokenizerKind::Bpe => train_bpe(texts.iter().map(String::as_str), self.bpe_merges)?,
        })
    }

    /// One line for a summary table.
    pub fn describe(&self, t: &Tokenizer) -> String {
        match self.kind {
            TokenizerKind::Char => format!("{} tokens, one per character", t.vocab_size()),
            TokenizerKind::Bpe => format!(
                "{} tokens: byte-level BPE trained on the training split ({} merges asked)",
                t.vocab_size(),
                self.bpe_merges
            ),
        }
    }
}

/// Configuration of `sft`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SftTrainerConfig {
    pub model: ModelSize,
    pub tokenizer: TokenizerConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub log_every: u64,
    /// Evaluate pass@1 every this many steps (on `eval_problems` test problems; the final
    /// evaluation uses the whole test split).
    pub eval_every: u64,
    pub eval_problems: usize,
    pub eval_batch_size: usize,
    /// Tokens generated per answer at evaluation.
    pub max_new_tokens: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub optim: OptimConfig,
}

impl Default for SftTrainerConfig {
    fn default() -> Self {
        Self {
            model: ModelSize::default(),
            tokenizer: TokenizerConfig::default(),
            steps: 3000,
            batch_size: 32,
            log_every: 25,
            eval_every: 500,
            eval_problems: 200,
            eval_batch_size: 100,
            max_new_tokens: 48,
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

/// The text a model is trained on and asked to complete.
pub fn prompt_text(p: &TextProblem) -> String {
    format!("{}\n", p.prompt)
}

/// Prompt and solution as one text (what a tokenizer is built from).
pub fn training_text(p: &TextProblem) -> String {
    format!("{}{}", prompt_text(p), p.solution)
}

/// The scheduler.
pub struct SftTrainer {
    config: SftTrainerConfig,
}

const WHO: &str = "scheduler `sft`";

/// Greedy pass@1 of `policy` on `problems`.
pub fn pass_at_1(
    policy: &mut LmPolicy,
    task: &TextTask,
    problems: &[TextProblem],
    batch: usize,
    max_new_tokens: usize,
) -> anyhow::Result<f64> {
    if problems.is_empty() {
        return Ok(0.0);
    }
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens,
        n: 1,
        ..Default::default()
    };
    let mut correct = 0usize;
    for chunk in problems.chunks(batch.max(1)) {
        let prompts: Vec<String> = chunk.iter().map(prompt_text).collect();
        let out = policy.generate(&prompts, &params)?;
        correct += chunk
            .iter()
            .zip(&out)
            .filter(|(p, c)| task.check(p, &c[0].text))
            .count();
    }
    Ok(correct as f64 / problems.len() as f64)
}

impl Scheduler for SftTrainer {
    fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = parts.take("task", WHO)?;
        let objective: Box<dyn Objective> = parts.take("objective", WHO)?;
        let (train, test) = crate::task::train_and_test(task.as_ref(), WHO)?;

        // The vocabulary, from the training texts (a character vocabulary also covers the
        // test prompts' characters).
        let texts: Vec<String> = match cfg.tokenizer.kind {
            TokenizerKind::Char => train.iter().chain(&test).map(training_text).collect(),
            TokenizerKind::Bpe => train.iter().map(training_text).collect(),
        };
        let tokenizer = cfg.tokenizer.build(&texts)?;
        if let Tokenizer::Hf { inner, .. } = &tokenizer {
            let json = inner
                .to_string(false)
                .map_err(|e| anyhow::anyhow!("{WHO}: {e}"))?;
            crate::run::write_atomic(&ctx.run.path().join("tokenizer.json"), json.as_bytes())?;
        }
        let m = &cfg.model;
        let config = m.llama_config(tokenizer.vocab_size());
        let params = config.num_params();
        let device = ctx.device.clone().autodiff();
        let model = Llama::init(config, &mut rng(ctx.seed, 1), &device)
            .map_err(|e| anyhow::anyhow!("{WHO}: model: {e}"))?;
        let mut trainer = Trainer::new(model, cfg.optim.clone(), cfg.steps);
        let mut data_rng = rng(ctx.seed, 2);
        let ckpt_dir = ctx.run.checkpoints_dir();
        let mut resumed_from = None;
        if let Some(state) = resume_run(&mut trainer, ctx)? {
            data_rng = serde_json::from_value::<RngState>(state["data_rng"].clone())?.restore();
            resumed_from = Some(trainer.step);
        }

        // Training sequences: [BOS] prompt "\n" solution [EOS], truncated to the context.
        let encode = |p: &TextProblem| {
            let prompt = tokenizer.encode(&prompt_text(p), true);
            let mut response = tokenizer.encode(&p.solution, false);
            response.push(tokenizer.eos());
            let room = m.max_seq_len.saturating_sub(prompt.len());
            response.truncate(room);
            (prompt, response)
        };
        let encoded: Vec<(Vec<u32>, Vec<u32>)> = train.iter().map(encode).collect();
        let too_long = train
            .iter()
            .zip(&encoded)
            .filter(|(p, e)| e.1.len() <= tokenizer.encode(&p.solution, false).len())
            .count();
        if too_long > 0 {
            tracing::warn!(too_long, "training sequences truncated to max_seq_len");
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
        let base_device = ctx.device.clone();
        let evaluate = |model: &Llama, problems: &[TextProblem]| -> anyhow::Result<f64> {
            let mut policy = LmPolicy {
                model: model.valid(),
                tokenizer: tokenizer.clone(),
                device: base_device.clone(),
            };
            pass_at_1(
                &mut policy,
                task.as_ref(),
                problems,
                cfg.eval_batch_size,
                cfg.max_new_tokens,
            )
        };
        let pb = ctx.progress(cfg.steps, "sft");
        pb.set_position(trainer.step);
        let train_started = std::time::Instant::now();
        while trainer.step < cfg.steps {
            let batch: Vec<(Vec<u32>, Vec<u32>)> = (0..cfg.batch_size.max(1))
                .map(|_| encoded[data_rng.random_range(0..encoded.len())].clone())
                .collect();
            let out = sft_loss(
                &trainer.model,
                objective.as_ref(),
                &batch,
                tokenizer.pad(),
                &device,
            )?;
            let loss = out.loss.clone().into_scalar::<f32>() as f64;
            anyhow::ensure!(
                loss.is_finite(),
                "{WHO}: the loss became {loss} at step {}",
                trainer.step + 1
            );
            let lr = trainer.step(out.loss);
            let step = trainer.step;
            pb.set_position(step);
            if step % cfg.log_every.max(1) == 0 {
                ctx.log(
                    serde_json::json!({ "step": step, "split": "train", "loss": loss, "lr": lr }),
                )?;
                losses.push((step as f64, loss));
            }
            let last = step == cfg.steps;
            if step % cfg.eval_every.max(1) == 0 && !last {
                let acc = evaluate(&trainer.model, &eval_subset)?;
                ctx.log(serde_json::json!({ "step": step, "split": "test", "problems": eval_subset.len(), "pass@1": acc }))?;
                curve.push((step as f64, acc));
                tracing::info!(step, pass_at_1 = acc, "eval");
            }
            if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || last {
                let state = serde_json::json!({ "data_rng": RngState::of(&data_rng) });
                trainer.save_checkpoint(&ckpt_dir, &state, cfg.keep_checkpoints)?;
            }
        }
        pb.finish_and_clear();
        let train_secs = train_started.elapsed().as_secs_f64();
        let final_acc = evaluate(&trainer.model, &test)?;
        ctx.log(serde_json::json!({ "step": trainer.step, "split": "test", "problems": test.len(), "pass@1": final_acc }))?;
        curve.push((trainer.step as f64, final_acc));

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
            "Greedy pass@1 on held-out problems",
            "step",
            "pass@1",
            &[Series {
                name: "test",
                points: curve,
            }],
        )?;

        let mut s = String::new();
        writeln!(
            s,
            "# {} — supervised training of a transformer on reasoning problems\n",
            ctx.recipe
        )?;
        writeln!(s, "| quantity | value |\n|---|---|")?;
        writeln!(s, "| parameters | {params} |")?;
        writeln!(
            s,
            "| model | dim {}, {} layers, {} heads ({} KV), SwiGLU {}, context {} |",
            m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.hidden_dim, m.max_seq_len
        )?;
        writeln!(s, "| vocabulary | {} |", cfg.tokenizer.describe(&tokenizer))?;
        writeln!(s, "| training problems | {} |", train.len())?;
        writeln!(s, "| steps × batch | {} × {} |", cfg.steps, cfg.batch_size)?;
        writeln!(
            s,
            "| training time | {train_secs:.0} s{} |",
            resumed_from
                .map(|r| format!(" (resumed at step {r})"))
                .unwrap_or_default()
        )?;
        writeln!(s, "| held-out test problems | {} |", test.len())?;
        writeln!(
            s,
            "| **greedy pass@1 (held out)** | **{:.1}%** |",
            100.0 * final_acc
        )?;
        writeln!(s, "| total wall time | {:.0} s |", ctx.elapsed_secs())?;
        writeln!(s, "\nPlots: `plots/loss.svg`, `plots/pass_at_1.svg`.")?;
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

crate::register_component! {
    kind: Scheduler,
    name: "sft",
    description: "trains a Llama-style transformer on a text task's solutions; greedy pass@1 on held-out problems",
    config: SftTrainerConfig,
    build: |config: SftTrainerConfig, _ctx| {
        let err = |f: &str, m: &str| -> anyhow::Error { crate::registry::ConfigError { field: Some(f.into()), message: m.into() }.into() };
        if config.batch_size == 0 || config.batch_size > 4096 {
            return Err(err("batch_size", "must be between 1 and 4096"));
        }
        config.model.validate().map_err(|e| err("model", &e))?;
        if !(config.optim.lr.is_finite() && config.optim.lr > 0.0) {
            return Err(err("optim.lr", "must be a positive number"));
        }
        Ok(Box::new(SftTrainer { config }) as Box<dyn Scheduler>)
    },
}
