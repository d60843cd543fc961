//! envoyproxy/ratelimit's YAML config, read as it is: one domain per file,
//! a tree of `descriptors` with `key`, `value`, `rate_limit`, ... turned
//! into tollgate's rules (one per node), refused where the peer refuses it
//! (`config_impl.go`), with the peer's message, and the file, line and
//! field of the problem. Every problem is reported, not only the first.
//!
//! A node without `rate_limit` becomes a rule without limits: it matches,
//! so nothing less specific applies, and answers OK with no current limit,
//! as the peer's does.

mod keys;
mod node;
mod scalar;
mod walk;

use super::error::Source;
use super::ConfigError;
use crate::rules::{Period, Rule};
use keys::validate_keys;
use node::{resolve, Builder, Resolved};
use scalar::{scalar_key, seq, src_error, string};
use walk::Walk;
use yaml_rust2::parser::Parser;

/// The keys the peer accepts anywhere in a file (`validKeys`).
const VALID_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];

/// One YAML file's rules.
#[derive(Debug)]
pub(crate) struct YamlDomain {
    pub domain: String,
    /// Where `domain:` is, for errors about the whole domain.
    pub line: usize,
    pub rules: Vec<Rule>,
}

/// A YAML node with the line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar and whether it was quoted (quoted scalars are strings).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Parses one file; `None` (with the error) if it is not YAML.
pub(crate) fn parse(src: &Source, errors: &mut Vec<ConfigError>) -> Option<Option<Node>> {
    let last_line = src.text.lines().count().max(1);
    let mut b = Builder::new(last_line);
    let mut parser = Parser::new_from_str(src.text);
    if let Err(e) = parser.load(&mut b, false) {
        errors.push(ConfigError {
            file: src.name.to_string(),
            // An error at the end of the text is on the line after the
            // last one; name the last line instead (found by fuzzing).
            line: e.marker().line().clamp(1, last_line),
            field: "-".into(),
            message: format!("error loading config file: {}", e.info()),
        });
        return None;
    }
    Some(b.root)
}

/// Reads one file: its domain and rules, or the errors (added to
/// `errors`), and `None` when nothing usable is left.
pub(crate) fn domain(src: &Source, errors: &mut Vec<ConfigError>) -> Option<YamlDomain> {
    let root = parse(src, errors)?;
    let before = errors.len();
    let root = empty_as_map(root);
    let Kind::Map(entries) = &root.kind else {
        errors.push(src_error(
            src,
            root.line,
            "-",
            "error loading config file: the file is not a mapping (`domain:` and `descriptors:`)"
                .into(),
        ));
        return None;
    };
    validate_keys(src, "", entries, errors);
    let (domain, line, descriptors) = header(src, &root, entries, errors);
    let mut rules = Vec::new();
    let mut walk = Walk {
        src,
        domain: &domain,
        errors,
        rules: &mut rules,
    };
    walk.level(descriptors, &[], &[], "", "descriptors");
    if errors.len() > before {
        return None;
    }
    Some(YamlDomain {
        domain,
        line,
        rules,
    })
}

/// An empty file (or a bare `~`) is an empty mapping, as yaml.v2 reads it.
fn empty_as_map(root: Option<Node>) -> Node {
    match root {
        None => Node {
            line: 1,
            kind: Kind::Map(vec![]),
        },
        Some(Node {
            kind: Kind::Scalar(t, q),
            line,
        }) if resolve(&t, q) == Resolved::Null => Node {
            line,
            kind: Kind::Map(vec![]),
        },
        Some(n) => n,
    }
}

/// The file's `domain` (with its line) and `descriptors`.
fn header<'n>(
    src: &Source,
    root: &Node,
    entries: &'n [(Node, Node)],
    errors: &mut Vec<ConfigError>,
) -> (String, usize, &'n [Node]) {
    let mut domain = String::new();
    let mut line = root.line;
    let mut descriptors: &[Node] = &[];
    for (k, v) in entries {
        match scalar_key(k) {
            Some("domain") => {
                line = k.line;
                domain = string(src, "domain", v, errors).unwrap_or_default();
            }
            Some("descriptors") => descriptors = seq(src, "descriptors", v, errors),
            _ => {}
        }
    }
    if domain.is_empty() {
        errors.push(src_error(
            src,
            line,
            "domain",
            "config file cannot have empty domain".into(),
        ));
    }
    (domain, line, descriptors)
}

