//! Rate limit checks over HTTP, for nginx `auth_request` and any proxy or
//! script that can make a sub-request. Same rules, same engine, same
//! counters as the gRPC service: a request is turned into the same
//! `RateLimitRequest` and validated by the same function.
//!
//! * `GET /check?domain=edge&descriptor=tenant=acme,path=/v1&hits=1`
//!   (`descriptor` repeatable), or the same in headers:
//!   `x-tollgate-domain`, `x-tollgate-hits`, and the descriptors as
//!   * `x-tollgate-entry: key=value`, one entry per header line, the value
//!     taken verbatim (everything after the first `=`): nothing in it can
//!     add an entry or a descriptor, so a proxy that cannot escape (nginx)
//!     may put a client's header there. Repeated lines are the entries of
//!     one descriptor, in order; `x-tollgate-entry-2` .. `-64` are further
//!     descriptors.
//!   * `x-tollgate-descriptor: key=value,key=value;key=value` (`;`
//!     between descriptors): the structure is read from the characters as
//!     sent, then each key and value is percent-decoded once, so `%2C`,
//!     `%3D`, `%3B` are data. Safe only for values the caller escaped.
//!
//!   The query's `descriptor` is read like `x-tollgate-descriptor` (raw
//!   `,` and `=` are structure, each piece is decoded once); a value sent
//!   wholly encoded, with no raw `,` or `=` at all (what form encoders
//!   produce), is decoded once first and then read the same way.
//!   Answers 200 when allowed, 429 when over limit (or `deny_status`, e.g.
//!   403, which nginx's `auth_request` passes on; map it with `error_page`),
//!   with `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`
//!   and, when denied, `retry-after`.
//! * `POST /json` with a `RateLimitRequest` in the protobuf JSON mapping,
//!   answered with the `RateLimitResponse` in the same mapping
//!   (lowerCamelCase, zero values left out) and 429 when over the limit:
//!   envoyproxy/ratelimit's `/json`. Field names in snake_case are read
//!   too, as protobuf JSON parsers do.

use super::ratelimit::{check_from_proto, response_for, MAX_DESCRIPTORS};
use crate::app::App;
use crate::engine::{Code, Decision};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as ProtoCode;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, UInt64Value, Value};
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
    decide_with(app, request).await.map(|(d, _)| d)
}

/// [`decide`], also giving the gRPC service's response for the decision.
async fn decide_with(
    app: &App,
    request: RateLimitRequest,
) -> Result<(Decision, RateLimitResponse), Response> {
    let check = check_from_proto(request).map_err(bad)?;
    let config = app.config.load();
    let decision = app.engine.limits.decide(&config.rules, &check).await;
    app.metrics
        .decision("http", decision.code == Code::OverLimit);
    let response = response_for(&decision, config.rules.mode(&check.domain), &check);
    Ok((decision, response))
}

/// The query's `name=value` pairs: the name decoded, the value as sent
/// (a descriptor's structure is read before its pieces are decoded).
fn pairs(query: &str) -> impl Iterator<Item = (String, &str)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k), v)
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

/// `key=value,key=value` → entries. The `,` and the first `=` of each
/// entry are read as sent; then the key and the value are each decoded
/// once, so an escaped `%2C` or `%3D` is part of a value, never structure.
/// A bare `key` is refused (a request descriptor always carries values).
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

/// The query's `descriptor`: read as sent, unless it was encoded whole
/// (no raw `,` or `=` anywhere, as a form encoder sends
/// `tenant%3Dacme%2Cpath%3D%2Fv1`): then decoded once and read the same
/// way. Text with a raw `=` (any `key=...` template) is never decoded
/// before its structure is read.
fn query_descriptor(raw: &str) -> Result<RateLimitDescriptor, String> {
    if raw.contains(['=', ',']) {
        descriptor(raw)
    } else {
        descriptor(&decode(raw))
    }
}

/// One `x-tollgate-entry` line: `key=value`, the key decoded, the value
/// verbatim (a client's text as the proxy forwarded it).
fn verbatim_entry(line: &str) -> Result<Entry, String> {
    let Some((k, v)) = line.split_once('=') else {
        return Err(format!(
            "x-tollgate-entry `{}` is not key=value",
            shorten(line)
        ));
    };
    Ok(Entry {
        key: decode(k.trim()),
        value: v.to_string(),
    })
}

/// Which descriptor an `x-tollgate-entry[-n]` header fills: 1 for the bare
/// name, `n` for `-n`; `None` for other header names.
fn entry_header_index(name: &str) -> Option<Result<usize, String>> {
    let rest = name.strip_prefix(ENTRY_HEADER)?;
    if rest.is_empty() {
        return Some(Ok(1));
    }
    let n = rest.strip_prefix('-').and_then(|n| n.parse::<usize>().ok());
    Some(match n {
        Some(n) if (1..=MAX_DESCRIPTORS).contains(&n) => Ok(n),
        _ => Err(format!(
            "header `{}`: the suffix must be -1 to -{MAX_DESCRIPTORS}",
            shorten(name)
        )),
    })
}

