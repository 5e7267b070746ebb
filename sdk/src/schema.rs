//! JSON schemas: one per registered component, one for the recipe file, and the type lookups
//! that make `--set table.key=value` typed.

use serde_json::{Map, Value, json};

use crate::error::closest;
use crate::registry::{self, ComponentFactory};

/// The top-level recipe fields that are not component tables.
pub const RECIPE_FIELDS: &[(&str, &str, &str)] = &[
    (
        "description",
        "string",
        "What the recipe runs, in one line.",
    ),
    (
        "seed",
        "integer",
        "The run's seed (every random stream derives from it).",
    ),
    (
        "device",
        "string",
        "`cpu` (burn flex, the default), `ndarray`, `tch:cpu` or `tch:cuda:N`.",
    ),
    (
        "export",
        "object",
        "Write the run's trained models (`models/*`) under `export/` when it ends: `formats = [\"hf\", \"gguf\"]`, `gguf_type = \"f32\"` or `\"q8_0\"`.",
    ),
    (
        "smoke",
        "object",
        "Overrides applied by `--smoke`: dotted keys (`\"scheduler.steps\" = 20`) to values.",
    ),
];

/// The schema of one component's table: its config's schema plus `use` (the plugin name) and
/// an optional `kind` (needed when the table's name is not a kind).
pub fn component_schema(f: &ComponentFactory) -> Value {
    let mut schema = serde_json::to_value((f.schema)()).expect("schemas serialise");
    let obj = schema.as_object_mut().expect("config schemas are objects");
    obj.remove("$schema");
    obj.insert(
        "title".into(),
        Value::String(format!("{} `{}`", f.kind, f.name)),
    );
    obj.insert("description".into(), Value::String(f.description.into()));
    let props = obj
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("properties is an object");
    props.insert(
        "use".into(),
        json!({ "const": f.name, "description": f.description }),
    );
    props.insert(
        "kind".into(),
        json!({ "const": f.kind.as_str(), "description": "The component kind (only needed when the table name is not a kind)." }),
    );
    let required = obj
        .entry("required")
        .or_insert_with(|| Value::Array(vec![]))
        .as_array_mut()
        .expect("required is an array");
    required.push(Value::String("use".into()));
    obj.insert("additionalProperties".into(), Value::Bool(false));
    schema
}

/// The schema of a whole recipe file, with every registered component as a choice for each
/// component table.
pub fn recipe_schema() -> Value {
    let mut defs = Map::new();
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    let mut any_role = Vec::new();
    for f in registry::factories() {
        let mut schema = component_schema(f);
        let prefix = format!("{}.{}.", f.kind, f.name);
        // Hoist the component's own definitions, renamed so two components never clash.
        if let Some(Value::Object(own)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
            for (k, v) in own {
                let mut v = v;
                rename_refs(&mut v, &prefix);
                defs.insert(format!("{prefix}{k}"), v);
            }
        }
        rename_refs(&mut schema, &prefix);
        let key = format!("{}.{}", f.kind, f.name);
        defs.insert(key.clone(), schema);
        let reference = json!({ "$ref": format!("#/$defs/{key}") });
        by_kind
            .entry(f.kind.as_str())
            .or_default()
            .push(reference.clone());
        // A table whose name is not a kind must say `kind = "..."`.
        any_role.push(json!({ "allOf": [reference, { "required": ["kind"] }] }));
    }
    let mut props = Map::new();
    for (name, ty, doc) in RECIPE_FIELDS {
        props.insert((*name).into(), json!({ "type": ty, "description": doc }));
    }
    for (kind, choices) in by_kind {
        defs.insert(format!("kind.{kind}"), json!({ "oneOf": choices }));
        props.insert(
            kind.into(),
            json!({ "$ref": format!("#/$defs/kind.{kind}") }),
        );
    }
    defs.insert("component".into(), json!({ "oneOf": any_role }));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lmlab.invalid/schemas/recipe.schema.json",
        "title": "lmlab recipe",
        "description": "A recipe: top-level settings, and one table per component (`use` names the registered plugin; a table not named after a kind says `kind`).",
        "type": "object",
        "properties": Value::Object(props),
        "additionalProperties": { "$ref": "#/$defs/component" },
        "$defs": Value::Object(defs),
    })
}

