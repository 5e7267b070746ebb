//! Scheduler `best-of-n`: how well a verifier and a reward model pick a policy's correct
//! solutions. Per seed: the `[policy]` (fine-tuned first on the task's reference solutions when
//! `sft.steps > 0`, e.g. a model trained from scratch; a checkpoint can be taken as it is), the
//! `[verifier]` fitted from it on candidates the `[sampler]` draws for training problems (a
//! fixed verifier just takes the policy), the optional `[reward_model]` fitted on the
//! {correct} × {incorrect} pairs of the same candidates, then `N` candidates per test problem
//! from the `[test_sampler]`, ranked by each: Best-of-k for k = 1…N beside majority vote and
//! the oracle pass@k, and each ranker's AUROC at telling correct candidates from wrong ones.

use std::fmt::Write as _;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::{auroc_of, best_of_k_of, ks, majority_and_oracle, pass_at_1};
use crate::experiment::{Experiment, Seed, UnitCx, seeds};
use crate::fit::FitSummary;
use crate::policy::{PolicyInit, Sequence};
use crate::report::{Claim, Curves, Fmt, claims_table, fits_section, footer, per_seed, stat_table};
use crate::reward::{Preference, RewardSpec};
use crate::rng::rng;
use crate::stages::Stages;
use crate::tasks::{TextProblem, TextTask, prompt_text, training_text};
use crate::train::Stage;
use crate::verifier::{Candidate, VerifierSpec};
use crate::{Components, Objective, Role, RunContext, Sampler, Scheduler};

const WHO: &str = "scheduler `best-of-n`";

/// Configuration of `best-of-n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BestOfNConfig {
    /// Seeds (offsets to the run's seed).
    pub seeds: Vec<u64>,
    /// Fine-tuning of the policy on the training problems' reference solutions (0 steps: none).
    pub sft: Stage,
    /// Training problems whose candidates fitted rankers learn from.
    pub fit_problems: usize,
    /// Test problems.
    pub test_problems: usize,
    /// Random k-subsets per problem for majority vote@k.
    pub majority_subsets: usize,
}

impl Default for BestOfNConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0],
            sft: Stage::default(),
            fit_problems: 500,
            test_problems: 200,
            majority_subsets: 256,
        }
    }
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BestOfNResult {
    pub seed: u64,
    /// Method → value at each k.
    pub curves: std::collections::BTreeMap<String, Vec<f64>>,
    /// Ranker → AUROC on the test candidates.
    pub auroc: std::collections::BTreeMap<String, Option<f64>>,
    pub pass1: f64,
    /// Fraction of correct training candidates.
    pub train_correct: f64,
    pub fits: Vec<FitSummary>,
    pub seconds: f64,
}

/// The scheduler.
pub struct BestOfN {
    config: BestOfNConfig,
}

struct Parts {
    task: Arc<TextTask>,
    init: Box<dyn PolicyInit>,
    objective: Option<Box<dyn Objective>>,
    sampler: Option<Box<dyn Sampler>>,
    test_sampler: Box<dyn Sampler>,
    verifier: Box<dyn VerifierSpec>,
    reward: Option<Box<dyn RewardSpec>>,
    tokenizer: crate::lm::Tokenizer,
}

const MAJORITY: &str = "majority vote";
const ORACLE: &str = "pass@k (oracle)";

/// Every {correct} × {incorrect} pair of each problem's candidates, as preference pairs.
pub fn preference_pairs(candidates: &[Candidate]) -> Vec<Preference> {
    let pair = |(a, b): (usize, usize)| Preference {
        prompt: candidates[a].completion.prompt.clone(),
        chosen: candidates[a].completion.token_ids.clone(),
        rejected: candidates[b].completion.token_ids.clone(),
    };
    crate::verifier::correct_incorrect_pairs(candidates)
        .into_iter()
        .map(pair)
        .collect()
}

