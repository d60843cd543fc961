//! A circuit breaker in front of a shared store: after a few failures in a
//! row it stops asking (every call fails at once, so no request waits on a
//! dead Redis and rules answer by their `on_error` policy), and after a
//! cool-down lets one call through as a probe: success closes it again.
//! Biases towards answering fast over asking a store that is probably down.

use super::{Hit, HitState, Hold, SettleOp, Store, StoreError, TakeOutcome};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Consecutive transient failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// The breaker's state, readable by `/readyz` and metrics.
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    /// While open: milliseconds since `epoch` when a probe may go through.
    open_until_ms: AtomicU64,
    open: AtomicBool,
    probing: AtomicBool,
    epoch: Instant,
    cooldown: Duration,
}

impl Health {
    pub fn new(cooldown: Duration) -> Health {
        Health {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
            cooldown,
        }
    }

    /// True while calls reach the store.
    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this call may go to the store (closed, or the one probe).
    fn admit(&self) -> bool {
        if self.is_closed() {
            return true;
        }
        if self.now_ms() < self.open_until_ms.load(Ordering::Acquire) {
            return false;
        }
        // One probe at a time.
        !self.probing.swap(true, Ordering::AcqRel)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("store answers again; circuit closed");
        }
    }

    fn failure(&self, e: &StoreError) {
        if !e.is_transient() {
            self.probing.store(false, Ordering::Release);
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= FAILURES_TO_OPEN || was_probe {
            self.open_until_ms.store(
                self.now_ms() + self.cooldown.as_millis() as u64,
                Ordering::Release,
            );
            if !self.open.swap(true, Ordering::AcqRel) {
                tracing::warn!(error = %e, cooldown = ?self.cooldown, "store failing; circuit open, rules answer by on_error until a probe succeeds");
            }
        }
    }
}

/// Wraps a store with a breaker.
pub struct Breaker {
    inner: Arc<dyn Store>,
    health: Arc<Health>,
}

impl Breaker {
    pub fn new(inner: Arc<dyn Store>, health: Arc<Health>) -> Breaker {
        Breaker { inner, health }
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.health.admit() {
            return Err(StoreError::Unavailable("circuit open".into()));
        }
        let r = f.await;
        match &r {
            Ok(_) => self.health.success(),
            Err(e) => self.health.failure(e),
        }
        r
    }
}

#[async_trait]
impl Store for Breaker {
    async fn take(
        &self,
        hits: &[Hit],
        hold: Option<&Hold>,
        now_ms: u64,
    ) -> Result<TakeOutcome, StoreError> {
        self.call(self.inner.take(hits, hold, now_ms)).await
    }

    async fn give_back(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        self.call(self.inner.give_back(hits, now_ms)).await
    }

    async fn settle(
        &self,
        record_key: &str,
        holder: &str,
        ops: &[SettleOp],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call(self.inner.settle(record_key, holder, ops, now_ms))
            .await
    }

    async fn record(&self, record_key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(self.inner.record(record_key, now_ms)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.inner.ping()).await
    }

    async fn announce_freed(&self, keys: &[String]) -> Result<(), StoreError> {
        self.call(self.inner.announce_freed(keys)).await
    }

    fn freed_by_others(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<String>>> {
        self.inner.freed_by_others()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
