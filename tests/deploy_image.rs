//! deploy/image/: what can be checked of the container image without
//! building it (no Docker daemon and no registry here: the Dockerfile is
//! never built by these tests).
//!
//! * The Dockerfile's COPY sources exist and are not excluded by its
//!   .dockerignore; its ENTRYPOINT + CMD, USER and EXPOSE are the ones the
//!   Deployment and the config use; the baked-in config is
//!   config/tollgate.toml listening on every interface, and passes
//!   `tollgate check`.
//! * The image's file layout, run for real: a root directory holding only
//!   the binary at /usr/local/bin/tollgate, the shared libraries it links
//!   (what distroless/cc provides) and the config at /etc/tollgate, all
//!   owned by root and writable by no one else; `chroot --userspec=65532:65532`
//!   runs the image's exact command in it, as the image's user, with an
//!   empty environment. tollgate must serve, bind every interface, answer
//!   its probes, and drain on SIGTERM — with nowhere it could write.
//! * The Deployment's layout in the same way: the ConfigMap and the Secret
//!   as the kubelet writes a projected volume (timestamped directory,
//!   `..data` link, file links), Redis behind it; a ConfigMap update made
//!   by the kubelet's atomic `..data` swap is reloaded, a broken one
//!   refused; readiness follows Redis, liveness does not.
//!
//! Needs root (chroot, a user switch): CI and the project's machines run
//! tests as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_testkit::deploy::{replace_line, repo_path, run, shipped_config_files};
use tollgate_testkit::{
    find_tool, free_port, http_get, metric, scratch_dir, wait_until, RedisServer,
};

/// The image's user (Dockerfile `USER`, the Deployment's runAsUser).
const UID: u32 = 65532;

/// One Dockerfile instruction: its keyword and the rest, with line
/// continuations joined and comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("deploy/image/Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && current.is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(l);
                let (k, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((k.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

fn instruction(key: &str) -> String {
    let found: Vec<String> = instructions()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "one {key} in the Dockerfile: {found:?}");
    found[0].clone()
}

/// The image's command: ENTRYPOINT followed by CMD.
fn image_command() -> Vec<String> {
    let mut argv: Vec<String> =
        serde_json::from_str(&instruction("ENTRYPOINT")).expect("ENTRYPOINT as JSON");
    let cmd: Vec<String> = serde_json::from_str(&instruction("CMD")).expect("CMD as JSON");
    argv.extend(cmd);
    argv
}

#[test]
fn dockerfile_copies_what_exists_and_runs_tollgate_serve() {
    let ignore = std::fs::read_to_string(repo_path("deploy/image/Dockerfile.dockerignore"))
        .expect("dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut copies = 0;
    for (k, v) in instructions() {
        if k != "COPY" || v.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = v
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo_path(src).exists(), "COPY {src}: not in the repository");
            assert!(
                !ignored.contains(src),
                "COPY {src}: excluded by Dockerfile.dockerignore"
            );
            copies += 1;
        }
    }
    assert!(copies >= 7, "{copies} COPY sources");
    // Every workspace member is copied (cargo reads them all).
    let workspace = std::fs::read_to_string(repo_path("Cargo.toml")).expect("Cargo.toml");
    let members: toml::Value = toml::from_str(&workspace).expect("TOML");
    for m in members["workspace"]["members"].as_array().expect("members") {
        let m = m.as_str().expect("member");
        assert!(
            instructions()
                .iter()
                .any(|(k, v)| k == "COPY" && v.starts_with(&format!("{m} "))),
            "workspace member {m} is not copied"
        );
    }
    assert_eq!(
        image_command(),
        [
            "/usr/local/bin/tollgate",
            "serve",
            "--config",
            "/etc/tollgate"
        ]
    );
    assert_eq!(instruction("USER"), format!("{UID}:{UID}"));
    assert_eq!(instruction("EXPOSE"), "8081 9090");
    let baked = instructions()
        .into_iter()
        .find(|(k, v)| k == "COPY" && v.contains("tollgate.toml"))
        .expect("the config COPY")
        .1;
    assert_eq!(
        baked,
        "deploy/image/tollgate.toml /etc/tollgate/tollgate.toml"
    );
}

/// The baked-in config is config/tollgate.toml (after its own header)
/// with the listeners on every interface, and it loads.
#[test]
fn baked_config_is_the_default_on_every_interface() {
    let image =
        std::fs::read_to_string(repo_path("deploy/image/tollgate.toml")).expect("image config");
    let default =
        std::fs::read_to_string(repo_path("config/tollgate.toml")).expect("default config");
    let body = image.split_once("#\n").expect("a header ending in `#`").1;
    let normalise = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| {
                let l = l.replace("127.0.0.1:", "0.0.0.0:");
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect()
    };
    assert_eq!(
        normalise(body),
        normalise(&default),
        "deploy/image/tollgate.toml drifted from config/tollgate.toml"
    );
    assert!(body.contains("\"0.0.0.0:8081\"") && body.contains("\"0.0.0.0:9090\""));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["check", "--config"])
        .arg(repo_path("deploy/image/tollgate.toml"));
    let out = run(cmd);
    assert!(out.success, "{}", out.text);
}

