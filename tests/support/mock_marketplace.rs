//! A mock capacity marketplace speaking tollgate's marketplace protocol
//! (`docs/marketplace.md`) over plain HTTP on loopback, for the
//! `marketplace_*` tests. What it checks and records:
//!
//! * every accepted socket is counted ([`MockMarketplace::accepted`]), so
//!   a test can show that a disabled tollgate never connects;
//! * every byte it receives, on every connection, is kept in arrival order
//!   ([`MockMarketplace::bytes`]): privacy tests search them for what must
//!   never leave;
//! * each request is parsed and kept ([`MockMarketplace::requests`]); a
//!   request without `authorization: Bearer <key>` gets 401;
//! * `GET /v1/supplies` answers the supply list set with
//!   [`MockMarketplace::set_supplies`] (one offer for `gpt-4o` by
//!   default);
//! * `POST /v1/marketplace/quote` answers the next scripted [`Quote`] of
//!   [`MockMarketplace::next_quotes`], or a good quote for the supplier
//!   when none is scripted: a 500, a hang past tollgate's timeout, a body
//!   that is not JSON, a 429, an expired quote, a price, another endpoint;
//!   a quote request must have exactly the five protocol fields (else 400);
//! * `POST /v1/marketplace/usage` keeps the report
//!   ([`MockMarketplace::usage_reports`]) and answers 204, or the next
//!   scripted status of [`MockMarketplace::next_usage_statuses`].

use crate::mock_llm::Received;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The five fields of a quote request, and nothing else.
const QUOTE_FIELDS: [&str; 5] = [
    "estimated_tokens",
    "max_price_per_mtoken",
    "model",
    "region_hint",
    "request_id",
];

/// One scripted answer to a quote request.
#[derive(Debug, Clone)]
pub enum Quote {
    /// A good quote for the supplier.
    Good,
    /// This status with a JSON error body.
    Status(u16),
    /// Sleeps this long, then answers a good quote (tollgate gave up).
    Hang(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 429 with `retry_after_seconds`.
    Busy(f64),
    /// A good quote that expired a minute ago.
    Expired,
    /// A good quote at this price per million tokens.
    Price(f64),
    /// A good quote to another endpoint.
    Endpoint(String),
}

/// What a good quote says.
#[derive(Debug, Clone)]
pub struct Supply {
    pub supply_id: String,
    pub endpoint: String,
    pub signed_token: String,
    pub price_per_mtoken: f64,
    /// The supplier's model name, when it differs.
    pub model: Option<String>,
}

struct Shared {
    key: String,
    accepted: AtomicUsize,
    bytes: Mutex<Vec<u8>>,
    requests: Mutex<Vec<Received>>,
    quotes: Mutex<VecDeque<Quote>>,
    usage_statuses: Mutex<VecDeque<u16>>,
    usage: Mutex<Vec<Value>>,
    supplies: Mutex<Value>,
    /// When set, supply lists get this status instead of `supplies`.
    supplies_status: Mutex<Option<u16>>,
    supply: Mutex<Supply>,
    next_id: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mock, serving on its own thread and runtime until dropped.
pub struct MockMarketplace {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockMarketplace {
    /// Serves on `127.0.0.1:0`, expecting API key `key`, quoting `supply`.
    pub fn start(key: &str, supply: Supply) -> MockMarketplace {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind marketplace");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            key: key.to_string(),
            accepted: AtomicUsize::new(0),
            bytes: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            quotes: Mutex::new(VecDeque::new()),
            usage_statuses: Mutex::new(VecDeque::new()),
            usage: Mutex::new(Vec::new()),
            supplies: Mutex::new(json!({"supplies": [
                {"supply_id": "supply-1", "model": "gpt-4o", "region": "eu-west",
                 "price_per_mtoken": supply.price_per_mtoken, "p99_latency_ms": 800, "availability": 0.9}
            ]})),
            supplies_status: Mutex::new(None),
            supply: Mutex::new(supply),
            next_id: AtomicUsize::new(1),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::Builder::new()
            .name(format!("mock-marketplace-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = Recording {
                        inner: TcpListener::from_std(listener).expect("listener"),
                        shared: state.clone(),
                    };
                    let app = Router::new().fallback(handle).with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn marketplace thread");
        MockMarketplace {
            port,
            shared,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sockets accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every byte received so far, all connections.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.shared.bytes).clone()
    }

    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.requests).clone()
    }

