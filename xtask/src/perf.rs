//! `cargo xtask bench-compare` (our train step and decoding against PyTorch eager and llama.cpp
//! on this machine, written into `benches/README.md`) and `cargo xtask gpu-bundle` (the release
//! runner built against the GPU machine's torch, with `gpu-check.sh`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{Libtorch, cargo, fetch_gemma3, fetch_smollm2, pip_install, setup_libtorch};

/// The torch both commands build against: the GPU machine's (PyTorch 2.11 + CUDA 13), so one
/// release build serves the CPU comparison and the bundle. tch 0.22 targets 2.9, hence
/// `LIBTORCH_BYPASS_VERSION_CHECK`; `lmlab bench check` guards the result.
pub const BUNDLE_TORCH: &str = "2.11.0";

/// Builds the release `lmlab` runner (with `--features tch` against `torch` when given) and
/// copies it to `target/bench-bin/NAME`, so the two builds can be used side by side.
fn build_runner(root: &Path, torch: Option<&Libtorch>, name: &str) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .args(["build", "--release", "--package", "lmlab", "--bin", "lmlab"]);
    if let Some(torch) = torch {
        eprintln!("building the release runner with --features tch (libtorch from the virtualenv)");
        cmd.args(["--features", "tch"])
            .envs(torch.vars.iter().map(|(k, v)| (k, v)));
    } else {
        eprintln!("building the release runner (default features)");
    }
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building the runner failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("bench-bin");
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join(name);
    std::fs::copy(target.join("release/lmlab"), &dest)?;
    Ok(dest)
}

