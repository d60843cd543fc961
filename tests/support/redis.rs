//! Real `redis-server` processes: one server, or a Redis Cluster of
//! masters, without persistence (a restart comes back empty, as a crashed
//! cache would). Readiness is checked over raw RESP, without a client
//! library (or with `redis-cli` for a server behind a password or TLS);
//! `cli` runs the real `redis-cli` for anything else.

use crate::netns::NetNs;
use crate::process::{find_tool, free_port, scratch_dir, Proc};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Low, so that a killed node is noticed (and forgiven) within seconds.
const CLUSTER_NODE_TIMEOUT_MS: u32 = 2000;

/// A real `redis-server` on a free port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    generation: u32,
    access: Access,
    proc: Proc,
}

/// How a server is reached beyond a plain port: its extra flags, and the
/// `redis-cli` flags that go with them; the network namespace it runs in.
#[derive(Clone, Default)]
struct Access {
    server_args: Vec<String>,
    cli_args: Vec<String>,
    tls: bool,
    netns: Option<Inside>,
}

/// A server inside a [`NetNs`]: it listens on the namespace's end of the
/// link (for clients across it) and on the namespace's own loopback (for
/// `redis-cli`, run inside, so the test reads Redis whatever the link's
/// fault).
#[derive(Clone)]
struct Inside {
    namespace: String,
    addr: Ipv4Addr,
}

impl Access {
    fn plain(&self) -> bool {
        self.server_args.is_empty() && !self.tls && self.netns.is_none()
    }

    /// `program`, inside the namespace if the server is in one.
    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(inside) => crate::netns::exec_in(&inside.namespace, program),
            None => Command::new(program),
        }
    }

    fn host(&self) -> String {
        self.netns
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |i| i.addr.to_string())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

impl RedisServer {
    /// Starts `redis-server --port N --save '' --appendonly no` and waits
    /// until it answers PING (10 s at most).
    pub fn start() -> RedisServer {
        RedisServer::start_with(Access::default())
    }

