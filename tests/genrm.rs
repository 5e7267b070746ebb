//! `genrm --smoke` end to end: every verifier is fitted and scores the test candidates, the
//! record holds the Best-of-N curves, GenRM-CoT's K curve, each verifier's AUROC and the
//! GenRMs' own generation, and the summary has the tables, the claims and both plots.

mod common;

use common::{lmlab, only_run_dir, records, run};

#[test]
fn genrm_smoke_fits_every_verifier_and_writes_the_tables_plots_and_claims() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "genrm", "--smoke", "--quiet"])
        .arg("--out")
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out.path(), "genrm");
    let seeds = records(&dir, "seed");
    assert_eq!(seeds.len(), 1, "{seeds:?}");
    let r = &seeds[0]["result"];
    let curves = r["curves"].as_object().unwrap();
    let mut names: Vec<&str> = curves.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cot",
            "cot_joint",
            "direct",
            "dpo",
            "judge",
            "majority",
            "oracle",
            "orm",
            "weighted cot",
            "weighted cot_joint",
            "weighted direct",
            "weighted judge"
        ]
    );
    for (name, v) in curves {
        assert_eq!(v.as_array().unwrap().len(), 3, "{name}: N = 1, 2, 4");
    }
    // K = 1, 2, 4 rationales for both GenRM-CoT verifiers, none for the others.
    let k = r["k_curves"].as_object().unwrap();
    assert_eq!(k.keys().collect::<Vec<_>>(), ["cot", "cot_joint"]);
    assert!(
        k.values().all(|v| v.as_array().unwrap().len() == 3),
        "{k:?}"
    );
    let verifiers = r["verifiers"].as_object().unwrap();
    assert_eq!(verifiers.len(), 6);
    assert_eq!(
        verifiers["judge"]["examples"], 0,
        "the judge does not train"
    );
    // (The DPO verifier may have no pair in a smoke run: every problem's candidates alike.)
    for role in ["orm", "direct", "cot", "cot_joint"] {
        assert!(
            verifiers[role]["examples"].as_u64().unwrap() > 0,
            "{role} trained on nothing: {verifiers:?}"
        );
    }
    let generation = r["generation"].as_object().unwrap();
    let mut gen_keys: Vec<&str> = generation.keys().map(String::as_str).collect();
    gen_keys.sort_unstable();
    assert_eq!(gen_keys, ["cot", "cot_joint", "direct", "generator"]);
    let stages: Vec<&str> = r["fits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["stage"].as_str().unwrap())
        .filter(|s| *s != "DPO verifier")
        .collect();
    assert_eq!(
        stages,
        [
            "ORM",
            "GenRM-Direct (λ = 0)",
            "GenRM-CoT (λ = 0)",
            "GenRM-CoT (λ = 1)"
        ]
    );

    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for needle in [
        "## Generation (pass@1",
        "## Best-of-N on the test problems",
        "| GenRM-Direct (λ = 0) |",
        "| LLM-as-a-judge |",
        "| majority vote (self-consistency) |",
        "| weighted majority by GenRM-CoT (λ = 1) |",
        "## GenRM-CoT: Best-of-4 against K",
        "held-out AUROC within problems (%)",
        "## The paper's claims at this scale",
        "GenRM-Direct (λ = 0) ≥ ORM at Best-of-4",
        "GenRM-CoT (λ = 0) improves with K",
        "joint training (λ > 0) helps verification, the generator, or both",
        "## Time by stage",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle:?}:\n{summary}"
        );
    }
    for plot in ["best_of_n.svg", "k_curve.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("GenRM-CoT"), "{plot}");
    }
}
