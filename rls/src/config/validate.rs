//! From serde views to the runtime config. Every check pushes an error and
//! carries on, so one run reports all of them.

use super::error::Source;
use super::file::{
    ClassView, DomainView, LeasesView, LimitView, LlmView, ModelView, PeerView, QuotaView,
    RuleView, ServerView, StoreView,
};
use super::peer::{self, Origin, PeerEnv};
use super::ratelimit_yaml;
use super::redis_url;
use super::suggest::{self, ALGORITHMS, FAILURE_POLICIES, LOG_FORMATS, PERIODS, STORE_KINDS};
use super::tree::{self, Document};
use super::validate_leases;
use super::validate_llm;
use super::validate_tls;
use super::{Config, ConfigError, ConfigErrors, LogFormat, ServerConfig, StoreConfig, StoreKind};
use crate::rules::{
    Algorithm, EntryPattern, FailurePolicy, LeasePolicy, Limit, LlmConfig, Period, Rule, RuleId,
    RuleSet, Zone,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use toml::Spanned;

/// Whether a file is envoyproxy/ratelimit YAML (by its name).
pub(crate) fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

pub(crate) fn build(all: &[Source], env: &PeerEnv) -> Result<Config, ConfigErrors> {
    let (yaml, sources): (Vec<&Source>, Vec<&Source>) = all.iter().partition(|s| is_yaml(s.name));
    let mut errors = Vec::new();
    let mut parts = Parts::default();
    for (file_index, src) in sources.iter().copied().enumerate() {
        parts.add_file(file_index, src, &mut errors);
    }
    let Parts {
        server,
        store,
        leases,
        mut rules,
        rule_leases,
        llm,
        model_sources,
        peer_view,
        domain_views,
        toml_domains,
        ..
    } = parts;
    let leases = leases.unwrap_or_default();
    for (rule, own) in rules.iter_mut().zip(rule_leases) {
        rule.lease = own.unwrap_or(leases.by_default);
    }
    validate_llm::cross_check(&llm.models, &model_sources, &llm.quotas, &mut errors);
    validate_llm::check_prices(&llm, &model_sources, &mut errors);
    validate_llm::check_classes(&llm.classes.0, &mut errors);
    check_names(&rules, &mut errors);
    let settings = peer::settings(
        peer_view.as_ref().map(|(i, v)| (sources[*i], v)),
        env,
        &mut errors,
    );
    let mut origins: HashMap<String, Origin> = toml_domains
        .keys()
        .map(|d| (d.clone(), Origin::Toml))
        .collect();
    let merge_yaml = settings.merge_domains.unwrap_or(false);
    for src in &yaml {
        let Some(d) = ratelimit_yaml::domain(src, &mut errors) else {
            continue;
        };
        let taken = match origins.get(&d.domain) {
            Some(Origin::Yaml) => true,
            Some(Origin::Toml) => true,
            None => false,
        };
        if taken && !merge_yaml {
            let also = toml_domains
                .get(&d.domain)
                .map(|f| format!(" (also in {f})"))
                .unwrap_or_default();
            errors.push(ConfigError {
                file: src.name.to_string(),
                line: d.line,
                field: "domain".into(),
                message: format!(
                    "duplicate domain '{}' in config file{also}; set MERGE_DOMAIN_CONFIG=true (or [envoy_ratelimit] merge_domains = true) to merge",
                    d.domain
                ),
            });
            continue;
        }
        if taken && merge_yaml {
            // The peer refuses a node that two merged files both define.
            for r in &d.rules {
                if let Some(first) = rules
                    .iter()
                    .find(|o| o.domain == r.domain && o.pattern == r.pattern)
                {
                    errors.push(ConfigError::at(
                        &r.source,
                        "descriptors.key",
                        format!(
                            "duplicate descriptor composite key '{}.{}' (first at {})",
                            r.domain, r.label, first.source
                        ),
                    ));
                }
            }
        }
        origins.entry(d.domain.clone()).or_insert(Origin::Yaml);
        rules.extend(d.rules);
    }
    if settings.merge_domains == Some(false) {
        check_toml_domains_unmerged(&rules, sources.as_slice(), &mut errors);
    }
    let modes = peer::modes(&settings, &origins, &domain_views, &mut errors, all);
    let default_mode = Arc::new(peer::default_mode(&settings, Origin::Toml));
    let rules = match RuleSet::with_modes(rules.clone(), default_mode, &modes) {
        Ok(set) => set,
        Err((first, second)) => {
            let (a, b) = (&rules[first], &rules[second]);
            errors.push(ConfigError::at(
                &b.source,
                "rule.match",
                format!(
                    "domain `{}` path `{}` is already limited by the rule at {}",
                    b.domain,
                    path_text(&b.pattern),
                    a.source
                ),
            ));
            RuleSet::default()
        }
    };
    if !errors.is_empty() {
        // Top to bottom, file by file: the order an operator fixes them in.
        let file_index = |e: &ConfigError| all.iter().position(|s| s.name == e.file);
        errors.sort_by_key(|e| (file_index(e), e.line));
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        server: server.unwrap_or_default(),
        store: store.unwrap_or_default(),
        leases,
        rules: Arc::new(rules),
        llm: Arc::new(llm),
        version: String::new(),
        sources: Vec::new(),
        loaded_at: SystemTime::now(),
    })
}

