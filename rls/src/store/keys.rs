//! Every key tollgate writes to a store, built here and nowhere else.
//!
//! | what                        | key                                                        |
//! |-----------------------------|------------------------------------------------------------|
//! | rule counter                | `tg:{<rule id>}:<period><w\|b>:<v1>:…:<vn>[:<window s>]`    |
//! | quota token counter         | `tg:{<quota id>}:t<period><w\|b>:<values>[:<window s>]`     |
//! | quota request counter       | `tg:{<quota id>}:r<period><w\|b>:<values>[:<window s>]`     |
//! | quota spend counter         | `tg:{<quota id>}:s<period><w\|b>:<values>[:<window s>]`     |
//! | quota concurrency slots     | `tg:{<quota id>}:c:<values>`                               |
//! | a class's share of any one  | `<that counter's key without window>:class=<class>[:<window s>]` |
//! | ext_proc reservation record | `tg:{<first quota id>}:res:<reservation id>`               |
//! | RLS reservation record      | `tg:{<rule id>}:rres:<request id>`                         |
//! | the instance registry       | `tg:{registry}:instances` (a hash: instance id → last beat)  |
//! | the health probe            | `tg:probe:<instance>:<second>` (written by `redis`'s ping)   |
//!
//! `w` is a fixed window (its start, in Unix seconds, ends the key, so a
//! new window starts from an absent key and an old one expires by itself),
//! `b` a token bucket (one key, refilled in place). `<values>` are the
//! request's values of the quota's `match` keys, in the quota's key order.
//!
//! **Hash tags.** The `{id}` is the Redis Cluster hash tag: every key of one
//! rule or quota, its class shares and a reservation record of its first
//! quota live in one slot, so one Lua script can touch them together. A
//! request that spans rules spans slots; the Redis store takes those in
//! per-slot steps (`store::redis`).
//!
//! **No collisions.** Values are escaped (`%` → `%25`, `:` → `%3A`), so
//! the number of `:`-separated segments after the tag is fixed by the rule
//! or quota: a value can never pose as a separator, a window or a class
//! suffix. The segment after the tag names the kind (`res`, `rres`, `c`,
//! `t…`, `r…`, `s…`, or a bare period for rules), and rule and quota ids are
//! hashes of different inputs (`quota:` + name for quotas).

use super::arith;
use super::Counter;
use crate::rules::{Algorithm, Limit, RuleId};

/// The registry of instances sharing a Redis (`lua/registry.lua`).
pub const REGISTRY: &str = "tg:{registry}:instances";

/// Every key starts with this, so tollgate's keys are easy to tell apart
/// in a shared Redis.
const PREFIX: &str = "tg:{";

/// What a quota counter counts.
#[derive(Debug, Clone, Copy)]
pub enum QuotaCounter<'a> {
    Tokens(&'a Limit),
    Requests(&'a Limit),
    Spend(&'a Limit),
    Concurrent,
}

/// The counter of a rule's `limit` for these descriptor values (a
/// reserving rule leaves out its request id: it names the reservation, not
/// the counter).
pub fn rule_counter<'v>(
    rule: &RuleId,
    limit: &Limit,
    values: impl Iterator<Item = &'v str>,
) -> String {
    let mut key = tagged(rule, 32);
    key.push_str(limit.period.as_str());
    key.push(algorithm_letter(limit));
    for value in values {
        key.push(':');
        escape_into(&mut key, value);
    }
    key
}

/// The request's values of a quota's `match` keys, as one key segment
/// (an absent value is empty).
pub fn quota_values<'v>(values: impl Iterator<Item = Option<&'v str>>) -> String {
    let mut out = String::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(':');
        }
        escape_into(&mut out, v.unwrap_or(""));
    }
    out
}

/// A quota's counter for the request's `values` (from [`quota_values`]).
pub fn quota_counter(quota: &RuleId, counter: QuotaCounter<'_>, values: &str) -> String {
    let mut key = tagged(quota, 16 + values.len());
    match counter {
        QuotaCounter::Tokens(l) | QuotaCounter::Requests(l) | QuotaCounter::Spend(l) => {
            key.push(match counter {
                QuotaCounter::Tokens(_) => 't',
                QuotaCounter::Spend(_) => 's',
                _ => 'r',
            });
            key.push_str(l.period.as_str());
            key.push(algorithm_letter(l));
        }
        QuotaCounter::Concurrent => key.push('c'),
    }
    key.push(':');
    key.push_str(values);
    key
}

