//! End to end for LLM token budgets: a real Envoy with ext_proc asks a real
//! tollgate, in front of the mock LLM upstream (OpenAI and Anthropic, JSON
//! and SSE). Estimates use `bytes` (÷4) so the arithmetic below is exact:
//! a chat request with one message "hi" is 1 (role) + 1 + 3 + 3 = 8 prompt
//! tokens, plus its `max_tokens`.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_testkit::{avoid_window_edge, Envoy, MockLlm, RedisServer, Tollgate};

fn config(store: &str, quotas: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
{store}

[llm]
estimator = "bytes"
# These tests are about budgets: a denial answers at once (waiting has its
# own tests in queue_envoy.rs).
max_wait = "0s"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100

[[model]]
name = "claude-sonnet"
context_window = 200000
default_max_output = 100
{quotas}
"#
    )
}

struct Stack {
    tollgates: Vec<Tollgate>,
    envoy: Envoy,
    upstream: MockLlm,
    client: reqwest::Client,
}

fn stack(store: &str, quotas: &str, instances: usize) -> Stack {
    stack_on("ext_proc.yaml", store, quotas, instances)
}

/// The same stack on another Envoy template.
fn stack_on(template: &str, store: &str, quotas: &str, instances: usize) -> Stack {
    let upstream = MockLlm::start();
    let tollgates: Vec<Tollgate> = (0..instances)
        .map(|_| Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(store, quotas)))
        .collect();
    let envoy = Envoy::start(
        template,
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgates[0].grpc_port().to_string()),
            (
                "TOLLGATE_PORT_2",
                tollgates[instances - 1].grpc_port().to_string(),
            ),
        ],
    );
    Stack {
        tollgates,
        envoy,
        upstream,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client"),
    }
}

impl Stack {
    fn chat(&self, tenant: &str, max_tokens: u64, stream: bool) -> reqwest::RequestBuilder {
        self.client
            .post(self.envoy.url("/v1/chat/completions"))
            .header("x-tenant", tenant)
            .json(
                &json!({"model": "gpt-4o", "max_tokens": max_tokens, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}),
            )
    }

    async fn metrics(&self, i: usize) -> String {
        self.client
            .get(format!("{}/metrics", self.tollgates[i].admin_url()))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }

