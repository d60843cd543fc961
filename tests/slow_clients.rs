//! Slow and idle clients cannot hold tollgate's listeners: real TCP clients
//! that send nothing, half a preface or half a request, that dribble a
//! body, or that never answer an HTTP/2 ping are closed within
//! `[server] read_timeout` (and `idle_timeout` for the ping), and a
//! listener at `max_connections` closes new connections at once, while a
//! client that talks keeps its connection.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tollgate_testkit::Tollgate;

fn config(read: &str, idle: &str, max: u32) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
read_timeout = "{read}"
idle_timeout = "{idle}"
max_connections = {max}

[[rule]]
domain = "edge"
match = ["tenant"]
limit = {{ requests = 100, per = "minute" }}
"#
    )
}

/// One series, as `/metrics` writes it; 0 when absent.
fn m(t: &Tollgate, series: &str) -> f64 {
    t.metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads (and drops) whatever comes until tollgate closes the connection;
/// how long that took, or `None` if it was still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

#[test]
fn slow_grpc_clients_are_closed() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config("1s", "2s", 64));
    let addr = t.grpc_addr().to_string();
    // Nothing at all; half the preface: closed at read_timeout.
    let mut silent = connect(&addr);
    let mut half = connect(&addr);
    half.write_all(&PREFACE[..10]).unwrap();
    // The preface and SETTINGS, then silence, never answering a ping:
    // pinged after idle_timeout, closed read_timeout later.
    let mut mute = connect(&addr);
    mute.write_all(PREFACE).unwrap();
    mute.write_all(SETTINGS).unwrap();
    let limit = Duration::from_secs(8);
    let silent_at = closed_within(&mut silent, limit);
    let half_at = closed_within(&mut half, limit);
    let mute_at = closed_within(&mut mute, limit);
    eprintln!(
        "closed after: silent {silent_at:?}, half preface {half_at:?}, no ping answer {mute_at:?}"
    );
    assert!(silent_at.is_some(), "a silent connection stayed open");
    assert!(half_at.is_some(), "half a preface stayed open");
    assert!(
        mute_at.is_some(),
        "a connection that answers no ping stayed open"
    );
    assert!(
        m(
            &t,
            r#"tollgate_connections_closed_total{listener="grpc",reason="slow"}"#
        ) >= 2.0
    );
}

#[tokio::test]
async fn a_grpc_client_that_talks_keeps_its_connection_past_idle_timeout() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config("1s", "1s", 64));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", t.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest::default()).await.unwrap();
    // Idle for several ping intervals: the client answers the pings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    health.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(m(&t, r#"tollgate_connections{listener="grpc"}"#), 1.0);
    assert_eq!(
        m(
            &t,
            r#"tollgate_connections_closed_total{listener="grpc",reason="slow"}"#
        ),
        0.0,
        "a live client was closed"
    );
}

#[test]
fn slow_admin_clients_are_closed() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config("1s", "2s", 64));
    let addr = t.admin_url().trim_start_matches("http://").to_string();
    let limit = Duration::from_secs(6);
    // Connected, nothing sent (hyper waits for the bytes that tell HTTP/1
    // from HTTP/2 with no timeout of its own).
    let mut silent = connect(&addr);
    // Half a request's headers, then nothing (slowloris).
    let mut headers = connect(&addr);
    headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A keep-alive connection left idle after one request.
    let mut idle = connect(&addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // A body promised and sent one byte at a time.
    let mut dribble = connect(&addr);
    dribble
        .write_all(
            b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .unwrap();
    let dribbler = {
        let mut d = dribble.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(200));
                if d.write_all(b" ").is_err() {
                    return;
                }
            }
        })
    };
    let silent_at = closed_within(&mut silent, limit);
    let headers_at = closed_within(&mut headers, limit);
    let idle_at = closed_within(&mut idle, limit);
    let dribble_at = closed_within(&mut dribble, limit);
    eprintln!("closed after: silent {silent_at:?}, half headers {headers_at:?}, idle keep-alive {idle_at:?}, dribbled body {dribble_at:?}");
    assert!(silent_at.is_some(), "a silent connection stayed open");
    assert!(headers_at.is_some(), "half a request's headers stayed open");
    assert!(
        idle_at.is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert!(dribble_at.is_some(), "a dribbled body stayed open");
    let _ = dribbler.join();
    // The listener still answers.
    let (status, _) = t.admin_get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn a_listener_at_max_connections_closes_new_ones_at_once() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config("30s", "30s", 4));
    let addr = t.admin_url().trim_start_matches("http://").to_string();
    // The scrapes below use connections too: take the cap with idle ones
    // after reading the gauge.
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&addr)).collect();
    let mut extra = connect(&addr);
    let at = closed_within(&mut extra, Duration::from_secs(3));
    assert!(at.is_some(), "a connection past the cap stayed open");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        m(
            &t,
            r#"tollgate_connections_closed_total{listener="admin",reason="over_cap"}"#
        ),
        1.0
    );
    // gRPC has its own cap.
    let grpc = t.grpc_addr().to_string();
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&grpc)).collect();
    let mut extra = connect(&grpc);
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)).is_some(),
        "a gRPC connection past the cap stayed open"
    );
    drop(held);
    let log = t.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("connection refused: the listener is at max_connections"))
            .count(),
        2,
        "one line per listener:\n{log}"
    );
}
