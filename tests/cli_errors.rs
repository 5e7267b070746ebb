//! Bad input is a message naming the file, table and field (with the closest valid names) and
//! exit code 2 — never a panic.

mod common;

use common::{assert_user_error, lmlab, run};
use std::io::Write;

fn recipe_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("bad.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

const GOOD: &str = r#"
seed = 1
[task]
use = "linear-regression"
dim = 4
[objective]
use = "mse"
[scheduler]
use = "supervised"
steps = 10
"#;

fn recipe_with(dir: &tempfile::TempDir, from: &str, to: &str) -> String {
    let text = GOOD.replacen(from, to, 1);
    assert_ne!(text, GOOD, "the replacement applies");
    recipe_file(dir, &text).display().to_string()
}

#[test]
fn unknown_recipe_suggests_the_closest() {
    let out = run(lmlab().args(["recipe", "linear-regresion", "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "unknown recipe `linear-regresion`",
            "did you mean `linear-regression`",
        ],
    );
}

#[test]
fn unknown_plugin_names_file_table_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let file = recipe_with(&dir, "\"supervised\"", "\"supervize\"");
    let out = run(lmlab().args(["recipe", &file, "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "bad.toml: [scheduler]",
            "unknown scheduler plugin `supervize`",
            "did you mean `supervised`",
            "registered scheduler plugins: ",
        ],
    );
}

#[test]
fn unknown_field_names_file_table_plugin_field_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let file = recipe_with(&dir, "steps = 10", "stepz = 10");
    let out = run(lmlab().args(["recipe", &file, "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "bad.toml: [scheduler] (plugin `supervised`)",
            "field `stepz`",
            "unknown field",
            "did you mean `steps`",
        ],
    );
}

#[test]
fn missing_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = recipe_with(&dir, "use = \"mse\"", "");
    let out = run(lmlab().args(["recipe", &file, "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "bad.toml: [objective]",
            "field `use`",
            "missing field",
            "mse",
        ],
    );
}

#[test]
fn mistyped_field_names_the_expected_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = recipe_with(&dir, "dim = 4", "dim = \"four\"");
    let out = run(lmlab().args(["recipe", &file, "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "bad.toml: [task] (plugin `linear-regression`)",
            "field `dim`",
            "invalid type: string \"four\"",
            "expected usize",
        ],
    );
    let file = recipe_with(&dir, "seed = 1", "seed = \"one\"");
    let out = run(lmlab().args(["recipe", &file, "--dry-run"]));
    assert_user_error(
        &out,
        &[
            "bad.toml: [top level]",
            "field `seed`",
            "expected a non-negative integer, found string",
        ],
    );
}

#[test]
fn bad_set_says_why() {
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--dry-run",
        "--set",
        "scheduler.steps=many",
    ]));
    assert_user_error(
        &out,
        &[
            "bad --set `scheduler.steps=many`",
            "field `steps`",
            "`many` is not an integer",
        ],
    );
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--dry-run",
        "--set",
        "schedulr.steps=3",
    ]));
    assert_user_error(&out, &["no [schedulr] table", "did you mean `scheduler`"]);
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--dry-run",
        "--set",
        "scheduler.steps",
    ]));
    assert_user_error(&out, &["expected `path=value`"]);
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--dry-run",
        "--set",
        "scheduler.optim.lrr=0.1",
    ]));
    assert_user_error(
        &out,
        &["unknown field `lrr` in `optim`", "did you mean `lr`"],
    );
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    std::fs::create_dir(&missing).unwrap(); // a directory where a file should be
    let out = run(lmlab().args(["recipe", missing.to_str().unwrap(), "--dry-run"]));
    assert_user_error(&out, &["unknown recipe"]);
    let file = recipe_file(&dir, "seed = [");
    let out = run(lmlab().args(["recipe", file.to_str().unwrap(), "--dry-run"]));
    assert_user_error(&out, &["bad.toml: not valid TOML"]);
    let out = run(lmlab().args(["--plugin", "/nonexistent/libx.so", "plugins"]));
    assert_user_error(&out, &["cannot read /nonexistent/libx.so"]);
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--resume",
        dir.path().to_str().unwrap(),
    ]));
    assert_user_error(&out, &["cannot resume", "no config.toml"]);
}

#[test]
fn a_good_recipe_resolves_with_defaults() {
    let out = run(lmlab().args([
        "recipe",
        "linear-regression",
        "--dry-run",
        "--set",
        "scheduler.steps=7",
        "--seed",
        "5",
    ]));
    assert_eq!(out.0, 0, "{}", out.2);
    let resolved: toml::Table = toml::from_str(&out.1).unwrap();
    assert_eq!(resolved["seed"].as_integer(), Some(5));
    assert_eq!(resolved["scheduler"]["steps"].as_integer(), Some(7));
    // Defaults are filled in: the resolved config says everything the run used.
    assert!(resolved["scheduler"]["optim"].get("beta2").is_some());
    assert!(resolved["task"].get("tolerance").is_some());
}

/// The wiring between a recipe and its scheduler's roles is checked before anything runs:
/// each class of mistake is a user error at `--dry-run`, naming the file and the table.
mod wiring {
    use super::*;

    fn dry_run(text: &str) -> (i32, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = recipe_file(&dir, text);
        run(lmlab().arg("recipe").arg(&file).arg("--dry-run"))
    }

    #[test]
    fn a_missing_role() {
        let text = GOOD.replace("[objective]\nuse = \"mse\"\n", "");
        assert_user_error(
            &dry_run(&text),
            &[
                "bad.toml: [objective]",
                "missing: scheduler `supervised` needs a [objective] table of kind `objective`",
                "registered objective plugins: ",
            ],
        );
    }

