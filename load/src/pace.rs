//! When each request starts: as soon as a worker is free (maximum
//! throughput), or on one fixed schedule shared by every worker.
//!
//! On a schedule, a request's latency is measured from the time it was
//! *due*, not from when a worker got round to sending it: a slow answer
//! delays the requests behind it, and that delay is counted (no coordinated
//! omission, as wrk2 and HdrHistogram's authors recommend).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The run's clock and schedule, shared by every worker.
#[derive(Clone)]
pub struct Pace {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// `None`: as fast as possible.
    interval: Option<Duration>,
    next: Arc<AtomicU64>,
}

/// One request's turn.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    /// When the request was due; on a schedule, in the past if the run is
    /// behind.
    pub due: Option<Instant>,
    /// Counted in the figures (after warm-up).
    pub measured: bool,
}

impl Pace {
    /// A run of `warmup + duration` from now; `rate` requests per second in
    /// total (0 = as fast as possible).
    pub fn new(rate: u64, warmup: Duration, duration: Duration) -> Pace {
        let start = Instant::now();
        Pace {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64)),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The next request's turn, or `None` once the run is over. On a
    /// schedule this waits until the request is due.
    pub async fn next(&self) -> Option<Turn> {
        match self.interval {
            None => {
                let now = Instant::now();
                (now < self.end).then_some(Turn {
                    due: None,
                    measured: now >= self.measure_from,
                })
            }
            Some(interval) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                let due = self.start + interval.mul_f64(i as f64);
                if due >= self.end {
                    return None;
                }
                tokio::time::sleep_until(due.into()).await;
                Some(Turn {
                    due: Some(due),
                    measured: due >= self.measure_from,
                })
            }
        }
    }

    /// The measured part of the run.
    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

impl Turn {
    /// Latency of a request sent at `sent` and answered now: from when it
    /// was due if it was scheduled.
    pub fn latency(&self, sent: Instant) -> Duration {
        self.due.unwrap_or(sent).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_schedule_hands_out_due_times_and_ends() {
        let pace = Pace::new(10, Duration::from_millis(200), Duration::from_millis(300));
        let mut turns = Vec::new();
        while let Some(t) = pace.next().await {
            turns.push(t);
        }
        assert_eq!(turns.len(), 5, "0.5 s at 10/s");
        assert_eq!(turns.iter().filter(|t| t.measured).count(), 3);
        assert!(turns.iter().all(|t| t.due.is_some()));
    }
}
