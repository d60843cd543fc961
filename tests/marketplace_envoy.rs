//! The marketplace stage through a real Envoy (`envoy/marketplace.yaml`):
//! an over-budget request, after its wait and its fallback, served by the
//! mock supplier the mock marketplace quoted; its usage reported; nothing
//! of the client's content or credentials reaching the marketplace (every
//! byte it received is searched) or tollgate's debug log; and each refusal
//! (expired quote, price over the cap, a supplier host not allowlisted, a
//! busy marketplace) leaving the client's 429 exactly as it was.

#[path = "marketplace_stack/mod.rs"]
mod stack;

use stack::*;
use std::time::Duration;
use tollgate_testkit::{Quote, SUPPLIER_PREFIX};

/// In the prompt of every request: must never leave for the marketplace.
const MARKER: &str = "PROMPT-MARKER-a41f0c";

#[tokio::test]
async fn an_over_budget_request_is_served_by_the_supplier_and_its_usage_reported() {
    let s = start(|url, key| enabled(url, key, ""), "debug");
    let c = client();
    let at_start = s.market.accepted();
    assert_eq!(at_start, 0, "enabled, but nothing asked yet: no socket");
    spend_budgets(&s, &c).await;
    assert_eq!(
        s.market.accepted(),
        0,
        "within budget: the marketplace is not asked"
    );
    // A usage report that fails once: the reporter tries again.
    s.market.next_usage_statuses([500]);

    let r = chat(&c, &s.url, "gpt-4o", &format!("tell me about {MARKER}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", s.tollgate.log_text());
    assert_eq!(
        header(&r, "x-tollgate-provider").as_deref(),
        Some("marketplace")
    );
    assert_eq!(
        header(&r, "x-tollgate-supply-id").as_deref(),
        Some("supply-1")
    );
    assert_eq!(header(&r, "x-tollgate-model").as_deref(), Some("gpt-4o"));
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["model"], SUPPLIER_MODEL, "the supplier answered");
    assert_eq!(body["usage"]["prompt_tokens"], SUPPLIER_PROMPT);

    // The supplier saw the request with its token, its path, its model name,
    // and none of the client's credential or identity headers.
    let seen = s.supplier.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.path, format!("{SUPPLIER_PREFIX}/v1/chat/completions"));
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(req.json()["model"], SUPPLIER_MODEL);
    assert!(req.json()["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .contains(MARKER));
    assert_eq!(req.header("x-tenant"), None);
    assert_eq!(
        req.header("x-tollgate-provider"),
        None,
        "removed before it left"
    );
    assert_eq!(req.header("x-tollgate-supplier-host"), None);
    assert!(req
        .header("host")
        .is_some_and(|h| h.starts_with("localhost")));
    let all_headers = format!("{:?}", req.headers);
    assert!(!all_headers.contains(CLIENT_KEY), "{all_headers}");
    // The local upstream saw only the two requests within budget.
    assert_eq!(s.upstream.request_count(), 2);

    // The usage report: after one failure, with the quote's id and the
    // supplier's usage.
    eventually("the usage report", || !s.market.usage_reports().is_empty()).await;
    let reports = s.market.usage_reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    let quote_ask = s
        .market
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/marketplace/quote")
        .expect("a quote request")
        .json();
    assert_eq!(report["quote_id"], "quote-1");
    assert_eq!(report["supply_id"], "supply-1");
    assert_eq!(report["request_id"], quote_ask["request_id"]);
    assert_eq!(report["model"], "gpt-4o");
    assert_eq!(report["prompt_tokens"], SUPPLIER_PROMPT);
    assert_eq!(report["completion_tokens"], SUPPLIER_COMPLETION);
    assert_eq!(report["status"], "ok");
    assert!(report["latency_ms"].as_u64().is_some());
    assert_eq!(quote_ask["model"], "gpt-4o");
    assert_eq!(quote_ask["region_hint"], "eu-west");
    assert_eq!(quote_ask["max_price_per_mtoken"], 5.0);
    assert!(quote_ask["estimated_tokens"].as_u64().unwrap_or(0) > 10);

    let m = s.tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_requests_total",
            &[("result", "served")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_calls_total",
            &[("call", "usage"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_usage_reports_total",
            &[("result", "sent")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "tollgate_marketplace_usage_reports_pending", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_breaker_state",
            &[("state", "closed")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_llm_requests_total",
            &[("model", "gpt-4o"), ("outcome", "marketplace")]
        ),
        1.0
    );
    // Nothing was reserved for it: the local budgets' reservations are the
    // two requests within budget.
    assert_eq!(
        metric(
            &m,
            "tollgate_llm_requests_total",
            &[("model", "gpt-4o"), ("outcome", "admitted")]
        ),
        1.0
    );

    // Privacy: every byte the marketplace received, and tollgate's debug
    // log, hold neither the prompt nor the client's key; the capture is
    // real (it holds the marketplace key and the model).
    let bytes = String::from_utf8_lossy(&s.market.bytes()).into_owned();
    assert!(
        bytes.contains(KEY) && bytes.contains("gpt-4o"),
        "the capture works"
    );
    for secret in [MARKER, CLIENT_KEY, "x-tenant", "spend"] {
        assert!(
            !bytes.contains(secret),
            "`{secret}` reached the marketplace:\n{bytes}"
        );
    }
    let log = s.tollgate.log_text();
    assert!(log.contains("DEBUG"), "tollgate logged at debug level");
    for secret in [MARKER, CLIENT_KEY, KEY, TOKEN] {
        assert!(!log.contains(secret), "`{secret}` in tollgate's log");
    }
    // Logged once at start: what goes where.
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("marketplace enabled: exactly these fields"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    for field in [
        "request_id",
        "estimated_tokens",
        "max_price_per_mtoken",
        "latency_ms",
        &s.market.url(),
    ] {
        assert!(said[0].contains(field), "{field} not in {}", said[0]);
    }
}

#[tokio::test]
async fn refused_quotes_leave_the_original_429() {
    let s = start(|url, key| enabled(url, key, ""), "info");
    let c = client();
    spend_budgets(&s, &c).await;
    // The original 429: gpt-4o-mini is not offered to the marketplace.
    let baseline = shape_of_429(chat(&c, &s.url, "gpt-4o-mini", "x").send().await.unwrap()).await;
    assert!(
        baseline.1.contains("rate limit reached for quota `small`"),
        "{baseline:?}"
    );
    assert_eq!(s.market.calls("/v1/marketplace/quote"), 0);

    let not_allowed = format!("https://127.0.0.1:{}{SUPPLIER_PREFIX}", s.supplier.port());
    let cases = [
        (Quote::Expired, "expired"),
        (Quote::Price(5.01), "over_price"),
        (Quote::Endpoint(not_allowed), "host_not_allowed"),
        (
            Quote::Endpoint("http://localhost:1/plain".into()),
            "malformed",
        ),
        (Quote::Busy(1.5), "busy"),
    ];
    for (i, (quote, result)) in cases.into_iter().enumerate() {
        s.market.next_quotes([quote]);
        let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
        assert_eq!(header(&r, "x-tollgate-provider"), None, "{result}");
        assert_eq!(
            shape_of_429(r).await,
            baseline,
            "{result}: not the original 429"
        );
        let m = s.tollgate.metrics();
        // On a mismatch, what the stage counted says why (a timeout under
        // load shows as result="timeout").
        let counted: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("tollgate_marketplace_requests_total"))
            .collect();
        assert_eq!(
            s.market.calls("/v1/marketplace/quote"),
            i + 1,
            "{result}: {counted:#?}"
        );
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
    // Busy for 1.5 s: no call until then, the 429 at once.
    let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
    assert_eq!(shape_of_429(r).await, baseline);
    assert_eq!(
        s.market.calls("/v1/marketplace/quote"),
        5,
        "no call while busy"
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
    assert_eq!(r.status(), 200, "after the pause, a quote again");
    assert_eq!(
        header(&r, "x-tollgate-provider").as_deref(),
        Some("marketplace")
    );
    assert_eq!(
        s.supplier.requests().len(),
        1,
        "only the last reached the supplier"
    );
    // One supply list fetched, then answered from the cache.
    assert_eq!(s.market.calls("/v1/supplies"), 1);
    let m = s.tollgate.metrics();
    assert!(
        metric(
            &m,
            "tollgate_marketplace_supply_cache_total",
            &[("result", "hit")]
        ) >= 5.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_breaker_state",
            &[("state", "closed")]
        ),
        1.0,
        "policy refusals and a busy marketplace are not failures"
    );
}

#[tokio::test]
async fn no_supply_in_the_cached_list_is_answered_without_a_quote() {
    let s = start(|url, key| enabled(url, key, ""), "info");
    let c = client();
    spend_budgets(&s, &c).await;
    s.market.set_supplies(serde_json::json!({"supplies": [
        {"supply_id": "dear", "model": "gpt-4o", "price_per_mtoken": 9.0, "availability": 1.0},
        {"supply_id": "gone", "model": "gpt-4o", "price_per_mtoken": 1.0, "availability": 0.0},
        {"supply_id": "other", "model": "claude", "price_per_mtoken": 1.0, "availability": 1.0}
    ]}));
    for _ in 0..3 {
        let r = chat(&c, &s.url, "gpt-4o", "x").send().await.unwrap();
        assert_eq!(r.status(), 429);
    }
    assert_eq!(
        s.market.calls("/v1/supplies"),
        1,
        "fetched once, then cached"
    );
    assert_eq!(s.market.calls("/v1/marketplace/quote"), 0);
    let supplies = s
        .market
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/supplies")
        .unwrap();
    let query = String::from_utf8_lossy(&s.market.bytes()).into_owned();
    assert!(
        query.contains("GET /v1/supplies?model=gpt-4o&region=eu-west&max_price=5 "),
        "{query}"
    );
    assert!(supplies.body.is_empty());
    let m = s.tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_marketplace_requests_total",
            &[("result", "no_supply")]
        ),
        3.0
    );
}

#[tokio::test]
async fn a_client_cannot_route_itself_to_a_supplier() {
    let s = start(|url, key| enabled(url, key, ""), "info");
    let c = client();
    let forged = |r: reqwest::RequestBuilder| {
        r.header("x-tollgate-provider", "marketplace").header(
            "x-tollgate-supplier-host",
            format!("localhost:{}", s.supplier.port()),
        )
    };
    // Within budget, and a request tollgate does not read (a GET): both go
    // to the local upstream whatever the client says.
    let r = forged(chat(&c, &s.url, "gpt-4o", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), None);
    let r = forged(c.get(s.envoy.url("/v1/models")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.supplier.requests().is_empty(),
        "{:?}",
        s.supplier.requests()
    );
    assert_eq!(s.upstream.request_count(), 2);
    let upstream_saw = format!("{:?}", s.upstream.requests());
    assert!(
        !upstream_saw.contains("x-tollgate-supplier-host"),
        "{upstream_saw}"
    );
}
