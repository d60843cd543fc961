//! Building ext_proc responses: continue, mutate, or answer at once.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::collections::HashMap;

/// `HeaderValueOption.append_action`: replace any existing value.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// Envoy expects `raw_value` (setting `value` too makes it answer 500).
pub fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.into().into_bytes(),
            ..Default::default()
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
        ..Default::default()
    }
}

fn mutation(headers: Vec<HeaderValueOption>) -> Option<HeaderMutation> {
    (!headers.is_empty()).then(|| HeaderMutation {
        set_headers: headers,
        ..Default::default()
    })
}

fn common(headers: Vec<HeaderValueOption>, body: Option<Vec<u8>>) -> Option<CommonResponse> {
    let header_mutation = mutation(headers);
    let body_mutation = body.map(|b| BodyMutation {
        mutation: Some(Mutation::Body(b)),
    });
    (header_mutation.is_some() || body_mutation.is_some()).then(|| CommonResponse {
        header_mutation,
        body_mutation,
        ..Default::default()
    })
}

pub fn request_headers(headers: Vec<HeaderValueOption>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: common(headers, None),
        })),
        ..Default::default()
    }
}

/// Continue with the request body, replaced when `body` is given, with
/// headers added to the upstream request and metadata for access logs.
pub fn request_body(
    headers: Vec<HeaderValueOption>,
    body: Option<Vec<u8>>,
    metadata: Option<Struct>,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
            response: common(headers, body),
        })),
        dynamic_metadata: metadata,
        ..Default::default()
    }
}

/// Like [`request_body`], and asks Envoy to pick the route again: the
/// model header set here may route the request elsewhere.
pub fn request_body_routed(
    headers: Vec<HeaderValueOption>,
    body: Option<Vec<u8>>,
    metadata: Option<Struct>,
) -> ProcessingResponse {
    let mut r = request_body(headers, body, metadata);
    if let Some(Response::RequestBody(BodyResponse {
        response: Some(common),
    })) = &mut r.response
    {
        common.clear_route_cache = true;
    }
    r
}

/// The same answer, also removing these request headers.
pub fn removing(mut r: ProcessingResponse, headers: Vec<String>) -> ProcessingResponse {
    if let Some(Response::RequestBody(BodyResponse {
        response: Some(common),
    })) = &mut r.response
    {
        common
            .header_mutation
            .get_or_insert_with(Default::default)
            .remove_headers = headers;
    }
    r
}

/// Not an answer: asks Envoy to wait this long for the answer to the
/// current message (honoured once per message, up to the filter's
/// `max_message_timeout`).
pub fn extend_timer(wait: std::time::Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(wait.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

pub fn response_headers(headers: Vec<HeaderValueOption>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse {
            response: common(headers, None),
        })),
        ..Default::default()
    }
}

/// A response chunk passes through untouched.
pub fn response_body() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseBody(BodyResponse { response: None })),
        ..Default::default()
    }
}

/// Answer the client now; the request never goes upstream.
pub fn immediate(
    status: u16,
    headers: Vec<HeaderValueOption>,
    body: Vec<u8>,
    details: &str,
) -> ProcessingResponse {
    let mut headers = headers;
    headers.push(header("content-type", "application/json"));
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: mutation(headers),
            body,
            details: details.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Dynamic metadata under the `tollgate` namespace.
pub fn metadata(fields: Vec<(String, Kind)>) -> Struct {
    let inner = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k, Value { kind: Some(v) }))
            .collect(),
    };
    Struct {
        fields: HashMap::from([(
            "tollgate".to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]),
    }
}
