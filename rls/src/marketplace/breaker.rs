//! The marketplace's own circuit breaker, apart from the store's: after
//! `failures` consecutive failures it opens and no call is made for
//! `open_for`; then one call at a time goes out as a probe, and its
//! success closes it (its failure opens it again). Biases towards
//! answering the client's 429 at once over asking a marketplace that is
//! probably down.
//!
//! One `std::sync::Mutex` over the phase: held for a comparison and an
//! assignment, never across an `.await` (a call holds a [`Permit`], not
//! the lock).

use super::settings::BreakerSettings;
use std::sync::Mutex;
use tokio::time::Instant;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls go out; this many failed in a row.
    Closed { failures: u32 },
    /// No call until `until`.
    Open { until: Instant },
    /// The open period is over and one probe is out: no other call.
    Probing,
}

/// The state as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

/// Counts failures and refuses calls while open.
#[derive(Debug)]
pub struct Breaker {
    phase: Mutex<Phase>,
    settings: BreakerSettings,
}

/// Leave to make one call. Say how it went with [`Permit::succeeded`] or
/// [`Permit::failed`]; dropped without either (the request went away
/// mid-call) it counts as neither, and a probe's turn passes to the next
/// call.
#[derive(Debug)]
#[must_use = "say how the call went"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is always whole (one assignment): a panic elsewhere
        // cannot leave it half written.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit to call, or `None` while open (or while the one probe is
    /// out): then no call is made.
    pub fn try_call(&self) -> Option<Permit<'_>> {
        let mut phase = self.lock();
        let probe = match *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() >= until => {
                *phase = Phase::Probing;
                true
            }
            Phase::Open { .. } | Phase::Probing => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// The state now (an open breaker whose period is over, with no probe
    /// out yet, is still open: the next call probes).
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::Probing => BreakerState::HalfOpen,
        }
    }

    /// When a call may next go out, while open.
    pub fn open_until(&self) -> Option<Instant> {
        match *self.lock() {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    fn settle(&self, probe: bool, ok: bool) -> Option<Change> {
        let mut phase = self.lock();
        let open = Phase::Open {
            until: Instant::now() + self.settings.open_for,
        };
        match (*phase, probe, ok) {
            (Phase::Probing, true, true) => {
                *phase = Phase::Closed { failures: 0 };
                Some(Change::Closed)
            }
            (Phase::Probing, true, false) => {
                *phase = open;
                Some(Change::Opened)
            }
            (Phase::Closed { .. }, false, true) => {
                *phase = Phase::Closed { failures: 0 };
                None
            }
            (Phase::Closed { failures }, false, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failures {
                    *phase = open;
                    Some(Change::Opened)
                } else {
                    *phase = Phase::Closed { failures };
                    None
                }
            }
            // A call that went out before the breaker opened ends while it
            // is open or probing: the probe decides, not a late answer.
            _ => None,
        }
    }
}

impl Permit<'_> {
    /// Whether this is the one call of a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The marketplace answered as the protocol says (a refusal for policy
    /// included).
    pub fn succeeded(mut self) -> Option<Change> {
        self.settled = true;
        self.breaker.settle(self.probe, true)
    }

    /// The marketplace failed: an error status, a timeout, no connection,
    /// an answer that is not the protocol's.
    pub fn failed(mut self) -> Option<Change> {
        self.settled = true;
        self.breaker.settle(self.probe, false)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut phase = self.breaker.lock();
            if *phase == Phase::Probing {
                *phase = Phase::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            open_for: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn three_failures_open_it_for_the_period_then_one_probe_closes_it() {
        let b = breaker();
        assert_eq!(b.try_call().unwrap().failed(), None);
        assert_eq!(b.try_call().unwrap().failed(), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.try_call().unwrap().failed(), Some(Change::Opened));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_call().is_none(), "open: no call");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_call().is_none(), "still open at 29 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.try_call().expect("the probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_call().is_none(), "one probe at a time");
        assert_eq!(probe.succeeded(), Some(Change::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_call().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_a_whole_period() {
        let b = breaker();
        for _ in 0..3 {
            let _ = b.try_call().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.try_call().unwrap().failed(), Some(Change::Opened));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_call().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_call().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breaker();
        let _ = b.try_call().unwrap().failed();
        let _ = b.try_call().unwrap().failed();
        let _ = b.try_call().unwrap().succeeded();
        let _ = b.try_call().unwrap().failed();
        let _ = b.try_call().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Closed, "not three in a row");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unanswered_hands_the_turn_on() {
        let b = breaker();
        for _ in 0..3 {
            let _ = b.try_call().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(b.try_call().expect("probe"));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_call().is_some(), "the next call probes");
    }

    #[tokio::test(start_paused = true)]
    async fn late_answers_do_not_move_an_open_breaker() {
        let b = breaker();
        let late = b.try_call().unwrap();
        for _ in 0..3 {
            let _ = b.try_call().unwrap().failed();
        }
        assert_eq!(late.succeeded(), None);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
