//! Leases against every store: a grant takes its slice from the counter
//! (the fair share, in whole requests, nothing near exhaustion), memory and
//! a real Redis (and Redis Cluster) give the same answers; and the engine,
//! with several "instances" (engines with their own slices) on one store,
//! admits exactly the limit under a concurrent burst, never uses a slice in
//! the next window, gives a denied request's slice hits back, and returns
//! idle slices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate::config::parse_str;
use tollgate::engine::{Check, Clock, Code, Counters, Descriptor, Engine, Instances, Leases};
use tollgate::metrics::Metrics;
use tollgate::rules::{Algorithm, LeasePolicy, Limit, Period, RuleSet};
use tollgate::store::{arith, Counter, Hit, Store};

mod common;

use common::{subject, Subject};

/// The start of an hour, in ms: Redis keys here live long in real time.
const T0: u64 = 1_800_000_000_000;

for_each_store!(
    super::subject;
    a_grant_takes_the_fair_share_from_the_counter,
    slices_are_whole_requests_and_nothing_near_exhaustion,
    a_bucket_grant_takes_tokens_now,
    slots_are_never_granted,
    four_instances_admit_exactly_the_limit_under_a_burst,
    a_slice_is_never_used_in_the_next_window,
    idle_slices_go_back,
);

fn hit(key: &str, amount: u64, period: Period, algorithm: Algorithm, cost: u64) -> Hit {
    Hit {
        key: format!("tg:{{lease}}:{key}"),
        counter: Counter::Rate(Limit {
            amount,
            period,
            algorithm,
            zone: tollgate::rules::Zone::Utc,
        }),
        cost,
        enforce: true,
    }
}

async fn a_grant_takes_the_fair_share_from_the_counter(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("fair", 100, Period::Hour, Algorithm::FixedWindow, 1);
    let g = store.grant(&h, 1_000, 4, T0).await.unwrap();
    assert_eq!(g.amount, 25, "100 left over 4 instances");
    assert_eq!(g.state.remaining, 75, "taken from the counter now");
    let g = store.grant(&h, 1_000, 4, T0).await.unwrap();
    assert_eq!(g.amount, 18, "75 left over 4");
    let g = store.grant(&h, 5, 4, T0).await.unwrap();
    assert_eq!(g.amount, 5, "no more than wanted");
    let big = Hit {
        cost: 53,
        ..h.clone()
    };
    assert!(
        !store.take(&[big], None, T0).await.unwrap().admitted,
        "only 52 left for everyone else"
    );
    let rest = Hit { cost: 52, ..h };
    assert!(store.take(&[rest], None, T0).await.unwrap().admitted);
}

async fn slices_are_whole_requests_and_nothing_near_exhaustion(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("units", 100, Period::Hour, Algorithm::FixedWindow, 7);
    let g = store.grant(&h, 100, 1, T0).await.unwrap();
    assert_eq!(g.amount, 98, "14 requests of 7");
    let g = store.grant(&h, 100, 1, T0).await.unwrap();
    assert_eq!(g.amount, 0, "2 left: not one request of 7");
    assert!(g.state.over);
    assert_eq!(g.state.remaining, 2);
    let one = hit("near", 10, Period::Hour, Algorithm::FixedWindow, 1);
    let taken = Hit {
        cost: 7,
        ..one.clone()
    };
    assert!(store.take(&[taken], None, T0).await.unwrap().admitted);
    let g = store.grant(&one, 100, 4, T0).await.unwrap();
    assert_eq!(g.amount, 0, "3 left over 4 instances: decide one by one");
    assert_eq!(g.state.remaining, 3, "and nothing was taken");
    let last = Hit { cost: 3, ..one };
    assert!(store.take(&[last], None, T0).await.unwrap().admitted);
}

async fn a_bucket_grant_takes_tokens_now(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("bucket", 600, Period::Minute, Algorithm::TokenBucket, 1);
    let g = store.grant(&h, 100, 2, T0).await.unwrap();
    assert_eq!(g.amount, 100);
    assert_eq!(g.state.remaining, 500);
    assert_eq!(g.state.reset_after_ms, 10_000, "100 tokens refill in 10 s");
    let g = store.grant(&h, 1_000, 2, T0).await.unwrap();
    assert_eq!(g.amount, 250, "half of the 500 left");
}

async fn slots_are_never_granted(s: &Subject) {
    let h = Hit {
        key: "tg:{lease}:slots".into(),
        counter: Counter::Slots { max: 5 },
        cost: 1,
        enforce: true,
    };
    assert!(s.store.grant(&h, 5, 1, T0).await.is_err());
}

