//! Leases: slices of shared budgets that this instance holds and decides
//! from locally, with no round trip.
//!
//! A slice is **taken from the shared counter when granted** (one Lua call,
//! `store::arith::grant`), so no capacity is ever granted twice and the
//! store's count always covers every instance's slices: exactness never
//! depends on the instances agreeing. The slice size follows the seed
//! design, the fair share of what remains over the live instances in units
//! of the request's cost (`floor(remaining / cost / instances)`), bounded
//! by this instance's own demand: it starts at a few requests and doubles
//! while a slice lasts less than half the lease TTL, halves when it lasts
//! longer than the TTL, and never exceeds `max_slice` of the limit. Near
//! exhaustion the fair share falls below one request and the grant is
//! refused: from then on each decision is one store call, so the last units
//! of a budget go to whoever asks, exactly.
//!
//! A slice of a fixed window is never used in the next window (its key
//! ends in its window). Unused capacity goes back to the store when a
//! slice has been idle for the lease TTL, and at shutdown; a slice whose
//! window ended is dropped (that window is over). What a killed instance
//! held and had not used stays charged until its window ends (or, for a
//! bucket, is refilled): slices are sized to about one TTL of this
//! instance's own traffic, which bounds it.
//!
//! The table is a `std::sync::Mutex` over a map: a decision's critical
//! section is a lookup and two additions, never across an `.await`. One
//! grant per counter is in flight at a time; the others wait for it on a
//! `watch` channel (closed when it is done), so a burst on an empty slice
//! asks the store once, not once per request.

