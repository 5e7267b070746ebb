//! `compute-matched-sampling --smoke` end to end: both models sample at every budget, the WC
//! model at its compute-matched count, each setup is fine-tuned on every data set, and the
//! summary has the sampling and fine-tuning tables, the ablation, the claims and both plots.

mod common;

use common::{records, smoke};
use lmlab::sdk::sampling::compute_matched_samples;

#[test]
fn compute_matched_smoke_samples_at_matched_flops_and_fine_tunes_every_setup() {
    let (_out, dir) = smoke("compute-matched-sampling", &[]);
    let seeds = records(&dir, "seed");
    assert_eq!(seeds.len(), 1, "{seeds:?}");
    let r = &seeds[0]["result"];
    let params = |m: &str| r["params"][m].as_u64().unwrap() as usize;
    assert!(params("student") < params("WC") && params("WC") < params("SE"));

    // S_WC spends what S_SE does: W is each model's mean over its first S_max samples, which
    // the number-matched WC side and the SE side at the largest budget are.
    let budgets = r["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    let last = &budgets[1]["sides"];
    let w = |side: &str| last[side]["mean_tokens"].as_f64().unwrap();
    let (w_se, w_wc) = (w("SE data"), w("WC data, number-matched"));
    for b in budgets {
        let s_se = b["s_se"].as_u64().unwrap() as usize;
        let s_wc = b["s_wc"].as_u64().unwrap() as usize;
        assert_eq!(
            s_wc,
            compute_matched_samples(s_se, params("SE"), w_se, params("WC"), w_wc)
        );
        let side = |name: &str, field: &str| b["sides"][name][field].as_f64().unwrap();
        assert_eq!(side("SE data", "samples"), s_se as f64);
        assert_eq!(side("WC data, compute-matched", "samples"), s_wc as f64);
        assert_eq!(side("WC data, number-matched", "samples"), s_se as f64);
        // Realised FLOPs are 2 · P · tokens.
        for (name, p) in [("SE data", "SE"), ("WC data, compute-matched", "WC")] {
            let want = 2.0 * params(p) as f64 * side(name, "tokens");
            assert!((side(name, "flops") - want).abs() <= 1e-6 * want, "{name}");
        }
    }
    assert!(
        budgets[0]["s_wc"].as_u64() > budgets[0]["s_se"].as_u64(),
        "the cheaper model draws more: {budgets:?}"
    );

    // 3 setups × (2 budgets × 3 data sets + the unfiltered SE and WC data at the largest).
    let finetunes = r["finetunes"].as_array().unwrap();
    assert_eq!(finetunes.len(), 3 * (2 * 3 + 2));
    for f in finetunes {
        let b = budgets.iter().find(|x| x["s_se"] == f["budget"]).unwrap();
        let data = f["data"].as_str().unwrap();
        let side = &b["sides"][data];
        let expected = if f["filtered"].as_bool().unwrap() {
            side["correct"].as_u64().unwrap()
        } else {
            side["samples"].as_u64().unwrap() * 12
        };
        assert_eq!(f["examples"].as_u64().unwrap(), expected, "{f}");
    }

    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "## Models",
        "## Sampling at matched budgets",
        "### Budget S_SE = 1",
        "| coverage@S (%) |",
        "| diversity@S (unique correct solutions per problem) |",
        "| false-positive rate (%) |",
        "## Fine-tuning on sampled data",
        "| knowledge distillation (student) | 2 |",
        "| weak-to-strong improvement (SE) | 1 |",
        "### No-filter ablation (S_SE = 2)",
        "## The paper's claims at this scale",
        "WC samples have a higher false-positive rate at matched compute (S_SE = 2)",
        "self-improvement: WC-trained ≥ SE-trained, compute-matched (S_SE = 2)",
        "weak-to-strong improvement: SE-trained ≥ WC-trained, number-matched (S = 1)",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    for plot in ["coverage.svg", "diversity.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("weaker-cheaper"),
            "{plot}"
        );
    }
}

/// `compute-matched-real --smoke`: SmolLM2 and Gemma 3 sample GSM8K solutions, the WC model as
/// many more as its parameters and tokens make compute-matched, and the report says so.
#[test]
fn compute_matched_real_smoke_samples_two_checkpoints_at_matched_flops() {
    let Some((_out, dir)) =
        common::smoke_gsm8k_checkpoints("compute-matched-real", "policy", "strong")
    else {
        return;
    };
    let reports = records(&dir, "report");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0]["result"];
    let params = |m: &str| r["params"][m].as_u64().unwrap() as usize;
    // Gemma-3-270M and SmolLM2-135M.
    assert!(params("SE") > 260_000_000 && params("WC") < 140_000_000);
    let b = &r["budgets"][0];
    let w = |side: &str| b["sides"][side]["mean_tokens"].as_f64().unwrap();
    let s_wc = b["s_wc"].as_u64().unwrap() as usize;
    assert_eq!(
        s_wc,
        compute_matched_samples(
            1,
            params("SE"),
            w("SE data"),
            params("WC"),
            w("WC data, number-matched")
        )
    );
    assert_eq!(b["sides"]["WC data, compute-matched"]["samples"], s_wc);
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in ["## Models", "### Budget S_SE = 1", "| coverage@S (%) |"] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
}
