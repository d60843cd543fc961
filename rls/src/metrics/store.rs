//! The store's families: call latency, errors, the answers given by a
//! rule's `on_error` policy, and the circuit breaker.

use super::cache::PairCache;
use super::register::{counter, gauge, histogram, plain_counter};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// The store families, with the cached latency children.
pub(super) struct StoreFamilies {
    latency: HistogramVec,
    errors: IntCounterVec,
    failure_answers: IntCounterVec,
    /// Times the shared store's circuit opened (synced from the breaker).
    circuit_opens: IntCounter,
    /// Per (store, op).
    children: PairCache<Histogram, 1>,
}

/// `tollgate_store_up`, starting at 1. Kept apart from [`StoreFamilies`]
/// because callers set it directly through `Metrics::store_up`.
pub(super) fn up(r: &Registry) -> IntGauge {
    let up = gauge(
        r,
        "tollgate_store_up",
        "1 while the store answers, 0 while it fails.",
    );
    up.set(1);
    up
}

impl StoreFamilies {
    pub(super) fn new(r: &Registry) -> StoreFamilies {
        StoreFamilies {
            latency: histogram(
                r,
                "tollgate_store_latency_seconds",
                "Time for one store call (one Lua round trip for redis).",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25,
                ],
                &["store", "op"],
            ),
            errors: counter(
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
            circuit_opens: plain_counter(
                r,
                "tollgate_store_circuit_opens_total",
                "Times the shared store's circuit breaker opened.",
            ),
            children: PairCache::new(),
        }
    }

    /// See [`super::Metrics::store_call`].
    pub(super) fn call(&self, store: &str, op: &str, seconds: f64) {
        self.children.with(store, op, |[latency]| {
            latency.get(&self.latency, &[store, op]).observe(seconds);
        });
    }

    /// Catches the opens counter up with the breaker's own count.
    pub(super) fn opens(&self, opens: u64) {
        let seen = self.circuit_opens.get();
        if opens > seen {
            self.circuit_opens.inc_by(opens - seen);
        }
    }

    pub(super) fn error(&self, store: &str, kind: &str) {
        self.errors.with_label_values(&[store, kind]).inc();
    }

    pub(super) fn failure_answer(&self, policy: &str) {
        self.failure_answers.with_label_values(&[policy]).inc();
    }
}
