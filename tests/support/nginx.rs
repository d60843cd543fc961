//! A real nginx (Debian's `nginx-light`, which has `auth_request`) running
//! an `http {}` body given by the test, in its own prefix directory, in
//! the foreground, as one process (`master_process off`: no workers to
//! orphan when the test kills it).

use crate::envoy::http_get;
use crate::process::{find_tool, free_port, scratch_dir, Proc};
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx, killed on drop.
pub struct Nginx {
    proc: Proc,
    port: u16,
}

impl Nginx {
    /// Starts nginx with `http_body` as the contents of its `http {}` block;
    /// `{{LISTEN_PORT}}` in it is replaced by a free port (use it in
    /// `listen 127.0.0.1:{{LISTEN_PORT}};`), other `{{KEY}}`s by `vars`.
    /// Waits (10 s at most) until the port answers HTTP.
    pub fn start<V: AsRef<str>>(http_body: &str, vars: &[(&str, V)]) -> Nginx {
        let bin = find_tool("nginx", "NGINX_BIN");
        let dir = scratch_dir("nginx");
        let port = free_port();
        let mut body = http_body.replace("{{LISTEN_PORT}}", &port.to_string());
        for (k, v) in vars {
            body = body.replace(&format!("{{{{{k}}}}}"), v.as_ref());
        }
        if let Some(i) = body.find("{{") {
            panic!(
                "nginx config: placeholder not filled near `{}`",
                &body[i..(i + 30).min(body.len())]
            );
        }
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n\
             \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {body}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));
        let mut cmd = Command::new(bin);
        // `-e stderr`: not even the start-up error log goes to /var/log.
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr"]);
        let mut proc = Proc::spawn("nginx", cmd, dir.join("nginx.log"));
        let addr = format!("127.0.0.1:{port}");
        proc.wait_until(START_TIMEOUT, || http_get(&addr, "/").is_some());
        Nginx { proc, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// nginx's stderr (error log at `info`).
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}
