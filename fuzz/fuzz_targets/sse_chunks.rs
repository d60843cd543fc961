//! The SSE usage reader fed in arbitrary chunks: the same stream split at
//! any points gives the same usage, output volume, end and malformed count
//! as the stream fed in one piece (Envoy hands the body over in chunks
//! that split lines, CRLFs and UTF-8 sequences anywhere).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_filters::{Endpoint, SseUsage};

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
    Endpoint::AnthropicMessages,
];

/// Everything the reader reports about a stream.
fn summary(r: &SseUsage) -> impl PartialEq + std::fmt::Debug {
    (
        r.usage(),
        r.output_bytes(),
        r.saw_done(),
        r.malformed_events(),
    )
}

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the endpoint, byte 1 says how many cut points follow
    // (two bytes each, taken modulo the stream's length); the rest is the
    // stream.
    let [pick, cuts, rest @ ..] = data else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(*pick) % ENDPOINTS.len()];
    let cut_bytes = (usize::from(*cuts) % 16 * 2).min(rest.len());
    let (cut_spec, stream) = rest.split_at(cut_bytes);

    let mut whole = SseUsage::new(endpoint);
    whole.feed(stream);
    let before_finish = summary(&whole);
    whole.finish();

    let mut points: Vec<usize> = cut_spec
        .chunks(2)
        .map(|c| {
            let n = usize::from(c[0]) << 8 | usize::from(*c.get(1).unwrap_or(&0));
            if stream.is_empty() {
                0
            } else {
                n % (stream.len() + 1)
            }
        })
        .collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut chunked = SseUsage::new(endpoint);
    let mut start = 0;
    for p in points {
        chunked.feed(&stream[start..p]);
        start = p;
    }
    assert_eq!(summary(&chunked), before_finish, "before finish");
    chunked.finish();
    assert_eq!(summary(&chunked), summary(&whole), "after finish");
});
