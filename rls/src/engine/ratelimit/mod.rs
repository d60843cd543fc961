//! Rate limit decisions: from a [`Check`] and the rules in force to a
//! [`Decision`], for the RLS service and the HTTP check API.
//!
//! Each descriptor finds its rule in the descriptor tree (or brings its own
//! limit); `replaces` and `unlimited` drop rules; every limit of every
//! remaining rule becomes one hit. The domain's [`Counting`] says how the
//! hits are taken: all in one all-or-nothing step (tollgate's default), or
//! each on its own with every hit counted (envoyproxy/ratelimit's,
//! `Store::count`). The per-hit states then fold into one status per
//! descriptor (`fold`), and the statuses into the overall code, with the
//! peer's quota mode and global shadow mode. Descriptors of a reserving
//! rule leave a reservation that the stream-done call settles (`reserve`).

mod check;
mod fold;
mod reserve;

pub use check::{Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit};
pub use reserve::RLS_RESERVATION_TTL_MS;

use super::counters::{Counters, Owner};
use super::plan::Plan;
use crate::metrics::Metrics;
use crate::rules::{Counting, DomainMode, FailurePolicy, Limit, Rule, RuleSet, MAX_COST};
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
        let mode = rules.mode(&check.domain);
        let mut results = fold::empty_results(check);
        let Planned {
            takes,
            gives,
            reserving,
            settles,
        } = plan(rules, mode, check, &mut results);
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
            taken = self.take(mode.counting, &takes, hold.as_ref(), now).await;
            if !taken.admitted && mode.counting != Counting::EveryHit {
                untaken(&takes, &mut taken.hits);
            }
        }
        for (hit, owner, state) in takes.with_states(&taken.hits) {
            fold::count(self.metrics(), mode, check, hit, owner, state);
        }
        for s in &settles {
            self.settle(s.rule, &s.id, s.actual).await;
        }
        for (plan, states) in [(&takes, &taken.hits), (&gives, &given)] {
            for (hit, owner, state) in plan.with_states(states) {
                fold::report(&mut results[owner.descriptor], hit, owner.rule, state);
            }
        }
        Decision {
            code: fold::overall(mode, &results),
            descriptors: results,
        }
    }

    /// Takes the hits as the domain counts them.
    async fn take(
        &self,
        counting: Counting,
        takes: &Plan<RuleHit<'_>>,
        hold: Option<&crate::store::Hold>,
        now: u64,
    ) -> TakeOutcome {
        match counting {
            Counting::AllOrNothing => self.counters.take("take", takes, hold, now).await.outcome,
            Counting::EveryHit => self.counters.count("count", takes, now).await.outcome,
            Counting::StopWhenOver => {
                // Every hit fits: all are taken at once. Otherwise nothing
                // was, and only the hits that did not fit are counted, as
                // envoyproxy/ratelimit does with
                // STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT.
                let mut first = self.counters.take("take", takes, hold, now).await.outcome;
                if first.admitted {
                    return first;
                }
                let mut over = Plan::default();
                let mut at = Vec::new();
                for (i, (hit, owner, state)) in takes.with_states(&first.hits).enumerate() {
                    if state.over {
                        over.push(hit.clone(), *owner);
                        at.push(i);
                    }
                }
                let counted = self.counters.count("count", &over, now).await.outcome;
                for (i, state) in at.into_iter().zip(counted.hits) {
                    if let Some(s) = first.hits.get_mut(i) {
                        *s = state;
                    }
                }
                first
            }
        }
    }
}

/// A denied all-or-nothing step took nothing: what a hit that fitted has
/// left is what it had, not what it would have had.
fn untaken(takes: &Plan<RuleHit<'_>>, states: &mut [crate::store::HitState]) {
    for (hit, st) in takes.hits().iter().zip(states) {
        if let (false, Counter::Rate(l)) = (st.over, hit.counter) {
            st.remaining = st.remaining.saturating_add(hit.cost).min(l.amount);
        }
    }
}

/// What one descriptor met in the rules.
#[derive(Clone, Copy)]
struct Matched<'r> {
    rule: Option<&'r Rule>,
    /// A trailing `phase=done` on a reserving rule's descriptor settles
    /// that rule's reservation.
    done: bool,
    /// The request's own limit, counted under the domain's override rule.
    own: Option<Limit>,
}

