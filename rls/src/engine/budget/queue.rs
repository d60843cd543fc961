//! Wait lines: requests that found no capacity wait here, one line per
//! counter that said no, in priority order and, within a priority, in
//! arrival order.
//!
//! Only the head of a line asks the store again; everyone else sleeps until
//! they become the head. The head is woken exactly when capacity may exist:
//! a reservation on the counter settled (here, or on another instance via
//! the store's announcements), the head ahead of it left, or its own timer
//! (the store's `retry_after`: the window's end, the bucket's refill) fired.
//! Nothing polls. A ticket leaves its line when it is dropped, so a waiter
//! whose client went away can never hold up the line.
//!
//! The lines are a `std::sync::Mutex` over a map: every critical section
//! is a few map operations and never crosses an `.await`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A waiter's place: higher priority first, then earlier arrival.
type Place = (Reverse<i64>, u64);

/// Every wait line of this instance, by the key of the counter waited on.
#[derive(Default)]
pub struct WaitLines {
    lines: Mutex<HashMap<String, BTreeMap<Place, Arc<Notify>>>>,
    arrivals: AtomicU64,
}

impl WaitLines {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, BTreeMap<Place, Arc<Notify>>>> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new waiter of this priority, not yet in any line. Its arrival
    /// order is fixed now and kept when it moves between lines.
    pub fn ticket(self: &Arc<Self>, priority: i64) -> Ticket {
        Ticket {
            lines: self.clone(),
            place: (
                Reverse(priority),
                self.arrivals.fetch_add(1, Ordering::Relaxed),
            ),
            line: None,
            notify: Arc::new(Notify::new()),
        }
    }

    /// The first of `keys` whose line holds a waiter this priority must not
    /// overtake (same or higher priority): a newcomer queues behind them
    /// rather than taking capacity freed for them.
    pub fn line_ahead<'k>(&self, keys: &'k [String], priority: i64) -> Option<&'k str> {
        let lines = self.lock();
        keys.iter().map(String::as_str).find(|k| {
            lines
                .get(*k)
                .and_then(|l| l.keys().next())
                .is_some_and(|(Reverse(p), _)| *p >= priority)
        })
    }

    /// Capacity may have been freed on this counter: wake its head.
    pub fn wake(&self, key: &str) {
        if let Some(n) = self.lock().get(key).and_then(|l| l.values().next()) {
            // A permit is stored if the head is not sleeping yet, so a wake
            // between its check and its sleep is never lost.
            n.notify_one();
        }
    }

    /// Waiters in all lines (for the metric and tests).
    pub fn waiting(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    /// Waiters in one line.
    pub fn len(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, BTreeMap::len)
    }
}

/// One waiting request's place. Dropping it leaves the line and, if it was
/// the head, wakes the next one.
pub struct Ticket {
    lines: Arc<WaitLines>,
    place: Place,
    line: Option<String>,
    notify: Arc<Notify>,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Capacity may exist (or this ticket became the head).
    Notified,
    /// The timer passed to [`Ticket::wait`] fired.
    Timer,
}

impl Ticket {
    /// Moves into the line of `key` (leaving any other line first).
    pub fn join(&mut self, key: &str) {
        if self.line.as_deref() == Some(key) {
            return;
        }
        self.leave();
        self.lines
            .lock()
            .entry(key.to_string())
            .or_default()
            .insert(self.place, self.notify.clone());
        self.line = Some(key.to_string());
    }

    /// The line this ticket is in.
    pub fn line(&self) -> Option<&str> {
        self.line.as_deref()
    }

    /// Whether this ticket is first in its line (or in none).
    pub fn is_head(&self) -> bool {
        let Some(key) = &self.line else {
            return true;
        };
        self.lines
            .lock()
            .get(key)
            .and_then(|l| l.keys().next())
            .is_none_or(|first| *first == self.place)
    }

    /// Sleeps until woken or `until`.
    pub async fn wait(&self, until: Instant) -> Woken {
        tokio::select! {
            _ = self.notify.notified() => Woken::Notified,
            _ = tokio::time::sleep_until(until) => Woken::Timer,
        }
    }

    /// Leaves the current line; the next waiter, if this was the head,
    /// becomes the head and is woken to ask the store itself.
    pub fn leave(&mut self) {
        let Some(key) = self.line.take() else {
            return;
        };
        let mut lines = self.lines.lock();
        let Some(line) = lines.get_mut(&key) else {
            return;
        };
        let was_head = line.keys().next() == Some(&self.place);
        line.remove(&self.place);
        match line.values().next() {
            Some(next) if was_head => next.notify_one(),
            Some(_) => {}
            None => {
                lines.remove(&key);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(20)
    }

    #[tokio::test]
    async fn priority_first_then_arrival_order() {
        let lines = Arc::new(WaitLines::default());
        let mut a = lines.ticket(0);
        let mut b = lines.ticket(0);
        let mut c = lines.ticket(5);
        a.join("k");
        b.join("k");
        assert!(a.is_head() && !b.is_head());
        c.join("k");
        assert!(c.is_head(), "a higher priority goes first");
        assert!(!a.is_head());
        assert_eq!(lines.line_ahead(&["k".into()], 5), Some("k"));
        assert_eq!(lines.line_ahead(&["k".into()], 6), None, "only lower ahead");
        drop(c);
        assert!(a.is_head(), "then arrival order");
        assert_eq!(
            a.wait(soon()).await,
            Woken::Notified,
            "the new head is woken"
        );
        assert_eq!(b.wait(soon()).await, Woken::Timer, "the others sleep on");
        drop(a);
        assert_eq!(b.wait(soon()).await, Woken::Notified);
        b.leave();
        assert_eq!(lines.waiting(), 0, "an empty line is removed");
    }

    #[tokio::test]
    async fn a_wake_before_the_sleep_is_not_lost() {
        let lines = Arc::new(WaitLines::default());
        let mut a = lines.ticket(0);
        a.join("k");
        lines.wake("k");
        assert_eq!(a.wait(soon()).await, Woken::Notified);
        lines.wake("other");
        assert_eq!(a.wait(soon()).await, Woken::Timer);
    }

    #[tokio::test]
    async fn moving_lines_keeps_arrival_order_and_wakes_the_next() {
        let lines = Arc::new(WaitLines::default());
        let mut a = lines.ticket(0);
        let mut b = lines.ticket(0);
        b.join("y");
        a.join("x");
        let mut c = lines.ticket(0);
        c.join("x");
        a.join("y");
        assert!(a.is_head(), "a arrived before b, so it goes first in y too");
        assert_eq!(c.wait(soon()).await, Woken::Notified, "c heads x now");
        assert_eq!(lines.len("x"), 1);
        assert_eq!(lines.len("y"), 2);
    }
}
