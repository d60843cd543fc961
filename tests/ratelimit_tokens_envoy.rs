//! Reserve and reconcile over plain RLS, end to end: Envoy's rate limit
//! filter reserves a fixed estimate (500) on the request path; a Lua filter
//! reads `total_tokens` from the response; the filter's stream-done call
//! (`apply_on_stream_done`) sends it, and tollgate settles the reservation.

use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_testkit::{avoid_window_edge, metric, Envoy, MockLlm, Tollgate};

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[rule]]
domain = "llm"
match = ["tenant", "request_id"]
limit = { tokens = 1000, per = "day" }
reserve = "request_id"
"#;

/// Waits until tollgate has answered `n` RLS calls (the stream-done call
/// is sent after the client already has its response).
fn wait_for_calls(t: &Tollgate, n: f64) {
    let start = Instant::now();
    loop {
        let m = t.metrics();
        let calls = metric(
            &m,
            "tollgate_decisions_total",
            &[("service", "rls"), ("code", "ok")],
        )
        .unwrap_or(0.0)
            + metric(
                &m,
                "tollgate_decisions_total",
                &[("service", "rls"), ("code", "over_limit")],
            )
            .unwrap_or(0.0);
        if calls >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "only {calls} of {n} calls: {}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn estimate_on_request_actual_on_stream_done() {
    avoid_window_edge(Duration::from_secs(86_400), Duration::from_secs(30));
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let envoy = Envoy::start(
        "ratelimit-tokens.yaml",
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("ESTIMATE", "500".to_string()),
        ],
    );
    let client = reqwest::Client::new();
    let chat = |stream: bool, prompt: u64, completion: u64| {
        client
            .post(envoy.url("/v1/chat/completions"))
            .header("x-tenant", "a")
            .header("x-mock-prompt-tokens", prompt.to_string())
            .header("x-mock-completion-tokens", completion.to_string())
            .json(&json!({"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "hi"}]}))
    };
    let remaining = |r: &reqwest::Response| -> u64 {
        r.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    // JSON: 500 reserved, 30 used.
    let r = chat(false, 10, 20).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", tollgate.log_text());
    assert_eq!(remaining(&r), 500);
    let _ = r.text().await;
    wait_for_calls(&tollgate, 2.0);

    // SSE: the usage chunk carries 110.
    let r = chat(true, 10, 100).send().await.unwrap();
    assert_eq!(remaining(&r), 1000 - 30 - 500);
    let _ = r.text().await;
    wait_for_calls(&tollgate, 4.0);

    // 140 used. A slow stream holds its 500 while it runs: a second
    // request does not fit (360 < 500) until the first one settles.
    let slow = chat(true, 1, 1)
        .header("x-mock-chunks", "4")
        .header("x-mock-chunk-delay-ms", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(remaining(&slow), 1000 - 140 - 500);
    let denied = chat(false, 1, 1).send().await.unwrap();
    assert_eq!(denied.status(), 429);
    let _ = slow.text().await;
    wait_for_calls(&tollgate, 7.0);
    let r = chat(false, 1, 1).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(remaining(&r), 1000 - 140 - 2 - 500);
}
