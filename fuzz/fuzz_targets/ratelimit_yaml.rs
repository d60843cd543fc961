//! envoyproxy/ratelimit's YAML config, as the server loads it
//! (`config::parse_files`, what `config::load` runs on a file or a
//! directory's files) and as `tollgate import` converts it
//! (`config::yaml_to_toml`).
//!
//! The input is UTF-8 text. Without a NUL it is one file, `fuzz.yaml`.
//! Must hold: the importer accepts it exactly when the loader does (but
//! for its own refusals of what TOML cannot say, each naming where); the
//! TOML it writes loads too, and answers as the YAML does: for each rule
//! of the YAML, a descriptor that its match path matches finds rules with
//! the same limits, names, `replaces`, modes, shadow, quota mode,
//! `share_threshold` and metadata in both configs (or no limit in both),
//! and the domain counts hits the same way.
//!
//! With NULs it is several files, `f0.yaml`, `f1.yaml`, ... (one domain
//! each, merged or refused as the peer does); a part that starts with
//! `#env` is lines of `NAME=value`, the peer's environment variables.
//! Must hold, in both forms: every error names a file it was given (or a
//! variable that was set), a line of that file, and a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tollgate::config::{parse_files, parse_str, yaml_to_toml, Config, ConfigErrors, PeerEnv};
use tollgate::rules::{EntryPattern, Limit, Rule, Zone};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\0') {
        several(text);
    } else {
        one(text);
    }
});

fn several(text: &str) {
    let mut files = Vec::new();
    let mut env = HashMap::new();
    for part in text.split('\0') {
        if let Some(vars) = part.strip_prefix("#env") {
            for line in vars.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    env.insert(k.to_string(), v.to_string());
                }
            }
        } else {
            files.push((format!("f{}.yaml", files.len()), part.to_string()));
        }
    }
    if let Err(errors) = parse_files(&files, &PeerEnv(env.clone())) {
        located(&errors, &files, &env);
    }
}

fn one(text: &str) {
    let files = vec![("fuzz.yaml".to_string(), text.to_string())];
    let loaded = parse_str("fuzz.yaml", text);
    let imported = yaml_to_toml("fuzz.yaml", text);
    let (yaml, toml) = match (loaded, imported) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(errors), Err(import_errors)) => {
            located(&errors, &files, &HashMap::new());
            located(&import_errors, &files, &HashMap::new());
            return;
        }
        // The importer's own refusals, of what the YAML allows and
        // tollgate's TOML cannot say: a name given to two limits, a domain
        // or name with whitespace at an end, a key holding `=`.
        (Ok(_), Err(e))
            if e.0
                .iter()
                .all(|e| matches!(e.field.as_str(), "rate_limit.name" | "domain" | "key")) =>
        {
            located(&e, &files, &HashMap::new());
            return;
        }
        (Ok(_), Err(e)) => panic!("loaded, but the import refused it: {e}"),
        (Err(e), Ok(_)) => panic!("imported, but the loader refused it: {e}"),
    };
    let converted = parse_str("fuzz.toml", &toml)
        .unwrap_or_else(|e| panic!("the imported TOML does not load: {e}\n{toml}"));
    same_answers(&yaml, &converted, &toml);
}

/// For each YAML rule: a descriptor its path matches finds the same rule
/// (by what it answers) in both configs.
fn same_answers(yaml: &Config, toml: &Config, text: &str) {
    for rule in &yaml.rules.rules {
        let entries: Vec<(String, String)> = rule.pattern.iter().map(matching).collect();
        let find = |c: &Config| {
            c.rules
                .tree
                .lookup(
                    &rule.domain,
                    entries.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .and_then(|i| c.rules.get(i))
                .filter(|r| !r.is_no_limit())
                .map(|r| Answer::of(r, c))
        };
        assert_eq!(
            find(yaml),
            find(toml),
            "{entries:?} in {} answers differently\n{text}",
            rule.domain
        );
        let (a, b) = (yaml.rules.mode(&rule.domain), toml.rules.mode(&rule.domain));
        assert_eq!(a.counting, b.counting, "{}", rule.domain);
        assert_eq!(a.retry_after, b.retry_after, "{}", rule.domain);
    }
}

/// A descriptor entry the pattern matches.
fn matching(p: &EntryPattern) -> (String, String) {
    match p {
        EntryPattern::Exact { key, value } => (key.clone(), value.clone()),
        EntryPattern::Prefix { key, prefix } => (key.clone(), format!("{prefix}~")),
        EntryPattern::Glob { key, parts, .. } => (key.clone(), parts.join("~")),
        EntryPattern::AnyValue { key } => (key.clone(), "\u{1}any".to_string()),
    }
}

/// What a rule answers with (not where it was written).
#[derive(Debug, PartialEq)]
struct Answer {
    pattern: Vec<EntryPattern>,
    name: Option<String>,
    limits: Vec<Limit>,
    unlimited: bool,
    shadow: bool,
    quota_mode: bool,
    detailed_metric: bool,
    replaces: Vec<String>,
    share: Vec<Option<String>>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Answer {
    /// `c`'s rule `r`; of its `replaces`, the names of rules in `c` (the
    /// importer writes one that names no rule as a comment: the peer
    /// replaces nothing by it).
    fn of(r: &Rule, c: &Config) -> Answer {
        Answer {
            pattern: r.pattern.clone(),
            name: r.name.clone(),
            // A zone changes no window of a period of fixed length (the
            // importer writes `time_zone = "epoch"` only for the others).
            limits: r
                .limits
                .iter()
                .map(|l| Limit {
                    zone: if l.period.is_fixed(Zone::Utc) {
                        Zone::Utc
                    } else {
                        l.zone
                    },
                    ..*l
                })
                .collect(),
            unlimited: r.unlimited,
            shadow: r.shadow,
            quota_mode: r.quota_mode,
            detailed_metric: r.detailed_metric,
            replaces: r
                .replaces
                .iter()
                .filter(|n| c.rules.rules.iter().any(|o| o.name.as_ref() == Some(*n)))
                .cloned()
                .collect(),
            share: r.share.clone(),
            // TOML has no null: the importer leaves nulls out (with a
            // comment), and keeps the rest.
            metadata: r
                .metadata
                .as_deref()
                .map(|m| without_nulls(serde_json::Value::Object(m.clone())))
                .and_then(|m| match m {
                    serde_json::Value::Object(o) if !o.is_empty() => Some(o),
                    _ => None,
                }),
        }
    }
}

/// `v` with every null taken out of its mappings and lists.
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(o) => J::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        J::Array(a) => J::Array(
            a.into_iter()
                .filter(|v| !v.is_null())
                .map(without_nulls)
                .collect(),
        ),
        other => other,
    }
}

/// Every error names a given file (or a variable that was set), a line of
/// that file, and a field.
fn located(errors: &ConfigErrors, files: &[(String, String)], env: &HashMap<String, String>) {
    assert!(!errors.0.is_empty(), "an Err with no error");
    for e in &errors.0 {
        assert!(!e.field.is_empty(), "{e}");
        if let Some(var) = e.file.strip_prefix('$') {
            assert!(env.contains_key(var), "{e}");
            continue;
        }
        let Some((_, text)) = files.iter().find(|(name, _)| *name == e.file) else {
            panic!("an error in no file given: {e}");
        };
        let lines = text.lines().count().max(1);
        assert!(
            e.line >= 1 && e.line <= lines,
            "line {} of {lines}: {e}",
            e.line
        );
    }
}
