//! Priority classes and how long a request may wait for capacity.
//!
//! A class orders the wait queue (higher priority first, arrival order
//! within a priority) and, when classes carry shares, owns a share of every
//! quota: a fixed class keeps its share, flexible classes lend what they do
//! not use and borrow what others do not (see `engine::shares`).

use super::identity::{Identity, IdentityKey, ValuePattern};
use serde::Serialize;
use std::time::Duration;

/// How long a request that finds no capacity may wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxWait {
    /// Wait this long (0 answers at once). Capacity freed by a refund or
    /// a finished request may come sooner than the window's end, so the
    /// whole time is spent waiting.
    For(Duration),
    /// Wait only while the capacity the request needs can be back within
    /// `max_wait_cap` (the window resets, the bucket refills, a slot frees);
    /// a budget that cannot recover that soon (a spent daily quota) answers
    /// at once.
    Auto,
}

impl MaxWait {
    /// `"auto"` or a duration like `"5s"`.
    pub fn parse(s: &str) -> Result<MaxWait, String> {
        if s.trim() == "auto" {
            return Ok(MaxWait::Auto);
        }
        humantime::parse_duration(s.trim())
            .map(MaxWait::For)
            .map_err(|e| format!("`{s}`: {e} (write \"auto\", \"0s\" or e.g. \"5s\")"))
    }
}

/// Written as it is configured: `"auto"` or `"5s"`.
impl Serialize for MaxWait {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxWait::Auto => s.serialize_str("auto"),
            MaxWait::For(d) => s.collect_str(&humantime::format_duration(*d)),
        }
    }
}

/// A validated `[[class]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Class {
    pub name: String,
    /// Higher is served first.
    pub priority: i64,
    /// Fraction of each quota this class may use; `None` when classes only
    /// order the queue.
    pub share: Option<f64>,
    /// Lends idle share to other flexible classes and borrows theirs.
    pub flexible: bool,
    pub max_wait: Option<MaxWait>,
    /// Requests whose identity matches belong to this class (when the
    /// class header names no class).
    pub matchers: Vec<(IdentityKey, ValuePattern)>,
    /// The class of requests nothing else places.
    pub default: bool,
    /// `file:line`, for errors that involve several classes.
    pub source: String,
}

impl Class {
    fn matches(&self, id: &Identity) -> bool {
        !self.matchers.is_empty()
            && self
                .matchers
                .iter()
                .all(|(k, p)| k.of(id).is_some_and(|v| p.matches(v)))
    }
}

/// The configured classes, in config order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Classes(pub Vec<Class>);

impl Classes {
    /// The class of a request: the one its class header names, else the
    /// first whose `match` fits, else the default (or the lowest priority).
    /// `None` when no classes are configured.
    pub fn of(&self, header: Option<&str>, id: &Identity) -> Option<&Class> {
        if self.0.is_empty() {
            return None;
        }
        if let Some(c) = header.and_then(|h| self.0.iter().find(|c| c.name == h)) {
            return Some(c);
        }
        if let Some(c) = self.0.iter().find(|c| c.matches(id)) {
            return Some(c);
        }
        self.0
            .iter()
            .find(|c| c.default)
            .or_else(|| self.0.iter().min_by_key(|c| c.priority))
    }

    /// Whether classes divide quotas between them.
    pub fn have_shares(&self) -> bool {
        self.0.iter().any(|c| c.share.is_some())
    }

    pub fn get(&self, name: &str) -> Option<&Class> {
        self.0.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, priority: i64) -> Class {
        Class {
            name: name.into(),
            priority,
            share: None,
            flexible: true,
            max_wait: None,
            matchers: vec![],
            default: false,
            source: String::new(),
        }
    }

    #[test]
    fn header_then_match_then_default_then_lowest() {
        let mut batch = class("batch", 1);
        batch.matchers = vec![(IdentityKey::Tenant, ValuePattern::Prefix("etl-".into()))];
        let classes = Classes(vec![class("interactive", 10), batch, class("bulk", 0)]);
        let id = |t: &str| Identity {
            tenant: Some(t.into()),
            ..Default::default()
        };
        assert_eq!(
            classes.of(Some("interactive"), &id("etl-1")).unwrap().name,
            "interactive"
        );
        assert_eq!(classes.of(None, &id("etl-1")).unwrap().name, "batch");
        assert_eq!(classes.of(Some("nope"), &id("web")).unwrap().name, "bulk");
        let mut with_default = classes.clone();
        with_default.0[0].default = true;
        assert_eq!(
            with_default.of(None, &id("web")).unwrap().name,
            "interactive"
        );
        assert!(Classes::default().of(Some("x"), &id("a")).is_none());
    }

    #[test]
    fn max_wait_parses() {
        assert_eq!(MaxWait::parse("auto"), Ok(MaxWait::Auto));
        assert_eq!(
            MaxWait::parse("250ms"),
            Ok(MaxWait::For(Duration::from_millis(250)))
        );
        assert_eq!(MaxWait::parse("0s"), Ok(MaxWait::For(Duration::ZERO)));
        assert!(MaxWait::parse("soon").is_err());
    }
}
