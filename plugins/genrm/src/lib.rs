#![doc = include_str!("../README.md")]

pub mod critic;
pub mod format;
pub mod judge;
mod summary;
pub mod tasks;
pub mod verifier;

use std::collections::BTreeMap;

use lmlab_sdk::eval::{
    auroc_of, auroc_within_of, best_of_k_of, ks, majority_and_oracle, pass_at_1,
    weighted_majority_of,
};
use lmlab_sdk::experiment::{Experiment, Seed, UnitCx, seeds};
use lmlab_sdk::fit::{FitSummary, Selection};
use lmlab_sdk::lm::Tokenizer;
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::rng::rng;
use lmlab_sdk::stages::Stages;
use lmlab_sdk::tasks::{TextProblem, TextTask, prompt_text, training_text};
use lmlab_sdk::train::Stage;
use lmlab_sdk::{
    Components, Objective, PolicyInit, Role, RunContext, Sampler, Scheduler, Sequence, Split,
    VerifierSpec,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::format::{PHRASES, question, solve_prompt};
use crate::verifier::mean_scores;

const WHO: &str = "scheduler `genrm`";

/// The verifier roles, in table order, and whether each is a GenRM (scores in [0, 1], a
/// model that also generates).
pub const VERIFIERS: [(&str, bool); 6] = [
    ("orm", false),
    ("dpo", false),
    ("judge", true),
    ("direct", true),
    ("cot", true),
    ("cot_joint", true),
];

/// Configuration of `genrm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenRmRecipeConfig {
    /// Training seeds (added to the recipe's seed); results are mean ± std over them.
    pub seeds: Vec<u64>,
    /// Seeds run side by side, each on its share of the cores.
    pub threads: usize,
    /// D_SFT: this many training problems, with their reference solutions: the generator's
    /// fine-tuning data (from the `[generator_task]` when there is one, else the first of
    /// the `[task]`'s).
    pub sft_problems: usize,
    /// This many further training problems of the `[task]`: the `[sampler]`'s candidates
    /// for them, labelled by the task, are every verifier's training data (the same for all).
    pub verifier_problems: usize,
    /// Validation problems (in distribution, never trained on): every verifier's held-out
    /// AUROC, and generation pass@1 in distribution.
    pub heldout_problems: usize,
    /// Test problems (the task's test split: longer than any training problem).
    pub test_problems: usize,
    /// Random k-subsets per problem for majority and weighted majority vote.
    pub majority_subsets: usize,
    /// The generator's fine-tuning from the `[policy]`.
    pub generator: Stage,
}

impl Default for GenRmRecipeConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0, 1, 2],
            threads: 1,
            sft_problems: 500,
            verifier_problems: 500,
            heldout_problems: 100,
            test_problems: 100,
            majority_subsets: 64,
            generator: Stage::default(),
        }
    }
}

/// One verifier's results on one seed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifierResult {
    /// Its label ("GenRM-CoT (λ = 1)").
    pub label: String,
    /// AUROC (correct against incorrect) on the held-out (in-distribution) candidates, pooled
    /// and within problems, and on the test candidates.
    pub heldout_auroc: Option<f64>,
    pub heldout_auroc_within: Option<f64>,
    pub test_auroc: Option<f64>,
    pub test_auroc_within: Option<f64>,
    /// How the fitted model was chosen.
    pub selection: Option<Selection>,
    /// Its training examples.
    pub examples: usize,
    /// Seconds of scoring per test candidate.
    pub seconds_per_candidate: f64,
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Method → Best-of-N on the test problems at each N of [`ks`]: verifier roles,
    /// `majority`, `weighted <role>`, `oracle`.
    pub curves: BTreeMap<String, Vec<f64>>,
    /// GenRM-CoT role → Best-of-N (largest N) at each K of [`ks`] up to its K.
    pub k_curves: BTreeMap<String, Vec<f64>>,
    /// Verifier role → its results.
    pub verifiers: BTreeMap<String, VerifierResult>,
    /// Generator → pass@1 on the test and the held-out problems: `generator` (the task's
    /// prompt), and each GenRM's own generation after the solve prompt.
    pub generation: BTreeMap<String, [f64; 2]>,
    /// Fraction of the verifier-training candidates that are correct.
    pub train_correct: f64,
    /// Seconds each stage took, in order.
    pub stage_seconds: Vec<(String, f64)>,
    pub fits: Vec<FitSummary>,
    pub seconds: f64,
}

