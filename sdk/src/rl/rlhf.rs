//! What every RLHF scheduler shares: its components and data ([`Rlhf`]), the base of each seed
//! (SFT on reference responses, a reward model fitted from the SFT model, its held-out checks,
//! the SFT and Best-of-n baselines judged by a gold reward), the RL runs on it with their
//! statistics, and the tables and plots of a summary.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::experiment::UnitCx;
use crate::lm::Tokenizer;
use crate::lm::policy::LmPolicy;
use crate::metrics::mean_std;
use crate::pipeline::{LoopMode, PipelineConfig};
use crate::policy::{PolicyInit, Sequence};
use crate::report::{Fmt, Table};
use crate::reward::{Preference, RewardModel, RewardSpec};
use crate::reward_models::Gold;
use crate::rl::methods::RlMethod;
use crate::rl::{Eval, Judge, RlConfig, RlOutcome, RlRun};
use crate::stages::Stages;
use crate::tasks::{TextProblem, TextTask};
use crate::train::Stage;
use crate::{Components, Objective, Role, Sampler};

/// Everything an RLHF scheduler takes from its recipe and its task, and the data prepared for
/// it: the `[policy]` and its tokenizer, the SFT `[objective]`, the `[reward_model]`, the
/// rollout `[sampler]`, the `[eval_sampler]`, each RL method's objective roles, the prompts,
/// the SFT sequences and the preference pairs.
pub struct Rlhf {
    pub task: Arc<TextTask>,
    pub init: Box<dyn PolicyInit>,
    pub tokenizer: Tokenizer,
    pub objective: Box<dyn Objective>,
    pub reward: Box<dyn RewardSpec>,
    pub sampler: Box<dyn Sampler>,
    pub eval_sampler: Box<dyn Sampler>,
    /// The objectives of the methods' roles, by role.
    pub objectives: BTreeMap<String, Box<dyn Objective>>,
    /// The RL prompts (training problems) and the held-out evaluation problems, whose
    /// `solution` is the reference response the gold win rate is against.
    pub problems: Vec<TextProblem>,
    pub eval_problems: Vec<TextProblem>,
    /// SFT sequences (prompts and reference responses; also what the reward model's mean is
    /// normalised on).
    pub sft: Vec<Sequence>,
    /// Preference pairs for the reward model, and held-out ones with the gold rewards of
    /// their chosen and rejected responses.
    pub preferences: Vec<Preference>,
    pub heldout: Vec<(Preference, f32, f32)>,
    gold: Gold,
}

/// How the base did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Base {
    pub sft_loss_start: f64,
    pub sft_loss_end: f64,
    pub rm_loss_end: f64,
    /// Reward-model accuracy on the held-out preference pairs.
    pub rm_heldout_accuracy: f64,
    /// Agreement of the reward model with the gold reward on held-out pairs whose gold
    /// rewards differ.
    pub rm_gold_agreement: f64,
    pub sft: Eval,
    /// Best-of-n SFT samples by the reward model (`None` when disabled).
    pub best_of: Option<Eval>,
    /// Reference responses' mean gold reward on the evaluation problems.
    pub reference_gold: f64,
}

/// A seed's SFT policy (inference) and reward model, which its RL runs share.
pub type Models = (LmPolicy, Box<dyn RewardModel>);

impl Rlhf {
    /// The roles an RLHF scheduler takes besides its task, for `methods`.
    pub fn roles(methods: &[Box<dyn RlMethod>]) -> Vec<Role> {
        let mut roles = vec![
            Role::policy("policy", "the model SFT starts from"),
            Role::objective("objective", &["logprobs", "mask"], "the SFT loss"),
            Role::reward_model(
                "reward_model",
                "what RL optimises, fitted from the SFT model",
            ),
            Role::sampler("sampler", "the rollouts (its `n` is K, samples per prompt)"),
            Role::sampler(
                "eval_sampler",
                "one sample per held-out prompt (Best-of-n scales it)",
            ),
        ];
        for m in methods {
            for r in m.roles() {
                if !roles.iter().any(|x| x.name == r.role) {
                    roles.push(Role::objective(
                        r.role,
                        r.inputs,
                        format!("{}: {}", m.label(), r.about),
                    ));
                }
            }
        }
        roles
    }

