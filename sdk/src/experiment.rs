//! Experiments: units of work (seeds × a grid) that run on threads, log one record each to
//! `metrics.jsonl`, and resume per unit.
//!
//! A unit is a small serialisable key (`{"seed": 0}`, `{"model": "lstm", "seed": 2}`); its
//! fields are copied to the top level of every record the unit logs, so records say which unit
//! wrote them. When a unit finishes, [`Experiment`] logs `{"stage": <stage>, <key>…,
//! "result": <result>}`. A resumed run (`--resume`) reads those records back and only runs the
//! units without one; a unit that was cut short has its partial records dropped first, except
//! those up to its own latest checkpoint (`checkpoints/<unit name>/`), from which it resumes
//! with [`UnitCx::resume`].
//!
//! [`Experiment::grouped`] runs units that share an expensive setup (per seed: train the base
//! models once, then a grid of runs on them): the setup runs when any of the group's units is
//! not done, and its own record is logged once.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::progress::ProgressBar;
use crate::run::{RunDir, read_metrics};
use crate::scheduler::RunContext;
use crate::train::{Trainer, latest_checkpoint};

/// A unit's key.
pub trait Unit: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync {
    /// A short name for progress bars, messages and its checkpoint folder.
    fn name(&self) -> String;
}

/// The error a unit returns when it stopped because another unit failed (see
/// [`UnitCx::check`]): the other unit's error is the one reported.
#[derive(Debug, thiserror::Error)]
#[error("{0} stopped because another unit failed")]
pub struct Cancelled(pub String);

struct Shared<'a> {
    run: Mutex<&'a mut RunDir>,
    checkpoints: PathBuf,
    device: Device,
    resume: bool,
    quiet: bool,
    failed: AtomicBool,
    progress: ProgressBar,
}

/// What a running unit gets: logging under its key, cancellation, its checkpoint folder, the
/// run's device and progress bar.
pub struct UnitCx<'a> {
    shared: &'a Shared<'a>,
    key: serde_json::Map<String, Value>,
    name: String,
}

impl UnitCx<'_> {
    /// Appends `record` (an object) to `metrics.jsonl` with the unit's key fields added.
    pub fn log(&self, mut record: Value) -> anyhow::Result<()> {
        if let Value::Object(m) = &mut record {
            for (k, v) in &self.key {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut run = self.shared.run.lock().unwrap_or_else(|p| p.into_inner());
        Ok(run.log(&record)?)
    }

    /// `Err(Cancelled)` once another unit has failed: call it between steps.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(Cancelled(self.name.clone()).into());
        }
        Ok(())
    }

    /// The unit's checkpoint folder (`checkpoints/<unit name>`).
    pub fn checkpoints(&self) -> PathBuf {
        self.shared.checkpoints.join(&self.name)
    }

    /// When the run is resumed and the unit has a checkpoint: loads it into `trainer` and
    /// returns the state saved with it.
    pub fn resume<M: Module>(
        &self,
        trainer: &mut Trainer<M>,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        if !self.shared.resume {
            return Ok(None);
        }
        trainer.load_latest(&self.checkpoints())
    }

    /// Saves a trained language model of this unit as `models/<unit>-<name>/` (a Hugging Face
    /// folder; see [`RunDir::save_model`](crate::run::RunDir::save_model)).
    pub fn save_policy(
        &self,
        name: &str,
        policy: &crate::lm::policy::LmPolicy,
    ) -> anyhow::Result<PathBuf> {
        let slug: String = format!("{}-{name}", self.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let run = self.shared.run.lock().unwrap_or_else(|p| p.into_inner());
        Ok(run.save_model(&slug, &policy.model, &policy.tokenizer)?)
    }

    /// The run's device (without autodiff).
    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// The experiment's progress bar.
    pub fn progress(&self) -> &ProgressBar {
        &self.shared.progress
    }

    /// `--quiet`.
    pub fn quiet(&self) -> bool {
        self.shared.quiet
    }

    /// The unit's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What an experiment did.
#[derive(Debug)]
pub struct Outcome<K, R> {
    /// Every unit with its result, in the order given (those read back from a resumed run too).
    pub results: Vec<(K, R)>,
    /// How many units this invocation computed.
    pub computed: usize,
}

/// Units run under one record stage.
pub struct Experiment {
    stage: String,
    threads: usize,
    progress: Option<ProgressBar>,
}

fn key_of<K: Unit>(unit: &K) -> anyhow::Result<serde_json::Map<String, Value>> {
    match serde_json::to_value(unit)? {
        Value::Object(m) => Ok(m),
        other => anyhow::bail!("an experiment unit must serialise as an object, not {other}"),
    }
}

fn matches(record: &Value, key: &serde_json::Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| record.get(k) == Some(v))
}

