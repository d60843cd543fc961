use super::FailurePolicy;
use super::{Limit, RuleTree};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;

/// A stable identity for a rule, derived from its domain and match path, so
/// counters survive a reload that leaves the rule's path unchanged. It is
/// the Redis hash tag of every key the rule owns (one slot per rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleId(String);

impl RuleId {
    pub fn new(domain: &str, pattern: &[EntryPattern]) -> RuleId {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        for p in pattern {
            h.update([0]);
            h.update(p.to_string().as_bytes());
        }
        RuleId(hex::encode(&h.finalize()[..6]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One level of a rule's match path, in envoyproxy/ratelimit's three forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryPattern {
    /// `key=value`: this exact value.
    Exact { key: String, value: String },
    /// `key=prefix*`: any value starting with `prefix`.
    Prefix { key: String, prefix: String },
    /// `key`: any value, one counter per distinct value.
    AnyValue { key: String },
}

impl EntryPattern {
    /// Parses `key`, `key=value` or `key=prefix*`.
    pub fn parse(s: &str) -> Result<EntryPattern, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        if key.is_empty() {
            return Err(format!("`{s}`: empty descriptor key"));
        }
        let key = key.to_string();
        Ok(match value {
            None => EntryPattern::AnyValue { key },
            Some(v) => match v.strip_suffix('*') {
                Some(prefix) => EntryPattern::Prefix {
                    key,
                    prefix: prefix.to_string(),
                },
                None => EntryPattern::Exact {
                    key,
                    value: v.to_string(),
                },
            },
        })
    }

    pub fn key(&self) -> &str {
        match self {
            EntryPattern::Exact { key, .. }
            | EntryPattern::Prefix { key, .. }
            | EntryPattern::AnyValue { key } => key,
        }
    }
}

impl fmt::Display for EntryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryPattern::Exact { key, value } => write!(f, "{key}={value}"),
            EntryPattern::Prefix { key, prefix } => write!(f, "{key}={prefix}*"),
            EntryPattern::AnyValue { key } => f.write_str(key),
        }
    }
}

impl Serialize for EntryPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A validated `[[rule]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub id: RuleId,
    /// The metric label and the name `replaces` refers to: the configured
    /// `name`, or the domain and match path written out.
    pub label: String,
    pub name: Option<String>,
    pub domain: String,
    pub pattern: Vec<EntryPattern>,
    pub limits: Vec<Limit>,
    pub unlimited: bool,
    pub shadow: bool,
    pub detailed_metric: bool,
    pub replaces: Vec<String>,
    /// What to answer when the store fails; `None` = the store's default.
    pub on_error: Option<FailurePolicy>,
    /// Reserve/reconcile over RLS: the descriptor key that names the
    /// request. Its value is not part of the counter's identity; it keys
    /// the reservation that the stream-done call settles.
    pub reserve: Option<String>,
    /// Decided from this instance's lease of the shared counters
    /// (`[leases]`), with the rule's own `lease` or the default resolved.
    pub lease: bool,
    /// `file:line` of the rule, for logs and `/config`.
    pub source: String,
}

/// All rules in force, with the tree that finds them. Immutable: a reload
/// builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub tree: RuleTree,
    domains: HashSet<String>,
}

impl RuleSet {
    /// Builds the lookup tree. Fails with the index of the second of two
    /// rules that claim the same domain and path.
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, (usize, usize)> {
        let tree = RuleTree::build(&rules)?;
        let domains = rules.iter().map(|r| r.domain.clone()).collect();
        Ok(RuleSet {
            rules,
            tree,
            domains,
        })
    }

    /// Whether any rule is written for this domain (bounds metric labels).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    pub fn get(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            EntryPattern::parse("tenant").unwrap(),
            EntryPattern::AnyValue {
                key: "tenant".into()
            }
        );
        assert_eq!(
            EntryPattern::parse("path=/v1/*").unwrap(),
            EntryPattern::Prefix {
                key: "path".into(),
                prefix: "/v1/".into()
            }
        );
        assert_eq!(
            EntryPattern::parse("a=b=c").unwrap(),
            EntryPattern::Exact {
                key: "a".into(),
                value: "b=c".into()
            }
        );
        assert!(EntryPattern::parse("=x").is_err());
        assert!(EntryPattern::parse("").is_err());
    }

    #[test]
    fn rule_id_is_stable_and_path_sensitive() {
        let p = vec![EntryPattern::parse("tenant").unwrap()];
        let q = vec![EntryPattern::parse("tenant=a").unwrap()];
        assert_eq!(RuleId::new("edge", &p), RuleId::new("edge", &p));
        assert_ne!(RuleId::new("edge", &p), RuleId::new("edge", &q));
        assert_ne!(RuleId::new("edge", &p), RuleId::new("other", &p));
    }
}
