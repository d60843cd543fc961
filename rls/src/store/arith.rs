//! Window and bucket arithmetic, the single definition of what a hit does.
//!
//! The memory store calls these functions; `lua/take.lua` is a line-by-line
//! transcription (the shared store suite holds them to identical answers).
//! Everything is integer: a token bucket's level is kept in "scaled" units,
//! tokens × ticks-per-period, so refill is `elapsed_ticks × amount` with no
//! fractions, and every value stays below 2^53, exact in a Lua double.

use crate::rules::{Algorithm, Limit};
use std::collections::BTreeMap;

/// What one hit found (and, if the request was admitted, left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitState {
    /// This hit does not fit: the counter would pass its limit.
    pub over: bool,
    /// Whole hits still available after this request.
    pub remaining: u64,
    /// Until the window resets or the bucket is full again.
    pub reset_after_ms: u64,
    /// Until this hit's cost would fit (equal to `reset_after_ms` for a
    /// window, or for a cost larger than the whole limit).
    pub retry_after_ms: u64,
}

/// Stored state of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// Hits taken in one fixed window (the window is part of the key).
    Window { count: u64 },
    /// A token bucket: scaled level (negative = debt from an overage) and
    /// the tick it was last refilled at.
    Bucket { level: i64, tick: u64 },
    /// Concurrency slots: holder id → deadline (ms). A holder past its
    /// deadline no longer counts, so a crashed instance leaks nothing.
    Slots(BTreeMap<String, u64>),
    /// A reservation record, opaque to the store.
    Record(Vec<u8>),
}

/// The key suffix that separates fixed windows; buckets have none.
pub fn key_suffix(limit: &Limit, now_ms: u64) -> Option<u64> {
    match limit.algorithm {
        Algorithm::FixedWindow => Some(window_start(limit, now_ms) / 1000),
        Algorithm::TokenBucket => None,
    }
}

pub fn window_start(limit: &Limit, now_ms: u64) -> u64 {
    now_ms - now_ms % limit.period.millis()
}

/// Applies `cost` to the counter (or only checks it, when `take` is false)
/// and returns the new cell, how long it must be kept, and the state.
pub fn hit(limit: &Limit, cell: Option<&Cell>, cost: u64, take: bool, now_ms: u64) -> Outcome {
    match limit.algorithm {
        Algorithm::FixedWindow => window_hit(limit, cell, cost, take, now_ms),
        Algorithm::TokenBucket => bucket_hit(limit, cell, cost, take, now_ms),
    }
}

/// Gives `cost` back: a window count goes down (not below zero), a bucket
/// refills (not above full).
pub fn give_back(limit: &Limit, cell: Option<&Cell>, cost: u64, now_ms: u64) -> Outcome {
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let count = window_count(cell).saturating_sub(cost);
            window_outcome(limit, count, false, now_ms)
        }
        Algorithm::TokenBucket => {
            let (level, tick) = refill(limit, cell, now_ms);
            let cap = capacity(limit);
            let level = level.saturating_add(scaled(limit, cost)).min(cap);
            bucket_outcome(limit, level, tick, false, scaled(limit, 0), now_ms)
        }
    }
}

/// A hit's result: the cell to store, its time to live, and what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub cell: Cell,
    pub ttl_ms: u64,
    pub state: HitState,
}

/// Charges `cost` whatever the limit says: an overage found after the
/// fact. A window may pass its limit; a bucket may go into debt, which
/// later refill pays off first.
pub fn charge(limit: &Limit, cell: Option<&Cell>, cost: u64, now_ms: u64) -> Outcome {
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let count = window_count(cell).saturating_add(cost);
            window_outcome(limit, count, false, now_ms)
        }
        Algorithm::TokenBucket => {
            let (level, tick) = refill(limit, cell, now_ms);
            let level = level.saturating_sub(scaled(limit, cost));
            bucket_outcome(limit, level, tick, false, 0, now_ms)
        }
    }
}

/// Counts `cost` whatever the limit says, as envoyproxy/ratelimit's
/// `INCRBY` does: `over` says whether the hit did not fit, and the count
/// (or the bucket's debt) keeps it, so later hits see it.
pub fn count(limit: &Limit, cell: Option<&Cell>, cost: u64, now_ms: u64) -> Outcome {
    let over = hit(limit, cell, cost, false, now_ms).state.over;
    let mut out = charge(limit, cell, cost, now_ms);
    out.state.over = over;
    if over {
        out.state.retry_after_ms = out.state.reset_after_ms;
    }
    out
}