    /// Requests to a path (query excluded).
    pub fn calls(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }

    /// Usage reports received, in arrival order.
    pub fn usage_reports(&self) -> Vec<Value> {
        lock(&self.shared.usage).clone()
    }

    /// Answers the next quote requests with these, in order.
    pub fn next_quotes(&self, quotes: impl IntoIterator<Item = Quote>) {
        lock(&self.shared.quotes).extend(quotes);
    }

    /// Answers the next usage reports with these statuses, in order.
    pub fn next_usage_statuses(&self, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.shared.usage_statuses).extend(statuses);
    }

    /// The body `GET /v1/supplies` answers from now.
    pub fn set_supplies(&self, body: Value) {
        *lock(&self.shared.supplies) = body;
    }

    /// Supply lists answered with `status` (an error body) instead of the
    /// list, or the list again with `None`.
    pub fn set_supplies_status(&self, status: Option<u16>) {
        *lock(&self.shared.supplies_status) = status;
    }

    /// The supply good quotes name from now.
    pub fn set_supply(&self, supply: Supply) {
        *lock(&self.shared.supply) = supply;
    }
}

impl Drop for MockMarketplace {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.requests).push(Received {
        at: std::time::Instant::now(),
        method: method.to_string(),
        path: uri.path().to_string(),
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
    let key_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.key));
    if !key_ok {
        return error(StatusCode::UNAUTHORIZED, "bad or missing API key");
    }
    match (method.as_str(), uri.path()) {
        ("GET", "/v1/supplies") => match *lock(&shared.supplies_status) {
            Some(status) => error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "scripted",
            ),
            None => json_answer(lock(&shared.supplies).clone()),
        },
        ("POST", "/v1/marketplace/quote") => quote(&shared, &body).await,
        ("POST", "/v1/marketplace/usage") => {
            let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let status = lock(&shared.usage_statuses).pop_front().unwrap_or(204);
            if status == 204 {
                lock(&shared.usage).push(report);
                return StatusCode::NO_CONTENT.into_response();
            }
            error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "scripted",
            )
        }
        _ => error(StatusCode::NOT_FOUND, "no such call"),
    }
}

async fn quote(shared: &Shared, body: &[u8]) -> Response {
    let ask: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut fields: Vec<&str> = ask
        .as_object()
        .map(|o| o.keys().map(|k| k.as_str()).collect())
        .unwrap_or_default();
    fields.sort();
    if fields != QUOTE_FIELDS {
        return error(StatusCode::BAD_REQUEST, "not the protocol's quote request");
    }
    let scripted = lock(&shared.quotes).pop_front().unwrap_or(Quote::Good);
    let mut supply = lock(&shared.supply).clone();
    let mut expires = SystemTime::now() + Duration::from_secs(60);
    match scripted {
        Quote::Good => {}
        Quote::Status(s) => {
            return error(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "scripted",
            )
        }
        Quote::Hang(d) => tokio::time::sleep(d).await,
        Quote::Garbage => return (StatusCode::OK, "<html>not json</html>").into_response(),
        Quote::Busy(secs) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("content-type", "application/json")],
                json!({"error": "busy", "retry_after_seconds": secs}).to_string(),
            )
                .into_response()
        }
        Quote::Expired => expires = SystemTime::now() - Duration::from_secs(60),
        Quote::Price(p) => supply.price_per_mtoken = p,
        Quote::Endpoint(e) => supply.endpoint = e,
    }
    let n = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let mut s = json!({
        "supply_id": supply.supply_id,
        "endpoint": supply.endpoint,
        "signed_token": supply.signed_token,
        "price_per_mtoken": supply.price_per_mtoken,
        "region": "eu-west",
    });
    if let Some(m) = supply.model {
        s["model"] = json!(m);
    }
    json_answer(json!({
        "quote_id": format!("quote-{n}"),
        "supply": s,
        "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
    }))
}

fn json_answer(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The listener: counts each accepted socket and records what it reads.
struct Recording {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl Listener for Recording {
    type Io = Recorded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Recorded, std::net::SocketAddr) {
        loop {
            if let Ok((stream, addr)) = self.inner.accept().await {
                self.shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                return (
                    Recorded {
                        inner: stream,
                        shared: self.shared.clone(),
                    },
                    addr,
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection whose every byte read is appended to the shared capture.
struct Recorded {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let new = &buf.filled()[before..];
            lock(&self.shared.bytes).extend_from_slice(new);
        }
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
