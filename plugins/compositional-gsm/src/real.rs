//! Scheduler `compositional-gsm-report`: the real path, a report. Real models (checkpoints,
//! natively quantized, or served) answer GSM8K pairs `shots`-shot at T = 0, each pair asked
//! four ways; the summary gives S1, S2, S_comp, Δ and the analyses per model, next to the
//! paper's reported gaps.

use lmlab_sdk::report::{Table, footer};
use lmlab_sdk::{Components, PolicyInit, Role, RunContext, Sampler, Scheduler, Split};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::{Views, demos, evaluate};
use crate::metrics::{Scores, scores};
use crate::pairs::PairTask;
use crate::summary::{analyses_table, delta_table};

const WHO: &str = "scheduler `compositional-gsm-report`";

/// The models' roles, smaller first.
pub const MODELS: [&str; 2] = ["small", "large"];

/// The paper's reported gaps (−Δ, points; Hosseini et al. 2024): `(larger, its gap, smaller,
/// its gap)`.
pub const PAPER_GAPS: [(&str, f64, &str, f64); 3] = [
    ("GPT-4o", 1.1, "GPT-4o mini", 14.2),
    ("Llama3-70B-IT", 4.9, "Llama3-8B-IT", 27.5),
    ("Gemini 1.5 Pro", 5.8, "Gemini 1.5 Flash", 11.3),
];

/// Configuration of `compositional-gsm-report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Test pairs (the first of the task's test split; the task's `limit` caps them too).
    pub pairs: usize,
    /// Worked demonstrations (the first training pairs) before each question: the paper's 8.
    pub shots: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            pairs: 50,
            shots: 8,
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
            Role::task::<PairTask>(
                "task",
                "compositional pairs (`compositional-gsm`, source = \"gsm8k\"), the training split worked",
            ),
            Role::inference_policy("small", "the smaller model"),
            Role::inference_policy("large", "the larger model"),
            Role::sampler("sampler", "how answers are decoded (the paper: greedy)"),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<PairTask> = c.take("task", WHO)?;
        let test: Vec<_> = task
            .problems(Split::Test)?
            .into_iter()
            .take(cfg.pairs)
            .collect();
        anyhow::ensure!(!test.is_empty(), "{WHO}: the task has no test pairs");
        let worked = task.problems(Split::Train)?;
        let d = demos(&worked, cfg.shots).map_err(|e| anyhow::anyhow!("{WHO}: {e}"))?;
        let views = Views::new(&test, &d);
        let sampler: Box<dyn Sampler> = c.take("sampler", WHO)?;
        let started = std::time::Instant::now();
        let mut rows: Vec<(String, Vec<Scores>)> = Vec::new();
        let mut abouts = Vec::new();
        let mut times = Table::new(["model", "seconds", "tokens generated"]);
        for (i, role) in MODELS.iter().enumerate() {
            let init: Box<dyn PolicyInit> = c.take(role, WHO)?;
            let tokenizer = init.tokenizer(&mut Vec::new)?;
            let policy = init.inference(&tokenizer, &ctx.device)?;
            let about = init.describe(policy.num_params());
            let t = std::time::Instant::now();
            let pb = ctx.progress(
                (4 * test.len()) as u64,
                &format!("{role}: pairs asked four ways"),
            );
            let a = evaluate(
                policy.as_ref(),
                sampler.as_ref(),
                &test,
                &views,
                ctx.seed.wrapping_add(i as u64),
                &pb,
            )?;
            pb.finish_and_clear();
            let sc = scores(&a.outcomes);
            let seconds = t.elapsed().as_secs_f64();
            ctx.run.log(&serde_json::json!({
                "stage": "model", "model": role, "about": &about, "params": policy.num_params(),
                "scores": &sc, "outcomes": &a.outcomes, "seconds": seconds, "tokens": a.tokens,
                "answers": {"q1": &a.texts[0], "q2": &a.texts[1], "pair": &a.texts[2], "control": &a.texts[3]},
            }))?;
            let label = format!(
                "{role} ({:.0}M parameters)",
                policy.num_params() as f64 / 1e6
            );
            times.row([label.clone(), format!("{seconds:.0}"), a.tokens.to_string()]);
            abouts.push(format!("{label}: {about}"));
            rows.push((label, vec![sc]));
        }
        let prompt_chars = views.pair.first().map_or(0, String::len);
        let mut s = format!(
            "# {} — compositional GSM with real models (a report)\n\nModels: {}.\n\n{} GSM8K test pairs (of those the construction keeps; the first of the test split), {}-shot: single problems after {} worked Q1s, pairs and controls after {} worked pairs (a composed prompt is ~{} characters); decoded by the recipe's sampler (greedy). Demonstrations write the calculator steps of GSM8K's annotations (`48/2=24.`), then `The final answer is N.`; pairs `… The Q1 answer is A1. Therefore X=A1. … The final answer is A2.` One run: no spread over seeds.\n\nΔ = S_comp − S1·S2; the paper's reasoning gap is −Δ.\n\n",
            ctx.recipe,
            abouts.join("; "),
            test.len(),
            cfg.shots,
            cfg.shots,
            cfg.shots,
            prompt_chars,
        );
        s += &format!("## S1, S2, S_comp and Δ\n\n{}\n", delta_table(&rows));
        s += &format!(
            "## Distraction, second hop, control\n\n{}\n",
            analyses_table(&rows)
        );
        let mut paper = Table::new([
            "pair of models (paper)",
            "gap −Δ, larger (points)",
            "gap −Δ, smaller (points)",
        ]);
        for (big, gb, small, gs) in PAPER_GAPS {
            paper.row([
                format!("{big} / {small}"),
                format!("{gb:.1}"),
                format!("{gs:.1}"),
            ]);
        }
        let ours = |i: usize| {
            rows.get(i)
                .and_then(|r| r.1.first())
                .map_or(f64::NAN, |s| -100.0 * s.delta + 0.0)
        };
        paper.row([
            format!(
                "ours: {} / {}",
                rows.get(1).map_or("", |r| r.0.as_str()),
                rows.first().map_or("", |r| r.0.as_str())
            ),
            format!("{:.1}", ours(1)),
            format!("{:.1}", ours(0)),
        ]);
        s += &format!(
            "## Next to the paper (Hosseini et al. 2024, 8-shot GSM8K pairs)\n\n{}\n",
            paper.markdown()
        );
        s += &format!("## Time\n\n{}\n", times.markdown());
        s += &footer(started.elapsed().as_secs_f64(), 1, 1, ctx.elapsed_secs());
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "compositional-gsm-report",
    description: "compositional GSM with real models (a report): S1, S2, S_comp, Δ, distraction, second hop and control on GSM8K pairs, few-shot, next to the paper's gaps",
    config: ReportConfig,
    build: |config: ReportConfig, _ctx| {
        lmlab_sdk::registry::ConfigError::at_least_one(&[("pairs", config.pairs)])?;
        Ok(Box::new(Report { config }) as Box<dyn Scheduler>)
    },
}
