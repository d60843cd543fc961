//! End to end for money budgets: a real Envoy with ext_proc asks a real
//! tollgate (memory store, then Redis) in front of the mock LLM. A burst of
//! concurrent requests against `spend_per_day = 1.00` never reserves more
//! than the dollar; what is settled is exactly the sum of what each
//! response's usage costs at the configured prices (worked out here
//! independently of tollgate's arithmetic); the next 429 names the money
//! budget.
//!
//! Estimates use `bytes` (÷4): a chat with one message "hi" is 8 prompt
//! tokens, plus its `max_tokens`.

use futures::future::join_all;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, Envoy, MockLlm, RedisServer, Tollgate};

const MAX_TOKENS: u64 = 4000;
/// 8 prompt tokens × 2.50 + 4000 × 10.00 per million = 20 + 40,000.
const ESTIMATE_MICROS: u64 = 40_020;
const BUDGET_MICROS: u64 = 1_000_000;
const BURST: usize = 60;

fn config(store: &str, ietf: bool) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
{store}

[llm]
estimator = "bytes"
currency = "USD"
max_wait = "0s"
ietf_headers = {ietf}

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 100
price = {{ input = 2.50, output = 10.00, cached_input = 1.25 }}

[[quota]]
name = "team-a"
match = {{ tenant = "team-a" }}
spend_per_day = 1.00
"#
    )
}

/// What a response's usage costs, in micro-dollars. At a price of P per
/// million tokens a token costs P micro-dollars, so 2.50, 1.25 and 10.00
/// are 10, 5 and 40 quarter micro-dollars; the sum is rounded up once.
fn cost_micros(prompt: u64, completion: u64, cached: u64) -> u64 {
    let quarters = (prompt - cached) * 10 + cached * 5 + completion * 40;
    quarters.div_ceil(4)
}

/// The usage the mock reports for request `i` of the burst: varied, some
/// cached input, always under the estimate.
fn usage_of(i: u64) -> (u64, u64, u64) {
    (8 + i, 37 * i + 1, i % 7)
}

struct Stack {
    _tollgate: Tollgate,
    envoy: Envoy,
    _upstream: MockLlm,
    client: reqwest::Client,
    admin: String,
    /// `ietf_headers` is on.
    ietf: bool,
}

fn stack(store: &str, ietf: bool) -> Stack {
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(store, ietf));
    let envoy = Envoy::start(
        "ext_proc.yaml",
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("TOLLGATE_PORT_2", tollgate.grpc_port().to_string()),
        ],
    );
    Stack {
        ietf,
        admin: tollgate.admin_url(),
        _tollgate: tollgate,
        envoy,
        _upstream: upstream,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client"),
    }
}

