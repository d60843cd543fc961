//! TLS and mTLS on the gRPC listener, against the real binary: a client
//! that trusts the CA answers and a plaintext one does not; with mTLS a
//! client without a certificate (or with one from another CA) is refused;
//! the certificate files are replaced by atomic rename and new connections
//! get the new certificate while open ones keep going, without a restart;
//! a broken certificate file is refused and the old one keeps serving.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;
use tollgate_testkit::{metric, replace_file, Issued, Pki, Signal, Tollgate};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn config(server: &Issued, client_ca: Option<&Path>) -> String {
    let mut c = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    if let Some(ca) = client_ca {
        c.push_str(&format!("tls_client_ca = \"{}\"\n", ca.display()));
    }
    c.push_str(
        "\n[[rule]]\ndomain = \"edge\"\nmatch = [\"tenant\"]\n\
         limit = { requests = 1000, per = \"hour\" }\n",
    );
    c
}

fn request() -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: "a".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

/// One RLS call on `channel`: `Ok(code)` or the gRPC error text.
async fn ask(channel: Channel) -> Result<Code, String> {
    let mut client = RateLimitServiceClient::new(channel);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.should_rate_limit(request()))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Code::try_from(reply.into_inner().overall_code).expect("a known code"))
}

/// A tonic channel over TLS; `None` if it cannot connect at all.
async fn tls_channel(t: &Tollgate, ca: &Path, identity: Option<&Issued>) -> Option<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Endpoint::from_shared(format!("https://{}", t.grpc_addr()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()
}

/// Whether a TLS client (with `identity` if given) gets an answer.
async fn answers(t: &Tollgate, ca: &Path, identity: Option<&Issued>) -> Result<Code, String> {
    match tls_channel(t, ca, identity).await {
        Some(channel) => ask(channel).await,
        None => Err("no connection".into()),
    }
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// The leaf certificate a new TLS connection to tollgate is served.
async fn served_cert(t: &Tollgate, ca: &Path) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(t.grpc_addr())
        .await
        .expect("tcp");
    let tls = TlsConnector::from(client_config(ca))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a peer certificate")
}

/// A channel whose connections the test makes itself, so it knows how
/// many there were and which certificate each was served.
async fn recording_channel(
    t: &Tollgate,
    ca: &Path,
) -> (Channel, Arc<Mutex<Vec<CertificateDer<'static>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (addr, config, record) = (t.grpc_addr().to_string(), client_config(ca), seen.clone());
    let connector = tower::service_fn(move |_uri| {
        let (addr, config, record) = (addr.clone(), config.clone(), record.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = TlsConnector::from(config)
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await?;
            if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                record.lock().unwrap().push(leaf.clone().into_owned());
            }
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_static("http://tollgate.test")
        .connect_with_connector(connector)
        .await
        .expect("connect");
    (channel, seen)
}

#[tokio::test]
async fn tls_answers_a_client_that_trusts_the_ca_and_refuses_plaintext() {
    let pki = Pki::new("grpc-tls");
    let server = pki.issue("server", 1);
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&server, None));

    assert_eq!(answers(&t, &pki.ca(), None).await, Ok(Code::Ok));

    let plain = async {
        let channel = Endpoint::from_shared(format!("http://{}", t.grpc_addr()))
            .ok()?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        ask(channel).await.ok()
    };
    assert_eq!(plain.await, None, "a plaintext client gets no answer");

    let stranger = Pki::new("grpc-tls-stranger");
    assert!(
        answers(&t, &stranger.ca(), None).await.is_err(),
        "a client that trusts another CA refuses tollgate's certificate"
    );
    assert_eq!(served_cert(&t, &pki.ca()).await, server.der);
    let m = t.metrics();
    assert!(
        metric(&m, "tollgate_tls_handshake_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "the plaintext client counts as a failed handshake:\n{m}"
    );

    // SIGTERM drains and exits 0 with the TLS listener too.
    let mut t = t;
    t.signal(Signal::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit: {status}\n{}", t.log_text());
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new("grpc-mtls");
    let server = pki.issue("server", 1);
    let client = pki.issue("client", 2);
    let t = Tollgate::start(
        env!("CARGO_BIN_EXE_tollgate"),
        &config(&server, Some(&pki.ca())),
    );

    assert_eq!(
        answers(&t, &pki.ca(), Some(&client)).await,
        Ok(Code::Ok),
        "a client certificate signed by the CA is accepted"
    );
    let none = answers(&t, &pki.ca(), None).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let stranger = Pki::new("grpc-mtls-stranger").issue("intruder", 3);
    let other = answers(&t, &pki.ca(), Some(&stranger)).await;
    assert!(other.is_err(), "a certificate from another CA: {other:?}");
    assert_eq!(
        answers(&t, &pki.ca(), Some(&client)).await,
        Ok(Code::Ok),
        "refused clients do not disturb the listener"
    );
}

#[tokio::test]
async fn certificates_are_reloaded_without_a_restart() {
    let pki = Pki::new("grpc-reload");
    let first = pki.issue("server", 1);
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&first, None));
    let pid = t.pid();

    let (open, seen) = recording_channel(&t, &pki.ca()).await;
    assert_eq!(ask(open.clone()).await, Ok(Code::Ok));
    assert_eq!(served_cert(&t, &pki.ca()).await, first.der);

    // The deploy tool writes the new pair and renames each over the old.
    let second = pki.issue("next", 2);
    replace_file(&first.cert, &second.cert_pem);
    replace_file(&first.key, &second.key_pem);
    let start = Instant::now();
    while served_cert(&t, &pki.ca()).await != second.der {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new connections still get the old certificate:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "new certificate served {:?} after the rename",
        start.elapsed()
    );
    assert_eq!(answers(&t, &pki.ca(), None).await, Ok(Code::Ok));
    // The connection opened before the swap goes on, on the old certificate.
    for _ in 0..3 {
        assert_eq!(ask(open.clone()).await, Ok(Code::Ok));
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "the open channel did not reconnect");
        assert_eq!(seen[0].as_ref(), first.der.as_slice());
    }
    assert!(
        metric(
            &t.metrics(),
            "tollgate_tls_reloads_total",
            &[("result", "ok")]
        ) >= Some(1.0)
    );

    // A broken certificate file: refused, logged with its name, counted;
    // the certificate in force keeps serving.
    replace_file(
        &first.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    );
    let name = first.cert.display().to_string();
    tollgate_testkit::wait_until(
        "the refused reload's log line",
        Duration::from_secs(10),
        || {
            t.log_text().lines().any(|l| {
                l.contains("tls reload refused")
                    && l.contains(&format!("file={name}"))
                    && l.contains("bad PEM")
            })
        },
    );
    assert!(
        metric(
            &t.metrics(),
            "tollgate_tls_reloads_total",
            &[("result", "refused")]
        ) >= Some(1.0)
    );
    assert_eq!(served_cert(&t, &pki.ca()).await, second.der);
    assert_eq!(answers(&t, &pki.ca(), None).await, Ok(Code::Ok));
    assert_eq!(t.pid(), pid);
    assert!(
        !t.log_text().contains("PRIVATE KEY"),
        "no key material in the log"
    );
}
