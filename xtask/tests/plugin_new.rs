//! `cargo xtask plugin new demo` in a temporary copy of the workspace makes a crate (the
//! CONTRIBUTING example verifier, renamed) that builds, registers its component with the
//! runner, and passes its own test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Copies the files git knows (tracked, or new and not ignored) into `to`, with their
/// modification times: cargo names a path crate's artefacts by its path relative to the
/// workspace root, so the copy's crates are the originals' to cargo, and already built.
fn copy_workspace(to: &Path) {
    let root = workspace();
    let out = Command::new("git")
        .current_dir(&root)
        .args(["ls-files", "-co", "--exclude-standard", "-z"])
        .output()
        .expect("git runs");
    assert!(out.status.success());
    for rel in out.stdout.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let src = root.join(rel);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
        let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&dst)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

#[path = "../src/crate_env.rs"]
mod crate_env;
use crate_env::cargo_cmd as cargo;

#[test]
fn scaffolded_plugin_builds_registers_and_passes_its_test() {
    let tmp = tempfile::tempdir().unwrap();
    copy_workspace(tmp.path());
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let out = Command::new(xtask)
        .current_dir(tmp.path())
        .args(["plugin", "new", "demo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = std::fs::read_to_string(tmp.path().join("plugins/demo/src/lib.rs")).unwrap();
    assert!(
        lib.contains("name: \"demo\"") && !lib.contains("weakest"),
        "{lib}"
    );
    let manifest = std::fs::read_to_string(tmp.path().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("lmlab-plugin-demo = { path = \"plugins/demo\" }"));

    // Build into this workspace's target folder and run the new plugin's test (only the
    // `verifier` test targets: the other tests already ran in this test run). The copy's
    // crates are this workspace's (same relative paths, same modification times), and
    // `workspace-hack` gives a build of one target the features the test build had, so only
    // the new plugin compiles.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    // With the features the test run was built with (`LMLAB_TEST_FEATURES`, set by
    // `cargo xtask test --tch`), and without the variables cargo set for this test (see
    // `crate_env`), or the torch-sys build script would rerun. (Building the whole copy
    // instead would overwrite this run's own test binaries.)
    let mut cmd = cargo();
    cmd.current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", &target)
        .args(["test", "--workspace", "--test", "verifier"]);
    if let Ok(features) = std::env::var("LMLAB_TEST_FEATURES") {
        cmd.args(["--features", &features]);
    }
    let out = cmd
        .args([
            "--",
            "--test-threads=2",
            "demo_scores_the_least_likely_response_token",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("demo_scores_the_least_likely_response_token ... ok"),
        "the scaffolded plugin's test ran and passed: {stdout}"
    );

    // A second scaffold of the same name is refused, as is a bad name.
    let again = Command::new(xtask)
        .current_dir(tmp.path())
        .args(["plugin", "new", "demo"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = Command::new(xtask)
        .current_dir(tmp.path())
        .args(["plugin", "new", "Bad_Name"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase"));
}
