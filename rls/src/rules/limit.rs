use serde::Serialize;
use std::time::Duration;

/// Costs above this are clamped before they reach a store: it keeps every
/// counter and scaled bucket level exact in a Lua number (a double).
pub const MAX_COST: u64 = 1 << 40;

/// The unit a limit counts per. Seconds, minutes and hours are aligned to
/// the Unix epoch, as envoyproxy/ratelimit aligns them, so all instances
/// agree on boundaries; days, weeks (from Monday), months (from the 1st)
/// and years start at midnight in the limit's time zone (UTC by default),
/// so their length follows the calendar (`calendar::window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// The time zone whose midnights start a limit's days, weeks, months and
/// years, or `Epoch`: no calendar at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Zone {
    #[default]
    Utc,
    Named(chrono_tz::Tz),
    /// envoyproxy/ratelimit's windows: every period one fixed length
    /// (a week 7 days, a month 30, a year 365) counted from the Unix
    /// epoch, so its YAML's `week`, `month` and `year` answer as the peer's.
    Epoch,
}

impl Zone {
    /// An IANA name (`Europe/Berlin`), `UTC`, or `epoch`.
    pub fn parse(s: &str) -> Option<Zone> {
        if s.eq_ignore_ascii_case("utc") {
            return Some(Zone::Utc);
        }
        if s.eq_ignore_ascii_case("epoch") {
            return Some(Zone::Epoch);
        }
        s.parse::<chrono_tz::Tz>().ok().map(Zone::Named)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Zone::Utc => "UTC",
            Zone::Named(tz) => tz.name(),
            Zone::Epoch => "epoch",
        }
    }
}

impl Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Period {
    /// Whether windows of this period have one length whatever the date:
    /// seconds, minutes, hours, UTC days, and every period from the epoch.
    pub fn is_fixed(self, zone: Zone) -> bool {
        self.fixed_millis(zone).is_some()
    }

    /// The length of every window, for a period whose windows are all as
    /// long (see [`Period::is_fixed`]).
    pub fn fixed_millis(self, zone: Zone) -> Option<u64> {
        match (self, zone) {
            (Period::Second | Period::Minute | Period::Hour, _)
            | (Period::Day, Zone::Utc)
            | (_, Zone::Epoch) => Some(self.millis()),
            _ => None,
        }
    }

    /// Length of one period in milliseconds; for weeks, months and years
    /// the usual length (7, 30, 365 days): the calendar decides a window's
    /// real length (`calendar::window`).
    pub fn millis(self) -> u64 {
        match self {
            Period::Second => 1_000,
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
            Period::Week => 7 * 86_400_000,
            Period::Month => 30 * 86_400_000,
            Period::Year => 365 * 86_400_000,
        }
    }

    /// The usual length, for the rare fallback with no calendar.
    pub fn nominal_millis(self) -> u64 {
        self.millis()
    }

    /// Time resolution of token-bucket refill. Milliseconds for short
    /// periods, seconds for long ones, so `limit * ticks_per_period` stays
    /// below 2^53 for any realistic limit (see `Limit::validate`).
    pub fn tick_millis(self) -> u64 {
        match self {
            Period::Second | Period::Minute => 1,
            _ => 1_000,
        }
    }

    /// Number of refill ticks in one period.
    pub fn ticks(self) -> u64 {
        self.millis() / self.tick_millis()
    }

    pub fn duration(self) -> Duration {
        Duration::from_millis(self.millis())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "second" | "s" => Some(Period::Second),
            "minute" | "m" => Some(Period::Minute),
            "hour" | "h" => Some(Period::Hour),
            "day" | "d" => Some(Period::Day),
            "week" | "w" => Some(Period::Week),
            "month" => Some(Period::Month),
            "year" | "y" => Some(Period::Year),
            _ => None,
        }
    }
}

/// How a limit spends and regains capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Epoch-aligned windows that reset at once (envoyproxy/ratelimit).
    #[default]
    FixedWindow,
    /// Continuous refill of `amount` per period; no burst at a boundary
    /// (how providers enforce tokens per minute).
    TokenBucket,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "fixed_window" => Some(Algorithm::FixedWindow),
            "token_bucket" => Some(Algorithm::TokenBucket),
            _ => None,
        }
    }
}

/// One limit of a rule: `amount` per `period` (in `zone`'s calendar),
/// spent by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Limit {
    pub amount: u64,
    pub period: Period,
    pub algorithm: Algorithm,
    /// Whose midnights start days, weeks, months and years.
    pub zone: Zone,
}

impl Limit {
    /// A limit in UTC.
    pub fn new(amount: u64, period: Period, algorithm: Algorithm) -> Limit {
        Limit {
            amount,
            period,
            algorithm,
            zone: Zone::Utc,
        }
    }

    /// The window that holds `now_ms`, `[start, end)` in Unix ms.
    pub fn window(&self, now_ms: u64) -> (u64, u64) {
        super::calendar::window(self.period, self.zone, now_ms)
    }

    /// The largest amount whose scaled bucket level stays exact in a double.
    pub fn max_amount(period: Period) -> u64 {
        (1u64 << 53) / period.ticks()
    }

    /// Why this limit cannot be enforced exactly, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.amount == 0 {
            return Err("must be at least 1 (use `unlimited = true` for no limit)".into());
        }
        if self.algorithm == Algorithm::TokenBucket && !self.period.is_fixed(self.zone) {
            return Err(format!(
                "a token bucket refills at a fixed rate: per second, minute, hour or (UTC) day, not per {}",
                self.period.as_str()
            ));
        }
        let max = Limit::max_amount(self.period);
        if self.amount > max {
            return Err(format!(
                "{} per {} is too large; at most {max}",
                self.amount,
                self.period.as_str()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_divide_periods_exactly() {
        for p in [Period::Second, Period::Minute, Period::Hour, Period::Day] {
            assert_eq!(p.millis() % p.tick_millis(), 0);
            assert!(Limit::max_amount(p) >= 100_000_000_000, "{p:?}");
        }
    }

    /// envoyproxy/ratelimit's `now / divider * divider` (utils.go
    /// `CalculateReset`): epoch weeks start on a Thursday, months are 30
    /// days, years 365, whatever the calendar says.
    #[test]
    fn epoch_windows_are_the_peers() {
        // 2026-12-02T01:00:00Z, a Wednesday.
        let now = 1_796_173_200_000u64;
        for (period, len) in [
            (Period::Week, 604_800_000u64),
            (Period::Month, 2_592_000_000),
            (Period::Year, 31_536_000_000),
        ] {
            let l = Limit {
                zone: Zone::Epoch,
                ..Limit::new(5, period, Algorithm::FixedWindow)
            };
            assert_eq!(l.window(now), (now / len * len, now / len * len + len));
            assert_ne!(
                l.window(now),
                Limit::new(5, period, Algorithm::FixedWindow).window(now)
            );
        }
        assert_eq!(Zone::parse(Zone::Epoch.name()), Some(Zone::Epoch));
    }

    #[test]
    fn zero_and_huge_limits_are_refused() {
        let mut l = Limit {
            amount: 0,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
            zone: Zone::Utc,
        };
        assert!(l.validate().is_err());
        l.amount = Limit::max_amount(Period::Minute) + 1;
        assert!(l.validate().is_err());
        l.amount = 10;
        assert!(l.validate().is_ok());
    }
}