/// A class's share of the counter `base` (a key from [`quota_counter`]).
pub fn class_share(base: &str, class: &str) -> String {
    let mut key = String::with_capacity(base.len() + 8 + class.len());
    key.push_str(base);
    key.push_str(":class=");
    escape_into(&mut key, class);
    key
}

/// The record of an ext_proc reservation, in the slot of its first quota.
pub fn reservation(tag: &RuleId, id: &str) -> String {
    let mut key = tagged(tag, 4 + id.len());
    key.push_str("res:");
    key.push_str(id);
    key
}

/// Longest request id kept in an RLS reservation's key.
const MAX_REQUEST_ID: usize = 128;

/// The record of an RLS reservation, named by the request id the
/// descriptor carries (cut to 128 characters, `:` replaced), in its rule's
/// slot.
pub fn rls_reservation(rule: &RuleId, request_id: &str) -> String {
    let mut key = tagged(rule, 5 + request_id.len().min(MAX_REQUEST_ID));
    key.push_str("rres:");
    key.extend(
        request_id
            .chars()
            .take(MAX_REQUEST_ID)
            .map(|c| if c == ':' { '_' } else { c }),
    );
    key
}

/// The full key of a counter at `now_ms`: a fixed window's key ends in the
/// window's start, so each window is its own key; buckets and slots have
/// one key.
pub fn counter_key(base: &str, counter: &Counter, now_ms: u64) -> String {
    match counter {
        Counter::Rate(limit) => match arith::key_suffix(limit, now_ms) {
            Some(window) => {
                // By hand rather than `format!`: this runs for every hit.
                let mut out = String::with_capacity(base.len() + 21);
                out.push_str(base);
                out.push(':');
                push_decimal(&mut out, window);
                out
            }
            None => base.to_string(),
        },
        Counter::Slots { .. } => base.to_string(),
    }
}

/// `tg:{<id>}:`, with room for `more` bytes.
fn tagged(id: &RuleId, more: usize) -> String {
    let mut key = String::with_capacity(PREFIX.len() + id.as_str().len() + 2 + more);
    key.push_str(PREFIX);
    key.push_str(id.as_str());
    key.push_str("}:");
    key
}

fn algorithm_letter(limit: &Limit) -> char {
    match limit.algorithm {
        Algorithm::FixedWindow => 'w',
        Algorithm::TokenBucket => 'b',
    }
}