fn rename_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/$defs/{prefix}{name}");
            }
            for (_, x) in o.iter_mut() {
                rename_refs(x, prefix);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_refs(x, prefix)),
        _ => {}
    }
}

/// The JSON type a field expects, as far as a `--set` value needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// Arrays, tables, or a choice of types: the value is read as a TOML value.
    Toml,
}

impl FieldType {
    fn describe(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Number => "a number",
            FieldType::Boolean => "`true` or `false`",
            FieldType::Toml => "a TOML value",
        }
    }
}

/// The type of the field at `path` (dotted, inside a component table) in `schema`.
/// An unknown field is an error listing the closest names.
pub fn field_type(schema: &Value, path: &[&str]) -> Result<FieldType, String> {
    let root = schema;
    let mut node = resolve(root, schema).clone();
    for (i, key) in path.iter().enumerate() {
        let props = properties(root, &node);
        match props.as_ref().and_then(|p| p.get(*key)) {
            Some(child) => node = resolve(root, child).clone(),
            None => {
                let names: Vec<String> = props
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                let where_ = if i == 0 {
                    String::new()
                } else {
                    format!(" in `{}`", path[..i].join("."))
                };
                let hint = closest(key, names.iter().map(String::as_str));
                return Err(format!(
                    "unknown field `{key}`{where_}{}; fields: {}",
                    match hint.first() {
                        Some(h) => format!(" (did you mean `{h}`?)"),
                        None => String::new(),
                    },
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ));
            }
        }
    }
    Ok(type_of(root, &node))
}

/// The schema node at `path`, if every step is a known field: as written (where a default
/// sits beside a `$ref`) and resolved.
fn node_at(schema: &Value, path: &[&str]) -> Option<(Value, Value)> {
    let mut raw = schema.clone();
    let mut node = resolve(schema, schema).clone();
    for key in path {
        let props = properties(schema, &node)?;
        raw = props.get(*key)?.clone();
        node = resolve(schema, &raw).clone();
    }
    Some((raw, node))
}

/// [`field_type`] for a component table whose configuration `config` may hold components
/// inline (`objective = { use = "dpo", beta = 0.1 }`): a path into an inline component is typed
/// by that component's own schema (the `use` written in `config`, else the default's).
pub fn field_type_in(
    schema: &Value,
    path: &[&str],
    config: &toml::Table,
) -> Result<FieldType, String> {
    for i in 1..path.len() {
        let Some((raw, node)) = node_at(schema, &path[..i]) else {
            break;
        };
        let Some(kind) = node.get("x-lmlab-inline").and_then(Value::as_str) else {
            continue;
        };
        if path[i..] == ["use"] {
            return Ok(FieldType::String);
        }
        let here = path[..i]
            .iter()
            .try_fold(config, |t, k| t.get(*k).and_then(toml::Value::as_table));
        let name = here
            .and_then(|t| t.get("use"))
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                raw.get("default")
                    .and_then(|d| d.get("use"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| format!("`{}` names no {kind} (`use`)", path[..i].join(".")))?;
        let kind = registry::Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind}"))?;
        let factory = registry::find(kind, &name).ok_or_else(|| {
            format!(
                "`{}`: {kind} `{name}` is not registered",
                path[..i].join(".")
            )
        })?;
        let empty = toml::Table::new();
        return field_type_in(
            &component_schema(factory),
            &path[i..],
            here.unwrap_or(&empty),
        )
        .map_err(|e| format!("in `{}` ({kind} `{name}`): {e}", path[..i].join(".")));
    }
    field_type(schema, path)
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..16 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                match root.get("$defs").and_then(|d| d.get(name)) {
                    Some(n) => node = n,
                    None => return node,
                }
            }
            None => return node,
        }
    }
    node
}

