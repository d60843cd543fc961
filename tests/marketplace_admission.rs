//! The marketplace stage at the engine level, against the mock marketplace
//! on loopback (real time): Envoy's timer extension covers the step, the
//! config in force decides whether it is asked, a client gone mid-quote
//! is cancelled with nothing reported, usage reports say how the response
//! ended, and supply lists in use are refreshed in the background.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate::background::Background;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Ask, Engine, Outcome, ResponseEnd};
use tollgate::marketplace::Marketplace;
use tollgate::metrics::Metrics;
use tollgate::rules::{Identity, Tokens};
use tollgate::store::MemoryStore;
use tollgate_filters::Endpoint;
use tollgate_testkit::{scratch_dir, MockMarketplace, Quote, Supply};

const KEY: &str = "engine-level-key";

/// The config: a one-slot quota, the marketplace on with a 400 ms step
/// (unless `extra` sets another `timeout`), and `extra`'s lines.
fn config(market: &MockMarketplace, max_wait: &str, extra: &str) -> Config {
    let extra = if extra.contains("timeout") {
        extra.to_string()
    } else {
        format!("timeout = \"400ms\"\n{extra}")
    };
    let key = scratch_dir("market-admission").join("key");
    std::fs::write(&key, KEY).unwrap();
    parse_str(
        "t.toml",
        &format!(
            r#"
[llm]
estimator = "bytes"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100

[[quota]]
name = "slot"
match = {{ model = "gpt-4o" }}
max_concurrent = 1
max_wait = "{max_wait}"

[marketplace]
enabled = true
endpoint = "{}"
api_key_file = "{}"
models = ["gpt-4o"]
max_price_per_mtoken = 5
allowed_hosts = ["supplier.example"]
{extra}
"#,
            market.url(),
            key.display()
        ),
    )
    .unwrap()
}

fn mock() -> MockMarketplace {
    MockMarketplace::start(
        KEY,
        Supply {
            supply_id: "s-1".into(),
            endpoint: "https://supplier.example/v1base".into(),
            signed_token: "tok".into(),
            price_per_mtoken: 1.0,
            model: None,
        },
    )
}

struct Harness {
    engine: Engine,
    metrics: Arc<Metrics>,
    background: Background,
    config: Config,
}

impl Harness {
    fn new(config: Config) -> Harness {
        let metrics = Arc::new(Metrics::default());
        let market = Marketplace::build(&config.marketplace, metrics.clone()).unwrap();
        assert!(market.is_some());
        let background = Background::new();
        tollgate::marketplace::spawn(&background, market.as_ref(), || true);
        let engine =
            Engine::new(Arc::new(MemoryStore::new()), metrics.clone()).with_marketplace(market);
        Harness {
            engine,
            metrics,
            background,
            config,
        }
    }

