//! Prometheus families. Labels carry names from the config (domain, rule,
//! model, quota) or closed sets (code, store, kind), never request data, so
//! the number of series is bounded by the config. The one exception is a
//! rule with `detailed_metric = true`, which an operator turns on
//! deliberately; its descriptor values are capped per rule.
//!
//! Each group of families (rules, store, LLM, quotas, reloads, leases,
//! guards, marketplace) is built in its own submodule; this file holds the
//! `Metrics` handle and the calls the rest of tollgate makes.

mod cache;
mod guard;
mod leases;
mod llm;
mod marketplace;
mod register;
mod reloads;
mod rules;
mod store;

pub use guard::{Closed, GuardFamilies, Listener};
pub use leases::LeaseFamilies;
use llm::{LlmFamilies, QuotaFamilies};
pub use marketplace::MarketplaceFamilies;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};
use rules::RuleFamilies;
use store::StoreFamilies;

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
    /// Per-rule hits and answers by front end.
    rules: RuleFamilies,
    /// Store latency, errors, on_error answers, breaker opens.
    store: StoreFamilies,
    pub store_up: IntGauge,
    config_info: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    /// gRPC listener certificate reloads, by result (ok, refused).
    pub tls_reloads: IntCounterVec,
    /// TLS handshakes on the gRPC listener that failed or timed out.
    pub tls_handshake_errors: IntCounter,
    /// LLM requests, tokens, settlements, waits, fallbacks.
    llm: LlmFamilies,
    /// Token cost, spend and warnings per quota.
    quota: QuotaFamilies,
    /// Requests waiting for capacity now.
    pub llm_waiting: IntGauge,
    internal_errors: IntCounterVec,
    /// Leases and the instance registry.
    pub leases: LeaseFamilies,
    /// Buffered bodies, connection limits, usage anomalies.
    pub guard: GuardFamilies,
    /// The marketplace stage, its client and its usage reports.
    pub marketplace: MarketplaceFamilies,
}

impl Metrics {
    /// Registers every family into `registry`. Panics only on a duplicate
    /// name, a programming error caught by any test.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        Metrics {
            rules: RuleFamilies::new(r),
            store: StoreFamilies::new(r),
            store_up: store::up(r),
            config_info: reloads::config_info(r),
            config_reloads: reloads::config_reloads(r),
            tls_reloads: reloads::tls_reloads(r),
            tls_handshake_errors: reloads::tls_handshake_errors(r),
            llm: LlmFamilies::new(r),
            quota: QuotaFamilies::new(r),
            llm_waiting: llm::waiting(r),
            internal_errors: register::counter(
                r,
                "tollgate_internal_errors_total",
                "Failures inside tollgate that are not the store's or the client's (a reservation record that cannot be written or read back, a parser that failed), by what failed.",
                &["what"],
            ),
            leases: LeaseFamilies::new(r),
            guard: GuardFamilies::new(r),
            marketplace: MarketplaceFamilies::new(r),
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
        self.rules.hit(domain, rule, detail, cost, outcome);
    }

    /// Counts an answer; `service` is `rls`, `ext_proc` or `http`.
    pub fn decision(&self, service: &str, over_limit: bool) {
        self.rules.decision(service, over_limit);
    }

    pub fn store_call(&self, store: &str, op: &str, seconds: f64) {
        self.store.call(store, op, seconds);
    }

    /// The breaker's state as of now: `tollgate_store_up` follows the
    /// circuit (as `/readyz` does), and the opens counter catches up with
    /// `opens` (the breaker's own count, which only grows).
    pub fn store_circuit(&self, closed: bool, opens: u64) {
        self.store_up.set(i64::from(closed));
        self.store.opens(opens);
    }

    pub fn store_error(&self, store: &str, kind: &str) {
        self.store.error(store, kind);
    }

    pub fn failure_answer(&self, policy: &str) {
        self.store.failure_answer(policy);
    }

    /// Counts an LLM request; `model` must be a configured name or `_other`.
    pub fn llm_request(&self, model: &str, outcome: &str) {
        self.llm.requests.with_label_values(&[model, outcome]).inc();
    }

    pub fn llm_tokens(&self, model: &str, kind: &str, n: u64) {
        if n > 0 {
            self.llm.tokens.with_label_values(&[model, kind]).inc_by(n);
        }
    }

    pub fn quota_tokens(&self, quota: &str, kind: &str, n: u64) {
        if n > 0 {
            self.quota
                .tokens
                .with_label_values(&[quota, kind])
                .inc_by(n);
        }
    }

    /// Money by quota, in micro-units.
    pub fn quota_spend(&self, quota: &str, kind: &str, micros: u64) {
        if micros > 0 {
            self.quota
                .spend
                .with_label_values(&[quota, kind])
                .inc_by(micros);
        }
    }

    /// A quota's `warn_at` was crossed on `limit` (its config field).
    pub fn quota_warning(&self, quota: &str, limit: &str) {
        self.quota.warnings.with_label_values(&[quota, limit]).inc();
    }

    /// `how`: usage, no_usage, upstream_error, aborted, already_settled,
    /// failed, retried (a failed one settled later by its retry).
    pub fn llm_settled(&self, how: &str) {
        self.llm.settlements.with_label_values(&[how]).inc();
    }

    pub fn estimate_error(&self, model: &str, estimated: u64, actual: u64) {
        if estimated > 0 {
            let ratio = (actual as f64 - estimated as f64) / estimated as f64;
            self.llm
                .estimate_error
                .with_label_values(&[model])
                .observe(ratio);
        }
    }

    /// A wait in line ended (`admitted`, `denied` or `cancelled`).
    pub fn llm_waited(&self, outcome: &str, seconds: f64) {
        self.llm
            .wait_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    /// A request moved from one configured model to its fallback.
    pub fn llm_fallback(&self, from: &str, to: &str) {
        self.llm.fallbacks.with_label_values(&[from, to]).inc();
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
