//! lmlab plugin `ordered-memory`: Ordered Memory (Shen et al., NeurIPS 2019, "Ordered
//! Memory") on ListOps, against an LSTM with a matched parameter count.
//!
//! Components:
//!
//! - task `listops` ([`listops`]): the original generator (operators MIN, MAX, MED, SM, 2–5
//!   arguments, a node is an operator with probability 0.25) and a loader of the original TSV
//!   format, which also reads the real test sets under `LMLAB_DATA_DIR`;
//! - scheduler `ordered-memory`: for each seed, trains Ordered Memory ([`model`]) and the LSTM
//!   with the same data, steps, batch and optimiser through any classification objective
//!   (`cross-entropy` in the recipe), then reports accuracy in distribution, on longer
//!   generated inputs and on the real test set, and the unlabeled bracket F1 of the trees
//!   Ordered Memory's pointer induces ([`tree`]).
//!
//! Nothing here is LM-specific: the models train through [`Objective`] and the SDK's
//! [`Trainer`] (optimiser, schedules including reduce-on-plateau, checkpoints, resume).

pub mod listops;
pub mod model;
pub mod tree;

use std::fmt::Write as _;
use std::path::Path;

use lmlab_sdk::burn::module::Module;
use lmlab_sdk::burn::tensor::{Device, Tensor};
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::plot::{Series, line_plot};
use lmlab_sdk::rng::{Rng, rng};
use lmlab_sdk::train::{LrSchedule, OptimConfig, Trainer, latest_checkpoint};
use lmlab_sdk::{Components, Objective, RunContext, Scheduler, TensorMap};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::listops::{Example, ListOpsTask};
use crate::model::{Batch, LstmClassifier, LstmConfig, OmConfig, OrderedMemory, host};
use crate::tree::{BracketScore, induce_spans, left_branching, right_branching};

const WHO: &str = "scheduler `ordered-memory`";

/// A sequence classifier the scheduler can train and evaluate.
pub trait Classifier: Module + Clone {
    /// Class logits `[B, classes]`; `drop` carries the dropout masks' generator when training.
    fn logits(&self, batch: &Batch, drop: &mut Option<&mut Rng>) -> Tensor<2>;

    /// Logits and the induced trees' distances, for models that induce trees.
    fn logits_and_distances(&self, batch: &Batch) -> (Tensor<2>, Option<Vec<Vec<usize>>>) {
        (self.logits(batch, &mut None), None)
    }

    /// The memory slots the distances refer to (models that induce trees).
    fn slots(&self) -> usize {
        0
    }

    /// The model to evaluate on long inputs (Ordered Memory: with more memory slots).
    fn for_long_inputs(self, _slots: Option<usize>) -> Self {
        self
    }
}

impl Classifier for OrderedMemory {
    fn logits(&self, batch: &Batch, drop: &mut Option<&mut Rng>) -> Tensor<2> {
        self.forward(batch, drop, None)
    }

    fn logits_and_distances(&self, batch: &Batch) -> (Tensor<2>, Option<Vec<Vec<usize>>>) {
        let (l, d) = self.forward_with_distances(batch);
        (l, Some(d))
    }

    fn slots(&self) -> usize {
        OrderedMemory::slots(self)
    }

    fn for_long_inputs(self, slots: Option<usize>) -> Self {
        match slots {
            Some(n) => self.with_slots(n),
            None => self,
        }
    }
}

impl Classifier for LstmClassifier {
    fn logits(&self, batch: &Batch, drop: &mut Option<&mut Rng>) -> Tensor<2> {
        self.forward(batch, drop)
    }
}

/// Steps, batch and optimiser, the same for both models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    /// Batches are drawn `bucket` at a time, sorted by length and cut into batches of similar
    /// lengths (the reference's smart batching: less padding), then used in random order.
    pub bucket: usize,
    pub optim: OptimConfig,
    /// Validation accuracy (learning curve, and the plateau schedule's signal) every so many
    /// steps.
    pub eval_every: u64,
    pub log_every: u64,
    /// A checkpoint every so many steps (0: only at the end); `--resume` continues from it.
    pub checkpoint_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            // The reference: 50 epochs of the 90k-example training set at batch 128, Adam with
            // β₁ = 0, lr 1e-3, gradient clipping at 1, reduce-on-plateau (×0.5, patience 2).
            steps: 35_000,
            batch_size: 128,
            bucket: 20,
            optim: OptimConfig {
                lr: 1e-3,
                beta1: 0.0,
                eps: 1e-9,
                weight_decay: 1.2e-6,
                schedule: LrSchedule::Plateau,
                grad_clip_norm: Some(1.0),
                ..Default::default()
            },
            eval_every: 700,
            log_every: 50,
            checkpoint_every: 700,
        }
    }
}

