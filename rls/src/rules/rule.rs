use super::mode::DomainMode;
use super::FailurePolicy;
use super::{Limit, RuleTree};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

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
            // `key=value` is ambiguous when the key holds `=` (the peer's
            // YAML allows it): mark where the key ends. Other ids are
            // unchanged, so counters keep their keys.
            if p.key().contains('=') {
                h.update([1]);
                h.update(p.key().len().to_string().as_bytes());
            }
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
    /// `key=a*b*c`: `*` anywhere, any number of times, each matching any
    /// run of characters (envoyproxy/ratelimit's wildcard). `parts` is the
    /// pattern split at each `*`, once, when the config is loaded.
    Glob {
        key: String,
        pattern: String,
        parts: Vec<String>,
    },
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
        EntryPattern::of(key, value).ok_or_else(|| format!("`{s}`: empty descriptor key"))
    }

    /// The pattern of a key and its value (`None`: any value), as the
    /// peer's YAML gives them apart: its key may hold `=`, which the
    /// `key=value` text of TOML cannot say. `None` for an empty key.
    pub fn of(key: &str, value: Option<&str>) -> Option<EntryPattern> {
        if key.is_empty() {
            return None;
        }
        let key = key.to_string();
        Some(match value {
            None => EntryPattern::AnyValue { key },
            Some(v) => match v.find('*') {
                None => EntryPattern::Exact {
                    key,
                    value: v.to_string(),
                },
                Some(at) if at + 1 == v.len() => EntryPattern::Prefix {
                    key,
                    prefix: v[..at].to_string(),
                },
                Some(_) => EntryPattern::Glob {
                    key,
                    pattern: v.to_string(),
                    parts: v.split('*').map(str::to_string).collect(),
                },
            },
        })
    }

    pub fn key(&self) -> &str {
        match self {
            EntryPattern::Exact { key, .. }
            | EntryPattern::Prefix { key, .. }
            | EntryPattern::Glob { key, .. }
            | EntryPattern::AnyValue { key } => key,
        }
    }

    /// Whether this level matches many values through `*`.
    pub fn is_wildcard(&self) -> bool {
        matches!(
            self,
            EntryPattern::Prefix { .. } | EntryPattern::Glob { .. }
        )
    }

    /// The value as written in the config (`prefix*`, `a*b`, `value`), or
    /// `None` for a bare key.
    pub fn value_text(&self) -> Option<String> {
        match self {
            EntryPattern::Exact { value, .. } => Some(value.clone()),
            EntryPattern::Prefix { prefix, .. } => Some(format!("{prefix}*")),
            EntryPattern::Glob { pattern, .. } => Some(pattern.clone()),
            EntryPattern::AnyValue { .. } => None,
        }
    }
}

/// Whether `value` matches a pattern split at its `*`s (at least two
/// parts): it starts with the first part, ends with the last, and holds
/// the middle ones in order between them, without overlap. No allocation:
/// this runs per request.
pub fn glob_matches(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    let fixed: usize = parts.iter().map(String::len).sum();
    if value.len() < fixed || !value.starts_with(first.as_str()) || !value.ends_with(last.as_str())
    {
        return false;
    }
    let Some(mut rest) = value.get(first.len()..value.len() - last.len()) else {
        return false;
    };
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Display for EntryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryPattern::Exact { key, value } => write!(f, "{key}={value}"),
            EntryPattern::Prefix { key, prefix } => write!(f, "{key}={prefix}*"),
            EntryPattern::Glob { key, pattern, .. } => write!(f, "{key}={pattern}"),
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
    /// envoyproxy/ratelimit's `quota_mode`: this descriptor over its limit
    /// denies the request only when every quota-mode descriptor is over.
    pub quota_mode: bool,
    /// envoyproxy/ratelimit's `metadata`: returned in the response's
    /// dynamic metadata when this descriptor passes (and dynamic metadata
    /// is on).
    #[serde(serialize_with = "shared_map")]
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// envoyproxy/ratelimit's `share_threshold`, per match level: the
    /// wildcard text that stands for the request's value in the counter's
    /// key, so every value the wildcard matches shares one counter.
    pub share: Vec<Option<String>>,
}

fn shared_map<S: serde::Serializer>(
    m: &Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    m.as_deref().serialize(s)
}

impl Rule {
    /// A path that matches but sets no limit (envoyproxy/ratelimit's node
    /// without `rate_limit`): it allow-lists its values, answering OK with
    /// no current limit, and nothing less specific applies.
    pub fn is_no_limit(&self) -> bool {
        self.limits.is_empty() && !self.unlimited
    }

