//! The first stage: the request body within its bounds, parsed, and its
//! prompt counted.

use super::outcome::Rejection;
use crate::rules::{Estimator, LlmConfig};
use crate::vocabularies;
use tollgate_filters::{self as filters, Endpoint, LlmRequest};

/// Request bodies above this are parsed off the async reactor: BPE runs at
/// about 50 MB/s, so past ~32 KiB a prompt would hold the reactor for more
/// than half a millisecond.
const BLOCKING_PARSE_BYTES: usize = 32 << 10;

/// Parses `body`, refusing it when it is over `max_body_bytes` or was cut
/// by the proxy's buffer. The prompt is counted with a BPE only for models
/// whose vocabulary the config wants, or that is built already
/// (`vocabularies`).
pub(super) async fn read(
    llm: &LlmConfig,
    endpoint: Endpoint,
    body: &[u8],
    complete: bool,
) -> Result<LlmRequest, Rejection> {
    let settings = &llm.settings;
    if body.len() > settings.max_body_bytes || !complete {
        // Envoy sends the whole body in BUFFERED mode; a partial one
        // means it exceeded Envoy's buffer.
        return Err(Rejection::TooLarge { bytes: body.len() });
    }
    let bpe = settings.estimator == Estimator::Bpe;
    let wanted = vocabularies::wanted(llm);
    // While a vocabulary is being built (at start, after a reload), a
    // parse that needs it would wait for it: not on the event loop.
    let blocking = body.len() > BLOCKING_PARSE_BYTES || vocabularies::loading(llm);
    let parsed = if blocking {
        let owned = body.to_vec();
        match tokio::task::spawn_blocking(move || {
            filters::parse_request_with(endpoint, &owned, |m| vocabularies::choose(&wanted, m, bpe))
        })
        .await
        {
            Ok(parsed) => parsed,
            Err(e) => {
                // The parser promises never to panic; if it did, nothing was
                // taken and the client gets a 500, not a wrong answer.
                tracing::error!(error = %e, endpoint = endpoint.as_str(), bytes = body.len(), "parsing an LLM request failed inside tollgate");
                return Err(Rejection::Internal);
            }
        }
    } else {
        filters::parse_request_with(endpoint, body, |m| vocabularies::choose(&wanted, m, bpe))
    };
    parsed.map_err(Rejection::Unreadable)
}