/// The scheduler.
pub struct GenRmScheduler {
    config: GenRmRecipeConfig,
}

struct Parts {
    task: Box<TextTask>,
    init: Box<dyn PolicyInit>,
    objective: Box<dyn Objective>,
    sampler: Box<dyn Sampler>,
    test_sampler: Box<dyn Sampler>,
    /// (role, plugin, spec), in [`VERIFIERS`] order.
    verifiers: Vec<(&'static str, String, Box<dyn VerifierSpec>)>,
    tokenizer: Tokenizer,
}

/// The problems of one run.
struct Data {
    sft: Vec<TextProblem>,
    /// Whether `sft` comes from a `[generator_task]`.
    generator_task: bool,
    verifier: Vec<TextProblem>,
    heldout: Vec<TextProblem>,
    test: Vec<TextProblem>,
}

/// `problems` with GenRM's solve prompt in place of the task's (what a GenRM generates from).
fn solve_problems(problems: &[TextProblem]) -> Vec<TextProblem> {
    problems
        .iter()
        .map(|p| TextProblem {
            prompt: solve_prompt(question(&p.prompt)),
            ..p.clone()
        })
        .collect()
}

/// The mean of each candidate's first `k` judgements.
fn first_k_means(judgements: &[Vec<f32>], k: usize) -> Vec<f32> {
    let firsts: Vec<Vec<f32>> = judgements
        .iter()
        .map(|j| j[..k.min(j.len())].to_vec())
        .collect();
    mean_scores(&firsts)
}

/// Texts the from-scratch tokenizer is trained on: the training problems and solutions, and
/// verification texts (rationales of reference solutions and of mismatched ones, the
/// verdicts).
fn tokenizer_corpus(train: &[TextProblem]) -> Vec<String> {
    let mut texts: Vec<String> = train.iter().map(training_text).collect();
    for (i, p) in train.iter().enumerate().take(500) {
        let other = &train[(i + 1) % train.len()].solution;
        for (solution, right) in [(&p.solution, true), (other, false)] {
            if let Some(steps) = critic::critique(p, solution) {
                let (text, _) = critic::rationale(&steps);
                texts.push(format!("{text}{}", format::verdict(right)));
            }
        }
    }
    texts
}

impl GenRmScheduler {
    /// The generator every seed samples from: `[policy]` fine-tuned on D_SFT (from the run's
    /// seed; the seeds share it, as the paper's verifiers share one generator).
    fn generator(
        &self,
        p: &Parts,
        d: &Data,
        ctx: &RunContext,
    ) -> anyhow::Result<(LmPolicy, FitSummary, f64)> {
        let started = std::time::Instant::now();
        let mut st = Stages::new(
            p.task.as_ref(),
            "generator",
            &ctx.device,
            ctx.quiet,
            rng(ctx.seed, 11),
        );
        let base = p
            .init
            .init(&p.tokenizer, &mut rng(ctx.seed, 1), &st.train_device())?;
        let d_sft: Vec<Sequence> = d
            .sft
            .iter()
            .map(|q| base.training_sequence(&prompt_text(q), &q.solution))
            .collect();
        let stage = &self.config.generator;
        let g = st.sft(&base, p.objective.as_ref(), &d_sft, stage, "generator")?;
        Ok((g, st.fits.remove(0), started.elapsed().as_secs_f64()))
    }

