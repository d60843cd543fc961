//! "Did you mean": the nearest valid name for a misspelt field or value,
//! and the closed sets of values that config fields take.

/// `[store] kind`.
pub(crate) const STORE_KINDS: &[&str] = &["memory", "redis"];
/// `on_error` of the store, a rule or a quota.
pub(crate) const FAILURE_POLICIES: &[&str] = &["fail_open", "fail_closed", "local"];
/// `[server] log_format`.
pub(crate) const LOG_FORMATS: &[&str] = &["human", "json"];
/// `algorithm` of a rule, a limit or a quota.
pub(crate) const ALGORITHMS: &[&str] = &["fixed_window", "token_bucket"];
/// A limit's `per` (the one-letter forms are accepted too, not suggested).
pub(crate) const PERIODS: &[&str] = &["second", "minute", "hour", "day", "week", "month", "year"];
/// `[llm] estimator`.
pub(crate) const ESTIMATORS: &[&str] = &["bpe", "bytes"];
/// `[llm] on_abort` and `on_upstream_error`.
pub(crate) const SETTLE_POLICIES: &[&str] = &["keep_estimate", "refund", "charge_streamed"];
/// A quota's `count` by name.
pub(crate) const COUNTS: &[&str] = &["prompt", "completion", "total"];
/// Keys of a quota's or a class's `match` table.
pub(crate) const IDENTITY_KEYS: &[&str] = &["tenant", "api_key", "class", "model", "route"];
/// The word a `max_wait` may be instead of a duration.
pub(crate) const MAX_WAIT_WORDS: &[&str] = &["auto"];

/// The candidate closest to `word`, if it is close enough to be the
/// intended one: at most a third of its letters wrong (at least one), by
/// Damerau-Levenshtein distance, case ignored. Ties go to the first.
pub(crate) fn nearest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let written = word.trim();
    let word = written.to_lowercase();
    if word.is_empty() {
        return None;
    }
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == written {
            return None;
        }
        let d = strsim::damerau_levenshtein(&word, &c.to_lowercase());
        let allowed = (c.chars().count().max(word.chars().count()) / 3).max(1);
        if d <= allowed && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `"; did you mean `x`?"` when a candidate is close to `word`, else `""`:
/// appended to a message that already says what is expected.
pub(crate) fn hint<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    nearest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// `"`x`: expected a, b or c"`, with a hint when `word` is close to one.
pub(crate) fn expected(word: &str, candidates: &[&str]) -> String {
    let list = match candidates {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => format!(
            "{} or `{last}`",
            init.iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "`{word}`: expected {list}{}",
        hint(word, candidates.iter().copied())
    )
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into
/// "unknown field `x`, did you mean `a`?" when one is close; other
/// messages are returned as they are.
pub(crate) fn unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let names: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|n| !n.is_empty())
        .collect();
    match nearest(field, names.iter().copied()) {
        Some(c) => format!("unknown field `{field}`, did you mean `{c}`?"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::FailurePolicy;
    use crate::rules::{Algorithm, IdentityKey, MaxWait, Period, SettlePolicy};

    #[test]
    fn the_nearest_name_within_a_third_of_its_letters() {
        assert_eq!(nearest("shadw", ["shadow", "name"]), Some("shadow"));
        assert_eq!(
            nearest("memroy", STORE_KINDS.iter().copied()),
            Some("memory")
        );
        assert_eq!(nearest("minit", PERIODS.iter().copied()), Some("minute"));
        assert_eq!(nearest("Redis", STORE_KINDS.iter().copied()), Some("redis"));
        assert_eq!(nearest("fortnight", PERIODS.iter().copied()), None);
        assert_eq!(nearest("", PERIODS.iter().copied()), None);
        assert_eq!(nearest("day", PERIODS.iter().copied()), None, "exact");
        assert_eq!(
            expected("minit", PERIODS),
            "`minit`: expected `second`, `minute`, `hour`, `day`, `week`, `month` or `year`; did you mean `minute`?"
        );
        assert_eq!(
            expected("x", STORE_KINDS),
            "`x`: expected `memory` or `redis`"
        );
    }

    #[test]
    fn serde_unknown_field_messages_get_the_nearest_name() {
        assert_eq!(
            unknown_field("unknown field `shadw`, expected one of `domain`, `shadow`, `name`"),
            "unknown field `shadw`, did you mean `shadow`?"
        );
        let far = "unknown field `zzz`, expected `domain`";
        assert_eq!(unknown_field(far), far);
        let other = "invalid type: integer `5`, expected a string";
        assert_eq!(unknown_field(other), other);
    }

    /// Each suggested name is one the parser takes, so a suggestion never
    /// leads to another error.
    #[test]
    fn every_suggested_value_parses() {
        assert!(FAILURE_POLICIES
            .iter()
            .all(|p| FailurePolicy::parse(p).is_some()));
        assert!(ALGORITHMS.iter().all(|a| Algorithm::parse(a).is_some()));
        assert!(PERIODS.iter().all(|p| Period::parse(p).is_some()));
        assert!(SETTLE_POLICIES
            .iter()
            .all(|p| SettlePolicy::parse(p).is_some()));
        assert!(IDENTITY_KEYS
            .iter()
            .all(|k| IdentityKey::parse(k).is_some()));
        assert!(MAX_WAIT_WORDS.iter().all(|w| MaxWait::parse(w).is_ok()));
        for (set, field) in [
            (STORE_KINDS, "kind"),
            (LOG_FORMATS, "log_format"),
            (ESTIMATORS, "estimator"),
        ] {
            for v in set {
                let table = if field == "log_format" {
                    "server"
                } else if field == "kind" {
                    "store"
                } else {
                    "llm"
                };
                let text = format!("[{table}]\n{field} = \"{v}\"\n");
                let text = if *v == "redis" {
                    format!("{text}url = \"redis://127.0.0.1:6379\"\n")
                } else {
                    text
                };
                assert!(crate::config::parse_str("t.toml", &text).is_ok(), "{text}");
            }
        }
        for c in COUNTS {
            let text = format!("[[quota]]\nname = \"q\"\nmax_concurrent = 1\ncount = \"{c}\"\n");
            assert!(crate::config::parse_str("t.toml", &text).is_ok(), "{text}");
        }
    }
}
