//! The connection to Redis (one server or a cluster), made in the
//! background: a call that finds no connection starts an attempt (unless
//! one is running) and waits for it no longer than the caller's own
//! deadline, so a store that accepts TCP and never answers costs each
//! request at most the store timeout, never a connect timeout, and never
//! one attempt per request in turn. Once made, the connection repairs
//! itself (the client's `ConnectionManager` or cluster connection
//! reconnects in the background, one attempt at a time). Attempts are
//! made only when calls ask, and calls ask only through the circuit
//! breaker, so while it is open the probes pace them.

use super::redis_errors::classify;
use super::StoreError;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One Redis, or a Redis Cluster.
pub(super) enum Backend {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster(ClusterClient),
}

/// A connection of either kind; both reconnect by themselves.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the attempts stand: whether one is running, how many have ended,
/// and why the last one failed.
#[derive(Debug, Default)]
struct Attempts {
    running: bool,
    ended: u64,
    last_error: Option<StoreError>,
}

struct Shared {
    backend: Backend,
    connect_timeout: Duration,
    conn: ArcSwapOption<Conn>,
    attempts: watch::Sender<Attempts>,
}

/// The connection, once made, and the one attempt at a time to make it.
#[derive(Clone)]
pub(super) struct Link {
    shared: Arc<Shared>,
}

impl Link {
    /// No connection yet: the first call starts the first attempt, each
    /// bounded by `connect_timeout`.
    pub fn new(backend: Backend, connect_timeout: Duration) -> Link {
        Link {
            shared: Arc::new(Shared {
                backend,
                connect_timeout,
                conn: ArcSwapOption::empty(),
                attempts: watch::Sender::new(Attempts::default()),
            }),
        }
    }

    /// Whether the backend is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.shared.backend, Backend::Cluster(_))
    }

    /// Forgets the connection, so that the next call makes a new one (one
    /// attempt at a time, as the first). For a connection whose own
    /// reconnection cannot succeed: the client library reconnects only
    /// after I/O errors, and keeps answering a failed handshake (refused
    /// credentials) for ever.
    pub fn reset(&self) {
        if self.shared.conn.swap(None).is_some() {
            tracing::debug!("dropped the redis connection; the next call makes a new one");
        }
    }

    /// Why the last attempt to connect failed, if one did.
    pub fn last_error(&self) -> Option<StoreError> {
        self.shared.attempts.borrow().last_error.clone()
    }

    /// The connection, waiting for an attempt to make it if there is none
    /// yet. Unbounded here: callers bound it with their own deadline (the
    /// attempt goes on in the background when they stop waiting).
    pub async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.shared.conn.load_full() {
            return Ok((*c).clone());
        }
        let mut rx = self.shared.attempts.subscribe();
        let mut wait = Wait::Connected;
        self.shared.attempts.send_if_modified(|a| {
            // An attempt stores its connection before it says it ended:
            // seen here, there is nothing to start or wait for.
            if self.shared.conn.load().is_some() {
                return false;
            }
            wait = Wait::Until(a.ended);
            if a.running {
                return false;
            }
            a.running = true;
            wait = Wait::Started(a.ended);
            true
        });
        let ended_before = match wait {
            Wait::Connected => 0,
            Wait::Until(n) => n,
            Wait::Started(n) => {
                tokio::spawn(attempt(self.shared.clone()));
                n
            }
        };
        let mut why = None;
        if !matches!(wait, Wait::Connected) {
            if let Ok(a) = rx.wait_for(|a| a.ended > ended_before).await {
                why = a.last_error.clone();
            }
        }
        match self.shared.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => {
                Err(why.unwrap_or_else(|| {
                    StoreError::Unavailable("no connection to redis yet".into())
                }))
            }
        }
    }
}

/// What a caller without a connection does.
enum Wait {
    /// Nothing: the connection is there.
    Connected,
    /// Waits for the running attempt (the one that will end as number n+1).
    Until(u64),
    /// Started an attempt and waits for it.
    Started(u64),
}

/// One attempt to connect, in its own task: stores the connection, or the
/// reason it failed, and tells whoever waits.
async fn attempt(shared: Arc<Shared>) {
    let connecting = async {
        match &shared.backend {
            Backend::Single { client, config } => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::Single)
            }
            Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    };
    let result = match tokio::time::timeout(shared.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(match classify(&e, shared.connect_timeout) {
            // A failed handshake is the store not answering, whatever the
            // client called it.
            StoreError::Protocol(m) => StoreError::Unavailable(m),
            other => other,
        }),
        Err(_) => Err(StoreError::Timeout(shared.connect_timeout)),
    };
    let last_error = match result {
        Ok(conn) => {
            shared.conn.store(Some(Arc::new(conn)));
            tracing::info!("connected to redis");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot connect to redis");
            Some(e)
        }
    };
    shared.attempts.send_modify(|a| {
        a.running = false;
        a.ended += 1;
        a.last_error = last_error;
    });
}