    /// Takes the roles of [`roles`](Self::roles) (not the task) and builds the tokenizer from
    /// `texts`; the data are left empty for the scheduler to fill.
    pub fn take(
        c: &mut Components,
        who: &str,
        methods: &[Box<dyn RlMethod>],
        task: Arc<TextTask>,
        texts: &mut dyn FnMut() -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let init: Box<dyn PolicyInit> = c.take("policy", who)?;
        let tokenizer = init.tokenizer(texts)?;
        let mut objectives = BTreeMap::new();
        for r in methods.iter().flat_map(|m| m.roles()) {
            if !objectives.contains_key(r.role) {
                objectives.insert(
                    r.role.to_string(),
                    c.take::<Box<dyn Objective>>(r.role, who)?,
                );
            }
        }
        Ok(Self {
            gold: Gold { task: task.clone() },
            task,
            init,
            tokenizer,
            objective: c.take("objective", who)?,
            reward: c.take("reward_model", who)?,
            sampler: c.take("sampler", who)?,
            eval_sampler: c.take("eval_sampler", who)?,
            objectives,
            problems: Vec::new(),
            eval_problems: Vec::new(),
            sft: Vec::new(),
            preferences: Vec::new(),
            heldout: Vec::new(),
        })
    }

    /// A response's ids: its text, then EOS.
    pub fn response(&self, text: &str) -> Vec<u32> {
        let mut ids = self.tokenizer.encode(text, false);
        ids.push(self.tokenizer.eos());
        ids
    }

    /// The gold judge of the evaluation problems.
    pub fn judge(&self) -> Judge<'_> {
        let task: &TextTask = self.task.as_ref();
        let reference_gold = self
            .eval_problems
            .iter()
            .map(|p| task.reward(p, &p.solution, true).unwrap_or(0.0))
            .collect();
        Judge {
            problems: &self.eval_problems,
            reference_gold,
            gold: &self.gold,
            task,
            sampler: self.eval_sampler.as_ref(),
        }
    }

    /// A seed's base: the policy initialised and fine-tuned on the SFT sequences, the reward
    /// model fitted from it (all from the seed's stream 0, in that order), its held-out
    /// checks, and the SFT and Best-of-`best_of` baselines (drawn with `seed · 7919` and
    /// `seed · 104729`).
    pub fn base(
        &self,
        seed: u64,
        cx: &UnitCx,
        sft: &Stage,
        best_of: usize,
        eos_penalty: f32,
    ) -> anyhow::Result<(Models, Base)> {
        let mut st = Stages::new(
            self.task.as_ref(),
            format!("seed {seed}"),
            cx.device(),
            cx.quiet(),
            crate::rng::rng(seed, 0),
        );
        let train_device = st.train_device();
        let init = self
            .init
            .init(&self.tokenizer, &mut st.rng, &train_device)?;
        let policy = st.sft(&init, self.objective.as_ref(), &self.sft, sft, "SFT")?;
        let rm = st.reward(
            self.reward.as_ref(),
            &policy,
            &self.task,
            &self.preferences,
            &self.sft,
            "reward model",
        )?;
        let rm_loss_end = rm
            .log
            .as_ref()
            .map_or(f64::NAN, |l| l.summary("", 20).loss_end);
        let rm = rm.model;
        let score = |f: &dyn Fn(&Preference) -> Sequence| -> anyhow::Result<Vec<f32>> {
            let seqs: Vec<Sequence> = self.heldout.iter().map(|x| f(&x.0)).collect();
            rm.score_sequences(&seqs)
                .ok_or_else(|| anyhow::anyhow!("the reward model scores no bare sequences"))?
        };
        let (sc, sr) = (score(&Preference::chosen)?, score(&Preference::rejected)?);
        let n = self.heldout.len().max(1) as f64;
        let accuracy = sc.iter().zip(&sr).filter(|(a, b)| a > b).count() as f64 / n;
        let (mut agree, mut decided) = (0usize, 0usize);
        for ((x, a), b) in self.heldout.iter().zip(&sc).zip(&sr) {
            if x.1 != x.2 {
                decided += 1;
                agree += ((x.1 > x.2) == (a > b)) as usize;
            }
        }
        let (sft_policy, judge) = (policy.inference(), self.judge());
        let sft_eval = judge.evaluate(&sft_policy, &sft_policy, seed.wrapping_mul(7919))?;
        let best_of = (best_of >= 1)
            .then(|| {
                judge.best_of(
                    &sft_policy,
                    rm.as_ref(),
                    best_of,
                    eos_penalty,
                    seed.wrapping_mul(104_729),
                )
            })
            .transpose()?;
        let s = &st.fits[0];
        let base = Base {
            sft_loss_start: s.loss_start,
            sft_loss_end: s.loss_end,
            rm_loss_end,
            rm_heldout_accuracy: accuracy,
            rm_gold_agreement: agree as f64 / decided.max(1) as f64,
            sft: sft_eval,
            best_of,
            reference_gold: mean_std(
                &judge
                    .reference_gold
                    .iter()
                    .map(|&g| g as f64)
                    .collect::<Vec<_>>(),
            )
            .0,
        };
        tracing::info!(
            seed,
            sft_win = base.sft.win_rate,
            rm_acc = base.rm_heldout_accuracy,
            "SFT and reward model done"
        );
        Ok(((sft_policy, rm), base))
    }

    /// One RL run of `method` from a seed's models: trains through the pipeline, logs each
    /// update's record (`stage = "rl"`) under the unit, and judges the final policy (drawn with
    /// `(seed + 1) · 7919`).
    pub fn run(
        &self,
        (sft, rm): &Models,
        method: &dyn RlMethod,
        cfg: &RlConfig,
        pipeline: PipelineConfig,
        seed: u64,
        cx: &UnitCx,
    ) -> anyhow::Result<RunStats> {
        let rounds = pipeline.rounds;
        let run = RlRun {
            method,
            objectives: method
                .roles()
                .iter()
                .map(|r| self.objectives[r.role].as_ref())
                .collect(),
            cfg,
            pipeline,
            init: sft,
            reference: sft,
            sampler: self.sampler.as_ref(),
            reward: rm.as_ref(),
            gold: Some(&self.gold),
            problems: &self.problems,
            seed,
            train_device: cx.device().clone().autodiff(),
        };
        let out = crate::rl::train(&run)?;
        for mut rec in out.records.clone() {
            rec["stage"] = "rl".into();
            cx.log(rec)?;
        }
        let eval =
            self.judge()
                .evaluate(&out.policy, sft, seed.wrapping_add(1).wrapping_mul(7919))?;
        cx.save_policy("policy", &out.policy)?;
        let stats = RunStats::of(&out, rounds, eval);
        tracing::info!(
            unit = cx.name(),
            wall = stats.wall_seconds,
            win = stats.eval.win_rate,
            "run done"
        );
        Ok(stats)
    }
}

