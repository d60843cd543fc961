//! The network between tollgate and Redis degrades under steady load
//! (issue 18, "Network faults between hosts"): Redis runs in its own
//! network namespace, tollgate in the root one, and the link between them
//! (a [`NetNs`]) gets latency under the store timeout, latency over it,
//! 10 % and 50 % packet loss, then a full partition, each healed before
//! the next. Throughout, RLS clients ask at a fixed rate on three rules,
//! one per `on_error` policy, and ext_proc clients reserve and settle LLM
//! requests against a concurrency limit.
//!
//! Each phase asserts: every answer within the store timeout plus slack;
//! `fail_open` always allows, `fail_closed` denies exactly as often as the
//! store could not answer (`tollgate_store_failure_answers_total`, whose
//! count is the answers given by policy), `local` allows within this
//! instance's share; under latency below the timeout, answers are normal.
//! The partition opens the breaker (`/readyz` 503, `tollgate_store_up`
//! 0, `tollgate_store_circuit_opens_total` up); healing closes it by its
//! probes without a restart. Afterwards no slot or reservation is left
//! held and a fresh budget is exact: N allowed, then denied, and Redis's
//! counter says what was counted. (A script that ran in Redis after
//! tollgate had stopped waiting keeps what it took, as
//! `docs/operations.md` says, so exactness is checked on keys first used
//! after healing; a slot held by such a call, or by a settle that timed
//! out, is freed by `reservation_ttl`, which is 3 s here.)

#[path = "clients/ext_proc.rs"]
mod ext_proc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tollgate_testkit::{
    avoid_window_edge, metric, tenant_request, Fault, NetNs, RedisServer, Tollgate,
};
use tonic::transport::Channel;

/// The store timeout tollgate runs with.
const TIMEOUT: Duration = Duration::from_millis(200);
/// The longest any answer may take: the store timeout plus slack for a
/// loaded 2-core machine (the client's own scheduling included).
const BOUND: Duration = Duration::from_millis(200 + 400);
/// How long a slot or reservation lives if it is never settled.
const RESERVATION_TTL: Duration = Duration::from_secs(3);
/// The concurrency limit of each ext_proc tenant.
const SLOTS: usize = 2;
/// How long each fault lasts under load.
const PHASE: Duration = Duration::from_secs(3);
/// One RLS request per rule this often (spawned, so a slow answer does
/// not slow the rate).
const RLS_EVERY: Duration = Duration::from_millis(25);
/// Longest wait for the breaker to open or close.
const BREAKER_WITHIN: Duration = Duration::from_secs(15);
/// Longer than the kernel's first few retransmissions (0.2 s, doubling).
const LONG_PARTITION: Duration = Duration::from_secs(7);
/// After healing, Redis answers by then: the breaker's cool-down (1 s)
/// until its next probe, and slack for a loaded machine.
const HEALED_WITHIN: Duration = Duration::from_millis(2500);

/// One test at a time: each measures answer times under its own load.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn config(redis: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
url = "{redis}"
timeout = "{timeout}ms"
connect_timeout = "300ms"

[[rule]]
domain = "open"
match = ["tenant"]
limit = {{ requests = 1000000, per = "hour" }}
on_error = "fail_open"

[[rule]]
domain = "closed"
match = ["tenant"]
limit = {{ requests = 1000000, per = "hour" }}
on_error = "fail_closed"

[[rule]]
domain = "local"
match = ["tenant"]
limit = {{ requests = 1000000, per = "hour" }}
on_error = "local"

# Asked only while partitioned: the local share, exactly.
[[rule]]
domain = "local_small"
match = ["tenant"]
limit = {{ requests = 5, per = "hour" }}
on_error = "local"

# Asked only after healing: an exact budget.
[[rule]]
domain = "exact"
match = ["tenant"]
limit = {{ requests = 10, per = "hour" }}
on_error = "fail_closed"

[llm]
estimator = "bytes"
on_abort = "refund"
reservation_ttl = "{ttl}s"

[[model]]
name = "m"
context_window = 1000000
default_max_output = 100

