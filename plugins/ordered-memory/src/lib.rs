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
//! Nothing here is LM-specific: the models train through [`Objective`] in the SDK's fit loop
//! ([`lmlab_sdk::fit`]: optimiser, schedules including reduce-on-plateau, checkpoints), each
//! (model, seed) is a unit of an [`Experiment`] (threads, resume per unit from its checkpoint),
//! and the summary is written with [`lmlab_sdk::report`].

pub mod listops;
pub mod model;
mod summary;
pub mod tree;

use lmlab_sdk::burn::module::Module;
use lmlab_sdk::burn::tensor::{Device, Tensor};
use lmlab_sdk::experiment::{Experiment, Unit, UnitCx};
use lmlab_sdk::fit::{FitLog, FitOptions, Hooks, StepLog, fit, train_record};
use lmlab_sdk::rng::{Rng, rng};
use lmlab_sdk::train::{LrSchedule, OptimConfig, Trainer};
use lmlab_sdk::{Components, Objective, Role, RunContext, Scheduler, TensorMap};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::listops::{Example, ListOpsTask};
use crate::model::{Batch, LstmClassifier, LstmConfig, OmConfig, OrderedMemory, host};
use crate::tree::{BracketScore, induce_spans};

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
    /// Accuracy by the root's operator (`MIN`, `MAX`, `MED`, `SM`, …; `digit` for a lone
    /// digit): (operator, examples, accuracy).
    #[serde(default)]
    pub by_operator: Vec<(String, usize, f64)>,
    /// Accuracy by operator nesting depth: (depth, examples, accuracy).
    #[serde(default)]
    pub by_depth: Vec<(usize, usize, f64)>,
}

/// Accuracy over the examples `keep` selects: (examples, accuracy; NaN when none).
fn accuracy_of(correct: &[bool], keep: impl Fn(usize) -> bool) -> (usize, f64) {
    let (mut n, mut c) = (0usize, 0usize);
    for (i, &ok) in correct.iter().enumerate() {
        if keep(i) {
            n += 1;
            c += ok as usize;
        }
    }
    (
        n,
        if n == 0 {
            f64::NAN
        } else {
            c as f64 / n as f64
        },
    )
}

/// Accuracy by length bucket, by root operator and by depth, of predictions `correct` on
/// `examples` (groups without examples left out).
#[allow(clippy::type_complexity)]
pub fn breakdown(
    examples: &[Example],
    correct: &[bool],
) -> (
    Vec<(String, usize, f64)>,
    Vec<(String, usize, f64)>,
    Vec<(usize, usize, f64)>,
) {
    let by_length = LENGTH_BUCKETS
        .iter()
        .filter_map(|&(lo, hi, label)| {
            let (n, a) = accuracy_of(correct, |i| (lo..=hi).contains(&examples[i].tokens.len()));
            (n > 0).then(|| (label.to_string(), n, a))
        })
        .collect();
    let name = |op: Option<listops::Op>| op.map_or("digit", |o| o.token().trim_start_matches('['));
    let by_operator = listops::Op::ALL
        .iter()
        .map(|&o| Some(o))
        .chain([None])
        .filter_map(|op| {
            let (n, a) = accuracy_of(correct, |i| examples[i].root() == op);
            (n > 0).then(|| (name(op).to_string(), n, a))
        })
        .collect();
    let max_depth = examples.iter().map(|e| e.depth).max().unwrap_or(0);
    let by_depth = (0..=max_depth)
        .filter_map(|d| {
            let (n, a) = accuracy_of(correct, |i| examples[i].depth == d);
            (n > 0).then_some((d, n, a))
        })
        .collect();
    (by_length, by_operator, by_depth)
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
    /// (step, validation accuracy by root operator), at the same steps as `curve`.
    #[serde(default)]
    pub operator_curve: Vec<(u64, Vec<(String, f64)>)>,
    /// (step, seconds of training so far, evaluations included), at the same steps.
    #[serde(default)]
    pub time_curve: Vec<(u64, f64)>,
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
    let (n, accuracy) = accuracy_of(&correct, |_| true);
    let (by_length, by_operator, by_depth) = breakdown(examples, &correct);
    SetResult {
        name: name.to_string(),
        n,
        accuracy,
        f1: if trees { score.f1() } else { None },
        by_length,
        by_operator,
        by_depth,
    }
}

