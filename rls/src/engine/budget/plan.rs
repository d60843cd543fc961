//! The counters one LLM reservation takes: for every quota that matches the
//! request, each of its limits (tokens at the estimate, requests at 1, a
//! concurrency slot), and, when classes divide the budgets, the same limit
//! again at the class's share.

use super::shares::{cap, Shares, Use};
use crate::engine::counters::Owner;
use crate::engine::plan::Plan;
use crate::engine::reservation::{LimitRecord, TakenKind};
use crate::rules::{
    Class, FailurePolicy, Identity, IdentityKey, Limit, LlmConfig, Price, Quota, QuotaLimit,
    Tokens, MAX_COST,
};
use crate::store::keys::{self, QuotaCounter};
use crate::store::{Counter, Hit, HitState};

/// What one hit of a reservation is for.
#[derive(Clone)]
pub(crate) struct Part<'c> {
    pub quota: &'c Quota,
    /// Which of the quota's limits.
    pub limit: &'c QuotaLimit,
    pub kind: TakenKind,
    /// The class's cap when this is a class share of the quota's limit.
    pub class_cap: Option<u64>,
    /// The quota and the request's values of its keys.
    pub budget: String,
}

impl Owner for Part<'_> {
    fn on_error(&self) -> Option<FailurePolicy> {
        self.quota.on_error
    }
}

/// The hits of one reservation, and the budgets it takes a class share of.
pub(crate) struct ReservationPlan<'c> {
    pub hits: Plan<Part<'c>>,
    /// Per quota budget split by class: (budget, limits of the quota).
    pub class_budgets: Vec<(String, Vec<(u64, Use)>)>,
}

impl ReservationPlan<'_> {
    /// The hits' costs of one class budget (what a waiter asks of it).
    pub fn class_costs(&self, budget: &str) -> Vec<u64> {
        self.hits
            .iter()
            .filter(|(_, p)| p.class_cap.is_some() && p.budget == budget)
            .map(|(h, _)| h.cost)
            .collect()
    }

    /// What the store said of one class budget's counters:
    /// (cap, remaining, reset after ms) each.
    pub fn class_states(&self, budget: &str, states: &[HitState]) -> Vec<(u64, u64, u64)> {
        self.hits
            .with_states(states)
            .filter(|(_, p, _)| p.class_cap.is_some() && p.budget == budget)
            .map(|(_, p, st)| (p.class_cap.unwrap_or(0), st.remaining, st.reset_after_ms))
            .collect()
    }
}

/// The counters a reservation of `estimate` by `id` (of `class`) takes.
pub(crate) fn plan<'c>(
    shares: &Shares,
    llm: &'c LlmConfig,
    id: &Identity,
    class: Option<&Class>,
    estimate: Tokens,
    now: u64,
) -> ReservationPlan<'c> {
    let mut plan = ReservationPlan {
        hits: Plan::default(),
        class_budgets: Vec::new(),
    };
    for q in llm.quotas.iter().filter(|q| q.matches(id)) {
        let values = keys::quota_values(q.matchers.iter().map(|(k, _)| k.of(id)));
        let budget = format!("{}:{values}", q.id);
        // A quota that already matches on the class is that class's own.
        let split = class.filter(|c| {
            c.share.is_some() && !q.matchers.iter().any(|(k, _)| *k == IdentityKey::Class)
        });
        let uses: Vec<(u64, Use)> = q
            .limits
            .iter()
            .map(|l| match l {
                QuotaLimit::Tokens(l) | QuotaLimit::Requests(l) | QuotaLimit::Spend(l) => {
                    (l.amount, Use::Rate)
                }
                QuotaLimit::Concurrent { max } => (*max, Use::Slots),
            })
            .collect();
        let ratio = split.map(|c| shares.ratio(&budget, &llm.classes, c, &uses, now));
        let price = llm.price(&id.model);
        for limit in &q.limits {
            let (counter, cost, kind, which) = hit_of(q, limit, price, &estimate);
            let key = keys::quota_counter(&q.id, which, &values);
            let cost = cost.min(MAX_COST);
            let mut push = |key: String, counter, kind, class_cap| {
                let hit = Hit {
                    key,
                    counter,
                    cost,
                    enforce: true,
                };
                let part = Part {
                    quota: q,
                    limit,
                    kind,
                    class_cap,
                    budget: budget.clone(),
                };
                plan.hits.push(hit, part);
            };
            if let (Some(c), Some(r)) = (split, ratio) {
                let (counter, kind, cap) = class_share(counter, kind, r);
                push(keys::class_share(&key, &c.name), counter, kind, Some(cap));
            }
            push(key, counter, kind, None);
        }
        if split.is_some() {
            plan.class_budgets.push((budget, uses));
        }
    }
    plan
}

/// One limit of a quota as a counter, its cost for `estimate`, the record
/// of what it takes, and its key's kind. A spend limit needs the model's
/// price: admission refuses an unpriced model before it plans
/// (`stages::priced`), and a plan without one could never fit.
fn hit_of<'l>(
    q: &Quota,
    limit: &'l QuotaLimit,
    price: Option<&Price>,
    estimate: &Tokens,
) -> (Counter, u64, TakenKind, QuotaCounter<'l>) {
    match limit {
        QuotaLimit::Spend(l) => {
            let (cost, price) = match price {
                Some(p) => (p.cost(estimate), *p),
                None => (MAX_COST, Price::default()),
            };
            (
                Counter::Rate(*l),
                cost,
                TakenKind::Spend {
                    limit: LimitRecord::from_limit(l),
                    price,
                },
                QuotaCounter::Spend(l),
            )
        }
        QuotaLimit::Tokens(l) => (
            Counter::Rate(*l),
            q.count.cost(estimate),
            TakenKind::Tokens {
                limit: LimitRecord::from_limit(l),
                count: q.count.into(),
            },
            QuotaCounter::Tokens(l),
        ),
        QuotaLimit::Requests(l) => (
            Counter::Rate(*l),
            1,
            TakenKind::Requests,
            QuotaCounter::Requests(l),
        ),
        QuotaLimit::Concurrent { max } => (
            Counter::Slots { max: *max },
            1,
            TakenKind::Slot { max: *max },
            QuotaCounter::Concurrent,
        ),
    }
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
                TakenKind::Spend { price, .. } => TakenKind::Spend {
                    limit: LimitRecord::from_limit(&limit),
                    price,
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
