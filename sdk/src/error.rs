//! User-facing errors: every bad input becomes one of these, printed as a message (never a
//! panic), with the file, table and field involved and the closest valid names.

use std::path::PathBuf;

/// The SDK's result type.
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// An error caused by what the user wrote (a recipe, a `--set`, a path, a plugin library).
/// The CLI prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No recipe of that name.
    #[error("unknown recipe `{name}` (looked for {looked_in}){}", did_you_mean(.suggestions))]
    UnknownRecipe {
        name: String,
        looked_in: String,
        suggestions: Vec<String>,
    },
    /// A component table names a plugin that is not registered.
    #[error(
        "{file}: [{table}]: unknown {kind} plugin `{name}`{}; registered {kind} plugins: {}",
        did_you_mean(.suggestions), list_or_none(.registered)
    )]
    UnknownPlugin {
        file: String,
        table: String,
        kind: String,
        name: String,
        suggestions: Vec<String>,
        registered: Vec<String>,
    },
    /// A field is unknown, missing or of the wrong type.
    #[error("{file}: [{table}]{}: {}{message}", plugin_part(.plugin), field_part(.field))]
    Field {
        file: String,
        table: String,
        plugin: Option<String>,
        field: Option<String>,
        message: String,
    },
    /// The file is not valid TOML.
    #[error("{file}: not valid TOML: {message}")]
    Parse { file: String, message: String },
    /// A `--set` argument that cannot be applied.
    #[error("bad --set `{arg}`: {reason}")]
    BadSet { arg: String, reason: String },
    /// A file or directory that cannot be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dynamic plugin library that was refused.
    #[error("plugin library {}: {reason}", .path.display())]
    Plugin { path: PathBuf, reason: String },
    /// A run directory that cannot be resumed.
    #[error("cannot resume {}: {reason}", .path.display())]
    Resume { path: PathBuf, reason: String },
    /// Anything else the user asked for that cannot be done, said plainly.
    #[error("{0}")]
    Usage(String),
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        many => format!(
            " (did you mean one of {}?)",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn plugin_part(plugin: &Option<String>) -> String {
    plugin
        .as_ref()
        .map(|p| format!(" (plugin `{p}`)"))
        .unwrap_or_default()
}

fn field_part(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!("field `{f}`: "))
        .unwrap_or_default()
}

impl Error {
    /// An I/O error on `path` while doing `action` ("read", "write", "create", ...).
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Up to three names from `candidates` closest to `name` (Jaro-Winkler ≥ 0.7, or a prefix).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| {
            let mut score = strsim::jaro_winkler(name, c);
            if !name.is_empty() && (c.starts_with(name) || name.starts_with(c)) {
                score = score.max(0.85);
            }
            (score, c)
        })
        .filter(|(s, _)| *s >= 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_prefers_near_names() {
        let names = ["supervised", "sync", "async"];
        assert_eq!(closest("supervisd", names)[0], "supervised");
        assert!(closest("zzzz", names).is_empty());
    }

    #[test]
    fn unknown_plugin_message_names_everything() {
        let e = Error::UnknownPlugin {
            file: "recipes/x.toml".into(),
            table: "scheduler".into(),
            kind: "scheduler".into(),
            name: "supervisd".into(),
            suggestions: vec!["supervised".into()],
            registered: vec!["supervised".into()],
        };
        let msg = e.to_string();
        assert!(msg.contains("recipes/x.toml: [scheduler]"), "{msg}");
        assert!(msg.contains("did you mean `supervised`"), "{msg}");
    }
}
