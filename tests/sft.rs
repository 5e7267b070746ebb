//! The LM training path end to end on a tiny configuration of `sft-arith`: the run writes its
//! summary and plots, identical seeds give identical metrics, and a run killed with SIGKILL
//! after a checkpoint resumes to exactly the metrics of an uninterrupted run.

mod common;

use std::path::Path;

use common::{kill_after_first_checkpoint, lmlab, only_run_dir, run};

const TINY: &[&str] = &[
    "--set",
    "task.n_train=400",
    "--set",
    "task.n_test=12",
    "--set",
    "policy.model.dim=32",
    "--set",
    "policy.model.n_layers=2",
    "--set",
    "policy.model.n_heads=2",
    "--set",
    "policy.model.n_kv_heads=1",
    "--set",
    "policy.model.hidden_dim=64",
    "--set",
    "scheduler.batch_size=8",
    "--set",
    "scheduler.steps=60",
    "--set",
    "scheduler.log_every=5",
    "--set",
    "scheduler.eval_every=20",
    "--set",
    "scheduler.eval_problems=6",
    "--set",
    "scheduler.checkpoint_every=20",
    "--set",
    "sampler.max_new_tokens=24",
    "--set",
    "scheduler.optim.warmup_steps=5",
    "--set",
    "scheduler.optim.lr=0.01",
];

fn metrics(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap()
}

#[test]
fn sft_runs_are_reproducible_and_resume_exactly_after_sigkill() {
    let out = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        let (code, _, err) = run(lmlab()
            .args(["recipe", "sft-arith", "--quiet"])
            .args(TINY)
            .arg("--out")
            .arg(out.path().join(sub)));
        assert_eq!(code, 0, "{err}");
    }
    let a = only_run_dir(&out.path().join("a"), "sft-arith");
    let b = only_run_dir(&out.path().join("b"), "sft-arith");
    assert_eq!(metrics(&a), metrics(&b), "same seed, same metrics");
    let summary = std::fs::read_to_string(a.join("summary.md")).unwrap();
    assert!(summary.contains("pass@1 (held out)"), "{summary}");
    for plot in ["loss.svg", "pass_at_1.svg"] {
        let svg = std::fs::read_to_string(a.join("plots").join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{plot}"
        );
    }
    // The loss fell.
    let losses: Vec<f64> = metrics(&a)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert!(losses.last().unwrap() < &(0.7 * losses[0]), "{losses:?}");

    // Kill a third run once its first checkpoint exists, then resume it.
    let killed_root = out.path().join("k");
    let mut cmd = lmlab();
    cmd.args(["recipe", "sft-arith", "--quiet"])
        .args(TINY)
        .arg("--out")
        .arg(&killed_root);
    let dir = kill_after_first_checkpoint(cmd, &killed_root, "sft-arith", "step-00000060");
    let (code, _, err) = run(lmlab()
        .args(["recipe", "sft-arith", "--quiet", "--resume"])
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        metrics(&dir),
        metrics(&a),
        "resumed metrics equal the uninterrupted run's"
    );
}

#[test]
fn sft_smoke_fine_tunes_a_checkpoint_and_its_loss_falls() {
    let Some(data) = common::data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let model = data.join("stories260k/stories260K.bin");
    let (code, _, err) = run(lmlab()
        .args(["recipe", "sft-arith", "--smoke", "--quiet"])
        .args(["--set", "policy.use=checkpoint"])
        .arg("--set")
        .arg(format!("policy.path={}", model.display()))
        .args([
            "--set",
            "scheduler.steps=30",
            "--set",
            "scheduler.log_every=5",
        ])
        .args([
            "--set",
            "scheduler.eval_every=1000",
            "--set",
            "scheduler.checkpoint_every=0",
        ])
        .args(["--set", "task.n_test=8"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "sft-arith");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        config.contains("use = \"checkpoint\"") && config.contains("stories260K.bin"),
        "{config}"
    );
    let losses: Vec<f64> = metrics(&dir)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 6, "{losses:?}");
    assert!(losses[5] < 0.8 * losses[0], "the loss falls: {losses:?}");
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("260032-parameter checkpoint"), "{summary}");
}
