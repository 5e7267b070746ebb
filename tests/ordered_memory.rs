//! `ordered-memory --smoke` end to end: the run directory holds one result per model and seed,
//! a summary with both models on every evaluation set and the plots; a resumed run continues
//! an unfinished training from its checkpoint and gets exactly the numbers of an uninterrupted
//! one. Also: the real ListOps test set parses and every label re-evaluates.

mod common;

use common::{data_dir, lmlab, only_run_dir, run};
use lmlab_plugin_ordered_memory::listops::read_tsv;

fn results(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["stage"] == "result")
        .collect()
}

#[test]
fn ordered_memory_smoke_reports_both_models_and_resumes_mid_training() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "ordered-memory", "--smoke", "--quiet"])
        .args(["--set", "scheduler.seeds=[0, 1]"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "ordered-memory");
    let first = results(&dir);
    assert_eq!(first.len(), 4, "two models × two seeds");
    for r in &first {
        let sets = r["result"]["sets"].as_array().unwrap();
        let names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert!(names.starts_with(&["test", "long"]), "{names:?}");
        for s in sets {
            let a = s["accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{s}");
            let f1 = &s["f1"];
            if r["model"] == "ordered-memory" {
                assert!((0.0..=1.0).contains(&f1.as_f64().unwrap()), "{s}");
            } else {
                assert!(f1.is_null(), "the LSTM induces no tree: {s}");
            }
        }
        assert_eq!(
            r["result"]["curve"].as_array().unwrap().len(),
            2,
            "eval every 10 of 20 steps"
        );
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "| Ordered Memory |",
        "| LSTM |",
        "accuracy `test`",
        "accuracy `long`",
        "parse F1 `test`",
        "### Accuracy by root operator and by depth on `test`",
        "| root MAX |",
        "## Claims at our scale",
        "Ordered Memory ≫ LSTM",
        "degrades less with length",
        " ± ",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    for plot in ["learning_curves.svg", "accuracy_by_length.svg"] {
        assert!(dir.join("plots").join(plot).exists(), "{plot}");
    }

    // Resume mid-training: forget seed 1's Ordered Memory result and go back to its step-10
    // checkpoint; the resumed run trains steps 11–20 again and must get the same numbers.
    let ckpt = dir.join("checkpoints/ordered-memory-seed1");
    assert!(
        ckpt.join("step-00000010").is_dir(),
        "the checkpoint before the last is kept"
    );
    std::fs::write(ckpt.join("LATEST"), "step-00000010").unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let kept: String = metrics
        .lines()
        .filter(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            !(r["stage"] == "result" && r["seed"] == 1 && r["model"] == "ordered-memory")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), kept).unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "ordered-memory", "--quiet", "--resume"])
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    let second = results(&dir);
    assert_eq!(second.len(), 4);
    let key = |r: &serde_json::Value| {
        let mut r = r["result"].clone();
        let r = r.as_object_mut().unwrap();
        r.remove("train_seconds");
        // Wall-clock seconds at each validation (a resumed run counts only its own).
        let steps: Vec<serde_json::Value> = r["time_curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[0].clone())
            .collect();
        r.insert("time_curve".into(), steps.into());
        serde_json::Value::Object(r.clone())
    };
    for r in &first {
        let again = second
            .iter()
            .find(|s| s["seed"] == r["seed"] && s["model"] == r["model"])
            .unwrap();
        assert_eq!(key(again), key(r), "seed {} {}", r["seed"], r["model"]);
    }
    // The resumed training's step records are written once.
    let records = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let validation_at_20 = records
        .lines()
        .filter(|l| l.contains("\"validation\"") && l.contains("\"ordered-memory\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["seed"] == 1 && r["step"] == 20)
        .count();
    assert_eq!(validation_at_20, 1, "{records}");
}

#[test]
fn the_real_listops_test_set_parses_and_every_label_reevaluates() {
    let Some(dir) = data_dir("listops/test_d20s.tsv") else {
        return;
    };
    let all = read_tsv(&dir.join("listops/test_d20s.tsv")).unwrap();
    assert_eq!(all.len(), 10_000);
    assert_eq!(all.iter().map(|e| e.depth).max(), Some(19));
    // Every expression of two or more tokens is bracketed whole.
    assert!(
        all.iter()
            .filter(|e| e.tokens.len() >= 2)
            .all(|e| e.gold.contains(&(0, e.tokens.len())))
    );
    let small = read_tsv(&dir.join("listops/test.tsv")).unwrap();
    assert_eq!(small.len(), 500);
}
