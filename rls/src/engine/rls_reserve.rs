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

use super::budget::{CountRecord, LimitRecord, Reservation, Settlement, Taken, TakenKind};
use super::decide::Engine;
use crate::rules::{Rule, Tokens};
use crate::store::{counter_key, Counter, Hit, Hold};

impl Engine {
    /// The hold that records what a reserving descriptor takes.
    pub(super) fn rls_hold<'h>(
        &self,
        hits: impl Iterator<Item = &'h Hit>,
        rule: &Rule,
        id: &str,
        now: u64,
    ) -> Hold {
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
                    key: counter_key(&h.key, &h.counter, now),
                    what: TakenKind::Tokens {
                        limit: LimitRecord::from_limit(&limit),
                        count: CountRecord::from(crate::rules::CountSpec::Prompt),
                    },
                    cost: h.cost,
                })
            })
            .collect();
        let reservation = Reservation {
            id: id.to_string(),
            record_key: record_key(rule, id),
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
        Hold {
            holder: id.to_string(),
            ttl_ms: RLS_RESERVATION_TTL_MS,
            record_key: reservation.record_key.clone(),
            record: serde_json::to_vec(&reservation).unwrap_or_default(),
        }
    }

    /// Settles the reservation of request `id` with `actual` tokens; a
    /// second call, or one for an unknown id, changes nothing.
    pub(super) async fn rls_settle(&self, rule: &Rule, id: &str, actual: u64) {
        let key = record_key(rule, id);
        let reservation = match self.find_reservation(&key).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!(rule = %rule.label, "stream-done call for no open reservation");
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
        if let Err(e) = self.settle(&reservation, Settlement::Usage(used)).await {
            tracing::warn!(error = %e, rule = %rule.label, "settle failed; the estimate stays charged");
        }
    }
}

/// How long an RLS reservation waits for its stream-done call.
pub const RLS_RESERVATION_TTL_MS: u64 = 600_000;

fn record_key(rule: &Rule, id: &str) -> String {
    let id: String = id
        .chars()
        .take(128)
        .map(|c| if c == ':' { '_' } else { c })
        .collect();
    format!("tg:{{{}}}:rres:{id}", rule.id)
}
