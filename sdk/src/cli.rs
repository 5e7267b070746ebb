//! The `lmlab` command line: what `cargo xtask recipe ...` runs.
//!
//! ```text
//! lmlab recipe NAME [--set k=v]... [--smoke] [--resume RUN_DIR] [--out DIR] [--seed N] [--quiet]
//! lmlab recipes            list the bundled recipes
//! lmlab schema [--out DIR] write the JSON schemas
//! lmlab plugins            list registered components
//! lmlab generate --model PATH [...]    a completion from a checkpoint
//! lmlab bench train|check|prefill|decode [...] LM-core speed and device agreement, as JSON lines
//! lmlab serve --model PATH [--port N]  an OpenAI-compatible server (completions, chat, models)
//! ```
//!
//! `--plugin PATH` (or `LMLAB_PLUGINS=a.so:b.so`) loads dynamic plugins first. User errors
//! print one message and exit with code 2; failures while running exit with code 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;
use crate::recipe::{self, Recipe};
use crate::registry::{self, Kind};
use crate::run::{CONFIG_FILE, RunDir, write_atomic};
use crate::scheduler::{RunContext, Scheduler};
use crate::schema;

#[derive(Parser, Debug)]
#[command(
    name = "lmlab",
    version,
    about = "Run lmlab recipes: post-training and reasoning methods, reproduced"
)]
pub struct Cli {
    /// Load a dynamic plugin library (repeatable; also `LMLAB_PLUGINS`, colon-separated).
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
    /// Where recipes are looked up (default: `LMLAB_RECIPES_DIR` or `./recipes`).
    #[arg(long, global = true, value_name = "DIR")]
    pub recipes_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a recipe.
    Recipe(RecipeArgs),
    /// List the recipes: name, paper, one line each.
    Recipes,
    /// Write a JSON schema per registered component and one for recipe files.
    Schema {
        /// Output directory.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// List the registered components.
    Plugins,
    /// Load a checkpoint (llama2.c `.bin`, ...) and print a completion.
    Generate(GenerateArgs),
    /// Time the LM core on a device; prints one JSON line per measurement.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the token ids of a text (or of a file) under a model's tokenizer: any checkpoint,
    /// and GGUF files with only a vocabulary.
    Tokenize(TokenizeArgs),
    /// Write a run's trained models (`RUN_DIR/models/*`), or any checkpoint lmlab loads, as a
    /// Hugging Face folder or a GGUF file.
    Export(ExportArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API (`/v1/completions` with echo +
    /// logprobs, `/v1/chat/completions`, `/v1/models`), batching concurrent requests on the
    /// block-quantized CPU path.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The model (llama2.c `.bin`, Hugging Face folder, GGUF, or a run's `models/NAME`).
    #[arg(long)]
    pub model: PathBuf,
    /// The tokenizer, when it is not beside the model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// `native`: a GGUF file's own blocks (other formats Q8_0); `q8_0`, `q4_1`: quantized to
    /// that; `f32`: unquantized matrices.
    #[arg(long, default_value = "native")]
    pub weights: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model's name in `/v1/models` (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Most token rows in one forward pass: decoding sequences take one each, waiting prompts
    /// are fed in chunks that fit.
    #[arg(long, default_value_t = 256)]
    pub max_batch_rows: usize,
}

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// The model (llama2.c `.bin`, Hugging Face folder, GGUF, or a GGUF vocabulary).
    #[arg(long)]
    pub model: PathBuf,
    /// The text to tokenize.
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// Tokenize this file's contents instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Put BOS first (when the tokenizer adds one).
    #[arg(long)]
    pub bos: bool,
    /// Read special tokens in the text as tokens (default: as plain text, as llama.cpp's
    /// tokenizer tests do).
    #[arg(long)]
    pub special: bool,
    /// The tokenizer, when it is not beside the model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its `models/` are exported) or a checkpoint (llama2.c `.bin`, Hugging
    /// Face folder, GGUF).
    pub path: PathBuf,
    /// `hf`: a folder `transformers` loads as `LlamaForCausalLM`; `gguf`: a file llama.cpp loads.
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// GGUF weight type: `f32` or `q8_0` (norms stay F32).
    #[arg(long = "type", default_value = "f32")]
    pub gguf_type: String,
    /// Where to write: a folder for a run's models (default `RUN_DIR/export`); for one
    /// checkpoint, the folder (hf) or the file (gguf), required.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The checkpoint's tokenizer (default: the one beside it).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Train steps (forward + backward + AdamW) of a bench model: median ms/step, tokens/s and
    /// 6·params·tokens/time.
    Train {
        /// `sft-arith-0.75M`, `4.4M` or `125M` (`lmlab_sdk::lm::bench::bench_models`).
        #[arg(long, default_value = "4.4M")]
        model: String,
        /// `cpu`, `tch:cpu`, `tch:cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// `f32` or `bf16` (weights, activations and optimiser state).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed steps (after the warm-up ones).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Override the model's batch size.
        #[arg(long)]
        batch: Option<usize>,
    },
    /// Compare a forward pass on `--device` with the `cpu` backend's; exits 1 when they differ
    /// by more than `--tolerance` relative to the largest logit.
    Check {
        #[arg(long)]
        device: String,
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
    },
    /// Scoring speed on the native path: a prompt of `--tokens` ids in one batch
    /// (`QLlama::score`, matrix–matrix products), log-probabilities at every position, as
    /// an echo + logprobs request needs. The ids are `benches/llamacpp_reference.py
    /// --prefill`'s: BOS, then `1000 + 37·i mod 5000`.
    Prefill {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Timed runs (the fastest is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Greedy KV-cached decoding speed of a checkpoint (no early stop) and peak memory.
    Decode {
        /// The checkpoint; its format is detected from the file.
        #[arg(long)]
        model: PathBuf,
        /// The tokenizer (default: the one beside the model).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// New tokens after the prompt (BOS, or the first token when there is none).
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// As `lmlab generate --weights`: `f32`, `native`, `q8_0`, `q4_1`.
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Runs to time; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The checkpoint; its format is detected from the file.
    #[arg(long)]
    pub model: PathBuf,
    /// The tokenizer (default: the one beside the model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Raw prompt text (special tokens are parsed as tokens).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// A user message wrapped in the model's own chat template (instead of --prompt).
    #[arg(long, conflicts_with = "prompt")]
    pub chat: Option<String>,
    /// Forward steps to run, prompt positions included, as llama2.c's `-n`: a prompt of `p`
    /// tokens (BOS counted) gets up to `N − p + 1` new tokens. 0: the model's context length.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// New tokens to generate after the prompt, as OpenAI's and Hugging Face's
    /// `max_new_tokens` (instead of --max-tokens); the context length still bounds them.
    #[arg(long, conflicts_with = "max_tokens")]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print token ids (prompt first, BOS included) instead of text.
    #[arg(long)]
    pub ids: bool,
    /// Recompute the whole sequence at every step instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
    /// `cpu`, `tch:cpu`, `tch:cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32`: the burn model on `--device`. `native`: block-quantized CPU decoding with a GGUF
    /// file's own blocks (other formats quantized to Q8_0). `q8_0`, `q4_1`: quantized to that.
    #[arg(long, default_value = "f32")]
    pub weights: String,
}

/// `--weights`: `None` for the burn model in f32, else the block-quantized engine's choice.
fn parse_weights(
    name: &str,
    device: &str,
) -> Result<Option<Option<crate::lm::quant::QKind>>, Error> {
    use crate::lm::quant::QKind;
    let kind = match name {
        "f32" => return Ok(None),
        "native" => None,
        other => match QKind::parse(other) {
            Ok(QKind::F32) | Err(_) => {
                return Err(Error::Usage(format!(
                    "unknown --weights `{other}`: use f32, native, q8_0 or q4_1"
                )));
            }
            Ok(kind) => Some(kind),
        },
    };
    if device != "cpu" {
        return Err(Error::Usage(format!(
            "--weights {name} decodes on the CPU (its own kernels); drop --device {device}"
        )));
    }
    Ok(Some(kind))
}

#[derive(clap::Args, Debug)]
pub struct RecipeArgs {
    /// The recipe name (`recipes/<NAME>.toml`) or a path to a `.toml` file.
    pub name: String,
    /// Override a value: `table.field=value` (typed by the schema), `seed=N`, `device=...`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Apply the recipe's `[smoke]` overrides: a quick run that checks everything works.
    #[arg(long)]
    pub smoke: bool,
    /// Continue a killed run from its last checkpoint (its configuration is kept).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// The seed (same as `--set seed=N`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars, fewer logs.
    #[arg(long)]
    pub quiet: bool,
    /// Build every component and print the resolved configuration, without running.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let quiet = matches!(&cli.command, Command::Recipe(a) if a.quiet);
    init_logging(quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(user) = e.downcast_ref::<Error>() {
                eprintln!("error: {user}");
                ExitCode::from(2)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LMLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut plugins = cli.plugins.clone();
    if let Ok(list) = std::env::var("LMLAB_PLUGINS") {
        plugins.extend(list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    for p in &plugins {
        let added = crate::dynamic::load_plugin(p)?;
        tracing::info!(plugin = %p.display(), components = added.len(), "loaded plugin");
    }
    let recipes_dir = cli
        .recipes_dir
        .clone()
        .or_else(|| std::env::var_os("LMLAB_RECIPES_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("recipes"));
    match cli.command {
        Command::Recipes => list_recipes(&recipes_dir),
        Command::Schema { out } => write_schemas(&out),
        Command::Plugins => {
            for kind in Kind::ALL {
                for f in registry::factories().into_iter().filter(|f| f.kind == kind) {
                    println!("{:<13} {:<22} {}", kind.as_str(), f.name, f.description);
                }
            }
            for m in crate::rl::methods::all() {
                let roles: Vec<&str> = m.roles().iter().map(|r| r.role).collect();
                println!(
                    "{:<13} {:<22} {} (objectives: {}; advantages: {}{})",
                    "rl_method",
                    m.name(),
                    m.label(),
                    roles.join(", "),
                    m.advantages(),
                    if m.needs_critic() {
                        "; critic from the reward model"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::Recipe(args) => run_recipe(&recipes_dir, args),
        Command::Generate(args) => generate(args),
        Command::Bench(cmd) => bench(cmd),
        Command::Export(args) => export(args),
        Command::Tokenize(args) => tokenize(args),
        Command::Serve(args) => serve(args),
    }
}

fn list_recipes(dir: &Path) -> anyhow::Result<()> {
    let all = recipe::list(dir);
    if all.is_empty() {
        return Err(Error::Usage(format!("no recipes in {}", dir.display())).into());
    }
    for (name, r) in all {
        match r {
            Ok(r) => println!(
                "{name:<22} {:<40} {}",
                r.header.paper,
                if r.description.is_empty() {
                    &r.header.claim
                } else {
                    &r.description
                }
            ),
            Err(e) => println!("{name:<22} (invalid: {e})"),
        }
    }
    Ok(())
}

/// Writes `component.<kind>.<name>.schema.json` for each component and `recipe.schema.json`.
pub fn write_schemas(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
    for f in registry::factories() {
        let path = out.join(format!("component.{}.{}.schema.json", f.kind, f.name));
        let text = serde_json::to_string_pretty(&schema::component_schema(f))? + "\n";
        write_atomic(&path, text.as_bytes())?;
    }
    let path = out.join("recipe.schema.json");
    write_atomic(
        &path,
        (serde_json::to_string_pretty(&schema::recipe_schema())? + "\n").as_bytes(),
    )?;
    println!(
        "wrote {} schemas to {}",
        registry::factories().len() + 1,
        out.display()
    );
    Ok(())
}

fn run_recipe(recipes_dir: &Path, args: RecipeArgs) -> anyhow::Result<()> {
    let (mut recipe, run_dir) = match &args.resume {
        Some(dir) => {
            let config = dir.join(CONFIG_FILE);
            if !config.is_file() {
                return Err(Error::Resume {
                    path: dir.clone(),
                    reason: format!("it has no {CONFIG_FILE}; is it a run directory?"),
                }
                .into());
            }
            if !args.set.is_empty() || args.seed.is_some() || args.smoke {
                return Err(Error::Resume {
                    path: dir.clone(),
                    reason: "a resumed run keeps its configuration: drop --set, --seed and --smoke"
                        .into(),
                }
                .into());
            }
            let text =
                std::fs::read_to_string(&config).map_err(|e| Error::io("read", &config, e))?;
            let r = recipe::parse(&text, &args.name, &config.display().to_string())?;
            (r, Some(dir.clone()))
        }
        None => {
            let path = recipe::find_recipe(&args.name, recipes_dir)?;
            (recipe::load(&path)?, None)
        }
    };
    if run_dir.is_none() {
        recipe.apply_overrides(&args.set, args.smoke)?;
        if let Some(seed) = args.seed {
            recipe.seed = seed;
        }
    }
    let device = crate::device::parse_device(&recipe.device)?;
    let mut components = recipe.build(&device)?;
    let resolved: BTreeMap<String, toml::Table> = components_resolved(&recipe, &mut components);
    let config_text = recipe.resolved_toml(&resolved);
    if args.dry_run {
        print!("{config_text}");
        return Ok(());
    }
    let mut scheduler: Box<dyn Scheduler> = components
        .take("scheduler", &format!("recipe `{}`", recipe.name))
        .map_err(|e| Error::Usage(format!("{}: {e}", recipe.file)))?;
    let run = match &run_dir {
        Some(dir) => RunDir::open(dir.clone())?,
        None => RunDir::create(&args.out, &recipe.name, &config_text)?,
    };
    tracing::info!(recipe = %recipe.name, run = %run.path().display(), "starting");
    let mut ctx = RunContext::new(run, device, recipe.seed, recipe.name.clone());
    ctx.smoke = args.smoke;
    ctx.resume = run_dir.is_some();
    ctx.quiet = args.quiet;
    scheduler.run(&mut ctx, &mut components)?;
    if let Some(export) = &recipe.export {
        let out = ctx.run.path().join("export");
        for &format in &export.formats {
            let ty = export.gguf_type;
            crate::lm::export::export_run(ctx.run.path(), format, ty, &out)?;
        }
    }
    println!("run written to {}", ctx.run.path().display());
    let summary = ctx.run.path().join(crate::run::SUMMARY_FILE);
    if let Ok(text) = std::fs::read_to_string(&summary) {
        println!("\n{text}");
    }
    Ok(())
}

fn components_resolved(
    recipe: &Recipe,
    components: &mut crate::Components,
) -> BTreeMap<String, toml::Table> {
    recipe
        .components
        .keys()
        .filter_map(|role| components.resolved(role).map(|t| (role.clone(), t.clone())))
        .collect()
}

fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    use crate::lm::bench;
    use serde_json::json;

    match cmd {
        BenchCommand::Train {
            model,
            device: name,
            dtype,
            steps,
            warmup,
            batch,
        } => {
            let mut m = bench::bench_model(&model)?;
            if let Some(b) = batch {
                m.batch = b.max(1);
            }
            let mut device = crate::device::parse_device(&name)?;
            bench::set_float_dtype(&mut device, &dtype)?;
            let t = bench::time_train_steps(&m, &device, warmup, steps.max(1))?;
            let mut line = serde_json::to_value(&t)?;
            line["bench"] = json!("train");
            line["device"] = json!(name);
            line["dtype"] = json!(dtype);
            line["batch"] = json!(m.batch);
            line["seq"] = json!(m.seq);
            println!("{line}");
            Ok(())
        }
        BenchCommand::Check {
            device: name,
            tolerance,
        } => {
            let device = crate::device::parse_device(&name)?;
            let (diff, scale) = bench::forward_check(&device)?;
            let ok = diff <= tolerance * scale.max(1.0);
            println!(
                "{}",
                json!({"bench": "check", "device": name, "max_abs_diff": diff,
                       "max_abs_logit": scale, "tolerance": tolerance, "ok": ok})
            );
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{name} disagrees with cpu: max |Δlogit| {diff} at logit scale {scale}"
                ))
            }
        }
        BenchCommand::Prefill {
            model,
            tokenizer,
            tokens,
            repeats,
        } => {
            let t0 = std::time::Instant::now();
            let loaded = crate::lm::load::load_quantized(&model, tokenizer.as_deref(), None)?;
            let load_s = t0.elapsed().as_secs_f64();
            let bos = loaded
                .tokenizer
                .encode("", true)
                .first()
                .copied()
                .unwrap_or(1);
            let ids: Vec<u32> = std::iter::once(bos)
                .chain((1..tokens.max(2)).map(|i| 1000 + (37 * i as u32) % 5000))
                .collect();
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                loaded.model.score(&ids, 1, 1.0).map_err(Error::Usage)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            let m = &loaded.model;
            println!(
                "{}",
                json!({"bench": "prefill", "model": model.display().to_string(),
                       "threads": rayon::current_num_threads(), "prompt_tokens": ids.len(),
                       "seconds": best, "tokens_per_s": ids.len() as f64 / best,
                       "load_s": load_s, "weights_bytes": m.weight_bytes(),
                       "weights_dtype": m.weight_kind().name(),
                       "peak_rss_bytes": bench::peak_rss_bytes()})
            );
            Ok(())
        }
        BenchCommand::Decode {
            model,
            tokenizer,
            tokens,
            device: name,
            weights,
            repeats,
        } => {
            let quant = parse_weights(&weights, &name)?;
            let device = crate::device::parse_device(&name)?;
            let t0 = std::time::Instant::now();
            let first_token = |tok: &crate::lm::Tokenizer| match tok.encode("", true) {
                p if p.is_empty() => vec![0],
                p => p,
            };
            let mut runs = Vec::new();
            let (weights_bytes, weights_dtype, load_s) = match quant {
                None => {
                    let loaded = crate::lm::load::load(&model, tokenizer.as_deref(), &device)?;
                    let load_s = t0.elapsed().as_secs_f64();
                    let prompt = first_token(&loaded.tokenizer);
                    for _ in 0..repeats.max(1) {
                        runs.push(bench::time_decode(&loaded.model, &prompt, tokens, &device));
                    }
                    (
                        4 * loaded.model.config.num_params(),
                        "f32".to_string(),
                        load_s,
                    )
                }
                Some(kind) => {
                    let loaded =
                        crate::lm::load::load_quantized(&model, tokenizer.as_deref(), kind)?;
                    let load_s = t0.elapsed().as_secs_f64();
                    let prompt = first_token(&loaded.tokenizer);
                    for _ in 0..repeats.max(1) {
                        runs.push(bench::time_quantized_decode(&loaded.model, &prompt, tokens));
                    }
                    let m = &loaded.model;
                    (m.weight_bytes(), m.weight_kind().name().to_string(), load_s)
                }
            };
            let best = runs
                .into_iter()
                .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
                .expect("at least one run");
            let mut line = serde_json::to_value(&best)?;
            line["bench"] = json!("decode");
            line["model"] = json!(model.display().to_string());
            line["device"] = json!(name);
            line["threads"] = json!(rayon::current_num_threads());
            line["load_s"] = json!(load_s);
            line["weights_bytes"] = json!(weights_bytes);
            line["weights_dtype"] = json!(weights_dtype);
            line["peak_rss_bytes"] = json!(bench::peak_rss_bytes());
            println!("{line}");
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use crate::lm::quant::QKind;
    let weights = match args.weights.as_str() {
        "native" => None,
        other => Some(QKind::parse(other).map_err(|_| {
            Error::Usage(format!(
                "unknown --weights `{other}`: use native, q8_0, q4_1 or f32"
            ))
        })?),
    };
    let ip: std::net::IpAddr = args
        .host
        .parse()
        .map_err(|_| Error::Usage(format!("--host `{}` is not an IP address", args.host)))?;
    if args.max_batch_rows == 0 {
        return Err(Error::Usage("--max-batch-rows must be at least 1".into()).into());
    }
    let name = args.name.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string()
    });
    crate::lm::serve::run(crate::lm::serve::ServeOptions {
        model: args.model,
        tokenizer: args.tokenizer,
        weights,
        name,
        addr: std::net::SocketAddr::new(ip, args.port),
        max_batch_rows: args.max_batch_rows,
    })
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::io("read", f, e))?,
        (None, None) => return Err(Error::Usage("give --text or --file".into()).into()),
    };
    let tokenizer = crate::lm::load::tokenizer(&args.model, args.tokenizer.as_deref())?;
    let tokenizer = if args.special {
        tokenizer
    } else {
        tokenizer.with_special_as_text()
    };
    let ids: Vec<String> = tokenizer
        .encode(&text, args.bos)
        .iter()
        .map(u32::to_string)
        .collect();
    println!("{}", ids.join(" "));
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    use crate::lm::export::{self, Format, GgufType};
    let format = match args.format.as_str() {
        "hf" => Format::Hf,
        "gguf" => Format::Gguf,
        other => {
            return Err(Error::Usage(format!("unknown --format `{other}`: use hf or gguf")).into());
        }
    };
    let ty = match args.gguf_type.as_str() {
        "f32" => GgufType::F32,
        "q8_0" => GgufType::Q8_0,
        other => {
            return Err(Error::Usage(format!("unknown --type `{other}`: use f32 or q8_0")).into());
        }
    };
    if format == Format::Hf && ty != GgufType::F32 {
        return Err(Error::Usage(
            "--type applies to --format gguf (a Hugging Face folder is F32)".into(),
        )
        .into());
    }
    let written = if args.path.join(crate::run::CONFIG_FILE).is_file() {
        let out = args.out.clone().unwrap_or_else(|| args.path.join("export"));
        export::export_run(&args.path, format, ty, &out)?
    } else {
        let Some(out) = args.out.clone() else {
            return Err(Error::Usage(
                "exporting one checkpoint: name the output with --out".into(),
            )
            .into());
        };
        let name = args
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        let tok = args.tokenizer.as_deref();
        export::export_model(&args.path, tok, format, ty, name, &out)?;
        vec![out]
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use crate::lm::load::{Loaded, load, load_quantized};

    // Refused before the model loads: the sampling flags, as a recipe's are checked.
    let sampling = crate::SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        ..Default::default()
    };
    sampling.validate().map_err(|e| {
        let flag = e.field.as_deref().unwrap_or("").replace('_', "-");
        Error::Usage(format!("--{flag} {}", e.message))
    })?;
    let tok = args.tokenizer.as_deref();
    match parse_weights(&args.weights, &args.device)? {
        None => {
            let device = crate::device::parse_device(&args.device)?;
            let loaded = load(&args.model, tok, &device)?;
            let (prompt, params) =
                generation_inputs(&args, &loaded, loaded.model.config.max_seq_len)?;
            let stop_ids = loaded.stop_ids.clone();
            let out = crate::lm::sample::generate(
                &loaded.model,
                std::slice::from_ref(&prompt),
                &params,
                None,
                loaded.tokenizer.pad(),
                !args.no_cache,
                &mut crate::rng::rng(args.seed, 0),
                &|_, toks: &[u32]| toks.last().is_some_and(|t| stop_ids.contains(t)),
                &device,
            );
            let tokens = out.into_iter().next().map(|s| s.tokens).unwrap_or_default();
            print_generation(&args, &loaded, &prompt, tokens)
        }
        Some(kind) => {
            let loaded: Loaded<crate::lm::quant::QLlama> = load_quantized(&args.model, tok, kind)?;
            let (prompt, params) =
                generation_inputs(&args, &loaded, loaded.model.config.max_seq_len)?;
            let out = loaded.model.generate(
                &prompt,
                &params,
                &loaded.stop_ids,
                &mut crate::rng::rng(args.seed, 0),
            );
            print_generation(&args, &loaded, &prompt, out.tokens)
        }
    }
}

/// The prompt's ids and the sampling parameters of `lmlab generate`.
fn generation_inputs<M>(
    args: &GenerateArgs,
    loaded: &crate::lm::load::Loaded<M>,
    context: usize,
) -> anyhow::Result<(Vec<u32>, crate::SamplingParams)> {
    let text = match &args.chat {
        Some(message) => loaded.chat_prompt(message)?,
        None => args.prompt.clone(),
    };
    let prompt = loaded.tokenizer.encode(&text, true);
    if prompt.is_empty() {
        return Err(Error::Usage(
            "the prompt is empty and the tokenizer has no BOS token: give --prompt".into(),
        )
        .into());
    }
    let limit = if args.max_tokens == 0 {
        context
    } else {
        args.max_tokens
    };
    let room = (context + 1).saturating_sub(prompt.len());
    let max_new_tokens = match args.max_new_tokens {
        Some(n) => n.min(room),
        None => (limit + 1).saturating_sub(prompt.len()),
    };
    let params = crate::SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_new_tokens,
        n: 1,
        stop: Vec::new(),
        seed: args.seed,
    };
    Ok((prompt, params))
}

/// Prints a completion: ids (prompt first) with `--ids`, else the text without its stop token.
fn print_generation<M>(
    args: &GenerateArgs,
    loaded: &crate::lm::load::Loaded<M>,
    prompt: &[u32],
    mut tokens: Vec<u32>,
) -> anyhow::Result<()> {
    use std::io::Write;

    let mut stdout = std::io::stdout().lock();
    if args.ids {
        let all: Vec<String> = prompt.iter().chain(&tokens).map(u32::to_string).collect();
        writeln!(stdout, "{}", all.join(" "))?;
        return Ok(());
    }
    // A stop token ends the text; it is not part of it.
    if tokens.last().is_some_and(|t| loaded.stop_ids.contains(t)) {
        tokens.pop();
    }
    let text = loaded.tokenizer.decode(&tokens, prompt.last().copied());
    stdout.write_all(text.as_bytes())?;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        writeln!(stdout)?;
    }
    Ok(())
}
