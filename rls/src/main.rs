//! The `tollgate` binary: parse the command line, load the config, run.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::config::{self, LogFormat};
use tollgate::server::{self, RunOptions};

/// jemalloc, with a background thread that purges pages unused for a few
/// seconds: after a burst of large bodies an idle tollgate returns to
/// about its idle size (glibc kept hundreds of MB: the crowd test in
/// tests/ext_proc_stream.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Convert envoyproxy/ratelimit YAML (a file, or a directory of
    /// `*.yaml`) to tollgate TOML with the same answers, on stdout.
    Import {
        /// The YAML file or directory.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Import { path } => import(&path),
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

/// `tollgate import`: every YAML file's TOML, in name order, on stdout.
fn import(path: &std::path::Path) -> ExitCode {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                eprintln!("{}: cannot list: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut failed = false;
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        match config::yaml_to_toml(&name, &text) {
            Ok(toml) => println!("{toml}"),
            Err(errors) => {
                eprintln!("{errors}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
/// Human lines escape control characters in every field (JSON lines are
/// escaped by JSON): see [`logs::EscapedFields`].
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.fmt_fields(logs::EscapedFields).init(),
    }
}

/// One event, one line: values that came from clients (a query value's
/// `%0A`, a descriptor, a model name) are written with `\n`, `\r`, `\t`
/// and other control characters escaped, so they cannot forge a log line
/// or send escape sequences to a terminal. Done once here, in the field
/// formatter of every event and span, rather than at each call site.
mod logs {
    use std::fmt::{self, Write};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::field::RecordFields;
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::FormatFields;

    /// The human format's fields as `DefaultFields` writes them
    /// (`message key=value ...`), each value escaped.
    pub struct EscapedFields;

    impl<'w> FormatFields<'w> for EscapedFields {
        fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
            let mut visitor = Visitor {
                writer,
                result: Ok(()),
                pad: false,
            };
            fields.record(&mut visitor);
            visitor.result
        }
    }

    struct Visitor<'w> {
        writer: Writer<'w>,
        result: fmt::Result,
        pad: bool,
    }

    impl Visit for Visitor<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.record(field, format_args!("{value}"));
            } else {
                self.record(field, format_args!("{value:?}"));
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.record(field, format_args!("{value:?}"));
        }
    }

    impl Visitor<'_> {
        fn record(&mut self, field: &Field, value: fmt::Arguments<'_>) {
            // `log.*` fields are the `log` crate's metadata, shown already.
            if self.result.is_ok() && !field.name().starts_with("log.") {
                self.result = self.write(field.name(), value);
            }
        }

        fn write(&mut self, name: &str, value: fmt::Arguments<'_>) -> fmt::Result {
            if std::mem::replace(&mut self.pad, true) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if self.writer.has_ansi_escapes() {
                    // Italic name, dimmed `=`, as `DefaultFields` does.
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    write!(self.writer, "{name}=")?;
                }
            }
            Escaping(&mut self.writer).write_fmt(value)
        }
    }

    /// Writes through to `W` with control characters escaped.
    pub struct Escaping<'a, W: Write>(pub &'a mut W);

    impl<W: Write> Write for Escaping<'_, W> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    // C0, DEL and C1 controls (ESC among them), and the
                    // Unicode line and paragraph separators.
                    c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                        write!(self.0, "\\u{{{:x}}}", u32::from(c))?
                    }
                    c => self.0.write_char(c)?,
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Escaping;
        use std::fmt::Write;

        #[test]
        fn control_characters_are_escaped() {
            let mut out = String::new();
            write!(
                Escaping(&mut out),
                "a\nb\r\nc\td\x1b[31me\u{85}f\u{2028}g é"
            )
            .unwrap();
            assert_eq!(out, "a\\nb\\r\\nc\\td\\u{1b}[31me\\u{85}f\\u{2028}g é");
        }
    }
}