/// The statistics of one RL run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    pub updates: u64,
    pub wall_seconds: f64,
    /// Mean seconds per round generating (`G`) and learning (`T`, the round's `N` steps).
    pub generate_per_round: f64,
    pub learn_per_round: f64,
    pub learner_wait_seconds: f64,
    pub generator_wait_seconds: f64,
    pub max_staleness: u64,
    /// `core → rounds` of the generator and `core → steps` of the learner.
    #[serde(deserialize_with = "usize_keys")]
    pub generator_cores: BTreeMap<usize, usize>,
    #[serde(deserialize_with = "usize_keys")]
    pub learner_cores: BTreeMap<usize, usize>,
    pub eval: Eval,
    /// Mean gold reward of the training samples in the first and last 10% of updates.
    pub train_gold_start: f64,
    pub train_gold_end: f64,
}

/// A map with integer keys, read from JSON's string keys (also through `#[serde(flatten)]`,
/// which hands maps over with their keys as strings).
fn usize_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<usize, usize>, D::Error> {
    use serde::de::Error as _;
    BTreeMap::<String, usize>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| k.parse().map(|k| (k, v)).map_err(D::Error::custom))
        .collect()
}

impl RunStats {
    /// The statistics of `out`, whose final policy was judged `eval`.
    pub fn of(out: &RlOutcome, rounds: u64, eval: Eval) -> Self {
        let r = &out.report;
        let rounds = rounds.max(1) as f64;
        let (gc, lc) = r.cores();
        let tenth = (out.gold.len() / 10).max(1);
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
        Self {
            updates: r.consumed.len() as u64,
            wall_seconds: r.wall_seconds,
            generate_per_round: r.generate_seconds() / rounds,
            learn_per_round: r.learn_seconds() / rounds,
            learner_wait_seconds: r.learner_wait_seconds,
            generator_wait_seconds: r.generator_wait_seconds,
            max_staleness: r.max_staleness(),
            generator_cores: gc,
            learner_cores: lc,
            eval,
            train_gold_start: mean(&out.gold[..tenth.min(out.gold.len())]),
            train_gold_end: mean(&out.gold[out.gold.len().saturating_sub(tenth)..]),
        }
    }

