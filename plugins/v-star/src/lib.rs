//! lmlab plugin `v-star`: V-STaR (Hosseini et al., 2024, "V-STaR: Training Verifiers for
//! Self-Taught Reasoners") and its baselines, in one scheduler.
//!
//! For each seed, from a freshly initialised base model `G_base`:
//!
//! 1. **SFT.** `G_SFT ← SFT(G_base, D_SFT)` on the reference solutions.
//! 2. **Iterations** `t = 1..T` (STaR†, the generator side of V-STaR):
//!    `G^t ← SFT(G_base, D_GEN)` (always from the base; `G^1 = G_SFT`), sample `k` solutions
//!    per query problem, label each with the task's checker, add the correct ones to `D_GEN`
//!    and all of them to `D_VER`.
//! 3. **Verifier.** `V ← DPO(G_SFT, D_pref)` with reference `G_SFT`, where `D_pref` holds, for
//!    each problem, every pair in {correct} × {incorrect} of `D_VER`.
//! 4. **Test.** Sample `N` candidates per test problem from the final generator `G^T` and rank
//!    them by `log V(ŷ|x)`.
//!
//! Baselines with the same sample budget, in the same run: SFT pass@1; RFT (one round: `T·k`
//! samples per problem from `G_SFT` at once, a generator fine-tuned on the correct ones, pass@1);
//! STaR pass@1 (`G^T`); majority vote over `G^T`'s candidates; an outcome-supervised reward
//! model (ORM: `G_SFT` with a value head, trained with binary cross-entropy on `D_VER`'s labels)
//! ranking `G^T`'s candidates; and V-STaR[1 round] (a verifier trained by DPO on the one-round
//! samples only, ranking the RFT generator's candidates).
//!
//! Best-of-k, majority@k and pass@k come from [`lmlab_sdk::metrics`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lmlab_sdk::burn::module::Module;
use lmlab_sdk::burn::tensor::{Device, Tensor, TensorData};
use lmlab_sdk::components::lm_sft::{ModelSize, TokenizerConfig, prompt_text, training_text};
use lmlab_sdk::lm::fit::{Pair, final_values, fit_sft, in_chunks, response_logprobs};
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::lm::{Llama, LlamaConfig, Tokenizer};
use lmlab_sdk::metrics::{best_of_k, majority_at_k, mean_std, pass_at_k};
use lmlab_sdk::plot::{Series, line_plot};
use lmlab_sdk::rng::{Rng, rng};
use lmlab_sdk::tasks::{TextProblem, TextTask, answers_equal, final_answer};
pub use lmlab_sdk::train::Stage;
use lmlab_sdk::train::{LrSchedule, OptimConfig, Trainer, finite_loss};
use lmlab_sdk::{Components, Objective, Policy, RunContext, SamplingParams, Scheduler, TensorMap};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const WHO: &str = "scheduler `v-star`";

/// Configuration of `v-star`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VStarConfig {
    /// Training seeds (added to the recipe's seed); results are mean ± std over them.
    pub seeds: Vec<u64>,
    /// T: self-improvement iterations.
    pub rounds: usize,
    /// k: solutions sampled per query problem in each iteration.
    pub samples_per_problem: usize,
    /// N: candidates sampled per test problem for Best-of-k.
    pub candidates: usize,
    /// D_SFT: this many training problems, with their reference solutions.
    pub sft_problems: usize,
    /// D_query: this many training problems are sampled in each iteration (the first
    /// `sft_problems` of them are D_SFT's).
    pub query_problems: usize,
    /// Test problems (from the task's test split).
    pub test_problems: usize,
    /// Sampling temperature (training-time and test-time samples).
    pub temperature: f32,
    pub max_new_tokens: usize,
    /// Sequences generated (or scored) per batch.
    pub sample_batch: usize,
    /// Random k-subsets per problem for majority vote@k.
    pub majority_subsets: usize,
    pub model: ModelSize,
    pub tokenizer: TokenizerConfig,
    /// Every generator fine-tuning (SFT, RFT, each iteration), always from the base model.
    pub generator: Stage,
    /// The DPO verifier (from `G_SFT`).
    pub verifier: Stage,
    /// The outcome-supervised reward model (from `G_SFT` with a value head).
    pub orm: Stage,
}

impl Default for VStarConfig {
    fn default() -> Self {
        let fine_tune = |lr: f64, batch_size: usize| Stage {
            steps: 600,
            batch_size,
            optim: OptimConfig {
                lr,
                warmup_steps: 20,
                schedule: LrSchedule::Cosine,
                min_lr_ratio: 0.1,
                ..OptimConfig::default()
            },
        };
        Self {
            seeds: vec![0, 1, 2],
            rounds: 3,
            samples_per_problem: 16,
            candidates: 64,
            sft_problems: 4000,
            query_problems: 500,
            test_problems: 100,
            temperature: 0.6,
            max_new_tokens: 32,
            sample_batch: 256,
            majority_subsets: 256,
            model: ModelSize {
                dim: 64,
                n_layers: 3,
                n_heads: 4,
                n_kv_heads: 2,
                hidden_dim: 176,
                max_seq_len: 128,
            },
            tokenizer: TokenizerConfig::default(),
            generator: Stage::default(),
            verifier: fine_tune(3e-4, 16),
            orm: fine_tune(1e-3, 32),
        }
    }
}

