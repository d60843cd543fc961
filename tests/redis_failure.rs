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