/// Properties of an object schema, looking through `$ref`, `allOf`, `anyOf`, `oneOf`.
fn properties(root: &Value, node: &Value) -> Option<Map<String, Value>> {
    let node = resolve(root, node);
    let mut out = Map::new();
    if let Some(Value::Object(p)) = node.get("properties") {
        out.extend(p.clone());
    }
    for combo in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = node.get(combo) {
            for item in items {
                if let Some(p) = properties(root, item) {
                    out.extend(p);
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn type_of(root: &Value, node: &Value) -> FieldType {
    let node = resolve(root, node);
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => {
            // `Option<T>` appears as anyOf [T, null]: use T.
            for combo in ["anyOf", "oneOf"] {
                if let Some(Value::Array(items)) = node.get(combo) {
                    let non_null: Vec<&Value> = items
                        .iter()
                        .filter(|i| i.get("type").and_then(Value::as_str) != Some("null"))
                        .collect();
                    if non_null.len() == 1 {
                        return type_of(root, non_null[0]);
                    }
                    if !non_null.is_empty()
                        && non_null.iter().all(|i| {
                            let r = resolve(root, i);
                            r.get("type").and_then(Value::as_str) == Some("string")
                                || r.get("const").is_some_and(Value::is_string)
                                || r.get("enum").is_some()
                        })
                    {
                        return FieldType::String;
                    }
                }
            }
            if node.get("enum").is_some() || node.get("const").is_some_and(Value::is_string) {
                return FieldType::String;
            }
            return FieldType::Toml;
        }
    };
    let types: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    match types.as_slice() {
        ["string"] => FieldType::String,
        ["integer"] => FieldType::Integer,
        ["number"] => FieldType::Number,
        ["boolean"] => FieldType::Boolean,
        _ => FieldType::Toml,
    }
}

/// Parses a `--set` value as `ty`.
pub fn parse_typed(text: &str, ty: FieldType) -> Result<toml::Value, String> {
    let bad = || format!("`{text}` is not {}", ty.describe());
    match ty {
        FieldType::String => Ok(toml::Value::String(text.to_string())),
        FieldType::Integer => text
            .trim()
            .replace('_', "")
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| bad()),
        FieldType::Number => {
            let t = text.trim().replace('_', "");
            // Reject what Rust parses but TOML and JSON do not have.
            if t.is_empty()
                || t.to_ascii_lowercase().contains("inf")
                || t.to_ascii_lowercase().contains("nan")
            {
                return Err(bad());
            }
            t.parse::<f64>().map(toml::Value::Float).map_err(|_| bad())
        }
        FieldType::Boolean => match text.trim() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(bad()),
        },
        FieldType::Toml => parse_toml_value(text).ok_or_else(bad),
    }
}

/// Reads `text` as a TOML value (`[1, 2]`, `{ a = 1 }`, `"s"`, `3`).
pub fn parse_toml_value(text: &str) -> Option<toml::Value> {
    let doc: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    doc.get("v").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "steps": { "type": "integer" },
                "lr": { "type": ["number", "null"] },
                "name": { "type": "string" },
                "optim": { "$ref": "#/$defs/Optim" },
                "flags": { "type": "array", "items": { "type": "string" } }
            },
            "$defs": { "Optim": { "type": "object", "properties": { "beta": { "type": "number" } } } }
        })
    }

    #[test]
    fn field_types_follow_refs_and_nullables() {
        let s = schema();
        assert_eq!(field_type(&s, &["steps"]), Ok(FieldType::Integer));
        assert_eq!(field_type(&s, &["lr"]), Ok(FieldType::Number));
        assert_eq!(field_type(&s, &["optim", "beta"]), Ok(FieldType::Number));
        assert_eq!(field_type(&s, &["flags"]), Ok(FieldType::Toml));
        let e = field_type(&s, &["stepz"]).unwrap_err();
        assert!(e.contains("did you mean `steps`"), "{e}");
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            parse_typed("12", FieldType::Integer),
            Ok(toml::Value::Integer(12))
        );
        assert!(parse_typed("1.5", FieldType::Integer).is_err());
        assert_eq!(
            parse_typed("123", FieldType::String),
            Ok(toml::Value::String("123".into()))
        );
        assert!(parse_typed("inf", FieldType::Number).is_err());
        assert_eq!(
            parse_typed("[1, 2]", FieldType::Toml),
            Ok(toml::Value::Array(vec![1.into(), 2.into()]))
        );
    }
}
