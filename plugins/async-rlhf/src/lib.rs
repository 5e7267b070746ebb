//! # Asynchronous off-policy RLHF (Noukhovitch et al., 2024)
//!
//! "Asynchronous RLHF: Faster and More Efficient Off-Policy RL for Language Models"
//! (arXiv:2410.18252) separates generation from learning: a generator samples with a slightly
//! old policy while the learner trains, and online DPO turns out the most robust of the RLHF
//! losses to such off-policy data.
//!
//! Scheduler `async-rlhf` runs the whole pipeline on task `toy-tldr`, per seed:
//!
//! 1. SFT of the recipe's `[policy]` on the human-like reference summaries;
//! 2. the recipe's `[reward_model]` fitted from the SFT model (`bradley-terry`: a scalar head
//!    read at EOS, normalised so its mean on reference summaries is 0);
//! 3. for every listed RL method (registered by name in [`lmlab_sdk::rl::methods`]: `online-dpo`,
//!    `ppo`, `rloo`), number of minibatches per round `N` and loop mode (`sync`, `async`): RL
//!    from the SFT policy against the reward model through [`lmlab_sdk::rl::train`], with the
//!    same number of updates in every run;
//! 4. evaluation by the gold reward on held-out documents: win rate against the reference
//!    summaries and KL to the SFT policy; SFT and Best-of-n (SFT samples ranked by the reward
//!    model) are the baselines.
//!
//! The summary reports wall-clock, updates/s, the measured generation and training time per
//! round (`G`, `T`), the async speed-up against the theoretical `(G + T) / max(G, T)`, and the
//! win rate vs KL of each method as `N` grows, with each claim tested and its verdict.

use std::sync::Arc;

use lmlab_sdk::experiment::{Experiment, Seed, Unit, UnitCx, seeds};
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::pipeline::{LoopMode, available_cores};
use lmlab_sdk::report::{Claim, Fmt, claims_table, footer};
use lmlab_sdk::reward::Preference;
use lmlab_sdk::rl::methods::{self, RlMethod};
use lmlab_sdk::rl::rlhf::{
    Base, Models, Rlhf, RunStats, base_table, cores_line, group_runs, plot_updates, runs_table,
    speedups, staleness_kl, staleness_kl_table, stalest, sweep, updates_table,
};
use lmlab_sdk::rl::{RlConfig, pipeline_config};
use lmlab_sdk::train::{LrSchedule, OptimConfig, Stage};
use lmlab_sdk::{Components, Role, RunContext, Scheduler, Sequence, Split};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use lmlab_sdk::tasks::toy_tldr::{self, Document, ToyTldrTask};

const WHO: &str = "scheduler `async-rlhf`";

/// Configuration of `async-rlhf` (the sampling is the `[sampler]`'s and the `[eval_sampler]`'s,
/// the model the `[policy]`'s, the reward model the `[reward_model]`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncRlhfConfig {
    /// Seeds (offsets to the run's seed): each trains its own SFT model, reward model and RL runs.
    pub seeds: Vec<u64>,
    /// RL methods by their registered names (`cargo xtask plugins` lists them).
    pub methods: Vec<String>,
    pub modes: Vec<LoopMode>,
    /// `N` values: minibatches (updates) per generation round.
    pub minibatches: Vec<usize>,
    /// Largest staleness in async mode; default `2N − 1` (one round behind, as in the paper).
    pub max_staleness: Option<u64>,
    /// Threads of the generator and of the learner in async mode (sync uses their sum for
    /// both phases).
    pub generator_threads: usize,
    pub learner_threads: usize,
    /// Pin the generator and the learner to their own cores (Linux, when there are enough).
    pub pin_cores: bool,
    pub sft: Stage,
    pub rl: RlConfig,
    /// Held-out documents evaluated per run.
    pub eval_prompts: usize,
    /// Best-of-n baseline from the SFT policy ranked by the reward model (0: none).
    pub best_of: usize,
}

