//! Conditions that repeat on every request (the store is down, a config
//! stays broken) are logged once, then at most once per interval with how
//! many times they happened meanwhile: an operator sees the first
//! occurrence at once and a count after, never a line per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a repeating condition is summarised by default.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One repeating condition.
#[derive(Debug)]
pub struct Repeated {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    /// Occurrences since the last line.
    unlogged: u64,
}

/// Whether an occurrence is to be logged, and how many went unlogged
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// Log it; `since` occurrences were counted but not logged since the
    /// previous line (0 for the first).
    Log { since: u64 },
    /// Counted; the next summary says so.
    Counted,
}

impl Default for Repeated {
    fn default() -> Self {
        Repeated::every(SUMMARY_EVERY)
    }
}

impl Repeated {
    pub fn every(every: Duration) -> Repeated {
        Repeated {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// Records one occurrence now.
    pub fn occurred(&self) -> Occurrence {
        self.occurred_at(Instant::now())
    }

    fn occurred_at(&self, now: Instant) -> Occurrence {
        // A poisoned lock only means a panic elsewhere; the counts are
        // still usable.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = s
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= self.every);
        if due {
            let since = std::mem::take(&mut s.unlogged);
            s.last_logged = Some(now);
            Occurrence::Log { since }
        } else {
            s.unlogged += 1;
            Occurrence::Counted
        }
    }

    /// The condition ended: the next occurrence is logged at once. Returns
    /// the occurrences not yet logged, for a closing line.
    pub fn ended(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.last_logged = None;
        std::mem::take(&mut s.unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_one_summary_per_interval() {
        let r = Repeated::every(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.occurred_at(t0), Occurrence::Log { since: 0 });
        for ms in [1, 500, 9_999] {
            assert_eq!(
                r.occurred_at(t0 + Duration::from_millis(ms)),
                Occurrence::Counted
            );
        }
        assert_eq!(
            r.occurred_at(t0 + Duration::from_secs(10)),
            Occurrence::Log { since: 3 }
        );
        assert_eq!(
            r.occurred_at(t0 + Duration::from_secs(11)),
            Occurrence::Counted
        );
        assert_eq!(r.ended(), 1);
        assert_eq!(
            r.occurred_at(t0 + Duration::from_secs(12)),
            Occurrence::Log { since: 0 },
            "after it ended, the next one is news again"
        );
    }
}
