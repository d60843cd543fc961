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
    let (mut plain_over, mut quota_over, mut quota_within) = (false, false, false);
    for r in results.iter().filter(|r| r.limit.is_some()) {
        match (r.quota, r.code == Code::OverLimit) {
            (true, true) => quota_over = true,
            (true, false) => quota_within = true,
            (false, true) => plain_over = true,
            (false, false) => {}
        }
    }
    let over = plain_over || (quota_over && !quota_within);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ratelimit::check::Descriptor;
    use crate::rules::{Algorithm, Limit, Period};

    fn check(descriptors: usize) -> Check {
        Check {
            domain: "edge".into(),
            descriptors: (0..descriptors)
                .map(|i| Descriptor {
                    entries: vec![
                        ("tenant".into(), format!("t{i}")),
                        ("path".into(), "/a".into()),
                    ],
                    hits: None,
                    negative: false,
                    limit: None,
                })
                .collect(),
            hits: 1,
        }
    }

    fn rule(name: &str) -> Rule {
        Rule {
            name: Some(name.into()),
            label: name.into(),
            ..Rule::limit_override("edge")
        }
    }

    fn hit(amount: u64, period: Period) -> Hit {
        Hit {
            key: format!("{{k}}{amount}"),
            counter: Counter::Rate(Limit::new(amount, period, Algorithm::FixedWindow)),
            cost: 1,
            enforce: true,
        }
    }

    fn within(remaining: u64, reset_after_ms: u64) -> HitState {
        HitState {
            over: false,
            remaining,
            reset_after_ms,
            retry_after_ms: 0,
        }
    }

    fn over(remaining: u64, reset_after_ms: u64, retry_after_ms: u64) -> HitState {
        HitState {
            over: true,
            remaining,
            reset_after_ms,
            retry_after_ms,
        }
    }

    fn fresh() -> DescriptorResult {
        empty_results(&check(1)).remove(0)
    }

    fn reported(r: &DescriptorResult) -> (&str, u64) {
        let m = r.limit.as_ref().expect("a limit is reported");
        (m.rule.as_str(), m.limit.amount)
    }

    #[test]
    fn every_descriptor_starts_ok_with_no_limit() {
        let results = empty_results(&check(3));
        assert_eq!(results.len(), 3);
        for r in &results {
            assert_eq!(r.code, Code::Ok);
            assert!(r.limit.is_none());
            assert_eq!((r.remaining, r.reset_after), (0, Duration::ZERO));
        }
    }

    #[test]
    fn among_passing_limits_the_one_with_least_left_is_reported() {
        let mut r = fresh();
        report(
            &mut r,
            &hit(10, Period::Second),
            &rule("a"),
            &within(5, 1_000),
        );
        report(
            &mut r,
            &hit(20, Period::Minute),
            &rule("b"),
            &within(2, 60_000),
        );
        report(
            &mut r,
            &hit(30, Period::Hour),
            &rule("c"),
            &within(7, 3_600_000),
        );
        assert_eq!(r.code, Code::Ok);
        assert_eq!(reported(&r), ("b", 20));
        assert_eq!(r.remaining, 2);
        assert_eq!(r.reset_after, Duration::from_secs(60));
    }

    #[test]
    fn on_a_tie_the_limit_found_first_stays_reported() {
        let mut r = fresh();
        report(
            &mut r,
            &hit(10, Period::Second),
            &rule("first"),
            &within(3, 1_000),
        );
        report(
            &mut r,
            &hit(20, Period::Minute),
            &rule("second"),
            &within(3, 60_000),
        );
        assert_eq!(reported(&r), ("first", 10));
        assert_eq!(r.reset_after, Duration::from_secs(1));
    }

    #[test]
    fn the_limit_that_denied_is_reported_whatever_the_others_have_left() {
        // Denied after a passing limit with less left…
        let mut r = fresh();
        report(
            &mut r,
            &hit(10, Period::Second),
            &rule("tight"),
            &within(1, 1_000),
        );
        report(
            &mut r,
            &hit(20, Period::Minute),
            &rule("denies"),
            &over(4, 60_000, 5_000),
        );
        assert_eq!(r.code, Code::OverLimit);
        assert_eq!(reported(&r), ("denies", 20));
        assert_eq!(r.remaining, 0, "over the limit nothing is left");
        assert_eq!(r.reset_after, Duration::from_secs(60));
        assert_eq!(r.retry_after, Duration::from_secs(5));
        // …and a passing limit after the denial does not take its place.
        report(
            &mut r,
            &hit(30, Period::Hour),
            &rule("after"),
            &within(0, 1_000),
        );
        assert_eq!(r.code, Code::OverLimit);
        assert_eq!(reported(&r), ("denies", 20));
        assert_eq!((r.remaining, r.reset_after), (0, Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_is_the_longest_any_denying_limit_asks_for() {
        let mut r = fresh();
        report(
            &mut r,
            &hit(10, Period::Second),
            &rule("a"),
            &over(0, 1_000, 900),
        );
        report(
            &mut r,
            &hit(20, Period::Minute),
            &rule("b"),
            &over(0, 60_000, 30_000),
        );
        report(
            &mut r,
            &hit(30, Period::Hour),
            &rule("c"),
            &over(0, 3_600_000, 2_000),
        );
        assert_eq!(r.retry_after, Duration::from_secs(30));
    }

    #[test]
    fn a_shadow_rule_over_its_limit_neither_denies_nor_leaves_anything() {
        let shadow = Rule {
            shadow: true,
            ..rule("trial")
        };
        let mut r = fresh();
        report(
            &mut r,
            &hit(5, Period::Minute),
            &shadow,
            &over(2, 60_000, 60_000),
        );
        assert_eq!(r.code, Code::Ok, "a shadow rule never denies");
        assert_eq!(r.retry_after, Duration::ZERO);
        assert_eq!(reported(&r), ("trial", 5));
        assert_eq!(r.remaining, 0, "its counter is over: nothing left");
        // A passing enforced rule is reported and keeps what it has left.
        let mut r = fresh();
        report(
            &mut r,
            &hit(5, Period::Minute),
            &rule("plain"),
            &within(2, 60_000),
        );
        assert_eq!((r.code, r.remaining), (Code::Ok, 2));
    }

    fn result(limited: bool, quota: bool, code: Code) -> DescriptorResult {
        let mut r = fresh();
        if limited {
            r.limit = Some(MatchedLimit {
                limit: Limit::new(1, Period::Minute, Algorithm::FixedWindow),
                rule: String::new(),
            });
        }
        r.quota = quota;
        r.code = code;
        r
    }

    #[test]
    fn any_descriptor_over_its_limit_denies_the_request() {
        let mode = DomainMode::default();
        let ok = || result(true, false, Code::Ok);
        let denied = || result(true, false, Code::OverLimit);
        assert_eq!(overall(&mode, &[]), Code::Ok);
        assert_eq!(overall(&mode, &[ok(), ok()]), Code::Ok);
        assert_eq!(overall(&mode, &[ok(), denied()]), Code::OverLimit);
        assert_eq!(overall(&mode, &[denied(), ok()]), Code::OverLimit);
        // Only descriptors some limit applies to count.
        assert_eq!(
            overall(&mode, &[ok(), result(false, false, Code::OverLimit)]),
            Code::Ok
        );
    }

    #[test]
    fn quota_descriptors_deny_only_when_every_one_is_over() {
        let mode = DomainMode::default();
        let q_ok = || result(true, true, Code::Ok);
        let q_over = || result(true, true, Code::OverLimit);
        let plain_ok = || result(true, false, Code::Ok);
        let plain_over = || result(true, false, Code::OverLimit);
        assert_eq!(overall(&mode, &[q_over()]), Code::OverLimit);
        assert_eq!(overall(&mode, &[q_over(), q_over()]), Code::OverLimit);
        assert_eq!(overall(&mode, &[q_over(), q_ok()]), Code::Ok);
        assert_eq!(overall(&mode, &[q_ok(), q_over()]), Code::Ok);
        assert_eq!(overall(&mode, &[q_ok(), q_ok()]), Code::Ok);
        // Plain descriptors do not count among the quota ones…
        assert_eq!(overall(&mode, &[q_over(), plain_ok()]), Code::OverLimit);
        // …and one over denies whatever the quota ones say.
        assert_eq!(overall(&mode, &[q_ok(), plain_over()]), Code::OverLimit);
    }

    #[test]
    fn global_shadow_mode_never_denies() {
        let mode = DomainMode {
            shadow: true,
            ..DomainMode::default()
        };
        assert_eq!(
            overall(&mode, &[result(true, false, Code::OverLimit)]),
            Code::Ok
        );
        assert_eq!(
            overall(&mode, &[result(true, true, Code::OverLimit)]),
            Code::Ok
        );
    }

    fn counted(metrics: &Metrics, name: &str, rule: &str) -> u64 {
        let text = metrics.render();
        let line = format!("{name}{{domain=\"edge\",rule=\"{rule}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |v| v.parse().expect("a counter value"))
    }

    #[test]
    fn a_hit_is_near_the_limit_once_more_than_the_ratio_is_used() {
        // 10 per minute, ratio 0.8: near past 8 used (the peer's
        // `limitAfterIncrease > nearLimitThreshold`).
        let (metrics, mode, check) = (Metrics::default(), DomainMode::default(), check(1));
        let r = rule("r");
        let owner = RuleHit {
            descriptor: 0,
            rule: &r,
        };
        let h = hit(10, Period::Minute);
        count(&metrics, &mode, &check, &h, &owner, &within(3, 0));
        count(&metrics, &mode, &check, &h, &owner, &within(2, 0));
        assert_eq!(
            counted(&metrics, "tollgate_rule_near_limit_total", "r"),
            0,
            "8 of 10 is not near"
        );
        count(&metrics, &mode, &check, &h, &owner, &within(1, 0));
        count(&metrics, &mode, &check, &h, &owner, &within(0, 0));
        assert_eq!(
            counted(&metrics, "tollgate_rule_near_limit_total", "r"),
            2,
            "9 and 10 of 10 are"
        );
        assert_eq!(
            counted(&metrics, "tollgate_rule_within_limit_total", "r"),
            4
        );
        count(&metrics, &mode, &check, &h, &owner, &over(0, 0, 0));
        assert_eq!(counted(&metrics, "tollgate_rule_over_limit_total", "r"), 1);
        assert_eq!(counted(&metrics, "tollgate_rule_near_limit_total", "r"), 2);
        assert_eq!(counted(&metrics, "tollgate_rule_total_hits_total", "r"), 5);
    }

    #[test]
    fn a_concurrency_counter_is_near_its_slots_by_the_same_ratio() {
        let (metrics, mode, check) = (Metrics::default(), DomainMode::default(), check(1));
        let r = rule("slots");
        let owner = RuleHit {
            descriptor: 0,
            rule: &r,
        };
        let h = Hit {
            counter: Counter::Slots { max: 5 },
            ..hit(5, Period::Minute)
        };
        count(&metrics, &mode, &check, &h, &owner, &within(1, 0));
        assert_eq!(
            counted(&metrics, "tollgate_rule_near_limit_total", "slots"),
            0,
            "4 of 5 is not past 4"
        );
        count(&metrics, &mode, &check, &h, &owner, &within(0, 0));
        assert_eq!(
            counted(&metrics, "tollgate_rule_near_limit_total", "slots"),
            1
        );
    }

    #[test]
    fn over_the_limit_under_global_shadow_mode_counts_as_shadow() {
        let metrics = Metrics::default();
        let mode = DomainMode {
            shadow: true,
            ..DomainMode::default()
        };
        let check = check(1);
        let r = rule("r");
        let owner = RuleHit {
            descriptor: 0,
            rule: &r,
        };
        count(
            &metrics,
            &mode,
            &check,
            &hit(10, Period::Minute),
            &owner,
            &over(0, 0, 0),
        );
        assert_eq!(counted(&metrics, "tollgate_rule_shadow_mode_total", "r"), 1);
        count(
            &metrics,
            &DomainMode::default(),
            &check,
            &hit(10, Period::Minute),
            &owner,
            &over(0, 0, 0),
        );
        assert_eq!(
            counted(&metrics, "tollgate_rule_shadow_mode_total", "r"),
            1,
            "not without it"
        );
    }

    #[test]
    fn a_detailed_metric_is_labelled_with_the_descriptors_entries() {
        let metrics = Metrics::default();
        let check = check(2);
        let r = Rule {
            detailed_metric: true,
            ..rule("d")
        };
        let owner = RuleHit {
            descriptor: 1,
            rule: &r,
        };
        count(
            &metrics,
            &DomainMode::default(),
            &check,
            &hit(10, Period::Minute),
            &owner,
            &within(5, 0),
        );
        assert_eq!(
            counted(
                &metrics,
                "tollgate_rule_total_hits_total",
                "d|tenant=t1,path=/a"
            ),
            1,
            "{}",
            metrics.render()
        );
    }
}