/// Runs `cmd`, echoing it, and parses each stdout line that is a JSON object.
fn json_lines(cmd: &mut Command) -> anyhow::Result<Vec<Value>> {
    eprintln!("$ {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.is_empty() {
        bail!("{cmd:?} printed no result");
    }
    Ok(lines)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The models the CPU comparison trains (the bench models that fit a 2-core machine).
const CPU_MODELS: [&str; 2] = ["sft-arith-0.75M", "4.4M"];
const PREFILL_TOKENS: &str = "256";
const DECODE_TOKENS: &str = "128";

/// `cargo xtask bench-compare`: measures, one after the other on this machine, the train step
/// on `cpu` (flex) and `tch:cpu` against PyTorch eager, and decoding of SmolLM2-135M (and
/// stories260K, ours only) against llama.cpp; writes `benches/results-cpu.jsonl` and the table
/// between the markers in `benches/README.md`.
pub fn bench_compare(root: &Path) -> anyhow::Result<()> {
    let torch = setup_libtorch(BUNDLE_TORCH)?;
    let python = torch.python.clone();
    let has_llama_cpp = Command::new(&python)
        .args(["-c", "import llama_cpp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_llama_cpp {
        eprintln!("installing llama-cpp-python into the virtualenv (builds llama.cpp, ~6 minutes)");
        pip_install(&python, "llama-cpp-python")?;
    }
    // The default build for `cpu` and decoding (a libtorch build maps ~350 MB of libraries,
    // which would swamp the peak-memory figure), the libtorch one for `tch:cpu`.
    let cpu_bin = build_runner(root, None, "lmlab-cpu")?;
    let tch_bin = build_runner(root, Some(&torch), "lmlab-tch")?;
    let smollm2 = fetch_smollm2()?;
    let data = std::env::var_os("LMLAB_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let stories = data.join("stories260k/stories260K.bin");

    let ours = |args: &[&str]| -> anyhow::Result<Value> {
        let tch = args.iter().any(|a| a.starts_with("tch:"));
        let mut cmd = Command::new(if tch { &tch_bin } else { &cpu_bin });
        cmd.current_dir(root).args(args);
        if tch {
            cmd.envs(torch.vars.iter().map(|(k, v)| (k, v)));
        }
        let mut r = json_lines(&mut cmd)?.remove(0);
        r["impl"] = "lmlab".into();
        Ok(r)
    };
    let py = |script: &str, args: &[&str]| -> anyhow::Result<Value> {
        let mut cmd = Command::new(&python);
        cmd.current_dir(root)
            .arg(root.join("benches").join(script))
            .args(args);
        Ok(json_lines(&mut cmd)?.remove(0))
    };

    let mut results = Vec::new();
    for model in CPU_MODELS {
        for device in ["cpu", "tch:cpu"] {
            results.push(ours(&[
                "bench", "train", "--model", model, "--device", device, "--steps", "10",
            ])?);
        }
        results.push(py(
            "pytorch_reference.py",
            &["--model", model, "--steps", "10", "--threads", "2"],
        )?);
    }
    // Our two decoding paths: weights kept in the file's blocks (Q8_0 for llama2.c files),
    // and the burn model on dequantized f32 weights. Three rounds, ours and llama.cpp's
    // alternating so that a slow spell of the machine hits both; the fastest of each is kept.
    let decode = |path: &Path, tokens: &str, weights: &str| -> anyhow::Result<Value> {
        let path = path.display().to_string();
        ours(&[
            "bench",
            "decode",
            "--model",
            &path,
            "--tokens",
            tokens,
            "--weights",
            weights,
        ])
    };
    let fastest = |runs: Vec<Value>| -> Value {
        runs.into_iter()
            .max_by(|a, b| num(a, "tokens_per_s").total_cmp(&num(b, "tokens_per_s")))
            .expect("at least one run")
    };
    let gemma3 = fetch_gemma3()?;
    for model in [&smollm2, &gemma3] {
        let (mut native, mut reference) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            native.push(decode(model, DECODE_TOKENS, "native")?);
            reference.push(py(
                "llamacpp_reference.py",
                &[
                    "--model",
                    &model.display().to_string(),
                    "--tokens",
                    DECODE_TOKENS,
                    "--threads",
                    "2",
                ],
            )?);
        }
        results.push(fastest(native));
        results.push(decode(model, DECODE_TOKENS, "f32")?);
        results.push(fastest(reference));
    }
    // Scoring a prompt in one batch, log-probabilities at every position (echo + logprobs).
    for model in [&smollm2, &gemma3] {
        let path = model.display().to_string();
        results.push(ours(&[
            "bench",
            "prefill",
            "--model",
            &path,
            "--tokens",
            PREFILL_TOKENS,
        ])?);
        results.push(py(
            "llamacpp_reference.py",
            &[
                "--model",
                &path,
                "--prefill",
                PREFILL_TOKENS,
                "--threads",
                "2",
            ],
        )?);
    }
    if stories.is_file() {
        for weights in ["native", "f32"] {
            results.push(decode(&stories, "199", weights)?);
        }
    } else {
        eprintln!("skipping stories260K: {} is absent", stories.display());
    }

    let jsonl: String = results.iter().map(|r| format!("{r}\n")).collect();
    let raw = root.join("benches/results-cpu.jsonl");
    std::fs::write(&raw, jsonl)?;
    let table = render_cpu_table(&results);
    let readme = root.join("benches/README.md");
    let text = std::fs::read_to_string(&readme)?;
    std::fs::write(&readme, replace_between(&text, "bench-compare", &table)?)?;
    println!("{table}");
    eprintln!(
        "wrote {} and the table in {}",
        raw.display(),
        readme.display()
    );
    Ok(())
}

/// Replaces what lies between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn replace_between(text: &str, name: &str, body: &str) -> anyhow::Result<String> {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let (Some(i), Some(j)) = (text.find(&begin), text.find(&end)) else {
        bail!("benches/README.md lacks the markers {begin} … {end}");
    };
    Ok(format!("{}{begin}\n{body}\n{}", &text[..i], &text[j..]))
}

fn find<'a>(rs: &'a [Value], pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    rs.iter().find(|r| pred(r))
}

