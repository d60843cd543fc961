//! Where counters live. One small trait, two implementations that give the
//! same answers for the same calls: `memory` (one process) and `redis`
//! (shared by many instances, one Lua script per decision).

pub mod arith;
mod breaker;
mod error;
pub mod keys;
mod memory;
mod redis;
mod redis_errors;
mod redis_freed;
mod redis_link;

pub use arith::HitState;
pub use arith::SLOT_RETRY_MS;
pub use breaker::{Breaker, Health, FAILURES_TO_OPEN, LOG_SUMMARY_EVERY};
pub use error::{Refusal, StoreError};
pub use keys::counter_key;
pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::rules::Limit;
use async_trait::async_trait;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Hits or tokens per period, by window or bucket.
    Rate(Limit),
    /// Requests in flight at once: held by a reservation until it settles
    /// or its deadline passes.
    Slots { max: u64 },
}

/// One counter to check and take from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The counter's identity without its window. Starts with the rule's
    /// `{hash tag}`; the store appends the fixed window's start.
    pub key: String,
    pub counter: Counter,
    /// Units to take; 0 checks without taking.
    pub cost: u64,
    /// `false` for shadow rules: counted, never the reason for a denial.
    pub enforce: bool,
}

/// What an admitted reservation leaves in the store beside its counters:
/// its concurrency slots are held under `holder` until `ttl_ms` from now,
/// and `record` is kept at `record_key` for the same time, so a settle
/// can happen once (and only once) from any instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub holder: String,
    pub ttl_ms: u64,
    pub record_key: String,
    pub record: Vec<u8>,
}

/// One correction applied when a reservation settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOp {
    /// Give `cost` back to the exact counter key (window included) it was
    /// taken from; dropped if that window has ended.
    Refund {
        key: String,
        limit: Limit,
        cost: u64,
    },
    /// Charge `cost` more to the counter's current window or bucket, past
    /// the limit if need be (usage above the estimate).
    Charge {
        key: String,
        limit: Limit,
        cost: u64,
    },
    /// Free the reservation's concurrency slot.
    Release { key: String, max: u64 },
}

/// A slice of a counter granted to this instance's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Taken from the counter for the lease; 0 when too little is left.
    pub amount: u64,
    /// The counter after the grant.
    pub state: HitState,
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
    /// one atomic step, together with `hold` if given. A denied batch takes
    /// nothing.
    async fn take(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError>;

    /// Counts every hit on its own, whatever its limit says (a window may
    /// pass it, a bucket goes into debt), and says of each whether it did
    /// not fit: envoyproxy/ratelimit's per-descriptor `INCRBY`, for domains
    /// that answer as it does. Never denies the others; `Slots` are only
    /// checked.
    async fn count(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError>;

    /// Gives the hits' costs back to the current window or bucket
    /// (`is_negative_hits`). Never denies.
    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError>;

    /// Settles a reservation: if its record still exists, deletes it and
    /// applies `ops` in one atomic step, and returns `true`; if it is gone
    /// (settled before, or expired) changes nothing and returns `false`.
    async fn settle(
        &self,
        record_key: &str,
        holder: &str,
        ops: &[SettleOp],
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Reads a reservation record, for a settle that arrives at another
    /// instance than the one that reserved.
    async fn record(&self, record_key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Takes a slice of a rate counter for this instance's lease
    /// (`arith::grant`): up to `want`, in whole multiples of the hit's cost,
    /// at most its fair share over `instances`. Concurrency slots are never
    /// leased: asking for them is a protocol error.
    async fn grant(
        &self,
        _hit: &Hit,
        _want: u64,
        _instances: u64,
        _now_ms: u64,
    ) -> Result<Grant, StoreError> {
        Err(StoreError::Protocol(format!(
            "the {} store does not lease",
            self.kind()
        )))
    }

    /// Registers (or refreshes) `instance` among those sharing the store,
    /// forgets instances silent for longer than `evict_after_ms`, and says
    /// how many are live. A store nobody shares has one instance: this one.
    async fn heartbeat(
        &self,
        _instance: &str,
        _evict_after_ms: u64,
        _now_ms: u64,
    ) -> Result<u64, StoreError> {
        Ok(1)
    }

    /// Removes `instance` from the shared registry (graceful shutdown).
    async fn leave(&self, _instance: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Checks that the store answers (a shared store's health probe).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Tells the other instances sharing this store that these counters
    /// (keys without their window) have capacity again, so requests waiting
    /// for them there ask at once. A store nobody shares has no one to tell.
    async fn announce_freed(&self, _keys: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The counters other instances announce as freed, as they come: one
    /// subscription per instance, not one per waiter. `None` when nobody
    /// else shares this store.
    fn freed_by_others(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<String>>> {
        None
    }

    /// Whether other instances share these counters (and so must hear of
    /// capacity freed here).
    fn is_shared(&self) -> bool {
        false
    }

    /// A label for metrics and logs: `memory` or `redis`.
    fn kind(&self) -> &'static str;
}