impl Default for AsyncRlhfConfig {
    fn default() -> Self {
        let sft = OptimConfig {
            lr: 2e-3,
            weight_decay: 0.01,
            warmup_steps: 30,
            ..OptimConfig::default()
        };
        let optim = OptimConfig {
            schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.1,
            ..sft
        };
        Self {
            seeds: vec![0, 1, 2],
            methods: vec!["online-dpo".into()],
            modes: vec![LoopMode::Sync, LoopMode::Async],
            minibatches: vec![1],
            max_staleness: None,
            generator_threads: 1,
            learner_threads: 1,
            pin_cores: true,
            sft: Stage::new(1500, 32, optim),
            rl: RlConfig::default(),
            eval_prompts: 256,
            best_of: 2,
        }
    }
}

impl AsyncRlhfConfig {
    fn staleness(&self, n: usize) -> u64 {
        self.max_staleness.unwrap_or(2 * n as u64 - 1)
    }
}

/// What one seed's SFT and reward model reached, and the baselines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedBase {
    pub seed: u64,
    #[serde(flatten)]
    pub base: Base,
}

/// One RL run: the experiment's unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub seed: u64,
    pub method: String,
    pub mode: LoopMode,
    pub n: usize,
}

impl Unit for RunKey {
    fn name(&self) -> String {
        format!("{} {} N={}", self.method, self.mode, self.n)
    }
}

/// One RL run's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub seed: u64,
    pub method: Option<String>,
    pub mode: Option<LoopMode>,
    pub n: usize,
    #[serde(flatten)]
    pub stats: RunStats,
}

/// The scheduler.
pub struct AsyncRlhf {
    pub config: AsyncRlhfConfig,
    methods: Vec<Box<dyn RlMethod>>,
}

/// The data of `toy-tldr` as token ids: preference pairs with the gold rewards of both sides.
fn preferences(r: &Rlhf, task: &ToyTldrTask, docs: &[Document]) -> Vec<(Preference, f32, f32)> {
    let pair = |x: &toy_tldr::Preference| {
        let (doc, prompt) = (
            &docs[x.document],
            r.tokenizer.encode(&docs[x.document].prompt(), true),
        );
        let p = Preference {
            prompt,
            chosen: r.response(&x.chosen),
            rejected: r.response(&x.rejected),
        };
        (
            p,
            task.gold(doc, &x.chosen, true),
            task.gold(doc, &x.rejected, true),
        )
    };
    task.preferences(docs).iter().map(pair).collect()
}

impl Scheduler for AsyncRlhf {
    fn roles(&self) -> Vec<Role> {
        let task =
            Role::of::<Box<ToyTldrTask>>("task", lmlab_sdk::Kind::Task, "the `toy-tldr` task");
        std::iter::once(task)
            .chain(Rlhf::roles(&self.methods))
            .collect()
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Arc<ToyTldrTask> = Arc::from(c.take::<Box<ToyTldrTask>>("task", WHO)?);
        let (train, test) = (task.documents(Split::Train), task.documents(Split::Test));
        let mut texts = || {
            train
                .iter()
                .flat_map(|d| [d.prompt(), d.reference.clone(), d.ideal()])
                .collect()
        };
        let mut r = Rlhf::take(c, WHO, &self.methods, task.clone(), &mut texts)?;
        r.problems = train.iter().map(Document::problem).collect();
        r.eval_problems = test
            .iter()
            .take(cfg.eval_prompts)
            .map(Document::problem)
            .collect();
        r.sft = train
            .iter()
            .map(|d| {
                Sequence::new(
                    r.tokenizer.encode(&d.prompt(), true),
                    r.response(&d.reference),
                )
            })
            .collect();
        r.preferences = preferences(&r, &task, &train)
            .into_iter()
            .map(|x| x.0)
            .collect();
        r.heldout = preferences(&r, &task, &test);
        let mut groups: Vec<(Seed, Vec<RunKey>)> = Vec::new();
        for s in seeds(ctx.seed, &cfg.seeds) {
            let mut runs = Vec::new();
            for m in &cfg.methods {
                for (&n, &mode) in cfg
                    .minibatches
                    .iter()
                    .flat_map(|n| cfg.modes.iter().map(move |mode| (n, mode)))
                {
                    runs.push(RunKey {
                        seed: s.seed,
                        method: m.clone(),
                        mode,
                        n,
                    });
                }
            }
            groups.push((s, runs));
        }
        let setup = |s: &Seed, cx: &UnitCx| {
            let (models, base) = r.base(s.seed, cx, &cfg.sft, cfg.best_of, cfg.rl.eos_penalty)?;
            Ok((models, SeedBase { seed: s.seed, base }))
        };
        let threads = (cfg.generator_threads, cfg.learner_threads);
        let run = |_: &Seed, models: &Models, k: &RunKey, cx: &UnitCx| {
            let method = self
                .methods
                .iter()
                .find(|x| x.name() == k.method)
                .ok_or_else(|| anyhow::anyhow!("{WHO}: no method `{}`", k.method))?;
            let pipeline = pipeline_config(
                k.mode,
                cfg.rl.updates,
                k.n,
                cfg.staleness(k.n),
                threads,
                cfg.pin_cores,
            );
            let stats = r.run(models, method.as_ref(), &cfg.rl, pipeline, k.seed, cx)?;
            Ok(RunResult {
                seed: k.seed,
                method: Some(k.method.clone()),
                mode: Some(k.mode),
                n: k.n,
                stats,
            })
        };
        let (bases, out) = Experiment::new("run").grouped(ctx, "seed", &groups, setup, run)?;
        let bases: Vec<&SeedBase> = bases.iter().map(|b| &b.1).collect();
        let results: Vec<RunResult> = out.results.into_iter().map(|r| r.1).collect();
        let policy = r.init.summary(&r.tokenizer)?;
        self.report(ctx, &r, &bases, &results, (policy, out.computed))
    }
}

