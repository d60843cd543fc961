//! Waiting for capacity at the engine level. Time is tokio's paused clock,
//! which the engine's clock follows, so "admitted right when the window
//! resets" is checked to the millisecond without waiting a real minute.
//! (The memory store only: a paused clock would fire a Redis timeout
//! whenever the runtime is idle. Redis wake-ups are tested in real time.)

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate::config::parse_str;
use tollgate::engine::{Clock, Engine, Reservation, Settlement, WaitFor, Waited};
use tollgate::metrics::Metrics;
use tollgate::rules::{Identity, LlmConfig, Tokens};
use tollgate::store::{MemoryStore, RedisStore};
use tollgate_testkit::{RedisCluster, RedisServer};

/// 10 s into a minute (epoch-aligned windows).
const START_MS: u64 = 1_800_000_000_000 + 10_000;

const CONFIG: &str = r#"
[llm]
max_wait = "30s"
max_wait_cap = "120s"

[[model]]
name = "m"
context_window = 100000
default_max_output = 10

[[quota]]
name = "slots"
match = { tenant = "slots" }
max_concurrent = 1

[[quota]]
name = "rpm"
match = { tenant = "rpm" }
requests_per_minute = 2
max_wait = "60s"

[[quota]]
name = "bucket"
match = { tenant = "bucket" }
tokens_per_minute = 600
algorithm = "token_bucket"

[[quota]]
name = "daily"
match = { tenant = "daily" }
tokens_per_day = 100
max_wait = "auto"

[[quota]]
name = "minutely"
match = { tenant = "minutely" }
tokens_per_minute = 100
max_wait = "auto"

[[quota]]
name = "at-once"
match = { tenant = "at-once" }
max_concurrent = 1
max_wait = "0s"
"#;

struct Harness {
    engine: Engine,
    llm: Arc<LlmConfig>,
}

impl Harness {
    fn new(config: &str) -> Harness {
        let config = parse_str("queue.toml", config).unwrap();
        Harness {
            engine: Engine::new(Arc::new(MemoryStore::new()), Arc::new(Metrics::default()))
                .with_clock(Clock::tokio(START_MS)),
            llm: config.llm,
        }
    }

    fn id(tenant: &str, class: Option<&str>) -> Identity {
        Identity {
            tenant: Some(tenant.into()),
            class: class.map(str::to_string),
            model: "m".into(),
            route: "/v1/chat/completions".into(),
            ..Default::default()
        }
    }

    /// Reserves (waiting as configured) for `tenant` in `class`.
    async fn ask(
        &self,
        tenant: &str,
        class: Option<&str>,
        tokens: u64,
        cancel: &CancellationToken,
    ) -> Waited {
        let id = Harness::id(tenant, class);
        let class = self.llm.classes.of(class, &id);
        self.engine
            .budgets
            .reserve_or_wait(
                WaitFor {
                    llm: &self.llm,
                    id: &id,
                    class,
                    estimate: Tokens {
                        prompt: tokens,
                        completion: 0,
                        cached: 0,
                    },
                    ttl: Duration::from_secs(600),
                    latest: Instant::now() + self.llm.settings.max_wait_cap,
                },
                cancel,
                |_| {},
            )
            .await
    }

    async fn settle(&self, r: &Reservation) {
        assert!(self
            .engine
            .budgets
            .settle(r, Settlement::Usage(r.estimate))
            .await
            .unwrap());
    }
}

fn admitted(w: Waited) -> Reservation {
    match w {
        Waited::Admitted { reservation, .. } => reservation,
        other => panic!("not admitted: {other:?}"),
    }
}

