//! The store as both decision paths use it: every call timed and counted,
//! and when the store fails, each hit answered by its failure policy, the
//! `local` ones from this instance's own memory at the instance's share of
//! the limit. Rate limit decisions and LLM budgets share this one piece, so
//! the two can never answer a store failure differently.

use super::error::EngineError;
use super::leases::{Instances, Leases, Local};
use super::plan::Plan;
use super::reservation::Reservation;
use super::Clock;
use crate::metrics::Metrics;
use crate::repeated::Repeats;
use crate::rules::{Algorithm, FailurePolicy, Limit};
use crate::store::TakeOutcome;
use crate::store::{Counter, Hit, HitState, Hold, MemoryStore, SettleOp, Store, StoreError};
use std::sync::Arc;
use std::time::Instant;

/// What a planned hit belongs to, as far as the store goes.
pub trait Owner {
    /// The owner's own `on_error`, if it sets one.
    fn on_error(&self) -> Option<FailurePolicy>;

    /// Whether the hit may be decided from this instance's lease of the
    /// counter (`leases`).
    fn leases(&self) -> bool {
        false
    }
}

/// Who answered a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    Store,
    /// The store failed; `on_error` answered (`local` = some hits were
    /// taken from this instance's memory).
    Policy {
        local: bool,
    },
}

/// The answer to a plan.
#[derive(Debug)]
pub struct Took {
    pub outcome: TakeOutcome,
    pub by: AnsweredBy,
}

/// The counters behind every decision. Cheap to clone.
#[derive(Clone)]
pub struct Counters {
    store: Arc<dyn Store>,
    /// Used for `on_error = "local"` while the store fails.
    local: Arc<MemoryStore>,
    /// For rules and quotas that set no `on_error`.
    default_policy: FailurePolicy,
    /// How many instances share the store: a `local` rule enforces its
    /// share of the limit in each.
    instances: Arc<Instances>,
    clock: Clock,
    metrics: Arc<Metrics>,
    store_failing: Arc<Repeats>,
    /// This instance's slices of shared budgets, when it leases.
    leases: Option<Arc<Leases>>,
}

impl Counters {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Counters {
        Counters {
            store,
            local: Arc::new(MemoryStore::new()),
            default_policy: FailurePolicy::FailClosed,
            instances: Arc::new(Instances::new("local".into())),
            clock: Clock::System,
            metrics,
            store_failing: Arc::new(Repeats::new(crate::store::LOG_SUMMARY_EVERY)),
            leases: None,
        }
    }

