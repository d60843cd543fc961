//! Which window of a limit holds an instant: epoch-aligned seconds, minutes
//! and hours; days, weeks (from Monday), months (from the 1st) and years
//! (from January 1st) from midnight in the limit's time zone (UTC unless
//! configured). A window is `[start, end)` in Unix milliseconds, so a
//! month is 28 to 31 days long and a day across a daylight-saving change
//! 23 or 25 hours: `reset` and a key's expiry come out right.

use super::{Period, Zone};
use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone};

/// The window of `period` in `zone` that holds `now_ms`.
pub fn window(period: Period, zone: Zone, now_ms: u64) -> (u64, u64) {
    if let Some(len) = period.fixed_millis(zone) {
        let start = now_ms - now_ms % len;
        return (start, start + len);
    }
    match zone {
        // Epoch windows all have a fixed length (above).
        Zone::Utc | Zone::Epoch => calendar_window(period, &chrono::Utc, now_ms),
        Zone::Named(tz) => calendar_window(period, &tz, now_ms),
    }
}

fn calendar_window<Z: TimeZone>(period: Period, zone: &Z, now_ms: u64) -> (u64, u64) {
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let Some(utc) = DateTime::from_timestamp_millis(now) else {
        // Past year 262143: no calendar; one fixed-length window.
        let len = period.nominal_millis();
        let start = now_ms - now_ms % len;
        return (start, start + len);
    };
    let today = utc.with_timezone(zone).date_naive();
    let (first, next) = bounds(period, today);
    let start = midnight(zone, first).min(now_ms);
    let end = midnight(zone, next).max(now_ms + 1);
    (start, end)
}

/// The first day of the window holding `day`, and of the next one.
fn bounds(period: Period, day: NaiveDate) -> (NaiveDate, NaiveDate) {
    let first = match period {
        Period::Week => day - Days::new(u64::from(day.weekday().num_days_from_monday())),
        Period::Month => day.with_day(1).unwrap_or(day),
        Period::Year => day.with_ordinal(1).unwrap_or(day),
        _ => day,
    };
    let next = match period {
        Period::Week => first.checked_add_days(Days::new(7)),
        Period::Month => first.checked_add_months(Months::new(1)),
        Period::Year => first.checked_add_months(Months::new(12)),
        _ => first.checked_add_days(Days::new(1)),
    };
    (first, next.unwrap_or(NaiveDate::MAX))
}

