//! Generation and learning, synchronous or overlapped with bounded staleness (Noukhovitch et
//! al. 2024, "Asynchronous RLHF").
//!
//! A [`Generator`] turns policy weights into a round of `N` minibatches (samples, rewards,
//! reference log-probs); a [`Learner`] takes one optimiser step per minibatch. Versions count
//! learner steps: the weights after `v` steps are version `v`, and every minibatch carries the
//! version that generated it. Minibatch `i` of round `r` is consumed at learner version
//! `rN + i`, so its staleness is `rN + i − version`.
//!
//! - [`LoopMode::Sync`]: round `r` is generated with version `rN`, then learned on; minibatch
//!   `i` has staleness `i` (the paper's "`N` minibatches" off-policyness), no overlap.
//! - [`LoopMode::Async`]: generation runs on its own thread, learning on the calling one.
//!   Round `r` is generated with version `max(0, rN + N − 1 − s)`, the oldest that keeps every
//!   minibatch's staleness within `max_staleness = s`; the learner publishes exactly those
//!   versions, so a run's data (and results) do not depend on thread timing. Minibatches pass
//!   through a bounded channel of `s + 1` entries, and the learner checks every consumed
//!   minibatch's staleness (in `[0, s]`) and order (FIFO, each once) at run time.
//!
//! Each side runs in its own rayon pool of the configured size (burn's CPU kernels use the
//! current pool), optionally pinned to its own cores, and the report records which core ran
//! each round and each step.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Synchronous or overlapped generation and learning.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    Sync,
    Async,
}

impl std::fmt::Display for LoopMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoopMode::Sync => "sync",
            LoopMode::Async => "async",
        })
    }
}

/// How a [`run`] schedules generation and learning.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    pub mode: LoopMode,
    /// Generation rounds.
    pub rounds: u64,
    /// `N`: minibatches (learner steps) per round.
    pub minibatches: usize,
    /// `s`: the largest staleness a consumed minibatch may have (async; at least `N − 1`).
    pub max_staleness: u64,
    /// Threads of the generator's pool (async) — sync uses `generator + learner` threads for
    /// both phases, all the cores the async run has.
    pub generator_threads: usize,
    /// Threads of the learner's pool (async).
    pub learner_threads: usize,
    /// Pin the generator's pool to cores `0..g` and the learner's to `g..g+l` (Linux).
    pub pin_cores: bool,
}

impl PipelineConfig {
    /// The weights version round `r` is generated with.
    pub fn generation_version(&self, round: u64) -> u64 {
        let n = self.minibatches as u64;
        match self.mode {
            LoopMode::Sync => round * n,
            LoopMode::Async => (round * n + n - 1)
                .saturating_sub(self.max_staleness)
                .min(round * n),
        }
    }

    /// Errors when the settings cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if self.minibatches == 0 {
            return Err("`minibatches` must be at least 1".into());
        }
        if self.mode == LoopMode::Async && self.max_staleness + 1 < self.minibatches as u64 {
            return Err(format!(
                "`max_staleness` {} is below N − 1 = {}: the last minibatch of a round is always that stale",
                self.max_staleness,
                self.minibatches - 1
            ));
        }
        if self.generator_threads == 0 || self.learner_threads == 0 {
            return Err("thread counts must be at least 1".into());
        }
        Ok(())
    }
}

/// One minibatch and where it came from.
#[derive(Clone, Debug)]
pub struct Tagged<B> {
    pub round: u64,
    /// Index within the round, `0..N`.
    pub minibatch: usize,
    /// The weights version that generated it.
    pub version: u64,
    pub data: B,
}

/// Produces a round of minibatches from policy weights (runs on the generator thread in async
/// mode).
pub trait Generator: Send {
    type Weights: Send + Clone;
    type Batch: Send;
    /// The `N` minibatches of `round`, generated with `weights`.
    fn generate(&mut self, round: u64, weights: &Self::Weights)
    -> anyhow::Result<Vec<Self::Batch>>;
}

/// Takes one optimiser step per minibatch (in async mode, on the learner's pool).
pub trait Learner: Send {
    type Weights: Send + Clone;
    type Batch: Send;
    /// One step on `batch`; `staleness` = current version − `batch.version`.
    fn learn(&mut self, batch: Tagged<Self::Batch>, staleness: u64) -> anyhow::Result<()>;
    /// An inference copy of the current weights (to publish to the generator).
    fn weights(&self) -> Self::Weights;
}

