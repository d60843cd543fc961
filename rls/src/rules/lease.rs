//! Which shared budgets an instance leases a slice of, and how.

use serde::Serialize;
use std::time::Duration;

/// `[leases]`: slices of shared budgets decided locally (see
/// `engine::leases`). Only with a shared store; the memory store has no
/// one to share with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LeasePolicy {
    /// Rules lease unless they say `lease = false`.
    pub by_default: bool,
    /// An unused slice goes back after being idle this long; slices are
    /// sized to last about this long.
    #[serde(with = "super::llm::humantime_secs")]
    pub ttl: Duration,
    /// The largest slice, as a fraction of its limit.
    pub max_slice: f64,
    /// The first slice of a counter, in requests.
    pub first_slice: u64,
    /// How often this instance tells the registry it is alive.
    #[serde(with = "super::llm::humantime_secs")]
    pub heartbeat: Duration,
    /// An instance silent this long is no longer counted.
    #[serde(with = "super::llm::humantime_secs")]
    pub evict_after: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            by_default: false,
            ttl: Duration::from_secs(2),
            max_slice: 0.05,
            first_slice: 8,
            heartbeat: Duration::from_secs(5),
            evict_after: Duration::from_secs(15),
        }
    }
}
