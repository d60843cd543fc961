//! The real `tollgate` binary, started on a config given as text. Its
//! listeners bind `127.0.0.1:0`; tollgate writes the bound addresses to
//! `--ready-file` (`{"grpc":"127.0.0.1:P1","admin":"127.0.0.1:P2"}`, by
//! write-then-rename) once both are listening, and the harness reads them
//! back from there.

use crate::envoy::http_get;
use crate::process::{scratch_dir, Proc, Signal};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running tollgate, killed on drop.
pub struct Tollgate {
    proc: Proc,
    config: PathBuf,
    grpc: String,
    admin: String,
}

impl Tollgate {
    /// Writes `config_toml` to a file and runs `BIN serve --config FILE
    /// --ready-file READY`; waits (15 s at most) for READY. `bin` is
    /// `env!("CARGO_BIN_EXE_tollgate")` in the test files. `RUST_LOG` is
    /// passed through (default `info`).
    pub fn start(bin: &str, config_toml: &str) -> Tollgate {
        let dir = scratch_dir("tollgate");
        let config = dir.join("tollgate.toml");
        std::fs::write(&config, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        Tollgate::serve(bin, dir, config, &[])
    }

    /// Writes `files` (name, text) into one directory and serves that
    /// directory (`--config DIR`: its `*.toml` and envoyproxy/ratelimit
    /// `*.yaml`), with `env` set, as a Deployment's `env` block would.
    pub fn start_dir(bin: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Tollgate {
        let dir = scratch_dir("tollgate");
        let config = dir.join("config");
        std::fs::create_dir_all(&config)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", config.display()));
        for (name, text) in files {
            let path = config.join(name);
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        Tollgate::serve(bin, dir, config, env)
    }

    fn serve(bin: &str, dir: PathBuf, config: PathBuf, env: &[(&str, &str)]) -> Tollgate {
        let ready = dir.join("ready.json");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("tollgate", cmd, dir.join("tollgate.log"));
        let mut addrs = None;
        proc.wait_until(START_TIMEOUT, || {
            addrs = read_ready(&ready);
            addrs.is_some()
        });
        let (grpc, admin) = addrs.expect("set by the wait");
        Tollgate {
            proc,
            config,
            grpc,
            admin,
        }
    }

    /// `127.0.0.1:PORT` of the gRPC listener (RLS, ext_proc, health).
    pub fn grpc_addr(&self) -> &str {
        &self.grpc
    }

    pub fn grpc_port(&self) -> u16 {
        port_of(&self.grpc)
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// A blocking GET on the admin listener: `(status, body)`. Panics if
    /// tollgate does not answer.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path).unwrap_or_else(|| {
            panic!(
                "GET {}{path}: no answer\n{}",
                self.admin_url(),
                self.proc.tail()
            )
        })
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// The config file (or directory) tollgate runs on (rewrite it, then
    /// `signal(SIGHUP)` to test a reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends a signal, e.g. `Signal::SIGHUP` (reload) or `Signal::SIGTERM`
    /// (drain and stop).
    pub fn signal(&mut self, signal: Signal) {
        self.proc.signal(signal);
    }

    /// Waits (bounded) until tollgate exits by itself, e.g. after SIGTERM.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.proc.wait_exit(timeout)
    }

    /// SIGKILL (dropping it does the same).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// The two addresses of a complete ready file, or `None` for now.
fn read_ready(path: &Path) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let field = |name| v.get(name)?.as_str().map(str::to_string);
    Some((field("grpc")?, field("admin")?))
}

pub(crate) fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}
