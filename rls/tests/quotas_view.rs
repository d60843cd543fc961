//! `/quotas` at the library level, against every store (memory, a real
//! redis-server, a real 3-node Redis Cluster): known traffic through the
//! real engine (reservations, settles, rate limit hits) on a manual clock,
//! then the view's figures, exactly; its filters; and its bound.

use std::sync::Arc;
use std::time::Duration;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Check, Clock, Descriptor, Engine, Reservation, Reserved, Settlement};
use tollgate::metrics::Metrics;
use tollgate::rules::{Algorithm, Identity, Limit, Period, Tokens, Zone};
use tollgate::store::{Counter, Hit};
use tollgate::view::{quotas, Answer, Figures, Filters, OwnerView, ViewError};

mod common;

/// A whole minute (and second, and hour) boundary, plus 10 s.
const NOW: u64 = 1_800_000_000_000 + 10_000;

const CONFIG: &str = r#"
[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 1000

[[quota]]
name = "team"
match = { tenant = "*", model = "gpt-4o" }
tokens_per_minute = 1000
requests_per_minute = 10
max_concurrent = 5

[[quota]]
name = "daily"
match = { tenant = "*" }
tokens_per_day = 100000
algorithm = "token_bucket"

[[rule]]
domain = "edge"
match  = ["tenant"]
limit  = { requests = 5, per = "minute" }

[[rule]]
domain = "edge"
match  = ["path", "tenant"]
limit  = { requests = 100, per = "hour" }
name   = "paths"
"#;

struct Harness {
    engine: Engine,
    clock: Clock,
    config: Config,
    _servers: common::Servers,
}

impl Harness {
    async fn new(kind: common::Kind) -> Harness {
        let config = parse_str("view.toml", CONFIG).expect("the test config loads");
        let common::Subject { store, _redis } = common::subject(kind).await;
        let clock = Clock::manual(NOW);
        Harness {
            engine: Engine::new(store, Arc::new(Metrics::default())).with_clock(clock.clone()),
            clock,
            config,
            _servers: _redis,
        }
    }

    async fn reserve(&self, tenant: &str, prompt: u64, completion: u64) -> Reservation {
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
        match self
            .engine
            .budgets
            .reserve(&self.config.llm, &id, estimate, Duration::from_secs(600))
            .await
        {
            Reserved::Admitted { reservation, .. } => reservation,
            Reserved::Denied { quota, .. } => panic!("denied by {quota}"),
        }
    }

    async fn settle(&self, r: &Reservation, prompt: u64, completion: u64) {
        let used = Tokens {
            prompt,
            completion,
            cached: 0,
        };
        assert!(self
            .engine
            .budgets
            .settle(r, Settlement::Usage(used))
            .await
            .expect("settles"));
    }

    /// One rate limit request with one descriptor.
    async fn hit(&self, entries: &[(&str, &str)]) {
        let check = Check {
            domain: "edge".into(),
            descriptors: vec![Descriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                hits: None,
                negative: false,
                limit: None,
            }],
            hits: 1,
        };
        self.engine.limits.decide(&self.config.rules, &check).await;
    }

    async fn view(&self, filters: Filters, budget: usize) -> Result<Answer, ViewError> {
        quotas(
            &self.config,
            self.engine.counters().store().as_ref(),
            filters,
            budget,
            self.clock.now_ms(),
        )
        .await
    }

    async fn all(&self) -> Answer {
        self.view(Filters::default(), 10_000)
            .await
            .expect("answers")
    }
}

fn owner<'a>(a: &'a Answer, name: &str) -> &'a OwnerView {
    a.quotas
        .iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no {name} in {a:?}"))
}

/// The figures of the key whose values are `values` (in the owner's key
/// order: a quota's `match` keys sorted by name), one per limit.
fn key<'a>(q: &'a OwnerView, values: &[&str]) -> &'a [Figures] {
    let k = q
        .keys
        .iter()
        .find(|k| {
            k.values
                .iter()
                .map(|v| v.value.as_str())
                .eq(values.iter().copied())
        })
        .unwrap_or_else(|| panic!("no key {values:?} in {q:?}"));
    &k.counters
}

