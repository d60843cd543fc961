//! `tollgate import`: envoyproxy/ratelimit YAML → tollgate TOML with the
//! same answers, for teams that move fully. Each YAML domain becomes a
//! `[[domain]]` that keeps the peer's counting (every hit counted, each
//! descriptor on its own, no `retry-after`), and each node a `[[rule]]`
//! with its `match` path written flat; names, `replaces`, shadow and quota
//! mode, metadata, `share_threshold` and the comments above each node
//! (and at the end of its line) are kept.

use super::error::Source;
use super::ratelimit_yaml;
use super::validate_domains::repeated_names;
use super::{ConfigError, ConfigErrors};
use crate::rules::{Rule, Zone};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Converts one YAML file (`name` for messages and the header); the TOML
/// text, or every problem the YAML has.
pub fn yaml_to_toml(name: &str, text: &str) -> Result<String, ConfigErrors> {
    let src = Source::new(name, text);
    let mut errors = Vec::new();
    let domain = ratelimit_yaml::domain(&src, &mut errors);
    let domain = match domain {
        Some(d) if errors.is_empty() => d,
        _ => return Err(ConfigErrors(errors)),
    };
    let refused = refusals(&domain, name);
    if !refused.is_empty() {
        return Err(ConfigErrors(refused));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from {} by `tollgate import`.",
        comment_text(name)
    );
    for c in comments_above(&lines, domain.line) {
        let _ = writeln!(out, "{}", comment_text(c));
    }
    let _ = writeln!(
        out,
        "\n# envoyproxy/ratelimit's answers for this domain: every hit counted, each\n\
         # descriptor on its own, no retry-after. `counting = \"all_or_nothing\"` and\n\
         # `retry_after = true` are tollgate's (docs/migrating.md).\n\
         [[domain]]\nname = {}\ncounting = \"every_hit\"\nretry_after = false",
        quoted(&domain.domain)
    );
    let line_of = |r: &Rule| {
        r.source
            .rsplit_once(':')
            .and_then(|(_, l)| l.parse::<usize>().ok())
            .unwrap_or(0)
    };
    // The names a `replaces` can refer to: the peer ignores one that names
    // no rule (it replaces nothing), tollgate's TOML refuses it as a typo.
    let names: BTreeSet<&str> = domain
        .rules
        .iter()
        .filter_map(|r| r.name.as_deref())
        .collect();
    let mut starts: Vec<usize> = domain.rules.iter().map(line_of).collect();
    starts.sort_unstable();
    for rule in &domain.rules {
        // A node without a limit that has nodes under it is implied by
        // their paths; one without, allow-lists its values.
        let inner = rule.is_no_limit()
            && domain.rules.iter().any(|o| {
                o.pattern.len() > rule.pattern.len() && o.pattern.starts_with(&rule.pattern)
            });
        if inner {
            continue;
        }
        out.push('\n');
        let line = line_of(rule);
        for c in comments_above(&lines, line) {
            let _ = writeln!(out, "{}", comment_text(c));
        }
        // The node's own lines: up to the next node.
        let end = starts
            .iter()
            .copied()
            .find(|&l| l > line)
            .unwrap_or(lines.len() + 1);
        for l in line.max(1)..end {
            if let Some(c) = lines.get(l - 1).and_then(|t| trailing_comment(t)) {
                let _ = writeln!(out, "{}", comment_text(c));
            }
        }
        write_rule(&mut out, rule, &domain.domain, &names);
    }
    Ok(out)
}

