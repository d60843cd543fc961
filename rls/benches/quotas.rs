//! `/quotas` with 10,000 live keys: one whole answer (the bounded look at
//! the store, keys mapped back to quotas, reservations summed, the top 20
//! per quota, and the JSON the handler sends) on the memory store, a real
//! redis-server and a real 3-node Redis Cluster (started here; the bench
//! fails loudly without redis-server).
//!
//! The keys: 4,975 tenants of one quota with a token and a request limit
//! (9,950 counters), 50 of them with a request in flight (50 reservation
//! records): 10,000 keys, exactly the default scan budget, so every answer
//! is complete.
//!
//! Baselines in the same run, on the same keys: `scan`, the store's look
//! alone (`Store::scan`, what the view cannot do without); on the single
//! redis-server also `bare_scan`, the plain redis client walking the
//! keyspace with `SCAN MATCH tg:{* COUNT 1000` and reading nothing, the
//! least any listing of these keys costs. `answer` is the whole answer.
//!
//! `cargo bench -p tollgate --bench quotas`; the figures are in
//! `docs/benchmarks.md`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Clock, Engine, Reserved, Settlement};
use tollgate::metrics::Metrics;
use tollgate::rules::{Identity, Tokens};
use tollgate::store::{MemoryStore, RedisStore, ScanQuery, Store, DEFAULT_SCAN_BUDGET};
use tollgate::view::{quotas, Filters};

const TENANTS: usize = 4_975;
const IN_FLIGHT: usize = 50;
/// One second into a day: every window lasts the whole run.
const NOW: u64 = 1_800_057_600_000 + 1_000;

const CONFIG: &str = r#"
[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 100

[[quota]]
name = "team"
match = { tenant = "*" }
tokens_per_day = 100000000
requests_per_day = 1000000
"#;

/// Fills `store` with the bench's 10,000 keys through the real engine.
async fn fill(store: Arc<dyn Store>, config: &Config) {
    let engine = Engine::new(store, Arc::new(Metrics::default())).with_clock(Clock::manual(NOW));
    for i in 0..TENANTS {
        let id = Identity {
            tenant: Some(format!("tenant-{i:05}")),
            model: "gpt-4o".into(),
            route: "/v1/chat/completions".into(),
            ..Default::default()
        };
        let estimate = Tokens {
            prompt: 10 + i as u64 % 1000,
            completion: 100,
            cached: 0,
        };
        let r = match engine
            .budgets
            .reserve(&config.llm, &id, estimate, Duration::from_secs(3600))
            .await
        {
            Reserved::Admitted { reservation, .. } => reservation,
            Reserved::Denied { quota, .. } => panic!("denied by {quota}"),
        };
        if i >= IN_FLIGHT {
            let used = Tokens {
                completion: 20,
                ..estimate
            };
            engine
                .budgets
                .settle(&r, Settlement::Usage(used))
                .await
                .expect("settles");
        }
    }
}

/// One whole answer, as the handler makes it.
async fn answer(store: &dyn Store, config: &Config) -> Vec<u8> {
    let a = quotas(config, store, Filters::default(), DEFAULT_SCAN_BUDGET, NOW)
        .await
        .expect("answers");
    assert!(a.scan.complete && a.scan.looked_at == TENANTS * 2 + IN_FLIGHT);
    serde_json::to_vec(&a).expect("json")
}

/// The store's look alone: the baseline under [`answer`].
async fn scan(store: &dyn Store) -> usize {
    let query = ScanQuery {
        tag: None,
        budget: DEFAULT_SCAN_BUDGET,
    };
    let s = store.scan(&query, NOW).await.expect("scans");
    assert!(s.complete && s.looked_at == TENANTS * 2 + IN_FLIGHT);
    s.keys.len()
}

/// The plain redis client listing tollgate's keys and reading none.
async fn bare_scan(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let mut cursor = 0u64;
    let mut listed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("tg:{*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        listed += keys.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(listed, TENANTS * 2 + IN_FLIGHT);
    listed
}

fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("quotas_10k_keys");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group
}

fn bench_on(c: &mut Criterion, name: &str, store: Arc<dyn Store>, rt: &tokio::runtime::Runtime) {
    let config = parse_str("bench.toml", CONFIG).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(fill(store.clone(), &config));
    let first = rt.block_on(answer(store.as_ref(), &config));
    eprintln!("{name}: {} bytes of JSON", first.len());
    let mut group = group(c);
    group.bench_function(format!("{name}/scan"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(scan(store.as_ref()).await) })
    });
    group.bench_function(format!("{name}/answer"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(answer(store.as_ref(), &config).await) })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    bench_on(c, "memory", Arc::new(MemoryStore::new()), &rt);

    let server = tollgate_testkit::RedisServer::start();
    let redis = rt
        .block_on(RedisStore::connect(
            &server.url(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        ))
        .expect("connect to the bench's redis-server");
    bench_on(c, "redis", Arc::new(redis), &rt);
    let conn = rt
        .block_on(async {
            redis::Client::open(server.url())?
                .get_multiplexed_async_connection()
                .await
        })
        .expect("a plain connection to the bench's redis-server");
    let mut group = group(c);
    group.bench_function("redis/bare_scan", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move { black_box(bare_scan(&mut conn).await) }
        })
    });
    group.finish();

    let cluster = tollgate_testkit::RedisCluster::start(3);
    let store = rt
        .block_on(RedisStore::connect_cluster(
            &cluster.urls(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        ))
        .expect("connect to the bench's redis cluster");
    bench_on(c, "redis_cluster", Arc::new(store), &rt);
}

criterion_group!(quotas_view, benches);
criterion_main!(quotas_view);
