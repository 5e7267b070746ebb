//! `v-star --smoke` end to end: the run directory holds the resolved config, one metrics record
//! per seed, a summary table with every method and the Best-of-k plot; a resumed run recomputes
//! only the seeds that were not finished, and gets the same numbers.

mod common;

use common::{lmlab, only_run_dir, records, run};

#[test]
fn v_star_smoke_writes_the_table_and_plot_and_resumes_by_seed() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "v-star", "--smoke", "--quiet"])
        .args(["--set", "scheduler.seeds=[0, 1]"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "v-star");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        config.contains("use = \"v-star\"") && config.contains("use = \"dpo\""),
        "{config}"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let seeds = records(&dir, "seed");
    assert_eq!(seeds.len(), 2, "{seeds:?}");
    for r in &seeds {
        let curves = r["result"]["curves"].as_object().unwrap();
        for (name, v) in curves {
            let v = v.as_array().unwrap();
            assert_eq!(v.len(), 4, "{name}: k = 1, 2, 4, 8");
            assert!(
                v.iter().all(|x| (0.0..=1.0).contains(&x.as_f64().unwrap())),
                "{name}: {v:?}"
            );
        }
        assert_eq!(curves.len(), 6);
        let fits: Vec<&str> = r["result"]["fits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["stage"].as_str().unwrap())
            .collect();
        assert_eq!(fits[0], "SFT", "{fits:?}");
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "| SFT |",
        "| RFT |",
        "| STaR |",
        "| majority vote |",
        "| ORM Best-of-k |",
        "| V-STaR[1 round] Best-of-k |",
        "| V-STaR Best-of-k |",
        "| G_SFT log-likelihood Best-of-k (the verifier before DPO) |",
        "| generator 2 |",
        "k = 8",
        "## The paper's claims at this scale",
        " ± ",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    let plot = std::fs::read_to_string(dir.join("plots/best_of_k.svg")).unwrap();
    assert!(
        plot.contains("<svg") && plot.contains("V-STaR Best-of-k"),
        "plot"
    );

    // Drop the second seed's record, as if the run had been killed during it, and resume.
    let kept: String = metrics
        .lines()
        .filter(|l| !l.contains("\"seed\":1"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(kept.lines().count(), metrics.lines().count() - 1);
    std::fs::write(dir.join("metrics.jsonl"), &kept).unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "v-star", "--quiet"])
        .arg("--resume")
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    let resumed = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["result"]["seconds"] = serde_json::Value::Null;
                v
            })
            .collect()
    };
    assert_eq!(
        strip(&resumed),
        strip(&metrics),
        "the recomputed seed differs"
    );
}

/// `--set verifier.use=NAME` swaps V-STaR's verifier, by TOML alone: the run uses it (its
/// label is in the summary), the one-round baseline is the same verifier, and fitted ones
/// leave their training stages in the record.
fn swapped_verifier(name: &str, label: &str, fitted: bool) {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "v-star", "--smoke", "--quiet"])
        .arg("--set")
        .arg(format!("verifier.use={name}"))
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "v-star");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
    assert_eq!(config["verifier"]["use"].as_str(), Some(name));
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("Verifier: `{name}` ({label})")),
        "{summary}"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let seed: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let stages: Vec<String> = seed["result"]["fits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stages.contains(&format!("{label} [1 round]")),
        fitted,
        "{stages:?}"
    );
    assert_eq!(
        seed["result"]["curves"]["V-STaR Best-of-k"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn the_verifier_swaps_to_the_orm_by_toml() {
    swapped_verifier("orm", "ORM", true);
}

#[test]
fn the_verifier_swaps_to_the_likelihood_by_toml() {
    swapped_verifier("likelihood", "log-likelihood", false);
}

#[test]
fn the_verifier_swaps_to_majority_by_toml() {
    swapped_verifier("majority", "majority vote", false);
}

#[test]
fn the_contributing_example_verifier_runs_in_v_star_by_toml() {
    swapped_verifier("weakest-token", "weakest-token log-likelihood", false);
}

#[test]
fn contributing_walks_through_the_example_plugin_verbatim() {
    let guide = std::fs::read_to_string(common::root().join("CONTRIBUTING.md")).unwrap();
    let lib =
        std::fs::read_to_string(common::root().join("plugins/weakest-token/src/lib.rs")).unwrap();
    assert!(lib.lines().count() <= 60, "the example stays short");
    let block = guide
        .split("```rust\n")
        .find(|b| b.starts_with("//! lmlab plugin `weakest-token`"))
        .and_then(|b| b.split("```").next())
        .expect("CONTRIBUTING.md shows plugins/weakest-token/src/lib.rs");
    assert_eq!(
        block, lib,
        "CONTRIBUTING.md's copy of plugins/weakest-token/src/lib.rs is current"
    );
}
