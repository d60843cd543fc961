//! `envoy.service.ratelimit.v3.RateLimitService`, a drop-in for
//! envoyproxy/ratelimit.

use crate::app::App;
use crate::engine::{Check, Code, Decision, Descriptor, DescriptorResult};
use crate::rules::Period;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as ProtoCode, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Bounds on one request, so a bad client cannot make one decision huge.
pub const MAX_DESCRIPTORS: usize = 64;
pub const MAX_ENTRIES: usize = 32;
pub const MAX_ENTRY_BYTES: usize = 1024;

/// The rate limit service.
pub struct RateLimitGrpc {
    app: Arc<App>,
}

impl RateLimitGrpc {
    pub fn new(app: Arc<App>) -> RateLimitGrpc {
        RateLimitGrpc { app }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    // Debug level: a span per call is a cost every decision would pay at
    // the default `info` (docs/benchmarks.md).
    #[tracing::instrument(name = "rls", level = "debug", skip_all, fields(domain, code))]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let check = check_from_proto(request.into_inner()).map_err(|e| {
            tracing::info!(reason = %e, "invalid rate limit request");
            Status::invalid_argument(e)
        })?;
        tracing::debug!(
            descriptors = check.descriptors.len(),
            hits = check.hits,
            descriptor_hits = ?check.descriptors.iter().map(|d| d.hits).collect::<Vec<_>>(),
            "rate limit request"
        );
        let config = self.app.config.load();
        let decision = self.app.engine.limits.decide(&config.rules, &check).await;
        let over = decision.code == Code::OverLimit;
        let span = tracing::Span::current();
        if config.rules.has_domain(&check.domain) {
            span.record("domain", check.domain.as_str());
        }
        span.record("code", if over { "over_limit" } else { "ok" });
        self.app.metrics.decision("rls", over);
        Ok(Response::new(response_from(&decision)))
    }
}

/// Proto → domain, refusing what envoyproxy/ratelimit refuses and what
/// would be unbounded.
pub fn check_from_proto(req: RateLimitRequest) -> Result<Check, String> {
    if req.domain.trim().is_empty() {
        return Err("domain must not be empty".into());
    }
    if req.descriptors.is_empty() {
        return Err("descriptor list must not be empty".into());
    }
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!("more than {MAX_DESCRIPTORS} descriptors"));
    }
    let descriptors = req
        .descriptors
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, d))
        .collect::<Result<_, _>>()?;
    Ok(Check {
        domain: req.domain,
        descriptors,
        hits: u64::from(req.hits_addend.max(1)),
    })
}

fn descriptor(i: usize, d: RateLimitDescriptor) -> Result<Descriptor, String> {
    if d.entries.is_empty() {
        return Err(format!("descriptor {i} has no entries"));
    }
    if d.entries.len() > MAX_ENTRIES {
        return Err(format!(
            "descriptor {i} has more than {MAX_ENTRIES} entries"
        ));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    for e in d.entries {
        if e.key.is_empty() {
            return Err(format!("descriptor {i} has an entry with an empty key"));
        }
        if e.key.len() + e.value.len() > MAX_ENTRY_BYTES {
            return Err(format!(
                "descriptor {i} has an entry longer than {MAX_ENTRY_BYTES} bytes"
            ));
        }
        entries.push((e.key, e.value));
    }
    Ok(Descriptor {
        entries,
        hits: d.hits_addend.map(|h| h.value),
        negative: d.is_negative_hits,
    })
}

/// Domain → proto: per-descriptor statuses with the limit, what is left and
/// when it resets, so Envoy can send `x-ratelimit-*` headers; a
/// `retry-after` header on a denial.
pub fn response_from(decision: &Decision) -> RateLimitResponse {
    let over = decision.code == Code::OverLimit;
    let mut response_headers_to_add = Vec::new();
    if over {
        let secs = decision.retry_after().as_millis().div_ceil(1000).max(1);
        // Envoy's rate limit filter reads `value` (unlike ext_proc, which
        // wants `raw_value`).
        response_headers_to_add.push(HeaderValue {
            key: "retry-after".into(),
            value: secs.to_string(),
            ..Default::default()
        });
    }
    RateLimitResponse {
        overall_code: code(decision.code) as i32,
        statuses: decision.descriptors.iter().map(status).collect(),
        response_headers_to_add,
        ..Default::default()
    }
}

fn code(c: Code) -> ProtoCode {
    match c {
        Code::Ok => ProtoCode::Ok,
        Code::OverLimit => ProtoCode::OverLimit,
    }
}

fn status(d: &DescriptorResult) -> DescriptorStatus {
    DescriptorStatus {
        code: code(d.code) as i32,
        current_limit: d.limit.as_ref().map(|m| RateLimit {
            name: m.rule.clone(),
            requests_per_unit: u32::try_from(m.limit.amount).unwrap_or(u32::MAX),
            unit: unit(m.limit.period) as i32,
        }),
        limit_remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
        duration_until_reset: d.limit.as_ref().map(|_| ProtoDuration {
            seconds: d.reset_after.as_secs() as i64,
            nanos: d.reset_after.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

fn unit(p: Period) -> Unit {
    match p {
        Period::Second => Unit::Second,
        Period::Minute => Unit::Minute,
        Period::Hour => Unit::Hour,
        Period::Day => Unit::Day,
        Period::Week => Unit::Week,
        Period::Month => Unit::Month,
        Period::Year => Unit::Year,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    fn req(domain: &str, entries: &[(&str, &str)]) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }],
            hits_addend: 0,
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert_eq!(
            check_from_proto(req("", &[("k", "v")])).unwrap_err(),
            "domain must not be empty"
        );
        assert_eq!(
            check_from_proto(req("d", &[])).unwrap_err(),
            "descriptor 0 has no entries"
        );
        assert_eq!(
            check_from_proto(req("d", &[("", "v")])).unwrap_err(),
            "descriptor 0 has an entry with an empty key"
        );
        let mut r = req("d", &[("k", "v")]);
        r.descriptors.clear();
        assert!(check_from_proto(r).is_err());
        let long = "x".repeat(MAX_ENTRY_BYTES);
        assert!(check_from_proto(req("d", &[("k", &long)])).is_err());
    }

    #[test]
    fn hits_addend_zero_means_one_at_request_level() {
        let c = check_from_proto(req("d", &[("k", "v")])).unwrap();
        assert_eq!(c.hits, 1);
        assert_eq!(c.descriptors[0].hits, None);
    }
}
