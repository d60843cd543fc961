//! Hot functions of the filters: parse + estimate per KB of request JSON,
//! usage extraction per MB of SSE.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tollgate_filters::{parse_request, Endpoint, SseUsage};

fn request_kb() -> Vec<u8> {
    let text =
        "The quick brown fox jumps over the lazy dog while tollgate counts tokens. ".repeat(13);
    format!(r#"{{"model":"gpt-4o","max_tokens":256,"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"{text}"}}]}}"#).into_bytes()
}

fn sse_mb() -> Vec<u8> {
    let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"token \"}}]}\n\n";
    let mut s = chunk.repeat((1 << 20) / chunk.len());
    s.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":9000}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn benches(c: &mut Criterion) {
    let body = request_kb();
    let mut g = c.benchmark_group("parse_estimate");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("bpe_o200k", |b| {
        b.iter(|| parse_request(Endpoint::ChatCompletions, black_box(&body), true))
    });
    g.bench_function("bytes_div_4", |b| {
        b.iter(|| parse_request(Endpoint::ChatCompletions, black_box(&body), false))
    });
    g.finish();

    let sse = sse_mb();
    let mut g = c.benchmark_group("sse_usage");
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("openai_chat_1mb_16k_chunks", |b| {
        b.iter(|| {
            let mut p = SseUsage::new(Endpoint::ChatCompletions);
            for chunk in sse.chunks(16 * 1024) {
                p.feed(chunk);
            }
            p.finish();
            black_box(p.usage())
        })
    });
    g.finish();
}

criterion_group!(filters, benches);
criterion_main!(filters);
