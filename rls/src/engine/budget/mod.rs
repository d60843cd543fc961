//! LLM budgets: reserve an estimate when a request arrives, wait in line
//! when it does not fit, settle the actual usage when its response ends.
//!
//! A reservation takes every limit of every matching quota in one
//! all-or-nothing step (tokens at the estimate, requests at 1, money at the
//! model's prices, a concurrency slot; `plan`), and leaves a record with a
//! TTL in the store. A take that crosses a quota's `warn_at` is reported
//! (`warn`).
//! A request that finds no capacity waits in the line of the counter that
//! said no (`wait`, `queue`); classes may divide each budget (`shares`).
//! Settling refunds unused tokens into the window or bucket they came from,
//! charges usage above the estimate to the current one, frees the slot,
//! deletes the record, and wakes whoever waits for that capacity, here and
//! on the other instances.

mod plan;
mod queue;
mod shares;
mod view;
mod wait;
mod warn;

use plan::ReservationPlan;

pub use queue::{Ticket, WaitLines, Woken};
pub use shares::{adjust, cap, ClassRatio, Shares, Tuning, Use};
pub use view::{BudgetView, Remaining};
pub use wait::{WaitFor, Waited};
pub use warn::SoftLimits;

use super::counters::{AnsweredBy, Counters, Took};
use super::reservation::{Reservation, Settlement, Taken};
use crate::rules::{Class, Identity, LlmConfig, RuleId, Tokens};
use crate::store::{keys, Counter, Hold, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The answer to a reservation.
#[derive(Debug, Clone)]
pub enum Reserved {
    /// Admitted; the reservation must be settled.
    Admitted {
        reservation: Reservation,
        headers: BudgetView,
    },
    /// No capacity; nothing was taken.
    Denied {
        quota: String,
        retry_after: Duration,
        headers: BudgetView,
        /// The counter that said no (and longest): where to wait for it.
        /// Empty when the store failed and `on_error` said no: nothing to
        /// wait for.
        line: String,
        /// It is a concurrency limit: it frees when a request ends, at no
        /// time the store can tell.
        on_release: bool,
    },
}

/// Reserves and settles LLM budgets. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    counters: Counters,
    /// Requests waiting for capacity, by counter.
    lines: Arc<WaitLines>,
    /// Class shares of budgets.
    shares: Arc<Shares>,
    /// Soft-limit crossings reported.
    soft: Arc<SoftLimits>,
}

