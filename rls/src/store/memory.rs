//! The embedded store: counters in sharded hash maps.
//!
//! A batch locks the shards its keys fall in, in ascending shard order (so
//! two batches can never wait on each other in a cycle), decides, writes,
//! and unlocks. The locks are `std::sync::Mutex`: critical sections are a
//! few hash lookups and never cross an `.await`, where a blocking mutex is
//! cheaper than an async one (as mini-redis's `db.rs` explains).

use super::arith::{self, Cell, HitState};
use super::{counter_key, Hit, Store, StoreError, TakeOutcome};
use async_trait::async_trait;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
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

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    /// Locks the shards of `keys` in ascending order; returns the guards
    /// and, per key, the index of its guard.
    fn lock(&self, keys: &[String]) -> (Vec<MutexGuard<'_, Shard>>, Vec<usize>) {
        let shard_ids: Vec<usize> = keys.iter().map(|k| self.shard_of(k)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order
            .iter()
            // A poisoned shard only means another thread panicked while
            // holding it; the map itself is still consistent.
            .map(|&i| self.shards[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let slots = shard_ids
            .iter()
            .map(|id| order.binary_search(id).unwrap_or(0))
            .collect();
        (guards, slots)
    }

    /// Drops counters whose window ended or whose bucket is full again.
    /// Returns how many were removed.
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

    /// Runs `step` over each hit against the locked state, as one atomic
    /// step; `commit` says whether the results are written.
    fn apply<F>(&self, hits: &[Hit], now_ms: u64, mut step: F) -> (bool, Vec<HitState>)
    where
        F: FnMut(&Hit, Option<Cell>) -> arith::Outcome,
    {
        let keys: Vec<String> = hits.iter().map(|h| counter_key(h, now_ms)).collect();
        let (mut guards, slots) = self.lock(&keys);
        // Pending writes, so a later hit in the batch sees an earlier one.
        let mut pending: Vec<(usize, Entry)> = Vec::with_capacity(hits.len());
        let mut states = Vec::with_capacity(hits.len());
        let mut admitted = true;
        for (i, hit) in hits.iter().enumerate() {
            let current = pending
                .iter()
                .rev()
                .find(|(j, _)| keys[*j] == keys[i])
                .map(|(_, e)| *e)
                .or_else(|| guards[slots[i]].get(&keys[i]).copied())
                .filter(|e| e.expires_ms > now_ms)
                .map(|e| e.cell);
            let out = step(hit, current);
            if out.state.over && hit.enforce {
                admitted = false;
            }
            pending.push((
                i,
                Entry {
                    cell: out.cell,
                    expires_ms: now_ms + out.ttl_ms,
                },
            ));
            states.push(out.state);
        }
        if admitted {
            for (i, entry) in pending {
                guards[slots[i]].insert(keys[i].clone(), entry);
            }
        }
        (admitted, states)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn take(&self, hits: &[Hit], now_ms: u64) -> Result<TakeOutcome, StoreError> {
        let (admitted, hits) = self.apply(hits, now_ms, |hit, cell| {
            arith::hit(&hit.limit, cell, hit.cost, true, now_ms)
        });
        Ok(TakeOutcome { admitted, hits })
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        let (_, states) = self.apply(hits, now_ms, |hit, cell| {
            arith::give_back(&hit.limit, cell, hit.cost, now_ms)
        });
        Ok(states)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
