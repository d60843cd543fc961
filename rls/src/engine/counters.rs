//! The store as both decision paths use it: every call timed and counted,
//! and when the store fails, each hit answered by its failure policy, the
//! `local` ones from this instance's own memory at the instance's share of
//! the limit. Rate limit decisions and LLM budgets share this one piece, so
//! the two can never answer a store failure differently.
//!
//! Leased hits (`leased`) and answers by failure policy (`policy`) are
//! in submodules.

mod leased;
mod policy;

use super::error::EngineError;
use super::leases::{Instances, Leases};
use super::plan::Plan;
use super::reservation::Reservation;
use super::Clock;
use crate::metrics::Metrics;
use crate::repeated::Repeats;
use crate::rules::FailurePolicy;
use crate::store::TakeOutcome;
use crate::store::{Hit, HitState, Hold, MemoryStore, SettleOp, Store, StoreError};
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
}