fn require_root() {
    let out = run(command("id", &["-u"]));
    assert_eq!(
        out.text.trim(),
        "0",
        "these tests need root (chroot and a switch to uid {UID})"
    );
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// A root directory laid out as the image: the binary, the libraries it
/// links, and `/etc/tollgate` (filled by the caller). Everything owned by
/// root, nothing writable by anyone else.
fn image_root() -> PathBuf {
    require_root();
    let root = scratch_dir("image-root").join("rootfs");
    let bin = root.join("usr/local/bin/tollgate");
    std::fs::create_dir_all(bin.parent().expect("dir")).expect("mkdir");
    let src = Path::new(env!("CARGO_BIN_EXE_tollgate"));
    if std::fs::hard_link(src, &bin).is_err() {
        std::fs::copy(src, &bin).expect("copy the binary");
    }
    let out = run(command("ldd", &[src.to_str().expect("path")]));
    assert!(out.success, "ldd: {}", out.text);
    for line in out.text.lines() {
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("dir")).expect("mkdir");
            std::fs::copy(p, &dest).unwrap_or_else(|e| panic!("copy {p}: {e}"));
        }
    }
    std::fs::create_dir_all(root.join("etc/tollgate")).expect("mkdir");
    root
}

/// Makes the tree read-only for everyone but root, and checks it.
fn seal(root: &Path) {
    fn walk(p: &Path, f: &mut impl FnMut(&Path)) {
        f(p);
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p).expect("dir").flatten() {
                walk(&e.path(), f);
            }
        }
    }
    walk(root, &mut |p| {
        let meta = std::fs::symlink_metadata(p).expect("stat");
        if meta.file_type().is_symlink() {
            return;
        }
        let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
            0o555
        } else {
            0o444
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    });
    walk(root, &mut |p| {
        let meta = std::fs::symlink_metadata(p).expect("stat");
        assert_eq!(meta.uid(), 0, "{} not owned by root", p.display());
        if !meta.file_type().is_symlink() {
            assert_eq!(
                meta.mode() & 0o222 & !0o200,
                0,
                "{} writable by others",
                p.display()
            );
        }
    });
}

/// The image's command in `root`, as uid/gid 65532, environment empty.
struct Contained {
    child: Child,
    log: PathBuf,
}