    /// The speed-up of `self` (async) over `sync` and the bound perfect overlap gives,
    /// `(G + T) / max(G, T)` from the sync run's `G` and `T`.
    pub fn speedup_over(&self, sync: &RunStats) -> (f64, f64) {
        let (g, t) = (sync.generate_per_round, sync.learn_per_round);
        (
            sync.wall_seconds / self.wall_seconds.max(1e-9),
            (g + t) / g.max(t).max(1e-12),
        )
    }
}

/// The base's table: SFT loss, the reward model's held-out checks, the baselines.
pub fn base_table(bases: &[&Base], best_of: usize) -> String {
    let (pct, num) = (Fmt::Percent(1), Fmt::Fixed(3));
    let col = |f: &dyn Fn(&Base) -> f64| bases.iter().map(|b| f(b)).collect::<Vec<f64>>();
    let mut t = Table::new(["", "mean ± sd over seeds"]);
    let sft_loss = format!(
        "{} → {}",
        num.cell(&col(&|b| b.sft_loss_start)),
        num.cell(&col(&|b| b.sft_loss_end))
    );
    t.row(["SFT loss (first → last 20 steps)".into(), sft_loss]);
    t.row([
        "reward model: held-out preference accuracy (%)".into(),
        pct.cell(&col(&|b| b.rm_heldout_accuracy)),
    ]);
    t.row([
        "reward model: agreement with the gold reward, held-out pairs (%)".into(),
        pct.cell(&col(&|b| b.rm_gold_agreement)),
    ]);
    t.row([
        "reference responses: gold reward".into(),
        num.cell(&col(&|b| b.reference_gold)),
    ]);
    t.row([
        "SFT: gold win rate vs references (%)".into(),
        pct.cell(&col(&|b| b.sft.win_rate)),
    ]);
    t.row(["SFT: gold reward".into(), num.cell(&col(&|b| b.sft.gold))]);
    let bo: Vec<&Eval> = bases.iter().filter_map(|b| b.best_of.as_ref()).collect();
    if let Some(first) = bo.first() {
        let wins: Vec<f64> = bo.iter().map(|e| e.win_rate).collect();
        t.row([
            format!("Best-of-{best_of} SFT (by the reward model): gold win rate (%)"),
            pct.cell(&wins),
        ]);
        t.row([
            format!("Best-of-{best_of}: KL (analytic log n − (n−1)/n)"),
            num.num(first.kl),
        ]);
    }
    t.markdown()
}

/// The runs of one `(method, N, mode)`, one per seed.
pub struct RunGroup<'a> {
    /// The method's registered name and its name in tables.
    pub method: String,
    pub label: String,
    pub n: usize,
    pub mode: LoopMode,
    /// `(seed, stats)`.
    pub runs: Vec<(u64, &'a RunStats)>,
}

impl RunGroup<'_> {
    /// Each seed's value of `f`.
    pub fn values(&self, f: impl Fn(&RunStats) -> f64) -> Vec<f64> {
        self.runs.iter().map(|(_, r)| f(r)).collect()
    }
}

/// Runs `(seed, method, label, N, mode, stats)` grouped by `(method, N, mode)`, in that order.
pub fn group_runs<'a>(
    runs: impl IntoIterator<Item = (u64, String, String, usize, LoopMode, &'a RunStats)>,
) -> Vec<RunGroup<'a>> {
    let mut groups: BTreeMap<(String, usize, LoopMode), RunGroup<'a>> = BTreeMap::new();
    for (seed, method, label, n, mode, stats) in runs {
        let g = groups
            .entry((method.clone(), n, mode))
            .or_insert_with(|| RunGroup {
                method,
                label,
                n,
                mode,
                runs: Vec::new(),
            });
        g.runs.push((seed, stats));
    }
    groups.into_values().collect()
}