#[test]
fn the_arithmetic_is_the_seed_formula() {
    // floor(remaining / unit / instances) units, at most `want`.
    let l = Limit {
        amount: 1_000,
        period: Period::Hour,
        algorithm: Algorithm::FixedWindow,
        zone: tollgate::rules::Zone::Utc,
    };
    for (unit, want, instances, granted) in [
        (1, 10_000, 4, 250),
        (1, 100, 4, 100),
        (3, 10_000, 4, 249),
        (10, 95, 1, 90),
        (1, 10_000, 1_001, 0),
        (0, 10, 1, 10),
        (1, 10, 0, 10),
    ] {
        let g = arith::grant(&l, None, unit, want, instances, T0);
        assert_eq!(
            g.amount, granted,
            "unit {unit} want {want} over {instances}"
        );
        assert_eq!(g.outcome.state.remaining, 1_000 - granted);
    }
}

/// One instance of tollgate, as the engine sees it: its own slices of the
/// shared store.
fn instance(store: Arc<dyn Store>, live: u64, clock: Clock, ttl: Duration) -> Engine {
    let metrics = Arc::new(Metrics::default());
    let instances = Arc::new(Instances::new(format!("i{live}")));
    instances.set_live(live);
    let policy = LeasePolicy {
        by_default: true,
        ttl,
        ..LeasePolicy::default()
    };
    let leases = Leases::new(policy, instances.clone(), metrics.clone());
    let counters = Counters::new(store, metrics)
        .with_clock(clock)
        .with_instances(instances)
        .with_leases(Arc::new(leases));
    Engine::from_counters(counters)
}

const RULES: &str = r#"
[leases]
enabled = true

[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 1000, per = "hour" }

[[rule]]
domain = "edge"
match = ["tenant", "tier=small"]
limit = { requests = 2, per = "hour" }
"#;

fn rules() -> Arc<RuleSet> {
    parse_str("leases.toml", RULES).unwrap().rules
}

fn check(tenant: &str, more: &[(&str, &str)]) -> Check {
    let mut entries = vec![("tenant".to_string(), tenant.to_string())];
    entries.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Check {
        domain: "edge".into(),
        descriptors: vec![Descriptor {
            entries,
            hits: None,
            negative: false,
            limit: None,
        }],
        hits: 1,
    }
}