/// The header whose lines are verbatim entries.
const ENTRY_HEADER: &str = "x-tollgate-entry";

/// Every value of header `name`, refusing one that is not UTF-8 (dropping
/// it would silently change the descriptor).
fn header_values<'h>(headers: &'h HeaderMap, name: &str) -> Result<Vec<&'h str>, String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            std::str::from_utf8(v.as_bytes()).map_err(|_| format!("header {name} is not UTF-8"))
        })
        .collect()
}

/// The descriptors of `x-tollgate-entry` and `x-tollgate-entry-n`, in
/// ascending `n` (the bare name is 1).
fn entry_descriptors(headers: &HeaderMap) -> Result<Vec<RateLimitDescriptor>, String> {
    let mut by_index = std::collections::BTreeMap::new();
    for name in headers.keys() {
        let Some(index) = entry_header_index(name.as_str()) else {
            continue;
        };
        let entries = header_values(headers, name.as_str())?
            .into_iter()
            .map(verbatim_entry)
            .collect::<Result<Vec<_>, _>>()?;
        by_index
            .entry(index?)
            .or_insert_with(Vec::new)
            .extend(entries);
    }
    Ok(by_index
        .into_values()
        .map(|entries| RateLimitDescriptor {
            entries,
            ..Default::default()
        })
        .collect())
}

