//! A network namespace joined to the root namespace by a point-to-point
//! link whose faults a test sets while traffic runs: latency with jitter,
//! random loss, a full partition; both directions alike.
//!
//! The link is two TUN devices, one in each namespace, and a wire in this
//! process between them: each IP packet read from one device is written
//! to the other after the delay, or dropped. Not a veth pair with
//! `tc qdisc ... netem`: the kernel of this machine kind (and so CI's) is
//! built without `sch_netem` and without loadable modules, and has no
//! `act_gact` either, so the kernel cannot delay or drop at random; the
//! wire does what netem would, on real kernel TCP at both ends
//! (retransmissions, back-off, a connection that hangs through a
//! partition and resumes after it).
//!
//! Names carry this process's id and a counter (namespace `tg-PID-N`,
//! devices `tgPIDhN`/`tgPIDnN`, addresses `10.A.B.C/30` from both), so
//! parallel tests and test processes never collide. Everything is removed
//! on drop, during a panic's unwinding too: the wire stops, the devices
//! vanish with their file descriptors (also when the process is killed),
//! the processes left in the namespace are killed and the namespace is
//! deleted. Namespaces of test processes that were killed are swept at the
//! first creation in a later process.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tun_rs::{DeviceBuilder, SyncDevice};

/// What the link does to every packet, in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Added to every packet's trip.
    pub delay: Duration,
    /// Each packet's delay varies by up to this much either way (order is
    /// kept: a packet never overtakes an earlier one).
    pub jitter: Duration,
    /// Packets dropped at random, in percent; 100 is a full partition.
    pub loss_percent: u32,
}

impl Fault {
    /// A healthy link.
    pub fn none() -> Fault {
        Fault::default()
    }

    /// Every packet `delay` ± `jitter` late, each way.
    pub fn delay(delay: Duration, jitter: Duration) -> Fault {
        Fault {
            delay,
            jitter,
            loss_percent: 0,
        }
    }

    /// `percent` of the packets dropped at random, each way.
    pub fn loss(percent: u32) -> Fault {
        Fault {
            loss_percent: percent.min(100),
            ..Fault::default()
        }
    }

    /// Nothing gets through, either way; no connection is reset.
    pub fn partition() -> Fault {
        Fault::loss(100)
    }
}

/// Packets the wire has carried and dropped, both directions together.
#[derive(Debug, Default)]
struct Counts {
    carried: AtomicUsize,
    dropped: AtomicUsize,
}

/// A namespace `tg-PID-N` and the link to it, removed on drop.
pub struct NetNs {
    name: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
    fault: Arc<Mutex<Fault>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    wires: Vec<JoinHandle<()>>,
}

const NAMESPACE_PREFIX: &str = "tg-";
/// The largest IP packet the wire carries (the devices' MTU is 1500).
const MAX_PACKET: usize = 65_536;
/// How often an idle wire looks at its stop flag.
const IDLE_POLL: Duration = Duration::from_millis(20);

impl NetNs {
    /// Creates the namespace and the link, both ends up, no fault. Panics
    /// (never skips) when it cannot: it needs root (`CAP_NET_ADMIN`),
    /// `ip` (iproute2) and `/dev/net/tun`.
    pub fn create() -> NetNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static SWEEP: Once = Once::new();
        SWEEP.call_once(remove_dead_namespaces);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 16 bits of the pid and 6 of the counter pick one /30 of 10/8.
        let block = ((pid & 0xffff) << 8) | ((n as u32 & 0x3f) << 2);
        let [_, a, b, c] = block.to_be_bytes();
        let host = Ipv4Addr::new(10, a, b, c + 1);
        let inside = Ipv4Addr::new(10, a, b, c + 2);
        let name = format!("{NAMESPACE_PREFIX}{pid}-{n}");
        let (host_dev, inside_dev) = (format!("tg{pid}h{n}"), format!("tg{pid}n{n}"));

