//! A mock marketplace supplier: an OpenAI-compatible chat completions
//! server over TLS (a certificate for `localhost` from a test [`Pki`]), as
//! a real supplier would be, for the `marketplace_*` tests. What it checks
//! and records:
//!
//! * a request without `authorization: Bearer <signed token>` gets 401, so
//!   a client's own key (or none) is never served;
//! * every request is kept ([`MockSupplier::requests`]): path (with the
//!   supplier's prefix), headers and body, for the tests to see the token,
//!   the rewritten model and what did not come through;
//! * `POST <prefix>/v1/chat/completions` answers in OpenAI's shape (JSON,
//!   or SSE when `stream` is true) with the usage set at start, so a test
//!   can tell the supplier's usage from any other; anything else is 404.

use crate::mock_llm::{json_body, sse_events, Api, Received, Usage};
use crate::pki::Pki;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use axum::Router;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The path every supplier request starts with: the endpoint's prefix.
pub const SUPPLIER_PREFIX: &str = "/supplier";

struct Shared {
    token: String,
    usage: Usage,
    requests: Mutex<Vec<Received>>,
}

/// The mock supplier, serving on its own thread and runtime until dropped.
pub struct MockSupplier {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockSupplier {
    /// Serves TLS on `127.0.0.1:0` with a certificate from `pki`, accepting
    /// `token`, reporting `prompt` and `completion` tokens of usage.
    pub fn start(pki: &Pki, token: &str, prompt: u64, completion: u64) -> MockSupplier {
        let issued = pki.issue("supplier", 7);
        let certs = vec![CertificateDer::from(issued.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("supplier key");
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("supplier certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind supplier");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            token: token.to_string(),
            usage: Usage {
                prompt,
                completion,
                cached: 0,
            },
            requests: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::Builder::new()
            .name(format!("mock-supplier-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = Tls {
                        inner: TcpListener::from_std(listener).expect("listener"),
                        acceptor: TlsAcceptor::from(Arc::new(config)),
                    };
                    let app = Router::new().fallback(handle).with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn supplier thread");
        MockSupplier {
            port,
            shared,
            stop: Some(stop),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint a quote names: `https://localhost:PORT/supplier`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}{SUPPLIER_PREFIX}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for MockSupplier {
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
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
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
    let token_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if !token_ok {
        return (StatusCode::UNAUTHORIZED, "bad or missing supplier token\n").into_response();
    }
    if method != Method::POST || uri.path() != format!("{SUPPLIER_PREFIX}/v1/chat/completions") {
        return (StatusCode::NOT_FOUND, "no such path\n").into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    if req["stream"].as_bool() == Some(true) {
        let include = req["stream_options"]["include_usage"].as_bool() == Some(true);
        let events = sse_events(Api::Chat, &model, shared.usage, 3, include).concat();
        return ([("content-type", "text/event-stream")], events).into_response();
    }
    (
        [("content-type", "application/json")],
        json_body(Api::Chat, &model, shared.usage).to_string(),
    )
        .into_response()
}

/// Accepts TCP and completes the TLS handshake (bounded) before handing
/// the connection to the server; a failed handshake is skipped.
struct Tls {
    inner: TcpListener,
    acceptor: TlsAcceptor,
}

impl Listener for Tls {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(stream);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
