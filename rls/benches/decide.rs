//! Hot functions of a rate limit decision: descriptor matching among
//! 10,000 rules, one whole decision on the memory store, one on a real
//! redis-server (started here; the bench fails loudly without one), and
//! the RLS handler's proto conversions around a decision.
//!
//! `cargo bench -p tollgate --bench decide`; `scripts/bench.sh` runs it and
//! puts the means in `docs/benchmarks.md`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tollgate::config::parse_str;
use tollgate::engine::{Check, Descriptor, Engine};
use tollgate::metrics::Metrics;
use tollgate::rules::RuleSet;
use tollgate::service::ratelimit::{check_from_proto, response_from};
use tollgate::store::{MemoryStore, RedisStore, Store};

/// Distinct counters the decisions spread over.
const KEYS: usize = 10_000;

/// 10,000 rules in one domain, in envoyproxy/ratelimit's three forms:
/// exact tenants, tenants × models (two levels), path wildcards, and a
/// catch-all per tenant.
fn many_rules() -> Arc<RuleSet> {
    let mut toml = String::new();
    let mut rule = |m: &str| {
        let _ = writeln!(
            toml,
            "[[rule]]\ndomain = \"bench\"\nmatch = [{m}]\nlimit = {{ requests = 1000000000, per = \"minute\" }}\n"
        );
    };
    rule("\"tenant\"");
    for i in 0..4_000 {
        rule(&format!("\"tenant=t{i}\""));
    }
    for i in 0..1_000 {
        for m in 0..5 {
            rule(&format!("\"tenant=t{i}\", \"model=m{m}\""));
        }
    }
    for i in 0..999 {
        rule(&format!("\"path=/api/{i}/*\""));
    }
    let config = parse_str("bench.toml", &toml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.rules.rules.len(), 10_000);
    config.rules
}

/// Descriptors that hit each kind of rule: an exact tenant, a tenant and
/// model (two levels), a path under a wildcard, and an unknown tenant that
/// falls through to the bare `tenant` rule.
fn lookups(kind: u32) -> Vec<Vec<(String, String)>> {
    let e = |k: &str, v: String| (k.to_string(), v);
    (0..256u32)
        .map(|i| match kind {
            0 => vec![e("tenant", format!("t{}", i * 7 % 4_000))],
            1 => vec![
                e("tenant", format!("t{}", i * 13 % 1_000)),
                e("model", format!("m{}", i % 5)),
            ],
            2 => vec![e("path", format!("/api/{}/chat", i * 11 % 999))],
            _ => vec![e("tenant", format!("new{i}"))],
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let rules = many_rules();
    let mut g = c.benchmark_group("match_10000_rules");
    for (kind, name) in ["exact", "two_levels", "wildcard", "bare_key"]
        .into_iter()
        .enumerate()
    {
        let queries = lookups(kind as u32);
        g.throughput(Throughput::Elements(queries.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut found = 0usize;
                for q in &queries {
                    let entries = q.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    found += usize::from(rules.tree.lookup("bench", entries).is_some());
                }
                assert_eq!(found, queries.len());
                black_box(found)
            })
        });
    }
    g.finish();
}

fn simple_rules() -> Arc<RuleSet> {
    let text = r#"
[[rule]]
domain = "bench"
match = ["tenant"]
limit = { requests = 1000000000, per = "minute" }
"#;
    parse_str("bench.toml", text)
        .unwrap_or_else(|e| panic!("{e}"))
        .rules
}

/// Checks over `KEYS` tenants, one descriptor each.
fn checks() -> Vec<Check> {
    (0..KEYS)
        .map(|i| Check {
            domain: "bench".into(),
            descriptors: vec![Descriptor {
                entries: vec![("tenant".into(), format!("v{i}"))],
                hits: None,
                negative: false,
                limit: None,
            }],
            hits: 1,
        })
        .collect()
}

fn decide_on(c: &mut Criterion, name: &str, store: Arc<dyn Store>, rt: &tokio::runtime::Runtime) {
    let engine = Engine::new(store, Arc::new(Metrics::default()));
    let rules = simple_rules();
    let checks = checks();
    let mut i = 0;
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % checks.len();
            let check = &checks[i];
            let (engine, rules) = (&engine, &rules);
            async move { black_box(engine.limits.decide(rules, check).await) }
        })
    });
    g.finish();
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    decide_on(c, "memory_store", Arc::new(MemoryStore::new()), &rt);

    // A real redis-server on a free port; panics with a hint if absent.
    let server = tollgate_testkit::RedisServer::start();
    let redis = rt
        .block_on(RedisStore::connect(
            &server.url(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        ))
        .unwrap_or_else(|e| panic!("cannot connect to the bench redis-server: {e}"));
    decide_on(c, "redis_store_one_round_trip", Arc::new(redis), &rt);
    drop(server);
}

/// What the RLS handler does around a decision: proto → check, and
/// decision → proto (memory store).
fn handler(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(Metrics::default()));
    let rules = simple_rules();
    let requests: Vec<RateLimitRequest> = (0..KEYS)
        .map(|i| RateLimitRequest {
            domain: "bench".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "tenant".into(),
                    value: format!("v{i}"),
                }],
                ..Default::default()
            }],
            hits_addend: 1,
        })
        .collect();
    let mut i = 0;
    let mut g = c.benchmark_group("rls_handler");
    g.throughput(Throughput::Elements(1));
    g.bench_function("proto_decide_proto_memory", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % requests.len();
            let req = requests[i].clone();
            let (engine, rules) = (&engine, &rules);
            async move {
                let check = check_from_proto(req).unwrap_or_else(|e| panic!("{e}"));
                let decision = engine.limits.decide(rules, &check).await;
                black_box(response_from(&decision))
            }
        })
    });
    g.finish();
}

criterion_group!(benches, matching, decisions, handler);
criterion_main!(benches);
