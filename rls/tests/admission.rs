//! LLM admission at the engine level, stage by stage: the body read, the
//! model, the context, the candidates, the wait (capped to what the proxy
//! allows and announced once, fallbacks included), and the settlement by
//! how the response ended. Time is tokio's paused clock, which the engine's
//! clock follows (memory store).

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{
    Admitted, Clock, Engine, Finished, Outcome, Rejection, ResponseEnd, SettledBy, OTHER_MODEL,
};
use tollgate::metrics::Metrics;
use tollgate::rules::Tokens;
use tollgate::store::MemoryStore;

mod chat;

const START_MS: u64 = 1_800_000_000_000 + 10_000;

const CONFIG: &str = r#"
[llm]
estimator = "bytes"
allow_unknown_models = false
max_wait_cap = "120s"

[[model]]
name = "big"
context_window = 1000
default_max_output = 100
fallback = ["small", "tiny"]

[[model]]
name = "small"
context_window = 1000
default_max_output = 100

# Too small for the requests below: never a candidate.
[[model]]
name = "tiny"
context_window = 10
default_max_output = 5

[[quota]]
name = "big-slot"
match = { tenant = "t", model = "big" }
max_concurrent = 1
max_wait = "3s"

[[quota]]
name = "small-slot"
match = { tenant = "t", model = "small" }
max_concurrent = 1
max_wait = "2s"

[[quota]]
name = "auto-slot"
match = { tenant = "auto", model = "small" }
max_concurrent = 1
max_wait = "auto"

[[quota]]
name = "tokens"
match = { tenant = "tok" }
tokens_per_minute = 1000
"#;

struct Harness {
    engine: Engine,
    config: Config,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            engine: Engine::new(Arc::new(MemoryStore::new()), Arc::new(Metrics::default()))
                .with_clock(Clock::tokio(START_MS)),
            config: parse_str("admission.toml", CONFIG).unwrap(),
        }
    }

    /// Asks for `model` as `tenant`; `deadline` is what the proxy allows.
    /// Returns the outcome and every wait announced to the proxy.
    async fn ask(
        &self,
        tenant: &str,
        body: serde_json::Value,
        deadline: Duration,
    ) -> (Outcome, Vec<Duration>) {
        let mut announced = Vec::new();
        let outcome = chat::admit(
            &self.engine,
            &self.config,
            tenant,
            &body,
            Instant::now() + deadline,
            |wait| announced.push(wait),
        )
        .await;
        (outcome, announced)
    }

    async fn finish(&self, a: &Admitted, end: ResponseEnd) -> Finished {
        self.engine
            .admission
            .finish(&self.config.llm.settings, a, end)
            .await
    }
}

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
}