fn write_rule(out: &mut String, rule: &Rule, domain: &str, names: &BTreeSet<&str>) {
    let _ = writeln!(out, "[[rule]]\ndomain = {}", quoted(domain));
    let path: Vec<String> = rule
        .pattern
        .iter()
        .map(|p| quoted(&p.to_string()))
        .collect();
    let _ = writeln!(out, "match = [{}]", path.join(", "));
    if let Some(n) = &rule.name {
        let _ = writeln!(out, "name = {}", quoted(n));
    }
    match (rule.unlimited, rule.limits.first()) {
        (true, _) => {
            let _ = writeln!(out, "unlimited = true");
        }
        (false, Some(l)) => {
            let _ = writeln!(
                out,
                "limit = {{ requests = {}, per = \"{}\" }}",
                l.amount,
                l.period.as_str()
            );
            // The peer's weeks, months and years are 7, 30 and 365 days
            // from the epoch; tollgate's follow the calendar by default.
            if l.zone == Zone::Epoch && !l.period.is_fixed(Zone::Utc) {
                let _ = writeln!(out, "time_zone = \"epoch\"");
            }
        }
        (false, None) => {
            let _ = writeln!(out, "no_limit = true");
        }
    }
    let (known, unknown): (Vec<&String>, Vec<&String>) = rule
        .replaces
        .iter()
        .partition(|n| names.contains(n.as_str()));
    for n in unknown {
        // Written as a comment: the TOML would be refused with it, and the
        // peer replaces nothing by it. Put it back if another file of a
        // merged domain names a rule so.
        let _ = writeln!(
            out,
            "# replaces {}: no rule of this file is named so (envoyproxy/ratelimit ignores it)",
            one_line(n)
        );
    }
    if !known.is_empty() {
        let r: Vec<String> = known.iter().map(|n| quoted(n)).collect();
        let _ = writeln!(out, "replaces = [{}]", r.join(", "));
    }
    if rule.shadow {
        let _ = writeln!(out, "shadow = true");
    }
    if rule.quota_mode {
        let _ = writeln!(out, "quota_mode = true");
    }
    if rule.detailed_metric {
        let _ = writeln!(out, "detailed_metric = true");
    }
    let shared: Vec<String> = rule
        .pattern
        .iter()
        .zip(&rule.share)
        .filter(|(_, s)| s.is_some())
        .map(|(p, _)| quoted(p.key()))
        .collect();
    if !shared.is_empty() {
        let _ = writeln!(out, "share_threshold = [{}]", shared.join(", "));
    }
    if let Some(m) = &rule.metadata {
        metadata(out, serde_json::Value::Object((**m).clone()));
    }
}

/// A rule's `metadata` line. TOML has no null, so a null the YAML gives
/// (`key:` with no value, `~`, `null`) is left out, and a comment names
/// each one left out (what the peer sends Envoy for a null is not checked:
/// docs/migrating.md).
fn metadata(out: &mut String, m: serde_json::Value) {
    let mut dropped = Vec::new();
    let kept = without_nulls(m, "", &mut dropped);
    for path in &dropped {
        let _ = writeln!(
            out,
            "# metadata {path}: null in the YAML, which TOML cannot write; left out"
        );
    }
    let Some(kept) = kept.filter(|k| k.as_object().is_some_and(|o| !o.is_empty())) else {
        return;
    };
    match toml::Value::try_from(kept) {
        Ok(t) => {
            let _ = writeln!(out, "metadata = {}", inline(&t));
        }
        Err(e) => {
            let why = comment_text(&e.to_string()).into_owned();
            let _ = writeln!(out, "# metadata left out: TOML cannot write it ({why})");
        }
    }
}

/// `v` with every null taken out of its mappings and lists (`None` if `v`
/// is null); `dropped` gets the TOML path of each, as `a.b[2]`.
fn without_nulls(
    v: serde_json::Value,
    path: &str,
    dropped: &mut Vec<String>,
) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    match v {
        J::Null => {
            dropped.push(path.to_string());
            None
        }
        J::Object(o) => Some(J::Object(
            o.into_iter()
                .filter_map(|(k, v)| {
                    let p = if path.is_empty() {
                        key(&k)
                    } else {
                        format!("{path}.{}", key(&k))
                    };
                    without_nulls(v, &p, dropped).map(|v| (k, v))
                })
                .collect(),
        )),
        J::Array(a) => Some(J::Array(
            a.into_iter()
                .enumerate()
                .filter_map(|(i, v)| without_nulls(v, &format!("{path}[{i}]"), dropped))
                .collect(),
        )),
        other => Some(other),
    }
}