/// The scheduler `ordered-memory`.
pub struct OrderedMemoryScheduler {
    config: OrderedMemoryConfig,
}

/// The evaluation sets: (name, examples, evaluated with the long-input model).
type EvalSets = Vec<(String, Vec<Example>, bool)>;

/// One training: the experiment's unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub model: String,
    pub seed: u64,
}

impl Unit for Training {
    fn name(&self) -> String {
        format!("{}-seed{}", self.model, self.seed)
    }
}

struct Data<'a> {
    train: &'a [Example],
    validation: &'a [Example],
    sets: &'a EvalSets,
}

/// Logs, evaluates, observes the plateau schedule and checkpoints, as the fit loop steps.
struct TrainHooks<'a, 'c> {
    cx: &'a UnitCx<'c>,
    t: &'a TrainConfig,
    validation: &'a [Example],
    eval_batch: usize,
    curve: Vec<(u64, f64)>,
    operator_curve: Vec<(u64, Vec<(String, f64)>)>,
    time_curve: Vec<(u64, f64)>,
    seconds: f64,
    started: std::time::Instant,
    last_loss: f64,
}

impl TrainHooks<'_, '_> {
    /// Validation runs every `eval_every` steps, at each observation the plateau schedule
    /// counts (every `optim.plateau_every` steps), and at the end.
    fn evaluates_at(&self, step: u64) -> bool {
        let t = self.t;
        let plateau = t.optim.schedule == LrSchedule::Plateau
            && t.optim.plateau_every > 0
            && step.is_multiple_of(t.optim.plateau_every);
        step.is_multiple_of(t.eval_every.max(1)) || plateau || step == t.steps
    }
}

impl<M: Classifier> Hooks<M> for TrainHooks<'_, '_> {
    fn sync_at(&self, step: u64) -> bool {
        let every = |n: u64| n > 0 && step.is_multiple_of(n);
        self.evaluates_at(step) || every(self.t.checkpoint_every) || step == self.t.steps
    }

    fn logged(&mut self, _: &Trainer<M>, steps: &[StepLog]) -> anyhow::Result<()> {
        for s in steps {
            self.last_loss = s.loss;
            if s.step.is_multiple_of(self.t.log_every.max(1)) {
                self.cx.log(train_record(s))?;
            }
        }
        Ok(())
    }

