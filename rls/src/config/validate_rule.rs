//! One `[[rule]]` table → a runtime `Rule`. Each step checks one part of the
//! table and pushes its errors in the order a reader meets the fields, so
//! one run reports all of them.

use super::error::Source;
use super::file::{LimitView, RuleView};
use super::suggest::{self, PERIODS};
use super::validate::{algorithm_of, failure_policy, parse_into, path_text};
use super::validate_llm;
use super::ConfigError;
use crate::rules::{Algorithm, EntryPattern, FailurePolicy, Limit, Period, Rule, RuleId, Zone};
use std::sync::Arc;
use toml::Spanned;

/// Names a field of the rule being checked: `rule[3].limit.per`.
struct Fields {
    index: usize,
}

impl Fields {
    fn of(&self, name: &str) -> String {
        format!("rule[{}].{name}", self.index)
    }
}

/// One `[[rule]]`; `before` is the error count before its table was read,
/// so a rule with any error (type errors included) is not built, and no
/// "missing" error is added for a field already reported as wrong.
pub(super) fn rule(
    src: &Source,
    index: usize,
    view: Spanned<RuleView>,
    before: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<Rule> {
    let at = view.span().start;
    let v = view.into_inner();
    let f = Fields { index };

    let (domain, pattern) = domain_and_pattern(src, &v, &f, errors);
    let limits = limits(src, &v, &f, errors);
    check_limit_flags(src, &v, &f, at, !limits.is_empty(), before, errors);
    let share = share(src, &v, &f, &pattern, errors);
    let metadata = metadata(src, &v, &f, errors);
    let on_error = on_error(src, &v, &f, errors);
    let reserve = reserve(src, &v, &f, &pattern, errors);
    let name = name(src, &v, &f, at, errors);
    if errors.len() > before {
        return None;
    }
    let label = name
        .clone()
        .unwrap_or_else(|| format!("{domain}:{}", path_text(&pattern)));
    Some(Rule {
        id: RuleId::new(&domain, &pattern),
        label,
        name,
        domain,
        pattern,
        limits,
        unlimited: v.unlimited,
        shadow: v.shadow,
        detailed_metric: v.detailed_metric,
        replaces: v.replaces,
        on_error,
        reserve,
        lease: false,
        source: format!("{}:{}", src.name, src.line_of(at)),
        quota_mode: v.quota_mode,
        metadata,
        share,
    })
}

/// `domain` and `match`: what the rule applies to.
fn domain_and_pattern(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    errors: &mut Vec<ConfigError>,
) -> (String, Vec<EntryPattern>) {
    let domain = v.domain.get_ref().trim().to_string();
    if domain.is_empty() {
        errors.push(src.error(v.domain.span().start, f.of("domain"), "must not be empty"));
    }
    let mut pattern = Vec::new();
    if v.path.get_ref().is_empty() {
        errors.push(src.error(
            v.path.span().start,
            f.of("match"),
            "needs at least one descriptor entry",
        ));
    }
    for p in v.path.get_ref() {
        match EntryPattern::parse(p) {
            Ok(p) => pattern.push(p),
            Err(e) => errors.push(src.error(v.path.span().start, f.of("match"), e)),
        }
    }
    (domain, pattern)
}

/// `limit` or `limits`, with the rule's `algorithm` and `time_zone` as the
/// defaults each limit inherits.
fn limits(src: &Source, v: &RuleView, f: &Fields, errors: &mut Vec<ConfigError>) -> Vec<Limit> {
    let mut algorithm = Algorithm::default();
    if let Some(a) = &v.algorithm {
        parse_into(
            src,
            a,
            &f.of("algorithm"),
            errors,
            &mut algorithm,
            algorithm_of,
        );
    }
    // Whose calendar starts the rule's days, weeks, months and years
    // (`epoch`: envoyproxy/ratelimit's fixed lengths from the epoch).
    let zone = match &v.time_zone {
        None => Zone::Utc,
        Some(z) => validate_llm::time_zone(src, z, &f.of("time_zone"), errors).unwrap_or_default(),
    };
    let mut limits = Vec::new();
    let mut push = |lv: &LimitView, offset: usize, errors: &mut Vec<ConfigError>| {
        if let Some(l) = one_limit(src, lv, offset, f, algorithm, zone, errors) {
            limits.push(l);
        }
    };
    match (&v.limit, &v.limits) {
        (Some(l), None) => push(l.get_ref(), l.span().start, errors),
        (None, Some(ls)) => {
            for l in ls.get_ref() {
                push(l, ls.span().start, errors);
            }
        }
        (Some(l), Some(_)) => errors.push(src.error(
            l.span().start,
            f.of("limit"),
            "set `limit` or `limits`, not both",
        )),
        (None, None) => {}
    }
    limits
}

/// One `{ requests, per, algorithm }` table; `None` when it is refused.
fn one_limit(
    src: &Source,
    lv: &LimitView,
    offset: usize,
    f: &Fields,
    algorithm: Algorithm,
    zone: Zone,
    errors: &mut Vec<ConfigError>,
) -> Option<Limit> {
    let Some(period) = Period::parse(&lv.per) else {
        errors.push(src.error(
            offset,
            f.of("limit.per"),
            format!(
                "`{}`: expected second, minute, hour, day, week, month or year{}",
                lv.per,
                suggest::hint(&lv.per, PERIODS.iter().copied())
            ),
        ));
        return None;
    };
    let algorithm = match lv.algorithm.as_deref().map(algorithm_of) {
        None => algorithm,
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            errors.push(src.error(offset, f.of("limit.algorithm"), e));
            return None;
        }
    };
    let limit = Limit {
        amount: lv.requests,
        period,
        algorithm,
        zone,
    };
    // `requests = 0` blocks every hit (envoyproxy/ratelimit's
    // `requests_per_unit: 0`); a bucket that never refills cannot.
    let blocks = limit.amount == 0 && limit.algorithm == Algorithm::FixedWindow;
    match limit.validate() {
        Ok(()) => Some(limit),
        Err(_) if blocks => Some(limit),
        Err(e) => {
            errors.push(src.error(offset, f.of("limit.requests"), e));
            None
        }
    }
}