    #[test]
    fn a_table_no_role_takes() {
        let text = format!("{GOOD}\n[objectives]\nkind = \"objective\"\nuse = \"mse\"\n");
        assert_user_error(
            &dry_run(&text),
            &[
                "bad.toml: [objectives] (plugin `mse`)",
                "scheduler `supervised` takes no [objectives] table",
                "did you mean `objective`",
                "its tables are [task], [objective]",
            ],
        );
    }

    #[test]
    fn a_component_of_the_wrong_kind() {
        let text = GOOD.replace(
            "[objective]\nuse = \"mse\"",
            "[objective]\nkind = \"sampler\"\nuse = \"temperature\"",
        );
        assert_user_error(
            &dry_run(&text),
            &[
                "bad.toml: [objective] (plugin `temperature`)",
                "of kind `sampler`",
                "takes kind `objective` here",
                "objective plugins: ",
            ],
        );
    }

    #[test]
    fn an_objective_reading_what_the_scheduler_does_not_hand_it() {
        let text = GOOD.replace("use = \"mse\"", "use = \"dpo\"");
        assert_user_error(
            &dry_run(&text),
            &[
                "bad.toml: [objective] (plugin `dpo`)",
                "objective `dpo` reads `policy_chosen`",
                "is handed only `prediction`, `target` by scheduler `supervised`",
            ],
        );
    }

    #[test]
    fn an_inline_objective_reading_what_its_fitter_does_not_hand_it() {
        let out = run(lmlab().args([
            "recipe",
            "v-star",
            "--dry-run",
            "--set",
            "verifier.objective.use=bce",
        ]));
        assert_user_error(
            &out,
            &[
                "[verifier] (plugin `dpo`)",
                "field `objective`",
                "objective `bce` reads `logits`, `labels`",
            ],
        );
    }

    #[test]
    fn a_task_of_the_wrong_type() {
        let text = GOOD.replace("use = \"linear-regression\"\ndim = 4", "use = \"arith\"");
        assert_user_error(
            &dry_run(&text),
            &[
                "bad.toml: [task] (plugin `arith`)",
                "scheduler `supervised` takes `",
                "but plugin `arith` provides `",
            ],
        );
    }

    #[test]
    fn swapping_a_component_starts_from_its_defaults_and_types_inline_fields() {
        let out = run(lmlab().args([
            "recipe",
            "v-star",
            "--dry-run",
            "--set",
            "verifier.use=orm",
            "--set",
            "verifier.objective.use=bce",
        ]));
        assert_eq!(out.0, 0, "{}", out.2);
        let resolved: toml::Table = toml::from_str(&out.1).unwrap();
        assert_eq!(resolved["verifier"]["use"].as_str(), Some("orm"));
        assert_eq!(resolved["verifier"]["lm_loss_weight"].as_float(), Some(0.0));
        let out = run(lmlab().args([
            "recipe",
            "v-star",
            "--dry-run",
            "--set",
            "verifier.objective.beta=0.2",
        ]));
        assert_eq!(out.0, 0, "{}", out.2);
        let resolved: toml::Table = toml::from_str(&out.1).unwrap();
        let beta = resolved["verifier"]["objective"]["beta"]
            .as_float()
            .unwrap();
        assert!((beta - 0.2).abs() < 1e-6, "{beta}");
        let out = run(lmlab().args([
            "recipe",
            "v-star",
            "--dry-run",
            "--set",
            "verifier.objective.betta=0.2",
        ]));
        assert_user_error(
            &out,
            &[
                "unknown field `betta`",
                "objective `dpo`",
                "did you mean `beta`",
            ],
        );
    }
}

#[test]
fn out_of_range_sampling_flags_are_refused_before_the_model_loads() {
    // The model does not exist: each flag is refused first, naming it and its range.
    for (flag, value, needle) in [
        ("--top-p", "0", "--top-p must be in (0, 1]"),
        ("--top-p", "1.5", "--top-p must be in (0, 1]"),
        (
            "--temperature",
            "-0.5",
            "--temperature must be 0 (greedy) or positive",
        ),
        (
            "--temperature",
            "NaN",
            "--temperature must be 0 (greedy) or positive",
        ),
        ("--top-k", "0", "--top-k must be at least 1"),
    ] {
        let out = run(lmlab().args(["generate", "--model", "no-such-model.gguf", flag, value]));
        assert_user_error(&out, &[needle]);
    }
    // The two length flags are two meanings of one limit: give one.
    let (code, _, err) = run(lmlab().args([
        "generate",
        "--model",
        "no-such-model.gguf",
        "--max-tokens",
        "5",
        "--max-new-tokens",
        "3",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-new-tokens"), "{err}");
}

/// A checkpoint's block-quantized weights are for inference: a scheduler that trains its
/// policy refuses them at `--dry-run`, naming the table and field.
#[test]
fn native_weights_in_a_training_role_are_refused_at_dry_run() {
    let Some(data) = common::data_dir("stories260k/stories260K.bin") else {
        return;
    };
    let model = data.join("stories260k/stories260K.bin");
    let out = run(lmlab().args([
        "recipe",
        "sft-arith",
        "--dry-run",
        "--set",
        "policy.use=checkpoint",
        "--set",
        &format!("policy.path={}", model.display()),
        "--set",
        "policy.weights=native",
    ]));
    assert_user_error(
        &out,
        &[
            "[policy]",
            "weights",
            "scheduler `sft` trains this policy",
            "weights = \"f32\"",
        ],
    );
    let out = run(lmlab().args([
        "recipe",
        "sft-arith",
        "--dry-run",
        "--set",
        "policy.use=checkpoint",
        "--set",
        &format!("policy.path={}", model.display()),
        "--set",
        "policy.weights=f32",
    ]));
    assert_eq!(out.0, 0, "{}", out.2);
}
