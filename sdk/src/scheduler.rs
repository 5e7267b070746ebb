//! The [`Scheduler`] trait and the [`RunContext`] it runs in.

use std::time::Instant;

use burn::tensor::Device;
use indicatif::ProgressBar;

use crate::error::Error;
use crate::registry::{Components, Role};
use crate::run::RunDir;

/// Everything a scheduler needs from the runner: the run directory (metrics, summary, plots,
/// checkpoints), the device, the seed and the run's flags.
pub struct RunContext {
    /// The run directory.
    pub run: RunDir,
    /// The device named by the recipe (without autodiff).
    pub device: Device,
    /// The run's seed.
    pub seed: u64,
    /// The recipe's name.
    pub recipe: String,
    /// `--smoke`: the recipe's `[smoke]` overrides were applied.
    pub smoke: bool,
    /// `--resume`: continue from the run directory's last checkpoint.
    pub resume: bool,
    /// `--quiet`: no progress bars.
    pub quiet: bool,
    started: Instant,
}

impl RunContext {
    /// A context for `run`.
    pub fn new(run: RunDir, device: Device, seed: u64, recipe: impl Into<String>) -> Self {
        Self {
            run,
            device,
            seed,
            recipe: recipe.into(),
            smoke: false,
            resume: false,
            quiet: false,
            started: Instant::now(),
        }
    }

    /// A progress bar (hidden when quiet or not on a terminal).
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        crate::progress::bar(len, what, self.quiet)
    }

    /// Appends one record to `metrics.jsonl`.
    pub fn log(&mut self, record: serde_json::Value) -> Result<(), Error> {
        self.run.log(&record)
    }

    /// Seconds since the context was made (for summaries; never logged to metrics, which stay
    /// identical across runs with the same seed).
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Owns a run's loop: pulls problems from the task, draws candidates, scores them, hands
/// tensors to the objective, steps the optimiser, logs, checkpoints, and writes the summary.
/// Sync, async with bounded staleness and iterated rounds (STaR, V-STaR) are schedulers.
///
/// A scheduler declares its [`Role`]s: the recipe tables it takes (name, kind, Rust type,
/// required or not, and for objectives the tensors it hands them). The runner checks a recipe
/// against them before anything is built or run (already at `--dry-run`): a missing role, a
/// table of the wrong kind or type, an objective reading tensors the scheduler does not hand
/// it, and a table no role takes are errors naming the file and table. The scheduler then
/// takes its components from [`Components`] by role.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{Components, RunContext, Scheduler, Split, Task};
/// use lmlab_sdk::registry::Role;
///
/// /// Counts a task's test problems and logs the count.
/// struct Census;
///
/// impl Scheduler for Census {
///     fn roles(&self) -> Vec<Role> {
///         vec![Role::task::<dyn Task<Problem = u32, Output = str>>("task", "the problems to count")]
///     }
///     fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
///         let task: Box<dyn Task<Problem = u32, Output = str>> = parts.take("task", "census")?;
///         let n = task.problems(Split::Test)?.len();
///         ctx.log(serde_json::json!({ "step": 0, "problems": n }))?;
///         ctx.run.write_summary(&format!("{n} test problems\n"))?;
///         Ok(())
///     }
/// }
///
/// struct Numbers;
/// impl Task for Numbers {
///     type Problem = u32;
///     type Output = str;
///     fn problems(&self, _: Split) -> anyhow::Result<Vec<u32>> { Ok(vec![1, 2, 3]) }
///     fn check(&self, p: &u32, out: &str) -> bool { out == p.to_string() }
/// }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let run = lmlab_sdk::run::RunDir::create(dir.path(), "census", "").unwrap();
/// let mut ctx = RunContext::new(run, lmlab_sdk::burn::tensor::Device::flex(), 0, "census");
/// let task: Box<dyn Task<Problem = u32, Output = str>> = Box::new(Numbers);
/// let mut parts = Components::new([(
///     "task".to_string(),
///     lmlab_sdk::Built::new(lmlab_sdk::Kind::Task, "numbers", Default::default(), task),
/// )].into());
/// Census.run(&mut ctx, &mut parts).unwrap();
/// assert!(std::fs::read_to_string(ctx.run.path().join("summary.md")).unwrap().starts_with("3 "));
/// ```
pub trait Scheduler: Send {
    /// The recipe tables it takes.
    fn roles(&self) -> Vec<Role>;

    /// Runs the loop to completion (or from the last checkpoint when `ctx.resume`).
    fn run(&mut self, ctx: &mut RunContext, components: &mut Components) -> anyhow::Result<()>;
}
