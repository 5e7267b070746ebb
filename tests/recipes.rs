//! Every bundled recipe is listed, validates against the committed JSON schema, and builds;
//! the committed schemas are what `cargo xtask schema` writes today.

mod common;

use common::{lmlab, root, run};

fn recipe_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn committed_schemas_are_current() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab().args(["schema", "--out"]).arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let mut written: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert!(written.contains(&"recipe.schema.json".to_string()));
    let mut committed: Vec<String> = std::fs::read_dir(root().join("schemas"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    committed.sort();
    assert_eq!(
        committed, written,
        "schemas/ holds exactly what `cargo xtask schema` writes (no stale files): run it and delete the extra ones"
    );
    for name in &written {
        let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed =
            std::fs::read_to_string(root().join("schemas").join(name)).unwrap_or_default();
        assert!(
            fresh == committed,
            "schemas/{name} is stale: run `cargo xtask schema`"
        );
    }
}

#[test]
fn every_recipe_validates_against_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schemas/recipe.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON schema");
    for file in recipe_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("#:schema ../schemas/recipe.schema.json"),
            "{} starts with its #:schema line",
            file.display()
        );
        let toml: toml::Value = toml::from_str(&text).unwrap();
        let json = serde_json::to_value(&toml).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        let recipe = lmlab::recipe::load(&file).unwrap();
        for key in ["paper", "claim", "time"] {
            let v = match key {
                "paper" => &recipe.header.paper,
                "claim" => &recipe.header.claim,
                _ => &recipe.header.time,
            };
            assert!(!v.is_empty(), "{}: header lacks `# {key}:`", file.display());
        }
    }
    // The schema rejects what the runner rejects.
    let bad: toml::Value =
        toml::from_str("[scheduler]\nuse = \"supervised\"\nstepz = 3\n").unwrap();
    assert!(!validator.is_valid(&serde_json::to_value(&bad).unwrap()));
}

#[test]
fn every_recipe_is_listed_and_builds() {
    let (code, out, err) = run(lmlab().arg("recipes"));
    assert_eq!(code, 0, "{err}");
    for file in recipe_files() {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            out.lines().any(|l| l.starts_with(&name)),
            "{name} listed in {out}"
        );
        // A recipe on a fetched checkpoint (`~/.cache/lmlab/…`) needs it fetched first.
        let recipe: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        if let Some(path) = recipe
            .get("policy")
            .and_then(|p| p.get("path"))
            .and_then(|p| p.as_str())
            .filter(|p| p.starts_with("~/"))
        {
            let path = lmlab::lm::policy::expand_home(std::path::Path::new(path));
            let how = format!("{name} needs it: cargo xtask fetch");
            if !lmlab::require_data(&path, &how).unwrap() {
                continue;
            }
        }
        let (code, _, err) = run(lmlab().args(["recipe", &name, "--dry-run"]));
        assert_eq!(code, 0, "{name}: {err}");
        let (code, _, err) = run(lmlab().args(["recipe", &name, "--dry-run", "--smoke"]));
        assert_eq!(code, 0, "{name} --smoke: {err}");
    }
}

#[test]
fn best_of_n_smoke_ranks_with_a_verifier_and_a_reward_model() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lmlab()
        .args(["recipe", "best-of-n", "--smoke", "--quiet", "--out"])
        .arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let dir = common::only_run_dir(out.path(), "best-of-n");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let r: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let curves = r["result"]["curves"].as_object().unwrap();
    for name in [
        "ORM",
        "Bradley–Terry reward model",
        "majority vote",
        "pass@k (oracle)",
    ] {
        assert_eq!(
            curves[name].as_array().unwrap().len(),
            3,
            "{name}: k = 1, 2, 4"
        );
    }
    let stages: Vec<&str> = r["result"]["fits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["SFT", "ORM", "Bradley–Terry reward model"]);
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("## AUROC of each ranker") && summary.contains("beats a random candidate"),
        "{summary}"
    );
}