/// Lets spawned waiters run until they block.
async fn settle_down() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn queued_requests_are_admitted_in_arrival_order_the_moment_a_slot_frees() {
    let h = Arc::new(Harness::new(CONFIG));
    let never = CancellationToken::new();
    let first = admitted(h.ask("slots", None, 1, &never).await);
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for n in 1..=3 {
        let (h, never, done_tx) = (h.clone(), never.clone(), done_tx.clone());
        tokio::spawn(async move {
            let r = admitted(h.ask("slots", None, 1, &never).await);
            done_tx.send((n, Instant::now(), r)).unwrap();
        });
        // Arrival order is the order they start waiting.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle_down().await;
    assert_eq!(h.engine.budgets.lines().waiting(), 3);
    let mut holder = first;
    for expected in 1..=3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let freed_at = Instant::now();
        h.settle(&holder).await;
        let (n, at, r) = done.recv().await.unwrap();
        assert_eq!(n, expected, "arrival order");
        assert_eq!(
            at, freed_at,
            "admitted at the instant the slot was freed, not polled"
        );
        holder = r;
    }
    assert_eq!(h.engine.budgets.lines().waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_admitted_when_the_window_resets() {
    let h = Harness::new(CONFIG);
    let never = CancellationToken::new();
    admitted(h.ask("rpm", None, 1, &never).await);
    admitted(h.ask("rpm", None, 1, &never).await);
    let asked = Instant::now();
    let third = h.ask("rpm", None, 1, &never).await;
    let Waited::Admitted { waited, .. } = third else {
        panic!("{third:?}")
    };
    // 10 s into the minute: the window resets 50 s later.
    assert_eq!(waited, Duration::from_secs(50));
    assert_eq!(asked.elapsed(), Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn a_bucket_waiter_is_admitted_when_enough_has_refilled() {
    let h = Harness::new(CONFIG);
    let never = CancellationToken::new();
    admitted(h.ask("bucket", None, 600, &never).await);
    // 600 per minute refills 10 per second: 50 tokens take 5 s.
    let Waited::Admitted { waited, .. } = h.ask("bucket", None, 50, &never).await else {
        panic!()
    };
    assert!(
        (Duration::from_millis(4_900)..=Duration::from_millis(5_100)).contains(&waited),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_wait_answers_at_once_and_auto_waits_only_for_what_can_come_back() {
    let h = Harness::new(CONFIG);
    let never = CancellationToken::new();
    let _held = admitted(h.ask("at-once", None, 1, &never).await);
    let asked = Instant::now();
    assert!(matches!(
        h.ask("at-once", None, 1, &never).await,
        Waited::Denied { .. }
    ));
    assert_eq!(asked.elapsed(), Duration::ZERO, "max_wait = 0s never waits");

    // A spent daily budget cannot come back within the 120 s cap: at once.
    admitted(h.ask("daily", None, 100, &never).await);
    let asked = Instant::now();
    let Waited::Denied { retry_after, .. } = h.ask("daily", None, 1, &never).await else {
        panic!()
    };
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert!(retry_after > Duration::from_secs(3600));

    // A minute budget comes back at the next window: auto waits for it.
    admitted(h.ask("minutely", None, 100, &never).await);
    let Waited::Admitted { waited, .. } = h.ask("minutely", None, 1, &never).await else {
        panic!()
    };
    assert_eq!(waited, Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn a_wait_ends_at_max_wait_with_a_denial() {
    let h = Harness::new(CONFIG);
    let never = CancellationToken::new();
    let _held = admitted(h.ask("slots", None, 1, &never).await);
    let asked = Instant::now();
    let w = h.ask("slots", None, 1, &never).await;
    assert!(matches!(w, Waited::Denied { .. }), "{w:?}");
    assert_eq!(asked.elapsed(), Duration::from_secs(30), "[llm] max_wait");
    assert_eq!(h.engine.budgets.lines().waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_the_line_and_takes_nothing() {
    let h = Arc::new(Harness::new(CONFIG));
    let never = CancellationToken::new();
    let first = admitted(h.ask("slots", None, 1, &never).await);
    let goes_away = CancellationToken::new();
    let gone = {
        let (h, c) = (h.clone(), goes_away.clone());
        tokio::spawn(async move { h.ask("slots", None, 1, &c).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stays = {
        let (h, c) = (h.clone(), never.clone());
        tokio::spawn(async move { h.ask("slots", None, 1, &c).await })
    };
    settle_down().await;
    assert_eq!(h.engine.budgets.lines().waiting(), 2);
    goes_away.cancel();
    assert!(matches!(gone.await.unwrap(), Waited::Cancelled));
    assert_eq!(h.engine.budgets.lines().waiting(), 1);
    h.settle(&first).await;
    let second = admitted(stays.await.unwrap());
    h.settle(&second).await;
    // Nothing leaked: the single slot is free.
    let third = admitted(h.ask("slots", None, 1, &never).await);
    h.settle(&third).await;
}

const CLASSES: &str = r#"
[llm]
max_wait = "0s"

[[model]]
name = "m"
context_window = 100000
default_max_output = 10

[[quota]]
name = "pool"
match = { tenant = "*" }
max_concurrent = 10

[[class]]
name = "interactive"
priority = 10
share = 0.4
max_wait = "20s"

[[class]]
name = "batch"
priority = 1
share = 0.3
max_wait = "20s"

[[class]]
name = "reserved"
priority = 5
share = 0.3
flexible = false
"#;

const PRIORITIES: &str = r#"
[llm]
max_wait = "20s"

[[model]]
name = "m"
context_window = 100000
default_max_output = 10

[[quota]]
name = "pool"
match = { tenant = "*" }
max_concurrent = 2

[[class]]
name = "interactive"
priority = 10

[[class]]
name = "batch"
priority = 1
"#;

#[tokio::test(start_paused = true)]
async fn a_higher_priority_waiter_goes_first() {
    let h = Arc::new(Harness::new(PRIORITIES));
    let never = CancellationToken::new();
    let mut held = vec![
        admitted(h.ask("t", Some("batch"), 1, &never).await),
        admitted(h.ask("t", Some("batch"), 1, &never).await),
    ];
    let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    for class in ["batch", "batch", "interactive"] {
        let (h, never, tx) = (h.clone(), never.clone(), tx.clone());
        tokio::spawn(async move {
            let r = admitted(h.ask("t", Some(class), 1, &never).await);
            tx.send((class, r)).unwrap();
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle_down().await;
    assert_eq!(h.engine.budgets.lines().waiting(), 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = held.remove(0);
        h.settle(&r).await;
        let (class, r) = order.recv().await.unwrap();
        seen.push(class);
        held.push(r);
    }
    assert_eq!(
        seen,
        ["interactive", "batch", "batch"],
        "the later interactive request goes first, then batch in arrival order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_class_keeps_its_share_while_flexible_classes_are_overloaded() {
    let h = Arc::new(Harness::new(CLASSES));
    let never = CancellationToken::new();
    let mut waiters = Vec::new();
    for n in 0..30 {
        let class = if n % 2 == 0 { "interactive" } else { "batch" };
        let (h, never) = (h.clone(), never.clone());
        waiters.push(tokio::spawn(async move {
            h.ask("t", Some(class), 1, &never).await
        }));
    }
    settle_down().await;
    // Ratios may move every 5 s; let three steps pass (waits last 20 s).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle_down().await;
    }
    let admitted_flexible = waiters.iter().filter(|w| w.is_finished()).count();
    assert_eq!(admitted_flexible, 7, "interactive 4 + batch 3 of 10");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(admitted(h.ask("t", Some("reserved"), 1, &never).await));
    }
    assert!(
        matches!(
            h.ask("t", Some("reserved"), 1, &never).await,
            Waited::Denied { .. }
        ),
        "and no more than its share"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_flexible_class_lends_its_share_and_a_fixed_one_never_does() {
    let h = Arc::new(Harness::new(CLASSES));
    let never = CancellationToken::new();
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let (h, never) = (h.clone(), never.clone());
        waiters.push(tokio::spawn(async move {
            h.ask("t", Some("interactive"), 1, &never).await
        }));
    }
    settle_down().await;
    assert_eq!(waiters.iter().filter(|w| w.is_finished()).count(), 4);
    // Batch is idle: after a step or two interactive borrows its share.
    tokio::time::sleep(Duration::from_secs(12)).await;
    settle_down().await;
    let busy = waiters.iter().filter(|w| w.is_finished()).count();
    assert_eq!(
        busy, 6,
        "0.4 + most of batch's 0.3, floor 0.01 kept: 6 of 10"
    );
    let ratios = h
        .engine
        .budgets
        .shares()
        .ratios(&format!("{}:t", h.llm.quotas[0].id));
    assert!(!ratios.is_empty());
    // The reserved class's 3 are still there, and batch keeps one slot.
    for _ in 0..3 {
        admitted(h.ask("t", Some("reserved"), 1, &never).await);
    }
    admitted(h.ask("t", Some("batch"), 1, &never).await);
}

/// Two instances on one shared store: the settle on `a` publishes, the
/// waiter on `b` asks at once instead of at its 1 s slot retry.
async fn freed_elsewhere_wakes_here(a: Engine, b: Engine) {
    let llm = parse_str("queue.toml", CONFIG).unwrap().llm;
    {
        let budgets = b.budgets.clone();
        tokio::spawn(async move {
            budgets
                .wake_on_freed_elsewhere(CancellationToken::new())
                .await
        });
    }
    // Let the subscription start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = |engine: Engine, llm: Arc<LlmConfig>| async move {
        let id = Harness::id("slots", None);
        engine
            .budgets
            .reserve_or_wait(
                WaitFor {
                    llm: &llm,
                    id: &id,
                    class: None,
                    estimate: Tokens::default(),
                    ttl: Duration::from_secs(600),
                    latest: Instant::now() + Duration::from_secs(10),
                },
                &CancellationToken::new(),
                |_| {},
            )
            .await
    };
    let held = admitted(w(a.clone(), llm.clone()).await);
    let waiter = tokio::spawn(w(b.clone(), llm.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.budgets.lines().waiting(), 1);
    let freed = std::time::Instant::now();
    assert!(a
        .budgets
        .settle(&held, Settlement::Usage(Tokens::default()))
        .await
        .unwrap());
    let r = admitted(waiter.await.unwrap());
    let woke = freed.elapsed();
    assert!(
        woke < Duration::from_millis(500),
        "woken by the announcement, not the 1 s slot retry: {woke:?}"
    );
    assert!(b
        .budgets
        .settle(&r, Settlement::Usage(Tokens::default()))
        .await
        .unwrap());
}

fn engine(store: Arc<dyn tollgate::store::Store>) -> Engine {
    Engine::new(store, Arc::new(Metrics::default()))
}

#[tokio::test]
async fn capacity_freed_on_another_instance_wakes_a_waiter_here() {
    let server = RedisServer::start();
    let connect = || async {
        Arc::new(
            RedisStore::connect(
                &server.url(),
                Duration::from_secs(2),
                Duration::from_secs(2),
            )
            .await
            .expect("redis"),
        )
    };
    freed_elsewhere_wakes_here(engine(connect().await), engine(connect().await)).await;
}

#[tokio::test]
async fn on_a_redis_cluster_too() {
    let cluster = RedisCluster::start(3);
    let connect = || async {
        Arc::new(
            RedisStore::connect_cluster(
                &cluster.urls(),
                Duration::from_secs(2),
                Duration::from_secs(2),
            )
            .await
            .expect("redis cluster"),
        )
    };
    freed_elsewhere_wakes_here(engine(connect().await), engine(connect().await)).await;
}

#[tokio::test]
async fn nothing_waits_on_a_store_that_is_down() {
    // A port nobody listens on: every store call fails, `fail_closed` (the
    // default) denies, and the request is answered at once, not queued for
    // its 30 s `max_wait`.
    let dead = format!("redis://127.0.0.1:{}", tollgate_testkit::free_port());
    let store = RedisStore::new(
        &[dead],
        false,
        None,
        Duration::from_millis(100),
        Duration::from_millis(100),
    )
    .unwrap();
    let e = engine(Arc::new(store));
    let llm = parse_str("queue.toml", CONFIG).unwrap().llm;
    let id = Harness::id("slots", None);
    let asked = std::time::Instant::now();
    let w = e
        .budgets
        .reserve_or_wait(
            WaitFor {
                llm: &llm,
                id: &id,
                class: None,
                estimate: Tokens::default(),
                ttl: Duration::from_secs(600),
                latest: Instant::now() + Duration::from_secs(120),
            },
            &CancellationToken::new(),
            |_| panic!("must not wait"),
        )
        .await;
    assert!(matches!(w, Waited::Denied { .. }), "{w:?}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(e.budgets.lines().waiting(), 0);
}
