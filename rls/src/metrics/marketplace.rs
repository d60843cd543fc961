//! The families of the marketplace stage. Every label takes a value from a
//! closed set (results, calls, breaker states), never a model, supplier or
//! request value, so they add a few dozen series at most. Registered
//! always; while the marketplace is off the labelled ones have no series
//! and the others stay at zero.

use super::register::{counter, gauge, gauge_vec, histogram, plain_counter, register};
use prometheus::{Gauge, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::time::Duration;

/// The marketplace's metrics.
pub struct MarketplaceFamilies {
    requests: IntCounterVec,
    step_seconds: HistogramVec,
    calls: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_opens: IntCounter,
    cache_lookups: IntCounterVec,
    /// Age of the oldest supply list kept.
    pub cache_age_seconds: Gauge,
    /// Usage reports queued or being sent.
    pub reports_pending: IntGauge,
    reports: IntCounterVec,
}

impl MarketplaceFamilies {
    pub fn new(r: &Registry) -> MarketplaceFamilies {
        MarketplaceFamilies {
            requests: counter(
                r,
                "tollgate_marketplace_requests_total",
                "Over-budget LLM requests offered to the marketplace, by result: served, or why not (no_supply, busy, breaker_open, expired, over_price, host_not_allowed, malformed, error, timeout, unreachable, garbage, no_time).",
                &["result"],
            ),
            step_seconds: histogram(
                r,
                "tollgate_marketplace_step_seconds",
                "Time the marketplace step added to an over-budget request, by outcome (served, refused).",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ],
                &["outcome"],
            ),
            calls: counter(
                r,
                "tollgate_marketplace_calls_total",
                "Calls made to the marketplace, by call (supplies, quote, usage) and result (ok, no_supply, busy, malformed, error, timeout, unreachable, garbage).",
                &["call", "result"],
            ),
            breaker_state: gauge_vec(
                r,
                "tollgate_marketplace_breaker_state",
                "1 for the state the marketplace's circuit breaker is in (closed, open, half_open); no series while the marketplace is off.",
                &["state"],
            ),
            breaker_opens: plain_counter(
                r,
                "tollgate_marketplace_breaker_opens_total",
                "Times the marketplace's circuit breaker opened.",
            ),
            cache_lookups: counter(
                r,
                "tollgate_marketplace_supply_cache_total",
                "Supply list lookups, by result (hit: answered from the cache; miss: fetched).",
                &["result"],
            ),
            cache_age_seconds: register(
                r,
                Gauge::new(
                    "tollgate_marketplace_supply_cache_age_seconds",
                    "Age of the oldest supply list kept (0 when none is).",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            reports_pending: gauge(
                r,
                "tollgate_marketplace_usage_reports_pending",
                "Usage reports queued or being sent now.",
            ),
            reports: counter(
                r,
                "tollgate_marketplace_usage_reports_total",
                "Usage reports by result: sent, failed (every try failed), dropped (queue full, or unsent at shutdown).",
                &["result"],
            ),
        }
    }

    /// One request offered to the marketplace, and the time the step took.
    pub fn request(&self, result: &str, took: Duration, served: bool) {
        self.requests.with_label_values(&[result]).inc();
        self.step_seconds
            .with_label_values(&[if served { "served" } else { "refused" }])
            .observe(took.as_secs_f64());
    }

    pub fn call(&self, call: &str, result: &str) {
        self.calls.with_label_values(&[call, result]).inc();
    }

    /// The breaker is in `state` now (the other states read 0).
    pub fn breaker(&self, state: &str, all: &[&str]) {
        for s in all {
            self.breaker_state
                .with_label_values(&[s])
                .set(i64::from(*s == state));
        }
    }

    pub fn breaker_opened(&self) {
        self.breaker_opens.inc();
    }

    pub fn cache(&self, hit: bool) {
        self.cache_lookups
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }

    pub fn report(&self, result: &str) {
        self.reports.with_label_values(&[result]).inc();
    }
}
