//! deploy/grafana/tollgate-dashboard.json: every query uses metrics that
//! tollgate really exports, and parses as PromQL.
//!
//! The metric names of every expression (panels and template variables)
//! are looked up in a live `/metrics` scrape of a tollgate that has seen
//! the traffic that makes each series exist (families with labels appear
//! on first use): rate limit decisions within, near and over a limit and
//! over a shadow rule; LLM requests reserved and settled; one that falls
//! back to another model; one that waits for capacity; a config reload;
//! Redis lost. The traffic goes through a real Envoy running the Istio
//! ingress gateway patches (deploy/istio/ingress-gateway.yaml) to a real
//! tollgate on a real redis-server. Every expression, its Grafana
//! variables filled in, is also checked by `promtool check rules` as a
//! recording rule.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tollgate_testkit::deploy::{istio_bootstrap, istio_gateway_routes, promtool, repo_path};
use tollgate_testkit::{
    http_get, metric, scratch_dir, wait_until, Envoy, MockLlm, RedisServer, Signal, Tollgate,
};

const DASHBOARD: &str = "deploy/grafana/tollgate-dashboard.json";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query: the panels' target expressions, and the template
/// variables' `label_values(SELECTOR, label)` selectors.
fn queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().expect("variable query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel)
                .expect("label_values(selector, label)");
            out.push(inner.to_string());
        }
    }
    out
}

/// The metric names an expression uses: identifiers starting `tollgate_`
/// (tollgate's families; the dashboard queries nothing else).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            // Skip label values and legend text inside quotes.
            let quoted = bytes[..start].iter().filter(|&&c| c == '"').count() % 2 == 1;
            if word.starts_with("tollgate_") && !quoted {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Sample names in a Prometheus text exposition.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn missing(names: &BTreeSet<String>, scraped: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| !scraped.contains(*n))
        .cloned()
        .collect()
}

/// Grafana's variables filled in, so that promtool can parse the query.
fn fill_variables(expr: &str) -> String {
    let mut s = expr.replace("$__rate_interval", "5m");
    for v in ["job", "instance", "quota", "model"] {
        s = s.replace(&format!("${v}"), ".+");
    }
    assert!(!s.contains('$'), "a variable not filled: {s}");
    s
}

#[test]
fn extracts_names_and_spots_missing_ones() {
    let names = metric_names(
        r#"sum by (le) (rate(tollgate_store_latency_seconds_bucket{job=~"$job", x="tollgate_not_a_metric"}[5m])) / tollgate_fake_total"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "tollgate_fake_total",
            "tollgate_store_latency_seconds_bucket"
        ]
    );
    let scraped =
        scraped_names("# TYPE x counter\ntollgate_store_latency_seconds_bucket{le=\"0.1\"} 1\n");
    let names: BTreeSet<String> = [
        "tollgate_store_latency_seconds_bucket",
        "tollgate_fake_total",
    ]
    .map(String::from)
    .into();
    assert_eq!(missing(&names, &scraped), ["tollgate_fake_total"]);
}

#[test]
fn every_query_parses_as_promql() {
    let d = dashboard();
    let mut rules = Vec::new();
    for (i, q) in queries(&d).iter().enumerate() {
        assert!(
            !metric_names(q).is_empty(),
            "query {i} uses no tollgate metric: {q}"
        );
        rules.push(json!({"record": format!("dashboard:query_{i}"), "expr": fill_variables(q)}));
    }
    let dir = scratch_dir("dashboard-rules");
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        dir.join("queries.yaml"),
        serde_json::to_string_pretty(&file).expect("json"),
    )
    .expect("write");
    let out = promtool(&dir, &["check", "rules", "queries.yaml"]);
    assert!(out.success, "{}", out.text);
    assert!(
        out.text
            .contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{}",
        out.text
    );
}

#[test]
fn panels_are_well_formed() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id {}",
            p["id"]
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24),
            "{}",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{}: no query",
                p["title"]
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: no description",
                p["title"]
            );
        }
    }
    assert_eq!(d["uid"], "tollgate");
}

