//! The embedded store: counters in sharded hash maps.
//!
//! A call locks the shards its keys fall in, in ascending shard order (so
//! two calls can never wait on each other in a cycle), decides, writes, and
//! unlocks. The locks are `std::sync::Mutex`: critical sections are a few
//! hash lookups and never cross an `.await`, where a blocking mutex is
//! cheaper than an async one (as mini-redis's `db.rs` explains).

use super::arith::{self, Cell, HitState};
use super::{counter_key, Counter, Grant, Hit, Hold, SettleOp, Store, StoreError, TakeOutcome};
use async_trait::async_trait;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
struct Entry {
    cell: Cell,
    expires_ms: u64,
}

type Shard = HashMap<String, Entry>;

/// In-memory counters for a single instance; the default store.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// A key of one call with its shard, hashed once: locking, reading and
/// writing it then index the shard directly.
struct Key {
    text: String,
    shard: usize,
}

/// The shards of one call, locked, and a view of their keys that sees the
/// call's own writes before they are committed.
struct Locked<'a> {
    guards: Vec<MutexGuard<'a, Shard>>,
    /// The locked shard numbers, ascending; `guards` is in the same order.
    order: Vec<usize>,
    pending: Vec<(Key, Option<Entry>)>,
    now_ms: u64,
}

