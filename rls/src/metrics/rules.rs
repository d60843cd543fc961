//! The per-rule hit counters and the per-front-end answer counter: what
//! the rate limit rules decided.

use super::cache::PairCache;
use super::register::counter;
use super::{HitOutcome, DETAILED_VALUES_PER_RULE};
use prometheus::{IntCounter, IntCounterVec, Registry};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The rule and decision families, with their cached children.
pub(super) struct RuleFamilies {
    total_hits: IntCounterVec,
    over_limit: IntCounterVec,
    near_limit: IntCounterVec,
    within_limit: IntCounterVec,
    shadow_mode: IntCounterVec,
    decisions: IntCounterVec,
    detailed_seen: Mutex<HashMap<String, HashSet<String>>>,
    /// Per (domain, rule): total, within, near, over, shadow.
    rule_children: PairCache<IntCounter, 5>,
    /// Per (service, ""): ok, over_limit.
    decision_children: PairCache<IntCounter, 2>,
}

impl RuleFamilies {
    pub(super) fn new(r: &Registry) -> RuleFamilies {
        let rule = &["domain", "rule"];
        RuleFamilies {
            total_hits: counter(
                r,
                "tollgate_rule_total_hits_total",
                "Hits asked of a rule.",
                rule,
            ),
            over_limit: counter(
                r,
                "tollgate_rule_over_limit_total",
                "Hits over a rule's limit.",
                rule,
            ),
            near_limit: counter(
                r,
                "tollgate_rule_near_limit_total",
                "Hits within the limit but past 80% of it.",
                rule,
            ),
            within_limit: counter(
                r,
                "tollgate_rule_within_limit_total",
                "Hits within a rule's limit.",
                rule,
            ),
            shadow_mode: counter(
                r,
                "tollgate_rule_shadow_mode_total",
                "Hits over a shadow rule's limit (allowed).",
                rule,
            ),
            decisions: counter(
                r,
                "tollgate_decisions_total",
                "Answers given, by front end and code.",
                &["service", "code"],
            ),
            detailed_seen: Mutex::new(HashMap::new()),
            rule_children: PairCache::new(),
            decision_children: PairCache::new(),
        }
    }

    /// See [`super::Metrics::rule_hit`].
    pub(super) fn hit(
        &self,
        domain: &str,
        rule: &str,
        detail: Option<&str>,
        cost: u64,
        outcome: HitOutcome,
    ) {
        let label;
        let rule = match detail {
            Some(values) => {
                label = self.detailed_label(rule, values);
                label.as_str()
            }
            None => rule,
        };
        let labels = &[domain, rule];
        self.rule_children
            .with(domain, rule, |[total, within, near, over, shadow]| {
                total.get(&self.total_hits, labels).inc_by(cost);
                match outcome {
                    HitOutcome::Within { near: is_near } => {
                        within.get(&self.within_limit, labels).inc_by(cost);
                        if is_near {
                            near.get(&self.near_limit, labels).inc_by(cost);
                        }
                    }
                    HitOutcome::Over { shadow: is_shadow } => {
                        over.get(&self.over_limit, labels).inc_by(cost);
                        if is_shadow {
                            shadow.get(&self.shadow_mode, labels).inc_by(cost);
                        }
                    }
                }
            });
    }

    /// The rule label for a detailed rule: `<rule>|<values>` for the first
    /// [`DETAILED_VALUES_PER_RULE`] values seen, `<rule>|_other` after.
    fn detailed_label(&self, rule: &str, values: &str) -> String {
        let mut seen = self.detailed_seen.lock().unwrap_or_else(|e| e.into_inner());
        let set = seen.entry(rule.to_string()).or_default();
        if set.contains(values) || set.len() < DETAILED_VALUES_PER_RULE {
            set.insert(values.to_string());
            format!("{rule}|{values}")
        } else {
            format!("{rule}|_other")
        }
    }

    /// See [`super::Metrics::decision`].
    pub(super) fn decision(&self, service: &str, over_limit: bool) {
        self.decision_children.with(service, "", |[ok, over]| {
            if over_limit {
                over.get(&self.decisions, &[service, "over_limit"]).inc();
            } else {
                ok.get(&self.decisions, &[service, "ok"]).inc();
            }
        });
    }
}
