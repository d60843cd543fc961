//! The shared store: every step is one `EVALSHA` of a script in `lua/`.
//!
//! Key layout (built by the engine, window appended by [`counter_key`]):
//! `tg:{<rule or quota id>}:<limit>:<escaped values>[:<window start s>]`.
//! The `{id}` hash tag puts all of one rule's counters in one Redis Cluster
//! slot. Keys expire on their own: a window at its end, a bucket when it is
//! full again, so Redis holds only live counters. The health probe writes
//! `tg:probe:<instance>:<second>` (see [`RedisStore`]'s `ping`).
//!
//! On a single Redis a request is one script call, atomic. On a Redis
//! Cluster a request whose rules live in different slots is taken in
//! per-slot steps, in order; if a later step says no, what the earlier
//! steps took is given back exactly (same keys, same clock), so a denied
//! request still takes nothing. Between the steps another client may see
//! the earlier slots' counters briefly taken.
//!
//! Submodules by job: `client` builds the clients, `script` is the Lua
//! scripts' argument and reply format, `take` takes and settles, `lease`
//! grants leases and keeps the instance registry, `probe` is the health
//! probe, `listing` serves `Store::scan`.

mod client;
mod lease;
mod listing;
mod probe;
mod script;
mod take;

use super::arith::HitState;
use super::redis_errors::classify;
use super::redis_link::{Conn, Link};
use super::TakeOutcome;
use super::{Grant, Hit, Hold, SettleOp, Store, StoreError};
use super::{ScanQuery, Scanned};
use crate::repeated::Repeats;
use async_trait::async_trait;
use redis::{Script, ScriptInvocation};
use script::Mode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Calls in a row that got no answer on the connection within the store
/// timeout (with no answer between) after which the connection is
/// presumed dead and dropped, so that the next call makes a new one. A
/// network partition breaks no TCP connection: it goes silent, and after
/// the partition heals the kernel may still wait as long again before it
/// retransmits on it (its retransmission back-off doubles from 0.2 s), so
/// without this the breaker's probes kept asking a connection that could
/// not answer for seconds to minutes after Redis was reachable again.
/// The breaker's own count, so the connection goes as the circuit opens.
const STALE_AFTER_TIMEOUTS: u32 = super::breaker::FAILURES_TO_OPEN;

/// Counters in Redis, shared by every tollgate instance that points at it.
pub struct RedisStore {
    /// The connection, made in the background on first use (see
    /// `redis_link`): tollgate starts, and answers by `on_error`, with
    /// Redis down or silent, and uses it as soon as it answers.
    link: Link,
    connect_timeout: Duration,
    take: Script,
    settle: Script,
    lease: Script,
    registry: Script,
    /// The longest any call waits, connection included.
    timeout: Duration,
    /// One client per node for the freed-capacity subscription (see
    /// `redis_freed`), and this instance's name in its messages.
    subscribers: Vec<redis::Client>,
    instance: String,
    /// Failed cluster roll-backs, logged once and then summarised.
    rollback_failures: Repeats,
    /// Calls in a row that timed out on the connection (see
    /// [`STALE_AFTER_TIMEOUTS`]).
    timeouts_in_a_row: AtomicU32,
}

