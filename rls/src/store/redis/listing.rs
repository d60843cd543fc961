//! `Store::scan` on Redis: `SCAN … MATCH tg:{* COUNT 1000` on each master
//! (a Redis Cluster is asked for its masters with `CLUSTER SLOTS`, and each
//! is scanned through a slot it serves), then the keys wanted are read in
//! pipelines of at most 1,000 reads, one pipeline per hash tag (a Cluster
//! pipeline must stay in one slot), a few at a time: `GET` for counters and
//! records, `ZRANGEBYSCORE` for concurrency slots.
//!
//! Bounded twice: at most `budget` keys listed, and at most
//! `2 × budget / 1000 + masters` `SCAN` calls, so a Redis full of another
//! application's keys (which `MATCH` filters out on the server, after
//! walking them) costs a bounded walk too. Every call has its own timeout
//! (2 s), longer than a decision's: this is the operator's view, not a
//! request; the whole look at most 5 s.

use super::RedisStore;
use crate::store::arith::Cell;
use crate::store::keys::{KeyKind, ParsedKey};
use crate::store::redis_errors::classify;
use crate::store::redis_link::Conn;
use crate::store::scan::Budget;
use crate::store::{LiveKey, ScanQuery, Scanned, StoreError};
use futures::stream::{self, StreamExt, TryStreamExt};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// `SCAN`'s `COUNT`: about how many entries the server walks per call.
const SCAN_COUNT: usize = 1_000;
/// Longest wait for one call of a look (a `SCAN`, a pipeline of reads).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a whole look may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads per pipeline.
const READ_BATCH: usize = 1_000;
/// Pipelines in flight at once.
const READS_IN_FLIGHT: usize = 4;
/// The pattern every tollgate counter and record matches.
const PATTERN: &str = "tg:{*";

/// One node to scan: the only server, or a Cluster master (reached
/// through a slot it serves).
#[derive(Debug, Clone, Copy)]
enum Node {
    Single,
    Master { slot: u16 },
}

impl RedisStore {
    /// One look, [`LOOK_TIMEOUT`] at most in all.
    pub(super) async fn scan_live(
        &self,
        query: &ScanQuery,
        now_ms: u64,
    ) -> Result<Scanned, StoreError> {
        match tokio::time::timeout(LOOK_TIMEOUT, self.look(query, now_ms)).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout(LOOK_TIMEOUT)),
        }
    }

    async fn look(&self, query: &ScanQuery, now_ms: u64) -> Result<Scanned, StoreError> {
        let conn = self.connection_for_scan().await?;
        let nodes = match &conn {
            Conn::Single(_) => vec![Node::Single],
            Conn::Cluster(_) => masters(&conn).await?,
        };
        let mut budget = Budget::new(query.budget);
        let max_calls = 2 * query.budget.div_ceil(SCAN_COUNT) + nodes.len();
        let mut calls = 0;
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        'nodes: for node in nodes {
            let mut cursor = 0u64;
            loop {
                if calls == max_calls {
                    budget.cut();
                    break 'nodes;
                }
                calls += 1;
                let (next, keys): (u64, Vec<String>) = scan_page(&conn, node, cursor).await?;
                for key in keys {
                    // SCAN may return a key twice (while the table rehashes).
                    if seen.contains(&key) {
                        continue;
                    }
                    if !budget.take() {
                        break 'nodes;
                    }
                    if query.wants(&key) {
                        wanted.push(key.clone());
                    }
                    seen.insert(key);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let (keys, unreadable) = read(&conn, wanted, now_ms).await?;
        Ok(Scanned {
            keys,
            looked_at: budget.looked_at(),
            complete: !budget.is_exhausted(),
            unreadable,
        })
    }

    /// The connection, waiting for it no longer than one call may take.
    async fn connection_for_scan(&self) -> Result<Conn, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.link.connection()).await {
            Ok(conn) => conn,
            Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
        }
    }
}

