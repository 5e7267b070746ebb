//! `workspace-hack` turns on every dependency feature that the dev-dependencies turn on, so a
//! build without them (one test target, the binary) reuses what the test suite compiled.

use std::collections::BTreeSet;
use std::path::Path;

#[path = "../src/crate_env.rs"]
mod crate_env;

/// `package version [features]` for every crate in the graph (`-e` edges), under `features`.
fn graph(edges: &str, features: &[&str]) -> BTreeSet<String> {
    tree(edges, "{p} [{f}]", features)
}

/// `package version` for every crate in the graph.
fn crates(edges: &str, features: &[&str]) -> BTreeSet<String> {
    tree(edges, "{p}", features)
        .into_iter()
        .map(|c| c.trim_end_matches(" (proc-macro)").to_string())
        .collect()
}

fn tree(edges: &str, format: &str, features: &[&str]) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = crate_env::cargo_cmd()
        .current_dir(root)
        .args([
            "tree",
            "--workspace",
            "--prefix",
            "none",
            "-f",
            format,
            "-e",
            edges,
        ])
        .args(features)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let l = l.trim_end_matches(" (*)");
            // workspace members print their path: `lmlab-sdk v0.1.0 (/…/sdk) [tch]`
            match (l.find(" (/"), l.rfind(") [")) {
                (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 1..]),
                (Some(a), None) => l[..a].to_string(),
                _ => l.to_string(),
            }
        })
        .collect()
}

#[test]
fn dev_dependencies_turn_on_no_feature_the_normal_build_lacks() {
    for features in [&[][..], &["--features", "lmlab/tch"][..]] {
        let with_dev = graph("normal,build,dev", features);
        let missing: Vec<String> = graph("normal,build", features)
            .into_iter()
            .filter(|c| !with_dev.contains(c))
            .collect();
        assert!(
            missing.is_empty(),
            "{features:?}: these crates build with other features once the dev-dependencies \
             are in (add what they gain there to workspace-hack/Cargo.toml): {missing:#?}"
        );
    }
}

/// A crate the normal build uses only inside proc-macros and build scripts is compiled with
/// the host profile; if a dev-dependency uses it at run time, the test build compiles it once,
/// with the target profile, and everything above it gets other hashes.
#[test]
fn dev_dependencies_make_no_host_only_crate_a_runtime_one() {
    for features in [&[][..], &["--features", "lmlab/tch"][..]] {
        let runtime_with_dev = crates("normal,dev,no-proc-macro", features);
        let runtime = crates("normal,no-proc-macro", features);
        let host_only: Vec<String> = crates("normal,build", features)
            .into_iter()
            .filter(|c| runtime_with_dev.contains(c) && !runtime.contains(c))
            .collect();
        assert!(
            host_only.is_empty(),
            "{features:?}: the dev-dependencies use these at run time, the normal build only in \
             proc-macros (add them to workspace-hack/Cargo.toml): {host_only:#?}"
        );
    }
}