[[quota]]
name = "slots"
match = {{ tenant = "*" }}
max_concurrent = {SLOTS}
max_wait = "0s"
on_error = "local"

[[quota]]
name = "tokens"
match = {{ tenant = "*" }}
tokens_per_hour = 100000000
on_error = "local"
"#,
        timeout = TIMEOUT.as_millis(),
        ttl = RESERVATION_TTL.as_secs(),
    )
}

/// What the load was doing when a request started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Healthy,
    Latency50,
    Latency400,
    Loss10,
    Loss50,
    Partition,
    /// A fault was cleared; the breaker has not closed yet.
    Healing,
    Healed,
}

const PHASES: [Phase; 8] = [
    Phase::Healthy,
    Phase::Latency50,
    Phase::Latency400,
    Phase::Loss10,
    Phase::Loss50,
    Phase::Partition,
    Phase::Healing,
    Phase::Healed,
];

/// Who asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Asker {
    Open,
    Closed,
    Local,
    /// An ext_proc request body: the reservation.
    Reserve,
    /// An ext_proc response body: the settlement.
    Settle,
}

/// One answer: the phase its request started in, who asked, the answer
/// (`Code` as i32 for RLS, the HTTP status for ext_proc), how long it took.
#[derive(Clone, Copy, Debug)]
struct Sample {
    phase: Phase,
    asker: Asker,
    answer: i32,
    took: Duration,
}

/// The latencies of some answers, and how many of each answer.
type Tally = (Vec<Duration>, BTreeMap<i32, usize>);

/// The load's shared state.
struct Load {
    phase: Mutex<Phase>,
    stop: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    /// ext_proc requests whose reservation was admitted and settled.
    settled: AtomicUsize,
}

impl Load {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap()
    }

    fn set(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
    }

    fn note(&self, phase: Phase, asker: Asker, answer: i32, took: Duration) {
        self.samples.lock().unwrap().push(Sample {
            phase,
            asker,
            answer,
            took,
        });
    }
}

async fn ask(c: &mut RateLimitServiceClient<Channel>, domain: &str, tenant: &str) -> Code {
    let r = c
        .should_rate_limit(tenant_request(domain, tenant))
        .await
        .expect("an answer, never a gRPC error");
    Code::try_from(r.into_inner().overall_code).expect("a known code")
}

