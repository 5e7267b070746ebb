//! Scheduler `compute-matched-report`: the real path, a report with no claim. Two real models
//! (checkpoints, natively quantized, or served), a weaker-cheaper `[policy]` and a
//! stronger-expensive `[strong]`, sample few-shot solutions to GSM8K test problems at
//! compute-matched budgets (W counted from the tokens each generated); the summary gives each
//! side's coverage, diversity and realised FLOPs. No step checker reads free-form solutions,
//! so there is no false-positive rate.

use lmlab_sdk::report::{Fmt, Table, footer};
use lmlab_sdk::sampling::label;
use lmlab_sdk::tasks::TextTask;
use lmlab_sdk::tasks::gsm8k::{few_shot_test, own_answer};
use lmlab_sdk::{Candidate, Components, PolicyInit, Role, RunContext, Sampler, Scheduler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::summary::{plots, sampling_section};
use crate::{SE, SeedResult, WC, compute_matched_draws, sampling_stats};

const WHO: &str = "scheduler `compute-matched-report`";

/// Configuration of `compute-matched-report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Test problems (the first of the task's test split).
    pub problems: usize,
    /// Worked examples (the first of the training split) before each question.
    pub shots: usize,
    /// Sampling budgets, as the SE model's samples per problem, in increasing order.
    pub budgets: Vec<usize>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            problems: 100,
            shots: 4,
            budgets: vec![1, 2],
        }
    }
}

/// The scheduler.
pub struct Report {
    config: ReportConfig,
}

impl Scheduler for Report {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>("task", "test problems and worked examples (GSM8K)"),
            Role::inference_policy("policy", "the weaker-cheaper (WC) model"),
            Role::inference_policy("strong", "the stronger-expensive (SE) model"),
            Role::sampler(
                "sampler",
                "how solutions are sampled (n = 1: the budgets set the count)",
            ),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = c.take("task", WHO)?;
        let (test, prompts) = few_shot_test(task.as_ref(), cfg.problems, cfg.shots)
            .map_err(|e| anyhow::anyhow!("{WHO}: {e}"))?;
        let sampler: Box<dyn Sampler> = c.take("sampler", WHO)?;
        anyhow::ensure!(
            sampler.n() == Some(1),
            "{WHO}: the `[sampler]` must draw n = 1 (the budgets decide how many samples)"
        );
        let mut models = Vec::new();
        for role in ["strong", "policy"] {
            let init: Box<dyn PolicyInit> = c.take(role, WHO)?;
            let tokenizer = init.tokenizer(&mut Vec::new)?;
            let policy = init.inference(&tokenizer, &ctx.device)?;
            let about = init.describe(policy.num_params());
            models.push((policy, about));
        }
        let (p_se, p_wc) = (models[0].0.num_params(), models[1].0.num_params());
        let started = std::time::Instant::now();
        let mut seconds = [0.0f64; 2];
        let (se, wc, matched) = compute_matched_draws(&cfg.budgets, p_se, p_wc, |who, n, i| {
            let m = usize::from(who == WC);
            let t = std::time::Instant::now();
            let pb = ctx.progress(test.len() as u64, &format!("{who}: {n} per problem"));
            let s = sampler.scaled(n);
            let seed = ctx.seed.wrapping_add(i.wrapping_mul(1_000_003));
            let mut sampled = s.sample(models[m].0.as_ref(), &prompts, seed, &pb)?;
            pb.finish_and_clear();
            for c in sampled.completions.iter_mut().flatten() {
                c.text = own_answer(&c.text).to_string();
            }
            seconds[m] += t.elapsed().as_secs_f64();
            let got: Vec<Candidate> = label(task.as_ref(), &test, sampled.completions);
            Ok(got)
        })?;
        let mut res = SeedResult {
            seed: ctx.seed,
            ..Default::default()
        };
        res.params.insert(SE.into(), p_se);
        res.params.insert(WC.into(), p_wc);
        res.budgets = sampling_stats(
            &test,
            (&se, &wc),
            &cfg.budgets,
            &matched,
            (p_se, p_wc),
            &mut res,
        );
        res.stage_seconds
            .insert(format!("sampling ({SE})"), seconds[0]);
        res.stage_seconds
            .insert(format!("sampling ({WC})"), seconds[1]);
        res.seconds = started.elapsed().as_secs_f64();
        ctx.run
            .log(&serde_json::json!({"stage": "report", "result": &res}))?;
        let results = [res];
        plots(ctx, &results)?;
        let res = &results[0];
        let pct = Fmt::Percent(1);
        let mut s = format!(
            "# {} — compute-matched sampling with real models (a report, no claim)\n\nSE: {}. WC: {}. P_SE / P_WC = {:.2}. {} GSM8K test problems, {}-shot (`Question: … Answer: …`), budgets S_SE = {:?} per problem; S_WC = S_SE · (P_SE · W_SE) / (P_WC · W_WC) with W each model's mean tokens over its first {} samples per problem. No false-positive rate: no step checker reads free-form solutions.\n\n",
            ctx.recipe,
            models[0].1,
            models[1].1,
            p_se as f64 / p_wc.max(1) as f64,
            test.len(),
            cfg.shots,
            cfg.budgets,
            cfg.budgets.iter().max().copied().unwrap_or(1),
        );
        let mut t = Table::new([
            "model",
            "parameters",
            "pass@1 of its samples (%)",
            "sampling seconds",
        ]);
        for (i, m) in [SE, WC].into_iter().enumerate() {
            t.row([
                m.to_string(),
                res.params[m].to_string(),
                pct.num(res.sample_pass1[m]),
                format!("{:.0}", seconds[i]),
            ]);
        }
        s += &format!("## Models\n\n{}\n", t.markdown());
        s += &sampling_section(&cfg.budgets, &results);
        s += "Differences are one run's (one seed), not means over seeds.\n\n";
        s += &footer(res.seconds, 1, 1, ctx.elapsed_secs());
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "compute-matched-report",
    description: "compute-matched sampling with two real models (a report): coverage, diversity and realised FLOPs of a weaker-cheaper and a stronger-expensive model on GSM8K",
    config: ReportConfig,
    build: |config: ReportConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("problems", config.problems), ("budgets", config.budgets.len())])?;
        if config.budgets.contains(&0) || config.budgets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::field("budgets", "SE samples per problem, at least 1 each, in increasing order (e.g. [1, 2])").into());
        }
        Ok(Box::new(Report { config }) as Box<dyn Scheduler>)
    },
}