fn admitted(o: Outcome) -> Box<Admitted> {
    match o {
        Outcome::Admitted(a) => a,
        other => panic!("not admitted: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_stages_refuse_before_asking_any_budget() {
    let h = Harness::new();
    let long = Duration::from_secs(60);
    let (o, _) = h.ask("t", chat("unknown"), long).await;
    assert!(
        matches!(o, Outcome::Rejected(Rejection::UnknownModel)),
        "{o:?}"
    );
    let huge = json!({"model": "big", "max_tokens": 990,
                      "messages": [{"role": "user", "content": "x".repeat(200)}]});
    let (o, _) = h.ask("t", huge, long).await;
    match o {
        Outcome::Rejected(Rejection::ContextExceeded {
            model_label,
            context,
            output,
            ..
        }) => {
            assert_eq!((model_label.as_str(), context, output), ("big", 1000, 990));
        }
        other => panic!("{other:?}"),
    }
    let (o, _) = h.ask("t", json!([1, 2]), long).await;
    assert!(
        matches!(o, Outcome::Rejected(Rejection::Unreadable(_))),
        "{o:?}"
    );
    let big_body =
        json!({"model": "big", "messages": [{"role": "user", "content": "x".repeat(5 << 20)}]});
    let (o, _) = h.ask("t", big_body, long).await;
    assert!(
        matches!(o, Outcome::Rejected(Rejection::TooLarge { .. })),
        "{o:?}"
    );
    let m = h.engine.counters().metrics().render();
    for outcome in ["unknown_model", "invalid", "too_large"] {
        let line = format!(
            "tollgate_llm_requests_total{{model=\"{OTHER_MODEL}\",outcome=\"{outcome}\"}} 1"
        );
        assert!(m.contains(&line), "no `{line}` in\n{m}");
    }
    assert!(
        m.contains("tollgate_llm_requests_total{model=\"big\",outcome=\"context_exceeded\"} 1"),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_announcement_covers_every_wait_still_possible_fallbacks_included() {
    let h = Harness::new();
    let long = Duration::from_secs(60);
    // Both slots held: the request waits 3 s on `big`, then 2 s on
    // `small`; `tiny` cannot hold it.
    let held_big = admitted(h.ask("t", chat("big"), long).await.0);
    let held_small = admitted(h.ask("t", chat("small"), long).await.0);
    let started = Instant::now();
    let (o, announced) = h.ask("t", chat("big"), long).await;
    assert!(matches!(o, Outcome::Denied(_)), "{o:?}");
    assert_eq!(announced, [Duration::from_secs(5)], "once, for 3 s + 2 s");
    let m = h.engine.counters().metrics().render();
    for (code, n) in [("ok", 2), ("over_limit", 1)] {
        let line = format!("tollgate_decisions_total{{code=\"{code}\",service=\"ext_proc\"}} {n}");
        assert!(m.contains(&line), "no `{line}` in\n{m}");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // Free `small` 4 s in, while the request waits on it after its 3 s on
    // `big`: the fallback admits it then.
    let engine = h.engine.clone();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        engine
            .admission
            .finish(
                &parse_str("a.toml", CONFIG).unwrap().llm.settings,
                &held_small,
                ResponseEnd::Aborted { output_bytes: 0 },
            )
            .await
    });
    let started = Instant::now();
    let (o, _) = h.ask("t", chat("big"), long).await;
    assert_eq!(started.elapsed(), Duration::from_secs(4));
    let a = admitted(o);
    assert_eq!(a.model, "small");
    assert_eq!(a.fallback_from.as_deref(), Some("big"));
    let body: serde_json::Value = serde_json::from_slice(a.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["model"], "small",
        "the body names the model it goes to"
    );
    assert_eq!(
        release.await.unwrap(),
        Finished::Settled(SettledBy::Aborted)
    );
    drop(held_big);
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_the_proxy_allows_is_cut_to_fit() {
    let h = Harness::new();
    let held = admitted(
        h.ask("auto", chat("small"), Duration::from_secs(60))
            .await
            .0,
    );
    // "auto" would wait up to max_wait_cap (120 s); the proxy allows 7 s.
    let started = Instant::now();
    let (o, announced) = h.ask("auto", chat("small"), Duration::from_secs(7)).await;
    assert!(matches!(o, Outcome::Denied(_)), "{o:?}");
    assert_eq!(announced, [Duration::from_secs(7)]);
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_response_settles_by_its_usage_or_by_policy() {
    let h = Harness::new();
    let long = Duration::from_secs(60);
    let a = admitted(h.ask("tok", chat("small"), long).await.0);
    let usage = Tokens {
        prompt: 3,
        completion: 4,
        cached: 0,
    };
    let ok = ResponseEnd::Completed {
        status: 200,
        usage: Some(usage),
        output_bytes: 0,
    };
    assert_eq!(h.finish(&a, ok).await, Finished::Settled(SettledBy::Usage));
    assert_eq!(h.finish(&a, ok).await, Finished::AlreadySettled);
    let b = admitted(h.ask("tok", chat("small"), long).await.0);
    let failed = ResponseEnd::Completed {
        status: 503,
        usage: None,
        output_bytes: 0,
    };
    assert_eq!(
        h.finish(&b, failed).await,
        Finished::Settled(SettledBy::UpstreamError)
    );
    let c = admitted(h.ask("tok", chat("small"), long).await.0);
    let silent = ResponseEnd::Completed {
        status: 200,
        usage: None,
        output_bytes: 0,
    };
    assert_eq!(
        h.finish(&c, silent).await,
        Finished::Settled(SettledBy::NoUsage)
    );
    let m = h.engine.counters().metrics().render();
    for how in ["usage", "already_settled", "upstream_error", "no_usage"] {
        let line = format!("tollgate_llm_settlements_total{{how=\"{how}\"}} 1");
        assert!(m.contains(&line), "no `{line}` in\n{m}");
    }
}