/// What the files have given so far; several files make one config.
#[derive(Default)]
struct Parts {
    server: Option<ServerConfig>,
    store: Option<StoreConfig>,
    leases: Option<LeasePolicy>,
    rules: Vec<Rule>,
    /// Each rule's own `lease`, beside `rules`, resolved once `[leases]`
    /// is known.
    rule_leases: Vec<Option<bool>>,
    llm: LlmConfig,
    llm_set: bool,
    /// `file:line` of each model, beside `llm.models`, for cross-checks.
    model_sources: Vec<String>,
    /// `[envoy_ratelimit]`, with the index of the file that sets it.
    peer_view: Option<(usize, PeerView)>,
    /// Each `[[domain]]`, with the file it is in.
    domain_views: Vec<(String, Spanned<DomainView>)>,
    /// The file each TOML rule's domain is first written in.
    toml_domains: HashMap<String, String>,
}

impl Parts {
    /// Reads one file's tables, each on its own (`tree`), and validates
    /// each; errors are pushed and the rest goes on.
    fn add_file(&mut self, file_index: usize, src: &Source, errors: &mut Vec<ConfigError>) {
        let Some(mut doc) = Document::parse(src, errors) else {
            return;
        };
        if let Some(p) = doc.table::<PeerView>(src, "envoy_ratelimit", errors) {
            if self.peer_view.is_some() {
                errors.push(src.error(
                    p.view.span().start,
                    "envoy_ratelimit",
                    "[envoy_ratelimit] is set in two files",
                ));
            }
            self.peer_view = Some((file_index, p.view.into_inner()));
        }
        for value in doc.array(src, "domain", errors) {
            if let Some(d) = tree::view::<DomainView>(src, "domain", value, errors) {
                self.domain_views.push((src.name.to_string(), d.view));
            }
        }
        if let Some(s) = doc.table::<ServerView>(src, "server", errors) {
            if self.server.is_some() {
                errors.push(src.error(
                    s.view.span().start,
                    "server",
                    "[server] is set in two files",
                ));
            }
            self.server = Some(server_config(src, s.view.into_inner(), errors));
        }
        if let Some(s) = doc.table::<StoreView>(src, "store", errors) {
            if self.store.is_some() {
                errors.push(src.error(s.view.span().start, "store", "[store] is set in two files"));
            }
            let url_dropped = s.dropped("url");
            self.store = Some(store_config(src, s.view.into_inner(), url_dropped, errors));
        }
        if let Some(l) = doc.table::<LeasesView>(src, "leases", errors) {
            if self.leases.is_some() {
                errors.push(src.error(
                    l.view.span().start,
                    "leases",
                    "[leases] is set in two files",
                ));
            }
            self.leases = Some(validate_leases::leases(src, l.view.into_inner(), errors));
        }
        for (i, value) in doc.array(src, "rule", errors).into_iter().enumerate() {
            let before = errors.len();
            if let Some(r) = tree::view::<RuleView>(src, "rule", value, errors) {
                let lease = r.view.get_ref().lease;
                if let Some(rule) = rule(src, i, r.view, before, errors) {
                    self.toml_domains
                        .entry(rule.domain.clone())
                        .or_insert_with(|| src.name.to_string());
                    self.rules.push(rule);
                    self.rule_leases.push(lease);
                }
            }
        }
        if let Some(l) = doc.table::<LlmView>(src, "llm", errors) {
            if self.llm_set {
                errors.push(src.error(l.view.span().start, "llm", "[llm] is set in two files"));
            }
            self.llm_set = true;
            self.llm.settings = validate_llm::settings(src, l.view.into_inner(), errors);
        }
        for value in doc.array(src, "model", errors) {
            if let Some(m) = tree::view::<ModelView>(src, "model", value, errors) {
                let line = src.line_of(m.view.span().start);
                self.model_sources.push(format!("{}:{line}", src.name));
                self.llm
                    .models
                    .push(validate_llm::model(src, m.view, errors));
            }
        }
        validate_llm::prices(src, &mut doc, &mut self.llm, errors);
        for value in doc.array(src, "quota", errors) {
            let before = errors.len();
            if let Some(q) = tree::view::<QuotaView>(src, "quota", value, errors) {
                self.llm
                    .quotas
                    .extend(validate_llm::quota(src, q.view, before, errors));
            }
        }
        for value in doc.array(src, "class", errors) {
            if let Some(c) = tree::view::<ClassView>(src, "class", value, errors) {
                self.llm
                    .classes
                    .0
                    .push(validate_llm::class(src, c.view, errors));
            }
        }
    }
}

