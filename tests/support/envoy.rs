use crate::process::{free_port, scratch, tool, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A real Envoy running a bootstrap from `envoy/`, rendered with ports.
pub struct Envoy {
    proc: Proc,
    admin_port: u16,
    listen_port: u16,
}

impl Envoy {
    /// Renders `envoy/<template>` (replacing `{{KEY}}` by value), fills
    /// `ADMIN_PORT` and `LISTEN_PORT` itself, and waits until Envoy is live.
    pub fn start(template: &str, vars: &[(&str, String)]) -> Envoy {
        let bin = tool("envoy", "ENVOY_BIN");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut text = std::fs::read_to_string(repo.join("envoy").join(template))
            .unwrap_or_else(|e| panic!("read envoy/{template}: {e}"));
        let admin_port = free_port();
        let listen_port = free_port();
        let mut all: Vec<(String, String)> = vec![
            ("ADMIN_PORT".into(), admin_port.to_string()),
            ("LISTEN_PORT".into(), listen_port.to_string()),
        ];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        for (k, v) in &all {
            text = text.replace(&format!("{{{{{k}}}}}"), v);
        }
        if let Some(i) = text.find("{{") {
            panic!(
                "envoy/{template}: unfilled placeholder near `{}`",
                &text[i..(i + 30).min(text.len())]
            );
        }
        let dir = scratch("envoy");
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, text).expect("write envoy config");
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config).args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ]);
        let mut proc = Proc::spawn(cmd, dir.join("envoy.log"));
        proc.wait_until("envoy", Duration::from_secs(30), || {
            http_get(admin_port, "/ready").is_some_and(|b| b.contains("LIVE"))
        });
        Envoy {
            proc,
            admin_port,
            listen_port,
        }
    }

    pub fn listener_port(&self) -> u16 {
        self.listen_port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Envoy's own counters (`/stats`), for assertions on filter behaviour.
    pub fn stats(&self) -> String {
        http_get(self.admin_port, "/stats").unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// A tiny blocking HTTP GET, for readiness checks (no client dependency).
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