/// (used, reserved, remaining, limit) of one counter.
fn figs(f: &Figures) -> (Option<u64>, u64, Option<u64>, Option<u64>) {
    (f.used, f.reserved, f.remaining, f.limit)
}

for_each_store!(
    super::Harness::new;
    known_traffic_gives_exact_figures,
    filters_narrow_by_quota_and_tenant,
    the_scan_budget_bounds_the_answer_and_says_so,
    ended_windows_and_foreign_keys_are_not_in_use,
);

async fn known_traffic_gives_exact_figures(h: &Harness) {
    // acme: 500 reserved, settled at 150; then 200 more in flight.
    let first = h.reserve("acme", 100, 400).await;
    h.settle(&first, 100, 50).await;
    let _acme = h.reserve("acme", 100, 100).await;
    // beta: 100 in flight.
    let _beta = h.reserve("beta", 50, 50).await;
    for _ in 0..3 {
        h.hit(&[("tenant", "acme")]).await;
    }
    h.hit(&[("tenant", "beta")]).await;
    h.hit(&[("path", "/v1/chat"), ("tenant", "acme")]).await;

    let a = h.all().await;
    assert!(a.scan.complete, "{:?}", a.scan);
    assert_eq!(a.scan.reservations, 2, "the two in flight");
    assert_eq!((a.scan.other_keys, a.scan.unreadable_keys), (0, 0));

    let team = owner(&a, "team");
    assert_eq!(team.match_keys, ["model", "tenant"]);
    assert_eq!(team.keys_in_use, 2);
    assert_eq!(team.in_flight, 2);
    assert_eq!(
        team.keys[0]
            .values
            .iter()
            .map(|v| v.value.as_str())
            .collect::<Vec<_>>(),
        ["gpt-4o", "acme"],
        "the fuller key first"
    );
    let kinds: Vec<&str> = team.limits.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, ["tokens", "requests", "concurrent"]);
    let acme = key(team, &["gpt-4o", "acme"]);
    // Tokens: 150 settled + 200 in flight of 1000, the window ends in 50 s.
    assert_eq!(figs(&acme[0]), (Some(350), 200, Some(650), Some(1000)));
    assert_eq!(acme[0].spent, Some(150));
    assert_eq!(acme[0].reset_after_ms, Some(50_000));
    assert_eq!(acme[0].reset_unix_ms, Some(NOW + 50_000));
    // Requests: two taken, one of them in flight.
    assert_eq!(figs(&acme[1]), (Some(2), 1, Some(8), Some(10)));
    // One slot held, by the request in flight; slots have no reset.
    assert_eq!(figs(&acme[2]), (Some(1), 1, Some(4), Some(5)));
    assert_eq!(acme[2].reset_after_ms, None);
    let beta = key(team, &["gpt-4o", "beta"]);
    assert_eq!(figs(&beta[0]), (Some(100), 100, Some(900), Some(1000)));
    assert_eq!(beta[0].spent, Some(0));

    // A day bucket: 350 missing of 100000, full again when 350 tokens have
    // refilled at 100000 a day, by whole seconds: ceil(302.4) s.
    let daily = owner(&a, "daily");
    assert_eq!(daily.limits[0].algorithm, Some("token_bucket"));
    let acme = key(daily, &["acme"]);
    assert_eq!(
        figs(&acme[0]),
        (Some(350), 200, Some(99_650), Some(100_000))
    );
    assert_eq!(acme[0].reset_after_ms, Some(303_000));
    assert_eq!(daily.in_flight, 2);

    let edge = owner(&a, "edge:tenant");
    assert_eq!(edge.keys_in_use, 2);
    assert_eq!(
        figs(&key(edge, &["acme"])[0]),
        (Some(3), 0, Some(2), Some(5))
    );
    assert_eq!(
        figs(&key(edge, &["beta"])[0]),
        (Some(1), 0, Some(4), Some(5))
    );
    assert_eq!(edge.in_flight, 0);
    let paths = owner(&a, "paths");
    assert_eq!(paths.match_keys, ["path", "tenant"]);
    let p = key(paths, &["/v1/chat", "acme"]);
    assert_eq!(figs(&p[0]), (Some(1), 0, Some(99), Some(100)));
    assert_eq!(p[0].reset_after_ms, Some(3_590_000), "the hour ends");
}

