//! Hot reload with the real binary under load: a valid config swaps in
//! (counters of unchanged rules survive), an invalid one is refused and the
//! old one keeps serving, a symlink swap (the Kubernetes ConfigMap
//! pattern) and SIGHUP reload too; no request fails meanwhile.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_testkit::{avoid_window_edge, metric, tenant_request, Signal, Tollgate};

fn config(limit: u64) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = {{ requests = {limit}, per = "hour" }}

[[rule]]
domain = "load"
match = ["tenant"]
limit = {{ requests = 1000000000, per = "hour" }}
"#
    )
}

fn version(t: &Tollgate) -> String {
    let (_, body) = t.admin_get("/config");
    let v: serde_json::Value = serde_json::from_str(&body).expect("config json");
    v["version"].as_str().expect("version").to_string()
}

fn wait_version(t: &Tollgate, not: &str) -> String {
    let start = Instant::now();
    loop {
        let v = version(t);
        if v != not {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "config not reloaded: {}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

// Multi-threaded: the test's own waits block a thread while the load runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(30));
    let mut t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(3));
    let url = format!("http://{}", t.grpc_addr());
    let mut client = RateLimitServiceClient::connect(url).await.expect("connect");

    // Steady load on another domain for the whole test: every call must
    // get an answer.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        let mut c = client.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.should_rate_limit(tenant_request("load", "x")).await {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let remaining = |r: tonic::Response<
        envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse,
    >| { r.into_inner().statuses[0].limit_remaining };
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        2
    );
    let v1 = version(&t);

    // A valid edit: the limit goes 3 → 5; tenant a's counter (1 used) survives.
    std::fs::write(t.config_path(), config(5)).unwrap();
    let v2 = wait_version(&t, &v1);
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        3,
        "5 - 2 used"
    );

    // An invalid edit is refused: same version, the 5 limit still applies.
    std::fs::write(t.config_path(), "[[rule]]\ndomain = \"edge\"\nmatch = [\"tenant\"]\nlimit = { requests = 5, per = \"fortnight\" }\n").unwrap();
    let start = Instant::now();
    while metric(
        &t.metrics(),
        "tollgate_config_reloads_total",
        &[("result", "refused")],
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "refusal not counted: {}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(version(&t), v2);
    assert!(
        t.log_text().contains("limit.per"),
        "the log names the field: {}",
        t.log_text()
    );
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        2
    );

    // The ConfigMap pattern: the config path is a symlink, swapped atomically.
    let dir = t.config_path().parent().unwrap().to_path_buf();
    for (name, limit) in [("v1.toml.d", 7), ("v2.toml.d", 9)] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("config"), config(limit)).unwrap();
    }
    let link = |target: &str| {
        let tmp = dir.join("link.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(dir.join(target).join("config"), &tmp).unwrap();
        std::fs::rename(&tmp, t.config_path()).unwrap();
    };
    link("v1.toml.d");
    let v3 = wait_version(&t, &v2);
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        3,
        "7 - 4 used"
    );
    link("v2.toml.d");
    let v4 = wait_version(&t, &v3);
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        4,
        "9 - 5 used"
    );

    // SIGHUP reloads too (here the target of the symlink is edited in
    // place; the signal must be enough on its own).
    std::fs::write(dir.join("v2.toml.d").join("config"), config(11)).unwrap();
    t.signal(Signal::SIGHUP);
    wait_version(&t, &v4);
    assert_eq!(
        remaining(
            client
                .should_rate_limit(tenant_request("edge", "a"))
                .await
                .unwrap()
        ),
        5,
        "11 - 6 used"
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during reloads"
    );
    assert!(answered.load(Ordering::Relaxed) > 100, "the load ran");
    let m = t.metrics();
    assert!(
        metric(&m, "tollgate_config_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 4.0,
        "{m}"
    );
}

/// One edit is one reload: reading the config (as every reload does) must
/// not look like a change, and neither must a log file written beside it.
/// Before the fix, the watcher saw the reload's own open of the file as an
/// edit and re-read it every 200 ms forever (17% of a core with 10,000
/// rules), and an invalid config logged "config refused" five times a
/// second.
#[test]
fn one_edit_is_one_reload_and_reading_is_not_an_edit() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(3));
    let dir = t.config_path().parent().unwrap().to_path_buf();
    // (tollgate's own log, tollgate.log, is written in the same directory.)
    let beside = dir.join("app.log");
    let scribble = |n: usize| {
        for i in 0..n {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&beside)
                .unwrap();
            writeln!(f, "line {i}").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let v1 = version(&t);
    std::fs::write(t.config_path(), config(5)).unwrap();
    wait_version(&t, &v1);
    // Ten seconds of other files changing beside the config.
    scribble(100);
    let m = t.metrics();
    let count = |result: &str| {
        metric(&m, "tollgate_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
    };
    assert_eq!(count("ok"), 1.0, "{m}");
    assert_eq!(count("unchanged"), 0.0, "the config was re-read: {m}");
    assert_eq!(count("refused"), 0.0, "{m}");

    // An invalid config left in place is refused once, not every 200 ms.
    std::fs::write(t.config_path(), "[[rule]]\ndomain = \"edge\"\nmatch = [\"tenant\"]\nlimit = { requests = 5, per = \"fortnight\" }\n").unwrap();
    scribble(100);
    let refused = t.log_text().matches("config refused").count();
    assert_eq!(refused, 1, "{}", t.log_text());
    let m = t.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "refused")]
        ),
        Some(1.0),
        "{m}"
    );
}