/// One row per group of runs: wall-clock, throughput, `G` and `T`, staleness, and the gold
/// evaluation (mean ± sd over the group's seeds).
pub fn runs_table(groups: &[RunGroup<'_>]) -> String {
    let (pct, num) = (Fmt::Percent(1), Fmt::Fixed(3));
    let mut t = Table::new([
        "method",
        "N",
        "mode",
        "seeds",
        "wall-clock (s)",
        "updates/s",
        "G per round (s)",
        "T per round (s)",
        "max staleness",
        "gold win rate (%)",
        "KL to SFT",
        "gold reward",
        "exact (%)",
    ]);
    for g in groups {
        let staleness = g.runs.iter().map(|r| r.1.max_staleness).max().unwrap_or(0);
        t.row([
            g.label.clone(),
            g.n.to_string(),
            g.mode.to_string(),
            g.runs.len().to_string(),
            num.cell(&g.values(|r| r.wall_seconds)),
            num.cell(&g.values(|r| r.updates as f64 / r.wall_seconds.max(1e-9))),
            num.cell(&g.values(|r| r.generate_per_round)),
            num.cell(&g.values(|r| r.learn_per_round)),
            staleness.to_string(),
            pct.cell(&g.values(|r| r.eval.win_rate)),
            num.cell(&g.values(|r| r.eval.kl)),
            num.cell(&g.values(|r| r.eval.gold)),
            pct.cell(&g.values(|r| r.eval.exact)),
        ]);
    }
    t.markdown()
}

/// A method at one `N` run both sync and async, paired by seed.
pub struct SpeedUp<'g> {
    pub group: &'g RunGroup<'g>,
    /// Per seed: the measured speed-up and the bound `(G + T) / max(G, T)` of the sync run.
    pub speedups: Vec<f64>,
    pub bounds: Vec<f64>,
    /// Per seed: the gold win rates of the sync and the async run.
    pub sync_wins: Vec<f64>,
    pub async_wins: Vec<f64>,
}

impl SpeedUp<'_> {
    /// The mean speed-up as a fraction of the mean bound.
    pub fn of_bound(&self) -> f64 {
        mean_std(&self.speedups).0 / mean_std(&self.bounds).0
    }
}

/// Every method and `N` that ran in both modes, with the speed-up table.
pub fn speedups<'g>(groups: &'g [RunGroup<'g>]) -> (Vec<SpeedUp<'g>>, String) {
    let mut out = Vec::new();
    let mut t = Table::new([
        "method",
        "N",
        "measured speed-up",
        "theoretical bound",
        "measured / bound",
    ]);
    for g in groups.iter().filter(|g| g.mode == LoopMode::Sync) {
        let Some(a) = groups
            .iter()
            .find(|x| x.method == g.method && x.n == g.n && x.mode == LoopMode::Async)
        else {
            continue;
        };
        let mut su = SpeedUp {
            group: g,
            speedups: vec![],
            bounds: vec![],
            sync_wins: vec![],
            async_wins: vec![],
        };
        for (seed, ar) in &a.runs {
            if let Some((_, sr)) = g.runs.iter().find(|(s, _)| s == seed) {
                let (sp, bd) = ar.speedup_over(sr);
                su.speedups.push(sp);
                su.bounds.push(bd);
                su.sync_wins.push(sr.eval.win_rate);
                su.async_wins.push(ar.eval.win_rate);
            }
        }
        let bound = mean_std(&su.bounds).0;
        t.row([
            g.label.clone(),
            g.n.to_string(),
            format!("{}×", Fmt::Fixed(2).cell(&su.speedups)),
            format!("{bound:.2}×"),
            format!("{:.0}%", 100.0 * su.of_bound()),
        ]);
        out.push(su);
    }
    (
        out,
        if t.is_empty() {
            String::new()
        } else {
            t.markdown()
        },
    )
}

/// A method's sync runs as `N` grows.
pub struct Sweep {
    pub method: String,
    pub label: String,
    /// Per `N`: the gold win rates and the mean KL to the reference.
    pub wins: Vec<Vec<f64>>,
    pub kl: Vec<f64>,
    /// The mean change of the win rate from the first to the last `N`, and whether the paired
    /// change is within seed noise.
    pub change: f64,
    pub within_noise: bool,
}

