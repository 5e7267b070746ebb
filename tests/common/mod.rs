//! Helpers shared by the integration tests: run the `lmlab` binary and read what it did.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command for the `lmlab` binary, with the bundled recipes.
pub fn lmlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lmlab"));
    c.arg("--recipes-dir").arg(root().join("recipes"));
    c.env_remove("LMLAB_PLUGINS").env("LMLAB_LOG", "warn");
    c
}

#[path = "../../xtask/src/crate_env.rs"]
mod crate_env;
/// A `cargo` command for a test that builds, without the variables cargo set for this test's
/// crate (see [`crate_env::is_crate_env`]).
#[allow(unused_imports)] // not every test binary starts cargo
pub use crate_env::cargo_cmd as cargo;

/// Runs and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the lmlab binary runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Asserts a user error: exit code 2, one message, no panic or backtrace.
pub fn assert_user_error(out: &(i32, String, String), needles: &[&str]) {
    let (code, _, err) = out;
    assert_eq!(*code, 2, "exit code; stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// The single run directory under `out/<recipe>/`.
pub fn only_run_dir(out: &Path, recipe: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.join(recipe))
        .expect("run directory parent")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// [`smoke`] of a real-model recipe on GSM8K with SmolLM2 at its `smollm2_role`'s `path` and
/// Gemma 3 at its `gemma_role`'s; `None` (the test skips) when GSM8K or a checkpoint is absent.
pub fn smoke_gsm8k_checkpoints(
    recipe: &str,
    smollm2_role: &str,
    gemma_role: &str,
) -> Option<(tempfile::TempDir, PathBuf)> {
    let (Some(_), Some(smollm2), Some(gemma)) = (data_dir("gsm8k/test.jsonl"), smollm2(), gemma3())
    else {
        return None;
    };
    Some(smoke(
        recipe,
        &[
            format!("{smollm2_role}.path={}", smollm2.display()),
            format!("{gemma_role}.path={}", gemma.display()),
        ],
    ))
}

/// Runs `lmlab recipe {recipe} --smoke --quiet` with `sets` (each `table.field=value`) into a
/// fresh folder, asserts it succeeds, and returns the folder (kept while it lives) and the run's
/// directory.
pub fn smoke(recipe: &str, sets: &[String]) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = lmlab();
    cmd.args(["recipe", recipe, "--smoke", "--quiet"]);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let (code, _, err) = run(cmd.arg("--out").arg(out.path()));
    assert_eq!(code, 0, "{recipe} --smoke: {err}");
    let dir = only_run_dir(out.path(), recipe);
    (out, dir)
}

/// The records of `dir`'s `metrics.jsonl` logged under `stage` (e.g. each seed's `"seed"`
/// result).
pub fn records(dir: &Path, stage: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["stage"] == stage)
        .collect()
}

/// The shared data folder (`LMLAB_DATA_DIR`, default `../shared/data` beside the project), or
/// `None` with a printed reason when `needs` is absent there (a user's fresh clone): the caller
/// skips. Under `LMLAB_REQUIRE_DATA=1` (CI) an absent file fails the test instead.
pub fn data_dir(needs: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LMLAB_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    let wanted = dir.join(needs);
    let how = "set LMLAB_DATA_DIR to the shared data folder";
    lmlab::require_data(&wanted, how)
        .unwrap_or_else(|e| panic!("{e}"))
        .then_some(dir)
}