    fn logs(&self) -> String {
        self.tollgates
            .iter()
            .map(|t| t.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const ACME: &str = r#"
[[quota]]
name = "acme"
match = { tenant = "acme" }
tokens_per_minute = 1000
"#;

/// 200s, then a 429 with retry-after; refunds make room as computed.
async fn budget_refund_and_429(s: Stack) {
    // The arithmetic below assumes one minute window throughout.
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(15));
    // Three slow streams, each reserving 8 + 300 = 308: 924 of 1000.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = s
            .chat("acme", 300, true)
            .header("x-mock-chunks", "3")
            .header("x-mock-chunk-delay-ms", "300")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{}", s.logs());
        streams.push(r);
    }
    let denied = s.chat("acme", 300, true).send().await.expect("send");
    assert_eq!(denied.status(), 429);
    let retry: u64 = header(&denied, "retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry));
    assert_eq!(
        header(&denied, "x-ratelimit-remaining-tokens").as_deref(),
        Some("76")
    );
    let body: Value = denied.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    // Each stream reports 10 + 20 = 30 tokens: 278 each comes back.
    for r in streams {
        let text = r.text().await.expect("stream body");
        assert!(text.contains("[DONE]"));
    }
    // 90 used: two more reservations of 308 fit (706), a third does not.
    let a = s
        .chat("acme", 300, true)
        .header("x-mock-chunk-delay-ms", "300")
        .send()
        .await
        .unwrap();
    let b = s
        .chat("acme", 300, true)
        .header("x-mock-chunk-delay-ms", "300")
        .send()
        .await
        .unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(
        header(&b, "x-ratelimit-remaining-tokens").as_deref(),
        Some("294"),
        "1000 - 90 - 2 × 308"
    );
    assert_eq!(
        s.chat("acme", 300, true).send().await.unwrap().status(),
        429
    );
    drop((a.text().await, b.text().await));
    // The upstream saw include_usage added to every streamed request.
    assert!(s
        .upstream
        .requests()
        .iter()
        .all(|r| r.json()["stream_options"]["include_usage"] == true));
}

#[tokio::test]
async fn budget_on_memory() {
    budget_refund_and_429(stack("kind = \"memory\"", ACME, 1)).await;
}

/// The same, with Envoy sending the headers messages: tollgate reads the
/// identity from the request headers and sets the rate limit headers on
/// the response itself.
#[tokio::test]
async fn budget_with_header_messages() {
    let template = tollgate_testkit::ext_proc_with_header_messages();
    budget_refund_and_429(stack_on(&template, "kind = \"memory\"", ACME, 1)).await;
}

#[tokio::test]
async fn budget_on_redis() {
    let redis = RedisServer::start();
    // The default 50 ms store timeout answers by `on_error` on a loaded
    // machine (seen once: a 429 with budget left); the arithmetic under
    // test is the store's.
    budget_refund_and_429(stack(
        &format!(
            "kind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"",
            redis.url()
        ),
        ACME,
        1,
    ))
    .await;
}

/// OpenAI and Anthropic, streamed and not: each settles to the usage the
/// upstream reported. After each case a probe (which itself uses nothing)
/// reads what is left: 1,000,000 − Σ actual − the probe's 308.
#[tokio::test]
async fn every_api_reconciles_to_reported_usage() {
    let quota = r#"
[[quota]]
name = "big"
match = { tenant = "t" }
tokens_per_day = 1000000
"#;
    avoid_window_edge(Duration::from_secs(86_400), Duration::from_secs(30));
    let s = stack("kind = \"memory\"", quota, 1);
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Value)> = vec![
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "max_tokens": 50, "messages": hi}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "max_tokens": 50, "stream": true, "messages": hi}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet", "max_tokens": 50, "messages": hi}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet", "max_tokens": 50, "stream": true, "messages": hi}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "max_output_tokens": 50, "input": "hi"}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "max_output_tokens": 50, "stream": true, "input": "hi"}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o", "max_tokens": 50, "prompt": "hi", "stream": true}),
        ),
        ("/v1/embeddings", json!({"model": "gpt-4o", "input": "hi"})),
    ];
    let mut used = 0u64;
    for (i, (path, body)) in cases.iter().enumerate() {
        let (p, c, cached) = (100 + i as u64, 7 * i as u64, i as u64);
        let r = s
            .client
            .post(s.envoy.url(path))
            .header("x-tenant", "t")
            .header("x-mock-prompt-tokens", p.to_string())
            .header("x-mock-completion-tokens", c.to_string())
            .header("x-mock-cached-tokens", cached.to_string())
            .json(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{path} {body}: {}", s.logs());
        let _ = r.text().await.expect("body");
        used += p + if path.ends_with("embeddings") { 0 } else { c };
        let probe = s
            .chat("t", 300, false)
            .header("x-mock-prompt-tokens", "0")
            .header("x-mock-completion-tokens", "0")
            .send()
            .await
            .expect("probe");
        let left: u64 = header(&probe, "x-ratelimit-remaining-tokens")
            .expect("remaining")
            .parse()
            .unwrap();
        assert_eq!(left, 1_000_000 - used - 308, "after {path} {body}");
        let _ = probe.text().await;
    }
    let m = s.metrics(0).await;
    assert_eq!(
        metric(&m, "tollgate_llm_settlements_total{how=\"usage\"}"),
        16.0,
        "{m}"
    );
    // The cases' usage, in raw tokens (the probes used none).
    assert_eq!(
        metric(
            &m,
            "tollgate_llm_tokens_total{kind=\"actual\",model=\"gpt-4o\"}"
        ) + metric(
            &m,
            "tollgate_llm_tokens_total{kind=\"actual\",model=\"claude-sonnet\"}"
        ),
        used as f64,
        "{m}"
    );
}

