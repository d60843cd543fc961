//! From per-hit states to per-descriptor answers, and the per-rule
//! counters envoyproxy/ratelimit users know (total, over, near, within,
//! shadow).

use super::check::{Check, Code, DescriptorResult, MatchedLimit};
use super::RuleHit;
use crate::metrics::{HitOutcome, Metrics};
use crate::rules::{DomainMode, Rule};
use crate::store::{Counter, Hit, HitState};
use std::time::Duration;

/// One result per descriptor: OK, no limit and nothing left until a hit
/// says otherwise (envoyproxy/ratelimit's answer for a descriptor no limit
/// applies to).
pub(super) fn empty_results(check: &Check) -> Vec<DescriptorResult> {
    check
        .descriptors
        .iter()
        .map(|_| DescriptorResult {
            code: Code::Ok,
            limit: None,
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
            quota: false,
            metadata: None,
        })
        .collect()
}

/// Folds one hit's state into its descriptor's result: the limit that
/// denied is reported, else the one with the least left. Over the limit,
/// nothing is left (as envoyproxy/ratelimit answers), whatever the store
/// did not take.
pub(super) fn report(r: &mut DescriptorResult, hit: &Hit, rule: &Rule, st: &HitState) {
    let denies = st.over && !rule.shadow;
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
                rule: rule.wire_name().to_string(),
            });
        }
        r.remaining = if st.over { 0 } else { st.remaining };
        r.reset_after = Duration::from_millis(st.reset_after_ms);
    }
    if r.code == Code::OverLimit {
        r.remaining = 0;
    }
}

/// The request's code from its descriptors' (envoyproxy/ratelimit's rule):
/// over the limit when any descriptor not in quota mode is, or when every
/// quota-mode descriptor is; and never under global shadow mode.
pub(super) fn overall(mode: &DomainMode, results: &[DescriptorResult]) -> Code {
    let (mut failed, mut quotas, mut failed_quotas) = (0, 0, 0);
    for r in results.iter().filter(|r| r.limit.is_some()) {
        let over = r.code == Code::OverLimit;
        match (r.quota, over) {
            (true, true) => {
                quotas += 1;
                failed_quotas += 1;
            }
            (true, false) => quotas += 1,
            (false, true) => failed += 1,
            (false, false) => {}
        }
    }
    let over = failed > 0 || (quotas > 0 && quotas == failed_quotas);
    if over && !mode.shadow {
        Code::OverLimit
    } else {
        Code::Ok
    }
}

/// Counts one hit in its rule's counters.
pub(super) fn count(
    metrics: &Metrics,
    mode: &DomainMode,
    check: &Check,
    hit: &Hit,
    owner: &RuleHit,
    st: &HitState,
) {
    let outcome = if st.over {
        HitOutcome::Over {
            shadow: owner.rule.shadow || mode.shadow,
        }
    } else {
        // Past the near-limit share of the limit after this hit (80% by
        // default), as envoyproxy/ratelimit counts it.
        let amount = amount(&hit.counter);
        HitOutcome::Within {
            near: amount.saturating_sub(st.remaining) > mode.near_threshold(amount),
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
