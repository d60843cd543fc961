//! Leases and the instance registry: lease.lua hands this instance a share
//! of a counter, registry.lua keeps the list of live instances.

use super::script::push_spec;
use super::RedisStore;
use crate::store::arith::HitState;
use crate::store::{counter_key, keys, Counter, Grant, Hit, StoreError};

impl RedisStore {
    /// One registry.lua call.
    pub(super) async fn registry_call(
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

    /// One lease.lua call: a share of `hit`'s counter for this instance
    /// (see `Store::grant`); concurrency slots are never leased.
    pub(super) async fn grant_lease(
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
}
