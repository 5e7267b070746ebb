//! The summary: Δ per size, the analyses (distraction, second hop, control), the fine-tune-
//! longer curve and its plot, and the claims.

use lmlab_sdk::RunContext;
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::plot::{Series, line_plot};
use lmlab_sdk::report::{
    Claim, Fmt, claims_table, fits_section, footer, per_seed, stat_table, time_section,
};

use crate::metrics::{Scores, frechet_bounds};
use crate::{CompositionalConfig, Data, SIZES, SeedResult, composed_count};

const PCT: Fmt = Fmt::Percent(1);

/// Per seed, a value of one size's scores.
fn of(results: &[SeedResult], size: &str, f: impl Fn(&Scores) -> Option<f64>) -> Vec<f64> {
    per_seed(results, |r| r.sizes.get(size).and_then(|e| f(&e.scores)))
}

/// Per seed, the mean over the sizes of a value.
fn over_sizes(results: &[SeedResult], f: impl Fn(&Scores) -> Option<f64>) -> Vec<f64> {
    per_seed(results, |r| {
        let v: Vec<f64> = SIZES
            .iter()
            .filter_map(|s| r.sizes.get(*s).and_then(|e| f(&e.scores)))
            .collect();
        (v.len() == SIZES.len()).then(|| mean_std(&v).0)
    })
}

/// The rows of Δ per size.
pub(crate) fn delta_table(rows: &[(String, Vec<Scores>)]) -> String {
    let cols = [
        "model",
        "S1 (%)",
        "S2 (%)",
        "S1·S2 (%)",
        "S_comp (%)",
        "Δ = S_comp − S1·S2 (points)",
        "Δ per seed (points)",
        "S_comp / (S1·S2)",
        "Fréchet range of Δ (points)",
    ];
    let mut t = lmlab_sdk::report::Table::new(cols);
    for (label, s) in rows {
        let v = |f: &dyn Fn(&Scores) -> f64| s.iter().map(f).collect::<Vec<f64>>();
        let (lo, hi): (Vec<f64>, Vec<f64>) = s.iter().map(|x| frechet_bounds(x.s1, x.s2)).unzip();
        t.row([
            label.clone(),
            PCT.cell(&v(&|x| x.s1)),
            PCT.cell(&v(&|x| x.s2)),
            PCT.cell(&v(&|x| x.s1 * x.s2)),
            PCT.cell(&v(&|x| x.s_comp)),
            PCT.cell(&v(&|x| x.delta)),
            s.iter()
                .map(|x| PCT.signed(x.delta + 0.0))
                .collect::<Vec<_>>()
                .join(", "),
            Fmt::Fixed(2).cell(
                &s.iter()
                    .filter(|x| x.s1 * x.s2 > 0.0)
                    .map(|x| x.s_comp / (x.s1 * x.s2))
                    .collect::<Vec<f64>>(),
            ),
            format!(
                "[{}, {}]",
                PCT.signed(mean_std(&lo).0),
                PCT.signed(mean_std(&hi).0)
            ),
        ]);
    }
    t.markdown()
}

/// The rows of the analyses.
pub(crate) fn analyses_table(rows: &[(String, Vec<Scores>)]) -> String {
    let mut t = lmlab_sdk::report::Table::new([
        "model",
        "Q1 alone (%)",
        "Q1 in the pair (%)",
        "distraction (points)",
        "S2 (%)",
        "Q2 given Q1 right in the pair (%)",
        "second hop (points)",
        "control: X given (%)",
        "S2 − control (points)",
    ]);
    for (label, s) in rows {
        let v = |f: &dyn Fn(&Scores) -> Option<f64>| s.iter().filter_map(f).collect::<Vec<f64>>();
        t.row([
            label.clone(),
            PCT.cell(&v(&|x| Some(x.s1))),
            PCT.cell(&v(&|x| Some(x.s1_in_pair))),
            PCT.cell(&v(&|x| Some(x.distraction()))),
            PCT.cell(&v(&|x| Some(x.s2))),
            PCT.cell(&v(&|x| x.s2_given_q1)),
            PCT.cell(&v(&|x| x.second_hop())),
            PCT.cell(&v(&|x| Some(x.control))),
            PCT.cell(&v(&|x| Some(x.control_gap()))),
        ]);
    }
    t.markdown()
}