/// One sampled solution.
#[derive(Clone, Debug)]
struct Sample {
    /// Index of the problem in its list.
    problem: usize,
    ids: Vec<u32>,
    correct: bool,
    answer: Option<String>,
}

/// The k values of the table: powers of two up to N.
pub fn ks(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |k| Some(k * 2))
        .take_while(|&k| k <= n)
        .collect()
}

/// A canonical form of a final answer for voting: numbers as numbers (`6.0` and `06` vote
/// together), anything else as written.
fn vote_key(text: &str) -> Option<String> {
    let a = final_answer(text)?;
    Some(match a.parse::<f64>() {
        Ok(x) if x.is_finite() => format!("{x}"),
        _ => a,
    })
}

/// The scheduler.
pub struct VStar {
    config: VStarConfig,
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Method → value at each k of [`ks`].
    pub curves: BTreeMap<String, Vec<f64>>,
    /// Pass@1 (mean fraction of correct candidates) per generator.
    pub pass1: BTreeMap<String, f64>,
    /// Fraction of correct training samples per iteration.
    pub train_accuracy: Vec<f64>,
    /// Size of D_GEN after each iteration, and of D_pref.
    pub d_gen: Vec<usize>,
    pub d_pref: usize,
    pub d_pref_one_round: usize,
    pub verifier_accuracy: Option<f64>,
    /// How each training stage went.
    pub fits: Vec<FitSummary>,
    pub seconds: f64,
}

/// Method names, in table order.
pub const SFT: &str = "SFT";
pub const RFT: &str = "RFT";
pub const STAR: &str = "STaR";
pub const MAJORITY: &str = "majority vote";
pub const ORM: &str = "ORM Best-of-k";
pub const VSTAR1: &str = "V-STaR[1 round] Best-of-k";
pub const VSTAR: &str = "V-STaR Best-of-k";
pub const ORACLE: &str = "pass@k (STaR generator, oracle)";
pub const UNTRAINED: &str = "G_SFT log-likelihood Best-of-k (the verifier before DPO)";

struct Ctx<'a> {
    cfg: &'a VStarConfig,
    task: &'a TextTask,
    tokenizer: &'a Tokenizer,
    config: LlamaConfig,
    device: Device,
    train_device: Device,
    sft_objective: &'a dyn Objective,
    dpo_objective: &'a dyn Objective,
    bce_objective: &'a dyn Objective,
    quiet: bool,
    /// Per training stage of the current seed: (stage, loss at the start, loss at the end,
    /// accuracy at the end), each a mean over 20 steps.
    fits: std::cell::RefCell<Vec<FitSummary>>,
}

/// How one training stage went: mean loss over its first and last 20 steps, and the mean
/// accuracy (pairs ranked right for DPO, labels predicted for the ORM) over its last 20.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FitSummary {
    pub stage: String,
    pub loss_start: f64,
    pub loss_end: f64,
    pub accuracy_end: Option<f64>,
}

fn summarise(stage: &str, losses: &[f64], accs: &[f64]) -> FitSummary {
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
    let n = 20.min(losses.len());
    FitSummary {
        stage: stage.to_string(),
        loss_start: mean(&losses[..n]),
        loss_end: mean(&losses[losses.len() - n..]),
        accuracy_end: (!accs.is_empty()).then(|| mean(&accs[accs.len() - 20.min(accs.len())..])),
    }
}

