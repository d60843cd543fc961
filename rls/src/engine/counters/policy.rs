//! Answers when the store fails: each hit by its owner's `on_error`
//! policy, `local` hits from this instance's memory at its share of the
//! limit.

use super::{AnsweredBy, Counters, Owner, Took};
use crate::engine::plan::Plan;
use crate::rules::{Algorithm, FailurePolicy, Limit};
use crate::store::{Counter, Hit, HitState, Hold, Store, StoreError, TakeOutcome};

impl Counters {
    /// Answers a plan the store could not: each hit by its owner's policy;
    /// `local` hits are taken from this instance's memory at its share of
    /// the limit (with the hold, so local slots are released too).
    pub(super) async fn by_policy<O: Owner>(
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

/// The retry a policy's denial suggests: the breaker probes the store
/// about this often.
pub(super) const POLICY_RETRY_MS: u64 = 1_000;

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
