//! The walk over one file's descriptor tree: each node → one rule, with
//! the peer's refusals (duplicate keys, bad units, self-replacement).

use super::node::{resolve, Resolved};
use super::scalar::{boolean, json, scalar_key, seq, src_error, string};
use super::{unit_period, Kind, Node};
use crate::config::error::Source;
use crate::config::ConfigError;
use crate::rules::{Algorithm, EntryPattern, Limit, Rule, RuleId, Zone};
use std::collections::HashSet;
use std::sync::Arc;

/// The walk over one file's descriptor tree.
pub(super) struct Walk<'a, 's> {
    pub(super) src: &'a Source<'s>,
    pub(super) domain: &'a str,
    pub(super) errors: &'a mut Vec<ConfigError>,
    pub(super) rules: &'a mut Vec<Rule>,
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
    pub(super) fn level(
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
            let Some((pattern, final_key)) = self.node_key(node, &d, &mut seen, stat_key, &field)
            else {
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

    /// A node's composite key (`key` or `key_value`) and its pattern;
    /// `None` (with the error) when the key repeats a sibling's or does
    /// not parse.
    fn node_key(
        &mut self,
        node: &Node,
        d: &Descriptor,
        seen: &mut HashSet<String>,
        stat_key: &str,
        field: &str,
    ) -> Option<(EntryPattern, String)> {
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
            return None;
        }
        let value = Some(d.value.as_str()).filter(|v| !v.is_empty());
        let Some(pattern) = EntryPattern::of(&d.key, value) else {
            self.error(
                node.line,
                &format!("{field}.key"),
                "descriptor has empty key".into(),
            );
            return None;
        };
        Some((pattern, final_key))
    }

    /// A descriptor's fields, each type-checked as yaml.v2 would.
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
        let mut rl = RateLimit::default();
        if let Some(n) = d.rate_limit {
            let Kind::Map(entries) = &n.kind else { return };
            rl = self.rate_limit(n, entries, field);
        }
        let metadata = self.metadata(d, field);
        let has_limit = d.rate_limit.is_some();
        let shared: Vec<Option<String>> = if share.iter().any(Option::is_some) {
            share.to_vec()
        } else {
            vec![]
        };
        self.rules.push(Rule {
            id: RuleId::new(self.domain, pattern),
            label: stat_key.to_string(),
            name: if has_limit { rl.name } else { None },
            domain: self.domain.to_string(),
            pattern: pattern.to_vec(),
            limits: rl.limits,
            unlimited: rl.unlimited,
            shadow: has_limit && d.shadow,
            detailed_metric: d.detailed,
            replaces: rl
                .replaces
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

    /// A node's `rate_limit` mapping: its fields, then the checks that need
    /// them all (self-replacement, the unit).
    fn rate_limit(&mut self, rl: &Node, entries: &[(Node, Node)], field: &str) -> RateLimit {
        let mut out = RateLimit::default();
        let mut rpu: u64 = 0;
        let mut unit = String::new();
        let mut unit_line = rl.line;
        for (k, v) in entries {
            let key = scalar_key(k).unwrap_or("");
            let f = format!("{field}.rate_limit.{key}");
            match key {
                "requests_per_unit" => {
                    if let Some(n) = self.requests_per_unit(v, &f) {
                        rpu = n;
                    }
                }
                "unit" => {
                    unit_line = v.line;
                    unit = string(self.src, &f, v, self.errors).unwrap_or_default();
                }
                "unlimited" => out.unlimited = boolean(self.src, &f, v, self.errors),
                "name" => out.name = string(self.src, &f, v, self.errors).filter(|n| !n.is_empty()),
                "replaces" => self.replaces(v, &f, out.name.as_deref(), &mut out.replaces),
                _ => {}
            }
        }
        // `name` may come after `replaces`: check self-replacement again.
        for (n, line, i) in &out.replaces {
            if out.name.as_deref() == Some(n.as_str())
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
        self.unit(&unit, unit_line, rpu, field, &mut out);
        out
    }

    /// `requests_per_unit`: a uint32, or null (left at 0).
    fn requests_per_unit(&mut self, v: &Node, f: &str) -> Option<u64> {
        match &v.kind {
            Kind::Scalar(t, q) => match resolve(t, *q) {
                Resolved::Int(i) if (0..=i128::from(u32::MAX)).contains(&i) => Some(i as u64),
                Resolved::Null => None,
                _ => {
                    self.error(
                        v.line,
                        f,
                        format!("error loading config file: cannot unmarshal `{t}` into uint32"),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    v.line,
                    f,
                    "error loading config file: expected an integer".into(),
                );
                None
            }
        }
    }

    /// `replaces`: each entry's `name`, with its line and index; an empty
    /// one or the node's own name (if already read) is refused.
    fn replaces(
        &mut self,
        v: &Node,
        f: &str,
        name: Option<&str>,
        out: &mut Vec<(String, usize, usize)>,
    ) {
        for (i, r) in seq(self.src, f, v, self.errors).iter().enumerate() {
            let mut n = String::new();
            if let Kind::Map(m) = &r.kind {
                for (rk, rv) in m {
                    if scalar_key(rk) == Some("name") {
                        n = string(self.src, &format!("{f}[{i}].name"), rv, self.errors)
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
            } else if name == Some(n.as_str()) {
                self.error(
                    r.line,
                    &format!("{f}[{i}]"),
                    "replaces should not contain name of same descriptor".into(),
                );
            }
            out.push((n, r.line, i));
        }
    }

    /// `unit`: none when unlimited, else a known one, making the limit.
    fn unit(&mut self, unit: &str, line: usize, rpu: u64, field: &str, out: &mut RateLimit) {
        let period = unit_period(unit);
        if out.unlimited {
            if period.is_some() {
                self.error(
                    line,
                    &format!("{field}.rate_limit.unit"),
                    "should not specify rate limit unit when unlimited".into(),
                );
            }
            return;
        }
        match period {
            Some(period) => out.limits.push(Limit {
                amount: rpu,
                period,
                algorithm: Algorithm::FixedWindow,
                // The peer's windows: fixed lengths from the epoch.
                zone: Zone::Epoch,
            }),
            None => self.error(
                line,
                &format!("{field}.rate_limit.unit"),
                format!("invalid rate limit unit '{unit}'"),
            ),
        }
    }

    /// A node's `metadata`: a non-empty mapping, as JSON.
    fn metadata(
        &mut self,
        d: &Descriptor,
        field: &str,
    ) -> Option<Arc<serde_json::Map<String, serde_json::Value>>> {
        let m = d.metadata?;
        match json(m) {
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
        }
    }
}

/// What a node's `rate_limit` says, read.
#[derive(Default)]
struct RateLimit {
    limits: Vec<Limit>,
    unlimited: bool,
    name: Option<String>,
    /// Each `replaces` entry's name, line and index.
    replaces: Vec<(String, usize, usize)>,
}
