#![doc = include_str!("../README.md")]

pub mod eval;
pub mod metrics;
pub mod pairs;
pub mod program;
pub mod real;
mod summary;

use std::collections::BTreeMap;

use lmlab_sdk::experiment::{Experiment, Seed, StageClock, UnitCx, seeds};
use lmlab_sdk::fit::FitSummary;
use lmlab_sdk::lm::Tokenizer;
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::rng::rng;
use lmlab_sdk::stages::Stages;
use lmlab_sdk::train::{OptimConfig, Stage};
use lmlab_sdk::{
    Components, Objective, PolicyInit, Role, RunContext, Sampler, Scheduler, Sequence,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::{Demos, Views, evaluate, worked_pair_answer};
use crate::metrics::{Scores, scores};
use crate::pairs::{Pair, PairTask, pair_question, prompt, single_answer};

const WHO: &str = "scheduler `compositional-gsm`";

/// The model sizes, smallest first: their recipe tables.
pub const SIZES: [&str; 3] = ["small", "medium", "large"];

/// The fine-tune-longer curve: the largest model trained on, single problems only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CurveConfig {
    /// Steps of single-problem fine-tuning after which the pairs are evaluated, increasing
    /// (0: the model as trained). Empty: no curve.
    pub at: Vec<u64>,
    pub batch_size: usize,
    /// The optimiser of every segment (a constant rate continues across them).
    pub optim: OptimConfig,
}

impl Default for CurveConfig {
    fn default() -> Self {
        Self {
            at: vec![0, 100, 200, 400],
            batch_size: 32,
            optim: OptimConfig {
                lr: 1e-3,
                warmup_steps: 0,
                schedule: lmlab_sdk::train::LrSchedule::Constant,
                ..OptimConfig::default()
            },
        }
    }
}

/// Configuration of `compositional-gsm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompositionalConfig {
    /// Training seeds (added to the recipe's seed); results are mean ± sd over them.
    pub seeds: Vec<u64>,
    /// Seeds run side by side, each on its share of the cores.
    pub threads: usize,
    /// Training pairs: each gives its Q1 and its standalone Q2 as single problems.
    pub train_pairs: usize,
    /// Composed-format training examples (the pair's prompt and answer), as a fraction of the
    /// single problems.
    pub composed_fraction: f64,
    /// Test pairs.
    pub test_pairs: usize,
    /// Every size's training from scratch.
    pub train: Stage,
    pub curve: CurveConfig,
}

impl Default for CompositionalConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0, 1, 2],
            threads: 1,
            train_pairs: 4000,
            composed_fraction: 0.05,
            test_pairs: 400,
            train: Stage::default(),
            curve: CurveConfig::default(),
        }
    }
}

/// One model's evaluation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Evaluated {
    pub scores: Scores,
    /// Mean tokens per answer.
    pub mean_tokens: f64,
}

/// One point of the fine-tune-longer curve.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CurvePoint {
    pub steps: u64,
    pub scores: Scores,
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Size → parameters.
    pub params: BTreeMap<String, usize>,
    /// Size → its evaluation on the test pairs.
    pub sizes: BTreeMap<String, Evaluated>,
    pub curve: Vec<CurvePoint>,
    pub fits: Vec<FitSummary>,
    /// Stage → seconds.
    pub stage_seconds: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// The training sequences as text `(prompt, answer)`: every pair's Q1 and standalone Q2 as
/// single problems, then composed examples from the last `round(fraction · singles)` pairs.
pub fn training_texts(pairs: &[Pair], composed_fraction: f64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let worked: Vec<&Pair> = pairs
        .iter()
        .filter(|p| p.s1.is_some() && p.s2.is_some())
        .collect();
    for p in &worked {
        let (s1, s2) = (p.s1.as_deref().unwrap_or(""), p.s2.as_deref().unwrap_or(""));
        out.push((prompt(&[], &p.q1), format!(" {}", single_answer(s1, &p.a1))));
        out.push((
            prompt(&[], &p.q2_standalone),
            format!(" {}", single_answer(s2, &p.a2)),
        ));
    }
    let composed = ((out.len() as f64 * composed_fraction).round() as usize).min(worked.len());
    for p in &worked[worked.len() - composed..] {
        out.push((
            prompt(&[], &pair_question(&p.q1, &p.q2)),
            format!(" {}", worked_pair_answer(p)),
        ));
    }
    out
}

