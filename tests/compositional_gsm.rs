//! Compositional GSM: `compositional-gsm --smoke` end to end (three sizes, the four views, the
//! curve, the summary), GSM8K's pairs recomputed from their annotations, and the real path's
//! smoke run with SmolLM2 and Gemma 3.

mod common;

use common::{records, smoke};
use lmlab::lmlab_plugin_compositional_gsm::pairs::{
    CompositionalGsm, CompositionalGsmConfig, PairSource, recompute,
};
use lmlab::{Split, Task};

#[test]
fn compositional_gsm_smoke_trains_three_sizes_and_reports_the_gap() {
    let (_out, dir) = smoke("compositional-gsm", &[]);
    let data = records(&dir, "data");
    assert_eq!(data[0]["training_sequences"], 120 + 6, "{data:?}");
    assert_eq!(data[0]["composed"], 6);
    let sizes = records(&dir, "size");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    let params: Vec<u64> = sizes
        .iter()
        .map(|s| s["params"].as_u64().unwrap())
        .collect();
    assert!(params[0] < params[1] && params[1] < params[2], "{params:?}");
    for s in &sizes {
        let sc = &s["scores"];
        assert_eq!(sc["pairs"], 8);
        let f = |k: &str| sc[k].as_f64().unwrap();
        assert!(
            (f("delta") - (f("s_comp") - f("s1") * f("s2"))).abs() < 1e-12,
            "{sc}"
        );
    }
    let curve = records(&dir, "curve");
    let steps: Vec<u64> = curve.iter().map(|c| c["steps"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4]);
    // The curve starts at the large model as trained.
    assert_eq!(curve[0]["scores"], sizes[2]["scores"]);
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "## Δ per size (mean ± sd over seeds)",
        "| small (",
        "Fréchet range of Δ (points)",
        "## Why: distraction, second hop, control",
        "## Fine-tuning longer (the large model, single problems only)",
        "a reasoning gap (Δ < 0), large model",
        "the gap shrinks with size",
        "distraction contributes",
        "the second hop contributes",
        "compositional accuracy rises, then falls",
        "## Time",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    let svg = std::fs::read_to_string(dir.join("plots/finetune_curve.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("S_comp"));
}

/// Every GSM8K pair the construction keeps recomputes, through Q2's calculator annotations,
/// to its stated answer, on both splits; and the rule keeps most test problems.
#[test]
fn every_gsm8k_pair_recomputes_to_its_stated_answer() {
    let Some(data) = common::data_dir("gsm8k/test.jsonl") else {
        return;
    };
    let task = CompositionalGsm::new(
        CompositionalGsmConfig {
            source: PairSource::Gsm8k,
            dir: Some(data.join("gsm8k")),
            ..Default::default()
        },
        0,
    )
    .unwrap();
    for (split, problems, at_least) in [(Split::Test, 1319, 500), (Split::Train, 6973, 2500)] {
        let pairs = task.problems(split).unwrap();
        println!("{split}: {} pairs of {problems} problems", pairs.len());
        for p in pairs.iter().take(3) {
            println!("{p:#?}");
        }
        assert!(pairs.len() >= at_least, "{split}: {}", pairs.len());
        let ids: std::collections::HashSet<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), pairs.len());
        for p in &pairs {
            assert_eq!(recompute(p), Some(Ok(())), "{p:#?}");
            assert_ne!(p.q1, p.q2_standalone);
            assert!(task.check(p, &format!("… The final answer is {}.", p.a2)));
        }
    }
}

/// `compositional-gsm-real --smoke`: SmolLM2 and Gemma 3 answer a GSM8K pair four ways, and the
/// report puts their gaps next to the paper's.
#[test]
fn compositional_gsm_real_smoke_asks_two_checkpoints() {
    let Some((_out, dir)) =
        common::smoke_gsm8k_checkpoints("compositional-gsm-real", "small", "large")
    else {
        return;
    };
    let models = records(&dir, "model");
    assert_eq!(models.len(), 2, "{models:?}");
    let params: Vec<u64> = models
        .iter()
        .map(|m| m["params"].as_u64().unwrap())
        .collect();
    assert!(
        params[0] < 140_000_000 && params[1] > 260_000_000,
        "{params:?}"
    );
    for m in &models {
        assert_eq!(m["outcomes"].as_array().unwrap().len(), 1);
        assert_eq!(m["answers"]["pair"].as_array().unwrap().len(), 1);
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "## S1, S2, S_comp and Δ",
        "## Distraction, second hop, control",
        "| GPT-4o / GPT-4o mini | 1.1 | 14.2 |",
        "| ours: ",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
}
