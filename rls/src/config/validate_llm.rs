//! Validation of `[llm]`, `[[model]]` and `[[quota]]`.

use super::error::Source;
use super::file::{ClassView, LlmView, ModelView};
use super::suggest::{self, ESTIMATORS, IDENTITY_KEYS, MAX_WAIT_WORDS, SETTLE_POLICIES};
use super::validate_price;
use super::ConfigError;
use crate::rules::{
    Class, Estimator, IdentityKey, LlmSettings, MaxWait, Model, Quota, SettlePolicy, ValuePattern,
    Zone,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use toml::Spanned;

/// `[llm]` from its view: each step checks one group of fields, in the
/// order their errors have always been reported.
pub(crate) fn settings(src: &Source, v: LlmView, errors: &mut Vec<ConfigError>) -> LlmSettings {
    let mut s = LlmSettings::default();
    plain(&v, &mut s);
    estimator(src, &v, &mut s, errors);
    body_limits(src, &v, &mut s, errors);
    settling(src, &v, &mut s, errors);
    waits(src, &v, &mut s, errors);
    currency(src, &v, &mut s, errors);
    s
}

/// The fields any value of their type is good for: header names
/// (lowercased, as HTTP/2 sends them) and switches.
fn plain(v: &LlmView, s: &mut LlmSettings) {
    if let Some(h) = &v.tenant_header {
        s.tenant_header = h.to_ascii_lowercase();
    }
    if let Some(h) = &v.api_key_header {
        s.api_key_header = h.to_ascii_lowercase();
    }
    if let Some(h) = &v.class_header {
        s.class_header = h.to_ascii_lowercase();
    }
    if let Some(b) = v.inject_stream_usage {
        s.inject_stream_usage = b;
    }
    if let Some(b) = v.allow_unknown_models {
        s.allow_unknown_models = b;
    }
    if let Some(n) = v.unknown_model_max_output {
        s.unknown_model_max_output = n;
    }
    if let Some(h) = &v.model_header {
        s.model_header = h.to_ascii_lowercase();
    }
    if let Some(b) = v.ietf_headers {
        s.ietf_headers = b;
    }
}

/// `estimator`: how a request's tokens are guessed before the answer.
fn estimator(src: &Source, v: &LlmView, s: &mut LlmSettings, errors: &mut Vec<ConfigError>) {
    if let Some(e) = &v.estimator {
        match Estimator::parse(e.get_ref()) {
            Some(estimator) => s.estimator = estimator,
            None => errors.push(src.error(
                e.span().start,
                "llm.estimator",
                suggest::expected(e.get_ref(), ESTIMATORS),
            )),
        }
    }
}

/// `max_body_bytes` and `max_buffered_bytes`: the buffer holds at least
/// the largest body.
fn body_limits(src: &Source, v: &LlmView, s: &mut LlmSettings, errors: &mut Vec<ConfigError>) {
    if let Some(b) = &v.max_body_bytes {
        if *b.get_ref() < 1024 {
            errors.push(src.error(b.span().start, "llm.max_body_bytes", "at least 1024"));
        }
        s.max_body_bytes = usize::try_from(*b.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(b) = &v.max_buffered_bytes {
        s.max_buffered_bytes = usize::try_from(*b.get_ref()).unwrap_or(usize::MAX);
        if s.max_buffered_bytes < s.max_body_bytes {
            errors.push(src.error(
                b.span().start,
                "llm.max_buffered_bytes",
                format!(
                    "{} is below max_body_bytes ({}): a body of the largest size could never be held",
                    s.max_buffered_bytes, s.max_body_bytes
                ),
            ));
        }
    } else {
        s.max_buffered_bytes = s.max_buffered_bytes.max(s.max_body_bytes);
    }
}

/// `reservation_ttl`, `on_abort`, `on_upstream_error`: how a reservation
/// ends when no usage comes back.
fn settling(src: &Source, v: &LlmView, s: &mut LlmSettings, errors: &mut Vec<ConfigError>) {
    if let Some(t) = &v.reservation_ttl {
        match humantime::parse_duration(t.get_ref()) {
            Ok(d) if d.as_secs() >= 1 => s.reservation_ttl = d,
            _ => errors.push(src.error(
                t.span().start,
                "llm.reservation_ttl",
                format!("`{}`: a duration of at least 1s, like \"10m\"", t.get_ref()),
            )),
        }
    }
    for (field, value, out) in [
        ("llm.on_abort", &v.on_abort, &mut s.on_abort),
        (
            "llm.on_upstream_error",
            &v.on_upstream_error,
            &mut s.on_upstream_error,
        ),
    ] {
        if let Some(p) = value {
            match SettlePolicy::parse(p.get_ref()) {
                Some(policy) => *out = policy,
                None => errors.push(src.error(
                    p.span().start,
                    field,
                    format!(
                        "`{}`: expected keep_estimate, refund or charge_streamed{}",
                        p.get_ref(),
                        suggest::hint(p.get_ref(), SETTLE_POLICIES.iter().copied())
                    ),
                )),
            }
        }
    }
}

/// `max_wait`, `max_wait_cap`, `max_message_timeout`: how long a request
/// may be held, within what Envoy allows.
fn waits(src: &Source, v: &LlmView, s: &mut LlmSettings, errors: &mut Vec<ConfigError>) {
    if let Some(w) = max_wait(src, v.max_wait.as_ref(), "llm.max_wait", errors) {
        s.max_wait = w;
    }
    if let Some(c) = &v.max_wait_cap {
        match humantime::parse_duration(c.get_ref().trim()) {
            Ok(d) if d <= Duration::from_secs(3600) => s.max_wait_cap = d,
            _ => errors.push(src.error(
                c.span().start,
                "llm.max_wait_cap",
                format!("`{}`: a duration of at most 1h, like \"30s\"", c.get_ref()),
            )),
        }
    }
    if let Some(t) = &v.max_message_timeout {
        match humantime::parse_duration(t.get_ref().trim()) {
            Ok(d) if d >= Duration::from_secs(2) && d <= Duration::from_secs(3600) => {
                s.max_message_timeout = d
            }
            _ => errors.push(src.error(
                t.span().start,
                "llm.max_message_timeout",
                format!(
                    "`{}`: Envoy's ext_proc max_message_timeout, between 2s and 1h, like \"60s\"",
                    t.get_ref()
                ),
            )),
        }
    }
}

/// `currency`: the short code money budgets and prices are in.
fn currency(src: &Source, v: &LlmView, s: &mut LlmSettings, errors: &mut Vec<ConfigError>) {
    if let Some(c) = &v.currency {
        let code = c.get_ref().trim();
        if code.is_empty() || code.len() > 8 || !code.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            errors.push(src.error(
                c.span().start,
                "llm.currency",
                format!("`{code}`: a currency code of up to 8 letters, like \"USD\" or \"EUR\""),
            ));
        } else {
            s.currency = code.to_string();
        }
    }
}

/// An optional `max_wait` field: `"auto"` or a duration.
pub(super) fn max_wait(
    src: &Source,
    v: Option<&Spanned<String>>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<MaxWait> {
    let v = v?;
    match MaxWait::parse(v.get_ref()) {
        Ok(w) => Some(w),
        Err(e) => {
            let hint = suggest::hint(v.get_ref(), MAX_WAIT_WORDS.iter().copied());
            errors.push(src.error(v.span().start, field, format!("{e}{hint}")));
            None
        }
    }
}

/// A `match = { key = "pattern" }` table of a quota or a class.
pub(super) fn matchers(
    src: &Source,
    table: Option<&Spanned<BTreeMap<String, String>>>,
    at: usize,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(IdentityKey, ValuePattern)> {
    let Some(table) = table else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in table.get_ref() {
        match IdentityKey::parse(k) {
            Some(key) => out.push((key, ValuePattern::parse(v))),
            None => errors.push(src.error(
                table.span().start.max(at),
                field,
                format!(
                    "`{k}`: expected tenant, api_key, class, model or route{}",
                    suggest::hint(k, IDENTITY_KEYS.iter().copied())
                ),
            )),
        }
    }
    out
}

pub(crate) fn model(src: &Source, v: Spanned<ModelView>, errors: &mut Vec<ConfigError>) -> Model {
    let m = v.into_inner();
    if m.name.get_ref().trim().is_empty() {
        errors.push(src.error(m.name.span().start, "model.name", "must not be empty"));
    }
    if *m.context_window.get_ref() == 0 {
        errors.push(src.error(
            m.context_window.span().start,
            "model.context_window",
            "must be at least 1",
        ));
    }
    if m.default_max_output.get_ref() > m.context_window.get_ref() {
        errors.push(src.error(
            m.default_max_output.span().start,
            "model.default_max_output",
            "larger than the context window",
        ));
    }
    Model {
        max_wait: max_wait(src, m.max_wait.as_ref(), "model.max_wait", errors),
        name: m.name.into_inner(),
        context_window: m.context_window.into_inner(),
        default_max_output: m.default_max_output.into_inner(),
        fallback: m.fallback,
        price: m
            .price
            .as_ref()
            .and_then(|p| validate_price::price(src, p, "model.price", errors)),
    }
}

/// An IANA time zone name (`Europe/Berlin`) or `UTC`.
pub(crate) fn time_zone(
    src: &Source,
    z: &Spanned<String>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Zone> {
    let name = z.get_ref().trim();
    let zone = Zone::parse(name);
    if zone.is_none() {
        let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
        errors.push(src.error(
            z.span().start,
            field,
            format!(
                "`{name}`: not an IANA time zone (like \"Europe/Berlin\" or \"UTC\"){}",
                suggest::hint(name, names)
            ),
        ));
    }
    zone
}

pub(crate) fn class(src: &Source, v: Spanned<ClassView>, errors: &mut Vec<ConfigError>) -> Class {
    let at = v.span().start;
    let c = v.into_inner();
    let name = c.name.get_ref().trim().to_string();
    if name.is_empty() {
        errors.push(src.error(c.name.span().start, "class.name", "must not be empty"));
    }
    let share = c.share.as_ref().map(|s| {
        let x = *s.get_ref();
        if !(x > 0.0 && x <= 1.0) {
            errors.push(src.error(
                s.span().start,
                "class.share",
                format!("{x}: a fraction of the budget, above 0 and at most 1"),
            ));
        }
        x
    });
    Class {
        name,
        priority: c.priority,
        share,
        flexible: c.flexible.unwrap_or(true),
        max_wait: max_wait(src, c.max_wait.as_ref(), "class.max_wait", errors),
        matchers: matchers(src, c.matchers.as_ref(), at, "class.match", errors),
        default: c.default,
        source: format!("{}:{}", src.name, src.line_of(at)),
    }
}

/// Class names are unique (they are metric labels and header values); at
/// most one is the default; shares are given for every class or none, and
/// add up to 1.
pub(crate) fn check_classes(classes: &[Class], errors: &mut Vec<ConfigError>) {
    let mut seen = HashSet::new();
    for c in classes {
        if !seen.insert(c.name.as_str()) {
            errors.push(ConfigError::at(
                &c.source,
                "class.name",
                format!("`{}` is defined twice", c.name),
            ));
        }
    }
    if let Some(second) = classes.iter().filter(|c| c.default).nth(1) {
        errors.push(ConfigError::at(
            &second.source,
            "class.default",
            "more than one class is the default".into(),
        ));
    }
    let with_share = classes.iter().filter(|c| c.share.is_some()).count();
    let first = classes.first().map(|c| c.source.as_str()).unwrap_or("");
    if with_share > 0 && with_share < classes.len() {
        errors.push(ConfigError::at(
            first,
            "class.share",
            "give every class a share, or none (then classes only order the queue)".into(),
        ));
    } else if with_share > 0 {
        let sum: f64 = classes.iter().filter_map(|c| c.share).sum();
        if (sum - 1.0).abs() > 0.001 {
            errors.push(ConfigError::at(
                first,
                "class.share",
                format!("the shares add up to {sum:.3}, not 1"),
            ));
        }
    }
}

/// Quota names are metric labels and must be unique; fallbacks must name
/// models that exist. `sources[i]` is where `models[i]` is (`file:line`).
pub(crate) fn cross_check(
    models: &[Model],
    sources: &[String],
    quotas: &[Quota],
    errors: &mut Vec<ConfigError>,
) {
    let mut seen = HashSet::new();
    for q in quotas {
        if !seen.insert(q.name.as_str()) {
            errors.push(ConfigError::at(
                &q.source,
                "quota.name",
                format!("`{}` names two quotas", q.name),
            ));
        }
    }
    let names: HashSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
    let mut seen = HashSet::new();
    for (m, source) in models.iter().zip(sources) {
        if !seen.insert(m.name.as_str()) {
            errors.push(ConfigError::at(
                source,
                "model.name",
                format!("`{}` is defined twice", m.name),
            ));
        }
        for f in &m.fallback {
            if !names.contains(f.as_str()) || f == &m.name {
                let others = models
                    .iter()
                    .map(|o| o.name.as_str())
                    .filter(|o| *o != m.name);
                errors.push(ConfigError::at(
                    source,
                    "model.fallback",
                    format!(
                        "`{}` falls back to `{f}`, which is not another [[model]]{}",
                        m.name,
                        suggest::hint(f, others)
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use crate::rules::{Algorithm, Price, QuotaLimit, Zone};

    fn errors(text: &str) -> Vec<String> {
        parse_str("t.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const PRICED: &str = r#"
[llm]
currency = "EUR"

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 4096
price = { input = 2.50, output = 10, cached_input = 1.25 }

[prices]
"gpt-4o-mini" = { input = 0.15, output = 0.60 }

[[quota]]
name = "team-a"
match = { tenant = "team-a" }
spend_per_month = 500
spend_per_day = 50.25
tokens_per_week = 1000000
requests_per_hour = 100
time_zone = "Europe/Berlin"
algorithm = "token_bucket"
warn_at = 0.8
"#;

    #[test]
    fn prices_and_money_limits_are_read_in_micro_units() {
        let c = parse_str("t.toml", PRICED).unwrap();
        let llm = &c.llm;
        assert_eq!(llm.settings.currency, "EUR");
        assert_eq!(
            llm.price("gpt-4o"),
            Some(&Price {
                input: 2_500_000,
                output: 10_000_000,
                cached_input: 1_250_000
            })
        );
        assert_eq!(
            llm.price("gpt-4o-mini"),
            Some(&Price {
                input: 150_000,
                output: 600_000,
                cached_input: 150_000
            }),
            "cached input defaults to the input price"
        );
        assert_eq!(llm.price("claude"), None);
        let q = &llm.quotas[0];
        assert_eq!(q.warn_at, Some(0.8));
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let fields: Vec<(String, u64, Algorithm, Zone)> = q
            .limits
            .iter()
            .map(|l| match l {
                QuotaLimit::Tokens(x) | QuotaLimit::Requests(x) | QuotaLimit::Spend(x) => {
                    (l.field(), x.amount, x.algorithm, x.zone)
                }
                QuotaLimit::Concurrent { max } => {
                    (l.field(), *max, Algorithm::FixedWindow, Zone::Utc)
                }
            })
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "tokens_per_week".to_string(),
                    1_000_000,
                    Algorithm::FixedWindow,
                    berlin
                ),
                (
                    "requests_per_hour".to_string(),
                    100,
                    Algorithm::TokenBucket,
                    berlin
                ),
                (
                    "spend_per_day".to_string(),
                    50_250_000,
                    Algorithm::FixedWindow,
                    berlin
                ),
                (
                    "spend_per_month".to_string(),
                    500_000_000,
                    Algorithm::FixedWindow,
                    berlin
                ),
            ],
            "a bucket where windows have one length; calendar windows elsewhere"
        );
        assert!(q.limits_spend());
    }

    #[test]
    fn money_mistakes_are_named() {
        let e = errors(
            r#"
[llm]
currency = "US Dollar"

[[model]]
name = "m"
context_window = 10
default_max_output = 1

[[model]]
name = "n"
context_window = 10
default_max_output = 1
price = { input = 1, output = 0.0000001 }

[prices]
"n" = { input = 1, output = 2 }
"o" = { input = 1, output = 2, reasoning = 3 }
"p" = { input = -1, output = 2 }

[[quota]]
name = "q"
spend_per_day = 0
spend_per_month = 1.1234567
time_zone = "Europe/Berln"
warn_at = 1.5

[[quota]]
name = "r"
spend_per_day = 5
"#,
        );
        let want = [
            "t.toml:3: llm.currency: `US Dollar`: a currency code",
            "t.toml:14: model.price.output: 0.0000001: at most 6 decimals",
            "t.toml:18: prices.o.reasoning: unknown field `reasoning`",
            "t.toml:19: prices.p.input: -1: must be a number of at least 0",
            "t.toml:25: quota.time_zone: `Europe/Berln`: not an IANA time zone",
            "did you mean `Europe/Berlin`?",
            "t.toml:21: quota.spend_per_day: must be more than 0",
            "t.toml:21: quota.spend_per_month: 1.1234567: at most 6 decimals",
            "t.toml:26: quota.warn_at: 1.5: a fraction",
            "t.toml:28: quota.spend: quota `r` limits spend, but model `m` has no price",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.contains(w)), "{w:?} not in {e:#?}");
        }
    }

    #[test]
    fn a_model_is_priced_once_and_a_spend_quota_on_other_models_needs_no_price() {
        let e = errors(
            r#"
[[model]]
name = "m"
context_window = 10
default_max_output = 1
price = { input = 1, output = 2 }

[prices]
m = { input = 1, output = 2 }
"#,
        );
        assert!(
            e.iter()
                .any(|x| x.contains("model.price: `m` has a price here and in [prices]")),
            "{e:#?}"
        );
        let ok = r#"
[[model]]
name = "m"
context_window = 10
default_max_output = 1

[[model]]
name = "p"
context_window = 10
default_max_output = 1
price = { input = 1, output = 2 }

[[quota]]
name = "q"
match = { model = "p" }
spend_per_day = 5
"#;
        parse_str("t.toml", ok).unwrap();
    }
}
