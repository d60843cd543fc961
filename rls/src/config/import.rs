//! `tollgate import`: envoyproxy/ratelimit YAML → tollgate TOML with the
//! same answers, for teams that move fully. Each YAML domain becomes a
//! `[[domain]]` that keeps the peer's counting (every hit counted, each
//! descriptor on its own, no `retry-after`), and each node a `[[rule]]`
//! with its `match` path written flat; names, `replaces`, shadow and quota
//! mode, metadata, `share_threshold` and the comments above each node
//! (and at the end of its line) are kept.

use super::error::Source;
use super::ratelimit_yaml;
use super::ConfigErrors;
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
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let _ = writeln!(out, "# Imported from {name} by `tollgate import`.");
    for c in comments_above(&lines, domain.line) {
        let _ = writeln!(out, "{c}");
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
            let _ = writeln!(out, "{c}");
        }
        // The node's own lines: up to the next node.
        let end = starts
            .iter()
            .copied()
            .find(|&l| l > line)
            .unwrap_or(lines.len() + 1);
        for l in line.max(1)..end {
            if let Some(c) = lines.get(l - 1).and_then(|t| trailing_comment(t)) {
                let _ = writeln!(out, "{c}");
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
            quoted(n)
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
        if let Ok(t) = toml::Value::try_from(serde_json::Value::Object((**m).clone())) {
            let _ = writeln!(out, "metadata = {}", inline(&t));
        }
    }
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

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
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
}
