//! A settle that fails because Redis is down is retried until Redis
//! answers again: the request's concurrency slot is freed and its budget
//! charged with the usage, not left at the estimate until
//! `reservation_ttl` (the soak, docs/soak.md: a 0.2 s Redis restart left
//! each request that ended in it holding its slot for the whole TTL).
//! Redis is saved, killed and started again on its saved data, as a
//! planned restart of a persistent Redis keeps it.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Admitted, Engine, Finished, Outcome, ResponseEnd};
use tollgate::metrics::Metrics;
use tollgate::rules::Tokens;
use tollgate::store::RedisStore;
use tollgate_testkit::RedisServer;

mod chat;

const CONFIG: &str = r#"
[llm]
estimator = "bytes"
reservation_ttl = "10m"

[[model]]
name = "m"
context_window = 100000
default_max_output = 100

[[quota]]
name = "t"
match = { tenant = "t" }
max_concurrent = 1
tokens_per_day = 100000
"#;

async fn ask(engine: &Engine, config: &Config) -> Outcome {
    let body =
        json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    // No waiting: a slot still held answers over budget at once.
    chat::admit(engine, config, "t", &body, Instant::now(), |_| {}).await
}

fn admitted(o: Outcome) -> Box<Admitted> {
    match o {
        Outcome::Admitted(a) => a,
        other => panic!("not admitted: {other:?}"),
    }
}

#[tokio::test]
async fn a_settle_that_failed_while_redis_was_down_is_retried_when_it_is_back() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(
        &redis.url(),
        Duration::from_millis(500),
        Duration::from_secs(2),
    )
    .await
    .expect("connect to the test redis-server");
    let engine = Engine::new(Arc::new(store), Arc::new(Metrics::default()));
    let config = parse_str("retry.toml", CONFIG).unwrap();

    let a = admitted(ask(&engine, &config).await);
    let estimate = a.estimate().prompt + a.estimate().completion;
    assert!(
        !matches!(ask(&engine, &config).await, Outcome::Admitted(_)),
        "the one slot is held"
    );
    // A planned restart: the reservation and the counters are saved.
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    redis.kill();
    let usage = Tokens {
        prompt: 3,
        completion: 4,
        cached: 0,
    };
    let end = ResponseEnd::Completed {
        status: 200,
        usage: Some(usage),
        output_bytes: 0,
    };
    let finished = engine.admission.finish(&config.llm.settings, &a, end).await;
    assert_eq!(finished, Finished::Failed, "Redis is down");
    redis.restart();

    // Retried within a few seconds (the breaker's cool-down, then the
    // retry's next try), far inside the 10-minute TTL.
    let start = std::time::Instant::now();
    let b = loop {
        if let Outcome::Admitted(b) = ask(&engine, &config).await {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the slot is still held {:?} after Redis came back",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("slot free {:?} after Redis came back", start.elapsed());
    // The budget was charged the usage (7), not the estimate: what is left
    // before b's own reservation is everything but those 7 tokens.
    let b_estimate = b.estimate().prompt + b.estimate().completion;
    let remaining = b
        .budget
        .tokens
        .expect("a token budget is reported")
        .remaining;
    assert_eq!(
        remaining,
        100_000 - 7 - b_estimate,
        "a's estimate was {estimate}"
    );
    let m = engine.counters().metrics().render();
    assert!(
        m.contains("tollgate_llm_settlements_total{how=\"failed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_llm_settlements_total{how=\"retried\"} 1"),
        "{m}"
    );
}