impl BestOfN {
    fn run_seed(
        &self,
        p: &Parts,
        seed: u64,
        data: (&[TextProblem], &[TextProblem]),
        cx: &UnitCx,
    ) -> anyhow::Result<BestOfNResult> {
        let (cfg, (train, test)) = (&self.config, data);
        let started = std::time::Instant::now();
        let mut st = Stages::for_seed(p.task.as_ref(), seed, cx);
        let train_device = st.train_device();
        let mut policy = p
            .init
            .init(&p.tokenizer, &mut rng(seed, 1), &train_device)?;
        let references: Vec<Sequence> = train
            .iter()
            .map(|q| policy.training_sequence(&prompt_text(q), &q.solution))
            .collect();
        if let (Some(objective), true) = (&p.objective, cfg.sft.steps > 0) {
            policy = st.sft(&policy, objective.as_ref(), &references, &cfg.sft, "SFT")?;
        }
        let fit_set = &train[..cfg.fit_problems.min(train.len())];
        let fitted = p.verifier.fitted() || p.reward.as_ref().is_some_and(|r| r.fitted());
        let cands = match (&p.sampler, fitted) {
            (Some(s), true) => st.draw(
                s.as_ref(),
                &policy,
                fit_set,
                seed.wrapping_mul(1_000_003),
                "training candidates",
            )?,
            (None, true) => anyhow::bail!(
                "{WHO}: a fitted verifier or reward model needs a [sampler] for its training candidates"
            ),
            _ => Vec::new(),
        };
        let v = st.verifier(
            p.verifier.as_ref(),
            &policy,
            fit_set,
            &cands,
            &p.verifier.label(),
        )?;
        let rm = match &p.reward {
            Some(spec) => Some(st.reward(
                spec.as_ref(),
                &policy,
                &p.task,
                &preference_pairs(&cands),
                &references,
                &spec.label(),
            )?),
            None => None,
        };
        let ts = p.test_sampler.as_ref();
        let test_cands = st.draw(
            ts,
            &policy,
            test,
            seed.wrapping_mul(1_000_003).wrapping_add(7),
            "test",
        )?;
        let (n, kk) = (test.len(), ks(ts.n().unwrap_or(1)));
        let mut res = BestOfNResult {
            seed,
            pass1: pass_at_1(&test_cands),
            train_correct: pass_at_1(&cands),
            ..Default::default()
        };
        let mut rank = |name: String, scores: Vec<f32>| {
            res.auroc
                .insert(name.clone(), auroc_of(&test_cands, &scores));
            res.curves
                .insert(name, best_of_k_of(&test_cands, n, &scores, &kk));
        };
        rank(p.verifier.label(), v.model.scores(test, &test_cands)?);
        if let (Some(rm), Some(spec)) = (&rm, &p.reward) {
            rank(spec.label(), rm.model.rewards(test, &test_cands)?);
        }
        let subsets = cfg.majority_subsets;
        let [majority, oracle] = majority_and_oracle(&test_cands, test, &kk, subsets, seed);
        res.curves
            .extend([(MAJORITY.into(), majority), (ORACLE.into(), oracle)]);
        res.fits = st.fits;
        res.seconds = started.elapsed().as_secs_f64();
        Ok(res)
    }
}

impl Scheduler for BestOfN {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>("task", "problems with reference solutions and a checker"),
            Role::policy("policy", "the model whose candidates are ranked"),
            Role::objective("objective", &["logprobs", "mask"], "its fine-tuning loss").optional(),
            Role::sampler("sampler", "candidates fitted rankers learn from").optional(),
            Role::sampler("test_sampler", "N candidates per test problem"),
            Role::verifier("verifier", "a ranker: fixed or fitted"),
            Role::reward_model("reward_model", "a second ranker (a reward)").optional(),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Arc<TextTask> = Arc::from(c.take::<Box<TextTask>>("task", WHO)?);
        let (train, test) = crate::task::train_and_test(task.as_ref(), WHO)?;
        let test: Vec<TextProblem> = test.into_iter().take(cfg.test_problems).collect();
        let init: Box<dyn PolicyInit> = c.take("policy", WHO)?;
        let tokenizer = init.tokenizer(&mut || train.iter().map(training_text).collect())?;
        anyhow::ensure!(
            cfg.sft.steps == 0 || c.has("objective"),
            "{WHO}: `sft.steps` > 0 needs an [objective]"
        );
        let p = Parts {
            task,
            init,
            tokenizer,
            objective: c.take_optional("objective", WHO)?,
            sampler: c.take_optional("sampler", WHO)?,
            test_sampler: c.take("test_sampler", WHO)?,
            verifier: c.take("verifier", WHO)?,
            reward: c.take_optional("reward_model", WHO)?,
        };
        let policy = p.init.summary(&p.tokenizer)?;
        let units = seeds(ctx.seed, &cfg.seeds);
        let data = (train.as_slice(), test.as_slice());
        let out = Experiment::new("seed").run(ctx, &units, |u: &Seed, cx| {
            self.run_seed(&p, u.seed, data, cx)
        })?;
        let results: Vec<BestOfNResult> = out.results.into_iter().map(|r| r.1).collect();

