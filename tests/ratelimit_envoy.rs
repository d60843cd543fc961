//! End to end: a real Envoy with its rate limit filter (envoy/ratelimit.yaml,
//! `failure_mode_deny: true`) asks a real tollgate, on the memory store and
//! on a real redis-server. The client sees 200s, then a 429 with the
//! `x-ratelimit-*` headers; other tenants keep their own counters; a shadow
//! rule counts but never denies.
//!
//! Descriptors Envoy sends (domain `edge`):
//!   `/…`       → [tenant=<x-tenant>]
//!   `/shadow…` → [tenant=<x-tenant>] and [generic_key=shadow, tenant=<x-tenant>]

use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, metric, Envoy, MockLlm, RedisServer, Tollgate};

const RULES: &str = r#"
[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 5, per = "minute" }

[[rule]]
domain = "edge"
match = ["generic_key=shadow", "tenant"]
limit = { requests = 2, per = "minute" }
shadow = true
name = "trial"
"#;

fn config(store: &str) -> String {
    format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [store]\n{store}\n{RULES}"
    )
}

/// Upstream, tollgate and Envoy, dropped (killed) together.
struct Stack {
    envoy: Envoy,
    tollgate: Tollgate,
    _upstream: MockLlm,
}

fn stack(store: &str) -> Stack {
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(store));
    let envoy = Envoy::start(
        "ratelimit.yaml",
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
        ],
    );
    Stack {
        envoy,
        tollgate,
        _upstream: upstream,
    }
}

impl Stack {
    async fn get(&self, client: &reqwest::Client, path: &str, tenant: &str) -> reqwest::Response {
        let url = self.envoy.url(path);
        client
            .get(&url)
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.tollgate.log_text()))
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers()))
}

async fn limits_through_envoy(s: Stack) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    // Every burst below must land in one minute window.
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(5));

    for i in 0..5 {
        let r = s.get(&client, "/v1/things", "a").await;
        assert_eq!(
            r.status(),
            200,
            "request {i} of tenant a\n{}",
            s.tollgate.log_text()
        );
        assert_eq!(header(&r, "x-ratelimit-remaining"), (4 - i).to_string());
    }
    let r = s.get(&client, "/v1/things", "a").await;
    assert_eq!(r.status(), 429, "6th request of tenant a");
    let limit = header(&r, "x-ratelimit-limit");
    assert!(limit.starts_with("5, 5;w=60"), "x-ratelimit-limit: {limit}");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let reset: u64 = header(&r, "x-ratelimit-reset")
        .parse()
        .expect("x-ratelimit-reset in seconds");
    assert!(reset <= 60, "x-ratelimit-reset: {reset}");
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("retry-after in seconds");
    assert!((1..=60).contains(&retry), "retry-after: {retry}");

    // Another tenant has its own counter.
    assert_eq!(s.get(&client, "/v1/things", "b").await.status(), 200);

    // On /shadow, [generic_key=shadow, tenant=c] meets the shadow rule (2 per
    // minute): all five requests pass although it is exceeded three times.
    // ([tenant=c] takes from c's own 5 per minute, which allows exactly 5.)
    for i in 0..5 {
        let r = s.get(&client, "/shadow", "c").await;
        assert_eq!(
            r.status(),
            200,
            "shadow request {i}: a shadow rule never denies"
        );
    }

    let metrics = s.tollgate.metrics();
    let shadow = metric(
        &metrics,
        "tollgate_rule_shadow_mode_total",
        &[("domain", "edge"), ("rule", "trial")],
    );
    assert_eq!(shadow, Some(3.0), "3 of 5 over the shadow limit\n{metrics}");
    let over = metric(
        &metrics,
        "tollgate_rule_over_limit_total",
        &[("domain", "edge"), ("rule", "edge:tenant")],
    );
    assert_eq!(over, Some(1.0), "tenant a's 6th request\n{metrics}");
    // Envoy's own view of the same: one request limited, none failed.
    assert_eq!(
        s.envoy.stat("cluster.upstream.ratelimit.over_limit"),
        Some(1)
    );
    assert_eq!(
        s.envoy
            .stat("cluster.upstream.ratelimit.error")
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn memory_store() {
    limits_through_envoy(stack("kind = \"memory\"")).await;
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    let store = format!("kind = \"redis\"\nurl = \"{}\"", redis.url());
    limits_through_envoy(stack(&store)).await;
}
