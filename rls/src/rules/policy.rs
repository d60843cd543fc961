//! What a rule or quota answers when the store cannot answer.

use serde::Serialize;

/// The answer while the shared store fails (set per store, overridable per
/// rule and quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Allow: availability over exactness.
    FailOpen,
    /// Deny: the budget is never exceeded.
    FailClosed,
    /// Enforce in this instance's memory meanwhile, at the instance's share
    /// of the limit.
    Local,
}

impl FailurePolicy {
    pub fn parse(s: &str) -> Option<FailurePolicy> {
        match s {
            "fail_open" => Some(FailurePolicy::FailOpen),
            "fail_closed" => Some(FailurePolicy::FailClosed),
            "local" => Some(FailurePolicy::Local),
            _ => None,
        }
    }

    /// The metric label (and config spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::Local => "local",
        }
    }
}