/// Gives `cost` back to the window or bucket it was taken from. A window
/// whose counter is gone has ended: the refund is dropped (`None`), as it
/// would otherwise inflate a window that no longer exists. An absent bucket
/// is full: nothing to give back either.
pub fn refund(limit: &Limit, cell: Option<&Cell>, cost: u64, now_ms: u64) -> Option<Outcome> {
    cell?;
    Some(give_back(limit, cell, cost, now_ms))
}

/// Checks (and, when `take`, takes) `cost` slots of `max` for `holder`
/// until `deadline_ms`. Holders past their deadline are dropped first.
pub fn slots_hit(
    max: u64,
    cell: Option<&Cell>,
    cost: u64,
    take: bool,
    holder: &str,
    deadline_ms: u64,
    now_ms: u64,
) -> Outcome {
    let mut holders = match cell {
        Some(Cell::Slots(h)) => h.clone(),
        _ => BTreeMap::new(),
    };
    holders.retain(|_, d| *d > now_ms);
    let held = holders.len() as u64;
    let over = held.saturating_add(cost) > max;
    if take && !over && cost > 0 {
        holders.insert(holder.to_string(), deadline_ms);
    }
    slots_outcome(max, holders, over, now_ms)
}

/// Frees `holder`'s slot.
pub fn release(max: u64, cell: Option<&Cell>, holder: &str, now_ms: u64) -> Outcome {
    let mut holders = match cell {
        Some(Cell::Slots(h)) => h.clone(),
        _ => BTreeMap::new(),
    };
    holders.remove(holder);
    holders.retain(|_, d| *d > now_ms);
    slots_outcome(max, holders, false, now_ms)
}

/// Slots have no window: a denied request may retry as soon as any
/// holder finishes, so one second is suggested.
pub const SLOT_RETRY_MS: u64 = 1_000;

fn slots_outcome(max: u64, holders: BTreeMap<String, u64>, over: bool, now_ms: u64) -> Outcome {
    let last = holders.values().copied().max().unwrap_or(now_ms + 1);
    let remaining = max.saturating_sub(holders.len() as u64);
    Outcome {
        ttl_ms: last.saturating_sub(now_ms).max(1),
        cell: Cell::Slots(holders),
        state: HitState {
            over,
            remaining,
            reset_after_ms: 0,
            retry_after_ms: if over { SLOT_RETRY_MS } else { 0 },
        },
    }
}

fn window_count(cell: Option<&Cell>) -> u64 {
    match cell {
        Some(Cell::Window { count }) => *count,
        _ => 0,
    }
}

fn window_hit(limit: &Limit, cell: Option<&Cell>, cost: u64, take: bool, now_ms: u64) -> Outcome {
    let count = window_count(cell);
    let over = count.saturating_add(cost) > limit.amount;
    let after = if take && !over { count + cost } else { count };
    window_outcome(limit, after, over, now_ms)
}

fn window_outcome(limit: &Limit, count: u64, over: bool, now_ms: u64) -> Outcome {
    let end = window_start(limit, now_ms) + limit.period.millis();
    let reset = end - now_ms;
    Outcome {
        cell: Cell::Window { count },
        ttl_ms: reset,
        state: HitState {
            over,
            remaining: limit.amount.saturating_sub(count),
            reset_after_ms: reset,
            retry_after_ms: reset,
        },
    }
}

fn capacity(limit: &Limit) -> i64 {
    // Limit::validate keeps amount × ticks below 2^53.
    (limit.amount * limit.period.ticks()) as i64
}

fn scaled(limit: &Limit, cost: u64) -> i64 {
    i64::try_from(cost.saturating_mul(limit.period.ticks())).unwrap_or(i64::MAX)
}

/// Level and tick after refilling up to now. An absent bucket is full; a
/// clock that went backwards refills nothing.
fn refill(limit: &Limit, cell: Option<&Cell>, now_ms: u64) -> (i64, u64) {
    let now_tick = now_ms / limit.period.tick_millis();
    let cap = capacity(limit);
    match cell {
        Some(Cell::Bucket { level, tick }) if *tick < now_tick => {
            let gained = (now_tick - *tick).saturating_mul(limit.amount);
            let gained = i64::try_from(gained).unwrap_or(i64::MAX);
            (level.saturating_add(gained).min(cap), now_tick)
        }
        Some(Cell::Bucket { level, tick }) => (*level, *tick),
        _ => (cap, now_tick),
    }
}

fn bucket_hit(limit: &Limit, cell: Option<&Cell>, cost: u64, take: bool, now_ms: u64) -> Outcome {
    let (level, tick) = refill(limit, cell, now_ms);
    let need = scaled(limit, cost);
    let over = level < need;
    let level = if take && !over { level - need } else { level };
    bucket_outcome(limit, level, tick, over, need, now_ms)
}

