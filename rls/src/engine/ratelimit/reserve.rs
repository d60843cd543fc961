//! Reserve and reconcile over the plain rate limit protocol, for users who
//! keep Envoy's rate limit filter instead of ext_proc.
//!
//! A rule with `reserve = "<key>"` takes the descriptor's `hits_addend` (the
//! estimate) on the request path, and leaves a reservation record named by
//! the value of `<key>` (a request id). At the end of the stream Envoy's
//! filter, with `apply_on_stream_done`, sends the same descriptor plus
//! `phase=done` and the actual tokens as `hits_addend`: the reservation is
//! settled by the same idempotent path as ext_proc's, refunding into the
//! window it came from or charging the overage.

use super::RateLimiter;
use crate::engine::reservation::{CountRecord, LimitRecord, Reservation, Taken, TakenKind};
use crate::engine::EngineError;
use crate::rules::{CountSpec, Rule, Tokens};
use crate::store::{keys, Counter, Hit, Hold};

/// How long an RLS reservation waits for its stream-done call.
pub const RLS_RESERVATION_TTL_MS: u64 = 600_000;

impl RateLimiter {
    /// The hold that records what a reserving descriptor takes; `None` (with
    /// a log line and a metric) if the record cannot be written, in which
    /// case the request is still decided and only its refund is lost.
    pub(super) fn hold<'h>(
        &self,
        hits: impl Iterator<Item = &'h Hit>,
        rule: &Rule,
        id: &str,
        now: u64,
    ) -> Option<Hold> {
        let mut estimate = 0;
        let taken = hits
            .filter_map(|h| {
                let Counter::Rate(limit) = h.counter else {
                    return None;
                };
                estimate = h.cost;
                Some(Taken {
                    quota: rule.label.clone(),
                    base_key: h.key.clone(),
                    key: keys::counter_key(&h.key, &h.counter, now),
                    what: TakenKind::Tokens {
                        limit: LimitRecord::from_limit(&limit),
                        count: CountRecord::from(CountSpec::Prompt),
                    },
                    cost: h.cost,
                })
            })
            .collect();
        let reservation = Reservation {
            id: id.to_string(),
            record_key: keys::rls_reservation(&rule.id, id),
            model: String::new(),
            estimate: Tokens {
                prompt: estimate,
                completion: 0,
                cached: 0,
            },
            taken,
            local: false,
            class: None,
            class_budgets: Vec::new(),
        };
        match reservation.encode() {
            Ok(record) => Some(Hold {
                holder: id.to_string(),
                ttl_ms: RLS_RESERVATION_TTL_MS,
                record_key: reservation.record_key,
                record,
            }),
            Err(e) => {
                self.metrics().internal_error(e.kind());
                tracing::error!(error = %e, rule = %rule.label, "taking without a reservation record: its stream-done call will find none");
                None
            }
        }
    }

    /// Settles the reservation of request `id` with `actual` tokens; a
    /// second call, or one for an unknown id, changes nothing.
    pub(super) async fn settle(&self, rule: &Rule, id: &str, actual: u64) {
        let key = keys::rls_reservation(&rule.id, id);
        let reservation = match self.counters.reservation(&key).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!(rule = %rule.label, "stream-done call for no open reservation");
                return;
            }
            Err(e @ EngineError::Record(_)) => {
                tracing::error!(error = %e, rule = %rule.label, "cannot read reservation; it expires by its TTL");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, rule = %rule.label, "cannot read reservation; it expires by its TTL");
                return;
            }
        };
        let used = Tokens {
            prompt: actual,
            completion: 0,
            cached: 0,
        };
        let plan = reservation.settle_plan(&used);
        let now = self.counters.now_ms();
        if let Err(e) = self.counters.settle(&reservation, &plan.ops, now).await {
            tracing::warn!(error = %e, rule = %rule.label, "settle failed; the estimate stays charged");
        }
    }
}