async fn filters_narrow_by_quota_and_tenant(h: &Harness) {
    let _a = h.reserve("acme", 10, 10).await;
    let _b = h.reserve("beta", 10, 10).await;
    let _c = h.reserve("gamma", 10, 300).await;
    h.hit(&[("tenant", "beta")]).await;
    h.hit(&[("path", "/x"), ("tenant", "acme")]).await;

    let only = |quota: &str| Filters {
        quota: Some(quota.into()),
        ..Filters::default()
    };
    let a = h.view(only("team"), 10_000).await.unwrap();
    assert_eq!(a.quotas.len(), 1);
    assert_eq!(a.quotas[0].keys_in_use, 3);
    assert_eq!(a.quotas[0].in_flight, 3, "records of every slot are read");
    // Reserved figures are there with the filter too.
    let gamma = key(&a.quotas[0], &["gpt-4o", "gamma"]);
    assert_eq!(figs(&gamma[0]), (Some(310), 310, Some(690), Some(1000)));
    assert_eq!(
        a.quotas[0].keys[0].values[1].value, "gamma",
        "fullest first"
    );
    // A rule by its label: its name, or its domain and match path.
    let a = h.view(only("edge:tenant"), 10_000).await.unwrap();
    assert_eq!(a.quotas.len(), 1);
    assert_eq!(a.quotas[0].keys_in_use, 1);
    let a = h.view(only("paths"), 10_000).await.unwrap();
    assert_eq!(a.quotas[0].name, "paths");
    assert_eq!(a.quotas[0].keys_in_use, 1);
    match h.view(only("nope"), 10_000).await {
        Err(ViewError::UnknownQuota(n)) => assert_eq!(n, "nope"),
        other => panic!("{other:?}"),
    }

    let tenant = |t: &str| Filters {
        tenant: Some(t.into()),
        ..Filters::default()
    };
    let a = h.view(tenant("beta"), 10_000).await.unwrap();
    let names: Vec<&str> = a.quotas.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        ["team", "daily", "edge:tenant", "paths"],
        "every owner with a tenant key"
    );
    for q in &a.quotas {
        for k in &q.keys {
            let tenant = k.values.iter().find(|v| v.key == "tenant");
            assert_eq!(tenant.map(|v| v.value.as_str()), Some("beta"), "{q:?}");
        }
    }
    assert_eq!(owner(&a, "team").keys_in_use, 1);
    assert_eq!(owner(&a, "edge:tenant").keys_in_use, 1);
    assert_eq!(owner(&a, "paths").keys_in_use, 0);

    let a = h
        .view(
            Filters {
                top: 1,
                ..Filters::default()
            },
            10_000,
        )
        .await
        .unwrap();
    let team = owner(&a, "team");
    assert_eq!((team.keys_in_use, team.keys.len()), (3, 1));
    assert_eq!(team.keys[0].values[1].value, "gamma");
}

async fn the_scan_budget_bounds_the_answer_and_says_so(h: &Harness) {
    // 50 keys, and nothing else in the store.
    for i in 0..50 {
        h.hit(&[("tenant", &format!("t{i:02}"))]).await;
    }
    let all = Filters {
        top: 1000,
        ..Filters::default()
    };
    let a = h.view(all.clone(), 50).await.unwrap();
    assert!(a.scan.complete, "exactly the budget: {:?}", a.scan);
    assert_eq!(a.scan.looked_at, 50);
    assert_eq!(owner(&a, "edge:tenant").keys_in_use, 50);

    let a = h.view(all, 20).await.unwrap();
    assert!(!a.scan.complete, "{:?}", a.scan);
    assert_eq!(a.scan.budget, 20);
    assert_eq!(a.scan.looked_at, 20);
    assert_eq!(owner(&a, "edge:tenant").keys_in_use, 20);
}

