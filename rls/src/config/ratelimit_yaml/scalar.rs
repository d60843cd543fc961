//! Reading one field's value as yaml.v2 decodes it into the peer's
//! structs (a string, a boolean, a list, free-form JSON), with the peer's
//! errors.

use super::node::{resolve, Resolved};
use super::{Kind, Node};
use crate::config::error::Source;
use crate::config::ConfigError;

pub(super) fn src_error(src: &Source, line: usize, field: &str, message: String) -> ConfigError {
    ConfigError {
        file: src.name.to_string(),
        line: line.max(1),
        field: field.to_string(),
        message,
    }
}

pub(super) fn scalar_key(k: &Node) -> Option<&str> {
    match &k.kind {
        Kind::Scalar(t, _) => Some(t.as_str()),
        _ => None,
    }
}

/// A string field: any scalar, as its text (yaml.v2 decodes an integer or
/// boolean into a string field as written); nothing is empty.
pub(super) fn string(
    src: &Source,
    field: &str,
    v: &Node,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    match &v.kind {
        Kind::Scalar(t, q) => Some(if resolve(t, *q) == Resolved::Null {
            String::new()
        } else {
            t.clone()
        }),
        _ => {
            errors.push(src_error(
                src,
                v.line,
                field,
                "error loading config file: expected a string".into(),
            ));
            None
        }
    }
}

pub(super) fn boolean(src: &Source, field: &str, v: &Node, errors: &mut Vec<ConfigError>) -> bool {
    match &v.kind {
        Kind::Scalar(t, q) => match resolve(t, *q) {
            Resolved::Bool(b) => b,
            Resolved::Null => false,
            _ => {
                errors.push(src_error(
                    src,
                    v.line,
                    field,
                    format!("error loading config file: cannot unmarshal `{t}` into a boolean"),
                ));
                false
            }
        },
        _ => {
            errors.push(src_error(
                src,
                v.line,
                field,
                "error loading config file: expected a boolean".into(),
            ));
            false
        }
    }
}

pub(super) fn seq<'n>(
    src: &Source,
    field: &str,
    v: &'n Node,
    errors: &mut Vec<ConfigError>,
) -> &'n [Node] {
    match &v.kind {
        Kind::Seq(items) => items,
        Kind::Scalar(t, q) if resolve(t, *q) == Resolved::Null => &[],
        _ => {
            errors.push(src_error(
                src,
                v.line,
                field,
                "error loading config file: expected a list".into(),
            ));
            &[]
        }
    }
}

/// A YAML node as JSON (for `metadata`).
pub(super) fn json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.kind {
        Kind::Scalar(t, q) => match resolve(t, *q) {
            Resolved::Null => J::Null,
            Resolved::Bool(b) => J::Bool(b),
            Resolved::Int(i) => i64::try_from(i)
                .map(J::from)
                .unwrap_or_else(|_| J::String(t.clone())),
            Resolved::Float => t
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(J::Null, J::Number),
            Resolved::Str => J::String(t.clone()),
        },
        Kind::Seq(items) => J::Array(items.iter().map(json).collect()),
        Kind::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (scalar_key(k).unwrap_or_default().to_string(), json(v)))
                .collect(),
        ),
    }
}
