//! envoyproxy/ratelimit's YAML config, read as it is: one domain per file,
//! a tree of `descriptors` with `key`, `value`, `rate_limit`, ... turned
//! into tollgate's rules (one per node), refused where the peer refuses it
//! (`config_impl.go`), with the peer's message, and the file, line and
//! field of the problem. Every problem is reported, not only the first.
//!
//! A node without `rate_limit` becomes a rule without limits: it matches,
//! so nothing less specific applies, and answers OK with no current limit,
//! as the peer's does.

use super::error::Source;
use super::ConfigError;
use crate::rules::{Algorithm, EntryPattern, Limit, Period, Rule, RuleId, Zone};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// Builds nodes from the parser's events.
#[derive(Default)]
struct Builder {
    /// Open collections: the node, a map's pending key, its anchor.
    stack: Vec<(Node, Option<Node>, usize)>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node);
    }

    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, key, _)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                Kind::Scalar(..) => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let quoted = style != TScalarStyle::Plain;
                self.push(
                    Node {
                        line,
                        kind: Kind::Scalar(text, quoted),
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    kind: Kind::Seq(vec![]),
                },
                None,
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    kind: Kind::Map(vec![]),
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop() {
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    kind: Kind::Scalar(String::new(), false),
                });
                self.attach(node);
            }
            _ => {}
        }
    }
}

/// What a plain scalar resolves to, as the peer's YAML library (yaml.v2,
/// YAML 1.1) reads it.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str,
}

fn resolve(text: &str, quoted: bool) -> Resolved {
    if quoted {
        return Resolved::Str;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Resolved::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Resolved::Bool(false)
        }
        _ => {}
    }
    let plain = text.replace('_', "");
    let (neg, digits) = match plain.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, plain.strip_prefix('+').unwrap_or(&plain)),
    };
    let int = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()
    } else if digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|c| c.is_ascii_digit())
    {
        i128::from_str_radix(&digits[1..], 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Resolved::Int(if neg { -i } else { i });
    }
    let lower = text.to_ascii_lowercase();
    if matches!(lower.as_str(), ".inf" | "-.inf" | "+.inf" | ".nan")
        || (text.parse::<f64>().is_ok() && text.bytes().any(|c| c.is_ascii_digit()))
    {
        return Resolved::Float;
    }
    Resolved::Str
}

/// Parses one file; `None` (with the error) if it is not YAML.
pub(crate) fn parse(src: &Source, errors: &mut Vec<ConfigError>) -> Option<Option<Node>> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(src.text);
    if let Err(e) = parser.load(&mut b, false) {
        errors.push(ConfigError {
            file: src.name.to_string(),
            line: e.marker().line().max(1),
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
    let err = |errors: &mut Vec<ConfigError>, line: usize, field: &str, message: String| {
        errors.push(ConfigError {
            file: src.name.to_string(),
            line: line.max(1),
            field: field.to_string(),
            message,
        })
    };
    let root = match root {
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
    };
    let Kind::Map(entries) = &root.kind else {
        err(
            errors,
            root.line,
            "-",
            "error loading config file: the file is not a mapping (`domain:` and `descriptors:`)"
                .into(),
        );
        return None;
    };
    validate_keys(src, "", entries, errors);
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
        err(
            errors,
            line,
            "domain",
            "config file cannot have empty domain".into(),
        );
    }
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

/// The peer's key check, over the whole file before anything is decoded:
/// every key a string from its list, every list a list of maps, every
/// value a string, integer, boolean or nothing. `metadata` is free-form.
fn validate_keys(src: &Source, at: &str, entries: &[(Node, Node)], errors: &mut Vec<ConfigError>) {
    for (k, v) in entries {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}.{name}")
            }
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
            let hint = super::suggest::hint(&name, VALID_KEYS.iter().copied());
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
        match &v.kind {
            Kind::Seq(items) => {
                for (i, e) in items.iter().enumerate() {
                    match &e.kind {
                        Kind::Map(m) => {
                            validate_keys(src, &format!("{}[{i}]", field(&name)), m, errors)
                        }
                        Kind::Scalar(t, _) => errors.push(src_error(
                            src,
                            e.line,
                            &format!("{}[{i}]", field(&name)),
                            format!(
                                "config error, yaml file contains list of type other than map: {t}"
                            ),
                        )),
                        Kind::Seq(_) => errors.push(src_error(
                            src,
                            e.line,
                            &format!("{}[{i}]", field(&name)),
                            "config error, yaml file contains list of type other than map: a list"
                                .into(),
                        )),
                    }
                }
            }
            Kind::Map(m) => validate_keys(src, &field(&name), m, errors),
            Kind::Scalar(t, q) => {
                if resolve(t, *q) == Resolved::Float {
                    errors.push(src_error(
                        src,
                        v.line,
                        &field(&name),
                        format!("error checking config: `{t}` is not a string, integer or boolean"),
                    ));
                }
            }
        }
    }
}

