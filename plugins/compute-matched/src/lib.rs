#![doc = include_str!("../README.md")]

pub mod metrics;
pub mod real;
mod summary;

use std::collections::BTreeMap;

use lmlab_sdk::eval::{by_problem, correct_sequences, pass_at_1};
use lmlab_sdk::experiment::{Experiment, Seed, StageClock, UnitCx, seeds};
use lmlab_sdk::fit::FitSummary;
use lmlab_sdk::lm::Tokenizer;
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::rng::rng;
use lmlab_sdk::sampling::{compute_matched_samples, sampling_flops};
use lmlab_sdk::stages::Stages;
use lmlab_sdk::tasks::arith::step_checks;
use lmlab_sdk::tasks::steps::all_right;
use lmlab_sdk::tasks::{TextProblem, TextTask, prompt_text, training_text};
use lmlab_sdk::train::Stage;
use lmlab_sdk::{
    Candidate, Components, Objective, Policy, PolicyInit, Role, RunContext, Sampler, Scheduler,
    Sequence,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::metrics::{
    Sample, correct_count, coverage_at, diversity_at, false_positive_rate, normalise, tokens,
};

const WHO: &str = "scheduler `compute-matched-sampling`";

/// The models, by role: the small student, the weaker-cheaper and the stronger-expensive one.
pub const STUDENT: &str = "student";
pub const WC: &str = "WC";
pub const SE: &str = "SE";

/// The fine-tuning data sets of a budget: the SE model's samples, the WC model's at matched
/// compute, and the WC model's at a matched number of samples.
pub const SE_DATA: &str = "SE data";
pub const WC_COMPUTE: &str = "WC data, compute-matched";
pub const WC_NUMBER: &str = "WC data, number-matched";
pub const SOURCES: [&str; 3] = [SE_DATA, WC_COMPUTE, WC_NUMBER];

/// The three fine-tuning setups (the paper's §4): which base model is fine-tuned.
pub const SETUPS: [(&str, &str); 3] = [
    ("knowledge distillation", STUDENT),
    ("self-improvement", WC),
    ("weak-to-strong improvement", SE),
];

/// Configuration of `compute-matched-sampling`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeMatchedConfig {
    /// Training seeds (added to the recipe's seed); results are mean ± std over them.
    pub seeds: Vec<u64>,
    /// Seeds run side by side, each on its share of the cores.
    pub threads: usize,
    /// Training problems with their reference solutions: every model's base training (the
    /// stand-in for pretraining, the same gold data for all three).
    pub base_problems: usize,
    /// Further training problems whose sampled solutions, kept when the final answer is
    /// right, are the fine-tuning data (the paper's MATH training set).
    pub sample_problems: usize,
    /// Test problems: every model's greedy pass@1.
    pub test_problems: usize,
    /// Sampling budgets, as the SE model's samples per problem (the paper: 1 and 10); the
    /// WC model draws `(P_SE · W_SE) / (P_WC · W_WC)` times as many at matched compute.
    pub budgets: Vec<usize>,
    /// The budgets whose data every setup is fine-tuned on (empty: all of them).
    pub finetune_budgets: Vec<usize>,
    /// The no-filter ablation: at the largest fine-tuning budget, each setup is also
    /// fine-tuned on all the compute-matched samples, wrong answers included.
    pub no_filter: bool,
    /// Every model's base training on the gold solutions, from scratch.
    pub base: Stage,
    /// Every fine-tuning on sampled data, from the setup's base model.
    pub finetune: Stage,
}

impl Default for ComputeMatchedConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0, 1, 2],
            threads: 1,
            base_problems: 500,
            sample_problems: 500,
            test_problems: 500,
            budgets: vec![1, 10],
            finetune_budgets: Vec::new(),
            no_filter: true,
            base: Stage::default(),
            finetune: Stage::default(),
        }
    }
}

impl ComputeMatchedConfig {
    fn finetune_budgets(&self) -> Vec<usize> {
        if self.finetune_budgets.is_empty() {
            self.budgets.clone()
        } else {
            self.finetune_budgets.clone()
        }
    }
}

/// One model's sampling at one budget, over the sampled problems.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SideStats {
    /// Samples per problem.
    pub samples: usize,
    pub coverage: f64,
    pub diversity: f64,
    /// `None` when no sample was correct.
    pub fpr: Option<f64>,
    /// Final-answer-correct samples (the filtered fine-tuning data).
    pub correct: usize,
    /// Tokens generated, and their mean per sample (W).
    pub tokens: u64,
    pub mean_tokens: f64,
    /// Realised sampling FLOPs, `2 · P · tokens`, over all the problems.
    pub flops: f64,
}