/// One consumed minibatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consumed {
    pub round: u64,
    pub minibatch: usize,
    pub version: u64,
    /// Learner version when consumed (before its step).
    pub learner_version: u64,
    pub staleness: u64,
    /// The core the learner's step started on (`None` off Linux).
    pub cpu: Option<usize>,
    /// Seconds of the step.
    pub seconds: f64,
}

/// One generated round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub round: u64,
    pub version: u64,
    pub cpu: Option<usize>,
    pub seconds: f64,
}

/// What a [`run`] did and how long it took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    pub wall_seconds: f64,
    pub generated: Vec<Generated>,
    pub consumed: Vec<Consumed>,
    /// Seconds the learner waited for data.
    pub learner_wait_seconds: f64,
    /// Seconds the generator waited for weights or channel space.
    pub generator_wait_seconds: f64,
}

impl PipelineReport {
    /// Total seconds spent generating (`G` summed over rounds).
    pub fn generate_seconds(&self) -> f64 {
        self.generated.iter().map(|g| g.seconds).sum()
    }
    /// Total seconds spent in learner steps (`T` summed over rounds).
    pub fn learn_seconds(&self) -> f64 {
        self.consumed.iter().map(|c| c.seconds).sum()
    }
    /// The largest staleness consumed.
    pub fn max_staleness(&self) -> u64 {
        self.consumed.iter().map(|c| c.staleness).max().unwrap_or(0)
    }
    /// `(core, count)` of the generator's rounds and of the learner's steps.
    pub fn cores(&self) -> (BTreeMap<usize, usize>, BTreeMap<usize, usize>) {
        let mut g = BTreeMap::new();
        let mut l = BTreeMap::new();
        for x in &self.generated {
            if let Some(c) = x.cpu {
                *g.entry(c).or_default() += 1;
            }
        }
        for x in &self.consumed {
            if let Some(c) = x.cpu {
                *l.entry(c).or_default() += 1;
            }
        }
        (g, l)
    }
}

/// The core the calling thread runs on.
pub fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getcpu has no preconditions.
        let c = unsafe { libc::sched_getcpu() };
        if c >= 0 {
            return Some(c as usize);
        }
    }
    None
}

/// The cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(target_os = "linux")]
fn pin_to(cores: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_cores: &[usize]) {}

/// A rayon pool of `threads`, pinned to `cores` when given.
pub fn pool(threads: usize, cores: Option<Vec<usize>>) -> anyhow::Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1));
    if let Some(cores) = cores {
        b = b.start_handler(move |_| pin_to(&cores));
    }
    b.build().map_err(|e| anyhow::anyhow!("thread pool: {e}"))
}

/// Cores for the generator and the learner when pinning is on and the machine has enough.
fn core_split(cfg: &PipelineConfig) -> (Option<Vec<usize>>, Option<Vec<usize>>) {
    let (g, l) = (cfg.generator_threads, cfg.learner_threads);
    if !cfg.pin_cores || g + l > available_cores() {
        return (None, None);
    }
    (Some((0..g).collect()), Some((g..g + l).collect()))
}

/// Runs `cfg.rounds` rounds of generation and `N` learner steps per round, synchronously or
/// overlapped (see the module docs). A generator or learner error stops both sides and is
/// returned.
pub fn run<W, B, G, L>(
    cfg: &PipelineConfig,
    generator: &mut G,
    learner: &mut L,
) -> anyhow::Result<PipelineReport>
where
    W: Send + Clone,
    B: Send,
    G: Generator<Weights = W, Batch = B>,
    L: Learner<Weights = W, Batch = B>,
{
    cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
    match cfg.mode {
        LoopMode::Sync => run_sync(cfg, generator, learner),
        LoopMode::Async => run_async(cfg, generator, learner),
    }
}

