//! Rate limit checks over HTTP, for nginx `auth_request` and any proxy or
//! script that can make a sub-request. Same rules, same engine, same
//! counters as the gRPC service: a request is turned into the same
//! `RateLimitRequest` and validated by the same function.
//!
//! * `GET /check?domain=edge&descriptor=tenant=acme,path=/v1&hits=1`
//!   (`descriptor` repeatable). The same can come in headers, which is what
//!   nginx forwards: `x-tollgate-domain`, `x-tollgate-descriptor` (one per
//!   descriptor, or several separated by `;`), `x-tollgate-hits`. Entries are
//!   `key=value`, separated by `,`; a value may be percent-encoded.
//!   Answers 200 when allowed, 429 when over limit (or `deny_status`, e.g.
//!   403, which nginx's `auth_request` passes on; map it with `error_page`),
//!   with `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`
//!   and, when denied, `retry-after`.
//! * `POST /json` with a `RateLimitRequest`-shaped JSON body, answered with
//!   the statuses as JSON (envoyproxy/ratelimit's `/json`).

use super::ratelimit::check_from_proto;
use crate::app::App;
use crate::engine::{Code, Decision, DescriptorResult};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Longest query string or JSON body accepted.
pub const MAX_REQUEST_BYTES: usize = 16 << 10;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/check", get(check).post(check))
        .route("/json", post(json_check))
        .with_state(app)
}

fn bad(reason: impl Into<String>) -> Response {
    let reason = reason.into();
    tracing::info!(reason = %reason, "invalid HTTP check");
    (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
}

async fn check(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > MAX_REQUEST_BYTES {
        return bad(format!("query longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let (request, deny_status) = match from_query_and_headers(&query, &headers) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let decision = match decide(&app, request).await {
        Ok(d) => d,
        Err(bad_request) => return bad_request,
    };
    let over = decision.code == Code::OverLimit;
    let status = if over { deny_status } else { StatusCode::OK };
    // No body: the status and headers are the answer, and nginx can keep
    // its connection to tollgate alive only when an `auth_request`
    // sub-request's response has no body to discard.
    let mut response = status.into_response();
    add_headers(response.headers_mut(), &decision);
    response
}

/// The one decision path both forms share with the gRPC service: the same
/// validation, the same engine and counters.
async fn decide(app: &App, request: RateLimitRequest) -> Result<Decision, Response> {
    let check = check_from_proto(request).map_err(bad)?;
    let config = app.config.load();
    let decision = app.engine.limits.decide(&config.rules, &check).await;
    app.metrics
        .decision("http", decision.code == Code::OverLimit);
    Ok(decision)
}

fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k), decode(v))
    })
}

/// Percent-decoding (and `+` as space) of a query component; a `%` not
/// followed by two hex digits stays as it is.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key=value,key=value` → entries; a bare `key` is refused (a request
/// descriptor always carries values).
fn descriptor(text: &str) -> Result<RateLimitDescriptor, String> {
    let mut entries = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "descriptor entry `{}` is not key=value",
                shorten(part)
            ));
        };
        entries.push(Entry {
            key: decode(k.trim()),
            value: decode(v.trim()),
        });
    }
    Ok(RateLimitDescriptor {
        entries,
        ..Default::default()
    })
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

fn from_query_and_headers(
    query: &str,
    headers: &HeaderMap,
) -> Result<(RateLimitRequest, StatusCode), String> {
    let header = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut domain = header("x-tollgate-domain")
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut descriptors = Vec::new();
    let mut hits = header("x-tollgate-hits").into_iter().next();
    let mut deny_status = StatusCode::TOO_MANY_REQUESTS;
    for value in header("x-tollgate-descriptor") {
        for d in value.split(';').filter(|d| !d.trim().is_empty()) {
            descriptors.push(descriptor(d)?);
        }
    }
    for (k, v) in pairs(query) {
        match k.as_str() {
            "domain" => domain = v,
            "descriptor" | "d" => descriptors.push(descriptor(&v)?),
            "hits" | "hits_addend" => hits = Some(v),
            "deny_status" => {
                deny_status = v
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.is_client_error())
                    .ok_or_else(|| format!("deny_status `{}` is not a 4xx status", shorten(&v)))?;
            }
            other => return Err(format!("unknown parameter `{}`", shorten(other))),
        }
    }
    let hits = match hits {
        None => None,
        Some(h) => Some(
            h.trim()
                .parse::<u64>()
                .map_err(|_| format!("hits `{}` is not a number", shorten(&h)))?,
        ),
    };
    // An explicit cost applies to every descriptor (0 = check only).
    if let Some(h) = hits {
        for d in &mut descriptors {
            d.hits_addend = Some(UInt64Value { value: h });
        }
    }
    Ok((
        RateLimitRequest {
            domain,
            descriptors,
            hits_addend: 0,
        },
        deny_status,
    ))
}