/// Runs one command on `node`, within [`CALL_TIMEOUT`].
async fn on_node(conn: &Conn, node: Node, cmd: Cmd) -> Result<Value, StoreError> {
    let call = async {
        match (conn.clone(), node) {
            (Conn::Cluster(mut c), Node::Master { slot }) => {
                let route = Route::new(slot, SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
            (Conn::Cluster(mut c), Node::Single) => {
                c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await
            }
            (mut conn, _) => cmd.query_async::<Value>(&mut conn).await,
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e, CALL_TIMEOUT)),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

/// One `SCAN` page: the next cursor and the keys.
async fn scan_page(conn: &Conn, node: Node, cursor: u64) -> Result<(u64, Vec<String>), StoreError> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(PATTERN)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    let reply = on_node(conn, node, cmd).await?;
    redis::from_redis_value(reply)
        .map_err(|e| StoreError::Protocol(format!("unexpected SCAN reply: {e}")))
}

/// A Cluster's masters, each with a slot it serves (from `CLUSTER SLOTS`:
/// `[start, end, [host, port, id], replicas...]` per range).
async fn masters(conn: &Conn) -> Result<Vec<Node>, StoreError> {
    let reply = on_node(
        conn,
        Node::Single,
        redis::cmd("CLUSTER").arg("SLOTS").clone(),
    )
    .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)
        .map_err(|e| StoreError::Protocol(format!("unexpected CLUSTER SLOTS reply: {e}")))?;
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for range in ranges {
        let (Some(start), Some(master)) = (range.first(), range.get(2)) else {
            continue;
        };
        let start: u16 = redis::from_redis_value_ref(start)
            .map_err(|e| StoreError::Protocol(format!("unexpected CLUSTER SLOTS slot: {e}")))?;
        let (host, port): (String, u16) = match master {
            Value::Array(parts) if parts.len() >= 2 => (
                redis::from_redis_value_ref(&parts[0]).unwrap_or_default(),
                redis::from_redis_value_ref(&parts[1]).unwrap_or_default(),
            ),
            _ => continue,
        };
        if seen.insert((host, port)) {
            nodes.push(Node::Master { slot: start });
        }
    }
    if nodes.is_empty() {
        return Err(StoreError::Unavailable(
            "CLUSTER SLOTS names no master".into(),
        ));
    }
    Ok(nodes)
}

/// Reads the keys found, grouped by hash tag, a few pipelines at a time.
/// Returns the live ones with their state, and how many held something
/// their kind never holds.
async fn read(
    conn: &Conn,
    keys: Vec<String>,
    now_ms: u64,
) -> Result<(Vec<LiveKey>, usize), StoreError> {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in keys {
        let tag = ParsedKey::parse(&key)
            .map(|p| p.tag.to_string())
            .unwrap_or_default();
        by_tag.entry(tag).or_default().push(key);
    }
    let batches: Vec<Vec<String>> = by_tag
        .into_values()
        .flat_map(|keys| {
            keys.chunks(READ_BATCH)
                .map(<[String]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let results: Vec<(Vec<LiveKey>, usize)> = stream::iter(batches)
        .map(|batch| read_batch(conn, batch, now_ms))
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut live = Vec::new();
    let mut unreadable = 0;
    for (keys, bad) in results {
        live.extend(keys);
        unreadable += bad;
    }
    Ok((live, unreadable))
}

/// What a key's kind is read with.
fn is_slots(key: &str) -> bool {
    matches!(
        ParsedKey::parse(key).map(|p| p.kind),
        Some(KeyKind::Slots { .. })
    )
}

/// One pipeline of reads (one hash tag).
async fn read_batch(
    conn: &Conn,
    batch: Vec<String>,
    now_ms: u64,
) -> Result<(Vec<LiveKey>, usize), StoreError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in &batch {
        if is_slots(key) {
            // Holders past their deadline no longer count (as take.lua).
            pipe.cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .arg("WITHSCORES");
        } else {
            pipe.cmd("GET").arg(key);
        }
    }
    let mut conn = conn.clone();
    let replies: Vec<Value> =
        match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut conn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(classify(&e, CALL_TIMEOUT)),
            Err(_) => return Err(StoreError::Timeout(CALL_TIMEOUT)),
        };
    if replies.len() != batch.len() {
        return Err(StoreError::Protocol(format!(
            "{} replies to {} reads",
            replies.len(),
            batch.len()
        )));
    }
    let mut live = Vec::with_capacity(batch.len());
    let mut unreadable = 0;
    for (key, reply) in batch.into_iter().zip(replies) {
        match cell_of(&key, reply) {
            Ok(Some(cell)) => live.push(LiveKey { key, cell }),
            // Gone since it was listed (expired, settled).
            Ok(None) => {}
            Err(()) => unreadable += 1,
        }
    }
    Ok((live, unreadable))
}

/// A key's reply as the state it holds: `Ok(None)` when it is gone (an
/// empty slot set is gone too), `Err` when it holds something its kind
/// never holds.
fn cell_of(key: &str, reply: Value) -> Result<Option<Cell>, ()> {
    let Some(parsed) = ParsedKey::parse(key) else {
        return Err(());
    };
    match parsed.kind {
        KeyKind::Slots { .. } => {
            let holders: Vec<(String, f64)> = redis::from_redis_value(reply).map_err(|_| ())?;
            if holders.is_empty() {
                return Ok(None);
            }
            // Deadlines are whole milliseconds below 2^53: exact doubles.
            Ok(Some(Cell::Slots(
                holders
                    .into_iter()
                    .map(|(h, deadline)| (h, deadline as u64))
                    .collect(),
            )))
        }
        kind => {
            let raw: Option<Vec<u8>> = redis::from_redis_value(reply).map_err(|_| ())?;
            let Some(raw) = raw else {
                return Ok(None);
            };
            match kind {
                KeyKind::Reservation { .. } | KeyKind::RlsReservation { .. } => {
                    Ok(Some(Cell::Record(raw)))
                }
                KeyKind::Rate { window_s, .. } => {
                    let text = std::str::from_utf8(&raw).map_err(|_| ())?;
                    counter_cell(text, window_s.is_some()).map(Some).ok_or(())
                }
                KeyKind::Registry | KeyKind::Slots { .. } => Err(()),
            }
        }
    }
}

/// A counter's value as `common.lua` writes it: a window's count
/// (`"12"`), a bucket's scaled level and tick (`"-40:1700000000"`).
fn counter_cell(text: &str, window: bool) -> Option<Cell> {
    if window {
        return text.parse().ok().map(|count| Cell::Window { count });
    }
    let (level, tick) = text.split_once(':')?;
    Some(Cell::Bucket {
        level: level.parse().ok()?,
        tick: tick.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_values_as_common_lua_writes_them() {
        assert_eq!(counter_cell("12", true), Some(Cell::Window { count: 12 }));
        assert_eq!(
            counter_cell("-40:17", false),
            Some(Cell::Bucket {
                level: -40,
                tick: 17
            })
        );
        assert_eq!(counter_cell("12", false), None);
        assert_eq!(counter_cell("1:2", true), None);
        assert_eq!(counter_cell("x:2", false), None);
    }

    #[test]
    fn replies_that_do_not_fit_the_kind_are_unreadable() {
        let window = "tg:{q}:rminutew:a:60";
        assert_eq!(
            cell_of(window, Value::BulkString(b"3".to_vec())),
            Ok(Some(Cell::Window { count: 3 }))
        );
        assert_eq!(cell_of(window, Value::Nil), Ok(None));
        assert_eq!(cell_of(window, Value::BulkString(b"x".to_vec())), Err(()));
        let slots = "tg:{q}:c:a";
        assert_eq!(cell_of(slots, Value::Array(vec![])), Ok(None));
        assert_eq!(
            cell_of(
                slots,
                Value::Array(vec![
                    Value::BulkString(b"r1".to_vec()),
                    Value::BulkString(b"1700000060000".to_vec())
                ])
            ),
            Ok(Some(Cell::Slots(BTreeMap::from([(
                "r1".to_string(),
                1_700_000_060_000
            )]))))
        );
        assert_eq!(
            cell_of(slots, Value::BulkString(b"3".to_vec())),
            Err(()),
            "a string where a sorted set belongs"
        );
    }
}
