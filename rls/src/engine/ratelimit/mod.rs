//! Rate limit decisions: from a [`Check`] and the rules in force to a
//! [`Decision`], for the RLS service and the HTTP check API.
//!
//! Each descriptor finds its rule in the descriptor tree; `replaces` and
//! `unlimited` drop rules; every limit of every remaining rule becomes one
//! hit, and all hits are taken in one all-or-nothing step (`counters`).
//! The per-hit states then fold into one status per descriptor (`fold`).
//! Descriptors of a reserving rule leave a reservation that the
//! stream-done call settles (`reserve`).

mod check;
mod fold;
mod reserve;

pub use check::{Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit};
pub use reserve::RLS_RESERVATION_TTL_MS;

use super::counters::{Counters, Owner};
use super::plan::Plan;
use crate::metrics::Metrics;
use crate::rules::{FailurePolicy, Rule, RuleSet, MAX_COST};
use crate::store::{keys, Counter, Hit, TakeOutcome};
use std::collections::HashSet;

/// The descriptor entry Envoy adds to the stream-done call
/// (`generic_key { descriptor_key: phase, descriptor_value: done }`).
pub const DONE_KEY: &str = "phase";
pub const DONE_VALUE: &str = "done";

/// Decides rate limit checks. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    counters: Counters,
}

/// What one hit of a check belongs to.
#[derive(Clone, Copy)]
struct RuleHit<'r> {
    descriptor: usize,
    rule: &'r Rule,
}

impl Owner for RuleHit<'_> {
    fn on_error(&self) -> Option<FailurePolicy> {
        self.rule.on_error
    }

    fn leases(&self) -> bool {
        self.rule.lease
    }
}

/// Everything a check asks of the store.
#[derive(Default)]
struct Planned<'r> {
    takes: Plan<RuleHit<'r>>,
    gives: Plan<RuleHit<'r>>,
    /// The first descriptor of a reserving rule: (descriptor, rule, id).
    reserving: Option<(usize, &'r Rule, String)>,
    /// Stream-done calls to settle.
    settles: Vec<Settle<'r>>,
}

struct Settle<'r> {
    rule: &'r Rule,
    id: String,
    actual: u64,
}

impl RateLimiter {
    pub fn new(counters: Counters) -> RateLimiter {
        RateLimiter { counters }
    }

    fn metrics(&self) -> &Metrics {
        self.counters.metrics()
    }

    /// Finds each descriptor's rule, takes every limit of every matched rule
    /// in one all-or-nothing step, and says what each descriptor met.
    pub async fn decide(&self, rules: &RuleSet, check: &Check) -> Decision {
        let now = self.counters.now_ms();
        let Planned {
            takes,
            gives,
            reserving,
            settles,
        } = plan(rules, check);
        let hold = match reserving {
            Some((i, rule, id)) => {
                let own = takes
                    .iter()
                    .filter(|(_, o)| o.descriptor == i)
                    .map(|(h, _)| h);
                self.hold(own, rule, &id, now)
            }
            None => None,
        };

        let mut given = Vec::new();
        if !gives.is_empty() {
            match self.counters.give_back(gives.hits(), now).await {
                Ok(states) => given = states,
                // A lost refund only leaves a counter higher than it should
                // be until its window ends; answer OK and say so in the log.
                Err(e) => tracing::warn!(error = %e, "refund (negative hits) not applied"),
            }
        }
        let mut taken = TakeOutcome {
            admitted: true,
            hits: vec![],
        };
        if !takes.is_empty() {
            taken = self
                .counters
                .take("take", &takes, hold.as_ref(), now)
                .await
                .outcome;
        }
        for (hit, owner, state) in takes.with_states(&taken.hits) {
            fold::count(self.metrics(), check, hit, owner, state);
        }
        for s in &settles {
            self.settle(s.rule, &s.id, s.actual).await;
        }
        let mut results = fold::empty_results(check);
        for (plan, states) in [(&takes, &taken.hits), (&gives, &given)] {
            for (hit, owner, state) in plan.with_states(states) {
                fold::report(&mut results[owner.descriptor], hit, owner.rule, state);
            }
        }
        Decision {
            code: if taken.admitted {
                Code::Ok
            } else {
                Code::OverLimit
            },
            descriptors: results,
        }
    }
}

/// Each descriptor's rule, and whether the descriptor is a stream-done
/// call: a trailing `phase=done` on a reserving rule's descriptor settles
/// that rule's reservation.
fn matched<'r>(rules: &'r RuleSet, check: &Check) -> Vec<(Option<&'r Rule>, bool)> {
    let lookup = |entries: &[(String, String)]| {
        let entries = entries.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        rules
            .tree
            .lookup(&check.domain, entries)
            .and_then(|i| rules.get(i))
    };
    check
        .descriptors
        .iter()
        .map(|d| {
            if let Some((last, rest)) = d.entries.split_last() {
                if last.0 == DONE_KEY && last.1 == DONE_VALUE {
                    if let Some(rule) = lookup(rest).filter(|r| r.reserve.is_some()) {
                        return (Some(rule), true);
                    }
                }
            }
            (lookup(&d.entries), false)
        })
        .collect()
}

/// Matches rules, applies `replaces`, and builds the hits to take and to
/// give back.
fn plan<'r>(rules: &'r RuleSet, check: &Check) -> Planned<'r> {
    let matched = matched(rules, check);
    let replaced: HashSet<&str> = matched
        .iter()
        .filter_map(|(r, _)| *r)
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect();
    let mut p = Planned::default();
    for (i, (d, (rule, done))) in check.descriptors.iter().zip(matched).enumerate() {
        let Some(rule) = rule else { continue };
        if rule.unlimited || rule.name.as_deref().is_some_and(|n| replaced.contains(n)) {
            continue;
        }
        let cost = d.hits.unwrap_or(check.hits.max(1)).min(MAX_COST);
        let reserve = rule.reserve.as_deref();
        let id = reserve.and_then(|key| {
            d.entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        });
        if done {
            if let Some(id) = id {
                p.settles.push(Settle {
                    rule,
                    id,
                    actual: cost,
                });
            }
            continue;
        }
        let plan = if d.negative {
            &mut p.gives
        } else {
            &mut p.takes
        };
        if let (Some(id), false, None) = (&id, d.negative, &p.reserving) {
            p.reserving = Some((i, rule, id.clone()));
        }
        for limit in &rule.limits {
            // The request id names the reservation, not the counter.
            let values = d
                .entries
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != reserve)
                .map(|(_, v)| v.as_str());
            plan.push(
                Hit {
                    key: keys::rule_counter(&rule.id, limit, values),
                    counter: Counter::Rate(*limit),
                    cost,
                    enforce: !rule.shadow,
                },
                RuleHit {
                    descriptor: i,
                    rule,
                },
            );
        }
    }
    p
}