/// Configuration of the scheduler `ordered-memory`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OrderedMemoryConfig {
    /// Training seeds (offsets from the run's seed); the data are the same for all.
    pub seeds: Vec<u64>,
    pub om: OmConfig,
    pub lstm: LstmConfig,
    pub train: TrainConfig,
    /// Batch size at evaluation.
    pub eval_batch_size: usize,
    /// Ordered Memory's slots on the longer generated and the real test sets (none: as
    /// trained). No parameter depends on the slot count, and deeper trees need more slots.
    pub eval_slots: Option<usize>,
    /// Trainings run in parallel, one per thread (each model's own steps are sequential, and a
    /// small model's step uses about one core).
    pub threads: usize,
}

impl Default for OrderedMemoryConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0, 1, 2],
            om: OmConfig::default(),
            lstm: LstmConfig::default(),
            train: TrainConfig::default(),
            eval_batch_size: 256,
            eval_slots: None,
            threads: 2,
        }
    }
}

/// Accuracy (and, for Ordered Memory, parse F1) on one evaluation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    pub name: String,
    pub n: usize,
    pub accuracy: f64,
    pub f1: Option<f64>,
    /// Accuracy by length bucket: (bucket, examples, accuracy).
    pub by_length: Vec<(String, usize, f64)>,
}

/// One model trained with one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    pub seed: u64,
    pub model: String,
    pub params: usize,
    pub steps: u64,
    pub train_seconds: f64,
    /// (step, validation accuracy).
    pub curve: Vec<(u64, f64)>,
    pub final_train_loss: f64,
    pub sets: Vec<SetResult>,
}

const LENGTH_BUCKETS: [(usize, usize, &str); 5] = [
    (0, 20, "≤20"),
    (21, 60, "21–60"),
    (61, 150, "61–150"),
    (151, 400, "151–400"),
    (401, usize::MAX, ">400"),
];

/// Accuracy, parse F1 and accuracy by length of `model` on `examples`.
pub fn evaluate<M: Classifier>(
    model: &M,
    name: &str,
    examples: &[Example],
    batch_size: usize,
    device: &Device,
) -> SetResult {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].tokens.len());
    let mut correct = vec![false; examples.len()];
    let mut score = BracketScore::default();
    let mut trees = false;
    for chunk in order.chunks(batch_size.max(1)) {
        let ex: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let batch = Batch::new(&ex, device);
        let (logits, dist) = model.logits_and_distances(&batch);
        let pred = host(logits.argmax(1).float());
        for (k, &i) in chunk.iter().enumerate() {
            correct[i] = pred[k] as u8 == examples[i].label;
        }
        if let Some(dist) = dist {
            trees = true;
            for (k, &i) in chunk.iter().enumerate() {
                score.add(&induce_spans(&dist[k], model.slots()), &examples[i].gold);
            }
        }
    }
    let acc = |idx: &mut dyn Iterator<Item = usize>| -> (usize, f64) {
        let (mut n, mut c) = (0, 0);
        for i in idx {
            n += 1;
            c += correct[i] as usize;
        }
        (
            n,
            if n == 0 {
                f64::NAN
            } else {
                c as f64 / n as f64
            },
        )
    };
    let (n, accuracy) = acc(&mut (0..examples.len()));
    let by_length = LENGTH_BUCKETS
        .iter()
        .filter_map(|&(lo, hi, label)| {
            let (n, a) =
                acc(&mut (0..examples.len())
                    .filter(|&i| (lo..=hi).contains(&examples[i].tokens.len())));
            (n > 0).then(|| (label.to_string(), n, a))
        })
        .collect();
    SetResult {
        name: name.to_string(),
        n,
        accuracy,
        f1: if trees { score.f1() } else { None },
        by_length,
    }
}

/// The scheduler `ordered-memory`.
pub struct OrderedMemoryScheduler {
    config: OrderedMemoryConfig,
}

/// The evaluation sets: (name, examples, evaluated with the long-input model).
type EvalSets = Vec<(String, Vec<Example>, bool)>;

/// What the training threads share.
struct Shared<'a> {
    run: std::sync::Mutex<&'a mut lmlab_sdk::run::RunDir>,
    checkpoints: std::path::PathBuf,
    device: Device,
    resume: bool,
    objective: &'a dyn Objective,
    progress: lmlab_sdk::progress::ProgressBar,
    /// Set when a training fails, so the others stop.
    failed: std::sync::atomic::AtomicBool,
}

