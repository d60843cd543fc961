//! Redis behind a password, an ACL user, and TLS, against real
//! `redis-server`s: with the right credentials (or certificates) tollgate
//! decides from Redis, which two instances prove by sharing one budget;
//! with wrong ones it answers by `on_error`, `/readyz` says 503 and the log
//! says why, without the password.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, wait_until, Pki, RedisServer, Tollgate};

const ADMIN_PASSWORD: &str = "admin-Pw-7c1f";
const APP_PASSWORD: &str = "app-Pw-52ad";
const WRONG_PASSWORD: &str = "wrong-Pw-e09b";

/// `[store]` lines, then a budget of 4 per hour on `shared` (fail_open: a
/// denial can only come from the counter in Redis) and a fail_closed rule.
fn config(store: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
timeout = "200ms"
connect_timeout = "1s"
{store}

[[rule]]
domain = "shared"
match = ["tenant"]
limit = {{ requests = 4, per = "hour" }}
on_error = "fail_open"

[[rule]]
domain = "closed"
match = ["tenant"]
limit = {{ requests = 1000, per = "hour" }}
on_error = "fail_closed"
"#
    )
}

async fn ask(t: &Tollgate, domain: &str) -> Code {
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .expect("connect");
    let req = RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: "acme".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let reply = c.should_rate_limit(req).await.expect("an answer");
    Code::try_from(reply.into_inner().overall_code).expect("code")
}

fn wait_ready(t: &Tollgate, want: u16) {
    wait_until(
        &format!("/readyz {want}; log:\n{}", t.log_text()),
        Duration::from_secs(10),
        || t.admin_get("/readyz").0 == want,
    );
}

/// Two instances take 2 each of the 4-per-hour budget; then both are
/// denied: the counter lives in Redis.
async fn share_one_budget(a: &Tollgate, b: &Tollgate) {
    wait_ready(a, 200);
    wait_ready(b, 200);
    for t in [a, a, b, b] {
        assert_eq!(ask(t, "shared").await, Code::Ok);
    }
    assert_eq!(ask(a, "shared").await, Code::OverLimit, "{}", a.log_text());
    assert_eq!(ask(b, "shared").await, Code::OverLimit, "{}", b.log_text());
    assert_eq!(ask(a, "closed").await, Code::Ok);
}

fn assert_no_secret(t: &Tollgate, secrets: &[&str]) {
    let log = t.log_text();
    for s in secrets {
        assert!(!log.contains(s), "the log shows a password:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_decide_from_redis_and_wrong_ones_fail_by_policy() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(30));
    let redis = RedisServer::start_with_password(ADMIN_PASSWORD);
    // An ACL user limited to tollgate's keys.
    let ok = redis.cli(&[
        "ACL",
        "SETUSER",
        "tollgate",
        "on",
        &format!(">{APP_PASSWORD}"),
        "~tg:*",
        "+@all",
    ]);
    assert_eq!(ok, "OK");
    let port = redis.port();
    let bin = env!("CARGO_BIN_EXE_tollgate");

    // `requirepass` (the default user) on one instance, the ACL user on
    // the other: the same counters.
    let a = Tollgate::start(
        bin,
        &config(&format!(
            "url = \"redis://:{ADMIN_PASSWORD}@127.0.0.1:{port}\""
        )),
    );
    let b = Tollgate::start(
        bin,
        &config(&format!(
            "url = \"redis://tollgate:{APP_PASSWORD}@127.0.0.1:{port}\""
        )),
    );
    share_one_budget(&a, &b).await;
    let keys = redis.cli(&["--scan", "--pattern", "tg:*"]);
    assert!(!keys.is_empty(), "counters are in Redis");
    for t in [&a, &b] {
        assert_no_secret(t, &[ADMIN_PASSWORD, APP_PASSWORD]);
    }

    // A wrong password, and none at all.
    for url in [
        format!("redis://tollgate:{WRONG_PASSWORD}@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let bad = Tollgate::start(bin, &config(&format!("url = \"{url}\"")));
        wait_ready(&bad, 503);
        for _ in 0..6 {
            assert_eq!(ask(&bad, "shared").await, Code::Ok, "fail_open allows");
            assert_eq!(
                ask(&bad, "closed").await,
                Code::OverLimit,
                "fail_closed denies"
            );
        }
        wait_until(
            &format!("an auth failed log line for {url}"),
            Duration::from_secs(10),
            || bad.log_text().contains("auth failed"),
        );
        assert_no_secret(&bad, &[WRONG_PASSWORD]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(30));
    let pki = Pki::new("redis-tls");
    let server = pki.issue("redis", 1);
    let client = pki.issue("tollgate", 2);
    let redis = RedisServer::start_tls(&pki.ca(), &server.cert, &server.key);
    assert!(redis.url().starts_with("rediss://"));
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let store = format!(
        "url = \"{}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        redis.url(),
        pki.ca().display(),
        client.cert.display(),
        client.key.display()
    );
    let a = Tollgate::start(bin, &config(&store));
    let b = Tollgate::start(bin, &config(&store));
    share_one_budget(&a, &b).await;
    // redis-cli over TLS sees the counter.
    let keys = redis.cli(&["--scan", "--pattern", "tg:*"]);
    assert!(!keys.is_empty(), "counters are in Redis");

    // Without the private CA, Redis's certificate is not trusted.
    let untrusted = Tollgate::start(
        bin,
        &config(&format!(
            "url = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            redis.url(),
            client.cert.display(),
            client.key.display()
        )),
    );
    wait_ready(&untrusted, 503);
    assert_eq!(ask(&untrusted, "closed").await, Code::OverLimit);
    wait_until(
        "a certificate error in the log",
        Duration::from_secs(10),
        || untrusted.log_text().contains("certificate"),
    );
}
