//! Money budgets at the engine level: the estimate is reserved in money at
//! each model's prices, settled to the actual cost (cached input at its own
//! price), a denial names the money limit, `warn_at` counts once per
//! window, and calendar windows (UTC and IANA zones) end where the
//! calendar says, across short months, leap years and DST changes.
//!
//! Every expected amount is worked out by hand in the comments, from the
//! prices in the config: that is the independent calculation the engine's
//! answers are checked against.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{
    Clock, Engine, Outcome, Rejection, Remaining, Reservation, Reserved, Settlement,
};
use tollgate::metrics::Metrics;
use tollgate::rules::{Identity, Tokens};
use tollgate::store::{MemoryStore, Store};

mod chat;
mod common;

/// 2027-01-15T12:00:00Z, a Friday: an ordinary day well inside its month.
const JAN_15_2027_NOON: u64 = 1_800_014_400_000;
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

const CONFIG: &str = r#"
[llm]
currency = "USD"
allow_unknown_models = true

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 1000

[prices]
# Per million tokens: 2.50 in, 10.00 out, 1.25 cached in.
"gpt-4o" = { input = 2.50, output = 10.00, cached_input = 1.25 }

[[quota]]
name = "team-a"
match = { tenant = "team-a" }
spend_per_day = 0.05
warn_at = 0.8

[[quota]]
name = "utc-month"
match = { tenant = "utc" }
spend_per_month = 1.00

[[quota]]
name = "berlin-month"
match = { tenant = "berlin" }
spend_per_month = 1.00
time_zone = "Europe/Berlin"

[[quota]]
name = "ny-week"
match = { tenant = "ny" }
requests_per_week = 3
time_zone = "America/New_York"
"#;

struct Harness {
    engine: Engine,
    config: Config,
    store: Arc<dyn Store>,
    _redis: Arc<common::Servers>,
}

impl Harness {
    async fn new(kind: common::Kind) -> Harness {
        let common::Subject { store, _redis } = common::subject(kind).await;
        Harness {
            engine: Engine::new(store.clone(), Arc::new(Metrics::default()))
                .with_clock(Clock::manual(JAN_15_2027_NOON)),
            config: parse_str("money.toml", CONFIG).unwrap(),
            store,
            _redis: Arc::new(_redis),
        }
    }

    /// An engine on the same store whose clock reads `now_ms`.
    fn at(&self, now_ms: u64) -> Harness {
        Harness {
            engine: Engine::new(self.store.clone(), Arc::new(Metrics::default()))
                .with_clock(Clock::manual(now_ms)),
            config: self.config.clone(),
            store: self.store.clone(),
            _redis: self._redis.clone(),
        }
    }

    async fn reserve(&self, tenant: &str, prompt: u64, completion: u64) -> Reserved {
        let id = Identity {
            tenant: Some(tenant.into()),
            model: "gpt-4o".into(),
            route: "/v1/chat/completions".into(),
            ..Default::default()
        };
        let estimate = Tokens {
            prompt,
            completion,
            cached: 0,
        };
        self.engine
            .budgets
            .reserve(&self.config.llm, &id, estimate, Duration::from_secs(600))
            .await
    }

    async fn settle(&self, r: &Reservation, prompt: u64, completion: u64, cached: u64) {
        let used = Tokens {
            prompt,
            completion,
            cached,
        };
        let settled = self
            .engine
            .budgets
            .settle(r, Settlement::Usage(used))
            .await
            .unwrap();
        assert!(settled, "the reservation was open");
    }

    fn metrics(&self) -> String {
        self.engine.counters().metrics().render()
    }
}

fn admitted(r: Reserved) -> (Reservation, tollgate::engine::BudgetView) {
    match r {
        Reserved::Admitted {
            reservation,
            headers,
        } => (reservation, headers),
        Reserved::Denied { quota, .. } => panic!("denied by {quota}"),
    }
}

fn spend(r: &Reserved) -> Remaining {
    let headers = match r {
        Reserved::Admitted { headers, .. } | Reserved::Denied { headers, .. } => headers,
    };
    headers.spend.expect("a money budget applies")
}

for_each_store!(
    super::Harness::new;
    the_estimate_is_reserved_in_money_and_settled_to_the_actual_cost,
    a_denial_names_the_money_limit_and_takes_nothing,
    overage_is_charged_at_the_actual_cost,
    warn_at_counts_once_per_window,
    a_utc_month_ends_on_the_first_whatever_its_length,
    a_berlin_month_is_an_hour_short_in_march,
    a_new_york_week_is_an_hour_long_in_november,
);

