//! Waiting, fallback and disconnects through a real Envoy with ext_proc in
//! front of the mock LLM: requests that find no capacity wait in line (past
//! Envoy's 2 s message timeout, which tollgate extends), are admitted in
//! arrival order as capacity frees, fall back to another model with the body
//! rewritten, and leave the line without a trace when their client goes.

use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_testkit::{avoid_window_edge, Envoy, MockLlm, Tollgate};

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[llm]
estimator = "bytes"
max_wait = "0s"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100
fallback = ["gpt-4o-mini"]

[[model]]
name = "gpt-4o-mini"
context_window = 4000
default_max_output = 100

[[quota]]
name = "serial"
match = { tenant = "serial*" }
max_concurrent = 1
max_wait = "10s"

[[quota]]
name = "by-priority"
match = { tenant = "prio" }
max_concurrent = 1
max_wait = "10s"

# Classes without shares: they only order the lines. No header: batch.
[[class]]
name = "interactive"
priority = 10

[[class]]
name = "batch"
priority = 1

[[quota]]
name = "impatient"
match = { tenant = "impatient" }
max_concurrent = 1

# One request a minute; "auto" waits for the next window when it is
# within max_wait_cap (30 s by default).
[[quota]]
name = "per-minute"
match = { tenant = "minute" }
requests_per_minute = 1
max_wait = "auto"

[[quota]]
name = "big"
match = { tenant = "fb", model = "gpt-4o" }
requests_per_minute = 1
max_wait = "1s"

[[quota]]
name = "small"
match = { tenant = "fb", model = "gpt-4o-mini" }
requests_per_minute = 1
max_wait = "1s"
"#;

struct Stack {
    tollgate: Tollgate,
    envoy: Envoy,
    upstream: MockLlm,
    url: String,
}

fn stack() -> Stack {
    stack_on("ext_proc.yaml")
}

fn stack_on(template: &str) -> Stack {
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let envoy = Envoy::start(
        template,
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("TOLLGATE_PORT_2", tollgate.grpc_port().to_string()),
        ],
    );
    let url = envoy.url("/v1/chat/completions");
    Stack {
        tollgate,
        envoy,
        upstream,
        url,
    }
}

