//! A mock LLM upstream speaking OpenAI (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/responses`, `/v1/embeddings`) and Anthropic
//! (`/v1/messages`), as JSON or, with `"stream": true`, as SSE in the
//! providers' chunk shapes. What it reports is set per request by headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-prompt-tokens`, `x-mock-completion-tokens`, `x-mock-cached-tokens` | usage reported (default 10 / 20 / 0) |
//! | `x-mock-chunks: N` | content chunks in a stream (default 3) |
//! | `x-mock-chunk-delay-ms: D` | pause before each streamed event |
//! | `x-mock-latency-ms: D` | pause before the response headers (JSON or SSE) |
//! | `x-mock-status: S` | answer status S with the provider's error body (any path) |
//! | `x-mock-fail-mid-stream: true` | cut the connection halfway through the body |
//!
//! Prompt tokens include the cached ones, as OpenAI counts them; Anthropic's
//! `input_tokens` is reported as prompt − cached, beside `cache_read_input_tokens`.
//!
//! OpenAI streams carry usage only when `stream_options.include_usage` is
//! true (a last chunk with `usage` and empty `choices`, as OpenAI does);
//! Responses streams end with `response.completed` carrying usage;
//! Anthropic streams carry input (and cache-read) tokens in
//! `message_start` and output tokens in `message_delta`.
//!
//! Any other path or method answers 200 `ok`: a trivial upstream for rate
//! limit tests. Every request is recorded for assertions.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the mock received it (after its body, before answering).
    pub at: std::time::Instant,
}

impl Received {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct Shared {
    // A std mutex: held only to push or clone, never across an await.
    received: Mutex<Vec<Received>>,
    open_streams: AtomicUsize,
    /// Set for benchmarks: a long run would otherwise keep every request
    /// it ever saw.
    unrecorded: bool,
}

/// The mock, serving on its own thread and runtime until dropped (so it
/// works from sync and async tests alike).
pub struct MockLlm {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockLlm {
    /// Serves on `127.0.0.1:0`.
    pub fn start() -> MockLlm {
        MockLlm::start_on("127.0.0.1:0")
    }

    /// Serves on a given address (the `mock-llm` binary's `--listen`).
    pub fn start_on(addr: &str) -> MockLlm {
        MockLlm::serve(addr, true)
    }

    /// Serves on a given address without keeping the requests it receives
    /// (`mock-llm --no-record`, for long benchmark runs).
    pub fn start_unrecorded(addr: &str) -> MockLlm {
        MockLlm::serve(addr, false)
    }

