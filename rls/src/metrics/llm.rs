//! The ext_proc families: LLM requests and tokens by model, settlements,
//! estimate error, waits in line and fallbacks.

use super::register::{counter, gauge, histogram};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};

/// The LLM families (the waiting gauge is `Metrics::llm_waiting`).
pub(super) struct LlmFamilies {
    pub(super) requests: IntCounterVec,
    pub(super) tokens: IntCounterVec,
    pub(super) settlements: IntCounterVec,
    pub(super) estimate_error: HistogramVec,
    pub(super) wait_seconds: HistogramVec,
    pub(super) fallbacks: IntCounterVec,
}

/// `tollgate_llm_waiting`. Kept apart from [`LlmFamilies`] because the
/// wait line moves it directly through `Metrics::llm_waiting`.
pub(super) fn waiting(r: &Registry) -> IntGauge {
    gauge(
        r,
        "tollgate_llm_waiting",
        "LLM requests waiting in line for capacity now.",
    )
}

impl LlmFamilies {
    pub(super) fn new(r: &Registry) -> LlmFamilies {
        LlmFamilies {
            requests: counter(
                r,
                "tollgate_llm_requests_total",
                "LLM requests seen by ext_proc, by model and outcome.",
                &["model", "outcome"],
            ),
            tokens: counter(
                r,
                "tollgate_llm_tokens_total",
                "LLM tokens by model and kind (reserved, actual, refunded, overage).",
                &["model", "kind"],
            ),
            settlements: counter(
                r,
                "tollgate_llm_settlements_total",
                "Reservations settled, by how they ended.",
                &["how"],
            ),
            estimate_error: histogram(
                r,
                "tollgate_llm_estimate_error_ratio",
                "(actual - estimated) / estimated tokens, per settled request with usage.",
                vec![-1.0, -0.75, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0],
                &["model"],
            ),
            wait_seconds: histogram(
                r,
                "tollgate_llm_wait_seconds",
                "Time LLM requests waited in line, by how the wait ended (admitted, denied, cancelled).",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                &["outcome"],
            ),
            fallbacks: counter(
                r,
                "tollgate_llm_fallbacks_total",
                "LLM requests sent to a fallback model, by configured model names.",
                &["from", "to"],
            ),
        }
    }
}

/// The per-quota families: token cost, money spent, soft-limit warnings.
pub(super) struct QuotaFamilies {
    pub(super) tokens: IntCounterVec,
    pub(super) spend: IntCounterVec,
    pub(super) warnings: IntCounterVec,
}

impl QuotaFamilies {
    pub(super) fn new(r: &Registry) -> QuotaFamilies {
        QuotaFamilies {
            tokens: counter(
                r,
                "tollgate_quota_tokens_total",
                "Token cost by quota and kind (reserved, refunded, overage).",
                &["quota", "kind"],
            ),
            spend: counter(
                r,
                "tollgate_quota_spend_micros_total",
                "Spend by quota and kind (reserved, refunded, overage), in micro-units of [llm] currency.",
                &["quota", "kind"],
            ),
            warnings: counter(
                r,
                "tollgate_quota_warnings_total",
                "Soft-limit crossings (warn_at), by quota and limit: once per window and key.",
                &["quota", "limit"],
            ),
        }
    }
}