/// One budget: S_SE, the matched S_WC, and each side's sampling.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BudgetResult {
    pub s_se: usize,
    pub s_wc: usize,
    /// [`SE`], [`WC_COMPUTE`], [`WC_NUMBER`] → its sampling (keyed by the data set names).
    pub sides: BTreeMap<String, SideStats>,
}

/// One fine-tuning: a setup's base model on one data set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Finetune {
    pub setup: String,
    /// S_SE of the budget the data came from.
    pub budget: usize,
    /// One of [`SOURCES`].
    pub data: String,
    /// Only final-answer-correct samples (false: the no-filter ablation).
    pub filtered: bool,
    /// Training sequences.
    pub examples: usize,
    /// Greedy pass@1 on the test problems after fine-tuning (the base's when there was no
    /// data).
    pub accuracy: f64,
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Model → parameters.
    pub params: BTreeMap<String, usize>,
    /// Model → greedy pass@1 on the test problems after base training.
    pub base_accuracy: BTreeMap<String, f64>,
    /// WC and SE → the fraction of correct samples (pass@1 at the sampling temperature) on
    /// the sampled problems.
    pub sample_pass1: BTreeMap<String, f64>,
    /// WC and SE → coverage@k and diversity@k at k = 1, 2, 4, … and at their largest
    /// sample count (`k_values`).
    pub coverage_curves: BTreeMap<String, Vec<f64>>,
    pub diversity_curves: BTreeMap<String, Vec<f64>>,
    pub k_values: BTreeMap<String, Vec<usize>>,
    pub budgets: Vec<BudgetResult>,
    pub finetunes: Vec<Finetune>,
    pub fits: Vec<FitSummary>,
    /// Stage → seconds.
    pub stage_seconds: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// The scheduler.
pub struct ComputeMatched {
    config: ComputeMatchedConfig,
}

/// The recipe's components, as the seeds share them.
pub(crate) struct Parts {
    pub task: Box<TextTask>,
    /// Student, WC, SE.
    pub inits: [Box<dyn PolicyInit>; 3],
    pub objective: Box<dyn Objective>,
    pub sampler: Box<dyn Sampler>,
    pub test_sampler: Box<dyn Sampler>,
    pub tokenizer: Tokenizer,
}

/// The problems.
pub(crate) struct Data {
    pub base: Vec<TextProblem>,
    pub sample: Vec<TextProblem>,
    pub test: Vec<TextProblem>,
}

/// Each sampled problem's samples, in the order drawn.
fn samples(problems: &[TextProblem], candidates: &[Candidate]) -> Vec<Vec<Sample>> {
    by_problem(candidates, problems.len())
        .into_iter()
        .zip(problems)
        .map(|(idx, p)| {
            idx.into_iter()
                .map(|i| {
                    let c = &candidates[i];
                    let text = &c.completion.text;
                    Sample {
                        correct: c.correct,
                        sound: step_checks(p, text).map(|s| all_right(&s)),
                        key: normalise(text),
                        tokens: c.completion.token_ids.len(),
                    }
                })
                .collect()
        })
        .collect()
}

/// The first `k` candidates of each problem.
fn first(candidates: &[Candidate], problems: usize, k: usize) -> Vec<Candidate> {
    let groups = by_problem(candidates, problems);
    groups
        .iter()
        .flat_map(|g| g.iter().take(k).map(|&i| candidates[i].clone()))
        .collect()
}

fn side(problems: &[Vec<Sample>], k: usize, params: usize) -> SideStats {
    let tok = tokens(problems, k);
    let n: usize = problems.iter().map(|p| p.len().min(k)).sum();
    SideStats {
        samples: k,
        coverage: coverage_at(problems, k),
        diversity: diversity_at(problems, k),
        fpr: false_positive_rate(problems, k),
        correct: correct_count(problems, k),
        tokens: tok,
        mean_tokens: tok as f64 / n.max(1) as f64,
        flops: sampling_flops(params, tok),
    }
}

/// k = 1, 2, 4, … up to `n`, and `n`.
fn k_values(n: usize) -> Vec<usize> {
    let mut k = lmlab_sdk::eval::ks(n);
    if k.last() != Some(&n) && n > 0 {
        k.push(n);
    }
    k
}