    fn serve(addr: &str, record: bool) -> MockLlm {
        let listener =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let port = listener.local_addr().expect("mock address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            unrecorded: !record,
            ..Shared::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::Builder::new()
            .name(format!("mock-llm-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("mock runtime");
                rt.block_on(async move {
                    // TCP_NODELAY, as a provider's streaming server sets it:
                    // without it, Nagle holds each small SSE event until
                    // Envoy's delayed ACK (~40 ms) on a reused connection,
                    // and every event of a stream arrives at once.
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("mock listener")
                        .tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                    let app = Router::new().fallback(handle).with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn mock thread");
        MockLlm {
            port,
            shared,
            stop: Some(stop),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.lock().clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().len()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Streams still being written (a stream ends when it is complete, cut
    /// by `x-mock-fail-mid-stream`, or its client went away).
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The wire formats the mock speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Api {
    Chat,
    Completions,
    Responses,
    Embeddings,
    Anthropic,
}

impl Api {
    fn of(method: &Method, path: &str) -> Option<Api> {
        if method != Method::POST {
            return None;
        }
        Some(match path {
            "/v1/chat/completions" => Api::Chat,
            "/v1/completions" => Api::Completions,
            "/v1/responses" => Api::Responses,
            "/v1/embeddings" => Api::Embeddings,
            "/v1/messages" => Api::Anthropic,
            _ => return None,
        })
    }
}

/// Usage the mock reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

fn num(h: &HeaderMap, name: &str, default: u64) -> u64 {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn flag(h: &HeaderMap, name: &str) -> bool {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "true" | "1" | "yes"))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if !shared.unrecorded {
        shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Received {
                at: std::time::Instant::now(),
                method: method.to_string(),
                path: path.clone(),
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            });
    }
    let latency = num(&headers, "x-mock-latency-ms", 0);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let api = Api::of(&method, &path);
    let status = num(&headers, "x-mock-status", 200);
    if status != 200 {
        let code = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = error_body(api, code);
        return (
            code,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let Some(api) = api else {
        return (StatusCode::OK, "ok\n").into_response();
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let usage = Usage {
        prompt: num(&headers, "x-mock-prompt-tokens", 10),
        completion: num(&headers, "x-mock-completion-tokens", 20),
        cached: num(&headers, "x-mock-cached-tokens", 0),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let fail_mid = flag(&headers, "x-mock-fail-mid-stream");
    let delay = Duration::from_millis(num(&headers, "x-mock-chunk-delay-ms", 0));

    let (content_type, events) = if stream && api != Api::Embeddings {
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunks = num(&headers, "x-mock-chunks", 3).clamp(1, 100_000);
        let events = sse_events(api, &model, usage, chunks, include_usage);
        ("text/event-stream", events)
    } else {
        let text = json_body(api, &model, usage).to_string();
        if !fail_mid {
            return ([("content-type", "application/json")], text).into_response();
        }
        let half = text.len() / 2;
        let events = vec![text[..half].to_string(), text[half..].to_string()];
        ("application/json", events)
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let guard = OpenStream::new(shared.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let total = events.len();
        for (i, e) in events.into_iter().enumerate() {
            if fail_mid && i >= total / 2 {
                // An error in the body stream makes hyper drop the
                // connection without the terminating chunk: the client
                // sees a truncated response, as when an upstream dies.
                let _ = tx
                    .send(Err(std::io::Error::other("mock cut the stream")))
                    .await;
                return;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                return; // the client went away
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Counts a stream as open from creation until dropped (however the
/// writer ends).
struct OpenStream(Arc<Shared>);

impl OpenStream {
    fn new(shared: Arc<Shared>) -> OpenStream {
        shared.open_streams.fetch_add(1, Ordering::SeqCst);
        OpenStream(shared)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error_body(api: Option<Api>, code: StatusCode) -> Value {
    let message = format!("mock failure ({})", code.as_u16());
    if api == Some(Api::Anthropic) {
        json!({"type": "error", "error": {"type": "api_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
    }
}

const CREATED: u64 = 1_700_000_000;

fn openai_usage(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn responses_usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt + u.completion
    })
}

/// Anthropic reports cache reads apart from `input_tokens`.
fn anthropic_input(u: Usage) -> (u64, u64) {
    let cached = u.cached.min(u.prompt);
    (u.prompt - cached, cached)
}

fn response_object(model: &str, status: &str, text: &str, usage: Value) -> Value {
    let output = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}])
    };
    json!({"id": "resp_mock", "object": "response", "created_at": CREATED, "status": status,
           "model": model, "output": output, "usage": usage})
}

pub(crate) fn json_body(api: Api, model: &str, u: Usage) -> Value {
    let text = "Hello from the mock.";
    match api {
        Api::Chat => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": openai_usage(u)
        }),
        Api::Completions => json!({
            "id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u.prompt, "completion_tokens": u.completion,
                      "total_tokens": u.prompt + u.completion}
        }),
        Api::Responses => response_object(model, "completed", text, responses_usage(u)),
        Api::Embeddings => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": u.prompt, "total_tokens": u.prompt}
        }),
        Api::Anthropic => {
            let (input, cached) = anthropic_input(u);
            json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": u.completion,
                          "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}
            })
        }
    }
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn event(v: Value) -> String {
    let name = v["type"].as_str().unwrap_or("message").to_string();
    format!("event: {name}\ndata: {v}\n\n")
}

/// The SSE events of one streamed answer, each a complete `...\n\n` event.
pub(crate) fn sse_events(
    api: Api,
    model: &str,
    u: Usage,
    chunks: u64,
    include_usage: bool,
) -> Vec<String> {
    let words: Vec<String> = (0..chunks).map(|i| format!("word{i} ")).collect();
    let mut out = Vec::new();
    match api {
        Api::Chat => {
            // With include_usage, OpenAI sends `"usage": null` on every
            // chunk and the totals on one more chunk with empty choices.
            let usage_null = |mut v: Value| {
                if include_usage {
                    v["usage"] = Value::Null;
                }
                v
            };
            let chunk = |choices: Value| {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED,
                       "model": model, "system_fingerprint": null, "choices": choices})
            };
            out.push(data(usage_null(chunk(json!([{"index": 0,
                "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])))));
            for w in &words {
                out.push(data(usage_null(chunk(json!([{"index": 0,
                    "delta": {"content": w}, "logprobs": null, "finish_reason": null}])))));
            }
            out.push(data(usage_null(chunk(
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            ))));
            if include_usage {
                let mut last = chunk(json!([]));
                last["usage"] = openai_usage(u);
                out.push(data(last));
            }
            out.push("data: [DONE]\n\n".to_string());
        }
        Api::Completions => {
            let chunk = |text: &str, finish: Value| {
                let mut v = json!({"id": "cmpl-mock", "object": "text_completion", "created": CREATED,
                    "model": model, "choices": [{"index": 0, "text": text, "logprobs": null,
                    "finish_reason": finish}]});
                if include_usage {
                    v["usage"] = Value::Null;
                }
                v
            };
            for w in &words {
                out.push(data(chunk(w, Value::Null)));
            }
            out.push(data(chunk("", json!("stop"))));
            if include_usage {
                out.push(data(json!({"id": "cmpl-mock", "object": "text_completion",
                    "created": CREATED, "model": model, "choices": [],
                    "usage": {"prompt_tokens": u.prompt, "completion_tokens": u.completion,
                              "total_tokens": u.prompt + u.completion}})));
            }
            out.push("data: [DONE]\n\n".to_string());
        }
        Api::Responses => {
            let mut seq = 0u64;
            let mut push = |mut v: Value| {
                v["sequence_number"] = json!(seq);
                seq += 1;
                out.push(event(v));
            };
            let full: String = words.concat();
            push(json!({"type": "response.created",
                        "response": response_object(model, "in_progress", "", Value::Null)}));
            push(json!({"type": "response.in_progress",
                        "response": response_object(model, "in_progress", "", Value::Null)}));
            push(
                json!({"type": "response.output_item.added", "output_index": 0,
                        "item": {"type": "message", "id": "msg_mock", "status": "in_progress",
                                 "role": "assistant", "content": []}}),
            );
            push(
                json!({"type": "response.content_part.added", "item_id": "msg_mock",
                        "output_index": 0, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for w in &words {
                push(
                    json!({"type": "response.output_text.delta", "item_id": "msg_mock",
                            "output_index": 0, "content_index": 0, "delta": w}),
                );
            }
            push(
                json!({"type": "response.output_text.done", "item_id": "msg_mock",
                        "output_index": 0, "content_index": 0, "text": full}),
            );
            push(
                json!({"type": "response.content_part.done", "item_id": "msg_mock",
                        "output_index": 0, "content_index": 0,
                        "part": {"type": "output_text", "text": full, "annotations": []}}),
            );
            push(
                json!({"type": "response.output_item.done", "output_index": 0,
                        "item": {"type": "message", "id": "msg_mock", "status": "completed",
                                 "role": "assistant",
                                 "content": [{"type": "output_text", "text": full, "annotations": []}]}}),
            );
            push(json!({"type": "response.completed",
                        "response": response_object(model, "completed", &full, responses_usage(u))}));
        }
        Api::Anthropic => {
            let (input, cached) = anthropic_input(u);
            out.push(event(json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1,
                          "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}})));
            out.push(event(json!({"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}})));
            out.push(event(json!({"type": "ping"})));
            for w in &words {
                out.push(event(json!({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": w}})));
            }
            out.push(event(json!({"type": "content_block_stop", "index": 0})));
            out.push(event(json!({"type": "message_delta",
                                  "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                                  "usage": {"output_tokens": u.completion}})));
            out.push(event(json!({"type": "message_stop"})));
        }
        Api::Embeddings => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: Usage = Usage {
        prompt: 11,
        completion: 22,
        cached: 3,
    };

    /// The `data:` payloads of events, each parsed as JSON (`[DONE]` kept
    /// as a string).
    fn payloads(events: &[String]) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                assert!(e.ends_with("\n\n"), "event not terminated: {e:?}");
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("no data line in {e:?}"));
                if data == "[DONE]" {
                    Value::String(data.into())
                } else {
                    serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data}"))
                }
            })
            .collect()
    }

    #[test]
    fn chat_stream_with_usage_ends_with_usage_chunk_then_done() {
        let p = payloads(&sse_events(Api::Chat, "m", U, 4, true));
        assert_eq!(p.len(), 1 + 4 + 1 + 1 + 1);
        assert_eq!(p.last(), Some(&json!("[DONE]")));
        let usage_chunk = &p[p.len() - 2];
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 11);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 22);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 33);
        assert_eq!(
            usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
            3
        );
        for c in &p[..p.len() - 2] {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c["usage"].is_null());
        }
        assert_eq!(p[p.len() - 3]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn chat_stream_without_usage_has_none() {
        let events = sse_events(Api::Chat, "m", U, 2, false);
        assert!(events.iter().all(|e| !e.contains("\"usage\"")));
        assert_eq!(payloads(&events).last(), Some(&json!("[DONE]")));
    }

    #[test]
    fn completions_stream_usage_chunk() {
        let p = payloads(&sse_events(Api::Completions, "m", U, 2, true));
        assert_eq!(p[p.len() - 2]["usage"]["total_tokens"], 33);
        assert_eq!(p[p.len() - 2]["object"], "text_completion");
    }

    #[test]
    fn responses_stream_ends_with_completed_usage() {
        let events = sse_events(Api::Responses, "m", U, 3, false);
        let p = payloads(&events);
        let last = p.last().expect("events");
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"]["usage"]["input_tokens"], 11);
        assert_eq!(last["response"]["usage"]["output_tokens"], 22);
        assert_eq!(
            last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
            3
        );
        for (i, (e, v)) in events.iter().zip(&p).enumerate() {
            let name = v["type"].as_str().expect("type");
            assert!(e.starts_with(&format!("event: {name}\n")), "{e}");
            assert_eq!(v["sequence_number"], i);
        }
        let deltas = p
            .iter()
            .filter(|v| v["type"] == "response.output_text.delta");
        assert_eq!(deltas.count(), 3);
    }

    #[test]
    fn anthropic_stream_shape() {
        let p = payloads(&sse_events(Api::Anthropic, "m", U, 2, false));
        let types: Vec<&str> = p.iter().map(|v| v["type"].as_str().unwrap_or("")).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(p[0]["message"]["usage"]["input_tokens"], 8);
        assert_eq!(p[0]["message"]["usage"]["cache_read_input_tokens"], 3);
        assert_eq!(p[6]["usage"]["output_tokens"], 22);
    }

    #[test]
    fn json_bodies_report_usage() {
        assert_eq!(json_body(Api::Chat, "m", U)["usage"]["total_tokens"], 33);
        assert_eq!(
            json_body(Api::Completions, "m", U)["usage"]["completion_tokens"],
            22
        );
        assert_eq!(
            json_body(Api::Responses, "m", U)["usage"]["output_tokens"],
            22
        );
        assert_eq!(
            json_body(Api::Embeddings, "m", U)["usage"]["prompt_tokens"],
            11
        );
        let a = json_body(Api::Anthropic, "m", U);
        assert_eq!(a["usage"]["input_tokens"], 8);
        assert_eq!(a["usage"]["cache_read_input_tokens"], 3);
        assert_eq!(a["usage"]["output_tokens"], 22);
    }
}