    fn after_step(&mut self, trainer: &mut Trainer<M>, _: &FitLog) -> anyhow::Result<()> {
        let (t, step) = (self.t, trainer.step);
        self.cx.progress().inc(1);
        if self.evaluates_at(step) {
            let device = self.cx.device();
            let v = evaluate(
                &trainer.model.valid(),
                "validation",
                self.validation,
                self.eval_batch,
                device,
            );
            let counted = trainer.plateau_counts_at(step);
            let reduced = trainer.observe(v.accuracy);
            let elapsed = self.seconds + self.started.elapsed().as_secs_f64();
            self.curve.push((step, v.accuracy));
            self.operator_curve.push((
                step,
                v.by_operator
                    .iter()
                    .map(|(o, _, a)| (o.clone(), *a))
                    .collect(),
            ));
            self.time_curve.push((step, elapsed));
            let by_operator: serde_json::Map<String, serde_json::Value> = v
                .by_operator
                .iter()
                .map(|(o, _, a)| (o.clone(), (*a).into()))
                .collect();
            let by_depth: serde_json::Map<String, serde_json::Value> = v
                .by_depth
                .iter()
                .map(|(d, _, a)| (d.to_string(), (*a).into()))
                .collect();
            let rec = serde_json::json!({ "step": step, "split": "validation", "accuracy": v.accuracy,
                                          "by_operator": by_operator, "by_depth": by_depth, "lr": trainer.lr(),
                                          "plateau_observed": counted, "lr_reduced": reduced,
                                          "train_seconds": elapsed });
            self.cx.log(rec)?;
        }
        if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || step == t.steps {
            self.seconds += self.started.elapsed().as_secs_f64();
            self.started = std::time::Instant::now();
            let state = serde_json::json!({ "curve": self.curve, "operator_curve": self.operator_curve,
                                            "time_curve": self.time_curve, "seconds": self.seconds, "loss": self.last_loss });
            trainer.save_checkpoint(&self.cx.checkpoints(), &state, 2)?;
        }
        // Another training failed: stop at a step boundary (the checkpoints stay).
        self.cx.check()
    }
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
        cx: &UnitCx,
        objective: &dyn Objective,
        seed: u64,
        model: M,
        data: &Data,
    ) -> anyhow::Result<ModelResult> {
        let t = &self.config.train;
        let params = model.num_params();
        let mut trainer = Trainer::new(model, t.optim.clone(), t.steps);
        cx.progress().inc_length(t.steps);
        let mut hooks = TrainHooks {
            cx,
            t,
            validation: data.validation,
            eval_batch: self.config.eval_batch_size,
            curve: Vec::new(),
            operator_curve: Vec::new(),
            time_curve: Vec::new(),
            seconds: 0.0,
            started: std::time::Instant::now(),
            last_loss: f64::NAN,
        };
        if let Some(state) = cx.resume(&mut trainer)? {
            hooks.curve = serde_json::from_value(state["curve"].clone()).unwrap_or_default();
            hooks.operator_curve =
                serde_json::from_value(state["operator_curve"].clone()).unwrap_or_default();
            hooks.time_curve =
                serde_json::from_value(state["time_curve"].clone()).unwrap_or_default();
            hooks.seconds = state["seconds"].as_f64().unwrap_or(0.0);
            hooks.last_loss = state["loss"].as_f64().unwrap_or(f64::NAN);
            cx.progress().inc(trainer.step);
            tracing::info!(
                unit = cx.name(),
                step = trainer.step,
                "resumed from checkpoint"
            );
        }
        let train_device = cx.device().clone().autodiff();
        let what = format!("{WHO}: {}", cx.name());
        let opts = FitOptions::new(&what).sync_every(t.log_every);
        fit(
            &mut trainer,
            &opts,
            |model: &M, step| {
                let idx = self.batch_indices(seed, step, data.train);
                let ex: Vec<&Example> = idx.iter().map(|&i| &data.train[i]).collect();
                let batch = Batch::new(&ex, &train_device);
                let mut drop_rng = rng(seed, (1 << 40) + step);
                let logits = model.logits(&batch, &mut Some(&mut drop_rng));
                objective.loss(
                    &TensorMap::new()
                        .with("logits", logits)
                        .with("labels", batch.labels.clone()),
                )
            },
            &mut hooks,
        )?;
        let seconds = hooks.seconds + hooks.started.elapsed().as_secs_f64();
        let model = trainer.model.valid();
        let long_model = model.clone().for_long_inputs(self.config.eval_slots);
        let mut sets = Vec::new();
        for (set_name, examples, long) in data.sets {
            let m = if *long { &long_model } else { &model };
            let r = evaluate(
                m,
                set_name,
                examples,
                self.config.eval_batch_size,
                cx.device(),
            );
            tracing::info!(
                unit = cx.name(),
                set = set_name,
                accuracy = r.accuracy,
                "evaluated"
            );
            sets.push(r);
        }
        let model = cx
            .name()
            .rsplit_once("-seed")
            .map_or(String::new(), |x| x.0.to_string());
        Ok(ModelResult {
            seed,
            model,
            params,
            steps: t.steps,
            train_seconds: seconds,
            curve: hooks.curve,
            operator_curve: hooks.operator_curve,
            time_curve: hooks.time_curve,
            final_train_loss: hooks.last_loss,
            sets,
        })
    }
}