/// Each descriptor's rule: its own limit if it brings one (in a domain with
/// rules), else the tree's.
fn matched<'r>(rules: &'r RuleSet, check: &Check) -> Vec<Matched<'r>> {
    let lookup = |entries: &[(String, String)]| {
        let entries = entries.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        rules
            .tree
            .lookup(&check.domain, entries)
            .and_then(|i| rules.get(i))
    };
    let of = |rule, done| Matched {
        rule,
        done,
        own: None,
    };
    check
        .descriptors
        .iter()
        .map(|d| {
            if let Some(own) = d.limit {
                if let Some(rule) = rules.limit_override(&check.domain) {
                    return Matched {
                        rule: Some(rule),
                        done: false,
                        own: Some(own),
                    };
                }
            }
            if let Some((last, rest)) = d.entries.split_last() {
                if last.0 == DONE_KEY && last.1 == DONE_VALUE {
                    if let Some(rule) = lookup(rest).filter(|r| r.reserve.is_some()) {
                        return of(Some(rule), true);
                    }
                }
            }
            of(lookup(&d.entries), false)
        })
        .collect()
}

/// Matches rules, applies `replaces`, and builds the hits to take and to
/// give back; marks unlimited descriptors and the rules' quota mode and
/// metadata in `results`.
fn plan<'r>(
    rules: &'r RuleSet,
    mode: &DomainMode,
    check: &Check,
    results: &mut [DescriptorResult],
) -> Planned<'r> {
    let matched = matched(rules, check);
    let replaced = replaced_names(&matched);
    let mut p = Planned::default();
    for (i, (d, m)) in check.descriptors.iter().zip(matched).enumerate() {
        let Some(rule) = m.rule else { continue };
        if rule.unlimited {
            results[i].remaining = u64::from(u32::MAX);
            continue;
        }
        if rule.name.as_deref().is_some_and(|n| replaced.contains(n)) {
            continue;
        }
        let cost = d.hits.unwrap_or(check.hits.max(1)).min(MAX_COST);
        let id = reservation_id(rule, d);
        if m.done {
            if let Some(id) = id {
                p.settles.push(Settle {
                    rule,
                    id,
                    actual: cost,
                });
            }
            continue;
        }
        let quota = rule.quota_mode || mode.quota_mode;
        if !rule.is_no_limit() || m.own.is_some() {
            results[i].quota = quota;
            results[i].metadata = rule.metadata.clone();
        }
        let enforce = enforced(rule, mode, quota);
        if let (Some(id), false, None) = (&id, d.negative, &p.reserving) {
            p.reserving = Some((i, rule, id.clone()));
        }
        let plan = if d.negative {
            &mut p.gives
        } else {
            &mut p.takes
        };
        let own = m.own.as_slice();
        let limits = if m.own.is_some() { own } else { &rule.limits };
        for limit in limits {
            plan.push(
                Hit {
                    key: counter_key(rule, d, limit, m.own.is_some()),
                    counter: Counter::Rate(*limit),
                    cost,
                    enforce,
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

/// The names every matched rule's `replaces` drops.
fn replaced_names<'r>(matched: &[Matched<'r>]) -> HashSet<&'r str> {
    matched
        .iter()
        .filter_map(|m| m.rule)
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect()
}

/// The request id of a reserving rule's descriptor: the value of its
/// `reserve` key, if the descriptor has it.
fn reservation_id(rule: &Rule, d: &Descriptor) -> Option<String> {
    let key = rule.reserve.as_deref()?;
    d.entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Whether a hit may deny the step it is in. Only an all-or-nothing step
/// needs to know which hits may deny it: a quota-mode descriptor denies
/// only with all the others (decided after), and global shadow mode
/// denies nothing. Stop-when-over first asks whether every hit fits.
fn enforced(rule: &Rule, mode: &DomainMode, quota: bool) -> bool {
    match mode.counting {
        Counting::StopWhenOver => true,
        _ => !rule.shadow && !quota && !mode.shadow,
    }
}

/// The counter key of one limit of a descriptor's rule.
fn counter_key(rule: &Rule, d: &Descriptor, limit: &Limit, own: bool) -> String {
    if own {
        // A request's own limit has no path: its keys name the
        // counter beside its values.
        let entries = d.entries.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]);
        return keys::rule_counter(&rule.id, limit, entries);
    }
    // The request id names the reservation, not the counter; a
    // `share_threshold` level counts every value under its
    // wildcard in one counter.
    let reserve = rule.reserve.as_deref();
    let values = d
        .entries
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| Some(k.as_str()) != reserve)
        .map(
            |(level, (_, v))| match rule.share.get(level).and_then(Option::as_deref) {
                Some(shared) => shared,
                None => v.as_str(),
            },
        );
    keys::rule_counter(&rule.id, limit, values)
}