/// The sync runs of every method across `ns` (at least two): the table (win rate / KL per
/// `N`, the paired change) and the win-rate-vs-KL plot at `plot`.
pub fn sweep(
    groups: &[RunGroup<'_>],
    ns: &[usize],
    plot: &std::path::Path,
) -> anyhow::Result<(Vec<Sweep>, String)> {
    let pct = Fmt::Percent(1);
    let (n0, n1) = (ns[0], ns[ns.len() - 1]);
    let cols = std::iter::once("method".to_string())
        .chain(ns.iter().map(|n| format!("N = {n}: win rate (%) / KL")))
        .chain([format!("change N={n0} → N={n1}")]);
    let mut t = Table::new(cols);
    let mut out: Vec<Sweep> = Vec::new();
    for g in groups.iter().filter(|g| g.mode == LoopMode::Sync) {
        if out.iter().any(|s| s.method == g.method) {
            continue;
        }
        let at = |n: usize| {
            groups
                .iter()
                .find(|x| x.method == g.method && x.n == n && x.mode == LoopMode::Sync)
        };
        let wins: Vec<Vec<f64>> = ns
            .iter()
            .map(|&n| at(n).map_or(vec![], |x| x.values(|r| r.eval.win_rate)))
            .collect();
        let kl: Vec<f64> = ns
            .iter()
            .map(|&n| mean_std(&at(n).map_or(vec![], |x| x.values(|r| r.eval.kl))).0)
            .collect();
        let paired = crate::report::Claim::paired("", &wins[ns.len() - 1], &wins[0], pct);
        let cells = wins
            .iter()
            .zip(&kl)
            .map(|(w, k)| format!("{} / {k:.3}", pct.cell(w)));
        t.row(
            std::iter::once(g.label.clone())
                .chain(cells)
                .chain([paired.difference.clone()]),
        );
        let change = mean_std(&wins[ns.len() - 1]).0 - mean_std(&wins[0]).0;
        out.push(Sweep {
            method: g.method.clone(),
            label: g.label.clone(),
            wins,
            kl,
            change,
            within_noise: paired.within_noise,
        });
    }
    let pts: Vec<Vec<(f64, f64)>> = out
        .iter()
        .map(|s| {
            s.kl.iter()
                .zip(&s.wins)
                .map(|(k, w)| (*k, mean_std(w).0))
                .collect()
        })
        .collect();
    let series: Vec<crate::plot::Series> = out
        .iter()
        .zip(pts)
        .map(|(s, points)| crate::plot::Series {
            name: &s.label,
            points,
        })
        .collect();
    crate::plot::line_plot(
        plot,
        "gold win rate vs KL to the reference (points: N = 1, 2, 4, ...)",
        "KL(π ‖ π_ref)",
        "gold win rate",
        &series,
    )?;
    Ok((out, t.markdown()))
}

/// Where the async runs' generator and learner ran (`core → rounds`, `core → steps`), summed;
/// empty without async runs.
pub fn cores_line(groups: &[RunGroup<'_>], pinned: bool) -> String {
    let async_runs = groups.iter().filter(|g| g.mode == LoopMode::Async);
    let runs: Vec<&RunStats> = async_runs
        .flat_map(|g| g.runs.iter().map(|r| r.1))
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    let (mut g, mut l) = (
        BTreeMap::<usize, usize>::new(),
        BTreeMap::<usize, usize>::new(),
    );
    for r in runs {
        r.generator_cores
            .iter()
            .for_each(|(c, k)| *g.entry(*c).or_default() += k);
        r.learner_cores
            .iter()
            .for_each(|(c, k)| *l.entry(*c).or_default() += k);
    }
    let pinned = if pinned {
        "each side pinned to its own cores"
    } else {
        "not pinned"
    };
    format!(
        "Async runs: generation rounds started on cores {g:?} (core → rounds), learner steps on cores {l:?} (core → steps), {pinned}.\n\n"
    )
}

/// How off-policy one method's minibatches were at one staleness, pooled over its runs of
/// one mode (every `N`), from the learner's per-update records (`stage = "rl"`:
/// `staleness`, `behaviour_kl`, `behaviour_kl_k3`).
#[derive(Clone, Debug, PartialEq)]
pub struct StalenessKl {
    /// `method mode`.
    pub run: String,
    pub staleness: u64,
    pub minibatches: usize,
    /// Mean and standard error over minibatches of KL(π_gen ‖ π_learn), nats per sequence (k1).
    pub kl: (f64, f64),
    /// Mean k3 per token.
    pub k3: f64,
}

impl StalenessKl {
    /// Whether the KL is above zero beyond two standard errors.
    pub fn measurable(&self) -> bool {
        self.minibatches >= 2 && self.kl.0 - 2.0 * self.kl.1 > 0.0
    }
}

/// Groups the records by method, mode and staleness (see [`StalenessKl`]), in that order.
pub fn staleness_kl(records: &[serde_json::Value]) -> Vec<StalenessKl> {
    let mut groups: BTreeMap<(String, u64), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in records.iter().filter(|r| r["stage"] == "rl") {
        let (Some(st), Some(kl)) = (r["staleness"].as_u64(), r["behaviour_kl"].as_f64()) else {
            continue;
        };
        let run = format!(
            "{} {}",
            r["method"].as_str().unwrap_or("?"),
            r["mode"].as_str().unwrap_or("?")
        );
        let g = groups.entry((run, st)).or_default();
        g.0.push(kl);
        g.1.push(r["behaviour_kl_k3"].as_f64().unwrap_or(f64::NAN));
    }
    groups
        .into_iter()
        .map(|((run, staleness), (kl, k3))| {
            let (m, sd) = mean_std(&kl);
            StalenessKl {
                run,
                staleness,
                minibatches: kl.len(),
                kl: (m, sd / (kl.len() as f64).sqrt()),
                k3: mean_std(&k3).0,
            }
        })
        .collect()
}

/// Each run's stalest row.
pub fn stalest(rows: &[StalenessKl]) -> Vec<&StalenessKl> {
    let mut out: Vec<&StalenessKl> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|x| x.run == r.run) {
            Some(x) if x.staleness < r.staleness => *x = r,
            Some(_) => {}
            None => out.push(r),
        }
    }
    out
}

