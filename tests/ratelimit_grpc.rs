//! The rate limit service over gRPC, straight to the real binary: bad
//! requests get INVALID_ARGUMENT (and the server keeps serving), an unknown
//! domain is OK, health is SERVING, statuses carry what Envoy needs.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, Signal, Tollgate};
use tonic::Code as Status;

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[rule]]
domain = "edge"
match = ["tenant"]
limits = [{ requests = 3, per = "minute" }, { requests = 100, per = "hour", algorithm = "token_bucket" }]
"#;

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

#[tokio::test]
async fn bad_requests_unknown_domains_and_statuses() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(5));
    let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let url = format!("http://{}", tollgate.grpc_addr());
    let mut client = RateLimitServiceClient::connect(url.clone())
        .await
        .expect("connect");

    for (what, req) in [
        (
            "empty domain",
            request("", vec![descriptor(&[("tenant", "a")])]),
        ),
        ("no descriptors", request("edge", vec![])),
        ("empty descriptor", request("edge", vec![descriptor(&[])])),
        ("empty key", request("edge", vec![descriptor(&[("", "a")])])),
        (
            "huge value",
            request("edge", vec![descriptor(&[("tenant", &"x".repeat(5000))])]),
        ),
    ] {
        let err = client.should_rate_limit(req).await.expect_err(what);
        assert_eq!(err.code(), Status::InvalidArgument, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what} has a reason");
    }

    let ok = client
        .should_rate_limit(request(
            "nobody-configured-this",
            vec![descriptor(&[("tenant", "a")])],
        ))
        .await
        .expect("unknown domain answers")
        .into_inner();
    assert_eq!(ok.overall_code, Code::Ok as i32);

    // The status reports the tightest limit with what Envoy needs for headers.
    let r = client
        .should_rate_limit(request("edge", vec![descriptor(&[("tenant", "a")])]))
        .await
        .expect("answer")
        .into_inner();
    let s = &r.statuses[0];
    assert_eq!(s.code, Code::Ok as i32);
    assert_eq!(s.limit_remaining, 2);
    assert_eq!(
        s.current_limit.as_ref().expect("limit").requests_per_unit,
        3
    );
    assert!(s.duration_until_reset.as_ref().expect("reset").seconds <= 60);

    // A descriptor-level hits_addend of 0 checks without taking.
    let mut check = descriptor(&[("tenant", "a")]);
    check.hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        let r = client
            .should_rate_limit(request("edge", vec![check.clone()]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.statuses[0].limit_remaining, 2);
    }

    // Health: SERVING, and the server still answers after the bad requests.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(!tollgate.log_text().contains("panicked"));
}

/// SIGTERM: stop accepting, drain, exit 0 within the grace period.
/// (Multi-threaded: the client's connection must keep running to see the
/// server's GOAWAY while this thread waits for the exit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits() {
    let config = format!("{CONFIG}\n").replace("[server]\n", "[server]\nshutdown_grace = \"2s\"\n");
    let mut tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config);
    let mut client = RateLimitServiceClient::connect(format!("http://{}", tollgate.grpc_addr()))
        .await
        .expect("connect");
    client
        .should_rate_limit(request("edge", vec![descriptor(&[("tenant", "s")])]))
        .await
        .expect("answer before shutdown");
    drop(client);
    tollgate.signal(Signal::SIGTERM);
    let status = tollgate.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        tollgate.log_text()
    );
    assert!(tollgate.log_text().contains("shutting down"));
    assert!(
        !tollgate.log_text().contains("grace period over"),
        "drained cleanly: {}",
        tollgate.log_text()
    );
}