impl Scheduler for OrderedMemoryScheduler {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::of::<Box<ListOpsTask>>("task", lmlab_sdk::Kind::Task, "the `listops` data"),
            Role::objective(
                "objective",
                &["logits", "labels"],
                "the classification loss",
            ),
        ]
    }

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
                Err(e) if lmlab_sdk::data_required() => {
                    anyhow::bail!(
                        "{WHO}: {}: {e:#} (LMLAB_REQUIRE_DATA=1)",
                        real.path.display()
                    )
                }
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
        let device = ctx.device.clone().autodiff();
        let om_params = OrderedMemory::init(&cfg.om, &mut rng(0, 0), &device).num_params();
        let embed = cfg.lstm.embed.unwrap_or(cfg.om.hidden);
        let lstm_hidden = cfg
            .lstm
            .hidden
            .unwrap_or_else(|| LstmClassifier::matched_hidden(embed, om_params));
        // Ordered Memory's trainings (the long ones) first.
        let base = ctx.seed;
        let units: Vec<Training> = ["ordered-memory", "lstm"]
            .iter()
            .flat_map(|m| {
                cfg.seeds.iter().map(move |&s| Training {
                    model: m.to_string(),
                    seed: base.wrapping_add(s),
                })
            })
            .collect();
        let progress = ctx.progress(0, "training");
        let exp = Experiment::new("result")
            .threads(cfg.threads)
            .progress(progress);
        let out = exp.run(ctx, &units, |u: &Training, cx| {
            let mut init = rng(u.seed, if u.model == "lstm" { 11 } else { 10 });
            if u.model == "lstm" {
                let m = LstmClassifier::init(&cfg.lstm, embed, lstm_hidden, &mut init, &device);
                self.train_model(cx, objective.as_ref(), u.seed, m, &data)
            } else {
                let m = OrderedMemory::init(&cfg.om, &mut init, &device);
                self.train_model(cx, objective.as_ref(), u.seed, m, &data)
            }
        })?;
        let mut results: Vec<ModelResult> = out.results.into_iter().map(|r| r.1).collect();
        results.sort_by(|a, b| (a.seed, &a.model).cmp(&(b.seed, &b.model)));
        let summary = summary::Summary {
            cfg: &cfg,
            task: &task.config,
            results: &results,
            n_train: train.len(),
            n_validation: validation.len(),
            sets: &sets,
            missing: &missing,
            lstm_hidden,
            gen_seconds,
            computed: out.computed,
        };
        summary.plots(&ctx.run.plots_dir())?;
        let md = summary.markdown(ctx)?;
        ctx.run.write_summary(&md)?;
        Ok(())
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "ordered-memory",
    description: "Ordered Memory vs a parameter-matched LSTM on ListOps: accuracy in distribution, on longer and real inputs, and induced-tree F1, over seeds",
    config: OrderedMemoryConfig,
    build: |config: OrderedMemoryConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        let err = |f: &str, m: &str| -> anyhow::Error { ConfigError::field(f, m).into() };
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
        t.optim.validate().map_err(|e| e.within("train.optim"))?;
        Ok(Box::new(OrderedMemoryScheduler { config }) as Box<dyn Scheduler>)
    },
}

#[cfg(test)]
mod breakdown_tests {
    use super::*;
    use crate::listops::parse_line;

    /// Accuracy by root operator and by depth counts each example once, in its own group.
    #[test]
    fn breakdown_groups_by_operator_and_depth() {
        let examples: Vec<Example> = [
            "9\t( ( ( [MAX 2 ) 9 ) ] )",
            "2\t( ( ( [MIN 2 ) 9 ) ] )",
            "3\t( ( ( [SM 1 ) 2 ) ] )",
            "4\t4",
            "5\t( ( ( [MAX 2 ) ( ( ( [MIN 5 ) 7 ) ] ) ) ] )",
        ]
        .iter()
        .map(|l| parse_line(l).unwrap())
        .collect();
        let correct = [true, false, true, true, false];
        let (by_length, by_operator, by_depth) = breakdown(&examples, &correct);
        assert_eq!(by_length, vec![("≤20".to_string(), 5, 0.6)]);
        assert_eq!(
            by_operator,
            vec![
                ("MIN".to_string(), 1, 0.0),
                ("MAX".to_string(), 2, 0.5),
                ("SM".to_string(), 1, 1.0),
                ("digit".to_string(), 1, 1.0),
            ]
        );
        assert_eq!(by_depth, vec![(0, 1, 1.0), (1, 3, 2.0 / 3.0), (2, 1, 0.0)]);
    }
}