/// The draws of a compute-matched comparison: `S_max` (the largest budget) per problem from
/// SE (`draw(SE, S_max, 1)`) and from WC (`draw(WC, S_max, 2)`), W measured on them, then more
/// from WC (`draw(WC, n, 3)`) up to its largest compute-matched count. Returns SE's and WC's
/// candidates (each problem's in the order drawn) and S_WC for each budget.
pub fn compute_matched_draws(
    budgets: &[usize],
    p_se: usize,
    p_wc: usize,
    mut draw: impl FnMut(&str, usize, u64) -> anyhow::Result<Vec<Candidate>>,
) -> anyhow::Result<(Vec<Candidate>, Vec<Candidate>, Vec<usize>)> {
    let s_max = budgets.iter().copied().max().unwrap_or(1);
    let se = draw(SE, s_max, 1)?;
    let mut wc = draw(WC, s_max, 2)?;
    let mean_tokens = |c: &[Candidate]| {
        let t: usize = c.iter().map(|x| x.completion.token_ids.len()).sum();
        t as f64 / c.len().max(1) as f64
    };
    let (w_se, w_wc) = (mean_tokens(&se), mean_tokens(&wc));
    let matched: Vec<usize> = budgets
        .iter()
        .map(|&b| compute_matched_samples(b, p_se, w_se, p_wc, w_wc))
        .collect();
    let s_wc_max = matched.iter().copied().max().unwrap_or(1);
    if s_wc_max > s_max {
        wc.extend(draw(WC, s_wc_max - s_max, 3)?);
        // Each problem's draws together, the first S_max first (a stable sort).
        wc.sort_by_key(|c| c.problem);
    }
    Ok((se, wc, matched))
}

/// The sampling statistics of a compute-matched comparison into `res`: each model's pass@1
/// and coverage and diversity curves, and each budget's sides.
pub(crate) fn sampling_stats(
    problems: &[TextProblem],
    (se, wc): (&[Candidate], &[Candidate]),
    budgets: &[usize],
    matched: &[usize],
    (p_se, p_wc): (usize, usize),
    res: &mut SeedResult,
) -> Vec<BudgetResult> {
    let s_max = budgets.iter().copied().max().unwrap_or(1);
    let s_wc_max = matched.iter().copied().max().unwrap_or(1).max(s_max);
    let (se_s, wc_s) = (samples(problems, se), samples(problems, wc));
    res.sample_pass1.insert(SE.into(), pass_at_1(se));
    res.sample_pass1.insert(WC.into(), pass_at_1(wc));
    for (name, sm, n) in [(SE, &se_s, s_max), (WC, &wc_s, s_wc_max)] {
        let ks = k_values(n);
        res.coverage_curves.insert(
            name.into(),
            ks.iter().map(|&k| coverage_at(sm, k)).collect(),
        );
        res.diversity_curves.insert(
            name.into(),
            ks.iter().map(|&k| diversity_at(sm, k)).collect(),
        );
        res.k_values.insert(name.into(), ks);
    }
    budgets
        .iter()
        .zip(matched)
        .map(|(&b, &m)| {
            let mut sides = BTreeMap::new();
            sides.insert(SE_DATA.to_string(), side(&se_s, b, p_se));
            sides.insert(WC_COMPUTE.to_string(), side(&wc_s, m, p_wc));
            sides.insert(WC_NUMBER.to_string(), side(&wc_s, b, p_wc));
            BudgetResult {
                s_se: b,
                s_wc: m,
                sides,
            }
        })
        .collect()
}

