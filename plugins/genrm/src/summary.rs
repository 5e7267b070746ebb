//! The `genrm` run's summary: generation, Best-of-N, the K curve, each verifier's AUROC and
//! cost, training, and the paper's claims with paired differences across seeds.

use std::collections::BTreeMap;

use lmlab_sdk::RunContext;
use lmlab_sdk::eval::ks;
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::report::{
    Claim, Curves, Fmt, Table, claims_table, fits_section, footer, per_seed, stat_table,
    within_seed_noise,
};

use crate::{Data, Parts, SeedResult, VERIFIERS};

/// The row name of a curve key (a verifier role, `majority`, `weighted <role>`, `oracle`).
fn name_of(key: &str, labels: &BTreeMap<String, String>, n: usize) -> String {
    let label = |role: &str| {
        labels
            .get(role)
            .cloned()
            .unwrap_or_else(|| role.to_string())
    };
    match key {
        "majority" => "majority vote (self-consistency)".into(),
        "oracle" => format!("pass@N (oracle), N ≤ {n}"),
        k => match k.strip_prefix("weighted ") {
            Some(role) => format!("weighted majority by {}", label(role)),
            None => label(k),
        },
    }
}

/// Mean ± std over the finite values.
fn cell(fmt: Fmt, xs: &[f64]) -> String {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    fmt.cell(&v)
}

/// The generator the seeds share: its description, its fine-tuning and the seconds it took.
pub(crate) struct Generator {
    pub policy: String,
    pub fit: lmlab_sdk::fit::FitSummary,
    pub seconds: f64,
}