/// The tightest descriptor's numbers, as Envoy's draft-03 headers.
fn add_headers(h: &mut HeaderMap, decision: &Decision) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    if let Some(t) = decision.tightest() {
        if let Some(m) = &t.limit {
            let window = m.limit.period.millis() / 1000;
            set(
                "x-ratelimit-limit",
                format!("{}, {};w={}", m.limit.amount, m.limit.amount, window),
            );
        }
        set("x-ratelimit-remaining", t.remaining.to_string());
        set("x-ratelimit-reset", t.reset_after.as_secs().to_string());
    }
    if decision.code == Code::OverLimit {
        let secs = decision.retry_after().as_millis().div_ceil(1000).max(1);
        set("retry-after", secs.to_string());
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    domain: String,
    descriptors: Vec<JsonDescriptor>,
    #[serde(default)]
    hits_addend: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    entries: Vec<JsonEntry>,
    hits_addend: Option<u64>,
    #[serde(default)]
    is_negative_hits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    value: String,
}

async fn json_check(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return bad(format!("body longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let parsed: JsonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("body is not a RateLimitRequest: {e}")),
    };
    let request = RateLimitRequest {
        domain: parsed.domain,
        descriptors: parsed
            .descriptors
            .into_iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
                is_negative_hits: d.is_negative_hits,
                ..Default::default()
            })
            .collect(),
        hits_addend: parsed.hits_addend,
    };
    let decision = match decide(&app, request).await {
        Ok(d) => d,
        Err(bad_request) => return bad_request,
    };
    let code = |c: Code| if c == Code::Ok { "OK" } else { "OVER_LIMIT" };
    let status = |d: &DescriptorResult| {
        json!({
            "code": code(d.code),
            "current_limit": d.limit.as_ref().map(|m| json!({
                "name": m.rule,
                "requests_per_unit": m.limit.amount,
                "unit": m.limit.period.as_str().to_uppercase(),
            })),
            "limit_remaining": d.remaining,
            "duration_until_reset": format!("{}s", d.reset_after.as_secs()),
        })
    };
    let body = json!({
        "overall_code": code(decision.code),
        "statuses": decision.descriptors.iter().map(status).collect::<Vec<_>>(),
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    add_headers(response.headers_mut(), &decision);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_headers_become_one_request() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-tollgate-descriptor",
            HeaderValue::from_static("tenant=acme;path=/v1"),
        );
        let (r, deny) = from_query_and_headers(
            "domain=edge&descriptor=tenant%3Db,k=a%20b&hits=3&deny_status=403",
            &h,
        )
        .unwrap();
        assert_eq!(r.domain, "edge");
        assert_eq!(deny, StatusCode::FORBIDDEN);
        assert_eq!(r.descriptors.len(), 3);
        assert_eq!(r.descriptors[0].entries[0].value, "acme");
        assert_eq!(r.descriptors[2].entries[0].key, "tenant");
        assert_eq!(r.descriptors[2].entries[0].value, "b");
        assert_eq!(r.descriptors[2].entries[1].value, "a b");
        assert!(r
            .descriptors
            .iter()
            .all(|d| d.hits_addend == Some(UInt64Value { value: 3 })));
    }

    #[test]
    fn bad_input_says_why() {
        let h = HeaderMap::new();
        assert!(from_query_and_headers("descriptor=tenant", &h)
            .unwrap_err()
            .contains("not key=value"));
        assert!(from_query_and_headers("hits=lots", &h)
            .unwrap_err()
            .contains("not a number"));
        assert!(from_query_and_headers("deny_status=200", &h)
            .unwrap_err()
            .contains("4xx"));
        assert!(from_query_and_headers("nope=1", &h)
            .unwrap_err()
            .contains("unknown parameter"));
        // An empty domain passes here and is refused by the shared validator.
        let (r, _) = from_query_and_headers("descriptor=a=b", &h).unwrap();
        assert_eq!(check_from_proto(r).unwrap_err(), "domain must not be empty");
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(decode("a%2Fb+c"), "a/b c");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%+1"), "% 1", "a % without hex stays; + is a space");
        assert_eq!(decode("%e2%82%ac"), "€");
    }
}
