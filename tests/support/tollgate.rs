use crate::process::{scratch, Proc};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The real `tollgate` binary, started with a config given as text.
pub struct Tollgate {
    proc: Proc,
    config: PathBuf,
    grpc: String,
    admin: String,
}

impl Tollgate {
    /// `bin` is `env!("CARGO_BIN_EXE_tollgate")`. The config should use
    /// `127.0.0.1:0` listeners; the bound addresses are read back from the
    /// ready file.
    pub fn start(bin: &str, config_toml: &str) -> Tollgate {
        let dir = scratch("tollgate");
        let config = dir.join("tollgate.toml");
        std::fs::write(&config, config_toml).expect("write config");
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
        let mut proc = Proc::spawn(cmd, dir.join("tollgate.log"));
        proc.wait_until("tollgate", Duration::from_secs(15), || ready.exists());
        let text = std::fs::read_to_string(&ready).expect("read ready file");
        let field = |name: &str| {
            let start = text
                .find(&format!("\"{name}\":\""))
                .expect("ready file field")
                + name.len()
                + 4;
            let end = text[start..].find('"').expect("ready file field end") + start;
            text[start..end].to_string()
        };
        Tollgate {
            grpc: field("grpc"),
            admin: field("admin"),
            proc,
            config,
        }
    }

    /// `127.0.0.1:PORT` of the gRPC listener.
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

    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

pub(crate) fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}
