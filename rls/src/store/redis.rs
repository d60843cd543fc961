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

use super::arith::HitState;
use super::redis_errors::classify;
use super::redis_link::{Backend, Conn, Link};
use super::TakeOutcome;
use super::{counter_key, keys, Counter, Grant, Hit, Hold, SettleOp, Store, StoreError};
use crate::repeated::Repeats;
use crate::rules::{Algorithm, Limit, Period};
use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use redis::{Script, ScriptInvocation};
use std::collections::BTreeMap;
use std::time::Duration;

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
}

/// What take.lua does with its counters (its `ARGV[2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Give the costs back (refunds; never denies).
    GiveBack = 0,
    /// Take all or nothing.
    Take = 1,
    /// Count each whatever its limit (envoyproxy/ratelimit's `INCRBY`).
    Count = 2,
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
        // A window's length is this window's (a calendar month is 28 to 31
        // days): the script reads `ticks * tick_ms` as the length.
        Counter::Rate(l) => match l.algorithm {
            Algorithm::FixedWindow => {
                let (start, end) = l.window(now_ms);
                (0, l.amount, 1, end - start, start)
            }
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

/// The hash tag of a key (`{...}`), which decides its cluster slot.
fn tag(key: &str) -> &str {
    key.find('{')
        .and_then(|start| {
            let rest = &key[start + 1..];
            rest.find('}').map(|end| &rest[..end])
        })
        .filter(|t| !t.is_empty())
        .unwrap_or(key)
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
        let bad = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        // The freed-capacity subscription talks to the same nodes, the same way.
        // Validation parses every URL as the client does, so a failure here
        // is unexpected: refuse the store rather than lose the wake-ups.
        let subscribers = urls
            .iter()
            .map(|u| {
                match &tls {
                    Some(certs) => redis::Client::build_with_tls(u.as_str(), certs.clone()),
                    None => redis::Client::open(u.as_str()),
                }
                .map_err(bad)
            })
            .collect::<Result<_, _>>()?;
        let backend = if cluster || urls.len() > 1 {
            let mut builder = ClusterClient::builder(urls.iter().map(String::as_str));
            if let Some(certs) = tls {
                builder = builder.certs(certs);
            }
            let client = builder
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(bad)?;
            Backend::Cluster(client)
        } else {
            let url = urls
                .first()
                .ok_or_else(|| StoreError::Unavailable("no url".into()))?;
            Backend::Single {
                client: match tls {
                    Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(bad)?,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    // One try per attempt: retrying is the breaker's job
                    // (its probes pace the attempts), and a retry's backoff
                    // would hide the real error behind `connect_timeout`.
                    .set_number_of_retries(0),
            }
        };
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
        })
    }

    /// The same store under this instance's id (in its freed-capacity
    /// messages, its health probe's key and the registry).
    pub fn with_instance(mut self, id: String) -> RedisStore {
        self.instance = id;
        self
    }

    /// One registry.lua call.
    async fn registry_call(
        &self,
        instance: &str,
        evict_after_ms: u64,
        now_ms: u64,
        op: &str,
    ) -> Result<u64, StoreError> {
        let mut call = self.registry.prepare_invoke();
        call.key(keys::REGISTRY)
            .arg(now_ms)
            .arg(instance)
            .arg(evict_after_ms)
            .arg(op);
        let live: i64 = self.invoke(&call).await?;
        Ok(u64::try_from(live).unwrap_or(0))
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
        match tokio::time::timeout_at(deadline, call(conn)).await {
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
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.within(|mut conn| async move { call.invoke_async::<T>(&mut conn).await })
            .await
    }

    /// One take.lua call over `hits`. `record` writes the hold's record
    /// (its key must share the hits' slot); a hold without it only holds
    /// slots.
    async fn run(
        &self,
        hits: &[&Hit],
        hold: Option<&Hold>,
        record: bool,
        now_ms: u64,
        mode: Mode,
    ) -> Result<(bool, Vec<HitState>), StoreError> {
        let mut call = self.take.prepare_invoke();
        call.arg(now_ms).arg(mode as u8);
        match hold {
            Some(h) if record => call.arg(&h.holder).arg(h.ttl_ms).arg(&h.record[..]),
            Some(h) => call.arg(&h.holder).arg(h.ttl_ms).arg(""),
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
        if let (Some(h), true) = (hold, record) {
            call.key(&h.record_key);
        }
        let reply: Vec<i64> = self.invoke(&call).await?;
        let states = parse_states(&reply, hits.len())?;
        Ok((reply.first() == Some(&1), states))
    }

    /// Hits that never deny each other (giving back, counting): one call,
    /// or per slot in a cluster, in any order.
    async fn each_hit(
        &self,
        hits: &[Hit],
        now_ms: u64,
        mode: Mode,
    ) -> Result<Vec<HitState>, StoreError> {
        if hits.is_empty() {
            return Ok(vec![]);
        }
        if !self.is_cluster() {
            let refs: Vec<&Hit> = hits.iter().collect();
            return Ok(self.run(&refs, None, false, now_ms, mode).await?.1);
        }
        let mut states = vec![UNKNOWN; hits.len()];
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, h) in hits.iter().enumerate() {
            groups.entry(tag(&h.key)).or_default().push(i);
        }
        for idx in groups.values() {
            let group: Vec<&Hit> = idx.iter().map(|&i| &hits[i]).collect();
            let (_, got) = self.run(&group, None, false, now_ms, mode).await?;
            for (&i, st) in idx.iter().zip(got) {
                states[i] = st;
            }
        }
        Ok(states)
    }

    /// One settle.lua call; `checked` makes it conditional on the record.
    async fn run_settle(
        &self,
        first_key: &str,
        holder: &str,
        ops: &[&SettleOp],
        checked: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut call = self.settle.prepare_invoke();
        call.key(first_key)
            .arg(now_ms)
            .arg(holder)
            .arg(if checked { "1" } else { "0" });
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

    /// Takes per slot, in order, rolling back earlier slots if a later one
    /// denies (Redis Cluster).
    async fn take_by_slot(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError> {
        let record_tag = hold.map(|h| tag(&h.record_key));
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, h) in hits.iter().enumerate() {
            groups.entry(tag(&h.key)).or_default().push(i);
        }
        // The record goes with its own slot's step (possibly without hits).
        if let Some(t) = record_tag {
            groups.entry(t).or_default();
        }
        let mut states: Vec<Option<HitState>> = vec![None; hits.len()];
        let mut done: Vec<&Vec<usize>> = Vec::new();
        for (t, idx) in &groups {
            let group: Vec<&Hit> = idx.iter().map(|&i| &hits[i]).collect();
            let record = record_tag == Some(*t);
            let step = self.run(&group, hold, record, now_ms, Mode::Take).await;
            let (admitted, got) = match step {
                Ok(x) => x,
                Err(e) => {
                    self.roll_back(hits, &done, hold, now_ms).await;
                    return Err(e);
                }
            };
            for (&i, st) in idx.iter().zip(got) {
                states[i] = Some(st);
            }
            if !admitted {
                self.roll_back(hits, &done, hold, now_ms).await;
                return Ok(TakeOutcome {
                    admitted: false,
                    hits: states.into_iter().map(|s| s.unwrap_or(UNKNOWN)).collect(),
                });
            }
            done.push(idx);
        }
        Ok(TakeOutcome {
            admitted: true,
            hits: states.into_iter().map(|s| s.unwrap_or(UNKNOWN)).collect(),
        })
    }

    /// Gives back exactly what earlier steps took: the same window keys,
    /// bucket amounts and slots. A record written by an earlier step is left
    /// to expire (nothing reads a record whose request was denied).
    async fn roll_back(
        &self,
        hits: &[Hit],
        done: &[&Vec<usize>],
        hold: Option<&Hold>,
        now_ms: u64,
    ) {
        for idx in done {
            let ops: Vec<SettleOp> = idx
                .iter()
                .map(|&i| &hits[i])
                .filter(|h| h.cost > 0)
                .map(|h| match h.counter {
                    Counter::Rate(limit) => SettleOp::Refund {
                        key: counter_key(&h.key, &h.counter, now_ms),
                        limit,
                        cost: h.cost,
                    },
                    Counter::Slots { max } => SettleOp::Release {
                        key: h.key.clone(),
                        max,
                    },
                })
                .collect();
            let Some(first) = ops.first().map(op_key) else {
                continue;
            };
            let refs: Vec<&SettleOp> = ops.iter().collect();
            let holder = hold.map(|h| h.holder.as_str()).unwrap_or("");
            if let Err(e) = self.run_settle(first, holder, &refs, false, now_ms).await {
                if let Some(unlogged) = self.rollback_failures.note() {
                    tracing::warn!(error = %e, unlogged_since_last_line = unlogged, "rollback of an earlier slot failed; its counters stay taken until they expire");
                }
            }
        }
    }
}

/// The probe counter's key, before the instance id: outside every rule's
/// `tg:{...}` space, under the same `tg:` prefix (one ACL pattern covers
/// both). One key per instance per second, expiring with its window.
const PROBE_PREFIX: &str = "tg:probe:";

/// The probe counter: a per-second window that never fills (one take a
/// second) and never denies (not enforced).
const PROBE_LIMIT: Limit = Limit {
    amount: 1_000_000,
    period: Period::Second,
    algorithm: Algorithm::FixedWindow,
    zone: crate::rules::Zone::Utc,
};

/// A state for a hit whose slot was never asked (an earlier one denied).
const UNKNOWN: HitState = HitState {
    over: false,
    remaining: 0,
    reset_after_ms: 0,
    retry_after_ms: 0,
};

fn op_key(op: &SettleOp) -> &str {
    match op {
        SettleOp::Refund { key, .. }
        | SettleOp::Charge { key, .. }
        | SettleOp::Release { key, .. } => key,
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
        if self.is_cluster() {
            return self.take_by_slot(hits, hold, now_ms).await;
        }
        let refs: Vec<&Hit> = hits.iter().collect();
        let (admitted, hits) = self
            .run(&refs, hold, hold.is_some(), now_ms, Mode::Take)
            .await?;
        Ok(TakeOutcome { admitted, hits })
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
        let record_tag = tag(record_key);
        let (mine, others): (Vec<&SettleOp>, Vec<&SettleOp>) = if self.is_cluster() {
            ops.iter().partition(|op| tag(op_key(op)) == record_tag)
        } else {
            (ops.iter().collect(), vec![])
        };
        // The record's own slot first: deleting the record is what makes a
        // settle happen once.
        if !self
            .run_settle(record_key, holder, &mine, true, now_ms)
            .await?
        {
            return Ok(false);
        }
        let mut groups: BTreeMap<&str, Vec<&SettleOp>> = BTreeMap::new();
        for op in others {
            groups.entry(tag(op_key(op))).or_default().push(op);
        }
        for group in groups.values() {
            let first = group.first().map(|op| op_key(op)).unwrap_or(record_key);
            self.run_settle(first, holder, group, false, now_ms).await?;
        }
        Ok(true)
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
        let probe = Hit {
            key: format!("{PROBE_PREFIX}{}", self.instance),
            counter: Counter::Rate(PROBE_LIMIT),
            cost: 1,
            enforce: false,
        };
        let now_ms = crate::engine::Clock::System.now_ms();
        self.run(&[&probe], None, false, now_ms, Mode::Take)
            .await
            .map(|_| ())
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
        if let Counter::Slots { .. } = hit.counter {
            return Err(StoreError::Protocol(
                "concurrency slots are not leased".into(),
            ));
        }
        let mut call = self.lease.prepare_invoke();
        call.key(counter_key(&hit.key, &hit.counter, now_ms))
            .arg(now_ms)
            .arg(hit.cost.max(1))
            .arg(want)
            .arg(instances);
        push_spec(&mut call, &hit.counter, 0, "lease", now_ms);
        let reply: Vec<i64> = self.invoke(&call).await?;
        let [granted, remaining, reset, retry] = reply[..] else {
            return Err(StoreError::Protocol(format!(
                "lease.lua returned {} values, not 4",
                reply.len()
            )));
        };
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Grant {
            amount: u(granted),
            state: HitState {
                over: granted == 0,
                remaining: u(remaining),
                reset_after_ms: u(reset),
                retry_after_ms: u(retry),
            },
        })
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

    fn is_shared(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::tag;

    #[test]
    fn hash_tags() {
        assert_eq!(tag("tg:{abc}:minute:x"), "abc");
        assert_eq!(
            tag("tg:{}:x"),
            "tg:{}:x",
            "an empty tag hashes the whole key"
        );
        assert_eq!(tag("plain"), "plain");
    }
}