/// What the YAML loader takes and tollgate's TOML cannot say, so the
/// importer refuses it (naming where) instead of writing TOML that does
/// not load or that answers otherwise:
/// * a name given to two limits: `replaces` and the metrics name one rule
///   by it, and the importer cannot choose which one keeps it;
/// * a domain or a name with whitespace at an end: the TOML loader trims
///   both, the peer compares them byte for byte;
/// * a descriptor key holding `=`: a TOML `match` entry is `key=value`.
fn refusals(domain: &ratelimit_yaml::YamlDomain, file: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Some(message) = trimmed_by_toml(&domain.domain) {
        errors.push(ConfigError {
            file: file.to_string(),
            line: domain.line,
            field: "domain".into(),
            message,
        });
    }
    for r in &domain.rules {
        if let Some(message) = r.name.as_deref().and_then(trimmed_by_toml) {
            errors.push(ConfigError::at(&r.source, "rate_limit.name", message));
        }
        // Each node is a rule: its own key is the last of its path.
        if let Some(k) = r
            .pattern
            .last()
            .map(|p| p.key())
            .filter(|k| k.contains('='))
        {
            errors.push(ConfigError::at(
                &r.source,
                "key",
                format!(
                    "{:?}: a key holding `=` cannot be written in a TOML `match` entry \
                     (`key=value`); rename it here and in Envoy's descriptors, then import",
                    k
                ),
            ));
        }
    }
    for (n, r, first) in repeated_names(&domain.rules) {
        errors.push(ConfigError::at(
            &r.source,
            "rate_limit.name",
            format!(
                "`{n}` also names the limit at {}: tollgate's TOML needs each name once \
                 (`replaces` and the metrics refer to it); rename one, then import",
                first.source
            ),
        ));
    }
    errors
}

/// The refusal of a domain or name with whitespace at an end, which the
/// TOML loader trims and the peer keeps; `None` for one without.
fn trimmed_by_toml(s: &str) -> Option<String> {
    (s.trim() != s).then(|| {
        format!(
            "{s:?}: whitespace at an end, which tollgate's TOML trims (the peer keeps it); \
             remove it, then import"
        )
    })
}

/// A TOML value on one line (inline tables and arrays).
fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let fields: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        toml::Value::Array(a) => {
            format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

/// `k` as a TOML key: bare when it can be, else a one-line string (a key
/// cannot be the multi-line string `quoted` may write for a value; found
/// by the `ratelimit_yaml` fuzz target).
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        one_line(k)
    }
}

