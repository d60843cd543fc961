//! Policy: every decision tollgate makes, free of any wire format.
//!
//! ```text
//!              ratelimit::RateLimiter          admission::Admission
//!              (RLS, HTTP check)               (ext_proc: read → model → context →
//!                     │                         class → candidates → reserve or wait
//!                     │                         → fallback → deny; finish)
//!                     │                                │
//!                     │                        budget::Budgets
//!                     │                        (reserve, wait lines, class shares, settle)
//!                     └───────────────┬────────────────┘
//!                          counters::Counters
//!                   (the store, timed; on failure each hit by its
//!                    on_error policy, `local` from this instance's memory)
//!                                    │
//!                              store::Store
//! ```
//!
//! `plan` pairs each hit with what it is for; `reservation` is the record
//! both request paths leave and settle; keys come from `store::keys` only.

mod admission;
mod budget;
mod clock;
mod counters;
mod error;
mod leases;
mod plan;
mod ratelimit;
mod registry;
mod reservation;

pub use admission::{
    Admission, Admitted, Ask, Denied, Finished, Outcome, Rejection, ResponseEnd, ResponseReader,
    SettledBy, UsageBound, OTHER_MODEL,
};
pub use budget::{
    adjust, cap, BudgetView, Budgets, ClassRatio, Remaining, Reserved, Shares, Ticket, Tuning, Use,
    WaitFor, WaitLines, Waited, Woken,
};
pub use clock::Clock;
pub use counters::{AnsweredBy, Counters, Owner, Took};
pub use error::{EngineError, RecordError};
pub use leases::{return_unused, Instances, Leases, Local, Return};
pub use plan::Plan;
pub use ratelimit::{
    Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit, RateLimiter, DONE_KEY,
    DONE_VALUE, RLS_RESERVATION_TTL_MS,
};
pub use registry::keep_registered;
pub use reservation::{
    metered_cost, CountRecord, LimitRecord, Reservation, SettlePlan, Settlement, Taken, TakenKind,
};

use crate::metrics::Metrics;
use crate::rules::FailurePolicy;
use crate::store::{MemoryStore, Store};
use std::sync::Arc;

/// What the front ends share: built once, cheap to clone. Both decision
/// paths take from the same counters, so RLS, ext_proc and the HTTP check
/// see one budget.
#[derive(Clone)]
pub struct Engine {
    /// Rate limit decisions: RLS and the HTTP check API.
    pub limits: RateLimiter,
    /// LLM budgets: reservations, waiting, class shares.
    pub budgets: Budgets,
    /// LLM admission and settlement: ext_proc.
    pub admission: Admission,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Engine {
        Engine::from_counters(Counters::new(store, metrics))
    }

    pub fn from_counters(counters: Counters) -> Engine {
        let budgets = Budgets::new(counters.clone());
        Engine {
            limits: RateLimiter::new(counters),
            admission: Admission::new(budgets.clone()),
            budgets,
        }
    }

    /// The same engine on another clock (tests drive a manual one).
    pub fn with_clock(self, clock: Clock) -> Engine {
        Engine::from_counters(self.counters().clone().with_clock(clock))
    }

    /// The same engine answering store failures by `policy` where a rule
    /// or quota sets none.
    pub fn with_failure_policy(self, policy: FailurePolicy) -> Engine {
        Engine::from_counters(self.counters().clone().with_failure_policy(policy))
    }

    pub fn counters(&self) -> &Counters {
        self.budgets.counters()
    }

    pub fn clock(&self) -> &Clock {
        self.counters().clock()
    }

    /// The in-memory counters that stand in for the store under `local`.
    pub fn local_store(&self) -> &Arc<MemoryStore> {
        self.counters().local_store()
    }
}
