//! `async-rlhf --smoke` and `off-policy-robustness --smoke` end to end: the run directory holds
//! one record per seed and per RL run, per-update records whose staleness respects each mode's
//! bound, the summary's tables and claims, and the plots; a resumed run redoes only the runs
//! that had not finished and gets the same evaluation.

mod common;

use common::{lmlab, only_run_dir, run};
use serde_json::Value;

fn records(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn async_rlhf_smoke_compares_sync_and_async_and_resumes_by_run() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "async-rlhf", "--smoke", "--quiet"])
        .args(["--set", "scheduler.seeds=[0, 1]"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "async-rlhf");
    let recs = records(&dir);
    let seeds: Vec<&Value> = recs.iter().filter(|r| r["stage"] == "seed").collect();
    let runs: Vec<&Value> = recs.iter().filter(|r| r["stage"] == "run").collect();
    assert_eq!((seeds.len(), runs.len()), (2, 4), "2 seeds × (sync, async)");
    for r in &runs {
        let res = &r["result"];
        let win = res["eval"]["win_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&win), "{res}");
        assert_eq!(res["updates"], 4);
        let bound = if res["mode"] == "async" { 1 } else { 0 };
        assert!(res["max_staleness"].as_u64().unwrap() <= bound, "{res}");
    }
    // Per-update records: 4 per run, staleness within the mode's bound, in step order.
    let steps: Vec<&Value> = recs.iter().filter(|r| r["stage"] == "rl").collect();
    assert_eq!(steps.len(), 16);
    for r in &steps {
        let s = r["staleness"].as_u64().unwrap();
        assert!(s <= if r["mode"] == "async" { 1 } else { 0 }, "{r}");
        assert_eq!(
            r["step"].as_u64().unwrap() - r["version"].as_u64().unwrap(),
            s
        );
        assert!(r["loss"].as_f64().unwrap().is_finite());
        if cfg!(target_os = "linux") {
            assert!(
                r["learner_cpu"].is_u64() && r["generator_cpu"].is_u64(),
                "{r}"
            );
        }
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "| online DPO | 1 | sync | 2 |",
        "| online DPO | 1 | async | 2 |",
        "## Speed-up of async over sync",
        "theoretical bound",
        "Best-of-2 SFT",
        "held-out preference accuracy",
        "## The paper's claims at our scale",
        "faster in wall-clock",
        "## Learning curves",
        "| online-dpo sync N=1 | 0–3 |",
        "on-policy online DPO (N = 1) beats the SFT policy's gold win rate",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    for plot in ["plots/train_gold.svg", "plots/train_kl.svg"] {
        assert!(
            std::fs::read_to_string(dir.join(plot))
                .unwrap()
                .contains("<svg"),
            "{plot}"
        );
    }

    // As if killed during seed 1's async run: its result and per-update records are gone.
    let is_last = |r: &Value| {
        let x = if r["stage"] == "run" { &r["result"] } else { r };
        (r["stage"] == "run" || r["stage"] == "rl") && x["seed"] == 1 && x["mode"] == "async"
    };
    let original = runs.iter().find(|r| is_last(r)).unwrap()["result"].clone();
    let kept: String = recs
        .iter()
        .filter(|r| !(is_last(r) && (r["stage"] == "run" || r["step"].as_u64() == Some(3))))
        .map(|r| format!("{r}\n"))
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), kept).unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "async-rlhf", "--quiet", "--resume"])
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    let again = records(&dir);
    assert_eq!(
        again.iter().filter(|r| r["stage"] == "seed").count(),
        2,
        "seeds are not re-logged"
    );
    assert_eq!(again.iter().filter(|r| r["stage"] == "run").count(), 4);
    assert_eq!(
        again.iter().filter(|r| r["stage"] == "rl").count(),
        16,
        "partial records are redone once"
    );
    let redone = again
        .iter()
        .find(|r| r["stage"] == "run" && is_last(r))
        .unwrap();
    // Generation versions do not depend on thread timing: the same run gives the same model.
    assert_eq!(redone["result"]["eval"], original["eval"]);
}

#[test]
fn off_policy_robustness_smoke_writes_the_win_rate_vs_kl_plot() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "off-policy-robustness", "--smoke", "--quiet"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "off-policy-robustness");
    let recs = records(&dir);
    assert_eq!(
        recs.iter().filter(|r| r["stage"] == "run").count(),
        6,
        "3 methods × N ∈ {{1, 2}}"
    );
    // Sync with N minibatches: minibatch i of a round is i updates stale. Each record has
    // the minibatch's measured KL from its generating policy to the learner: zero up to
    // rounding when fresh, larger once the learner has moved on.
    let mut k3 = [Vec::new(), Vec::new()];
    for r in recs.iter().filter(|r| r["stage"] == "rl") {
        let n = r["n"].as_u64().unwrap();
        let staleness = r["staleness"].as_u64().unwrap();
        assert_eq!(staleness, r["step"].as_u64().unwrap() % n, "{r}");
        let kl = r["behaviour_kl"].as_f64().unwrap();
        if staleness == 0 {
            assert!(kl.abs() < 1e-3, "a fresh minibatch's KL {kl}: {r}");
        }
        k3[staleness as usize].push(r["behaviour_kl_k3"].as_f64().unwrap());
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&k3[1]) > mean(&k3[0]), "k3 by staleness: {k3:?}");
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "## Robustness to off-policy data",
        "## How off-policy the consumed minibatches were",
        "| PPO |",
        "| RLOO |",
        "| online DPO |",
        "degrades least",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    let plot = std::fs::read_to_string(dir.join("plots/win_rate_vs_kl.svg")).unwrap();
    assert!(plot.contains("<svg") && plot.contains("RLOO"));
}
