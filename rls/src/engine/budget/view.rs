//! What a reservation tells the client about its budgets: the tightest
//! token and request limits, for `x-ratelimit-*` headers.

use super::plan::Part;
use crate::engine::plan::Plan;
use crate::engine::reservation::TakenKind;
use crate::store::{Counter, HitState};
use std::time::Duration;

/// The tightest token, request and spend budgets after a decision, and
/// on a denial the limit that said no.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetView {
    pub tokens: Option<Remaining>,
    pub requests: Option<Remaining>,
    /// In micro-units of the currency.
    pub spend: Option<Remaining>,
    /// The quota limit that denied, as its config field and amount
    /// (`spend_per_day = 1.00 USD`), for the client's 429.
    pub denied_by: Option<String>,
}

/// One budget's limit, what is left of it, and when it is whole again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    pub reset_after: Duration,
    /// The length of the current window (a bucket: its period), for
    /// clients that want the policy (`RateLimit-Policy`'s `w`).
    pub window: Duration,
}

/// The view of a reservation's hits and what the store said of them.
pub(super) fn of(hits: &Plan<Part<'_>>, states: &[HitState], now: u64) -> BudgetView {
    let mut v = BudgetView::default();
    for (hit, part, st) in hits.with_states(states) {
        let Counter::Rate(limit) = hit.counter else {
            continue;
        };
        let slot = match part.kind {
            TakenKind::Tokens { .. } => &mut v.tokens,
            TakenKind::Requests => &mut v.requests,
            TakenKind::Spend { .. } => &mut v.spend,
            TakenKind::Slot { .. } => continue,
        };
        let r = Remaining {
            limit: limit.amount,
            remaining: st.remaining,
            reset_after: Duration::from_millis(st.reset_after_ms),
            window: {
                let (start, end) = limit.window(now);
                Duration::from_millis(end - start)
            },
        };
        if slot.is_none_or(|cur| r.remaining < cur.remaining) {
            *slot = Some(r);
        }
    }
    v
}