impl Ctx<'_> {
    fn record(&self, stage: &str, losses: &[f64], accs: &[f64]) {
        // Stage names without the "seed N: " prefix of the progress bars.
        let stage = stage.split_once(": ").map_or(stage, |(_, s)| s);
        let f = summarise(stage, losses, accs);
        tracing::info!(stage, loss_start = format!("{:.4}", f.loss_start), loss_end = format!("{:.4}", f.loss_end), accuracy_end = ?f.accuracy_end, "trained");
        self.fits.borrow_mut().push(f);
    }

    fn prompt_ids(&self, p: &TextProblem) -> Vec<u32> {
        self.tokenizer.encode(&prompt_text(p), true)
    }

    /// `n` samples per problem from `model` (inference copy), checked by the task.
    fn sample(
        &self,
        model: &Llama,
        problems: &[TextProblem],
        n: usize,
        seed: u64,
        what: &str,
    ) -> anyhow::Result<Vec<Sample>> {
        let mut policy = LmPolicy {
            model: model.clone(),
            tokenizer: self.tokenizer.clone(),
            device: self.device.clone(),
        };
        let per_call = (self.cfg.sample_batch / n.max(1)).max(1);
        let pb = lmlab_sdk::progress::bar(problems.len() as u64, what, self.quiet);
        let mut out = Vec::with_capacity(problems.len() * n);
        for (c, chunk) in problems.chunks(per_call).enumerate() {
            let prompts: Vec<String> = chunk.iter().map(prompt_text).collect();
            let params = SamplingParams {
                temperature: self.cfg.temperature,
                max_new_tokens: self.cfg.max_new_tokens,
                n,
                seed: seed.wrapping_mul(1_000_003).wrapping_add(c as u64),
                ..Default::default()
            };
            let done = c * per_call;
            for (i, completions) in policy.generate(&prompts, &params)?.into_iter().enumerate() {
                let p = &chunk[i];
                for comp in completions {
                    out.push(Sample {
                        problem: done + i,
                        correct: self.task.check(p, &comp.text),
                        answer: vote_key(&comp.text),
                        ids: comp.token_ids,
                    });
                }
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        Ok(out)
    }

    fn pairs(&self, problems: &[TextProblem], samples: &[Sample]) -> Vec<Pair> {
        samples
            .iter()
            .map(|s| (self.prompt_ids(&problems[s.problem]), s.ids.clone()))
            .collect()
    }

    /// SFT from `base` on `data`.
    fn train_generator(
        &self,
        base: &Llama,
        data: &[Pair],
        r: &mut Rng,
        what: &str,
    ) -> anyhow::Result<Llama> {
        let st = &self.cfg.generator;
        let pb = lmlab_sdk::progress::bar(st.steps, what, self.quiet);
        let (model, losses) = fit_sft(
            base.clone(),
            self.sft_objective,
            data,
            st,
            self.tokenizer.pad(),
            &self.train_device,
            r,
            &pb,
            &format!("{WHO}: the {what}"),
        )?;
        pb.finish_and_clear();
        self.record(what, &losses, &[]);
        Ok(model)
    }

    /// Sequence log-probs of `pairs` under `model` (inference).
    fn score_logprobs(&self, model: &Llama, pairs: &[Pair]) -> anyhow::Result<Vec<f32>> {
        in_chunks(pairs, self.cfg.sample_batch, |c| {
            Ok(response_logprobs(
                model,
                c,
                self.tokenizer.pad(),
                &self.device,
            ))
        })
    }

    /// DPO from `init` (reference = `init`) on every {correct} × {incorrect} pair of each
    /// problem; returns the verifier and the number of pairs.
    fn train_verifier(
        &self,
        init: &Llama,
        pairs: &[Pair],
        samples: &[Sample],
        reference: &[f32],
        r: &mut Rng,
        what: &str,
    ) -> anyhow::Result<(Llama, usize, Option<f64>)> {
        let mut by_problem: BTreeMap<usize, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            let e = by_problem.entry(s.problem).or_default();
            if s.correct { e.0.push(i) } else { e.1.push(i) }
        }
        let prefs: Vec<(usize, usize)> = by_problem
            .values()
            .flat_map(|(c, w)| c.iter().flat_map(move |&a| w.iter().map(move |&b| (a, b))))
            .collect();
        let st = &self.cfg.verifier;
        let mut trainer = Trainer::new(init.clone(), st.optim.clone(), st.steps);
        if prefs.is_empty() {
            tracing::warn!(
                "{what}: no problem has both a correct and an incorrect sample; the verifier stays G_SFT"
            );
            return Ok((init.clone(), 0, None));
        }
        let pb = lmlab_sdk::progress::bar(st.steps, what, self.quiet);
        let mut acc = Vec::new();
        let mut losses = Vec::new();
        let b = st.batch_size.max(1);
        while trainer.step < st.steps {
            let chosen: Vec<(usize, usize)> = (0..b)
                .map(|_| prefs[r.random_range(0..prefs.len())])
                .collect();
            let seqs: Vec<Pair> = chosen
                .iter()
                .map(|&(c, _)| pairs[c].clone())
                .chain(chosen.iter().map(|&(_, w)| pairs[w].clone()))
                .collect();
            let lp = response_logprobs(
                &trainer.model,
                &seqs,
                self.tokenizer.pad(),
                &self.train_device,
            );
            let t1 =
                |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), &self.train_device);
            let batch = TensorMap::new()
                .with("policy_chosen", lp.clone().narrow(0, 0, b))
                .with("policy_rejected", lp.narrow(0, b, b))
                .with(
                    "reference_chosen",
                    t1(chosen.iter().map(|&(c, _)| reference[c]).collect()),
                )
                .with(
                    "reference_rejected",
                    t1(chosen.iter().map(|&(_, w)| reference[w]).collect()),
                );
            let out = self.dpo_objective.loss(&batch)?;
            losses.push(finite_loss(
                &out.loss,
                &format!("{WHO}: the {what}"),
                trainer.step,
            )?);
            if let Some((_, a)) = out.metrics.iter().find(|(n, _)| n == "accuracy") {
                acc.push(*a);
            }
            trainer.step(out.loss);
            pb.inc(1);
        }
        pb.finish_and_clear();
        self.record(what, &losses, &acc);
        let tail = &acc[acc.len().saturating_sub(20)..];
        let accuracy = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        Ok((trainer.model, prefs.len(), Some(accuracy)))
    }

    /// The ORM: `init` with a fresh value head, BCE on the samples' labels.
    fn train_orm(
        &self,
        init: &Llama,
        pairs: &[Pair],
        samples: &[Sample],
        r: &mut Rng,
    ) -> anyhow::Result<Llama> {
        let st = &self.cfg.orm;
        let model = init.clone().with_value_head(r, &self.train_device);
        let mut trainer = Trainer::new(model, st.optim.clone(), st.steps);
        let pb = lmlab_sdk::progress::bar(st.steps, "ORM", self.quiet);
        let b = st.batch_size.max(1);
        let (mut losses, mut accs) = (Vec::new(), Vec::new());
        while trainer.step < st.steps {
            let idx: Vec<usize> = (0..b).map(|_| r.random_range(0..pairs.len())).collect();
            let seqs: Vec<Pair> = idx.iter().map(|&i| pairs[i].clone()).collect();
            let labels: Vec<f32> = idx
                .iter()
                .map(|&i| samples[i].correct as u8 as f32)
                .collect();
            let logits = final_values(
                &trainer.model,
                &seqs,
                self.tokenizer.pad(),
                &self.train_device,
            )?;
            let labels = Tensor::<1>::from_data(TensorData::new(labels, [b]), &self.train_device);
            let out = self.bce_objective.loss(
                &TensorMap::new()
                    .with("logits", logits)
                    .with("labels", labels),
            )?;
            losses.push(finite_loss(
                &out.loss,
                &format!("{WHO}: the ORM"),
                trainer.step,
            )?);
            if let Some((_, a)) = out.metrics.iter().find(|(n, _)| n == "accuracy") {
                accs.push(*a);
            }
            trainer.step(out.loss);
            pb.inc(1);
        }
        pb.finish_and_clear();
        self.record("ORM", &losses, &accs);
        Ok(trainer.model)
    }
}