    /// The same counters deciding leased hits from `leases`.
    pub fn with_leases(mut self, leases: Arc<Leases>) -> Counters {
        self.leases = Some(leases);
        self
    }

    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.leases.as_ref()
    }

    pub fn with_clock(mut self, clock: Clock) -> Counters {
        self.clock = clock;
        self
    }

    /// The same counters answering store failures by `policy` where a rule
    /// or quota sets none.
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Counters {
        self.default_policy = policy;
        self
    }

    /// The same counters, this instance being one of `instances`.
    pub fn with_instances(mut self, instances: Arc<Instances>) -> Counters {
        self.instances = instances;
        self
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The in-memory counters that stand in for the store under `local`.
    pub fn local_store(&self) -> &Arc<MemoryStore> {
        &self.local
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Takes the plan's hits all-or-nothing (with `hold`, if given); when
    /// the store fails, answers each by its owner's policy. Hits whose
    /// owner leases are decided from this instance's slices when it holds
    /// them (a reservation's hold always goes to the store).
    pub async fn take<O: Owner>(
        &self,
        op: &'static str,
        plan: &Plan<O>,
        hold: Option<&Hold>,
        now: u64,
    ) -> Took {
        if let (Some(leases), None) = (&self.leases, hold) {
            if plan
                .iter()
                .any(|(h, o)| o.leases() && Leases::leasable(h).is_some())
            {
                return self.take_leased(leases, op, plan, now).await;
            }
        }
        match self
            .timed(op, self.store.take(plan.hits(), hold, now))
            .await
        {
            Ok(outcome) => {
                self.recovered();
                Took {
                    outcome,
                    by: AnsweredBy::Store,
                }
            }
            Err(e) => self.by_policy(plan, hold, e, now).await,
        }
    }

    /// Counts each hit on its own, whatever its limit says
    /// (envoyproxy/ratelimit's answers, `Store::count`); `admitted` is
    /// whether no enforced hit went over. When the store fails, answers as
    /// [`Counters::take`] does.
    pub async fn count<O: Owner>(&self, op: &'static str, plan: &Plan<O>, now: u64) -> Took {
        match self.timed(op, self.store.count(plan.hits(), now)).await {
            Ok(hits) => {
                self.recovered();
                let admitted = plan
                    .hits()
                    .iter()
                    .zip(&hits)
                    .all(|(h, s)| !(s.over && h.enforce));
                Took {
                    outcome: TakeOutcome { admitted, hits },
                    by: AnsweredBy::Store,
                }
            }
            Err(e) => self.by_policy(plan, None, e, now).await,
        }
    }

    /// Decides leased hits from their slices (asking the store for a slice
    /// when one runs out) and the rest in one store call; all-or-nothing
    /// still: a request the store denies gives its slice hits back.
    async fn take_leased<O: Owner>(
        &self,
        leases: &Leases,
        op: &'static str,
        plan: &Plan<O>,
        now: u64,
    ) -> Took {
        let mut local: Vec<Option<HitState>> = Vec::with_capacity(plan.hits().len());
        for (hit, owner) in plan.iter() {
            let limit = Leases::leasable(hit).filter(|_| owner.leases());
            let state = match limit {
                Some(limit) => match self.take_from_slice(leases, hit, limit, now).await {
                    Ok(state) => state,
                    Err(e) => {
                        undo(leases, plan, &local, now);
                        return self.by_policy(plan, None, e, now).await;
                    }
                },
                None => None,
            };
            local.push(state);
        }
        let direct: Vec<Hit> = plan
            .hits()
            .iter()
            .zip(&local)
            .filter(|(_, l)| l.is_none())
            .map(|(h, _)| h.clone())
            .collect();
        self.metrics
            .leases
            .decisions(local.len() - direct.len(), direct.len());
        let mut outcome = TakeOutcome {
            admitted: true,
            hits: Vec::new(),
        };
        if !direct.is_empty() {
            match self.timed(op, self.store.take(&direct, None, now)).await {
                Ok(o) => {
                    self.recovered();
                    outcome = o;
                }
                Err(e) => {
                    undo(leases, plan, &local, now);
                    return self.by_policy(plan, None, e, now).await;
                }
            }
        }
        if !outcome.admitted {
            undo(leases, plan, &local, now);
        }
        let mut from_store = outcome.hits.into_iter();
        let hits = local
            .into_iter()
            .map(|l| l.or_else(|| from_store.next()).unwrap_or(UNANSWERED))
            .collect();
        Took {
            outcome: TakeOutcome {
                admitted: outcome.admitted,
                hits,
            },
            by: AnsweredBy::Store,
        }
    }

    /// One hit from its slice: `Ok(None)` when the slice cannot hold it and
    /// the store grants no more (too little left to lease: the store
    /// decides it).
    async fn take_from_slice(
        &self,
        leases: &Leases,
        hit: &Hit,
        limit: Limit,
        now: u64,
    ) -> Result<Option<HitState>, StoreError> {
        // Each turn takes from the slice, or waits for a grant in flight (which
        // adds capacity or refuses), or asks for one: it ends when the
        // slice holds the hit or the store grants no more.
        loop {
            match leases.take(hit, limit, now) {
                Local::Taken(state) => return Ok(Some(state)),
                Local::Store => return Ok(None),
                Local::Wait(mut rx) => {
                    let _ = rx.changed().await;
                }
                Local::Grant { want, done } => {
                    let instances = leases.instances().live();
                    let asked = self.store.grant(hit, want, instances, now);
                    let granted = self.timed("grant", asked).await;
                    match granted {
                        Ok(g) => {
                            leases.granted(hit, g.amount, g.state, now);
                            drop(done);
                            if g.amount == 0 {
                                return Ok(None);
                            }
                        }
                        Err(e) => {
                            leases.grant_failed(hit, now);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Gives hits back (`is_negative_hits`); never denies.
    pub async fn give_back(&self, hits: &[Hit], now: u64) -> Result<Vec<HitState>, StoreError> {
        self.timed("give_back", self.store.give_back(hits, now))
            .await
    }

    /// Applies a reservation's settle operations, once: `Ok(false)` when it
    /// was settled before or has expired. A reservation taken locally while
    /// the store was down is settled locally.
    pub async fn settle(
        &self,
        r: &Reservation,
        ops: &[SettleOp],
        now: u64,
    ) -> Result<bool, StoreError> {
        let store: &dyn Store = if r.local {
            self.local.as_ref()
        } else {
            self.store.as_ref()
        };
        self.timed("settle", store.settle(&r.record_key, &r.id, ops, now))
            .await
    }

    /// Reads a reservation back (for a settle that arrives at another
    /// instance, as RLS `apply_on_stream_done` calls may).
    pub async fn reservation(&self, record_key: &str) -> Result<Option<Reservation>, EngineError> {
        let now = self.now_ms();
        let raw = self
            .timed("record", self.store.record(record_key, now))
            .await?;
        match raw {
            None => Ok(None),
            Some(bytes) => match Reservation::decode(record_key, &bytes) {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    self.metrics.internal_error(e.kind());
                    Err(e.into())
                }
            },
        }
    }

    /// Tells instances sharing the store that these counters have capacity
    /// again, without waiting for the answer.
    pub fn announce_freed(&self, keys: &[String]) {
        if keys.is_empty() || !self.store.is_shared() {
            return;
        }
        let store = self.store.clone();
        let keys = keys.to_vec();
        tokio::spawn(async move {
            if let Err(e) = store.announce_freed(&keys).await {
                tracing::debug!(error = %e, "could not announce freed capacity");
            }
        });
    }

    async fn timed<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let kind = self.store.kind();
        self.metrics
            .store_call(kind, op, started.elapsed().as_secs_f64());
        // `tollgate_store_up` is the breaker's, read at scrape time.
        if let Err(e) = &result {
            self.metrics.store_error(kind, e.kind());
        }
        result
    }

    /// The store answered again after failing: say so once.
    fn recovered(&self) {
        let unlogged = self.store_failing.ended();
        if unlogged > 0 {
            tracing::info!(
                answered_by_policy = unlogged,
                store = self.store.kind(),
                "store answers decisions again"
            );
        }
    }

    /// Answers a plan the store could not: each hit by its owner's policy;
    /// `local` hits are taken from this instance's memory at its share of
    /// the limit (with the hold, so local slots are released too).
    async fn by_policy<O: Owner>(
        &self,
        plan: &Plan<O>,
        hold: Option<&Hold>,
        error: StoreError,
        now: u64,
    ) -> Took {
        if let Some(since) = self.store_failing.note() {
            tracing::warn!(error = %error, store = self.store.kind(), unlogged_since_last = since, "store failed; answering by on_error policy (logged at most every 30 s while it lasts)");
        }
        let policy = |o: &O| o.on_error().unwrap_or(self.default_policy);
        let instances = self.instances.live();
        let local: Vec<Hit> = plan
            .iter()
            .filter(|(_, o)| policy(o) == FailurePolicy::Local)
            .map(|(h, _)| Hit {
                counter: share_of(h.counter, instances),
                ..h.clone()
            })
            .collect();
        let mut local_states = match self.local.take(&local, hold, now).await {
            Ok(o) => o.hits.into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let mut admitted = true;
        let states = plan
            .iter()
            .map(|(hit, owner)| {
                let policy = policy(owner);
                self.metrics.failure_answer(policy.as_str());
                let state = match policy {
                    FailurePolicy::Local => local_states.next(),
                    _ => None,
                };
                let state = state.unwrap_or_else(|| policy_state(hit, policy, now));
                if state.over && hit.enforce {
                    admitted = false;
                }
                state
            })
            .collect();
        Took {
            outcome: TakeOutcome {
                admitted,
                hits: states,
            },
            by: AnsweredBy::Policy {
                local: !local.is_empty(),
            },
        }
    }
}

/// A state for a hit nobody answered (cannot happen: every hit is decided
/// from its slice or by the store).
const UNANSWERED: HitState = HitState {
    over: true,
    remaining: 0,
    reset_after_ms: 0,
    retry_after_ms: POLICY_RETRY_MS,
};

/// Gives back the hits a denied (or failed) request took from its slices.
fn undo<O: Owner>(leases: &Leases, plan: &Plan<O>, local: &[Option<HitState>], now: u64) {
    for (hit, taken) in plan.hits().iter().zip(local) {
        if taken.is_some() {
            leases.undo(hit, now);
        }
    }
}

/// The retry a policy's denial suggests: the breaker probes the store
/// about this often.
const POLICY_RETRY_MS: u64 = 1_000;

/// The state `fail_open` or `fail_closed` answers for a hit: reset at the
/// end of its window (a bucket: one period).
fn policy_state(hit: &Hit, policy: FailurePolicy, now: u64) -> HitState {
    let reset = match hit.counter {
        Counter::Rate(l) if l.algorithm == Algorithm::FixedWindow => l.window(now).1 - now,
        Counter::Rate(l) => l.period.millis(),
        Counter::Slots { .. } => 0,
    };
    HitState {
        over: policy != FailurePolicy::FailOpen,
        remaining: 0,
        reset_after_ms: reset,
        retry_after_ms: POLICY_RETRY_MS,
    }
}

/// One instance's share of a counter, for `local` fallback: its size over
/// the live instances, rounded down (so the instances together never admit
/// more than the limit), and at least 1.
fn share_of(counter: Counter, instances: u64) -> Counter {
    let scale = |n: u64| (n / instances.max(1)).max(1);
    match counter {
        Counter::Rate(l) => Counter::Rate(Limit {
            amount: scale(l.amount),
            ..l
        }),
        Counter::Slots { max } => Counter::Slots { max: scale(max) },
    }
}