use crate::metrics::Metrics;
use crate::rules::{Algorithm, LeasePolicy, Limit};
use crate::store::{keys, Counter, Hit, HitState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// This instance, and how many tollgate instances share the store as the
/// registry last saw them (1 until it has, and for a store nobody shares).
#[derive(Debug)]
pub struct Instances {
    pub id: String,
    live: AtomicU64,
}

impl Instances {
    pub fn new(id: String) -> Instances {
        Instances {
            id,
            live: AtomicU64::new(1),
        }
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    pub fn set_live(&self, n: u64) {
        self.live.store(n.max(1), Ordering::Relaxed);
    }
}

/// One slice held for one counter (a fixed window's slice is keyed by its
/// window).
#[derive(Debug)]
struct Slice {
    /// The counter's key without its window, and its limit: what a return
    /// gives back to.
    base: String,
    limit: Limit,
    granted: u64,
    used: u64,
    /// A fixed window's end: the slice is void from then on.
    ends_ms: Option<u64>,
    /// When it was last granted to and last used (for sizing and idle
    /// return).
    granted_ms: u64,
    used_ms: u64,
    /// The next slice to ask for.
    next_want: u64,
    /// What the store had left after the last grant (others' slices and
    /// takes since are not seen: a lower bound, for `remaining`).
    store_remaining: u64,
    store_reset_ms: u64,
    /// A grant for this counter is on its way: wait for it (the sender
    /// is dropped when it is done).
    granting: Option<watch::Receiver<()>>,
    /// Until then the store decides (the last grant was refused: too
    /// little left to lease).
    refused_until_ms: u64,
}

/// What a local decision found.
#[derive(Debug)]
pub enum Local {
    /// Taken from the slice (count it back with [`Leases::undo`] if the
    /// request is denied elsewhere).
    Taken(HitState),
    /// The slice cannot hold this hit: ask the store for a slice of `want`,
    /// then report with [`Leases::granted`] or [`Leases::grant_failed`];
    /// dropping `done` wakes whoever waits for this grant.
    Grant { want: u64, done: watch::Sender<()> },
    /// A grant is on its way: wait for it (`changed()` returns when it is
    /// done), then try again.
    Wait(watch::Receiver<()>),
    /// The store granted nothing a moment ago (too little left to lease):
    /// decide this hit in the store.
    Store,
}

/// Capacity to give back to the store.
#[derive(Debug, PartialEq, Eq)]
pub struct Return {
    pub hit: Hit,
}

/// This instance's slices.
pub struct Leases {
    settings: LeasePolicy,
    instances: Arc<Instances>,
    slices: Mutex<HashMap<String, Slice>>,
    metrics: Arc<Metrics>,
}

impl Leases {
    pub fn new(settings: LeasePolicy, instances: Arc<Instances>, metrics: Arc<Metrics>) -> Leases {
        Leases {
            settings,
            instances,
            slices: Mutex::default(),
            metrics,
        }
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slice>> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        self.slices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit of a hit that can be decided from a slice: rate counters
    /// only (concurrency slots are held per request, in the store).
    pub fn leasable(hit: &Hit) -> Option<Limit> {
        match hit.counter {
            Counter::Rate(l) => Some(l),
            Counter::Slots { .. } => None,
        }
    }

    /// Takes `hit` (a rate counter of `limit`) from its slice if the slice
    /// holds it.
    pub fn take(&self, hit: &Hit, limit: Limit, now: u64) -> Local {
        let key = keys::counter_key(&hit.key, &hit.counter, now);
        let mut slices = self.lock();
        let slice = slices.entry(key).or_insert_with(|| Slice {
            base: hit.key.clone(),
            limit,
            granted: 0,
            used: 0,
            ends_ms: window_end(&limit, now),
            granted_ms: now,
            used_ms: now,
            next_want: self.settings.first_slice.saturating_mul(hit.cost.max(1)),
            store_remaining: 0,
            store_reset_ms: 0,
            granting: None,
            refused_until_ms: 0,
        });
        if slice.used.saturating_add(hit.cost) <= slice.granted {
            slice.used += hit.cost;
            slice.used_ms = now;
            return Local::Taken(state(slice, now));
        }
        if let Some(rx) = &slice.granting {
            // A granter that went away (its request was dropped mid-call)
            // closed the channel without reporting: ask again.
            if rx.has_changed().is_ok() {
                return Local::Wait(rx.clone());
            }
            slice.granting = None;
        }
        if now < slice.refused_until_ms {
            return Local::Store;
        }
        let (done, rx) = watch::channel(());
        slice.granting = Some(rx);
        let unit = hit.cost.max(1);
        let cap = ((limit.amount as f64 * self.settings.max_slice) as u64).max(unit);
        Local::Grant {
            want: slice.next_want.clamp(unit, cap),
            done,
        }
    }

    /// Adds what the store granted (maybe 0) to the slice of `hit`; the
    /// caller then drops its `done`, waking whoever waited. Resizes the
    /// next ask by how long the last slice lasted.
    pub fn granted(&self, hit: &Hit, amount: u64, store: HitState, now: u64) {
        let key = keys::counter_key(&hit.key, &hit.counter, now);
        let mut slices = self.lock();
        let Some(slice) = slices.get_mut(&key) else {
            return;
        };
        slice.granting = None;
        if amount == 0 {
            // Near exhaustion: one store call per decision for a while,
            // so the last units go exactly to whoever asks.
            slice.refused_until_ms = now + self.settings.ttl.as_millis() as u64;
            return;
        }
        let lasted = Duration::from_millis(now.saturating_sub(slice.granted_ms));
        let unit = hit.cost.max(1);
        if slice.granted > 0 && lasted < self.settings.ttl / 2 {
            slice.next_want = slice.next_want.saturating_mul(2);
        } else if lasted > self.settings.ttl {
            slice.next_want = (slice.next_want / 2).max(unit);
        }
        slice.granted += amount;
        slice.granted_ms = now;
        slice.store_remaining = store.remaining;
        slice.store_reset_ms = now + store.reset_after_ms;
        self.metrics.leases.granted(amount);
    }

    /// A grant failed: the next request asks again (waiters wake when the
    /// caller drops its `done`).
    pub fn grant_failed(&self, hit: &Hit, now: u64) {
        let key = keys::counter_key(&hit.key, &hit.counter, now);
        if let Some(slice) = self.lock().get_mut(&key) {
            slice.granting = None;
        }
    }

    /// Gives back a hit taken from its slice by a request denied elsewhere.
    pub fn undo(&self, hit: &Hit, now: u64) {
        let key = keys::counter_key(&hit.key, &hit.counter, now);
        if let Some(slice) = self.lock().get_mut(&key) {
            slice.used = slice.used.saturating_sub(hit.cost);
        }
    }

    /// Drops slices whose window ended and takes out the unused capacity
    /// of slices idle for the TTL (all of it when `all`, at shutdown), for
    /// the caller to give back to the store.
    pub fn expire(&self, now: u64, all: bool) -> Vec<Return> {
        let ttl = self.settings.ttl.as_millis() as u64;
        let mut out = Vec::new();
        let mut dropped = 0;
        self.lock().retain(|_, s| {
            if s.granting.is_some() {
                return true;
            }
            let unused = s.granted - s.used.min(s.granted);
            if s.ends_ms.is_some_and(|end| end <= now) {
                dropped += unused;
                return false;
            }
            if all || now.saturating_sub(s.used_ms.max(s.granted_ms)) >= ttl {
                if unused > 0 {
                    out.push(Return {
                        hit: Hit {
                            key: s.base.clone(),
                            counter: Counter::Rate(s.limit),
                            cost: unused,
                            enforce: true,
                        },
                    });
                }
                return false;
            }
            true
        });
        // (Nothing dropped adds 0.)
        self.metrics.leases.expired(dropped);
        out
    }

    /// Capacity granted and not used, over every slice (for the gauge).
    pub fn held(&self) -> u64 {
        self.lock()
            .values()
            .map(|s| s.granted - s.used.min(s.granted))
            .sum()
    }
}

/// A fixed window's end; a bucket's slice has none.
fn window_end(limit: &Limit, now: u64) -> Option<u64> {
    match limit.algorithm {
        Algorithm::FixedWindow => Some(limit.window(now).1),
        Algorithm::TokenBucket => None,
    }
}

/// The state a local decision answers: what the slice still holds plus
/// what the store had left at the last grant (a lower bound of what
/// remains: other instances' unused slices are not seen).
fn state(s: &Slice, now: u64) -> HitState {
    let reset = match s.ends_ms {
        Some(end) => end.saturating_sub(now),
        None => s.store_reset_ms.saturating_sub(now),
    };
    HitState {
        over: false,
        remaining: (s.granted - s.used.min(s.granted)).saturating_add(s.store_remaining),
        reset_after_ms: reset,
        retry_after_ms: 0,
    }
}

/// Gives back idle slices' unused capacity every half TTL, and all of it
/// when `cancel` fires (shutdown).
pub async fn return_unused(
    counters: super::counters::Counters,
    leases: Arc<Leases>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let every = (leases.settings.ttl / 2).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        let now = counters.now_ms();
        let returns = leases.expire(now, all);
        if !returns.is_empty() {
            let hits: Vec<Hit> = returns.into_iter().map(|r| r.hit).collect();
            let amount = hits.iter().map(|h| h.cost).sum();
            match counters.give_back(&hits, now).await {
                Ok(_) => leases.metrics.leases.returned(amount),
                // Left charged until its window ends (a bucket refills).
                Err(e) => {
                    tracing::warn!(error = %e, amount, "could not give unused leased capacity back")
                }
            }
        }
        let held = i64::try_from(leases.held()).unwrap_or(i64::MAX);
        leases.metrics.leases.held.set(held);
        if all {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Period;

    /// The start of a minute (and of an hour), in ms.
    const T0: u64 = 1_800_000_000_000;

    /// TTL 2 s, slices at most 5% of the limit, first slice 8 requests.
    fn leases() -> Leases {
        Leases::new(
            LeasePolicy::default(),
            Arc::new(Instances::new("me".into())),
            Arc::new(Metrics::default()),
        )
    }

    fn hit(amount: u64, algorithm: Algorithm, cost: u64) -> Hit {
        Hit {
            key: "tg:{t}:k".into(),
            counter: Counter::Rate(Limit::new(amount, Period::Minute, algorithm)),
            cost,
            enforce: true,
        }
    }

    fn window(amount: u64, cost: u64) -> Hit {
        hit(amount, Algorithm::FixedWindow, cost)
    }

    fn limit(h: &Hit) -> Limit {
        Leases::leasable(h).expect("a rate counter")
    }

    /// What the next ask wants; the grant stays open (no answer yet).
    fn ask(l: &Leases, h: &Hit, now: u64) -> (u64, watch::Sender<()>) {
        match l.take(h, limit(h), now) {
            Local::Grant { want, done } => (want, done),
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn store(remaining: u64, reset_after_ms: u64) -> HitState {
        HitState {
            over: false,
            remaining,
            reset_after_ms,
            retry_after_ms: 0,
        }
    }

    /// Asks for a slice and answers it with `amount`, at `now`.
    fn grant(l: &Leases, h: &Hit, amount: u64, now: u64) -> u64 {
        let (want, _done) = ask(l, h, now);
        l.granted(h, amount, store(0, 0), now);
        want
    }

    fn taken(l: &Leases, h: &Hit, now: u64) -> HitState {
        match l.take(h, limit(h), now) {
            Local::Taken(st) => st,
            other => panic!("expected a local decision, got {other:?}"),
        }
    }

    fn metric(l: &Leases, name: &str) -> u64 {
        l.metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn instances_count_at_least_this_one() {
        let i = Instances::new("me".into());
        assert_eq!(i.live(), 1, "until the registry has been read");
        i.set_live(3);
        assert_eq!(i.live(), 3);
        i.set_live(0);
        assert_eq!(i.live(), 1, "this instance is alive");
    }

    #[test]
    fn only_rate_counters_are_leased() {
        let h = window(100, 1);
        assert_eq!(
            Leases::leasable(&h),
            Some(Limit::new(100, Period::Minute, Algorithm::FixedWindow))
        );
        let slots = Hit {
            counter: Counter::Slots { max: 4 },
            ..h
        };
        assert_eq!(Leases::leasable(&slots), None);
    }

    #[test]
    fn the_first_ask_is_the_first_slice_in_requests_of_the_hits_cost() {
        let l = leases();
        assert_eq!(ask(&l, &window(10_000, 3), T0).0, 24, "8 requests of 3");
    }

    #[test]
    fn an_ask_is_at_most_max_slice_of_the_limit_and_at_least_one_request() {
        let l = leases();
        assert_eq!(ask(&l, &window(100, 1), T0).0, 5, "5% of 100");
        let l = leases();
        assert_eq!(
            ask(&l, &window(10, 3), T0).0,
            3,
            "5% of 10 is less than one request"
        );
    }

    #[test]
    fn a_slice_holds_exactly_what_was_granted() {
        let (l, h) = (leases(), window(10_000, 3));
        grant(&l, &h, 9, T0);
        for left in [6, 3, 0] {
            assert_eq!(taken(&l, &h, T0 + 1).remaining, left);
        }
        assert_eq!(l.held(), 0);
        let (want, _done) = ask(&l, &h, T0 + 2);
        assert_eq!(want, 24, "the fourth request needs a new slice");
    }

    #[test]
    fn a_local_answer_is_what_the_slice_holds_plus_what_the_store_had_left() {
        let (l, h) = (leases(), window(10_000, 2));
        let (_, _done) = ask(&l, &h, T0);
        // (A window's store reset is its end; 30 s here tells them apart.)
        l.granted(&h, 10, store(500, 30_000), T0);
        let st = taken(&l, &h, T0 + 15_000);
        assert!(!st.over);
        assert_eq!(st.remaining, 8 + 500);
        assert_eq!(st.reset_after_ms, 45_000, "the window ends at the minute");
        assert_eq!(st.retry_after_ms, 0);
        assert_eq!(l.held(), 8);
    }

    #[test]
    fn a_bucket_slice_resets_when_the_store_said_at_its_grant() {
        let (l, h) = (leases(), hit(10_000, Algorithm::TokenBucket, 1));
        let (_, _done) = ask(&l, &h, T0);
        l.granted(&h, 10, store(100, 10_000), T0);
        let st = taken(&l, &h, T0 + 4_000);
        assert_eq!(st.reset_after_ms, 6_000);
        assert_eq!(st.remaining, 9 + 100);
    }

    #[test]
    fn a_denied_request_gives_its_hits_back_to_the_slice() {
        let (l, h) = (leases(), window(10_000, 4));
        grant(&l, &h, 8, T0);
        taken(&l, &h, T0);
        taken(&l, &h, T0);
        assert_eq!(l.held(), 0);
        l.undo(&h, T0);
        assert_eq!(l.held(), 4);
        assert_eq!(taken(&l, &h, T0).remaining, 0);
    }

    #[test]
    fn one_grant_at_a_time_and_a_failed_one_lets_the_next_request_ask() {
        let (l, h) = (leases(), window(10_000, 1));
        let (_, done) = ask(&l, &h, T0);
        assert!(matches!(l.take(&h, limit(&h), T0), Local::Wait(_)));
        l.grant_failed(&h, T0);
        let (want, _again) = ask(&l, &h, T0);
        assert_eq!(want, 8);
        drop(done);
    }

    #[test]
    fn a_refused_grant_sends_decisions_to_the_store_for_one_ttl() {
        let (l, h) = (leases(), window(10_000, 1));
        let (_, _done) = ask(&l, &h, T0);
        l.granted(&h, 0, store(0, 0), T0 + 100);
        assert!(matches!(l.take(&h, limit(&h), T0 + 100), Local::Store));
        assert!(matches!(l.take(&h, limit(&h), T0 + 2_099), Local::Store));
        let (want, _done) = ask(&l, &h, T0 + 2_100);
        assert_eq!(want, 8, "after the TTL the next request asks again");
    }

    #[test]
    fn a_slice_doubles_while_it_lasts_less_than_half_the_ttl_and_halves_past_the_ttl() {
        let (l, h) = (leases(), window(10_000, 1));
        let mut now = T0;
        // The first slice had no predecessor: its length says nothing.
        assert_eq!(grant(&l, &h, 8, now), 8);
        let use_up = |now: u64, n: u64| {
            for _ in 0..n {
                taken(&l, &h, now);
            }
        };
        use_up(now, 8);
        // Each grant sizes the next ask by how long the last slice lasted.
        now += 999; // less than half the TTL (1 s): the next ask doubles
        assert_eq!(grant(&l, &h, 8, now), 8);
        use_up(now, 8);
        now += 1_000; // exactly half the TTL: the same size
        assert_eq!(grant(&l, &h, 16, now), 16, "doubled");
        use_up(now, 16);
        now += 2_000; // exactly the TTL: the same size
        assert_eq!(grant(&l, &h, 16, now), 16);
        use_up(now, 16);
        now += 2_001; // longer than the TTL: the next ask halves
        assert_eq!(grant(&l, &h, 16, now), 16);
        use_up(now, 16);
        now += 1_000;
        assert_eq!(grant(&l, &h, 8, now), 8, "halved");
    }

    #[test]
    fn a_slice_is_dropped_when_its_window_ends_and_not_given_back() {
        let (l, h) = (leases(), window(10_000, 1));
        grant(&l, &h, 8, T0 + 59_000);
        taken(&l, &h, T0 + 59_999);
        assert!(l.expire(T0 + 59_999, false).is_empty());
        assert_eq!(l.held(), 7, "kept until the window's last millisecond");
        assert!(
            l.expire(T0 + 60_000, false).is_empty(),
            "that window is over"
        );
        assert_eq!(l.held(), 0);
        assert_eq!(metric(&l, "tollgate_lease_expired_total"), 7);
    }

    #[test]
    fn a_slice_idle_for_the_ttl_gives_its_unused_capacity_back() {
        let (l, h) = (leases(), window(10_000, 3));
        grant(&l, &h, 24, T0);
        taken(&l, &h, T0 + 500);
        assert!(
            l.expire(T0 + 2_499, false).is_empty(),
            "idle for less than the TTL"
        );
        let back = l.expire(T0 + 2_500, false);
        assert_eq!(
            back,
            vec![Return {
                hit: Hit {
                    key: h.key.clone(),
                    counter: h.counter,
                    cost: 21,
                    enforce: true,
                }
            }]
        );
        assert_eq!(l.held(), 0);
        assert_eq!(metric(&l, "tollgate_lease_expired_total"), 0);
    }

    #[test]
    fn a_used_up_slice_gives_nothing_back() {
        let (l, h) = (leases(), window(10_000, 4));
        grant(&l, &h, 8, T0);
        taken(&l, &h, T0);
        taken(&l, &h, T0);
        assert!(l.expire(T0 + 2_000, false).is_empty());
        assert!(l.expire(T0 + 2_000, true).is_empty());
        let (want, _done) = ask(&l, &h, T0 + 2_000);
        assert_eq!(want, 32, "the slice was gone: a new one, first size");
    }

    #[test]
    fn at_shutdown_every_slice_gives_back_what_it_holds() {
        let (l, h) = (leases(), window(10_000, 1));
        grant(&l, &h, 8, T0);
        taken(&l, &h, T0 + 1);
        let back = l.expire(T0 + 1, true);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].hit.cost, 7);
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn a_slice_with_a_grant_on_its_way_is_kept() {
        let (l, h) = (leases(), window(10_000, 1));
        let (_, _done) = ask(&l, &h, T0);
        assert!(l.expire(T0 + 60_000, true).is_empty());
        l.granted(&h, 8, store(0, 0), T0);
        assert_eq!(l.held(), 8);
    }
}
