//! Redis dies under load: every answer follows its rule's `on_error` at
//! once (no request waits on the dead Redis), `/readyz` says so; Redis
//! comes back: normal answers resume without restarting tollgate.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::time::{Duration, Instant};
use tollgate_testkit::{avoid_window_edge, metric, RedisServer, Tollgate};
use tonic::transport::Channel;

/// The longest any answer may take while Redis is down: the configured
/// store timeout (50 ms) plus scheduling slack on a busy 2-core machine.
const BOUND: Duration = Duration::from_millis(250);

fn config(redis: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
url = "{redis}"
timeout = "50ms"
connect_timeout = "100ms"

[[rule]]
domain = "open"
match = ["tenant"]
limit = {{ requests = 1000, per = "hour" }}
on_error = "fail_open"

[[rule]]
domain = "closed"
match = ["tenant"]
limit = {{ requests = 1000, per = "hour" }}
on_error = "fail_closed"

[[rule]]
domain = "local"
match = ["tenant"]
limit = {{ requests = 5, per = "hour" }}
on_error = "local"
"#
    )
}

async fn ask(c: &mut RateLimitServiceClient<Channel>, domain: &str) -> (Code, Duration) {
    let req = RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: "a".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let start = Instant::now();
    let r = c
        .should_rate_limit(req)
        .await
        .expect("an answer, never an error");
    let code = Code::try_from(r.into_inner().overall_code).expect("code");
    (code, start.elapsed())
}

fn readyz(t: &Tollgate) -> u16 {
    t.admin_get("/readyz").0
}

fn wait(what: &str, t: &Tollgate, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_policies_while_redis_is_down_and_recovery() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(60));
    let mut redis = RedisServer::start();
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    for d in ["open", "closed", "local"] {
        assert_eq!(ask(&mut c, d).await.0, Code::Ok, "{d} with Redis up");
    }
    wait("ready with Redis up", &t, || readyz(&t) == 200);

    redis.kill();
    // Steady load for two seconds: every answer by policy, none slow.
    let mut local_ok = 0;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while Instant::now() < until {
        let (open, a) = ask(&mut c, "open").await;
        let (closed, b) = ask(&mut c, "closed").await;
        let (local, l) = ask(&mut c, "local").await;
        assert_eq!(open, Code::Ok, "fail_open allows");
        assert_eq!(closed, Code::OverLimit, "fail_closed denies");
        if local == Code::Ok {
            local_ok += 1;
        }
        slowest = slowest.max(a).max(b).max(l);
        n += 1;
    }
    eprintln!("slowest answer while Redis was down: {slowest:?} over {n} rounds of 3 calls");
    assert!(n > 10, "the load ran ({n} rounds)");
    assert!(
        slowest <= BOUND,
        "an answer waited {slowest:?} on the dead Redis"
    );
    assert_eq!(
        local_ok, 5,
        "local: this instance's own 5 per hour while Redis is down"
    );
    wait("/readyz reports the dead store", &t, || readyz(&t) == 503);
    assert_eq!(metric(&t.metrics(), "tollgate_store_up", &[]), Some(0.0));

    redis.restart();
    wait("answers from Redis again", &t, || readyz(&t) == 200);
    let start = Instant::now();
    loop {
        if ask(&mut c, "closed").await.0 == Code::Ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "fail_closed still denying: {}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&t.metrics(), "tollgate_store_up", &[]), Some(1.0));
    assert!(
        t.log_text().contains("circuit open"),
        "the log says what happened"
    );
}

/// tollgate starts while Redis is down, and uses it once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_redis_down() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&url));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    assert_eq!(ask(&mut c, "closed").await.0, Code::OverLimit);
    assert_eq!(ask(&mut c, "open").await.0, Code::Ok);
    redis.restart();
    wait("ready once Redis is up", &t, || readyz(&t) == 200);
    assert_eq!(ask(&mut c, "closed").await.0, Code::Ok);
}

