//! Scheduler `genrm-judge`: a real model as a zero-shot GenRM-Direct judge of its own
//! candidates (the paper's LLM-as-a-judge at real scale; a report, no claim). A `[policy]`
//! (a checkpoint, natively quantized, or a served model) samples N candidates per test
//! problem after a few-shot prompt; the same model, asked GenRM's Direct question, scores
//! each by p(" Yes"); Best-of-N by that score is reported against majority vote, weighted
//! majority, the oracle pass@N and pass@1.

use lmlab_sdk::eval::{
    auroc_of, auroc_within_of, best_of_k_of, ks, majority_and_oracle, pass_at_1,
    weighted_majority_of,
};
use lmlab_sdk::report::{Curves, Fmt, Table, footer};
use lmlab_sdk::sampling::label;
use lmlab_sdk::tasks::TextTask;
use lmlab_sdk::tasks::gsm8k::{few_shot_test, own_answer};
use lmlab_sdk::{Components, PolicyInit, Role, RunContext, Sampler, Scheduler, Verifier};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::verifier::{GenRm, Mode, ScoreConfig};

const WHO: &str = "scheduler `genrm-judge`";

/// Configuration of `genrm-judge`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeRecipeConfig {
    /// Test problems (the first of the task's test split).
    pub test_problems: usize,
    /// Worked examples (the first of the training split) before each question.
    pub shots: usize,
    /// How the judge reads p(" Yes").
    pub score: ScoreConfig,
    /// Random k-subsets per problem for majority and weighted majority.
    pub majority_subsets: usize,
}

impl Default for JudgeRecipeConfig {
    fn default() -> Self {
        Self {
            test_problems: 100,
            shots: 2,
            score: ScoreConfig::default(),
            majority_subsets: 64,
        }
    }
}

/// The scheduler.
pub struct JudgeScheduler {
    config: JudgeRecipeConfig,
}

impl Scheduler for JudgeScheduler {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>("task", "test problems and worked examples (GSM8K)"),
            Role::inference_policy("policy", "the real model: it answers and judges"),
            Role::sampler("test_sampler", "N candidates per test problem (n = N)"),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = c.take("task", WHO)?;
        let (test, prompts) = few_shot_test(task.as_ref(), cfg.test_problems, cfg.shots)
            .map_err(|e| anyhow::anyhow!("{WHO}: {e}"))?;
        let init: Box<dyn PolicyInit> = c.take("policy", WHO)?;
        let sampler: Box<dyn Sampler> = c.take("test_sampler", WHO)?;
        let tokenizer = init.tokenizer(&mut Vec::new)?;
        let policy = init.inference(&tokenizer, &ctx.device)?;
        let started = std::time::Instant::now();
        let pb = ctx.progress(test.len() as u64, "sampling");
        let mut sampled = sampler.sample(policy.as_ref(), &prompts, ctx.seed, &pb)?;
        pb.finish_and_clear();
        for c in sampled.completions.iter_mut().flatten() {
            c.text = own_answer(&c.text).to_string();
        }
        let sampling_seconds = started.elapsed().as_secs_f64();
        let candidates = label(
            task.as_ref(),
            &test,
            std::mem::take(&mut sampled.completions),
        );
        let judge = GenRm {
            scorer: policy,
            lm: None,
            mode: Mode::Direct,
            score: cfg.score.clone(),
            seed: ctx.seed,
            label: "judging".into(),
            quiet: ctx.quiet,
        };
        let t0 = std::time::Instant::now();
        let scores = judge.scores(&test, &candidates)?;
        let judging_seconds = t0.elapsed().as_secs_f64();
        let (n, kk) = (test.len(), ks(sampler.n().unwrap_or(1)));
        let [majority, oracle] =
            majority_and_oracle(&candidates, &test, &kk, cfg.majority_subsets, ctx.seed);
        let curves = [
            (
                "Best-of-N by the judge's p(\" Yes\")",
                best_of_k_of(&candidates, n, &scores, &kk),
            ),
            ("majority vote", majority),
            (
                "weighted majority by the judge",
                weighted_majority_of(
                    &candidates,
                    &test,
                    &scores,
                    &kk,
                    cfg.majority_subsets,
                    ctx.seed,
                ),
            ),
            ("pass@N (oracle)", oracle),
        ];
        let record = serde_json::json!({
            "stage": "judge",
            "curves": curves.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "pass@1": pass_at_1(&candidates),
            "auroc": auroc_of(&candidates, &scores),
            "auroc_within": auroc_within_of(&candidates, &scores),
            "sampled_tokens": sampled.tokens,
            "sampling_seconds": sampling_seconds,
            "judging_seconds": judging_seconds,
        });
        ctx.log(record)?;
        let by_name: std::collections::BTreeMap<String, Vec<f64>> = curves
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let names: Vec<&str> = curves.iter().map(|(k, _)| *k).collect();
        let table = Curves::gather(&kk, &names, [&by_name]);
        let pct = Fmt::Percent(1);
        let pass1 = pass_at_1(&candidates);
        table.plot(
            &ctx.run.plots_dir().join("best_of_n.svg"),
            "A real model judging its own candidates (GenRM-Direct, zero-shot)",
            "accuracy",
            &[("pass@1", pass1)],
        )?;
        let model = init.describe(policy_params(&judge));
        let mut t = Table::new(["measure", "value"]);
        let cell = |x: Option<f64>| x.map_or("–".into(), |v| format!("{}%", pct.num(v)));
        t.row([
            "pass@1 (fraction of correct candidates)".into(),
            format!("{}%", pct.num(pass1)),
        ]);
        t.row([
            "AUROC of p(\" Yes\"), pooled".to_string(),
            cell(auroc_of(&candidates, &scores)),
        ]);
        t.row([
            "AUROC of p(\" Yes\"), within problems".to_string(),
            cell(auroc_within_of(&candidates, &scores)),
        ]);
        t.row([
            "sampling: seconds, tokens".to_string(),
            format!("{sampling_seconds:.0} s, {}", sampled.tokens),
        ]);
        t.row([
            "judging: seconds per candidate".to_string(),
            format!("{:.2}", judging_seconds / candidates.len().max(1) as f64),
        ]);
        let s = format!(
            "# {} — a real model as its own zero-shot GenRM-Direct judge\n\nModel: {model}. {} test problems of the task, {} candidates each ({}-shot prompts from the first training problems); the same model scores each candidate by p(\" Yes\") after GenRM's header, the problem, the candidate and the Direct question{}. A report, no claim: the paper's LLM-as-a-judge baseline at real scale.\n\n## Best-of-N (%)\n\n{}\nPlot: `plots/best_of_n.svg`.\n\n## Measures\n\n{}\n{}",
            ctx.recipe,
            n,
            sampler.n().unwrap_or(1),
            cfg.shots,
            if cfg.score.renormalise {
                ", renormalised over {Yes, No}"
            } else {
                ""
            },
            table.table(pct),
            t.markdown(),
            footer(started.elapsed().as_secs_f64(), 1, 1, ctx.elapsed_secs()),
        );
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

fn policy_params(judge: &GenRm) -> usize {
    judge.scorer.num_params()
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "genrm-judge",
    description: "a real model as its own zero-shot GenRM-Direct judge: Best-of-N by p(\" Yes\") against majority vote and the oracle (a report)",
    config: JudgeRecipeConfig,
    build: |config: JudgeRecipeConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("test_problems", config.test_problems), ("majority_subsets", config.majority_subsets), ("score.batch", config.score.batch)])?;
        Ok(Box::new(JudgeScheduler { config }) as Box<dyn Scheduler>)
    },
}