/// `unlimited` and `no_limit` against the limits: a rule has exactly one of
/// limits, `unlimited`, or `no_limit`.
fn check_limit_flags(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    at: usize,
    has_limits: bool,
    before: usize,
    errors: &mut Vec<ConfigError>,
) {
    if v.unlimited && has_limits {
        errors.push(src.error(at, f.of("unlimited"), "an unlimited rule takes no limit"));
    }
    if v.no_limit && (v.unlimited || has_limits) {
        errors.push(src.error(
            at,
            f.of("no_limit"),
            "a rule with no_limit takes no limit and is not unlimited",
        ));
    }
    if !v.unlimited && !v.no_limit && !has_limits && errors.len() == before {
        errors.push(src.error(
            at,
            f.of("limit"),
            "missing: set `limit = { requests = N, per = \"minute\" }` or `unlimited = true`",
        ));
    }
    if let (Some(n), true) = (&v.name, v.no_limit) {
        errors.push(src.error(
            n.span().start,
            f.of("name"),
            "a rule with no_limit has no name (nothing to replace or report)",
        ));
    }
}

/// `share_threshold`: per `match` level, the wildcard prefix whose values
/// share one counter.
fn share(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    pattern: &[EntryPattern],
    errors: &mut Vec<ConfigError>,
) -> Vec<Option<String>> {
    let mut share = Vec::new();
    if let Some(keys) = &v.share_threshold {
        share = vec![None; pattern.len()];
        for k in keys.get_ref() {
            match pattern.iter().position(|p| p.key() == k && p.is_wildcard()) {
                Some(level) => share[level] = pattern[level].value_text(),
                None => errors.push(src.error(
                    keys.span().start,
                    f.of("share_threshold"),
                    format!("`{k}` is not a key with a wildcard value (`{k}=prefix*`) in `match`"),
                )),
            }
        }
    }
    share
}

/// `metadata`: a table returned as JSON in dynamic metadata.
fn metadata(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<serde_json::Map<String, serde_json::Value>>> {
    let m = v.metadata.as_ref()?;
    match serde_json::to_value(m.get_ref()) {
        Ok(serde_json::Value::Object(o)) => Some(Arc::new(o)),
        Ok(_) | Err(_) => {
            errors.push(src.error(
                m.span().start,
                f.of("metadata"),
                "must be a table of values",
            ));
            None
        }
    }
}

/// `on_error`: the rule's own answer when the store fails.
fn on_error(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    errors: &mut Vec<ConfigError>,
) -> Option<FailurePolicy> {
    let s = v.on_error.as_ref()?;
    let mut p = FailurePolicy::FailClosed;
    parse_into(src, s, &f.of("on_error"), errors, &mut p, failure_policy).then_some(p)
}

/// `reserve`: the bare `match` key whose value names a reservation.
fn reserve(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    pattern: &[EntryPattern],
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let k = v.reserve.as_ref()?;
    let key = k.get_ref().trim().to_string();
    if !pattern
        .iter()
        .any(|p| matches!(p, EntryPattern::AnyValue { key: pk } if *pk == key))
    {
        errors.push(src.error(
            k.span().start,
            f.of("reserve"),
            format!("`{key}` must be a bare key in `match` (one value per request)"),
        ));
    }
    if v.shadow || v.unlimited {
        errors.push(src.error(
            k.span().start,
            f.of("reserve"),
            "a reserving rule cannot be shadow or unlimited",
        ));
    }
    Some(key)
}

/// `name` and `replaces`: a name is not empty and a rule does not replace
/// itself.
fn name(
    src: &Source,
    v: &RuleView,
    f: &Fields,
    at: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let name = v.name.as_ref().map(|n| n.get_ref().trim().to_string());
    if let Some(n) = &v.name {
        if n.get_ref().trim().is_empty() {
            errors.push(src.error(n.span().start, f.of("name"), "must not be empty"));
        }
    }
    if let Some(n) = &name {
        if v.replaces.iter().any(|r| r == n) {
            // A rule that replaced itself would never be enforced
            // (envoyproxy/ratelimit refuses it too).
            errors.push(src.error(
                at,
                f.of("replaces"),
                format!(
                    "`{n}` replaces itself: replaces should not contain name of same descriptor"
                ),
            ));
        }
    }
    name
}