/// The claims.
fn claims(results: &[SeedResult], cfg: &CompositionalConfig) -> Vec<Claim> {
    let mut out = Vec::new();
    for size in SIZES {
        let prod = of(results, size, |s| Some(s.s1 * s.s2));
        let comp = of(results, size, |s| Some(s.s_comp));
        out.push(Claim::paired(
            format!("a reasoning gap (Δ < 0), {size} model: S1·S2 above S_comp"),
            &prod,
            &comp,
            PCT,
        ));
    }
    let gap = |size: &str| of(results, size, |s| Some(-s.delta + 0.0));
    let (small, medium, large) = (gap(SIZES[0]), gap(SIZES[1]), gap(SIZES[2]));
    let monotone =
        mean_std(&small).0 > mean_std(&medium).0 && mean_std(&medium).0 > mean_std(&large).0;
    out.push(
        Claim::paired(
            "the gap shrinks with size: −Δ of the small model above the large model's",
            &small,
            &large,
            PCT,
        )
        .note(format!(
            "small → medium → large mean −Δ {} → {} → {} points ({}); S_comp {}",
            PCT.signed(mean_std(&small).0),
            PCT.signed(mean_std(&medium).0),
            PCT.signed(mean_std(&large).0),
            if monotone { "monotone" } else { "not monotone" },
            SIZES
                .iter()
                .map(|size| format!(
                    "{}%",
                    PCT.num(mean_std(&of(results, size, |s| Some(s.s_comp))).0)
                ))
                .collect::<Vec<_>>()
                .join(" → ")
        )),
    );
    out.push(Claim::paired(
        "distraction contributes: Q1 is solved more often alone than inside the pair (mean over sizes)",
        &over_sizes(results, |s| Some(s.s1)),
        &over_sizes(results, |s| Some(s.s1_in_pair)),
        PCT,
    ));
    out.push(Claim::paired(
        "the second hop contributes: S2 above Q2's accuracy given Q1 right in the pair (mean over sizes)",
        &over_sizes(results, |s| Some(s.s2)),
        &over_sizes(results, |s| s.s2_given_q1),
        PCT,
    ));
    if cfg.curve.at.len() >= 3 {
        let at = |i: usize, f: fn(&Scores) -> f64| {
            per_seed(results, |r| r.curve.get(i).map(|p| f(&p.scores)))
        };
        let last = cfg.curve.at.len() - 1;
        let means: Vec<f64> = (0..=last)
            .map(|i| mean_std(&at(i, |s| s.s_comp)).0)
            .collect();
        // The first step at the highest mean.
        let peak = (0..=last).fold(0, |best, i| if means[i] > means[best] { i } else { best });
        let prod0 = mean_std(&at(0, |s| s.s1 * s.s2)).0;
        let prod_last = mean_std(&at(last, |s| s.s1 * s.s2)).0;
        let rises_then_falls = peak > 0 && peak < last;
        out.push(Claim::check(
            "fine-tuning longer on single problems keeps raising S1·S2 while compositional accuracy rises, then falls",
            format!(
                "S1·S2 {}% → {}%; S_comp {} over steps {:?} (peak at {})",
                PCT.num(prod0),
                PCT.num(prod_last),
                means.iter().map(|m| format!("{}%", PCT.num(*m))).collect::<Vec<_>>().join(" → "),
                cfg.curve.at,
                cfg.curve.at[peak]
            ),
            prod_last > prod0 && rises_then_falls,
        ));
    }
    out
}

fn curve_plot(
    ctx: &RunContext,
    cfg: &CompositionalConfig,
    results: &[SeedResult],
) -> anyhow::Result<()> {
    let line = |f: fn(&Scores) -> f64| -> Vec<(f64, f64)> {
        cfg.curve
            .at
            .iter()
            .enumerate()
            .map(|(i, &steps)| {
                let v = per_seed(results, |r| r.curve.get(i).map(|p| f(&p.scores)));
                (steps as f64, 100.0 * mean_std(&v).0)
            })
            .collect()
    };
    line_plot(
        &ctx.run.plots_dir().join("finetune_curve.svg"),
        "fine-tuning the large model longer on single problems",
        "fine-tuning steps",
        "accuracy (%)",
        &[
            Series {
                name: "S1·S2 (expected from the parts)",
                points: line(|s| s.s1 * s.s2),
            },
            Series {
                name: "S_comp (the pairs)",
                points: line(|s| s.s_comp),
            },
        ],
    )
}