/// Mean over problems of Best-of-k by `scores` (one per sample, in `samples`' order).
fn mean_best_of_k(groups: &[Vec<usize>], scores: &[f32], samples: &[Sample], k: usize) -> f64 {
    let vals: Vec<f64> = groups
        .iter()
        .filter_map(|g| {
            let s: Vec<f32> = g.iter().map(|&i| scores[i]).collect();
            let c: Vec<bool> = g.iter().map(|&i| samples[i].correct).collect();
            best_of_k(&s, &c, k)
        })
        .collect();
    vals.iter().sum::<f64>() / vals.len().max(1) as f64
}

fn groups(n_problems: usize, samples: &[Sample]) -> Vec<Vec<usize>> {
    let mut g = vec![Vec::new(); n_problems];
    for (i, s) in samples.iter().enumerate() {
        g[s.problem].push(i);
    }
    g
}

fn pass1(samples: &[Sample]) -> f64 {
    samples.iter().filter(|s| s.correct).count() as f64 / samples.len().max(1) as f64
}

impl VStar {
    fn run_seed(
        &self,
        c: &Ctx,
        seed: u64,
        train: &[TextProblem],
        test: &[TextProblem],
    ) -> anyhow::Result<SeedResult> {
        let cfg = &self.config;
        let started = std::time::Instant::now();
        let mut r = rng(seed, 11);
        let base = Llama::init(c.config.clone(), &mut rng(seed, 1), &c.train_device)
            .map_err(|e| anyhow::anyhow!("{WHO}: model: {e}"))?;
        let sft_set = &train[..cfg.sft_problems.min(train.len())];
        let queries = &train[..cfg.query_problems.min(train.len())];
        let d_sft: Vec<Pair> = sft_set
            .iter()
            .map(|p| {
                let mut resp = c.tokenizer.encode(&p.solution, false);
                resp.push(c.tokenizer.eos());
                (c.prompt_ids(p), resp)
            })
            .collect();
        let mut res = SeedResult {
            seed,
            ..Default::default()
        };
        let tag = |s: &str| format!("seed {seed}: {s}");
        let mut lap = std::time::Instant::now();
        let mut done = |stage: &str| {
            tracing::info!(
                seed,
                stage,
                seconds = format!("{:.1}", lap.elapsed().as_secs_f64()),
                "done"
            );
            lap = std::time::Instant::now();
        };

        // 1. G_SFT.
        let g_sft = c.train_generator(&base, &d_sft, &mut r, &tag("SFT"))?;
        let g_sft_inf = g_sft.valid();
        done("SFT");

        // One round: T·k samples per query problem from G_SFT (its first k per problem are
        // iteration 1's samples).
        let (k, t) = (cfg.samples_per_problem, cfg.rounds);
        let one_round = c.sample(
            &g_sft_inf,
            queries,
            k * t,
            seed * 100 + 1,
            &tag("sampling (SFT)"),
        )?;
        let one_round_pairs = c.pairs(queries, &one_round);
        done("sampling T·k per problem from G_SFT");
        let one_round_ref = c.score_logprobs(&g_sft_inf, &one_round_pairs)?;
        done("reference log-probs");

        // RFT: one fine-tuning on D_SFT ∪ the correct one-round samples.
        let rft_data: Vec<Pair> = d_sft
            .iter()
            .cloned()
            .chain(
                one_round
                    .iter()
                    .zip(&one_round_pairs)
                    .filter(|(s, _)| s.correct)
                    .map(|(_, p)| p.clone()),
            )
            .collect();
        let g_rft = c.train_generator(&base, &rft_data, &mut r, &tag("RFT"))?;
        done("RFT");

        // 2. Iterations (STaR†).
        let mut d_gen = d_sft.clone();
        let mut d_ver: Vec<Sample> = Vec::new();
        let mut d_ver_pairs: Vec<Pair> = Vec::new();
        let mut d_ver_ref: Vec<f32> = Vec::new();
        let mut g_t = g_sft.clone();
        for round in 1..=t {
            let (samples, pairs, reference) = if round == 1 {
                let keep: Vec<usize> = (0..one_round.len()).filter(|i| i % (k * t) < k).collect();
                (
                    keep.iter()
                        .map(|&i| one_round[i].clone())
                        .collect::<Vec<_>>(),
                    keep.iter()
                        .map(|&i| one_round_pairs[i].clone())
                        .collect::<Vec<_>>(),
                    keep.iter().map(|&i| one_round_ref[i]).collect::<Vec<_>>(),
                )
            } else {
                g_t =
                    c.train_generator(&base, &d_gen, &mut r, &tag(&format!("generator {round}")))?;
                let inf = g_t.valid();
                let s = c.sample(
                    &inf,
                    queries,
                    k,
                    seed * 100 + round as u64,
                    &tag(&format!("sampling ({round})")),
                )?;
                let p = c.pairs(queries, &s);
                let reference = c.score_logprobs(&g_sft_inf, &p)?;
                (s, p, reference)
            };
            res.train_accuracy.push(pass1(&samples));
            d_gen.extend(
                samples
                    .iter()
                    .zip(&pairs)
                    .filter(|(s, _)| s.correct)
                    .map(|(_, p)| p.clone()),
            );
            res.d_gen.push(d_gen.len());
            // Sample indices are per query problem; they stay valid in D_VER.
            d_ver.extend(samples);
            d_ver_pairs.extend(pairs);
            d_ver_ref.extend(reference);
            done(&format!("iteration {round}"));
        }

        // 3. Verifiers and the ORM, all from G_SFT.
        let (v, n_pref, v_acc) = c.train_verifier(
            &g_sft,
            &d_ver_pairs,
            &d_ver,
            &d_ver_ref,
            &mut r,
            &tag("DPO verifier"),
        )?;
        let (v1, n_pref1, _) = c.train_verifier(
            &g_sft,
            &one_round_pairs,
            &one_round,
            &one_round_ref,
            &mut r,
            &tag("DPO verifier [1 round]"),
        )?;
        let orm = c.train_orm(&g_sft, &d_ver_pairs, &d_ver, &mut r)?;
        res.d_pref = n_pref;
        res.d_pref_one_round = n_pref1;
        res.verifier_accuracy = v_acc;
        done("verifiers and ORM");

        // 4. Test candidates and scores.
        let n = cfg.candidates;
        let cand_sft = c.sample(&g_sft_inf, test, n, seed * 100 + 51, &tag("test (SFT)"))?;
        let cand_rft = c.sample(&g_rft.valid(), test, n, seed * 100 + 52, &tag("test (RFT)"))?;
        let cand = c.sample(&g_t.valid(), test, n, seed * 100 + 53, &tag("test (STaR)"))?;
        let pairs_rft = c.pairs(test, &cand_rft);
        let pairs = c.pairs(test, &cand);
        let v_scores = c.score_logprobs(&v.valid(), &pairs)?;
        let g_sft_scores = c.score_logprobs(&g_sft_inf, &pairs)?;
        let v1_scores = c.score_logprobs(&v1.valid(), &pairs_rft)?;
        let orm_inf = orm.valid();
        let orm_scores = in_chunks(&pairs, cfg.sample_batch, |ch| {
            final_values(&orm_inf, ch, c.tokenizer.pad(), &c.device)
        })?;

        done("test candidates and scores");
        res.pass1.insert(SFT.into(), pass1(&cand_sft));
        res.pass1.insert(RFT.into(), pass1(&cand_rft));
        res.pass1.insert(STAR.into(), pass1(&cand));
        let g = groups(test.len(), &cand);
        let g_rft_groups = groups(test.len(), &cand_rft);
        for &kk in &ks(n) {
            let push = |res: &mut SeedResult, name: &str, v: f64| {
                res.curves.entry(name.into()).or_default().push(v)
            };
            push(&mut res, VSTAR, mean_best_of_k(&g, &v_scores, &cand, kk));
            push(
                &mut res,
                VSTAR1,
                mean_best_of_k(&g_rft_groups, &v1_scores, &cand_rft, kk),
            );
            push(
                &mut res,
                UNTRAINED,
                mean_best_of_k(&g, &g_sft_scores, &cand, kk),
            );
            push(&mut res, ORM, mean_best_of_k(&g, &orm_scores, &cand, kk));
            let maj: Vec<f64> = g
                .iter()
                .enumerate()
                .filter_map(|(pi, idx)| {
                    let answers: Vec<Option<String>> =
                        idx.iter().map(|&i| cand[i].answer.clone()).collect();
                    let truth = &test[pi].answer;
                    majority_at_k(
                        &answers,
                        |a| answers_equal(a, truth),
                        kk,
                        cfg.majority_subsets,
                        seed * 7919 + pi as u64,
                    )
                })
                .collect();
            push(
                &mut res,
                MAJORITY,
                maj.iter().sum::<f64>() / maj.len().max(1) as f64,
            );
            let oracle: Vec<f64> = g
                .iter()
                .filter_map(|idx| {
                    pass_at_k(
                        idx.len(),
                        idx.iter().filter(|&&i| cand[i].correct).count(),
                        kk,
                    )
                })
                .collect();
            push(
                &mut res,
                ORACLE,
                oracle.iter().sum::<f64>() / oracle.len().max(1) as f64,
            );
        }
        res.fits = c.fits.take();
        res.seconds = started.elapsed().as_secs_f64();
        Ok(res)
    }
}

