//! Money: a model's prices and what tokens cost at them, in integer
//! micro-units of the configured currency (1.00 USD = 1 000 000), so a
//! money budget is as exact as a token budget and no float reaches a store.

use super::quota::Tokens;
use serde::{Deserialize, Serialize};

/// Micro-units in one unit of the currency.
pub const MICROS: u64 = 1_000_000;

/// A model's prices per million tokens, in micro-units: `input = 2_500_000`
/// is 2.50 per million prompt tokens, 2.5 micro-units per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input: u64,
}

impl Price {
    /// What `t` costs, rounded up to the micro-unit: one rounding per
    /// request, never in the provider's favour against the budget.
    pub fn cost(&self, t: &Tokens) -> u64 {
        let cached = t.cached.min(t.prompt);
        let fresh = t.prompt - cached;
        // Each product fits in u128; their sum may not, at absurd counts.
        let per_million = (u128::from(fresh) * u128::from(self.input))
            .saturating_add(u128::from(cached) * u128::from(self.cached_input))
            .saturating_add(u128::from(t.completion) * u128::from(self.output));
        u64::try_from(per_million.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// Why an amount of money in the config cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0}: must be a number of at least 0")]
    Negative(f64),
    #[error("{0}: too large (at most 1e12)")]
    TooLarge(f64),
    #[error("{0}: at most 6 decimals (micro-units)")]
    TooPrecise(f64),
}

/// An amount as written in the config (`1.25`) in micro-units, exactly:
/// refused when it has more than six decimals.
pub fn micros(amount: f64) -> Result<u64, MoneyError> {
    if amount.is_nan() || amount < 0.0 {
        return Err(MoneyError::Negative(amount));
    }
    if amount > 1e12 {
        return Err(MoneyError::TooLarge(amount));
    }
    let scaled = amount * MICROS as f64;
    let rounded = scaled.round();
    // A decimal with six places is within float error of an integer: a
    // relative error of a few 1e-16 (two roundings: parsing, scaling).
    // Any absolute slack would let a seventh decimal through.
    if (scaled - rounded).abs() > scaled * 1e-14 {
        return Err(MoneyError::TooPrecise(amount));
    }
    Ok(rounded as u64)
}

/// Micro-units as a decimal with the decimals it needs (at least two):
/// `1_000_000` is `1.00`, `2_500` is `0.0025`.
pub fn format_micros(micros: u64) -> String {
    let (units, frac) = (micros / MICROS, micros % MICROS);
    let mut s = format!("{units}.{frac:06}");
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt4o() -> Price {
        Price {
            input: micros(2.5).unwrap(),
            output: micros(10.0).unwrap(),
            cached_input: micros(1.25).unwrap(),
        }
    }

    #[test]
    fn cost_is_exact_and_rounds_up_once() {
        let p = gpt4o();
        let t = Tokens {
            prompt: 1000,
            completion: 500,
            cached: 0,
        };
        // 1000 × 2.5 + 500 × 10 = 7500 micro-units.
        assert_eq!(p.cost(&t), 7_500);
        let one = Tokens {
            prompt: 1,
            completion: 0,
            cached: 0,
        };
        assert_eq!(p.cost(&one), 3, "2.5 rounds up to 3");
        assert_eq!(p.cost(&Tokens::default()), 0);
    }

    #[test]
    fn cached_tokens_cost_the_cached_price() {
        let p = gpt4o();
        let t = Tokens {
            prompt: 1000,
            completion: 0,
            cached: 400,
        };
        // 600 × 2.5 + 400 × 1.25 = 2000.
        assert_eq!(p.cost(&t), 2_000);
        let over = Tokens {
            prompt: 10,
            completion: 0,
            cached: 50,
        };
        assert_eq!(p.cost(&over), 13, "cached is at most the prompt: 12.5 up");
    }

    #[test]
    fn huge_counts_saturate() {
        let p = Price {
            input: u64::MAX,
            output: u64::MAX,
            cached_input: 0,
        };
        let t = Tokens {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: 0,
        };
        assert_eq!(p.cost(&t), u64::MAX);
    }

    #[test]
    fn amounts_become_micro_units_exactly() {
        assert_eq!(micros(1.0), Ok(1_000_000));
        assert_eq!(micros(0.15), Ok(150_000));
        assert_eq!(micros(2.5), Ok(2_500_000));
        assert_eq!(micros(0.000001), Ok(1));
        assert_eq!(micros(500.0), Ok(500_000_000));
        assert_eq!(micros(123456.789012), Ok(123_456_789_012));
        assert_eq!(micros(0.0), Ok(0));
        assert!(matches!(micros(0.0000001), Err(MoneyError::TooPrecise(_))));
        assert!(matches!(micros(-1.0), Err(MoneyError::Negative(_))));
        assert!(matches!(micros(f64::NAN), Err(MoneyError::Negative(_))));
        assert!(matches!(micros(2e12), Err(MoneyError::TooLarge(_))));
    }

    #[test]
    fn the_largest_amount_is_1e12_itself() {
        assert_eq!(micros(1e12), Ok(1_000_000_000_000_000_000));
        assert!(matches!(micros(1e12 + 1.0), Err(MoneyError::TooLarge(_))));
    }

    #[test]
    fn a_seventh_decimal_is_refused_however_small() {
        // Not 0.000001 with the rest dropped, nor 0 for a billionth: a
        // price or budget is what was written or a clear error.
        for amount in [0.0000010004, 0.000000001, 0.0000019, 12.3456789] {
            assert!(
                matches!(micros(amount), Err(MoneyError::TooPrecise(_))),
                "{amount}"
            );
        }
    }

    #[test]
    fn six_decimals_are_exact_at_every_magnitude() {
        for (amount, want) in [
            (0.000001, 1),
            (0.000003, 3),
            (0.999999, 999_999),
            (7.000001, 7_000_001),
            (1234.567891, 1_234_567_891),
            (999_999.999999, 999_999_999_999),
            (123_456_789.123456, 123_456_789_123_456),
        ] {
            assert_eq!(micros(amount), Ok(want), "{amount}");
        }
    }

    #[test]
    fn micro_units_print_as_decimals() {
        assert_eq!(format_micros(1_000_000), "1.00");
        assert_eq!(format_micros(0), "0.00");
        assert_eq!(format_micros(2_500), "0.0025");
        assert_eq!(format_micros(123_456_789_012), "123456.789012");
        assert_eq!(format_micros(500_000_000), "500.00");
        assert_eq!(format_micros(1_100_000), "1.10");
    }
}