/// The peer's units, any case (`strings.ToUpper`); `UNKNOWN` is no unit.
pub(crate) fn unit_period(unit: &str) -> Option<Period> {
    match unit.to_ascii_uppercase().as_str() {
        "SECOND" => Some(Period::Second),
        "MINUTE" => Some(Period::Minute),
        "HOUR" => Some(Period::Hour),
        "DAY" => Some(Period::Day),
        "WEEK" => Some(Period::Week),
        "MONTH" => Some(Period::Month),
        "YEAR" => Some(Period::Year),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::EntryPattern;

    fn load(text: &str) -> Result<YamlDomain, Vec<String>> {
        let src = Source::new("t.yaml", text);
        let mut errors = vec![];
        match domain(&src, &mut errors) {
            Some(d) if errors.is_empty() => Ok(d),
            _ => Err(errors.iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn a_tree_becomes_one_rule_per_node() {
        let d = load(
            "domain: d\ndescriptors:\n  - key: a\n    value: b\n    descriptors:\n      - key: c\n        rate_limit:\n          unit: Second\n          requests_per_unit: 5\n          name: five\n",
        )
        .unwrap();
        assert_eq!(d.domain, "d");
        assert_eq!(d.rules.len(), 2);
        assert!(d.rules[0].is_no_limit());
        assert_eq!(d.rules[1].limits[0].amount, 5);
        assert_eq!(d.rules[1].limits[0].period, Period::Second);
        assert_eq!(d.rules[1].name.as_deref(), Some("five"));
        assert_eq!(d.rules[1].label, "a_b.c");
        assert_eq!(d.rules[1].source, "t.yaml:6");
    }

    #[test]
    fn the_peers_refusals_with_their_lines() {
        let e = load("domain: d\ndescriptors:\n  - key: a\n    ratelimit:\n      unit: second\n")
            .unwrap_err();
        assert!(
            e[0].starts_with(
                "t.yaml:4: descriptors[0].ratelimit: config error, unknown key 'ratelimit'"
            ),
            "{e:?}"
        );
        let e = load("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: foo\n      requests_per_unit: 1\n").unwrap_err();
        assert!(e[0].contains("invalid rate limit unit 'foo'"), "{e:?}");
        let e = load("domain: d\ndescriptors:\n  - a\n").unwrap_err();
        assert!(e[0].contains("list of type other than map: a"), "{e:?}");
        let e = load("domain: d\ndescriptors:\n  - key: a\n    0.25: x\n").unwrap_err();
        assert!(e[0].contains("key is not of type string: 0.25"), "{e:?}");
        let e = load("descriptors: []\n").unwrap_err();
        assert!(
            e[0].contains("config file cannot have empty domain"),
            "{e:?}"
        );
        let e = load("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: n\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: n\n").unwrap_err();
        assert!(
            e[0].contains("replaces should not contain name of same descriptor"),
            "{e:?}"
        );
        let e =
            load("domain: d\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n")
                .unwrap_err();
        assert!(
            e[0].starts_with("t.yaml:5:")
                && e[0].contains("duplicate descriptor composite key 'd.a_b'"),
            "{e:?}"
        );
        let e =
            load("domain: d\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n")
                .unwrap_err();
        assert!(
            e[0].contains("share_threshold can only be used with wildcard values"),
            "{e:?}"
        );
        let e = load("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n").unwrap_err();
        assert!(
            e[0].contains("should not specify rate limit unit when unlimited"),
            "{e:?}"
        );
        let e = load("domain: d\ndescriptors:\n  - key: [a\n").unwrap_err();
        assert!(e[0].contains("error loading config file"), "{e:?}");
    }

    /// The peer's key may hold `=`: `key: pat=` with `value: /v1` is key
    /// `pat=` and value `/v1`, not key `pat` and value `=/v1` (it was read
    /// back from `pat==/v1`; found by the `ratelimit_yaml` fuzz target).
    /// The two paths that print alike keep apart counters.
    #[test]
    fn a_key_may_hold_an_equals_sign() {
        let d = load("domain: d\ndescriptors:\n  - key: pat=\n    value: /v1\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: pat\n    value: =/v1\n    rate_limit: {unit: second, requests_per_unit: 2}\n").unwrap();
        let [a, b] = &d.rules[..] else {
            panic!("{:?}", d.rules)
        };
        assert_eq!(
            (a.pattern[0].key(), a.pattern[0].value_text().as_deref()),
            ("pat=", Some("/v1"))
        );
        assert_eq!(
            (b.pattern[0].key(), b.pattern[0].value_text().as_deref()),
            ("pat", Some("=/v1"))
        );
        assert_ne!(a.id, b.id);
        let d = load("domain: d\ndescriptors:\n  - key: pat=\n").unwrap();
        assert!(matches!(&d.rules[0].pattern[0], EntryPattern::AnyValue { key } if key == "pat="));
    }

    /// A syntax error found at the end of the text names its last line,
    /// not the one after it (found by `fuzz/fuzz_targets/ratelimit_yaml.rs`).
    #[test]
    fn an_error_at_the_end_names_the_last_line() {
        for text in [
            "domain: d\ndescriptors: [{key: a\n",
            "a: {b: c",
            "domain: d\ndescriptors:\n  -\n",
            "&x\n",
        ] {
            let e = load(text).unwrap_err();
            let last = text.lines().count();
            assert!(
                e[0].starts_with(&format!("t.yaml:{last}: ")),
                "{text:?}: {e:?}"
            );
        }
    }

    /// A key with no text (a null one, `: v`, or `""`) is named by its
    /// place, never by an empty field (found by fuzzing).
    #[test]
    fn a_null_key_is_named_by_its_place() {
        let e = load("\"\": v\ndomain: d\n").unwrap_err();
        assert!(
            e[0].starts_with("t.yaml:1: -: config error, unknown key ''"),
            "{e:?}"
        );
        let e = load(": v\ndomain: d\n").unwrap_err();
        assert!(
            e[0].starts_with("t.yaml:1: -: config error, key is not of type string"),
            "{e:?}"
        );
        let e = load("domain: d\ndescriptors:\n  - key: a\n    : v\n").unwrap_err();
        assert!(
            e[0].starts_with("t.yaml:4: descriptors[0]: config error, key is not of type string"),
            "{e:?}"
        );
    }
}
