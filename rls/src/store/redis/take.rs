//! Taking, giving back, counting and settling: take.lua and settle.lua
//! calls, one per request on a single Redis, per slot on a Redis Cluster
//! (with the roll-back that keeps a denied request from taking anything).

use super::script::{op_key, parse_states, push_spec, tag, Mode, UNKNOWN};
use super::RedisStore;
use crate::store::arith::HitState;
use crate::store::{counter_key, Counter, Hit, Hold, SettleOp, StoreError, TakeOutcome};
use std::collections::BTreeMap;

impl RedisStore {
    /// One take.lua call over `hits`. `record` writes the hold's record
    /// (its key must share the hits' slot); a hold without it only holds
    /// slots.
    pub(super) async fn run(
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
    pub(super) async fn each_hit(
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
    pub(super) async fn run_settle(
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
    pub(super) async fn take_by_slot(
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
    pub(super) async fn roll_back(
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

    /// `Store::take`: one call on a single Redis, per slot on a cluster.
    pub(super) async fn take_hits(
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

    /// `Store::settle`: the record's slot first (conditional on the
    /// record), then the other slots' steps unconditionally.
    pub(super) async fn settle_ops(
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
}
