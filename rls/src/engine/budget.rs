//! Token budgets: reserve an estimate when an LLM request arrives, settle
//! the actual usage when its response ends.
//!
//! A reservation takes every limit of every matching quota in one
//! all-or-nothing step (tokens at the estimate, requests at 1, a
//! concurrency slot), and leaves a record with a TTL in the store. Settling
//! refunds unused tokens into the window or bucket they came from, charges
//! usage above the estimate to the current one, frees the slot, and deletes
//! the record, once: a second settle finds no record and changes nothing.

use super::decide::Engine;
use crate::rules::{CountSpec, Identity, Limit, LlmConfig, Quota, QuotaLimit, Tokens};
use crate::store::{counter_key, Counter, Hit, HitState, Hold, SettleOp};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What one reservation took, enough to settle it from any instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub record_key: String,
    pub model: String,
    pub estimate: Tokens,
    pub taken: Vec<Taken>,
    /// Taken from this instance's memory while the store was down.
    pub local: bool,
}

/// One counter a reservation took from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taken {
    pub quota: String,
    /// The counter's key without its window (charges go to the current one).
    pub base_key: String,
    /// The exact key taken from, window included (refunds go back here).
    pub key: String,
    pub what: TakenKind,
    pub cost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TakenKind {
    Tokens {
        limit: LimitRecord,
        count: CountRecord,
    },
    Requests,
    Slot {
        max: u64,
    },
}

/// `Limit` and `CountSpec` as stored in a record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimitRecord {
    pub amount: u64,
    pub period_ms: u64,
    pub bucket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CountRecord {
    pub prompt: f64,
    pub completion: f64,
    pub cached: f64,
}

impl From<CountSpec> for CountRecord {
    fn from(c: CountSpec) -> Self {
        let (prompt, completion, cached) = match c {
            CountSpec::Prompt => (1.0, 0.0, 1.0),
            CountSpec::Completion => (0.0, 1.0, 0.0),
            CountSpec::Total => (1.0, 1.0, 1.0),
            CountSpec::Weights {
                prompt,
                completion,
                cached,
            } => (prompt, completion, cached),
        };
        CountRecord {
            prompt,
            completion,
            cached,
        }
    }
}

impl CountRecord {
    fn cost(&self, t: &Tokens) -> u64 {
        CountSpec::Weights {
            prompt: self.prompt,
            completion: self.completion,
            cached: self.cached,
        }
        .cost(t)
    }
}

impl LimitRecord {
    pub(super) fn from_limit(l: &Limit) -> LimitRecord {
        LimitRecord {
            amount: l.amount,
            period_ms: l.period.millis(),
            bucket: l.algorithm == crate::rules::Algorithm::TokenBucket,
        }
    }

    fn to_limit(self) -> Option<Limit> {
        use crate::rules::{Algorithm, Period};
        let period = [Period::Second, Period::Minute, Period::Hour, Period::Day]
            .into_iter()
            .find(|p| p.millis() == self.period_ms)?;
        Some(Limit {
            amount: self.amount,
            period,
            algorithm: if self.bucket {
                Algorithm::TokenBucket
            } else {
                Algorithm::FixedWindow
            },
        })
    }
}

/// What `tokens` cost under a token entry's count; 0 for other entries.
pub fn token_cost(what: &TakenKind, tokens: &Tokens) -> u64 {
    match what {
        TakenKind::Tokens { count, .. } => count.cost(tokens),
        _ => 0,
    }
}

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
    },
}

/// The tightest token and request budgets after a decision, for
/// `x-ratelimit-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetView {
    pub tokens: Option<Remaining>,
    pub requests: Option<Remaining>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    pub reset_after: Duration,
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settlement {
    /// The upstream reported this usage.
    Usage(Tokens),
    /// No usage: charge as if these were used (the policy decided them).
    Assumed(Tokens),
}