    /// Asks with `policy` as the config in force (the one built from by
    /// default); returns the outcome and the waits announced.
    async fn ask_with(
        &self,
        policy: &Config,
        cancel: &CancellationToken,
    ) -> (Outcome, Vec<Duration>) {
        let body = serde_json::to_vec(&json!({"model": "gpt-4o", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hello"}]}))
        .unwrap();
        let mut announced = Vec::new();
        let outcome = self
            .engine
            .admission
            .admit(
                Ask {
                    llm: &policy.llm,
                    marketplace: &policy.marketplace,
                    identity: Identity {
                        route: "/v1/chat/completions".into(),
                        ..Default::default()
                    },
                    endpoint: Endpoint::ChatCompletions,
                    body: &body,
                    complete: true,
                    deadline: Instant::now() + Duration::from_secs(59),
                    cancel,
                },
                |w| announced.push(w),
            )
            .await;
        (outcome, announced)
    }

    async fn ask(&self) -> (Outcome, Vec<Duration>) {
        self.ask_with(&self.config, &CancellationToken::new()).await
    }

    /// Takes the one slot, so every later request is over budget.
    async fn hold_the_slot(&self) -> Outcome {
        let (o, _) = self.ask().await;
        assert!(matches!(o, Outcome::Admitted(_)), "{o:?}");
        o
    }
}

fn near(got: Duration, want: Duration) -> bool {
    got.abs_diff(want) < Duration::from_millis(60)
}

#[tokio::test]
async fn the_timer_extension_covers_the_marketplace_step() {
    let m = mock();
    let h = Harness::new(config(&m, "300ms", ""));
    let _held = h.hold_the_slot().await;
    let (o, announced) = h.ask().await;
    assert!(matches!(o, Outcome::Brokered(_)), "{o:?}");
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert!(
        near(announced[0], Duration::from_millis(700)),
        "the 300 ms wait and the 400 ms step: {announced:?}"
    );

    // No wait at all: one extension before the step, for the step.
    let m = mock();
    let h = Harness::new(config(&m, "0s", ""));
    let _held = h.hold_the_slot().await;
    let (o, announced) = h.ask().await;
    let Outcome::Brokered(b) = o else {
        panic!("{o:?}")
    };
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert!(
        near(announced[0], Duration::from_millis(400)),
        "{announced:?}"
    );
    assert_eq!(b.quote.supplier.authority, "supplier.example");
    assert_eq!(
        b.quote.supplier.path("/v1/chat/completions"),
        "/v1base/v1/chat/completions"
    );
    assert_eq!(b.body, None, "same model name: the body goes as it came");
    assert!(b.took < Duration::from_millis(400));
}

#[tokio::test]
async fn the_config_in_force_decides_whether_it_is_asked() {
    let m = mock();
    let h = Harness::new(config(&m, "0s", ""));
    let _held = h.hold_the_slot().await;
    for off in ["offline_mode = true", "classes = []"] {
        let policy = config(&m, "0s", off);
        let (o, announced) = h.ask_with(&policy, &CancellationToken::new()).await;
        let Outcome::Denied(d) = o else {
            panic!("{off}: {o:?}")
        };
        assert!(d.marketplace.is_none(), "{off}: {d:?}");
        assert!(announced.is_empty(), "{off}");
    }
    assert_eq!(
        m.accepted(),
        0,
        "turned off in the config in force: no call"
    );
    let (o, _) = h.ask().await;
    assert!(matches!(o, Outcome::Brokered(_)), "{o:?}");
}

#[tokio::test]
async fn a_client_gone_during_the_quote_is_cancelled_and_nothing_is_reported() {
    let m = mock();
    let h = Harness::new(config(&m, "0s", "timeout = \"3s\""));
    let _held = h.hold_the_slot().await;
    m.next_quotes([Quote::Hang(Duration::from_secs(2))]);
    let cancel = CancellationToken::new();
    let gone = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gone.cancel();
    });
    let started = Instant::now();
    let (o, _) = h.ask_with(&h.config, &cancel).await;
    assert!(matches!(o, Outcome::Cancelled { .. }), "{o:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(m.usage_reports().is_empty());
    let text = h.metrics.render();
    assert!(
        !text.contains("tollgate_marketplace_requests_total{"),
        "{text}"
    );
}

#[tokio::test]
async fn usage_reports_say_how_the_response_ended() {
    let m = mock();
    let h = Harness::new(config(&m, "0s", ""));
    let _held = h.hold_the_slot().await;
    let ends = [
        ResponseEnd::Completed {
            status: 200,
            usage: Some(Tokens {
                prompt: 11,
                completion: 22,
                cached: 0,
            }),
            output_bytes: 0,
        },
        ResponseEnd::Completed {
            status: 504,
            usage: None,
            output_bytes: 0,
        },
        ResponseEnd::Aborted { output_bytes: 9 },
    ];
    for end in ends {
        let (o, _) = h.ask().await;
        let Outcome::Brokered(b) = o else {
            panic!("{o:?}")
        };
        h.engine.admission.report(&b, end);
    }
    for _ in 0..100 {
        if m.usage_reports().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = m.usage_reports();
    assert_eq!(reports.len(), 3, "{reports:?}");
    let statuses: Vec<&str> = reports
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "timeout", "error"]);
    assert_eq!(reports[0]["prompt_tokens"], 11);
    assert_eq!(reports[0]["completion_tokens"], 22);
    assert!(reports[1]["prompt_tokens"].is_null());
    for r in &reports {
        assert_eq!(r.as_object().unwrap().len(), 8, "{r}");
    }
    // The slot is still held by the first request only: nothing brokered
    // reserved anything.
    let (o, _) = h.ask().await;
    assert!(matches!(o, Outcome::Brokered(_)));
    h.background.stop(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn supply_lists_in_use_are_refreshed_in_the_background_and_dropped_when_not() {
    let m = mock();
    let h = Harness::new(config(&m, "0s", "cache_ttl = \"2s\""));
    let _held = h.hold_the_slot().await;
    let (o, _) = h.ask().await;
    assert!(matches!(o, Outcome::Brokered(_)));
    assert_eq!(m.calls("/v1/supplies"), 1, "fetched for the first request");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (o, _) = h.ask().await;
    assert!(matches!(o, Outcome::Brokered(_)));
    // Refreshed from 1 s of age, ahead of its expiry, by the background:
    // no request waited for it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(m.calls("/v1/supplies") >= 2, "refreshed while in use");
    let text = h.metrics.render();
    assert!(
        text.contains("tollgate_marketplace_supply_cache_total{result=\"hit\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("tollgate_marketplace_supply_cache_total{result=\"miss\"} 2"),
        "the second request did not fetch"
    );
    // Unused since 1.2 s: refreshed at most while it counts as in use
    // (until 3.2 s), then dropped; no call after that.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let settled = m.calls("/v1/supplies");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        m.calls("/v1/supplies"),
        settled,
        "no refresh of a list nobody uses"
    );
    assert!(settled <= 4, "{settled} fetches");
}

/// A 404 to a supply list is "nothing for this now": the 429 without a
/// quote, the call counted as `no_supply` (not `ok`, not a failure), the
/// answer kept in the cache, and the breaker untouched.
#[tokio::test]
async fn a_supply_list_answered_404_is_no_supply() {
    let m = mock();
    m.set_supplies_status(Some(404));
    let h = Harness::new(config(&m, "0s", ""));
    let _held = h.hold_the_slot().await;
    for _ in 0..4 {
        let (o, _) = h.ask().await;
        let Outcome::Denied(d) = o else {
            panic!("{o:?}")
        };
        let refusal = d.marketplace.as_ref().map(|t| t.refusal.as_str());
        assert_eq!(refusal, Some("no_supply"), "{d:?}");
    }
    assert_eq!(m.calls("/v1/supplies"), 1, "the 404 is cached");
    assert_eq!(m.calls("/v1/marketplace/quote"), 0);
    let text = h.metrics.render();
    assert!(
        text.contains(r#"tollgate_marketplace_calls_total{call="supplies",result="no_supply"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"tollgate_marketplace_calls_total{call="supplies",result="ok"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_marketplace_breaker_state{state="closed"} 1"#),
        "{text}"
    );
}