/// Milliseconds from `now_ms` until the bucket holds `want` (scaled).
fn time_to_level(limit: &Limit, level: i64, want: i64, tick: u64, now_ms: u64) -> u64 {
    if level >= want {
        return 0;
    }
    let k = limit.period.tick_millis();
    let missing = (want - level) as u64;
    let ticks = missing.div_ceil(limit.amount);
    ((tick + ticks) * k).saturating_sub(now_ms)
}

fn bucket_outcome(
    limit: &Limit,
    level: i64,
    tick: u64,
    over: bool,
    need: i64,
    now_ms: u64,
) -> Outcome {
    let cap = capacity(limit);
    let to_full = time_to_level(limit, level, cap, tick, now_ms);
    let retry = if need > cap {
        to_full
    } else {
        time_to_level(limit, level, need, tick, now_ms)
    };
    Outcome {
        cell: Cell::Bucket { level, tick },
        // A bucket that is full again is the same as no bucket at all.
        ttl_ms: to_full.max(1),
        state: HitState {
            over,
            remaining: (level.max(0) as u64) / limit.period.ticks(),
            reset_after_ms: to_full,
            retry_after_ms: retry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Period;
    use proptest::prelude::*;

    fn limit(amount: u64, period: Period, algorithm: Algorithm) -> Limit {
        Limit {
            amount,
            period,
            algorithm,
        }
    }

    #[test]
    fn a_window_allows_exactly_its_limit_and_resets_on_the_boundary() {
        let l = limit(3, Period::Minute, Algorithm::FixedWindow);
        let t0 = 120_000 + 59_000; // 1 s before the minute ends
        let mut cell = None;
        for i in 0..3 {
            let o = hit(&l, cell.as_ref(), 1, true, t0);
            assert!(!o.state.over, "hit {i}");
            assert_eq!(o.state.remaining, 2 - i);
            assert_eq!(o.state.reset_after_ms, 1_000);
            cell = Some(o.cell);
        }
        let o = hit(&l, cell.as_ref(), 1, true, t0);
        assert!(o.state.over);
        assert_eq!(
            o.cell,
            Cell::Window { count: 3 },
            "a denied hit takes nothing"
        );
        assert_eq!(key_suffix(&l, t0), Some(120));
        assert_eq!(
            key_suffix(&l, t0 + 1_000),
            Some(180),
            "the next window is a new key"
        );
    }

    #[test]
    fn cost_zero_checks_without_taking() {
        let l = limit(2, Period::Second, Algorithm::FixedWindow);
        let o = hit(&l, Some(&Cell::Window { count: 2 }), 0, true, 0);
        assert!(!o.state.over);
        assert_eq!(o.cell, Cell::Window { count: 2 });
        let b = limit(2, Period::Second, Algorithm::TokenBucket);
        let o = hit(&b, None, 0, true, 0);
        assert_eq!(o.state.remaining, 2);
    }

    #[test]
    fn a_bucket_refills_continuously() {
        // 60 per minute = one per second.
        let l = limit(60, Period::Minute, Algorithm::TokenBucket);
        let o = hit(&l, None, 60, true, 10_000);
        assert!(!o.state.over);
        assert_eq!(o.state.remaining, 0);
        assert_eq!(o.state.reset_after_ms, 60_000);
        let denied = hit(&l, Some(&o.cell), 1, true, 10_500);
        assert!(denied.state.over);
        assert_eq!(denied.state.retry_after_ms, 500);
        let later = hit(&l, Some(&o.cell), 1, true, 11_000);
        assert!(!later.state.over, "one token refilled after one second");
        assert_eq!(later.state.remaining, 0);
    }

    #[test]
    fn a_cost_above_the_whole_limit_never_fits() {
        let l = limit(10, Period::Minute, Algorithm::TokenBucket);
        let o = hit(&l, None, 11, true, 0);
        assert!(o.state.over);
        assert_eq!(o.state.remaining, 10);
        assert_eq!(
            o.state.retry_after_ms, 0,
            "already full: nothing to wait for"
        );
    }

    #[test]
    fn refunds_go_to_their_window_and_overage_is_charged() {
        let w = limit(100, Period::Minute, Algorithm::FixedWindow);
        let taken = hit(&w, None, 80, true, 1_000).cell;
        let r = refund(&w, Some(&taken), 30, 2_000).unwrap();
        assert_eq!(r.cell, Cell::Window { count: 50 });
        assert!(
            refund(&w, None, 30, 61_000).is_none(),
            "the window ended: dropped"
        );
        let c = charge(&w, Some(&r.cell), 70, 3_000);
        assert_eq!(
            c.cell,
            Cell::Window { count: 120 },
            "an overage may pass the limit"
        );
        assert!(hit(&w, Some(&c.cell), 0, true, 3_000).state.over);
        let b = limit(60, Period::Minute, Algorithm::TokenBucket);
        let c = charge(&b, None, 90, 0);
        assert_eq!(c.state.remaining, 0);
        assert_eq!(
            c.state.reset_after_ms, 90_000,
            "30 tokens of debt, then 60 to refill"
        );
    }

    #[test]
    fn slots_expire_and_release() {
        let o = slots_hit(2, None, 1, true, "a", 10_000, 0);
        let o = slots_hit(2, Some(&o.cell), 1, true, "b", 5_000, 1);
        assert_eq!(o.state.remaining, 0);
        let denied = slots_hit(2, Some(&o.cell), 1, true, "c", 10_000, 2);
        assert!(denied.state.over);
        assert_eq!(denied.cell, o.cell);
        let later = slots_hit(2, Some(&o.cell), 1, true, "c", 10_000, 5_000);
        assert!(!later.state.over, "b's deadline passed");
        let freed = release(2, Some(&later.cell), "a", 5_001);
        assert_eq!(freed.state.remaining, 1);
        assert_eq!(
            release(2, Some(&freed.cell), "a", 5_002).state.remaining,
            1,
            "idempotent"
        );
    }

    #[test]
    fn give_back_is_bounded() {
        let w = limit(5, Period::Minute, Algorithm::FixedWindow);
        let o = give_back(&w, Some(&Cell::Window { count: 2 }), 5, 0);
        assert_eq!(o.cell, Cell::Window { count: 0 });
        let b = limit(5, Period::Minute, Algorithm::TokenBucket);
        let o = give_back(&b, None, 5, 0);
        assert_eq!(o.state.remaining, 5, "never above full");
    }

    fn any_limit() -> impl Strategy<Value = Limit> {
        (
            1u64..1_000_000,
            prop_oneof![
                Just(Period::Second),
                Just(Period::Minute),
                Just(Period::Hour),
                Just(Period::Day)
            ],
            prop_oneof![Just(Algorithm::FixedWindow), Just(Algorithm::TokenBucket)],
        )
            .prop_map(|(amount, period, algorithm)| limit(amount, period, algorithm))
    }

    proptest! {
        /// Within one window, or one instant of a bucket, the sum of admitted
        /// costs never exceeds the limit, and a denied hit changes nothing.
        #[test]
        fn admitted_never_exceeds_the_limit(l in any_limit(), costs in prop::collection::vec(0u64..2_000_000, 1..40), now in 0u64..4_000_000_000_000) {
            let mut cell = None;
            let mut admitted = 0u64;
            for c in costs {
                let o = hit(&l, cell.as_ref(), c, true, now);
                if o.state.over {
                    if let Some(before) = &cell { prop_assert_eq!(&o.cell, before); }
                } else {
                    admitted += c;
                }
                prop_assert!(admitted <= l.amount);
                prop_assert!(o.state.remaining <= l.amount);
                prop_assert_eq!(o.state.remaining, l.amount - admitted);
                cell = Some(o.cell);
            }
        }

        /// A bucket never holds more than its capacity, however time moves.
        #[test]
        fn bucket_level_stays_within_capacity(amount in 1u64..1_000_000, steps in prop::collection::vec((0u64..200_000, 0u64..2_000_000, any::<bool>()), 1..40)) {
            let l = limit(amount, Period::Minute, Algorithm::TokenBucket);
            let mut cell = None;
            let mut now = 1_700_000_000_000u64;
            for (dt, cost, refund) in steps {
                now += dt;
                let o = if refund { give_back(&l, cell.as_ref(), cost, now) } else { hit(&l, cell.as_ref(), cost, true, now) };
                if let Cell::Bucket { level, .. } = o.cell {
                    prop_assert!(level <= capacity(&l));
                    prop_assert!(level >= 0);
                }
                prop_assert!(o.state.remaining <= amount);
                prop_assert!(o.ttl_ms <= 60_000);
                cell = Some(o.cell);
            }
        }

        /// A denied bucket hit fits exactly `retry_after_ms` later, not one tick earlier.
        #[test]
        fn bucket_retry_after_is_exact(amount in 1u64..10_000, taken in 1u64..10_000, cost in 1u64..10_000, now in 1_000_000u64..2_000_000) {
            let l = limit(amount, Period::Minute, Algorithm::TokenBucket);
            let taken = taken.min(amount);
            let cell = hit(&l, None, taken, true, now).cell;
            let o = hit(&l, Some(&cell), cost, false, now);
            if o.state.over && cost <= amount {
                let at = now + o.state.retry_after_ms;
                prop_assert!(!hit(&l, Some(&cell), cost, false, at).state.over);
                prop_assert!(hit(&l, Some(&cell), cost, false, at - 1).state.over);
            }
        }
    }
}