/// At most 40 characters of a client's text for an error message (which
/// is logged), with control characters escaped: a `%0A` in a parameter
/// must not start a forged log line.
fn shorten(s: &str) -> String {
    s.chars()
        .take(40)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A `/check` request's query string and headers → the `RateLimitRequest`
/// (not yet validated: [`check_from_proto`] does that) and the status for
/// a denial. The one parsing entry the handler and the fuzz target
/// (`fuzz/fuzz_targets/http_check.rs`) share; public for that target.
pub fn from_query_and_headers(
    query: &str,
    headers: &HeaderMap,
) -> Result<(RateLimitRequest, StatusCode), String> {
    let first = |name: &str| -> Result<Option<String>, String> {
        Ok(header_values(headers, name)?.first().map(|v| v.to_string()))
    };
    let mut domain = first("x-tollgate-domain")?.unwrap_or_default();
    let mut hits = first("x-tollgate-hits")?;
    let mut deny_status = StatusCode::TOO_MANY_REQUESTS;
    let mut descriptors = entry_descriptors(headers)?;
    for value in header_values(headers, "x-tollgate-descriptor")? {
        for d in value.split(';').filter(|d| !d.trim().is_empty()) {
            descriptors.push(descriptor(d)?);
        }
    }
    for (k, raw) in pairs(query) {
        match k.as_str() {
            "domain" => domain = decode(raw),
            "descriptor" | "d" => descriptors.push(query_descriptor(raw)?),
            "hits" | "hits_addend" => hits = Some(decode(raw)),
            "deny_status" => {
                let v = decode(raw);
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

/// A `RateLimitRequest` in the protobuf JSON mapping (lowerCamelCase, or
/// the proto's own snake_case names, as protobuf JSON parsers accept).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, rename = "hitsAddend", alias = "hits_addend")]
    hits_addend: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default, rename = "hitsAddend", alias = "hits_addend")]
    hits_addend: Option<JsonU64>,
    #[serde(default, rename = "isNegativeHits", alias = "is_negative_hits")]
    is_negative_hits: bool,
    #[serde(default)]
    limit: Option<JsonOverride>,
}

/// A 64-bit integer: protobuf JSON writes it as a string, and reads either.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonU64 {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(default, rename = "requestsPerUnit", alias = "requests_per_unit")]
    requests_per_unit: u32,
    #[serde(default)]
    unit: Option<JsonUnit>,
}

/// An enum: its name, or its number.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonUnit {
    Number(i32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

impl JsonRequest {
    fn into_proto(self) -> Result<RateLimitRequest, String> {
        let mut descriptors = Vec::with_capacity(self.descriptors.len());
        for d in self.descriptors {
            let hits_addend = match d.hits_addend {
                None => None,
                Some(JsonU64::Number(value)) => Some(UInt64Value { value }),
                Some(JsonU64::Text(t)) => Some(UInt64Value {
                    value: t
                        .parse()
                        .map_err(|_| format!("hitsAddend `{}` is not a number", shorten(&t)))?,
                }),
            };
            let limit = match d.limit {
                None => None,
                Some(o) => Some(RateLimitOverride {
                    requests_per_unit: o.requests_per_unit,
                    unit: match o.unit {
                        None => 0,
                        Some(JsonUnit::Number(n)) => n,
                        Some(JsonUnit::Name(n)) => RateLimitUnit::from_str_name(&n)
                            .ok_or_else(|| format!("unit `{}` is not a unit", shorten(&n)))?
                            as i32,
                    },
                }),
            };
            descriptors.push(RateLimitDescriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                hits_addend,
                is_negative_hits: d.is_negative_hits,
                limit,
            });
        }
        Ok(RateLimitRequest {
            domain: self.domain,
            descriptors,
            hits_addend: self.hits_addend,
        })
    }
}

async fn json_check(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return bad(format!("body longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let parsed: JsonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("body is not a RateLimitRequest: {e}")),
    };
    let request = match parsed.into_proto() {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let (decision, proto) = match decide_with(&app, request).await {
        Ok(d) => d,
        Err(bad_request) => return bad_request,
    };
    let status = if proto.overall_code == ProtoCode::OverLimit as i32 {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    let mut response = (status, axum::Json(response_json(&proto))).into_response();
    add_headers(response.headers_mut(), &decision);
    response
}

/// A `RateLimitResponse` in the protobuf JSON mapping: lowerCamelCase
/// names, enums by name, durations as `"1s"`, zero values left out.
fn response_json(r: &RateLimitResponse) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let code = |c: i32| {
        ProtoCode::try_from(c)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_else(|_| c.to_string())
    };
    if r.overall_code != 0 {
        out.insert("overallCode".into(), code(r.overall_code).into());
    }
    let statuses: Vec<serde_json::Value> = r
        .statuses
        .iter()
        .map(|s| {
            let mut o = serde_json::Map::new();
            if s.code != 0 {
                o.insert("code".into(), code(s.code).into());
            }
            if let Some(l) = &s.current_limit {
                let mut c = serde_json::Map::new();
                if !l.name.is_empty() {
                    c.insert("name".into(), l.name.clone().into());
                }
                if l.requests_per_unit != 0 {
                    c.insert("requestsPerUnit".into(), l.requests_per_unit.into());
                }
                if l.unit != 0 {
                    let unit = Unit::try_from(l.unit)
                        .map(|u| u.as_str_name().to_string())
                        .unwrap_or_else(|_| l.unit.to_string());
                    c.insert("unit".into(), unit.into());
                }
                o.insert("currentLimit".into(), c.into());
            }
            if s.limit_remaining != 0 {
                o.insert("limitRemaining".into(), s.limit_remaining.into());
            }
            if let Some(d) = &s.duration_until_reset {
                o.insert(
                    "durationUntilReset".into(),
                    duration_json(d.seconds, d.nanos).into(),
                );
            }
            o.into()
        })
        .collect();
    if !statuses.is_empty() {
        out.insert("statuses".into(), statuses.into());
    }
    let headers: Vec<serde_json::Value> = r
        .response_headers_to_add
        .iter()
        .map(|h| json!({"key": h.key, "value": h.value}))
        .collect();
    if !headers.is_empty() {
        out.insert("responseHeadersToAdd".into(), headers.into());
    }
    if let Some(m) = &r.dynamic_metadata {
        out.insert("dynamicMetadata".into(), struct_json(m));
    }
    out.into()
}

/// `google.protobuf.Duration` in JSON: seconds with up to 9 decimals.
fn duration_json(seconds: i64, nanos: i32) -> String {
    if nanos == 0 {
        format!("{seconds}s")
    } else {
        let frac = format!("{:09}", nanos.unsigned_abs());
        format!("{seconds}.{}s", frac.trim_end_matches('0'))
    }
}

fn struct_json(s: &Struct) -> serde_json::Value {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn value_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
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
            "domain=edge&descriptor=tenant=b,k=a%20b&hits=3&deny_status=403",
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

    /// Text from a client, put in a descriptor by a proxy, must not change
    /// its structure (issue 18, defect 1).
    fn descriptors_of(
        query: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Vec<Vec<(String, String)>> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        let (r, _) = from_query_and_headers(query, &h).unwrap();
        r.descriptors
            .into_iter()
            .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
            .collect()
    }

    fn one(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn entry_headers_take_the_value_verbatim() {
        assert_eq!(
            descriptors_of("", &[("x-tollgate-entry", "tenant=demo,x=1")]),
            vec![one("tenant", "demo,x=1")]
        );
        assert_eq!(
            descriptors_of("", &[("x-tollgate-entry", "tenant=me;tenant=victim")]),
            vec![one("tenant", "me;tenant=victim")]
        );
        assert_eq!(
            descriptors_of("", &[("x-tollgate-entry", "tenant=a%2Cb+c")]),
            vec![one("tenant", "a%2Cb+c")],
            "not decoded either"
        );
        // Repeated lines: one descriptor's entries in order; -n: more
        // descriptors, in ascending n after the bare name.
        let d = descriptors_of(
            "",
            &[
                ("x-tollgate-entry-3", "k=3"),
                ("x-tollgate-entry", "tenant=t"),
                ("x-tollgate-entry", "path=/v1,x"),
                ("x-tollgate-entry-2", "k=2"),
            ],
        );
        assert_eq!(
            d,
            vec![
                vec![
                    ("tenant".to_string(), "t".to_string()),
                    ("path".to_string(), "/v1,x".to_string())
                ],
                one("k", "2"),
                one("k", "3"),
            ]
        );
        let h = |k: &'static str, v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            h
        };
        for (k, v, why) in [
            ("x-tollgate-entry", "tenant", "not key=value"),
            ("x-tollgate-entry-0", "a=b", "suffix"),
            ("x-tollgate-entry-65", "a=b", "suffix"),
            ("x-tollgate-entry-x", "a=b", "suffix"),
        ] {
            let e = from_query_and_headers("", &h(k, v)).unwrap_err();
            assert!(e.contains(why), "{k}: {v}: {e}");
        }
        let mut bad = HeaderMap::new();
        bad.insert(
            "x-tollgate-entry",
            HeaderValue::from_bytes(b"tenant=\xff").unwrap(),
        );
        assert!(from_query_and_headers("", &bad)
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn escaped_structure_is_data() {
        // Query: `%2C` and `%3D` in a value are data; decoded once only.
        assert_eq!(
            descriptors_of("descriptor=tenant=demo%2Cx%3D1", &[]),
            vec![one("tenant", "demo,x=1")]
        );
        assert_eq!(
            descriptors_of("descriptor=tenant=a%253B", &[]),
            vec![one("tenant", "a%3B")],
            "decoded once"
        );
        // Wholly encoded (a form encoder's output): decoded once, then read.
        assert_eq!(
            descriptors_of("descriptor=tenant%3Dacme%2Cpath%3D%2Fv1", &[]),
            vec![vec![
                ("tenant".to_string(), "acme".to_string()),
                ("path".to_string(), "/v1".to_string())
            ]]
        );
        // Header: raw `,` and `;` are structure, escaped ones are data.
        assert_eq!(
            descriptors_of(
                "",
                &[("x-tollgate-descriptor", "tenant=me%3Btenant%3Dv%2Cx")]
            ),
            vec![one("tenant", "me;tenant=v,x")]
        );
    }

    /// The escaping docs/nginx.md asks of a client (`%` `,` `=` `;` `+`,
    /// `&` in a query, whitespace at either end) keeps every value as it
    /// was: `+` is a space once decoded, a raw `&` starts a parameter and
    /// the ends of a piece are trimmed, so each must be escaped too (found
    /// writing the round trip of `fuzz/fuzz_targets/http_check.rs`, which
    /// now checks this escaping).
    #[test]
    fn documented_escaping_keeps_every_value() {
        fn escape(s: &str) -> String {
            let lead = s.len() - s.trim_start().len();
            let trail = s.trim_end().len();
            let mut out = String::new();
            for (i, c) in s.char_indices() {
                if "%,=;+&".contains(c) || (c.is_whitespace() && (i < lead || i >= trail)) {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        for value in [
            "a+b",
            "x&d",
            "x&descriptor=tenant=victim",
            " lead",
            "trail\u{a0}",
            "me;tenant=victim,x=1%2C",
        ] {
            let sent = format!("tenant={}", escape(value));
            let header = HeaderValue::from_str(&sent).unwrap();
            let mut h = HeaderMap::new();
            h.insert("x-tollgate-descriptor", header);
            for (query, headers) in [
                (format!("descriptor={sent}"), HeaderMap::new()),
                (String::new(), h),
            ] {
                let (r, _) = from_query_and_headers(&query, &headers).unwrap();
                assert_eq!(r.descriptors.len(), 1, "{value:?}");
                let e = &r.descriptors[0].entries;
                assert_eq!(e.len(), 1, "{value:?}");
                assert_eq!((e[0].key.as_str(), e[0].value.as_str()), ("tenant", value));
            }
        }
        // Escaped as the docs once said (no `+`, `&`, spaces), the value
        // changes: `+` reads as a space.
        let (r, _) = from_query_and_headers("descriptor=tenant=a+b", &HeaderMap::new()).unwrap();
        assert_eq!(r.descriptors[0].entries[0].value, "a b");
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
    fn client_text_in_errors_cannot_forge_log_lines() {
        let e = from_query_and_headers(
            "x%0A2026-01-01T00:00:00Z%20ERROR%20forged=1",
            &HeaderMap::new(),
        )
        .unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("x\\n2026"), "{e}");
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
