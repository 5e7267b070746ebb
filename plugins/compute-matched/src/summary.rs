//! The summary: the models, the sampling table (coverage, diversity, false-positive rate, with
//! relative and absolute differences), the fine-tuning table of the three setups under both
//! matchings, the no-filter ablation, the plots, and the claims.

use lmlab_sdk::RunContext;
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::plot::{Series, line_plot};
use lmlab_sdk::report::{Claim, Fmt, Table, claims_table, fits_section, footer, time_section};

use crate::{
    ComputeMatchedConfig, Data, Finetune, SE, SE_DATA, SETUPS, STUDENT, SeedResult, SideStats, WC,
    WC_COMPUTE, WC_NUMBER,
};

const PCT: Fmt = Fmt::Percent(1);

/// Mean ± sd over the finite values ("–" when none).
fn cell(fmt: Fmt, xs: &[f64]) -> String {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    fmt.cell(&v)
}

/// The seeds where both values are finite.
fn pairs(a: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>) {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| (*x, *y))
        .unzip()
}

/// Per seed, one side's statistic at the `i`-th budget.
fn stat(results: &[SeedResult], i: usize, side: &str, f: impl Fn(&SideStats) -> f64) -> Vec<f64> {
    results
        .iter()
        .map(|r| {
            r.budgets
                .get(i)
                .and_then(|b| b.sides.get(side))
                .map_or(f64::NAN, &f)
        })
        .collect()
}

/// Per seed, a value of one fine-tuning (NaN where the seed has none).
fn of_finetune(
    results: &[SeedResult],
    (setup, budget, data, filtered): (&str, usize, &str, bool),
    f: fn(&Finetune) -> f64,
) -> Vec<f64> {
    results
        .iter()
        .map(|r| {
            let hit = r.finetunes.iter().find(|x| {
                x.setup == setup && x.budget == budget && x.data == data && x.filtered == filtered
            });
            hit.map_or(f64::NAN, f)
        })
        .collect()
}

/// Per seed, the test accuracy of one fine-tuning.
fn acc(results: &[SeedResult], setup: &str, budget: usize, data: &str, filtered: bool) -> Vec<f64> {
    of_finetune(results, (setup, budget, data, filtered), |f| f.accuracy)
}

/// Per seed, the training examples of one fine-tuning.
fn examples(
    results: &[SeedResult],
    setup: &str,
    budget: usize,
    data: &str,
    filtered: bool,
) -> Vec<f64> {
    of_finetune(results, (setup, budget, data, filtered), |f| {
        f.examples as f64
    })
}

/// The per-seed absolute and relative differences `a − b`, `(a − b) / b`.
fn diffs(a: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (a, b) = pairs(a, b);
    let abs = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    let rel = a
        .iter()
        .zip(&b)
        .filter(|(_, y)| **y != 0.0)
        .map(|(x, y)| (x - y) / y)
        .collect();
    (abs, rel)
}

fn signed_cell(fmt: Fmt, xs: &[f64]) -> String {
    match xs.len() {
        0 => "–".into(),
        1 => fmt.signed(xs[0]),
        _ => {
            let (m, s) = mean_std(xs);
            format!("{} ± {}", fmt.signed(m), fmt.num(s))
        }
    }
}

