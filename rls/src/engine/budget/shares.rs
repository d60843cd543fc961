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

    // The rules of `adjust`, one per test, then those of the per-budget
    // bookkeeping around it (`Shares`).

    fn flex(priority: i64, share: f64, ratio: f64, load: f64) -> ClassRatio {
        ClassRatio {
            priority,
            share,
            ratio,
            flexible: true,
            load,
        }
    }

    fn fixed(share: f64, load: f64) -> ClassRatio {
        ClassRatio {
            flexible: false,
            ..flex(0, share, share, load)
        }
    }

    fn ratios_of(c: &[ClassRatio]) -> Vec<f64> {
        c.iter().map(|c| c.ratio).collect()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn a_class_at_exactly_the_low_load_does_not_lend() {
        let t = Tuning::default();
        let mut c = vec![flex(0, 0.5, 0.5, t.low_load), flex(0, 0.5, 0.5, 0.9)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.5, 0.5]);
    }

    #[test]
    fn a_class_at_exactly_the_high_load_does_not_borrow() {
        let t = Tuning::default();
        let mut c = vec![flex(0, 0.5, 0.5, 0.0), flex(0, 0.5, 0.5, t.high_load)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.5, 0.5]);
    }

    #[test]
    fn a_class_at_the_floor_lends_nothing() {
        let t = Tuning::default();
        let mut c = vec![flex(0, 0.5, t.floor, 0.0), flex(0, 0.5, 1.0 - t.floor, 0.9)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[t.floor, 1.0 - t.floor]);
    }

    #[test]
    fn a_donor_near_the_floor_lends_down_to_the_floor_and_no_further() {
        let t = Tuning::default();
        // 0.1 - 0.01 = 0.09 is less than a step of 0.2; wholly idle, it
        // gives all of it.
        let mut c = vec![flex(0, 0.5, 0.1, 0.0), flex(0, 0.5, 0.9, 0.9)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.01, 0.99]);
    }

    #[test]
    fn receivers_share_what_donors_give_in_proportion_to_their_load() {
        let t = Tuning::default();
        // The donor, at a load of 0.25, gives min(0.4 - 0.01, 0.2) × (1 -
        // 0.25) = 0.15; receivers at loads 0.8 and 1.6 take a third and two
        // thirds of it.
        let mut c = vec![
            flex(0, 0.4, 0.4, 0.25),
            flex(0, 0.3, 0.3, 0.8),
            flex(0, 0.3, 0.3, 1.6),
        ];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.25, 0.35, 0.4]);
    }

    #[test]
    fn fixed_classes_neither_lend_nor_borrow_nor_are_taken_from() {
        let t = Tuning::default();
        // An idle fixed class and a busy fixed class, beside an idle and a
        // busy flexible one: only the flexible ones move.
        let mut c = vec![
            fixed(0.3, 0.0),
            fixed(0.2, 0.95),
            flex(0, 0.25, 0.25, 0.0),
            flex(0, 0.25, 0.25, 0.9),
        ];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.3, 0.2, 0.05, 0.45]);
        // A busy high class below its share does not take from a lower
        // fixed class, even one whose ratio sits above its share.
        let mut c = vec![
            flex(10, 0.5, 0.3, 0.9),
            ClassRatio {
                priority: 1,
                ..fixed(0.2, 0.5)
            },
            flex(1, 0.3, 0.7, 0.5),
        ];
        c[1].ratio = 0.4;
        c[2].ratio = 0.3;
        adjust(&mut c, &t);
        assert!((c[1].ratio - 0.4).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn a_class_takes_back_only_up_to_its_share() {
        let t = Tuning::default();
        // High wants 0.05 back; low borrowed 0.25: only 0.05 moves.
        let mut c = vec![flex(10, 0.5, 0.45, 0.9), flex(1, 0.3, 0.55, 0.8)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.5, 0.5]);
    }

    #[test]
    fn a_class_gives_back_only_what_it_borrowed() {
        let t = Tuning::default();
        // High wants 0.3 back; low borrowed 0.05: only 0.05 moves.
        let mut c = vec![flex(10, 0.75, 0.45, 0.9), flex(1, 0.5, 0.55, 0.8)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.5, 0.5]);
    }

    #[test]
    fn a_lower_class_below_its_share_gives_nothing_back() {
        let t = Tuning::default();
        let mut c = vec![flex(10, 0.5, 0.45, 0.9), flex(1, 0.6, 0.55, 0.8)];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.45, 0.55]);
    }

    #[test]
    fn nothing_is_taken_back_from_an_equal_or_higher_priority() {
        let t = Tuning::default();
        let mut equal = vec![flex(5, 0.5, 0.3, 0.9), flex(5, 0.5, 0.7, 0.8)];
        adjust(&mut equal, &t);
        assert_close(&ratios_of(&equal), &[0.3, 0.7]);
        let mut higher = vec![flex(1, 0.5, 0.3, 0.9), flex(5, 0.5, 0.7, 0.8)];
        adjust(&mut higher, &t);
        assert_close(&ratios_of(&higher), &[0.3, 0.7]);
    }

    #[test]
    fn flexible_ratios_fill_what_the_fixed_classes_leave() {
        let t = Tuning::default();
        // Loads between low and high: nothing moves, only the scaling.
        let mut c = vec![
            fixed(0.5, 0.5),
            flex(0, 0.2, 0.2, 0.5),
            flex(0, 0.2, 0.1, 0.5),
        ];
        adjust(&mut c, &t);
        assert_close(&ratios_of(&c), &[0.5, 1.0 / 3.0, 1.0 / 6.0]);
        let mut all_fixed = vec![fixed(0.6, 0.5), fixed(0.5, 0.5), flex(0, 0.2, 0.2, 0.5)];
        adjust(&mut all_fixed, &t);
        assert_close(&ratios_of(&all_fixed), &[0.6, 0.5, 0.0]);
        let mut none = vec![fixed(0.5, 0.5), flex(0, 0.0, 0.0, 0.5)];
        adjust(&mut none, &t);
        assert_close(&ratios_of(&none), &[0.5, 0.0]);
    }

    proptest::proptest! {
        /// Whatever the loads, fixed ratios never move, flexible ones stay
        /// at or above zero and add up to what the fixed classes leave.
        #[test]
        fn adjust_keeps_fixed_shares_and_the_total(
            spec in proptest::collection::vec((0i64..3, 1u32..50, proptest::bool::weighted(0.7), 0.0f64..2.0), 1..6),
        ) {
            let total: u32 = spec.iter().map(|s| s.1).sum();
            let mut c: Vec<ClassRatio> = spec
                .iter()
                .map(|&(p, w, flexible, load)| {
                    let share = f64::from(w) / f64::from(total);
                    ClassRatio { priority: p, share, ratio: share, flexible, load }
                })
                .collect();
            let fixed_before: Vec<f64> = c.iter().filter(|c| !c.flexible).map(|c| c.ratio).collect();
            let fixed_sum: f64 = fixed_before.iter().sum();
            let t = Tuning::default();
            for _ in 0..5 {
                adjust(&mut c, &t);
                let fixed_now: Vec<f64> = c.iter().filter(|c| !c.flexible).map(|c| c.ratio).collect();
                proptest::prop_assert_eq!(&fixed_now, &fixed_before);
                let flexible: Vec<f64> = c.iter().filter(|c| c.flexible).map(|c| c.ratio).collect();
                proptest::prop_assert!(flexible.iter().all(|&r| r >= 0.0), "{:?}", c);
                if !flexible.is_empty() {
                    let sum: f64 = flexible.iter().sum();
                    proptest::prop_assert!((sum - (1.0 - fixed_sum)).abs() < 1e-9, "{:?}", c);
                }
            }
        }
    }

    #[test]
    fn caps_round_down_and_stay_within_one_and_the_amount() {
        assert_eq!(cap(100, 0.299), 29);
        assert_eq!(cap(100, 0.0), 1, "no class is shut out");
        assert_eq!(cap(10, 1.5), 10, "never above the limit");
        assert_eq!(cap(0, 0.5), 1);
    }

    // `Shares`: the bookkeeping that feeds `adjust`.

    const T: u64 = 1_000_000;
    const B: &str = "budget";

    fn named(name: &str, priority: i64, share: f64, flexible: bool) -> Class {
        Class {
            name: name.into(),
            priority,
            share: Some(share),
            flexible,
            max_wait: None,
            matchers: Vec::new(),
            default: false,
            source: "test:1".into(),
        }
    }

    /// Two flexible classes of equal priority, half each.
    fn halves() -> Classes {
        Classes(vec![named("a", 0, 0.5, true), named("b", 0, 0.5, true)])
    }

    const SLOTS: [(u64, Use); 1] = [(100, Use::Slots)];

    fn ratio(s: &Shares, classes: &Classes, name: &str, limits: &[(u64, Use)], now: u64) -> f64 {
        s.ratio(B, classes, classes.get(name).unwrap(), limits, now)
    }

    /// `b` holds `n` of its 50 slots; `a` holds none.
    fn b_in_flight(s: &Shares, classes: &Classes, n: usize, now: u64) {
        ratio(s, classes, "a", &SLOTS, now);
        for _ in 0..n {
            s.observed(B, classes, "b", &[(50, 0, 0)], true, now);
        }
    }

    #[test]
    fn ratios_move_once_five_seconds_have_passed_and_not_before() {
        let (s, c) = (Shares::default(), halves());
        b_in_flight(&s, &c, 45, T);
        assert_eq!(ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS - 1), 0.5);
        // b at 45/50 = 0.9 borrows; a, idle, lends a step of 0.2.
        let a = ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS);
        assert!((a - 0.3).abs() < 1e-9, "{a}");
        let b = ratio(&s, &c, "b", &SLOTS, T + ADJUST_EVERY_MS);
        assert!((b - 0.7).abs() < 1e-9, "{b}");
        let names: Vec<String> = s.ratios(B).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS + 1),
            a,
            "not again at once"
        );
    }

    #[test]
    fn ratios_move_after_ten_releases_and_not_before() {
        let (s, c) = (Shares::default(), halves());
        b_in_flight(&s, &c, 50, T);
        for _ in 0..ADJUST_EVERY_RELEASES - 1 {
            s.released(B, "a", T + 1);
        }
        assert_eq!(ratio(&s, &c, "a", &SLOTS, T + 2), 0.5);
        s.released(B, "a", T + 2);
        let a = ratio(&s, &c, "a", &SLOTS, T + 3);
        assert!((a - 0.3).abs() < 1e-9, "{a}");
    }

    #[test]
    fn a_release_frees_its_own_class_slot() {
        let (s, c) = (Shares::default(), halves());
        b_in_flight(&s, &c, 40, T);
        for _ in 0..ADJUST_EVERY_RELEASES {
            s.released(B, "b", T + 1);
        }
        // b is at 30/50 = 0.6 now: nobody borrows.
        assert_eq!(ratio(&s, &c, "a", &SLOTS, T + 2), 0.5);
        assert_eq!(ratio(&s, &c, "b", &SLOTS, T + 2), 0.5);
    }

    #[test]
    fn rate_use_counts_until_the_store_gives_it_back() {
        let limits = [(100, Use::Rate)];
        let c = halves();
        for (reset_after, moves) in [(ADJUST_EVERY_MS, false), (ADJUST_EVERY_MS + 1, true)] {
            let s = Shares::default();
            ratio(&s, &c, "a", &limits, T);
            // b used 45 of its 50 until `reset_after` from now.
            s.observed(B, &c, "b", &[(50, 5, reset_after)], false, T);
            let a = ratio(&s, &c, "a", &limits, T + ADJUST_EVERY_MS);
            assert_eq!(
                (a - 0.5).abs() > 1e-9,
                moves,
                "reset after {reset_after}: {a}"
            );
        }
    }

    #[test]
    fn waiting_requests_count_as_load_until_they_leave() {
        let c = halves();
        for (leave, moves) in [(false, true), (true, false)] {
            let s = Shares::default();
            ratio(&s, &c, "a", &SLOTS, T);
            s.waiting(B, &c, "b", &[40], true, T);
            if leave {
                s.waiting(B, &c, "b", &[40], false, T);
            }
            let a = ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS);
            assert_eq!((a - 0.5).abs() > 1e-9, moves, "left: {leave}: {a}");
        }
    }

    #[test]
    fn a_class_load_is_its_fullest_limit_in_use_and_waiting_over_its_cap() {
        let c = Classes(vec![
            named("d", 0, 0.4, true),
            named("r1", 0, 0.3, true),
            named("r2", 0, 0.3, true),
        ]);
        let limits = [(100, Use::Slots), (1_000, Use::Rate)];
        let s = Shares::default();
        s.ratio(B, &c, c.get("d").unwrap(), &limits, T);
        // r1: 10 slots + 5 waiting of 30; 60 tokens used + 200 waiting of 300.
        for _ in 0..10 {
            s.observed(B, &c, "r1", &[(30, 0, 0), (300, 240, 60_000)], true, T);
        }
        s.waiting(B, &c, "r1", &[5, 200], true, T);
        // r2: 27 slots of 30, no tokens.
        for _ in 0..27 {
            s.observed(B, &c, "r2", &[(30, 0, 0), (300, 300, 60_000)], true, T);
        }
        s.ratio(B, &c, c.get("d").unwrap(), &limits, T + ADJUST_EVERY_MS);
        let mut want = vec![
            flex(0, 0.4, 0.4, 0.0),
            flex(0, 0.3, 0.3, 260.0 / 300.0),
            flex(0, 0.3, 0.3, 27.0 / 30.0),
        ];
        adjust(&mut want, &Tuning::default());
        let got: Vec<f64> = s.ratios(B).into_iter().map(|(_, r)| r).collect();
        assert_close(&got, &ratios_of(&want));
    }

    #[test]
    fn each_class_gets_its_own_ratio_and_an_unknown_class_none() {
        let (s, c) = (Shares::default(), halves());
        b_in_flight(&s, &c, 45, T);
        let b = ratio(&s, &c, "b", &SLOTS, T + ADJUST_EVERY_MS);
        assert!((b - 0.7).abs() < 1e-9, "{b}");
        let stranger = named("x", 0, 0.5, true);
        assert_eq!(s.ratio(B, &c, &stranger, &SLOTS, T + ADJUST_EVERY_MS), 0.0);
        assert!(s.ratios("another budget").is_empty());
    }

    #[test]
    fn a_reload_that_changes_the_classes_or_the_limits_starts_over() {
        let c = halves();
        let moved = || {
            let s = Shares::default();
            b_in_flight(&s, &c, 45, T);
            ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS);
            s
        };
        let s = moved();
        let reshared = Classes(vec![named("a", 0, 0.4, true), named("b", 0, 0.6, true)]);
        assert_eq!(
            ratio(&s, &reshared, "a", &SLOTS, T + ADJUST_EVERY_MS + 1),
            0.4
        );
        let s = moved();
        let two = [(100, Use::Slots), (1_000, Use::Rate)];
        assert_eq!(ratio(&s, &c, "a", &two, T + ADJUST_EVERY_MS + 1), 0.5);
        let s = moved();
        let a = ratio(&s, &c, "a", &SLOTS, T + ADJUST_EVERY_MS + 1);
        assert!(
            (a - 0.3).abs() < 1e-9,
            "the same config keeps its ratios: {a}"
        );
    }

    #[test]
    fn an_idle_budget_is_forgotten_after_idle_ms_and_not_before() {
        let (s, c) = (Shares::default(), halves());
        ratio(&s, &c, "a", &SLOTS, T);
        s.sweep(T + 999, 1_000);
        assert_eq!(s.ratios(B).len(), 2);
        s.sweep(T + 1_000, 1_000);
        assert!(s.ratios(B).is_empty());
    }
}
