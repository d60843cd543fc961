//! Accepting connections on both listeners with limits, so that slow or
//! idle clients cannot hold them: biases towards the peers that talk.
//!
//! * At most `[server] max_connections` open on each listener; past it a
//!   new connection is closed as soon as it is accepted.
//! * gRPC: the HTTP/2 preface must arrive within `read_timeout` of the
//!   connection (of the TLS handshake, with TLS); then a connection silent
//!   for `idle_timeout` is pinged, and closed if the ping is not answered
//!   within `read_timeout` (a live Envoy answers at once, so its long-lived
//!   connections stay).
//! * Admin (HTTP/1.1): the first 24 bytes (what tells HTTP/1 from HTTP/2)
//!   must arrive within `read_timeout` of the connection; a request's
//!   headers within `read_timeout` of the connection starting to wait for
//!   them (which also closes a keep-alive connection idle that long); and
//!   the whole request, body included, must be read and answered within
//!   `read_timeout`.
//!
//! Closures are counted in `tollgate_connections_closed_total` and the
//! open connections in `tollgate_connections`; a refusal past the cap is
//! logged once, then as a summary.

use crate::config::ServerConfig;
use crate::metrics::{Closed, Listener, Metrics};
use crate::repeated::Repeats;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The HTTP/2 client preface: what a gRPC client sends first.
pub const H2_PREFACE_LEN: usize = 24;

/// The limits of one listener, and what they count into.
pub struct Gate {
    listener: Listener,
    permits: Arc<Semaphore>,
    /// The longest a client may take to send what it must.
    pub read_timeout: Duration,
    metrics: Arc<Metrics>,
    refusals: Repeats,
}

/// One admitted connection: its slot under the cap, given back on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: Listener,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.guard.connection(self.listener, -1);
    }
}

impl Gate {
    pub fn new(listener: Listener, server: &ServerConfig, metrics: Arc<Metrics>) -> Arc<Gate> {
        Arc::new(Gate {
            listener,
            permits: Arc::new(Semaphore::new(server.max_connections)),
            read_timeout: server.read_timeout,
            metrics,
            refusals: Repeats::new(Duration::from_secs(30)),
        })
    }

    /// A slot for a new connection, or `None` (and the refusal counted and
    /// logged) when the listener is at its cap: the caller drops the
    /// connection.
    pub fn admit(&self, peer: std::net::SocketAddr) -> Option<Slot> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.guard.connection(self.listener, 1);
                Some(Slot {
                    _permit: permit,
                    listener: self.listener,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.guard.closed(self.listener, Closed::OverCap);
                if let Some(unlogged) = self.refusals.note() {
                    tracing::warn!(
                        listener = self.listener.as_str(),
                        %peer,
                        unlogged_since_last = unlogged,
                        "connection refused: the listener is at max_connections"
                    );
                }
                None
            }
        }
    }

    /// `io` whose first `need` bytes must be read within `read_timeout`
    /// (from now), else its reads fail and the connection closes.
    pub fn first_bytes<IO>(&self, io: IO, need: usize, slot: Option<Slot>) -> Guarded<IO> {
        Guarded {
            io,
            _slot: slot,
            first: Some(FirstBytes {
                need,
                deadline: Box::pin(tokio::time::sleep(self.read_timeout)),
            }),
            listener: self.listener,
            metrics: self.metrics.clone(),
        }
    }

    /// `io` holding its slot, with no deadline of its own.
    pub fn hold<IO>(&self, io: IO, slot: Slot) -> Guarded<IO> {
        Guarded {
            io,
            _slot: Some(slot),
            first: None,
            listener: self.listener,
            metrics: self.metrics.clone(),
        }
    }
}

struct FirstBytes {
    /// Bytes still to read before the deadline stops mattering.
    need: usize,
    deadline: Pin<Box<Sleep>>,
}

/// A connection under its listener's limits.
pub struct Guarded<IO> {
    io: IO,
    _slot: Option<Slot>,
    first: Option<FirstBytes>,
    listener: Listener,
    metrics: Arc<Metrics>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if let Some(f) = &mut this.first {
                    f.need = f.need.saturating_sub(read);
                    if f.need == 0 {
                        this.first = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(f) = &mut this.first {
                    if f.deadline.as_mut().poll(cx).is_ready() {
                        this.first = None;
                        this.metrics.guard.closed(this.listener, Closed::Slow);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "nothing usable within read_timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts one connection: `None` when the accept failed (out of file
/// descriptors, say: after a short pause, so the loop does not spin) or
/// the listener is at its cap (the connection is closed).
pub async fn accept(listener: &TcpListener, gate: &Gate) -> Option<(TcpStream, Slot)> {
    let (tcp, peer) = match listener.accept().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(listener = gate.listener.as_str(), error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return None;
        }
    };
    let slot = gate.admit(peer)?;
    // Small messages on long-lived connections: Nagle would add up to 40
    // ms to each.
    let _ = tcp.set_nodelay(true);
    Some((tcp, slot))
}

/// The gRPC listener's plaintext connections, each under the cap and
/// bound to send the HTTP/2 preface within `read_timeout`.
pub fn grpc_incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded<TcpStream>>> {
    futures::stream::unfold((listener, gate), |(listener, gate)| async move {
        loop {
            if let Some((tcp, slot)) = accept(&listener, &gate).await {
                let io = gate.first_bytes(tcp, H2_PREFACE_LEN, Some(slot));
                return Some((Ok(io), (listener, gate)));
            }
        }
    })
}

/// Serves the admin router on `listener` until `stop` fires, then lets
/// the open connections finish (they are told to close after their
/// current request).
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let read_timeout = gate.read_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            whole_request_within(read_timeout, next.run(req)).await
        },
    ));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = accept(&listener, &gate) => a,
            _ = stop.cancelled() => break,
        };
        let Some((tcp, slot)) = accepted else {
            continue;
        };
        // Before hyper reads a request it reads enough to tell HTTP/1 from
        // HTTP/2, with no timeout of its own: a client that sends nothing
        // would hold the connection for ever.
        let io = TokioIo::new(gate.first_bytes(tcp, H2_PREFACE_LEN, Some(slot)));
        let service = TowerToHyperService::new(router.clone());
        let (stop, gate) = (stop.clone(), gate.clone());
        connections.spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(read_timeout)
                .keep_alive_timeout(read_timeout);
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                                gate.metrics.guard.closed(gate.listener, Closed::Slow);
                            }
                            tracing::debug!(error = %e, "admin connection ended");
                        }
                        break;
                    }
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// A request must be read and answered within `limit` (a body sent one
/// byte at a time holds no connection for long): else 408.
async fn whole_request_within(
    limit: Duration,
    answer: impl Future<Output = axum::response::Response>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, answer).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request not received within read_timeout\n",
        )
            .into_response(),
    }
}
