//! Usage reported by a non-streamed response body.

use crate::Endpoint;
use serde_json::Value;

/// Tokens a response used, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included (Anthropic reports cache
    /// reads and writes apart from `input_tokens`; they are added here).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those served from the provider's prompt cache.
    pub cached_prompt_tokens: u64,
}

/// Why a response body gave no usage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("response body is not valid JSON")]
    InvalidJson,
}

/// Usage from a JSON response body; `Ok(None)` when it reports none.
/// (For a body that arrives in chunks, [`JsonUsage`](crate::JsonUsage)
/// gives the same answer without keeping the body.)
pub fn usage_from_json(endpoint: Endpoint, body: &[u8]) -> Result<Option<Usage>, UsageError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| UsageError::InvalidJson)?;
    Ok(usage_of_value(endpoint, &v))
}

/// The usage a parsed response body reports: `usage`, or for the
/// Responses API a wrapped `response.usage`.
pub(crate) fn usage_of_value(endpoint: Endpoint, v: &Value) -> Option<Usage> {
    let usage = match endpoint {
        Endpoint::Responses => v.get("usage").or_else(|| v.pointer("/response/usage")),
        _ => v.get("usage"),
    };
    usage.and_then(|u| from_usage_object(endpoint, u))
}

fn n(v: &Value, path: &str) -> Option<u64> {
    v.pointer(path).and_then(Value::as_u64)
}

/// Reads a provider's `usage` object.
pub(crate) fn from_usage_object(endpoint: Endpoint, u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    Some(match endpoint {
        Endpoint::AnthropicMessages => {
            let read = n(u, "/cache_read_input_tokens").unwrap_or(0);
            let write = n(u, "/cache_creation_input_tokens").unwrap_or(0);
            Usage {
                // Saturating: a hostile upstream's huge counts must not
                // wrap (or panic) into a tiny charge.
                prompt_tokens: n(u, "/input_tokens")
                    .unwrap_or(0)
                    .saturating_add(read)
                    .saturating_add(write),
                completion_tokens: n(u, "/output_tokens").unwrap_or(0),
                cached_prompt_tokens: read,
            }
        }
        Endpoint::Responses => Usage {
            prompt_tokens: n(u, "/input_tokens")?,
            completion_tokens: n(u, "/output_tokens").unwrap_or(0),
            cached_prompt_tokens: n(u, "/input_tokens_details/cached_tokens").unwrap_or(0),
        },
        _ => Usage {
            prompt_tokens: n(u, "/prompt_tokens")?,
            completion_tokens: n(u, "/completion_tokens").unwrap_or(0),
            cached_prompt_tokens: n(u, "/prompt_tokens_details/cached_tokens").unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_counts_near_u64_max_saturate_instead_of_wrapping() {
        let body = format!(
            r#"{{"usage":{{"input_tokens":{},"cache_read_input_tokens":{},"cache_creation_input_tokens":5,"output_tokens":1}}}}"#,
            u64::MAX - 1,
            u64::MAX / 2
        );
        let u = usage_from_json(Endpoint::AnthropicMessages, body.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(u.prompt_tokens, u64::MAX);
    }

    #[test]
    fn each_provider() {
        let chat = br#"{"usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            usage_from_json(Endpoint::ChatCompletions, chat).unwrap(),
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 20,
                cached_prompt_tokens: 4
            })
        );
        let emb = br#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        assert_eq!(
            usage_from_json(Endpoint::Embeddings, emb)
                .unwrap()
                .unwrap()
                .prompt_tokens,
            7
        );
        let resp = br#"{"usage":{"input_tokens":5,"output_tokens":6,"input_tokens_details":{"cached_tokens":1}}}"#;
        assert_eq!(
            usage_from_json(Endpoint::Responses, resp).unwrap(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 6,
                cached_prompt_tokens: 1
            })
        );
        let ant = br#"{"usage":{"input_tokens":3,"output_tokens":9,"cache_read_input_tokens":100,"cache_creation_input_tokens":2}}"#;
        assert_eq!(
            usage_from_json(Endpoint::AnthropicMessages, ant).unwrap(),
            Some(Usage {
                prompt_tokens: 105,
                completion_tokens: 9,
                cached_prompt_tokens: 100
            })
        );
        assert_eq!(
            usage_from_json(Endpoint::ChatCompletions, b"{}").unwrap(),
            None
        );
        assert_eq!(
            usage_from_json(Endpoint::ChatCompletions, b"{oops").unwrap_err(),
            UsageError::InvalidJson
        );
    }

    fn usage(prompt: u64, completion: u64, cached: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: cached,
        })
    }

    #[test]
    fn a_responses_body_may_wrap_the_response() {
        // As a `response.completed` event carries it: {"response": {...}}.
        let wrapped = br#"{"type":"response.completed","response":{"usage":{"input_tokens":8,"output_tokens":2}}}"#;
        assert_eq!(
            usage_from_json(Endpoint::Responses, wrapped).unwrap(),
            usage(8, 2, 0)
        );
        let top = br#"{"usage":{"input_tokens":1},"response":{"usage":{"input_tokens":8}}}"#;
        assert_eq!(
            usage_from_json(Endpoint::Responses, top).unwrap(),
            usage(1, 0, 0),
            "the body's own usage first"
        );
        assert_eq!(
            usage_from_json(Endpoint::ChatCompletions, wrapped).unwrap(),
            None,
            "only the Responses API wraps"
        );
    }

    #[test]
    fn without_its_prompt_count_a_usage_is_none_and_other_counts_default_to_zero() {
        for (endpoint, body) in [
            (
                Endpoint::ChatCompletions,
                &br#"{"usage":{"completion_tokens":5}}"#[..],
            ),
            (Endpoint::Responses, br#"{"usage":{"output_tokens":5}}"#),
        ] {
            assert_eq!(
                usage_from_json(endpoint, body).unwrap(),
                None,
                "{endpoint:?}"
            );
        }
        assert_eq!(
            usage_from_json(
                Endpoint::ChatCompletions,
                br#"{"usage":{"prompt_tokens":0}}"#
            )
            .unwrap(),
            usage(0, 0, 0),
            "a reported zero is a usage"
        );
        // Anthropic reports the prompt in parts, each optional.
        assert_eq!(
            usage_from_json(
                Endpoint::AnthropicMessages,
                br#"{"usage":{"output_tokens":5}}"#
            )
            .unwrap(),
            usage(0, 5, 0)
        );
        assert_eq!(
            usage_from_json(
                Endpoint::AnthropicMessages,
                br#"{"usage":{"cache_creation_input_tokens":7}}"#
            )
            .unwrap(),
            usage(7, 0, 0),
            "cache writes are prompt tokens, not cached ones"
        );
    }

    #[test]
    fn a_usage_that_is_not_an_object_or_not_counts_gives_none() {
        for body in [
            &br#"{"usage":null}"#[..],
            br#"{"usage":[1,2]}"#,
            br#"{"usage":"10"}"#,
            br#"{"usage":{"prompt_tokens":"10"}}"#,
            br#"{"usage":{"prompt_tokens":-1}}"#,
            br#"{"usage":{"prompt_tokens":1.5}}"#,
        ] {
            assert_eq!(
                usage_from_json(Endpoint::ChatCompletions, body).unwrap(),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            usage_from_json(Endpoint::AnthropicMessages, br#"{"usage":null}"#).unwrap(),
            None
        );
        assert_eq!(
            usage_from_json(Endpoint::ChatCompletions, b"[]").unwrap(),
            None,
            "valid JSON that is not an object"
        );
    }
}