        let (pct, kk) = (Fmt::Percent(1), ks(p.test_sampler.n().unwrap_or(1)));
        let mut rankers = vec![p.verifier.label()];
        rankers.extend(p.reward.as_ref().map(|r| r.label()));
        let names: Vec<&str> = rankers
            .iter()
            .map(String::as_str)
            .chain([MAJORITY, ORACLE])
            .collect();
        let curves = Curves::gather(&kk, &names, results.iter().map(|r| &r.curves));
        let pass1 = per_seed(&results, |r| Some(r.pass1));
        let flat = [("pass@1", crate::metrics::mean_std(&pass1).0)];
        curves.plot(
            &ctx.run.plots_dir().join("best_of_k.svg"),
            "Best-of-k on held-out problems",
            "accuracy",
            &flat,
        )?;
        let mut s = String::new();
        writeln!(s, "# {} — Best-of-N selection\n", ctx.recipe)?;
        writeln!(
            s,
            "Policy: {}. {} held-out problems, N = {}; rankers fitted on the candidates of {} training problems. Seeds: {:?}.\n",
            policy,
            test.len(),
            kk.last().unwrap_or(&1),
            cfg.fit_problems.min(train.len()),
            cfg.seeds
        )?;
        let rows = [
            ("pass@1 of the candidates", vec![pass1.clone()]),
            (
                "correct training candidates",
                vec![per_seed(&results, |r| Some(r.train_correct))],
            ),
        ];
        writeln!(s, "{}", stat_table(&["", "%"], rows, pct))?;
        writeln!(
            s,
            "## Best-of-k (mean ± std over seeds, %)\n\n{}",
            curves.table(pct)
        )?;
        let auroc = rankers.iter().map(|r| {
            (
                r.as_str(),
                vec![per_seed(&results, |x| x.auroc.get(r).copied().flatten())],
            )
        });
        writeln!(
            s,
            "## AUROC of each ranker on the test candidates\n\n{}",
            stat_table(&["ranker", "AUROC (%)"], auroc, pct)
        )?;
        s += &fits_section(results.iter().map(|r| r.fits.as_slice()));
        let last = kk.len() - 1;
        let claims: Vec<Claim> = rankers
            .iter()
            .map(|r| {
                Claim::paired(
                    format!("{r} Best-of-{} beats a random candidate (pass@1)", kk[last]),
                    &curves.at(r, last),
                    &pass1,
                    pct,
                )
            })
            .collect();
        writeln!(
            s,
            "## Checks\n\n{}\nPlot: `plots/best_of_k.svg`.\n",
            claims_table(&claims)
        )?;
        s += &footer(
            results.iter().map(|r| r.seconds).sum(),
            results.len(),
            out.computed,
            ctx.elapsed_secs(),
        );
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

crate::register_component! {
    kind: Scheduler,
    name: "best-of-n",
    description: "ranks a policy's N candidates by a verifier and a reward model (fixed or fitted): Best-of-k, majority, pass@k, AUROC",
    config: BestOfNConfig,
    build: |config: BestOfNConfig, _ctx| {
        use crate::registry::ConfigError;
        ConfigError::at_least_one(&[("seeds", config.seeds.len()), ("test_problems", config.test_problems), ("majority_subsets", config.majority_subsets)])?;
        if config.sft.steps > 0 { config.sft.validate().map_err(|e| e.within("sft"))?; }
        Ok(Box::new(BestOfN { config }) as Box<dyn Scheduler>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Completion;

    #[test]
    fn preference_pairs_are_every_correct_incorrect_pair_of_a_problem() {
        let c = |problem: usize, tok: u32, correct: bool| Candidate {
            problem,
            completion: Completion {
                prompt: vec![1, problem as u32],
                token_ids: vec![tok],
                text: String::new(),
                logprobs: vec![],
                finished: true,
            },
            correct,
            answer: None,
        };
        let cands = [
            c(0, 5, true),
            c(0, 6, false),
            c(0, 7, false),
            c(1, 8, true),
            c(2, 9, false),
        ];
        let pairs = preference_pairs(&cands);
        let got: Vec<(u32, u32)> = pairs.iter().map(|p| (p.chosen[0], p.rejected[0])).collect();
        assert_eq!(
            got,
            vec![(5, 6), (5, 7)],
            "problem 1 has no wrong candidate, problem 2 no right one"
        );
        assert_eq!(pairs[0].prompt, vec![1, 0]);
    }
}
