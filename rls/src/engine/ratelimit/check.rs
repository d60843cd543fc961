//! A rate limit question and its answer, free of any wire format.

use crate::rules::Limit;
use std::sync::Arc;
use std::time::Duration;

/// A rate limit question, free of any wire format: the RLS proto and the
/// HTTP check API both become one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// Hits each descriptor costs unless it says otherwise (at least 1).
    pub hits: u64,
}

/// One request descriptor: an ordered list of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// Overrides the request's hits; `Some(0)` checks without taking.
    pub hits: Option<u64>,
    /// Give the hits back instead of taking them.
    pub negative: bool,
    /// The request's own limit for this descriptor
    /// (`RateLimitDescriptor.limit`): used instead of the rules, in a
    /// domain that has rules, as envoyproxy/ratelimit does.
    pub limit: Option<Limit>,
}

/// Allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// The answer to a [`Check`], one result per descriptor, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub code: Code,
    pub descriptors: Vec<DescriptorResult>,
}

/// What one descriptor met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorResult {
    pub code: Code,
    /// The limit reported for this descriptor: the one that denied it, or
    /// else the one with the least left. `None` when no limit applies.
    pub limit: Option<MatchedLimit>,
    /// What is left; 0 when over the limit or when no limit applies, all
    /// of `u32` for an `unlimited` rule (envoyproxy/ratelimit's answers).
    pub remaining: u64,
    pub reset_after: Duration,
    /// When a retry could succeed (for `retry-after`).
    pub retry_after: Duration,
    /// The rule is in quota mode: over its limit, it denies the request
    /// only when every quota-mode descriptor is over.
    pub quota: bool,
    /// The rule's `metadata`, for the response's dynamic metadata.
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// A limit together with the rule it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedLimit {
    pub limit: Limit,
    /// The rule's configured name, empty when it has none: what
    /// envoyproxy/ratelimit sends as `current_limit.name`.
    pub rule: String,
}

impl Decision {
    /// The longest wait any denying descriptor asks for.
    pub fn retry_after(&self) -> Duration {
        self.descriptors
            .iter()
            .filter(|d| d.code == Code::OverLimit)
            .map(|d| d.retry_after)
            .max()
            .unwrap_or_default()
    }

    /// The descriptor with the least left, for single-valued headers.
    pub fn tightest(&self) -> Option<&DescriptorResult> {
        self.descriptors
            .iter()
            .filter(|d| d.limit.is_some())
            .min_by_key(|d| (d.code == Code::Ok, d.remaining))
    }
}
