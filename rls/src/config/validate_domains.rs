//! The rules of all files together: each YAML file's domain joined to the
//! rest, domains kept to one file when they do not merge, unique names,
//! one rule per path.

use super::error::Source;
use super::peer::Origin;
use super::ratelimit_yaml;
use super::suggest;
use super::validate::path_text;
use super::ConfigError;
use crate::rules::{DomainMode, Rule, RuleSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Adds each envoyproxy/ratelimit YAML file's domain: a domain already
/// given (by TOML or another YAML file) is refused unless domains merge,
/// and when they merge a node both define is refused.
pub(super) fn add_yaml_domains(
    yaml: &[&Source],
    merge_yaml: bool,
    toml_domains: &HashMap<String, String>,
    origins: &mut HashMap<String, Origin>,
    rules: &mut Vec<Rule>,
    errors: &mut Vec<ConfigError>,
) {
    for src in yaml {
        let Some(d) = ratelimit_yaml::domain(src, errors) else {
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
}

/// The rules as one set, with each domain's mode; two rules on one path
/// are refused (the set is then empty: the config is refused anyway).
pub(super) fn rule_set(
    rules: Vec<Rule>,
    default_mode: Arc<DomainMode>,
    modes: &HashMap<String, Arc<DomainMode>>,
    errors: &mut Vec<ConfigError>,
) -> RuleSet {
    match RuleSet::with_modes(rules.clone(), default_mode, modes) {
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
    }
}

/// `merge_domains = false` (`MERGE_DOMAIN_CONFIG=false`) for TOML: a
/// domain's rules are all in one file.
pub(super) fn check_toml_domains_unmerged(
    rules: &[Rule],
    sources: &[&Source],
    errors: &mut Vec<ConfigError>,
) {
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

/// Each name an earlier rule already has, with the rule that repeats it
/// and that earlier rule: `replaces` and the metrics refer to a rule by
/// its name, so a name must be given once (the TOML loader and the
/// importer both say so).
pub(super) fn repeated_names(rules: &[Rule]) -> Vec<(&str, &Rule, &Rule)> {
    let mut first: BTreeMap<&str, &Rule> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rules {
        let Some(n) = r.name.as_deref() else { continue };
        match first.get(n) {
            Some(f) => out.push((n, r, *f)),
            None => {
                first.insert(n, r);
            }
        }
    }
    out
}

/// Names are what `replaces` and metrics refer to: they must be unique and
/// every replaced name must exist.
pub(super) fn check_names(rules: &[Rule], errors: &mut Vec<ConfigError>) {
    for (n, r, _) in repeated_names(rules) {
        errors.push(ConfigError::at(
            &r.source,
            "rule.name",
            format!("`{n}` names two rules"),
        ));
    }
    let seen: BTreeSet<&str> = rules.iter().filter_map(|r| r.name.as_deref()).collect();
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
