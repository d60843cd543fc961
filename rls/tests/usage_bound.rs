//! Usage an upstream reports is charged only up to what the request could
//! use: the model's context window for the prompt, the output it asked for
//! (else the context) for the completion. `u64::MAX` or 1e12 tokens are a
//! broken or hostile upstream: charged at the bound, counted, and no
//! counter wraps.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Admitted, Clock, Engine, Finished, Outcome, ResponseEnd, SettledBy};
use tollgate::metrics::Metrics;
use tollgate::rules::Tokens;
use tollgate::store::MemoryStore;

mod chat;

const CONFIG: &str = r#"
[llm]
estimator = "bytes"

[[model]]
name = "small"
context_window = 1000
default_max_output = 100

[[quota]]
name = "tokens"
match = { tenant = "t" }
tokens_per_day = 1000000
"#;

struct Harness {
    engine: Engine,
    config: Config,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            engine: Engine::new(Arc::new(MemoryStore::new()), Arc::new(Metrics::default()))
                .with_clock(Clock::tokio(1_800_000_000_000)),
            config: parse_str("bound.toml", CONFIG).unwrap(),
        }
    }

    async fn admit(&self, body: serde_json::Value) -> Box<Admitted> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = chat::admit(&self.engine, &self.config, "t", &body, deadline, |_| {}).await;
        match outcome {
            Outcome::Admitted(a) => a,
            other => panic!("not admitted: {other:?}"),
        }
    }

    async fn settle(&self, a: &Admitted, prompt: u64, completion: u64) -> Finished {
        let end = ResponseEnd::Completed {
            status: 200,
            usage: Some(Tokens {
                prompt,
                completion,
                cached: 0,
            }),
            output_bytes: 0,
        };
        self.engine
            .admission
            .finish(&self.config.llm.settings, a, end)
            .await
    }

    fn metric(&self, series: &str) -> u64 {
        let text = self.engine.counters().metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// What the day's token counter has left, as the next admission sees it.
    async fn remaining(&self) -> u64 {
        let probe = self.admit(ask(Some(1))).await;
        let left = probe.budget.tokens.expect("a token budget").remaining;
        self.settle(&probe, 0, 0).await;
        // The probe reserved its own estimate: add it back.
        left + probe.estimate().prompt + probe.estimate().completion
    }
}

fn ask(max_tokens: Option<u64>) -> serde_json::Value {
    let mut body = json!({"model": "small", "messages": [{"role": "user", "content": "hi"}]});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

#[tokio::test(start_paused = true)]
async fn absurd_usage_is_charged_at_the_bound_counted_and_never_wraps_a_counter() {
    let h = Harness::new();
    let full = h.remaining().await;
    assert_eq!(full, 1_000_000);
    // Both admitted before either settles: one asked for 50 output
    // tokens, the other for none (bounded by the context).
    let asked = h.admit(ask(Some(50))).await;
    let unasked = h.admit(ask(None)).await;
    assert_eq!(
        h.settle(&asked, u64::MAX, u64::MAX).await,
        Finished::Settled(SettledBy::Usage)
    );
    assert_eq!(
        h.settle(&unasked, 1_000_000_000_000, 1_000_000_000_000)
            .await,
        Finished::Settled(SettledBy::Usage)
    );
    // Charged: 1000 + 50, then 1000 + 1000.
    assert_eq!(h.remaining().await, full - 1050 - 2000);
    assert_eq!(
        h.metric("tollgate_llm_usage_anomalies_total{model=\"small\"}"),
        2
    );
    assert_eq!(
        h.metric("tollgate_llm_tokens_total{kind=\"actual\",model=\"small\"}"),
        1050 + 2000
    );
}

#[tokio::test(start_paused = true)]
async fn plausible_usage_is_charged_as_reported_and_is_no_anomaly() {
    let h = Harness::new();
    let full = h.remaining().await;
    let a = h.admit(ask(Some(50))).await;
    assert_eq!(
        h.settle(&a, 990, 50).await,
        Finished::Settled(SettledBy::Usage)
    );
    assert_eq!(h.remaining().await, full - 1040);
    let text = h.engine.counters().metrics().render();
    assert!(
        !text.contains("tollgate_llm_usage_anomalies_total{"),
        "{text}"
    );
}
