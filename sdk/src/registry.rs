//! The component registry: plugins register factories (kind, name, description, config
//! schema, builder); recipes name them.
//!
//! Static plugins register with [`register_component!`](crate::register_component), which
//! uses `inventory`: linking the crate is enough. Dynamic plugins (`cdylib`s) hand the same
//! factories over through [`crate::dynamic`].

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::anyhow;
use burn::tensor::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The kinds of component, one per core trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Task,
    Policy,
    RewardModel,
    Verifier,
    Sampler,
    Objective,
    Scheduler,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Kind; 7] = [
        Kind::Task,
        Kind::Policy,
        Kind::RewardModel,
        Kind::Verifier,
        Kind::Sampler,
        Kind::Objective,
        Kind::Scheduler,
    ];

    /// The name used in recipes (`kind = "reward_model"`) and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Policy => "policy",
            Kind::RewardModel => "reward_model",
            Kind::Verifier => "verifier",
            Kind::Sampler => "sampler",
            Kind::Objective => "objective",
            Kind::Scheduler => "scheduler",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a builder gets besides its configuration.
pub struct BuildContext<'a> {
    /// The device of the run (the backend is chosen by it).
    pub device: &'a Device,
    /// The run's seed.
    pub seed: u64,
    /// The recipe table the component comes from (its role, e.g. `task`, `verifier`).
    pub role: &'a str,
}

/// A configuration error inside one component table: the runner adds file, table and plugin.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", .field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The field at fault (dotted path inside the table), if one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error in `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error of the table as a whole.
    pub fn table(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    /// `Ok` when every `(field, value)` is at least 1 (a count, or a list's length); else the
    /// error of the first that is 0.
    pub fn at_least_one(fields: &[(&str, usize)]) -> Result<(), ConfigError> {
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((f, _)) => Err(Self::field(*f, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// The same error, for a sub-table `prefix` (`optim` → `generator.optim.lr`).
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: Some(match self.field {
                Some(f) => format!("{prefix}.{f}"),
                None => prefix.to_string(),
            }),
            message: self.message,
        }
    }
}

/// A built component: the boxed trait object, its resolved configuration (defaults filled in),
/// and where it came from.
pub struct Built {
    /// The component's kind.
    pub kind: Kind,
    /// The registered name it was built from.
    pub name: String,
    /// The resolved configuration, as written to the run's `config.toml`.
    pub resolved: toml::Table,
    value: Box<dyn Any + Send>,
    type_name: &'static str,
}

impl Built {
    /// Wraps a component value (e.g. a `Box<dyn Objective>`).
    pub fn new<T: Any + Send>(kind: Kind, name: &str, resolved: toml::Table, value: T) -> Self {
        Self {
            kind,
            name: name.to_string(),
            resolved,
            value: Box::new(value),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// The Rust type of the value this holds.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The `TypeId` of the value this holds.
    pub fn value_type_id(&self) -> std::any::TypeId {
        (*self.value).type_id()
    }

    /// The value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The value as `T`, or `self` back when it is something else.
    pub fn downcast<T: Any>(self) -> Result<T, Self> {
        match self.value.downcast::<T>() {
            Ok(v) => Ok(*v),
            Err(value) => Err(Self { value, ..self }),
        }
    }
}

/// A function that builds a component from its recipe table (`use`/`kind` removed).
pub type BuildFn = fn(&toml::Table, &BuildContext<'_>) -> anyhow::Result<Built>;

/// One registered component: what `register_component!` submits.
pub struct ComponentFactory {
    pub kind: Kind,
    pub name: &'static str,
    /// One line, shown by `lmlab plugins`.
    pub description: &'static str,
    /// The crate that registered it (`CARGO_CRATE_NAME`).
    pub crate_name: &'static str,
    /// The JSON schema of its configuration table.
    pub schema: fn() -> schemars::Schema,
    /// The table with every default filled in (what `config.toml` shows), or what is wrong.
    pub resolve: fn(&toml::Table) -> Result<toml::Table, ConfigError>,
    pub build: BuildFn,
}

inventory::collect!(ComponentFactory);

static DYNAMIC: Mutex<Vec<&'static ComponentFactory>> = Mutex::new(Vec::new());

/// Every registered factory (static and dynamically loaded), sorted by kind then name.
pub fn factories() -> Vec<&'static ComponentFactory> {
    let mut all: Vec<&'static ComponentFactory> = inventory::iter::<ComponentFactory>().collect();
    all.extend(
        DYNAMIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied(),
    );
    all.sort_by(|a, b| (a.kind, a.name).cmp(&(b.kind, b.name)));
    all
}

/// The factory registered as `kind`/`name`.
pub fn find(kind: Kind, name: &str) -> Option<&'static ComponentFactory> {
    factories()
        .into_iter()
        .find(|f| f.kind == kind && f.name == name)
}

/// Names registered for `kind`, sorted.
pub fn names(kind: Kind) -> Vec<&'static str> {
    factories()
        .into_iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.name)
        .collect()
}

