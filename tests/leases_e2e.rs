//! Leases with real processes: several tollgate instances on one real
//! redis-server (and a real 3-node Redis Cluster), a budget shared through
//! slices each instance decides from locally.
//!
//! * A concurrent burst through all instances admits exactly the limit.
//! * A SIGKILLed instance strands at most what its slices held unused; all
//!   the rest stays usable by the others.
//! * A joining instance is counted by the registry, and the slices the
//!   others take shrink; Redis never holds more granted than the limit.
//! * Redis down: instances decide from the slices they hold, then by
//!   `on_error`; `local` enforces the share (limit / live instances). Redis
//!   back: slices resume without a restart.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use std::time::{Duration, Instant};
use tollgate_testkit::{
    avoid_window_edge, metric, tenant_request, wait_until, RedisCluster, RedisServer, Tollgate,
};
use tonic::transport::Channel;

fn config(urls: &str, cluster: bool) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

# Generous: four debug builds answering 4000 requests at once on a loaded
# 2-core machine; a timed-out call is answered by on_error (a denial), and
# this suite is about exact counts, not latency (redis_failure is).
[store]
kind = "redis"
url = "{urls}"
cluster = {cluster}
timeout = "5s"
connect_timeout = "2s"

[leases]
enabled = true
ttl = "2s"
heartbeat = "300ms"
evict_after = "1s"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = {{ requests = 1000, per = "hour" }}

[[rule]]
domain = "local"
match = ["tenant"]
limit = {{ requests = 100, per = "hour" }}
on_error = "local"
lease = false
"#
    )
}

async fn client(t: &Tollgate) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .expect("connect")
}

/// Sends `n` requests for `tenant` concurrently through `clients` in turn;
/// returns how many were admitted (an RPC error counts as not).
async fn burst(
    clients: &[RateLimitServiceClient<Channel>],
    domain: &str,
    tenant: &str,
    n: usize,
) -> usize {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = clients[i % clients.len()].clone();
        let req = tenant_request(domain, tenant);
        tasks.push(tokio::spawn(async move {
            c.should_rate_limit(req)
                .await
                .map(|r| r.into_inner().overall_code == Code::Ok as i32)
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(ok) => admitted += usize::from(ok),
            Err(e) => panic!("a request failed: {e}"),
        }
    }
    admitted
}

/// What an instance's slices hold unused now: granted, less given back,
/// less used (these counters move with each decision; the held gauge only
/// every TTL/2).
fn held(t: &Tollgate) -> usize {
    let m = t.metrics();
    let get = |family: &str, labels: &[(&str, &str)]| metric(&m, family, labels).unwrap_or(0.0);
    (get("tollgate_lease_granted_total", &[])
        - get("tollgate_lease_returned_total", &[])
        - get("tollgate_lease_decisions_total", &[("by", "lease")])) as usize
}

fn live_instances(t: &Tollgate) -> f64 {
    metric(&t.metrics(), "tollgate_instances", &[]).unwrap_or(0.0)
}

fn start(n: usize, config: &str) -> Vec<Tollgate> {
    let all: Vec<Tollgate> = (0..n)
        .map(|_| Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), config))
        .collect();
    wait_until("every instance registered", Duration::from_secs(10), || {
        all.iter().all(|t| live_instances(t) == n as f64)
    });
    all
}

