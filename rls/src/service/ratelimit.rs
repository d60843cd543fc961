//! `envoy.service.ratelimit.v3.RateLimitService`, a drop-in for
//! envoyproxy/ratelimit.

use super::ietf_headers::{self, PolicyState};
use crate::app::App;
use crate::engine::{Check, Code, Decision, Descriptor, DescriptorResult};
use crate::rules::{Algorithm, DomainMode, Limit, Period, Zone};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as ProtoCode, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use std::sync::Arc;
use std::time::Duration;
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
        let mode = config.rules.mode(&check.domain);
        Ok(Response::new(response_for(&decision, mode, &check)))
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
    let limit = match d.limit {
        None => None,
        Some(o) => Some(Limit {
            amount: u64::from(o.requests_per_unit),
            period: override_period(o.unit)
                .ok_or_else(|| format!("descriptor {i} has a limit with no known unit"))?,
            algorithm: Algorithm::FixedWindow,
            // envoyproxy/ratelimit's windows: a WEEK is 7 days from the epoch.
            zone: Zone::Epoch,
        }),
    };
    Ok(Descriptor {
        entries,
        hits: d.hits_addend.map(|h| h.value),
        negative: d.is_negative_hits,
        limit,
    })
}

/// The period of a descriptor's own limit (`envoy.type.v3.RateLimitUnit`;
/// 7 is `WEEK` in newer Envoy protos, as in the response's `Unit`).
fn override_period(unit: i32) -> Option<Period> {
    if unit == Unit::Week as i32 {
        return Some(Period::Week);
    }
    Some(match RateLimitUnit::try_from(unit).ok()? {
        RateLimitUnit::Unknown => return None,
        RateLimitUnit::Second => Period::Second,
        RateLimitUnit::Minute => Period::Minute,
        RateLimitUnit::Hour => Period::Hour,
        RateLimitUnit::Day => Period::Day,
        RateLimitUnit::Month => Period::Month,
        RateLimitUnit::Year => Period::Year,
    })
}

/// Domain → proto with tollgate's default answers (see [`response_for`]).
pub fn response_from(decision: &Decision) -> RateLimitResponse {
    let check = Check {
        domain: String::new(),
        descriptors: vec![],
        hits: 1,
    };
    response_for(decision, &DomainMode::default(), &check)
}

/// Domain → proto: per-descriptor statuses with the limit, what is left and
/// when it resets, so Envoy can send `x-ratelimit-*` headers; then what
/// the domain's mode adds: `retry-after` on a denial (tollgate's),
/// envoyproxy/ratelimit's `RateLimit-*` headers, its dynamic metadata.
pub fn response_for(decision: &Decision, mode: &DomainMode, check: &Check) -> RateLimitResponse {
    let over = decision.code == Code::OverLimit;
    let mut response_headers_to_add = Vec::new();
    // Envoy's rate limit filter reads `value` (unlike ext_proc, which
    // wants `raw_value`).
    let mut add = |key: &str, value: String| {
        response_headers_to_add.push(HeaderValue {
            key: key.to_string(),
            value,
            ..Default::default()
        })
    };
    if let Some(names) = &mode.headers {
        if let Some(d) = peer_header_descriptor(decision) {
            if let Some(m) = &d.limit {
                add(&names.limit, m.limit.amount.to_string());
                add(&names.remaining, d.remaining.to_string());
                add(&names.reset, reset_seconds(d).to_string());
            }
        }
    }
    if over && mode.retry_after {
        let secs = decision.retry_after().as_millis().div_ceil(1000).max(1);
        add("retry-after", secs.to_string());
    }
    if mode.ietf_headers {
        if let Some((policy, state)) = ietf_headers::fields(&ietf_policies(decision)) {
            add("RateLimit-Policy", policy);
            add("RateLimit", state);
        }
    }
    RateLimitResponse {
        overall_code: code(decision.code) as i32,
        statuses: decision.descriptors.iter().map(status).collect(),
        response_headers_to_add,
        dynamic_metadata: mode
            .dynamic_metadata
            .then(|| dynamic_metadata(decision, check)),
        ..Default::default()
    }
}

/// The descriptor envoyproxy/ratelimit's headers describe: the last one
/// over its limit (quota mode aside), else the one with the least left.
fn peer_header_descriptor(decision: &Decision) -> Option<&DescriptorResult> {
    let mut min = u64::from(u32::MAX);
    let mut found = None;
    for d in &decision.descriptors {
        if d.limit.is_some() && d.remaining < min {
            found = Some(d);
            min = d.remaining;
        }
        if d.code == Code::OverLimit && !d.quota {
            found = Some(d);
            min = 0;
        }
    }
    found
}

/// One IETF policy per descriptor that met a limit, named by its rule
/// (`descriptor-N` when the rule has no name). The window (`w`) is given
/// for fixed-length periods; a calendar month's varies, so it is left out.
fn ietf_policies(decision: &Decision) -> Vec<PolicyState> {
    decision
        .descriptors
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let m = d.limit.as_ref()?;
            let name = if m.rule.is_empty() {
                format!("descriptor-{i}")
            } else {
                m.rule.clone()
            };
            let window = m.limit.period.fixed_millis(m.limit.zone).unwrap_or(0);
            Some(PolicyState {
                name,
                quota: m.limit.amount,
                unit: None,
                window: Duration::from_millis(window),
                remaining: d.remaining,
                reset_after: d.reset_after,
            })
        })
        .collect()
}