    /// The name sent as `current_limit.name`: the configured `name`, or
    /// empty (as envoyproxy/ratelimit sends).
    pub fn wire_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The rule a request's own limit (`RateLimitDescriptor.limit`) is
    /// counted under, one per domain: no name, no replaces, never shadow.
    pub fn limit_override(domain: &str) -> Rule {
        let pattern = vec![EntryPattern::AnyValue {
            key: "(limit override)".into(),
        }];
        Rule {
            id: RuleId::new(domain, &pattern),
            label: format!("{domain}:(limit override)"),
            name: None,
            domain: domain.to_string(),
            pattern,
            limits: vec![],
            unlimited: false,
            shadow: false,
            detailed_metric: false,
            replaces: vec![],
            on_error: None,
            reserve: None,
            lease: false,
            source: "request".into(),
            quota_mode: false,
            metadata: None,
            share: vec![],
        }
    }
}

/// All rules in force, with the tree that finds them. Immutable: a reload
/// builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub tree: RuleTree,
    /// Each domain that has rules: how it answers, and the rule its
    /// requests' own limits (`RateLimitDescriptor.limit`) count under.
    domains: HashMap<String, Domain>,
    /// How a domain without rules answers (the defaults in force).
    default_mode: Arc<DomainMode>,
}

#[derive(Debug)]
struct Domain {
    mode: Arc<DomainMode>,
    overrides: Rule,
}

impl RuleSet {
    /// Builds the lookup tree. Fails with the index of the second of two
    /// rules that claim the same domain and path.
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, (usize, usize)> {
        RuleSet::with_modes(rules, Arc::default(), &HashMap::new())
    }

    /// As [`RuleSet::new`], with each domain's answering mode (`default`
    /// for domains not in `modes`).
    pub fn with_modes(
        rules: Vec<Rule>,
        default: Arc<DomainMode>,
        modes: &HashMap<String, Arc<DomainMode>>,
    ) -> Result<RuleSet, (usize, usize)> {
        let tree = RuleTree::build(&rules)?;
        let mut domains = HashMap::new();
        for r in &rules {
            domains.entry(r.domain.clone()).or_insert_with(|| Domain {
                mode: modes.get(&r.domain).unwrap_or(&default).clone(),
                overrides: Rule::limit_override(&r.domain),
            });
        }
        Ok(RuleSet {
            rules,
            tree,
            domains,
            default_mode: default,
        })
    }

    /// Whether any rule is written for this domain (bounds metric labels).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// How this domain answers.
    pub fn mode(&self, domain: &str) -> &DomainMode {
        self.domains
            .get(domain)
            .map_or(&self.default_mode, |d| &d.mode)
    }

    /// The rule a request's own limit counts under in this domain; `None`
    /// for a domain without rules (envoyproxy/ratelimit ignores the
    /// override there too).
    pub fn limit_override(&self, domain: &str) -> Option<&Rule> {
        self.domains.get(domain).map(|d| &d.overrides)
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
        assert_eq!(
            EntryPattern::parse("p=/api*v1").unwrap().to_string(),
            "p=/api*v1"
        );
        assert!(matches!(
            EntryPattern::parse("p=a*b*").unwrap(),
            EntryPattern::Glob { .. }
        ));
        assert!(EntryPattern::parse("=x").is_err());
        assert!(EntryPattern::parse("").is_err());
    }

    /// envoyproxy/ratelimit config_test.go TestWildcardConfig: `*` in the
    /// middle or several times matches any run of characters.
    #[test]
    fn globs_match_like_envoyproxy_ratelimit() {
        let parts = |p: &str| p.split('*').map(str::to_string).collect::<Vec<_>>();
        let m = |p: &str, v: &str| glob_matches(&parts(p), v);
        assert!(m("foo*bar*baz", "foobarbaz"));
        assert!(m("foo*bar*baz", "foo-x-bar-y-baz"));
        assert!(!m("foo*bar*baz", "foobaz"));
        assert!(!m("foo*bar*baz", "foo-baz-bar"));
        assert!(m("/api*v1", "/api/v1"));
        assert!(m("/api*v1", "/apiv1"));
        assert!(!m("/api*v1", "/api/v2"));
        assert!(m("*mid*", "xmidy"));
        assert!(!m("ab*ba", "aba"), "the parts may not overlap");
        assert!(m("é*é", "éxé"));
        assert!(!m("é*é", "é"));
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