impl<'a> Shared<'a> {
    fn lock(&self) -> std::sync::MutexGuard<'_, &'a mut lmlab_sdk::run::RunDir> {
        // A thread that panicked while logging left a whole record or none: carry on.
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Data<'a> {
    train: &'a [Example],
    validation: &'a [Example],
    sets: &'a EvalSets,
}

impl OrderedMemoryScheduler {
    /// The batch of step `step` (0-based): bucket `step / bucket` is drawn from its own random
    /// stream, so a resumed run sees exactly the batches it would have.
    fn batch_indices(&self, seed: u64, step: u64, train: &[Example]) -> Vec<usize> {
        let t = &self.config.train;
        let bucket = t.bucket.max(1) as u64;
        let mut r = rng(seed, 1_000_000 + step / bucket);
        let mut idx: Vec<usize> = (0..t.batch_size * bucket as usize)
            .map(|_| r.random_range(0..train.len()))
            .collect();
        idx.sort_by_key(|&i| (train[i].tokens.len(), i));
        let mut batches: Vec<Vec<usize>> =
            idx.chunks(t.batch_size).map(<[usize]>::to_vec).collect();
        for i in (1..batches.len()).rev() {
            let j = r.random_range(0..=i);
            batches.swap(i, j);
        }
        batches.swap_remove((step % bucket) as usize)
    }

    fn train_model<M: Classifier>(
        &self,
        ctx: &Shared,
        name: &str,
        seed: u64,
        model: M,
        data: &Data,
    ) -> anyhow::Result<ModelResult> {
        let t = &self.config.train;
        let params = model.num_params();
        let mut trainer = Trainer::new(model, t.optim.clone(), t.steps);
        let dir = ctx.checkpoints.join(format!("{name}-seed{seed}"));
        let mut curve: Vec<(u64, f64)> = Vec::new();
        let mut seconds = 0.0;
        let mut last_loss = f64::NAN;
        if ctx.resume && latest_checkpoint(&dir)?.is_some() {
            let state = trainer
                .load_latest(&dir)?
                .unwrap_or(serde_json::Value::Null);
            curve = serde_json::from_value(state["curve"].clone()).unwrap_or_default();
            seconds = state["seconds"].as_f64().unwrap_or(0.0);
            last_loss = state["loss"].as_f64().unwrap_or(f64::NAN);
            let step = trainer.step;
            ctx.lock().retain_metrics(|r| {
                !(r["seed"] == seed && r["model"] == name)
                    || r["step"].as_u64().is_none_or(|s| s <= step)
            })?;
            ctx.progress.inc(step);
            tracing::info!(model = name, seed, step, "resumed from checkpoint");
        }
        let device = ctx.device.clone();
        let train_device = device.clone().autodiff();
        let mut started = std::time::Instant::now();
        while trainer.step < t.steps {
            // Another training failed: stop at a step boundary (the checkpoints stay).
            anyhow::ensure!(
                !ctx.failed.load(std::sync::atomic::Ordering::SeqCst),
                "{WHO}: {name} (seed {seed}) stopped because another training failed"
            );
            let step = trainer.step;
            let idx = self.batch_indices(seed, step, data.train);
            let ex: Vec<&Example> = idx.iter().map(|&i| &data.train[i]).collect();
            let batch = Batch::new(&ex, &train_device);
            let mut drop_rng = rng(seed, (1 << 40) + step);
            let logits = trainer.model.logits(&batch, &mut Some(&mut drop_rng));
            let out = ctx.objective.loss(
                &TensorMap::new()
                    .with("logits", logits)
                    .with("labels", batch.labels.clone()),
            )?;
            let loss = out.loss.clone().into_scalar::<f32>() as f64;
            anyhow::ensure!(
                loss.is_finite(),
                "{WHO}: {name}'s loss became {loss} at step {} (seed {seed})",
                step + 1
            );
            let lr = trainer.step(out.loss);
            last_loss = loss;
            let step = trainer.step;
            ctx.progress.inc(1);
            if step.is_multiple_of(t.log_every.max(1)) {
                let mut rec = serde_json::json!({
                    "seed": seed, "model": name, "step": step, "split": "train", "loss": loss, "lr": lr,
                });
                for (k, v) in &out.metrics {
                    rec[k] = (*v).into();
                }
                ctx.lock().log(&rec)?;
            }
            if step.is_multiple_of(t.eval_every.max(1)) || step == t.steps {
                let v = evaluate(
                    &trainer.model.valid(),
                    "validation",
                    data.validation,
                    self.config.eval_batch_size,
                    &device,
                );
                let reduced = trainer.observe(v.accuracy);
                curve.push((step, v.accuracy));
                ctx.lock().log(&serde_json::json!({
                    "seed": seed, "model": name, "step": step, "split": "validation",
                    "accuracy": v.accuracy, "lr_reduced": reduced,
                }))?;
            }
            if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every))
                || step == t.steps
            {
                seconds += started.elapsed().as_secs_f64();
                started = std::time::Instant::now();
                let state =
                    serde_json::json!({ "curve": curve, "seconds": seconds, "loss": last_loss });
                trainer.save_checkpoint(&dir, &state, 2)?;
            }
        }
        seconds += started.elapsed().as_secs_f64();