fn server_config(src: &Source, v: ServerView, errors: &mut Vec<ConfigError>) -> ServerConfig {
    let mut c = ServerConfig::default();
    if let Some(s) = v.grpc_listen {
        parse_into(
            src,
            &s,
            "server.grpc_listen",
            errors,
            &mut c.grpc_listen,
            |t| {
                t.parse()
                    .map_err(|_| format!("`{t}` is not an address like 127.0.0.1:8081"))
            },
        );
    }
    if let Some(s) = v.admin_listen {
        parse_into(
            src,
            &s,
            "server.admin_listen",
            errors,
            &mut c.admin_listen,
            |t| {
                t.parse()
                    .map_err(|_| format!("`{t}` is not an address like 127.0.0.1:9090"))
            },
        );
    }
    if let Some(s) = v.log_format {
        parse_into(
            src,
            &s,
            "server.log_format",
            errors,
            &mut c.log_format,
            |t| match t {
                "human" => Ok(LogFormat::Human),
                "json" => Ok(LogFormat::Json),
                _ => Err(suggest::expected(t, LOG_FORMATS)),
            },
        );
    }
    if let Some(s) = v.shutdown_grace {
        parse_into(
            src,
            &s,
            "server.shutdown_grace",
            errors,
            &mut c.shutdown_grace,
            duration,
        );
    }
    c.tls = validate_tls::server(src, v.tls_cert, v.tls_key, v.tls_client_ca, errors);
    for (field, value, out) in [
        ("server.read_timeout", v.read_timeout, &mut c.read_timeout),
        ("server.idle_timeout", v.idle_timeout, &mut c.idle_timeout),
    ] {
        if let Some(s) = value {
            parse_into(src, &s, field, errors, out, |t| {
                // Zero would close every connection at once; an hour is
                // already no limit for a slow client.
                duration(t).and_then(|d| {
                    if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) {
                        Ok(d)
                    } else {
                        Err(format!("`{t}`: between 100ms and 1h, like \"10s\""))
                    }
                })
            });
        }
    }
    if let Some(n) = v.max_connections {
        match usize::try_from(*n.get_ref()) {
            Ok(m) if (1..=1_000_000).contains(&m) => c.max_connections = m,
            _ => errors.push(src.error(
                n.span().start,
                "server.max_connections",
                format!("{}: between 1 and 1000000", n.get_ref()),
            )),
        }
    }
    c
}

