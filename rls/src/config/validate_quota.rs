//! `[[quota]]` from its view: who it counts (`match`), what (`count`), and
//! its limits per period (tokens, requests, spend, concurrency).

use super::error::Source;
use super::file::{CountView, QuotaView};
use super::suggest::{self, COUNTS};
use super::validate::{algorithm_of, failure_policy};
use super::validate_llm::{matchers, max_wait, time_zone};
use super::ConfigError;
use crate::rules::{micros, Algorithm, CountSpec, Limit, Period, Quota, QuotaLimit, RuleId, Zone};
use toml::Spanned;

/// One `[[quota]]`; `before` is the error count before its table was
/// read, so a quota with any error (type errors included) is not built.
pub(crate) fn quota(
    src: &Source,
    v: Spanned<QuotaView>,
    before: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<Quota> {
    let at = v.span().start;
    let q = v.into_inner();
    let name = q.name.get_ref().trim().to_string();
    if name.is_empty() {
        errors.push(src.error(q.name.span().start, "quota.name", "must not be empty"));
    }
    let matchers = matchers(src, q.matchers.as_ref(), at, "quota.match", errors);
    let max_wait = max_wait(src, q.max_wait.as_ref(), "quota.max_wait", errors);
    let limits = quota_limits(src, &q, at, errors);
    if limits.is_empty() && errors.len() == before {
        errors.push(src.error(
            at,
            "quota.tokens_per_minute",
            "a quota needs at least one limit: tokens_per_*, requests_per_* or spend_per_* \
             (minute, hour, day, week, month), or max_concurrent",
        ));
    }
    let count = count(src, q.count.as_ref(), errors);
    let mut on_error = None;
    if let Some(p) = &q.on_error {
        match failure_policy(p.get_ref()) {
            Ok(x) => on_error = Some(x),
            Err(e) => errors.push(src.error(p.span().start, "quota.on_error", e)),
        }
    }
    let warn_at = q.warn_at.as_ref().map(|w| {
        let x = *w.get_ref();
        if !(x > 0.0 && x < 1.0) {
            errors.push(src.error(
                w.span().start,
                "quota.warn_at",
                format!("{x}: a fraction of each limit, above 0 and below 1, like 0.8"),
            ));
        }
        x
    });
    if errors.len() > before {
        return None;
    }
    Some(Quota {
        id: RuleId::new(&format!("quota:{name}"), &[]),
        name,
        matchers,
        limits,
        count,
        on_error,
        max_wait,
        warn_at,
        source: format!("{}:{}", src.name, src.line_of(at)),
    })
}

/// The periods a quota's `*_per_*` fields come in.
const QUOTA_PERIODS: [Period; 5] = [
    Period::Minute,
    Period::Hour,
    Period::Day,
    Period::Week,
    Period::Month,
];

/// A quota's limits: tokens, requests and spend per period, then
/// concurrency. `algorithm` applies where windows have one length; days in
/// a time zone, weeks and months always count calendar windows.
fn quota_limits(
    src: &Source,
    q: &QuotaView,
    at: usize,
    errors: &mut Vec<ConfigError>,
) -> Vec<QuotaLimit> {
    let windows = Windows::of(src, q, errors);
    let mut limits = Vec::new();
    counted_limits(src, q, at, &windows, &mut limits, errors);
    if let Some(max) = q.max_concurrent {
        if max == 0 {
            errors.push(src.error(at, "quota.max_concurrent", "must be at least 1"));
        }
        limits.push(QuotaLimit::Concurrent { max });
    }
    limits
}

/// A quota's `algorithm` and `time_zone`: how each of its windows counts.
struct Windows {
    algorithm: Algorithm,
    zone: Zone,
}

impl Windows {
    fn of(src: &Source, q: &QuotaView, errors: &mut Vec<ConfigError>) -> Windows {
        let mut algorithm = Algorithm::FixedWindow;
        if let Some(a) = &q.algorithm {
            match algorithm_of(a.get_ref()) {
                Ok(x) => algorithm = x,
                Err(e) => errors.push(src.error(a.span().start, "quota.algorithm", e)),
            }
        }
        let zone = q
            .time_zone
            .as_ref()
            .and_then(|z| time_zone(src, z, "quota.time_zone", errors))
            .unwrap_or_default();
        Windows { algorithm, zone }
    }

    /// `amount` per `period`: the quota's algorithm where the window has
    /// one length, else calendar (fixed) windows.
    fn limit(&self, amount: u64, period: Period) -> Limit {
        Limit {
            amount,
            period,
            algorithm: if period.is_fixed(self.zone) {
                self.algorithm
            } else {
                Algorithm::FixedWindow
            },
            zone: self.zone,
        }
    }
}

/// `tokens_per_*`, `requests_per_*`, `spend_per_*`, each checked.
fn counted_limits(
    src: &Source,
    q: &QuotaView,
    at: usize,
    windows: &Windows,
    limits: &mut Vec<QuotaLimit>,
    errors: &mut Vec<ConfigError>,
) {
    let tokens = [
        q.tokens_per_minute,
        q.tokens_per_hour,
        q.tokens_per_day,
        q.tokens_per_week,
        q.tokens_per_month,
    ];
    let requests = [
        q.requests_per_minute,
        q.requests_per_hour,
        q.requests_per_day,
        q.requests_per_week,
        q.requests_per_month,
    ];
    let spend = [
        q.spend_per_minute,
        q.spend_per_hour,
        q.spend_per_day,
        q.spend_per_week,
        q.spend_per_month,
    ];
    let mut push = |l: QuotaLimit, errors: &mut Vec<ConfigError>| {
        let (QuotaLimit::Tokens(x) | QuotaLimit::Requests(x) | QuotaLimit::Spend(x)) = l else {
            return;
        };
        match x.validate() {
            Ok(()) => limits.push(l),
            Err(e) => errors.push(src.error(at, format!("quota.{}", l.field()), e)),
        }
    };
    for (kind, amounts) in [(0, tokens), (1, requests)] {
        for (amount, period) in amounts.into_iter().zip(QUOTA_PERIODS) {
            let Some(amount) = amount else { continue };
            let l = windows.limit(amount, period);
            push(
                if kind == 0 {
                    QuotaLimit::Tokens(l)
                } else {
                    QuotaLimit::Requests(l)
                },
                errors,
            );
        }
    }
    for (amount, period) in spend.into_iter().zip(QUOTA_PERIODS) {
        let Some(amount) = amount else { continue };
        let field = format!("quota.spend_per_{}", period.as_str());
        match micros(amount) {
            Ok(0) => errors.push(src.error(at, field, "must be more than 0")),
            Ok(m) => push(QuotaLimit::Spend(windows.limit(m, period)), errors),
            Err(e) => errors.push(src.error(at, field, e.to_string())),
        }
    }
}

/// A quota's `count`: a named count or weights.
fn count(src: &Source, c: Option<&Spanned<CountView>>, errors: &mut Vec<ConfigError>) -> CountSpec {
    let Some(c) = c else {
        return CountSpec::Total;
    };
    match c.get_ref() {
        CountView::Name(n) => match n.as_str() {
            "prompt" => CountSpec::Prompt,
            "completion" => CountSpec::Completion,
            "total" => CountSpec::Total,
            other => {
                errors.push(src.error(
                    c.span().start,
                    "quota.count",
                    format!(
                        "`{other}`: expected prompt, completion, total or {{ prompt = 1, completion = 4, cached = 0 }}{}",
                        suggest::hint(other, COUNTS.iter().copied())
                    ),
                ));
                CountSpec::Total
            }
        },
        CountView::Weights(w) => {
            if [w.prompt, w.completion, w.cached]
                .iter()
                .any(|x| !(0.0..=1000.0).contains(x))
            {
                errors.push(src.error(
                    c.span().start,
                    "quota.count",
                    "weights must be between 0 and 1000",
                ));
            }
            CountSpec::Weights {
                prompt: w.prompt,
                completion: w.completion,
                cached: w.cached,
            }
        }
    }
}