        ip(&["netns", "add", &name]);
        // From here on, a failure still removes what was made.
        let mut ns = NetNs {
            name,
            host,
            inside,
            fault: Arc::new(Mutex::new(Fault::none())),
            counts: Arc::new(Counts::default()),
            stop: Arc::new(AtomicBool::new(false)),
            wires: Vec::new(),
        };
        let device = |name: &str| {
            DeviceBuilder::new()
                .name(name)
                .enable(false)
                .build_sync()
                .unwrap_or_else(|e| {
                    panic!("cannot create TUN device {name} (needs root and /dev/net/tun): {e}")
                })
        };
        let (host_tun, inside_tun) = (Arc::new(device(&host_dev)), Arc::new(device(&inside_dev)));
        ip(&["link", "set", &inside_dev, "netns", &ns.name]);
        let (h, i) = (host.to_string(), inside.to_string());
        ip(&[
            "addr",
            "add",
            &h,
            "peer",
            &format!("{i}/30"),
            "dev",
            &host_dev,
        ]);
        ip(&["link", "set", &host_dev, "up"]);
        for args in [
            vec![
                "addr",
                "add",
                &i,
                "peer",
                &format!("{h}/30"),
                "dev",
                &inside_dev,
            ],
            vec!["link", "set", &inside_dev, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend(args);
            ip(&all);
        }
        for (from, to) in [
            (host_tun.clone(), inside_tun.clone()),
            (inside_tun, host_tun),
        ] {
            let (fault, counts, stop) = (ns.fault.clone(), ns.counts.clone(), ns.stop.clone());
            let seed = u64::from(pid) << 32 | (n as u64) << 1 | ns.wires.len() as u64;
            ns.wires.push(std::thread::spawn(move || {
                carry(&from, &to, &fault, &counts, &stop, seed)
            }));
        }
        ns
    }

    /// `tg-PID-N`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root namespace's end of the link.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host
    }

    /// The namespace's end: where a server inside listens for the host.
    pub fn inside_ip(&self) -> Ipv4Addr {
        self.inside
    }

    /// `ip netns exec NAME program`: runs `program` inside (it execs, so
    /// the child's pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        exec_in(&self.name, program)
    }

    /// What the link does from now on, both ways. Packets already on the
    /// wire keep the delay they were given.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Heals the link.
    pub fn clear_fault(&self) {
        self.set_fault(Fault::none());
    }

    /// (packets carried, packets dropped) so far, both ways.
    pub fn packets(&self) -> (usize, usize) {
        (
            self.counts.carried.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.wires.drain(..) {
            let _ = w.join();
        }
        // The devices went with the wires' handles; what still runs in
        // the namespace was started in it by this test.
        remove_namespace(&self.name);
    }
}

/// Kills what runs in namespace `name` and deletes it (best effort: in a
/// drop, possibly while a panic unwinds).
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new(ip_tool())
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new(ip_tool())
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Deletes `tg-PID-N` namespaces whose test process is gone (it was
/// killed before its drops ran).
fn remove_dead_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(NAMESPACE_PREFIX))
        else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                remove_namespace(&format!("{NAMESPACE_PREFIX}{rest}"));
            }
        }
    }
}

/// `ip netns exec NAMESPACE program`.
pub(crate) fn exec_in(namespace: &str, program: &Path) -> Command {
    let mut cmd = Command::new(ip_tool());
    cmd.args(["netns", "exec", namespace]).arg(program);
    cmd
}

fn ip_tool() -> std::path::PathBuf {
    crate::process::find_tool("ip", "IP")
}

/// Runs `ip ARGS...`; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new(ip_tool())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {} (network namespaces need root: CAP_NET_ADMIN)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// One direction of the wire: reads packets from `from`, drops or delays
/// each by the fault in force when it is read, writes them to `to` when
/// due, in order; until `stop`.
fn carry(
    from: &SyncDevice,
    to: &SyncDevice,
    fault: &Mutex<Fault>,
    counts: &Counts,
    stop: &AtomicBool,
    seed: u64,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if from.set_nonblocking(true).is_err() {
        return;
    }
    let mut rng = Rng(seed | 1);
    let mut queue: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = queue
            .front()
            .map_or(IDLE_POLL, |(due, _)| due.saturating_duration_since(now))
            .min(IDLE_POLL);
        let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        loop {
            match from.recv(&mut buf) {
                Ok(n) => {
                    let f = *fault.lock().unwrap_or_else(|e| e.into_inner());
                    if f.loss_percent > 0 && rng.below(100) < u64::from(f.loss_percent) {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut due = Instant::now() + f.delay;
                    if !f.jitter.is_zero() {
                        let j = u64::try_from(f.jitter.as_micros()).unwrap_or(u64::MAX / 4);
                        let offset = rng.below(2 * j + 1);
                        due = (due + Duration::from_micros(offset))
                            .checked_sub(f.jitter)
                            .unwrap_or(due);
                    }
                    if let Some((last, _)) = queue.back() {
                        due = due.max(*last);
                    }
                    queue.push_back((due, buf[..n].to_vec()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, packet)) = queue.pop_front() {
                // A packet the kernel refuses is lost, as on a real wire.
                let _ = to.send(&packet);
                counts.carried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// xorshift64*: the wire's coin, no crate for it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
