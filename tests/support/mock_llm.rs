//! A mock LLM upstream speaking OpenAI and Anthropic JSON and SSE. What it
//! reports is set per request by headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-prompt-tokens`, `x-mock-completion-tokens`, `x-mock-cached-tokens` | usage reported (default 10 / 20 / 0) |
//! | `x-mock-chunks`, `x-mock-chunk-delay-ms` | streamed content chunks and the pause before each |
//! | `x-mock-status` | answer this status with an error body |
//! | `x-mock-fail-mid-stream` | cut the connection after half the chunks |
//!
//! Any other path answers 200 `ok`: a trivial upstream for rate limit tests.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    open_streams: AtomicUsize,
}

/// The mock, serving on its own runtime thread until dropped.
pub struct MockLlm {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockLlm {
    pub fn start() -> MockLlm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        MockLlm::serve(listener)
    }

    /// Serves on a given address (for the `mock-llm` binary).
    pub fn start_on(addr: &str) -> MockLlm {
        let listener =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        MockLlm::serve(listener)
    }

    fn serve(listener: std::net::TcpListener) -> MockLlm {
        let port = listener.local_addr().expect("mock addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("mock runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("mock listener");
                let app = Router::new().fallback(handle).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        MockLlm {
            port,
            shared,
            stop: Some(stop),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Streams still being written (a client that went away ends its stream).
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn num(h: &HeaderMap, name: &str, default: u64) -> u64 {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Completions,
    Responses,
    Embeddings,
    Anthropic,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if let Ok(mut r) = shared.received.lock() {
        r.push(Received {
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
    let api = if path.ends_with("/chat/completions") {
        Api::Chat
    } else if path.ends_with("/completions") {
        Api::Completions
    } else if path.ends_with("/responses") {
        Api::Responses
    } else if path.ends_with("/embeddings") {
        Api::Embeddings
    } else if path.ends_with("/messages") {
        Api::Anthropic
    } else {
        return (StatusCode::OK, "ok\n").into_response();
    };
    let status = num(&headers, "x-mock-status", 200);
    if status != 200 {
        let code = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            code,
            [("content-type", "application/json")],
            json!({"error": {"message": "mock failure", "type": "server_error"}}).to_string(),
        )
            .into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let usage = Usage {
        prompt: num(&headers, "x-mock-prompt-tokens", 10),
        completion: num(&headers, "x-mock-completion-tokens", 20),
        cached: num(&headers, "x-mock-cached-tokens", 0),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream || api == Api::Embeddings {
        return (
            [("content-type", "application/json")],
            json_body(api, &model, &usage).to_string(),
        )
            .into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunks = num(&headers, "x-mock-chunks", 3).max(1);
    let delay = Duration::from_millis(num(&headers, "x-mock-chunk-delay-ms", 0));
    let fail_mid = headers.get("x-mock-fail-mid-stream").is_some();
    let events = sse_events(api, &model, &usage, chunks, include_usage);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    shared.open_streams.fetch_add(1, Ordering::SeqCst);
    let counter = shared.clone();
    tokio::spawn(async move {
        let total = events.len();
        for (i, e) in events.into_iter().enumerate() {
            if fail_mid && i >= total / 2 {
                let _ = tx
                    .send(Err(std::io::Error::other("mock cut the stream")))
                    .await;
                break;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                break; // the client went away
            }
        }
        counter.open_streams.fetch_sub(1, Ordering::SeqCst);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

struct Usage {
    prompt: u64,
    completion: u64,
    cached: u64,
}

fn json_body(api: Api, model: &str, u: &Usage) -> Value {
    match api {
        Api::Chat => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u.prompt, "completion_tokens": u.completion, "total_tokens": u.prompt + u.completion,
                      "prompt_tokens_details": {"cached_tokens": u.cached}}
        }),
        Api::Completions => json!({
            "id": "cmpl-mock", "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": "Hello from the mock.", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u.prompt, "completion_tokens": u.completion, "total_tokens": u.prompt + u.completion}
        }),
        Api::Responses => json!({
            "id": "resp-mock", "object": "response", "model": model, "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello from the mock."}]}],
            "usage": {"input_tokens": u.prompt, "output_tokens": u.completion, "total_tokens": u.prompt + u.completion,
                      "input_tokens_details": {"cached_tokens": u.cached}}
        }),
        Api::Embeddings => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": u.prompt, "total_tokens": u.prompt}
        }),
        Api::Anthropic => json!({
            "id": "msg-mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the mock."}], "stop_reason": "end_turn",
            "usage": {"input_tokens": u.prompt - u.cached.min(u.prompt), "output_tokens": u.completion,
                      "cache_read_input_tokens": u.cached.min(u.prompt), "cache_creation_input_tokens": 0}
        }),
    }
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn event(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

fn sse_events(api: Api, model: &str, u: &Usage, chunks: u64, include_usage: bool) -> Vec<String> {
    let mut out = Vec::new();
    match api {
        Api::Chat | Api::Completions => {
            for i in 0..chunks {
                let piece = format!("word{i} ");
                out.push(data(if api == Api::Chat {
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                           "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
                } else {
                    json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                           "choices": [{"index": 0, "text": piece, "finish_reason": null}]})
                }));
            }
            if include_usage {
                out.push(data(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": u.prompt, "completion_tokens": u.completion, "total_tokens": u.prompt + u.completion,
                              "prompt_tokens_details": {"cached_tokens": u.cached}}})));
            }
            out.push("data: [DONE]\n\n".to_string());
        }
        Api::Responses => {
            out.push(event("response.created", json!({"type": "response.created", "response": {"id": "resp-mock", "status": "in_progress"}})));
            for i in 0..chunks {
                out.push(event(
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": format!("word{i} ")}),
                ));
            }
            out.push(event("response.completed", json!({"type": "response.completed", "response": {"id": "resp-mock", "status": "completed",
                "usage": {"input_tokens": u.prompt, "output_tokens": u.completion, "total_tokens": u.prompt + u.completion,
                          "input_tokens_details": {"cached_tokens": u.cached}}}})));
        }
        Api::Anthropic => {
            let cached = u.cached.min(u.prompt);
            out.push(event("message_start", json!({"type": "message_start", "message": {"id": "msg-mock", "type": "message", "role": "assistant", "model": model, "content": [],
                "usage": {"input_tokens": u.prompt - cached, "output_tokens": 1, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}})));
            out.push(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for i in 0..chunks {
                out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("word{i} ")}})));
            }
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            out.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": u.completion}})));
            out.push(event("message_stop", json!({"type": "message_stop"})));
        }
        Api::Embeddings => {}
    }
    out
}
