//! What Envoy tells about the HTTP request and response: their headers
//! from a headers message, or the same facts as attributes sent with the
//! first body message when Envoy skips the headers messages.

use crate::rules::Identity;
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::Struct;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tollgate_filters::Endpoint;

/// Where the request's (or response's) facts come from.
pub(super) enum Facts<'a> {
    Headers(Option<&'a HeaderMap>),
    Attributes(&'a HashMap<String, Struct>),
}

/// The request as its headers describe it.
pub(super) struct RequestFacts {
    /// The LLM API a `POST` with a body goes to; `None` for anything else,
    /// which passes untouched.
    pub endpoint: Option<Endpoint>,
    pub identity: Identity,
    /// `:path` as sent, query included (a brokered request keeps it).
    pub path: String,
}

impl Facts<'_> {
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            Facts::Headers(h) => header_value(*h, name),
            Facts::Attributes(a) => attribute(a, name),
        }
    }

    /// Endpoint and identity; the names of the identity headers are the
    /// `[llm]` settings'.
    pub fn request(
        &self,
        settings: &crate::rules::LlmSettings,
        end_of_stream: bool,
    ) -> RequestFacts {
        let path = self.get(":path").unwrap_or_default();
        let method = self.get(":method").unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default().to_string();
        let endpoint = (method.eq_ignore_ascii_case("POST") && !end_of_stream)
            .then(|| Endpoint::from_path(&route))
            .flatten();
        RequestFacts {
            endpoint,
            path: path.clone(),
            identity: Identity {
                tenant: self.get(&settings.tenant_header).filter(|t| !t.is_empty()),
                api_key: self.get(&settings.api_key_header).map(|k| key_hash(&k)),
                class: self.get(&settings.class_header).filter(|c| !c.is_empty()),
                model: String::new(),
                route,
            },
        }
    }

    /// The response's status; 0 when Envoy sent none.
    pub fn status(&self) -> u16 {
        self.get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// A header as an ext_proc attribute: `:path` is `request.path`, `:method`
/// `request.method`, `:status` `response.code`, any other header `x` the
/// CEL expression `request.headers['x']`, written exactly so in Envoy's
/// `request_attributes`.
fn attribute(attrs: &HashMap<String, Struct>, name: &str) -> Option<String> {
    let keys = match name {
        ":path" => vec!["request.path".to_string()],
        ":method" => vec!["request.method".to_string()],
        ":status" => vec!["response.code".to_string()],
        // Read from the request headers message only; in attributes mode
        // SSE is known from the request.
        "content-type" => vec![],
        n => vec![
            format!("request.headers['{n}']"),
            format!("request.headers[\"{n}\"]"),
        ],
    };
    attrs
        .values()
        .flat_map(|s| keys.iter().filter_map(move |k| s.fields.get(k)))
        .find_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            Some(Kind::NumberValue(n)) if n.is_finite() => Some(format!("{}", *n as i64)),
            _ => None,
        })
}

fn header_value(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

/// API keys are matched and counted by a hash: the key never reaches a
/// store, a log or a metric.
fn key_hash(raw: &str) -> String {
    let key = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}
