//! Validation of `[llm]`, `[[model]]` and `[[quota]]`.

use super::error::Source;
use super::file::{ClassView, CountView, LlmView, ModelView, QuotaView};
use super::suggest::{self, COUNTS, ESTIMATORS, IDENTITY_KEYS, MAX_WAIT_WORDS, SETTLE_POLICIES};
use super::validate::{algorithm_of, failure_policy};
use super::ConfigError;
use crate::rules::{
    Algorithm, Class, CountSpec, Estimator, IdentityKey, Limit, LlmSettings, MaxWait, Model,
    Period, Quota, QuotaLimit, RuleId, SettlePolicy, ValuePattern,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use toml::Spanned;

pub(crate) fn settings(src: &Source, v: LlmView, errors: &mut Vec<ConfigError>) -> LlmSettings {
    let mut s = LlmSettings::default();
    if let Some(h) = v.tenant_header {
        s.tenant_header = h.to_ascii_lowercase();
    }
    if let Some(h) = v.api_key_header {
        s.api_key_header = h.to_ascii_lowercase();
    }
    if let Some(h) = v.class_header {
        s.class_header = h.to_ascii_lowercase();
    }
    if let Some(e) = v.estimator {
        match Estimator::parse(e.get_ref()) {
            Some(estimator) => s.estimator = estimator,
            None => errors.push(src.error(
                e.span().start,
                "llm.estimator",
                suggest::expected(e.get_ref(), ESTIMATORS),
            )),
        }
    }
    if let Some(b) = v.inject_stream_usage {
        s.inject_stream_usage = b;
    }
    if let Some(b) = v.max_body_bytes {
        if *b.get_ref() < 1024 {
            errors.push(src.error(b.span().start, "llm.max_body_bytes", "at least 1024"));
        }
        s.max_body_bytes = usize::try_from(*b.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(b) = v.max_buffered_bytes {
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
    if let Some(t) = v.reservation_ttl {
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
        ("llm.on_abort", v.on_abort, &mut s.on_abort),
        (
            "llm.on_upstream_error",
            v.on_upstream_error,
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
    if let Some(b) = v.allow_unknown_models {
        s.allow_unknown_models = b;
    }
    if let Some(n) = v.unknown_model_max_output {
        s.unknown_model_max_output = n;
    }
    if let Some(w) = max_wait(src, v.max_wait.as_ref(), "llm.max_wait", errors) {
        s.max_wait = w;
    }
    if let Some(c) = v.max_wait_cap {
        match humantime::parse_duration(c.get_ref().trim()) {
            Ok(d) if d <= Duration::from_secs(3600) => s.max_wait_cap = d,
            _ => errors.push(src.error(
                c.span().start,
                "llm.max_wait_cap",
                format!("`{}`: a duration of at most 1h, like \"30s\"", c.get_ref()),
            )),
        }
    }
    if let Some(t) = v.max_message_timeout {
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
    if let Some(h) = v.model_header {
        s.model_header = h.to_ascii_lowercase();
    }
    s
}

/// An optional `max_wait` field: `"auto"` or a duration.
fn max_wait(
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
fn matchers(
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
    }
}

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
    let field = |f: &str| format!("quota.{f}");
    if name.is_empty() {
        errors.push(src.error(q.name.span().start, field("name"), "must not be empty"));
    }
    let matchers = matchers(src, q.matchers.as_ref(), at, "quota.match", errors);
    let max_wait = max_wait(src, q.max_wait.as_ref(), "quota.max_wait", errors);
    let mut algorithm = Algorithm::FixedWindow;
    if let Some(a) = &q.algorithm {
        match algorithm_of(a.get_ref()) {
            Ok(x) => algorithm = x,
            Err(e) => errors.push(src.error(a.span().start, field("algorithm"), e)),
        }
    }
    let mut limits = Vec::new();
    let mut rate = |amount: Option<u64>, period: Period, name: &str, tokens: bool| {
        let Some(amount) = amount else { return };
        let limit = Limit {
            amount,
            period,
            algorithm,
        };
        match limit.validate() {
            Ok(()) if tokens => limits.push(QuotaLimit::Tokens(limit)),
            Ok(()) => limits.push(QuotaLimit::Requests(limit)),
            Err(e) => errors.push(src.error(at, field(name), e)),
        }
    };
    rate(
        q.tokens_per_minute,
        Period::Minute,
        "tokens_per_minute",
        true,
    );
    rate(q.tokens_per_day, Period::Day, "tokens_per_day", true);
    rate(
        q.requests_per_minute,
        Period::Minute,
        "requests_per_minute",
        false,
    );
    rate(q.requests_per_day, Period::Day, "requests_per_day", false);
    if let Some(max) = q.max_concurrent {
        if max == 0 {
            errors.push(src.error(at, field("max_concurrent"), "must be at least 1"));
        }
        limits.push(QuotaLimit::Concurrent { max });
    }
    if limits.is_empty() && errors.len() == before {
        errors.push(src.error(
            at,
            field("tokens_per_minute"),
            "a quota needs at least one of tokens_per_minute, tokens_per_day, \
             requests_per_minute, requests_per_day, max_concurrent",
        ));
    }
    let count = match &q.count {
        None => CountSpec::Total,
        Some(c) => match c.get_ref() {
            CountView::Name(n) => match n.as_str() {
                "prompt" => CountSpec::Prompt,
                "completion" => CountSpec::Completion,
                "total" => CountSpec::Total,
                other => {
                    errors.push(src.error(
                        c.span().start,
                        field("count"),
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
                        field("count"),
                        "weights must be between 0 and 1000",
                    ));
                }
                CountSpec::Weights {
                    prompt: w.prompt,
                    completion: w.completion,
                    cached: w.cached,
                }
            }
        },
    };
    let mut on_error = None;
    if let Some(p) = &q.on_error {
        match failure_policy(p.get_ref()) {
            Ok(x) => on_error = Some(x),
            Err(e) => errors.push(src.error(p.span().start, field("on_error"), e)),
        }
    }
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
        source: format!("{}:{}", src.name, src.line_of(at)),
    })
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
