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

/// What a key names, read back from the key: the inverse of the builders
/// above (`/quotas` lists live keys with it). The tag is the owner's id
/// (map it back to a rule or quota through the config in force); how many
/// value segments a counter has is the owner's to say, so the values are
/// split from a class suffix with [`Segments::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey<'k> {
    /// The hash tag: a rule's or quota's id.
    pub tag: &'k str,
    pub kind: KeyKind<'k>,
}

/// The kinds of key the layout table lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'k> {
    /// A rate counter of a rule or quota. `limit` is the segment that names
    /// the limit as the builders write it (a quota counter's kind letter,
    /// the period, the algorithm letter: `tminutew`, `hourb`); `window_s`
    /// the fixed window's start, in Unix seconds.
    Rate {
        limit: &'k str,
        algorithm: Algorithm,
        values: Segments<'k>,
        window_s: Option<u64>,
    },
    /// A quota's concurrency slots (or a class's share of them).
    Slots { values: Segments<'k> },
    /// An ext_proc reservation record.
    Reservation { id: &'k str },
    /// An RLS reservation record.
    RlsReservation { id: &'k str },
    /// The instance registry.
    Registry,
}

/// The value segments of a counter key after its limit, still escaped,
/// with the class suffix if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments<'k>(Vec<&'k str>);

impl Segments<'_> {
    /// Every segment as a value: a rule counter (rules have no class
    /// shares), whose value count is its descriptor's.
    pub fn values(&self) -> Vec<String> {
        self.0.iter().map(|s| unescape(s)).collect()
    }

    /// The values of a quota counter whose quota matches on `arity` keys,
    /// and the class whose share it is, if it is one; `None` when the key
    /// has another number of segments (another quota's shape: a config
    /// changed since the key was written).
    pub fn split(&self, arity: usize) -> Option<(Vec<String>, Option<String>)> {
        // `quota_values` of no values is one empty segment.
        let n = arity.max(1);
        if self.0.len() < n {
            return None;
        }
        let (values, rest) = self.0.split_at(n);
        let values = if arity == 0 {
            (values == [""]).then(Vec::new)?
        } else {
            values.iter().map(|s| unescape(s)).collect()
        };
        let class = match rest {
            [] => None,
            [class] => Some(unescape(class.strip_prefix("class=")?)),
            _ => return None,
        };
        Some((values, class))
    }
}

impl<'k> ParsedKey<'k> {
    /// Reads a key tollgate wrote; `None` for anything else (another
    /// application's key, the health probe, a layout this version does
    /// not know).
    pub fn parse(key: &'k str) -> Option<ParsedKey<'k>> {
        let rest = key.strip_prefix(PREFIX)?;
        let (tag, rest) = rest.split_once("}:")?;
        if tag.is_empty() {
            return None;
        }
        let (head, tail) = match rest.split_once(':') {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        let segments =
            |t: Option<&'k str>| Segments(t.map(|t| t.split(':').collect()).unwrap_or_default());
        let kind = match (head, tail) {
            ("res", Some(id)) => KeyKind::Reservation { id },
            ("rres", Some(id)) => KeyKind::RlsReservation { id },
            ("instances", None) if key == REGISTRY => KeyKind::Registry,
            ("c", Some(_)) => KeyKind::Slots {
                values: segments(tail),
            },
            (limit, tail) if limit.len() > 1 => {
                let algorithm = match limit.as_bytes().last() {
                    Some(b'w') => Algorithm::FixedWindow,
                    Some(b'b') => Algorithm::TokenBucket,
                    _ => return None,
                };
                let Segments(mut values) = segments(tail);
                let window_s = match algorithm {
                    Algorithm::FixedWindow => Some(values.pop()?.parse().ok()?),
                    Algorithm::TokenBucket => None,
                };
                KeyKind::Rate {
                    limit,
                    algorithm,
                    values: Segments(values),
                    window_s,
                }
            }
            _ => return None,
        };
        Some(ParsedKey { tag, kind })
    }
}

/// The inverse of [`escape_into`].
fn unescape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(r) = after.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = after.strip_prefix("%3A") {
            out.push(':');
            rest = r;
        } else {
            out.push('%');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
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

    /// The limit segment and the values a key parses back into.
    fn rate_parts(key: &str) -> (String, Algorithm, Segments<'_>, Option<u64>) {
        match ParsedKey::parse(key).map(|p| p.kind) {
            Some(KeyKind::Rate {
                limit,
                algorithm,
                values,
                window_s,
            }) => (limit.to_string(), algorithm, values, window_s),
            other => panic!("{key} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_documented_keys_parse_back() {
        let quota = RuleId::new("quota:q", &[]);
        let minute = limit(Period::Minute, Algorithm::FixedWindow);
        let base = quota_counter(&quota, QuotaCounter::Requests(&minute), "a%3Ab:");
        let key = counter_key(&base, &Counter::Rate(minute), 1_700_000_059_999);
        let parsed = ParsedKey::parse(&key).unwrap();
        assert_eq!(parsed.tag, quota.as_str());
        let (segment, algorithm, values, window) = rate_parts(&key);
        assert_eq!(
            (segment.as_str(), algorithm, window),
            ("rminutew", Algorithm::FixedWindow, Some(1_700_000_040))
        );
        assert_eq!(values.split(2), Some((vec!["a:b".into(), "".into()], None)));
        assert_eq!(values.split(3), None, "another quota's shape");
        // A money budget for a UTC month: the window starts on the 1st
        // (2023-11-01 00:00 UTC for 2023-11-14).
        let month = limit(Period::Month, Algorithm::FixedWindow);
        let base = quota_counter(&quota, QuotaCounter::Spend(&month), "acme");
        let key = counter_key(&base, &Counter::Rate(month), 1_700_000_059_999);
        let (segment, _, values, window) = rate_parts(&key);
        assert_eq!((segment.as_str(), window), ("smonthw", Some(1_698_796_800)));
        assert_eq!(values.split(1), Some((vec!["acme".into()], None)));
        let c = class_share(
            &quota_counter(&quota, QuotaCounter::Concurrent, "x"),
            "gold",
        );
        assert_eq!(
            ParsedKey::parse(&c).map(|p| p.kind),
            Some(KeyKind::Slots {
                values: Segments(vec!["x", "class=gold"])
            })
        );
        assert_eq!(
            ParsedKey::parse(&reservation(&quota, "r1")).map(|p| p.kind),
            Some(KeyKind::Reservation { id: "r1" })
        );
        let rule = RuleId::new("edge", &[]);
        assert_eq!(
            ParsedKey::parse(&rls_reservation(&rule, "a:b")).map(|p| p.kind),
            Some(KeyKind::RlsReservation { id: "a_b" })
        );
        assert_eq!(
            ParsedKey::parse(REGISTRY).map(|p| p.kind),
            Some(KeyKind::Registry)
        );
        for foreign in [
            "tg:probe:i:1",
            "other",
            "tg:{}:minutew:1",
            "tg:{q}:minutew:notawindow",
            "tg:{q}:minutex:a",
            "tg:{q}:res",
        ] {
            assert_eq!(ParsedKey::parse(foreign), None, "{foreign}");
        }
    }

    proptest! {
        /// Every counter key the builders make parses back into its owner,
        /// limit segment, values, class and window, whatever the values
        /// hold.
        #[test]
        fn counter_keys_parse_back_into_what_built_them(
            values in prop::collection::vec("[a-z:%=]{0,4}|class=[a-z]{0,2}|%3A|%25", 0..4),
            class in prop::option::of("[a-z:=%]{0,3}"),
            period in prop::sample::select(vec![
                Period::Second, Period::Minute, Period::Hour, Period::Day,
                Period::Week, Period::Month, Period::Year,
            ]),
            bucket in any::<bool>(),
            berlin in any::<bool>(),
            now in 0u64..4_000_000_000_000,
        ) {
            let zone = if berlin {
                crate::rules::Zone::parse("Europe/Berlin").expect("a zone")
            } else {
                crate::rules::Zone::Utc
            };
            // A token bucket needs a fixed-length period.
            let algorithm = if bucket && period.is_fixed(zone) {
                Algorithm::TokenBucket
            } else {
                Algorithm::FixedWindow
            };
            let l = Limit { zone, ..limit(period, algorithm) };
            let counter = Counter::Rate(l);
            let window = arith::key_suffix(&l, now);
            let quota = RuleId::new("quota:q", &[]);
            let joined = quota_values(values.iter().map(|v| Some(v.as_str())));
            for which in [QuotaCounter::Tokens(&l), QuotaCounter::Requests(&l), QuotaCounter::Spend(&l)] {
                let mut base = quota_counter(&quota, which, &joined);
                if let Some(c) = &class {
                    base = class_share(&base, c);
                }
                let key = counter_key(&base, &counter, now);
                prop_assert_eq!(ParsedKey::parse(&key).map(|p| p.tag), Some(quota.as_str()));
                let (segment, alg, segments, w) = rate_parts(&key);
                // The segment is the one the builder writes for this limit.
                let bare = quota_counter(&quota, which, "");
                prop_assert_eq!(format!("tg:{{{quota}}}:{segment}:"), bare);
                prop_assert_eq!(alg, algorithm);
                prop_assert_eq!(w, window);
                prop_assert_eq!(segments.split(values.len()), Some((values.clone(), class.clone())));
            }
            let slots = quota_counter(&quota, QuotaCounter::Concurrent, &joined);
            let slots = match &class {
                Some(c) => class_share(&slots, c),
                None => slots,
            };
            match ParsedKey::parse(&slots).map(|p| p.kind) {
                Some(KeyKind::Slots { values: segments }) => {
                    prop_assert_eq!(segments.split(values.len()), Some((values.clone(), class.clone())));
                }
                other => prop_assert!(false, "{} parsed as {:?}", slots, other),
            }
            let rule = RuleId::new("edge", &[]);
            let base = rule_counter(&rule, &l, values.iter().map(String::as_str));
            let key = counter_key(&base, &counter, now);
            let (segment, _, segments, w) = rate_parts(&key);
            prop_assert_eq!(
                format!("tg:{{{rule}}}:{segment}"),
                rule_counter(&rule, &l, std::iter::empty())
            );
            prop_assert_eq!(w, window);
            prop_assert_eq!(segments.values(), values);
        }
    }
}
