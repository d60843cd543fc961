//! The shared store: every decision is one `EVALSHA` of `lua/take.lua`.
//!
//! Key layout (built by the engine, window appended by [`counter_key`]):
//! `tg:{<rule id>}:<period><algorithm>:<escaped descriptor values>[:<window start s>]`.
//! The `{rule id}` hash tag puts all of one rule's counters in one Redis
//! Cluster slot. Keys expire on their own: a window at its end, a bucket
//! when it is full again, so Redis holds only live counters.

use super::arith::{self, HitState};
use super::{counter_key, Hit, Store, StoreError, TakeOutcome};
use crate::rules::Algorithm;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::time::Duration;

/// Counters in Redis, shared by every tollgate instance that points at it.
pub struct RedisStore {
    conn: ConnectionManager,
    take: Script,
    timeout: Duration,
}

impl RedisStore {
    /// Connects, failing fast: a request path must never wait long on Redis.
    pub async fn connect(
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
        let conn = tokio::time::timeout(
            connect_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError::Timeout(connect_timeout))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RedisStore {
            conn,
            take: Script::new(include_str!("../../../lua/take.lua")),
            timeout,
        })
    }

    async fn run(&self, hits: &[Hit], now_ms: u64, taking: bool) -> Result<Vec<i64>, StoreError> {
        let mut call = self.take.prepare_invoke();
        call.arg(now_ms).arg(if taking { 1 } else { 0 });
        for hit in hits {
            let l = &hit.limit;
            let anchor = match l.algorithm {
                Algorithm::FixedWindow => arith::window_start(l, now_ms),
                Algorithm::TokenBucket => now_ms / l.period.tick_millis(),
            };
            call.key(counter_key(hit, now_ms))
                .arg(match l.algorithm {
                    Algorithm::FixedWindow => 0,
                    Algorithm::TokenBucket => 1,
                })
                .arg(l.amount)
                .arg(l.period.ticks())
                .arg(l.period.tick_millis())
                .arg(hit.cost)
                .arg(if hit.enforce { 1 } else { 0 })
                .arg(anchor);
        }
        let mut conn = self.conn.clone();
        let reply = tokio::time::timeout(self.timeout, call.invoke_async::<Vec<i64>>(&mut conn))
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
}

fn parse_states(reply: &[i64], n: usize) -> Result<Vec<HitState>, StoreError> {
    if reply.len() != 1 + 4 * n {
        return Err(StoreError::Protocol(format!(
            "take.lua returned {} values for {n} hits",
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
    async fn take(&self, hits: &[Hit], now_ms: u64) -> Result<TakeOutcome, StoreError> {
        if hits.is_empty() {
            return Ok(TakeOutcome {
                admitted: true,
                hits: vec![],
            });
        }
        let reply = self.run(hits, now_ms, true).await?;
        let states = parse_states(&reply, hits.len())?;
        Ok(TakeOutcome {
            admitted: reply[0] == 1,
            hits: states,
        })
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        if hits.is_empty() {
            return Ok(vec![]);
        }
        let reply = self.run(hits, now_ms, false).await?;
        parse_states(&reply, hits.len())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