    fn run_seed(
        &self,
        p: &Parts,
        g: &LmPolicy,
        seed: u64,
        d: &Data,
        cx: &UnitCx,
    ) -> anyhow::Result<SeedResult> {
        let cfg = &self.config;
        let started = std::time::Instant::now();
        let mut st = Stages::for_seed(p.task.as_ref(), seed, cx);
        let mut clock = std::time::Instant::now();
        let mut stages: Vec<(String, f64)> = Vec::new();
        let mut lap = |name: &str| {
            stages.push((name.to_string(), clock.elapsed().as_secs_f64()));
            clock = std::time::Instant::now();
        };
        let s = |i: u64| seed.wrapping_mul(1_000_003).wrapping_add(i);
        let (sampler, ts) = (p.sampler.as_ref(), p.test_sampler.as_ref());
        let train = st.draw(sampler, g, &d.verifier, s(1), "verifier data")?;
        let held = st.draw(sampler, g, &d.heldout, s(2), "held-out")?;
        let test = st.draw(ts, g, &d.test, s(3), "test")?;
        lap("sampling candidates");
        let (n, kk) = (d.test.len(), ks(ts.n().unwrap_or(1)));
        let big_n = kk.last().copied().unwrap_or(1);
        let mut res = SeedResult {
            seed,
            train_correct: pass_at_1(&train),
            ..Default::default()
        };
        res.generation
            .insert("generator".into(), [pass_at_1(&test), pass_at_1(&held)]);
        let [majority, oracle] =
            majority_and_oracle(&test, &d.test, &kk, cfg.majority_subsets, seed);
        res.curves
            .extend([("majority".into(), majority), ("oracle".into(), oracle)]);
        let solve = (solve_problems(&d.test), solve_problems(&d.heldout));
        for (i, (role, _, spec)) in p.verifiers.iter().enumerate() {
            cx.check()?;
            let genrm = VERIFIERS[i].1;
            let f = st.verifier(spec.as_ref(), g, &d.verifier, &train, &spec.label())?;
            lap(&format!("{role}: fitting"));
            let v = f.model.as_ref();
            let t0 = std::time::Instant::now();
            let sampled = v.sampled_scores(&d.test, &test)?;
            let scores = match &sampled {
                Some(j) => mean_scores(j),
                None => v.scores(&d.test, &test)?,
            };
            let seconds_per_candidate = t0.elapsed().as_secs_f64() / test.len().max(1) as f64;
            res.curves
                .insert(role.to_string(), best_of_k_of(&test, n, &scores, &kk));
            if let Some(j) = &sampled {
                let per_k = ks(j.first().map_or(1, Vec::len))
                    .iter()
                    .map(|&k| best_of_k_of(&test, n, &first_k_means(j, k), &[big_n])[0])
                    .collect();
                res.k_curves.insert(role.to_string(), per_k);
            }
            if genrm {
                let w =
                    weighted_majority_of(&test, &d.test, &scores, &kk, cfg.majority_subsets, seed);
                res.curves.insert(format!("weighted {role}"), w);
            }
            let held_scores = v.scores(&d.heldout, &held)?;
            lap(&format!("{role}: scoring"));
            res.verifiers.insert(
                role.to_string(),
                VerifierResult {
                    label: spec.label(),
                    heldout_auroc: auroc_of(&held, &held_scores),
                    heldout_auroc_within: auroc_within_of(&held, &held_scores),
                    test_auroc: auroc_of(&test, &scores),
                    test_auroc_within: auroc_within_of(&test, &scores),
                    selection: f.selection.clone(),
                    examples: f.examples,
                    seconds_per_candidate,
                },
            );
            // A trained GenRM generates too: its pass@1 after the solve prompt.
            if let (true, true, Some(policy)) = (genrm, spec.fitted(), v.policy()) {
                let on_test = st.draw(sampler, policy, &solve.0, s(10 + i as u64), role)?;
                let on_held = st.draw(sampler, policy, &solve.1, s(20 + i as u64), role)?;
                res.generation
                    .insert(role.to_string(), [pass_at_1(&on_test), pass_at_1(&on_held)]);
                lap(&format!("{role}: generating"));
            }
        }
        res.stage_seconds = stages;
        res.fits = st.fits;
        res.seconds = started.elapsed().as_secs_f64();
        Ok(res)
    }
}

impl Scheduler for GenRmScheduler {
    fn roles(&self) -> Vec<Role> {
        let mut roles = vec![
            Role::task::<TextTask>("task", "problems with step-by-step solutions and an exact checker"),
            Role::task::<TextTask>(
                "generator_task",
                "where the generator's fine-tuning problems come from (default: the `[task]`'s training split)",
            )
            .optional(),
            Role::policy("policy", "the base model: the generator and every verifier start from its fine-tuned copy"),
            Role::objective("objective", &["logprobs", "mask"], "the generator's fine-tuning loss"),
            Role::sampler("sampler", "candidates per verifier-training and held-out problem (and each GenRM's own generation)"),
            Role::sampler("test_sampler", "N candidates per test problem (n = N)"),
        ];
        let what = [
            "the discriminative baseline: an outcome reward model (value head, BCE on balanced data)",
            "the DPO verifier of V-STaR",
            "LLM-as-a-judge: the untrained model asked the Direct question",
            "GenRM-Direct",
            "GenRM-CoT, verification only (λ = 0)",
            "GenRM-CoT trained jointly with solution generation (λ > 0)",
        ];
        roles.extend(
            VERIFIERS
                .iter()
                .zip(what)
                .map(|((r, _), w)| Role::verifier(*r, w)),
        );
        roles
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = c.take("task", WHO)?;
        let (train, test) = lmlab_sdk::task::train_and_test(task.as_ref(), WHO)?;
        let test: Vec<TextProblem> = test.into_iter().take(cfg.test_problems).collect();
        let heldout: Vec<TextProblem> = task
            .problems(Split::Validation)?
            .into_iter()
            .take(cfg.heldout_problems)
            .collect();
        // The generator's problems: the `[generator_task]`'s training split without any test
        // or held-out prompt, or the first of the `[task]`'s.
        let gen_task: Option<Box<TextTask>> = c.take_optional("generator_task", WHO)?;
        let (sft, rest) = match &gen_task {
            Some(g) => {
                let seen: std::collections::HashSet<&str> = test
                    .iter()
                    .chain(&heldout)
                    .map(|p| p.prompt.as_str())
                    .collect();
                let own: Vec<TextProblem> = g
                    .problems(Split::Train)?
                    .into_iter()
                    .filter(|p| !seen.contains(p.prompt.as_str()))
                    .collect();
                (own, &train[..])
            }
            None => {
                let n = cfg.sft_problems.min(train.len());
                (train[..n].to_vec(), &train[n..])
            }
        };
        anyhow::ensure!(
            sft.len() >= cfg.sft_problems && rest.len() >= cfg.verifier_problems,
            "{WHO}: {} generator and {} verifier training problems, {} and {} needed (sft_problems, verifier_problems)",
            sft.len(),
            rest.len(),
            cfg.sft_problems,
            cfg.verifier_problems
        );
        anyhow::ensure!(
            !heldout.is_empty(),
            "{WHO}: the task has no validation problems for the held-out AUROC"
        );
        anyhow::ensure!(
            critic::critique(&train[0], &train[0].solution).is_some(),
            "{WHO}: no rationale writer reads this task's problems (GenRM-CoT's rationales are written for `last-letter`, `word-sort` and `arith`)"
        );
        let init: Box<dyn PolicyInit> = c.take("policy", WHO)?;
        let corpus = || tokenizer_corpus(&[&sft[..], &train[..]].concat());
        let tokenizer = init.tokenizer_with_phrases(&mut || corpus(), &PHRASES)?;
        let mut verifiers = Vec::new();
        for (role, _) in VERIFIERS {
            let plugin = c.plugin(role).unwrap_or("?").to_string();
            verifiers.push((role, plugin, c.take::<Box<dyn VerifierSpec>>(role, WHO)?));
        }
        let p = Parts {
            task,
            init,
            tokenizer,
            objective: c.take("objective", WHO)?,
            sampler: c.take("sampler", WHO)?,
            test_sampler: c.take("test_sampler", WHO)?,
            verifiers,
        };
        let d = Data {
            sft: sft[..cfg.sft_problems].to_vec(),
            verifier: rest[..cfg.verifier_problems].to_vec(),
            heldout,
            test,
            generator_task: gen_task.is_some(),
        };
        let policy = p.init.summary(&p.tokenizer)?;
        let (g, fit, seconds) = self.generator(&p, &d, ctx)?;
        let units = seeds(ctx.seed, &cfg.seeds);
        let out = Experiment::new("seed")
            .threads(cfg.threads.min(units.len()))
            .run(ctx, &units, |u: &Seed, cx| {
                self.run_seed(&p, &g, u.seed, &d, cx)
            })?;
        let results: Vec<SeedResult> = out.results.into_iter().map(|(_, r)| r).collect();
        let generator = summary::Generator {
            policy,
            fit,
            seconds,
        };
        summary::write(ctx, &p, &d, &generator, &results, out.computed)
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "genrm",
    description: "GenRM: generative verifiers (Direct, CoT with K rationales, joint training with generation) against an ORM, a DPO verifier, LLM-as-a-judge, majority and weighted majority",
    config: GenRmRecipeConfig,
    build: |config: GenRmRecipeConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("seeds", config.seeds.len()), ("threads", config.threads), ("sft_problems", config.sft_problems), ("verifier_problems", config.verifier_problems), ("heldout_problems", config.heldout_problems), ("test_problems", config.test_problems), ("majority_subsets", config.majority_subsets)])?;
        config.generator.validate().map_err(|e| e.within("generator"))?;
        Ok(Box::new(GenRmScheduler { config }) as Box<dyn Scheduler>)
    },
}
