//! The families about what is loaded: the config version in force, config
//! reloads, and the gRPC listener's certificate reloads and handshakes.
//! Callers move most of them directly, so each builder returns one family
//! for a public field of `Metrics`.

use super::register::{counter, gauge_vec, plain_counter};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Registry};

/// `tollgate_config_info`: 1 for the version in force.
pub(super) fn config_info(r: &Registry) -> IntGaugeVec {
    gauge_vec(
        r,
        "tollgate_config_info",
        "1 for the config version in force.",
        &["version"],
    )
}

/// `tollgate_config_reloads_total`, by result.
pub(super) fn config_reloads(r: &Registry) -> IntCounterVec {
    counter(
        r,
        "tollgate_config_reloads_total",
        "Config loads, by result.",
        &["result"],
    )
}

/// `tollgate_tls_reloads_total`, by result.
pub(super) fn tls_reloads(r: &Registry) -> IntCounterVec {
    counter(
        r,
        "tollgate_tls_reloads_total",
        "gRPC listener certificate reloads, by result (ok, refused).",
        &["result"],
    )
}

/// `tollgate_tls_handshake_errors_total`.
pub(super) fn tls_handshake_errors(r: &Registry) -> IntCounter {
    plain_counter(
        r,
        "tollgate_tls_handshake_errors_total",
        "TLS handshakes on the gRPC listener that failed or timed out.",
    )
}
