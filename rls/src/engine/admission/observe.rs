//! Metrics and log lines of admission, recorded from its outcomes in one
//! place. Labels are configured names (models, quotas) or `_other`, never
//! request data; log lines never carry a prompt, a completion or a key.

use super::outcome::{Admitted, Brokered, Denied, Finished, Outcome, Rejection, ResponseEnd};
use super::stages::OTHER_MODEL;
use crate::engine::reservation::{metered_cost, Reservation, Settlement, TakenKind};
use crate::marketplace::UsageReport;
use crate::metrics::Metrics;

/// Counts (and logs) how admission answered.
pub(super) fn admission(m: &Metrics, outcome: &Outcome) {
    match outcome {
        Outcome::Admitted(a) => {
            m.decision("ext_proc", false);
            admitted(m, a)
        }
        Outcome::Brokered(b) => {
            m.decision("ext_proc", false);
            brokered(m, b)
        }
        Outcome::Denied(d) => {
            m.decision("ext_proc", true);
            m.llm_request(&d.model_label, "denied");
            // One line per request at DEBUG only: a budget spent answers
            // every request 429, and the count is in the metrics
            // (tollgate_llm_requests_total{outcome="denied"}).
            tracing::debug!(quota = %d.quota, model = %d.model_label, retry_after = ?d.retry_after, "LLM request over budget");
            denied_by_marketplace(m, d);
        }
        Outcome::Cancelled { model_label } => {
            m.llm_request(model_label, "cancelled");
            tracing::debug!(model = %model_label, "client went away while waiting for capacity");
        }
        Outcome::Rejected(r) => rejected(m, r),
    }
}

fn admitted(m: &Metrics, a: &Admitted) {
    if a.fallback_from.is_some() {
        // Only a configured model has fallbacks, so the first label is its
        // name; the request is labelled by the model it goes to from now.
        let from = a.fallback_from.as_deref().unwrap_or(OTHER_MODEL);
        m.llm_fallback(from, &a.model);
        tracing::info!(from = %from, to = %a.model, "model fell back");
    }
    m.llm_request(&a.model_label, "admitted");
    let estimate = a.estimate();
    m.llm_tokens(
        &a.model_label,
        "reserved",
        estimate.prompt + estimate.completion,
    );
    for t in &a.reservation.taken {
        match t.what {
            TakenKind::Tokens { .. } => m.quota_tokens(&t.quota, "reserved", t.cost),
            TakenKind::Spend { .. } => m.quota_spend(&t.quota, "reserved", t.cost),
            TakenKind::Requests | TakenKind::Slot { .. } => {}
        }
    }
}

/// Served by a supplier: counted apart from the local budgets (nothing
/// was reserved), with the time the step added.
fn brokered(m: &Metrics, b: &Brokered) {
    m.llm_request(&b.model_label, "marketplace");
    m.marketplace.request("served", b.took, true);
    let q = &b.quote;
    tracing::info!(
        model = %b.model,
        quote_id = %q.quote_id,
        supply_id = %q.supply_id,
        supplier = %q.supplier.authority,
        price_per_mtoken = q.price.units(),
        took_ms = b.took.as_secs_f64() * 1000.0,
        "over budget: served through the marketplace"
    );
}

/// The marketplace was asked and did not serve: the 429 stands.
fn denied_by_marketplace(m: &Metrics, d: &Denied) {
    let Some(t) = d.marketplace else {
        return;
    };
    m.marketplace.request(t.refusal.as_str(), t.took, false);
    tracing::info!(
        model = %d.model_label,
        reason = t.refusal.as_str(),
        took_ms = t.took.as_secs_f64() * 1000.0,
        "the marketplace did not serve an over-budget request; it gets its 429"
    );
}

/// A brokered request's response ended and its report was queued.
pub(super) fn reported(m: &Metrics, b: &Brokered, r: &UsageReport) {
    let used = r.prompt_tokens.unwrap_or(0) + r.completion_tokens.unwrap_or(0);
    if r.prompt_tokens.is_some() {
        m.llm_tokens(&b.model_label, "marketplace", used);
    }
    tracing::debug!(
        quote_id = %r.quote_id,
        status = ?r.status,
        latency_ms = r.latency_ms,
        prompt_tokens = ?r.prompt_tokens,
        completion_tokens = ?r.completion_tokens,
        "marketplace usage report queued"
    );
}

