//! Usage reports, sent after the client's response and never in its way:
//! [`Reports::submit`] only queues (a full queue drops the report and
//! counts it), and [`run`] sends them in the background, a few at a time,
//! each tried up to `attempts` times with a doubling pause (bounded by
//! `backoff_max`; while the breaker is open, until it may probe again).
//! At shutdown each report still queued or in flight gets one last try,
//! all within [`FLUSH`]; the rest are dropped and counted.

use super::protocol::UsageReport;
use super::settings::ReportSettings;
use crate::metrics::Metrics;
use crate::repeated::Repeats;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Reports sent at the same time at most.
const IN_FLIGHT: usize = 4;

/// How long shutdown gives the reports still unsent.
pub const FLUSH: Duration = Duration::from_secs(2);

/// How one try went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Acknowledged.
    Sent,
    /// Not acknowledged; try again, not before `until` if it says (the
    /// marketplace is busy or the breaker open).
    Again { until: Option<Instant> },
}

/// How a report ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    Sent,
    /// Every try failed.
    Failed,
    /// Shutdown came first.
    Unsent,
}

impl Delivered {
    fn as_str(self) -> &'static str {
        match self {
            Delivered::Sent => "sent",
            Delivered::Failed => "failed",
            Delivered::Unsent => "dropped",
        }
    }
}

/// The queue's sending end.
pub struct Reports {
    tx: mpsc::Sender<UsageReport>,
    metrics: Arc<Metrics>,
    dropped: Repeats,
}

impl Reports {
    /// A queue of `settings.queue` reports, and its receiving end for
    /// [`run`].
    pub fn new(
        settings: &ReportSettings,
        metrics: Arc<Metrics>,
    ) -> (Reports, mpsc::Receiver<UsageReport>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let reports = Reports {
            tx,
            metrics,
            dropped: Repeats::new(Duration::from_secs(30)),
        };
        (reports, rx)
    }

    /// Queues a report; never waits. A full (or closed) queue drops it.
    pub fn submit(&self, report: UsageReport) {
        let m = &self.metrics.marketplace;
        match self.tx.try_send(report) {
            Ok(()) => m.reports_pending.inc(),
            Err(_) => {
                m.report(Delivered::Unsent.as_str());
                if let Some(unlogged) = self.dropped.note() {
                    tracing::warn!(
                        unlogged,
                        "marketplace usage report dropped: the queue is full (the marketplace is slow or down)"
                    );
                }
            }
        }
    }
}

/// Sends the queued reports with `send` (one try each call) until
/// `cancel`, then flushes what is left within [`FLUSH`].
pub async fn run<S, F>(
    mut rx: mpsc::Receiver<UsageReport>,
    settings: ReportSettings,
    metrics: Arc<Metrics>,
    send: S,
    cancel: CancellationToken,
) where
    S: Fn(UsageReport) -> F + Clone + Send + 'static,
    F: Future<Output = Attempt> + Send + 'static,
{
    let mut flying: JoinSet<Delivered> = JoinSet::new();
    let done = |d: Delivered| {
        metrics.marketplace.reports_pending.dec();
        metrics.marketplace.report(d.as_str());
        if d == Delivered::Failed {
            tracing::warn!("marketplace usage report not acknowledged after every try; dropped");
        }
    };
    loop {
        tokio::select! {
            report = rx.recv(), if flying.len() < IN_FLIGHT => match report {
                Some(r) => {
                    flying.spawn(deliver(r, settings, send.clone(), cancel.clone()));
                }
                None => break,
            },
            Some(joined) = flying.join_next() => done(joined.unwrap_or(Delivered::Unsent)),
            _ = cancel.cancelled() => break,
        }
    }
    rx.close();
    let flush = async {
        loop {
            tokio::select! {
                report = rx.recv(), if flying.len() < IN_FLIGHT => match report {
                    Some(r) => {
                        flying.spawn(deliver(r, settings, send.clone(), cancel.clone()));
                    }
                    None => {
                        while let Some(joined) = flying.join_next().await {
                            done(joined.unwrap_or(Delivered::Unsent));
                        }
                        return;
                    }
                },
                Some(joined) = flying.join_next() => done(joined.unwrap_or(Delivered::Unsent)),
            }
        }
    };
    if tokio::time::timeout(FLUSH, flush).await.is_err() {
        flying.abort_all();
        let mut left = flying.len();
        while rx.try_recv().is_ok() {
            left += 1;
        }
        for _ in 0..left {
            done(Delivered::Unsent);
        }
        tracing::warn!(
            unsent = left,
            "marketplace usage reports unsent at shutdown"
        );
    }
}