fn src_error(src: &Source, line: usize, field: &str, message: String) -> ConfigError {
    ConfigError {
        file: src.name.to_string(),
        line: line.max(1),
        field: field.to_string(),
        message,
    }
}

fn scalar_key(k: &Node) -> Option<&str> {
    match &k.kind {
        Kind::Scalar(t, _) => Some(t.as_str()),
        _ => None,
    }
}

/// A string field: any scalar, as its text (yaml.v2 decodes an integer or
/// boolean into a string field as written); nothing is empty.
fn string(src: &Source, field: &str, v: &Node, errors: &mut Vec<ConfigError>) -> Option<String> {
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

fn boolean(src: &Source, field: &str, v: &Node, errors: &mut Vec<ConfigError>) -> bool {
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

fn seq<'n>(src: &Source, field: &str, v: &'n Node, errors: &mut Vec<ConfigError>) -> &'n [Node] {
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

/// The walk over one file's descriptor tree.
struct Walk<'a, 's> {
    src: &'a Source<'s>,
    domain: &'a str,
    errors: &'a mut Vec<ConfigError>,
    rules: &'a mut Vec<Rule>,
}

/// What one YAML descriptor says, decoded.
#[derive(Default)]
struct Descriptor<'n> {
    key: String,
    value: String,
    rate_limit: Option<&'n Node>,
    descriptors: &'n [Node],
    shadow: bool,
    quota: bool,
    detailed: bool,
    share: bool,
    metadata: Option<&'n Node>,
}

impl Walk<'_, '_> {
    fn error(&mut self, line: usize, field: &str, message: String) {
        self.errors.push(src_error(self.src, line, field, message));
    }

