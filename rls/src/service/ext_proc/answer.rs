//! Admission outcomes as Envoy answers: continue upstream (with headers,
//! metadata and maybe a new body), or an immediate response in the
//! provider's error format.

use super::reply;
use crate::engine::{Admitted, BudgetView, Denied, Rejection};
use crate::rules::{format_micros, LlmSettings};
use crate::service::ietf_headers::{self, PolicyState};
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use envoy_types::pb::google::protobuf::value::Kind;
use std::time::Duration;
use tollgate_filters::{self as filters, ErrorKind, Provider};

/// The request goes upstream: the model header Envoy may route on, the new
/// body if it changed, and dynamic metadata for access logs and for an
/// Envoy that adds the response headers itself.
pub(super) fn admitted(settings: &LlmSettings, a: &Admitted) -> ProcessingResponse {
    let mut fields = vec![
        (
            "reservation_id".to_string(),
            Kind::StringValue(a.reservation.id.clone()),
        ),
        ("model".to_string(), Kind::StringValue(a.model.clone())),
        (
            "estimated_tokens".to_string(),
            Kind::NumberValue((a.estimate().prompt + a.estimate().completion) as f64),
        ),
    ];
    // The response headers again, by name, for an Envoy that skips the
    // response headers message and adds them with the route's
    // `response_headers_to_add: %DYNAMIC_METADATA(tollgate:<name>)%`.
    for h in response_headers(settings, a) {
        if let Some(v) = h.header {
            let value = String::from_utf8_lossy(&v.raw_value).into_owned();
            fields.push((v.key, Kind::StringValue(value)));
        }
    }
    let mut upstream = vec![reply::header(&settings.model_header, a.model.clone())];
    if let Some(b) = &a.body {
        upstream.push(reply::header("content-length", b.len().to_string()));
    }
    reply::request_body_routed(upstream, a.body.clone(), Some(reply::metadata(fields)))
}

/// `x-ratelimit-*` and `x-tollgate-*` for the client's response: the
/// budgets, the model served, the model it fell back from, the wait.
pub(super) fn response_headers(settings: &LlmSettings, a: &Admitted) -> Vec<HeaderValueOption> {
    let mut h = budget_headers(settings, &a.budget);
    if let Some(from) = &a.fallback_from {
        h.push(reply::header("x-tollgate-fallback-from", from.clone()));
    }
    h.push(reply::header("x-tollgate-model", a.model.clone()));
    if a.waited >= Duration::from_millis(1) {
        h.push(reply::header(
            "x-tollgate-waited-ms",
            a.waited.as_millis().to_string(),
        ));
    }
    h
}

/// 429 with `retry-after`, the budgets, and a body naming the quota.
pub(super) fn denied(settings: &LlmSettings, provider: Provider, d: &Denied) -> ProcessingResponse {
    let secs = d.retry_after.as_millis().div_ceil(1000).max(1);
    let mut h = budget_headers(settings, &d.budget);
    h.push(reply::header("retry-after", secs.to_string()));
    let msg = match &d.budget.denied_by {
        Some(limit) => format!(
            "rate limit reached for quota `{}` ({limit}); retry in {secs}s",
            d.quota
        ),
        None => format!(
            "rate limit reached for quota `{}`; retry in {secs}s",
            d.quota
        ),
    };
    reply::immediate(
        429,
        h,
        filters::error_body(provider, 429, ErrorKind::RateLimited, &msg),
        "tollgate_over_budget",
    )
}

/// 413, 400 or 500, in the provider's error shape.
pub(super) fn rejected(provider: Provider, r: &Rejection) -> ProcessingResponse {
    let (status, kind, message) = match r {
        Rejection::TooLarge { .. } => (
            413,
            ErrorKind::InvalidRequest,
            "request body too large".to_string(),
        ),
        Rejection::Unreadable(e) => (400, ErrorKind::InvalidRequest, e.to_string()),
        Rejection::UnknownModel => (400, ErrorKind::InvalidRequest, "unknown model".to_string()),
        Rejection::ContextExceeded {
            context,
            prompt,
            output,
            ..
        } => (
            400,
            ErrorKind::ContextLengthExceeded,
            format!(
                "this model's maximum context length is {context} tokens; the request needs about {prompt} (prompt) + {output} (output)"
            ),
        ),
        Rejection::Unpriced { quota, .. } => (
            400,
            ErrorKind::InvalidRequest,
            format!("this model has no price, and quota `{quota}` limits spend"),
        ),
        Rejection::Internal => (
            500,
            ErrorKind::ServiceUnavailable,
            "tollgate could not read the request".to_string(),
        ),
    };
    reply::immediate(
        status,
        vec![],
        filters::error_body(provider, status, kind, &message),
        "tollgate_invalid_request",
    )
}

/// `x-ratelimit-*` headers in OpenAI's naming; spend (which OpenAI has no
/// header for) in the same shape, as a decimal of the currency. With
/// `ietf_headers`, the IETF fields too (spend in micro-units: the draft's
/// quotas are integers).
fn budget_headers(settings: &LlmSettings, b: &BudgetView) -> Vec<HeaderValueOption> {
    let mut h = Vec::new();
    if settings.ietf_headers {
        h.extend(ietf_fields(&settings.currency, b));
    }
    for (what, r) in [
        ("tokens", b.tokens),
        ("requests", b.requests),
        ("spend", b.spend),
    ] {
        if let Some(r) = r {
            let amount = |n: u64| match what {
                "spend" => format_micros(n),
                _ => n.to_string(),
            };
            h.push(reply::header(
                &format!("x-ratelimit-limit-{what}"),
                amount(r.limit),
            ));
            h.push(reply::header(
                &format!("x-ratelimit-remaining-{what}"),
                amount(r.remaining),
            ));
            h.push(reply::header(
                &format!("x-ratelimit-reset-{what}"),
                format!("{}s", r.reset_after.as_millis().div_ceil(1000)),
            ));
        }
    }
    h
}

/// `RateLimit-Policy` and `RateLimit`, one policy per budget kind.
fn ietf_fields(currency: &str, b: &BudgetView) -> Vec<HeaderValueOption> {
    let unit = |what: &str| match what {
        "requests" => None,
        "spend" => Some(format!("micro-{}", currency.to_ascii_lowercase())),
        other => Some(other.to_string()),
    };
    let states: Vec<PolicyState> = [
        ("tokens", b.tokens),
        ("requests", b.requests),
        ("spend", b.spend),
    ]
    .into_iter()
    .filter_map(|(what, r)| {
        r.map(|r| PolicyState {
            name: what.to_string(),
            quota: r.limit,
            unit: unit(what),
            window: r.window,
            remaining: r.remaining,
            reset_after: r.reset_after,
        })
    })
    .collect();
    match ietf_headers::fields(&states) {
        Some((policy, state)) => vec![
            reply::header("ratelimit-policy", policy),
            reply::header("ratelimit", state),
        ],
        None => vec![],
    }
}
