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

/// The start of the fixed window holding `now_ms` (epoch-aligned, or a
/// calendar day, week, month or year in the limit's zone).
pub fn window_start(limit: &Limit, now_ms: u64) -> u64 {
    limit.window(now_ms).0
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

/// A slice for one instance's lease: up to `want` of what the counter has
/// left, in whole multiples of `unit` (one request's cost), and at most the
/// instance's fair share, `floor(remaining / unit / instances)` units. The
/// slice is taken from the counter now, so nothing is granted twice; a
/// grant of 0 means too little is left to lease (decide in the store).
pub fn grant(
    limit: &Limit,
    cell: Option<&Cell>,
    unit: u64,
    want: u64,
    instances: u64,
    now_ms: u64,
) -> Granted {
    let unit = unit.max(1);
    let fair = |remaining: u64| {
        let units = (want / unit).min(remaining / unit / instances.max(1));
        units * unit
    };
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let count = window_count(cell);
            let slice = fair(limit.amount.saturating_sub(count));
            Granted {
                amount: slice,
                outcome: window_outcome(limit, count + slice, slice == 0, now_ms),
            }
        }
        Algorithm::TokenBucket => {
            let (level, tick) = refill(limit, cell, now_ms);
            let whole = (level.max(0) as u64) / limit.period.ticks();
            let slice = fair(whole);
            let level = level - scaled(limit, slice);
            Granted {
                amount: slice,
                outcome: bucket_outcome(limit, level, tick, slice == 0, 0, now_ms),
            }
        }
    }
}