/// The Markdown table of one `bench-compare` run.
fn render_cpu_table(rs: &[Value]) -> String {
    let mut s = String::new();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let torch = find(rs, |r| r["impl"] == "pytorch-eager")
        .and_then(|r| r["torch"].as_str())
        .unwrap_or("?");
    let _ = writeln!(
        s,
        "Measured {date} by `cargo xtask bench-compare` on this machine (2 threads everywhere; \
         PyTorch {torch}; raw results in `benches/results-cpu.jsonl`).\n"
    );
    let _ = writeln!(
        s,
        "| train step (fwd + bwd + AdamW) | params | batch × tokens | PyTorch eager ms | lmlab `tch:cpu` ms | ratio (target ≤ 1.0) | lmlab `cpu` (flex) ms | ratio (target ≤ 1.5) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for model in CPU_MODELS {
        let get = |imp: &str, dev: &str| {
            find(rs, |r| {
                r["bench"] == "train"
                    && r["model"] == model
                    && r["impl"] == imp
                    && r["device"] == dev
            })
        };
        let (Some(pt), Some(tch), Some(flex)) = (
            get("pytorch-eager", "cpu"),
            get("lmlab", "tch:cpu"),
            get("lmlab", "cpu"),
        ) else {
            continue;
        };
        let base = num(pt, "ms_per_step");
        let verdict = |ratio: f64, target: f64| {
            if ratio <= target { "met" } else { "missed" }
        };
        let (rt, rf) = (
            num(tch, "ms_per_step") / base,
            num(flex, "ms_per_step") / base,
        );
        let _ = writeln!(
            s,
            "| {model} | {} | {} × {} | {base:.1} | {:.1} | {rt:.2}× ({}) | {:.1} | {rf:.2}× ({}) |",
            pt["params"],
            pt["batch"],
            pt["seq"],
            num(tch, "ms_per_step"),
            verdict(rt, 1.0),
            num(flex, "ms_per_step"),
            verdict(rf, 1.5),
        );
    }
    let _ = writeln!(
        s,
        "\n| greedy decoding, KV cache, 2 threads, fastest of 3 × 3 runs | weights in memory | tokens/s | ratio to llama.cpp (target ≥ 1.0) | peak RSS | RSS / weights (target ≤ 1.3) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let llama_for = |bench: &str, model: &Value| {
        find(rs, |r| {
            r["impl"] == "llama.cpp" && r["bench"] == bench && r["model"] == *model
        })
    };
    let mib = |b: f64| b / (1024.0 * 1024.0);
    for r in rs.iter().filter(|r| r["bench"] == "decode") {
        let model = r["model"].as_str().unwrap_or("?");
        let name = Path::new(model)
            .file_name()
            .map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
        let tps = num(r, "tokens_per_s");
        let rss = num(r, "peak_rss_bytes");
        if r["impl"] == "llama.cpp" {
            let _ = writeln!(
                s,
                "| llama.cpp {}, {name} | its own blocks | {tps:.1} | 1.00 | {:.0} MiB | |",
                r["llama_cpp_python"].as_str().unwrap_or(""),
                mib(rss)
            );
            continue;
        }
        let weights = num(r, "weights_bytes");
        let ratio = match llama_for("decode", &r["model"]) {
            Some(l) => {
                let x = tps / num(l, "tokens_per_s");
                format!("{x:.2}× ({})", if x >= 1.0 { "met" } else { "missed" })
            }
            _ => "(llama.cpp cannot read this format)".into(),
        };
        // The memory target is about real checkpoints; for a 1 MB model the figure is the
        // process itself.
        let x = rss / weights;
        let verdict = if weights < 16.0 * 1024.0 * 1024.0 {
            "— (a tiny model: the process itself)".to_string()
        } else {
            format!("{x:.2}× ({})", if x <= 1.3 { "met" } else { "missed" })
        };
        let _ = writeln!(
            s,
            "| lmlab `cpu`, {name} | {:.1} MiB {} | {tps:.1} | {ratio} | {:.0} MiB | {verdict} |",
            mib(weights),
            r["weights_dtype"].as_str().unwrap_or(""),
            mib(rss),
        );
    }
    let prefills: Vec<&Value> = rs.iter().filter(|r| r["bench"] == "prefill").collect();
    if !prefills.is_empty() {
        let _ = writeln!(
            s,
            "\n| scoring a prompt in one batch (log-probabilities at every position), 2 threads | prompt tokens | tokens/s | ratio to llama.cpp (`logits_all`) | peak RSS |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in prefills {
            let model = r["model"].as_str().unwrap_or("?");
            let name = Path::new(model)
                .file_name()
                .map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
            let tps = num(r, "tokens_per_s");
            let who = if r["impl"] == "llama.cpp" {
                format!("llama.cpp {}", r["llama_cpp_python"].as_str().unwrap_or(""))
            } else {
                "lmlab native".to_string()
            };
            let ratio = match (r["impl"] == "llama.cpp", llama_for("prefill", &r["model"])) {
                (true, _) => "1.00".to_string(),
                (false, Some(l)) => format!("{:.2}×", tps / num(l, "tokens_per_s")),
                (false, None) => "—".to_string(),
            };
            let _ = writeln!(
                s,
                "| {who}, {name} | {} | {tps:.1} | {ratio} | {:.0} MiB |",
                num(r, "prompt_tokens"),
                mib(num(r, "peak_rss_bytes"))
            );
        }
    }
    s
}