impl Engine {
    /// Reserves `estimate` against every quota that matches `id`.
    pub async fn reserve(
        &self,
        llm: &LlmConfig,
        id: &Identity,
        estimate: Tokens,
        ttl: Duration,
    ) -> Reserved {
        let now = self.clock().now_ms();
        let quotas: Vec<&Quota> = llm.quotas_for(id).collect();
        let reservation_id = new_id();
        let mut hits = Vec::new();
        let mut owners: Vec<(&Quota, TakenKind)> = Vec::new();
        for q in &quotas {
            let values = identity_values(q, id);
            for limit in &q.limits {
                let (counter, cost, kind, tag) = match limit {
                    QuotaLimit::Tokens(l) => (
                        Counter::Rate(*l),
                        q.count.cost(&estimate),
                        TakenKind::Tokens {
                            limit: LimitRecord::from_limit(l),
                            count: q.count.into(),
                        },
                        format!("t{}{}", l.period.as_str(), alg(l)),
                    ),
                    QuotaLimit::Requests(l) => (
                        Counter::Rate(*l),
                        1,
                        TakenKind::Requests,
                        format!("r{}{}", l.period.as_str(), alg(l)),
                    ),
                    QuotaLimit::Concurrent { max } => (
                        Counter::Slots { max: *max },
                        1,
                        TakenKind::Slot { max: *max },
                        "c".to_string(),
                    ),
                };
                hits.push(Hit {
                    key: format!("tg:{{{}}}:{tag}:{values}", q.id),
                    counter,
                    cost: cost.min(crate::rules::MAX_COST),
                    enforce: true,
                });
                owners.push((q, kind));
            }
        }
        let record_tag = quotas.first().map(|q| q.id.to_string()).unwrap_or_default();
        let mut reservation = Reservation {
            id: reservation_id.clone(),
            record_key: format!("tg:{{{record_tag}}}:res:{reservation_id}"),
            model: id.model.clone(),
            estimate,
            taken: hits
                .iter()
                .zip(&owners)
                .map(|(h, (q, kind))| Taken {
                    quota: q.name.clone(),
                    base_key: h.key.clone(),
                    key: counter_key(&h.key, &h.counter, now),
                    what: *kind,
                    cost: h.cost,
                })
                .collect(),
            local: false,
        };
        if hits.is_empty() {
            return Reserved::Admitted {
                reservation,
                headers: BudgetView::default(),
            };
        }
        let hold = Hold {
            holder: reservation_id,
            ttl_ms: ttl.as_millis() as u64,
            record_key: reservation.record_key.clone(),
            record: serde_json::to_vec(&reservation).unwrap_or_default(),
        };
        let outcome = match self
            .timed("reserve", self.store().take(&hits, Some(&hold), now))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let policies: Vec<_> = owners
                    .iter()
                    .map(|(q, _)| self.policy(q.on_error))
                    .collect();
                reservation.local = policies.contains(&crate::config::FailurePolicy::Local);
                self.by_policy(&hits, &policies, Some(&hold), e, now).await
            }
        };
        let headers = view(&hits, &owners, &outcome.hits);
        if outcome.admitted {
            Reserved::Admitted {
                reservation,
                headers,
            }
        } else {
            let (quota, retry) = hits
                .iter()
                .zip(&owners)
                .zip(&outcome.hits)
                .filter(|(_, st)| st.over)
                .map(|((_, (q, _)), st)| (q.name.clone(), st.retry_after_ms))
                .max_by_key(|(_, r)| *r)
                .unwrap_or_default();
            Reserved::Denied {
                quota,
                retry_after: Duration::from_millis(retry),
                headers,
            }
        }
    }

    /// Settles a reservation; `Ok(false)` if it was already settled or
    /// expired.
    pub async fn settle(
        &self,
        reservation: &Reservation,
        settlement: Settlement,
    ) -> Result<bool, crate::store::StoreError> {
        let now = self.clock().now_ms();
        let actual = match settlement {
            Settlement::Usage(t) | Settlement::Assumed(t) => t,
        };
        let mut ops = Vec::new();
        for t in &reservation.taken {
            match t.what {
                TakenKind::Tokens { limit, count } => {
                    let Some(limit) = limit.to_limit() else {
                        continue;
                    };
                    let used = count.cost(&actual);
                    if used < t.cost {
                        ops.push(SettleOp::Refund {
                            key: t.key.clone(),
                            limit,
                            cost: t.cost - used,
                        });
                    } else if used > t.cost {
                        ops.push(SettleOp::Charge {
                            key: t.base_key.clone(),
                            limit,
                            cost: used - t.cost,
                        });
                    }
                }
                TakenKind::Requests => {}
                TakenKind::Slot { max } => ops.push(SettleOp::Release {
                    key: t.key.clone(),
                    max,
                }),
            }
        }
        let store = if reservation.local {
            self.local_store().clone() as std::sync::Arc<dyn crate::store::Store>
        } else {
            self.store().clone()
        };
        self.timed(
            "settle",
            store.settle(&reservation.record_key, &reservation.id, &ops, now),
        )
        .await
    }

    /// Reads a reservation back from the store (for a settle that arrives
    /// at another instance, as RLS `apply_on_stream_done` calls may).
    pub async fn find_reservation(
        &self,
        record_key: &str,
    ) -> Result<Option<Reservation>, crate::store::StoreError> {
        let now = self.clock().now_ms();
        let raw = self.store().record(record_key, now).await?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }
}

fn alg(l: &Limit) -> char {
    match l.algorithm {
        crate::rules::Algorithm::FixedWindow => 'w',
        crate::rules::Algorithm::TokenBucket => 'b',
    }
}

/// The request's values of the keys the quota matches on: a `*` quota
/// keeps one budget per distinct value.
fn identity_values(q: &Quota, id: &Identity) -> String {
    let mut out = String::new();
    for (i, (k, _)) in q.matchers.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        super::keys::escape_into(&mut out, k.of(id).unwrap_or(""));
    }
    out
}

fn view(hits: &[Hit], owners: &[(&Quota, TakenKind)], states: &[HitState]) -> BudgetView {
    let mut v = BudgetView::default();
    for ((hit, (_, kind)), st) in hits.iter().zip(owners).zip(states) {
        let Counter::Rate(limit) = hit.counter else {
            continue;
        };
        let slot = match kind {
            TakenKind::Tokens { .. } => &mut v.tokens,
            TakenKind::Requests => &mut v.requests,
            TakenKind::Slot { .. } => continue,
        };
        let r = Remaining {
            limit: limit.amount,
            remaining: st.remaining,
            reset_after: Duration::from_millis(st.reset_after_ms),
        };
        if slot.is_none_or(|cur| r.remaining < cur.remaining) {
            *slot = Some(r);
        }
    }
    v
}

/// 122 random bits: unguessable and unique across instances.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
