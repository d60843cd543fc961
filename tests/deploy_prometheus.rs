//! deploy/prometheus/: the alert rules checked by `promtool check rules`
//! and unit-tested by `promtool test rules` (Debian's prometheus package),
//! the scrape config by `promtool check config`; the Prometheus Operator's
//! copy of the rules and docs/operations.md's suggestions kept in step.

use serde_json::Value;
use std::collections::BTreeMap;
use tollgate_testkit::deploy::{promtool, repo_path, yaml_doc, yaml_docs};
use tollgate_testkit::scratch_dir;

const DIR: &str = "deploy/prometheus";
const RULES: &str = "deploy/prometheus/tollgate-alerts.yaml";

/// Alert name → its rule, from the rules file.
fn alerts() -> BTreeMap<String, Value> {
    let doc = yaml_docs(RULES).remove(0);
    doc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| (r["alert"].as_str().expect("alert").to_string(), r.clone()))
        .collect()
}

/// Two expressions docs/operations.md once suggested, each wrong in a way
/// the unit tests must catch: the first fires on a certificate renamed
/// before its key (refused once, then loaded), the second never fires when
/// no wait was ever admitted (an empty right-hand side).
const ONCE_SUGGESTED: &[(&str, &str)] = &[
    (
        "TollgateTlsReloadRefused",
        "increase(tollgate_tls_reloads_total{result=\"refused\"}[10m]) > 0",
    ),
    (
        "TollgateWaitsEndInDenial",
        "sum(rate(tollgate_llm_wait_seconds_count{outcome=\"denied\"}[10m])) > sum(rate(tollgate_llm_wait_seconds_count{outcome=\"admitted\"}[10m]))",
    ),
];

/// The suggested alerts of docs/operations.md (its YAML block after
/// "## Suggested alerts"), name → rule.
fn docs_alerts() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo_path("docs/operations.md")).expect("operations.md");
    let section = text
        .split("## Suggested alerts")
        .nth(1)
        .expect("a Suggested alerts section");
    let block = section
        .split("```yaml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block");
    let file = scratch_dir("docs-alerts").join("alerts.yaml");
    std::fs::write(&file, block).expect("write");
    let docs = yaml_docs(file.to_str().expect("path"));
    docs[0]
        .as_array()
        .expect("a list of rules")
        .iter()
        .map(|r| (r["alert"].as_str().expect("alert").to_string(), r.clone()))
        .collect()
}

fn squash(expr: &Value) -> String {
    expr.as_str()
        .expect("expr")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn promtool_checks_the_rules() {
    let out = promtool(&repo_path(DIR), &["check", "rules", "tollgate-alerts.yaml"]);
    assert!(out.success, "{}", out.text);
    let n = alerts().len();
    assert!(
        out.text.contains(&format!("SUCCESS: {n} rules found")),
        "{}",
        out.text
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let out = promtool(
        &repo_path(DIR),
        &["test", "rules", "tollgate-alerts.test.yaml"],
    );
    assert!(out.success, "{}", out.text);
    assert!(out.text.contains("SUCCESS"), "{}", out.text);
}

/// Every alert has a unit test in which it fires and one in which it
/// stays quiet.
#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let tests = yaml_docs("deploy/prometheus/tollgate-alerts.test.yaml").remove(0);
    let mut fires = BTreeMap::<String, (bool, bool)>::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let firing = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let e = fires.entry(name).or_default();
            if firing {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
    }
    for name in alerts().keys() {
        assert_eq!(
            fires.get(name),
            Some(&(true, true)),
            "{name}: (fires in a test, quiet in a test)"
        );
    }
}

/// The unit tests tell the shipped expressions from the two once
/// suggested: with those put back, promtool fails exactly their cases.
#[test]
fn once_suggested_expressions_fail_the_unit_tests() {
    let mut rules = yaml_docs(RULES).remove(0);
    for rule in rules["groups"][0]["rules"].as_array_mut().expect("rules") {
        let name = rule["alert"].as_str().expect("alert").to_string();
        if let Some((_, expr)) = ONCE_SUGGESTED.iter().find(|(n, _)| *n == name) {
            rule["expr"] = Value::String(expr.to_string());
        }
    }
    let dir = scratch_dir("docs-rules");
    std::fs::write(
        dir.join("tollgate-alerts.yaml"),
        serde_json::to_string(&rules).expect("json"),
    )
    .expect("write");
    std::fs::copy(
        repo_path("deploy/prometheus/tollgate-alerts.test.yaml"),
        dir.join("tollgate-alerts.test.yaml"),
    )
    .expect("copy");
    let out = promtool(&dir, &["test", "rules", "tollgate-alerts.test.yaml"]);
    assert!(
        !out.success,
        "the once-suggested expressions pass every unit test:\n{}",
        out.text
    );
    let failed: Vec<&str> = out
        .text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .filter_map(|l| l.split(',').next())
        .collect();
    let names: Vec<&str> = ONCE_SUGGESTED.iter().map(|(n, _)| *n).collect();
    assert_eq!(failed, names, "{}", out.text);
}

/// docs/operations.md's suggested alerts are all in the rules file, with
/// the same expression and `for`.
#[test]
fn rules_match_the_docs_suggestions() {
    let rules = alerts();
    for (name, suggested) in docs_alerts() {
        let rule = rules
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: suggested in docs/operations.md, not in {RULES}"));
        assert_eq!(
            squash(&rule["expr"]),
            squash(&suggested["expr"]),
            "{name}: expr"
        );
        assert_eq!(rule["for"], suggested["for"], "{name}: for");
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
    }
}

#[test]
fn promtool_checks_the_scrape_config() {
    let out = promtool(&repo_path(DIR), &["check", "config", "prometheus.yml"]);
    assert!(out.success, "{}", out.text);
    assert!(
        out.text.contains("is valid prometheus config file syntax"),
        "{}",
        out.text
    );
    let config = yaml_docs("deploy/prometheus/prometheus.yml").remove(0);
    assert_eq!(
        config["scrape_configs"][0]["job_name"], "tollgate",
        "TollgateDown selects job=\"tollgate\""
    );
    assert_eq!(
        config["scrape_configs"][0]["dns_sd_configs"][0]["port"], 9090,
        "the admin port"
    );
}

/// The PrometheusRule carries the rules file's groups, unchanged.
#[test]
fn prometheus_rule_matches_the_rules_file() {
    let rule = yaml_doc(
        "deploy/kubernetes/monitoring/prometheusrule.yaml",
        "PrometheusRule",
    );
    let file = yaml_docs(RULES).remove(0);
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "copy the groups of {RULES}"
    );
}

/// GitHub's anchor for a Markdown heading: lowercase, punctuation other
/// than `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert's `runbook` points at a heading that exists.
#[test]
fn runbooks_point_at_existing_sections() {
    assert_eq!(
        slug("Requests wait too long, or wait and still get 429"),
        "requests-wait-too-long-or-wait-and-still-get-429"
    );
    for (name, rule) in alerts() {
        let runbook = rule["annotations"]["runbook"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook"));
        let (file, anchor) = runbook
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: {runbook}: no #anchor"));
        let text = std::fs::read_to_string(repo_path(file))
            .unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        let found = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|l| slug(l.trim_start_matches('#')))
            .any(|s| s == anchor);
        assert!(found, "{name}: no heading for #{anchor} in {file}");
    }
}