pub(crate) fn write(
    ctx: &mut RunContext,
    p: &Parts,
    d: &Data,
    generator: &Generator,
    results: &[SeedResult],
    computed: usize,
) -> anyhow::Result<()> {
    let policy = &generator.policy;
    let pct = Fmt::Percent(1);
    let kk = ks(p.test_sampler.n().unwrap_or(1));
    let big_n = kk.last().copied().unwrap_or(1);
    let labels: BTreeMap<String, String> = p
        .verifiers
        .iter()
        .map(|(role, _, spec)| (role.to_string(), spec.label()))
        .collect();
    let mut keys: Vec<String> = VERIFIERS.iter().map(|(r, _)| r.to_string()).collect();
    keys.extend(["majority".to_string()]);
    keys.extend(
        VERIFIERS
            .iter()
            .filter(|(_, g)| *g)
            .map(|(r, _)| format!("weighted {r}")),
    );
    keys.push("oracle".into());
    let renamed: Vec<BTreeMap<String, Vec<f64>>> = results
        .iter()
        .map(|r| {
            r.curves
                .iter()
                .map(|(k, v)| (name_of(k, &labels, big_n), v.clone()))
                .collect()
        })
        .collect();
    let names: Vec<String> = keys.iter().map(|k| name_of(k, &labels, big_n)).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let curves = Curves::gather(&kk, &name_refs, renamed.iter());
    let pass_at =
        |role: &str, i: usize| per_seed(results, |r| r.generation.get(role).map(|g| g[i]));
    let pass1 = mean_std(&pass_at("generator", 0)).0;
    let plots = ctx.run.plots_dir();
    curves.plot(
        &plots.join("best_of_n.svg"),
        "Best-of-N on the longer (out-of-distribution) test problems",
        "accuracy",
        &[("generator pass@1", pass1)],
    )?;
    // The K curve: Best-of-N (largest N) against the rationales per candidate.
    let cot_roles: Vec<&str> = VERIFIERS
        .iter()
        .map(|(r, _)| *r)
        .filter(|r| results.iter().any(|x| x.k_curves.contains_key(*r)))
        .collect();
    let k_max = results
        .iter()
        .flat_map(|r| r.k_curves.values().map(Vec::len))
        .max()
        .unwrap_or(0);
    let k_ks: Vec<usize> = (0..k_max).map(|i| 1 << i).collect();
    let k_named: Vec<BTreeMap<String, Vec<f64>>> = results
        .iter()
        .map(|r| {
            r.k_curves
                .iter()
                .map(|(k, v)| (name_of(k, &labels, big_n), v.clone()))
                .collect()
        })
        .collect();
    let cot_names: Vec<String> = cot_roles
        .iter()
        .map(|r| name_of(r, &labels, big_n))
        .collect();
    let cot_refs: Vec<&str> = cot_names.iter().map(String::as_str).collect();
    let k_curves = Curves::gather(&k_ks, &cot_refs, k_named.iter());
    if !cot_roles.is_empty() {
        k_curves.plot(
            &plots.join("k_curve.svg"),
            &format!("GenRM-CoT Best-of-{big_n} against K rationales per candidate"),
            "accuracy",
            &[],
        )?;
    }

    let seed_list: Vec<u64> = results.iter().map(|r| r.seed).collect();
    let plugins: Vec<String> = p
        .verifiers
        .iter()
        .map(|(r, plugin, _)| format!("`[{r}]` {plugin}"))
        .collect();
    let mut s = format!(
        "# {} — GenRM: generative verifiers\n\nGenerator: {policy}, fine-tuned once on the reference solutions of {} training problems{}, and shared by the seeds (each seed draws its own candidates and trains its own verifiers). Verifiers ({}) all start from that fine-tuned model and train on the same data: {} candidates for each of {} further training problems. Held-out: {} validation problems (in distribution), {} candidates each. Test: {} problems of the task's test split (longer than any training problem: out of distribution), N = {} candidates each, Best-of-N for N ≤ {big_n}. Seeds: {seed_list:?}.\n\n",
        ctx.recipe,
        d.sft.len(),
        if d.generator_task {
            " of the `[generator_task]`"
        } else {
            ""
        },
        plugins.join(", "),
        p.sampler.n().unwrap_or(1),
        d.verifier.len(),
        d.heldout.len(),
        p.sampler.n().unwrap_or(1),
        d.test.len(),
        p.test_sampler.n().unwrap_or(1),
    );
    if d.generator_task {
        s += "The generator learns from the `[generator_task]`'s problems, the verifiers only from candidates of the `[task]`'s training problems: in the bundled recipe the generator sees 2–6 words (a small model trained from scratch on 2–4 words never writes a fifth step: 0% on six words, measured), the verifiers 2–4, so the 6-word test is out of the verifiers' training distribution, as in the paper.\n\n";
    }
    s += "Differences from the paper, all of scale: the models are small transformers trained from scratch (not Gemma), fully fine-tuned (not LoRA); the rationales are re-executions of each step written in code (not reference-guided grading by Gemini); D_correct is the verifier-training candidates that are correct. The input format, the header, the Direct question, the CoT instruction, the losses, r = p(\" Yes\"), r@K and the metrics follow the paper. The header and the two instruction strings are one token each in the from-scratch tokenizer (they never vary). Weighted majority: each candidate votes for its answer with its verifier score. GenRM scores identical candidates of a problem once (GenRM-CoT's copies share their K rationales), so Best-of-N with it ranks distinct solutions.\n\n";
    let gen_roles: Vec<(String, String)> = std::iter::once((
        "generator".to_string(),
        "the generator (task prompt)".to_string(),
    ))
    .chain(
        VERIFIERS
            .iter()
            .filter(|(r, g)| *g && results.iter().any(|x| x.generation.contains_key(*r)))
            .map(|(r, _)| {
                (
                    r.to_string(),
                    format!(
                        "{} (its own generation after the solve prompt)",
                        name_of(r, &labels, big_n)
                    ),
                )
            }),
    )
    .collect();
    let rows = gen_roles
        .iter()
        .map(|(role, label)| (label.as_str(), vec![pass_at(role, 0), pass_at(role, 1)]));
    let table = stat_table(
        &["model", "test pass@1 (%)", "held-out pass@1 (%)"],
        rows,
        pct,
    );
    s += &format!("## Generation (pass@1, mean ± std over seeds)\n\n{table}\n");
    s += &format!(
        "## Best-of-N on the test problems (mean ± std over seeds, %)\n\n{}\nPlot: `plots/best_of_n.svg`.\n\n",
        curves.table(pct)
    );
    if !cot_roles.is_empty() {
        s += &format!(
            "## GenRM-CoT: Best-of-{big_n} against K, the rationales averaged per candidate (r@K uses the first K of the sampled ones; mean ± std over seeds, %)\n\n{}\nPlot: `plots/k_curve.svg`.\n\n",
            k_curves.table(pct)
        );
    }
    s += &verifier_table(results, &labels);
    let with_generator: Vec<Vec<lmlab_sdk::fit::FitSummary>> = results
        .iter()
        .map(|r| {
            std::iter::once(generator.fit.clone())
                .chain(r.fits.iter().cloned())
                .collect()
        })
        .collect();
    s += &fits_section(with_generator.iter().map(Vec::as_slice));
    let mut t = Table::new(["seed", "correct verifier-training candidates", "seconds"]);
    for r in results {
        t.row([
            r.seed.to_string(),
            format!("{}%", pct.num(r.train_correct)),
            format!("{:.0}", r.seconds),
        ]);
    }
    s += &format!("## Data\n\n{}\n", t.markdown());
    let mut t = Table::new(["stage", "seconds (mean over seeds)"]);
    t.row([
        "generator fine-tuning (once, shared by the seeds)".to_string(),
        format!("{:.0}", generator.seconds),
    ]);
    if let Some(first) = results.first() {
        for (i, (name, _)) in first.stage_seconds.iter().enumerate() {
            let secs = per_seed(results, |r| r.stage_seconds.get(i).map(|x| x.1));
            t.row([name.clone(), Fmt::Fixed(0).cell(&secs)]);
        }
        s += &format!(
            "## Time by stage (each seed on its share of the cores)\n\n{}\n",
            t.markdown()
        );
    }
    s += &format!(
        "## The paper's claims at this scale (Best-of-{big_n}, paired across seeds)\n\n{}\n",
        claims_table(&claims(
            &curves, &k_curves, &names, &keys, results, &labels, big_n
        ))
    );
    let seconds = results.iter().map(|r| r.seconds).sum();
    s += &footer(seconds, results.len(), computed, ctx.elapsed_secs());
    ctx.run.write_summary(&s)?;
    Ok(())
}