impl ComputeMatched {
    fn run_seed(&self, p: &Parts, seed: u64, d: &Data, cx: &UnitCx) -> anyhow::Result<SeedResult> {
        let cfg = &self.config;
        let mut clock = StageClock::start();
        let mut st = Stages::for_seed(p.task.as_ref(), seed, cx);
        let mut res = SeedResult {
            seed,
            ..Default::default()
        };
        let s = |i: u64| (seed * 100 + i).wrapping_mul(1_000_003);
        let obj = p.objective.as_ref();
        let test_acc = |st: &Stages, m: &LmPolicy, name: &str, i: u64| -> anyhow::Result<f64> {
            let c = st.draw(p.test_sampler.as_ref(), m, &d.test, s(50 + i), name)?;
            cx.check()?;
            Ok(pass_at_1(&c))
        };

        // 1. Three models trained from scratch on the same gold solutions.
        let mut bases: Vec<LmPolicy> = Vec::new();
        for (i, (name, init)) in [STUDENT, WC, SE].into_iter().zip(&p.inits).enumerate() {
            let m0 = init.init(
                &p.tokenizer,
                &mut rng(seed, 1 + i as u64),
                &st.train_device(),
            )?;
            let gold: Vec<Sequence> = d
                .base
                .iter()
                .map(|q| m0.training_sequence(&prompt_text(q), &q.solution))
                .collect();
            let m = st.sft(&m0, obj, &gold, &cfg.base, &format!("{name} base"))?;
            res.params.insert(name.into(), m.num_params());
            let acc = test_acc(&st, &m, &format!("test ({name} base)"), i as u64)?;
            res.base_accuracy.insert(name.into(), acc);
            cx.log(serde_json::json!({"stage": "base", "model": name, "test_pass1": acc}))?;
            bases.push(m);
        }
        clock.lap("base training and test");
        let (p_wc, p_se) = (res.params[WC], res.params[SE]);

        // 2. Sampling at every budget, both matchings.
        let draw = |st: &Stages, m: &LmPolicy, n: usize, seed: u64, name: &str| {
            st.draw(p.sampler.scaled(n).as_ref(), m, &d.sample, seed, name)
        };
        let (se, wc, matched) = compute_matched_draws(&cfg.budgets, p_se, p_wc, |model, n, i| {
            let (m, name) = if model == SE {
                (&bases[2], SE)
            } else {
                (&bases[1], WC)
            };
            let got = draw(&st, m, n, s(i), &format!("{name}, {n} per problem"))?;
            cx.check()?;
            Ok(got)
        })?;
        clock.lap("sampling");
        let budgets = sampling_stats(
            &d.sample,
            (&se, &wc),
            &cfg.budgets,
            &matched,
            (p_se, p_wc),
            &mut res,
        );
        for b in &budgets {
            cx.log(serde_json::json!({"stage": "sampling", "s_se": b.s_se, "s_wc": b.s_wc, "sides": &b.sides}))?;
        }
        res.budgets = budgets;

        // 3. Fine-tuning: each setup's base on each budget's data, filtered by the final answer
        //    (and, at the largest budget, the no-filter ablation).
        let n = d.sample.len();
        let ft_budgets = cfg.finetune_budgets();
        let largest = ft_budgets.iter().copied().max();
        let mut runs: Vec<(usize, &str, bool, Vec<Sequence>)> = Vec::new();
        for (&b, &m) in cfg.budgets.iter().zip(&matched) {
            if !ft_budgets.contains(&b) {
                continue;
            }
            let (se_b, wc_m, wc_b) = (first(&se, n, b), first(&wc, n, m), first(&wc, n, b));
            runs.push((b, SE_DATA, true, correct_sequences(&se_b)));
            runs.push((b, WC_COMPUTE, true, correct_sequences(&wc_m)));
            runs.push((b, WC_NUMBER, true, correct_sequences(&wc_b)));
            if cfg.no_filter && Some(b) == largest {
                let all = |c: &[Candidate]| c.iter().map(|x| x.completion.sequence()).collect();
                runs.push((b, SE_DATA, false, all(&se_b)));
                runs.push((b, WC_COMPUTE, false, all(&wc_m)));
            }
        }
        let mut t = 10u64;
        for (setup, model) in SETUPS {
            let i = [STUDENT, WC, SE]
                .iter()
                .position(|m| *m == model)
                .unwrap_or(0);
            for (b, data, filtered, seqs) in &runs {
                t += 1;
                let label = format!(
                    "{setup}, {data}{}, S_SE = {b}",
                    if *filtered { "" } else { ", unfiltered" }
                );
                let accuracy = if seqs.is_empty() {
                    res.base_accuracy[model]
                } else {
                    let m = st.sft(&bases[i], obj, seqs, &cfg.finetune, &label)?;
                    test_acc(&st, &m, &format!("test ({label})"), t)?
                };
                let f = Finetune {
                    setup: setup.into(),
                    budget: *b,
                    data: data.to_string(),
                    filtered: *filtered,
                    examples: seqs.len(),
                    accuracy,
                };
                cx.log(serde_json::json!({"stage": "finetune", "finetune": &f}))?;
                res.finetunes.push(f);
                clock.lap("fine-tuning and test");
            }
        }
        res.fits = std::mem::take(&mut st.fits);
        res.stage_seconds = clock.seconds().clone();
        res.seconds = clock.total();
        Ok(res)
    }
}