impl Contained {
    fn start(root: &Path, env: &[(&str, &str)]) -> Contained {
        let log = root.parent().expect("parent").join("tollgate.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(find_tool("chroot", "CHROOT"));
        cmd.arg(format!("--userspec={UID}:{UID}"))
            .arg(root)
            .args(image_command());
        cmd.env_clear().envs(env.iter().copied());
        cmd.stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("chroot");
        Contained { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&mut self, admin: &str) {
        let start = Instant::now();
        while http_get(admin, "/healthz").is_none_or(|(s, _)| s != 200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tollgate exited ({status}) in the image layout:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no /healthz in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the time to exit (which must be clean).
    fn terminate(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        let out = run(command("kill", &["-TERM", &self.child.id().to_string()]));
        assert!(out.success, "{}", out.text);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "exit {status} after SIGTERM:\n{}",
                    self.log()
                );
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "still running {within:?} after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The uids (real, effective, saved, filesystem) of the process.
    fn uids(&self) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid line")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether the process listens on 0.0.0.0:port.
    fn listens_on_any(&self, port: u16) -> bool {
        let tcp =
            std::fs::read_to_string(format!("/proc/{}/net/tcp", self.child.id())).expect("net/tcp");
        let want = format!("00000000:{port:04X}");
        tcp.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text`'s listeners on every interface at the given ports.
fn on_ports(text: &str, grpc: u16, admin: u16) -> String {
    let t = replace_line(
        text,
        "grpc_listen",
        &format!("grpc_listen = \"0.0.0.0:{grpc}\""),
    );
    replace_line(
        &t,
        "admin_listen",
        &format!("admin_listen = \"0.0.0.0:{admin}\""),
    )
}

#[test]
fn image_layout_runs_as_non_root_with_nothing_writable() {
    let root = image_root();
    let (grpc, admin) = (free_port(), free_port());
    let baked = std::fs::read_to_string(repo_path("deploy/image/tollgate.toml")).expect("config");
    std::fs::write(
        root.join("etc/tollgate/tollgate.toml"),
        on_ports(&baked, grpc, admin),
    )
    .expect("write");
    seal(&root);
    let mut t = Contained::start(&root, &[]);
    let admin_addr = format!("127.0.0.1:{admin}");
    t.wait_healthy(&admin_addr);
    assert_eq!(t.uids(), format!("{UID} {UID} {UID} {UID}"));
    assert!(
        t.listens_on_any(grpc) && t.listens_on_any(admin),
        "not bound to 0.0.0.0:\n{}",
        t.log()
    );
    assert_eq!(http_get(&admin_addr, "/readyz").map(|r| r.0), Some(200));
    let (status, metrics) = http_get(&admin_addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "tollgate_store_up", &[]), Some(1.0));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(),
        "gRPC port"
    );
    // Idle, with nowhere to write, it keeps serving.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_get(&admin_addr, "/healthz").map(|r| r.0),
        Some(200),
        "{}",
        t.log()
    );
    let took = t.terminate(Duration::from_secs(12));
    println!("image layout: exited {took:?} after SIGTERM (idle)");
}

/// Writes `files` as the kubelet writes a ConfigMap/projected volume:
/// `..<timestamp>/` holding the files, `..data` → it, and one link per
/// file through `..data`. With `old` set, swaps `..data` atomically (a new
/// link renamed over it) and removes the old directory, as the kubelet's
/// AtomicWriter does on an update.
fn kubelet_write(dir: &Path, stamp: &str, files: &[(&str, &str)], old: Option<&str>) {
    let ts = dir.join(stamp);
    std::fs::create_dir(&ts).expect("mkdir");
    for (name, text) in files {
        std::fs::write(ts.join(name), text).expect("write");
        std::fs::set_permissions(ts.join(name), std::fs::Permissions::from_mode(0o444))
            .expect("chmod");
    }
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("rename ..data");
    if old.is_none() {
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
        }
    }
    if let Some(old) = old {
        let old = dir.join(old);
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::remove_dir_all(old).expect("remove the old data");
    }
}

#[test]
fn deployment_layout_reloads_configmap_swaps_and_follows_redis() {
    let redis = RedisServer::start();
    let root = image_root();
    let (grpc, admin) = (free_port(), free_port());
    let (config, store) = shipped_config_files();
    let config = on_ports(&config, grpc, admin);
    let store = replace_line(&store, "url", &format!("url = \"{}\"", redis.url()));
    let store = replace_line(&store, "timeout", "timeout = \"2s\"");
    let dir = root.join("etc/tollgate");
    kubelet_write(
        &dir,
        "..2026_12_01_10_00_00.000000001",
        &[("tollgate.toml", &config), ("store.toml", &store)],
        None,
    );
    seal(&root);
    let mut t = Contained::start(&root, &[("RUST_LOG", "info")]);
    let admin_addr = format!("127.0.0.1:{admin}");
    t.wait_healthy(&admin_addr);
    assert_eq!(t.uids(), format!("{UID} {UID} {UID} {UID}"));
    let get = |path: &str| http_get(&admin_addr, path).unwrap_or_else(|| panic!("GET {path}"));
    let version = |t: &Contained| -> String {
        let (_, body) = get("/config");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}\n{}", t.log()));
        v["version"].as_str().expect("version").to_string()
    };
    wait_until("ready with Redis", Duration::from_secs(10), || {
        get("/readyz").0 == 200
    });
    let v1 = version(&t);

    // A ConfigMap update: the kubelet swaps ..data.
    let edited = config.replace(
        "requests = 300, per = \"minute\"",
        "requests = 600, per = \"minute\"",
    );
    assert_ne!(edited, config);
    let swapped = Instant::now();
    kubelet_write(
        &dir,
        "..2026_12_01_10_05_00.000000002",
        &[("tollgate.toml", &edited), ("store.toml", &store)],
        Some("..2026_12_01_10_00_00.000000001"),
    );
    let reloads = |result: &str| {
        metric(
            &get("/metrics").1,
            "tollgate_config_reloads_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    };
    wait_until(
        "the swapped ConfigMap reloaded",
        Duration::from_secs(10),
        || reloads("ok") == 1.0,
    );
    println!(
        "ConfigMap ..data swap → reloaded in {:?}",
        swapped.elapsed()
    );
    let v2 = version(&t);
    assert_ne!(v1, v2, "a new version is in force");
    assert!(
        get("/config").1.contains("600"),
        "the new limit is in force"
    );

    // A broken one is refused; the previous version keeps serving.
    let broken = edited.replace("per = \"minute\"", "per = \"fortnight\"");
    kubelet_write(
        &dir,
        "..2026_12_01_10_10_00.000000003",
        &[("tollgate.toml", &broken), ("store.toml", &store)],
        Some("..2026_12_01_10_05_00.000000002"),
    );
    wait_until(
        "the broken ConfigMap refused",
        Duration::from_secs(10),
        || reloads("refused") == 1.0,
    );
    assert_eq!(version(&t), v2);

    // Readiness follows Redis, liveness does not.
    drop(redis);
    wait_until("unready without Redis", Duration::from_secs(15), || {
        // Failed store calls open the circuit (a decision through the
        // HTTP check API makes one).
        let _ = http_get(&admin_addr, "/check?domain=edge&descriptor=tenant=probe");
        get("/readyz").0 == 503
    });
    assert_eq!(
        get("/healthz").0,
        200,
        "alive: the kubelet must not restart it"
    );
    let took = t.terminate(Duration::from_secs(25));
    println!("deployment layout: exited {took:?} after SIGTERM");
}