/// Runs the test `name` of this test binary again in a child process with `envs`, and
/// returns whether it passed and what it printed: how a test checks another test's behaviour
/// under an environment it cannot set for itself.
pub fn rerun_test(name: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(envs.iter().copied())
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts `cmd` (a recipe run writing under `out_root/<recipe>/`), waits for its first
/// checkpoint, kills it with SIGKILL, checks it died before writing `final_checkpoint`, and
/// returns the run directory.
pub fn kill_after_first_checkpoint(
    mut cmd: Command,
    out_root: &Path,
    recipe: &str,
    final_checkpoint: &str,
) -> PathBuf {
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the run starts");
    let started = Instant::now();
    let dir = loop {
        if let Ok(mut entries) = std::fs::read_dir(out_root.join(recipe))
            && let Some(Ok(e)) = entries.next()
            && e.path().join("checkpoints/LATEST").exists()
        {
            break e.path();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    let latest = std::fs::read_to_string(dir.join("checkpoints/LATEST")).unwrap();
    assert!(
        status.code().is_none() && latest.trim() != final_checkpoint,
        "the run was killed before its end (status {status:?}, latest {latest})"
    );
    dir
}

/// A Python interpreter that imports `modules`: `LMLAB_PYTHON` (`cargo xtask test` sets it to
/// the cache's virtualenv, where `cargo xtask setup-python` installs the reference
/// implementations). `None`, printing why, when there is none; a panic under
/// `LMLAB_REQUIRE_DATA=1`, as for missing data.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let why = match std::env::var_os("LMLAB_PYTHON") {
        None => "LMLAB_PYTHON is not set".to_string(),
        Some(py) => {
            let probe = modules
                .iter()
                .map(|m| format!("import {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            let ok = Command::new(&py)
                .args(["-c", &probe])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Some(PathBuf::from(py));
            }
            format!("{} cannot import {modules:?}", PathBuf::from(py).display())
        }
    };
    let how = "run `cargo xtask setup-python`, then the tests through `cargo xtask test`";
    assert!(
        !lmlab::data_required(),
        "{why} and LMLAB_REQUIRE_DATA=1 ({how})"
    );
    println!("SKIPPED: {why} ({how})");
    None
}

/// A file that a `cargo xtask fetch` puts in the cache (`LMLAB_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lmlab`, else `~/.cache/lmlab`), at `rel`: `None` (the test skips, saying
/// `how` to get it) when it is not there; a panic under `LMLAB_REQUIRE_DATA=1`.
pub fn cached(rel: &str, how: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("LMLAB_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("lmlab")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lmlab")
        });
    let path = cache.join(rel);
    lmlab::require_data(&path, how)
        .unwrap_or_else(|e| panic!("{e}"))
        .then_some(path)
}

/// Runs `tests/fixtures/reference.py` with `args` under `python`; its JSON output.
pub fn reference(python: &std::path::Path, args: &[String]) -> serde_json::Value {
    let script = root().join("tests/fixtures/reference.py");
    let (code, out, err) = run(Command::new(python).arg(script).args(args));
    assert_eq!(code, 0, "reference.py {args:?}: {err}");
    // The last line: libraries may print notices before it.
    let last = out.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// SmolLM2-135M-Instruct (GGUF, Q4_1) in the cache (`cargo xtask fetch smollm2`).
pub fn smollm2() -> Option<PathBuf> {
    cached(
        "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "run `cargo xtask fetch smollm2`",
    )
}

/// Gemma-3-270M (Q4_K_M GGUF) from the cache, or `None` (see [`cached`]).
pub fn gemma3() -> Option<PathBuf> {
    cached(
        "gemma3/gemma-3-270m-q4_k_m.gguf",
        "run `cargo xtask fetch gemma3`",
    )
}

/// A server process, killed when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A checkpoint on the block-quantized CPU path as an in-process policy.
pub fn native_policy(model: &Path) -> lmlab::lm::policy::NativePolicy {
    lmlab::lm::policy::NativePolicy::new(
        lmlab::lm::load::load_quantized(model, None, None).unwrap(),
    )
}

/// Prompts that the server tests send: prose, a story, code.
pub fn server_prompts() -> Vec<String> {
    [
        "The capital of France is",
        "Once upon a time, there was a",
        "def add(a, b):\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Greedy sampling of up to `max_new_tokens` tokens.
pub fn greedy(max_new_tokens: usize) -> lmlab::SamplingParams {
    lmlab::SamplingParams {
        temperature: 0.0,
        max_new_tokens,
        ..Default::default()
    }
}