fn rejected(m: &Metrics, r: &Rejection) {
    match r {
        Rejection::TooLarge { bytes } => {
            m.llm_request(OTHER_MODEL, "too_large");
            tracing::info!(bytes, "request body over max_body_bytes");
        }
        Rejection::Unreadable(e) => {
            m.llm_request(OTHER_MODEL, "invalid");
            tracing::info!(reason = %e, "unreadable LLM request");
        }
        Rejection::UnknownModel => m.llm_request(OTHER_MODEL, "unknown_model"),
        Rejection::ContextExceeded { model_label, .. } => {
            m.llm_request(model_label, "context_exceeded")
        }
        Rejection::Unpriced { model_label, quota } => {
            m.llm_request(model_label, "unpriced");
            tracing::warn!(model = %model_label, quota = %quota, "request refused: its model has no price and the quota limits spend");
        }
        Rejection::Internal => {
            m.llm_request(OTHER_MODEL, "internal_error");
            m.internal_error("request_parse");
        }
    }
}

/// Counts what a settlement charged against what was reserved: per model
/// in raw tokens, per quota in the quota's own count and in money.
pub(super) fn finished(
    m: &Metrics,
    a: &Admitted,
    settlement: Settlement,
    end: ResponseEnd,
    finished: Finished,
) {
    if let ResponseEnd::Aborted { .. } = end {
        // Clients hang up all the time: counted in
        // tollgate_llm_settlements_total{how="aborted"}, logged at DEBUG.
        tracing::debug!(model = %a.model_label, "stream ended before the response did; settling by on_abort");
    }
    let actual = settlement.tokens();
    let label = &a.model_label;
    let est = a.estimate().prompt + a.estimate().completion;
    let used = actual.prompt + actual.completion;
    if let Settlement::Usage(_) = settlement {
        m.llm_tokens(label, "actual", used);
        m.estimate_error(label, est, used);
    }
    let how = match finished {
        Finished::Settled(how) => how.as_str(),
        Finished::AlreadySettled => "already_settled",
        Finished::Failed => "failed",
    };
    m.llm_settled(how);
    // Only a settle that moved tokens refunded or charged them: a failed
    // one left the estimate charged (until the window ends), and one
    // already settled was counted by the settle that did it.
    if !matches!(finished, Finished::Settled(_)) {
        return;
    }
    moved(m, label, &a.reservation, settlement);
}

/// A settle retried after the store failed ([`super::retry`]): counted as
/// `retried` once it reached the store, and what it refunded or charged.
pub(super) fn settled_on_retry(m: &Metrics, p: &super::retry::Pending, settled: bool) {
    if !settled {
        // Expired, or settled in the store by the try that timed out
        // (whose refund then goes uncounted here: the store has it).
        return;
    }
    tracing::debug!(model = %p.model_label, "settled on retry after the store failed");
    m.llm_settled("retried");
    moved(m, &p.model_label, &p.reservation, p.settlement);
}

/// The tokens and money a settle refunded or charged beyond the estimate:
/// per model in raw tokens, per quota in the quota's own count.
fn moved(m: &Metrics, label: &str, reservation: &Reservation, settlement: Settlement) {
    let actual = settlement.tokens();
    let est = reservation.estimate.prompt + reservation.estimate.completion;
    let used = actual.prompt + actual.completion;
    m.llm_tokens(label, "refunded", est.saturating_sub(used));
    m.llm_tokens(label, "overage", used.saturating_sub(est));
    for t in &reservation.taken {
        let record: fn(&Metrics, &str, &str, u64) = match t.what {
            TakenKind::Tokens { .. } => Metrics::quota_tokens,
            TakenKind::Spend { .. } => Metrics::quota_spend,
            TakenKind::Requests | TakenKind::Slot { .. } => continue,
        };
        let cost = metered_cost(&t.what, &actual);
        record(m, &t.quota, "refunded", t.cost.saturating_sub(cost));
        record(m, &t.quota, "overage", cost.saturating_sub(t.cost));
    }
}