pub(crate) fn sampling_section(budgets: &[usize], results: &[SeedResult]) -> String {
    let mut s = String::from(
        "## Sampling at matched budgets (mean ± std over seeds)\n\nOn the sampled problems. S is samples per problem; W the mean tokens per sample, counted from the tokens generated; the realised cost is C = 2 · P · W · S per problem. coverage@S is the fraction of problems with at least one final-answer-correct sample; diversity@S the mean number of unique correct solutions per problem (unique after collapsing whitespace and cutting after the final-answer line; the same steps in another order are another solution); the false-positive rate the share of final-answer-correct samples with a wrong step (every step re-executed). Differences are WC − SE: *absolute* in the metric's own unit (points for percentages), *relative* as (WC − SE) / SE in percent, as the paper quotes diversity (\"+86%\") relatively and the false-positive rate (\"+7%\") absolutely.\n\n",
    );
    for (i, &b) in budgets.iter().enumerate() {
        let m: Vec<f64> = results
            .iter()
            .map(|r| r.budgets.get(i).map_or(f64::NAN, |x| x.s_wc as f64))
            .collect();
        s += &format!(
            "### Budget S_SE = {b} (compute-matched S_WC = {})\n\n",
            cell(Fmt::Fixed(1), &m)
        );
        let mut t = Table::new([
            "metric",
            "SE",
            "WC, compute-matched",
            "WC, number-matched",
            "WC (compute) − SE, absolute",
            "relative",
            "WC (number) − SE, absolute",
            "relative",
        ]);
        type Get = fn(&SideStats) -> f64;
        let rows: [(&str, Fmt, Get); 7] = [
            ("samples per problem S", Fmt::Fixed(0), |x| x.samples as f64),
            ("tokens per sample W", Fmt::Fixed(1), |x| x.mean_tokens),
            (
                "realised sampling FLOPs, all problems (×10⁹)",
                Fmt::Fixed(3),
                |x| x.flops / 1e9,
            ),
            ("coverage@S (%)", PCT, |x| x.coverage),
            (
                "diversity@S (unique correct solutions per problem)",
                Fmt::Fixed(2),
                |x| x.diversity,
            ),
            ("false-positive rate (%)", PCT, |x| {
                x.fpr.unwrap_or(f64::NAN)
            }),
            ("correct samples (fine-tuning data)", Fmt::Fixed(0), |x| {
                x.correct as f64
            }),
        ];
        for (name, fmt, get) in rows {
            let [se, wc, wn] = [SE_DATA, WC_COMPUTE, WC_NUMBER].map(|k| stat(results, i, k, get));
            let (a1, r1) = diffs(&wc, &se);
            let (a2, r2) = diffs(&wn, &se);
            t.row([
                name.to_string(),
                cell(fmt, &se),
                cell(fmt, &wc),
                cell(fmt, &wn),
                signed_cell(fmt, &a1),
                signed_cell(PCT, &r1) + "%",
                signed_cell(fmt, &a2),
                signed_cell(PCT, &r2) + "%",
            ]);
        }
        s += &t.markdown();
        s.push('\n');
    }
    s += "Plots: `plots/coverage.svg` and `plots/diversity.svg` (coverage@k and diversity@k against the sampling FLOPs per problem they cost, k = 1, 2, 4, …).\n\n";
    s
}

fn finetune_section(cfg: &ComputeMatchedConfig, results: &[SeedResult]) -> String {
    let mut t = Table::new([
        "setup (model fine-tuned)",
        "S_SE",
        "base, before fine-tuning",
        "on SE data",
        "on WC data, compute-matched",
        "on WC data, number-matched",
        "WC (compute) − SE",
        "SE − WC (number)",
    ]);
    let mut ex = Table::new([
        "setup",
        "S_SE",
        "SE data",
        "WC data, compute-matched",
        "WC data, number-matched",
    ]);
    for (setup, model) in SETUPS {
        for b in cfg.finetune_budgets() {
            let base: Vec<f64> = results
                .iter()
                .map(|r| r.base_accuracy.get(model).copied().unwrap_or(f64::NAN))
                .collect();
            let [se, wc, wn] =
                [SE_DATA, WC_COMPUTE, WC_NUMBER].map(|d| acc(results, setup, b, d, true));
            let (d1, _) = diffs(&wc, &se);
            let (d2, _) = diffs(&se, &wn);
            t.row([
                format!("{setup} ({model})"),
                b.to_string(),
                cell(PCT, &base),
                cell(PCT, &se),
                cell(PCT, &wc),
                cell(PCT, &wn),
                signed_cell(PCT, &d1),
                signed_cell(PCT, &d2),
            ]);
            let [a, c, n] =
                [SE_DATA, WC_COMPUTE, WC_NUMBER].map(|d| examples(results, setup, b, d, true));
            if setup == SETUPS[0].0 {
                ex.row([
                    "every setup".to_string(),
                    b.to_string(),
                    cell(Fmt::Fixed(0), &a),
                    cell(Fmt::Fixed(0), &c),
                    cell(Fmt::Fixed(0), &n),
                ]);
            }
        }
    }
    let mut s = format!(
        "## Fine-tuning on sampled data: test pass@1 (greedy, %, mean ± std over seeds)\n\nEach setup fine-tunes its base model for the same {} steps on the final-answer-correct samples of one data set. Knowledge distillation: the student learns from WC or SE samples. Self-improvement: WC learns from its own samples or from SE's. Weak-to-strong improvement: SE learns from WC's samples or from its own. Differences are in points.\n\n{}\nTraining examples (correct samples):\n\n{}\n",
        cfg.finetune.steps,
        t.markdown(),
        ex.markdown()
    );
    let largest = cfg.finetune_budgets().into_iter().max();
    if let (true, Some(b)) = (cfg.no_filter, largest) {
        let mut t = Table::new([
            "setup",
            "SE data, filtered",
            "SE data, unfiltered",
            "WC data (compute-matched), filtered",
            "WC data (compute-matched), unfiltered",
            "WC − SE, unfiltered",
        ]);
        for (setup, model) in SETUPS {
            let [sf, su, wf, wu] = [
                (SE_DATA, true),
                (SE_DATA, false),
                (WC_COMPUTE, true),
                (WC_COMPUTE, false),
            ]
            .map(|(d, f)| acc(results, setup, b, d, f));
            let (d, _) = diffs(&wu, &su);
            t.row([
                format!("{setup} ({model})"),
                cell(PCT, &sf),
                cell(PCT, &su),
                cell(PCT, &wf),
                cell(PCT, &wu),
                signed_cell(PCT, &d),
            ]);
        }
        s += &format!(
            "### No-filter ablation (S_SE = {b}): every sample, wrong answers included\n\n{}\n",
            t.markdown()
        );
    }
    s
}

