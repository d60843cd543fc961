//! envoyproxy/ratelimit's settings that change answers, from
//! `[envoy_ratelimit]` and `[[domain]]` and from the environment variables
//! the peer reads (which, when set, win: a Deployment's `env` block carries
//! over unchanged), turned into each domain's [`DomainMode`].

use super::error::Source;
use super::file::{DomainView, PeerView};
use super::ConfigError;
use crate::rules::{Counting, DomainMode, LimitHeaders};
use std::collections::HashMap;
use std::sync::Arc;
use toml::Spanned;

/// The environment variables read, by name (a snapshot, so a config is
/// validated against one consistent view; tests pass their own).
#[derive(Debug, Clone, Default)]
pub struct PeerEnv(pub HashMap<String, String>);

/// Every variable of the peer's that changes an answer, and the
/// `[envoy_ratelimit]` field it stands for. `LOCAL_CACHE_SIZE_IN_BYTES` is
/// not here: the peer's local cache answers what Redis would (over the
/// limit until the window ends), so it changes no answer.
pub const VARIABLES: &[(&str, &str)] = &[
    ("LIMIT_RESPONSE_HEADERS_ENABLED", "response_headers"),
    ("LIMIT_LIMIT_HEADER", "limit_header"),
    ("LIMIT_REMAINING_HEADER", "remaining_header"),
    ("LIMIT_RESET_HEADER", "reset_header"),
    (
        "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
        "stop_increment_when_over_limit",
    ),
    ("SHADOW_MODE", "shadow_mode"),
    ("QUOTA_MODE", "quota_mode"),
    ("MERGE_DOMAIN_CONFIG", "merge_domains"),
    ("NEAR_LIMIT_RATIO", "near_limit_ratio"),
    ("RESPONSE_DYNAMIC_METADATA", "dynamic_metadata"),
];

impl PeerEnv {
    /// The process's own environment.
    pub fn from_process() -> PeerEnv {
        PeerEnv(
            VARIABLES
                .iter()
                .filter_map(|(name, _)| std::env::var(name).ok().map(|v| (name.to_string(), v)))
                .collect(),
        )
    }
}

/// The settings in force, before they are applied per domain.
#[derive(Debug, Clone)]
pub(crate) struct PeerSettings {
    pub response_headers: bool,
    pub headers: LimitHeaders,
    pub stop_increment: bool,
    pub shadow: bool,
    pub quota_mode: bool,
    /// `None`: not set (YAML domains are not merged, TOML ones are).
    pub merge_domains: Option<bool>,
    pub near_limit_ratio: f32,
    pub dynamic_metadata: bool,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            response_headers: false,
            headers: LimitHeaders::default(),
            stop_increment: false,
            shadow: false,
            quota_mode: false,
            merge_domains: None,
            near_limit_ratio: 0.8,
            dynamic_metadata: false,
        }
    }
}

/// `[envoy_ratelimit]` (if any) with the environment over it.
pub(crate) fn settings(
    src: Option<(&Source, &PeerView)>,
    env: &PeerEnv,
    errors: &mut Vec<ConfigError>,
) -> PeerSettings {
    let mut s = PeerSettings::default();
    if let Some((src, v)) = src {
        from_table(src, v, &mut s, errors);
    }
    from_env(env, &mut s, errors);
    s
}

/// `[envoy_ratelimit]`'s fields over the defaults.
fn from_table(src: &Source, v: &PeerView, s: &mut PeerSettings, errors: &mut Vec<ConfigError>) {
    let text = |f: &Option<Spanned<String>>, name: &str, errors: &mut Vec<ConfigError>| {
        let t = f.as_ref()?;
        if t.get_ref().trim().is_empty() {
            errors.push(src.error(
                t.span().start,
                format!("envoy_ratelimit.{name}"),
                "must not be empty",
            ));
            return None;
        }
        Some(t.get_ref().trim().to_string())
    };
    if v.yaml.iter().flatten().any(|y| y.trim().is_empty()) {
        errors.push(src.error(0, "envoy_ratelimit.yaml", "an empty path"));
    }
    s.response_headers = v.response_headers.unwrap_or(false);
    if let Some(h) = text(&v.limit_header, "limit_header", errors) {
        s.headers.limit = h;
    }
    if let Some(h) = text(&v.remaining_header, "remaining_header", errors) {
        s.headers.remaining = h;
    }
    if let Some(h) = text(&v.reset_header, "reset_header", errors) {
        s.headers.reset = h;
    }
    s.stop_increment = v.stop_increment_when_over_limit.unwrap_or(false);
    s.shadow = v.shadow_mode.unwrap_or(false);
    s.quota_mode = v.quota_mode.unwrap_or(false);
    s.merge_domains = v.merge_domains;
    s.dynamic_metadata = v.dynamic_metadata.unwrap_or(false);
    if let Some(r) = &v.near_limit_ratio {
        match ratio(*r.get_ref()) {
            Ok(r) => s.near_limit_ratio = r,
            Err(e) => errors.push(src.error(r.span().start, "envoy_ratelimit.near_limit_ratio", e)),
        }
    }
}

