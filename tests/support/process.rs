//! Child processes for the harness: find the tool, give it a scratch
//! directory and a log file, wait (bounded) until it answers, kill it on
//! drop. Every failed wait prints the last lines of the child's log.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// Lines of a child's log shown when a wait for it fails.
const TAIL_LINES: usize = 50;

/// A free TCP port on 127.0.0.1 (bound, then released). Never returns the
/// same port twice in one test process, so parallel tests do not collide
/// with each other (another process can still take it; the kernel hands
/// out ports at random, so that is rare).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 100 tries");
}

/// The workspace root (the parent of `tests/`).
pub fn repo_root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

/// Finds an executable: `$env_var` if set, then `<repo>/.venv/bin/<name>`,
/// then `PATH`, then the sbin directories (nginx lives in `/usr/sbin`,
/// which is not on every user's `PATH`). Panics naming the install script:
/// a missing tool fails the test, it never skips it.
pub fn find_tool(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} does not exist (unset it, or run scripts/install-test-deps.sh)",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(repo_root().join(".venv/bin"))
        .chain(std::env::split_paths(&path))
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in candidates {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found (looked at ${env_var}, .venv/bin, PATH, /usr/sbin): \
         run scripts/install-test-deps.sh"
    );
}

/// A fresh directory for one process's files:
/// `target/tollgate-test/<name>-<pid>-<n>/` (`n` counts within this test
/// process, so that several instances of one tool do not share a log).
/// The first call in a test process removes the directories of test
/// processes that have ended, so `target/tollgate-test/` holds the last
/// run's logs, not every run's.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: Once = Once::new();
    let root = repo_root().join("target/tollgate-test");
    SWEEP.call_once(|| remove_dead_dirs(&root));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Removes `<name>-<pid>-<n>` directories whose test process is gone.
fn remove_dead_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let pid = file_name
            .to_str()
            .and_then(|n| n.rsplit('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `ready` every 20 ms until it is true; panics after `timeout`
/// with `what` in the message. For conditions in tests, e.g. a metric
/// that an asynchronous path updates.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if ready() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, its stdout and stderr in `log`, killed (SIGKILL) on
/// drop.
pub(crate) struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    pub fn spawn(what: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({:?}): {e}", cmd.get_program()));
        Proc {
            what: what.to_string(),
            child,
            log,
            exited: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn tail(&self) -> String {
        format!(
            "--- last {TAIL_LINES} lines of {} ---\n{}\n--- end of log ---",
            self.log.display(),
            tail(&self.log, TAIL_LINES)
        )
    }

    /// Polls `ready` until it is true; panics with the log's tail if the
    /// child exits first or `timeout` passes.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = true;
                panic!(
                    "{} exited ({status}) before it was ready\n{}",
                    self.what,
                    self.tail()
                );
            }
            if start.elapsed() >= timeout {
                panic!("{} not ready after {timeout:?}\n{}", self.what, self.tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Some(exit status)` if the child has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.exited |= status.is_some();
        status
    }

    /// Waits (bounded) for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "{} still running after {timeout:?}\n{}",
                    self.what,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&mut self, signal: Signal) {
        if self.try_wait().is_some() {
            panic!(
                "cannot send {signal} to {}: it has exited\n{}",
                self.what,
                self.tail()
            );
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {} ({}): {e}", pid, self.what));
    }

    /// SIGKILL and reap: the process vanishes as in a crash.
    pub fn kill(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exited = true;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
