//! A bare ext_proc client for tests that talk to tollgate the way Envoy
//! does, message by message, including what Envoy never sends (two
//! request bodies on one stream) and what a hostile peer might.
//! Included by `#[path = "clients/ext_proc.rs"] mod ext_proc;`.
#![allow(dead_code)]

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A channel to tollgate's gRPC listener (one HTTP/2 connection, as Envoy
/// keeps one per worker).
pub async fn channel(grpc_addr: &str) -> Channel {
    Channel::from_shared(format!("http://{grpc_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to tollgate's gRPC listener")
}

/// One `Process` stream: one HTTP request.
pub struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

/// What an answer told Envoy to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Go on (with the headers it sets, by name).
    Continue(Vec<(String, String)>),
    /// Answer the client now: status, headers, body.
    Immediate(u16, Vec<(String, String)>, String),
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Continue(_) => 200,
            Answer::Immediate(s, _, _) => *s,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let h = match self {
            Answer::Continue(h) | Answer::Immediate(_, h, _) => h,
        };
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Stream {
    pub async fn open(channel: &Channel) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let mut client = ExternalProcessorClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .expect("open an ext_proc stream")
            .into_inner();
        Stream { tx, rx }
    }

    pub async fn send(&mut self, msg: ProcessingRequest) {
        self.tx.send(msg).await.expect("stream open");
    }

    /// The next message from tollgate, within `within`: `Ok(None)` when
    /// the stream ended, `Err` for a gRPC error.
    pub async fn next(
        &mut self,
        within: Duration,
    ) -> Result<Option<ProcessingResponse>, tonic::Status> {
        tokio::time::timeout(within, self.rx.message())
            .await
            .unwrap_or_else(|_| panic!("no message from tollgate within {within:?}"))
    }

    /// The next answer, skipping timer extensions (messages that only ask
    /// Envoy to wait longer).
    pub async fn answer(&mut self, within: Duration) -> Result<Answer, tonic::Status> {
        loop {
            let msg = self
                .next(within)
                .await?
                .expect("the stream ended without an answer");
            if msg.response.is_none() && msg.override_message_timeout.is_some() {
                continue;
            }
            return Ok(answer_of(msg));
        }
    }

    /// Closes the request side, as Envoy does when the HTTP request ends
    /// (or the client goes away).
    pub fn close(self) {
        drop(self);
    }
}

fn headers_of(
    m: Option<&envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation>,
) -> Vec<(String, String)> {
    m.map(|m| {
        m.set_headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| {
                (
                    h.key.clone(),
                    String::from_utf8_lossy(&h.raw_value).into_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

pub fn answer_of(msg: ProcessingResponse) -> Answer {
    match msg.response {
        Some(Response::ImmediateResponse(i)) => Answer::Immediate(
            i.status.map_or(0, |s| s.code as u16),
            headers_of(i.headers.as_ref()),
            String::from_utf8_lossy(&i.body).into_owned(),
        ),
        Some(Response::RequestHeaders(h) | Response::ResponseHeaders(h)) => Answer::Continue(
            headers_of(h.response.as_ref().and_then(|c| c.header_mutation.as_ref())),
        ),
        Some(Response::RequestBody(b) | Response::ResponseBody(b)) => Answer::Continue(headers_of(
            b.response.as_ref().and_then(|c| c.header_mutation.as_ref()),
        )),
        Some(_) => Answer::Continue(vec![]),
        None => panic!("a message with no answer: {msg:?}"),
    }
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The request headers message of a `POST path` from `tenant`.
pub fn request_headers(path: &str, tenant: &str) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&[
                (":method", "POST"),
                (":path", path),
                (":authority", "llm"),
                ("content-type", "application/json"),
                ("x-tenant", tenant),
            ])),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The whole request body (Envoy's BUFFERED mode).
pub fn request_body(body: Vec<u8>) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body,
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_headers(status: u16, content_type: &str) -> ProcessingRequest {
    let status = status.to_string();
    ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(header_map(&[
                (":status", &status),
                ("content-type", content_type),
            ])),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_body(chunk: Vec<u8>, end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::ResponseBody(HttpBody {
            body: chunk,
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An OpenAI chat request for `model` asking for `max_tokens`, with a
/// prompt of about `prompt_bytes` bytes.
pub fn chat(model: &str, max_tokens: u64, prompt_bytes: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x".repeat(prompt_bytes)}],
    }))
    .expect("json")
}

/// A JSON chat completion body reporting this usage.
pub fn completion(prompt: u64, completion: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }))
    .expect("json")
}