fn store_config(
    src: &Source,
    v: StoreView,
    url_dropped: bool,
    errors: &mut Vec<ConfigError>,
) -> StoreConfig {
    let mut c = StoreConfig::default();
    let kind_at = v.kind.as_ref().map(|k| k.span().start).unwrap_or(0);
    if let Some(s) = v.kind {
        parse_into(src, &s, "store.kind", errors, &mut c.kind, |t| match t {
            "memory" => Ok(StoreKind::Memory),
            "redis" => Ok(StoreKind::Redis),
            _ => Err(suggest::expected(t, STORE_KINDS)),
        });
    }
    if let Some(b) = v.cluster {
        c.cluster = b;
    }
    if let Some(s) = &v.url {
        c.urls = redis_url::urls(src, s, c.cluster, errors);
    }
    if let Some(s) = v.connect_timeout {
        parse_into(
            src,
            &s,
            "store.connect_timeout",
            errors,
            &mut c.connect_timeout,
            duration,
        );
    }
    if let Some(s) = v.timeout {
        parse_into(src, &s, "store.timeout", errors, &mut c.timeout, duration);
    }
    if let Some(s) = v.on_error {
        parse_into(
            src,
            &s,
            "store.on_error",
            errors,
            &mut c.on_error,
            failure_policy,
        );
    }
    c.tls = validate_tls::store(src, v.tls_ca, v.tls_cert, v.tls_key, &c.urls, errors);
    if c.kind == StoreKind::Redis && c.urls.is_empty() && !url_dropped {
        errors.push(src.error(kind_at, "store.url", "kind = \"redis\" needs a url"));
    }
    c
}

