//! Leased hits: taken from this instance's slice of a counter, asking the
//! store for a new slice when one runs out; the rest in one store call.

use super::policy::POLICY_RETRY_MS;
use super::{AnsweredBy, Counters, Owner, Took};
use crate::engine::leases::{Leases, Local};
use crate::engine::plan::Plan;
use crate::rules::Limit;
use crate::store::{Hit, HitState, StoreError, TakeOutcome};

impl Counters {
    /// Decides leased hits from their slices (asking the store for a slice
    /// when one runs out) and the rest in one store call; all-or-nothing
    /// still: a request the store denies gives its slice hits back.
    pub(super) async fn take_leased<O: Owner>(
        &self,
        leases: &Leases,
        op: &'static str,
        plan: &Plan<O>,
        now: u64,
    ) -> Took {
        let mut local: Vec<Option<HitState>> = Vec::with_capacity(plan.hits().len());
        for (hit, owner) in plan.iter() {
            let limit = Leases::leasable(hit).filter(|_| owner.leases());
            let state = match limit {
                Some(limit) => match self.take_from_slice(leases, hit, limit, now).await {
                    Ok(state) => state,
                    Err(e) => {
                        undo(leases, plan, &local, now);
                        return self.by_policy(plan, None, e, now).await;
                    }
                },
                None => None,
            };
            local.push(state);
        }
        let direct: Vec<Hit> = plan
            .hits()
            .iter()
            .zip(&local)
            .filter(|(_, l)| l.is_none())
            .map(|(h, _)| h.clone())
            .collect();
        self.metrics
            .leases
            .decisions(local.len() - direct.len(), direct.len());
        let mut outcome = TakeOutcome {
            admitted: true,
            hits: Vec::new(),
        };
        if !direct.is_empty() {
            match self.timed(op, self.store.take(&direct, None, now)).await {
                Ok(o) => {
                    self.recovered();
                    outcome = o;
                }
                Err(e) => {
                    undo(leases, plan, &local, now);
                    return self.by_policy(plan, None, e, now).await;
                }
            }
        }
        if !outcome.admitted {
            undo(leases, plan, &local, now);
        }
        let mut from_store = outcome.hits.into_iter();
        let hits = local
            .into_iter()
            .map(|l| l.or_else(|| from_store.next()).unwrap_or(UNANSWERED))
            .collect();
        Took {
            outcome: TakeOutcome {
                admitted: outcome.admitted,
                hits,
            },
            by: AnsweredBy::Store,
        }
    }

    /// One hit from its slice: `Ok(None)` when the slice cannot hold it and
    /// the store grants no more (too little left to lease: the store
    /// decides it).
    pub(super) async fn take_from_slice(
        &self,
        leases: &Leases,
        hit: &Hit,
        limit: Limit,
        now: u64,
    ) -> Result<Option<HitState>, StoreError> {
        // Each turn takes from the slice, or waits for a grant in flight (which
        // adds capacity or refuses), or asks for one: it ends when the
        // slice holds the hit or the store grants no more.
        loop {
            match leases.take(hit, limit, now) {
                Local::Taken(state) => return Ok(Some(state)),
                Local::Store => return Ok(None),
                Local::Wait(mut rx) => {
                    let _ = rx.changed().await;
                }
                Local::Grant { want, done } => {
                    let instances = leases.instances().live();
                    let asked = self.store.grant(hit, want, instances, now);
                    let granted = self.timed("grant", asked).await;
                    match granted {
                        Ok(g) => {
                            leases.granted(hit, g.amount, g.state, now);
                            drop(done);
                            if g.amount == 0 {
                                return Ok(None);
                            }
                        }
                        Err(e) => {
                            leases.grant_failed(hit, now);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }
}

/// A state for a hit nobody answered (cannot happen: every hit is decided
/// from its slice or by the store).
const UNANSWERED: HitState = HitState {
    over: true,
    remaining: 0,
    reset_after_ms: 0,
    retry_after_ms: POLICY_RETRY_MS,
};

/// Gives back the hits a denied (or failed) request took from its slices.
fn undo<O: Owner>(leases: &Leases, plan: &Plan<O>, local: &[Option<HitState>], now: u64) {
    for (hit, taken) in plan.hits().iter().zip(local) {
        if taken.is_some() {
            leases.undo(hit, now);
        }
    }
}
