//! A real Envoy running a bootstrap from `envoy/`, rendered with the
//! test's ports. Admin and listeners bind port 0 unless the caller fixes
//! them; the harness reads the bound ports back from Envoy itself
//! (`--admin-address-path`, then the admin `/listeners`), so there is no
//! window in which another process can take them.

use crate::process::{find_tool, repo_root, scratch_dir, Proc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Placeholder values used when the caller gives none.
const DEFAULTS: &[(&str, &str)] = &[
    ("ADMIN_PORT", "0"),
    ("LISTEN_PORT", "0"),
    // Deny when tollgate cannot answer: a broken tollgate must be visible.
    ("FAILURE_MODE_DENY", "true"),
];

/// A running Envoy, killed on drop.
pub struct Envoy {
    proc: Proc,
    config: PathBuf,
    admin: String,
    listeners: BTreeMap<String, u16>,
}

impl Envoy {
    /// Renders `template` (a path relative to `envoy/`, or an absolute
    /// path), replacing each `{{KEY}}` by its value, starts Envoy on it with
    /// `--concurrency 1`, and waits (30 s at most) until the admin `/ready`
    /// says LIVE and every listener is bound. `ADMIN_PORT` and `LISTEN_PORT`
    /// default to 0 (bound port read back), `FAILURE_MODE_DENY` to `true`.
    pub fn start<V: AsRef<str>>(template: &str, vars: &[(&str, V)]) -> Envoy {
        let dir = scratch_dir("envoy");
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, render_template(template, vars))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1"])
            // Dynamic base ids leave /dev/shm segments behind a SIGKILL;
            // without hot restart there are none.
            .args(["--use-dynamic-base-id", "--disable-hot-restart"])
            .args(["--log-level", &log_level()]);
        let mut proc = Proc::spawn("envoy", cmd, dir.join("envoy.log"));

        let mut admin = String::new();
        let mut listeners = BTreeMap::new();
        proc.wait_until(START_TIMEOUT, || {
            if admin.is_empty() {
                admin = std::fs::read_to_string(&admin_path)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                if admin.is_empty() {
                    return false;
                }
            }
            if !http_get(&admin, "/ready")
                .is_some_and(|(status, body)| status == 200 && body.contains("LIVE"))
            {
                return false;
            }
            match bound_listeners(&admin) {
                Some(found) => {
                    listeners = found;
                    true
                }
                None => false,
            }
        });
        Envoy {
            proc,
            config,
            admin,
            listeners,
        }
    }

    /// Renders a template as `start` would and runs `envoy --mode validate`
    /// on it; panics with Envoy's output if the config is rejected.
    pub fn validate<V: AsRef<str>>(template: &str, vars: &[(&str, V)]) {
        let dir = scratch_dir("envoy-validate");
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, render_template(template, vars))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let mut cmd = Command::new(envoy_bin());
        cmd.args(["--mode", "validate", "-c"]).arg(&config).args([
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ]);
        let mut proc = Proc::spawn("envoy --mode validate", cmd, dir.join("validate.log"));
        let status = proc.wait_exit(START_TIMEOUT);
        assert!(
            status.success(),
            "envoy rejected {template} (rendered at {})\n{}",
            config.display(),
            proc.tail()
        );
    }

    /// Port of the listener named `ingress` (the one clients call in the
    /// configs of `envoy/`), or of the only listener.
    pub fn listener_port(&self) -> u16 {
        if let Some(p) = self.listeners.get("ingress") {
            return *p;
        }
        match self.listeners.values().collect::<Vec<_>>()[..] {
            [p] => *p,
            _ => panic!(
                "no listener named `ingress` among {:?}; use listener_port_of",
                self.listeners
            ),
        }
    }

    /// Port of the listener with this name.
    pub fn listener_port_of(&self, name: &str) -> u16 {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener `{name}` among {:?}", self.listeners))
    }

    /// `http://127.0.0.1:PORT{path}` on the ingress listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listener_port())
    }

    /// `http://127.0.0.1:PORT` of the admin interface.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Envoy's counters and gauges (admin `/stats`), one `name: value` a line.
    pub fn stats(&self) -> String {
        http_get(&self.admin, "/stats")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One counter or gauge by its full name, e.g.
    /// `cluster.upstream.ratelimit.over_limit`; `None` if Envoy has none.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let prefix = format!("{name}: ");
        self.stats()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// The rendered config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// SIGKILL Envoy now (dropping it does the same).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// Reads `template` (relative to `envoy/` unless absolute) and replaces
/// every `{{KEY}}`: first from `vars`, then from the defaults. Panics on a
/// placeholder left unfilled.
pub fn render_template<V: AsRef<str>>(template: &str, vars: &[(&str, V)]) -> String {
    let path = if Path::new(template).is_absolute() {
        PathBuf::from(template)
    } else {
        repo_root().join("envoy").join(template)
    };
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (key, value) in vars.iter().map(|(k, v)| (*k, v.as_ref())) {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    for (key, value) in DEFAULTS {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(i) = text.find("{{") {
        let end = text[i..].find("}}").map_or(text.len(), |j| i + j + 2);
        panic!(
            "{}: placeholder {} not filled",
            path.display(),
            &text[i..end]
        );
    }
    text
}

/// `$ENVOY_BIN`, then `.venv/bin/envoy`, then `envoy` on `PATH`.
pub fn envoy_bin() -> PathBuf {
    find_tool("envoy", "ENVOY_BIN")
}

fn log_level() -> String {
    std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".into())
}

/// Listener name → bound port, once every listener has a non-zero port.
fn bound_listeners(admin: &str) -> Option<BTreeMap<String, u16>> {
    let (status, body) = http_get(admin, "/listeners?format=json")?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let mut out = BTreeMap::new();
    for l in v.get("listener_statuses")?.as_array()? {
        let name = l.get("name")?.as_str()?.to_string();
        let port = l
            .pointer("/local_address/socket_address/port_value")?
            .as_u64()?;
        if port == 0 {
            return None;
        }
        out.insert(name, u16::try_from(port).ok()?);
    }
    Some(out)
}

/// A tiny blocking HTTP/1.1 GET (`Connection: close`) to `host:port`, for
/// readiness checks and admin scrapes: `(status, body)`, `None` on any I/O
/// problem. HTTP/1.1 because Envoy answers HTTP/1.0 with 426 by default.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("transfer-encoding:")
            .is_some_and(|v| v.contains("chunked"))
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// `envoy/ext_proc.yaml` with Envoy sending the request and response
/// headers messages (`SEND`) and without the route's metadata-driven
/// response headers: tollgate reads and sets headers itself. Written to a
/// scratch file; returns its absolute path, for [`Envoy::start`].
pub fn ext_proc_with_header_messages() -> String {
    let path = crate::repo_root().join("envoy/ext_proc.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("response_headers_to_add:") {
            skipping = true;
            continue;
        }
        if skipping && (trimmed.starts_with("- header:") || trimmed.starts_with("append_action:")) {
            continue;
        }
        skipping = false;
        out.push_str(
            &line
                .replace("request_header_mode: SKIP", "request_header_mode: SEND")
                .replace("response_header_mode: SKIP", "response_header_mode: SEND"),
        );
        out.push('\n');
    }
    assert!(
        out.contains("request_header_mode: SEND") && !out.contains("DYNAMIC_METADATA"),
        "envoy/ext_proc.yaml changed shape; update ext_proc_with_header_messages"
    );
    let file = crate::scratch_dir("ext-proc-headers").join("ext_proc_headers.yaml");
    std::fs::write(&file, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    file.display().to_string()
}