/// "`a` beats `b`" over the seeds that measured both; undecided when none did.
fn paired(statement: String, (a, b): (Vec<f64>, Vec<f64>), fmt: Fmt) -> Claim {
    if a.is_empty() {
        return Claim::check(statement, "no seed measured both sides", false)
            .note("undecided: nothing to compare");
    }
    Claim::paired(statement, &a, &b, fmt)
}

fn claims(cfg: &ComputeMatchedConfig, results: &[SeedResult]) -> Vec<Claim> {
    let mut out = Vec::new();
    for (i, &b) in cfg.budgets.iter().enumerate() {
        let get = |k: &str, f: fn(&SideStats) -> f64| stat(results, i, k, f);
        let at = format!("S_SE = {b}");
        out.push(paired(
            format!("WC samples have higher coverage than SE samples at matched compute ({at})"),
            pairs(
                &get(WC_COMPUTE, |x| x.coverage),
                &get(SE_DATA, |x| x.coverage),
            ),
            PCT,
        ));
        out.push(paired(format!("WC samples have higher diversity (unique correct solutions per problem) at matched compute ({at})"), pairs(&get(WC_COMPUTE, |x| x.diversity), &get(SE_DATA, |x| x.diversity)), Fmt::Fixed(2)));
        let fpr = |x: &SideStats| x.fpr.unwrap_or(f64::NAN);
        out.push(paired(
            format!("WC samples have a higher false-positive rate at matched compute ({at})"),
            pairs(&get(WC_COMPUTE, fpr), &get(SE_DATA, fpr)),
            PCT,
        ));
    }
    for (setup, _) in SETUPS {
        for b in cfg.finetune_budgets() {
            out.push(paired(
                format!("{setup}: WC-trained ≥ SE-trained, compute-matched (S_SE = {b})"),
                pairs(
                    &acc(results, setup, b, WC_COMPUTE, true),
                    &acc(results, setup, b, SE_DATA, true),
                ),
                PCT,
            ));
        }
    }
    for (setup, _) in SETUPS {
        for b in cfg.finetune_budgets() {
            out.push(paired(
                format!("{setup}: SE-trained ≥ WC-trained, number-matched (S = {b})"),
                pairs(
                    &acc(results, setup, b, SE_DATA, true),
                    &acc(results, setup, b, WC_NUMBER, true),
                ),
                PCT,
            ));
        }
    }
    out
}

/// coverage@k or diversity@k of WC and SE against log₂ of the sampling FLOPs per problem.
fn plot(
    ctx: &RunContext,
    results: &[SeedResult],
    file: &str,
    title: &str,
    y: &str,
    curves: fn(&SeedResult) -> &std::collections::BTreeMap<String, Vec<f64>>,
) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for name in [WC, SE] {
        let Some(ks) = results.first().and_then(|r| r.k_values.get(name)) else {
            continue;
        };
        let per_sample: Vec<f64> = results
            .iter()
            .filter_map(|r| {
                let p = *r.params.get(name)? as f64;
                let side = if name == SE { SE_DATA } else { WC_NUMBER };
                let w = r.budgets.last()?.sides.get(side)?.mean_tokens;
                Some(2.0 * p * w)
            })
            .collect();
        let cost = mean_std(&per_sample).0;
        let points: Vec<(f64, f64)> = ks
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let v: Vec<f64> = results
                    .iter()
                    .filter_map(|r| curves(r).get(name)?.get(i).copied())
                    .collect();
                ((k as f64 * cost).log2(), mean_std(&v).0)
            })
            .collect();
        series.push((
            format!(
                "{name} ({})",
                if name == WC {
                    "weaker-cheaper"
                } else {
                    "stronger-expensive"
                }
            ),
            points,
        ));
    }
    let lines: Vec<Series> = series
        .iter()
        .map(|(n, p)| Series {
            name: n,
            points: p.clone(),
        })
        .collect();
    line_plot(
        &ctx.run.plots_dir().join(file),
        title,
        "log2 sampling FLOPs per problem",
        y,
        &lines,
    )
}