/// `cargo xtask gpu-bundle [OUT]`: the release runner built against PyTorch 2.11 (as on the GPU
/// machine), the recipes, the PyTorch reference and `gpu-check.sh`, in `OUT` (default
/// `target/gpu-bundle`), under 64 MiB.
pub fn gpu_bundle(root: &Path, out: Option<&str>) -> anyhow::Result<PathBuf> {
    let torch = setup_libtorch(BUNDLE_TORCH)?;
    let bin = build_runner(root, Some(&torch), "lmlab-tch")?;
    let out = out.map_or_else(|| root.join("target/gpu-bundle"), PathBuf::from);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(out.join("bin"))?;
    std::fs::create_dir_all(out.join("recipes"))?;
    let dest = out.join("bin/lmlab");
    std::fs::copy(&bin, &dest)?;
    // Debug symbols are most of the file; the bundle must stay small.
    let _ = Command::new("strip").arg(&dest).status();
    for e in std::fs::read_dir(root.join("recipes"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, out.join("recipes").join(p.file_name().unwrap()))?;
        }
    }
    std::fs::copy(
        root.join("benches/pytorch_reference.py"),
        out.join("pytorch_reference.py"),
    )?;
    let script = out.join("gpu-check.sh");
    std::fs::copy(root.join("benches/gpu-check.sh"), &script)?;
    let mut size = 0u64;
    for dir in [out.clone(), out.join("bin"), out.join("recipes")] {
        for e in std::fs::read_dir(&dir)? {
            let m = e?.metadata()?;
            if m.is_file() {
                size += m.len();
            }
        }
    }
    if size > 64 << 20 {
        bail!("the bundle is {} MiB, over 64 MiB", size >> 20);
    }
    eprintln!(
        "wrote {} ({:.1} MiB): copy it to the GPU machine and run `bash gpu-check.sh` there",
        out.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_go_between_their_markers() {
        let t = "a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n";
        assert_eq!(
            replace_between(t, "x", "new").unwrap(),
            "a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n"
        );
        assert!(replace_between(t, "y", "new").is_err());
    }

    #[test]
    fn the_table_states_ratios_and_verdicts() {
        let rs: Vec<Value> = [
            r#"{"bench":"train","impl":"pytorch-eager","model":"4.4M","device":"cpu","ms_per_step":100.0,"params":5,"batch":16,"seq":128,"torch":"2.11.0"}"#,
            r#"{"bench":"train","impl":"lmlab","model":"4.4M","device":"tch:cpu","ms_per_step":95.0}"#,
            r#"{"bench":"train","impl":"lmlab","model":"4.4M","device":"cpu","ms_per_step":200.0}"#,
            r#"{"bench":"decode","impl":"llama.cpp","model":"/m.gguf","tokens_per_s":100.0,"peak_rss_bytes":1048576,"llama_cpp_python":"0.3"}"#,
            r#"{"bench":"decode","impl":"lmlab","model":"/m.gguf","tokens_per_s":90.0,"peak_rss_bytes":209715200,"weights_bytes":104857600,"weights_dtype":"q8"}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let t = render_cpu_table(&rs);
        assert!(
            t.contains(
                "| 4.4M | 5 | 16 × 128 | 100.0 | 95.0 | 0.95× (met) | 200.0 | 2.00× (missed) |"
            ),
            "{t}"
        );
        // Decoding's target is ≥ 1.0× llama.cpp.
        assert!(
            t.contains("| 100.0 MiB q8 | 90.0 | 0.90× (missed) | 200 MiB | 2.00× (missed) |"),
            "{t}"
        );
    }
}
