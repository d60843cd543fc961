//! Prometheus families. Labels carry names from the config (domain, rule,
//! model, quota) or closed sets (code, store, kind), never request data, so
//! the number of series is bounded by the config. The one exception is a
//! rule with `detailed_metric = true`, which an operator turns on
//! deliberately; its descriptor values are capped per rule.

mod cache;
mod guard;
mod leases;

use cache::PairCache;
pub use guard::{Closed, GuardFamilies, Listener};
pub use leases::LeaseFamilies;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Most distinct descriptor values one detailed rule reports; the rest are
/// counted under `<rule>|_other`.
pub const DETAILED_VALUES_PER_RULE: usize = 100;

/// How one hit of a rule ended, for the per-rule counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitOutcome {
    Within { near: bool },
    Over { shadow: bool },
}

/// Every metric tollgate exports.
pub struct Metrics {
    registry: Registry,
    rule_total_hits: IntCounterVec,
    rule_over_limit: IntCounterVec,
    rule_near_limit: IntCounterVec,
    rule_within_limit: IntCounterVec,
    rule_shadow_mode: IntCounterVec,
    decisions: IntCounterVec,
    store_latency: HistogramVec,
    store_errors: IntCounterVec,
    failure_answers: IntCounterVec,
    pub store_up: IntGauge,
    /// Times the shared store's circuit opened (synced from the breaker).
    store_circuit_opens: IntCounter,
    config_info: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    /// gRPC listener certificate reloads, by result (ok, refused).
    pub tls_reloads: IntCounterVec,
    /// TLS handshakes on the gRPC listener that failed or timed out.
    pub tls_handshake_errors: IntCounter,
    llm_requests: IntCounterVec,
    llm_tokens: IntCounterVec,
    quota_tokens: IntCounterVec,
    quota_spend: IntCounterVec,
    quota_warnings: IntCounterVec,
    llm_settlements: IntCounterVec,
    estimate_error: HistogramVec,
    /// Requests waiting for capacity now.
    pub llm_waiting: IntGauge,
    llm_wait_seconds: HistogramVec,
    llm_fallbacks: IntCounterVec,
    internal_errors: IntCounterVec,
    /// Leases and the instance registry.
    pub leases: LeaseFamilies,
    /// Buffered bodies, connection limits, usage anomalies.
    pub guard: GuardFamilies,
    detailed_seen: Mutex<HashMap<String, HashSet<String>>>,
    /// Per (domain, rule): total, within, near, over, shadow.
    rule_children: PairCache<IntCounter, 5>,
    /// Per (service, ""): ok, over_limit.
    decision_children: PairCache<IntCounter, 2>,
    /// Per (store, op).
    store_children: PairCache<Histogram, 1>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

impl Metrics {
    /// Registers every family into `registry`. Panics only on a duplicate
    /// name, a programming error caught by any test.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        let rule = &["domain", "rule"];
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_store_latency_seconds",
                "Time for one store call (one Lua round trip for redis).",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25,
            ]),
            &["store", "op"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(store_latency.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let store_up = IntGauge::new(
            "tollgate_store_up",
            "1 while the store answers, 0 while it fails.",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(store_up.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        store_up.set(1);
        let config_info = IntGaugeVec::new(
            Opts::new("tollgate_config_info", "1 for the config version in force."),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(config_info.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let estimate_error = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_llm_estimate_error_ratio",
                "(actual - estimated) / estimated tokens, per settled request with usage.",
            )
            .buckets(vec![
                -1.0, -0.75, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0,
            ]),
            &["model"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(estimate_error.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let llm_waiting = IntGauge::new(
            "tollgate_llm_waiting",
            "LLM requests waiting in line for capacity now.",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(llm_waiting.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let llm_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_llm_wait_seconds",
                "Time LLM requests waited in line, by how the wait ended (admitted, denied, cancelled).",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["outcome"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(llm_wait_seconds.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        Metrics {
            leases: LeaseFamilies::new(r),
            guard: GuardFamilies::new(r),
            llm_waiting,
            llm_wait_seconds,
            llm_fallbacks: counter(
                r,
                "tollgate_llm_fallbacks_total",
                "LLM requests sent to a fallback model, by configured model names.",
                &["from", "to"],
            ),
            internal_errors: counter(
                r,
                "tollgate_internal_errors_total",
                "Failures inside tollgate that are not the store's or the client's (a reservation record that cannot be written or read back, a parser that failed), by what failed.",
                &["what"],
            ),
            llm_requests: counter(
                r,
                "tollgate_llm_requests_total",
                "LLM requests seen by ext_proc, by model and outcome.",
                &["model", "outcome"],
            ),
            llm_tokens: counter(
                r,
                "tollgate_llm_tokens_total",
                "LLM tokens by model and kind (reserved, actual, refunded, overage).",
                &["model", "kind"],
            ),
            quota_tokens: counter(
                r,
                "tollgate_quota_tokens_total",
                "Token cost by quota and kind (reserved, refunded, overage).",
                &["quota", "kind"],
            ),
            quota_spend: counter(
                r,
                "tollgate_quota_spend_micros_total",
                "Spend by quota and kind (reserved, refunded, overage), in micro-units of [llm] currency.",
                &["quota", "kind"],
            ),
            quota_warnings: counter(
                r,
                "tollgate_quota_warnings_total",
                "Soft-limit crossings (warn_at), by quota and limit: once per window and key.",
                &["quota", "limit"],
            ),
            llm_settlements: counter(
                r,
                "tollgate_llm_settlements_total",
                "Reservations settled, by how they ended.",
                &["how"],
            ),
            estimate_error,
            rule_total_hits: counter(
                r,
                "tollgate_rule_total_hits_total",
                "Hits asked of a rule.",
                rule,
            ),
            rule_over_limit: counter(
                r,
                "tollgate_rule_over_limit_total",
                "Hits over a rule's limit.",
                rule,
            ),
            rule_near_limit: counter(
                r,
                "tollgate_rule_near_limit_total",
                "Hits within the limit but past 80% of it.",
                rule,
            ),
            rule_within_limit: counter(
                r,
                "tollgate_rule_within_limit_total",
                "Hits within a rule's limit.",
                rule,
            ),
            rule_shadow_mode: counter(
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
            store_errors: counter(
                r,
                "tollgate_store_errors_total",
                "Store calls that failed.",
                &["store", "kind"],
            ),
            failure_answers: counter(
                r,
                "tollgate_store_failure_answers_total",
                "Hits answered by a rule's on_error policy.",
                &["policy"],
            ),
            config_reloads: counter(
                r,
                "tollgate_config_reloads_total",
                "Config loads, by result.",
                &["result"],
            ),
            tls_reloads: counter(
                r,
                "tollgate_tls_reloads_total",
                "gRPC listener certificate reloads, by result (ok, refused).",
                &["result"],
            ),
            tls_handshake_errors: {
                let c = IntCounter::new(
                    "tollgate_tls_handshake_errors_total",
                    "TLS handshakes on the gRPC listener that failed or timed out.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                registry
                    .register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            store_circuit_opens: {
                let c = IntCounter::new(
                    "tollgate_store_circuit_opens_total",
                    "Times the shared store's circuit breaker opened.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                registry
                    .register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            store_latency,
            store_up,
            config_info,
            detailed_seen: Mutex::new(HashMap::new()),
            rule_children: PairCache::new(),
            decision_children: PairCache::new(),
            store_children: PairCache::new(),
            registry,
        }
    }

    /// The text exposition for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only for a malformed family (a bug):
        // say so in the log and in the scrape, rather than answer nothing.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode the metrics");
            buf.extend_from_slice(format!("# encoding failed: {e}\n").as_bytes());
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Counts one hit of a rule. `detail` is the descriptor's values for a
    /// rule with `detailed_metric`, else `None`.
    pub fn rule_hit(
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
                total.get(&self.rule_total_hits, labels).inc_by(cost);
                match outcome {
                    HitOutcome::Within { near: is_near } => {
                        within.get(&self.rule_within_limit, labels).inc_by(cost);
                        if is_near {
                            near.get(&self.rule_near_limit, labels).inc_by(cost);
                        }
                    }
                    HitOutcome::Over { shadow: is_shadow } => {
                        over.get(&self.rule_over_limit, labels).inc_by(cost);
                        if is_shadow {
                            shadow.get(&self.rule_shadow_mode, labels).inc_by(cost);
                        }
                    }
                }
            });
    }

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

    /// Counts an answer; `service` is `rls`, `ext_proc` or `http`.
    pub fn decision(&self, service: &str, over_limit: bool) {
        self.decision_children.with(service, "", |[ok, over]| {
            if over_limit {
                over.get(&self.decisions, &[service, "over_limit"]).inc();
            } else {
                ok.get(&self.decisions, &[service, "ok"]).inc();
            }
        });
    }

    pub fn store_call(&self, store: &str, op: &str, seconds: f64) {
        self.store_children.with(store, op, |[latency]| {
            latency
                .get(&self.store_latency, &[store, op])
                .observe(seconds);
        });
    }

    /// The breaker's state as of now: `tollgate_store_up` follows the
    /// circuit (as `/readyz` does), and the opens counter catches up with
    /// `opens` (the breaker's own count, which only grows).
    pub fn store_circuit(&self, closed: bool, opens: u64) {
        self.store_up.set(i64::from(closed));
        let seen = self.store_circuit_opens.get();
        if opens > seen {
            self.store_circuit_opens.inc_by(opens - seen);
        }
    }

    pub fn store_error(&self, store: &str, kind: &str) {
        self.store_errors.with_label_values(&[store, kind]).inc();
    }

    pub fn failure_answer(&self, policy: &str) {
        self.failure_answers.with_label_values(&[policy]).inc();
    }

    /// Counts an LLM request; `model` must be a configured name or `_other`.
    pub fn llm_request(&self, model: &str, outcome: &str) {
        self.llm_requests.with_label_values(&[model, outcome]).inc();
    }

    pub fn llm_tokens(&self, model: &str, kind: &str, n: u64) {
        if n > 0 {
            self.llm_tokens.with_label_values(&[model, kind]).inc_by(n);
        }
    }

    pub fn quota_tokens(&self, quota: &str, kind: &str, n: u64) {
        if n > 0 {
            self.quota_tokens
                .with_label_values(&[quota, kind])
                .inc_by(n);
        }
    }

    /// Money by quota, in micro-units.
    pub fn quota_spend(&self, quota: &str, kind: &str, micros: u64) {
        if micros > 0 {
            self.quota_spend
                .with_label_values(&[quota, kind])
                .inc_by(micros);
        }
    }

    /// A quota's `warn_at` was crossed on `limit` (its config field).
    pub fn quota_warning(&self, quota: &str, limit: &str) {
        self.quota_warnings.with_label_values(&[quota, limit]).inc();
    }

    /// `how`: usage, no_usage, upstream_error, aborted, already_settled.
    pub fn llm_settled(&self, how: &str) {
        self.llm_settlements.with_label_values(&[how]).inc();
    }

    pub fn estimate_error(&self, model: &str, estimated: u64, actual: u64) {
        if estimated > 0 {
            let ratio = (actual as f64 - estimated as f64) / estimated as f64;
            self.estimate_error
                .with_label_values(&[model])
                .observe(ratio);
        }
    }

    /// A wait in line ended (`admitted`, `denied` or `cancelled`).
    pub fn llm_waited(&self, outcome: &str, seconds: f64) {
        self.llm_wait_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    /// A request moved from one configured model to its fallback.
    pub fn llm_fallback(&self, from: &str, to: &str) {
        self.llm_fallbacks.with_label_values(&[from, to]).inc();
    }

    /// Counts a failure inside tollgate; `what` is a fixed label.
    pub fn internal_error(&self, what: &str) {
        self.internal_errors.with_label_values(&[what]).inc();
    }

    /// Marks `version` as the config in force.
    pub fn config_loaded(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_counters_appear_in_the_text() {
        let m = Metrics::default();
        m.rule_hit("edge", "r1", None, 3, HitOutcome::Within { near: true });
        m.rule_hit("edge", "r1", None, 2, HitOutcome::Over { shadow: true });
        let text = m.render();
        assert!(text.contains("tollgate_rule_total_hits_total{domain=\"edge\",rule=\"r1\"} 5"));
        assert!(text.contains("tollgate_rule_near_limit_total{domain=\"edge\",rule=\"r1\"} 3"));
        assert!(text.contains("tollgate_rule_shadow_mode_total{domain=\"edge\",rule=\"r1\"} 2"));
    }

    #[test]
    fn store_circuit_follows_the_breaker() {
        let m = Metrics::default();
        m.store_circuit(false, 2);
        m.store_circuit(false, 2);
        let text = m.render();
        assert!(text.contains("tollgate_store_up 0"), "{text}");
        assert!(
            text.contains("tollgate_store_circuit_opens_total 2"),
            "{text}"
        );
        m.store_circuit(true, 3);
        let text = m.render();
        assert!(text.contains("tollgate_store_up 1"));
        assert!(text.contains("tollgate_store_circuit_opens_total 3"));
    }

    #[test]
    fn detailed_labels_are_capped() {
        let m = Metrics::default();
        for i in 0..(DETAILED_VALUES_PER_RULE + 50) {
            let v = format!("user{i}");
            m.rule_hit("d", "r", Some(&v), 1, HitOutcome::Within { near: false });
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("tollgate_rule_total_hits_total{"))
            .count();
        assert_eq!(series, DETAILED_VALUES_PER_RULE + 1);
        assert!(text.contains("rule=\"r|_other\"} 50"));
    }
}
