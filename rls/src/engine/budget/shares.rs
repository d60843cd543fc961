//! Class shares of a budget: each class may use its ratio of every limit of
//! a quota. A fixed class keeps its configured share. Flexible classes move
//! ratio between them by load, as in the seed design: a flexible class
//! below 30% load lends (at most 0.2 of the budget per step, scaled by how
//! idle it is, never below 0.01), one above 70% borrows in proportion to its
//! load, every 5 s or every 10 releases. A class that lent and is busy
//! again takes its share back from lower-priority classes that borrowed, so
//! a higher class is never starved by a lower one.
//!
//! Ratios are per instance and per budget (a quota and the request's values
//! of its keys), like the seed's job-type ratios: each instance balances
//! what it sees. The store enforces the caps they give, so whatever this
//! instance decides, no class ever takes more than the budget has.

use crate::rules::{Class, Classes};
use std::collections::HashMap;
use std::sync::Mutex;

/// The seed design's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Above this load a flexible class receives.
    pub high_load: f64,
    /// Below this load a flexible class donates.
    pub low_load: f64,
    /// Most ratio one donor gives in one step.
    pub max_step: f64,
    /// No flexible class goes below this ratio.
    pub floor: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            high_load: 0.7,
            low_load: 0.3,
            max_step: 0.2,
            floor: 0.01,
        }
    }
}

/// How often ratios move: every `ADJUST_EVERY_MS`, or after
/// `ADJUST_EVERY_RELEASES` settled reservations of the budget.
pub const ADJUST_EVERY_MS: u64 = 5_000;
pub const ADJUST_EVERY_RELEASES: u32 = 10;

/// One class's standing in one budget, the input and output of [`adjust`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassRatio {
    pub priority: i64,
    /// The configured share.
    pub share: f64,
    /// The ratio in force.
    pub ratio: f64,
    pub flexible: bool,
    /// Demand over what the ratio allows: in flight plus waiting, over the
    /// class's cap (above 1 when more wait than fit).
    pub load: f64,
}

/// One step of the donor/receiver algorithm over one budget's classes.
pub fn adjust(classes: &mut [ClassRatio], t: &Tuning) {
    let donors: Vec<usize> = (0..classes.len())
        .filter(|&i| {
            let c = &classes[i];
            c.flexible && c.load < t.low_load && c.ratio > t.floor
        })
        .collect();
    let receivers: Vec<usize> = (0..classes.len())
        .filter(|&i| classes[i].flexible && classes[i].load > t.high_load)
        .collect();
    if !donors.is_empty() && !receivers.is_empty() {
        let mut given = 0.0;
        for &d in &donors {
            let c = &mut classes[d];
            let contribution = (c.ratio - t.floor).min(t.max_step) * (1.0 - c.load);
            c.ratio -= contribution;
            given += contribution;
        }
        let total_load: f64 = receivers.iter().map(|&r| classes[r].load).sum();
        for &r in &receivers {
            classes[r].ratio += classes[r].load / total_load * given;
        }
    }
    // A busy class below its share takes it back from lower classes that
    // borrowed, even when nobody is idle enough to donate.
    let mut by_priority = receivers.clone();
    by_priority.sort_by_key(|&i| std::cmp::Reverse(classes[i].priority));
    for h in by_priority {
        for l in 0..classes.len() {
            let (hp, lp) = (classes[h].priority, classes[l].priority);
            if l == h || !classes[l].flexible || lp >= hp {
                continue;
            }
            let want = classes[h].share - classes[h].ratio;
            let lent = classes[l].ratio - classes[l].share;
            if want <= 0.0 {
                break;
            }
            let moved = want.min(lent).min(t.max_step);
            if moved > 0.0 {
                classes[l].ratio -= moved;
                classes[h].ratio += moved;
            }
        }
    }
    normalize(classes);
}

/// Flexible ratios are scaled to add up to what the fixed classes leave,
/// so rounding never drifts into a fixed share.
fn normalize(classes: &mut [ClassRatio]) {
    let fixed: f64 = classes
        .iter()
        .filter(|c| !c.flexible)
        .map(|c| c.ratio)
        .sum();
    let flexible: f64 = classes.iter().filter(|c| c.flexible).map(|c| c.ratio).sum();
    if flexible > 0.0 {
        let scale = (1.0 - fixed).max(0.0) / flexible;
        for c in classes.iter_mut().filter(|c| c.flexible) {
            c.ratio *= scale;
        }
    }
}

/// What a class may take of a limit of `amount` at `ratio`: at least one
/// unit, so no class is shut out entirely.
pub fn cap(amount: u64, ratio: f64) -> u64 {
    ((amount as f64 * ratio).floor() as u64).clamp(1, amount.max(1))
}