impl Budgets {
    pub fn new(counters: Counters) -> Budgets {
        Budgets {
            counters,
            lines: Arc::default(),
            shares: Arc::default(),
            soft: Arc::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The wait lines of this instance.
    pub fn lines(&self) -> &Arc<WaitLines> {
        &self.lines
    }

    /// The class shares of budgets this instance has seen.
    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// Reserves `estimate` against every quota that matches `id`.
    pub async fn reserve(
        &self,
        llm: &LlmConfig,
        id: &Identity,
        estimate: Tokens,
        ttl: Duration,
    ) -> Reserved {
        self.reserve_as(llm, id, None, estimate, ttl).await
    }

    /// Reserves for a request of `class`: when classes have shares, each
    /// limit is taken twice, from the quota's counter and from the class's
    /// share of it, in the same all-or-nothing step.
    pub async fn reserve_as(
        &self,
        llm: &LlmConfig,
        id: &Identity,
        class: Option<&Class>,
        estimate: Tokens,
        ttl: Duration,
    ) -> Reserved {
        let now = self.counters.now_ms();
        let plan = plan::plan(&self.shares, llm, id, class, estimate, now);
        let mut reservation = reservation_of(&plan, id, class, estimate, now);
        if plan.hits.is_empty() {
            return Reserved::Admitted {
                reservation,
                headers: BudgetView::default(),
            };
        }
        let hold = match reservation.encode() {
            Ok(record) => Hold {
                holder: reservation.id.clone(),
                ttl_ms: ttl.as_millis() as u64,
                record_key: reservation.record_key.clone(),
                record,
            },
            Err(e) => {
                // Without its record a reservation could never be settled:
                // refuse it rather than take what nobody gives back.
                self.counters.metrics().internal_error(e.kind());
                tracing::error!(error = %e, "reservation refused: its record cannot be written");
                return Reserved::Denied {
                    quota: String::new(),
                    retry_after: Duration::from_secs(1),
                    headers: BudgetView::default(),
                    line: String::new(),
                    on_release: false,
                };
            }
        };
        let took = self
            .counters
            .take("reserve", &plan.hits, Some(&hold), now)
            .await;
        reservation.local = took.by == AnsweredBy::Policy { local: true };
        if let Some(c) = class {
            for (budget, _) in &plan.class_budgets {
                let seen = plan.class_states(budget, &took.outcome.hits);
                let admitted = took.outcome.admitted;
                self.shares
                    .observed(budget, &llm.classes, &c.name, &seen, admitted, now);
            }
        }
        let headers = view::of(&plan.hits, &took.outcome.hits, now);
        if took.outcome.admitted {
            let m = self.counters.metrics();
            let currency = &llm.settings.currency;
            self.soft
                .observe(m, currency, &plan.hits, &took.outcome.hits, now);
            Reserved::Admitted {
                reservation,
                headers,
            }
        } else {
            denial(&plan, &took, headers, &llm.settings.currency)
        }
    }

    /// Settles a reservation; `Ok(false)` if it was already settled or
    /// expired. Capacity it gives back wakes the requests waiting for it.
    pub async fn settle(
        &self,
        reservation: &Reservation,
        settlement: Settlement,
    ) -> Result<bool, StoreError> {
        if reservation.taken.is_empty() {
            return Ok(true);
        }
        let now = self.counters.now_ms();
        let plan = reservation.settle_plan(&settlement.tokens());
        let settled = self.counters.settle(reservation, &plan.ops, now).await?;
        if settled {
            if let Some(class) = &reservation.class {
                for b in &reservation.class_budgets {
                    self.shares.released(b, class, now);
                }
            }
            for k in &plan.freed {
                self.lines.wake(k);
            }
            if !reservation.local {
                self.counters.announce_freed(&plan.freed);
            }
        }
        Ok(settled)
    }

    /// Wakes this instance's waiters when another instance frees capacity
    /// they wait for, until `cancel` fires. Returns at once when nobody
    /// else shares the store.
    pub async fn wake_on_freed_elsewhere(&self, cancel: CancellationToken) {
        let Some(mut freed) = self.counters.store().freed_by_others() else {
            return;
        };
        loop {
            tokio::select! {
                keys = freed.recv() => match keys {
                    Some(keys) => {
                        for k in &keys {
                            self.lines.wake(k);
                        }
                    }
                    None => return,
                },
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// The record of what `plan` takes, before it is taken.
fn reservation_of(
    plan: &ReservationPlan<'_>,
    id: &Identity,
    class: Option<&Class>,
    estimate: Tokens,
    now: u64,
) -> Reservation {
    let reservation_id = new_id();
    let record_key = match plan.hits.iter().next() {
        Some((_, first)) => keys::reservation(&first.quota.id, &reservation_id),
        // Nothing to take: nothing is stored, nothing to settle.
        None => keys::reservation(&RuleId::new("", &[]), &reservation_id),
    };
    Reservation {
        id: reservation_id,
        record_key,
        model: id.model.clone(),
        estimate,
        taken: plan
            .hits
            .iter()
            .map(|(h, p)| Taken {
                quota: p.quota.name.clone(),
                base_key: h.key.clone(),
                key: keys::counter_key(&h.key, &h.counter, now),
                what: p.kind,
                cost: h.cost,
            })
            .collect(),
        local: false,
        class: class.map(|c| c.name.clone()),
        class_budgets: plan.class_budgets.iter().map(|(b, _)| b.clone()).collect(),
    }
}

/// The denial of a plan the store (or the policy) said no to: the quota
/// and counter that said no longest, which is where to wait.
fn denial(
    plan: &ReservationPlan<'_>,
    took: &Took,
    mut headers: BudgetView,
    currency: &str,
) -> Reserved {
    let binding = plan
        .hits
        .with_states(&took.outcome.hits)
        .filter(|(h, _, st)| st.over && h.enforce)
        .max_by_key(|(_, _, st)| st.retry_after_ms);
    if let Some((_, p, _)) = &binding {
        let limit = p.limit.describe(currency);
        headers.denied_by = Some(match p.class_cap {
            Some(_) => format!("{limit}, the class's share of it"),
            None => limit,
        });
    }
    let (quota, retry, mut line, on_release) = match binding {
        Some((h, p, st)) => (
            p.quota.name.clone(),
            st.retry_after_ms,
            h.key.clone(),
            matches!(h.counter, Counter::Slots { .. }),
        ),
        None => Default::default(),
    };
    if took.by != AnsweredBy::Store {
        // Denied by `on_error` while the store is down: there is no line
        // to wait in, and no request waits on a dead store.
        line.clear();
    }
    Reserved::Denied {
        quota,
        retry_after: Duration::from_millis(retry),
        headers,
        line,
        on_release,
    }
}

/// 122 random bits: unguessable and unique across instances.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
