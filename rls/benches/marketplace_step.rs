//! The time the marketplace step adds to an over-budget LLM request:
//! `Admission::admit` of a request whose one-slot quota is held, on the
//! memory store, against the mock marketplace on loopback (HTTP/1.1, kept
//! alive; the mock runs on its own thread), in four cases:
//!
//! * `off`: the marketplace is not opted in (`offline_mode` in the config
//!   in force): the plain 429, the baseline;
//! * `served`: a supply list cached, one quote call, the quote checked;
//! * `no_supply`: the cached supply list has no offer: refused, no call;
//! * `breaker_open`: refused, no call.
//!
//! Criterion measures each case (group `marketplace_step`); then, with
//! `--bench`, a second pass keeps every one of `MARKET_BENCH_SAMPLES`
//! (default 5,000) timings per case and prints p50, p90, p99 and max, each
//! also as a ratio to `off`, and `served - off` at p50 and p99: the time
//! the step adds. Criterion gives the centre; the tail is the figure the
//! issue asks for, so that pass keeps every sample.
//!
//! `nice cargo bench -p tollgate --bench marketplace_step`

use criterion::Criterion;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tollgate::config::{parse_str, Config};
use tollgate::engine::{Ask, Engine, Outcome};
use tollgate::marketplace::Marketplace;
use tollgate::metrics::Metrics;
use tollgate::rules::Identity;
use tollgate::store::MemoryStore;
use tollgate_filters::Endpoint;
use tollgate_testkit::{scratch_dir, MockMarketplace, Quote, Supply};

const KEY: &str = "bench-key";

