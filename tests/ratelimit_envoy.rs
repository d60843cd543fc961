//! End to end: a real Envoy with its rate limit filter asks a real tollgate
//! (memory store, then a real redis-server); the client sees 200s, then
//! 429s with `x-ratelimit-*` and `retry-after`, and shadow rules never deny.

use tollgate_testkit::{Envoy, MockLlm, RedisServer, Tollgate};

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
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[store]\n{store}\n{RULES}"
    )
}

struct Stack {
    tollgate: Tollgate,
    envoy: Envoy,
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
            ("FAILURE_MODE_DENY", "true".into()),
        ],
    );
    Stack {
        tollgate,
        envoy,
        _upstream: upstream,
    }
}

async fn get(client: &reqwest::Client, url: &str, tenant: &str) -> reqwest::Response {
    client
        .get(url)
        .header("x-tenant", tenant)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers()))
}

async fn limits_through_envoy(s: Stack) {
    let client = reqwest::Client::new();
    let url = s.envoy.url("/v1/things");
    for i in 0..5 {
        let r = get(&client, &url, "a").await;
        assert_eq!(r.status(), 200, "request {i}: {}", s.tollgate.log_text());
        assert_eq!(header(&r, "x-ratelimit-remaining"), (4 - i).to_string());
    }
    let r = get(&client, &url, "a").await;
    assert_eq!(r.status(), 429);
    assert!(
        header(&r, "x-ratelimit-limit").starts_with("5, 5;w=60"),
        "{:?}",
        r.headers()
    );
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let reset: u64 = header(&r, "x-ratelimit-reset")
        .parse()
        .expect("reset is seconds");
    assert!(reset <= 60);
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("retry-after is seconds");
    assert!((1..=60).contains(&retry));
    // Another tenant has its own counter.
    assert_eq!(get(&client, &url, "b").await.status(), 200);

    // On /shadow, [generic_key=shadow, tenant] meets the shadow rule (2 per
    // minute): five requests pass although it is exceeded three times.
    // (They also take from tenant c's 5/min, which allows exactly five.)
    let shadow = s.envoy.url("/shadow");
    for i in 0..5 {
        assert_eq!(
            get(&client, &shadow, "c").await.status(),
            200,
            "shadow request {i}"
        );
    }
    let metrics = client
        .get(format!("{}/metrics", s.tollgate.admin_url()))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(r#"tollgate_rule_shadow_mode_total{domain="edge",rule="trial"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_rule_over_limit_total{domain="edge",rule="edge:tenant"} 1"#)
    );
    // Envoy's own view: 1 over limit on the ingress.
    assert!(
        s.envoy.stats().contains("ratelimit.over_limit: 1"),
        "{}",
        s.envoy.stats()
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
