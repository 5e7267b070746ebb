//! The runner end to end, on the linear-regression pipeline: a run directory with everything
//! in it, identical metrics for identical seeds, and a killed run that resumes to the same
//! result as an uninterrupted one.

mod common;

use std::path::Path;

use common::{kill_after_first_checkpoint, lmlab, only_run_dir, run};

fn metrics(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap()
}

#[test]
fn a_run_writes_config_metrics_summary_and_checkpoints() {
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, err) = run(lmlab()
        .args(["recipe", "linear-regression", "--smoke", "--quiet", "--out"])
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "linear-regression");
    assert!(stdout.contains(&dir.display().to_string()));
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        config["scheduler"]["steps"].as_integer(),
        Some(60),
        "smoke overrides applied"
    );
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("least-squares optimum"), "{summary}");
    assert!(dir.join("checkpoints/LATEST").is_file());
    assert!(dir.join("plots").is_dir());
    let last_test = metrics(&dir)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m["split"] == "test")
        .last()
        .unwrap();
    assert_eq!(last_test["step"], 60);
}

#[test]
fn the_full_recipe_reaches_the_least_squares_optimum() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "linear-regression", "--quiet", "--out"])
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let summary =
        std::fs::read_to_string(only_run_dir(out.path(), "linear-regression").join("summary.md"))
            .unwrap();
    assert!(summary.contains("**holds**"), "{summary}");
}

#[test]
fn same_seed_same_metrics_other_seed_other_metrics() {
    let out = tempfile::tempdir().unwrap();
    for (sub, seed) in [("a", "1"), ("b", "1"), ("c", "2")] {
        let (code, _, err) = run(lmlab()
            .args([
                "recipe",
                "linear-regression",
                "--smoke",
                "--quiet",
                "--seed",
                seed,
                "--out",
            ])
            .arg(out.path().join(sub)));
        assert_eq!(code, 0, "{err}");
    }
    let m = |s: &str| metrics(&only_run_dir(&out.path().join(s), "linear-regression"));
    assert_eq!(m("a"), m("b"));
    assert_ne!(m("a"), m("c"));
}

/// A long enough run to be killed in the middle: a wider MLP and more steps.
const LONG: &[&str] = &[
    "--set",
    "scheduler.steps=1500",
    "--set",
    "scheduler.hidden=[128, 128]",
    "--set",
    "scheduler.batch_size=128",
    "--set",
    "scheduler.checkpoint_every=100",
    "--set",
    "scheduler.eval_every=100",
    "--set",
    "scheduler.optim.lr=0.003",
];

#[test]
fn a_killed_run_resumes_to_the_same_metrics() {
    let out = tempfile::tempdir().unwrap();
    // Uninterrupted.
    let (code, _, err) = run(lmlab()
        .args(["recipe", "linear-regression", "--quiet"])
        .args(LONG)
        .arg("--out")
        .arg(out.path().join("full")));
    assert_eq!(code, 0, "{err}");
    let full = metrics(&only_run_dir(&out.path().join("full"), "linear-regression"));

    // Killed with SIGKILL once a checkpoint exists, then resumed.
    let killed_root = out.path().join("killed");
    let mut cmd = lmlab();
    cmd.args(["recipe", "linear-regression", "--quiet"])
        .args(LONG)
        .arg("--out")
        .arg(&killed_root);
    let dir = kill_after_first_checkpoint(cmd, &killed_root, "linear-regression", "step-00001500");
    let (code, _, err) = run(lmlab()
        .args(["recipe", "linear-regression", "--quiet", "--resume"])
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        metrics(&dir),
        full,
        "the resumed run's metrics equal the uninterrupted run's"
    );
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("Resumed from the checkpoint at step"),
        "{summary}"
    );
}