/// When `day` starts in `zone`, in Unix ms: its midnight, or, where a
/// daylight-saving change skips midnight, the first local time after it.
fn midnight<Z: TimeZone>(zone: &Z, day: NaiveDate) -> u64 {
    let mut local: NaiveDateTime = day.and_time(chrono::NaiveTime::MIN);
    // A gap is at most a day (Samoa skipped 2011-12-30): look in 15-minute
    // steps up to and including the next midnight.
    for _ in 0..=24 * 4 {
        if let Some(t) = zone.from_local_datetime(&local).earliest() {
            return u64::try_from(t.timestamp_millis()).unwrap_or(0);
        }
        local += chrono::Duration::minutes(15);
    }
    u64::try_from(local.and_utc().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    fn zone(name: &str) -> Zone {
        Zone::Named(name.parse().unwrap())
    }

    #[test]
    fn fixed_periods_are_epoch_aligned() {
        let now = ms("2026-12-01T21:46:11.250Z");
        assert_eq!(
            window(Period::Minute, Zone::Utc, now),
            (ms("2026-12-01T21:46:00Z"), ms("2026-12-01T21:47:00Z"))
        );
        assert_eq!(
            window(Period::Day, Zone::Utc, now),
            (ms("2026-12-01T00:00:00Z"), ms("2026-12-02T00:00:00Z"))
        );
        assert_eq!(
            window(Period::Hour, zone("Asia/Kolkata"), now),
            (ms("2026-12-01T21:00:00Z"), ms("2026-12-01T22:00:00Z")),
            "hours stay epoch-aligned in any zone"
        );
    }

    #[test]
    fn months_are_28_to_31_days_from_the_first() {
        for (inside, start, end) in [
            (
                "2026-02-14T12:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
            ),
            (
                "2028-02-29T23:59:59Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "2026-04-30T00:00:00Z",
                "2026-04-01T00:00:00Z",
                "2026-05-01T00:00:00Z",
            ),
            (
                "2026-12-31T23:59:59.999Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
        ] {
            assert_eq!(
                window(Period::Month, Zone::Utc, ms(inside)),
                (ms(start), ms(end)),
                "{inside}"
            );
        }
        let (s, e) = window(Period::Month, Zone::Utc, ms("2026-02-10T00:00:00Z"));
        assert_eq!(e - s, 28 * 86_400_000);
        let (s, e) = window(Period::Month, Zone::Utc, ms("2028-02-10T00:00:00Z"));
        assert_eq!(e - s, 29 * 86_400_000);
    }

    #[test]
    fn weeks_start_on_monday_and_years_on_january_first() {
        // 2026-12-03 is a Thursday.
        assert_eq!(
            window(Period::Week, Zone::Utc, ms("2026-12-03T10:00:00Z")),
            (ms("2026-11-30T00:00:00Z"), ms("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            window(Period::Week, Zone::Utc, ms("2026-11-30T00:00:00Z")).0,
            ms("2026-11-30T00:00:00Z"),
            "Monday's first millisecond is the week's"
        );
        assert_eq!(
            window(Period::Year, Zone::Utc, ms("2026-07-01T00:00:00Z")),
            (ms("2026-01-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn a_zone_moves_the_boundaries_and_daylight_saving_changes_the_length() {
        let berlin = zone("Europe/Berlin");
        // March 2026: DST starts on the 29th (02:00 -> 03:00 local).
        let (s, e) = window(Period::Month, berlin, ms("2026-03-15T12:00:00Z"));
        assert_eq!(s, ms("2026-03-01T00:00:00+01:00"));
        assert_eq!(e, ms("2026-04-01T00:00:00+02:00"));
        assert_eq!(e - s, 31 * 86_400_000 - 3_600_000, "one hour short");
        let (s, e) = window(Period::Day, berlin, ms("2026-03-29T10:00:00Z"));
        assert_eq!(e - s, 23 * 3_600_000);
        let (s, e) = window(Period::Day, berlin, ms("2026-10-25T10:00:00Z"));
        assert_eq!(e - s, 25 * 3_600_000);
        // 23:30 UTC on March 31st is already April 1st in Berlin.
        assert_eq!(
            window(Period::Month, berlin, ms("2026-03-31T23:30:00Z")).0,
            ms("2026-04-01T00:00:00+02:00")
        );
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_at_the_first_local_time() {
        // Santiago: DST began at 00:00 local on 2026-09-06 (to 01:00).
        let santiago = zone("America/Santiago");
        let (s, _) = window(Period::Day, santiago, ms("2026-09-06T12:00:00Z"));
        assert_eq!(s, ms("2026-09-06T01:00:00-03:00"));
    }

    #[test]
    fn a_skipped_day_ends_the_day_before_at_the_next_ones_first_moment() {
        // Samoa skipped 2011-12-30 entirely: 23:59:59 on the 29th (-10:00)
        // was followed by 00:00 on the 31st (+14:00). The 29th is 24 hours,
        // and the 31st starts where it ends: windows tile, never overlap.
        let apia = zone("Pacific/Apia");
        let day29 = window(Period::Day, apia, ms("2011-12-30T09:00:00Z"));
        assert_eq!(
            day29,
            (
                ms("2011-12-29T00:00:00-10:00"),
                ms("2011-12-31T00:00:00+14:00")
            )
        );
        let day31 = window(Period::Day, apia, ms("2011-12-30T10:00:00Z"));
        assert_eq!(day31.0, day29.1);
        assert_eq!(day31.1, ms("2012-01-01T00:00:00+14:00"));
    }

    #[test]
    fn the_window_holds_the_instant_even_where_the_calendar_ends() {
        // chrono's calendar ends on 262142-12-31: that day's month has no
        // next month to end at, so it ends just after the instant.
        let last_day = NaiveDate::from_ymd_opt(262_142, 12, 31)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis() as u64;
        for period in [Period::Week, Period::Month, Period::Year] {
            let (s, e) = window(period, Zone::Utc, last_day);
            assert!(s <= last_day && last_day < e, "{period:?}: {s} {e}");
        }
        // Past it there is no calendar: one window of the period's usual
        // length, aligned to the epoch, that holds the instant.
        let beyond = 9_000_000_000_000_000;
        for period in [Period::Week, Period::Month, Period::Year] {
            let (s, e) = window(period, Zone::Utc, beyond);
            assert!(s <= beyond && beyond < e, "{period:?}: {s} {e}");
            assert_eq!(e - s, period.nominal_millis(), "{period:?}");
            assert_eq!(s % period.nominal_millis(), 0, "{period:?}");
        }
    }
}
