//! `v-star --smoke` end to end: the run directory holds the resolved config, one metrics record
//! per seed, a summary table with every method and the Best-of-k plot; a resumed run recomputes
//! only the seeds that were not finished, and gets the same numbers.

mod common;

use common::{lmlab, only_run_dir, run};

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
    let seeds: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["stage"] == "seed")
        .collect();
    assert_eq!(seeds.len(), 2, "{metrics}");
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