impl RedisStore {
    /// Prepares the store; the connection is made on first use. Several
    /// URLs (or `cluster`) mean a Redis Cluster; the URLs are seed nodes.
    /// `tls` (a private CA, a client certificate) applies to `rediss://`.
    pub fn new(
        urls: &[String],
        cluster: bool,
        tls: Option<redis::TlsCertificates>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let subscribers = client::subscribers(urls, tls.as_ref())?;
        let backend = client::backend(urls, cluster, tls, connect_timeout, timeout)?;
        Ok(RedisStore {
            subscribers,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            link: Link::new(backend, connect_timeout),
            connect_timeout,
            take: Script::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!("../../../lua/take.lua")
            )),
            settle: Script::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!("../../../lua/settle.lua")
            )),
            lease: Script::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!("../../../lua/lease.lua")
            )),
            registry: Script::new(include_str!("../../../lua/registry.lua")),
            timeout,
            rollback_failures: Repeats::new(super::breaker::LOG_SUMMARY_EVERY),
            timeouts_in_a_row: AtomicU32::new(0),
        })
    }

    /// The same store under this instance's id (in its freed-capacity
    /// messages, its health probe's key and the registry).
    pub fn with_instance(mut self, id: String) -> RedisStore {
        self.instance = id;
        self
    }

    /// Prepares the store and connects now, failing fast.
    pub async fn connect(
        url: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let store = RedisStore::new(&[url.to_string()], false, None, connect_timeout, timeout)?;
        store.link.connection().await?;
        Ok(store)
    }

    /// A Redis Cluster from its seed nodes, connected now.
    pub async fn connect_cluster(
        urls: &[String],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let store = RedisStore::new(urls, true, None, connect_timeout, timeout)?;
        store.link.connection().await?;
        Ok(store)
    }

    fn is_cluster(&self) -> bool {
        self.link.is_cluster()
    }

    /// Runs `call` on the connection within the store timeout, the wait for
    /// a connection included: no call waits on Redis longer than that,
    /// connected or not.
    async fn within<T, F>(&self, call: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let conn = match tokio::time::timeout_at(deadline, self.link.connection()).await {
            Ok(conn) => conn?,
            Err(_) => {
                let last = match self.link.last_error() {
                    Some(e) => format!("; the last attempt: {e}"),
                    None => String::new(),
                };
                return Err(StoreError::Unavailable(format!(
                    "no connection to redis within {:?} (connecting in the background{last})",
                    self.timeout
                )));
            }
        };
        let result = match tokio::time::timeout_at(deadline, call(conn)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                let e = classify(&e, self.timeout);
                if matches!(e, StoreError::Auth(_)) {
                    // Credentials fixed on the Redis side are found by the
                    // next call's new connection.
                    self.link.reset();
                }
                Err(e)
            }
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.note_silence(&result);
        result
    }

    /// Counts calls that timed out on the connection, and drops it after
    /// [`STALE_AFTER_TIMEOUTS`] in a row; any other outcome (an answer, or
    /// an error the client sees, after which it reconnects by itself)
    /// ends the count.
    fn note_silence<T>(&self, result: &Result<T, StoreError>) {
        if !matches!(result, Err(StoreError::Timeout(_))) {
            self.timeouts_in_a_row.store(0, Ordering::Release);
            return;
        }
        let n = self.timeouts_in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= STALE_AFTER_TIMEOUTS {
            self.timeouts_in_a_row.store(0, Ordering::Release);
            tracing::debug!(
                timeouts = n,
                "no answer on the redis connection; dropping it, the next call connects anew"
            );
            self.link.reset();
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.within(|mut conn| async move { call.invoke_async::<T>(&mut conn).await })
            .await
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn take(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError> {
        self.take_hits(hits, hold, now_ms).await
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        self.each_hit(hits, now_ms, Mode::GiveBack).await
    }

    async fn count(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        self.each_hit(hits, now_ms, Mode::Count).await
    }

    async fn settle(
        &self,
        record_key: &str,
        holder: &str,
        ops: &[SettleOp],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.settle_ops(record_key, holder, ops, now_ms).await
    }

    async fn record(&self, record_key: &str, _now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.within(|mut conn| async move {
            redis::cmd("GET")
                .arg(record_key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    /// A write, not a `PING`: a Redis that answers `PING` but refuses
    /// every write (OOM, READONLY, ...) is not healthy. One `take.lua` call
    /// on this instance's probe counter, the same script and key prefix
    /// (so the same ACL) as a decision.
    async fn ping(&self) -> Result<(), StoreError> {
        self.probe().await
    }

    async fn announce_freed(&self, keys: &[String]) -> Result<(), StoreError> {
        let message = super::redis_freed::encode(&self.instance, keys).map_err(|e| {
            StoreError::Protocol(format!("cannot encode a freed-capacity message: {e}"))
        })?;
        self.within(|mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(super::redis_freed::CHANNEL)
                .arg(message)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    fn freed_by_others(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<String>>> {
        Some(super::redis_freed::subscribe(
            self.subscribers.clone(),
            self.instance.clone(),
            self.connect_timeout,
        ))
    }

    async fn grant(
        &self,
        hit: &Hit,
        want: u64,
        instances: u64,
        now_ms: u64,
    ) -> Result<Grant, StoreError> {
        self.grant_lease(hit, want, instances, now_ms).await
    }

    async fn heartbeat(
        &self,
        instance: &str,
        evict_after_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.registry_call(instance, evict_after_ms, now_ms, "beat")
            .await
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        self.registry_call(instance, u64::MAX / 4, 0, "leave")
            .await
            .map(|_| ())
    }

    async fn scan(&self, query: &ScanQuery, now_ms: u64) -> Result<Scanned, StoreError> {
        self.scan_live(query, now_ms).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