/// The staleness × measured-KL table: staleness 0 and `2^k − 1` (the stalest minibatch of a
/// round of `N = 2^k`) for each method and mode.
pub fn staleness_kl_table(rows: &[StalenessKl]) -> String {
    let mut t = Table::new([
        "run",
        "staleness",
        "minibatches",
        "KL(π_gen ‖ π_learn) per sequence (± s.e.)",
        "k3 per token",
        "off-policy beyond 2 s.e.",
    ]);
    for r in rows.iter().filter(|r| (r.staleness + 1).is_power_of_two()) {
        t.row([
            r.run.clone(),
            r.staleness.to_string(),
            r.minibatches.to_string(),
            format!("{:.2e} ± {:.1e}", r.kl.0, r.kl.1),
            format!("{:.2e}", r.k3),
            if r.measurable() { "yes" } else { "no" }.to_string(),
        ]);
    }
    t.markdown()
}

/// Each run kind's per-update values of `metric` (records with `stage = "rl"`), by update, one
/// value per seed; runs are told apart (and named) by their `method`, `mode` and `n`, in that
/// order, N numerically.
fn update_curves(
    records: &[serde_json::Value],
    metric: &str,
) -> Vec<(String, BTreeMap<u64, Vec<f64>>)> {
    type Key = (String, String, u64);
    let mut curves: BTreeMap<Key, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["stage"] == "rl") {
        let key = (
            r["method"].as_str().unwrap_or("?").to_string(),
            r["mode"].as_str().unwrap_or("?").to_string(),
            r["n"].as_u64().unwrap_or(0),
        );
        if let (Some(step), Some(v)) = (r["step"].as_u64(), r[metric].as_f64()) {
            curves
                .entry(key)
                .or_default()
                .entry(step)
                .or_default()
                .push(v);
        }
    }
    curves
        .into_iter()
        .map(|((method, mode, n), c)| (format!("{method} {mode} N={n}"), c))
        .collect()
}

/// Plots each run kind's per-update records of `metric` against the update, averaged over
/// seeds (see [`update_curves`]).
pub fn plot_updates(
    records: &[serde_json::Value],
    metric: &str,
    path: &std::path::Path,
    title: &str,
) -> anyhow::Result<()> {
    let pts: Vec<(String, Vec<(f64, f64)>)> = update_curves(records, metric)
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                c.iter().map(|(k, v)| (*k as f64, mean_std(v).0)).collect(),
            )
        })
        .collect();
    let series: Vec<crate::plot::Series> = pts
        .iter()
        .map(|(n, p)| crate::plot::Series {
            name: n,
            points: p.clone(),
        })
        .collect();
    crate::plot::line_plot(path, title, "update", metric, &series)
}