    /// A server that needs a password (`--requirepass`, the `default`
    /// user's); `cli` sends it. Add ACL users with
    /// `cli(&["ACL", "SETUSER", ...])`.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_with(Access {
            server_args: strings(&["--requirepass", password]),
            cli_args: strings(&["-a", password, "--no-auth-warning"]),
            ..Access::default()
        })
    }

    /// A TLS-only server (`--port 0 --tls-port N`) with `cert`/`key`,
    /// checking clients against `ca` (Redis's default
    /// `tls-auth-clients yes`: a client needs a certificate from `ca`).
    /// `cli` connects with `--tls`, trusting `ca` and presenting `cert`.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> RedisServer {
        let (ca, cert, key) = (
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        RedisServer::start_with(Access {
            server_args: strings(&[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
            ]),
            cli_args: strings(&["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key]),
            tls: true,
            netns: None,
        })
    }

    /// A plain server inside `ns`, for clients in the root namespace at
    /// `redis://INSIDE_IP:PORT`, across the link whose faults `ns` sets.
    /// `cli` runs inside, unaffected by them.
    pub fn start_in(ns: &NetNs) -> RedisServer {
        RedisServer::start_with(Access {
            netns: Some(Inside {
                namespace: ns.name().to_string(),
                addr: ns.inside_ip(),
            }),
            ..Access::default()
        })
    }

    fn start_with(access: Access) -> RedisServer {
        let dir = scratch_dir("redis");
        // The port is chosen before redis binds it; if another process took
        // it meanwhile, try another one.
        for attempt in 0..3 {
            let port = free_port();
            let mut proc = spawn_server(&dir, port, None, 0, &access);
            if wait_ping(&mut proc, port, &access, attempt == 2) {
                return RedisServer {
                    port,
                    dir,
                    generation: 0,
                    access,
                    proc,
                };
            }
        }
        unreachable!("the last attempt panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS server; the
    /// namespace's address for a server in one), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.access.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}", self.access.host(), self.port)
    }

    /// SIGKILL: the server vanishes as in a crash; clients see refused
    /// connections until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port (killing it first if it
    /// still runs). It comes back empty: nothing was persisted.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.generation += 1;
        self.proc = spawn_server(&self.dir, self.port, None, self.generation, &self.access);
        wait_ping(&mut self.proc, self.port, &self.access, true);
    }

    /// Runs `redis-cli -p PORT ARGS...` (with the password or TLS flags
    /// the server needs) and returns its stdout, trimmed. Panics if
    /// redis-cli fails (an error reply is stdout, not a failure).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.access.cli_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        redis_cli(&self.access, self.port, &all)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// A Redis Cluster of masters (no replicas) on free ports, each node with
/// its own directory (its `nodes.conf` survives a restart, so a restarted
/// node rejoins with its identity and slots, empty of data).
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    generation: u32,
    proc: Option<Proc>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as `redis-cli --cluster create`
    /// requires), joins them with `redis-cli --cluster create ...
    /// --cluster-yes`, and waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let mut nodes: Vec<ClusterNode> = (0..masters)
            .map(|i| ClusterNode {
                port: free_port(),
                bus_port: free_port(),
                dir: scratch_dir(&format!("redis-cluster-{i}")),
                generation: 0,
                proc: None,
            })
            .collect();
        for node in &mut nodes {
            let mut proc = spawn_server(
                &node.dir,
                node.port,
                Some(node.bus_port),
                node.generation,
                &Access::default(),
            );
            wait_ping(&mut proc, node.port, &Access::default(), true);
            node.proc = Some(proc);
        }
        let cluster = RedisCluster { nodes };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = run_bounded(
            Command::new(find_tool("redis-cli", "REDIS_CLI")).args(&args),
            CLUSTER_TIMEOUT,
        );
        if !out.status.success() {
            panic!(
                "redis-cli {} failed ({}):\n{}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.tails()
            );
        }
        cluster.wait_ok();
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node (a cluster client needs one).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// SIGKILL node `i`. The others mark it failed after the node timeout
    /// (2 s) and, with no replica to promote, report `cluster_state:fail`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut proc) = self.nodes[i].proc.take() {
            proc.kill();
            // Keep the log readable for `tails()` in later failures.
            self.nodes[i].proc = Some(proc);
        }
    }

    /// Starts node `i` again on its ports with its `nodes.conf`, and waits
    /// until every node reports `cluster_state:ok` again.
    pub fn restart_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut proc) = node.proc.take() {
            proc.kill();
        }
        node.generation += 1;
        let mut proc = spawn_server(
            &node.dir,
            node.port,
            Some(node.bus_port),
            node.generation,
            &Access::default(),
        );
        wait_ping(&mut proc, node.port, &Access::default(), true);
        node.proc = Some(proc);
        self.wait_ok();
    }

    /// Waits (30 s at most) until every running node reports
    /// `cluster_state:ok` and knows all the others.
    pub fn wait_ok(&self) {
        let want_known = format!("cluster_known_nodes:{}", self.nodes.len());
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < CLUSTER_TIMEOUT {
            last = self
                .nodes
                .iter()
                .map(|n| command(n.port, &["CLUSTER", "INFO"]).unwrap_or_default())
                .collect();
            if last
                .iter()
                .all(|info| info.contains("cluster_state:ok") && info.contains(&want_known))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis cluster not ok after {CLUSTER_TIMEOUT:?}; CLUSTER INFO per node:\n{}\n{}",
            last.join("\n--\n"),
            self.tails()
        );
    }

    /// Runs `redis-cli -c -p PORT_OF_NODE_i ARGS...` (`-c` follows
    /// redirections) and returns its stdout, trimmed.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        redis_cli(&Access::default(), self.nodes[i].port, &all)
    }

    fn tails(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.proc.as_ref().map(Proc::tail))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn spawn_server(
    dir: &Path,
    port: u16,
    bus_port: Option<u16>,
    generation: u32,
    access: &Access,
) -> Proc {
    let mut cmd = access.command(&find_tool("redis-server", "REDIS_SERVER"));
    if access.tls {
        cmd.args(["--port", "0", "--tls-port", &port.to_string()]);
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    match &access.netns {
        // Not only loopback: without `protected-mode no`, a server with
        // no password answers every other address -DENIED.
        Some(inside) => cmd
            .args(["--bind", &format!("{} 127.0.0.1", inside.addr)])
            .args(["--protected-mode", "no"]),
        None => cmd.args(["--bind", "127.0.0.1"]),
    };
    cmd.args(["--save", "", "--appendonly", "no"])
        .args(&access.server_args)
        .current_dir(dir);
    if let Some(bus) = bus_port {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-port", &bus.to_string()])
        .args([
            "--cluster-node-timeout",
            &CLUSTER_NODE_TIMEOUT_MS.to_string(),
        ]);
    }
    let log = dir.join(format!("redis-{port}-{generation}.log"));
    Proc::spawn("redis-server", cmd, log)
}

/// Waits until the server answers PING. `false` if it exited because its
/// port was taken and `must` is false (the caller tries another port).
fn wait_ping(proc: &mut Proc, port: u16, access: &Access, must: bool) -> bool {
    let pong = || {
        if access.plain() {
            command(port, &["PING"]).as_deref() == Some("PONG")
        } else {
            cli_pong(port, access)
        }
    };
    if !must {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if pong() {
                return true;
            }
            if proc.try_wait().is_some() && proc.log_text().contains("in use") {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    proc.wait_until(START_TIMEOUT, pong);
    true
}

/// Whether `redis-cli ACCESS... PING` answers PONG (for servers that raw
/// RESP cannot reach: behind a password or TLS, or in a namespace).
fn cli_pong(port: u16, access: &Access) -> bool {
    let out = run_bounded(
        access
            .command(&find_tool("redis-cli", "REDIS_CLI"))
            .args(["-p", &port.to_string()])
            .args(&access.cli_args)
            .arg("PING"),
        Duration::from_secs(5),
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "PONG"
}

/// Sends one command over RESP and returns a simple or bulk string reply
/// (`None` on an error reply, another reply type, or any I/O problem).
fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    match line.as_bytes().first()? {
        b'+' => Some(line[1..].to_string()),
        b'$' => {
            let len: usize = line[1..].parse().ok()?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).ok()?;
            buf.truncate(len);
            String::from_utf8(buf).ok()
        }
        _ => None,
    }
}

fn redis_cli(access: &Access, port: u16, args: &[&str]) -> String {
    let out = run_bounded(
        access
            .command(&find_tool("redis-cli", "REDIS_CLI"))
            .args(["-p", &port.to_string()])
            .args(args),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "redis-cli -p {port} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a short command to completion, killing it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; output so far: {}",
                out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}
