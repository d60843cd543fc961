//! A real Envoy (envoy/ratelimit.yaml, unchanged) asks a real tollgate that
//! runs on an envoyproxy/ratelimit YAML config, unchanged, with the peer's
//! env block (`LIMIT_RESPONSE_HEADERS_ENABLED=true`), on the memory store
//! and on a real redis-server. The client sees what the peer's
//! integration tests expect: 200s while within the limit, then 429 with
//! the peer's `RateLimit-*` headers and no `retry-after`; an allow-listed
//! value and a shadow rule never deny.
//!
//! Descriptors Envoy sends (domain `edge`):
//!   `/…`       → [tenant=<x-tenant>]
//!   `/shadow…` → [tenant=<x-tenant>] and [generic_key=shadow, tenant=<x-tenant>]

use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, Envoy, MockLlm, RedisServer, Tollgate};

/// The peer's YAML, as a team would have it in its ConfigMap.
const PEER_YAML: &str = r#"# Edge limits, per tenant.
domain: edge
descriptors:
  - key: tenant
    rate_limit:
      unit: minute
      requests_per_unit: 3
  # VIPs are never limited.
  - key: tenant
    value: vip
  - key: generic_key
    value: shadow
    descriptors:
      - key: tenant
        shadow_mode: true
        rate_limit:
          unit: minute
          requests_per_unit: 1
"#;

struct Stack {
    envoy: Envoy,
    tollgate: Tollgate,
    _upstream: MockLlm,
    _redis: Option<RedisServer>,
}

fn stack(redis: Option<RedisServer>) -> Stack {
    let upstream = MockLlm::start();
    let mut toml =
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n".to_string();
    if let Some(r) = &redis {
        toml.push_str(&format!(
            "\n[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
            r.url()
        ));
    }
    let tollgate = Tollgate::start_dir(
        env!("CARGO_BIN_EXE_tollgate"),
        &[("tollgate.toml", &toml), ("config.yaml", PEER_YAML)],
        &[("LIMIT_RESPONSE_HEADERS_ENABLED", "true")],
    );
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
        _redis: redis,
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

async fn peer_answers_through_envoy(s: Stack) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(10));
    let get = |path: &'static str, tenant: &'static str| {
        let url = s.envoy.url(path);
        let client = client.clone();
        async move {
            client
                .get(&url)
                .header("x-tenant", tenant)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        }
    };
    for i in 0..3u32 {
        let r = get("/v1/things", "a").await;
        assert_eq!(r.status(), 200, "request {i}\n{}", s.tollgate.log_text());
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            Some((2 - i).to_string())
        );
        assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"), "{r:?}");
        assert_eq!(header(&r, "ratelimit-remaining"), Some((2 - i).to_string()));
    }
    let r = get("/v1/things", "a").await;
    assert_eq!(r.status(), 429, "4th request");
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"), "{r:?}");
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("0"));
    let reset: u64 = header(&r, "ratelimit-reset")
        .expect("ratelimit-reset")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&reset), "ratelimit-reset: {reset}");
    assert_eq!(
        header(&r, "retry-after"),
        None,
        "the peer sends no retry-after"
    );
    // No name configured: Envoy's draft-03 header carries none.
    assert_eq!(
        header(&r, "x-ratelimit-limit").as_deref(),
        Some("3, 3;w=60")
    );
    // Every hit counts, denied or not (the peer's INCRBY): still over.
    assert_eq!(get("/v1/things", "a").await.status(), 429);

    for _ in 0..5 {
        assert_eq!(get("/v1/things", "vip").await.status(), 200, "allow-listed");
    }
    // [generic_key=shadow, tenant=c] is over its shadow limit from the
    // second request on, and never denies; [tenant=c] allows 3.
    for i in 0..3 {
        assert_eq!(
            get("/shadow", "c").await.status(),
            200,
            "shadow request {i}"
        );
    }
    assert_eq!(
        get("/shadow", "c").await.status(),
        429,
        "tenant c's own limit"
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
    peer_answers_through_envoy(stack(None)).await;
}

#[tokio::test]
async fn redis_store() {
    peer_answers_through_envoy(stack(Some(RedisServer::start()))).await;
}