async fn four_instances_admit_exactly_the_limit_under_a_burst(s: &Subject) {
    let rules = rules();
    let clock = Clock::manual(T0 + 1_000);
    let engines: Vec<Engine> = (0..4)
        .map(|_| instance(s.store.clone(), 4, clock.clone(), Duration::from_secs(60)))
        .collect();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..4_000 {
        let (engine, rules, admitted) = (engines[i % 4].clone(), rules.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let d = engine.limits.decide(&rules, &check("burst", &[])).await;
            if d.code == Code::Ok {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    let m = engines[0].counters().metrics().render();
    assert!(
        m.contains("tollgate_lease_decisions_total{by=\"lease\"}"),
        "decided from slices: {m}"
    );
}

async fn a_slice_is_never_used_in_the_next_window(s: &Subject) {
    let rules = rules();
    // 1 s before the hour ends.
    let clock = Clock::manual(T0 + 3_599_000);
    let e = instance(s.store.clone(), 1, clock.clone(), Duration::from_secs(60));
    assert_eq!(
        e.limits
            .decide(&rules, &check("edge-of-hour", &[]))
            .await
            .code,
        Code::Ok
    );
    let held = e.counters().leases().unwrap().held();
    assert!(held > 0, "a slice is held");
    clock.advance_ms(1_000);
    assert_eq!(
        e.limits
            .decide(&rules, &check("edge-of-hour", &[]))
            .await
            .code,
        Code::Ok
    );
    let returns = e.counters().leases().unwrap().expire(T0 + 3_600_000, false);
    assert!(
        returns.is_empty(),
        "the old window's slice is dropped, not given back"
    );
    assert!(
        e.counters()
            .metrics()
            .render()
            .contains("tollgate_lease_expired_total"),
        "counted as expired"
    );
}

async fn idle_slices_go_back(s: &Subject) {
    let rules = rules();
    let clock = Clock::manual(T0 + 1_000);
    let e = instance(s.store.clone(), 1, clock.clone(), Duration::from_secs(2));
    assert_eq!(
        e.limits.decide(&rules, &check("idle", &[])).await.code,
        Code::Ok
    );
    let leases = e.counters().leases().unwrap();
    let held = leases.held();
    assert!(held > 0);
    assert!(
        leases.expire(T0 + 2_000, false).is_empty(),
        "not idle for the TTL yet"
    );
    let returns = leases.expire(T0 + 3_000, false);
    let back: u64 = returns.iter().map(|r| r.hit.cost).sum();
    assert_eq!(back, held);
    let hits: Vec<Hit> = returns.into_iter().map(|r| r.hit).collect();
    e.counters().give_back(&hits, T0 + 3_000).await.unwrap();
    // 1 used; the other 999 are the store's again: another instance gets
    // its fair share of them.
    let other = instance(s.store.clone(), 1, clock.clone(), Duration::from_secs(2));
    let limit = Limit {
        amount: 1000,
        period: Period::Hour,
        algorithm: Algorithm::FixedWindow,
        zone: tollgate::rules::Zone::Utc,
    };
    let key = &rules.rules[0];
    let h = Hit {
        key: tollgate::store::keys::rule_counter(&key.id, &limit, ["idle"].into_iter()),
        counter: Counter::Rate(limit),
        cost: 999,
        enforce: true,
    };
    assert!(
        other
            .counters()
            .store()
            .take(&[h], None, T0 + 3_000)
            .await
            .unwrap()
            .admitted
    );
}

/// A request dropped while it asks the store for a slice (its client went
/// away) must not leave the others waiting for a grant that never comes.
#[tokio::test]
async fn a_dropped_grant_does_not_block_the_slice() {
    let rules = rules();
    let store: Arc<dyn Store> = Arc::new(tollgate::store::MemoryStore::new());
    let clock = Clock::manual(T0 + 1_000);
    let e = instance(store, 1, clock, Duration::from_secs(60));
    let leases = e.counters().leases().unwrap().clone();
    let limit = Limit {
        amount: 1000,
        period: Period::Hour,
        algorithm: Algorithm::FixedWindow,
        zone: tollgate::rules::Zone::Utc,
    };
    let h = Hit {
        key: tollgate::store::keys::rule_counter(
            &rules.rules[0].id,
            &limit,
            ["dropped"].into_iter(),
        ),
        counter: Counter::Rate(limit),
        cost: 1,
        enforce: true,
    };
    match leases.take(&h, limit, T0 + 1_000) {
        tollgate::engine::Local::Grant { done, .. } => drop(done),
        other => panic!("{other:?}"),
    }
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        e.limits.decide(&rules, &check("dropped", &[])),
    )
    .await
    .expect("not stuck waiting for the dropped grant");
    assert_eq!(d.code, Code::Ok);
}

/// The sweeper (`return_unused`, which the server runs) on the memory store
/// with tokio's clock paused: one slice of 8 taken from `tenant=sweep`'s
/// 1000 an hour, 1 used, TTL 2 s.
async fn swept_instance() -> (Engine, Clock, Arc<dyn Store>, Hit) {
    let rules = rules();
    let store: Arc<dyn Store> = Arc::new(tollgate::store::MemoryStore::new());
    let clock = Clock::manual(T0 + 1_000);
    let e = instance(store.clone(), 1, clock.clone(), Duration::from_secs(2));
    let d = e.limits.decide(&rules, &check("sweep", &[])).await;
    assert_eq!(d.code, Code::Ok);
    assert_eq!(e.counters().leases().unwrap().held(), 7);
    let limit = Limit {
        amount: 1000,
        period: Period::Hour,
        algorithm: Algorithm::FixedWindow,
        zone: tollgate::rules::Zone::Utc,
    };
    let rest = Hit {
        key: tollgate::store::keys::rule_counter(&rules.rules[0].id, &limit, ["sweep"].into_iter()),
        counter: Counter::Rate(limit),
        cost: 999,
        enforce: true,
    };
    (e, clock, store, rest)
}

/// The sweeper looks every half TTL: a slice idle for the TTL is back in
/// the store at most half a TTL later.
#[tokio::test(start_paused = true)]
async fn the_sweeper_gives_an_idle_slice_back_within_half_a_ttl() {
    let (e, clock, store, rest) = swept_instance().await;
    let leases = e.counters().leases().unwrap().clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(tollgate::engine::return_unused(
        e.counters().clone(),
        leases.clone(),
        cancel.clone(),
    ));
    // Its first look, at once: the slice is not idle yet.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(leases.held(), 7);
    clock.advance_ms(2_000); // idle for exactly the TTL
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(leases.held(), 0, "given back at the next look");
    assert!(
        store
            .take(&[rest], None, T0 + 3_000)
            .await
            .unwrap()
            .admitted,
        "the 7 unused are the store's again: 999 left"
    );
    cancel.cancel();
    sweeper.await.unwrap();
}

/// At shutdown the sweeper gives back every slice's unused capacity, idle
/// or not, and ends.
#[tokio::test(start_paused = true)]
async fn at_shutdown_the_sweeper_gives_every_slice_back_and_ends() {
    let (e, _clock, store, rest) = swept_instance().await;
    let leases = e.counters().leases().unwrap().clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(tollgate::engine::return_unused(
        e.counters().clone(),
        leases.clone(),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(leases.held(), 7, "not idle: kept while running");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the sweeper ends at shutdown")
        .unwrap();
    assert_eq!(leases.held(), 0);
    assert!(
        store
            .take(&[rest], None, T0 + 1_000)
            .await
            .unwrap()
            .admitted,
        "the 7 unused are the store's again: 999 left"
    );
}