async fn ended_windows_and_foreign_keys_are_not_in_use(h: &Harness) {
    h.hit(&[("tenant", "acme")]).await;
    let r = h.reserve("acme", 10, 10).await;
    // 4990 above the estimate: charged past the limit of the minute.
    h.settle(&r, 10, 5000).await;
    // A counter of a rule no config in force has.
    let store = h.engine.counters().store();
    let foreign = Hit {
        key: "tg:{0123456789ab}:minutew:x".into(),
        counter: Counter::Rate(Limit {
            amount: 5,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
            zone: Zone::Utc,
        }),
        cost: 1,
        enforce: true,
    };
    store.take(&[foreign], None, NOW).await.unwrap();
    let a = h.all().await;
    assert_eq!(a.scan.other_keys, 1, "{:?}", a.scan);
    assert_eq!(owner(&a, "edge:tenant").keys_in_use, 1);
    let team = key(owner(&a, "team"), &["gpt-4o", "acme"]);
    assert_eq!(
        figs(&team[0]),
        (Some(5010), 0, Some(0), Some(1000)),
        "over the limit"
    );

    // The minute ends (Redis keeps its keys by its own clock a little
    // longer): the windows are no longer in use; the day bucket is.
    h.clock.advance_ms(60_000);
    let a = h.all().await;
    assert_eq!(owner(&a, "edge:tenant").keys_in_use, 0);
    assert_eq!(owner(&a, "team").keys_in_use, 0);
    let daily = owner(&a, "daily");
    assert_eq!(daily.keys_in_use, 1);
    // 5010 taken a minute ago; 60 s at 100000 a day refill 69.4 tokens.
    assert_eq!(daily.keys[0].counters[0].used, Some(5010 - 69));
}

/// Keys under tollgate's prefix that hold something their kind never holds
/// (another application's, a bug) are counted, not shown, and do not stop
/// the answer; a record that does not decode is counted too.
#[tokio::test]
async fn foreign_values_under_the_prefix_are_counted_not_read() {
    let h = Harness::new(common::Kind::Redis).await;
    let common::Servers::Redis(server) = &h._servers else {
        unreachable!("a redis subject")
    };
    let _r = h.reserve("acme", 10, 10).await;
    let team = h.config.llm.quotas[0].id.as_str();
    let window = (NOW - NOW % 60_000) / 1000;
    let requests = format!("tg:{{{team}}}:rminutew:gpt-4o:acme:{window}");
    server.cli(&["SET", &requests, "not a count"]);
    server.cli(&["DEL", &format!("tg:{{{team}}}:c:gpt-4o:acme")]);
    server.cli(&["HSET", &format!("tg:{{{team}}}:c:gpt-4o:acme"), "f", "v"]);
    server.cli(&["SET", &format!("tg:{{{team}}}:res:bad"), "{not json"]);
    let a = h.all().await;
    assert_eq!(a.scan.unreadable_keys, 2, "{:?}", a.scan);
    assert_eq!(
        (a.scan.reservations, a.scan.unreadable_records),
        (2, 1),
        "{:?}",
        a.scan
    );
    // The tokens counter still reads, with what the good record holds.
    let acme = key(owner(&a, "team"), &["gpt-4o", "acme"]);
    assert_eq!(figs(&acme[0]), (Some(20), 20, Some(980), Some(1000)));
}

/// Money budgets and calendar windows in an IANA zone: spend shown in
/// micro-units and as decimals of the configured currency, and each
/// window's reset where the calendar puts it (Europe/Berlin, a March with
/// the change to summer time inside it: the month is an hour short).
mod money {
    use super::*;

