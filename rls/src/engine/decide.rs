use super::check::{Check, Code, Decision, DescriptorResult, MatchedLimit};
use super::keys::counter_base;
use super::queue::WaitLines;
use super::shares::Shares;
use super::Clock;
use crate::config::FailurePolicy;
use crate::metrics::{HitOutcome, Metrics};
use crate::rules::{Limit, Rule, RuleSet, MAX_COST};
use crate::store::{Counter, Hit, HitState, Hold, MemoryStore, Store, StoreError, TakeOutcome};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Decides checks against a store. Cheap to clone; shared by every front
/// end (RLS, ext_proc, HTTP), so they take from the same counters.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    /// Used for rules whose `on_error = "local"` while the store fails.
    local: Arc<MemoryStore>,
    /// Fraction of each limit a `local` rule enforces in this instance.
    local_share: f64,
    default_policy: FailurePolicy,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Requests waiting for capacity, by counter.
    lines: Arc<WaitLines>,
    /// Class shares of budgets.
    shares: Arc<Shares>,
}

/// The descriptor entry Envoy adds to the stream-done call
/// (`generic_key { descriptor_key: phase, descriptor_value: done }`).
pub const DONE_KEY: &str = "phase";
pub const DONE_VALUE: &str = "done";

/// Everything a check asks of the store.
#[derive(Default)]
struct Planned<'r> {
    takes: Plan<'r>,
    gives: Plan<'r>,
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

/// The hits of one check, with, at the same index, what each belongs to.
#[derive(Default)]
struct Plan<'r> {
    hits: Vec<Hit>,
    owners: Vec<Owner<'r>>,
}

