//! From serde views to the runtime config. Every check pushes an error and
//! carries on, so one run reports all of them.

use super::error::Source;
use super::file::{
    ClassView, DomainView, LeasesView, LlmView, ModelView, PeerView, QuotaView, RuleView,
    ServerView, StoreView,
};
use super::marketplace_view::MarketplaceView;
use super::peer::{self, Origin, PeerEnv};
use super::suggest::{self, ALGORITHMS, FAILURE_POLICIES};
use super::tree::{self, Document};
use super::validate_domains;
use super::validate_leases;
use super::validate_llm;
use super::validate_marketplace;
use super::validate_price;
use super::validate_quota;
use super::validate_rule;
use super::validate_server;
use super::{Config, ConfigError, ConfigErrors, ServerConfig, StoreConfig};
use crate::marketplace::MarketplaceConfig;
use crate::rules::{Algorithm, EntryPattern, FailurePolicy, LeasePolicy, LlmConfig, Rule};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use toml::Spanned;

/// Whether a file is envoyproxy/ratelimit YAML (by its name).
pub(crate) fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// All files → one `Config`, or every error found, sorted by file and line.
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
        marketplace,
        peer_view,
        domain_views,
        toml_domains,
        ..
    } = parts;
    let leases = leases.unwrap_or_default();
    for (rule, own) in rules.iter_mut().zip(rule_leases) {
        rule.lease = own.unwrap_or(leases.by_default);
    }
    let marketplace = marketplace.map_or_else(Default::default, |(m, written)| {
        validate_marketplace::cross_check(&m, &written, &llm, &mut errors);
        m
    });
    validate_llm::cross_check(&llm.models, &model_sources, &llm.quotas, &mut errors);
    validate_price::check_prices(&llm, &model_sources, &mut errors);
    validate_llm::check_classes(&llm.classes.0, &mut errors);
    validate_domains::check_names(&rules, &mut errors);
    let settings = peer::settings(
        peer_view.as_ref().map(|(i, v)| (sources[*i], v)),
        env,
        &mut errors,
    );
    let mut origins: HashMap<String, Origin> = toml_domains
        .keys()
        .map(|d| (d.clone(), Origin::Toml))
        .collect();
    validate_domains::add_yaml_domains(
        &yaml,
        settings.merge_domains.unwrap_or(false),
        &toml_domains,
        &mut origins,
        &mut rules,
        &mut errors,
    );
    if settings.merge_domains == Some(false) {
        validate_domains::check_toml_domains_unmerged(&rules, sources.as_slice(), &mut errors);
    }
    let modes = peer::modes(&settings, &origins, &domain_views, &mut errors, all);
    let default_mode = Arc::new(peer::default_mode(&settings, Origin::Toml));
    let rules = validate_domains::rule_set(rules, default_mode, &modes, &mut errors);
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
        marketplace,
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
    /// `[marketplace]` and what it wrote (for the cross-checks).
    marketplace: Option<(MarketplaceConfig, validate_marketplace::Written)>,
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
        self.add_peer(file_index, src, &mut doc, errors);
        self.add_service(src, &mut doc, errors);
        self.add_rules(src, &mut doc, errors);
        self.add_llm(src, &mut doc, errors);
        self.add_marketplace(src, &mut doc, errors);
    }

    /// `[envoy_ratelimit]` and each `[[domain]]`: the peer's settings.
    fn add_peer(
        &mut self,
        file_index: usize,
        src: &Source,
        doc: &mut Document,
        errors: &mut Vec<ConfigError>,
    ) {
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
    }

    /// `[server]`, `[store]`, `[leases]`: each in one file only.
    fn add_service(&mut self, src: &Source, doc: &mut Document, errors: &mut Vec<ConfigError>) {
        if let Some(s) = doc.table::<ServerView>(src, "server", errors) {
            if self.server.is_some() {
                errors.push(src.error(
                    s.view.span().start,
                    "server",
                    "[server] is set in two files",
                ));
            }
            self.server = Some(validate_server::server_config(
                src,
                s.view.into_inner(),
                errors,
            ));
        }
        if let Some(s) = doc.table::<StoreView>(src, "store", errors) {
            if self.store.is_some() {
                errors.push(src.error(s.view.span().start, "store", "[store] is set in two files"));
            }
            let url_dropped = s.dropped("url");
            self.store = Some(validate_server::store_config(
                src,
                s.view.into_inner(),
                url_dropped,
                errors,
            ));
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
    }

    /// Each `[[rule]]`, with its own `lease` kept beside it.
    fn add_rules(&mut self, src: &Source, doc: &mut Document, errors: &mut Vec<ConfigError>) {
        for (i, value) in doc.array(src, "rule", errors).into_iter().enumerate() {
            let before = errors.len();
            if let Some(r) = tree::view::<RuleView>(src, "rule", value, errors) {
                let lease = r.view.get_ref().lease;
                if let Some(rule) = validate_rule::rule(src, i, r.view, before, errors) {
                    self.toml_domains
                        .entry(rule.domain.clone())
                        .or_insert_with(|| src.name.to_string());
                    self.rules.push(rule);
                    self.rule_leases.push(lease);
                }
            }
        }
    }

    /// `[llm]`, `[[model]]`, prices, `[[quota]]`, `[[class]]`.
    fn add_llm(&mut self, src: &Source, doc: &mut Document, errors: &mut Vec<ConfigError>) {
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
        validate_price::prices(src, doc, &mut self.llm, errors);
        for value in doc.array(src, "quota", errors) {
            let before = errors.len();
            if let Some(q) = tree::view::<QuotaView>(src, "quota", value, errors) {
                self.llm
                    .quotas
                    .extend(validate_quota::quota(src, q.view, before, errors));
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

    /// `[marketplace]`, in one file only.
    fn add_marketplace(&mut self, src: &Source, doc: &mut Document, errors: &mut Vec<ConfigError>) {
        if let Some(m) = doc.table::<MarketplaceView>(src, "marketplace", errors) {
            if self.marketplace.is_some() {
                errors.push(src.error(
                    m.view.span().start,
                    "marketplace",
                    "[marketplace] is set in two files",
                ));
            }
            self.marketplace = Some(validate_marketplace::section(src, m.view, errors));
        }
    }
}

pub(super) fn path_text(pattern: &[EntryPattern]) -> String {
    pattern
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses a spanned string into `out`; on failure records a located error.
/// Returns whether it parsed.
pub(super) fn parse_into<T>(
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