/// Per budget, per class: the ratio in force and what it is used for.
#[derive(Debug, Clone)]
struct ClassState {
    name: String,
    ratio: f64,
    /// Reservations of this class not settled yet (this instance's).
    in_flight: u64,
    /// Per limit of the quota: units in use as the store last said, until
    /// `resets_at_ms` (when a window or bucket has given them back).
    used: Vec<(u64, u64)>,
    /// Per limit: units asked by requests waiting in line.
    waiting: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Budget {
    classes: Vec<ClassState>,
    /// The configuration the ratios started from; a reload that changes
    /// it starts them over.
    configured: Vec<(String, f64, bool)>,
    releases: u32,
    adjusted_ms: u64,
    touched_ms: u64,
}

/// The ratios of every budget this instance has seen.
#[derive(Default)]
pub struct Shares {
    budgets: Mutex<HashMap<String, Budget>>,
    tuning: Tuning,
}

/// How a limit's use is counted: slots by the reservations in flight, rates
/// by what the store said until their window ends or bucket refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Slots,
    Rate,
}

fn configured(classes: &Classes) -> Vec<(String, f64, bool)> {
    classes
        .0
        .iter()
        .map(|c| (c.name.clone(), c.share.unwrap_or(0.0), c.flexible))
        .collect()
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Budget>> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        self.budgets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_class<T>(
        &self,
        budget: &str,
        classes: &Classes,
        class: &str,
        limits: usize,
        now_ms: u64,
        f: impl FnOnce(&mut Budget, usize, &Tuning) -> T,
    ) -> Option<T> {
        let mut budgets = self.lock();
        let wanted = configured(classes);
        let b = budgets
            .entry(budget.to_string())
            .or_insert_with(|| fresh(classes, limits, now_ms));
        if b.configured != wanted || b.classes.first().is_some_and(|c| c.used.len() != limits) {
            *b = fresh(classes, limits, now_ms);
        }
        b.touched_ms = now_ms;
        let i = b.classes.iter().position(|c| c.name == class)?;
        Some(f(b, i, &self.tuning))
    }

    /// The ratio `class` has of `budget` now, after moving the ratios if it
    /// is time to. `limits` are the quota's limits: amount and kind.
    pub fn ratio(
        &self,
        budget: &str,
        classes: &Classes,
        class: &Class,
        limits: &[(u64, Use)],
        now_ms: u64,
    ) -> f64 {
        self.with_class(
            budget,
            classes,
            &class.name,
            limits.len(),
            now_ms,
            |b, i, t| {
                if now_ms.saturating_sub(b.adjusted_ms) >= ADJUST_EVERY_MS
                    || b.releases >= ADJUST_EVERY_RELEASES
                {
                    rebalance(b, classes, limits, now_ms, t);
                }
                b.classes[i].ratio
            },
        )
        .unwrap_or(0.0)
    }

    /// What the store said of the class's counters after a take, per limit:
    /// (cap, units left, ms until they come back); `admitted` counts one
    /// more reservation in flight.
    pub fn observed(
        &self,
        budget: &str,
        classes: &Classes,
        class: &str,
        seen: &[(u64, u64, u64)],
        admitted: bool,
        now_ms: u64,
    ) {
        self.with_class(budget, classes, class, seen.len(), now_ms, |b, i, _| {
            let c = &mut b.classes[i];
            for (slot, &(cap, remaining, reset_after)) in c.used.iter_mut().zip(seen) {
                *slot = (cap.saturating_sub(remaining), now_ms + reset_after);
            }
            if admitted {
                c.in_flight += 1;
            }
        });
    }

    /// A reservation of `class` settled: one fewer in flight.
    pub fn released(&self, budget: &str, class: &str, now_ms: u64) {
        if let Some(b) = self.lock().get_mut(budget) {
            b.releases += 1;
            b.touched_ms = now_ms;
            if let Some(c) = b.classes.iter_mut().find(|c| c.name == class) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }

    /// Adds (`adding`) or removes a waiting request's costs, per limit.
    pub fn waiting(
        &self,
        budget: &str,
        classes: &Classes,
        class: &str,
        costs: &[u64],
        adding: bool,
        now_ms: u64,
    ) {
        self.with_class(budget, classes, class, costs.len(), now_ms, |b, i, _| {
            for (w, cost) in b.classes[i].waiting.iter_mut().zip(costs) {
                *w = if adding {
                    w.saturating_add(*cost)
                } else {
                    w.saturating_sub(*cost)
                };
            }
        });
    }

    /// Forgets budgets nobody used for `idle_ms`.
    pub fn sweep(&self, now_ms: u64, idle_ms: u64) {
        self.lock()
            .retain(|_, b| now_ms.saturating_sub(b.touched_ms) < idle_ms);
    }

    /// The ratios in force for a budget, by class name (for tests and the
    /// admin page).
    pub fn ratios(&self, budget: &str) -> Vec<(String, f64)> {
        self.lock()
            .get(budget)
            .map(|b| {
                b.classes
                    .iter()
                    .map(|c| (c.name.clone(), c.ratio))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn fresh(classes: &Classes, limits: usize, now_ms: u64) -> Budget {
    Budget {
        classes: classes
            .0
            .iter()
            .map(|c| ClassState {
                name: c.name.clone(),
                ratio: c.share.unwrap_or(0.0),
                in_flight: 0,
                used: vec![(0, 0); limits],
                waiting: vec![0; limits],
            })
            .collect(),
        configured: configured(classes),
        releases: 0,
        adjusted_ms: now_ms,
        touched_ms: now_ms,
    }
}

/// Computes each class's load (the fullest of its limits: in use plus
/// waiting, over its cap) and moves the ratios one step.
fn rebalance(b: &mut Budget, classes: &Classes, limits: &[(u64, Use)], now_ms: u64, t: &Tuning) {
    let mut ratios: Vec<ClassRatio> = b
        .classes
        .iter()
        .filter_map(|s| {
            let c = classes.get(&s.name)?;
            let load = limits
                .iter()
                .zip(&s.used)
                .zip(&s.waiting)
                .map(|((&(amount, kind), &(used, until)), &waiting)| {
                    let used = match kind {
                        Use::Slots => s.in_flight,
                        Use::Rate if now_ms >= until => 0,
                        Use::Rate => used,
                    };
                    (used + waiting) as f64 / cap(amount, s.ratio) as f64
                })
                .fold(0.0, f64::max);
            Some(ClassRatio {
                priority: c.priority,
                share: c.share.unwrap_or(0.0),
                ratio: s.ratio,
                flexible: c.flexible,
                load,
            })
        })
        .collect();
    if ratios.len() == b.classes.len() {
        adjust(&mut ratios, t);
        for (s, r) in b.classes.iter_mut().zip(&ratios) {
            s.ratio = r.ratio;
        }
    }
    b.adjusted_ms = now_ms;
    b.releases = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(priority: i64, share: f64, flexible: bool, in_flight: f64) -> ClassRatio {
        ClassRatio {
            priority,
            share,
            ratio: share,
            flexible,
            // Of 100 slots, the class has floor(100 * share).
            load: in_flight / (100.0 * share).floor(),
        }
    }

    #[test]
    fn the_seed_example() {
        // Shares 0.3/0.4/0.3 of 100 slots; 5 and 38 in flight; the third
        // is fixed.
        let mut c = vec![
            class(0, 0.3, true, 5.0),
            class(0, 0.4, true, 38.0),
            class(0, 0.3, false, 0.0),
        ];
        adjust(&mut c, &Tuning::default());
        let r: Vec<f64> = c
            .iter()
            .map(|c| (c.ratio * 10_000.0).round() / 10_000.0)
            .collect();
        assert_eq!(r, vec![0.1333, 0.5667, 0.3]);
    }

    #[test]
    fn nothing_moves_without_both_a_donor_and_a_receiver() {
        let mut busy = vec![class(0, 0.5, true, 45.0), class(0, 0.5, true, 40.0)];
        adjust(&mut busy, &Tuning::default());
        assert_eq!(busy[0].ratio, 0.5);
        let mut idle = vec![class(0, 0.5, true, 1.0), class(0, 0.5, true, 2.0)];
        adjust(&mut idle, &Tuning::default());
        assert_eq!(idle[1].ratio, 0.5);
    }

    #[test]
    fn a_donor_never_goes_below_the_floor_and_steps_are_bounded() {
        let t = Tuning::default();
        let mut c = vec![class(0, 0.5, true, 0.0), class(0, 0.5, true, 50.0)];
        for _ in 0..20 {
            c[1].load = 1.0;
            c[0].load = 0.0;
            let before = c[0].ratio;
            adjust(&mut c, &t);
            assert!(before - c[0].ratio <= t.max_step + 1e-9);
            assert!(c[0].ratio >= t.floor - 1e-9);
            assert!((c[0].ratio + c[1].ratio - 1.0).abs() < 1e-9);
        }
        assert!((c[0].ratio - t.floor).abs() < 1e-9);
    }

    #[test]
    fn a_higher_class_takes_back_what_a_lower_one_borrowed() {
        let t = Tuning::default();
        // High lent almost everything while idle; now both are busy, so
        // nobody donates, yet high gets its share back step by step.
        let mut c = vec![
            ClassRatio {
                priority: 10,
                share: 0.5,
                ratio: 0.01,
                flexible: true,
                load: 5.0,
            },
            ClassRatio {
                priority: 1,
                share: 0.5,
                ratio: 0.99,
                flexible: true,
                load: 0.9,
            },
        ];
        let mut steps = 0;
        while c[0].ratio < 0.5 - 1e-9 {
            adjust(&mut c, &t);
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(steps, 3, "0.2 per step: 0.21, 0.41, 0.5");
        assert!((c[1].ratio - 0.5).abs() < 1e-9);
        adjust(&mut c, &t);
        assert!((c[0].ratio - 0.5).abs() < 1e-9, "not beyond its share");
    }

    #[test]
    fn caps_are_at_least_one() {
        assert_eq!(cap(100, 0.3), 30);
        assert_eq!(cap(20, 0.01), 1);
        assert_eq!(cap(5, 1.0), 5);
    }
}
