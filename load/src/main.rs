//! `tollgate-load`: the load tool behind `scripts/bench.sh`.
//!
//! * `grpc`: `ShouldRateLimit` calls straight to tollgate (`grpc.rs`);
//! * `http`: HTTP/1.1 through Envoy, optionally timing the first streamed
//!   byte (`http.rs`);
//! * `report`: the markdown tables from the collected results (`report.rs`);
//! * `null-ext-proc`: an ext_proc server that does nothing, the baseline
//!   under tollgate's ext_proc figures (`null_ext_proc.rs`);
//! * `null-rls`: a rate limit service that answers OK and does nothing,
//!   the baseline under tollgate's rate limit figures through Envoy
//!   (`null_rls.rs`).
//!
//! `grpc` and `http` run at the maximum rate or on a fixed schedule
//! (`pace.rs`, free of coordinated omission) and print throughput and
//! HdrHistogram percentiles (`stats.rs`), as a table or one JSON line.
//! wrk does the 32-connection maximum-throughput runs through Envoy, where
//! its C event loop leaves the most CPU to what is measured.
#![forbid(unsafe_code)]

mod grpc;
mod http;
mod null_ext_proc;
mod null_rls;
mod pace;
mod report;
mod stats;

use clap::{Args, Parser, Subcommand};
use pace::Pace;
use serde_json::json;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Load generator for tollgate: gRPC rate limit calls, HTTP through Envoy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rate limit calls straight to tollgate's gRPC port.
    Grpc {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        grpc: grpc::GrpcArgs,
    },
    /// HTTP/1.1 requests, e.g. through Envoy.
    Http {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        http: http::HttpArgs,
    },
    /// Markdown tables from `scripts/bench.sh`'s results.
    Report(report::ReportArgs),
    /// An ext_proc server that answers every message at once and does
    /// nothing else: the baseline under tollgate's ext_proc figures.
    NullExtProc(null_ext_proc::NullArgs),
    /// A rate limit service that answers OK at once and does nothing else:
    /// the floor under tollgate's rate limit figures through Envoy.
    NullRls(null_ext_proc::NullArgs),
}

/// How hard and how long, for every kind of load.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Requests in flight at once (HTTP: connections).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Total requests per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load that is sent but not counted, so connections, caches and
    /// counters are warm when measuring starts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (run, pace, tally) = match &cli.command {
        Command::Report(args) => return report::run(args),
        Command::NullExtProc(args) => return null_ext_proc::serve(args).await,
        Command::NullRls(args) => return null_rls::serve(args).await,
        Command::Grpc { run, grpc } => {
            let pace = Pace::new(run.rate, run.warmup, run.duration);
            let tally = grpc::run(grpc, run.concurrency, &pace).await?;
            (run, pace, tally)
        }
        Command::Http { run, http } => {
            let pace = Pace::new(run.rate, run.warmup, run.duration);
            let tally = http::run(http, run.concurrency, &pace).await?;
            (run, pace, tally)
        }
    };
    if run.json {
        let settings = json!({"concurrency": run.concurrency, "rate": run.rate});
        println!("{}", tally.to_json(pace.measured(), settings));
    } else {
        tally.print(pace.measured());
    }
    Ok(())
}