fn run_sync<W, B, G, L>(
    cfg: &PipelineConfig,
    generator: &mut G,
    learner: &mut L,
) -> anyhow::Result<PipelineReport>
where
    W: Send + Clone,
    B: Send,
    G: Generator<Weights = W, Batch = B>,
    L: Learner<Weights = W, Batch = B>,
{
    let threads = cfg.generator_threads + cfg.learner_threads;
    let cores =
        (cfg.pin_cores && threads <= available_cores()).then(|| (0..threads).collect::<Vec<_>>());
    let pool = pool(threads, cores)?;
    let start = Instant::now();
    let mut report = PipelineReport::default();
    let n = cfg.minibatches as u64;
    pool.install(|| -> anyhow::Result<()> {
        for round in 0..cfg.rounds {
            let version = round * n;
            let t = Instant::now();
            let cpu = current_cpu();
            let batches = generator.generate(round, &learner.weights())?;
            anyhow::ensure!(
                batches.len() == cfg.minibatches,
                "the generator made {} minibatches, N = {}",
                batches.len(),
                cfg.minibatches
            );
            report.generated.push(Generated {
                round,
                version,
                cpu,
                seconds: t.elapsed().as_secs_f64(),
            });
            for (i, data) in batches.into_iter().enumerate() {
                let learner_version = round * n + i as u64;
                let staleness = learner_version - version;
                let t = Instant::now();
                let cpu = current_cpu();
                learner.learn(
                    Tagged {
                        round,
                        minibatch: i,
                        version,
                        data,
                    },
                    staleness,
                )?;
                report.consumed.push(Consumed {
                    round,
                    minibatch: i,
                    version,
                    learner_version,
                    staleness,
                    cpu,
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
        }
        Ok(())
    })?;
    report.wall_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Published weights, keyed by version, plus a flag set when either side stops.
struct Board<W> {
    weights: Mutex<BTreeMap<u64, W>>,
    ready: Condvar,
    stop: AtomicBool,
}

fn run_async<W, B, G, L>(
    cfg: &PipelineConfig,
    generator: &mut G,
    learner: &mut L,
) -> anyhow::Result<PipelineReport>
where
    W: Send + Clone,
    B: Send,
    G: Generator<Weights = W, Batch = B>,
    L: Learner<Weights = W, Batch = B>,
{
    let (gen_cores, learn_cores) = core_split(cfg);
    let gen_pool = pool(cfg.generator_threads, gen_cores)?;
    let learn_pool = pool(cfg.learner_threads, learn_cores)?;
    let board = Board {
        weights: Mutex::new(BTreeMap::new()),
        ready: Condvar::new(),
        stop: AtomicBool::new(false),
    };
    // The versions the generator will ask for, each published once.
    let needed: std::collections::BTreeSet<u64> =
        (0..cfg.rounds).map(|r| cfg.generation_version(r)).collect();
    let publish = |learner: &L, version: u64| {
        if needed.contains(&version) {
            board
                .weights
                .lock()
                .expect("board")
                .insert(version, learner.weights());
            board.ready.notify_all();
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Tagged<B>>(cfg.max_staleness as usize + 1);
    let start = Instant::now();
    let mut report = PipelineReport::default();
    publish(learner, 0);
    let (gen_result, learn_result) = std::thread::scope(|scope| {
        let board = &board;
        let gen_handle = scope.spawn(move || {
            let out = gen_pool.install(|| generator_loop(cfg, generator, board, tx));
            board.stop.store(true, Ordering::SeqCst);
            board.ready.notify_all();
            out
        });
        let learned =
            learn_pool.install(|| learner_loop(cfg, learner, rx, board, &publish, &mut report));
        board.stop.store(true, Ordering::SeqCst);
        board.ready.notify_all();
        (gen_handle.join(), learned)
    });
    let (generated, gen_wait) = match gen_result {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the generator thread panicked"),
    };
    learn_result?;
    report.generated = generated;
    report.generator_wait_seconds = gen_wait;
    report.wall_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn generator_loop<W: Clone, B, G: Generator<Weights = W, Batch = B>>(
    cfg: &PipelineConfig,
    generator: &mut G,
    board: &Board<W>,
    tx: SyncSender<Tagged<B>>,
) -> anyhow::Result<(Vec<Generated>, f64)> {
    let mut out = Vec::new();
    let mut waited = 0.0;
    for round in 0..cfg.rounds {
        let version = cfg.generation_version(round);
        let t = Instant::now();
        let weights = {
            let mut map = board.weights.lock().expect("board");
            loop {
                if let Some(w) = map.get(&version) {
                    // Later rounds may be generated with the same version; older ones are done.
                    let w = w.clone();
                    map.retain(|&v, _| v >= version);
                    break w;
                }
                if board.stop.load(Ordering::SeqCst) {
                    return Ok((out, waited)); // the learner stopped; its error is reported
                }
                map = board
                    .ready
                    .wait_timeout(map, Duration::from_millis(50))
                    .expect("board")
                    .0;
            }
        };
        waited += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let cpu = current_cpu();
        let batches = generator.generate(round, &weights)?;
        drop(weights);
        anyhow::ensure!(
            batches.len() == cfg.minibatches,
            "the generator made {} minibatches, N = {}",
            batches.len(),
            cfg.minibatches
        );
        out.push(Generated {
            round,
            version,
            cpu,
            seconds: t.elapsed().as_secs_f64(),
        });
        for (i, data) in batches.into_iter().enumerate() {
            let mut item = Tagged {
                round,
                minibatch: i,
                version,
                data,
            };
            let t = Instant::now();
            loop {
                match tx.try_send(item) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        if board.stop.load(Ordering::SeqCst) {
                            return Ok((out, waited));
                        }
                        item = back;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(TrySendError::Disconnected(_)) => return Ok((out, waited)),
                }
            }
            waited += t.elapsed().as_secs_f64();
        }
    }
    Ok((out, waited))
}

fn learner_loop<W, B, L: Learner<Weights = W, Batch = B>>(
    cfg: &PipelineConfig,
    learner: &mut L,
    rx: Receiver<Tagged<B>>,
    board: &Board<W>,
    publish: &dyn Fn(&L, u64),
    report: &mut PipelineReport,
) -> anyhow::Result<()> {
    let n = cfg.minibatches as u64;
    for version in 0..cfg.rounds * n {
        let t = Instant::now();
        let batch = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(b) => break b,
                Err(RecvTimeoutError::Timeout) => {
                    if board.stop.load(Ordering::SeqCst) {
                        anyhow::bail!("the generator stopped before round {}", version / n);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the generator stopped before round {}", version / n)
                }
            }
        };
        report.learner_wait_seconds += t.elapsed().as_secs_f64();
        // FIFO, each minibatch once: the v-th consumed is minibatch v mod N of round v / N.
        anyhow::ensure!(
            batch.round == version / n && batch.minibatch as u64 == version % n,
            "out of order: got round {} minibatch {} at step {version}",
            batch.round,
            batch.minibatch
        );
        let staleness = version.checked_sub(batch.version).ok_or_else(|| {
            anyhow::anyhow!(
                "minibatch from version {} ahead of the learner at {version}",
                batch.version
            )
        })?;
        anyhow::ensure!(
            staleness <= cfg.max_staleness,
            "staleness {staleness} exceeds max_staleness {}",
            cfg.max_staleness
        );
        let (round, minibatch, from) = (batch.round, batch.minibatch, batch.version);
        let t = Instant::now();
        let cpu = current_cpu();
        learner.learn(batch, staleness)?;
        report.consumed.push(Consumed {
            round,
            minibatch,
            version: from,
            learner_version: version,
            staleness,
            cpu,
            seconds: t.elapsed().as_secs_f64(),
        });
        publish(learner, version + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    /// Weights are the version number; batches carry the weights they were made with.
    struct Gen {
        n: usize,
        delays_us: Vec<u64>,
        made: u64,
        fail_at: Option<u64>,
    }
    impl Generator for Gen {
        type Weights = u64;
        type Batch = u64;
        fn generate(&mut self, round: u64, w: &u64) -> anyhow::Result<Vec<u64>> {
            anyhow::ensure!(
                Some(round) != self.fail_at,
                "generator failed at round {round}"
            );
            let d = self.delays_us[self.made as usize % self.delays_us.len()];
            self.made += 1;
            std::thread::sleep(Duration::from_micros(d));
            Ok(vec![*w; self.n])
        }
    }
    struct Learn {
        version: u64,
        delays_us: Vec<u64>,
        seen: Vec<(u64, usize)>,
        max_seen_staleness: Arc<AtomicU64>,
    }
    impl Learner for Learn {
        type Weights = u64;
        type Batch = u64;
        fn learn(&mut self, b: Tagged<u64>, staleness: u64) -> anyhow::Result<()> {
            anyhow::ensure!(
                b.data == b.version,
                "batch data from {} tagged {}",
                b.data,
                b.version
            );
            anyhow::ensure!(staleness == self.version - b.version);
            self.max_seen_staleness
                .fetch_max(staleness, Ordering::SeqCst);
            self.seen.push((b.round, b.minibatch));
            std::thread::sleep(Duration::from_micros(
                self.delays_us[self.version as usize % self.delays_us.len()],
            ));
            self.version += 1;
            Ok(())
        }
        fn weights(&self) -> u64 {
            self.version
        }
    }

    fn config(mode: LoopMode, rounds: u64, n: usize, s: u64) -> PipelineConfig {
        PipelineConfig {
            mode,
            rounds,
            minibatches: n,
            max_staleness: s,
            generator_threads: 1,
            learner_threads: 1,
            pin_cores: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Under random thread timings every consumed minibatch is within [0, s], in FIFO
        /// order, each exactly once, and generated by the version the schedule names.
        #[test]
        fn staleness_is_bounded_fifo_and_exactly_once(
            n in 1usize..5, extra in 0u64..6, rounds in 1u64..8, async_mode in any::<bool>(),
            gd in prop::collection::vec(0u64..1500, 1..6), ld in prop::collection::vec(0u64..1500, 1..6)) {
            let mode = if async_mode { LoopMode::Async } else { LoopMode::Sync };
            let s = n as u64 - 1 + extra;
            let cfg = config(mode, rounds, n, s);
            let max_seen = Arc::new(AtomicU64::new(0));
            let mut g = Gen { n, delays_us: gd, made: 0, fail_at: None };
            let mut l = Learn { version: 0, delays_us: ld, seen: vec![], max_seen_staleness: max_seen.clone() };
            let report = run(&cfg, &mut g, &mut l).unwrap();
            let expected: Vec<(u64, usize)> = (0..rounds).flat_map(|r| (0..n).map(move |i| (r, i))).collect();
            prop_assert_eq!(&l.seen, &expected);
            prop_assert_eq!(report.consumed.len(), expected.len());
            let bound = if async_mode { s } else { n as u64 - 1 };
            prop_assert!(max_seen.load(Ordering::SeqCst) <= bound);
            for c in &report.consumed {
                prop_assert_eq!(c.version, cfg.generation_version(c.round));
                prop_assert_eq!(c.staleness, c.learner_version - c.version);
            }
            if !async_mode {
                // Sync: minibatch i of a round has staleness i.
                prop_assert!(report.consumed.iter().all(|c| c.staleness == c.minibatch as u64));
            }
        }
    }

    #[test]
    fn async_overlaps_generation_and_learning() {
        let cfg = config(LoopMode::Async, 6, 1, 1);
        let mut g = Gen {
            n: 1,
            delays_us: vec![20_000],
            made: 0,
            fail_at: None,
        };
        let mut l = Learn {
            version: 0,
            delays_us: vec![20_000],
            seen: vec![],
            max_seen_staleness: Arc::default(),
        };
        let report = run(&cfg, &mut g, &mut l).unwrap();
        // Sequentially 6 × 40 ms; overlapped about 7 × 20 ms.
        assert!(report.wall_seconds < 0.2, "{}", report.wall_seconds);
        assert_eq!(report.max_staleness(), 1);
    }

    #[test]
    fn a_generator_error_stops_the_run_with_that_error() {
        for mode in [LoopMode::Sync, LoopMode::Async] {
            let cfg = config(mode, 5, 2, 3);
            let mut g = Gen {
                n: 2,
                delays_us: vec![100],
                made: 0,
                fail_at: Some(2),
            };
            let mut l = Learn {
                version: 0,
                delays_us: vec![100],
                seen: vec![],
                max_seen_staleness: Arc::default(),
            };
            let e = run(&cfg, &mut g, &mut l).unwrap_err().to_string();
            assert!(e.contains("generator failed at round 2"), "{mode}: {e}");
        }
    }

    #[test]
    fn staleness_below_n_minus_one_is_refused() {
        assert!(config(LoopMode::Async, 1, 4, 2).validate().is_err());
        assert!(config(LoopMode::Async, 1, 4, 3).validate().is_ok());
        assert_eq!(config(LoopMode::Async, 9, 2, 3).generation_version(3), 4);
        assert_eq!(config(LoopMode::Sync, 9, 2, 3).generation_version(3), 6);
    }
}
