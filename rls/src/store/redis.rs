//! The shared store: every decision is one `EVALSHA` of `lua/take.lua`.
//!
//! Key layout (built by the engine, window appended by [`counter_key`]):
//! `tg:{<rule id>}:<period><algorithm>:<escaped descriptor values>[:<window start s>]`.
//! The `{rule id}` hash tag puts all of one rule's counters in one Redis
//! Cluster slot. Keys expire on their own: a window at its end, a bucket
//! when it is full again, so Redis holds only live counters.

use super::arith::{self, HitState};
use super::{counter_key, Counter, Hit, Hold, SettleOp, Store, StoreError, TakeOutcome};
use crate::rules::Algorithm;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ScriptInvocation};
use std::sync::Arc;
use std::time::Duration;

/// Counters in Redis, shared by every tollgate instance that points at it.
pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    connect_timeout: Duration,
    /// Set once the first connection succeeds; the manager reconnects by
    /// itself after that. Empty while Redis has never answered, so tollgate
    /// starts (and answers by `on_error`) with Redis down.
    conn: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
    take: Script,
    settle: Script,
    timeout: Duration,
}

/// The 7 values `common.lua`'s `spec()` reads for one counter.
fn push_spec(
    call: &mut ScriptInvocation<'_>,
    counter: &Counter,
    cost: u64,
    flag: &str,
    now_ms: u64,
) {
    let (algorithm, amount, ticks, tick_ms, anchor) = match counter {
        Counter::Rate(l) => match l.algorithm {
            Algorithm::FixedWindow => (
                0,
                l.amount,
                l.period.ticks(),
                l.period.tick_millis(),
                arith::window_start(l, now_ms),
            ),
            Algorithm::TokenBucket => (
                1,
                l.amount,
                l.period.ticks(),
                l.period.tick_millis(),
                now_ms / l.period.tick_millis(),
            ),
        },
        Counter::Slots { max } => (2, *max, 1, 1, 0),
    };
    call.arg(algorithm)
        .arg(amount)
        .arg(ticks)
        .arg(tick_ms)
        .arg(cost)
        .arg(flag)
        .arg(anchor);
}

impl RedisStore {
    /// Prepares the store; the connection is made on first use (and by
    /// [`RedisStore::connect`]).
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            client,
            config,
            connect_timeout,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            take: Script::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!("../../../lua/take.lua")
            )),
            settle: Script::new(concat!(
                include_str!("../../../lua/common.lua"),
                include_str!("../../../lua/settle.lua")
            )),
            timeout,
        })
    }

    /// Prepares the store and connects now, failing fast: a request path
    /// must never wait long on Redis.
    pub async fn connect(
        url: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let store = RedisStore::new(url, connect_timeout, timeout)?;
        store.connection().await?;
        Ok(store)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        // One connection attempt at a time; the others wait for its result.
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let conn = tokio::time::timeout(
            self.connect_timeout,
            ConnectionManager::new_with_config(self.client.clone(), self.config.clone()),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.connect_timeout))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let reply = tokio::time::timeout(self.timeout, call.invoke_async::<T>(&mut conn))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?;
        reply.map_err(|e| {
            if e.is_timeout() {
                StoreError::Timeout(self.timeout)
            } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Protocol(e.to_string())
            }
        })
    }

    async fn run(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
        taking: bool,
    ) -> Result<(bool, Vec<HitState>), StoreError> {
        let mut call = self.take.prepare_invoke();
        call.arg(now_ms).arg(if taking { 1 } else { 0 });
        match hold {
            Some(h) => call.arg(&h.holder).arg(h.ttl_ms).arg(&h.record[..]),
            None => call.arg("").arg(0).arg(""),
        };
        for hit in hits {
            call.key(counter_key(&hit.key, &hit.counter, now_ms));
            push_spec(
                &mut call,
                &hit.counter,
                hit.cost,
                if hit.enforce { "1" } else { "0" },
                now_ms,
            );
        }
        if let Some(h) = hold {
            call.key(&h.record_key);
        }
        let reply: Vec<i64> = self.invoke(&call).await?;
        let states = parse_states(&reply, hits.len())?;
        Ok((reply[0] == 1, states))
    }
}

fn parse_states(reply: &[i64], n: usize) -> Result<Vec<HitState>, StoreError> {
    if reply.len() != 1 + 4 * n {
        return Err(StoreError::Protocol(format!(
            "take.lua returned {} values for {n} counters",
            reply.len()
        )));
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(reply[1..]
        .chunks_exact(4)
        .map(|c| HitState {
            over: c[0] == 1,
            remaining: u(c[1]),
            reset_after_ms: u(c[2]),
            retry_after_ms: u(c[3]),
        })
        .collect())
}

#[async_trait]
impl Store for RedisStore {
    async fn take(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError> {
        if hits.is_empty() && hold.is_none() {
            return Ok(TakeOutcome {
                admitted: true,
                hits: vec![],
            });
        }
        let (admitted, hits) = self.run(hits, hold, now_ms, true).await?;
        Ok(TakeOutcome { admitted, hits })
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        if hits.is_empty() {
            return Ok(vec![]);
        }
        Ok(self.run(hits, None, now_ms, false).await?.1)
    }

    async fn settle(
        &self,
        record_key: &str,
        holder: &str,
        ops: &[SettleOp],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut call = self.settle.prepare_invoke();
        call.key(record_key).arg(now_ms).arg(holder);
        for op in ops {
            match op {
                SettleOp::Refund { key, limit, cost } => {
                    call.key(key);
                    push_spec(&mut call, &Counter::Rate(*limit), *cost, "refund", now_ms);
                }
                SettleOp::Charge { key, limit, cost } => {
                    let counter = Counter::Rate(*limit);
                    call.key(counter_key(key, &counter, now_ms));
                    push_spec(&mut call, &counter, *cost, "charge", now_ms);
                }
                SettleOp::Release { key, max } => {
                    call.key(key);
                    push_spec(
                        &mut call,
                        &Counter::Slots { max: *max },
                        0,
                        "release",
                        now_ms,
                    );
                }
            }
        }
        let applied: i64 = self.invoke(&call).await?;
        Ok(applied == 1)
    }

    async fn record(&self, record_key: &str, _now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.connection().await?;
        let reply = tokio::time::timeout(
            self.timeout,
            redis::cmd("GET")
                .arg(record_key)
                .query_async::<Option<Vec<u8>>>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))?;
        reply.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))?
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