impl AsyncRlhf {
    fn label(&self, name: &str) -> String {
        let m = self.methods.iter().find(|m| m.name() == name);
        m.map_or(name.to_string(), |m| m.label().to_string())
    }

    fn report(
        &self,
        ctx: &mut RunContext,
        p: &Rlhf,
        bases: &[&SeedBase],
        results: &[RunResult],
        (policy, computed): (String, usize),
    ) -> anyhow::Result<()> {
        let (cfg, pct) = (&self.config, Fmt::Percent(1));
        let seeds: std::collections::BTreeSet<u64> = results.iter().map(|r| r.seed).collect();
        let setup = format!(
            "Policy: {policy}, SFT on corrupted reference summaries; reward model: {}; evaluated by the gold reward on {} held-out documents. Seeds: {seeds:?}.",
            p.reward.label(),
            cfg.eval_prompts
        );
        let runs = format!(
            "Every RL run takes {} updates of {} prompts × {} samples; async runs keep staleness ≤ `max_staleness` (default 2N − 1: generation one round behind).",
            cfg.rl.updates,
            cfg.rl.prompts_per_minibatch,
            p.sampler.n().unwrap_or(1)
        );
        let (g, l) = (cfg.generator_threads, cfg.learner_threads);
        let threads = format!(
            "Sync runs use {} thread(s) for each phase; async runs give the generator {g} and the learner {l}.",
            g + l
        );
        let mut s = format!(
            "# Asynchronous off-policy RLHF on toy-tldr\n\nNoukhovitch et al. (2024), *Asynchronous RLHF: Faster and More Efficient Off-Policy RL for Language Models*. {setup} {runs} {threads}\n\n"
        );
        s += &format!(
            "## SFT, reward model and baselines\n\n{}\n",
            base_table(
                &bases.iter().map(|b| &b.base).collect::<Vec<_>>(),
                cfg.best_of
            )
        );
        let rows = results.iter().filter_map(|r| {
            Some((
                r.seed,
                r.method.clone()?,
                self.label(r.method.as_deref()?),
                r.n,
                r.mode?,
                &r.stats,
            ))
        });
        let groups = group_runs(rows);
        s += &format!("## RL runs\n\n{}\n", runs_table(&groups));
        s += &cores_line(&groups, cfg.pin_cores && g + l <= available_cores());

        let mut claims = Vec::new();
        // RL against its starting point: each method at the smallest N of the sync runs (on
        // policy at N = 1) against the same seed's SFT policy.
        if let Some(n_min) = groups
            .iter()
            .filter(|g| g.mode == LoopMode::Sync)
            .map(|g| g.n)
            .min()
        {
            for g in groups
                .iter()
                .filter(|g| g.mode == LoopMode::Sync && g.n == n_min)
            {
                let (wins, sft): (Vec<f64>, Vec<f64>) = g
                    .runs
                    .iter()
                    .filter_map(|(seed, r)| {
                        let b = bases.iter().find(|b| b.seed == *seed)?;
                        Some((r.eval.win_rate, b.base.sft.win_rate))
                    })
                    .unzip();
                if !wins.is_empty() {
                    let on = if n_min == 1 { "on-policy " } else { "" };
                    claims.push(Claim::paired_by(
                        format!(
                            "{on}{} (N = {n_min}) beats the SFT policy's gold win rate beyond seed noise",
                            g.label
                        ),
                        &wins,
                        &sft,
                        pct,
                        f64::EPSILON,
                    ));
                }
            }
        }
        let (speedups, table) = speedups(&groups);
        for su in &speedups {
            let (sp, what) = (
                mean_std(&su.speedups).0,
                format!("({}, N = {})", su.group.label, su.group.n),
            );
            claims.push(Claim::check(format!("asynchronous RLHF is faster in wall-clock than synchronous at the same number of updates {what}"), format!("{sp:.2}× speed-up"), sp > 1.0));
            claims.push(Claim::matches(
                format!("async matches sync's final gold win rate {what}"),
                &su.async_wins,
                &su.sync_wins,
                pct,
            ));
            let goal = format!(
                "our goal: the speed-up reaches ≥ 90% of the theoretical (G + T) / max(G, T) {what}"
            );
            claims.push(Claim::check(
                goal,
                format!("{:.0}% of the bound", 100.0 * su.of_bound()),
                su.of_bound() >= 0.9,
            ));
        }
        if !table.is_empty() {
            s += &format!(
                "## Speed-up of async over sync\n\nG and T are each seed's sync run's mean generation and training seconds per round; the bound (G + T) / max(G, T) is what perfect overlap would give. In the async run each phase has its own core(s), so when a phase runs faster there (the RL runs table lists the async run's own G and T) the measured speed-up can reach or pass the bound.\n\n{table}\n"
            );
        }

        let records =
            lmlab_sdk::run::read_metrics(&ctx.run.path().join(lmlab_sdk::run::METRICS_FILE))?;
        let off_policy = staleness_kl(&records);
        if !off_policy.is_empty() {
            s += &format!(
                "## How off-policy the consumed minibatches were

For every minibatch the learner consumed, the KL from the policy that generated it to the learner as it was then (estimated on the minibatch's own samples: k1 per sequence, with its standard error over minibatches, and k3 per token), pooled over each method's runs by staleness; shown for staleness 0 and for each round's stalest minibatch (2^k − 1 for N = 2^k).

{}
",
                staleness_kl_table(&off_policy)
            );
        }

        // Robustness to off-policy data: the sync runs as N grows.
        let mut ns: Vec<usize> = groups
            .iter()
            .filter(|g| g.mode == LoopMode::Sync)
            .map(|g| g.n)
            .collect();
        ns.sort_unstable();
        ns.dedup();
        if ns.len() >= 2 {
            let (sweeps, table) = sweep(
                &groups,
                &ns,
                &ctx.run.plots_dir().join("win_rate_vs_kl.svg"),
            )?;
            s += &format!(
                "## Robustness to off-policy data (sync, N minibatches per round)\n\n{table}\nPlot: `plots/win_rate_vs_kl.svg` (one line per method, one point per N).\n\n"
            );
            if let Some(dpo) = sweeps.iter().find(|x| x.method == "online-dpo") {
                // Within half a point counts as a tie, which we do not call "least".
                let least = sweeps.len() > 1
                    && sweeps
                        .iter()
                        .all(|x| x.method == dpo.method || dpo.change > x.change + 0.005);
                let measured: Vec<String> = sweeps
                    .iter()
                    .map(|x| format!("{} {} points", x.label, pct.signed(x.change)))
                    .collect();
                let what = format!(
                    "online DPO is the most robust to off-policy data (its win rate degrades least from N = {} to N = {})",
                    ns[0],
                    ns[ns.len() - 1]
                );
                let mut claim = Claim::check(what, measured.join(", "), least);
                // The sweep decides only if its stalest minibatches are measurably off-policy.
                let n_max = ns[ns.len() - 1];
                let ends = stalest(&off_policy);
                let unmoved: Vec<String> = ends
                    .iter()
                    .filter(|r| r.run.ends_with(" sync") && !r.measurable())
                    .map(|r| {
                        format!(
                            "{} (staleness {}: {:.1e} ± {:.1e} nats)",
                            r.run, r.staleness, r.kl.0, r.kl.1
                        )
                    })
                    .collect();
                if !unmoved.is_empty() {
                    claim = claim.note(format!("at N = {n_max} the stalest minibatches of {} are not measurably off-policy (the staleness table), so the sweep cannot decide robustness to off-policy data", unmoved.join(", ")));
                } else if sweeps.iter().all(|x| x.change >= 0.0 || x.within_noise) {
                    claim = claim.note("no method's win rate falls beyond its seed spread up to this N, so the sweep cannot single out online DPO at this scale");
                }
                claims.push(claim);
            }
        }
        plot_updates(
            &records,
            "train_gold",
            &ctx.run.plots_dir().join("train_gold.svg"),
            "gold reward of training samples (mean over seeds)",
        )?;
        plot_updates(
            &records,
            "train_kl",
            &ctx.run.plots_dir().join("train_kl.svg"),
            "KL(π ‖ π_SFT) per sequence of the training samples (mean over seeds)",
        )?;
        s += &format!(
            "## Learning curves\n\nThe gold reward and the KL from the SFT policy (nats per sequence) of the samples each update trains on, averaged over seeds and over each fifth of the updates. The gold win rate is measured once, at the end (the tables above).\n\n{}\nPlots: `plots/train_gold.svg`, `plots/train_kl.svg` (per update, mean over seeds).\n\n",
            updates_table(
                &records,
                &[("train_gold", "gold reward"), ("train_kl", "KL(π ‖ π_SFT)")],
                5
            )
        );
        if !claims.is_empty() {
            s += &format!(
                "## The paper's claims at our scale\n\n{}\n",
                claims_table(&claims)
            );
        }
        s += &footer(
            results.iter().map(|r| r.stats.wall_seconds).sum(),
            results.len(),
            computed,
            ctx.elapsed_secs(),
        );
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "async-rlhf",
    description: "asynchronous off-policy RLHF: SFT → reward model → RL methods by name (online DPO, PPO, RLOO), sync or async with bounded staleness, judged by a gold reward",
    config: AsyncRlhfConfig,
    build: |config: AsyncRlhfConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        let err = |f: &str, m: String| -> anyhow::Error { ConfigError::field(f, m).into() };
        if config.seeds.is_empty() { return Err(err("seeds", "give at least one seed".into())); }
        if config.methods.is_empty() { return Err(err("methods", "give at least one RL method".into())); }
        let methods = config.methods.iter().map(|m| methods::find(m)).collect::<Result<Vec<_>, _>>().map_err(|e| err("methods", e))?;
        if config.modes.is_empty() { return Err(err("modes", "give at least one of \"sync\", \"async\"".into())); }
        if config.minibatches.is_empty() || config.minibatches.contains(&0) { return Err(err("minibatches", "give N values of at least 1".into())); }
        let threads = (config.generator_threads, config.learner_threads);
        for &n in &config.minibatches {
            if !config.rl.updates.is_multiple_of(n as u64) { return Err(err("rl.updates", format!("must be a multiple of every N (N = {n})"))); }
            let pipeline = pipeline_config(LoopMode::Async, config.rl.updates, n, config.staleness(n), threads, false);
            if config.modes.contains(&LoopMode::Async) { pipeline.validate().map_err(|e| err("max_staleness", e))?; }
        }
        if threads.0 == 0 || threads.1 == 0 { return Err(err("generator_threads", "thread counts must be at least 1".into())); }
        if config.eval_prompts == 0 { return Err(err("eval_prompts", "must be at least 1".into())); }
        config.sft.validate().map_err(|e| e.within("sft"))?;
        config.rl.validate().map_err(|e| e.within("rl"))?;
        Ok(Box::new(AsyncRlhf { config, methods }) as Box<dyn Scheduler>)
    },
}
