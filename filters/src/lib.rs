//! tollgate-filters: what an LLM request asks for and what its response
//! used, from the bytes on the wire. Pure: no I/O, no async, no logging, no
//! panics on any input.
//!
//! | module | job |
//! |---|---|
//! | `endpoint` | which API a path is (OpenAI chat, completions, responses, embeddings; Anthropic messages) |
//! | `request` | parse a request body: model, stream, requested output, prompt estimate |
//! | `estimate` | count tokens: a real BPE for OpenAI models, bytes/4 otherwise |
//! | `rewrite` | body changes: add `stream_options.include_usage`, swap the model |
//! | `usage` | usage from a JSON response body |
//! | `usage_scan` | the same, from a body fed in chunks, without keeping it |
//! | `sse` | usage from an SSE stream fed in arbitrary chunks |
//! | `error_body` | error bodies in each provider's shape |
#![forbid(unsafe_code)]

mod endpoint;
mod error_body;
mod estimate;
mod request;
mod rewrite;
mod sse;
mod usage;
mod usage_scan;

pub use endpoint::{Endpoint, Provider};
pub use error_body::{error_body, ErrorKind};
pub use estimate::Estimator;
pub use request::{parse_request, parse_request_with, LlmRequest, RequestError};
pub use rewrite::{ensure_stream_usage, rewrite_model};
pub use sse::SseUsage;
pub use usage::{usage_from_json, Usage, UsageError};
pub use usage_scan::JsonUsage;
