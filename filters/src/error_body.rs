//! Error bodies in the shape each provider's SDKs parse, so a client sees a
//! tollgate answer as it would see the provider's own.

use crate::Provider;
use serde_json::json;

/// What went wrong, in terms both providers have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    RateLimited,
    ContextLengthExceeded,
    InvalidRequest,
    ServiceUnavailable,
}

/// The JSON error body for `provider`.
pub fn error_body(provider: Provider, status: u16, kind: ErrorKind, message: &str) -> Vec<u8> {
    let body = match provider {
        Provider::OpenAi => {
            let (t, code) = match kind {
                ErrorKind::RateLimited => ("tokens", Some("rate_limit_exceeded")),
                ErrorKind::ContextLengthExceeded => {
                    ("invalid_request_error", Some("context_length_exceeded"))
                }
                ErrorKind::InvalidRequest => ("invalid_request_error", None),
                ErrorKind::ServiceUnavailable => ("server_error", Some("service_unavailable")),
            };
            json!({"error": {"message": message, "type": t, "param": null, "code": code}})
        }
        Provider::Anthropic => {
            let t = match kind {
                ErrorKind::RateLimited => "rate_limit_error",
                ErrorKind::ContextLengthExceeded | ErrorKind::InvalidRequest if status == 413 => {
                    "request_too_large"
                }
                ErrorKind::ContextLengthExceeded | ErrorKind::InvalidRequest => {
                    "invalid_request_error"
                }
                ErrorKind::ServiceUnavailable => "overloaded_error",
            };
            json!({"type": "error", "error": {"type": t, "message": message}})
        }
    };
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn shapes() {
        let o: Value = serde_json::from_slice(&error_body(
            Provider::OpenAi,
            429,
            ErrorKind::RateLimited,
            "slow down",
        ))
        .unwrap();
        assert_eq!(o["error"]["code"], "rate_limit_exceeded");
        assert_eq!(o["error"]["message"], "slow down");
        let a: Value = serde_json::from_slice(&error_body(
            Provider::Anthropic,
            429,
            ErrorKind::RateLimited,
            "x",
        ))
        .unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
        let c: Value = serde_json::from_slice(&error_body(
            Provider::OpenAi,
            400,
            ErrorKind::ContextLengthExceeded,
            "x",
        ))
        .unwrap();
        assert_eq!(c["error"]["code"], "context_length_exceeded");
    }
}