/// One report, tried until acknowledged, out of tries, or (after shutdown
/// began) tried once more.
async fn deliver<S, F>(
    report: UsageReport,
    settings: ReportSettings,
    send: S,
    cancel: CancellationToken,
) -> Delivered
where
    S: Fn(UsageReport) -> F,
    F: Future<Output = Attempt>,
{
    let mut pause = settings.backoff;
    let mut tries = 0;
    loop {
        let last = cancel.is_cancelled();
        let until = match send(report.clone()).await {
            Attempt::Sent => return Delivered::Sent,
            Attempt::Again { until } => until,
        };
        tries += 1;
        if last {
            return Delivered::Unsent;
        }
        if tries >= settings.attempts {
            return Delivered::Failed;
        }
        let wake = until
            .unwrap_or_else(Instant::now)
            .max(Instant::now() + pause);
        pause = (pause * 2).min(settings.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::protocol::UsageStatus;
    use std::sync::Mutex;

    fn report(id: &str) -> UsageReport {
        UsageReport {
            request_id: id.into(),
            quote_id: "q".into(),
            supply_id: "s".into(),
            model: "m".into(),
            prompt_tokens: Some(1),
            completion_tokens: Some(2),
            latency_ms: 3,
            status: UsageStatus::Ok,
        }
    }

    fn settings(queue: usize) -> ReportSettings {
        ReportSettings {
            queue,
            attempts: 4,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
        }
    }

    fn count(m: &Metrics, result: &str) -> f64 {
        let text = m.render();
        let line = format!("tollgate_marketplace_usage_reports_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// A `send` that fails `fails` times, then acknowledges; it records
    /// when each try came.
    fn flaky(
        fails: usize,
    ) -> (
        impl Fn(UsageReport) -> std::future::Ready<Attempt> + Clone,
        Arc<Mutex<Vec<Instant>>>,
    ) {
        let tries = Arc::new(Mutex::new(Vec::new()));
        let seen = tries.clone();
        let send = move |_r: UsageReport| {
            let mut t = seen.lock().unwrap();
            t.push(Instant::now());
            std::future::ready(if t.len() > fails {
                Attempt::Sent
            } else {
                Attempt::Again { until: None }
            })
        };
        (send, tries)
    }

    #[tokio::test(start_paused = true)]
    async fn tries_back_off_doubling_up_to_the_bound() {
        let metrics = Arc::new(Metrics::default());
        let (reports, rx) = Reports::new(&settings(8), metrics.clone());
        let (send, tries) = flaky(3);
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(run(rx, settings(8), metrics.clone(), send, cancel.clone()));
        reports.submit(report("a"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = tries.lock().unwrap().clone();
        assert_eq!(t.len(), 4, "three failures, then sent");
        let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert_eq!(gaps, [100, 200, 250]);
        assert_eq!(count(&metrics, "sent"), 1.0);
        assert_eq!(metrics.marketplace.reports_pending.get(), 0);
        cancel.cancel();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_out_of_tries_fails_and_a_full_queue_drops() {
        let metrics = Arc::new(Metrics::default());
        let (reports, rx) = Reports::new(&settings(1), metrics.clone());
        reports.submit(report("a"));
        reports.submit(report("b"));
        assert_eq!(count(&metrics, "dropped"), 1.0, "queue of one");
        let (send, tries) = flaky(usize::MAX);
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(run(rx, settings(1), metrics.clone(), send, cancel.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(tries.lock().unwrap().len(), 4);
        assert_eq!(count(&metrics, "failed"), 1.0);
        cancel.cancel();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_delays_the_next_try() {
        let metrics = Arc::new(Metrics::default());
        let (reports, rx) = Reports::new(&settings(8), metrics.clone());
        let open_until = Instant::now() + Duration::from_secs(30);
        let tries = Arc::new(Mutex::new(Vec::new()));
        let seen = tries.clone();
        let send = move |_r: UsageReport| {
            let mut t = seen.lock().unwrap();
            t.push(Instant::now());
            std::future::ready(if Instant::now() < open_until {
                Attempt::Again {
                    until: Some(open_until),
                }
            } else {
                Attempt::Sent
            })
        };
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(run(rx, settings(8), metrics.clone(), send, cancel.clone()));
        reports.submit(report("a"));
        tokio::time::sleep(Duration::from_secs(31)).await;
        let t = tries.lock().unwrap().clone();
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[1], open_until);
        cancel.cancel();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_each_report_one_last_try() {
        let metrics = Arc::new(Metrics::default());
        let (reports, rx) = Reports::new(&settings(8), metrics.clone());
        // Fails until shutdown, then acknowledges.
        let cancel = CancellationToken::new();
        let stopping = cancel.clone();
        let send = move |_r: UsageReport| {
            std::future::ready(if stopping.is_cancelled() {
                Attempt::Sent
            } else {
                Attempt::Again { until: None }
            })
        };
        for id in ["a", "b", "c", "d", "e", "f"] {
            reports.submit(report(id));
        }
        let worker = tokio::spawn(run(rx, settings(8), metrics.clone(), send, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        worker.await.unwrap();
        assert_eq!(count(&metrics, "sent"), 6.0);
        assert_eq!(metrics.marketplace.reports_pending.get(), 0);
    }
}