/// A chat request from `tenant`, marked `name` in its message, the
/// upstream answering after `latency_ms`.
fn chat(
    client: &reqwest::Client,
    url: &str,
    tenant: &str,
    name: &str,
    latency_ms: u64,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("x-tenant", tenant)
        .header("x-mock-latency-ms", latency_ms.to_string())
        .json(&json!({"model": "gpt-4o", "max_tokens": 10,
                      "messages": [{"role": "user", "content": name}]}))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

/// The marker of each upstream request and when it arrived.
fn arrivals(upstream: &MockLlm) -> Vec<(String, Instant)> {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| {
            let name = r.json()["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (name, r.at)
        })
        .collect()
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn queued_requests_go_upstream_in_arrival_order_each_woken_by_the_last_completion() {
    let s = stack();
    let c = client();
    // A holds the one slot for 2.5 s: longer than Envoy's 2 s message
    // timeout, so the waiters' answers only arrive because tollgate asked
    // Envoy for more time.
    let first = tokio::spawn(chat(&c, &s.url, "serial", "A", 2_500).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waiters = Vec::new();
    for name in ["B", "C", "D"] {
        waiters.push(tokio::spawn(chat(&c, &s.url, "serial", name, 300).send()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = first.await.unwrap().expect("A");
    assert_eq!(a.status(), 200, "{}", s.tollgate.log_text());
    for w in waiters {
        let r = w.await.unwrap().expect("waiter");
        assert_eq!(
            r.status(),
            200,
            "{}\n{}",
            s.tollgate.log_text(),
            s.envoy
                .stats()
                .lines()
                .filter(|l| l.contains("ext_proc"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let waited: u64 = header(&r, "x-tollgate-waited-ms")
            .expect("a waiter says it waited")
            .parse()
            .unwrap();
        assert!(waited >= 1_500, "waited {waited} ms");
    }
    let seen = arrivals(&s.upstream);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["A", "B", "C", "D"], "arrival order");
    // Each went upstream within 100 ms of the one before completing.
    for (pair, hold_ms) in seen.windows(2).zip([2_500u64, 300, 300]) {
        let gap = pair[1].1 - pair[0].1;
        let after_completion = gap.saturating_sub(Duration::from_millis(hold_ms));
        eprintln!(
            "{} went upstream {after_completion:?} after {} completed",
            pair[1].0, pair[0].0
        );
        assert!(
            after_completion < Duration::from_millis(100),
            "{} went upstream {after_completion:?} after {} completed",
            pair[1].0,
            pair[0].0
        );
    }
    let m = s.tollgate.metrics();
    assert_eq!(metric(&m, "tollgate_llm_waiting "), 0.0);
    assert_eq!(
        metric(&m, "tollgate_llm_wait_seconds_count{outcome=\"admitted\"}"),
        3.0
    );
}

/// Time left in the current UTC minute (fixed windows are aligned to the
/// epoch).
fn left_in_minute() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    Duration::from_secs(60) - Duration::from_nanos((now.as_nanos() % 60_000_000_000) as u64)
}

#[tokio::test]
async fn a_queued_request_is_admitted_right_after_the_window_resets() {
    // Start 3 to 25 s before a minute ends: A and B fall in one window, and
    // B's wait for the next one stays within max_wait_cap (30 s).
    loop {
        let left = left_in_minute();
        if left < Duration::from_secs(3) {
            tokio::time::sleep(left + Duration::from_millis(500)).await;
        } else if left > Duration::from_secs(25) {
            tokio::time::sleep(left - Duration::from_secs(22)).await;
        } else {
            break;
        }
    }
    let s = stack();
    let c = client();
    let a = chat(&c, &s.url, "minute", "A", 0).send().await.unwrap();
    assert_eq!(a.status(), 200, "{}", s.tollgate.log_text());
    // The minute's one request is spent: B waits for the next window.
    let reset = Instant::now() + left_in_minute();
    let b = chat(&c, &s.url, "minute", "B", 0).send().await.unwrap();
    assert_eq!(b.status(), 200, "{}", s.tollgate.log_text());
    assert!(header(&b, "x-tollgate-waited-ms").is_some(), "B waited");
    let seen = arrivals(&s.upstream);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["A", "B"]);
    let arrived = seen[1].1;
    // Not before the window resets (a few ms of slack: the test's and
    // tollgate's clocks are read at different instants), and right after.
    assert!(
        arrived + Duration::from_millis(20) >= reset,
        "B went upstream {:?} before the reset",
        reset - arrived
    );
    let after = arrived.saturating_duration_since(reset);
    eprintln!("B went upstream {after:?} after the window reset");
    assert!(
        after < Duration::from_millis(250),
        "B went upstream {after:?} after the window reset"
    );
}

#[tokio::test]
async fn zero_max_wait_answers_429_at_once() {
    let s = stack();
    let c = client();
    let held = tokio::spawn(chat(&c, &s.url, "impatient", "A", 1_000).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let r = chat(&c, &s.url, "impatient", "B", 0).send().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert!(took < Duration::from_millis(100), "429 after {took:?}");
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn an_exhausted_model_falls_back_with_the_body_rewritten_then_429_after_both_waits() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(10));
    let s = stack();
    let c = client();
    let r = chat(&c, &s.url, "fb", "one", 0).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-model").as_deref(), Some("gpt-4o"));
    assert!(header(&r, "x-tollgate-fallback-from").is_none());

    // gpt-4o's one request a minute is spent: after its 1 s wait the
    // request goes to gpt-4o-mini.
    let asked = Instant::now();
    let r = chat(&c, &s.url, "fb", "two", 0).send().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status(), 200, "{}", s.tollgate.log_text());
    assert!(
        took >= Duration::from_secs(1),
        "waited for gpt-4o first: {took:?}"
    );
    assert_eq!(
        header(&r, "x-tollgate-model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        header(&r, "x-tollgate-fallback-from").as_deref(),
        Some("gpt-4o")
    );
    let last = s.upstream.requests().pop().expect("upstream saw it");
    assert_eq!(last.json()["model"], "gpt-4o-mini", "the body is rewritten");

    // Both spent: 429 after both waits (1 s + 1 s).
    let asked = Instant::now();
    let r = chat(&c, &s.url, "fb", "three", 0).send().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status(), 429);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3_500),
        "429 after the sum of the waits: {took:?}"
    );
    assert_eq!(s.upstream.request_count(), 2);
    let m = s.tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_llm_fallbacks_total{from=\"gpt-4o\",to=\"gpt-4o-mini\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_loses_its_place_and_leaks_nothing() {
    let s = stack();
    let c = client();
    let first = tokio::spawn(chat(&c, &s.url, "serial-2", "A", 1_500).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B gives up after 300 ms in line.
    let b = chat(&c, &s.url, "serial-2", "B", 0)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(b.is_err(), "B's client gave up");
    let third = tokio::spawn(chat(&c, &s.url, "serial-2", "C", 0).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = s.tollgate.metrics();
    assert_eq!(metric(&m, "tollgate_llm_waiting "), 1.0, "only C waits");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(third.await.unwrap().unwrap().status(), 200);
    let names: Vec<String> = arrivals(&s.upstream).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["A", "C"], "B never went upstream");
    // The slot is free: the next request goes at once.
    let asked = Instant::now();
    let r = chat(&c, &s.url, "serial-2", "D", 0).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "x-tollgate-waited-ms").is_none(),
        "{:?}",
        asked.elapsed()
    );
    let m = s.tollgate.metrics();
    assert_eq!(metric(&m, "tollgate_llm_waiting "), 0.0);
    assert_eq!(
        metric(
            &m,
            "tollgate_llm_requests_total{model=\"gpt-4o\",outcome=\"cancelled\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn the_priority_header_puts_a_later_request_first_in_line() {
    let s = stack();
    let c = client();
    let first = tokio::spawn(chat(&c, &s.url, "prio", "A", 1_000).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiters = Vec::new();
    for (name, class) in [
        ("B", None),
        ("C", Some("batch")),
        ("D", Some("interactive")),
    ] {
        let mut r = chat(&c, &s.url, "prio", name, 100);
        if let Some(class) = class {
            r = r.header("x-priority", class);
        }
        waiters.push(tokio::spawn(r.send()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().status(), 200);
    }
    let names: Vec<String> = arrivals(&s.upstream).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["A", "D", "B", "C"],
        "interactive first, then batch (the default) in arrival order"
    );
}

/// With the request headers message, a fallback also sets the model header
/// Envoy can route on (and the content length of the new body).
#[tokio::test]
async fn with_header_messages_a_fallback_sets_the_routing_header() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(10));
    let s = stack_on(&tollgate_testkit::ext_proc_with_header_messages());
    let c = client();
    assert_eq!(
        chat(&c, &s.url, "fb", "one", 0)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = chat(&c, &s.url, "fb", "two", 0).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-fallback-from").as_deref(),
        Some("gpt-4o"),
        "set by tollgate on the response headers message"
    );
    let last = s.upstream.requests().pop().expect("upstream saw it");
    assert_eq!(last.json()["model"], "gpt-4o-mini");
    assert_eq!(last.header("x-tollgate-model"), Some("gpt-4o-mini"));
    assert_eq!(
        last.header("content-length").map(str::to_string),
        Some(last.body.len().to_string())
    );
}

/// A wait shorter than Envoy allows is covered, whatever `max_wait_cap`
/// says: with the ext_proc filter's `max_message_timeout` at 30 s and a
/// quota's `max_wait` of 15 s, tollgate asks Envoy for what this request
/// can really wait (15 s + 1 s), not for `max_wait_cap` + 1 s = 31 s, which
/// Envoy would ignore ("new timeout setting is out of config range") and
/// then cut the request with 504 after its 2 s message timeout.
#[tokio::test]
async fn a_wait_fits_in_envoys_max_message_timeout() {
    let shipped =
        std::fs::read_to_string(tollgate_testkit::repo_root().join("envoy/ext_proc.yaml"))
            .expect("envoy/ext_proc.yaml");
    assert!(
        shipped.contains("max_message_timeout: 60s"),
        "the shipped config changed"
    );
    let template = tollgate_testkit::scratch_dir("max-message-timeout").join("ext_proc_30s.yaml");
    std::fs::write(
        &template,
        shipped.replace("max_message_timeout: 60s", "max_message_timeout: 30s"),
    )
    .unwrap();
    let upstream = MockLlm::start();
    let config = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[llm]
estimator = "bytes"
max_message_timeout = "30s"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100

[[quota]]
name = "one-at-a-time"
match = { tenant = "serial" }
max_concurrent = 1
max_wait = "15s"
"#;
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), config);
    let envoy = Envoy::start(
        &template.display().to_string(),
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("TOLLGATE_PORT_2", tollgate.grpc_port().to_string()),
        ],
    );
    let url = envoy.url("/v1/chat/completions");
    let c = client();
    // A holds the slot for 3 s, past Envoy's 2 s message timeout.
    let first = tokio::spawn(chat(&c, &url, "serial", "A", 3_000).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let b = chat(&c, &url, "serial", "B", 10).send().await.expect("B");
    let took = started.elapsed();
    assert_eq!(
        b.status(),
        200,
        "B waited {took:?}\n{}\n{}",
        tollgate.log_text(),
        envoy.log_text()
    );
    assert!(header(&b, "x-tollgate-waited-ms").is_some());
    assert_eq!(first.await.unwrap().expect("A").status(), 200);
    assert!(
        !envoy.log_text().contains("out of config range"),
        "{}",
        envoy.log_text()
    );
}
