//! A circuit breaker in front of a shared store: after a few failures in a
//! row it stops asking (every call fails at once, so no request waits on a
//! dead Redis and rules answer by their `on_error` policy), and after a
//! cool-down lets one call through as a probe: success closes it again.
//! Biases towards answering fast over asking a store that is probably down.
//!
//! * A failure while closed is confirmed at once: the breaker pings the
//!   store (in the background) until it has seen [`FAILURES_TO_OPEN`] in a
//!   row, or a success. So the circuit opens, and `/readyz` says 503,
//!   within a few store timeouts of the first failure, however light the
//!   traffic, instead of waiting for two more requests (or two more of the
//!   prober's pings, seconds apart).
//! * Outages: failures to answer (timeouts, refused connections, refused
//!   credentials) and answers that say the store cannot serve (OOM,
//!   READONLY, LOADING, ...). A call the store rejected for what it asked
//!   (a script bug) shows a store that answers: it never opens the
//!   circuit, and a probe that gets one closes it; such calls are logged
//!   once and then summarised.
//! * The log gets one line when the circuit opens and one when it closes,
//!   and while it stays open a summary every [`LOG_SUMMARY_EVERY`] with the
//!   number of calls answered without the store. A circuit that flaps gets
//!   [`CHANGE_LINES`] lines of changes per interval, then one line with the
//!   count of the changes it did not log and the state it is in.

use super::{Grant, Hit, HitState, Hold, SettleOp, Store, StoreError, TakeOutcome};
use crate::repeated::{LineBudget, Repeats};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Consecutive transient failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// How often a condition that goes on (an open circuit, rejected calls) is
/// summarised in the log.
pub const LOG_SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Lines about the circuit opening or closing per [`LOG_SUMMARY_EVERY`].
pub const CHANGE_LINES: u32 = 4;

/// The breaker's state, readable by `/readyz` and metrics.
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    /// While open: milliseconds since `epoch` when a probe may go through.
    open_until_ms: AtomicU64,
    open: AtomicBool,
    probing: AtomicBool,
    /// A confirmation of a first failure is running.
    confirming: AtomicBool,
    /// Times the circuit opened, for the metric.
    opens: AtomicU64,
    epoch: Instant,
    cooldown: Duration,
    journal: Journal,
}

/// What the log says about the breaker, and the counts it reports.
#[derive(Debug)]
struct Journal {
    /// When the circuit last opened, in ms since `Health::epoch`.
    opened_at_ms: AtomicU64,
    /// Calls answered without the store (circuit open), since the last
    /// line and over the whole outage.
    short_since_line: AtomicU64,
    short_in_outage: AtomicU64,
    failed_probes_since_line: AtomicU64,
    /// The last error of the outage, for the summaries (rarely written: on
    /// a failed probe, at most once per cool-down).
    last_error: Mutex<String>,
    /// Lines about the circuit opening or closing.
    changes: LineBudget,
    /// Summaries while open.
    summaries: Repeats,
    /// Calls the store rejected.
    rejections: Repeats,
}

impl Health {
    /// A closed breaker that waits `cooldown` between probes once open.
    pub fn new(cooldown: Duration) -> Health {
        Health {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            confirming: AtomicBool::new(false),
            opens: AtomicU64::new(0),
            epoch: Instant::now(),
            cooldown,
            journal: Journal {
                opened_at_ms: AtomicU64::new(0),
                short_since_line: AtomicU64::new(0),
                short_in_outage: AtomicU64::new(0),
                failed_probes_since_line: AtomicU64::new(0),
                last_error: Mutex::new(String::new()),
                changes: LineBudget::new(LOG_SUMMARY_EVERY, CHANGE_LINES),
                summaries: Repeats::new(LOG_SUMMARY_EVERY),
                rejections: Repeats::new(LOG_SUMMARY_EVERY),
            },
        }
    }