/// Each verifier's AUROC on held-out and test candidates, its selection and scoring cost.
fn verifier_table(results: &[SeedResult], labels: &BTreeMap<String, String>) -> String {
    let pct = Fmt::Percent(1);
    let mut t = Table::new([
        "verifier",
        "training examples",
        "held-out AUROC (%)",
        "held-out AUROC within problems (%)",
        "test AUROC (%)",
        "test AUROC within problems (%)",
        "chosen at step (of steps trained), selection AUROC on held-out training problems",
        "scoring ms per test candidate",
    ]);
    for (role, _) in VERIFIERS {
        let of = |r: &crate::SeedResult| r.verifiers.get(role).cloned().unwrap_or_default();
        let col = |f: &dyn Fn(&crate::VerifierResult) -> Option<f64>| {
            cell(pct, &per_seed(results, |r| f(&of(r))))
        };
        let chosen: Vec<String> = results
            .iter()
            .filter_map(|r| of(r).selection)
            .map(|s| {
                format!(
                    "{} ({}), {}% on {}",
                    s.best_step,
                    s.steps,
                    pct.num(s.best),
                    s.heldout_problems
                )
            })
            .collect();
        let examples: Vec<String> = results.iter().map(|r| of(r).examples.to_string()).collect();
        let ms = per_seed(results, |r| Some(of(r).seconds_per_candidate * 1e3));
        t.row([
            labels
                .get(role)
                .cloned()
                .unwrap_or_else(|| role.to_string()),
            examples.join(", "),
            col(&|v| v.heldout_auroc),
            col(&|v| v.heldout_auroc_within),
            col(&|v| v.test_auroc),
            col(&|v| v.test_auroc_within),
            if chosen.is_empty() {
                "–".into()
            } else {
                chosen.join("; ")
            },
            Fmt::Fixed(2).cell(&ms),
        ]);
    }
    format!(
        "## Verifiers (mean ± std over seeds)\n\nAUROC of the score as a detector of correct candidates, pooled over all candidates and within problems (the mean of each problem's own: what re-ranking needs). Held-out: the validation problems' candidates (in distribution, never trained on). Fitted verifiers are chosen on the candidates of some of their training problems (how many: the selection column), held out of their training (GenRM-CoT's checks read one greedy rationale). The training examples of GenRM-CoT are the candidates whose re-executed verdict matches their label.\n\n{}\n",
        t.markdown()
    )
}

