//! Dynamic plugins: a `cdylib` from the workspace is built, loaded by the runner, and its
//! component used in a real run; libraries with a different ABI stamp, without the lmlab
//! symbols, or that are not libraries at all are refused with a reason.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_user_error, cargo, lmlab, only_run_dir, root, run};

/// Builds the workspace (a no-op when the test run already did) and returns the example
/// plugin's library from that same build, so it shares the runner's SDK build.
fn example_plugin() -> PathBuf {
    // The features the test run was built with (`cargo xtask test --tch` says), so this is
    // the same build and not a second one of the whole burn stack.
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--workspace", "--no-run", "--quiet"]);
    if let Ok(features) = std::env::var("LMLAB_TEST_FEATURES") {
        cmd.args(["--features", &features]);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the workspace");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_lmlab"));
    let deps = exe.parent().unwrap().join("deps");
    let name = format!(
        "{}lmlab_plugin_dynamic_example{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let lib = deps.join(&name);
    assert!(lib.is_file(), "{} was built", lib.display());
    lib
}

#[test]
fn loads_the_example_plugin_and_trains_with_its_task() {
    let lib = example_plugin();
    let (code, out, err) = run(lmlab().arg("--plugin").arg(&lib).arg("plugins"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("task") && l.contains("sum-regression")),
        "{out}"
    );

    // Without the plugin the recipe names an unknown task...
    let fixture = root().join("tests/fixtures/dynamic-sum.toml");
    let out_dir = tempfile::tempdir().unwrap();
    let refused = run(lmlab().args(["recipe", fixture.to_str().unwrap(), "--dry-run"]));
    assert_user_error(&refused, &["unknown task plugin `sum-regression`"]);

    // ...with it, the run trains a model on the plugin's data.
    let (code, _, err) = run(lmlab()
        .arg("--plugin")
        .arg(&lib)
        .args(["recipe", fixture.to_str().unwrap(), "--quiet", "--out"])
        .arg(out_dir.path()));
    assert_eq!(code, 0, "{err}");
    let dir = only_run_dir(out_dir.path(), "dynamic-sum");
    let metrics = lmlab::run::read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let tests: Vec<f64> = metrics
        .iter()
        .filter(|m| m["split"] == "test")
        .map(|m| m["mse"].as_f64().unwrap())
        .collect();
    assert!(tests.len() >= 2);
    assert!(
        tests[tests.len() - 1] < 0.01 * tests[0],
        "test MSE fell: {tests:?}"
    );
}

/// Compiles a C shared library (a plugin "built by another toolchain").
fn c_library(dir: &tempfile::TempDir, name: &str, source: &str) -> PathBuf {
    let c = dir.path().join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let lib = dir.path().join(format!("lib{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&c)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success());
    lib
}

#[test]
fn refuses_a_library_with_another_abi_stamp_without_calling_it() {
    let dir = tempfile::tempdir().unwrap();
    let lib = c_library(
        &dir,
        "stale",
        r#"
        #include <stdlib.h>
        const char *lmlab_plugin_abi_stamp(void) { return "lmlab-sdk 0.0.1 built by rustc 1.80.0"; }
        void lmlab_plugin_register(void *registrar) { abort(); }
        "#,
    );
    let out = run(lmlab().arg("--plugin").arg(&lib).arg("plugins"));
    assert_user_error(
        &out,
        &[
            "libstale.so",
            "ABI stamp mismatch",
            "lmlab-sdk 0.0.1 built by rustc 1.80.0",
            "rebuild the plugin",
        ],
    );
}

#[test]
fn refuses_a_library_without_the_lmlab_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let lib = c_library(&dir, "other", "int answer(void) { return 42; }\n");
    let out = run(lmlab().arg("--plugin").arg(&lib).arg("plugins"));
    assert_user_error(
        &out,
        &[
            "libother.so",
            "does not export `lmlab_plugin_abi_stamp`",
            "not an lmlab plugin",
        ],
    );
}

#[test]
fn refuses_a_file_that_is_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("libtext.so");
    std::fs::write(&not_elf, "this is a text file, not ELF\n").unwrap();
    let out = run(lmlab().arg("--plugin").arg(&not_elf).arg("plugins"));
    assert_user_error(&out, &["libtext.so", "not a loadable shared library"]);
}
