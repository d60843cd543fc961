//! Off means off: with no `[marketplace]`, with a complete one that is not
//! enabled, and with one enabled but `offline_mode = true`, tollgate makes
//! no connection to the marketplace at all, neither at start nor over a
//! run that exhausts every budget (the mock counts each accepted socket),
//! starts no marketplace task, and answers the over-budget requests with
//! their 429.

#[path = "marketplace_stack/mod.rs"]
mod stack;

use stack::*;
use std::time::Duration;

async fn exhaust_and_count(
    section: impl Fn(&str, &std::path::Path) -> String,
    what: &str,
) -> stack::Stack {
    let s = start(section, "debug");
    assert_eq!(s.market.accepted(), 0, "{what}: a socket at start");
    let c = client();
    spend_budgets(&s, &c).await;
    for _ in 0..4 {
        let r = chat(&c, &s.url, "gpt-4o", "over")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 429, "{what}");
        assert_eq!(header(&r, "x-tollgate-provider"), None, "{what}");
    }
    // Long enough for a background refresh or report to have gone out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.market.accepted(),
        0,
        "{what}: a socket reached the marketplace"
    );
    assert!(s.market.bytes().is_empty(), "{what}");
    assert!(s.supplier.requests().is_empty(), "{what}");
    let log = s.tollgate.log_text();
    assert!(!log.contains("marketplace enabled"), "{what}: {log}");
    // No client was built (building one sets the breaker's gauge).
    let m = s.tollgate.metrics();
    assert!(!m.contains("tollgate_marketplace_breaker_state{"), "{what}");
    assert!(
        !m.contains("tollgate_marketplace_requests_total{"),
        "{what}"
    );
    assert!(!m.contains("tollgate_marketplace_calls_total{"), "{what}");
    s
}

#[tokio::test]
async fn without_a_marketplace_section_nothing_connects() {
    exhaust_and_count(|_, _| String::new(), "no [marketplace]").await;
}

#[tokio::test]
async fn a_complete_but_disabled_section_connects_nowhere() {
    exhaust_and_count(
        |url, key| enabled(url, key, "").replace("enabled = true", "enabled = false"),
        "enabled = false",
    )
    .await;
}

#[tokio::test]
async fn offline_mode_overrides_enabled() {
    let s = exhaust_and_count(
        |url, key| enabled(url, key, "offline_mode = true"),
        "offline_mode = true",
    )
    .await;
    assert!(
        s.tollgate
            .log_text()
            .contains("offline_mode is set; no call will be made"),
        "{}",
        s.tollgate.log_text()
    );
}