fn config(redis_url: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
url = "{redis_url}"
timeout = "2s"
on_error = "fail_closed"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = {{ requests = 5, per = "minute" }}

[[rule]]
domain = "edge"
match = ["tenant=trial"]
limit = {{ requests = 1, per = "minute" }}
shadow = true
name = "trial"

[llm]
estimator = "bytes"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100
fallback = ["gpt-4o-mini"]

[[model]]
name = "gpt-4o-mini"
context_window = 4000
default_max_output = 100

# One gpt-4o request at a time, no waiting: the next falls back.
[[quota]]
name = "gpt-4o-slot"
match = {{ tenant = "*", model = "gpt-4o" }}
max_concurrent = 1
max_wait = "0s"

# One gpt-4o-mini request at a time; the next waits for the slot.
[[quota]]
name = "mini"
match = {{ tenant = "*", model = "gpt-4o-mini" }}
tokens_per_minute = 100000
max_concurrent = 1
max_wait = "10s"
"#
    )
}

#[tokio::test]
async fn every_dashboard_metric_is_in_a_live_scrape() {
    let redis = RedisServer::start();
    let upstream = MockLlm::start();
    let mut tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let (path, _) = istio_bootstrap(
        "deploy/istio/ingress-gateway.yaml",
        "GATEWAY",
        "*:80",
        &istio_gateway_routes(),
        tollgate.grpc_port(),
        upstream.port(),
    );
    let envoy = Envoy::start(&path, &[] as &[(&str, &str)]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let chat = |model: &str, stream: bool| {
        client
            .post(envoy.url("/v1/chat/completions"))
            .header("x-tenant", "llm")
            .header("x-mock-chunks", "3")
            .header("x-mock-chunk-delay-ms", if stream { "300" } else { "0" })
            .json(&json!({"model": model, "max_tokens": 20, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}))
    };
    let api = |tenant: &str| {
        client
            .get(envoy.url("/api/things"))
            .header("x-tenant", tenant)
            .send()
    };

    // LLM: a slow gpt-4o stream holds its one slot; the next gpt-4o
    // request falls back to gpt-4o-mini.
    let a = chat("gpt-4o", true).send().await.expect("send");
    assert_eq!(a.status(), 200, "{}", tollgate.log_text());
    let b = chat("gpt-4o", false).send().await.expect("send");
    assert_eq!(b.status(), 200);
    assert_eq!(
        b.headers()
            .get("x-tollgate-fallback-from")
            .and_then(|v| v.to_str().ok()),
        Some("gpt-4o"),
        "{:?}",
        b.headers()
    );
    drop(b.text().await);
    drop(a.text().await);
    // A slow gpt-4o-mini stream holds its slot; the next one waits for it.
    let c = chat("gpt-4o-mini", true).send().await.expect("send");
    assert_eq!(c.status(), 200);
    let waiting = tokio::spawn(chat("gpt-4o-mini", false).send());
    drop(c.text().await);
    let d = waiting.await.expect("join").expect("send");
    assert_eq!(d.status(), 200, "admitted after waiting");
    drop(d.text().await);

    // Rate limits: within, near and over the limit; over a shadow rule.
    for i in 0..6 {
        let want = if i < 5 { 200 } else { 429 };
        assert_eq!(api("a").await.expect("send").status(), want, "request {i}");
    }
    for _ in 0..3 {
        assert_eq!(
            api("trial").await.expect("send").status(),
            200,
            "a shadow rule never denies"
        );
    }
    // A reload (an unchanged config is not reloaded: change a comment).
    let mut text = std::fs::read_to_string(tollgate.config_path()).expect("config");
    text.push_str("\n# edited\n");
    std::fs::write(tollgate.config_path(), text).expect("write");
    tollgate.signal(Signal::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || {
        metric(
            &tollgate.metrics(),
            "tollgate_config_reloads_total",
            &[("result", "ok")],
        )
        .is_some()
    });
    // Redis lost: store errors, answers by on_error, the circuit open.
    drop(redis);
    let admin = tollgate.admin_url().replace("http://", "");
    wait_until("the circuit open", Duration::from_secs(15), || {
        // A decision (the HTTP check API) makes a store call that fails.
        let _ = http_get(&admin, "/check?domain=edge&descriptor=tenant=b");
        tollgate.metrics().contains("tollgate_store_up 0")
    });
    // Through Envoy too: the rule's on_error (fail_closed) answers.
    assert_eq!(api("c").await.expect("send").status(), 429);

    let scrape = tollgate.metrics();
    let scraped = scraped_names(&scrape);
    let d = dashboard();
    let mut all = BTreeSet::new();
    for q in queries(&d) {
        all.extend(metric_names(&q));
    }
    assert!(all.len() >= 20, "{all:?}");
    let gone = missing(&all, &scraped);
    assert!(
        gone.is_empty(),
        "dashboard metrics not in the scrape: {gone:?}\n{scrape}"
    );
}