/// 200 concurrent requests through Envoy against one budget shared by two
/// tollgate instances on one Redis: never more estimated tokens than the
/// budget. Each estimate is 8 + 492 = 500 of 10,000 per day: exactly 20 fit.
#[tokio::test]
async fn a_burst_on_two_instances_never_overspends() {
    let redis = RedisServer::start();
    let quota = r#"
[[quota]]
name = "shared"
match = { tenant = "burst" }
tokens_per_day = 10000
algorithm = "token_bucket"
"#;
    // This test is about exactness, not outages: a generous store timeout
    // keeps a busy CI machine's slow answers from turning into on_error
    // denials.
    let s = stack(
        &format!(
            "kind = \"redis\"\nurl = \"{}\"\ntimeout = \"1s\"",
            redis.url()
        ),
        quota,
        2,
    );
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let req = s
            .chat("burst", 492, true)
            .header("x-mock-chunks", "2")
            .header("x-mock-chunk-delay-ms", "1500");
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.expect("send");
            let status = r.status().as_u16();
            let _ = r.text().await;
            status
        }));
    }
    let mut ok = 0;
    let mut denied = 0;
    for t in tasks {
        match t.await.expect("task") {
            200 => ok += 1,
            429 => denied += 1,
            other => panic!("unexpected status {other}: {}", s.logs()),
        }
    }
    assert_eq!((ok, denied), (20, 180), "{}", s.logs());
    let mut reserved = 0.0;
    for i in 0..2 {
        let m = s.metrics(i).await;
        reserved += metric(
            &m,
            "tollgate_quota_tokens_total{kind=\"reserved\",quota=\"shared\"}",
        );
        let decided: f64 = m
            .lines()
            .filter(|l| l.starts_with("tollgate_llm_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(decided > 0.0, "instance {i} decided nothing: {m}");
    }
    assert_eq!(reserved, 10_000.0);
}

/// A client that goes away mid-stream frees its concurrency slot at once.
#[tokio::test]
async fn a_disconnect_frees_the_slot_within_a_second() {
    let quota = r#"
[[quota]]
name = "solo"
match = { tenant = "solo" }
max_concurrent = 1
"#;
    let s = stack("kind = \"memory\"", quota, 1);
    let mut r = s
        .chat("solo", 10, true)
        .header("x-mock-chunks", "20")
        .header("x-mock-chunk-delay-ms", "500")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let _ = r.chunk().await.expect("first chunk");
    assert_eq!(
        s.chat("solo", 10, false).send().await.unwrap().status(),
        429,
        "the slot is held"
    );
    drop(r);
    let gone = Instant::now();
    loop {
        let status = s.chat("solo", 10, false).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(1),
            "slot still held 1 s after the client left: {}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = s.metrics(0).await;
    assert_eq!(
        metric(&m, "tollgate_llm_settlements_total{how=\"aborted\"}"),
        1.0,
        "{m}"
    );
}

/// Bad input gets a clear answer: unreadable JSON, a prompt over the
/// context window; an unknown path passes through untouched.
#[tokio::test]
async fn bad_requests_get_provider_shaped_errors() {
    let s = stack("kind = \"memory\"", ACME, 1);
    let r = s
        .client
        .post(s.envoy.url("/v1/chat/completions"))
        .header("x-tenant", "acme")
        .body("{\"model\": \"gpt-4o\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    let long = "x".repeat(20_000);
    let r = s
        .client
        .post(s.envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": long}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
    let r = s
        .client
        .post(s.envoy.url("/v1/messages"))
        .header("x-tenant", "acme")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error", "Anthropic's shape: {e}");
    assert_eq!(
        s.client
            .get(s.envoy.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        s.upstream.requests().iter().all(|r| r.path == "/healthz"),
        "nothing bad reached the upstream"
    );
}
