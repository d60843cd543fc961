//! A condition that repeats (a store that keeps failing, calls that keep
//! being rejected) is logged when it first happens and then at most once
//! per interval, each line saying how many occurrences went unlogged since
//! the one before: the log shows that it goes on, and how much, without a
//! line per request. Events that each deserve a line (a circuit opening
//! or closing) get a few lines per interval, and the rest one line with
//! their count. Lock-free: atomic compare-and-swaps decide which
//! occurrence writes a line.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The throttle for one repeated condition.
#[derive(Debug)]
pub struct Repeats {
    every_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` from which the next line may be written.
    next_ms: AtomicU64,
    /// Occurrences since the last line that were not logged.
    unlogged: AtomicU64,
}

impl Repeats {
    pub fn new(every: Duration) -> Repeats {
        Repeats {
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One occurrence: `Some(unlogged)` if this one is to be logged (with
    /// the count of those that were not since the last line), `None` if it
    /// is only counted.
    pub fn note(&self) -> Option<u64> {
        self.note_at(self.now_ms())
    }

    /// Starts a quiet interval now, forgetting what was counted: the next
    /// occurrence is logged one interval from now at the earliest.
    pub fn hold(&self) {
        self.hold_at(self.now_ms());
    }

    fn note_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.every_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::AcqRel));
        }
        self.unlogged.fetch_add(1, Ordering::AcqRel);
        None
    }

    /// The condition ended: the next occurrence is news again (logged at
    /// once). Returns the occurrences not logged since the last line, for
    /// a closing line.
    pub fn ended(&self) -> u64 {
        self.next_ms.store(0, Ordering::Release);
        self.unlogged.swap(0, Ordering::AcqRel)
    }

    fn hold_at(&self, now_ms: u64) {
        self.unlogged.store(0, Ordering::Release);
        self.next_ms
            .store(now_ms.saturating_add(self.every_ms), Ordering::Release);
    }
}

/// At most `lines` lines per interval for events that each deserve one;
/// past that, they are counted, and the count is logged once the interval
/// is over.
#[derive(Debug)]
pub struct LineBudget {
    every_ms: u64,
    lines: u32,
    epoch: Instant,
    window_start_ms: AtomicU64,
    used: AtomicU32,
    unlogged: AtomicU64,
}

impl LineBudget {
    pub fn new(every: Duration, lines: u32) -> LineBudget {
        LineBudget {
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            lines,
            epoch: Instant::now(),
            window_start_ms: AtomicU64::new(0),
            used: AtomicU32::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One event: whether it may have its line now.
    pub fn allow(&self) -> bool {
        self.allow_at(self.now_ms())
    }

    /// The number of events that went unlogged, once their interval is
    /// over (then they are reported once); `None` otherwise. Cheap enough
    /// to ask on every call.
    pub fn overdue(&self) -> Option<u64> {
        if self.unlogged.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.overdue_at(self.now_ms())
    }

    /// Starts a new interval at `now_ms` if the current one is over.
    fn roll(&self, now_ms: u64) -> bool {
        let start = self.window_start_ms.load(Ordering::Acquire);
        now_ms >= start.saturating_add(self.every_ms)
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn allow_at(&self, now_ms: u64) -> bool {
        if self.roll(now_ms) {
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) < self.lines {
            return true;
        }
        self.unlogged.fetch_add(1, Ordering::AcqRel);
        false
    }

    fn overdue_at(&self, now_ms: u64) -> Option<u64> {
        if !self.roll(now_ms) {
            return None;
        }
        // The report is this interval's first line.
        self.used.store(1, Ordering::Release);
        Some(self.unlogged.swap(0, Ordering::AcqRel)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_interval_then_one_with_the_count() {
        let b = LineBudget::new(Duration::from_secs(30), 4);
        let allowed = (0..100).filter(|i| b.allow_at(1000 + i)).count();
        assert_eq!(allowed, 4);
        assert_eq!(
            b.overdue_at(20_000),
            None,
            "not before the interval is over"
        );
        assert_eq!(b.overdue_at(30_001), Some(96));
        assert_eq!(b.overdue_at(90_000), None, "reported once");
        assert!(b.allow_at(90_001) && b.allow_at(90_002) && b.allow_at(90_003));
        assert!(
            !b.allow_at(90_004),
            "the report was one of the interval's lines"
        );
        assert_eq!(b.overdue_at(130_000), Some(1));
    }

    #[test]
    fn first_is_logged_then_one_line_per_interval_with_the_count() {
        let r = Repeats::new(Duration::from_secs(30));
        assert_eq!(r.note_at(0), Some(0), "the first occurrence is logged");
        for t in 1..1000 {
            assert_eq!(r.note_at(t * 10), None, "counted, not logged");
        }
        assert_eq!(r.note_at(29_999), None);
        assert_eq!(r.note_at(30_000), Some(1000), "the summary has the count");
        assert_eq!(r.note_at(30_001), None);
        assert_eq!(r.note_at(120_000), Some(1), "after a quiet spell, at once");
    }

    #[test]
    fn after_it_ended_the_next_one_is_news() {
        let r = Repeats::new(Duration::from_secs(30));
        assert_eq!(r.note_at(0), Some(0));
        r.note_at(5);
        r.note_at(6);
        assert_eq!(r.ended(), 2);
        assert_eq!(r.note_at(7), Some(0));
    }

    #[test]
    fn hold_starts_a_quiet_interval() {
        let r = Repeats::new(Duration::from_secs(30));
        assert_eq!(r.note_at(0), Some(0));
        r.note_at(5);
        r.hold_at(100_000);
        assert_eq!(r.note_at(100_001), None);
        assert_eq!(r.note_at(130_000), Some(1), "only what came after the hold");
    }

    #[test]
    fn one_line_among_threads() {
        let r = std::sync::Arc::new(Repeats::new(Duration::from_secs(3600)));
        let logged: u64 = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..1000).filter(|_| r.note().is_some()).count() as u64)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(logged, 1);
        assert_eq!(r.unlogged.load(Ordering::Acquire), 3999);
    }
}
