//! Soft limits: a quota's `warn_at` is a fraction of each of its rate and
//! spend limits; the reservation that carries a counter across it is
//! logged and counted, once per window and key.
//!
//! "Carries across" is decided from the store's answer (used after the
//! take at or above the threshold, used before it below), so across
//! instances sharing a store only one reservation sees the crossing. A
//! refund that drops the counter back under the line and a later take that
//! crosses again would count twice; the set of crossings seen here keeps
//! that to once per instance.

use super::plan::Part;
use crate::engine::plan::Plan;
use crate::metrics::Metrics;
use crate::store::{keys, Counter, HitState};
use std::collections::HashMap;
use std::sync::Mutex;

/// Crossings seen by this instance beyond which old windows are dropped.
const REMEMBERED: usize = 10_000;

/// The soft-limit crossings this instance has reported, by window key.
#[derive(Default)]
pub struct SoftLimits {
    /// Window key → its window's end (ms), to forget it after.
    seen: Mutex<HashMap<String, u64>>,
}

impl SoftLimits {
    /// Reports each counter of an admitted plan that this take carried
    /// across its quota's `warn_at`.
    pub(crate) fn observe(
        &self,
        m: &Metrics,
        currency: &str,
        hits: &Plan<Part<'_>>,
        states: &[HitState],
        now: u64,
    ) {
        for (hit, part, st) in hits.with_states(states) {
            let Some(warn_at) = part.quota.warn_at else {
                continue;
            };
            // The quota's own counter only: a class share is not a budget
            // anyone allocated.
            let Counter::Rate(limit) = hit.counter else {
                continue;
            };
            if part.class_cap.is_some() || !crossed(limit.amount, warn_at, st.remaining, hit.cost) {
                continue;
            }
            let (_, end) = limit.window(now);
            if !self.first(keys::counter_key(&hit.key, &hit.counter, now), end, now) {
                continue;
            }
            let field = part.limit.field();
            m.quota_warning(&part.quota.name, &field);
            tracing::warn!(
                quota = %part.quota.name,
                limit = %part.limit.describe(currency),
                warn_at,
                used = limit.amount.saturating_sub(st.remaining),
                resets_in_s = end.saturating_sub(now) / 1000,
                "quota passed its warn_at",
            );
        }
    }

    /// Whether this window's crossing is new here; remembers it.
    fn first(&self, window_key: String, end: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REMEMBERED {
            seen.retain(|_, e| *e > now);
        }
        if seen.len() >= REMEMBERED {
            // Still full of live windows: forget them all rather than grow.
            seen.clear();
        }
        seen.insert(window_key, end).is_none()
    }
}

/// Whether taking `cost` carried a counter of `amount` (with `remaining`
/// left after the take) from below `warn_at × amount` to at or above it.
fn crossed(amount: u64, warn_at: f64, remaining: u64, cost: u64) -> bool {
    let threshold = (amount as f64 * warn_at).ceil() as u64;
    let after = amount.saturating_sub(remaining);
    let before = after.saturating_sub(cost);
    before < threshold && after >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_take_that_crosses_the_line_counts() {
        // 80% of 100 is 80.
        assert!(!crossed(100, 0.8, 30, 10), "60 → 70");
        assert!(crossed(100, 0.8, 20, 10), "70 → 80");
        assert!(crossed(100, 0.8, 15, 20), "65 → 85");
        assert!(!crossed(100, 0.8, 10, 10), "80 → 90: already over");
        assert!(crossed(100, 0.8, 0, 100), "0 → 100");
        assert!(!crossed(100, 0.8, 100, 0), "nothing taken");
        // The threshold rounds up: 80% of 7 is 5.6, so 6.
        assert!(!crossed(7, 0.8, 2, 1), "4 → 5");
        assert!(crossed(7, 0.8, 1, 1), "5 → 6");
    }

    #[test]
    fn a_window_is_reported_once_and_forgotten_after_it_ends() {
        let s = SoftLimits::default();
        assert!(s.first("k:1".into(), 100, 0));
        assert!(!s.first("k:1".into(), 100, 50));
        assert!(s.first("k:2".into(), 200, 150));
        {
            let mut seen = s.seen.lock().unwrap();
            for i in 0..REMEMBERED {
                seen.insert(format!("old:{i}"), 100);
            }
        }
        assert!(s.first("k:3".into(), 300, 250));
        let seen = s.seen.lock().unwrap();
        assert!(seen.len() < 10, "ended windows dropped: {}", seen.len());
    }
}
