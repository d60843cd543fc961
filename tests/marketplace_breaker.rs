//! The marketplace's circuit breaker through a real Envoy: three failures
//! (a 500, a hang past the timeout, a body that is not JSON) open it, each
//! adding at most the configured timeout to its request; the fourth
//! request makes no call and gets its 429 at once; after the open period
//! one probe goes out (one at a time: a second request meanwhile makes no
//! call), and its success closes the breaker.

#[path = "marketplace_stack/mod.rs"]
mod stack;

use stack::*;
use std::time::{Duration, Instant};
use tollgate_testkit::Quote;

const TIMEOUT_MS: u64 = 700;
const OPEN: Duration = Duration::from_secs(3);

#[tokio::test]
async fn three_failures_open_the_breaker_and_a_probe_closes_it() {
    let extra = format!(
        "timeout = \"{TIMEOUT_MS}ms\"\nbreaker_open = \"{}s\"",
        OPEN.as_secs()
    );
    let s = start(|url, key| enabled(url, key, &extra), "info");
    let c = client();
    spend_budgets(&s, &c).await;
    let quotes = || s.market.calls("/v1/marketplace/quote");

    s.market.next_quotes([
        Quote::Status(500),
        Quote::Hang(Duration::from_secs(5)),
        Quote::Garbage,
    ]);
    for (i, what) in ["500", "timeout", "garbage"].iter().enumerate() {
        let started = Instant::now();
        let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 429, "{what}");
        assert_eq!(quotes(), i + 1, "{what}");
        // The two waits (200 ms each) and the step, not the 5 s hang.
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }
    let m = s.tollgate.metrics();
    for result in ["error", "timeout", "garbage"] {
        assert_eq!(
            metric(
                &m,
                "tollgate_marketplace_requests_total",
                &[("result", result)]
            ),
            1.0,
            "{result}"
        );
    }
    // Each failure added at most the timeout: every refused step is in the
    // histogram's bucket at or below it (0.7 s falls in le="1").
    let within = metric(
        &m,
        "tollgate_marketplace_step_seconds_bucket",
        &[("outcome", "refused"), ("le", "1")],
    );
    assert_eq!(within, 3.0, "{m}");
    let timeout_step = metric(
        &m,
        "tollgate_marketplace_step_seconds_bucket",
        &[("outcome", "refused"), ("le", "0.5")],
    );
    assert_eq!(
        timeout_step, 2.0,
        "the hang took more than half a second: the timeout"
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_breaker_state",
            &[("state", "open")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "tollgate_marketplace_breaker_opens_total", &[]),
        1.0
    );
    let opened = Instant::now();

    // Open: no call at all, and the 429 comes after the waits only.
    let before = s.market.requests().len();
    let started = Instant::now();
    let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.market.requests().len(), before, "a call while open");
    let m = s.tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_requests_total",
            &[("result", "breaker_open")]
        ),
        1.0
    );

    // After the open period: one probe, slow but within the timeout; a
    // second request meanwhile makes no call.
    let left = OPEN.saturating_sub(opened.elapsed());
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    // The probe reaches the stage after its waits (400 ms) and is out for
    // 500 ms; the second request reaches it 100 ms later.
    s.market
        .next_quotes([Quote::Hang(Duration::from_millis(500))]);
    let probe = tokio::spawn(chat(&c, &s.url, "gpt-4o", "probe").send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let meanwhile = chat(&c, &s.url, "gpt-4o", "meanwhile")
        .send()
        .await
        .unwrap();
    let probe = probe.await.unwrap().unwrap();
    assert_eq!(probe.status(), 200, "{}", s.tollgate.log_text());
    assert_eq!(
        header(&probe, "x-tollgate-provider").as_deref(),
        Some("marketplace")
    );
    assert_eq!(meanwhile.status(), 429);
    assert_eq!(quotes(), 4, "one probe at a time");
    let m = s.tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_requests_total",
            &[("result", "breaker_open")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_breaker_state",
            &[("state", "closed")]
        ),
        1.0
    );

    // Closed again: the next over-budget request is served.
    let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(quotes(), 5);
    let log = s.tollgate.log_text();
    assert!(log.contains("marketplace circuit open"), "{log}");
    assert!(log.contains("marketplace circuit closed"), "{log}");
}