#[derive(Clone, Copy)]
struct Owner<'r> {
    descriptor: usize,
    rule: &'r Rule,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Engine {
        Engine {
            store,
            local: Arc::new(MemoryStore::new()),
            local_share: 1.0,
            default_policy: FailurePolicy::FailClosed,
            clock: Clock::System,
            metrics,
            lines: Arc::default(),
            shares: Arc::default(),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Engine {
        self.clock = clock;
        self
    }

    pub fn with_failure_policy(mut self, policy: FailurePolicy, local_share: f64) -> Engine {
        self.default_policy = policy;
        self.local_share = local_share;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The in-memory counters that stand in for the store under `local`.
    pub fn local_store(&self) -> &Arc<MemoryStore> {
        &self.local
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The wait lines of this instance.
    pub fn lines(&self) -> &Arc<WaitLines> {
        &self.lines
    }

    /// The class shares of budgets this instance has seen.
    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Capacity came back on these counters: wake their lines here and, if
    /// the store is shared, on the other instances (without waiting).
    pub(super) fn freed(&self, keys: &[String], announce: bool) {
        for k in keys {
            self.lines.wake(k);
        }
        if announce && !keys.is_empty() && self.store.kind() != "memory" {
            let store = self.store.clone();
            let keys = keys.to_vec();
            tokio::spawn(async move {
                if let Err(e) = store.announce_freed(&keys).await {
                    tracing::debug!(error = %e, "could not announce freed capacity");
                }
            });
        }
    }

    /// Wakes this instance's waiters when another instance frees capacity
    /// they wait for. Call once, inside the runtime.
    pub fn spawn_freed_listener(&self) {
        let Some(mut freed) = self.store.freed_by_others() else {
            return;
        };
        let lines = self.lines.clone();
        tokio::spawn(async move {
            while let Some(keys) = freed.recv().await {
                for k in &keys {
                    lines.wake(k);
                }
            }
        });
    }

    /// Finds each descriptor's rule, takes every limit of every matched rule
    /// in one all-or-nothing step, and says what each descriptor met.
    pub async fn decide(&self, rules: &RuleSet, check: &Check) -> Decision {
        let now = self.clock.now_ms();
        let Planned {
            takes,
            gives,
            reserving,
            settles,
        } = self.plan(rules, check);
        let hold = reserving.map(|(i, rule, id)| {
            let own = takes
                .hits
                .iter()
                .zip(&takes.owners)
                .filter(|(_, o)| o.descriptor == i)
                .map(|(h, _)| h);
            self.rls_hold(own, rule, &id, now)
        });

        let mut given = Vec::new();
        if !gives.hits.is_empty() {
            match self
                .timed("give_back", self.store.give_back(&gives.hits, now))
                .await
            {
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
        if !takes.hits.is_empty() {
            taken = match self
                .timed("take", self.store.take(&takes.hits, hold.as_ref(), now))
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    let policies: Vec<_> = takes
                        .owners
                        .iter()
                        .map(|o| self.policy(o.rule.on_error))
                        .collect();
                    self.by_policy(&takes.hits, &policies, None, e, now).await
                }
            };
        }
        for ((hit, owner), state) in takes.hits.iter().zip(&takes.owners).zip(&taken.hits) {
            self.count(check, hit, *owner, state);
        }
        for s in &settles {
            self.rls_settle(s.rule, &s.id, s.actual).await;
        }
        let mut results = empty_results(check);
        for (plan, states) in [(&takes, &taken.hits), (&gives, &given)] {
            for ((hit, owner), state) in plan.hits.iter().zip(&plan.owners).zip(states) {
                report(&mut results[owner.descriptor], hit, owner.rule, state);
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

    /// Matches rules, applies `replaces`, and builds the hits to take and to
    /// give back.
    fn plan<'r>(&self, rules: &'r RuleSet, check: &Check) -> Planned<'r> {
        let lookup = |entries: &[(String, String)]| {
            let entries = entries.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            rules
                .tree
                .lookup(&check.domain, entries)
                .and_then(|i| rules.get(i))
        };
        // A trailing `phase=done` on a reserving rule's descriptor is the
        // stream-done call that settles the reservation.
        let matched: Vec<(Option<&Rule>, bool)> = check
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
            .collect();
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
            let id = rule.reserve.as_deref().and_then(|key| {
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
                plan.hits.push(Hit {
                    // The request id names the reservation, not the counter.
                    key: counter_base(rule, limit, &d.entries, rule.reserve.as_deref()),
                    counter: Counter::Rate(*limit),
                    cost,
                    enforce: !rule.shadow,
                });
                plan.owners.push(Owner {
                    descriptor: i,
                    rule,
                });
            }
        }
        p
    }

    pub(super) async fn timed<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let kind = self.store.kind();
        self.metrics
            .store_call(kind, op, started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.metrics.store_up.set(1),
            Err(e) => {
                self.metrics.store_error(kind, e.kind());
                if e.is_transient() {
                    self.metrics.store_up.set(0);
                }
            }
        }
        result
    }

    /// Answers a batch the store could not: each hit by its policy.
    /// `local` hits are taken from this instance's memory at the share of
    /// their limit (with the hold, so local slots are released too).
    pub(super) async fn by_policy(
        &self,
        hits: &[Hit],
        policies: &[FailurePolicy],
        hold: Option<&Hold>,
        error: StoreError,
        now: u64,
    ) -> TakeOutcome {
        tracing::warn!(error = %error, store = self.store.kind(), "store failed; answering by on_error policy");
        let local: Vec<Hit> = hits
            .iter()
            .zip(policies)
            .filter(|(_, p)| **p == FailurePolicy::Local)
            .map(|(h, _)| Hit {
                counter: scaled_down(h.counter, self.local_share),
                ..h.clone()
            })
            .collect();
        let mut local_states = match self.local.take(&local, hold, now).await {
            Ok(o) => o.hits.into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let mut admitted = true;
        let states = hits
            .iter()
            .zip(policies)
            .map(|(hit, &policy)| {
                self.metrics.failure_answer(match policy {
                    FailurePolicy::FailOpen => "fail_open",
                    FailurePolicy::FailClosed => "fail_closed",
                    FailurePolicy::Local => "local",
                });
                let period = match hit.counter {
                    Counter::Rate(l) => l.period.millis(),
                    Counter::Slots { .. } => 0,
                };
                let state = match policy {
                    FailurePolicy::Local => local_states.next(),
                    _ => None,
                };
                let state = state.unwrap_or(HitState {
                    over: policy != FailurePolicy::FailOpen,
                    remaining: 0,
                    reset_after_ms: period,
                    retry_after_ms: 1_000,
                });
                if state.over && hit.enforce {
                    admitted = false;
                }
                state
            })
            .collect();
        TakeOutcome {
            admitted,
            hits: states,
        }
    }

    pub(super) fn policy(&self, own: Option<FailurePolicy>) -> FailurePolicy {
        own.unwrap_or(self.default_policy)
    }

    fn count(&self, check: &Check, hit: &Hit, owner: Owner, st: &HitState) {
        let outcome = if st.over {
            HitOutcome::Over {
                shadow: owner.rule.shadow,
            }
        } else {
            // Past 80% of the limit after this hit, as envoyproxy/ratelimit.
            HitOutcome::Within {
                near: st.remaining * 5 < amount(&hit.counter),
            }
        };
        let detail = owner
            .rule
            .detailed_metric
            .then(|| detail_values(&check.descriptors[owner.descriptor].entries));
        self.metrics.rule_hit(
            &check.domain,
            &owner.rule.label,
            detail.as_deref(),
            hit.cost,
            outcome,
        );
    }
}

/// One result per descriptor: OK and no limit until a hit says otherwise.
fn empty_results(check: &Check) -> Vec<DescriptorResult> {
    check
        .descriptors
        .iter()
        .map(|_| DescriptorResult {
            code: Code::Ok,
            limit: None,
            remaining: u64::from(u32::MAX),
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
        })
        .collect()
}

/// Folds one hit's state into its descriptor's result: the limit that
/// denied is reported, else the one with the least left.
fn report(r: &mut DescriptorResult, hit: &Hit, rule: &Rule, st: &HitState) {
    let denies = st.over && hit.enforce;
    let better = match (&r.limit, denies, r.code) {
        (None, _, _) => true,
        (Some(_), true, Code::Ok) => true,
        (Some(_), false, Code::OverLimit) => false,
        (Some(_), _, _) => st.remaining < r.remaining,
    };
    if denies {
        r.code = Code::OverLimit;
        r.retry_after = r.retry_after.max(Duration::from_millis(st.retry_after_ms));
    }
    if better {
        if let Counter::Rate(limit) = hit.counter {
            r.limit = Some(MatchedLimit {
                limit,
                rule: rule.label.clone(),
            });
        }
        r.remaining = st.remaining;
        r.reset_after = Duration::from_millis(st.reset_after_ms);
    }
}

/// The most a counter allows.
fn amount(counter: &Counter) -> u64 {
    match counter {
        Counter::Rate(l) => l.amount,
        Counter::Slots { max } => *max,
    }
}

/// A counter at `share` of its size (at least 1), for `local` fallback.
fn scaled_down(counter: Counter, share: f64) -> Counter {
    let scale = |n: u64| ((n as f64 * share).ceil() as u64).max(1);
    match counter {
        Counter::Rate(l) => Counter::Rate(Limit {
            amount: scale(l.amount),
            ..l
        }),
        Counter::Slots { max } => Counter::Slots { max: scale(max) },
    }
}

fn detail_values(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
