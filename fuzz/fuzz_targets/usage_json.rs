//! Usage from a JSON response body, for every endpoint: never panics; a
//! body that is not UTF-8 (so not JSON) is an error, never a usage; the
//! cached part of the prompt is never more than the prompt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_filters::{usage_from_json, Endpoint};

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
    Endpoint::AnthropicMessages,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the endpoint; the rest is the body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let result = usage_from_json(endpoint, body);
    if std::str::from_utf8(body).is_err() {
        assert!(result.is_err(), "usage from a body that is not UTF-8");
    }
    if let (Ok(Some(u)), Endpoint::AnthropicMessages) = (result, endpoint) {
        // Anthropic's prompt is input + cache reads + cache writes.
        assert!(u.cached_prompt_tokens <= u.prompt_tokens, "{u:?}");
    }
});