/// One `[[rule]]`; `before` is the error count before its table was read,
/// so a rule with any error (type errors included) is not built, and no
/// "missing" error is added for a field already reported as wrong.
fn rule(
    src: &Source,
    index: usize,
    view: Spanned<RuleView>,
    before: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<Rule> {
    let at = view.span().start;
    let v = view.into_inner();
    let field = |name: &str| format!("rule[{index}].{name}");

    let domain = v.domain.get_ref().trim().to_string();
    if domain.is_empty() {
        errors.push(src.error(v.domain.span().start, field("domain"), "must not be empty"));
    }
    let mut pattern = Vec::new();
    if v.path.get_ref().is_empty() {
        errors.push(src.error(
            v.path.span().start,
            field("match"),
            "needs at least one descriptor entry",
        ));
    }
    for p in v.path.get_ref() {
        match EntryPattern::parse(p) {
            Ok(p) => pattern.push(p),
            Err(e) => errors.push(src.error(v.path.span().start, field("match"), e)),
        }
    }
    let mut algorithm = Algorithm::default();
    if let Some(a) = &v.algorithm {
        parse_into(
            src,
            a,
            &field("algorithm"),
            errors,
            &mut algorithm,
            algorithm_of,
        );
    }
    // Whose calendar starts the rule's days, weeks, months and years
    // (`epoch`: envoyproxy/ratelimit's fixed lengths from the epoch).
    let zone = match &v.time_zone {
        None => Zone::Utc,
        Some(z) => validate_llm::time_zone(src, z, &field("time_zone"), errors).unwrap_or_default(),
    };
    let mut limits = Vec::new();
    let mut push_limit = |lv: &LimitView, offset: usize, errors: &mut Vec<ConfigError>| {
        let Some(period) = Period::parse(&lv.per) else {
            errors.push(src.error(
                offset,
                field("limit.per"),
                format!(
                    "`{}`: expected second, minute, hour, day, week, month or year{}",
                    lv.per,
                    suggest::hint(&lv.per, PERIODS.iter().copied())
                ),
            ));
            return;
        };
        let algorithm = match lv.algorithm.as_deref().map(algorithm_of) {
            None => algorithm,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                errors.push(src.error(offset, field("limit.algorithm"), e));
                return;
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
            Ok(()) => limits.push(limit),
            Err(_) if blocks => limits.push(limit),
            Err(e) => errors.push(src.error(offset, field("limit.requests"), e)),
        }
    };
    match (&v.limit, &v.limits) {
        (Some(l), None) => push_limit(l.get_ref(), l.span().start, errors),
        (None, Some(ls)) => {
            for l in ls.get_ref() {
                push_limit(l, ls.span().start, errors);
            }
        }
        (Some(l), Some(_)) => errors.push(src.error(
            l.span().start,
            field("limit"),
            "set `limit` or `limits`, not both",
        )),
        (None, None) => {}
    }
    if v.unlimited && !limits.is_empty() {
        errors.push(src.error(at, field("unlimited"), "an unlimited rule takes no limit"));
    }
    if v.no_limit && (v.unlimited || !limits.is_empty()) {
        errors.push(src.error(
            at,
            field("no_limit"),
            "a rule with no_limit takes no limit and is not unlimited",
        ));
    }
    if !v.unlimited && !v.no_limit && limits.is_empty() && errors.len() == before {
        errors.push(src.error(
            at,
            field("limit"),
            "missing: set `limit = { requests = N, per = \"minute\" }` or `unlimited = true`",
        ));
    }
    if let (Some(n), true) = (&v.name, v.no_limit) {
        errors.push(src.error(
            n.span().start,
            field("name"),
            "a rule with no_limit has no name (nothing to replace or report)",
        ));
    }
    let mut share = Vec::new();
    if let Some(keys) = &v.share_threshold {
        share = vec![None; pattern.len()];
        for k in keys.get_ref() {
            match pattern.iter().position(|p| p.key() == k && p.is_wildcard()) {
                Some(level) => share[level] = pattern[level].value_text(),
                None => errors.push(src.error(
                    keys.span().start,
                    field("share_threshold"),
                    format!("`{k}` is not a key with a wildcard value (`{k}=prefix*`) in `match`"),
                )),
            }
        }
    }
    let metadata = match &v.metadata {
        None => None,
        Some(m) => match serde_json::to_value(m.get_ref()) {
            Ok(serde_json::Value::Object(o)) => Some(Arc::new(o)),
            Ok(_) | Err(_) => {
                errors.push(src.error(
                    m.span().start,
                    field("metadata"),
                    "must be a table of values",
                ));
                None
            }
        },
    };
    let mut on_error = None;
    if let Some(s) = &v.on_error {
        let mut p = FailurePolicy::FailClosed;
        if parse_into(src, s, &field("on_error"), errors, &mut p, failure_policy) {
            on_error = Some(p);
        }
    }
    let mut reserve = None;
    if let Some(k) = &v.reserve {
        let key = k.get_ref().trim().to_string();
        if !pattern
            .iter()
            .any(|p| matches!(p, EntryPattern::AnyValue { key: pk } if *pk == key))
        {
            errors.push(src.error(
                k.span().start,
                field("reserve"),
                format!("`{key}` must be a bare key in `match` (one value per request)"),
            ));
        }
        if v.shadow || v.unlimited {
            errors.push(src.error(
                k.span().start,
                field("reserve"),
                "a reserving rule cannot be shadow or unlimited",
            ));
        }
        reserve = Some(key);
    }
    let name = v.name.as_ref().map(|n| n.get_ref().trim().to_string());
    if let Some(n) = &v.name {
        if n.get_ref().trim().is_empty() {
            errors.push(src.error(n.span().start, field("name"), "must not be empty"));
        }
    }
    if let Some(n) = &name {
        if v.replaces.iter().any(|r| r == n) {
            // A rule that replaced itself would never be enforced
            // (envoyproxy/ratelimit refuses it too).
            errors.push(src.error(
                at,
                field("replaces"),
                format!(
                    "`{n}` replaces itself: replaces should not contain name of same descriptor"
                ),
            ));
        }
    }
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

/// `merge_domains = false` (`MERGE_DOMAIN_CONFIG=false`) for TOML: a
/// domain's rules are all in one file.
fn check_toml_domains_unmerged(rules: &[Rule], sources: &[&Source], errors: &mut Vec<ConfigError>) {
    let mut first: HashMap<&str, &str> = HashMap::new();
    for r in rules {
        let file = r
            .source
            .rsplit_once(':')
            .map_or(r.source.as_str(), |(f, _)| f);
        if !sources.iter().any(|s| s.name == file) {
            continue;
        }
        match first.get(r.domain.as_str()) {
            None => {
                first.insert(&r.domain, file);
            }
            Some(f) if *f != file => errors.push(ConfigError::at(
                &r.source,
                "rule.domain",
                format!(
                    "domain `{}` is also in {f}, and merge_domains is false",
                    r.domain
                ),
            )),
            Some(_) => {}
        }
    }
}

/// Names are what `replaces` and metrics refer to: they must be unique and
/// every replaced name must exist.
fn check_names(rules: &[Rule], errors: &mut Vec<ConfigError>) {
    let mut seen = BTreeSet::new();
    for r in rules {
        if let Some(n) = &r.name {
            if !seen.insert(n.as_str()) {
                errors.push(ConfigError::at(
                    &r.source,
                    "rule.name",
                    format!("`{n}` names two rules"),
                ));
            }
        }
    }
    for r in rules {
        for n in &r.replaces {
            if !seen.contains(n.as_str()) {
                errors.push(ConfigError::at(
                    &r.source,
                    "rule.replaces",
                    format!(
                        "no rule is named `{n}`{}",
                        suggest::hint(n, seen.iter().copied())
                    ),
                ));
            }
        }
    }
}

fn path_text(pattern: &[EntryPattern]) -> String {
    pattern
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses a spanned string into `out`; on failure records a located error.
/// Returns whether it parsed.
fn parse_into<T>(
    src: &Source,
    value: &Spanned<String>,
    field: &str,
    errors: &mut Vec<ConfigError>,
    out: &mut T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> bool {
    match parse(value.get_ref().trim()) {
        Ok(v) => {
            *out = v;
            true
        }
        Err(e) => {
            errors.push(src.error(value.span().start, field, e));
            false
        }
    }
}

fn duration(t: &str) -> Result<Duration, String> {
    humantime::parse_duration(t).map_err(|e| format!("`{t}`: {e} (write e.g. \"50ms\", \"5s\")"))
}

pub(super) fn failure_policy(t: &str) -> Result<FailurePolicy, String> {
    FailurePolicy::parse(t).ok_or_else(|| {
        format!(
            "`{t}`: expected fail_open, fail_closed or local{}",
            suggest::hint(t, FAILURE_POLICIES.iter().copied())
        )
    })
}

pub(super) fn algorithm_of(t: &str) -> Result<Algorithm, String> {
    Algorithm::parse(t).ok_or_else(|| {
        format!(
            "`{t}`: expected fixed_window or token_bucket{}",
            suggest::hint(t, ALGORITHMS.iter().copied())
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_str, StoreKind};
    use crate::rules::{Algorithm, Period};

    fn errors(text: &str) -> Vec<String> {
        parse_str("t.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn every_example_config_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = crate::config::load(&path) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples in {}", dir.display());
    }

    /// A TOML rule's `time_zone`: `epoch` counts envoyproxy/ratelimit's
    /// fixed weeks (what `tollgate import` writes), none keeps the UTC
    /// calendar, and a name that is no zone is refused at its line.
    #[test]
    fn a_rule_time_zone() {
        let rule =
            "[[rule]]\ndomain = \"d\"\nmatch = [\"k\"]\nlimit = { requests = 1, per = \"week\" }\n";
        let c = parse_str("t.toml", &format!("{rule}time_zone = \"epoch\"\n")).unwrap();
        assert_eq!(c.rules.rules[0].limits[0].zone, crate::rules::Zone::Epoch);
        let c = parse_str("t.toml", rule).unwrap();
        assert_eq!(c.rules.rules[0].limits[0].zone, crate::rules::Zone::Utc);
        let e = errors(&format!("{rule}time_zone = \"Mars/Olympus\"\n"));
        assert!(
            e[0].starts_with("t.toml:5: rule[0].time_zone: `Mars/Olympus`: not an IANA time zone"),
            "{e:?}"
        );
    }

    /// `merge_domains = false` (the peer's `MERGE_DOMAIN_CONFIG=false`)
    /// holds for TOML too: one domain's rules in two files are refused,
    /// naming both; left unset, TOML files merge.
    #[test]
    fn toml_domains_in_two_files_with_merge_domains_false() {
        let a = "[envoy_ratelimit]\nmerge_domains = false\n\n[[rule]]\ndomain = \"d\"\nmatch = [\"k\"]\nlimit = { requests = 1, per = \"minute\" }\n";
        let b = "[[rule]]\ndomain = \"d\"\nmatch = [\"j\"]\nlimit = { requests = 1, per = \"minute\" }\n";
        let env = super::PeerEnv::default();
        let sources = [
            super::Source::new("a.toml", a),
            super::Source::new("b.toml", b),
        ];
        let e: Vec<String> = super::build(&sources, &env)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "b.toml:1: rule.domain: domain `d` is also in a.toml, and merge_domains is false"
            ),
            "{e:?}"
        );
        let merged = a.replace("merge_domains = false", "");
        let sources = [
            super::Source::new("a.toml", &merged),
            super::Source::new("b.toml", b),
        ];
        assert_eq!(super::build(&sources, &env).unwrap().rules.rules.len(), 2);
    }

    #[test]
    fn a_minimal_file_gives_the_defaults() {
        let c = parse_str("t.toml", "").unwrap();
        assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.store.kind, StoreKind::Memory);
        assert!(c.rules.rules.is_empty());
        assert_eq!(c.version.len(), 12);
    }

    #[test]
    fn the_admin_listener_binds_loopback_unless_told_otherwise() {
        // /config, /quotas and /metrics are for operators: never exposed
        // by default, even when [server] sets only the gRPC listener.
        for text in ["", "[server]\ngrpc_listen = \"0.0.0.0:8081\"\n"] {
            let c = parse_str("t.toml", text).unwrap();
            assert!(c.server.admin_listen.ip().is_loopback(), "{text:?}");
            assert_eq!(c.server.admin_listen.port(), 9090);
        }
        let c = parse_str("t.toml", "[server]\nadmin_listen = \"0.0.0.0:9090\"\n").unwrap();
        assert!(
            !c.server.admin_listen.ip().is_loopback(),
            "an explicit choice is kept"
        );
    }

    #[test]
    fn a_rule_with_several_limits() {
        let c = parse_str(
            "t.toml",
            r#"
[[rule]]
domain = "edge"
match = ["tenant=acme", "path=/v1/*"]
limits = [{ requests = 10, per = "second" }, { requests = 1000, per = "day", algorithm = "token_bucket" }]
name = "acme"
"#,
        )
        .unwrap();
        let r = &c.rules.rules[0];
        assert_eq!(r.limits.len(), 2);
        assert_eq!(r.limits[0].period, Period::Second);
        assert_eq!(r.limits[1].algorithm, Algorithm::TokenBucket);
        assert_eq!(r.label, "acme");
        assert_eq!(r.source, "t.toml:2");
    }

    #[test]
    fn a_typo_is_an_unknown_field_with_its_line() {
        let e = errors("[[rule]]\ndomain = \"d\"\nmatch = [\"k\"]\nlimt = { requests = 1, per = \"second\" }\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:4: rule.limt: unknown field `limt`"),
            "{e:?}"
        );
    }

    #[test]
    fn every_error_is_reported_with_file_line_and_field() {
        let e = errors(
            r#"[store]
kind = "redis"
timeout = "fast"

[[rule]]
domain = ""
match = ["k"]
limit = { requests = 5, per = "fortnight" }

[[rule]]
domain = "d"
match = ["k"]
"#,
        );
        let want = [
            "t.toml:2: store.url: kind = \"redis\" needs a url",
            "t.toml:3: store.timeout: `fast`",
            "t.toml:6: rule[0].domain: must not be empty",
            "t.toml:8: rule[0].limit.per: `fortnight`",
            "t.toml:10: rule[1].limit: missing",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "no `{w}` in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn waits_and_classes_are_checked_with_their_lines() {
        let e = errors(
            r#"[llm]
max_wait = "soon"

[[quota]]
name = "q"
max_concurrent = 1
max_wait = "-1s"

[[class]]
name = "a"
share = 0.5
default = true

[[class]]
name = "a"
share = 0.6
default = true

[[class]]
name = "c"
share = 1.5
"#,
        );
        let want = [
            "t.toml:2: llm.max_wait: `soon`",
            "t.toml:7: quota.max_wait: `-1s`",
            "t.toml:21: class.share: 1.5",
            "t.toml:14: class.name: `a` is defined twice",
            "t.toml:14: class.default: more than one",
            "t.toml:9: class.share: the shares add up to 2.600, not 1",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "no `{w}` in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let partly = errors("[[class]]\nname = \"a\"\nshare = 1.0\n[[class]]\nname = \"b\"\n");
        assert!(
            partly[0].contains("give every class a share, or none"),
            "{partly:?}"
        );
    }

    #[test]
    fn duplicate_paths_and_unknown_replaces_are_refused() {
        let e = errors(
            r#"[[rule]]
domain = "d"
match = ["k"]
limit = { requests = 1, per = "second" }
replaces = ["nope"]

[[rule]]
domain = "d"
match = ["k"]
limit = { requests = 2, per = "second" }
"#,
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("t.toml:1: rule.replaces: no rule is named `nope`")),
            "{e:?}"
        );
        assert!(e.iter().any(|l| l.starts_with("t.toml:7: rule.match: domain `d` path `k` is already limited by the rule at t.toml:1")), "{e:?}");
    }

    #[test]
    fn broken_toml_names_the_line() {
        let e = errors("[server]\ngrpc_listen = \"127.0.0.1:1\"\nadmin_listen = 9090\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.toml:3: server.admin_listen:"), "{e:?}");
    }

    #[test]
    fn connection_limits_and_the_body_bound_are_read_and_checked() {
        let c = parse_str(
            "t.toml",
            "[server]\nread_timeout = \"2s\"\nidle_timeout = \"1m\"\nmax_connections = 8\n\n[llm]\nmax_body_bytes = 2000\nmax_buffered_bytes = 5000\n",
        )
        .unwrap();
        assert_eq!(c.server.read_timeout, std::time::Duration::from_secs(2));
        assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 8);
        assert_eq!(c.llm.settings.max_buffered_bytes, 5000);
        // Unset, the bound is at least one body of the largest size.
        let big = parse_str("t.toml", "[llm]\nmax_body_bytes = 100000000\n").unwrap();
        assert_eq!(big.llm.settings.max_buffered_bytes, 100_000_000);
        for (text, field) in [
            ("[server]\nread_timeout = \"0s\"\n", "server.read_timeout"),
            ("[server]\nidle_timeout = \"2h\"\n", "server.idle_timeout"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[llm]\nmax_body_bytes = 2000\nmax_buffered_bytes = 1999\n",
                "llm.max_buffered_bytes",
            ),
        ] {
            let e = errors(text);
            assert!(e.iter().any(|e| e.contains(field)), "{text}: {e:?}");
        }
    }
}
