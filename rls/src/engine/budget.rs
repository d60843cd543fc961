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
use super::shares::{cap, Use};
use crate::rules::{
    Class, CountSpec, Identity, IdentityKey, Limit, LlmConfig, Quota, QuotaLimit, Tokens,
};
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
    /// The class it was taken for, when classes divide the budgets, and the
    /// budgets (quota and values) whose class shares it used.
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub class_budgets: Vec<String>,
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
        /// The counter that said no (and longest): where to wait for it.
        /// Empty when the store failed and `on_error` said no: nothing to
        /// wait for.
        line: String,
        /// It is a concurrency limit: it frees when a request ends, at no
        /// time the store can tell.
        on_release: bool,
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

/// The counters one reservation takes, each with what it belongs to.
pub(super) struct Plan<'c> {
    pub hits: Vec<Hit>,
    pub owners: Vec<Part<'c>>,
    /// Per quota budget split by class: (budget, limits of the quota).
    pub class_budgets: Vec<(String, Vec<(u64, Use)>)>,
}

/// What one hit of a plan is for.
#[derive(Clone)]
pub(super) struct Part<'c> {
    pub quota: &'c Quota,
    pub kind: TakenKind,
    /// The class's cap when this is a class share of the quota's limit.
    pub class_cap: Option<u64>,
    /// The quota and the request's values of its keys.
    pub budget: String,
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
        let now = self.clock().now_ms();
        let plan = self.plan_reservation(llm, id, class, estimate, now);
        let reservation_id = new_id();
        let record_tag = plan
            .owners
            .first()
            .map(|p| p.quota.id.to_string())
            .unwrap_or_default();
        let mut reservation = Reservation {
            id: reservation_id.clone(),
            record_key: format!("tg:{{{record_tag}}}:res:{reservation_id}"),
            model: id.model.clone(),
            estimate,
            taken: plan
                .hits
                .iter()
                .zip(&plan.owners)
                .map(|(h, p)| Taken {
                    quota: p.quota.name.clone(),
                    base_key: h.key.clone(),
                    key: counter_key(&h.key, &h.counter, now),
                    what: p.kind,
                    cost: h.cost,
                })
                .collect(),
            local: false,
            class: class.map(|c| c.name.clone()),
            class_budgets: plan.class_budgets.iter().map(|(b, _)| b.clone()).collect(),
        };
        if plan.hits.is_empty() {
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
        let mut store_failed = false;
        let outcome = match self
            .timed("reserve", self.store().take(&plan.hits, Some(&hold), now))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                store_failed = true;
                let policies: Vec<_> = plan
                    .owners
                    .iter()
                    .map(|p| self.policy(p.quota.on_error))
                    .collect();
                reservation.local = policies.contains(&crate::config::FailurePolicy::Local);
                self.by_policy(&plan.hits, &policies, Some(&hold), e, now)
                    .await
            }
        };
        if let Some(c) = class {
            self.observe_shares(llm, c, &plan, &outcome.hits, outcome.admitted, now);
        }
        let headers = view(&plan.hits, &plan.owners, &outcome.hits);
        if outcome.admitted {
            return Reserved::Admitted {
                reservation,
                headers,
            };
        }
        let binding = plan
            .hits
            .iter()
            .zip(&plan.owners)
            .zip(&outcome.hits)
            .filter(|((h, _), st)| st.over && h.enforce)
            .max_by_key(|(_, st)| st.retry_after_ms);
        let (quota, retry, mut line, on_release) = match binding {
            Some(((h, p), st)) => (
                p.quota.name.clone(),
                st.retry_after_ms,
                h.key.clone(),
                matches!(h.counter, Counter::Slots { .. }),
            ),
            None => Default::default(),
        };
        if store_failed {
            // Denied by `on_error` while the store is down: there is no
            // line to wait in, and no request waits on a dead store.
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

    /// The counters a reservation of `estimate` by `id` (of `class`) takes.
    pub(super) fn plan_reservation<'c>(
        &self,
        llm: &'c LlmConfig,
        id: &Identity,
        class: Option<&Class>,
        estimate: Tokens,
        now: u64,
    ) -> Plan<'c> {
        let mut plan = Plan {
            hits: Vec::new(),
            owners: Vec::new(),
            class_budgets: Vec::new(),
        };
        for q in llm.quotas.iter().filter(|q| q.matches(id)) {
            let values = identity_values(q, id);
            let budget = format!("{}:{values}", q.id);
            // A quota that already matches on the class is that class's own.
            let split = class.filter(|c| {
                c.share.is_some() && !q.matchers.iter().any(|(k, _)| *k == IdentityKey::Class)
            });
            let uses: Vec<(u64, Use)> = q
                .limits
                .iter()
                .map(|l| match l {
                    QuotaLimit::Tokens(l) | QuotaLimit::Requests(l) => (l.amount, Use::Rate),
                    QuotaLimit::Concurrent { max } => (*max, Use::Slots),
                })
                .collect();
            let ratio = split.map(|c| self.shares().ratio(&budget, &llm.classes, c, &uses, now));
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
                let key = format!("tg:{{{}}}:{tag}:{values}", q.id);
                let cost = cost.min(crate::rules::MAX_COST);
                let mut push = |key: String, counter, kind, class_cap| {
                    plan.hits.push(Hit {
                        key,
                        counter,
                        cost,
                        enforce: true,
                    });
                    plan.owners.push(Part {
                        quota: q,
                        kind,
                        class_cap,
                        budget: budget.clone(),
                    });
                };
                if let (Some(c), Some(r)) = (split, ratio) {
                    let (counter, kind, cap) = class_share(counter, kind, r);
                    let mut class_key = format!("{key}:class=");
                    super::keys::escape_into(&mut class_key, &c.name);
                    push(class_key, counter, kind, Some(cap));
                }
                push(key, counter, kind, None);
            }
            if split.is_some() {
                plan.class_budgets.push((budget, uses));
            }
        }
        plan
    }

    /// Tells the class shares what the store said of the class counters.
    fn observe_shares(
        &self,
        llm: &LlmConfig,
        class: &Class,
        plan: &Plan<'_>,
        states: &[HitState],
        admitted: bool,
        now: u64,
    ) {
        for (budget, _) in &plan.class_budgets {
            let seen: Vec<(u64, u64, u64)> = plan
                .owners
                .iter()
                .zip(states)
                .filter(|(p, _)| p.class_cap.is_some() && &p.budget == budget)
                .map(|(p, st)| (p.class_cap.unwrap_or(0), st.remaining, st.reset_after_ms))
                .collect();
            self.shares()
                .observed(budget, &llm.classes, &class.name, &seen, admitted, now);
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
        // Counters this settle gives capacity back to: their lines wake.
        let mut freed = Vec::new();
        for t in &reservation.taken {
            match t.what {
                TakenKind::Tokens { limit, count } => {
                    let Some(limit) = limit.to_limit() else {
                        continue;
                    };
                    let used = count.cost(&actual);
                    if used < t.cost {
                        freed.push(t.base_key.clone());
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
                TakenKind::Slot { max } => {
                    freed.push(t.base_key.clone());
                    ops.push(SettleOp::Release {
                        key: t.key.clone(),
                        max,
                    })
                }
            }
        }
        let store = if reservation.local {
            self.local_store().clone() as std::sync::Arc<dyn crate::store::Store>
        } else {
            self.store().clone()
        };
        let settled = self
            .timed(
                "settle",
                store.settle(&reservation.record_key, &reservation.id, &ops, now),
            )
            .await?;
        if settled {
            if let Some(class) = &reservation.class {
                for b in &reservation.class_budgets {
                    self.shares().released(b, class, now);
                }
            }
            self.freed(&freed, !reservation.local);
        }
        Ok(settled)
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

fn view(hits: &[Hit], owners: &[Part<'_>], states: &[HitState]) -> BudgetView {
    let mut v = BudgetView::default();
    for ((hit, part), st) in hits.iter().zip(owners).zip(states) {
        let Counter::Rate(limit) = hit.counter else {
            continue;
        };
        let slot = match part.kind {
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

/// A class's share of a counter: the same counter at `ratio` of its size.
fn class_share(counter: Counter, kind: TakenKind, ratio: f64) -> (Counter, TakenKind, u64) {
    match (counter, kind) {
        (Counter::Rate(l), kind) => {
            let amount = cap(l.amount, ratio);
            let limit = Limit { amount, ..l };
            let kind = match kind {
                TakenKind::Tokens { count, .. } => TakenKind::Tokens {
                    limit: LimitRecord::from_limit(&limit),
                    count,
                },
                other => other,
            };
            (Counter::Rate(limit), kind, amount)
        }
        (Counter::Slots { max }, _) => {
            let max = cap(max, ratio);
            (Counter::Slots { max }, TakenKind::Slot { max }, max)
        }
    }
}

/// 122 random bits: unguessable and unique across instances.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