/// Whole seconds until the descriptor's window resets, rounded up (the
/// peer's `unit - now % unit`).
fn reset_seconds(d: &DescriptorResult) -> u64 {
    d.reset_after.as_millis().div_ceil(1000) as u64
}

/// envoyproxy/ratelimit's `RESPONSE_DYNAMIC_METADATA`: the domain, the
/// request's descriptors, and the `metadata` of the descriptors that
/// passed, merged (the first value of a key wins; structs merge).
fn dynamic_metadata(decision: &Decision, check: &Check) -> Struct {
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let number = |n: u64| Value {
        kind: Some(Kind::NumberValue(n as f64)),
    };
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_string(), string(check.domain.clone()));
    let descriptors = check
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::HashMap::new();
            let entries = d
                .entries
                .iter()
                .map(|(k, v)| string(format!("{k}={v}")))
                .collect();
            f.insert(
                "entries".to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: entries })),
                },
            );
            if let Some(l) = &d.limit {
                f.insert(
                    "limit".to_string(),
                    string(format!(
                        "requests_per_unit:{} unit:{}",
                        l.amount,
                        l.period.as_str().to_uppercase()
                    )),
                );
            }
            if let Some(h) = d.hits {
                f.insert("hitsAddend".to_string(), number(h));
            }
            Value {
                kind: Some(Kind::StructValue(Struct { fields: f })),
            }
        })
        .collect();
    fields.insert(
        "descriptors".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: descriptors,
            })),
        },
    );
    if check.hits > 1 {
        fields.insert("hitsAddend".to_string(), number(check.hits));
    }
    let mut passed = Struct::default();
    for d in decision.descriptors.iter().filter(|d| d.code == Code::Ok) {
        if let Some(m) = &d.metadata {
            merge(&mut passed, &json_struct(m));
        }
    }
    if !passed.fields.is_empty() {
        fields.insert(
            "metadata".to_string(),
            Value {
                kind: Some(Kind::StructValue(passed)),
            },
        );
    }
    Struct { fields }
}

/// Merges `src` into `dest`: a key already there keeps its value, unless
/// both are structs, which merge.
fn merge(dest: &mut Struct, src: &Struct) {
    for (k, v) in &src.fields {
        match (dest.fields.get_mut(k), &v.kind) {
            (None, _) => {
                dest.fields.insert(k.clone(), v.clone());
            }
            (
                Some(Value {
                    kind: Some(Kind::StructValue(d)),
                }),
                Some(Kind::StructValue(s)),
            ) => merge(d, s),
            (Some(_), _) => {}
        }
    }
}

fn json_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(json_struct(o)),
    };
    Value { kind: Some(kind) }
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
        // Whole seconds, rounded up, as envoyproxy/ratelimit sends.
        duration_until_reset: d.limit.as_ref().map(|_| ProtoDuration {
            seconds: reset_seconds(d) as i64,
            nanos: 0,
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

    #[test]
    fn ietf_fields_only_when_the_domain_asks_one_policy_per_limit() {
        use crate::engine::MatchedLimit;
        let descriptor = |rule: &str, amount, period, remaining, reset_s: u64| DescriptorResult {
            code: Code::Ok,
            limit: Some(MatchedLimit {
                limit: Limit::new(amount, period, Algorithm::FixedWindow),
                rule: rule.into(),
            }),
            remaining,
            reset_after: Duration::from_millis(reset_s * 1000 - 400),
            retry_after: Duration::ZERO,
            quota: false,
            metadata: None,
        };
        let decision = Decision {
            code: Code::Ok,
            descriptors: vec![
                descriptor("per-tenant", 10, Period::Minute, 7, 30),
                descriptor("", 1000, Period::Month, 999, 86_400),
                DescriptorResult {
                    limit: None,
                    ..descriptor("", 1, Period::Minute, 0, 1)
                },
            ],
        };
        let check = Check {
            domain: "d".into(),
            descriptors: vec![],
            hits: 1,
        };
        let headers = |mode: &DomainMode| -> Vec<(String, String)> {
            response_for(&decision, mode, &check)
                .response_headers_to_add
                .into_iter()
                .map(|h| (h.key, h.value))
                .collect()
        };
        assert_eq!(headers(&DomainMode::default()), vec![], "off by default");
        let on = DomainMode {
            ietf_headers: true,
            ..DomainMode::default()
        };
        assert_eq!(
            headers(&on),
            vec![
                (
                    "RateLimit-Policy".to_string(),
                    r#""per-tenant";q=10;w=60, "descriptor-1";q=1000"#.to_string()
                ),
                (
                    "RateLimit".to_string(),
                    r#""per-tenant";r=7;t=30, "descriptor-1";r=999;t=86400"#.to_string()
                ),
            ],
            "a calendar month has no one length: no w"
        );
    }
}