pub(crate) fn write(
    ctx: &mut RunContext,
    cfg: &CompositionalConfig,
    models: &[String],
    d: &Data,
    results: &[SeedResult],
    computed: usize,
) -> anyhow::Result<()> {
    let seeds: Vec<u64> = results.iter().map(|r| r.seed).collect();
    let mut s = format!(
        "# {} — compositional GSM: the reasoning gap across model sizes\n\nThree models trained from scratch on {} single problems (each training pair's Q1 and standalone Q2) plus {} composed-format examples ({:.0}% of the singles): {}. Test: {} held-out pairs, each asked four ways (Q1 alone, the standalone Q2, the pair, the control with X given), greedy. Seeds: {seeds:?}.\n\nΔ = S_comp − S1·S2; the paper's reasoning gap is −Δ (positive when the pairs are solved less often than the parts predict). The Fréchet range is where Δ would lie for a composition right exactly when both parts are, whatever their dependence.\n\nDifferences from the paper, all of scale: small Llamas trained from scratch on generated GSM-lite problems (1–3 operations; X replaces Q2's start value) instead of pretrained LLMs 8-shot on GSM8K pairs; the models learn the composed format from a few percent of their training data rather than from 8 demonstrations.\n\n",
        ctx.recipe,
        d.train.len() - composed_count(&d.train),
        composed_count(&d.train),
        100.0 * cfg.composed_fraction,
        models.join("; "),
        d.test.len(),
    );
    let rows: Vec<(String, Vec<Scores>)> = SIZES
        .iter()
        .map(|size| {
            let params = results
                .first()
                .and_then(|r| r.params.get(*size))
                .copied()
                .unwrap_or(0);
            (
                format!("{size} ({params} parameters)"),
                results
                    .iter()
                    .filter_map(|r| r.sizes.get(*size).map(|e| e.scores.clone()))
                    .collect(),
            )
        })
        .collect();
    s += &format!(
        "## Δ per size (mean ± sd over seeds)\n\n{}\n",
        delta_table(&rows)
    );
    s += &format!(
        "## Why: distraction, second hop, control\n\nDistraction is Q1 alone minus Q1 inside the pair (its `The Q1 answer is` line); second hop is S2 minus Q2's accuracy on the pairs whose Q1 was right inside them; the control asks the pair with X already written as its value.\n\n{}\n",
        analyses_table(&rows)
    );
    if !cfg.curve.at.is_empty() {
        curve_plot(ctx, cfg, results)?;
        let curve_rows: Vec<(String, Vec<Vec<f64>>)> = cfg
            .curve
            .at
            .iter()
            .enumerate()
            .map(|(i, steps)| {
                let v = |f: fn(&Scores) -> f64| {
                    per_seed(results, |r| r.curve.get(i).map(|p| f(&p.scores)))
                };
                (
                    steps.to_string(),
                    vec![
                        v(|s| s.s1),
                        v(|s| s.s2),
                        v(|s| s.s1 * s.s2),
                        v(|s| s.s_comp),
                        v(|s| s.delta),
                    ],
                )
            })
            .collect();
        s += &format!(
            "## Fine-tuning longer (the large model, single problems only)\n\n![curve](plots/finetune_curve.svg)\n\n{}\n",
            stat_table(
                &[
                    "steps",
                    "S1 (%)",
                    "S2 (%)",
                    "S1·S2 (%)",
                    "S_comp (%)",
                    "Δ (points)"
                ],
                curve_rows,
                PCT
            )
        );
    }
    s += &format!(
        "## The paper's claims at this scale\n\n{}\n",
        claims_table(&claims(results, cfg))
    );
    s += &fits_section(results.iter().map(|r| r.fits.as_slice()));
    s += &time_section(results.iter().map(|r| &r.stage_seconds));
    let seconds = results.iter().map(|r| r.seconds).sum();
    s += &footer(seconds, results.len(), computed, ctx.elapsed_secs());
    ctx.run.write_summary(&s)?;
    Ok(())
}
