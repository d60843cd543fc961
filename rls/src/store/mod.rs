//! Where counters live. One small trait, two implementations that give the
//! same answers for the same calls: `memory` (one process) and `redis`
//! (shared by many instances, one Lua script per decision).

pub mod arith;
mod error;
mod memory;
mod redis;

pub use arith::HitState;
pub use error::StoreError;
pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::rules::Limit;
use async_trait::async_trait;

/// One counter to check and take from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The counter's identity without its window. Starts with the rule's
    /// `{hash tag}`; the store appends the fixed window's start.
    pub key: String,
    pub limit: Limit,
    /// Units to take; 0 checks without taking.
    pub cost: u64,
    /// `false` for shadow rules: counted, never the reason for a denial.
    pub enforce: bool,
}

/// The answer to a batch of hits taken all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOutcome {
    /// No enforced hit went over, and every hit was taken.
    pub admitted: bool,
    /// One state per hit, in order.
    pub hits: Vec<HitState>,
}

/// The store behind every decision.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks every hit in order (a hit sees the ones before it in the same
    /// batch) and, unless an enforced hit would go over, takes them all in
    /// one atomic step. A denied batch takes nothing.
    async fn take(&self, hits: &[Hit], now_ms: u64) -> Result<TakeOutcome, StoreError>;

    /// Gives the hits' costs back to the current window or bucket
    /// (`is_negative_hits`). Never denies.
    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError>;

    /// A label for metrics and logs: `memory` or `redis`.
    fn kind(&self) -> &'static str;
}

/// The full key of a hit's counter at `now_ms`: the window start is part of
/// a fixed window's key, so a new window starts from an absent key.
pub fn counter_key(hit: &Hit, now_ms: u64) -> String {
    match arith::key_suffix(&hit.limit, now_ms) {
        Some(window) => format!("{}:{window}", hit.key),
        None => hit.key.clone(),
    }
}