/// Appends `value` with `%` and `:` escaped, so separators in values never
/// make two counters share a key.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{EntryPattern, Period};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn limit(period: Period, algorithm: Algorithm) -> Limit {
        Limit {
            amount: 10,
            period,
            algorithm,
            zone: crate::rules::Zone::Utc,
        }
    }

    #[test]
    fn the_layout_is_as_documented() {
        let rule = RuleId::new("edge", &[EntryPattern::parse("tenant").unwrap()]);
        let quota = RuleId::new("quota:q", &[]);
        let minute = limit(Period::Minute, Algorithm::FixedWindow);
        let day_bucket = limit(Period::Day, Algorithm::TokenBucket);
        let r = rule_counter(&rule, &minute, ["a:b", "50%"].into_iter());
        assert_eq!(r, format!("tg:{{{rule}}}:minutew:a%3Ab:50%25"));
        let values = quota_values([Some("acme"), None].into_iter());
        assert_eq!(values, "acme:");
        let t = quota_counter(&quota, QuotaCounter::Tokens(&day_bucket), &values);
        assert_eq!(t, format!("tg:{{{quota}}}:tdayb:acme:"));
        let month = limit(Period::Month, Algorithm::FixedWindow);
        let s = quota_counter(&quota, QuotaCounter::Spend(&month), &values);
        assert_eq!(s, format!("tg:{{{quota}}}:smonthw:acme:"));
        let c = quota_counter(&quota, QuotaCounter::Concurrent, "acme");
        assert_eq!(c, format!("tg:{{{quota}}}:c:acme"));
        assert_eq!(class_share(&c, "a:b"), format!("{c}:class=a%3Ab"));
        assert_eq!(
            reservation(&quota, "abc"),
            format!("tg:{{{quota}}}:res:abc")
        );
        let long = "x:".repeat(100);
        let rres = rls_reservation(&rule, &long);
        assert_eq!(rres, format!("tg:{{{rule}}}:rres:{}", "x_".repeat(64)));
        let counter = Counter::Rate(minute);
        assert_eq!(
            counter_key(&r, &counter, 1_700_000_059_999),
            format!("{r}:1700000040")
        );
        let bucket = Counter::Rate(day_bucket);
        assert_eq!(counter_key(&t, &bucket, 1_700_000_059_999), t);
        assert_eq!(counter_key(&c, &Counter::Slots { max: 1 }, 5), c);
    }

    #[test]
    fn decimals() {
        let mut zero = String::new();
        push_decimal(&mut zero, 0);
        assert_eq!(zero, "0");
        let mut max = String::new();
        push_decimal(&mut max, u64::MAX);
        assert_eq!(max, u64::MAX.to_string());
    }

    /// Every kind of key one rule or quota can own, for one set of values,
    /// each with its class when the class is part of it.
    fn all_keys(id: &RuleId, values: &[String], class: &str) -> Vec<(String, Option<String>)> {
        let mut keys = Vec::new();
        let joined = quota_values(values.iter().map(|v| Some(v.as_str())));
        let now = 1_700_000_000_000;
        let mut both = |base: String, counter: &Counter| {
            keys.push((counter_key(&base, counter, now), None));
            let share = class_share(&base, class);
            keys.push((counter_key(&share, counter, now), Some(class.to_string())));
        };
        let periods = [
            Period::Second,
            Period::Minute,
            Period::Hour,
            Period::Day,
            Period::Week,
            Period::Month,
            Period::Year,
        ];
        for period in periods {
            for algorithm in [Algorithm::FixedWindow, Algorithm::TokenBucket] {
                let l = limit(period, algorithm);
                let counter = Counter::Rate(l);
                both(
                    rule_counter(id, &l, values.iter().map(String::as_str)),
                    &counter,
                );
                both(
                    quota_counter(id, QuotaCounter::Tokens(&l), &joined),
                    &counter,
                );
                both(
                    quota_counter(id, QuotaCounter::Requests(&l), &joined),
                    &counter,
                );
                both(
                    quota_counter(id, QuotaCounter::Spend(&l), &joined),
                    &counter,
                );
            }
        }
        both(
            quota_counter(id, QuotaCounter::Concurrent, &joined),
            &Counter::Slots { max: 1 },
        );
        keys
    }

    proptest! {
        /// Keys of different kinds, values or classes never collide: a key
        /// names exactly one (kind, values, class) of its rule or quota.
        #[test]
        fn keys_of_different_kinds_or_values_never_collide(
            a in prop::collection::vec("[a-z:%=]{0,4}", 1..3),
            b in prop::collection::vec("[a-z:%=]{0,4}", 1..3),
            class_a in "[a-z:=%]{1,3}",
            class_b in "[a-z:=%]{1,3}",
        ) {
            let id = RuleId::new("d", &[]);
            let mut owner: HashMap<String, (usize, Vec<String>, Option<String>)> = HashMap::new();
            for (values, class) in [(&a, &class_a), (&b, &class_b)] {
                for (kind, (key, class)) in all_keys(&id, values, class).into_iter().enumerate() {
                    let me = (kind, values.clone(), class);
                    if let Some(seen) = owner.get(&key) {
                        prop_assert_eq!(seen, &me, "{} names two things", key);
                    }
                    owner.insert(key, me);
                }
            }
            // Records depend on no value: no counter may pose as one.
            for record in [reservation(&id, "req-1"), rls_reservation(&id, "req-1")] {
                prop_assert!(!owner.contains_key(&record), "{} is also a counter", record);
            }
        }
    }
}