    /// One level: `nodes` under `path`; `shared` says, per level above,
    /// the wildcard text a `share_threshold` level counts under.
    fn level(
        &mut self,
        nodes: &[Node],
        path: &[EntryPattern],
        shared: &[Option<String>],
        stat_key: &str,
        field: &str,
    ) {
        let mut seen = HashSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let Kind::Map(entries) = &node.kind else {
                continue; // reported by validate_keys
            };
            let d = self.decode(entries, &field);
            if d.key.is_empty() {
                self.error(
                    node.line,
                    &format!("{field}.key"),
                    "descriptor has empty key".into(),
                );
                continue;
            }
            // The peer's composite key: `key` or `key_value`.
            let final_key = if d.value.is_empty() {
                d.key.clone()
            } else {
                format!("{}_{}", d.key, d.value)
            };
            let full = if stat_key.is_empty() {
                format!("{}.{final_key}", self.domain)
            } else {
                format!("{}.{stat_key}.{final_key}", self.domain)
            };
            if !seen.insert(final_key.clone()) {
                self.error(
                    node.line,
                    &format!("{field}.key"),
                    format!("duplicate descriptor composite key '{full}'"),
                );
                continue;
            }
            let pattern_text = if d.value.is_empty() {
                d.key.clone()
            } else {
                format!("{}={}", d.key, d.value)
            };
            let Ok(pattern) = EntryPattern::parse(&pattern_text) else {
                self.error(
                    node.line,
                    &format!("{field}.key"),
                    "descriptor has empty key".into(),
                );
                continue;
            };
            if d.share && !final_key.contains('*') {
                self.error(
                    node.line,
                    &format!("{field}.share_threshold"),
                    format!("share_threshold can only be used with wildcard values (containing '*'), but found key '{final_key}'"),
                );
            }
            let mut here_shared = shared.to_vec();
            here_shared.push((d.share && pattern.is_wildcard()).then(|| d.value.clone()));
            let mut here = path.to_vec();
            here.push(pattern);
            let stat = if stat_key.is_empty() {
                final_key.clone()
            } else {
                format!("{stat_key}.{final_key}")
            };
            self.rule(node, &d, &here, &here_shared, &stat, &field);
            self.level(
                d.descriptors,
                &here,
                &here_shared,
                &stat,
                &format!("{field}.descriptors"),
            );
        }
    }

    fn decode<'n>(&mut self, entries: &'n [(Node, Node)], field: &str) -> Descriptor<'n> {
        let mut d = Descriptor::default();
        for (k, v) in entries {
            let name = scalar_key(k).unwrap_or("");
            let f = format!("{field}.{name}");
            match name {
                "key" => d.key = string(self.src, &f, v, self.errors).unwrap_or_default(),
                "value" => d.value = string(self.src, &f, v, self.errors).unwrap_or_default(),
                "rate_limit" => match &v.kind {
                    Kind::Map(_) => d.rate_limit = Some(v),
                    Kind::Scalar(t, q) if resolve(t, *q) == Resolved::Null => {}
                    _ => self.error(
                        v.line,
                        &f,
                        "error loading config file: expected a mapping".into(),
                    ),
                },
                "descriptors" => d.descriptors = seq(self.src, &f, v, self.errors),
                "shadow_mode" => d.shadow = boolean(self.src, &f, v, self.errors),
                "quota_mode" => d.quota = boolean(self.src, &f, v, self.errors),
                "detailed_metric" => d.detailed = boolean(self.src, &f, v, self.errors),
                "value_to_metric" => {
                    boolean(self.src, &f, v, self.errors);
                }
                "share_threshold" => d.share = boolean(self.src, &f, v, self.errors),
                "metadata" => d.metadata = Some(v),
                // Other valid keys are ignored here, as yaml.v2 ignores
                // fields a struct does not have.
                _ => {}
            }
        }
        d
    }

    /// The rule of one node.
    fn rule(
        &mut self,
        node: &Node,
        d: &Descriptor,
        pattern: &[EntryPattern],
        share: &[Option<String>],
        stat_key: &str,
        field: &str,
    ) {
        let mut limits = Vec::new();
        let mut unlimited = false;
        let mut name = None;
        let mut replaces = Vec::new();
        if let Some(rl) = d.rate_limit {
            let Kind::Map(entries) = &rl.kind else { return };
            let mut rpu: u64 = 0;
            let mut unit = String::new();
            let mut unit_line = rl.line;
            for (k, v) in entries {
                let key = scalar_key(k).unwrap_or("");
                let f = format!("{field}.rate_limit.{key}");
                match key {
                    "requests_per_unit" => match &v.kind {
                        Kind::Scalar(t, q) => match resolve(t, *q) {
                            Resolved::Int(i) if (0..=i128::from(u32::MAX)).contains(&i) => {
                                rpu = i as u64
                            }
                            Resolved::Null => {}
                            _ => self.error(
                                v.line,
                                &f,
                                format!(
                                    "error loading config file: cannot unmarshal `{t}` into uint32"
                                ),
                            ),
                        },
                        _ => self.error(
                            v.line,
                            &f,
                            "error loading config file: expected an integer".into(),
                        ),
                    },
                    "unit" => {
                        unit_line = v.line;
                        unit = string(self.src, &f, v, self.errors).unwrap_or_default();
                    }
                    "unlimited" => unlimited = boolean(self.src, &f, v, self.errors),
                    "name" => name = string(self.src, &f, v, self.errors).filter(|n| !n.is_empty()),
                    "replaces" => {
                        for (i, r) in seq(self.src, &f, v, self.errors).iter().enumerate() {
                            let mut n = String::new();
                            if let Kind::Map(m) = &r.kind {
                                for (rk, rv) in m {
                                    if scalar_key(rk) == Some("name") {
                                        n = string(
                                            self.src,
                                            &format!("{f}[{i}].name"),
                                            rv,
                                            self.errors,
                                        )
                                        .unwrap_or_default();
                                    }
                                }
                            }
                            if n.is_empty() {
                                self.error(
                                    r.line,
                                    &format!("{f}[{i}]"),
                                    "should not have an empty replaces entry".into(),
                                );
                            } else if name.as_deref() == Some(n.as_str()) {
                                self.error(
                                    r.line,
                                    &format!("{f}[{i}]"),
                                    "replaces should not contain name of same descriptor".into(),
                                );
                            }
                            replaces.push((n, r.line, i));
                        }
                    }
                    _ => {}
                }
            }
            // `name` may come after `replaces`: check self-replacement again.
            for (n, line, i) in &replaces {
                if name.as_deref() == Some(n.as_str())
                    && !self
                        .errors
                        .iter()
                        .any(|e| e.line == *line && e.message.starts_with("replaces should not"))
                {
                    self.error(
                        *line,
                        &format!("{field}.rate_limit.replaces[{i}]"),
                        "replaces should not contain name of same descriptor".into(),
                    );
                }
            }
            let period = unit_period(&unit);
            if unlimited {
                if period.is_some() {
                    self.error(
                        unit_line,
                        &format!("{field}.rate_limit.unit"),
                        "should not specify rate limit unit when unlimited".into(),
                    );
                }
            } else {
                match period {
                    Some(period) => limits.push(Limit {
                        amount: rpu,
                        period,
                        algorithm: Algorithm::FixedWindow,
                        // The peer's windows: fixed lengths from the epoch.
                        zone: Zone::Epoch,
                    }),
                    None => self.error(
                        unit_line,
                        &format!("{field}.rate_limit.unit"),
                        format!("invalid rate limit unit '{unit}'"),
                    ),
                }
            }
        }
        let metadata = match d.metadata {
            None => None,
            Some(m) => match json(m) {
                serde_json::Value::Object(o) if !o.is_empty() => Some(Arc::new(o)),
                serde_json::Value::Object(_) | serde_json::Value::Null => None,
                _ => {
                    self.error(
                        m.line,
                        &format!("{field}.metadata"),
                        "error parsing metadata: expected a mapping".into(),
                    );
                    None
                }
            },
        };
        let has_limit = d.rate_limit.is_some();
        let shared: Vec<Option<String>> = if share.iter().any(Option::is_some) {
            share.to_vec()
        } else {
            vec![]
        };
        self.rules.push(Rule {
            id: RuleId::new(self.domain, pattern),
            label: stat_key.to_string(),
            name: if has_limit { name } else { None },
            domain: self.domain.to_string(),
            pattern: pattern.to_vec(),
            limits,
            unlimited,
            shadow: has_limit && d.shadow,
            detailed_metric: d.detailed,
            replaces: replaces
                .into_iter()
                .map(|(n, _, _)| n)
                .filter(|n| !n.is_empty())
                .collect(),
            on_error: None,
            reserve: None,
            // Leases slice all-or-nothing takes; the peer counts each hit.
            lease: false,
            source: format!("{}:{}", self.src.name, node.line.max(1)),
            quota_mode: has_limit && d.quota,
            metadata: if has_limit { metadata } else { None },
            share: shared,
        });
    }
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

/// A YAML node as JSON (for `metadata`).
fn json(n: &Node) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