/// Both plots: coverage@k and diversity@k against their sampling cost.
pub(crate) fn plots(ctx: &RunContext, results: &[SeedResult]) -> anyhow::Result<()> {
    plot(
        ctx,
        results,
        "coverage.svg",
        "coverage@k at its sampling cost",
        "coverage@k",
        |r| &r.coverage_curves,
    )?;
    plot(
        ctx,
        results,
        "diversity.svg",
        "diversity@k at its sampling cost",
        "unique correct solutions per problem",
        |r| &r.diversity_curves,
    )
}

pub(crate) fn write(
    ctx: &mut RunContext,
    cfg: &ComputeMatchedConfig,
    models: &[String],
    d: &Data,
    results: &[SeedResult],
    computed: usize,
) -> anyhow::Result<()> {
    plots(ctx, results)?;
    let seeds: Vec<u64> = results.iter().map(|r| r.seed).collect();
    let params = |m: &str| {
        results
            .first()
            .and_then(|r| r.params.get(m))
            .copied()
            .unwrap_or(0)
    };
    let ratio = params(SE) as f64 / params(WC).max(1) as f64;
    let mut s = format!(
        "# {} — compute-matched sampling: weaker-cheaper vs stronger-expensive\n\nModels, trained from scratch on the reference solutions of the same {} problems: student {}; WC {}; SE {} (P_SE / P_WC = {ratio:.2}). Samples are drawn for {} further training problems at budgets S_SE = {:?} per problem, the WC model drawing S_WC = S_SE · (P_SE · W_SE) / (P_WC · W_WC) (compute-matched: W measured as the mean tokens of each model's first {} samples per problem) or S_WC = S_SE (number-matched). Test: {} held-out problems, greedy pass@1. Seeds: {seeds:?}.\n\nDifferences from the paper, all of scale: the models are small Llamas trained from scratch on generated arithmetic word problems (2–5 steps whose `+`/`−` operations may be applied in any order, so a problem has many right solutions) instead of Gemma2 9B/27B on MATH; the false-positive rate is decided by re-executing every step, not by an LLM autorater, over every correct sample rather than a random subset; fine-tuning starts from each model's base training rather than from a pretrained checkpoint.\n\n",
        ctx.recipe,
        d.base.len(),
        models[0],
        models[1],
        models[2],
        d.sample.len(),
        cfg.budgets,
        cfg.budgets.iter().max().copied().unwrap_or(1),
        d.test.len(),
    );
    let mut t = Table::new([
        "model",
        "parameters",
        "test pass@1 after base training, greedy (%)",
        "pass@1 of its samples on the sampled problems (%)",
    ]);
    for m in [STUDENT, WC, SE] {
        let base: Vec<f64> = results
            .iter()
            .map(|r| r.base_accuracy.get(m).copied().unwrap_or(f64::NAN))
            .collect();
        let sp: Vec<f64> = results
            .iter()
            .map(|r| r.sample_pass1.get(m).copied().unwrap_or(f64::NAN))
            .collect();
        t.row([
            m.to_string(),
            params(m).to_string(),
            cell(PCT, &base),
            cell(PCT, &sp),
        ]);
    }
    s += &format!("## Models\n\n{}\n", t.markdown());
    s += &sampling_section(&cfg.budgets, results);
    s += &finetune_section(cfg, results);
    s += &format!(
        "## The paper's claims at this scale\n\n{}\n",
        claims_table(&claims(cfg, results))
    );
    s += &fits_section(results.iter().map(|r| r.fits.as_slice()));
    s += &time_section(results.iter().map(|r| &r.stage_seconds));
    let seconds = results.iter().map(|r| r.seconds).sum();
    s += &footer(seconds, results.len(), computed, ctx.elapsed_secs());
    ctx.run.write_summary(&s)?;
    Ok(())
}
