//! nginx in front of an upstream with `auth_request` to tollgate's HTTP
//! check API (the config in nginx/tollgate.conf): 200s, then 429s with the
//! rate limit headers; gRPC callers share the same counters.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, repo_root, MockLlm, Nginx, Tollgate};

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 5, per = "minute" }
"#;

fn grpc_request(tenant: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: tenant.into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers()))
}

#[tokio::test]
async fn nginx_auth_request_limits_and_shares_counters_with_grpc() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(10));
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let admin = tollgate
        .admin_url()
        .trim_start_matches("http://")
        .to_string();
    let conf = std::fs::read_to_string(repo_root().join("nginx/tollgate.conf"))
        .expect("nginx/tollgate.conf");
    let nginx = Nginx::start(
        &conf,
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_ADMIN", admin),
        ],
    );
    let client = reqwest::Client::new();
    let get = |tenant: &'static str| {
        client
            .get(nginx.url("/things"))
            .header("x-tenant", tenant)
            .send()
    };

    for i in 0..5u64 {
        let r = get("a").await.expect("nginx");
        assert_eq!(r.status(), 200, "request {i}: {}", nginx.log_text());
        assert_eq!(header(&r, "x-ratelimit-remaining"), (4 - i).to_string());
        assert!(header(&r, "x-ratelimit-limit").starts_with("5, 5;w=60"));
    }
    let r = get("a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let retry: u64 = header(&r, "retry-after").parse().expect("seconds");
    assert!((1..=60).contains(&retry));
    assert!(header(&r, "x-ratelimit-reset").parse::<u64>().is_ok());
    assert!(r.text().await.unwrap().contains("rate_limit_exceeded"));
    let reached = upstream
        .requests()
        .iter()
        .filter(|r| r.path == "/things")
        .count();
    assert_eq!(reached, 5, "denied requests never reach the upstream");

    // gRPC callers take from the same counters.
    let mut grpc = RateLimitServiceClient::connect(format!("http://{}", tollgate.grpc_addr()))
        .await
        .unwrap();
    let r = grpc
        .should_rate_limit(grpc_request("a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.overall_code,
        Code::OverLimit as i32,
        "tenant a is spent for gRPC too"
    );
    for _ in 0..3 {
        grpc.should_rate_limit(grpc_request("b")).await.unwrap();
    }
    let r = get("b").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-remaining"),
        "1",
        "3 via gRPC + 1 via nginx of 5"
    );
}

/// The check API's own answers: JSON form, plain 429, bad input → 400.
#[tokio::test]
async fn check_api_answers_and_refuses_bad_input() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(5));
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let c = reqwest::Client::new();
    let base = tollgate.admin_url();
    let body = serde_json::json!({"domain": "edge", "descriptors": [{"entries": [{"key": "tenant", "value": "j"}], "hits_addend": 5}]});
    let r: serde_json::Value = c
        .post(format!("{base}/json"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // envoyproxy/ratelimit's /json: the protobuf JSON mapping, zero values
    // left out (issue 15, item 9; this read `overall_code` and a
    // `limit_remaining` of 0).
    assert_eq!(r["overallCode"], "OK", "{r}");
    assert!(r["statuses"][0].get("limitRemaining").is_none(), "{r}");
    assert_eq!(r["statuses"][0]["currentLimit"]["requestsPerUnit"], 5);
    let r = c
        .get(format!("{base}/check?domain=edge&descriptor=tenant=j"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the default denial status");
    for (url, why) in [
        ("/check?descriptor=tenant=j", "domain must not be empty"),
        ("/check?domain=edge", "descriptor list must not be empty"),
        ("/check?domain=edge&descriptor=tenant", "not key=value"),
        (
            "/check?domain=edge&descriptor=tenant=j&hits=x",
            "not a number",
        ),
    ] {
        let r = c.get(format!("{base}{url}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        assert!(r.text().await.unwrap().contains(why), "{url}");
    }
    let huge = format!(
        "{base}/check?domain=edge&descriptor=tenant={}",
        "x".repeat(20_000)
    );
    assert_eq!(c.get(huge).send().await.unwrap().status(), 400);
    let r = c
        .post(format!("{base}/json"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// What a client puts in its own headers cannot change the descriptor
/// nginx sends: a `,` or `;` in the tenant value, or `X-Tollgate-*`
/// headers of its own, neither escape the limit nor charge another tenant.
#[tokio::test]
async fn client_headers_cannot_escape_or_redirect_the_limit() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(10));
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let admin = tollgate
        .admin_url()
        .trim_start_matches("http://")
        .to_string();
    let conf = std::fs::read_to_string(repo_root().join("nginx/tollgate.conf"))
        .expect("nginx/tollgate.conf");
    let nginx = Nginx::start(
        &conf,
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_ADMIN", admin),
        ],
    );
    let client = reqwest::Client::new();
    let statuses = |headers: Vec<(&'static str, &'static str)>| {
        let client = client.clone();
        let url = nginx.url("/things");
        async move {
            let mut out = Vec::new();
            for _ in 0..7 {
                let mut req = client.get(&url);
                for (k, v) in &headers {
                    req = req.header(*k, *v);
                }
                out.push(req.send().await.expect("nginx").status().as_u16());
            }
            out
        }
    };
    let limited = vec![200, 200, 200, 200, 200, 429, 429];
    // A value with the entry separator: one tenant called `demo,x=1`.
    assert_eq!(
        statuses(vec![("x-tenant", "demo,x=1")]).await,
        limited,
        "`,` in the value added an entry: {}",
        nginx.log_text()
    );
    // The client's own cost header is not passed on: each request costs 1.
    assert_eq!(
        statuses(vec![("x-tenant", "free"), ("x-tollgate-hits", "0")]).await,
        limited,
        "x-tollgate-hits from the client reached tollgate"
    );
    // A value with the descriptor separator, and descriptor headers of the
    // client's own: only `me;tenant=victim` (and `me2`) pay.
    statuses(vec![("x-tenant", "me;tenant=victim")]).await;
    statuses(vec![
        ("x-tenant", "me2"),
        ("x-tollgate-descriptor", "tenant=victim"),
        ("x-tollgate-entry-2", "tenant=victim"),
    ])
    .await;
    let victim = reqwest::get(format!(
        "{}/check?domain=edge&descriptor=tenant=victim&hits=0",
        tollgate.admin_url()
    ))
    .await
    .unwrap();
    assert_eq!(
        header(&victim, "x-ratelimit-remaining"),
        "5",
        "another tenant's budget was charged"
    );
}