/// `s` as a TOML value, in the form the `toml` crate picks (a literal or
/// multi-line string where that reads better).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `s` as a TOML basic string on one line, whatever it holds: for keys,
/// and for text written into a comment (where a newline would end the
/// comment and start a line of TOML).
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` as it may stand in a TOML comment, which refuses control
/// characters other than tab (the YAML loader lets them through): each is
/// written as `\u{..}`, so the comment still says what was there.
fn comment_text(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\t';
    if !text.chars().any(escaped) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if escaped(c) {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The comment lines right above line `line` (1-based), top first.
fn comments_above<'a>(lines: &[&'a str], line: usize) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut i = line.saturating_sub(1);
    while i > 0 {
        let l = lines.get(i - 1).map_or("", |l| l.trim());
        if l.starts_with('#') {
            out.push(l);
            i -= 1;
        } else {
            break;
        }
    }
    out.reverse();
    out
}

/// The `# comment` at the end of a YAML line, outside quotes.
fn trailing_comment(line: &str) -> Option<&str> {
    let (mut single, mut double) = (false, false);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && i > 0 && bytes[i - 1].is_ascii_whitespace() => {
                return (!line[..i].trim().is_empty()).then(|| line[i..].trim());
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn the_toml_keeps_names_comments_and_answers() {
        let yaml = "# Edge limits.\ndomain: edge\ndescriptors:\n  # Per tenant.\n  - key: tenant\n    rate_limit:\n      name: per-tenant\n      unit: minute\n      requests_per_unit: 10\n  - key: tenant\n    value: vip # no limit for vip\n  - key: path\n    value: /api*v1\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 0}\n";
        let toml = yaml_to_toml("edge.yaml", yaml).unwrap();
        assert!(toml.contains("# Edge limits."), "{toml}");
        assert!(toml.contains("# Per tenant.\n[[rule]]"), "{toml}");
        assert!(toml.contains("# no limit for vip\n[[rule]]"), "{toml}");
        assert!(toml.contains("name = \"per-tenant\""), "{toml}");
        assert!(
            toml.contains("match = [\"tenant=vip\"]\nno_limit = true"),
            "{toml}"
        );
        assert!(toml.contains("share_threshold = [\"path\"]"), "{toml}");
        assert!(
            toml.contains("limit = { requests = 0, per = \"hour\" }"),
            "{toml}"
        );
        let c = parse_str("edge.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(c.rules.rules.len(), 3);
        assert_eq!(
            c.rules.mode("edge").counting,
            crate::rules::Counting::EveryHit
        );
    }

    /// The peer accepts a `replaces` that names no rule (it replaces
    /// nothing); tollgate's TOML refuses it as a typo, so the importer
    /// writes it as a comment and the TOML loads with the same answers
    /// (found by the `ratelimit_yaml` fuzz target).
    #[test]
    fn a_replaces_that_names_no_rule_becomes_a_comment() {
        let yaml = "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit:\n      name: first\n      unit: minute\n      requests_per_unit: 10\n  - key: user\n    rate_limit:\n      unit: minute\n      requests_per_unit: 5\n      replaces:\n        - name: first\n        - name: se/ond\n";
        let toml = yaml_to_toml("edge.yaml", yaml).unwrap();
        assert!(toml.contains("replaces = [\"first\"]"), "{toml}");
        assert!(
            toml.contains("# replaces \"se/ond\": no rule of this file is named so"),
            "{toml}"
        );
        let c = parse_str("edge.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let user = c.rules.rules.iter().find(|r| r.name.is_none()).unwrap();
        assert_eq!(user.replaces, vec!["first".to_string()]);
    }

    /// Two YAML limits may share a name; the TOML would be refused for it,
    /// so the import is refused, naming both places (found by the
    /// `ratelimit_yaml` fuzz target: the importer wrote TOML that did not
    /// load).
    #[test]
    fn a_name_given_twice_is_refused_with_both_places() {
        let yaml = "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit:\n      name: per-tenant\n      unit: minute\n      requests_per_unit: 10\n  - key: user\n    rate_limit:\n      name: per-tenant\n      unit: minute\n      requests_per_unit: 5\n";
        assert!(
            crate::config::parse_files(
                &[("edge.yaml".into(), yaml.into())],
                &crate::config::PeerEnv::default()
            )
            .is_ok(),
            "the YAML loader accepts it"
        );
        let errors = yaml_to_toml("edge.yaml", yaml).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].file.as_str(), errors[0].line), ("edge.yaml", 8));
        assert_eq!(errors[0].field, "rate_limit.name");
        assert!(
            errors[0]
                .message
                .contains("also names the limit at edge.yaml:3"),
            "{}",
            errors[0].message
        );
    }

    /// The three refusals below were found by the `ratelimit_yaml` fuzz
    /// target: each imported as TOML that loads but answers otherwise.
    fn refused(yaml: &str) -> Vec<ConfigError> {
        assert!(
            crate::config::parse_str("edge.yaml", yaml).is_ok(),
            "the YAML loader accepts it"
        );
        yaml_to_toml("edge.yaml", yaml).unwrap_err().0
    }

    /// A folded `domain: >` ends in a newline; the peer keeps it, the TOML
    /// loader trims it, so the rules moved to another domain.
    #[test]
    fn a_domain_with_whitespace_at_an_end_is_refused() {
        let e = refused("domain: >\r  edge\ndescriptors:\n  - key: a\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].field.as_str()), (1, "domain"));
        assert!(
            e[0].message.contains(r#""edge\n": whitespace at an end"#),
            "{}",
            e[0].message
        );
    }

    /// The TOML loader trims a name too, and the answer named another rule.
    #[test]
    fn a_name_with_whitespace_at_an_end_is_refused() {
        let e = refused("domain: edge\ndescriptors:\n  - key: a\n    rate_limit:\n      name: \" n\"\n      unit: second\n      requests_per_unit: 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].field.as_str()), (3, "rate_limit.name"));
    }

    /// `key: pat=` was written as `match = ["pat==/v1"]`, which TOML reads
    /// as key `pat` and value `=/v1`.
    #[test]
    fn a_key_holding_an_equals_sign_is_refused() {
        let e = refused("domain: edge\ndescriptors:\n  - key: path\n    descriptors:\n      - key: pat=\n        value: /v1\n        rate_limit: {unit: second, requests_per_unit: 1}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].field.as_str()), (5, "key"));
        assert!(
            e[0].message.contains(r#""pat=": a key holding `=`"#),
            "{}",
            e[0].message
        );
    }

    /// A metadata key holding both kinds of quote was written as a
    /// multi-line string, which TOML refuses as a key (found by the
    /// `ratelimit_yaml` fuzz target); and a `replaces` name holding a
    /// newline would have ended its comment and started a line of TOML.
    #[test]
    fn keys_and_comments_stay_on_one_line() {
        let yaml = "domain: edge\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: \"x\\nshadow = true\"\n    metadata:\n      un'''\"\"\\it: year\n";
        let toml = yaml_to_toml("edge.yaml", yaml).unwrap();
        let c =
            crate::config::parse_str("edge.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let rule = &c.rules.rules[0];
        assert!(!rule.shadow, "{toml}");
        let m = rule.metadata.as_ref().expect("metadata");
        assert_eq!(
            m.get("un'''\"\"\\it"),
            Some(&serde_json::json!("year")),
            "{toml}"
        );
        assert!(
            toml.contains(r#"# replaces "x\u000Ashadow = true": no rule"#),
            "{toml}"
        );
    }

    /// TOML refuses control characters in a comment; the YAML loader
    /// lets them through, and the importer copied them, so its TOML did
    /// not load (found by the `ratelimit_yaml` fuzz target).
    #[test]
    fn a_control_character_in_a_comment_is_escaped() {
        let yaml = "# Edge\u{f}limits\u{7f}.\ndomain: edge\ndescriptors:\n  - key: tenant # per\u{1b}tenant\n    rate_limit:\n      unit: minute\n      requests_per_unit: 10\n";
        let toml = yaml_to_toml("ed\nge.yaml", yaml).unwrap();
        assert!(toml.contains("# Edge\\u{f}limits\\u{7f}."), "{toml}");
        assert!(toml.contains("# per\\u{1b}tenant"), "{toml}");
        assert!(toml.contains("from ed\\u{a}ge.yaml by"), "{toml}");
        let c = parse_str("edge.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(c.rules.rules.len(), 1);
    }

    /// TOML has no null: a null in the YAML's metadata is left out, with a
    /// comment naming it, and the rest is kept. Before, the whole metadata
    /// was dropped without a word (found by the `ratelimit_yaml` fuzz
    /// target).
    #[test]
    fn a_null_in_metadata_is_left_out_with_a_comment() {
        let yaml = "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit:\n      unit: minute\n      requests_per_unit: 10\n    metadata:\n      team: core\n      owner:\n      tier: {level :2 t, tags: [x, ~, z]}\n  - key: user\n    rate_limit:\n      unit: minute\n      requests_per_unit: 5\n    metadata:\n      gone: null\n";
        let toml = yaml_to_toml("edge.yaml", yaml).unwrap();
        for path in ["owner", "tier.\"level :2 t\"", "tier.tags[1]", "gone"] {
            assert!(
                toml.contains(&format!("# metadata {path}: null in the YAML")),
                "{path}\n{toml}"
            );
        }
        let c = parse_str("edge.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let tenant = c
            .rules
            .rules
            .iter()
            .find(|r| r.pattern[0].key() == "tenant");
        let meta = tenant.and_then(|r| r.metadata.as_deref()).unwrap();
        assert_eq!(
            serde_json::Value::Object(meta.clone()),
            serde_json::json!({"team": "core", "tier": {"tags": ["x", "z"]}})
        );
        let user = c.rules.rules.iter().find(|r| r.pattern[0].key() == "user");
        assert_eq!(user.and_then(|r| r.metadata.as_deref()), None, "{toml}");
    }
}
