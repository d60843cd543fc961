//! ext_proc streams as a hostile or broken peer drives them, message by
//! message against the real binary: two request bodies on one stream make
//! one reservation, and nothing stays held; request bodies past `[llm]
//! max_buffered_bytes` are answered 503 at once instead of being kept
//! while their requests wait.

#[path = "clients/ext_proc.rs"]
mod ext_proc;

use ext_proc::{
    chat, completion, request_body, request_headers, response_body, response_headers, Stream,
};
use std::time::{Duration, Instant};
use tollgate_testkit::Tollgate;

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[llm]
estimator = "bytes"
on_abort = "refund"
max_body_bytes = 1048576
max_buffered_bytes = 2097152

[[model]]
name = "m"
context_window = 1000000
default_max_output = 100

# Tenant "u": two slots, no waiting, a day of tokens.
[[quota]]
name = "u-slots"
match = { tenant = "u" }
max_concurrent = 2
max_wait = "0s"

[[quota]]
name = "u-tokens"
match = { tenant = "u" }
tokens_per_day = 10000000

# Tenant "t": one slot; the others wait for it.
[[quota]]
name = "t-slot"
match = { tenant = "t" }
max_concurrent = 1
max_wait = "20s"
"#;

const PATH: &str = "/v1/chat/completions";
const ANSWER: Duration = Duration::from_secs(10);
/// How long an idle tollgate may take to give freed memory back to the
/// system (the allocator purges what has been unused for a few seconds).
const RETURN: Duration = Duration::from_secs(30);

/// One series, written as `/metrics` writes it (labels sorted); 0 when
/// absent.
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

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a stream and sends a request for tenant with a prompt of `bytes`.
async fn ask(channel: &tonic::transport::Channel, tenant: &str, bytes: usize) -> Stream {
    let mut s = Stream::open(channel).await;
    s.send(request_headers(PATH, tenant)).await;
    let headers = s.answer(ANSWER).await.expect("headers answered");
    assert_eq!(headers.status(), 200);
    s.send(request_body(chat("m", 10, bytes))).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_body_makes_no_second_reservation_and_nothing_stays_held() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let channel = ext_proc::channel(t.grpc_addr()).await;
    let mut s = ask(&channel, "u", 400).await;
    let first = s.answer(ANSWER).await.expect("first body answered");
    assert_eq!(first.status(), 200, "admitted: {first:?}");
    let reserved = m(
        &t,
        r#"tollgate_quota_tokens_total{kind="reserved",quota="u-tokens"}"#,
    );
    assert!(reserved > 0.0);

    // The same stream, a second body: refused with a gRPC error.
    s.send(request_body(chat("m", 10, 400))).await;
    let second = s.answer(ANSWER).await;
    let status = second.expect_err("a second body is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    s.close();

    assert_eq!(
        m(
            &t,
            r#"tollgate_llm_requests_total{model="m",outcome="admitted"}"#
        ),
        1.0,
        "one reservation"
    );
    assert_eq!(
        m(
            &t,
            r#"tollgate_quota_tokens_total{kind="reserved",quota="u-tokens"}"#
        ),
        reserved,
        "the second body reserved nothing"
    );
    // The stream closed before a response: the first is settled by
    // on_abort (refund), so every reserved token comes back...
    wait_for("the first reservation settled", ANSWER, || {
        m(&t, r#"tollgate_llm_settlements_total{how="aborted"}"#) == 1.0
    });
    assert_eq!(
        m(
            &t,
            r#"tollgate_quota_tokens_total{kind="refunded",quota="u-tokens"}"#
        ),
        reserved,
        "nothing stays held"
    );
    // ... and both slots are free: two requests at once are admitted (no
    // waiting: a held slot would answer 429).
    let mut a = ask(&channel, "u", 10).await;
    let mut b = ask(&channel, "u", 10).await;
    assert_eq!(a.answer(ANSWER).await.unwrap().status(), 200);
    assert_eq!(
        b.answer(ANSWER).await.unwrap().status(),
        200,
        "a slot was left held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_buffered_bytes_are_answered_503_at_once() {
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CONFIG);
    let channel = ext_proc::channel(t.grpc_addr()).await;
    // A holds tenant t's one slot.
    let mut a = ask(&channel, "t", 10).await;
    assert_eq!(a.answer(ANSWER).await.unwrap().status(), 200);

    // Three 600 KB requests wait for the slot, holding their bodies:
    // 1.8 MB of the 2 MiB bound.
    const BODY: usize = 600_000;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(ask(&channel, "t", BODY).await);
    }
    wait_for("three requests waiting", ANSWER, || {
        m(&t, "tollgate_llm_waiting") == 3.0
    });
    let held = m(&t, "tollgate_llm_buffered_bytes");
    assert!(
        held >= 3.0 * BODY as f64 && held <= 2_097_152.0,
        "held {held}"
    );

    // A fourth does not fit: 503 at once, with a reason and retry-after.
    let mut over = ask(&channel, "t", BODY).await;
    let started = Instant::now();
    let answer = over.answer(ANSWER).await.expect("answered");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not after waiting ({:?})",
        started.elapsed()
    );
    match &answer {
        ext_proc::Answer::Immediate(503, _, body) => {
            assert!(body.contains("max_buffered_bytes"), "{body}")
        }
        other => panic!("expected 503: {other:?}"),
    }
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(
        m(
            &t,
            r#"tollgate_llm_requests_total{model="_other",outcome="overloaded"}"#
        ),
        1.0
    );
    assert!(m(&t, "tollgate_llm_buffered_bytes") <= 2_097_152.0);

    // A's response ends: the first waiting request is admitted, and the
    // bytes it held are given back.
    a.send(response_headers(200, "application/json")).await;
    a.answer(ANSWER).await.unwrap();
    a.send(response_body(completion(5, 5), true)).await;
    a.answer(ANSWER).await.unwrap();
    let first = waiting.remove(0);
    let mut first = first;
    assert_eq!(first.answer(ANSWER).await.unwrap().status(), 200);
    wait_for("the admitted body given back", ANSWER, || {
        m(&t, "tollgate_llm_buffered_bytes") <= 2.0 * BODY as f64 + 1000.0
    });
    drop(waiting);
    drop(first);
    drop(over);
    wait_for("every body given back", ANSWER, || {
        m(&t, "tollgate_llm_buffered_bytes") == 0.0
    });
    let log = t.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("max_buffered_bytes; answering 503"))
        .count();
    assert_eq!(lines, 1, "logged once:\n{log}");
}