/// The number of composed examples among [`training_texts`].
pub fn composed_count(texts: &[(String, String)]) -> usize {
    texts
        .iter()
        .filter(|(p, _)| p.starts_with("Question: Let X be"))
        .count()
}

/// The scheduler.
pub struct Compositional {
    config: CompositionalConfig,
}

pub(crate) struct Parts {
    pub inits: Vec<Box<dyn PolicyInit>>,
    pub objective: Box<dyn Objective>,
    pub sampler: Box<dyn Sampler>,
    pub tokenizer: Tokenizer,
}

pub(crate) struct Data {
    pub train: Vec<(String, String)>,
    /// The single problems alone (the curve's fine-tuning data).
    pub singles: Vec<(String, String)>,
    pub test: Vec<Pair>,
    pub views: Views,
}

impl Compositional {
    fn eval(
        &self,
        p: &Parts,
        d: &Data,
        m: &LmPolicy,
        seed: u64,
        name: &str,
        cx: &UnitCx,
    ) -> anyhow::Result<Evaluated> {
        let pb = lmlab_sdk::progress::bar(
            (d.test.len() * 4) as u64,
            &format!("seed {seed}: test pairs ({name})"),
            cx.quiet(),
        );
        let a = evaluate(
            &m.inference(),
            p.sampler.as_ref(),
            &d.test,
            &d.views,
            seed,
            &pb,
        )?;
        pb.finish_and_clear();
        cx.check()?;
        // The first two answers of each view, to read what the model writes.
        let first = |k: usize| a.texts[k].iter().take(2).cloned().collect::<Vec<_>>();
        cx.log(serde_json::json!({"stage": "answers", "model": name, "q1": first(0), "q2": first(1), "pair": first(2), "control": first(3)}))?;
        Ok(Evaluated {
            scores: scores(&a.outcomes),
            mean_tokens: a.tokens as f64 / (4 * d.test.len()).max(1) as f64,
        })
    }

    fn run_seed(&self, p: &Parts, d: &Data, seed: u64, cx: &UnitCx) -> anyhow::Result<SeedResult> {
        let cfg = &self.config;
        let mut clock = StageClock::start();
        let mut st = Stages::training(seed, cx);
        let mut res = SeedResult {
            seed,
            ..Default::default()
        };
        let obj = p.objective.as_ref();
        let mut largest = None;
        for (i, (size, init)) in SIZES.iter().zip(&p.inits).enumerate() {
            let m0 = init.init(
                &p.tokenizer,
                &mut rng(seed, 1 + i as u64),
                &st.train_device(),
            )?;
            let seqs: Vec<Sequence> = d
                .train
                .iter()
                .map(|(q, a)| m0.training_sequence(q, a))
                .collect();
            let m = st.sft(&m0, obj, &seqs, &cfg.train, &format!("{size} model"))?;
            res.params.insert(size.to_string(), m.params());
            clock.lap("training");
            let e = self.eval(p, d, &m, seed, size, cx)?;
            cx.log(serde_json::json!({"stage": "size", "size": size, "params": m.params(), "scores": &e.scores}))?;
            res.sizes.insert(size.to_string(), e);
            clock.lap("evaluation");
            largest = Some(m);
        }

        // Fine-tuning longer on single problems only.
        if let Some(mut m) = largest {
            let singles: Vec<Sequence> = d
                .singles
                .iter()
                .map(|(q, a)| m.training_sequence(q, a))
                .collect();
            let mut done = 0u64;
            for &at in &cfg.curve.at {
                if at > done {
                    let stage =
                        Stage::new(at - done, cfg.curve.batch_size, cfg.curve.optim.clone());
                    m = st.sft(
                        &m,
                        obj,
                        &singles,
                        &stage,
                        &format!("fine-tuning to {at} steps"),
                    )?;
                    done = at;
                    clock.lap("fine-tuning longer");
                }
                let scores = if at == 0 {
                    res.sizes[SIZES[2]].scores.clone()
                } else {
                    self.eval(p, d, &m, seed, &format!("{at} steps"), cx)?
                        .scores
                };
                cx.log(serde_json::json!({"stage": "curve", "steps": at, "scores": &scores}))?;
                res.curve.push(CurvePoint { steps: at, scores });
                clock.lap("evaluation");
            }
        }
        res.fits = std::mem::take(&mut st.fits);
        res.stage_seconds = clock.seconds().clone();
        res.seconds = clock.total();
        Ok(res)
    }
}

