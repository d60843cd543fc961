//! The `tollgate` binary: parse the command line, load the config, run.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::config::{self, LogFormat};
use tollgate::server::{self, RunOptions};

#[derive(Parser)]
#[command(version, about = "Rate limits and LLM token budgets for Envoy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the rate limit service and the admin listener.
    Serve {
        /// A TOML file, or a directory of them.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the bound addresses here as JSON once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Runtime worker threads. 1 (the default) runs every connection
        /// on one event loop, the cheapest per decision; more threads use
        /// more cores at a higher CPU cost per decision (see
        /// docs/benchmarks.md).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Validate a config and exit: 0 if good, 1 with every error if not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok, {} rules, version {}",
                    config.display(),
                    c.rules.rules.len(),
                    c.version
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            ready_file,
            threads,
        } => {
            let loaded = match config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            init_logs(loaded.server.log_format);
            let runtime = match runtime(threads) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(server::run(
                loaded,
                RunOptions {
                    config_path: Some(config),
                    ready_file,
                },
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tollgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The runtime everything is served on. With one thread, HTTP/2 answers
/// that complete in the same turn of the event loop leave in one `writev`:
/// a multi-threaded runtime runs the connection task right after each
/// answer (tokio's LIFO slot), one `writev` per answer, which measured
/// twice the CPU per decision (docs/benchmarks.md). Large LLM prompts are
/// still counted on the blocking pool, off the event loop.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (info).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
