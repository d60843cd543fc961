//! From TOML text to serde views, one table at a time.
//!
//! The text is parsed to a spanned tree first; then each top-level table,
//! and each element of an array of tables, is deserialized on its own, so
//! a type error in one `[[rule]]` does not hide the errors of the next.
//! Inside a table, a field that does not deserialize is reported, taken
//! out, and the table tried again, so every bad field of it is reported
//! too. Trade-off: a table with a bad field is validated without that
//! field; a required one makes the whole table unusable, and nothing more
//! is said about it.

use super::error::Source;
use super::suggest;
use super::ConfigError;
use serde::Deserialize;
use std::ops::Range;
use toml::de::{DeString, DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// The top-level keys a file may have, in the order they are validated.
pub(crate) const TOP_LEVEL: &[&str] = &[
    "server",
    "store",
    "leases",
    "rule",
    "llm",
    "model",
    "prices",
    "quota",
    "class",
    "envoy_ratelimit",
    "domain",
];

/// One file's top-level tables, parsed but not yet deserialized.
pub(crate) struct Document<'a> {
    entries: Vec<(Spanned<DeString<'a>>, Spanned<DeValue<'a>>)>,
}

/// A table deserialized into its view, and the fields taken out of it
/// because they did not deserialize (already reported).
pub(crate) struct Parsed<T> {
    pub view: Spanned<T>,
    pub dropped: Vec<String>,
}

impl<T> Parsed<T> {
    /// Whether `field` was in the table but did not deserialize: checks
    /// that a missing field would fail are then skipped, as it was
    /// reported already.
    pub fn dropped(&self, field: &str) -> bool {
        self.dropped.iter().any(|d| d == field)
    }
}

impl<'a> Document<'a> {
    /// Parses the text; on syntax errors reports each (one per line) and
    /// returns `None`: a tree recovered from broken syntax would only add
    /// errors that are not there.
    pub fn parse(src: &Source<'a>, errors: &mut Vec<ConfigError>) -> Option<Document<'a>> {
        let (root, syntax) = DeTable::parse_recoverable(src.text);
        if !syntax.is_empty() {
            let mut located: Vec<ConfigError> = syntax.iter().map(|e| src.toml_error(e)).collect();
            located.sort_by_key(|e| e.line);
            located.dedup_by_key(|e| e.line);
            errors.extend(located);
            return None;
        }
        let mut doc = Document {
            entries: root.into_inner().into_iter().collect(),
        };
        doc.entries.retain(|(key, _)| {
            let known = TOP_LEVEL.contains(&key.get_ref().as_ref());
            if !known {
                let field = match key.get_ref().as_ref() {
                    "" => "\"\"",
                    k => k,
                };
                errors.push(src.error(key.span().start, field, unknown(key.get_ref(), TOP_LEVEL)));
            }
            known
        });
        Some(doc)
    }

    /// Takes the value of a top-level key.
    fn take(&mut self, name: &str) -> Option<Spanned<DeValue<'a>>> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.get_ref().as_ref() == name)?;
        Some(self.entries.swap_remove(i).1)
    }

    /// A single table such as `[server]`.
    pub fn table<T: Deserialize<'a>>(
        &mut self,
        src: &Source,
        name: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Parsed<T>> {
        let value = self.take(name)?;
        view(src, name, value, errors)
    }

    /// The elements of an array of tables such as `[[rule]]`, each still
    /// to be deserialized with [`view`] (so that the caller can count the
    /// errors of each element).
    pub fn array(
        &mut self,
        src: &Source,
        name: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<Spanned<DeValue<'a>>> {
        let Some(value) = self.take(name) else {
            return Vec::new();
        };
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(elements) => elements.into_iter().collect(),
            DeValue::Table(_) => {
                errors.push(src.error(
                    span.start,
                    name,
                    format!("write `[[{name}]]`, one for each {name} (an array of tables)"),
                ));
                Vec::new()
            }
            other => {
                errors.push(src.error(
                    span.start,
                    name,
                    format!(
                        "invalid type: {}, expected `[[{name}]]` tables",
                        other.type_str()
                    ),
                ));
                Vec::new()
            }
        }
    }
}

/// Deserializes one table; every field that does not deserialize is
/// reported (`name.field: message`) and taken out, until the rest does, or
/// until a required field is missing.
pub(crate) fn view<'a, T: Deserialize<'a>>(
    src: &Source,
    name: &str,
    mut value: Spanned<DeValue<'a>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Parsed<T>> {
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let err = match Spanned::<T>::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(view) => return Some(Parsed { view, dropped }),
            Err(e) => e,
        };
        let span = err.span().unwrap_or_else(|| value.span());
        let message = err.message().trim().replace('\n', " ");
        let path = key_path(&value, span.start);
        match missing_field(&message) {
            Some(missing) => {
                // serde points a missing field at the table that lacks it.
                let table = innermost_table(&value, span.start);
                let mut at = table
                    .as_ref()
                    .map_or_else(Vec::new, |t| key_path(&value, t.start));
                // A required top-level field dropped above is not missing:
                // it was wrong, and that was said.
                if table.is_none() && dropped.iter().any(|d| d == missing) {
                    return None;
                }
                at.push(missing.to_string());
                errors.push(src.error(span.start, field_name(name, &at), message));
            }
            None => errors.push(src.error(
                span.start,
                field_name(name, &path),
                suggest::unknown_field(&message),
            )),
        }
        match path.first() {
            Some(first) if remove(&mut value, span.start) => dropped.push(first.clone()),
            _ => return None,
        }
    }
}

