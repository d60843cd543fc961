//! End to end with TLS between Envoy and tollgate: a real Envoy whose
//! `tollgate` cluster has an UpstreamTlsContext (envoy/ratelimit-tls.yaml:
//! checks tollgate's certificate against a private CA, presents its own)
//! asks a real tollgate that requires client certificates (mTLS). With
//! `failure_mode_deny: true` a failed handshake would be a 500; the client
//! sees 200s, then a 429 with rate limit headers, decided by tollgate.

use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, metric, Envoy, MockLlm, Pki, Tollgate};

#[tokio::test]
async fn envoy_asks_tollgate_over_mtls() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(5));
    let pki = Pki::new("envoy-tls");
    let server = pki.issue("tollgate", 1);
    let envoy_cert = pki.issue("envoy", 2);
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(
        env!("CARGO_BIN_EXE_tollgate"),
        &format!(
            r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
tls_cert = "{}"
tls_key = "{}"
tls_client_ca = "{}"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = {{ requests = 3, per = "minute" }}
"#,
            server.cert.display(),
            server.key.display(),
            pki.ca().display()
        ),
    );
    let envoy = Envoy::start(
        "ratelimit-tls.yaml",
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("TLS_CA_FILE", pki.ca().display().to_string()),
            ("CLIENT_CERT_FILE", envoy_cert.cert.display().to_string()),
            ("CLIENT_KEY_FILE", envoy_cert.key.display().to_string()),
        ],
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let get = || async {
        client
            .get(envoy.url("/v1/things"))
            .header("x-tenant", "a")
            .send()
            .await
            .expect("envoy answers")
    };
    for i in 0..3 {
        let r = get().await;
        assert_eq!(
            r.status(),
            200,
            "request {i}\n{}\n{}",
            envoy.log_text(),
            tollgate.log_text()
        );
        assert_eq!(
            r.headers()
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok()),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = get().await;
    assert_eq!(r.status(), 429, "4th request");
    assert!(r.headers().contains_key("retry-after"));

    let m = tollgate.metrics();
    assert_eq!(
        metric(
            &m,
            "tollgate_decisions_total",
            &[("service", "rls"), ("code", "over_limit")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tollgate_tls_handshake_errors_total", &[]),
        Some(0.0),
        "Envoy's handshakes all succeed"
    );
}
