//! Body rewrites, re-serialised with fields in their original order.

use crate::{Endpoint, RequestError};
use serde_json::{Map, Value};

fn object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(RequestError::NotAnObject),
        Err(e) => Err(RequestError::InvalidJson(format!(
            "line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// The rewritten body. Encoding a map of JSON values cannot fail in
/// practice; if it did, the caller keeps the body it had.
fn encode(o: &Map<String, Value>) -> Result<Vec<u8>, RequestError> {
    serde_json::to_vec(o).map_err(|e| RequestError::Rewrite(e.to_string()))
}

/// A streamed OpenAI chat or completions request reports usage only if
/// `stream_options.include_usage` is true; returns the body with it set, or
/// `None` when nothing needs to change (not streamed, already set, or an
/// API without the option).
pub fn ensure_stream_usage(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Option<Vec<u8>>, RequestError> {
    if !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) {
        return Ok(None);
    }
    let mut o = object(body)?;
    if o.get("stream").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let options = o
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(options) = options else {
        return Err(RequestError::WrongType {
            field: "stream_options",
        });
    };
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    options.insert("include_usage".into(), Value::Bool(true));
    encode(&o).map(Some)
}

/// The body with its top-level `model` replaced (model fallback).
pub fn rewrite_model(body: &[u8], new_model: &str) -> Result<Vec<u8>, RequestError> {
    let mut o = object(body)?;
    o.insert("model".into(), Value::String(new_model.to_string()));
    encode(&o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_include_usage_only_when_needed() {
        let b = br#"{"model":"m","stream":true,"messages":[]}"#;
        let out = ensure_stream_usage(Endpoint::ChatCompletions, b)
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            ensure_stream_usage(Endpoint::ChatCompletions, br#"{"model":"m"}"#).unwrap(),
            None
        );
        assert_eq!(
            ensure_stream_usage(
                Endpoint::ChatCompletions,
                br#"{"stream":true,"stream_options":{"include_usage":true}}"#
            )
            .unwrap(),
            None
        );
        assert_eq!(
            ensure_stream_usage(Endpoint::AnthropicMessages, br#"{"stream":true}"#).unwrap(),
            None
        );
        assert!(ensure_stream_usage(
            Endpoint::ChatCompletions,
            br#"{"stream":true,"stream_options":3}"#
        )
        .is_err());
    }

    #[test]
    fn swaps_the_model() {
        let out = rewrite_model(br#"{"model":"a","x":1}"#, "b").unwrap();
        assert_eq!(out, br#"{"model":"b","x":1}"#);
    }
}
