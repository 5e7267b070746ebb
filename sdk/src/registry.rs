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
