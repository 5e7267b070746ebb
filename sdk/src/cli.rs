//! The `lmlab` command line: what `cargo xtask recipe ...` runs.
//!
//! ```text
//! lmlab recipe NAME [--set k=v]... [--smoke] [--resume RUN_DIR] [--out DIR] [--seed N] [--quiet]
//! lmlab recipes            list the bundled recipes
//! lmlab schema [--out DIR] write the JSON schemas
//! lmlab plugins            list registered components
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
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
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
            Ok(())
        }
        Command::Recipe(args) => run_recipe(&recipes_dir, args),
        Command::Generate(args) => generate(args),
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
        if args.smoke {
            recipe.apply_smoke()?;
        }
        for s in &args.set {
            recipe.apply_set(s)?;
        }
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

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;

    let device = crate::device::parse_device(&args.device)?;
    let loaded = crate::lm::load::load(&args.model, args.tokenizer.as_deref(), &device)?;
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
        loaded.model.config.max_seq_len
    } else {
        args.max_tokens
    };
    let params = crate::SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_new_tokens: (limit + 1).saturating_sub(prompt.len()),
        n: 1,
        stop: Vec::new(),
        seed: args.seed,
    };
    let stop_ids = loaded.stop_ids.clone();
    let mut rng = crate::rng::rng(args.seed, 0);
    let out = crate::lm::sample::generate(
        &loaded.model,
        std::slice::from_ref(&prompt),
        &params,
        None,
        loaded.tokenizer.pad(),
        !args.no_cache,
        &mut rng,
        &|_, toks: &[u32]| toks.last().is_some_and(|t| stop_ids.contains(t)),
        &device,
    );
    let mut tokens = out.into_iter().next().map(|s| s.tokens).unwrap_or_default();
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
