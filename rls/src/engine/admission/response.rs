//! Reading an admitted request's response for its usage as it passes:
//! the chunks themselves go on to the client untouched and at once; only
//! what the usage needs is kept.

use super::outcome::ResponseEnd;
use crate::rules::Tokens;
use tollgate_filters::{self as filters, Endpoint, SseUsage};

/// Largest non-streamed response body kept to read its usage; above it the
/// body still passes through, only the usage is not read.
const MAX_JSON_RESPONSE: usize = 8 << 20;

/// Follows one response body.
pub struct ResponseReader {
    endpoint: Endpoint,
    status: u16,
    body: Body,
}

enum Body {
    Json { kept: Vec<u8>, too_big: bool },
    Sse(Box<SseUsage>),
}

impl ResponseReader {
    /// A reader for a response of `status` and `content_type` (when the
    /// proxy sent the headers; else `streamed`, what the request asked for,
    /// says whether it is SSE).
    pub fn new(
        endpoint: Endpoint,
        status: u16,
        content_type: Option<&str>,
        streamed: bool,
    ) -> ResponseReader {
        let sse = match content_type {
            Some(c) => c.to_ascii_lowercase().starts_with("text/event-stream"),
            None => streamed,
        };
        let body = if sse {
            Body::Sse(Box::new(SseUsage::new(endpoint)))
        } else {
            Body::Json {
                kept: Vec::new(),
                too_big: false,
            }
        };
        ResponseReader {
            endpoint,
            status,
            body,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Sse(p) => p.feed(chunk),
            Body::Json { kept, too_big } => {
                if kept.len() + chunk.len() <= MAX_JSON_RESPONSE {
                    kept.extend_from_slice(chunk);
                } else {
                    *too_big = true;
                }
            }
        }
    }

    /// The response ended.
    pub fn completed(&mut self) -> ResponseEnd {
        let usage = match &mut self.body {
            Body::Sse(p) => {
                p.finish();
                p.usage()
            }
            Body::Json { kept, too_big } if !*too_big => {
                match filters::usage_from_json(self.endpoint, kept) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(error = %e, "response body is not JSON with usage");
                        None
                    }
                }
            }
            Body::Json { .. } => None,
        };
        ResponseEnd::Completed {
            status: self.status,
            usage: usage.map(|u| Tokens {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
                cached: u.cached_prompt_tokens,
            }),
            output_bytes: self.output_bytes(),
        }
    }

    /// The stream closed first.
    pub fn aborted(&self) -> ResponseEnd {
        ResponseEnd::Aborted {
            output_bytes: self.output_bytes(),
        }
    }

    /// Streamed output seen so far (what `charge_streamed` charges).
    fn output_bytes(&self) -> u64 {
        match &self.body {
            Body::Sse(p) => p.output_bytes(),
            Body::Json { .. } => 0,
        }
    }
}