/// The same on a 3-node Redis Cluster (the rules' keys spread over slots):
/// a node dies under load, every answer comes at once (from the store, or
/// by policy), and after the node returns normal answers resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_dies_and_returns() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(60));
    let mut cluster = tollgate_testkit::RedisCluster::start(3);
    let urls = cluster.urls().join(",");
    let config = config(&urls).replace("kind = \"redis\"", "kind = \"redis\"\ncluster = true");
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config);
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    // The connection to the cluster is made in the background: on a busy
    // machine the first calls may come before it (and be answered by
    // policy). Up means answered by the store.
    let connected = Instant::now() + Duration::from_secs(10);
    while ask(&mut c, "closed").await.0 != Code::Ok && Instant::now() < connected {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in ["open", "closed", "local"] {
        assert_eq!(ask(&mut c, d).await.0, Code::Ok, "{d} with the cluster up");
    }
    cluster.kill_node(0);
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (open, a) = ask(&mut c, "open").await;
        let (_, b) = ask(&mut c, "closed").await;
        assert_eq!(open, Code::Ok, "fail_open allows");
        slowest = slowest.max(a).max(b);
    }
    eprintln!("slowest answer with a cluster node down: {slowest:?}");
    assert!(
        slowest <= BOUND,
        "an answer waited {slowest:?} on the dead node"
    );
    cluster.restart_node(0);
    let start = Instant::now();
    loop {
        let ok = ask(&mut c, "closed").await.0 == Code::Ok && readyz(&t) == 200;
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no recovery: {}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A "Redis" that accepts TCP connections and never answers (a store
/// wedged during an incident). Counts the connections it accepted and the
/// most it held open at once; the connections close when the client gives
/// up on them.
struct SilentRedis {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<(usize, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRedis {
    fn start() -> SilentRedis {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let (s, n) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                while let Ok((c, _)) = listener.accept() {
                    let _ = c.set_nonblocking(true);
                    open.push(c);
                    n.lock().unwrap().0 += 1;
                }
                // Read (and drop) what the client sends; never answer.
                open.retain_mut(|c| match c.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
                let mut g = n.lock().unwrap();
                g.1 = g.1.max(open.len());
                drop(g);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        SilentRedis {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// (connections accepted, most open at once)
    fn seen(&self) -> (usize, usize) {
        *self.seen.lock().unwrap()
    }
}

impl Drop for SilentRedis {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n` requests at once on one connection; the slowest answer and the codes.
async fn burst(
    c: &RateLimitServiceClient<Channel>,
    domain: &str,
    n: usize,
) -> (Duration, Vec<Code>) {
    let calls = (0..n).map(|_| {
        let mut c = c.clone();
        let domain = domain.to_string();
        tokio::spawn(async move { ask(&mut c, &domain).await })
    });
    let mut slowest = Duration::ZERO;
    let mut codes = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let (code, took) = call.await.expect("task");
        slowest = slowest.max(took);
        codes.push(code);
    }
    (slowest, codes)
}

/// Redis accepts TCP but never answers, and tollgate has no connection
/// yet (start-up during an incident): 40 requests at once each answer by
/// policy within the store timeout; connection attempts go one at a time
/// in the background, not one per request in turn (issue 18, defect 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_waits_on_a_connection_attempt() {
    let silent = SilentRedis::start();
    let url = format!("redis://127.0.0.1:{}", silent.port);
    let config = config(&url).replace("connect_timeout = \"100ms\"", "connect_timeout = \"500ms\"");
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config);
    let c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    let started = Instant::now();
    let (first, codes) = burst(&c, "closed", 40).await;
    eprintln!(
        "40 concurrent requests, no connection yet, silent Redis: slowest {first:?}, all done after {:?}",
        started.elapsed()
    );
    assert!(
        codes.iter().all(|c| *c == Code::OverLimit),
        "fail_closed answers: {codes:?}"
    );
    // Again while the first attempts are still hanging, and later, once
    // the breaker has opened and probes.
    let (second, _) = burst(&c, "open", 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (third, codes) = burst(&c, "open", 40).await;
    assert!(codes.iter().all(|c| *c == Code::Ok), "fail_open answers");
    let (accepted, most_open) = silent.seen();
    eprintln!(
        "then slowest {second:?} and {third:?}; the silent Redis saw {accepted} connections, at most {most_open} open at once"
    );
    for (wave, slowest) in [("first", first), ("second", second), ("third", third)] {
        assert!(
            slowest <= BOUND,
            "{wave} wave: an answer waited {slowest:?} on a connection attempt: {}",
            t.log_text()
        );
    }
    // One attempt at a time for decisions, one for the freed-capacity
    // subscription.
    assert!(most_open <= 2, "{most_open} connection attempts at once");
    wait("/readyz reports the silent store", &t, || readyz(&t) == 503);
}

/// Store lines (the breaker's and the Redis client's, not the engine's
/// per-decision line) in a log text.
fn store_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("tollgate::store"))
        .collect()
}

/// Redis answers, but refuses every write: with OOM (`maxmemory 1`,
/// `noeviction`), then with READONLY (made a replica of a master that is
/// not there). That is an outage, not a healthy store: the circuit opens,
/// `/readyz` says 503, `tollgate_store_up` 0, the errors are counted by
/// what Redis said, and once Redis takes writes again everything recovers
/// (issue 18, defect 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_opens_the_circuit() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(60));
    let redis = RedisServer::start();
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    assert_eq!(ask(&mut c, "closed").await.0, Code::Ok);
    wait("ready with Redis up", &t, || readyz(&t) == 200);
    let nowhere = tollgate_testkit::free_port().to_string();
    // (Redis's code, the metric's kind, commands that break, that mend)
    type Commands<'a> = Vec<Vec<&'a str>>;
    let conditions: [(&str, &str, Commands, Commands); 2] = [
        (
            "OOM",
            "oom",
            vec![
                vec!["CONFIG", "SET", "maxmemory-policy", "noeviction"],
                vec!["CONFIG", "SET", "maxmemory", "1"],
            ],
            vec![vec!["CONFIG", "SET", "maxmemory", "0"]],
        ),
        (
            "READONLY",
            "readonly",
            vec![vec!["REPLICAOF", "127.0.0.1", &nowhere]],
            vec![vec!["REPLICAOF", "NO", "ONE"]],
        ),
    ];
    for (code, kind, break_it, mend_it) in conditions {
        for cmd in &break_it {
            assert_eq!(redis.cli(cmd), "OK", "{cmd:?}");
        }
        let log_before = t.log_text().lines().count();
        let until = Instant::now() + Duration::from_secs(3);
        let mut slowest = Duration::ZERO;
        let mut first_503 = None;
        let started = Instant::now();
        while Instant::now() < until {
            let (answer, took) = ask(&mut c, "closed").await;
            assert_eq!(
                answer,
                Code::OverLimit,
                "{code}: fail_closed while Redis refuses writes"
            );
            slowest = slowest.max(took);
            if first_503.is_none() && readyz(&t) == 503 {
                first_503 = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = t.metrics();
        let log = t.log_text();
        let new_lines: Vec<&str> = log.lines().skip(log_before).collect();
        let store = store_lines(&new_lines.join("\n")).len();
        eprintln!(
            "{code}: /readyz 503 after {first_503:?}, slowest answer {slowest:?}, store_up {:?}, errors{{kind={kind}}} {:?}, {store} store log lines in 3 s",
            metric(&metrics, "tollgate_store_up", &[]),
            metric(&metrics, "tollgate_store_errors_total", &[("kind", kind)]),
        );
        assert!(
            first_503.is_some(),
            "{code}: /readyz said 200 throughout: {log}"
        );
        assert_eq!(
            readyz(&t),
            503,
            "{code}: and stays 503 while Redis refuses writes"
        );
        assert_eq!(
            metric(&metrics, "tollgate_store_up", &[]),
            Some(0.0),
            "{code}"
        );
        assert!(
            metric(&metrics, "tollgate_store_errors_total", &[("kind", kind)]).unwrap_or(0.0)
                >= 3.0,
            "{code}: counted as {kind}"
        );
        assert!(
            new_lines
                .iter()
                .any(|l| l.contains("circuit open") && l.contains(code)),
            "{code}: the log says the circuit opened, and why: {log}"
        );
        assert!(store <= 3, "{code}: {store} store lines in 3 s: {log}");
        assert!(slowest <= BOUND, "{code}: an answer waited {slowest:?}");

        for cmd in &mend_it {
            assert_eq!(redis.cli(cmd), "OK", "{cmd:?}");
        }
        wait("ready once Redis takes writes", &t, || readyz(&t) == 200);
        let start = Instant::now();
        while ask(&mut c, "closed").await.0 != Code::Ok {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{code}: no recovery: {}",
                t.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        metric(&t.metrics(), "tollgate_store_circuit_opens_total", &[]),
        Some(2.0)
    );
}

/// A call Redis rejects because of what was sent (here a key of another
/// type where a counter should be, so the script fails with WRONGTYPE) is
/// not an outage: the circuit stays closed and other tenants are decided
/// from Redis, but the failures are counted and logged, once and then as
/// a summary (issue 18, defect 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_call_is_counted_and_logged_but_is_no_outage() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(60));
    let redis = RedisServer::start();
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    let tenant = |v: &str| RateLimitRequest {
        domain: "closed".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: v.into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let code = |r: tonic::Response<
        envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse,
    >| { Code::try_from(r.into_inner().overall_code).expect("code") };
    assert_eq!(
        code(c.should_rate_limit(tenant("bad")).await.unwrap()),
        Code::Ok
    );
    let keys = redis.cli(&["--scan", "--pattern", "tg:*"]);
    let key = keys
        .lines()
        .find(|k| k.contains("bad"))
        .expect("the counter of tenant bad");
    redis.cli(&["DEL", key]);
    assert_eq!(redis.cli(&["HSET", key, "not", "a counter"]), "1");
    wait("ready", &t, || readyz(&t) == 200);

    for i in 0..60 {
        assert_eq!(
            code(c.should_rate_limit(tenant("bad")).await.unwrap()),
            Code::OverLimit,
            "fail_closed for the broken key"
        );
        assert_eq!(
            code(c.should_rate_limit(tenant("good")).await.unwrap()),
            Code::Ok,
            "request {i}: other tenants are decided from Redis"
        );
    }
    assert_eq!(readyz(&t), 200, "not an outage");
    let metrics = t.metrics();
    assert_eq!(metric(&metrics, "tollgate_store_up", &[]), Some(1.0));
    let counted = metric(
        &metrics,
        "tollgate_store_errors_total",
        &[("kind", "protocol")],
    );
    let log = t.log_text();
    let rejected: Vec<&str> = store_lines(&log)
        .into_iter()
        .filter(|l| l.contains("WRONGTYPE"))
        .collect();
    eprintln!(
        "60 rejected calls: counted {counted:?}, {} store log lines: {rejected:?}",
        rejected.len()
    );
    assert_eq!(counted, Some(60.0));
    assert_eq!(rejected.len(), 1, "logged once, then summarised: {log}");
    assert!(!log.contains("circuit open"), "{log}");
}

/// When a log line was written (its RFC 3339 UTC timestamp).
fn log_time(line: &str) -> Option<std::time::SystemTime> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// Kills Redis and polls `/readyz` and `/metrics` every 10 ms until
/// `/readyz` says 503. `traffic`: one fail_closed request every 500 ms in
/// the background (light traffic), or none. Returns (kill → 503,
/// circuit-open log line → 503, first failed decision → 503).
async fn readiness_lag(traffic: bool) -> (Duration, Option<Duration>, Option<Duration>) {
    use std::time::SystemTime;
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(60));
    let mut redis = RedisServer::start();
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .unwrap();
    assert_eq!(ask(&mut c, "closed").await.0, Code::Ok);
    wait("ready with Redis up", &t, || readyz(&t) == 200);
    let first_failure = std::sync::Arc::new(std::sync::Mutex::new(None::<SystemTime>));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic.then(|| {
        let (first_failure, stop, mut c) = (first_failure.clone(), stop.clone(), c.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if ask(&mut c, "closed").await.0 == Code::OverLimit {
                    first_failure
                        .lock()
                        .unwrap()
                        .get_or_insert_with(SystemTime::now);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed = SystemTime::now();
    redis.kill();
    let not_ready = loop {
        let status = tokio::task::block_in_place(|| readyz(&t));
        if status == 503 {
            break SystemTime::now();
        }
        assert!(
            killed.elapsed().unwrap() < Duration::from_secs(10),
            "never 503: {}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(load) = load {
        let _ = load.await;
    }
    let opened = t
        .log_text()
        .lines()
        .find(|l| l.contains("circuit open"))
        .and_then(log_time);
    let lag = |from: Option<SystemTime>| {
        from.map(|f| not_ready.duration_since(f).unwrap_or(Duration::ZERO))
    };
    let failed = *first_failure.lock().unwrap();
    (
        not_ready.duration_since(killed).unwrap_or_default(),
        lag(opened),
        lag(failed),
    )
}

/// `/readyz` follows the circuit at once: with no traffic, within the 1 s
/// ping (and a few store timeouts) of Redis dying; under light traffic,
/// as soon as decisions fail (issue 12, defect 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_circuit_at_once() {
    let (idle, idle_open, _) = readiness_lag(false).await;
    eprintln!("no traffic: Redis killed → /readyz 503 after {idle:?} (circuit-open line → 503: {idle_open:?})");
    let (busy, busy_open, busy_failed) = readiness_lag(true).await;
    eprintln!(
        "light traffic: Redis killed → 503 after {busy:?}; circuit-open line → 503: {busy_open:?}; first failed decision → 503: {busy_failed:?}"
    );
    assert!(
        idle <= Duration::from_millis(1000) + 3 * Duration::from_millis(50) + BOUND,
        "no traffic: 503 only {idle:?} after Redis died"
    );
    // The breaker's confirmation: at most two more store timeouts.
    let prompt = 3 * Duration::from_millis(50) + Duration::from_millis(100);
    for (what, lag) in [
        ("no traffic, circuit-open line", idle_open),
        ("light traffic, circuit-open line", busy_open),
        ("light traffic, first failed decision", busy_failed),
    ] {
        let lag = lag.unwrap_or_else(|| panic!("{what}: not seen"));
        assert!(lag <= prompt, "{what} → /readyz 503 took {lag:?}");
    }
}
