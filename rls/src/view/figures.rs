//! One counter's figures at a moment: used, limit, remaining and reset,
//! from the state the store holds, by the same arithmetic that decides
//! (`store::arith`, asked to check a cost of 0): whatever a window, a
//! bucket or a period means there, it means here.

use crate::rules::format_micros;
use crate::rules::Limit;
use crate::store::arith::{self, Cell};
use crate::store::Counter;
use serde::Serialize;

/// A counter's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// Taken in the current window, or the bucket's missing level (debt
    /// included), or slots held; reservations in flight included.
    /// `None` for a class share's bucket, whose size is not in the config.
    pub used: Option<u64>,
    /// Of `used`, what reservations in flight hold (not yet settled).
    pub reserved: u64,
    /// `used` less `reserved`: settled, or taken for good.
    pub spent: Option<u64>,
    /// `None` for a class share: its size is the class's ratio of the
    /// limit, set by each instance as load moves.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Until the window ends or the bucket is full again; `None` for
    /// slots (they free when requests end).
    pub reset_after_ms: Option<u64>,
    pub reset_unix_ms: Option<u64>,
    /// A money budget's figures (the ones above are micro-units) as
    /// decimals of the currency, for a person: `1.25`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub money: Option<Money>,
}

/// A money counter's figures as decimals of the currency
/// (`rules::price::format_micros`), as tollgate's 429 names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Money {
    pub used: Option<String>,
    pub reserved: String,
    pub spent: Option<String>,
    pub limit: Option<String>,
    pub remaining: Option<String>,
}

impl Figures {
    /// The same figures, with their decimals of the currency beside them.
    pub fn in_money(mut self) -> Figures {
        let m = |n: Option<u64>| n.map(format_micros);
        self.money = Some(Money {
            used: m(self.used),
            reserved: format_micros(self.reserved),
            spent: m(self.spent),
            limit: m(self.limit),
            remaining: m(self.remaining),
        });
        self
    }
}

/// The figures of `counter` holding `cell` (`None`: no key, nothing
/// taken yet), of which `reserved` is held by reservations.
pub fn of(counter: &Counter, cell: Option<&Cell>, reserved: u64, now_ms: u64) -> Figures {
    let (used, limit, remaining, reset) = match counter {
        Counter::Rate(limit) => {
            let o = arith::hit(limit, cell, 0, false, now_ms);
            let used = match &o.cell {
                Cell::Window { count } => *count,
                Cell::Bucket { level, .. } => bucket_used(limit, *level),
                _ => limit.amount.saturating_sub(o.state.remaining),
            };
            (
                used,
                limit.amount,
                o.state.remaining,
                Some(o.state.reset_after_ms),
            )
        }
        Counter::Slots { max } => {
            let o = arith::slots_hit(*max, cell, 0, false, "", now_ms, now_ms);
            let held = match &o.cell {
                Cell::Slots(holders) => holders.len() as u64,
                _ => 0,
            };
            (held, *max, o.state.remaining, None)
        }
    };
    let reserved = reserved.min(used);
    Figures {
        used: Some(used),
        reserved,
        spent: Some(used - reserved),
        limit: Some(limit),
        remaining: Some(remaining),
        reset_after_ms: reset,
        reset_unix_ms: reset.map(|r| now_ms.saturating_add(r)),
        money: None,
    }
}