impl Scheduler for Compositional {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<PairTask>(
                "task",
                "compositional pairs with worked solutions (`compositional-gsm`, generated)",
            ),
            Role::policy("small", "the smallest model; its tokenizer is every size's"),
            Role::policy("medium", "the middle model"),
            Role::policy(
                "large",
                "the largest model (and the fine-tune-longer curve's)",
            ),
            Role::objective("objective", &["logprobs", "mask"], "training loss"),
            Role::sampler(
                "test_sampler",
                "how test answers are decoded (the paper: greedy)",
            ),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<PairTask> = c.take("task", WHO)?;
        let (train, test) = lmlab_sdk::task::train_and_test(task.as_ref(), WHO)?;
        anyhow::ensure!(
            train.len() >= cfg.train_pairs,
            "{WHO}: the task made {} training pairs, {} wanted (`train_pairs`; raise the task's `generated.n_train`)",
            train.len(),
            cfg.train_pairs
        );
        anyhow::ensure!(
            test.len() >= cfg.test_pairs,
            "{WHO}: the task made {} test pairs, {} wanted (`test_pairs`; raise the task's `generated.n_test`)",
            test.len(),
            cfg.test_pairs
        );
        let train = &train[..cfg.train_pairs];
        let test: Vec<Pair> = test.into_iter().take(cfg.test_pairs).collect();
        let texts = training_texts(train, cfg.composed_fraction);
        anyhow::ensure!(
            !texts.is_empty(),
            "{WHO}: no training pair has worked solutions (a generated task has them)"
        );
        let singles: Vec<(String, String)> = texts
            .iter()
            .filter(|(q, _)| !q.starts_with("Question: Let X be"))
            .cloned()
            .collect();
        let inits: Vec<Box<dyn PolicyInit>> = SIZES
            .iter()
            .map(|s| c.take(s, WHO))
            .collect::<anyhow::Result<_>>()?;
        let tokenizer =
            inits[0].tokenizer(&mut || texts.iter().map(|(q, a)| format!("{q}{a}")).collect())?;
        let p = Parts {
            inits,
            objective: c.take("objective", WHO)?,
            sampler: c.take("test_sampler", WHO)?,
            tokenizer,
        };
        let views = Views::new(&test, &Demos::default());
        let d = Data {
            train: texts,
            singles,
            test,
            views,
        };
        let models: Vec<String> = p
            .inits
            .iter()
            .map(|i| i.summary(&p.tokenizer))
            .collect::<anyhow::Result<_>>()?;
        ctx.run.log(&serde_json::json!({
            "stage": "data",
            "train_pairs": cfg.train_pairs,
            "training_sequences": d.train.len(),
            "composed": composed_count(&d.train),
            "test_pairs": d.test.len(),
        }))?;
        let units = seeds(ctx.seed, &cfg.seeds);
        let out = Experiment::new("seed")
            .threads(cfg.threads.min(units.len()))
            .run(ctx, &units, |u: &Seed, cx| {
                self.run_seed(&p, &d, u.seed, cx)
            })?;
        let results: Vec<SeedResult> = out.results.into_iter().map(|(_, r)| r).collect();
        summary::write(ctx, &cfg, &models, &d, &results, out.computed)
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "compositional-gsm",
    description: "compositional GSM (Hosseini et al. 2024): three model sizes trained from scratch on single problems and a few composed ones; S1, S2, S_comp, the reasoning gap, distraction, second hop, control, and the fine-tune-longer curve",
    config: CompositionalConfig,
    build: |config: CompositionalConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("seeds", config.seeds.len()), ("threads", config.threads), ("train_pairs", config.train_pairs), ("test_pairs", config.test_pairs), ("curve.batch_size", config.curve.batch_size)])?;
        if !(0.0..=1.0).contains(&config.composed_fraction) {
            return Err(ConfigError::field("composed_fraction", "a fraction of the single problems, between 0 and 1").into());
        }
        if config.curve.at.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::field("curve.at", "steps in increasing order (e.g. [0, 100, 200, 400])").into());
        }
        config.train.validate().map_err(|e| e.within("train"))?;
        config.curve.optim.validate().map_err(|e| e.within("curve.optim"))?;
        Ok(Box::new(Compositional { config }) as Box<dyn Scheduler>)
    },
}
