//! The LLM request parser on any body, for every endpoint: never panics;
//! what it accepts names a model, and a body whose model is rewritten
//! parses again with the new model (the fallback path does exactly that).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_filters::{ensure_stream_usage, parse_request, rewrite_model, Endpoint};

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
    Endpoint::AnthropicMessages,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the endpoint and the estimator; the rest is the body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let prefer_bpe = pick & 0x80 != 0;
    let Ok(request) = parse_request(endpoint, body, prefer_bpe) else {
        return;
    };
    assert!(!request.model.trim().is_empty(), "accepted without a model");
    if endpoint == Endpoint::Embeddings {
        assert_eq!(request.max_output_tokens, Some(0));
    }
    let rewritten = rewrite_model(body, "fuzz-model").expect("an accepted body is an object");
    let again = parse_request(endpoint, &rewritten, false).expect("a rewritten body parses");
    assert_eq!(again.model, "fuzz-model");
    if let Ok(Some(with_usage)) = ensure_stream_usage(endpoint, body) {
        let again = parse_request(endpoint, &with_usage, false).expect("the usage body parses");
        assert!(again.stream_usage_requested);
    }
});
