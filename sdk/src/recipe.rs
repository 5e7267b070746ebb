//! Recipes: `recipes/<name>.toml`, their header comment, `--set` and `--smoke` overrides, and
//! building their components through the registry.
//!
//! ```toml
//! #:schema ../schemas/recipe.schema.json
//! # Paper: none (SDK self-test)
//! # Claim: gradient descent reaches the least-squares optimum
//! # Time: ~5 s on 2 cores
//! description = "fit a linear model on generated data"
//! seed = 0
//! device = "cpu"
//!
//! [smoke]
//! "scheduler.steps" = 50
//!
//! [task]                 # the table name is the role; a kind name needs no `kind = ...`
//! use = "linear-regression"
//! dim = 8
//!
//! [scheduler]
//! use = "supervised"
//! steps = 400
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, closest};
use crate::registry::{self, BuildContext, Built, Components, ConfigError, Kind};
use crate::schema::{self, FieldType, RECIPE_FIELDS};

/// The header comment of a recipe file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// `# Paper: ...`
    pub paper: String,
    /// `# Claim: ...`
    pub claim: String,
    /// `# Time: ...`
    pub time: String,
}

/// One component table.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentSpec {
    /// The table name (its role in the recipe).
    pub role: String,
    /// Its kind: the table name when that is a kind, else its `kind` field.
    pub kind: Kind,
    /// The registered plugin name (`use`).
    pub plugin: String,
    /// The configuration (the table without `use` and `kind`).
    pub config: toml::Table,
}

/// A parsed recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// The recipe's name (its file stem).
    pub name: String,
    /// Where it was read from, as shown in messages.
    pub file: String,
    pub header: Header,
    pub description: String,
    pub seed: u64,
    pub device: String,
    /// `[smoke]` overrides: dotted key to value.
    pub smoke: BTreeMap<String, toml::Value>,
    /// Component tables by role.
    pub components: BTreeMap<String, ComponentSpec>,
    /// Tables whose plugin a `--set table.use=…` replaced (they start from its defaults).
    pub swapped: std::collections::BTreeSet<String>,
    /// `[export]`: the run's trained models written as Hugging Face folders or GGUF files.
    pub export: Option<crate::lm::export::ExportConfig>,
}

/// Finds `name` in `dir` (`<dir>/<name>.toml`), or takes `name` as a path to a `.toml` file.
pub fn find_recipe(name: &str, dir: &Path) -> Result<PathBuf, Error> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") && as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let candidate = dir.join(format!("{name}.toml"));
    if candidate.is_file() {
        return Ok(candidate);
    }
    let known = list_names(dir);
    Err(Error::UnknownRecipe {
        name: name.to_string(),
        looked_in: candidate.display().to_string(),
        suggestions: closest(name, known.iter().map(String::as_str)),
    })
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml")
                .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))?
        })
        .collect();
    names.sort();
    names
}

/// Every recipe in `dir`, parsed (a file that does not parse is reported as an error entry).
pub fn list(dir: &Path) -> Vec<(String, Result<Recipe, Error>)> {
    list_names(dir)
        .into_iter()
        .map(|n| {
            let r = load(&dir.join(format!("{n}.toml")));
            (n, r)
        })
        .collect()
}

/// Reads and parses a recipe file.
pub fn load(path: &Path) -> Result<Recipe, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe".into());
    parse(&text, &name, &path.display().to_string())
}

fn parse_header(text: &str) -> Header {
    let mut h = Header::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("#:") {
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        for (key, slot) in [
            ("Paper:", &mut h.paper),
            ("Claim:", &mut h.claim),
            ("Time:", &mut h.time),
        ] {
            if let Some(v) = comment.strip_prefix(key) {
                *slot = v.trim().to_string();
            }
        }
    }
    h
}