    /// Monday 2027-03-15 12:00 UTC (13:00 in Berlin).
    const MONDAY: u64 = 1_805_112_000_000;

    const MONEY: &str = r#"
[llm]
currency = "EUR"

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 1000

[prices]
# Per million tokens: 2.50 in, 10.00 out.
"gpt-4o" = { input = 2.50, output = 10.00, cached_input = 1.25 }

[[quota]]
name = "team-a"
match = { tenant = "*" }
spend_per_month = 500.00
spend_per_day = 50.00
requests_per_week = 100
time_zone = "Europe/Berlin"
"#;

    async fn harness(kind: common::Kind) -> Harness {
        let common::Subject { store, _redis } = common::subject(kind).await;
        let clock = Clock::manual(MONDAY);
        Harness {
            engine: Engine::new(store, Arc::new(Metrics::default())).with_clock(clock.clone()),
            clock,
            config: parse_str("money.toml", MONEY).expect("the money config loads"),
            _servers: _redis,
        }
    }

    for_each_store!(
        super::harness;
        spend_in_the_currency_and_calendar_resets,
    );

    async fn spend_in_the_currency_and_calendar_resets(h: &Harness) {
        // 1000 in + 200 out: 0.0025 + 0.0020 = 0.0045 EUR, settled.
        let first = h.reserve("acme", 1000, 1000).await;
        h.settle(&first, 1000, 200).await;
        // 1000 in + 1000 out: 0.0025 + 0.0100 = 0.0125 EUR, in flight.
        let _second = h.reserve("acme", 1000, 1000).await;

        let a = h.all().await;
        let team = owner(&a, "team-a");
        let at = |kind: &str, period: &str| {
            team.limits
                .iter()
                .position(|l| l.kind == kind && l.period == Some(period))
                .unwrap_or_else(|| panic!("no {kind} per {period} in {:?}", team.limits))
        };
        let (day, month, week) = (
            at("spend", "day"),
            at("spend", "month"),
            at("requests", "week"),
        );
        let d = &team.limits[day];
        assert_eq!(
            (d.limit, d.currency.as_deref(), d.limit_money.as_deref()),
            (50_000_000, Some("EUR"), Some("50.00"))
        );
        assert_eq!(d.time_zone.as_deref(), Some("Europe/Berlin"));
        let w = &team.limits[week];
        assert_eq!(
            (w.currency.as_deref(), w.limit_money.as_deref()),
            (None, None)
        );

        let acme = key(team, &["acme"]);
        let f = &acme[day];
        assert_eq!(
            figs(f),
            (Some(17_000), 12_500, Some(49_983_000), Some(50_000_000))
        );
        let m = f.money.as_ref().expect("a money counter's decimals");
        assert_eq!(
            (
                m.used.as_deref(),
                m.reserved.as_str(),
                m.spent.as_deref(),
                m.limit.as_deref(),
                m.remaining.as_deref()
            ),
            (
                Some("0.017"),
                "0.0125",
                Some("0.0045"),
                Some("50.00"),
                Some("49.983")
            )
        );
        assert_eq!(
            acme[month].money.as_ref().and_then(|m| m.limit.as_deref()),
            Some("500.00")
        );
        assert!(acme[week].money.is_none(), "requests are not money");
        assert_eq!(figs(&acme[week]), (Some(2), 1, Some(98), Some(100)));

        // Berlin midnight (23:00 UTC), Monday 22nd 00:00 Berlin, and
        // 1 April 00:00 summer time (31 March 22:00 UTC).
        let resets: Vec<_> = [day, week, month]
            .iter()
            .map(|&i| (acme[i].reset_after_ms, acme[i].reset_unix_ms))
            .collect();
        assert_eq!(
            resets,
            [
                (Some(39_600_000), Some(1_805_151_600_000)),
                (Some(558_000_000), Some(1_805_670_000_000)),
                (Some(1_418_400_000), Some(1_806_530_400_000)),
            ]
        );
    }
}