/// A class share's figures: what can be told without its size (a
/// window's count, the slots held; a bucket's level means nothing
/// without its capacity). No cell: nothing taken.
pub fn of_share(counter: &Counter, cell: Option<&Cell>, reserved: u64, now_ms: u64) -> Figures {
    let (used, reset) = match (counter, cell) {
        (_, None) => (Some(0), None),
        (Counter::Rate(limit), Some(cell @ Cell::Window { count })) => {
            let o = arith::hit(limit, Some(cell), 0, false, now_ms);
            (Some(*count), Some(o.state.reset_after_ms))
        }
        (Counter::Slots { .. }, Some(Cell::Slots(holders))) => (
            Some(holders.values().filter(|d| **d > now_ms).count() as u64),
            None,
        ),
        _ => (None, None),
    };
    let reserved = used.map_or(reserved, |u| reserved.min(u));
    Figures {
        used,
        reserved,
        spent: used.map(|u| u - reserved),
        limit: None,
        remaining: None,
        reset_after_ms: reset,
        reset_unix_ms: reset.map(|r| now_ms.saturating_add(r)),
        money: None,
    }
}

/// What a bucket at scaled `level` is missing of its amount, in whole
/// units: a debt (negative level, after an overage) counts past the limit.
fn bucket_used(limit: &Limit, level: i64) -> u64 {
    let amount = limit.amount;
    let ticks = i64::try_from(limit.period.ticks())
        .unwrap_or(i64::MAX)
        .max(1);
    let whole = level.div_euclid(ticks);
    if whole >= 0 {
        amount.saturating_sub(whole as u64)
    } else {
        amount.saturating_add(whole.unsigned_abs())
    }
}

/// How full a counter is, for ranking keys: used over limit.
pub fn fill(f: &Figures) -> f64 {
    match (f.used, f.limit) {
        (Some(u), Some(l)) if l > 0 => u as f64 / l as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Algorithm, Period};
    use std::collections::BTreeMap;

    const T: u64 = 1_800_000_000_000 + 15_000;

    #[test]
    fn a_window() {
        let l = Limit {
            amount: 10,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
            zone: crate::rules::Zone::Utc,
        };
        let f = of(&Counter::Rate(l), Some(&Cell::Window { count: 4 }), 3, T);
        assert_eq!(
            (f.used, f.reserved, f.spent, f.limit, f.remaining),
            (Some(4), 3, Some(1), Some(10), Some(6))
        );
        assert_eq!(f.reset_after_ms, Some(45_000));
        assert_eq!(f.reset_unix_ms, Some(T + 45_000));
        let over = of(&Counter::Rate(l), Some(&Cell::Window { count: 12 }), 0, T);
        assert_eq!((over.used, over.remaining), (Some(12), Some(0)));
        let fresh = of(&Counter::Rate(l), None, 5, T);
        assert_eq!(
            (fresh.used, fresh.reserved, fresh.remaining),
            (Some(0), 0, Some(10)),
            "reserved never exceeds used"
        );
    }

    #[test]
    fn a_bucket_with_and_without_debt() {
        let l = Limit {
            amount: 60,
            period: Period::Minute,
            algorithm: Algorithm::TokenBucket,
            zone: crate::rules::Zone::Utc,
        };
        let ticks = Period::Minute.ticks() as i64;
        let tick = T / Period::Minute.tick_millis();
        let f = of(
            &Counter::Rate(l),
            Some(&Cell::Bucket {
                level: 20 * ticks,
                tick,
            }),
            0,
            T,
        );
        assert_eq!((f.used, f.remaining), (Some(40), Some(20)));
        assert_eq!(f.reset_after_ms, Some(40_000), "40 tokens at one a second");
        let debt = of(
            &Counter::Rate(l),
            Some(&Cell::Bucket {
                level: -5 * ticks - 1,
                tick,
            }),
            0,
            T,
        );
        assert_eq!((debt.used, debt.remaining), (Some(66), Some(0)));
    }

    #[test]
    fn slots_count_live_holders_only() {
        let holders = BTreeMap::from([("a".to_string(), T + 1), ("b".to_string(), T)]);
        let f = of(
            &Counter::Slots { max: 3 },
            Some(&Cell::Slots(holders)),
            1,
            T,
        );
        assert_eq!(
            (f.used, f.reserved, f.remaining, f.reset_after_ms),
            (Some(1), 1, Some(2), None)
        );
    }
}