/// Peak and current resident set of a process, in MB (VmHWM, VmRSS).
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    };
    (kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}

/// The probe's load: 150 requests with 3.9 MB bodies wait behind one slot
/// (585 MB of bodies). With the default 64 MiB bound the bodies held stay
/// under it and the rest are refused at once. The resident set is printed,
/// not asserted: freed bodies stay in the allocator's arenas (see
/// docs/operations.md, memory sizing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_large_waiting_bodies_stays_within_the_bound() {
    const CROWD: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[llm]
estimator = "bytes"
on_abort = "refund"
max_wait_cap = "10m"
max_message_timeout = "11m"

[[model]]
name = "m"
context_window = 10000000
default_max_output = 100

[[quota]]
name = "t-slot"
match = { tenant = "t" }
max_concurrent = 1
max_wait = "10m"
"#;
    const BODY: usize = 3_900_000;
    const BOUND: f64 = 67_108_864.0;
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), CROWD);
    let channel = ext_proc::channel(t.grpc_addr()).await;
    let (_, idle) = rss_mb(t.pid());
    let mut a = ask(&channel, "t", 10).await;
    assert_eq!(a.answer(ANSWER).await.unwrap().status(), 200);
    let mut crowd = Vec::new();
    let sending = Instant::now();
    for _ in 0..150 {
        crowd.push(ask(&channel, "t", BODY).await);
    }
    eprintln!("150 bodies sent in {:?}", sending.elapsed());
    let overloaded = r#"tollgate_llm_requests_total{model="_other",outcome="overloaded"}"#;
    wait_for(
        "every request waiting or refused",
        Duration::from_secs(120),
        || {
            let (w, o) = (m(&t, "tollgate_llm_waiting"), m(&t, overloaded));
            eprintln!("waiting {w}, refused {o}");
            w + o == 150.0
        },
    );
    let held = m(&t, "tollgate_llm_buffered_bytes");
    let (peak, now) = rss_mb(t.pid());
    eprintln!(
        "idle {idle:.0} MB; 150 x {BODY} B: waiting {}, refused {}, held {held} B, RSS {now:.0} MB, peak {peak:.0} MB",
        m(&t, "tollgate_llm_waiting"),
        m(&t, overloaded)
    );
    assert!(held <= BOUND, "held {held}");
    assert!(m(&t, overloaded) >= 100.0, "most of the crowd refused");
    drop(crowd);
    drop(a);
    wait_for("every body given back", ANSWER, || {
        m(&t, "tollgate_llm_buffered_bytes") == 0.0
    });
    // The memory the bodies took goes back to the system once they are
    // gone, not only to the allocator: an idle tollgate returns to about
    // its idle size (allowance: twice the bound, for what the allocator
    // keeps warm), whatever the crowd before it.
    let given_back = Instant::now();
    let ceiling = idle + 2.0 * BOUND / 1_048_576.0;
    let mut rss = rss_mb(t.pid()).1;
    while rss > ceiling {
        assert!(
            given_back.elapsed() < RETURN,
            "RSS still {rss:.0} MB {RETURN:?} after the bodies were given back (idle {idle:.0} MB, ceiling {ceiling:.0} MB)"
        );
        std::thread::sleep(Duration::from_millis(100));
        rss = rss_mb(t.pid()).1;
    }
    eprintln!(
        "after: RSS {rss:.0} MB (ceiling {ceiling:.0} MB) {:?} after the last body was given back",
        given_back.elapsed()
    );
}