/// One RLS client: a request on `domain` every [`RLS_EVERY`] until stop.
async fn rls_client(c: RateLimitServiceClient<Channel>, domain: &'static str, load: Arc<Load>) {
    let asker = match domain {
        "open" => Asker::Open,
        "closed" => Asker::Closed,
        _ => Asker::Local,
    };
    let mut tick = tokio::time::interval(RLS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = JoinSet::new();
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (mut c, load) = (c.clone(), load.clone());
        calls.spawn(async move {
            let phase = load.phase();
            let start = Instant::now();
            let code = ask(&mut c, domain, "load").await;
            load.note(phase, asker, code as i32, start.elapsed());
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

const ANSWER: Duration = Duration::from_secs(10);

/// One ext_proc client for `tenant`: one LLM request at a time, reserved
/// at the request body, settled with reported usage at the response body.
async fn ext_proc_client(channel: Channel, tenant: &'static str, load: Arc<Load>) {
    while !load.stop.load(Ordering::Relaxed) {
        let mut s = ext_proc::Stream::open(&channel).await;
        s.send(ext_proc::request_headers("/v1/chat/completions", tenant))
            .await;
        let headers = s.answer(ANSWER).await.expect("headers answered");
        assert_eq!(headers.status(), 200, "request headers: {headers:?}");
        let phase = load.phase();
        let start = Instant::now();
        s.send(ext_proc::request_body(ext_proc::chat("m", 50, 200)))
            .await;
        let reserved = s.answer(ANSWER).await.expect("body answered");
        load.note(
            phase,
            Asker::Reserve,
            i32::from(reserved.status()),
            start.elapsed(),
        );
        if reserved.status() == 200 {
            s.send(ext_proc::response_headers(200, "application/json"))
                .await;
            s.answer(ANSWER).await.expect("response headers answered");
            let phase = load.phase();
            let start = Instant::now();
            s.send(ext_proc::response_body(ext_proc::completion(60, 20), true))
                .await;
            let settled = s.answer(ANSWER).await.expect("response body answered");
            load.note(
                phase,
                Asker::Settle,
                i32::from(settled.status()),
                start.elapsed(),
            );
            load.settled.fetch_add(1, Ordering::Relaxed);
        }
        s.close();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A blocking admin call, off the runtime's workers.
fn admin<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn readyz(t: &Tollgate) -> u16 {
    admin(|| t.admin_get("/readyz").0)
}

/// `tollgate_store_failure_answers_total{policy}` now.
fn by_policy(t: &Tollgate, policy: &str) -> f64 {
    let m = admin(|| t.metrics());
    metric(
        &m,
        "tollgate_store_failure_answers_total",
        &[("policy", policy)],
    )
    .unwrap_or(0.0)
}

/// Waits until `/readyz` answers `status`; how long that took.
async fn wait_readyz(t: &Tollgate, status: u16, what: &str) -> Duration {
    let start = Instant::now();
    while readyz(t) != status {
        assert!(
            start.elapsed() < BREAKER_WITHIN,
            "{what}: /readyz not {status} within {BREAKER_WITHIN:?}\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

/// The median, the 99th percentile and the maximum of some durations.
fn quantiles(mut d: Vec<Duration>) -> (Duration, Duration, Duration) {
    d.sort();
    if d.is_empty() {
        return Default::default();
    }
    let at = |q: usize| d[(d.len() * q).div_ceil(100).saturating_sub(1)];
    (at(50), at(99), d[d.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_on_the_link_to_redis_under_load() {
    let _serial = serial().await;
    let started = Instant::now();
    avoid_window_edge(Duration::from_secs(3600), Duration::from_secs(120));
    // Drop order (reverse of declaration): tollgate, Redis, then the
    // namespace, also when an assertion panics.
    let ns = NetNs::create();
    let redis = RedisServer::start_in(&ns);
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let rls = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .expect("connect to tollgate");
    let channel = ext_proc::channel(t.grpc_addr()).await;
    // The connection to Redis is made on first use.
    let connected = Instant::now();
    while ask(&mut rls.clone(), "closed", "warmup").await != Code::Ok {
        assert!(
            connected.elapsed() < Duration::from_secs(10),
            "no answer from Redis across the link: {}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_readyz(&t, 200, "ready with the link healthy").await;
    let opens_before = metric(
        &admin(|| t.metrics()),
        "tollgate_store_circuit_opens_total",
        &[],
    );
    let closed_by_policy_before = by_policy(&t, "fail_closed");
    let open_by_policy_before = by_policy(&t, "fail_open");
    let local_by_policy_before = by_policy(&t, "local");

    let load = Arc::new(Load {
        phase: Mutex::new(Phase::Healthy),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Vec::new()),
        settled: AtomicUsize::new(0),
    });
    let mut clients = JoinSet::new();
    for domain in ["open", "closed", "local"] {
        clients.spawn(rls_client(rls.clone(), domain, load.clone()));
    }
    for tenant in ["e1", "e2"] {
        clients.spawn(ext_proc_client(channel.clone(), tenant, load.clone()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (phase, fault) in turn, each healed before the next. Delays are per
    // direction, as netem on both ends' egress: 50 ± 5 ms each way is a
    // round trip of 90 to 110 ms, half the store timeout (the wire keeps
    // packets in order, so under load a packet's delay tends to its upper
    // bound); 200 ± 50 ms each way is 300 to 500 ms, over it.
    let faults = [
        (
            Phase::Latency50,
            Fault::delay(Duration::from_millis(50), Duration::from_millis(5)),
        ),
        (
            Phase::Latency400,
            Fault::delay(Duration::from_millis(200), Duration::from_millis(50)),
        ),
        (Phase::Loss10, Fault::loss(10)),
        (Phase::Loss50, Fault::loss(50)),
        (Phase::Partition, Fault::partition()),
    ];
    let mut report: Vec<String> = Vec::new();
    // The test's own fail_closed asks (after healing, until Redis
    // answers) that were denied by policy.
    let mut probes_denied = 0;
    for (phase, fault) in faults {
        let opens_at_start = metric(
            &admin(|| t.metrics()),
            "tollgate_store_circuit_opens_total",
            &[],
        );
        load.set(phase);
        let fault_at = Instant::now();
        ns.set_fault(fault);
        let mut opened_after = None;
        let mut local_small = Vec::new();
        while fault_at.elapsed() < PHASE {
            if opened_after.is_none() && readyz(&t) == 503 {
                opened_after = Some(fault_at.elapsed());
            }
            if phase == Phase::Partition && opened_after.is_some() && local_small.is_empty() {
                // The local share while partitioned: exactly the limit.
                let mut c = rls.clone();
                for _ in 0..8 {
                    local_small.push(ask(&mut c, "local_small", "partitioned").await);
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if phase == Phase::Partition {
            let opened = opened_after
                .unwrap_or_else(|| panic!("partition: /readyz never said 503\n{}", t.log_text()));
            let m = admin(|| t.metrics());
            assert_eq!(
                metric(&m, "tollgate_store_up", &[]),
                Some(0.0),
                "partition: the store is down"
            );
            assert!(
                metric(&m, "tollgate_store_circuit_opens_total", &[]) > opens_at_start,
                "partition: the circuit opened"
            );
            let allowed = local_small.iter().filter(|c| **c == Code::Ok).count();
            assert_eq!(
                (allowed, local_small.len()),
                (5, 8),
                "partition: local allows its share (5 of the 5/hour) and denies past it: {local_small:?}"
            );
            assert!(
                local_small[..5].iter().all(|c| *c == Code::Ok),
                "the first 5 allowed: {local_small:?}"
            );
            report.push(format!("partition: /readyz 503 after {opened:?}"));
        } else if let Some(opened) = opened_after {
            report.push(format!("{phase:?}: /readyz 503 after {opened:?}"));
        }
        // Heal; the breaker probes back without a restart.
        load.set(Phase::Healing);
        ns.clear_fault();
        let healed_at = Instant::now();
        let ready_after = wait_readyz(&t, 200, &format!("{phase:?} healed")).await;
        let mut c = rls.clone();
        while ask(&mut c, "closed", "probe").await != Code::Ok {
            probes_denied += 1;
            assert!(
                healed_at.elapsed() < BREAKER_WITHIN,
                "{phase:?} healed: fail_closed still denying\n{}",
                t.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        report.push(format!(
            "{phase:?} healed: /readyz 200 after {ready_after:?}, Redis answers after {:?}",
            healed_at.elapsed()
        ));
    }
    assert!(
        readyz(&t) == 200 && metric(&admin(|| t.metrics()), "tollgate_store_up", &[]) == Some(1.0),
        "healed: the store is up again"
    );
    load.set(Phase::Healed);
    tokio::time::sleep(PHASE).await;
    load.stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("a load client panicked");
    }
    let (carried, dropped) = ns.packets();

    // Every answer within the bound; per phase and asker, the counts.
    let samples = load.samples.lock().unwrap().clone();
    let mut table: BTreeMap<(Phase, Asker), Tally> = BTreeMap::new();
    for s in &samples {
        let e = table.entry((s.phase, s.asker)).or_default();
        e.0.push(s.took);
        *e.1.entry(s.answer).or_default() += 1;
    }
    eprintln!("phase / asker: answers by code; latency p50, p99, max");
    for phase in PHASES {
        let mut all = Vec::new();
        for ((p, asker), (took, codes)) in &table {
            if *p == phase {
                let (p50, p99, max) = quantiles(took.clone());
                eprintln!("  {phase:?} / {asker:?}: {codes:?}; {p50:.1?}, {p99:.1?}, {max:.1?}");
                all.extend(took);
            }
        }
        let (p50, p99, max) = quantiles(all.clone());
        eprintln!(
            "  {phase:?}: {} answers; {p50:.1?}, {p99:.1?}, {max:.1?}",
            all.len()
        );
    }
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!(
        "{} ext_proc requests settled; the wire carried {carried} packets and dropped {dropped}",
        load.settled.load(Ordering::Relaxed)
    );
    let slow: Vec<&Sample> = samples.iter().filter(|s| s.took > BOUND).collect();
    assert!(
        slow.is_empty(),
        "{} answers took longer than {BOUND:?} (the store timeout is {TIMEOUT:?}): {:?}",
        slow.len(),
        &slow[..slow.len().min(10)]
    );
    let count = |phase: Option<Phase>, asker: Asker, answer: i32| {
        samples
            .iter()
            .filter(|s| phase.is_none_or(|p| s.phase == p) && s.asker == asker)
            .filter(|s| s.answer == answer)
            .count()
    };
    let of = |phase: Phase, asker: Asker| {
        samples
            .iter()
            .filter(|s| s.phase == phase && s.asker == asker)
            .count()
    };
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    // fail_open and local (a share of a million) always allow.
    for asker in [Asker::Open, Asker::Local] {
        let n = samples.iter().filter(|s| s.asker == asker).count();
        assert_eq!(count(None, asker, ok), n, "{asker:?}: every answer OK");
    }
    // fail_closed denies exactly when the store could not answer (the
    // limit is never reached): its denials are its policy answers.
    let closed_by_policy = by_policy(&t, "fail_closed") - closed_by_policy_before;
    let closed_denied = count(None, Asker::Closed, over);
    assert_eq!(
        (closed_denied + probes_denied) as f64,
        closed_by_policy,
        "fail_closed: every denial, and only those, by policy (the load's {closed_denied}, the test's own {probes_denied})"
    );
    assert_eq!(
        count(None, Asker::Closed, ok) + closed_denied,
        samples.iter().filter(|s| s.asker == Asker::Closed).count(),
        "fail_closed: OK or OVER_LIMIT only"
    );
    let open_by_policy = by_policy(&t, "fail_open") - open_by_policy_before;
    let local_by_policy = by_policy(&t, "local") - local_by_policy_before;
    eprintln!(
        "answered by policy: fail_closed {closed_by_policy}, fail_open {open_by_policy}, local {local_by_policy}; circuit opened {} times",
        metric(&admin(|| t.metrics()), "tollgate_store_circuit_opens_total", &[]).unwrap_or(0.0)
            - opens_before.unwrap_or(0.0)
    );
    assert!(
        open_by_policy > 0.0 && local_by_policy > 0.0,
        "every policy was seen answering"
    );
    // Each fault over the timeout was answered by policy at least once;
    // under it, and once healed, answers are normal (a stall of the
    // loaded machine past the timeout is allowed for 2 % of them).
    for phase in [Phase::Latency400, Phase::Loss50, Phase::Partition] {
        assert!(
            count(Some(phase), Asker::Closed, over) > 0,
            "{phase:?}: fail_closed denied nothing"
        );
    }
    for phase in [Phase::Healthy, Phase::Latency50, Phase::Healed] {
        let n = of(phase, Asker::Closed);
        assert!(n > 20, "{phase:?}: the load ran ({n} answers)");
        let denied = count(Some(phase), Asker::Closed, over);
        assert!(
            denied * 50 <= n,
            "{phase:?}: {denied} of {n} fail_closed answers by policy"
        );
        let reserves = of(phase, Asker::Reserve);
        let admitted = count(Some(phase), Asker::Reserve, 200);
        assert!(
            reserves > 0 && (reserves - admitted) * 50 <= reserves.max(50),
            "{phase:?}: {admitted} of {reserves} LLM requests admitted"
        );
    }
    for s in samples
        .iter()
        .filter(|s| matches!(s.asker, Asker::Reserve | Asker::Settle))
    {
        assert!(
            s.answer == 200 || (s.asker == Asker::Reserve && s.answer == 429),
            "ext_proc answers 200, or 429 for a reservation: {s:?}"
        );
    }

    // No slot or reservation left held: once the TTL of anything a
    // timed-out call took has passed, each tenant gets exactly its SLOTS
    // requests at once, and the next one is denied.
    tokio::time::sleep(RESERVATION_TTL + Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for tenant in ["e1", "e2"] {
        for i in 0..=SLOTS {
            let mut s = ext_proc::Stream::open(&channel).await;
            s.send(ext_proc::request_headers("/v1/chat/completions", tenant))
                .await;
            s.answer(ANSWER).await.expect("headers answered");
            s.send(ext_proc::request_body(ext_proc::chat("m", 50, 200)))
                .await;
            let status = s.answer(ANSWER).await.expect("body answered").status();
            let want = if i < SLOTS { 200 } else { 429 };
            assert_eq!(
                status,
                want,
                "{tenant}: request {} of {SLOTS} slots after healing",
                i + 1
            );
            held.push(s);
        }
    }
    let records = redis.cli(&["--scan", "--pattern", "tg:*:res:*"]);
    // The streams above hold SLOTS records each (the 429s hold none).
    assert_eq!(
        records.lines().count(),
        2 * SLOTS,
        "only the reservations just made are held: {records}; all keys: {}",
        redis.cli(&["--scan", "--pattern", "*"])
    );

    // An exact budget on a key first used after healing: 10 allowed, then
    // denied, all from Redis.
    let closed_before = by_policy(&t, "fail_closed");
    let mut c = rls.clone();
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(ask(&mut c, "exact", "after").await);
    }
    let allowed = codes.iter().filter(|c| **c == Code::Ok).count();
    assert_eq!(allowed, 10, "exactly the budget: {codes:?}");
    assert!(codes[..10].iter().all(|c| *c == Code::Ok), "{codes:?}");
    assert_eq!(
        by_policy(&t, "fail_closed"),
        closed_before,
        "all from Redis"
    );
    let keys = redis.cli(&["--scan", "--pattern", "tg:*after*"]);
    let key = keys.lines().next().expect("the counter of tenant `after`");
    let counted = redis.cli(&["GET", key]);
    eprintln!("exact budget: {codes:?}; Redis holds {key} = {counted}");
    assert_eq!(counted, "10", "Redis holds what it admitted, no more");
    eprintln!("the whole test took {:?}", started.elapsed());
}

/// A partition longer than a few TCP retransmissions: once it heals, the
/// breaker's next probe finds Redis (within a cool-down and a few store
/// timeouts), however long the kernel would still back off before
/// retransmitting on the connection the partition left hanging (a
/// partition resets nothing: the connection is not broken, only silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_partition_heals_at_the_next_probe() {
    let _serial = serial().await;
    let ns = NetNs::create();
    let redis = RedisServer::start_in(&ns);
    let t = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(&redis.url()));
    let mut c = RateLimitServiceClient::connect(format!("http://{}", t.grpc_addr()))
        .await
        .expect("connect to tollgate");
    let connected = Instant::now();
    while ask(&mut c, "closed", "warmup").await != Code::Ok {
        assert!(
            connected.elapsed() < Duration::from_secs(10),
            "{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_readyz(&t, 200, "ready with the link healthy").await;
    ns.set_fault(Fault::partition());
    let partitioned = Instant::now();
    let mut slowest = Duration::ZERO;
    while partitioned.elapsed() < LONG_PARTITION {
        let start = Instant::now();
        let code = ask(&mut c, "closed", "long").await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(code, Code::OverLimit, "fail_closed while partitioned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(&t), 503, "partitioned: not ready");
    ns.clear_fault();
    let healed = Instant::now();
    let ready = wait_readyz(&t, 200, "healed").await;
    while ask(&mut c, "closed", "long").await != Code::Ok {
        assert!(healed.elapsed() < BREAKER_WITHIN, "{}", t.log_text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answered = healed.elapsed();
    eprintln!(
        "{LONG_PARTITION:?} partition: slowest answer {slowest:?}; healed: /readyz 200 after {ready:?}, Redis answers after {answered:?}"
    );
    assert!(slowest <= BOUND, "an answer waited {slowest:?}");
    assert!(
        answered <= HEALED_WITHIN,
        "Redis answered again only {answered:?} after the link healed (the breaker probes every second)\n{}",
        t.log_text()
    );
}