    /// True while calls reach the store.
    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// How many times the circuit has opened since start.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this call may go to the store (closed, or the one probe).
    fn admit(&self) -> bool {
        if let Some(unlogged) = self.journal.changes.overdue() {
            tracing::warn!(
                unlogged_changes = unlogged,
                circuit = if self.is_closed() { "closed" } else { "open" },
                "store circuit flapping: it opened or closed this many more times in {LOG_SUMMARY_EVERY:?} without a line each"
            );
        }
        if self.is_closed() {
            return true;
        }
        if self.now_ms() >= self.open_until_ms.load(Ordering::Acquire)
            && !self.probing.swap(true, Ordering::AcqRel)
        {
            // The one probe at a time.
            return true;
        }
        self.journal.short_since_line.fetch_add(1, Ordering::AcqRel);
        self.journal.short_in_outage.fetch_add(1, Ordering::AcqRel);
        self.maybe_summarise();
        false
    }

    /// Takes note of a call's result; `true` when it was the first failure
    /// of a streak and should be confirmed now.
    fn record<T>(&self, result: &Result<T, StoreError>) -> bool {
        match result {
            Ok(_) => {
                self.answered();
                false
            }
            Err(e) if e.is_transient() => self.failure(e),
            Err(e) => {
                self.rejected(e);
                false
            }
        }
    }

