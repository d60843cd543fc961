//! Where counters live. One small trait, two implementations that give the
//! same answers for the same calls: `memory` (one process) and `redis`
//! (shared by many instances, one Lua script per decision).

pub mod arith;
mod breaker;
mod error;
mod memory;
mod redis;
mod redis_errors;
mod redis_freed;
mod redis_link;
mod repeats;

pub use arith::HitState;
pub use arith::SLOT_RETRY_MS;
pub use breaker::{Breaker, Health, FAILURES_TO_OPEN, LOG_SUMMARY_EVERY};
pub use error::{Refusal, StoreError};
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

    /// A label for metrics and logs: `memory` or `redis`.
    fn kind(&self) -> &'static str;
}

/// The full key of a counter at `now_ms`: the window start is part of a
/// fixed window's key, so a new window starts from an absent key.
pub fn counter_key(key: &str, counter: &Counter, now_ms: u64) -> String {
    match counter {
        Counter::Rate(limit) => match arith::key_suffix(limit, now_ms) {
            Some(window) => {
                // By hand rather than `format!`: this runs for every hit.
                let mut out = String::with_capacity(key.len() + 21);
                out.push_str(key);
                out.push(':');
                push_decimal(&mut out, window);
                out
            }
            None => key.to_string(),
        },
        Counter::Slots { .. } => key.to_string(),
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Algorithm, Period};

    #[test]
    fn window_keys_end_in_the_window_start_in_seconds() {
        let limit = Limit {
            amount: 1,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
        };
        let key = counter_key("tg:{r}:minutew:v", &Counter::Rate(limit), 1_700_000_059_999);
        assert_eq!(key, "tg:{r}:minutew:v:1700000040");
        let mut zero = String::new();
        push_decimal(&mut zero, 0);
        assert_eq!(zero, "0");
        let mut max = String::new();
        push_decimal(&mut max, u64::MAX);
        assert_eq!(max, u64::MAX.to_string());
    }
}