/// What [`grant`] gave, and the counter after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub amount: u64,
    pub outcome: Outcome,
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
    // No holder left: the cell may go at once (the `max(1)` below).
    let last = holders.values().copied().max().unwrap_or(now_ms);
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
    let end = limit.window(now_ms).1;
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
/// clock that went backwards refills nothing and keeps the later tick. The
/// level is held to this limit's capacity even when no tick has passed:
/// the key does not name the amount, so a bucket left by a larger limit (a
/// reload lowered it) would otherwise give more than the new limit.
fn refill(limit: &Limit, cell: Option<&Cell>, now_ms: u64) -> (i64, u64) {
    let now_tick = now_ms / limit.period.tick_millis();
    let cap = capacity(limit);
    match cell {
        Some(Cell::Bucket { level, tick }) => {
            let gained = now_tick.saturating_sub(*tick).saturating_mul(limit.amount);
            let gained = i64::try_from(gained).unwrap_or(i64::MAX);
            (level.saturating_add(gained).min(cap), now_tick.max(*tick))
        }
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
    // A cost above the whole capacity never fits: retry when full.
    let retry = time_to_level(limit, level, need.min(cap), tick, now_ms);
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
            zone: crate::rules::Zone::Utc,
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

    // Boundary rules, one test each. Times are whole hours (a minute and a
    // second boundary too) unless a test says otherwise.
    const H: u64 = 1_800_000_000_000;

    fn window(count: u64) -> Cell {
        Cell::Window { count }
    }

    fn bucket(level: i64, tick: u64) -> Cell {
        Cell::Bucket { level, tick }
    }

    fn slots(holders: &[(&str, u64)]) -> Cell {
        Cell::Slots(holders.iter().map(|&(h, d)| (h.to_string(), d)).collect())
    }

    #[test]
    fn a_window_admits_the_hit_that_reaches_its_limit_and_not_one_unit_more() {
        let l = limit(10, Period::Minute, Algorithm::FixedWindow);
        let exact = hit(&l, Some(&window(7)), 3, true, H);
        assert!(!exact.state.over, "7 + 3 = 10 is within a limit of 10");
        assert_eq!(exact.cell, window(10));
        assert_eq!(exact.state.remaining, 0);
        let over = hit(&l, Some(&window(7)), 4, true, H);
        assert!(over.state.over, "7 + 4 = 11 passes a limit of 10");
        assert_eq!(over.cell, window(7), "a denied hit takes nothing");
        assert_eq!(over.state.remaining, 3);
        let full = window(10);
        assert!(
            !hit(&l, Some(&full), 0, true, H).state.over,
            "a check of a full window fits"
        );
        assert!(hit(&l, Some(&full), 1, true, H).state.over);
    }

    #[test]
    fn a_window_check_takes_nothing_even_when_it_fits() {
        let l = limit(10, Period::Minute, Algorithm::FixedWindow);
        let o = hit(&l, Some(&window(7)), 3, false, H);
        assert!(!o.state.over);
        assert_eq!(o.cell, window(7));
        assert_eq!(o.state.remaining, 3);
        assert!(hit(&l, Some(&window(7)), 4, false, H).state.over);
    }

    #[test]
    fn a_window_runs_from_its_first_to_its_last_millisecond() {
        let l = limit(5, Period::Minute, Algorithm::FixedWindow);
        let last = H + 59_999;
        assert_eq!(window_start(&l, H), H);
        assert_eq!(window_start(&l, last), H);
        assert_eq!(window_start(&l, last + 1), H + 60_000);
        assert_eq!(key_suffix(&l, H), Some(H / 1_000));
        assert_eq!(
            key_suffix(&l, last),
            Some(H / 1_000),
            "same window, same key"
        );
        assert_eq!(key_suffix(&l, last + 1), Some(H / 1_000 + 60));
        let first = hit(&l, None, 1, true, H);
        assert_eq!(
            first.state.reset_after_ms, 60_000,
            "the whole window is ahead"
        );
        assert_eq!(first.ttl_ms, 60_000);
        let end = hit(&l, Some(&first.cell), 5, true, last);
        assert!(end.state.over);
        assert_eq!(end.state.reset_after_ms, 1, "one millisecond left");
        assert_eq!(end.state.retry_after_ms, 1);
        assert_eq!(end.ttl_ms, 1);
        // Windows are aligned to the epoch, not to the hour: H is 8 h into
        // its UTC day.
        let day = limit(5, Period::Day, Algorithm::FixedWindow);
        assert_eq!(window_start(&day, H), H - 28_800_000);
        assert_eq!(hit(&day, None, 1, true, H).state.reset_after_ms, 57_600_000);
        assert_eq!(
            key_suffix(&limit(5, Period::Second, Algorithm::TokenBucket), H),
            None
        );
    }

    #[test]
    fn a_bucket_gives_its_last_token_and_not_one_more() {
        // 10 per second: 1 000 ticks of 1 ms, a token is 1 000 scaled units.
        let l = limit(10, Period::Second, Algorithm::TokenBucket);
        let t = H; // tick = H
        let all = hit(&l, None, 10, true, H);
        assert!(!all.state.over, "a full bucket gives its whole capacity");
        assert_eq!(all.cell, bucket(0, t));
        assert_eq!(all.state.remaining, 0);
        let three = bucket(3_000, t);
        let last = hit(&l, Some(&three), 3, true, H);
        assert!(!last.state.over, "3 tokens left, 3 asked");
        assert_eq!(last.cell, bucket(0, t));
        let more = hit(&l, Some(&three), 4, true, H);
        assert!(more.state.over);
        assert_eq!(more.cell, three, "a denied hit takes nothing");
        assert_eq!(more.state.remaining, 3);
        assert_eq!(
            more.state.retry_after_ms, 100,
            "one token is 100 ms of refill"
        );
        let check = hit(&l, Some(&three), 3, false, H);
        assert!(!check.state.over);
        assert_eq!(check.cell, three, "a check takes nothing");
    }

    #[test]
    fn a_bucket_refills_at_the_tick_not_a_millisecond_before() {
        // 3 600 per hour: one token per 1 s tick.
        let l = limit(3_600, Period::Hour, Algorithm::TokenBucket);
        let t = H / 1_000;
        let empty = bucket(0, t);
        let before = hit(&l, Some(&empty), 1, true, H + 999);
        assert!(before.state.over, "the next tick starts at H + 1 000");
        assert_eq!(before.state.retry_after_ms, 1);
        assert_eq!(before.cell, empty);
        let at = hit(&l, Some(&empty), 1, true, H + 1_000);
        assert!(!at.state.over, "one tick, one token");
        assert_eq!(at.cell, bucket(0, t + 1));
        let two = hit(&l, Some(&empty), 0, true, H + 2_500);
        assert_eq!(
            two.cell,
            bucket(7_200, t + 2),
            "two whole ticks, two tokens"
        );
        assert_eq!(two.state.remaining, 2);
    }

    #[test]
    fn a_bucket_never_refills_past_full() {
        let l = limit(3_600, Period::Hour, Algorithm::TokenBucket);
        let t = H / 1_000;
        let cap = 3_600 * 3_600;
        let o = hit(&l, Some(&bucket(cap - 1, t)), 0, true, H + 1_000);
        assert_eq!(o.cell, bucket(cap, t + 1));
        assert_eq!(o.state.remaining, 3_600);
        assert_eq!(o.state.reset_after_ms, 0, "full: nothing to wait for");
        assert_eq!(o.ttl_ms, 1, "a full bucket is the same as no bucket");
        let long = hit(&l, Some(&bucket(0, t)), 0, true, H + 86_400_000);
        assert_eq!(long.cell, bucket(cap, t + 86_400));
    }

    #[test]
    fn a_bucket_is_never_above_a_capacity_that_a_reload_lowered() {
        // The bucket was left by a limit of 1 000 per hour (the key does not
        // name the amount); the limit is now 100. Even in the same tick it
        // holds at most 100.
        let l = limit(100, Period::Hour, Algorithm::TokenBucket);
        let t = H / 1_000;
        let left = bucket(990 * 3_600, t);
        let o = hit(&l, Some(&left), 0, true, H);
        assert_eq!(o.state.remaining, 100);
        assert!(hit(&l, Some(&left), 101, true, H).state.over);
        let all = hit(&l, Some(&left), 100, true, H);
        assert!(!all.state.over);
        assert_eq!(all.cell, bucket(0, t));
    }

    #[test]
    fn a_bucket_refills_nothing_when_the_clock_goes_back() {
        let l = limit(3_600, Period::Hour, Algorithm::TokenBucket);
        let t = H / 1_000;
        let later = bucket(0, t + 5);
        let o = hit(&l, Some(&later), 1, true, H);
        assert!(o.state.over);
        assert_eq!(o.cell, later, "the later tick is kept");
        assert_eq!(
            o.state.retry_after_ms, 6_000,
            "the token comes a tick after the stored one"
        );
    }

    #[test]
    fn a_bucket_reports_whole_tokens_and_no_debt() {
        let l = limit(10, Period::Second, Algorithm::TokenBucket);
        let o = hit(&l, Some(&bucket(2_999, H)), 0, true, H);
        assert_eq!(o.state.remaining, 2, "2.999 tokens are 2 whole ones");
        let debt = hit(&l, Some(&bucket(-5_000, H)), 0, true, H);
        assert_eq!(debt.state.remaining, 0);
        assert_eq!(
            debt.state.reset_after_ms, 1_500,
            "5 of debt, then 10 to fill"
        );
    }

    #[test]
    fn a_bucket_retry_is_when_the_cost_fits_and_reset_when_it_is_full() {
        // 60 per minute: one token per second, 60 scaled units per 1 ms tick.
        let l = limit(60, Period::Minute, Algorithm::TokenBucket);
        let empty = bucket(0, H);
        let o = hit(&l, Some(&empty), 5, true, H);
        assert_eq!(o.state.retry_after_ms, 5_000);
        assert_eq!(o.state.reset_after_ms, 60_000);
        assert_eq!(o.ttl_ms, 60_000);
        let whole = hit(&l, Some(&empty), 60, true, H);
        assert_eq!(
            whole.state.retry_after_ms, 60_000,
            "the whole capacity: when full"
        );
        let beyond = hit(&l, Some(&empty), 61, true, H);
        assert!(beyond.state.over);
        assert_eq!(
            beyond.state.retry_after_ms, 60_000,
            "more than the capacity never fits: retry when full"
        );
        let half = hit(&l, Some(&bucket(30 * 60_000, H)), 0, true, H);
        assert_eq!(half.state.reset_after_ms, 30_000);
        assert_eq!(half.state.retry_after_ms, 0, "a check fits at once");
        // A long tick: the time is counted from the stored tick, not from now.
        let hour = limit(3_600, Period::Hour, Algorithm::TokenBucket);
        let o = hit(&hour, Some(&bucket(0, H / 1_000)), 1, true, H + 400);
        assert_eq!(o.state.retry_after_ms, 600);
        assert_eq!(o.state.reset_after_ms, 3_600_000 - 400);
    }

    #[test]
    fn the_last_slot_is_taken_and_one_more_is_denied() {
        let two = slots(&[("a", H + 10), ("b", H + 10)]);
        let o = slots_hit(3, Some(&two), 1, true, "c", H + 20, H);
        assert!(!o.state.over, "2 held + 1 = 3 of 3");
        assert_eq!(
            o.cell,
            slots(&[("a", H + 10), ("b", H + 10), ("c", H + 20)])
        );
        assert_eq!(o.state.remaining, 0);
        assert_eq!(o.state.retry_after_ms, 0);
        let denied = slots_hit(3, Some(&o.cell), 1, true, "d", H + 20, H);
        assert!(denied.state.over);
        assert_eq!(denied.cell, o.cell, "a denied hit holds nothing");
        assert_eq!(denied.state.remaining, 0);
        assert_eq!(denied.state.retry_after_ms, SLOT_RETRY_MS);
        assert_eq!(denied.state.reset_after_ms, 0, "slots have no window");
        let check = slots_hit(3, Some(&o.cell), 0, true, "", H, H);
        assert!(!check.state.over, "a check of full slots fits");
    }

    #[test]
    fn a_check_holds_no_slot() {
        let o = slots_hit(2, Some(&slots(&[("a", H + 10)])), 0, true, "x", H + 10, H);
        assert!(!o.state.over);
        assert_eq!(o.cell, slots(&[("a", H + 10)]));
        assert_eq!(o.state.remaining, 1);
        let asked = slots_hit(2, Some(&slots(&[("a", H + 10)])), 1, false, "x", H + 10, H);
        assert_eq!(
            asked.cell,
            slots(&[("a", H + 10)]),
            "take = false holds nothing"
        );
    }

    #[test]
    fn a_holder_counts_until_its_deadline_and_not_at_it() {
        let held = slots(&[("a", H + 1), ("b", H)]);
        let o = slots_hit(2, Some(&held), 0, true, "", H, H);
        assert_eq!(o.cell, slots(&[("a", H + 1)]), "b's deadline is now: gone");
        assert_eq!(o.state.remaining, 1);
        let r = release(2, Some(&held), "c", H);
        assert_eq!(
            r.cell,
            slots(&[("a", H + 1)]),
            "a release drops the expired too"
        );
        assert_eq!(r.state.remaining, 1);
        let a_ends = slots_hit(1, Some(&held), 1, true, "c", H + 5, H + 1);
        assert!(!a_ends.state.over, "at a's deadline its slot is free");
    }

    #[test]
    fn a_release_frees_its_holder_only_and_once() {
        let held = slots(&[("a", H + 10), ("b", H + 10)]);
        let r = release(3, Some(&held), "a", H);
        assert_eq!(r.cell, slots(&[("b", H + 10)]));
        assert_eq!(r.state.remaining, 2);
        assert!(!r.state.over);
        assert_eq!(release(3, Some(&r.cell), "a", H).cell, r.cell);
        assert_eq!(release(3, None, "a", H).state.remaining, 3);
    }

    #[test]
    fn slots_are_kept_until_their_last_deadline() {
        let o = slots_hit(
            3,
            Some(&slots(&[("a", H + 500)])),
            1,
            true,
            "b",
            H + 2_000,
            H,
        );
        assert_eq!(o.ttl_ms, 2_000);
        let none = release(3, Some(&slots(&[("a", H + 500)])), "a", H);
        assert_eq!(none.ttl_ms, 1, "nothing held: the cell may go at once");
        assert_eq!(none.cell, slots(&[]));
    }

    #[test]
    fn giving_back_stops_at_empty_for_a_window_and_at_full_for_a_bucket() {
        let w = limit(10, Period::Minute, Algorithm::FixedWindow);
        let o = give_back(&w, Some(&window(5)), 2, H);
        assert_eq!(o.cell, window(3));
        assert_eq!(o.state.remaining, 7);
        assert!(!o.state.over);
        assert_eq!(give_back(&w, Some(&window(5)), 9, H).cell, window(0));
        let b = limit(10, Period::Second, Algorithm::TokenBucket);
        let o = give_back(&b, Some(&bucket(8_000, H)), 2, H);
        assert_eq!(o.cell, bucket(10_000, H), "exactly full");
        assert_eq!(o.state.remaining, 10);
        assert_eq!(o.state.retry_after_ms, 0);
        assert_eq!(
            give_back(&b, Some(&bucket(8_000, H)), 3, H).cell,
            bucket(10_000, H)
        );
        let partial = give_back(&b, Some(&bucket(1_000, H)), 2, H);
        assert_eq!(partial.cell, bucket(3_000, H));
        assert_eq!(partial.state.reset_after_ms, 700);
    }

    #[test]
    fn a_charge_passes_the_limit_and_a_bucket_pays_its_debt_first() {
        let w = limit(10, Period::Minute, Algorithm::FixedWindow);
        let o = charge(&w, Some(&window(9)), 3, H);
        assert_eq!(o.cell, window(12));
        assert!(!o.state.over, "a charge is never denied");
        assert_eq!(o.state.remaining, 0);
        let b = limit(60, Period::Minute, Algorithm::TokenBucket);
        let o = charge(&b, Some(&bucket(0, H)), 1, H);
        assert_eq!(o.cell, bucket(-60_000, H));
        assert!(!o.state.over);
        assert_eq!(o.state.remaining, 0);
        assert_eq!(o.state.retry_after_ms, 1_000, "until the debt is paid");
        assert_eq!(o.state.reset_after_ms, 61_000);
    }

    #[test]
    fn a_refund_needs_the_counter_it_was_taken_from() {
        let w = limit(10, Period::Minute, Algorithm::FixedWindow);
        assert_eq!(refund(&w, None, 3, H), None, "the window ended");
        let o = refund(&w, Some(&window(5)), 3, H).expect("the window is live");
        assert_eq!(o.cell, window(2));
        let b = limit(10, Period::Second, Algorithm::TokenBucket);
        assert_eq!(refund(&b, None, 3, H), None, "an absent bucket is full");
        let o = refund(&b, Some(&bucket(0, H)), 3, H).expect("the bucket is live");
        assert_eq!(o.cell, bucket(3_000, H));
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