/// Adds factories from a dynamic plugin; refuses a kind/name that is already registered.
pub(crate) fn register_dynamic(new: &[&'static ComponentFactory]) -> Result<(), String> {
    let existing = factories();
    for f in new {
        let clash = existing
            .iter()
            .chain(new.iter().filter(|g| !std::ptr::eq(**g, *f)))
            .any(|g| g.kind == f.kind && g.name == f.name);
        if clash {
            return Err(format!(
                "it registers {} `{}`, which is already registered",
                f.kind, f.name
            ));
        }
    }
    DYNAMIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(new.iter().copied());
    Ok(())
}

/// The schema function for a config type (used by `register_component!`).
pub fn schema_of<C: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(C)
}

/// Decodes a component table into its config type; errors name the field.
/// Returns the config and its resolved table (defaults filled in).
pub fn decode_config<C: DeserializeOwned + Serialize>(
    table: &toml::Table,
) -> Result<(C, toml::Table), ConfigError> {
    let value = toml::Value::Table(table.clone());
    let config: C = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError {
            field: (path != "." && !path.is_empty()).then_some(path),
            message: e.into_inner().to_string(),
        }
    })?;
    let resolved = match toml::Value::try_from(&config) {
        Ok(toml::Value::Table(t)) => t,
        Ok(other) => {
            let mut t = toml::Table::new();
            t.insert("value".into(), other);
            t
        }
        Err(e) => {
            return Err(ConfigError {
                field: None,
                message: format!("cannot write the resolved configuration: {e}"),
            });
        }
    };
    Ok((config, resolved))
}

