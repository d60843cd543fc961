//! A settle the store could not take (Redis restarting, a partition) is
//! tried again in the background until the store answers or the
//! reservation's record would have expired by its TTL (which frees it in
//! the store anyway). Without this, a Redis restart of 0.2 s left every
//! request that ended in it charged at its estimate and holding its
//! concurrency slot for the whole `reservation_ttl` (docs/soak.md).
//!
//! A settle is safe to repeat: the first that reaches the store takes the
//! reservation's record with it, and any later one finds none and changes
//! nothing (`Ok(false)`), so a settle that timed out but ran in Redis
//! after all is not counted twice.

use super::observe;
use crate::engine::budget::Budgets;
use crate::engine::reservation::{Reservation, Settlement};
use std::time::Duration;
use tokio::time::Instant;

/// The first retry's delay; each later one doubles it, up to [`LONGEST`].
const FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
const LONGEST: Duration = Duration::from_secs(5);

/// What a failed settle still has to do, and what its metrics need.
pub(super) struct Pending {
    pub reservation: Reservation,
    pub settlement: Settlement,
    pub model_label: String,
}

/// Starts retrying `pending` until it is settled, found settled, or
/// `ttl` (the reservation's lifetime, counted from now: at most that) has
/// passed. A task per failed settle: they are few (the requests that
/// ended during an outage) and each ends by its TTL at the latest.
pub(super) fn spawn(budgets: Budgets, pending: Pending, ttl: Duration) {
    tokio::spawn(async move {
        let give_up = Instant::now() + ttl;
        let mut delay = FIRST;
        loop {
            tokio::time::sleep(delay).await;
            if Instant::now() >= give_up {
                tracing::debug!(model = %pending.model_label, "settle not retried past the reservation's TTL");
                return;
            }
            match budgets
                .settle(&pending.reservation, pending.settlement)
                .await
            {
                Ok(settled) => {
                    observe::settled_on_retry(budgets.counters().metrics(), &pending, settled);
                    return;
                }
                Err(_) => delay = (delay * 2).min(LONGEST),
            }
        }
    });
}