/// The learning curves as a table: for each run kind and each `(metric, label)`, the mean of
/// the metric over each of `parts` equal spans of the updates (pooled over seeds), in order.
pub fn updates_table(
    records: &[serde_json::Value],
    metrics: &[(&str, &str)],
    parts: usize,
) -> String {
    let curves: Vec<_> = metrics
        .iter()
        .map(|(m, _)| update_curves(records, m))
        .collect();
    let mut header = vec!["run".to_string(), "updates".to_string()];
    header.extend(metrics.iter().map(|(_, label)| label.to_string()));
    let mut t = Table::new(header);
    let Some(first) = curves.first() else {
        return t.markdown();
    };
    for (run, by_step) in first {
        let steps: Vec<u64> = by_step.keys().copied().collect();
        let (Some(&lo), Some(&hi)) = (steps.first(), steps.last()) else {
            continue;
        };
        let parts = parts.clamp(1, steps.len());
        let cells: Vec<String> = curves
            .iter()
            .map(|c| {
                let Some((_, c)) = c.iter().find(|(r, _)| r == run) else {
                    return "–".to_string();
                };
                (0..parts)
                    .map(|p| {
                        let span = &steps[p * steps.len() / parts..(p + 1) * steps.len() / parts];
                        let v: Vec<f64> = span
                            .iter()
                            .filter_map(|s| c.get(s))
                            .flatten()
                            .copied()
                            .collect();
                        format!("{:.3}", mean_std(&v).0)
                    })
                    .collect::<Vec<_>>()
                    .join(" → ")
            })
            .collect();
        let mut row = vec![run.clone(), format!("{lo}–{hi}")];
        row.extend(cells);
        t.row(row);
    }
    t.markdown()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_kl_groups_records_by_run_and_staleness() {
        let rec = |n: u64, st: u64, kl: f64| {
            serde_json::json!({"stage": "rl", "method": "ppo", "mode": "sync", "n": n,
                               "staleness": st, "behaviour_kl": kl, "behaviour_kl_k3": kl / 10.0})
        };
        let records = vec![
            rec(1, 0, 0.0),
            rec(4, 0, 0.0),
            rec(4, 3, 0.2),
            rec(4, 3, 0.3),
            rec(8, 3, 0.25),
            rec(8, 2, 0.1),
            serde_json::json!({"stage": "sft", "staleness": 3, "behaviour_kl": 9.0}),
        ];
        let rows = staleness_kl(&records);
        // Pooled over N: staleness 0 (2 minibatches), 2 (1), 3 (3).
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].run.as_str(), rows[0].staleness, rows[0].minibatches),
            ("ppo sync", 0, 2)
        );
        assert!(!rows[0].measurable());
        let r = &rows[2];
        assert_eq!((r.staleness, r.minibatches), (3, 3));
        assert!((r.kl.0 - 0.25).abs() < 1e-12 && (r.k3 - 0.025).abs() < 1e-12);
        // sd 0.05 over 3 minibatches: s.e. 0.05 / √3.
        assert!((r.kl.1 - 0.05 / 3f64.sqrt()).abs() < 1e-9, "{:?}", r.kl);
        assert!(r.measurable());
        assert_eq!(stalest(&rows), vec![r]);
        // Staleness 2 is not a round's stalest minibatch: not a row of the table.
        let table = staleness_kl_table(&rows);
        assert_eq!(table.matches("| ppo sync |").count(), 2, "{table}");
    }

    #[test]
    fn updates_table_averages_each_span_of_updates_over_seeds() {
        let rec = |seed: u64, step: u64| {
            serde_json::json!({"stage": "rl", "method": "rloo", "mode": "sync", "n": 4,
                               "seed": seed, "step": step, "train_gold": step as f64 + seed as f64,
                               "train_kl": 0.5})
        };
        let mut records: Vec<_> = (0..2)
            .flat_map(|s| (1..=6).map(move |t| rec(s, t)))
            .collect();
        records.push(serde_json::json!({"stage": "sft", "step": 1, "train_gold": 99.0}));
        let t = updates_table(&records, &[("train_gold", "gold"), ("train_kl", "KL")], 3);
        // Spans {1, 2}, {3, 4}, {5, 6}; seeds add 0 and 1: means 2.0, 4.0, 6.0.
        assert!(
            t.contains("| rloo sync N=4 | 1–6 | 2.000 → 4.000 → 6.000 | 0.500 → 0.500 → 0.500 |"),
            "{t}"
        );
        assert_eq!(t.matches("rloo").count(), 1, "{t}");
        // Runs in method, mode, then numeric N order (N=4 before N=16).
        records.push(
            serde_json::json!({"stage": "rl", "method": "rloo", "mode": "sync", "n": 16,
                                        "seed": 0, "step": 1, "train_gold": 1.0}),
        );
        let t = updates_table(&records, &[("train_gold", "gold")], 3);
        let (four, sixteen) = (t.find("N=4 ").unwrap(), t.find("N=16 ").unwrap());
        assert!(four < sixteen, "{t}");
    }
}