async fn the_estimate_is_reserved_in_money_and_settled_to_the_actual_cost(h: &Harness) {
    // 1000 in × 2.50 + 1000 out × 10.00 per million = 2,500 + 10,000 =
    // 12,500 micro-dollars. Four fill the 0.05 (50,000) exactly.
    let mut held = Vec::new();
    for left in [37_500, 25_000, 12_500, 0] {
        let r = h.reserve("team-a", 1000, 1000).await;
        assert_eq!(spend(&r).limit, 50_000);
        assert_eq!(spend(&r).remaining, left);
        held.push(admitted(r).0);
    }
    assert!(matches!(
        h.reserve("team-a", 1, 0).await,
        Reserved::Denied { .. }
    ));
    // The first used 1000 in (400 of them cached) and 200 out:
    // 600 × 2.50 + 400 × 1.25 + 200 × 10.00 = 1,500 + 500 + 2,000 = 4,000.
    // 12,500 − 4,000 = 8,500 comes back.
    h.settle(&held[0], 1000, 200, 400).await;
    // 1000 in + 600 out = 2,500 + 6,000 = 8,500: fits exactly, to 0.
    let r = h.reserve("team-a", 1000, 600).await;
    assert_eq!(spend(&r).remaining, 0);
    admitted(r);
    assert!(matches!(
        h.reserve("team-a", 1, 0).await,
        Reserved::Denied { .. }
    ));
    let m = h.metrics();
    // Metrics name the quota, never the tenant.
    assert!(
        !m.contains("tenant=\"team-a\""),
        "no tenant value in metrics:\n{m}"
    );
}

async fn a_denial_names_the_money_limit_and_takes_nothing(h: &Harness) {
    // 40,000 in = 100,000 micro-dollars: more than the whole day's 0.05.
    match h.reserve("team-a", 40_000, 0).await {
        Reserved::Denied {
            quota,
            headers,
            retry_after,
            ..
        } => {
            assert_eq!(quota, "team-a");
            assert_eq!(
                headers.denied_by.as_deref(),
                Some("spend_per_day = 0.05 USD")
            );
            let s = headers.spend.expect("the money budget is reported");
            assert_eq!((s.limit, s.remaining), (50_000, 50_000), "nothing taken");
            // Noon UTC: the day resets at midnight, 12 h from now.
            assert_eq!(s.reset_after, Duration::from_millis(12 * HOUR_MS));
            assert_eq!(retry_after, Duration::from_millis(12 * HOUR_MS));
        }
        Reserved::Admitted { .. } => panic!("100,000 micro-dollars exceed 50,000"),
    }
    // 20,000 in = 50,000: the whole budget, exactly.
    let r = h.reserve("team-a", 20_000, 0).await;
    assert_eq!(spend(&r).remaining, 0);
    admitted(r);
}

async fn overage_is_charged_at_the_actual_cost(h: &Harness) {
    // Estimated 100 in + 100 out = 250 + 1,000 = 1,250; used 100 in and
    // 3,000 out = 250 + 30,000 = 30,250: 29,000 more is charged.
    let (r, _) = admitted(h.reserve("team-a", 100, 100).await);
    h.settle(&r, 100, 3000, 0).await;
    // 50,000 − 30,250 = 19,750 left: 7,900 in (19,750) fits, 1 more does not.
    assert!(matches!(
        h.reserve("team-a", 7_901, 0).await,
        Reserved::Denied { .. }
    ));
    let r = h.reserve("team-a", 7_900, 0).await;
    assert_eq!(spend(&r).remaining, 0);
}

async fn warn_at_counts_once_per_window(h: &Harness) {
    let line = "tollgate_quota_warnings_total{limit=\"spend_per_day\",quota=\"team-a\"} 1";
    // 3 × 12,500 = 37,500 < 40,000 (80 %): no warning yet.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(admitted(h.reserve("team-a", 1000, 1000).await).0);
    }
    assert!(!h.metrics().contains("tollgate_quota_warnings_total{"));
    // The fourth carries it to 50,000: one warning.
    let fourth = admitted(h.reserve("team-a", 1000, 1000).await).0;
    assert!(h.metrics().contains(line), "{}", h.metrics());
    // Refunded under the line and crossed again: still one.
    h.settle(&fourth, 0, 0, 0).await;
    h.settle(&held[0], 0, 0, 0).await;
    admitted(h.reserve("team-a", 1000, 1000).await);
    admitted(h.reserve("team-a", 1000, 1000).await);
    assert!(h.metrics().contains(line), "{}", h.metrics());
    // The next day is a new window: it warns again.
    h.engine.clock().advance_ms(DAY_MS);
    for _ in 0..4 {
        admitted(h.reserve("team-a", 1000, 1000).await);
    }
    let two = line.replace("} 1", "} 2");
    assert!(h.metrics().contains(&two), "{}", h.metrics());
}

// Calendar windows: each case starts a clock where the boundary is.

/// What a reservation for `tenant` says of its money window at `now_ms`
/// (admitted or not: the window's end is reported either way).
async fn month_reset_at(h: &Harness, tenant: &str, now_ms: u64) -> Duration {
    spend(&h.at(now_ms).reserve(tenant, 4, 0).await).reset_after
}