impl Experiment {
    /// Units whose results are logged as `{"stage": stage, …}`.
    pub fn new(stage: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            threads: 1,
            progress: None,
        }
    }

    /// Units run on this many threads (default 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Shows `pb` (units advance it themselves) instead of a bar over units.
    pub fn progress(mut self, pb: ProgressBar) -> Self {
        self.progress = Some(pb);
        self
    }

    /// The results already logged under this stage (a resumed run), by unit.
    fn done<K: Unit, R: DeserializeOwned>(
        &self,
        ctx: &RunContext,
        stage: &str,
    ) -> anyhow::Result<Vec<(K, R)>> {
        if !ctx.resume {
            return Ok(Vec::new());
        }
        let path = ctx.run.path().join(crate::run::METRICS_FILE);
        let mut out = Vec::new();
        for r in read_metrics(&path)?
            .into_iter()
            .filter(|r| r["stage"] == stage)
        {
            let unit: K = serde_json::from_value(r.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: a `{stage}` record has no readable key: {e}",
                    path.display()
                )
            })?;
            let result: R = serde_json::from_value(r["result"].clone()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: a `{stage}` record is not readable: {e}",
                    path.display()
                )
            })?;
            out.push((unit, result));
        }
        Ok(out)
    }

    /// Drops what an unfinished unit logged after its latest checkpoint (all of it when it has
    /// none), before it runs again.
    fn forget_partial(
        &self,
        run: &mut RunDir,
        key: &serde_json::Map<String, Value>,
        checkpoints: &std::path::Path,
        keep_stages: &[&str],
    ) -> anyhow::Result<()> {
        let step = match latest_checkpoint(checkpoints)? {
            Some(dir) => {
                let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
                meta["step"].as_u64()
            }
            None => None,
        };
        run.retain_metrics(|r| {
            !matches(r, key)
                || keep_stages.iter().any(|s| r["stage"] == *s)
                || step.is_some_and(|s| r["step"].as_u64().is_some_and(|x| x <= s))
        })?;
        Ok(())
    }

    fn shared<'a>(&self, ctx: &'a mut RunContext, total: u64) -> Shared<'a> {
        let progress = self
            .progress
            .clone()
            .unwrap_or_else(|| ctx.progress(total, &self.stage));
        Shared {
            checkpoints: ctx.run.checkpoints_dir(),
            device: ctx.device.clone(),
            resume: ctx.resume,
            quiet: ctx.quiet,
            failed: AtomicBool::new(false),
            progress,
            run: Mutex::new(&mut ctx.run),
        }
    }

    /// Runs `f` on every unit not done yet (on [`threads`](Self::threads) threads), logging
    /// each result as it finishes. A failing unit stops the others at their next
    /// [`UnitCx::check`], and its error is returned.
    pub fn run<K, R, F>(
        &self,
        ctx: &mut RunContext,
        units: &[K],
        f: F,
    ) -> anyhow::Result<Outcome<K, R>>
    where
        K: Unit,
        R: Serialize + DeserializeOwned + Send,
        F: Fn(&K, &UnitCx) -> anyhow::Result<R> + Sync,
    {
        let mut done: Vec<(K, R)> = self.done(ctx, &self.stage)?;
        let todo: Vec<&K> = units
            .iter()
            .filter(|u| !done.iter().any(|(d, _)| d == *u))
            .collect();
        for u in &todo {
            tracing::debug!(unit = u.name(), "to run");
        }
        let computed = todo.len();
        let shared = self.shared(ctx, computed as u64);
        let queue = Mutex::new(todo.into_iter());
        let new: Mutex<Vec<(K, R)>> = Mutex::new(Vec::new());
        let worker = || -> anyhow::Result<()> {
            loop {
                if shared.failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let Some(unit) = queue.lock().unwrap_or_else(|p| p.into_inner()).next() else {
                    return Ok(());
                };
                let key = key_of(unit)?;
                let cx = UnitCx {
                    shared: &shared,
                    name: unit.name(),
                    key,
                };
                if shared.resume {
                    let mut run = shared.run.lock().unwrap_or_else(|p| p.into_inner());
                    self.forget_partial(&mut run, &cx.key, &cx.checkpoints(), &[])?;
                }
                let result =
                    f(unit, &cx).inspect_err(|_| shared.failed.store(true, Ordering::SeqCst))?;
                cx.log(serde_json::json!({ "stage": self.stage, "result": result }))?;
                if self.progress.is_none() {
                    shared.progress.inc(1);
                }
                new.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((unit.clone(), result));
            }
        };
        let outcomes: Vec<anyhow::Result<()>> = if self.threads == 1 {
            vec![worker()]
        } else {
            // Each thread's unit gets its share of rayon's threads (its own pool): the
            // tensor kernels a unit calls split their work only over those, not over threads
            // that are busy with the other units.
            let share = (rayon::current_num_threads() / self.threads).max(1);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..self.threads)
                    .map(|_| {
                        s.spawn(move || {
                            match rayon::ThreadPoolBuilder::new().num_threads(share).build() {
                                Ok(pool) => pool.install(worker),
                                Err(_) => worker(),
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a unit's thread panicked")))
                    })
                    .collect()
            })
        };
        shared.progress.finish_and_clear();
        // The root cause first, not a unit that stopped because of it.
        let mut errors: Vec<anyhow::Error> = outcomes.into_iter().filter_map(Result::err).collect();
        errors.sort_by_key(|e| e.downcast_ref::<Cancelled>().is_some());
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        done.extend(new.into_inner().unwrap_or_else(|p| p.into_inner()));
        let mut results = Vec::with_capacity(units.len());
        for u in units {
            if let Some(i) = done.iter().position(|(d, _)| d == u) {
                results.push(done.swap_remove(i));
            }
        }
        Ok(Outcome { results, computed })
    }

    /// Units that share a setup: for each `(group, units)`, `setup` (logged once under
    /// `group_stage` with the group's key) runs when any of the group's units is not done, then
    /// `f` runs those units in order. Returns the groups' setup records and the units'
    /// results, in the order given.
    #[allow(clippy::type_complexity)]
    pub fn grouped<G, B, S, K, R>(
        &self,
        ctx: &mut RunContext,
        group_stage: &str,
        groups: &[(G, Vec<K>)],
        mut setup: impl FnMut(&G, &UnitCx) -> anyhow::Result<(S, B)>,
        mut f: impl FnMut(&G, &S, &K, &UnitCx) -> anyhow::Result<R>,
    ) -> anyhow::Result<(Vec<(G, B)>, Outcome<K, R>)>
    where
        G: Unit,
        B: Serialize + DeserializeOwned,
        K: Unit,
        R: Serialize + DeserializeOwned,
    {
        let mut bases: Vec<(G, B)> = self.done(ctx, group_stage)?;
        let mut done: Vec<(K, R)> = self.done(ctx, &self.stage)?;
        let total: usize = groups.iter().map(|(_, u)| u.len()).sum();
        let computed = groups
            .iter()
            .flat_map(|(_, u)| u)
            .filter(|u| !done.iter().any(|(d, _)| d == *u))
            .count();
        let shared = self.shared(ctx, total as u64);
        shared.progress.inc((total - computed) as u64);
        for (g, units) in groups {
            let todo: Vec<&K> = units
                .iter()
                .filter(|u| !done.iter().any(|(d, _)| d == *u))
                .collect();
            let has_base = bases.iter().any(|(b, _)| b == g);
            if todo.is_empty() && has_base {
                continue;
            }
            let gcx = UnitCx {
                shared: &shared,
                name: g.name(),
                key: key_of(g)?,
            };
            let (state, base) = setup(g, &gcx)?;
            if !has_base {
                gcx.log(serde_json::json!({ "stage": group_stage, "result": base }))?;
                bases.push((g.clone(), base));
            }
            for unit in todo {
                let cx = UnitCx {
                    shared: &shared,
                    name: format!("{}-{}", g.name(), unit.name()),
                    key: key_of(unit)?,
                };
                if shared.resume {
                    let mut run = shared.run.lock().unwrap_or_else(|p| p.into_inner());
                    self.forget_partial(&mut run, &cx.key, &cx.checkpoints(), &[group_stage])?;
                }
                let result = f(g, &state, unit, &cx)?;
                cx.log(serde_json::json!({ "stage": self.stage, "result": result }))?;
                shared.progress.inc(1);
                done.push((unit.clone(), result));
            }
        }
        shared.progress.finish_and_clear();
        let order = |all: Vec<(G, B)>| -> Vec<(G, B)> {
            let mut all = all;
            groups
                .iter()
                .filter_map(|(g, _)| {
                    all.iter()
                        .position(|(b, _)| b == g)
                        .map(|i| all.swap_remove(i))
                })
                .collect()
        };
        let mut results = Vec::with_capacity(total);
        for u in groups.iter().flat_map(|(_, u)| u) {
            if let Some(i) = done.iter().position(|(d, _)| d == u) {
                results.push(done.swap_remove(i));
            }
        }
        Ok((order(bases), Outcome { results, computed }))
    }
}