        let model = trainer.model.valid();
        let long_model = model.clone().for_long_inputs(self.config.eval_slots);
        let mut sets = Vec::new();
        for (set_name, examples, long) in data.sets {
            let m = if *long { &long_model } else { &model };
            let started = std::time::Instant::now();
            let r = evaluate(m, set_name, examples, self.config.eval_batch_size, &device);
            tracing::info!(
                model = name,
                seed,
                set = set_name,
                accuracy = r.accuracy,
                seconds = started.elapsed().as_secs_f64(),
                "evaluated"
            );
            sets.push(r);
        }
        Ok(ModelResult {
            seed,
            model: name.to_string(),
            params,
            steps: t.steps,
            train_seconds: seconds,
            curve,
            final_train_loss: last_loss,
            sets,
        })
    }
}

impl Scheduler for OrderedMemoryScheduler {
    fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<ListOpsTask> = parts.take("task", WHO)?;
        let objective: Box<dyn Objective> = parts.take("objective", WHO)?;
        let gen_started = std::time::Instant::now();
        let [train, validation, test, long] = task.generated()?;
        let gen_seconds = gen_started.elapsed().as_secs_f64();
        let mut sets: EvalSets = vec![("test".into(), test, false)];
        if !long.is_empty() {
            sets.push(("long".into(), long, true));
        }
        let mut missing = Vec::new();
        for real in task.real() {
            match real.examples {
                Ok(ex) if !ex.is_empty() => sets.push((real.name, ex, true)),
                Ok(_) => missing.push(format!("`{}` is empty", real.path.display())),
                Err(e) => missing.push(format!("`{}` skipped: {e:#}", real.path.display())),
            }
        }
        for m in &missing {
            tracing::warn!("{m}");
        }
        let data = Data {
            train: &train,
            validation: &validation,
            sets: &sets,
        };

        // Trainings already finished (a resumed run) are read back, not redone.
        let mut results: Vec<ModelResult> = if ctx.resume {
            ctx.run.logged_results("result")?
        } else {
            Vec::new()
        };
        let device = ctx.device.clone().autodiff();
        let om_params = OrderedMemory::init(&cfg.om, &mut rng(0, 0), &device).num_params();
        let embed = cfg.lstm.embed.unwrap_or(cfg.om.hidden);
        let lstm_hidden = cfg
            .lstm
            .hidden
            .unwrap_or_else(|| LstmClassifier::matched_hidden(embed, om_params));
        // The jobs not done yet, Ordered Memory's (the long ones) first.
        let mut jobs = Vec::new();
        for name in ["ordered-memory", "lstm"] {
            for &s in &cfg.seeds {
                let seed = ctx.seed.wrapping_add(s);
                if !results.iter().any(|r| r.seed == seed && r.model == name) {
                    jobs.push((name, seed));
                }
            }
        }
        let computed = jobs.len();
        let progress = ctx.progress(cfg.train.steps * jobs.len() as u64, "training");
        let checkpoints = ctx.run.checkpoints_dir();
        let shared = Shared {
            run: std::sync::Mutex::new(&mut ctx.run),
            checkpoints,
            device: ctx.device.clone(),
            resume: ctx.resume,
            objective: objective.as_ref(),
            progress: progress.clone(),
            failed: Default::default(),
        };
        let queue = std::sync::Mutex::new(jobs.into_iter());
        let new_results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..cfg.threads.max(1))
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<()> {
                        loop {
                            if shared.failed.load(std::sync::atomic::Ordering::SeqCst) {
                                return Ok(());
                            }
                            let Some((name, seed)) = queue.lock().expect("job queue").next() else {
                                return Ok(());
                            };
                            let mut init = rng(seed, if name == "lstm" { 11 } else { 10 });
                            let res = if name == "lstm" {
                                let m = LstmClassifier::init(&cfg.lstm, embed, lstm_hidden, &mut init, &device);
                                self.train_model(&shared, name, seed, m, &data)
                            } else {
                                let m = OrderedMemory::init(&cfg.om, &mut init, &device);
                                self.train_model(&shared, name, seed, m, &data)
                            };
                            let res = match res {
                                Ok(r) => r,
                                Err(e) => {
                                    shared.failed.store(true, std::sync::atomic::Ordering::SeqCst);
                                    return Err(e);
                                }
                            };
                            shared.lock().log(&serde_json::json!({ "stage": "result", "seed": seed, "model": name, "result": res }))?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("{WHO}: a training thread panicked"))
                    })
                })
                .collect()
        });
        progress.finish_and_clear();
        drop(shared);
        // The root cause first, not a training that stopped because of it.
        let mut errors: Vec<anyhow::Error> =
            new_results.into_iter().filter_map(Result::err).collect();
        errors.sort_by_key(|e| {
            e.to_string()
                .contains("stopped because another training failed")
        });
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        // Everything, as logged (the new results and those of an earlier, resumed run).
        results = ctx.run.logged_results("result")?;
        results.sort_by(|a, b| (a.seed, &a.model).cmp(&(b.seed, &b.model)));
        let summary = Summary {
            cfg: &cfg,
            task: &task.config,
            results: &results,
            n_train: train.len(),
            n_validation: validation.len(),
            sets: &sets,
            missing: &missing,
            lstm_hidden,
            gen_seconds,
            computed,
        };
        summary.plots(&ctx.run.plots_dir())?;
        let md = summary.markdown(ctx)?;
        ctx.run.write_summary(&md)?;
        Ok(())
    }
}