/// `name` and the key path inside its table: `rule.limits[1].per`.
fn field_name(name: &str, path: &[String]) -> String {
    let mut out = name.to_string();
    for p in path {
        if p.starts_with('[') {
            out.push_str(p);
        } else {
            out.push('.');
            out.push_str(p);
        }
    }
    out
}

/// The keys (and `[i]` indexes) leading to the innermost value whose key
/// or value holds `offset`.
fn key_path(value: &Spanned<DeValue>, offset: usize) -> Vec<String> {
    let mut path = Vec::new();
    let mut here = value;
    loop {
        let next = match here.get_ref() {
            DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                (holds(&k.span(), offset) || holds(&v.span(), offset))
                    .then(|| (k.get_ref().to_string(), v))
            }),
            DeValue::Array(a) => a
                .iter()
                .enumerate()
                .find(|(_, v)| holds(&v.span(), offset))
                .map(|(i, v)| (format!("[{i}]"), v)),
            _ => None,
        };
        let Some((step, v)) = next else {
            return path;
        };
        path.push(step);
        here = v;
    }
}

/// The span of the innermost table whose value holds `offset` (where a
/// "missing field" error points), or `None` for the top.
fn innermost_table(value: &Spanned<DeValue>, offset: usize) -> Option<Range<usize>> {
    let mut found = None;
    let mut here = value;
    loop {
        let next = match here.get_ref() {
            DeValue::Table(t) => t.values().find(|v| holds(&v.span(), offset)),
            DeValue::Array(a) => a.iter().find(|v| holds(&v.span(), offset)),
            _ => None,
        };
        let Some(v) = next else {
            return found;
        };
        if matches!(v.get_ref(), DeValue::Table(_)) {
            found = Some(v.span());
        }
        here = v;
    }
}

/// Takes out the top-level entry of `value` whose key or value holds
/// `offset`; returns whether there was one.
fn remove(value: &mut Spanned<DeValue>, offset: usize) -> bool {
    let DeValue::Table(t) = value.get_mut() else {
        return false;
    };
    let key = t
        .iter()
        .find(|(k, v)| holds(&k.span(), offset) || holds(&v.span(), offset))
        .map(|(k, _)| k.clone());
    match key {
        Some(k) => t.remove(&k).is_some(),
        None => false,
    }
}

fn holds(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// The field named by serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
}

