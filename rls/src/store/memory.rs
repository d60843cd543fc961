//! The embedded store: counters in sharded hash maps.
//!
//! A call locks the shards its keys fall in, in ascending shard order (so
//! two calls can never wait on each other in a cycle), decides, writes, and
//! unlocks. The locks are `std::sync::Mutex`: critical sections are a few
//! hash lookups and never cross an `.await`, where a blocking mutex is
//! cheaper than an async one (as mini-redis's `db.rs` explains).

use super::arith::{self, Cell, HitState};
use super::{counter_key, Counter, Hit, Hold, SettleOp, Store, StoreError, TakeOutcome};
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

/// The shards of one call, locked, and a view of their keys that sees the
/// call's own writes before they are committed.
struct Locked<'a> {
    guards: Vec<MutexGuard<'a, Shard>>,
    order: Vec<usize>,
    store: &'a MemoryStore,
    pending: Vec<(String, Option<Entry>)>,
    now_ms: u64,
}

impl Locked<'_> {
    fn guard(&mut self, key: &str) -> &mut Shard {
        let shard = self.store.shard_of(key);
        let slot = self.order.binary_search(&shard).unwrap_or(0);
        &mut self.guards[slot]
    }

    /// The live cell at `key`, as this call has left it so far.
    fn get(&mut self, key: &str) -> Option<Cell> {
        let now = self.now_ms;
        let entry = match self.pending.iter().rev().find(|(k, _)| k == key) {
            Some((_, e)) => e.clone(),
            None => self.guard(key).get(key).cloned(),
        };
        entry.filter(|e| e.expires_ms > now).map(|e| e.cell)
    }

    fn put(&mut self, key: String, cell: Cell, ttl_ms: u64) {
        let expires_ms = self.now_ms + ttl_ms;
        self.pending.push((key, Some(Entry { cell, expires_ms })));
    }

    fn delete(&mut self, key: String) {
        self.pending.push((key, None));
    }

    fn commit(mut self) {
        for (key, entry) in std::mem::take(&mut self.pending) {
            match entry {
                Some(e) => {
                    self.guard(&key).insert(key, e);
                }
                None => {
                    self.guard(&key).remove(&key);
                }
            }
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    /// Locks the shards of `keys` in ascending order.
    fn lock<'k>(&self, keys: impl Iterator<Item = &'k str>, now_ms: u64) -> Locked<'_> {
        let mut order: Vec<usize> = keys.map(|k| self.shard_of(k)).collect();
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
            store: self,
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
        let keys: Vec<String> = hits
            .iter()
            .map(|h| counter_key(&h.key, &h.counter, now_ms))
            .collect();
        let record_key = hold.map(|h| h.record_key.as_str());
        let mut locked = self.lock(keys.iter().map(String::as_str).chain(record_key), now_ms);
        let mut admitted = true;
        let mut states = Vec::with_capacity(hits.len());
        for (hit, key) in hits.iter().zip(&keys) {
            let cell = locked.get(key);
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
            locked.put(key.clone(), out.cell, out.ttl_ms);
        }
        if admitted {
            if let Some(h) = hold {
                locked.put(
                    h.record_key.clone(),
                    Cell::Record(h.record.clone()),
                    h.ttl_ms,
                );
            }
            locked.commit();
        }
        Ok(TakeOutcome {
            admitted,
            hits: states,
        })
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        let keys: Vec<String> = hits
            .iter()
            .map(|h| counter_key(&h.key, &h.counter, now_ms))
            .collect();
        let mut locked = self.lock(keys.iter().map(String::as_str), now_ms);
        let mut states = Vec::with_capacity(hits.len());
        for (hit, key) in hits.iter().zip(&keys) {
            let cell = locked.get(key);
            let out = match hit.counter {
                Counter::Rate(limit) => arith::give_back(&limit, cell.as_ref(), hit.cost, now_ms),
                Counter::Slots { max } => arith::release(max, cell.as_ref(), "", now_ms),
            };
            states.push(out.state);
            locked.put(key.clone(), out.cell, out.ttl_ms);
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
        let keys = ops.iter().map(|op| match op {
            SettleOp::Refund { key, .. }
            | SettleOp::Charge { key, .. }
            | SettleOp::Release { key, .. } => key.as_str(),
        });
        let charge_keys: Vec<String> = ops
            .iter()
            .map(|op| match op {
                SettleOp::Charge { key, limit, .. } => {
                    counter_key(key, &Counter::Rate(*limit), now_ms)
                }
                _ => String::new(),
            })
            .collect();
        let all = keys
            .chain(charge_keys.iter().map(String::as_str))
            .chain(std::iter::once(record_key));
        let mut locked = self.lock(all, now_ms);
        if locked.get(record_key).is_none() {
            return Ok(false);
        }
        locked.delete(record_key.to_string());
        for (op, charge_key) in ops.iter().zip(charge_keys) {
            match op {
                SettleOp::Refund { key, limit, cost } => {
                    let cell = locked.get(key);
                    // A live window key means now is still in that window,
                    // so the recomputed expiry is the window's own end.
                    if let Some(out) = arith::refund(limit, cell.as_ref(), *cost, now_ms) {
                        locked.put(key.clone(), out.cell, out.ttl_ms);
                    }
                }
                SettleOp::Charge { limit, cost, .. } => {
                    let cell = locked.get(&charge_key);
                    let out = arith::charge(limit, cell.as_ref(), *cost, now_ms);
                    locked.put(charge_key, out.cell, out.ttl_ms);
                }
                SettleOp::Release { key, max } => {
                    let cell = locked.get(key);
                    let out = arith::release(*max, cell.as_ref(), holder, now_ms);
                    locked.put(key.clone(), out.cell, out.ttl_ms);
                }
            }
        }
        locked.commit();
        Ok(true)
    }

    async fn record(&self, record_key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut locked = self.lock(std::iter::once(record_key), now_ms);
        Ok(match locked.get(record_key) {
            Some(Cell::Record(r)) => Some(r),
            _ => None,
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