/// Parses recipe text. `file` is how the file is named in messages.
pub fn parse(text: &str, name: &str, file: &str) -> Result<Recipe, Error> {
    let table: toml::Table = toml::from_str(text).map_err(|e| Error::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let mut recipe = Recipe {
        name: name.to_string(),
        file: file.to_string(),
        header: parse_header(text),
        description: String::new(),
        seed: 0,
        device: "cpu".into(),
        smoke: BTreeMap::new(),
        components: BTreeMap::new(),
        swapped: Default::default(),
        export: None,
    };
    for (key, value) in table {
        recipe.set_top_level(&key, value)?;
    }
    Ok(recipe)
}

impl Recipe {
    fn field_error(&self, table: &str, field: Option<&str>, message: String) -> Error {
        Error::Field {
            file: self.file.clone(),
            table: table.to_string(),
            plugin: self.components.get(table).map(|c| c.plugin.clone()),
            field: field.map(str::to_string),
            message,
        }
    }

    fn set_top_level(&mut self, key: &str, value: toml::Value) -> Result<(), Error> {
        let top = "top level";
        let expect =
            |what: &str, got: &toml::Value| format!("expected {what}, found {}", got.type_str());
        match (key, value) {
            ("description", toml::Value::String(s)) => self.description = s,
            ("seed", toml::Value::Integer(i)) if i >= 0 => self.seed = i as u64,
            ("seed", v) => {
                return Err(self.field_error(top, Some(key), expect("a non-negative integer", &v)));
            }
            ("device", toml::Value::String(s)) => {
                crate::device::parse_device(&s)
                    .map_err(|e| self.field_error(top, Some(key), e.to_string()))?;
                self.device = s;
            }
            ("smoke", toml::Value::Table(t)) => {
                self.smoke = t.into_iter().collect();
            }
            ("export", toml::Value::Table(t)) => {
                let config = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        self.field_error("export", None, e.message().to_string())
                    })?;
                self.export = Some(config);
            }
            (k @ ("description" | "device"), v) => {
                return Err(self.field_error(top, Some(k), expect("a string", &v)));
            }
            (k @ ("smoke" | "export"), v) => {
                return Err(self.field_error(top, Some(k), expect("a table", &v)));
            }
            (_, toml::Value::Table(t)) => {
                let spec = self.component_spec(key, t)?;
                self.components.insert(key.to_string(), spec);
            }
            (_, _) => {
                let fields: Vec<&str> = RECIPE_FIELDS.iter().map(|f| f.0).collect();
                let hint = closest(key, fields.iter().copied());
                return Err(self.field_error(
                    top,
                    Some(key),
                    format!(
                        "unknown field{}; top-level fields are {}, and component tables ([task], [scheduler], ...)",
                        hint.first().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default(),
                        fields.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn component_spec(&self, role: &str, mut t: toml::Table) -> Result<ComponentSpec, Error> {
        let err = |field: Option<&str>, message: String| Error::Field {
            file: self.file.clone(),
            table: role.to_string(),
            plugin: None,
            field: field.map(str::to_string),
            message,
        };
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        let kind = match t.remove("kind") {
            Some(toml::Value::String(k)) => Kind::parse(&k).ok_or_else(|| {
                err(
                    Some("kind"),
                    format!("unknown kind `{k}`; kinds are {}", kinds.join(", ")),
                )
            })?,
            Some(v) => {
                return Err(err(
                    Some("kind"),
                    format!("expected a string, found {}", v.type_str()),
                ));
            }
            None => Kind::parse(role).ok_or_else(|| {
                err(
                    None,
                    format!(
                        "a component table named `{role}` needs `kind = \"...\"` (one of {}), \
                         since `{role}` is not a kind",
                        kinds.join(", ")
                    ),
                )
            })?,
        };
        let plugin = match t.remove("use") {
            Some(toml::Value::String(u)) => u,
            Some(v) => {
                return Err(err(
                    Some("use"),
                    format!("expected a plugin name (string), found {}", v.type_str()),
                ));
            }
            None => {
                return Err(err(
                    Some("use"),
                    format!(
                        "missing field: name the {kind} plugin, e.g. `use = \"{}\"`; registered: {}",
                        registry::names(kind).first().copied().unwrap_or("..."),
                        registry::names(kind).join(", ")
                    ),
                ));
            }
        };
        let factory = registry::find(kind, &plugin).ok_or_else(|| {
            let registered: Vec<String> = registry::names(kind)
                .into_iter()
                .map(String::from)
                .collect();
            Error::UnknownPlugin {
                file: self.file.clone(),
                table: role.to_string(),
                kind: kind.to_string(),
                suggestions: closest(&plugin, registered.iter().map(String::as_str)),
                name: plugin.clone(),
                registered,
            }
        })?;
        // Unknown fields are reported against the schema, with the closest names.
        let schema = schema::component_schema(factory);
        for key in t.keys() {
            if let Err(message) = schema::field_type(&schema, &[key]) {
                return Err(Error::Field {
                    file: self.file.clone(),
                    table: role.to_string(),
                    plugin: Some(plugin.clone()),
                    field: Some(key.clone()),
                    message,
                });
            }
        }
        Ok(ComponentSpec {
            role: role.to_string(),
            kind,
            plugin,
            config: t,
        })
    }

    /// Applies one `--set path=value`: `seed=3`, `device=tch:cpu`, `scheduler.steps=100`,
    /// `task.use=other-task`. The value is parsed as the type the field's schema declares.
    pub fn apply_set(&mut self, arg: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::BadSet {
            arg: arg.to_string(),
            reason,
        };
        let (path, text) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected `path=value`, e.g. `scheduler.steps=100`".into()))?;
        let path = path.trim();
        let value = self.typed_value(path, text).map_err(bad)?;
        self.set_value(path, value).map_err(|e| bad(e.to_string()))
    }

    /// The value `text` as the type of the field at dotted `path`.
    fn typed_value(&self, path: &str, text: &str) -> Result<toml::Value, String> {
        let parts: Vec<&str> = path.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{path}` is not a dotted field path"));
        }
        if parts.len() == 1 {
            let ty = match RECIPE_FIELDS.iter().find(|f| f.0 == parts[0]) {
                Some((_, "integer", _)) => FieldType::Integer,
                Some((_, "string", _)) => FieldType::String,
                Some(_) => FieldType::Toml,
                None => {
                    let hint = closest(parts[0], RECIPE_FIELDS.iter().map(|f| f.0));
                    return Err(format!(
                        "unknown top-level field `{}`{}; use `table.field=value` for a component",
                        parts[0],
                        hint.first()
                            .map(|h| format!(" (did you mean `{h}`?)"))
                            .unwrap_or_default()
                    ));
                }
            };
            return schema::parse_typed(text, ty);
        }
        let role = parts[0];
        let spec = self.components.get(role).ok_or_else(|| {
            let roles: Vec<&str> = self.components.keys().map(String::as_str).collect();
            let hint = closest(role, roles.iter().copied());
            format!(
                "the recipe has no [{role}] table{}; tables: {}",
                hint.first()
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default(),
                roles.join(", ")
            )
        })?;
        if parts.len() == 2 && (parts[1] == "use" || parts[1] == "kind") {
            return Ok(toml::Value::String(text.to_string()));
        }
        let factory = registry::find(spec.kind, &spec.plugin)
            .ok_or_else(|| format!("plugin `{}` is not registered", spec.plugin))?;
        let schema = schema::component_schema(factory);
        let ty = schema::field_type_in(&schema, &parts[1..], &spec.config)
            .map_err(|e| format!("[{role}] (plugin `{}`): {e}", spec.plugin))?;
        schema::parse_typed(text, ty).map_err(|e| {
            format!(
                "[{role}] (plugin `{}`) field `{}`: {e}",
                spec.plugin,
                parts[1..].join(".")
            )
        })
    }

    /// Sets a typed value at a dotted path, re-validating the table it lands in.
    fn set_value(&mut self, path: &str, value: toml::Value) -> Result<(), Error> {
        let parts: Vec<&str> = path.split('.').collect();
        if parts.len() == 1 {
            return self.set_top_level(parts[0], value);
        }
        let role = parts[0];
        let spec =
            self.components.get(role).cloned().ok_or_else(|| {
                self.field_error(role, None, "no such table in the recipe".into())
            })?;
        // `table.use = other` swaps the component: the table starts over from the new
        // plugin's defaults (its old fields belonged to the old plugin).
        if parts.len() == 2 && parts[1] == "use" && value.as_str() != Some(spec.plugin.as_str()) {
            let mut table = toml::Table::new();
            table.insert("use".into(), value);
            if Kind::parse(role) != Some(spec.kind) {
                table.insert(
                    "kind".into(),
                    toml::Value::String(spec.kind.as_str().into()),
                );
            }
            let new_spec = self.component_spec(role, table)?;
            self.components.insert(role.to_string(), new_spec);
            self.swapped.insert(role.to_string());
            return Ok(());
        }
        // Rebuild the table with the change and re-run the same checks as the file.
        let mut table = spec.config.clone();
        table.insert("use".into(), toml::Value::String(spec.plugin.clone()));
        table.insert(
            "kind".into(),
            toml::Value::String(spec.kind.as_str().into()),
        );
        // A sub-table the recipe does not write starts from the component's own default for
        // it (`--set scheduler.rm.steps=10` keeps the rest of `rm`'s defaults), not from the
        // sub-table type's defaults.
        let defaults = registry::find(spec.kind, &spec.plugin)
            .and_then(|f| (f.resolve)(&spec.config).ok())
            .unwrap_or_default();
        let mut default_node = Some(&defaults);
        let mut node = &mut table;
        for key in &parts[1..parts.len() - 1] {
            let default = default_node
                .and_then(|d| d.get(*key))
                .and_then(toml::Value::as_table);
            default_node = default;
            let entry = node
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(default.cloned().unwrap_or_default()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(self.field_error(
                        role,
                        Some(key),
                        "is not a table, so it has no fields".into(),
                    ));
                }
            };
        }
        let last = parts[parts.len() - 1];
        // `objective.use = other` swaps an inline component too: its table starts over.
        if last == "use" && parts.len() > 2 && node.get("use").is_some_and(|u| u != &value) {
            node.clear();
        }
        node.insert(last.to_string(), value);
        let new_spec = self.component_spec(role, table)?;
        self.components.insert(role.to_string(), new_spec);
        Ok(())
    }

    /// Applies the recipe's `[smoke]` overrides. An override of a table whose plugin a
    /// `--set table.use=…` swapped applies only where the new plugin has the field.
    pub fn apply_smoke(&mut self) -> Result<(), Error> {
        let smoke = std::mem::take(&mut self.smoke);
        for (path, value) in &smoke {
            let table = path.split('.').next().unwrap_or("");
            let swapped = self.swapped.contains(table);
            if swapped && path.ends_with(".use") {
                continue;
            }
            match self.set_value(path, value.clone()) {
                Ok(()) => {}
                Err(Error::Field { .. }) if swapped => {
                    tracing::info!(override = path.as_str(), "a --smoke override the swapped plugin does not take; skipped");
                }
                Err(e @ Error::Field { .. }) => return Err(e),
                Err(other) => return Err(self.field_error("smoke", Some(path), other.to_string())),
            }
        }
        self.smoke = smoke;
        Ok(())
    }

    /// The command line's overrides in order: `--set table.use=…` (component swaps) first,
    /// then the `[smoke]` overrides when `smoke`, then the other `--set`s.
    pub fn apply_overrides(&mut self, sets: &[String], smoke: bool) -> Result<(), Error> {
        let is_swap = |s: &String| {
            s.split_once('=').is_some_and(|(p, _)| {
                p.trim().split('.').count() == 2 && p.trim().ends_with(".use")
            })
        };
        for s in sets.iter().filter(|s| is_swap(s)) {
            self.apply_set(s)?;
        }
        if smoke {
            self.apply_smoke()?;
        }
        for s in sets.iter().filter(|s| !is_swap(s)) {
            self.apply_set(s)?;
        }
        Ok(())
    }

    /// Builds the scheduler, checks the recipe against its roles ([`check_roles`](Self::check_roles)),
    /// builds every other component, and checks each against its role (its Rust type, and for
    /// objectives the tensors the scheduler hands them): a wrong recipe is an error before
    /// anything runs.
    pub fn build(&self, device: &burn::tensor::Device) -> Result<Components, Error> {
        let mut built = self.build_tables(device, |role| role == "scheduler")?;
        let Some(scheduler) = built.remove("scheduler") else {
            return Err(self.field_error(
                "scheduler",
                None,
                format!(
                    "missing: a recipe needs a [scheduler] table; registered schedulers: {}",
                    registry::names(Kind::Scheduler).join(", ")
                ),
            ));
        };
        let name = scheduler.name.clone();
        let roles = match scheduler.get::<Box<dyn crate::Scheduler>>() {
            Some(s) => s.roles(),
            None => {
                return Err(self.field_error(
                    "scheduler",
                    None,
                    format!(
                        "plugin `{name}` does not build a scheduler ({})",
                        scheduler.type_name()
                    ),
                ));
            }
        };
        self.check_roles(&name, &roles)?;
        let mut built = self.build_tables(device, |role| role != "scheduler")?;
        for role in &roles {
            let Some(b) = built.get(&role.name) else {
                continue;
            };
            if !role.accepts(b) {
                return Err(self.field_error(
                    &role.name,
                    None,
                    format!(
                        "scheduler `{name}` takes `{}` here ({}), but plugin `{}` provides `{}`",
                        role.type_name(),
                        role.about,
                        b.name,
                        b.type_name()
                    ),
                ));
            }
            if let (Some(inputs), Some(objective)) =
                (&role.inputs, b.get::<Box<dyn crate::Objective>>())
            {
                registry::check_inputs(objective.as_ref(), inputs).map_err(|m| {
                    self.field_error(
                        &role.name,
                        None,
                        format!(
                            "objective `{}` {m} by scheduler `{name}` ({})",
                            b.name, role.about
                        ),
                    )
                })?;
            }
            if let Some(policy) = b.get::<Box<dyn crate::policy::PolicyInit>>()
                && role.trains
                && !policy.trainable()
            {
                return Err(self.field_error(
                    &role.name,
                    Some("weights"),
                    format!(
                        "scheduler `{name}` trains this policy ({}), but these weights are for \
                         inference only: use weights = \"f32\"",
                        role.about
                    ),
                ));
            }
        }
        built.insert("scheduler".into(), scheduler);
        Ok(Components::new(built))
    }

    /// Checks the recipe's tables against a scheduler's roles: every required role is there,
    /// every table is a role, and each has the role's kind.
    pub fn check_roles(&self, scheduler: &str, roles: &[registry::Role]) -> Result<(), Error> {
        for role in roles {
            if role.required && !self.components.contains_key(&role.name) {
                let names = registry::names(role.kind);
                return Err(self.field_error(
                    &role.name,
                    None,
                    format!(
                        "missing: scheduler `{scheduler}` needs a [{}] table of kind `{}` ({}); e.g. `use = \"{}\"`{}; registered {} plugins: {}",
                        role.name,
                        role.kind,
                        role.about,
                        names.first().copied().unwrap_or("..."),
                        if Kind::parse(&role.name) == Some(role.kind) {
                            String::new()
                        } else {
                            format!(" with `kind = \"{}\"`", role.kind)
                        },
                        role.kind,
                        names.join(", ")
                    ),
                ));
            }
        }
        let role_names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        for (table, spec) in &self.components {
            if table == "scheduler" {
                continue;
            }
            let Some(role) = roles.iter().find(|r| &r.name == table) else {
                let hint = closest(table, role_names.iter().copied());
                return Err(self.field_error(
                    table,
                    None,
                    format!(
                        "scheduler `{scheduler}` takes no [{table}] table{}; its tables are {}",
                        hint.first()
                            .map(|h| format!(" (did you mean `{h}`?)"))
                            .unwrap_or_default(),
                        role_names
                            .iter()
                            .map(|r| format!("[{r}]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if spec.kind != role.kind {
                return Err(self.field_error(
                    table,
                    None,
                    format!(
                        "this table is of kind `{}` (plugin `{}`), but scheduler `{scheduler}` takes kind `{}` here ({}); {} plugins: {}",
                        spec.kind,
                        spec.plugin,
                        role.kind,
                        role.about,
                        role.kind,
                        registry::names(role.kind).join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Builds the tables `which` selects through the registry.
    fn build_tables(
        &self,
        device: &burn::tensor::Device,
        which: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Built>, Error> {
        let mut built: BTreeMap<String, Built> = BTreeMap::new();
        for (role, spec) in self.components.iter().filter(|(r, _)| which(r)) {
            let factory = registry::find(spec.kind, &spec.plugin).ok_or_else(|| {
                self.field_error(
                    role,
                    Some("use"),
                    format!("plugin `{}` is not registered", spec.plugin),
                )
            })?;
            let ctx = BuildContext {
                device,
                seed: self.seed,
                role,
            };
            let b = (factory.build)(&spec.config, &ctx).map_err(|e| {
                let (field, message) = match e.downcast_ref::<ConfigError>() {
                    Some(c) => (c.field.clone(), c.message.clone()),
                    None => (None, format!("{e:#}")),
                };
                Error::Field {
                    file: self.file.clone(),
                    table: role.clone(),
                    plugin: Some(spec.plugin.clone()),
                    field,
                    message,
                }
            })?;
            built.insert(role.clone(), b);
        }
        Ok(built)
    }

    /// The resolved recipe (every component with its defaults filled in) as TOML: what a run
    /// directory's `config.toml` holds, and what `--resume` reads back.
    pub fn resolved_toml(&self, resolved: &BTreeMap<String, toml::Table>) -> String {
        let mut root = toml::Table::new();
        root.insert("description".into(), self.description.clone().into());
        root.insert("seed".into(), toml::Value::Integer(self.seed as i64));
        root.insert("device".into(), self.device.clone().into());
        if let Some(export) = &self.export {
            let table = toml::Value::try_from(export).expect("the export table serialises");
            root.insert("export".into(), table);
        }
        for (role, spec) in &self.components {
            let mut t = toml::Table::new();
            t.insert("use".into(), spec.plugin.clone().into());
            if Kind::parse(role) != Some(spec.kind) {
                t.insert("kind".into(), spec.kind.as_str().into());
            }
            let config = resolved.get(role).unwrap_or(&spec.config);
            t.extend(config.clone());
            root.insert(role.clone(), toml::Value::Table(t));
        }
        let mut out = format!(
            "# Resolved configuration of recipe `{}` (from {}).\n# Paper: {}\n# Claim: {}\n# Time: {}\n",
            self.name, self.file, self.header.paper, self.header.claim, self.header.time
        );
        out.push_str(&toml::to_string_pretty(&root).expect("a TOML table always serialises"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
# Paper: none
# Claim: fits
# Time: 1 s
description = "d"
seed = 3
[smoke]
"scheduler.steps" = 5
[task]
use = "linear-regression"
dim = 4
[objective]
use = "mse"
[scheduler]
use = "supervised"
steps = 100
"#;

    #[test]
    fn parses_header_and_tables() {
        let r = parse(RECIPE, "t", "t.toml").unwrap();
        assert_eq!(r.header.claim, "fits");
        assert_eq!(r.seed, 3);
        assert_eq!(r.components["task"].plugin, "linear-regression");
        assert_eq!(r.components["task"].kind, Kind::Task);
    }

    #[test]
    fn set_is_typed_by_schema() {
        let mut r = parse(RECIPE, "t", "t.toml").unwrap();
        r.apply_set("scheduler.steps=7").unwrap();
        assert_eq!(
            r.components["scheduler"].config["steps"],
            toml::Value::Integer(7)
        );
        let e = r.apply_set("scheduler.steps=abc").unwrap_err().to_string();
        assert!(e.contains("is not an integer"), "{e}");
        let e = r.apply_set("scheduler.stepz=1").unwrap_err().to_string();
        assert!(e.contains("did you mean `steps`"), "{e}");
        r.apply_set("seed=11").unwrap();
        assert_eq!(r.seed, 11);
        r.apply_smoke().unwrap();
        assert_eq!(
            r.components["scheduler"].config["steps"],
            toml::Value::Integer(5)
        );
    }

    #[test]
    fn a_set_into_an_unwritten_sub_table_keeps_the_components_defaults_for_it() {
        let mut r = parse(RECIPE, "t", "t.toml").unwrap();
        r.apply_set("scheduler.optim.warmup_steps=3").unwrap();
        let optim = r.components["scheduler"].config["optim"]
            .as_table()
            .unwrap();
        assert_eq!(optim["warmup_steps"].as_integer(), Some(3));
        // `supervised`'s default learning rate (0.05), not `OptimConfig`'s (0.001).
        assert_eq!(optim["lr"].as_float(), Some(0.05));
    }

    #[test]
    fn unknown_plugin_suggests() {
        let text = RECIPE.replace("\"supervised\"", "\"supervisd\"");
        let e = parse(&text, "t", "t.toml").unwrap_err().to_string();
        assert!(e.contains("unknown scheduler plugin `supervisd`"), "{e}");
        assert!(e.contains("did you mean `supervised`"), "{e}");
    }
}