    /// The store answered: the streak ends, a probe closes the circuit.
    fn answered(&self) {
        self.failures.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) && self.journal.changes.allow() {
            let open_ms = self
                .now_ms()
                .saturating_sub(self.journal.opened_at_ms.load(Ordering::Acquire));
            tracing::info!(
                outage = ?Duration::from_millis(open_ms),
                answered_without_store = self.journal.short_in_outage.load(Ordering::Acquire),
                "store answers again; circuit closed"
            );
        }
    }

    /// The store answered with a rejection of what was asked: not an
    /// outage, but nobody should miss it either.
    fn rejected(&self, e: &StoreError) {
        self.answered();
        if let Some(unlogged) = self.journal.rejections.note() {
            tracing::warn!(
                error = %e,
                unlogged_since_last_line = unlogged,
                "store rejected a call (not an outage: the circuit stays closed); \
                 a bug, or a key of another type under tollgate's prefix"
            );
        }
    }

    fn failure(&self, e: &StoreError) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n < FAILURES_TO_OPEN && !was_probe && self.is_closed() {
            // The first failure of a streak: confirm it now.
            return !self.confirming.swap(true, Ordering::AcqRel);
        }
        self.open_until_ms.store(
            self.now_ms().saturating_add(duration_ms(self.cooldown)),
            Ordering::Release,
        );
        if let Ok(mut last) = self.journal.last_error.lock() {
            *last = e.to_string();
        }
        if self.open.swap(true, Ordering::AcqRel) {
            if was_probe {
                self.journal
                    .failed_probes_since_line
                    .fetch_add(1, Ordering::AcqRel);
                self.maybe_summarise();
            }
        } else {
            self.opened(e);
        }
        false
    }

    /// The circuit just opened.
    fn opened(&self, e: &StoreError) {
        self.opens.fetch_add(1, Ordering::AcqRel);
        let j = &self.journal;
        j.opened_at_ms.store(self.now_ms(), Ordering::Release);
        j.short_since_line.store(0, Ordering::Release);
        j.short_in_outage.store(0, Ordering::Release);
        j.failed_probes_since_line.store(0, Ordering::Release);
        j.summaries.hold();
        if j.changes.allow() {
            tracing::warn!(
                error = %e,
                cooldown = ?self.cooldown,
                "store failing; circuit open, rules answer by on_error until a probe succeeds"
            );
        }
    }

    /// While open, once per interval: how long, and how much went unasked.
    fn maybe_summarise(&self) {
        let j = &self.journal;
        if j.summaries.note().is_none() {
            return;
        }
        let open_ms = self
            .now_ms()
            .saturating_sub(j.opened_at_ms.load(Ordering::Acquire));
        let last = j.last_error.lock().map(|s| s.clone()).unwrap_or_default();
        tracing::warn!(
            open_for = ?Duration::from_millis(open_ms),
            answered_without_store = j.short_since_line.swap(0, Ordering::AcqRel),
            failed_probes = j.failed_probes_since_line.swap(0, Ordering::AcqRel),
            last_error = %last,
            "store still failing; circuit open"
        );
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wraps a store with a breaker.
pub struct Breaker {
    inner: Arc<dyn Store>,
    health: Arc<Health>,
}

impl Breaker {
    /// `health` is shared with `/readyz` and the metrics.
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
        if self.health.record(&r) {
            self.confirm();
        }
        r
    }

    /// Pings the store, in the background, until the streak of failures
    /// that started reaches [`FAILURES_TO_OPEN`] (the circuit opens) or a
    /// ping succeeds. Each ping is bounded by the store's own timeout.
    fn confirm(&self) {
        let (inner, health) = (self.inner.clone(), self.health.clone());
        tokio::spawn(async move {
            for _ in 1..FAILURES_TO_OPEN {
                if !health.is_closed() || health.failures.load(Ordering::Acquire) == 0 {
                    break;
                }
                let r = inner.ping().await;
                health.record(&r);
            }
            health.confirming.store(false, Ordering::Release);
        });
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

    async fn count(&self, hits: &[Hit], now_ms: u64) -> Result<Vec<HitState>, StoreError> {
        self.call(self.inner.count(hits, now_ms)).await
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

    async fn grant(
        &self,
        hit: &Hit,
        want: u64,
        instances: u64,
        now_ms: u64,
    ) -> Result<Grant, StoreError> {
        self.call(self.inner.grant(hit, want, instances, now_ms))
            .await
    }

    async fn heartbeat(
        &self,
        instance: &str,
        evict_after_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.call(self.inner.heartbeat(instance, evict_after_ms, now_ms))
            .await
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        self.call(self.inner.leave(instance)).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    /// A store that answers from a script of results (then `rest` for
    /// ever), counting the calls that reach it.
    struct Scripted {
        answers: Mutex<VecDeque<Result<(), StoreError>>>,
        rest: fn() -> Result<(), StoreError>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(
            answers: Vec<Result<(), StoreError>>,
            rest: fn() -> Result<(), StoreError>,
        ) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into()),
                rest,
                calls: AtomicUsize::new(0),
            })
        }

        fn answer(&self) -> Result<(), StoreError> {
            self.calls.fetch_add(1, Ordering::AcqRel);
            let next = self.answers.lock().ok().and_then(|mut a| a.pop_front());
            next.unwrap_or_else(self.rest)
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::Acquire)
        }
    }

    #[async_trait]
    impl Store for Scripted {
        async fn take(
            &self,
            _: &[Hit],
            _: Option<&Hold>,
            _: u64,
        ) -> Result<TakeOutcome, StoreError> {
            self.answer().map(|_| TakeOutcome {
                admitted: true,
                hits: vec![],
            })
        }
        async fn give_back(&self, _: &[Hit], _: u64) -> Result<Vec<HitState>, StoreError> {
            self.answer().map(|_| vec![])
        }
        async fn count(&self, _: &[Hit], _: u64) -> Result<Vec<HitState>, StoreError> {
            self.answer().map(|_| vec![])
        }
        async fn settle(
            &self,
            _: &str,
            _: &str,
            _: &[SettleOp],
            _: u64,
        ) -> Result<bool, StoreError> {
            self.answer().map(|_| true)
        }
        async fn record(&self, _: &str, _: u64) -> Result<Option<Vec<u8>>, StoreError> {
            self.answer().map(|_| None)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.answer()
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
    }

    fn down() -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    fn up() -> Result<(), StoreError> {
        Ok(())
    }
    fn oom() -> Result<(), StoreError> {
        Err(StoreError::Refused(
            Refusal::OutOfMemory,
            "no memory".into(),
        ))
    }
    fn bug() -> Result<(), StoreError> {
        Err(StoreError::Protocol(
            "user_script:1: attempt to index nil".into(),
        ))
    }

    fn breaker(inner: Arc<Scripted>, cooldown: Duration) -> (Breaker, Arc<Health>) {
        let health = Arc::new(Health::new(cooldown));
        (Breaker::new(inner, health.clone()), health)
    }

    /// Waits (1 s at most) until a confirmation in the background is over.
    async fn settled(health: &Health) {
        for _ in 0..200 {
            if !health.confirming.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the confirmation never ended");
    }

    /// Log lines written while `f` runs (on this thread's runtime).
    async fn logged<F: std::future::Future<Output = ()>>(f: F) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        f.await;
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_first_failure_is_confirmed_and_opens_without_more_traffic() {
        let inner = Scripted::new(vec![], down);
        let (b, health) = breaker(inner.clone(), Duration::from_secs(60));
        assert!(b.take(&[], None, 0).await.is_err());
        settled(&health).await;
        assert!(!health.is_closed(), "open after the confirmation pings");
        assert_eq!(
            inner.calls(),
            FAILURES_TO_OPEN as usize,
            "one call, then two pings"
        );
        assert_eq!(health.opens(), 1);
        // Open: calls are answered without the store.
        for _ in 0..10 {
            assert!(b.take(&[], None, 0).await.is_err());
        }
        assert_eq!(inner.calls(), FAILURES_TO_OPEN as usize);
    }

    #[tokio::test]
    async fn a_blip_is_not_an_outage() {
        let inner = Scripted::new(
            vec![Err(StoreError::Timeout(Duration::from_millis(50)))],
            up,
        );
        let (b, health) = breaker(inner.clone(), Duration::from_secs(60));
        assert!(b.take(&[], None, 0).await.is_err());
        settled(&health).await;
        assert!(health.is_closed());
        assert_eq!(inner.calls(), 2, "the call and one ping that succeeded");
        assert_eq!(health.failures.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn refusals_are_outages() {
        let inner = Scripted::new(vec![], oom);
        let (b, health) = breaker(inner, Duration::from_secs(60));
        let _ = b.take(&[], None, 0).await;
        settled(&health).await;
        assert!(!health.is_closed());
    }

    #[tokio::test]
    async fn rejected_calls_never_open_and_a_rejected_probe_closes() {
        let inner = Scripted::new(vec![], bug);
        let (b, health) = breaker(inner.clone(), Duration::from_millis(20));
        let log = logged(async {
            for _ in 0..100 {
                assert!(b.take(&[], None, 0).await.is_err());
            }
        })
        .await;
        assert!(health.is_closed());
        assert_eq!(inner.calls(), 100, "no confirmation pings for a rejection");
        assert_eq!(log.matches("store rejected a call").count(), 1, "{log}");

        // Open it, then let a probe through that is rejected: the store
        // answered, so the circuit closes.
        let inner = Scripted::new(vec![down(), down(), down()], bug);
        let (b, health) = breaker(inner, Duration::from_millis(20));
        let _ = b.take(&[], None, 0).await;
        settled(&health).await;
        assert!(!health.is_closed());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = b.take(&[], None, 0).await;
        assert!(
            health.is_closed(),
            "a rejected probe shows the store answering"
        );
    }

    #[tokio::test]
    async fn one_line_per_change_and_no_line_per_call() {
        let inner = Scripted::new(vec![down(), down(), down(), down()], up);
        let (b, health) = breaker(inner, Duration::from_millis(30));
        let log = logged(async {
            let _ = b.take(&[], None, 0).await;
            settled(&health).await;
            assert!(!health.is_closed());
            for _ in 0..1000 {
                let _ = b.take(&[], None, 0).await;
            }
            // The first probe fails (the fourth `down`), the next succeeds.
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let _ = b.take(&[], None, 0).await;
            }
            assert!(health.is_closed());
        })
        .await;
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("circuit open"), "{log}");
        assert!(
            log.contains("circuit closed") && log.contains("answered_without_store=1000"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_flapping_circuit_does_not_flood() {
        // Down for three calls, up for one, for ever: opens and closes
        // about once per cool-down.
        static N: AtomicUsize = AtomicUsize::new(0);
        fn flaky() -> Result<(), StoreError> {
            if N.fetch_add(1, Ordering::AcqRel) % 4 == 3 {
                up()
            } else {
                down()
            }
        }
        let inner = Scripted::new(vec![], flaky);
        let (b, health) = breaker(inner, Duration::from_millis(2));
        let log = logged(async {
            for _ in 0..300 {
                let _ = b.take(&[], None, 0).await;
                settled(&health).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            health.opens() >= 20,
            "it flapped ({} opens)",
            health.opens()
        );
        assert_eq!(log.lines().count(), CHANGE_LINES as usize, "{log}");
    }
}