fn config(market: &MockMarketplace, extra: &str) -> Config {
    let key = scratch_dir("bench-market").join("key");
    std::fs::write(&key, KEY).expect("key file");
    parse_str(
        "bench.toml",
        &format!(
            r#"
[llm]
estimator = "bytes"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100

[[quota]]
name = "slot"
match = {{ model = "gpt-4o" }}
max_concurrent = 1
max_wait = "0s"

[marketplace]
enabled = true
endpoint = "{}"
api_key_file = "{}"
models = ["gpt-4o"]
max_price_per_mtoken = 5
allowed_hosts = ["supplier.example"]
breaker_open = "1h"
cache_ttl = "1h"
{extra}
"#,
            market.url(),
            key.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

struct Case<'a> {
    engine: &'a Engine,
    policy: &'a Config,
    body: &'a [u8],
}

impl Case<'_> {
    async fn once(&self) -> (Duration, Outcome) {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let outcome = self
            .engine
            .admission
            .admit(
                Ask {
                    llm: &self.policy.llm,
                    marketplace: &self.policy.marketplace,
                    identity: Identity {
                        route: "/v1/chat/completions".into(),
                        ..Default::default()
                    },
                    endpoint: Endpoint::ChatCompletions,
                    body: self.body,
                    complete: true,
                    deadline: tokio::time::Instant::now() + Duration::from_secs(59),
                    cancel: &cancel,
                },
                |_| {},
            )
            .await;
        (started.elapsed(), outcome)
    }

    /// `samples` timings after a short warm-up; each outcome checked by
    /// `expect`.
    async fn run(&self, samples: usize, expect: impl Fn(&Outcome) -> bool) -> Vec<Duration> {
        for _ in 0..samples / 10 {
            let (_, o) = self.once().await;
            assert!(expect(&o), "{o:?}");
        }
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let (d, o) = self.once().await;
            assert!(expect(&o), "{o:?}");
            out.push(d);
        }
        out.sort();
        out
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// An engine with its own marketplace (its own breaker and supply cache),
/// the one slot of its quota held.
async fn engine(policy: &Config) -> Engine {
    let metrics = Arc::new(Metrics::default());
    let built = Marketplace::build(&policy.marketplace, metrics.clone()).expect("marketplace");
    let engine = Engine::new(Arc::new(MemoryStore::new()), metrics).with_marketplace(built);
    let body = body();
    let (_, held) = Case {
        engine: &engine,
        policy,
        body: &body,
    }
    .once()
    .await;
    assert!(matches!(held, Outcome::Admitted(_)), "{held:?}");
    engine
}

fn body() -> Vec<u8> {
    serde_json::to_vec(&json!({"model": "gpt-4o", "max_tokens": 10,
        "messages": [{"role": "user", "content": "a prompt of a few words"}]}))
    .expect("body")
}

fn denied(o: &Outcome) -> bool {
    matches!(o, Outcome::Denied(_))
}

fn served(o: &Outcome) -> bool {
    matches!(o, Outcome::Brokered(_))
}

type Expect = fn(&Outcome) -> bool;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let market = MockMarketplace::start(
        KEY,
        Supply {
            supply_id: "s-1".into(),
            endpoint: "https://supplier.example/v1".into(),
            signed_token: "signed-token".into(),
            price_per_mtoken: 1.0,
            model: None,
        },
    );
    let on = config(&market, "");
    let off = config(&market, "offline_mode = true");
    let body = body();
    let (serving, empty, open) = rt.block_on(async {
        // Served: the first request fetches the supply list (cached for
        // the run) and gets a quote.
        let serving = engine(&on).await;
        let case = Case {
            engine: &serving,
            policy: &on,
            body: &body,
        };
        let (_, o) = case.once().await;
        assert!(served(&o), "{o:?}");
        // No supply: its first fetch finds nothing, kept for the run.
        market.set_supplies(json!({"supplies": []}));
        let empty = engine(&on).await;
        let (_, o) = Case {
            engine: &empty,
            policy: &on,
            body: &body,
        }
        .once()
        .await;
        assert!(denied(&o), "{o:?}");
        // Breaker open: three failed quotes open it for an hour.
        market.set_supplies(json!({"supplies": [
            {"model": "gpt-4o", "price_per_mtoken": 1.0, "availability": 1.0}]}));
        let open = engine(&on).await;
        market.next_quotes([Quote::Status(500), Quote::Status(500), Quote::Status(500)]);
        for _ in 0..3 {
            let (_, o) = Case {
                engine: &open,
                policy: &on,
                body: &body,
            }
            .once()
            .await;
            assert!(denied(&o), "{o:?}");
        }
        (serving, empty, open)
    });
    let cases: [(&str, Case<'_>, Expect); 4] = [
        (
            "off",
            Case {
                engine: &serving,
                policy: &off,
                body: &body,
            },
            denied,
        ),
        (
            "served",
            Case {
                engine: &serving,
                policy: &on,
                body: &body,
            },
            served,
        ),
        (
            "no_supply",
            Case {
                engine: &empty,
                policy: &on,
                body: &body,
            },
            denied,
        ),
        (
            "breaker_open",
            Case {
                engine: &open,
                policy: &on,
                body: &body,
            },
            denied,
        ),
    ];
    let quotes_before = market.calls("/v1/marketplace/quote");
    let supplies_before = market.calls("/v1/supplies");

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("marketplace_step");
        for (name, case, expect) in &cases {
            g.bench_function(*name, |b| {
                b.to_async(&rt).iter(|| async {
                    let (_, o) = case.once().await;
                    assert!(expect(&o), "{name}: {o:?}");
                })
            });
        }
        g.finish();
    }
    c.final_summary();

    // `cargo test --benches` runs the Criterion part once per case; the
    // tail pass is for `cargo bench` only.
    if std::env::args().any(|a| a == "--bench") {
        let samples: usize = match std::env::var("MARKET_BENCH_SAMPLES") {
            Ok(v) => v.parse().expect("MARKET_BENCH_SAMPLES: a number"),
            Err(_) => 5_000,
        };
        let rows: Vec<(&str, Vec<Duration>)> = cases
            .iter()
            .map(|(name, case, expect)| (*name, rt.block_on(case.run(samples, expect))))
            .collect();
        tails(&rows, samples);
    }
    // Only the served case calls the marketplace, once per request, and
    // never for a supply list (cached).
    assert_eq!(
        market.calls("/v1/supplies"),
        supplies_before,
        "supply lists came from the cache"
    );
    let quotes = market.calls("/v1/marketplace/quote") - quotes_before;
    assert!(quotes > 0, "the served case asked for quotes");
    println!("quote calls during the run: {quotes}; supply list calls: 0");
}

/// The percentile table, each figure also as a ratio to `off`'s.
fn tails(rows: &[(&str, Vec<Duration>)], samples: usize) {
    let base = &rows[0].1;
    println!(
        "admit() of an over-budget request, {samples} samples each (after {} warm-up):",
        samples / 10
    );
    println!("| case | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, d) in rows {
        let cell = |p: f64| {
            let (v, b) = (pct(d, p), pct(base, p));
            format!("{} ({:.2}×)", us(v), v.as_secs_f64() / b.as_secs_f64())
        };
        let max = *d.last().expect("samples");
        let bmax = *base.last().expect("samples");
        println!(
            "| {name} | {} | {} | {} | {} ({:.2}×) |",
            cell(0.5),
            cell(0.9),
            cell(0.99),
            us(max),
            max.as_secs_f64() / bmax.as_secs_f64()
        );
    }
    let served = &rows[1].1;
    println!(
        "time the step adds when served: p50 {}, p99 {}",
        us(pct(served, 0.5).saturating_sub(pct(base, 0.5))),
        us(pct(served, 0.99).saturating_sub(pct(base, 0.99)))
    );
}