impl Scheduler for VStar {
    fn run(&mut self, ctx: &mut RunContext, parts: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = parts.take("task", WHO)?;
        let sft_objective: Box<dyn Objective> = parts.take("objective", WHO)?;
        let dpo_objective: Box<dyn Objective> = parts.take("verifier_objective", WHO)?;
        let bce_objective: Box<dyn Objective> = parts.take("orm_objective", WHO)?;
        let (train, test) = lmlab_sdk::task::train_and_test(task.as_ref(), WHO)?;
        anyhow::ensure!(
            train.len() >= cfg.query_problems.max(cfg.sft_problems),
            "{WHO}: the task's training split has {} problems; `query_problems` and `sft_problems` need {}",
            train.len(),
            cfg.query_problems.max(cfg.sft_problems)
        );
        let test: Vec<TextProblem> = test.into_iter().take(cfg.test_problems).collect();
        anyhow::ensure!(!test.is_empty(), "{WHO}: no test problems");
        let texts: Vec<String> = train.iter().map(training_text).collect();
        let tokenizer = cfg.tokenizer.build(&texts)?;
        let config = cfg.model.llama_config(tokenizer.vocab_size());
        let params = config.num_params();
        let c = Ctx {
            cfg: &cfg,
            task: task.as_ref(),
            tokenizer: &tokenizer,
            config,
            device: ctx.device.clone(),
            train_device: ctx.device.clone().autodiff(),
            sft_objective: sft_objective.as_ref(),
            dpo_objective: dpo_objective.as_ref(),
            bce_objective: bce_objective.as_ref(),
            quiet: ctx.quiet,
            fits: Default::default(),
        };

        // Seeds already finished (a resumed run) are read back, not recomputed.
        let mut results: Vec<SeedResult> = if ctx.resume {
            ctx.run.logged_results("seed")?
        } else {
            Vec::new()
        };
        let mut computed = 0;
        for &s in &cfg.seeds {
            let seed = ctx.seed.wrapping_add(s);
            if results.iter().any(|r| r.seed == seed) {
                tracing::info!(seed, "already done (resumed run)");
                continue;
            }
            let res = self.run_seed(&c, seed, &train, &test)?;
            tracing::info!(seed, seconds = res.seconds, "seed done");
            ctx.log(serde_json::json!({ "stage": "seed", "seed": seed, "result": res }))?;
            results.push(res);
            computed += 1;
        }
        results.sort_by_key(|r| r.seed);
        self.report(ctx, &results, computed, params, train.len(), test.len())
    }
}