impl Scheduler for ComputeMatched {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>(
                "task",
                "problems with step traces (`arith`: the step checker re-executes them)",
            ),
            Role::policy(
                "policy",
                "the weaker-cheaper (WC) model; its tokenizer is every model's",
            ),
            Role::policy(
                "strong",
                "the stronger-expensive (SE) model, ~3× the WC model's parameters",
            ),
            Role::policy(
                "student",
                "the knowledge-distillation student, the smallest",
            ),
            Role::objective(
                "objective",
                &["logprobs", "mask"],
                "base training and fine-tuning loss",
            ),
            Role::sampler(
                "sampler",
                "how solutions are sampled (n = 1: the budgets set the count)",
            ),
            Role::sampler("test_sampler", "test decoding (greedy pass@1)"),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = c.take("task", WHO)?;
        let (train, test) = lmlab_sdk::task::train_and_test(task.as_ref(), WHO)?;
        let need = cfg.base_problems + cfg.sample_problems;
        anyhow::ensure!(
            train.len() >= need,
            "{WHO}: {} training problems, {need} needed (base_problems + sample_problems)",
            train.len()
        );
        anyhow::ensure!(
            step_checks(&train[0], &train[0].solution).is_some(),
            "{WHO}: the false-positive rate needs step traces the step checker reads (task `arith`)"
        );
        let test: Vec<TextProblem> = test.into_iter().take(cfg.test_problems).collect();
        let [weak, strong, student]: [Box<dyn PolicyInit>; 3] = [
            c.take("policy", WHO)?,
            c.take("strong", WHO)?,
            c.take("student", WHO)?,
        ];
        let tokenizer = weak.tokenizer(&mut || train.iter().map(training_text).collect())?;
        let sampler: Box<dyn Sampler> = c.take("sampler", WHO)?;
        anyhow::ensure!(
            sampler.n() == Some(1),
            "{WHO}: the `[sampler]` must draw n = 1 (the budgets decide how many samples)"
        );
        let p = Parts {
            task,
            inits: [student, weak, strong],
            objective: c.take("objective", WHO)?,
            sampler,
            test_sampler: c.take("test_sampler", WHO)?,
            tokenizer,
        };
        let d = Data {
            base: train[..cfg.base_problems].to_vec(),
            sample: train[cfg.base_problems..need].to_vec(),
            test,
        };
        let models: Vec<String> = p
            .inits
            .iter()
            .map(|i| i.summary(&p.tokenizer))
            .collect::<anyhow::Result<_>>()?;
        let units = seeds(ctx.seed, &cfg.seeds);
        let out = Experiment::new("seed")
            .threads(cfg.threads.min(units.len()))
            .run(ctx, &units, |u: &Seed, cx| {
                self.run_seed(&p, u.seed, &d, cx)
            })?;
        let results: Vec<SeedResult> = out.results.into_iter().map(|(_, r)| r).collect();
        summary::write(ctx, &cfg, &models, &d, &results, out.computed)
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "compute-matched-sampling",
    description: "compute-matched sampling (Bansal et al. 2024): weaker-cheaper vs stronger-expensive samples at matched FLOPs, coverage, diversity, false-positive rate, and three fine-tuning setups",
    config: ComputeMatchedConfig,
    build: |config: ComputeMatchedConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("seeds", config.seeds.len()), ("threads", config.threads), ("base_problems", config.base_problems), ("sample_problems", config.sample_problems), ("test_problems", config.test_problems), ("budgets", config.budgets.len())])?;
        if config.budgets.contains(&0) || config.budgets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::field("budgets", "SE samples per problem, at least 1 each, in increasing order (e.g. [1, 10])").into());
        }
        if let Some(b) = config.finetune_budgets.iter().find(|b| !config.budgets.contains(b)) {
            return Err(ConfigError::field("finetune_budgets", format!("{b} is not one of `budgets` ({:?})", config.budgets)).into());
        }
        config.base.validate().map_err(|e| e.within("base"))?;
        config.finetune.validate().map_err(|e| e.within("finetune"))?;
        Ok(Box::new(ComputeMatched { config }) as Box<dyn Scheduler>)
    },
}
