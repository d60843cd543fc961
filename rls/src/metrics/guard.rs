//! The families of tollgate's guards against hostile or broken peers: the
//! bound on buffered request bodies, the connection limits of both
//! listeners, and usage an upstream reported beyond what a request could
//! use.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// A listener's label: `grpc` or `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Admin => "admin",
        }
    }
}

/// Why a connection was closed by tollgate rather than by its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Over the listener's `max_connections`: closed at once.
    OverCap,
    /// Its first bytes (HTTP/2 preface) or a request's head did not arrive
    /// within `read_timeout`.
    Slow,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::OverCap => "over_cap",
            Closed::Slow => "slow",
        }
    }
}

pub struct GuardFamilies {
    /// Request body bytes ext_proc holds now (all streams).
    pub buffered_bytes: IntGauge,
    connections: IntGaugeVec,
    closed: IntCounterVec,
    anomalies: IntCounterVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("guard metric: {e}"));
    m
}

impl GuardFamilies {
    pub fn new(r: &Registry) -> GuardFamilies {
        GuardFamilies {
            buffered_bytes: register(
                r,
                IntGauge::new(
                    "tollgate_llm_buffered_bytes",
                    "Request body bytes the ext_proc service holds now, all streams together (bounded by [llm] max_buffered_bytes).",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            connections: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tollgate_connections",
                        "Connections open now, by listener (grpc, admin).",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            closed: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tollgate_connections_closed_total",
                        "Connections tollgate closed itself, by listener and reason (over_cap: past max_connections; slow: nothing usable within read_timeout).",
                    ),
                    &["listener", "reason"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            anomalies: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tollgate_llm_usage_anomalies_total",
                        "Responses whose reported usage passed what the request could use (the model's context window, the output it asked for); the bound was charged instead.",
                    ),
                    &["model"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    /// A connection opened (`+1`) or closed (`-1`) on `listener`.
    pub fn connection(&self, listener: Listener, delta: i64) {
        self.connections
            .with_label_values(&[listener.as_str()])
            .add(delta);
    }

    /// tollgate closed a connection on `listener`.
    pub fn closed(&self, listener: Listener, why: Closed) {
        self.closed
            .with_label_values(&[listener.as_str(), why.as_str()])
            .inc();
    }

    /// A response reported more than its request could use; `model` is a
    /// configured name or `_other`.
    pub fn usage_anomaly(&self, model: &str) {
        self.anomalies.with_label_values(&[model]).inc();
    }
}