impl VStar {
    fn report(
        &self,
        ctx: &mut RunContext,
        results: &[SeedResult],
        computed: usize,
        params: usize,
        n_train: usize,
        n_test: usize,
    ) -> anyhow::Result<()> {
        let cfg = &self.config;
        let kk = ks(cfg.candidates);
        let stat = |f: &dyn Fn(&SeedResult) -> f64| -> (f64, f64) {
            mean_std(&results.iter().map(f).collect::<Vec<_>>())
        };
        let curve = |name: &str, i: usize| {
            stat(&|r: &SeedResult| {
                r.curves
                    .get(name)
                    .and_then(|v| v.get(i))
                    .copied()
                    .unwrap_or(f64::NAN)
            })
        };
        let pm = |(m, s): (f64, f64)| format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s);
        let methods = [VSTAR, VSTAR1, UNTRAINED, ORM, MAJORITY, ORACLE];

        // Plot: Best-of-k vs k for every method, pass@1 baselines as flat lines.
        let mut series: Vec<Series> = methods
            .iter()
            .map(|&name| Series {
                name,
                points: kk
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| ((k as f64).log2(), curve(name, i).0))
                    .collect(),
            })
            .collect();
        for name in [SFT, RFT, STAR] {
            let (m, _) = stat(&|r: &SeedResult| r.pass1[name]);
            series.push(Series {
                name: match name {
                    SFT => "SFT pass@1",
                    RFT => "RFT pass@1",
                    _ => "STaR pass@1",
                },
                points: kk.iter().map(|&k| ((k as f64).log2(), m)).collect(),
            });
        }
        line_plot(
            &ctx.run.plots_dir().join("best_of_k.svg"),
            "Best-of-k on held-out problems (mean over seeds)",
            "log2 k",
            "accuracy",
            &series,
        )?;

        let mut s = String::new();
        writeln!(
            s,
            "# {} — V-STaR: verifiers for self-taught reasoners\n",
            ctx.recipe
        )?;
        writeln!(
            s,
            "Model: Llama, {params} parameters, trained from scratch (G_base is a random initialisation). {} training problems ({} with reference solutions in D_SFT, {} sampled per iteration), {} held-out test problems. T = {}, k = {}, N = {}, temperature {}. Seeds: {} ({} s per seed on average).\n",
            n_train,
            cfg.sft_problems,
            cfg.query_problems,
            n_test,
            cfg.rounds,
            cfg.samples_per_problem,
            cfg.candidates,
            cfg.temperature,
            results
                .iter()
                .map(|r| r.seed.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            (results.iter().map(|r| r.seconds).sum::<f64>() / results.len().max(1) as f64).round(),
        )?;
        writeln!(
            s,
            "Differences from the paper, all of scale: the base model is a random initialisation trained from scratch (not a pretrained LLaMA 2), fine-tuning updates every weight (not LoRA), each iteration samples the first {} of the training problems (the paper samples all of them), and the task is generated arithmetic rather than GSM8K or MBPP. The algorithm, the DPO loss, the verifier's score (log V(ŷ|x)) and the metrics follow the paper. Pass@1 is the fraction of correct candidates among the N samples; majority vote@k averages {} random k-subsets per problem.\n",
            cfg.query_problems, cfg.majority_subsets
        )?;
        writeln!(s, "## Pass@1 (mean ± std over seeds, %)\n")?;
        writeln!(s, "| generator | pass@1 |\n|---|---|")?;
        for name in [SFT, RFT, STAR] {
            writeln!(
                s,
                "| {name} | {} |",
                pm(stat(&|r: &SeedResult| r.pass1[name]))
            )?;
        }
        writeln!(s, "\n## Best-of-k (mean ± std over seeds, %)\n")?;
        write!(s, "| method |")?;
        for k in &kk {
            write!(s, " k = {k} |")?;
        }
        writeln!(s, "\n|---|{}", "---|".repeat(kk.len()))?;
        for name in methods {
            write!(s, "| {name} |")?;
            for i in 0..kk.len() {
                write!(s, " {} |", pm(curve(name, i)))?;
            }
            writeln!(s)?;
        }
        writeln!(
            s,
            "\n## Training (mean over seeds; loss over the first and last 20 steps)\n"
        )?;
        writeln!(
            s,
            "| stage | loss at start | loss at end | accuracy at end |\n|---|---|---|---|"
        )?;
        if let Some(first) = results.first() {
            for (i, f) in first.fits.iter().enumerate() {
                let get = |g: &dyn Fn(&FitSummary) -> f64| {
                    stat(&|r: &SeedResult| r.fits.get(i).map_or(f64::NAN, g)).0
                };
                let acc = get(&|f: &FitSummary| f.accuracy_end.unwrap_or(f64::NAN));
                writeln!(
                    s,
                    "| {} | {:.4} | {:.4} | {} |",
                    f.stage,
                    get(&|f: &FitSummary| f.loss_start),
                    get(&|f: &FitSummary| f.loss_end),
                    if acc.is_nan() {
                        "".to_string()
                    } else {
                        format!("{:.1}%", 100.0 * acc)
                    }
                )?;
            }
        }
        writeln!(s, "\n## Data\n")?;
        writeln!(
            s,
            "| seed | correct training samples per iteration | D_GEN size per iteration | D_pref pairs | D_pref pairs [1 round] | verifier pair accuracy (last 20 steps) | seconds |\n|---|---|---|---|---|---|---|"
        )?;
        for r in results {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} |",
                r.seed,
                r.train_accuracy
                    .iter()
                    .map(|a| format!("{:.1}%", 100.0 * a))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.d_gen
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.d_pref,
                r.d_pref_one_round,
                r.verifier_accuracy
                    .map_or("no pairs".to_string(), |a| format!("{a:.2}")),
                r.seconds
            )?;
        }

        // The paper's qualitative claims, tested on these numbers.
        let last = kk.len() - 1;
        let kmax = kk[last];
        let at = |name: &'static str, i: usize| {
            move |r: &SeedResult| {
                r.curves
                    .get(name)
                    .and_then(|v| v.get(i))
                    .copied()
                    .unwrap_or(f64::NAN)
            }
        };
        let p1 = |name: &'static str| {
            move |r: &SeedResult| r.pass1.get(name).copied().unwrap_or(f64::NAN)
        };
        let (vstar_n, _) = curve(VSTAR, last);
        let (orm_n, _) = curve(ORM, last);
        let best_k = |name: &str| {
            (0..kk.len())
                .map(|i| curve(name, i).0)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let rises = curve(VSTAR, last).0 >= curve(VSTAR, 0).0;
        let orm_flat =
            orm_n < best_k(ORM) || (orm_n - curve(ORM, 0).0) < (vstar_n - curve(VSTAR, 0).0);
        let verdict = |b: bool| if b { "holds" } else { "does not hold" };
        writeln!(s, "\n## The paper's claims at this scale\n")?;
        writeln!(
            s,
            "A comparison \"holds\" when the mean over seeds of the paired difference is positive; \"within seed noise\" marks a mean difference no larger than its standard deviation over seeds.\n"
        )?;
        writeln!(
            s,
            "| claim | measured (mean over seeds) | paired difference | verdict |\n|---|---|---|---|"
        )?;
        let claims: [(
            String,
            Box<dyn Fn(&SeedResult) -> f64>,
            Box<dyn Fn(&SeedResult) -> f64>,
        ); 4] = [
            (
                format!("V-STaR Best-of-{kmax} beats STaR pass@1"),
                Box::new(at(VSTAR, last)),
                Box::new(p1(STAR)),
            ),
            (
                format!("V-STaR Best-of-{kmax} beats majority vote@{kmax}"),
                Box::new(at(VSTAR, last)),
                Box::new(at(MAJORITY, last)),
            ),
            (
                format!("V-STaR Best-of-{kmax} beats ORM Best-of-{kmax}"),
                Box::new(at(VSTAR, last)),
                Box::new(at(ORM, last)),
            ),
            (
                format!("iterating beats one round (V-STaR vs V-STaR[1 round], Best-of-{kmax})"),
                Box::new(at(VSTAR, last)),
                Box::new(at(VSTAR1, last)),
            ),
        ];
        for (claim, a, b) in &claims {
            let (ma, _) = stat(&|r: &SeedResult| a(r));
            let (mb, _) = stat(&|r: &SeedResult| b(r));
            let (md, sd) = stat(&|r: &SeedResult| a(r) - b(r));
            let noise = if results.len() > 1 && md.abs() <= sd {
                " (within seed noise)"
            } else {
                ""
            };
            writeln!(
                s,
                "| {claim} | {:.1}% vs {:.1}% | {:+.1} ± {:.1} points | {}{noise} |",
                100.0 * ma,
                100.0 * mb,
                100.0 * md,
                100.0 * sd,
                verdict(md > 0.0)
            )?;
        }
        writeln!(
            s,
            "| verifier Best-of-k rises with k where the ORM flattens | V-STaR {:.1}% → {:.1}%, ORM {:.1}% → {:.1}% (best {:.1}%) from k = 1 to {kmax} | | {} |",
            100.0 * curve(VSTAR, 0).0,
            100.0 * vstar_n,
            100.0 * curve(ORM, 0).0,
            100.0 * orm_n,
            100.0 * best_k(ORM),
            verdict(rises && orm_flat)
        )?;
        // Not a claim of the paper: whether DPO training helped the verifier at all.
        let (md, sd) = stat(&|r: &SeedResult| at(VSTAR, last)(r) - at(UNTRAINED, last)(r));
        writeln!(
            s,
            "| (sanity check, not a paper claim) DPO training improves the verifier over its initialisation, G_SFT's own log-likelihood, at Best-of-{kmax} | {:.1}% vs {:.1}% | {:+.1} ± {:.1} points | {}{} |",
            100.0 * vstar_n,
            100.0 * curve(UNTRAINED, last).0,
            100.0 * md,
            100.0 * sd,
            verdict(md > 0.0),
            if results.len() > 1 && md.abs() <= sd {
                " (within seed noise)"
            } else {
                ""
            }
        )?;
        writeln!(
            s,
            "\nDifferences smaller than the std over seeds are not significant. Plot: `plots/best_of_k.svg`."
        )?;
        let seed_secs: f64 = results.iter().map(|r| r.seconds).sum();
        writeln!(
            s,
            "\nWall time: {seed_secs:.0} s over the {} seeds' training and evaluation; this invocation took {:.0} s and computed {computed} of them (a resumed run reads finished seeds back from `metrics.jsonl`).",
            results.len(),
            ctx.elapsed_secs()
        )?;
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "v-star",
    description: "V-STaR: iterated self-improvement plus a DPO verifier, with SFT, RFT, STaR, majority, ORM and one-round baselines",
    config: VStarConfig,
    build: |config: VStarConfig, _ctx| {
        let err = |f: &str, m: &str| -> anyhow::Error { lmlab_sdk::registry::ConfigError { field: Some(f.into()), message: m.into() }.into() };
        if config.seeds.is_empty() { return Err(err("seeds", "give at least one seed")); }
        if config.rounds == 0 || config.rounds > 10 { return Err(err("rounds", "must be between 1 and 10")); }
        if config.samples_per_problem == 0 { return Err(err("samples_per_problem", "must be at least 1")); }
        if config.candidates == 0 { return Err(err("candidates", "must be at least 1")); }
        if config.sft_problems == 0 { return Err(err("sft_problems", "must be at least 1")); }
        if config.query_problems == 0 { return Err(err("query_problems", "must be at least 1")); }
        if !(config.temperature.is_finite() && config.temperature > 0.0) { return Err(err("temperature", "must be positive (sampling needs diversity)")); }
        for (name, st) in [("generator", &config.generator), ("verifier", &config.verifier), ("orm", &config.orm)] {
            if st.batch_size == 0 { return Err(err(&format!("{name}.batch_size"), "must be at least 1")); }
            if !(st.optim.lr.is_finite() && st.optim.lr > 0.0) { return Err(err(&format!("{name}.optim.lr"), "must be a positive number")); }
        }
        config.model.validate().map_err(|e| err("model", &e))?;
        Ok(Box::new(VStar { config }) as Box<dyn Scheduler>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_are_powers_of_two_up_to_n() {
        assert_eq!(ks(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(ks(5), vec![1, 2, 4]);
    }

    #[test]
    fn vote_keys_group_equal_numbers() {
        assert_eq!(vote_key("1+2=3. #### 3"), vote_key("#### 3.0"));
        assert_eq!(vote_key("no answer"), None);
    }
}