/// "unknown field `x`" with the nearest valid name, or the valid names.
fn unknown(word: &str, candidates: &[&str]) -> String {
    match suggest::nearest(word, candidates.iter().copied()) {
        Some(c) => format!("unknown field `{word}`, did you mean `{c}`?"),
        None => format!(
            "unknown field `{word}`, expected one of {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    fn errors(text: &str) -> Vec<String> {
        parse_str("t.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn assert_all(e: &[String], want: &[&str]) {
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "no `{w}` in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    /// Issue 12, defect 4: a type error in one table hid every error of
    /// the others (`toml::from_str` stops at the first).
    #[test]
    fn a_type_error_does_not_hide_the_errors_of_other_tables() {
        let e = errors(
            r#"[store]
kind = "memroy"

[[rule]]
domain = "d"
match = ["k"]
limit = { requests = 1, per = "minit" }

[[quota]]
name = "q"
tokens_per_minute = -5
"#,
        );
        assert_all(
            &e,
            &[
                "t.toml:2: store.kind: `memroy`: expected `memory` or `redis`; did you mean `memory`?",
                "t.toml:7: rule[0].limit.per: `minit`: expected second, minute, hour, day, week, month or year; did you mean `minute`?",
                "t.toml:11: quota.tokens_per_minute: invalid value: integer `-5`",
            ],
        );
    }

    #[test]
    fn one_bad_rule_does_not_hide_another_nor_a_second_bad_field() {
        let e = errors(
            r#"[server]
grpc_listen = 8081
admin_listen = true

[[rule]]
domain = 5
match = ["k"]
limit = { requests = 1, per = "second" }

[[rule]]
domain = "d"
match = ["k"]
shadw = true
limit = { requests = "ten", per = "second" }

[[rule]]
domain = "d"
match = ["j"]
limits = [{ requests = 1, per = "second" }, { requests = 2 }]

[[quota]]
name = "q"
tokens_per_minute = "many"
max_concurrent = 0
"#,
        );
        assert_all(
            &e,
            &[
                "t.toml:2: server.grpc_listen: invalid type: integer `8081`, expected a string",
                "t.toml:3: server.admin_listen: invalid type: boolean `true`",
                "t.toml:6: rule.domain: invalid type: integer `5`, expected a string",
                "t.toml:13: rule.shadw: unknown field `shadw`, did you mean `shadow`?",
                "t.toml:14: rule.limit.requests: invalid type: string \"ten\"",
                "t.toml:19: rule.limits[1].per: missing field `per`",
                "t.toml:23: quota.tokens_per_minute: invalid type: string \"many\"",
                "t.toml:21: quota.max_concurrent: must be at least 1",
            ],
        );
    }

    #[test]
    fn unknown_tables_and_fields_get_the_nearest_name() {
        let e = errors("[sever]\ngrpc_listen = \"127.0.0.1:1\"\n\n[store]\nknd = \"redis\"\n");
        assert_all(
            &e,
            &[
                "t.toml:1: sever: unknown field `sever`, did you mean `server`?",
                "t.toml:5: store.knd: unknown field `knd`, did you mean `kind`?",
            ],
        );
        let e = errors("[rule]\ndomain = \"d\"\n");
        assert_all(&e, &["t.toml:1: rule: write `[[rule]]`"]);
        let e = errors("[[quota]]\nname = \"q\"\nmax_concurrent = 1\nmatch = { tennant = \"a\" }\nalgorithm = \"token-bucket\"\non_error = \"fail_opne\"\ncount = \"totl\"\nmax_wait = \"atuo\"\n");
        assert_all(
            &e,
            &[
                "t.toml:4: quota.match: `tennant`: expected tenant, api_key, class, model or route; did you mean `tenant`?",
                "t.toml:5: quota.algorithm: `token-bucket`: expected fixed_window or token_bucket; did you mean `token_bucket`?",
                "t.toml:6: quota.on_error: `fail_opne`: expected fail_open, fail_closed or local; did you mean `fail_open`?",
                "t.toml:7: quota.count: `totl`: expected prompt, completion, total",
                "t.toml:8: quota.max_wait: `atuo`:",
            ],
        );
        assert!(e[3].ends_with("did you mean `total`?"), "{e:?}");
        assert!(e[4].ends_with("did you mean `auto`?"), "{e:?}");
    }

    #[test]
    fn a_required_field_that_is_wrong_is_not_also_missing() {
        let e = errors(
            "[[rule]]\ndomain = 5\nmatch = \"k\"\nlimit = { requests = 1, per = \"second\" }\n",
        );
        assert_all(
            &e,
            &[
                "t.toml:2: rule.domain: invalid type: integer `5`",
                "t.toml:3: rule.match: invalid type: string \"k\"",
            ],
        );
    }

    #[test]
    fn model_errors_name_their_file_and_line() {
        let e = errors(
            "[[model]]\nname = \"m\"\ncontext_window = 10\ndefault_max_output = 1\nfallback = [\"m-mini\"]\n\n[[model]]\nname = \"m\"\ncontext_window = 10\ndefault_max_output = 1\n[[model]]\nname = \"m-mni\"\ncontext_window = 10\ndefault_max_output = 1\n",
        );
        assert_all(
            &e,
            &[
                "t.toml:1: model.fallback: `m` falls back to `m-mini`, which is not another [[model]]; did you mean `m-mni`?",
                "t.toml:7: model.name: `m` is defined twice",
            ],
        );
    }

    #[test]
    fn syntax_errors_are_reported_once_per_line_and_nothing_else() {
        let e = errors("[[rule]]\ndomain = \"d\nfoo = = 3\n[server\n");
        assert!(e.len() >= 2, "{e:#?}");
        assert!(e.iter().all(|l| l.starts_with("t.toml:")), "{e:#?}");
        let mut lines: Vec<&str> = e.iter().map(|l| l.split(':').nth(1).unwrap()).collect();
        lines.dedup();
        assert_eq!(lines.len(), e.len(), "{e:#?}");
    }

    /// Found by the `config_toml` fuzz target: an error named no field.
    #[test]
    fn every_error_names_a_field() {
        for text in [
            "' = \u{8}\0\0\0[1\n[\nx\n",
            "\"\" = 1\n",
            "[[rule]]\n\"\" = 1\n",
        ] {
            let e = parse_str("t.toml", text).unwrap_err();
            assert!(e.0.iter().all(|e| !e.field.is_empty()), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_offset_at_the_end_of_the_file_is_on_its_last_line() {
        let src = crate::config::error::Source::new("t.toml", "a = 1\n");
        assert_eq!(src.line_of(0), 1);
        assert_eq!(src.line_of(6), 1, "after the last newline");
        assert_eq!(crate::config::error::Source::new("t", "").line_of(0), 1);
    }
}
