//! The owners of keys in the config in force: every `[[quota]]` and
//! `[[rule]]`, found by the id their keys carry as hash tag, with each
//! limit's key segment as the key builders write it. A key read from the
//! store is mapped back to its owner and limit through this index (ids are
//! hashes: nothing else can name them).

use crate::config::Config;
use crate::rules::{Limit, Quota, QuotaLimit, Rule, RuleId};
use crate::store::keys::{self, KeyKind, ParsedKey, QuotaCounter};
use crate::store::Counter;
use serde::Serialize;
use std::collections::HashMap;

/// A quota (ext_proc) or a rule (RLS, HTTP check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    Quota,
    Rule,
}

/// One limit of an owner, as its keys name it.
#[derive(Debug, Clone)]
pub struct OwnedLimit {
    /// What it counts, as the config's serialised form names it
    /// (`tokens`, `requests`, `concurrent`, ...).
    pub kind: String,
    pub counter: Counter,
    /// The key segment naming this limit (`tminutew`); `None` for
    /// concurrency slots, whose keys have no limit segment.
    pub segment: Option<String>,
    /// A money budget: its figures are micro-units of the currency.
    pub money: bool,
}

/// One owner of keys.
#[derive(Debug, Clone)]
pub struct Owner {
    pub kind: OwnerKind,
    /// The quota's name, or the rule's label (its `name`, or its domain
    /// and match path written out).
    pub name: String,
    pub id: RuleId,
    pub source: String,
    /// The names of the values its keys carry, in key order.
    pub keys: Vec<String>,
    /// Which value is the tenant, if any.
    pub tenant_at: Option<usize>,
    pub limits: Vec<OwnedLimit>,
    /// A shadow rule: counted, never denies.
    pub shadow: bool,
}

impl Owner {
    /// The limit a key of kind `kind` belongs to.
    pub fn limit_of(&self, kind: &KeyKind<'_>) -> Option<usize> {
        match kind {
            KeyKind::Rate { limit, .. } => self
                .limits
                .iter()
                .position(|l| l.segment.as_deref() == Some(*limit)),
            KeyKind::Slots { .. } => self
                .limits
                .iter()
                .position(|l| matches!(l.counter, Counter::Slots { .. })),
            _ => None,
        }
    }

    /// Whether a filter's name names this owner.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name
    }
}

/// Every owner of the config in force, by id.
#[derive(Debug, Default)]
pub struct Owners {
    pub list: Vec<Owner>,
    by_tag: HashMap<String, usize>,
}

impl Owners {
    /// Quotas first, then rules, each in config order.
    pub fn of(config: &Config) -> Owners {
        let mut owners = Owners::default();
        for q in &config.llm.quotas {
            owners.push(quota(q));
        }
        for r in &config.rules.rules {
            // An unlimited rule never takes: it owns no key.
            if !r.unlimited {
                owners.push(rule(r));
            }
        }
        owners
    }

    fn push(&mut self, owner: Owner) {
        self.by_tag
            .insert(owner.id.as_str().to_string(), self.list.len());
        self.list.push(owner);
    }

    /// The owner whose id is this hash tag.
    pub fn by_tag(&self, tag: &str) -> Option<usize> {
        self.by_tag.get(tag).copied()
    }

    pub fn named(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|o| o.is_named(name))
    }
}

/// The segment a builder writes for a rate limit: read back from a key it
/// builds (`base`, completed with a window as the store completes it), so
/// a new kind or period needs nothing here.
fn segment(base: &str, counter: &Counter) -> Option<String> {
    let key = keys::counter_key(base, counter, 0);
    match ParsedKey::parse(&key)?.kind {
        KeyKind::Rate { limit, .. } => Some(limit.to_string()),
        _ => None,
    }
}

/// A quota limit's counter and key kind.
fn quota_counter(limit: &QuotaLimit) -> (Counter, QuotaCounter<'_>) {
    match limit {
        QuotaLimit::Tokens(l) => (Counter::Rate(*l), QuotaCounter::Tokens(l)),
        QuotaLimit::Requests(l) => (Counter::Rate(*l), QuotaCounter::Requests(l)),
        QuotaLimit::Spend(l) => (Counter::Rate(*l), QuotaCounter::Spend(l)),
        QuotaLimit::Concurrent { max } => (Counter::Slots { max: *max }, QuotaCounter::Concurrent),
    }
}

/// What a quota limit counts, as the config's serialised form names it.
fn kind_name(limit: &QuotaLimit) -> String {
    serde_json::to_value(limit)
        .ok()
        .and_then(|v| v.get("kind")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "limit".into())
}

fn quota(q: &Quota) -> Owner {
    let keys: Vec<String> = q
        .matchers
        .iter()
        .map(|(k, _)| {
            serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let limits = q
        .limits
        .iter()
        .map(|l| {
            let (counter, which) = quota_counter(l);
            let segment = match counter {
                Counter::Rate(_) => segment(&keys::quota_counter(&q.id, which, ""), &counter),
                Counter::Slots { .. } => None,
            };
            OwnedLimit {
                kind: kind_name(l),
                counter,
                segment,
                money: matches!(l, QuotaLimit::Spend(_)),
            }
        })
        .collect();
    Owner {
        kind: OwnerKind::Quota,
        name: q.name.clone(),
        id: q.id.clone(),
        source: q.source.clone(),
        tenant_at: keys.iter().position(|k| k == "tenant"),
        keys,
        limits,
        shadow: false,
    }
}

fn rule(r: &Rule) -> Owner {
    // The request id of a reserving rule names its reservation, not a
    // counter: it is not among the key's values.
    let keys: Vec<String> = r
        .pattern
        .iter()
        .map(|p| p.key().to_string())
        .filter(|k| r.reserve.as_deref() != Some(k.as_str()))
        .collect();
    let limits = r
        .limits
        .iter()
        .map(|l: &Limit| {
            let counter = Counter::Rate(*l);
            OwnedLimit {
                kind: "requests".into(),
                segment: segment(&keys::rule_counter(&r.id, l, std::iter::empty()), &counter),
                counter,
                money: false,
            }
        })
        .collect();
    Owner {
        kind: OwnerKind::Rule,
        name: r.label.clone(),
        id: r.id.clone(),
        source: r.source.clone(),
        tenant_at: keys.iter().position(|k| k == "tenant"),
        keys,
        limits,
        shadow: r.shadow,
    }
}
