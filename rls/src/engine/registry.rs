//! This instance's place among those sharing the store: it beats every
//! `heartbeat` in the store's registry, which counts the live instances
//! (forgetting any silent for `evict_after`) and so sizes lease slices and
//! each instance's share under `on_error = "local"`. It re-registers by
//! itself after an eviction (its next beat), and leaves at shutdown.

use super::counters::Counters;
use crate::rules::LeasePolicy;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Beats until `cancel`, then leaves the registry.
pub async fn keep_registered(counters: Counters, policy: LeasePolicy, cancel: CancellationToken) {
    let instances = counters.instances().clone();
    let metrics = counters.metrics().clone();
    metrics.leases.instance(&instances.id);
    let evict_ms = u64::try_from(policy.evict_after.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(policy.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break,
        }
        let now = counters.now_ms();
        match counters
            .store()
            .heartbeat(&instances.id, evict_ms, now)
            .await
        {
            Ok(live) => {
                instances.set_live(live);
                metrics
                    .leases
                    .instances
                    .set(i64::try_from(live).unwrap_or(i64::MAX));
                if last != Some(live) {
                    tracing::info!(instance = %instances.id, live, "instances sharing the store");
                    last = Some(live);
                }
            }
            // The store's own lines say it is failing; the count stays
            // as last seen.
            Err(e) => tracing::debug!(error = %e, "registry heartbeat failed"),
        }
    }
    match tokio::time::timeout(
        Duration::from_secs(2),
        counters.store().leave(&instances.id),
    )
    .await
    {
        Ok(Ok(())) => tracing::info!(instance = %instances.id, "left the registry"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not leave the registry; evicted after evict_after")
        }
        Err(_) => tracing::warn!("leaving the registry timed out; evicted after evict_after"),
    }
}