struct Summary<'a> {
    cfg: &'a OrderedMemoryConfig,
    task: &'a listops::ListOpsConfig,
    results: &'a [ModelResult],
    n_train: usize,
    n_validation: usize,
    sets: &'a EvalSets,
    missing: &'a [String],
    lstm_hidden: usize,
    gen_seconds: f64,
    computed: usize,
}

/// An accuracy plot of named series.
fn plot(
    path: &Path,
    title: &str,
    x: &str,
    named: Vec<(String, Vec<(f64, f64)>)>,
) -> anyhow::Result<()> {
    let series: Vec<Series> = named
        .iter()
        .map(|(n, p)| Series {
            name: n,
            points: p.clone(),
        })
        .collect();
    line_plot(path, title, x, "accuracy (%)", &series)
}

const MODELS: [(&str, &str); 2] = [("ordered-memory", "Ordered Memory"), ("lstm", "LSTM")];

impl Summary<'_> {
    fn of(&self, model: &str) -> Vec<&ModelResult> {
        self.results.iter().filter(|r| r.model == model).collect()
    }

    /// Per seed (in seed order), `f` of `model`'s result on `set`.
    fn per_seed(&self, model: &str, set: &str, f: impl Fn(&SetResult) -> Option<f64>) -> Vec<f64> {
        self.of(model)
            .iter()
            .filter_map(|r| r.sets.iter().find(|s| s.name == set).and_then(&f))
            .collect()
    }

    fn cell(xs: &[f64], percent: bool) -> String {
        if xs.is_empty() {
            return "—".into();
        }
        let k = if percent { 100.0 } else { 1.0 };
        let (m, s) = mean_std(xs);
        if xs.len() > 1 {
            format!("{:.1} ± {:.1}", k * m, k * s)
        } else {
            format!("{:.1}", k * m)
        }
    }

    fn plots(&self, dir: &Path) -> anyhow::Result<()> {
        let mut named = Vec::new();
        for (model, label) in MODELS {
            for r in self.of(model) {
                named.push((
                    format!("{label} (seed {})", r.seed),
                    r.curve
                        .iter()
                        .map(|&(s, a)| (s as f64, 100.0 * a))
                        .collect::<Vec<_>>(),
                ));
            }
        }
        plot(
            &dir.join("learning_curves.svg"),
            "ListOps validation accuracy",
            "step",
            named,
        )?;
        let mut named = Vec::new();
        for (model, label) in MODELS {
            for (set, _, _) in self.sets {
                let xs: Vec<(f64, f64)> = LENGTH_BUCKETS
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, _, b))| {
                        let v = self.per_seed(model, set, |s| {
                            s.by_length.iter().find(|x| x.0 == *b).map(|x| x.2)
                        });
                        (!v.is_empty()).then(|| (i as f64, 100.0 * mean_std(&v).0))
                    })
                    .collect();
                if !xs.is_empty() {
                    named.push((format!("{label}, {set}"), xs));
                }
            }
        }
        plot(
            &dir.join("accuracy_by_length.svg"),
            "Accuracy by length bucket (0: ≤20, 1: 21–60, 2: 61–150, 3: 151–400, 4: >400 tokens)",
            "length bucket",
            named,
        )
    }

    fn markdown(&self, ctx: &RunContext) -> anyhow::Result<String> {
        let cfg = self.cfg;
        let t = &cfg.train;
        let tc = self.task;
        let mut s = String::new();
        writeln!(s, "# {} — Ordered Memory vs LSTM on ListOps\n", ctx.recipe)?;
        writeln!(
            s,
            "Paper: Shen et al., 2019, \"Ordered Memory\" (NeurIPS). Claims tested: Ordered Memory solves ListOps (99.97% in the paper) far better than an LSTM (71.5% in the paper's table), degrades less on longer inputs, and its pointer induces the gold trees.\n"
        )?;
        let params = |m: &str| self.of(m).first().map(|r| r.params).unwrap_or(0);
        writeln!(s, "## Setup\n")?;
        writeln!(
            s,
            "- Data: generated ListOps (the original generator, `MAX_DEPTH = {}`, so operators nest at most {} deep; {}–{} arguments; {}–{} tokens without parentheses): {} training and {} validation expressions, all distinct from the test sets (generated in {:.1} s).",
            tc.max_depth,
            tc.max_depth - 1,
            tc.min_args,
            tc.max_args,
            tc.min_len,
            tc.max_len,
            self.n_train,
            self.n_validation,
            self.gen_seconds
        )?;
        for (name, ex, long) in self.sets {
            let depth = ex.iter().map(|e| e.depth).max().unwrap_or(0);
            let maxlen = ex.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
            let what = match name.as_str() {
                "test" => "in-distribution test".to_string(),
                "long" => format!(
                    "longer generated inputs ({}–{} tokens, `MAX_DEPTH = {}`)",
                    tc.long_min_len, tc.long_max_len, tc.long_max_depth
                ),
                _ => "real test set (evaluation only)".to_string(),
            };
            writeln!(
                s,
                "- `{name}`: {what}, {} examples, up to {maxlen} tokens and depth {depth}{}.",
                ex.len(),
                if *long && cfg.eval_slots.is_some() {
                    format!(
                        "; Ordered Memory evaluated with {} slots",
                        cfg.eval_slots.unwrap_or(0)
                    )
                } else {
                    String::new()
                }
            )?;
        }
        for m in self.missing {
            writeln!(s, "- Not evaluated: {m}.")?;
        }
        writeln!(
            s,
            "- Ordered Memory: D = {}, {} slots, cell hidden {}, {} parameters. LSTM: embedding {}, hidden {} (the largest with at most Ordered Memory's parameter count unless set), {} parameters.",
            cfg.om.hidden,
            cfg.om.slots,
            cfg.om.cell_hidden.unwrap_or(4 * cfg.om.hidden),
            params("ordered-memory"),
            cfg.lstm.embed.unwrap_or(cfg.om.hidden),
            self.lstm_hidden,
            params("lstm")
        )?;
        writeln!(
            s,
            "- Same budget for both: {} steps of batch {} (length-bucketed), Adam(β₁ = {}, β₂ = {}) lr {} ({:?} schedule{}), gradient clipping {}, dropout (OM: cell {}, memory {}, input {}, output {}; LSTM: input {}, output {}). The final model is evaluated.",
            t.steps,
            t.batch_size,
            t.optim.beta1,
            t.optim.beta2,
            t.optim.lr,
            t.optim.schedule,
            if t.optim.schedule == LrSchedule::Plateau {
                format!(
                    " on validation accuracy every {} steps, ×{} after {} evaluations without improvement",
                    t.eval_every, t.optim.plateau_factor, t.optim.plateau_patience
                )
            } else {
                String::new()
            },
            t.optim
                .grad_clip_norm
                .map_or("none".to_string(), |v| format!("at norm {v}")),
            cfg.om.dropout,
            cfg.om.dropout_memory,
            cfg.om.dropout_input,
            cfg.om.dropout_output,
            cfg.lstm.dropout_input,
            cfg.lstm.dropout_output
        )?;
        writeln!(
            s,
            "- Seeds: {:?} (offsets from the run's seed {}); the data are the same for every seed.\n",
            cfg.seeds, ctx.seed
        )?;

        writeln!(
            s,
            "## Results (mean ± std over {} seeds)\n",
            self.of("ordered-memory").len()
        )?;
        write!(s, "| model |")?;
        for (name, _, _) in self.sets {
            write!(s, " accuracy `{name}` (%) |")?;
        }
        for (name, _, _) in self.sets {
            write!(s, " parse F1 `{name}` (%) |")?;
        }
        writeln!(s, " train time (s) |")?;
        writeln!(s, "|---|{}---|", "---|".repeat(2 * self.sets.len()))?;
        for (model, label) in MODELS {
            write!(s, "| {label} |")?;
            for (name, _, _) in self.sets {
                write!(
                    s,
                    " {} |",
                    Self::cell(&self.per_seed(model, name, |r| Some(r.accuracy)), true)
                )?;
            }
            for (name, _, _) in self.sets {
                write!(
                    s,
                    " {} |",
                    Self::cell(&self.per_seed(model, name, |r| r.f1), true)
                )?;
            }
            let secs: Vec<f64> = self.of(model).iter().map(|r| r.train_seconds).collect();
            writeln!(s, " {} |", Self::cell(&secs, false))?;
        }
        for (label, f) in [
            (
                "left-branching trees",
                left_branching as fn(usize) -> Vec<(usize, usize)>,
            ),
            ("right-branching trees", right_branching),
        ] {
            write!(
                s,
                "| {label} (no model) |{}",
                " — |".repeat(self.sets.len())
            )?;
            for (_, ex, _) in self.sets {
                let mut b = BracketScore::default();
                for e in ex {
                    b.add(&f(e.tokens.len()), &e.gold);
                }
                match b.f1() {
                    Some(v) => write!(s, " {:.1} |", 100.0 * v)?,
                    None => write!(s, " — |")?,
                }
            }
            writeln!(s, " — |")?;
        }
        writeln!(
            s,
            "\nParse F1: unlabeled brackets of the tree induced by Ordered Memory's pointer (`d_t = argmax p_t`, greedy bracketing as the reference code's `build_tree`) against the gold tree, micro-averaged as EVALB does (the whole-expression bracket included). The gold trees bracket each operator's arguments left to right, so the left-branching baseline is strong. The LSTM induces no tree.\n"
        )?;

        writeln!(s, "### Per seed\n")?;
        writeln!(
            s,
            "| seed | model | {} final train loss | steps |",
            self.sets
                .iter()
                .map(|(n, _, _)| format!("acc `{n}` |"))
                .collect::<String>()
        )?;
        writeln!(s, "|---|---|{}---|---|", "---|".repeat(self.sets.len()))?;
        for r in self.results {
            write!(s, "| {} | {} |", r.seed, r.model)?;
            for (name, _, _) in self.sets {
                match r.sets.iter().find(|x| &x.name == name) {
                    Some(x) => write!(s, " {:.1} |", 100.0 * x.accuracy)?,
                    None => write!(s, " — |")?,
                }
            }
            writeln!(s, " {:.3} | {} |", r.final_train_loss, r.steps)?;
        }

        writeln!(s, "\n### Accuracy by length (mean over seeds, %)\n")?;
        writeln!(
            s,
            "| model | set | {} |",
            LENGTH_BUCKETS
                .iter()
                .map(|b| b.2)
                .collect::<Vec<_>>()
                .join(" | ")
        )?;
        writeln!(s, "|---|---|{}", "---|".repeat(LENGTH_BUCKETS.len()))?;
        for (model, label) in MODELS {
            for (name, _, _) in self.sets {
                write!(s, "| {label} | `{name}` |")?;
                for (_, _, b) in LENGTH_BUCKETS {
                    let v = self.per_seed(model, name, |r| {
                        r.by_length.iter().find(|x| x.0 == b).map(|x| x.2)
                    });
                    let n = self
                        .of(model)
                        .first()
                        .and_then(|r| r.sets.iter().find(|x| &x.name == name))
                        .and_then(|x| x.by_length.iter().find(|x| x.0 == b))
                        .map(|x| x.1);
                    match n {
                        Some(n) => write!(s, " {:.1} (n={n}) |", 100.0 * mean_std(&v).0)?,
                        None => write!(s, " — |")?,
                    }
                }
                writeln!(s)?;
            }
        }

        writeln!(s, "\n## Claims at our scale\n")?;
        let om_test = self.per_seed("ordered-memory", "test", |r| Some(r.accuracy));
        let lstm_test = self.per_seed("lstm", "test", |r| Some(r.accuracy));
        let (om_m, _) = mean_std(&om_test);
        writeln!(
            s,
            "- **Ordered Memory reaches ≥ 95% in distribution**: {:.1}% (min over seeds {:.1}%): **{}**.",
            100.0 * om_m,
            100.0 * om_test.iter().cloned().fold(f64::INFINITY, f64::min),
            if om_test.iter().all(|&a| a >= 0.95) {
                "holds"
            } else if om_m >= 0.95 {
                "holds on average, not for every seed"
            } else {
                "does not hold"
            }
        )?;
        let diff: Vec<f64> = om_test.iter().zip(&lstm_test).map(|(a, b)| a - b).collect();
        let (dm, ds) = mean_std(&diff);
        let one_seed = if diff.len() < 2 {
            " (one seed: no spread to judge noise by)"
        } else {
            ""
        };
        writeln!(
            s,
            "- **Ordered Memory ≫ LSTM** (in distribution): paired difference {:+.1} ± {:.1} points: **{}**{one_seed}.",
            100.0 * dm,
            100.0 * ds,
            if dm >= 0.10 && dm > ds {
                "holds"
            } else if dm > ds {
                "Ordered Memory is better, by less than 10 points"
            } else {
                "does not hold (within seed noise or reversed)"
            }
        )?;
        for (name, _, long) in self.sets {
            if !*long {
                continue;
            }
            let drop = |m: &str| -> Vec<f64> {
                let t = self.per_seed(m, "test", |r| Some(r.accuracy));
                let l = self.per_seed(m, name, |r| Some(r.accuracy));
                t.iter().zip(&l).map(|(a, b)| a - b).collect()
            };
            let (od, _) = mean_std(&drop("ordered-memory"));
            let (ld, _) = mean_std(&drop("lstm"));
            let paired: Vec<f64> = drop("lstm")
                .iter()
                .zip(drop("ordered-memory"))
                .map(|(l, o)| l - o)
                .collect();
            let (pm, ps) = mean_std(&paired);
            writeln!(
                s,
                "- **Ordered Memory degrades less with length** (`test` → `{name}`): accuracy drop {:.1} points for Ordered Memory vs {:.1} for the LSTM (paired difference {:+.1} ± {:.1}): **{}**{one_seed}.",
                100.0 * od,
                100.0 * ld,
                100.0 * pm,
                100.0 * ps,
                if pm > 0.0 && pm > ps {
                    "holds"
                } else {
                    "does not hold at our scale (within seed noise or reversed)"
                }
            )?;
        }
        let f1 = self.per_seed("ordered-memory", "test", |r| r.f1);
        if !f1.is_empty() {
            let mut left = BracketScore::default();
            if let Some((_, ex, _)) = self.sets.iter().find(|(n, _, _)| n == "test") {
                for e in ex {
                    left.add(&left_branching(e.tokens.len()), &e.gold);
                }
            }
            let (fm, _) = mean_std(&f1);
            let lf = left.f1().unwrap_or(0.0);
            writeln!(
                s,
                "- **The pointer induces the gold trees** (the paper: the induced ListOps trees match the gold structure): parse F1 {:.1}% in distribution against {:.1}% for left-branching trees: **{}**.",
                100.0 * fm,
                100.0 * lf,
                if fm >= 0.95 {
                    "holds"
                } else if fm > lf {
                    "partly: better than the left-branching baseline, not the gold trees"
                } else {
                    "does not hold at our scale"
                }
            )?;
        }
        writeln!(
            s,
            "\nPlots: `plots/learning_curves.svg` (validation accuracy per seed), `plots/accuracy_by_length.svg`.\n"
        )?;
        let total: f64 = self.results.iter().map(|r| r.train_seconds).sum();
        writeln!(
            s,
            "Wall time: {:.0} s for this invocation ({} of {} model runs computed here{}); training took {:.0} s in all.",
            ctx.elapsed_secs(),
            self.computed,
            self.results.len(),
            if self.computed < self.results.len() {
                ", the rest read back from a resumed run"
            } else {
                ""
            },
            total
        )?;
        Ok(s)
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "ordered-memory",
    description: "Ordered Memory vs a parameter-matched LSTM on ListOps: accuracy in distribution, on longer and real inputs, and induced-tree F1, over seeds",
    config: OrderedMemoryConfig,
    build: |config: OrderedMemoryConfig, _ctx| {
        let err = |f: &str, m: &str| -> anyhow::Error { lmlab_sdk::registry::ConfigError { field: Some(f.into()), message: m.into() }.into() };
        if config.seeds.is_empty() { return Err(err("seeds", "give at least one seed")); }
        if config.om.hidden == 0 { return Err(err("om.hidden", "must be at least 1")); }
        if config.om.slots < 2 { return Err(err("om.slots", "must be at least 2")); }
        if config.om.cell_hidden == Some(0) { return Err(err("om.cell_hidden", "must be at least 1")); }
        if config.eval_slots.is_some_and(|n| n < 2) { return Err(err("eval_slots", "must be at least 2")); }
        if config.lstm.hidden == Some(0) || config.lstm.embed == Some(0) { return Err(err("lstm.hidden", "sizes must be at least 1")); }
        for (f, p) in [("om.dropout", config.om.dropout), ("om.dropout_memory", config.om.dropout_memory), ("om.dropout_input", config.om.dropout_input), ("om.dropout_output", config.om.dropout_output), ("lstm.dropout_input", config.lstm.dropout_input), ("lstm.dropout_output", config.lstm.dropout_output)] {
            if !(0.0..1.0).contains(&p) { return Err(err(f, "must be in [0, 1)")); }
        }
        let t = &config.train;
        if t.steps == 0 { return Err(err("train.steps", "must be at least 1")); }
        if t.batch_size == 0 { return Err(err("train.batch_size", "must be at least 1")); }
        if config.threads == 0 || config.threads > 64 { return Err(err("threads", "must be between 1 and 64")); }
        if config.eval_batch_size == 0 { return Err(err("eval_batch_size", "must be at least 1")); }
        if !(t.optim.lr.is_finite() && t.optim.lr > 0.0) { return Err(err("train.optim.lr", "must be a positive number")); }
        if !(t.optim.plateau_factor > 0.0 && t.optim.plateau_factor <= 1.0) { return Err(err("train.optim.plateau_factor", "must be in (0, 1]")); }
        Ok(Box::new(OrderedMemoryScheduler { config }) as Box<dyn Scheduler>)
    },
}
