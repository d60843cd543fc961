//! The peer's key check (`validKeys`), over the whole tree before
//! anything is decoded.

use super::node::{resolve, Resolved};
use super::scalar::src_error;
use super::{Kind, Node, VALID_KEYS};
use crate::config::error::Source;
use crate::config::ConfigError;

/// The peer's key check, over the whole file before anything is decoded:
/// every key a string from its list, every list a list of maps, every
/// value a string, integer, boolean or nothing. `metadata` is free-form.
pub(super) fn validate_keys(
    src: &Source,
    at: &str,
    entries: &[(Node, Node)],
    errors: &mut Vec<ConfigError>,
) {
    for (k, v) in entries {
        // A key with no text (null, or `""`) is named by its place.
        let field = |name: &str| match (name.is_empty(), at.is_empty()) {
            (true, true) => "-".to_string(),
            (true, false) => at.to_string(),
            (false, true) => name.to_string(),
            (false, false) => format!("{at}.{name}"),
        };
        let name = match &k.kind {
            Kind::Scalar(t, q) if resolve(t, *q) == Resolved::Str => t.clone(),
            Kind::Scalar(t, _) => {
                errors.push(src_error(
                    src,
                    k.line,
                    &field(t),
                    format!("config error, key is not of type string: {t}"),
                ));
                continue;
            }
            _ => {
                errors.push(src_error(
                    src,
                    k.line,
                    &field("-"),
                    "config error, key is not of type string".into(),
                ));
                continue;
            }
        };
        if !VALID_KEYS.contains(&name.as_str()) {
            let hint = crate::config::suggest::hint(&name, VALID_KEYS.iter().copied());
            errors.push(src_error(
                src,
                k.line,
                &field(&name),
                format!("config error, unknown key '{name}'{hint}"),
            ));
            continue;
        }
        if name == "metadata" {
            continue;
        }
        check_value(src, &field(&name), v, errors);
    }
}

/// One key's value: a list of maps (each checked), a map (checked), or a
/// scalar that is not a float.
fn check_value(src: &Source, here: &str, v: &Node, errors: &mut Vec<ConfigError>) {
    match &v.kind {
        Kind::Seq(items) => {
            for (i, e) in items.iter().enumerate() {
                match &e.kind {
                    Kind::Map(m) => validate_keys(src, &format!("{here}[{i}]"), m, errors),
                    Kind::Scalar(t, _) => errors.push(src_error(
                        src,
                        e.line,
                        &format!("{here}[{i}]"),
                        format!(
                            "config error, yaml file contains list of type other than map: {t}"
                        ),
                    )),
                    Kind::Seq(_) => errors.push(src_error(
                        src,
                        e.line,
                        &format!("{here}[{i}]"),
                        "config error, yaml file contains list of type other than map: a list"
                            .into(),
                    )),
                }
            }
        }
        Kind::Map(m) => validate_keys(src, here, m, errors),
        Kind::Scalar(t, q) => {
            if resolve(t, *q) == Resolved::Float {
                errors.push(src_error(
                    src,
                    v.line,
                    here,
                    format!("error checking config: `{t}` is not a string, integer or boolean"),
                ));
            }
        }
    }
}