async fn a_utc_month_ends_on_the_first_whatever_its_length(h: &Harness) {
    // A month's budget spent at its last second is whole at the next.
    let end = h.at(1_803_859_199_000);
    // 400,000 in = 1,000,000 micro-dollars: the whole 1.00.
    let r = end.reserve("utc", 400_000, 0).await;
    assert_eq!(spend(&r).remaining, 0);
    admitted(r);
    assert!(matches!(
        end.reserve("utc", 1, 0).await,
        Reserved::Denied { .. }
    ));
    end.engine.clock().advance_ms(1000);
    let r = end.reserve("utc", 400_000, 0).await;
    assert_eq!(spend(&r).remaining, 0, "March starts empty");
    assert_eq!(spend(&r).reset_after, Duration::from_millis(31 * DAY_MS));
    // 2027-02-28T23:59:59Z: February 2027 has 28 days, one second left.
    assert_eq!(
        month_reset_at(h, "utc", 1_803_859_199_000).await,
        Duration::from_secs(1)
    );
    // 2028-02-28T23:59:59Z: 2028 is a leap year, a day and a second left.
    assert_eq!(
        month_reset_at(h, "utc", 1_835_395_199_000).await,
        Duration::from_millis(DAY_MS + 1000)
    );
    // 2027-04-01T00:00:00Z: April has 30 days; 2027-01-01T00:00:00Z: 31.
    assert_eq!(
        month_reset_at(h, "utc", 1_806_537_600_000).await,
        Duration::from_millis(30 * DAY_MS)
    );
    assert_eq!(
        month_reset_at(h, "utc", 1_798_761_600_000).await,
        Duration::from_millis(31 * DAY_MS)
    );
}

async fn a_berlin_month_is_an_hour_short_in_march(h: &Harness) {
    // March 2027 in Berlin starts 2027-02-28T23:00:00Z (CET, +1) and ends
    // 2027-03-31T22:00:00Z (CEST, +2; clocks went forward on the 28th):
    // 31 days less an hour.
    assert_eq!(
        month_reset_at(h, "berlin", 1_803_855_600_000).await,
        Duration::from_millis(31 * DAY_MS - HOUR_MS)
    );
    // At 2027-02-28T22:59:59Z it is still February in Berlin: 1 s left.
    assert_eq!(
        month_reset_at(h, "berlin", 1_803_855_599_000).await,
        Duration::from_secs(1)
    );
    // The UTC quota at the same instant has an hour and a second left.
    assert_eq!(
        month_reset_at(h, "utc", 1_803_855_599_000).await,
        Duration::from_millis(HOUR_MS + 1000)
    );
}

async fn a_new_york_week_is_an_hour_long_in_november(h: &Harness) {
    // Monday 2027-11-01T00:00 EDT is 04:00Z; the next Monday 00:00 EST is
    // 2027-11-08T05:00Z (clocks went back on the 7th): 7 days and an hour.
    let week = h.at(1_825_041_600_000);
    let requests = |r: &Reserved| match r {
        Reserved::Admitted { headers, .. } | Reserved::Denied { headers, .. } => {
            headers.requests.expect("a request budget applies")
        }
    };
    let r = week.reserve("ny", 1, 0).await;
    assert_eq!(
        requests(&r).reset_after,
        Duration::from_millis(7 * DAY_MS + HOUR_MS)
    );
    admitted(r);
    admitted(week.reserve("ny", 1, 0).await);
    admitted(week.reserve("ny", 1, 0).await);
    let denied = week.reserve("ny", 1, 0).await;
    assert!(matches!(denied, Reserved::Denied { .. }), "3 per week");
    // Sunday 23:59:59 EST is still the same week; Monday 00:00 EST is not.
    week.engine.clock().advance_ms(7 * DAY_MS + HOUR_MS - 1000);
    assert!(matches!(
        week.reserve("ny", 1, 0).await,
        Reserved::Denied { .. }
    ));
    week.engine.clock().advance_ms(1000);
    admitted(week.reserve("ny", 1, 0).await);
}

// Admission: a model without a price cannot be counted against money.

#[tokio::test(start_paused = true)]
async fn an_unpriced_model_under_a_money_quota_is_refused_not_free() {
    let config = parse_str("money.toml", CONFIG).unwrap();
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(Metrics::default()))
        .with_clock(Clock::tokio(JAN_15_2027_NOON));
    let ask = |tenant: &'static str, model: &'static str| {
        let body = serde_json::json!({
            "model": model, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let (engine, config) = (&engine, &config);
        async move { chat::admit(engine, config, tenant, &body, deadline, |_| {}).await }
    };
    match ask("team-a", "mystery-model").await {
        Outcome::Rejected(Rejection::Unpriced { quota, .. }) => assert_eq!(quota, "team-a"),
        other => panic!("an unknown model is not free under a money budget: {other:?}"),
    }
    // Without a money quota the same model is admitted (allow_unknown_models).
    assert!(matches!(
        ask("ny", "mystery-model").await,
        Outcome::Admitted(_)
    ));
    // A priced model under the money quota is admitted, its cost reserved.
    match ask("team-a", "gpt-4o").await {
        Outcome::Admitted(a) => {
            let s = a.budget.spend.expect("a money budget applies");
            assert!(s.remaining < 50_000, "something was reserved: {s:?}");
        }
        other => panic!("gpt-4o is priced: {other:?}"),
    }
    let m = engine.counters().metrics().render();
    assert!(
        m.contains("tollgate_quota_spend_micros_total{kind=\"reserved\",quota=\"team-a\"}"),
        "{m}"
    );
}
