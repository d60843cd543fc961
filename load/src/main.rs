//! `tollgate-load`: drives tollgate's rate limit service directly over gRPC
//! at the maximum rate or a fixed one, and prints throughput and latency
//! percentiles (HdrHistogram). Through-Envoy HTTP load uses `wrk` (see
//! `scripts/bench.sh`).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for tollgate's rate limit service")]
struct Args {
    /// gRPC address of tollgate.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to run, after warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Total requests per second across all workers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value = "bench")]
    domain: String,
    /// Descriptor key; each request uses one of `--keys` distinct values.
    #[arg(long, default_value = "tenant")]
    key: String,
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Descriptors per request (the same key, different values).
    #[arg(long, default_value_t = 1)]
    descriptors: usize,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

struct WorkerResult {
    latencies: Histogram<u64>,
    ok: u64,
    over: u64,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = Endpoint::from_shared(args.target.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        channels.push(ch);
    }
    let workers = args.concurrency.max(1);
    let per_worker_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(workers as f64 / args.rate as f64));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = RateLimitServiceClient::new(channels[w % channels.len()].clone());
        let args = args.clone();
        tasks.push(tokio::spawn(worker(
            w as u64,
            client,
            args,
            per_worker_interval,
            measure_from,
            end,
        )));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let (mut ok, mut over, mut errors) = (0, 0, 0);
    for t in tasks {
        let r = t.await??;
        all.add(&r.latencies)?;
        ok += r.ok;
        over += r.over;
        errors += r.errors;
    }
    let total = ok + over + errors;
    let rps = total as f64 / args.duration.as_secs_f64();
    let q = |p: f64| all.value_at_quantile(p) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "requests_per_second": rps, "ok": ok, "over_limit": over, "errors": errors,
                "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999),
                "concurrency": workers,
            })
        );
    } else {
        println!(
            "{total} requests in {:?}: {rps:.0} req/s (ok {ok}, over_limit {over}, errors {errors})",
            args.duration
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            all.max() as f64 / 1000.0
        );
    }
    Ok(())
}

async fn worker(
    id: u64,
    mut client: RateLimitServiceClient<Channel>,
    args: Args,
    interval: Option<Duration>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<WorkerResult> {
    let mut r = WorkerResult {
        latencies: Histogram::new(3)?,
        ok: 0,
        over: 0,
        errors: 0,
    };
    let mut n = id;
    let mut next = Instant::now();
    while Instant::now() < end {
        if let Some(iv) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += iv;
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let descriptors = (0..args.descriptors)
            .map(|i| RateLimitDescriptor {
                entries: vec![Entry {
                    key: args.key.clone(),
                    value: format!("v{}", (n >> 16).wrapping_add(i as u64) % args.keys.max(1)),
                }],
                ..Default::default()
            })
            .collect();
        let req = RateLimitRequest {
            domain: args.domain.clone(),
            descriptors,
            hits_addend: 1,
        };
        let sent = Instant::now();
        let res = client.should_rate_limit(req).await;
        let took = sent.elapsed();
        if sent < measure_from {
            continue;
        }
        let _ = r.latencies.record(took.as_micros() as u64);
        match res {
            Ok(resp) if resp.get_ref().overall_code == Code::OverLimit as i32 => r.over += 1,
            Ok(_) => r.ok += 1,
            Err(_) => r.errors += 1,
        }
    }
    Ok(r)
}