async fn exactly_the_limit(config: &str) {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(120));
    let instances = start(4, config);
    let mut clients = Vec::new();
    for t in &instances {
        clients.push(client(t).await);
    }
    for run in 0..3 {
        let tenant = format!("burst-{run}");
        let admitted = burst(&clients, "edge", &tenant, 4_000).await;
        eprintln!("run {run}: {admitted} of 4000 admitted on a 1000/hour budget");
        for t in &instances {
            let m = t.metrics();
            let get = |f: &str, l: &[(&str, &str)]| metric(&m, f, l).unwrap_or(0.0);
            eprintln!(
                "  held {} granted {} grants {} returned {} by lease {} by store {} store errors {}",
                get("tollgate_lease_held", &[]),
                get("tollgate_lease_granted_total", &[]),
                get("tollgate_lease_grants_total", &[]),
                get("tollgate_lease_returned_total", &[]),
                get("tollgate_lease_decisions_total", &[("by", "lease")]),
                get("tollgate_lease_decisions_total", &[("by", "store")]),
                get("tollgate_store_errors_total", &[]),
            );
            for l in m.lines().filter(|l| {
                l.starts_with("tollgate_store_errors_total")
                    || l.starts_with("tollgate_store_circuit_opens_total")
            }) {
                eprintln!("    {l}");
            }
        }
        assert_eq!(admitted, 1_000, "run {run}");
    }
    let decided: f64 = instances
        .iter()
        .map(|t| {
            metric(
                &t.metrics(),
                "tollgate_lease_decisions_total",
                &[("by", "lease")],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(decided > 2_000.0, "most decided from slices: {decided}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    exactly_the_limit(&config(&redis.url(), false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_a_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start(3);
    exactly_the_limit(&config(&cluster.urls().join(","), true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_strands_at_most_what_it_held() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(120));
    let redis = RedisServer::start();
    let mut instances = start(4, &config(&redis.url(), false));
    let mut victim = client(&instances[0]).await;
    let mut admitted = 0;
    for _ in 0..100 {
        let r = victim
            .should_rate_limit(tenant_request("edge", "kill"))
            .await;
        admitted += usize::from(r.unwrap().into_inner().overall_code == Code::Ok as i32);
    }
    let held = held(&instances[0]);
    instances[0].kill();
    let others = instances.split_off(1);
    let mut clients = Vec::new();
    for t in &others {
        clients.push(client(t).await);
    }
    let after = burst(&clients, "edge", "kill", 2_000).await;
    let stranded = 1_000 - admitted - after;
    eprintln!(
        "the killed instance admitted {admitted} and held {held} unused; the others admitted {after}; stranded: {stranded}"
    );
    assert_eq!(admitted, 100);
    assert_eq!(stranded, held, "exactly what it held is lost, nothing else");
    assert!(held <= 50, "at most one slice (max_slice = 5% of 1000)");
    wait_until("the dead instance evicted", Duration::from_secs(5), || {
        others.iter().all(|t| live_instances(t) == 3.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_instance_shrinks_the_slices_and_redis_never_grants_more_than_the_limit() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(120));
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), false);
    let mut instances = start(4, &cfg);
    let mut clients = Vec::new();
    for t in &instances {
        clients.push(client(t).await);
    }
    assert_eq!(burst(&clients, "edge", "scale", 400).await, 400);
    instances.push(Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &cfg));
    wait_until("five instances", Duration::from_secs(10), || {
        instances.iter().all(|t| live_instances(t) == 5.0)
    });
    clients.push(client(&instances[4]).await);
    let admitted = burst(&clients, "edge", "scale", 2_000).await;
    assert_eq!(admitted, 600, "the rest of the 1000, exactly");
    // What was granted and not given back is in Redis's count: never more
    // than the limit.
    let net: f64 = instances
        .iter()
        .map(|t| {
            let m = t.metrics();
            metric(&m, "tollgate_lease_granted_total", &[]).unwrap_or(0.0)
                - metric(&m, "tollgate_lease_returned_total", &[]).unwrap_or(0.0)
        })
        .sum();
    assert!(net <= 1_000.0, "granted and not returned: {net}");
    // Every key of the rule: none above the limit.
    for key in redis.cli(&["--scan", "--pattern", "tg:*"]).lines() {
        let v = redis.cli(&["GET", key]);
        if let Ok(n) = v.trim().parse::<u64>() {
            assert!(n <= 1_000, "{key} = {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_slices_then_on_error_decide_and_local_enforces_the_share() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(120));
    let mut redis = RedisServer::start();
    let instances = start(2, &config(&redis.url(), false));
    let mut clients = Vec::new();
    for t in &instances {
        clients.push(client(t).await);
    }
    assert_eq!(burst(&clients, "edge", "down", 40).await, 40);
    let held: usize = instances.iter().map(held).sum();
    assert!(held > 0, "slices are held");
    redis.kill();
    let started = Instant::now();
    let admitted = burst(&clients, "edge", "down", 500).await;
    eprintln!(
        "Redis down: {admitted} admitted from {held} held, in {:?}",
        started.elapsed()
    );
    assert_eq!(admitted, held, "what the slices held, then fail_closed");
    // `local`: each of the 2 instances enforces 100 / 2 = 50 meanwhile.
    let mut per_instance = Vec::new();
    for c in &clients {
        per_instance.push(burst(std::slice::from_ref(c), "local", "down", 80).await);
    }
    assert_eq!(per_instance, [50, 50], "the share, not the whole limit");
    redis.restart();
    wait_until(
        "decisions from Redis again",
        Duration::from_secs(15),
        || instances.iter().all(|t| t.admin_get("/readyz").0 == 200),
    );
    let back = burst(&clients, "edge", "back", 100).await;
    assert_eq!(back, 100, "slices resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_this_instance_and_the_live_count() {
    let redis = RedisServer::start();
    let instances = start(2, &config(&redis.url(), false));
    let (_, body) = instances[0].admin_get("/config");
    let c: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(c["instance"]["live"], 2, "{body}");
    let id = c["instance"]["id"].as_str().expect("an id").to_string();
    assert!(!id.is_empty());
    let m = instances[0].metrics();
    assert!(
        m.contains(&format!("tollgate_instance_info{{id=\"{id}\"}} 1")),
        "{m}"
    );
    assert_eq!(c["leases"]["by_default"], true);
}