impl Locked<'_> {
    fn map(&mut self, shard: usize) -> &mut Shard {
        let slot = self.order.binary_search(&shard).unwrap_or(0);
        &mut self.guards[slot]
    }

    /// The live cell at `key`, as this call has left it so far.
    fn get(&mut self, key: &Key) -> Option<Cell> {
        let now = self.now_ms;
        let entry = match self.pending.iter().rev().find(|(k, _)| k.text == key.text) {
            Some((_, e)) => e.clone(),
            None => self.map(key.shard).get(key.text.as_str()).cloned(),
        };
        entry.filter(|e| e.expires_ms > now).map(|e| e.cell)
    }

    fn put(&mut self, key: Key, cell: Cell, ttl_ms: u64) {
        let expires_ms = self.now_ms + ttl_ms;
        self.pending.push((key, Some(Entry { cell, expires_ms })));
    }

    fn delete(&mut self, key: Key) {
        self.pending.push((key, None));
    }

    fn commit(mut self) {
        for (key, entry) in std::mem::take(&mut self.pending) {
            let map = self.map(key.shard);
            match entry {
                Some(e) => {
                    map.insert(key.text, e);
                }
                None => {
                    map.remove(key.text.as_str());
                }
            }
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn key(&self, text: String) -> Key {
        let shard = (self.hasher.hash_one(text.as_str()) as usize) % self.shards.len();
        Key { text, shard }
    }

    /// Locks `shards` in ascending order.
    fn lock(&self, shards: impl Iterator<Item = usize>, now_ms: u64) -> Locked<'_> {
        let mut order: Vec<usize> = shards.collect();
        order.sort_unstable();
        order.dedup();
        let guards = order
            .iter()
            // A poisoned shard only means another thread panicked while
            // holding it; the map itself is still consistent.
            .map(|&i| self.shards[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        Locked {
            guards,
            order,
            pending: Vec::new(),
            now_ms,
        }
    }

    /// Drops counters whose window ended, whose bucket is full again, or
    /// whose holders all passed their deadline. Returns how many.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, e| e.expires_ms > now_ms);
            removed += before - map.len();
        }
        removed
    }

    /// Number of live counters (for tests and the admin page).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn take(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError> {
        let keys: Vec<Key> = hits
            .iter()
            .map(|h| self.key(counter_key(&h.key, &h.counter, now_ms)))
            .collect();
        let record = hold.map(|h| self.key(h.record_key.clone()));
        let shards = keys.iter().chain(record.as_ref()).map(|k| k.shard);
        let mut locked = self.lock(shards, now_ms);
        let mut admitted = true;
        let mut states = Vec::with_capacity(hits.len());
        for (hit, key) in hits.iter().zip(keys) {
            let cell = locked.get(&key);
            let out = match hit.counter {
                Counter::Rate(limit) => arith::hit(&limit, cell.as_ref(), hit.cost, true, now_ms),
                Counter::Slots { max } => {
                    let (holder, deadline) = match hold {
                        Some(h) => (h.holder.as_str(), now_ms + h.ttl_ms),
                        // Without a hold nobody could release the slot:
                        // check only.
                        None => ("", now_ms),
                    };
                    let cost = if hold.is_some() { hit.cost } else { 0 };
                    arith::slots_hit(max, cell.as_ref(), cost, true, holder, deadline, now_ms)
                }
            };
            admitted &= !(out.state.over && hit.enforce);
            states.push(out.state);
            locked.put(key, out.cell, out.ttl_ms);
        }
        if admitted {
            if let (Some(h), Some(record)) = (hold, record) {
                locked.put(record, Cell::Record(h.record.clone()), h.ttl_ms);
            }
            locked.commit();
        }
        Ok(TakeOutcome {
            admitted,
            hits: states,
        })
    }

    async fn count(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        let keys: Vec<Key> = hits
            .iter()
            .map(|h| self.key(counter_key(&h.key, &h.counter, now_ms)))
            .collect();
        let mut locked = self.lock(keys.iter().map(|k| k.shard), now_ms);
        let mut states = Vec::with_capacity(hits.len());
        for (hit, key) in hits.iter().zip(keys) {
            let cell = locked.get(&key);
            let out = match hit.counter {
                Counter::Rate(limit) => arith::count(&limit, cell.as_ref(), hit.cost, now_ms),
                Counter::Slots { max } => {
                    arith::slots_hit(max, cell.as_ref(), 0, true, "", now_ms, now_ms)
                }
            };
            states.push(out.state);
            locked.put(key, out.cell, out.ttl_ms);
        }
        locked.commit();
        Ok(states)
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        let keys: Vec<Key> = hits
            .iter()
            .map(|h| self.key(counter_key(&h.key, &h.counter, now_ms)))
            .collect();
        let mut locked = self.lock(keys.iter().map(|k| k.shard), now_ms);
        let mut states = Vec::with_capacity(hits.len());
        for (hit, key) in hits.iter().zip(keys) {
            let cell = locked.get(&key);
            let out = match hit.counter {
                Counter::Rate(limit) => arith::give_back(&limit, cell.as_ref(), hit.cost, now_ms),
                Counter::Slots { max } => arith::release(max, cell.as_ref(), "", now_ms),
            };
            states.push(out.state);
            locked.put(key, out.cell, out.ttl_ms);
        }
        locked.commit();
        Ok(states)
    }

    async fn settle(
        &self,
        record_key: &str,
        holder: &str,
        ops: &[SettleOp],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        // Each op's key: the exact window key of a refund or release, the
        // current window's key of a charge.
        let keys: Vec<Key> = ops
            .iter()
            .map(|op| {
                self.key(match op {
                    SettleOp::Refund { key, .. } | SettleOp::Release { key, .. } => key.clone(),
                    SettleOp::Charge { key, limit, .. } => {
                        counter_key(key, &Counter::Rate(*limit), now_ms)
                    }
                })
            })
            .collect();
        let record = self.key(record_key.to_string());
        let shards = keys.iter().chain(std::iter::once(&record)).map(|k| k.shard);
        let mut locked = self.lock(shards, now_ms);
        if locked.get(&record).is_none() {
            return Ok(false);
        }
        locked.delete(record);
        for (op, key) in ops.iter().zip(keys) {
            let cell = locked.get(&key);
            match op {
                SettleOp::Refund { limit, cost, .. } => {
                    // A live window key means now is still in that window,
                    // so the recomputed expiry is the window's own end.
                    if let Some(out) = arith::refund(limit, cell.as_ref(), *cost, now_ms) {
                        locked.put(key, out.cell, out.ttl_ms);
                    }
                }
                SettleOp::Charge { limit, cost, .. } => {
                    let out = arith::charge(limit, cell.as_ref(), *cost, now_ms);
                    locked.put(key, out.cell, out.ttl_ms);
                }
                SettleOp::Release { max, .. } => {
                    let out = arith::release(*max, cell.as_ref(), holder, now_ms);
                    locked.put(key, out.cell, out.ttl_ms);
                }
            }
        }
        locked.commit();
        Ok(true)
    }

    async fn grant(
        &self,
        hit: &Hit,
        want: u64,
        instances: u64,
        now_ms: u64,
    ) -> Result<Grant, StoreError> {
        let Counter::Rate(limit) = hit.counter else {
            return Err(StoreError::Protocol(
                "concurrency slots are not leased".into(),
            ));
        };
        let key = self.key(counter_key(&hit.key, &hit.counter, now_ms));
        let mut locked = self.lock(std::iter::once(key.shard), now_ms);
        let cell = locked.get(&key);
        let g = arith::grant(&limit, cell.as_ref(), hit.cost, want, instances, now_ms);
        // As lease.lua: nothing is written when nothing is granted.
        if g.amount > 0 {
            locked.put(key, g.outcome.cell, g.outcome.ttl_ms);
            locked.commit();
        }
        Ok(Grant {
            amount: g.amount,
            state: g.outcome.state,
        })
    }

    async fn record(&self, record_key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(record_key.to_string());
        let mut locked = self.lock(std::iter::once(key.shard), now_ms);
        Ok(match locked.get(&key) {
            Some(Cell::Record(r)) => Some(r),
            _ => None,
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