#[allow(clippy::too_many_arguments)]
fn claims(
    curves: &Curves,
    k_curves: &Curves,
    names: &[String],
    keys: &[String],
    results: &[SeedResult],
    labels: &BTreeMap<String, String>,
    big_n: usize,
) -> Vec<Claim> {
    let pct = Fmt::Percent(1);
    let last = curves.ks.len().saturating_sub(1);
    let at = |role: &str| {
        let i = keys.iter().position(|k| k == role).unwrap_or(usize::MAX);
        names.get(i).map_or_else(Vec::new, |n| curves.at(n, last))
    };
    let label = |role: &str| {
        labels
            .get(role)
            .cloned()
            .unwrap_or_else(|| role.to_string())
    };
    let beats = |a: &str, b: &str, what: &str| {
        Claim::paired(
            format!("{} {what} {} at Best-of-{big_n}", label(a), label(b)),
            &at(a),
            &at(b),
            pct,
        )
    };
    let mut out = vec![beats("direct", "orm", "≥"), beats("cot", "direct", "beats")];
    let k_last = k_curves.ks.len().saturating_sub(1);
    for role in ["cot", "cot_joint"] {
        let name = name_of(role, labels, big_n);
        let (first, lastk) = (k_curves.at(&name, 0), k_curves.at(&name, k_last));
        if !first.is_empty() && k_last > 0 {
            out.push(Claim::paired(
                format!(
                    "{} improves with K: Best-of-{big_n} at K = {} beats K = 1",
                    label(role),
                    k_curves.ks[k_last]
                ),
                &lastk,
                &first,
                pct,
            ));
        }
    }
    // Joint training helps verification, the generator, or both.
    let verify = beats("cot_joint", "cot", "beats");
    let pass_at = |role: &str| per_seed(results, |r| r.generation.get(role).map(|g| g[0]));
    let generate = Claim::paired(
        format!(
            "{} generates better than {} (test pass@1 after the solve prompt)",
            label("cot_joint"),
            label("cot")
        ),
        &pass_at("cot_joint"),
        &pass_at("cot"),
        pct,
    );
    let clear = |c: &Claim, a: &[f64], b: &[f64]| {
        let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        c.holds && !within_seed_noise(&diffs)
    };
    let helps = clear(&verify, &at("cot_joint"), &at("cot"))
        || clear(&generate, &pass_at("cot_joint"), &pass_at("cot"));
    out.push(Claim::check(
        "joint training (λ > 0) helps verification, the generator, or both (a paired gain beyond seed noise in either)",
        format!(
            "verification {}; generation {}",
            verify.difference, generate.difference
        ),
        helps,
    ));
    out.push(verify);
    out.push(generate);
    out.push(beats("direct", "judge", "beats"));
    out.push(beats("cot_joint", "judge", "beats"));
    out
}