/// The peer's environment variables, over the table: envoyproxy/ratelimit
/// reads them, so a drop-in does too.
fn from_env(env: &PeerEnv, s: &mut PeerSettings, errors: &mut Vec<ConfigError>) {
    for (name, value) in &env.0 {
        let bad = |why: String| ConfigError {
            file: format!("${name}"),
            line: 0,
            field: name.clone(),
            message: why,
        };
        let flag = || go_bool(value).ok_or_else(|| bad(format!("`{value}` is not a boolean")));
        let result = match name.as_str() {
            "LIMIT_RESPONSE_HEADERS_ENABLED" => flag().map(|b| s.response_headers = b),
            "LIMIT_LIMIT_HEADER" => {
                s.headers.limit = value.clone();
                Ok(())
            }
            "LIMIT_REMAINING_HEADER" => {
                s.headers.remaining = value.clone();
                Ok(())
            }
            "LIMIT_RESET_HEADER" => {
                s.headers.reset = value.clone();
                Ok(())
            }
            "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT" => flag().map(|b| s.stop_increment = b),
            "SHADOW_MODE" => flag().map(|b| s.shadow = b),
            "QUOTA_MODE" => flag().map(|b| s.quota_mode = b),
            "MERGE_DOMAIN_CONFIG" => flag().map(|b| s.merge_domains = Some(b)),
            "RESPONSE_DYNAMIC_METADATA" => flag().map(|b| s.dynamic_metadata = b),
            "NEAR_LIMIT_RATIO" => value
                .trim()
                .parse::<f64>()
                .map_err(|_| bad(format!("`{value}` is not a number")))
                .and_then(|r| ratio(r).map_err(bad))
                .map(|r| s.near_limit_ratio = r),
            _ => Ok(()),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
}

fn ratio(r: f64) -> Result<f32, String> {
    if r.is_finite() && (0.0..=1.0).contains(&r) {
        Ok(r as f32)
    } else {
        Err(format!("{r} is not a share between 0 and 1"))
    }
}

/// Go's `strconv.ParseBool`, as the peer's settings read booleans.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Where a domain's rules come from, which decides its default answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Toml,
    Yaml,
}

/// The mode a domain gets by default: tollgate's for TOML, the peer's for
/// YAML, each with the global settings.
pub(crate) fn default_mode(s: &PeerSettings, origin: Origin) -> DomainMode {
    let base = match origin {
        Origin::Toml => DomainMode::default(),
        Origin::Yaml => DomainMode {
            counting: if s.stop_increment {
                Counting::StopWhenOver
            } else {
                Counting::EveryHit
            },
            ..DomainMode::peer()
        },
    };
    DomainMode {
        headers: s.response_headers.then(|| s.headers.clone()),
        shadow: s.shadow,
        quota_mode: s.quota_mode,
        dynamic_metadata: s.dynamic_metadata,
        near_limit_ratio: s.near_limit_ratio,
        ..base
    }
}

/// Each domain's mode: by origin, then its `[[domain]]`.
pub(crate) fn modes(
    s: &PeerSettings,
    origins: &HashMap<String, Origin>,
    overrides: &[(String, Spanned<DomainView>)],
    errors: &mut Vec<ConfigError>,
    sources: &[Source],
) -> HashMap<String, Arc<DomainMode>> {
    let mut out: HashMap<String, Arc<DomainMode>> = origins
        .iter()
        .map(|(d, o)| (d.clone(), Arc::new(default_mode(s, *o))))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (file, v) in overrides {
        let Some(src) = sources.iter().find(|s| s.name == file) else {
            continue;
        };
        let at = v.span().start;
        let v = v.get_ref();
        let name = v.name.get_ref().trim().to_string();
        if !seen.insert(name.clone()) {
            errors.push(src.error(
                at,
                "domain.name",
                format!("`{name}` has two [[domain]] tables"),
            ));
            continue;
        }
        let origin = origins.get(&name).copied().unwrap_or(Origin::Toml);
        let mut mode = default_mode(s, origin);
        if let Some(c) = &v.counting {
            match Counting::parse(c.get_ref().trim()) {
                Some(c) => mode.counting = c,
                None => errors.push(src.error(
                    c.span().start,
                    "domain.counting",
                    format!(
                        "`{}`: expected all_or_nothing, every_hit or stop_when_over{}",
                        c.get_ref(),
                        super::suggest::hint(
                            c.get_ref(),
                            ["all_or_nothing", "every_hit", "stop_when_over"].into_iter()
                        )
                    ),
                )),
            }
        }
        if let Some(r) = v.retry_after {
            mode.retry_after = r;
        }
        if let Some(h) = v.response_headers {
            mode.headers = h.then(|| s.headers.clone());
        }
        if let Some(b) = v.ietf_headers {
            mode.ietf_headers = b;
        }
        out.insert(name, Arc::new(mode));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_and_bad_values_are_refused() {
        let env = PeerEnv(
            [
                ("SHADOW_MODE", "true"),
                ("NEAR_LIMIT_RATIO", "0.5"),
                ("LIMIT_LIMIT_HEADER", "A-Limit"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let mut errors = vec![];
        let s = settings(None, &env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(s.shadow);
        assert_eq!(s.near_limit_ratio, 0.5);
        assert_eq!(s.headers.limit, "A-Limit");
        let env = PeerEnv(
            [("QUOTA_MODE", "yes"), ("NEAR_LIMIT_RATIO", "2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let mut errors = vec![];
        settings(None, &env, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