/// Decodes `table` as `C` and calls `build` (used by `register_component!`).
pub fn build_with<C, T>(
    kind: Kind,
    name: &'static str,
    table: &toml::Table,
    ctx: &BuildContext<'_>,
    build: impl FnOnce(C, &BuildContext<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<Built>
where
    C: DeserializeOwned + Serialize,
    T: Any + Send,
{
    let (config, resolved) = decode_config::<C>(table)?;
    let value = build(config, ctx)?;
    Ok(Built::new(kind, name, resolved, value))
}

/// Registers a component with the static registry.
///
/// ```ignore
/// lmlab_sdk::register_component! {
///     kind: Objective,
///     name: "mse",
///     description: "mean squared error between `prediction` and `target`",
///     config: MseConfig,
///     build: |config: MseConfig, _ctx| Ok(Box::new(Mse::new(config)) as Box<dyn Objective>),
/// }
/// ```
///
/// `build` returns the boxed trait object of the kind (`Box<dyn Objective>`, `Box<dyn
/// Scheduler>`, `Box<dyn Task<Problem = P, Output = O>>`, ...): that is what a scheduler asks
/// the [`Components`] for.
#[macro_export]
macro_rules! register_component {
    (
        kind: $kind:ident,
        name: $name:literal,
        description: $description:literal,
        config: $config:ty,
        build: $build:expr $(,)?
    ) => {
        $crate::inventory::submit! {
            $crate::registry::ComponentFactory {
                kind: $crate::registry::Kind::$kind,
                name: $name,
                description: $description,
                crate_name: env!("CARGO_CRATE_NAME"),
                schema: $crate::registry::schema_of::<$config>,
                resolve: |table| $crate::registry::decode_config::<$config>(table).map(|(_, r)| r),
                build: |table, ctx| {
                    $crate::registry::build_with::<$config, _>(
                        $crate::registry::Kind::$kind, $name, table, ctx, $build,
                    )
                },
            }
        }
    };
}

/// The components built for one run, by role (the recipe table they came from).
pub struct Components {
    items: BTreeMap<String, Built>,
}

impl Components {
    /// Wraps built components keyed by role.
    pub fn new(items: BTreeMap<String, Built>) -> Self {
        Self { items }
    }

    /// The roles present.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.items.keys().map(String::as_str)
    }

    /// The resolved configuration of `role`, if built.
    pub fn resolved(&self, role: &str) -> Option<&toml::Table> {
        self.items.get(role).map(|b| &b.resolved)
    }

    /// The registered plugin `role` was built from.
    pub fn plugin(&self, role: &str) -> Option<&str> {
        self.items.get(role).map(|b| b.name.as_str())
    }

    /// Whether `role` was built.
    pub fn has(&self, role: &str) -> bool {
        self.items.contains_key(role)
    }

    /// Takes the component of `role` as `T`. `user` names who needs it, for the error message.
    pub fn take<T: Any>(&mut self, role: &str, user: &str) -> anyhow::Result<T> {
        let built = self.items.remove(role).ok_or_else(|| {
            anyhow!(
                "{user} needs a [{role}] table in the recipe (it has: {})",
                self.items.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let (kind, name, type_name) = (built.kind, built.name.clone(), built.type_name);
        built.downcast::<T>().map_err(|_| {
            anyhow!(
                "{user} needs [{role}] to provide `{}`, but {kind} `{name}` provides `{type_name}`",
                std::any::type_name::<T>()
            )
        })
    }

    /// Takes `role` if the recipe has it.
    pub fn take_optional<T: Any>(&mut self, role: &str, user: &str) -> anyhow::Result<Option<T>> {
        if self.has(role) {
            self.take(role, user).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// An objective configured inline in another component's table:
/// `objective = { use = "dpo", beta = 0.1 }`. It holds the resolved table (every default
/// filled in, `use` included) and is built through the registry like a table of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct InlineObjective {
    table: toml::Table,
}

/// The objective component of that name, resolved with its defaults.
fn resolve_objective(table: &toml::Table) -> Result<toml::Table, String> {
    let name = match table.get("use") {
        Some(toml::Value::String(n)) => n.clone(),
        Some(v) => return Err(format!("`use` must be a string, found {}", v.type_str())),
        None => {
            return Err(format!(
                "an inline objective needs `use = \"...\"`; registered objectives: {}",
                names(Kind::Objective).join(", ")
            ));
        }
    };
    let factory = find(Kind::Objective, &name).ok_or_else(|| {
        let all = names(Kind::Objective);
        let hint = crate::error::closest(&name, all.iter().copied());
        format!(
            "unknown objective `{name}`{}; registered objectives: {}",
            hint.first()
                .map(|h| format!(" (did you mean `{h}`?)"))
                .unwrap_or_default(),
            all.join(", ")
        )
    })?;
    let mut config = table.clone();
    config.remove("use");
    let mut resolved =
        (factory.resolve)(&config).map_err(|e| format!("objective `{name}`: {e}"))?;
    resolved.insert("use".into(), toml::Value::String(name));
    Ok(resolved)
}

impl InlineObjective {
    /// The registered objective `name` with its defaults.
    pub fn named(name: &str) -> Self {
        let mut table = toml::Table::new();
        table.insert("use".into(), toml::Value::String(name.into()));
        let table = resolve_objective(&table).unwrap_or(table);
        Self { table }
    }

    /// Its plugin name.
    pub fn name(&self) -> &str {
        self.table
            .get("use")
            .and_then(toml::Value::as_str)
            .unwrap_or("")
    }

    /// Builds it, and checks that it reads only tensors in `provided` (what the component that
    /// holds it hands it); the error names the field `objective`.
    pub fn build(
        &self,
        ctx: &BuildContext<'_>,
        provided: &[&str],
    ) -> Result<Box<dyn crate::Objective>, ConfigError> {
        let name = self.name().to_string();
        let factory = find(Kind::Objective, &name).ok_or_else(|| {
            ConfigError::field("objective", format!("unknown objective `{name}`"))
        })?;
        let mut config = self.table.clone();
        config.remove("use");
        let built = (factory.build)(&config, ctx)
            .map_err(|e| ConfigError::field("objective", format!("objective `{name}`: {e:#}")))?;
        let objective: Box<dyn crate::Objective> = built.downcast().map_err(|b| {
            ConfigError::field(
                "objective",
                format!("`{name}` is not an objective ({})", b.type_name()),
            )
        })?;
        check_inputs(objective.as_ref(), provided)
            .map_err(|m| ConfigError::field("objective", format!("objective `{name}` {m}")))?;
        Ok(objective)
    }
}

/// `Err` naming the inputs `objective` reads that `provided` lacks.
pub fn check_inputs(objective: &dyn crate::Objective, provided: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = objective
        .inputs()
        .iter()
        .copied()
        .filter(|i| !provided.contains(i))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "reads {}, but is handed only {}",
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", "),
        provided
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

impl serde::Serialize for InlineObjective {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.table.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for InlineObjective {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        resolve_objective(&table)
            .map(|table| Self { table })
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for InlineObjective {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InlineObjective".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "An objective configured inline: `{ use = \"name\", field = value, … }` (the fields are the objective's own).",
            "required": ["use"],
            "properties": { "use": { "type": "string", "description": "The registered objective." } },
            "additionalProperties": true,
            "x-lmlab-inline": "objective"
        })
    }
}

/// A component a scheduler takes from the recipe: the table name, its kind, the Rust type it
/// is taken as, whether it must be there, and (for objectives) the tensors the scheduler hands
/// it. The runner checks a recipe against its scheduler's roles before anything runs.
#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    pub kind: Kind,
    pub required: bool,
    /// What the role is for, in messages.
    pub about: String,
    type_id: std::any::TypeId,
    type_name: &'static str,
    /// For objectives: the tensors the scheduler hands it.
    pub inputs: Option<Vec<&'static str>>,
    /// For policies: whether the scheduler trains it (an inference-only policy, such as a
    /// checkpoint's `weights = "native"`, is refused there).
    pub trains: bool,
}

impl Role {
    /// A required role taken as `T` (e.g. `Box<dyn Sampler>`).
    pub fn of<T: Any>(name: impl Into<String>, kind: Kind, about: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            required: true,
            about: about.into(),
            type_id: std::any::TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            inputs: None,
            trains: kind == Kind::Policy,
        }
    }

    /// A task whose problems and outputs are those of `T` (e.g. `TextTask`).
    pub fn task<T: ?Sized + Any>(name: impl Into<String>, about: impl Into<String>) -> Self {
        Self::of::<Box<T>>(name, Kind::Task, about)
    }

    /// A policy the scheduler trains (`[policy] use = "llama"`, `"checkpoint"`, …).
    pub fn policy(name: impl Into<String>, about: impl Into<String>) -> Self {
        Self::of::<Box<dyn crate::policy::PolicyInit>>(name, Kind::Policy, about)
    }

    /// A policy the scheduler only samples from and scores with
    /// ([`PolicyInit::inference`](crate::policy::PolicyInit::inference)): inference-only
    /// weights (`weights = "native"`) are welcome.
    pub fn inference_policy(name: impl Into<String>, about: impl Into<String>) -> Self {
        let mut r = Self::policy(name, about);
        r.trains = false;
        r
    }

    /// A sampler.
    pub fn sampler(name: impl Into<String>, about: impl Into<String>) -> Self {
        Self::of::<Box<dyn crate::Sampler>>(name, Kind::Sampler, about)
    }

    /// A verifier (fixed or fitted).
    pub fn verifier(name: impl Into<String>, about: impl Into<String>) -> Self {
        Self::of::<Box<dyn crate::verifier::VerifierSpec>>(name, Kind::Verifier, about)
    }

    /// A reward model (fixed or fitted).
    pub fn reward_model(name: impl Into<String>, about: impl Into<String>) -> Self {
        Self::of::<Box<dyn crate::reward::RewardSpec>>(name, Kind::RewardModel, about)
    }

    /// An objective that the scheduler hands `inputs`.
    pub fn objective(
        name: impl Into<String>,
        inputs: &[&'static str],
        about: impl Into<String>,
    ) -> Self {
        let mut r = Self::of::<Box<dyn crate::Objective>>(name, Kind::Objective, about);
        r.inputs = Some(inputs.to_vec());
        r
    }

    /// The same role, optional.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Whether `built` is what this role takes.
    pub fn accepts(&self, built: &Built) -> bool {
        built.value_type_id() == self.type_id
    }

    /// The Rust type the role takes.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}
