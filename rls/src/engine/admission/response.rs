//! Reading an admitted request's response for its usage as it passes:
//! the chunks themselves go on to the client untouched and at once; only
//! what the usage needs is kept. A JSON body is scanned as it passes
//! (`JsonUsage`: a few hundred bytes whatever its size), an SSE stream is
//! kept one line at a time (at most 1 MiB, `SseUsage`).

use super::outcome::ResponseEnd;
use crate::rules::Tokens;
use tollgate_filters::{Endpoint, JsonUsage, SseUsage};

/// Follows one response body.
pub struct ResponseReader {
    status: u16,
    body: Body,
}

enum Body {
    Json(Box<JsonUsage>),
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
            Body::Json(Box::new(JsonUsage::new(endpoint)))
        };
        ResponseReader { status, body }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Sse(p) => p.feed(chunk),
            Body::Json(p) => p.feed(chunk),
        }
    }

    /// The response ended.
    pub fn completed(&mut self) -> ResponseEnd {
        let usage = match &mut self.body {
            Body::Sse(p) => {
                p.finish();
                p.usage()
            }
            Body::Json(p) => match p.finish() {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "response body is not JSON with usage");
                    None
                }
            },
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
            Body::Json(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(r: &mut ResponseReader) -> Option<Tokens> {
        match r.completed() {
            ResponseEnd::Completed { usage, .. } => usage,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_usage_at_the_end_of_a_long_json_body_is_read() {
        // 12 MiB of completion before the usage: over the 8 MiB that was
        // once kept whole (and then not read at all).
        let mut r = ResponseReader::new(
            Endpoint::ChatCompletions,
            200,
            Some("application/json"),
            false,
        );
        r.feed(br#"{"choices":[{"message":{"content":""#);
        let text = vec![b'a'; 1 << 20];
        for _ in 0..12 {
            r.feed(&text);
        }
        r.feed(br#""}}],"usage":{"prompt_tokens":7,"completion_tokens":3000000}}"#);
        assert_eq!(
            completed(&mut r),
            Some(Tokens {
                prompt: 7,
                completion: 3_000_000,
                cached: 0
            })
        );
    }

    #[test]
    fn a_json_body_split_anywhere_gives_its_usage() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":11,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        for cut in 0..body.len() {
            let mut r = ResponseReader::new(Endpoint::ChatCompletions, 200, None, false);
            r.feed(&body[..cut]);
            r.feed(&body[cut..]);
            assert_eq!(
                completed(&mut r),
                Some(Tokens {
                    prompt: 11,
                    completion: 2,
                    cached: 3
                }),
                "cut at {cut}"
            );
        }
    }
}