/// Wall time by stage of one unit's work: each [`lap`](Self::lap) adds the time since the
/// previous lap (or the start) to its stage, so a stage run several times accumulates.
pub struct StageClock {
    start: std::time::Instant,
    last: std::time::Instant,
    seconds: std::collections::BTreeMap<String, f64>,
}

impl StageClock {
    pub fn start() -> Self {
        let now = std::time::Instant::now();
        Self {
            start: now,
            last: now,
            seconds: Default::default(),
        }
    }

    /// Ends a lap of `stage`.
    pub fn lap(&mut self, stage: &str) {
        let now = std::time::Instant::now();
        *self.seconds.entry(stage.into()).or_default() += (now - self.last).as_secs_f64();
        self.last = now;
    }

    /// Stage → seconds so far.
    pub fn seconds(&self) -> &std::collections::BTreeMap<String, f64> {
        &self.seconds
    }

    /// Seconds since the start.
    pub fn total(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// The unit of most experiments: one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Seed {
    pub seed: u64,
}

impl Unit for Seed {
    fn name(&self) -> String {
        format!("seed {}", self.seed)
    }
}

/// The seeds `offsets` added to the run's seed, as units.
pub fn seeds(base: u64, offsets: &[u64]) -> Vec<Seed> {
    offsets
        .iter()
        .map(|&s| Seed {
            seed: base.wrapping_add(s),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn ctx(dir: &std::path::Path) -> RunContext {
        let run = RunDir::create(dir, "exp", "").unwrap();
        let mut c = RunContext::new(run, Device::flex(), 0, "exp");
        c.quiet = true;
        c
    }

    #[test]
    fn resumes_per_unit_and_drops_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(dir.path());
        let units = seeds(10, &[0, 1, 2]);
        let calls = AtomicUsize::new(0);
        let body = |u: &Seed, cx: &UnitCx| -> anyhow::Result<u64> {
            calls.fetch_add(1, Ordering::SeqCst);
            cx.log(serde_json::json!({ "stage": "step", "step": 1 }))?;
            anyhow::ensure!(u.seed != 12 || calls.load(Ordering::SeqCst) > 3, "boom");
            Ok(u.seed * 2)
        };
        let err = Experiment::new("seed")
            .run(&mut c, &units, body)
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        c.resume = true;
        let out = Experiment::new("seed").run(&mut c, &units, body).unwrap();
        assert_eq!(out.computed, 1, "only the failed unit runs again");
        assert_eq!(
            out.results,
            vec![(units[0], 20), (units[1], 22), (units[2], 24)]
        );
        let records = read_metrics(&c.run.path().join(crate::run::METRICS_FILE)).unwrap();
        let steps = records.iter().filter(|r| r["stage"] == "step").count();
        assert_eq!(
            steps, 3,
            "the failed attempt's partial record was dropped: {records:?}"
        );
        assert!(records.iter().all(|r| r["seed"].is_u64()));
    }

    #[test]
    fn a_failure_on_one_thread_is_the_error_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(dir.path());
        let units = seeds(0, &[0, 1, 2, 3]);
        let err = Experiment::new("seed")
            .threads(2)
            .run(
                &mut c,
                &units,
                |u: &Seed, cx: &UnitCx| -> anyhow::Result<u64> {
                    if u.seed == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        anyhow::bail!("the real failure");
                    }
                    loop {
                        cx.check()?;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                },
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "the real failure");
    }

    #[test]
    fn grouped_setup_runs_only_for_groups_with_work_left() {
        #[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Run {
            seed: u64,
            n: usize,
        }
        impl Unit for Run {
            fn name(&self) -> String {
                format!("n{}", self.n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(dir.path());
        let groups: Vec<(Seed, Vec<Run>)> = (0..2)
            .map(|s| {
                (
                    Seed { seed: s },
                    (1..=2).map(|n| Run { seed: s, n }).collect(),
                )
            })
            .collect();
        let setups = AtomicUsize::new(0);
        let go = |c: &mut RunContext, fail_at: Option<usize>| {
            Experiment::new("run").grouped(
                c,
                "seed",
                &groups,
                |g: &Seed, _| {
                    setups.fetch_add(1, Ordering::SeqCst);
                    Ok((g.seed * 100, g.seed))
                },
                |_, s: &u64, u: &Run, _| {
                    anyhow::ensure!(Some(u.n + *s as usize) != fail_at, "stop");
                    Ok(*s + u.n as u64)
                },
            )
        };
        assert!(go(&mut c, Some(102)).is_err());
        assert_eq!(setups.load(Ordering::SeqCst), 2);
        c.resume = true;
        let (bases, out) = go(&mut c, None).unwrap();
        assert_eq!(
            setups.load(Ordering::SeqCst),
            3,
            "only seed 1's setup runs again"
        );
        assert_eq!(out.computed, 1);
        assert_eq!(bases.iter().map(|b| b.1).collect::<Vec<_>>(), vec![0, 1]);
        let values: Vec<u64> = out.results.iter().map(|r| r.1).collect();
        assert_eq!(values, vec![1, 2, 101, 102]);
    }
}