impl Stack {
    /// A chat whose response (after `latency_ms`) reports `usage`.
    async fn chat(&self, usage: (u64, u64, u64), latency_ms: u64) -> reqwest::Response {
        let (prompt, completion, cached) = usage;
        self.client
            .post(self.envoy.url("/v1/chat/completions"))
            .header("x-tenant", "team-a")
            .header("x-mock-prompt-tokens", prompt.to_string())
            .header("x-mock-completion-tokens", completion.to_string())
            .header("x-mock-cached-tokens", cached.to_string())
            .header("x-mock-latency-ms", latency_ms.to_string())
            .json(&json!({"model": "gpt-4o", "max_tokens": MAX_TOKENS,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send")
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }

    /// Waits until `n` responses have been settled (a settlement follows
    /// the response's last byte, on tollgate's side of the stream).
    async fn settled(&self, n: u64) {
        for _ in 0..200 {
            let text = self.metrics().await;
            let done: u64 = text
                .lines()
                .filter(|l| l.starts_with("tollgate_llm_settlements_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{n} settlements not seen in 10 s:\n{}",
            self.metrics().await
        );
    }

    async fn spend_metric(&self, kind: &str) -> u64 {
        let text = self.metrics().await;
        let prefix =
            format!("tollgate_quota_spend_micros_total{{kind=\"{kind}\",quota=\"team-a\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().expect("a count"))
            .unwrap_or(0)
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Micro-units from the decimal of an `x-ratelimit-*-spend` header.
fn micros_of(decimal: &str) -> u64 {
    let (units, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    let frac = format!("{frac:0<6}");
    units.parse::<u64>().expect("units") * 1_000_000 + frac.parse::<u64>().expect("fraction")
}

async fn a_burst_never_reserves_more_than_the_budget(s: Stack) {
    // One day's window throughout (the test takes seconds, not a minute).
    avoid_window_edge(Duration::from_secs(86_400), Duration::from_secs(60));
    // 60 at once, each holding 40,020 for 1.5 s: 24 fit in 1,000,000
    // (960,480), the 25th would need 1,000,500.
    let answers = join_all((0..BURST as u64).map(|i| s.chat(usage_of(i), 1500))).await;
    let fit = (BUDGET_MICROS / ESTIMATE_MICROS) as usize;
    let mut admitted = Vec::new();
    for (i, r) in answers.into_iter().enumerate() {
        match r.status().as_u16() {
            200 => {
                drop(r.text().await);
                admitted.push(i as u64)
            }
            429 => {
                let body: Value = r.json().await.expect("a JSON error body");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("spend_per_day = 1.00 USD"),
                    "the 429 names the money budget: {body}"
                );
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert_eq!(admitted.len(), fit, "exactly what the dollar holds");
    let reserved = s.spend_metric("reserved").await;
    assert_eq!(reserved, fit as u64 * ESTIMATE_MICROS);
    assert!(reserved <= BUDGET_MICROS);

    // When every admitted response has settled, what is spent is the sum
    // of the actual costs, to the micro-dollar.
    s.settled(fit as u64).await;
    let actual: u64 = admitted
        .iter()
        .map(|&i| {
            let (p, c, k) = usage_of(i);
            cost_micros(p, c, k)
        })
        .sum();
    let refunded = s.spend_metric("refunded").await;
    let overage = s.spend_metric("overage").await;
    assert_eq!(overage, 0, "every usage was under its estimate");
    assert_eq!(reserved - refunded, actual, "settled = Σ actual cost");

    // The next request sees exactly that spent, and reserves its estimate.
    let r = s.chat((8, 0, 0), 0).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-limit-spend").as_deref(),
        Some("1.00"),
        "{:?}",
        r.headers()
    );
    let remaining = micros_of(&header(&r, "x-ratelimit-remaining-spend").expect("header"));
    assert_eq!(remaining, BUDGET_MICROS - actual - ESTIMATE_MICROS);
    // The IETF fields, when switched on, say the same in micro-units.
    let reset = header(&r, "x-ratelimit-reset-spend").expect("header");
    if s.ietf {
        assert_eq!(
            header(&r, "ratelimit-policy").as_deref(),
            Some(r#""spend";q=1000000;qu="micro-usd";w=86400"#)
        );
        let expected = format!(r#""spend";r={remaining};t={}"#, reset.trim_end_matches('s'));
        assert_eq!(header(&r, "ratelimit"), Some(expected));
    } else {
        assert_eq!(header(&r, "ratelimit-policy"), None, "off by default");
        assert_eq!(header(&r, "ratelimit"), None);
    }
    drop(r.text().await);

    // Spend the rest with requests that use all they reserve; then 429.
    let full = (8, MAX_TOKENS, 0);
    assert_eq!(cost_micros(full.0, full.1, full.2), ESTIMATE_MICROS);
    loop {
        let r = s.chat(full, 0).await;
        if r.status() == 429 {
            assert_eq!(
                header(&r, "x-ratelimit-limit-spend").as_deref(),
                Some("1.00")
            );
            let left = micros_of(&header(&r, "x-ratelimit-remaining-spend").expect("header"));
            assert!(
                left < ESTIMATE_MICROS,
                "denied only when it does not fit: {left}"
            );
            let retry: u64 = header(&r, "retry-after")
                .expect("retry-after")
                .parse()
                .expect("seconds");
            assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
            break;
        }
        assert_eq!(r.status(), 200);
        drop(r.text().await);
    }
}

#[tokio::test]
async fn money_budget_on_memory() {
    a_burst_never_reserves_more_than_the_budget(stack(r#"kind = "memory""#, true)).await;
}

#[tokio::test]
async fn money_budget_on_redis() {
    let redis = RedisServer::start();
    // The default 50 ms store timeout answers by `on_error` when a loaded
    // machine is slow to run a script, and a script that ran after its
    // caller gave up has still taken its estimate (seen once: 18 of 24
    // admitted under load). The figures under test are the budget's.
    a_burst_never_reserves_more_than_the_budget(stack(
        &format!(
            "kind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"",
            redis.url()
        ),
        false,
    ))
    .await;
}
