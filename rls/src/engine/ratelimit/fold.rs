//! From per-hit states to per-descriptor answers, and the per-rule
//! counters envoyproxy/ratelimit users know (total, over, near, within,
//! shadow).

use super::check::{Check, Code, DescriptorResult, MatchedLimit};
use super::RuleHit;
use crate::metrics::{HitOutcome, Metrics};
use crate::rules::Rule;
use crate::store::{Counter, Hit, HitState};
use std::time::Duration;

/// One result per descriptor: OK and no limit until a hit says otherwise.
pub(super) fn empty_results(check: &Check) -> Vec<DescriptorResult> {
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
pub(super) fn report(r: &mut DescriptorResult, hit: &Hit, rule: &Rule, st: &HitState) {
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

/// Counts one hit in its rule's counters.
pub(super) fn count(metrics: &Metrics, check: &Check, hit: &Hit, owner: &RuleHit, st: &HitState) {
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
    metrics.rule_hit(
        &check.domain,
        &owner.rule.label,
        detail.as_deref(),
        hit.cost,
        outcome,
    );
}

/// The most a counter allows.
fn amount(counter: &Counter) -> u64 {
    match counter {
        Counter::Rate(l) => l.amount,
        Counter::Slots { max } => *max,
    }
}

fn detail_values(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
