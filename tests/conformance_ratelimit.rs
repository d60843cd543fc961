//! envoyproxy/ratelimit's own test cases, ported: each case names the peer
//! file and test it comes from, runs its config (rewritten here as YAML in
//! the peer's format, read unchanged by tollgate) on the real binary, and
//! asks over real gRPC, against the memory store and a real redis-server.
//! Where the peer's test drives a mock (its config, cache or clock), the
//! case drives real counters to the same state and asks the same question.
//! Config refusals go through `tollgate check`, as an operator would.
//!
//! Differences that are deliberate are listed, with why, in
//! docs/migrating.md ("Conformance"); none is skipped here.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{value::Kind, UInt64Value};
use std::process::Command;
use std::time::Duration;
use tollgate_testkit::{avoid_window_edge, scratch_dir, RedisServer, Tollgate};
use tonic::transport::Channel;

/// The binary under test; `TOLLGATE_BIN` runs the suite against another
/// build (to see which cases an older tollgate fails).
fn bin() -> String {
    std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").to_string())
}

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
}

/// One tollgate on one config, with its store.
struct Peer {
    tollgate: Tollgate,
    client: RateLimitServiceClient<Channel>,
    _redis: Option<RedisServer>,
}

async fn peer(store: Store, yaml: &[(&str, &str)], env: &[(&str, &str)]) -> Peer {
    let redis = matches!(store, Store::Redis).then(RedisServer::start);
    let mut toml =
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n".to_string();
    if let Some(r) = &redis {
        // The default 50 ms store timeout answers by `on_error` when a
        // loaded machine (2 cores, many suites) is slow to run a script:
        // the answers under test are the store's.
        toml.push_str(&format!(
            "\n[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
            r.url()
        ));
    }
    let mut files: Vec<(&str, &str)> = vec![("tollgate.toml", toml.as_str())];
    files.extend_from_slice(yaml);
    let tollgate = Tollgate::start_dir(&bin(), &files, env);
    let client = RateLimitServiceClient::connect(format!("http://{}", tollgate.grpc_addr()))
        .await
        .expect("connect");
    // Every case runs inside one minute window once started: its hits must
    // not straddle a boundary (the peer's tests use a mock clock).
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(12));
    Peer {
        tollgate,
        client,
        _redis: redis,
    }
}

impl Peer {
    async fn ask(
        &mut self,
        domain: &str,
        descriptors: Vec<RateLimitDescriptor>,
        hits: u32,
    ) -> RateLimitResponse {
        self.client
            .should_rate_limit(RateLimitRequest {
                domain: domain.into(),
                descriptors,
                hits_addend: hits,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.tollgate.log_text()))
            .into_inner()
    }

    /// One descriptor, `n` times; the last answer.
    async fn repeat(
        &mut self,
        n: usize,
        domain: &str,
        entries: &[(&str, &str)],
    ) -> RateLimitResponse {
        let mut last = None;
        for _ in 0..n {
            last = Some(self.ask(domain, vec![d(entries)], 1).await);
        }
        last.expect("n > 0")
    }
}

fn d(entries: &[(&str, &str)]) -> RateLimitDescriptor {
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

/// A descriptor with its own `hits_addend`.
fn dh(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..d(entries)
    }
}

/// A descriptor with its own limit (`RateLimitDescriptor.limit`).
fn dl(entries: &[(&str, &str)], requests: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit: requests,
            unit,
        }),
        ..d(entries)
    }
}

/// What a descriptor status must say.
#[derive(Debug, Clone)]
struct Want {
    code: Code,
    limit: Option<(u32, Unit, &'static str)>,
    remaining: u32,
}

/// OK with no current limit and 0 left: the peer's answer when no limit
/// applies (no match, unknown domain, replaced, a node without a limit).
fn none() -> Want {
    Want {
        code: Code::Ok,
        limit: None,
        remaining: 0,
    }
}

fn unlimited() -> Want {
    Want {
        code: Code::Ok,
        limit: None,
        remaining: u32::MAX,
    }
}

fn ok(requests: u32, unit: Unit, remaining: u32) -> Want {
    Want {
        code: Code::Ok,
        limit: Some((requests, unit, "")),
        remaining,
    }
}

fn over(requests: u32, unit: Unit) -> Want {
    Want {
        code: Code::OverLimit,
        limit: Some((requests, unit, "")),
        remaining: 0,
    }
}

fn named(mut w: Want, name: &'static str) -> Want {
    if let Some(l) = &mut w.limit {
        l.2 = name;
    }
    w
}

fn status_matches(s: &DescriptorStatus, w: &Want) -> bool {
    let limit = s
        .current_limit
        .as_ref()
        .map(|l| (l.requests_per_unit, l.unit, l.name.as_str()));
    let want = w.limit.map(|(r, u, n)| (r, u as i32, n));
    s.code == w.code as i32
        && limit == want
        && s.limit_remaining == w.remaining
        // The peer sends a reset exactly when it sends a limit.
        && s.duration_until_reset.is_some() == w.limit.is_some()
}

#[track_caller]
fn expect(r: &RateLimitResponse, overall: Code, wants: &[Want]) {
    let shown = || format!("{r:#?}\nwanted {overall:?} {wants:#?}");
    assert_eq!(r.overall_code, overall as i32, "overall code\n{}", shown());
    assert_eq!(r.statuses.len(), wants.len(), "{}", shown());
    for (i, (s, w)) in r.statuses.iter().zip(wants).enumerate() {
        assert!(status_matches(s, w), "status {i}\n{}", shown());
    }
}

fn header<'r>(r: &'r RateLimitResponse, name: &str) -> Option<&'r str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

/// `tollgate check` on these files: its stderr, which must be a refusal.
fn refused(yaml: &[(&str, &str)], env: &[(&str, &str)]) -> String {
    let dir = scratch_dir("conformance-check");
    for (name, text) in yaml {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg("--config").arg(&dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate check");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "accepted:\n{stderr}");
    stderr
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn memory() {
                    super::$case(super::Store::Memory).await
                }
                #[tokio::test]
                async fn redis() {
                    super::$case(super::Store::Redis).await
                }
            }
        )*
    };
}

on_both_stores!(
    config_test_basic_config,
    config_test_domain_merge,
    config_test_config_limit_override,
    config_test_shadow_mode_config,
    config_test_wildcard_config,
    config_test_share_threshold,
    config_test_metadata,
    service_test_service,
    service_test_global_shadow_mode,
    service_test_rule_and_mixed_shadow_mode,
    service_test_custom_and_default_ratelimit_headers,
    service_test_empty_domain_and_descriptors,
    service_test_unlimited,
    service_test_global_quota_mode,
    service_test_metadata_for_passed_descriptors,
    service_test_per_descriptor_quota_modes,
    service_test_quota_mode_with_shadow_mode,
    base_limiter_test_response_status,
    fixed_cache_impl_test_redis,
    fixed_cache_impl_test_stop_cache_key_increment_when_overlimit,
    integration_test_basic_config,
    integration_test_basic_config_stop_increment,
    integration_test_reload_config,
    integration_test_share_threshold,
    server_impl_test_json_handler,
    toml_domains_answer_as_the_peer,
    import_gives_the_same_answers,
    utilities_unit_to_divider_long_units,
    fixed_cache_impl_test_near_limit_ratio,
);

// ---------------------------------------------------------------------
// test/config/config_test.go

/// The peer's `test/config/basic_config.yaml`, rewritten.
const BASIC: &str = r#"# A domain with every form of node.
domain: test-domain
descriptors:
  # No limit here, limits below.
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
  # Allow-listed: a node with no rate_limit.
  - key: key2
    value: value3
  - key: key3
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: key4
    rate_limit: {name: key4_rate_limit, unit: day, requests_per_unit: 1}
  - key: key5
    value: value5
    rate_limit: {unit: day, requests_per_unit: 15}
    descriptors:
      - key: subkey5
        value: subvalue5
        rate_limit: {unit: day, requests_per_unit: 25}
  - key: key6
    rate_limit: {unlimited: true}
  - key: key7
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 70}
"#;

/// config_test.go `TestBasicConfig`: what each descriptor finds.
async fn config_test_basic_config(store: Store) {
    let mut p = peer(store, &[("basic.yaml", BASIC)], &[]).await;
    basic_config_answers(&mut p).await;
}

async fn basic_config_answers(p: &mut Peer) {
    for (domain, e, want) in [
        ("foo_domain", &[("key1", "value1")][..], none()),
        ("test-domain", &[("key1", "something")][..], none()),
        ("test-domain", &[("key1", "value1")][..], none()),
        (
            "test-domain",
            &[("key2", "value2"), ("subkey", "subvalue")][..],
            none(),
        ),
        (
            "test-domain",
            &[("key5", "value5"), ("subkey5", "subvalue")][..],
            none(),
        ),
        (
            "test-domain",
            &[("key1", "value1"), ("subkey1", "something")][..],
            ok(5, Unit::Second, 4),
        ),
        (
            "test-domain",
            &[("key1", "value1"), ("subkey1", "subvalue1")][..],
            ok(10, Unit::Second, 9),
        ),
        (
            "test-domain",
            &[("key2", "something")][..],
            ok(20, Unit::Minute, 19),
        ),
        (
            "test-domain",
            &[("key2", "value2")][..],
            ok(30, Unit::Minute, 29),
        ),
        ("test-domain", &[("key2", "value3")][..], none()),
        ("test-domain", &[("key3", "foo")][..], ok(1, Unit::Hour, 0)),
        (
            "test-domain",
            &[("key4", "foo")][..],
            named(ok(1, Unit::Day, 0), "key4_rate_limit"),
        ),
        ("test-domain", &[("key6", "foo")][..], unlimited()),
        (
            "test-domain",
            &[("key7", "unspecified_value")][..],
            ok(70, Unit::Minute, 69),
        ),
        (
            "test-domain",
            &[("key7", "another_value")][..],
            ok(70, Unit::Minute, 69),
        ),
    ] {
        let r = p.ask(domain, vec![d(e)], 1).await;
        expect(&r, Code::Ok, &[want]);
    }
}

/// config_test.go `TestDomainMerge`: two files of one domain, merged
/// with `MERGE_DOMAIN_CONFIG=true`.
async fn config_test_domain_merge(store: Store) {
    let one = "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10}\n";
    let two = "domain: test-domain\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 20}\n";
    let mut p = peer(
        store,
        &[("a.yaml", one), ("b.yaml", two)],
        &[("MERGE_DOMAIN_CONFIG", "true")],
    )
    .await;
    let r = p
        .ask("test-domain", vec![d(&[("key1", "value1")])], 1)
        .await;
    expect(&r, Code::Ok, &[ok(10, Unit::Minute, 9)]);
    let r = p
        .ask("test-domain", vec![d(&[("key2", "value2")])], 1)
        .await;
    expect(&r, Code::Ok, &[ok(20, Unit::Minute, 19)]);
    let r = p.ask("foo_domain", vec![d(&[("key1", "value1")])], 1).await;
    expect(&r, Code::Ok, &[none()]);
}

/// config_test.go `TestConfigLimitOverride`: a descriptor's own limit
/// wins in a known domain, has no name, and is ignored in an unknown one;
/// another value is another counter.
async fn config_test_config_limit_override(store: Store) {
    let mut p = peer(store, &[("basic.yaml", BASIC)], &[]).await;
    const DAY: i32 = 4;
    const HOUR: i32 = 3;
    let r = p
        .ask("foo_domain", vec![dl(&[("key1", "value1")], 10, DAY)], 1)
        .await;
    expect(&r, Code::Ok, &[none()]);
    let e = [("key1", "value1"), ("subkey1", "something")];
    let r = p.ask("test-domain", vec![dl(&e, 10, DAY)], 1).await;
    expect(&r, Code::Ok, &[ok(10, Unit::Day, 9)]);
    let r = p.ask("test-domain", vec![dl(&e, 42, HOUR)], 1).await;
    expect(&r, Code::Ok, &[ok(42, Unit::Hour, 41)]);
    let other = [("key1", "value1"), ("subkey1", "something_else")];
    let r = p.ask("test-domain", vec![dl(&other, 42, HOUR)], 1).await;
    expect(&r, Code::Ok, &[ok(42, Unit::Hour, 41)]);
    // A node with no limit of its own still takes the request's.
    let r = p
        .ask("test-domain", vec![dl(&[("key2", "value3")], 1, HOUR)], 1)
        .await;
    expect(&r, Code::Ok, &[ok(1, Unit::Hour, 0)]);
    let r = p
        .ask("test-domain", vec![dl(&[("key2", "value3")], 1, HOUR)], 1)
        .await;
    expect(&r, Code::OverLimit, &[over(1, Unit::Hour)]);
}

/// config_test.go `TestEmptyDomain` ... `TestUnlimitedWithRateLimitUnit`:
/// every refusal, with the peer's message and tollgate's file:line.
/// A refusal case: the peer's test, the files, the env, the message.
type Refusal<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    &'a str,
);

#[test]
fn config_test_refusals() {
    let cases: &[Refusal] = &[
        ("TestEmptyDomain", &[("empty_domain.yaml", "domain: \"\"\ndescriptors:\n  - key: k\n")], &[], "empty_domain.yaml:1: domain: config file cannot have empty domain"),
        (
            "TestDuplicateDomain",
            &[("basic.yaml", BASIC), ("dup.yaml", "domain: test-domain\ndescriptors:\n  - key: other\n")],
            &[],
            "dup.yaml:1: domain: duplicate domain 'test-domain' in config file",
        ),
        ("TestEmptyKey", &[("empty_key.yaml", "domain: d\ndescriptors:\n  - key: \"\"\n    value: v\n")], &[], "empty_key.yaml:3: descriptors[0].key: descriptor has empty key"),
        (
            "TestDuplicateKey",
            &[("duplicate_key.yaml", "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n  - key: key1\n    value: value1\n")],
            &[],
            "duplicate_key.yaml:5: descriptors[1].key: duplicate descriptor composite key 'test-domain.key1_value1'",
        ),
        (
            "TestDuplicateKeyDomainMerge",
            &[
                ("m1.yaml", "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10}\n"),
                ("m2.yaml", "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10}\n"),
            ],
            &[("MERGE_DOMAIN_CONFIG", "true")],
            "m2.yaml:3: descriptors.key: duplicate descriptor composite key 'test-domain.key1_value1'",
        ),
        ("TestBadLimitUnit", &[("bad_unit.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: foo\n      requests_per_unit: 5\n")], &[], "bad_unit.yaml:5: descriptors[0].rate_limit.unit: invalid rate limit unit 'foo'"),
        (
            "TestReplacesSelf",
            &[("self.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: me\n      unit: minute\n      requests_per_unit: 1\n      replaces:\n        - name: me\n")],
            &[],
            "self.yaml:9: descriptors[0].rate_limit.replaces[0]: replaces should not contain name of same descriptor",
        ),
        (
            "TestReplacesEmpty",
            &[("empty.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: me\n      unit: minute\n      requests_per_unit: 1\n      replaces:\n        - name: \"\"\n")],
            &[],
            "empty.yaml:9: descriptors[0].rate_limit.replaces[0]: should not have an empty replaces entry",
        ),
        ("TestBadYaml", &[("bad.yaml", "domain: d\ndescriptors: [\n")], &[], "bad.yaml:"),
        ("TestMisspelledKey", &[("typo.yaml", "domain: d\ndescriptors:\n  - key: k\n    ratelimit:\n      unit: second\n")], &[], "typo.yaml:4: descriptors[0].ratelimit: config error, unknown key 'ratelimit'"),
        (
            "TestMisspelledKey (2)",
            &[("typo2.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requestsperunit: 5\n")],
            &[],
            "typo2.yaml:6: descriptors[0].rate_limit.requestsperunit: config error, unknown key 'requestsperunit'",
        ),
        ("TestNonStringKey", &[("nonstring.yaml", "domain: d\ndescriptors:\n  - key: k\n    0.25: x\n")], &[], "nonstring.yaml:4: descriptors[0].0.25: config error, key is not of type string: 0.25"),
        ("TestNonMapList", &[("list.yaml", "domain: d\ndescriptors:\n  - a\n  - b\n")], &[], "list.yaml:3: descriptors[0]: config error, yaml file contains list of type other than map: a"),
        (
            "TestUnlimitedWithRateLimitUnit",
            &[("unl.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: day\n")],
            &[],
            "unl.yaml:6: descriptors[0].rate_limit.unit: should not specify rate limit unit when unlimited",
        ),
        (
            "TestShareThreshold (no wildcard)",
            &[("share.yaml", "domain: d\ndescriptors:\n  - key: files\n    value: plain\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n")],
            &[],
            "share_threshold can only be used with wildcard values (containing '*'), but found key 'files_plain'",
        ),
    ];
    for (test, files, env, want) in cases {
        let stderr = refused(files, env);
        assert!(stderr.contains(want), "{test}: no `{want}` in:\n{stderr}");
    }
}

/// config_test.go `TestShadowModeConfig`: a shadow rule over its limit
/// answers OK (and keeps counting); its neighbour does not.
async fn config_test_shadow_mode_config(store: Store) {
    let yaml = "domain: test-domain\ndescriptors:\n  - key: key2\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 2}\n";
    let mut p = peer(store, &[("shadow.yaml", yaml)], &[]).await;
    let r = p.repeat(3, "test-domain", &[("key2", "x")]).await;
    expect(
        &r,
        Code::Ok,
        &[Want {
            code: Code::Ok,
            ..over(2, Unit::Minute)
        }],
    );
    let r = p.repeat(3, "test-domain", &[("key2", "value2")]).await;
    expect(&r, Code::OverLimit, &[over(2, Unit::Minute)]);
}

/// The peer's `test/config/wildcard.yaml`, rewritten.
const WILDCARD: &str = r#"domain: test-domain
descriptors:
  - key: wild
    value: foo*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noWild
    value: foo
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noVal
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: midWild
    value: bar*b
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: multiWild
    value: foo*bar*baz
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: nestedWild
    value: val1
    descriptors:
      - key: wild
        value: goo*
        rate_limit: {unit: minute, requests_per_unit: 20}
"#;

/// config_test.go `TestWildcardConfig`: trailing, middle and repeated
/// `*`, and no eager match of plain values.
async fn config_test_wildcard_config(store: Store) {
    let mut p = peer(store, &[("wildcard.yaml", WILDCARD)], &[]).await;
    for (e, want) in [
        (&[("noVal", "foo1")][..], Some(20)),
        (&[("wild", "foo1")][..], Some(20)),
        (&[("nestedWild", "val1"), ("wild", "goo2")][..], Some(20)),
        (&[("wild", "bar")][..], None),
        (&[("noWild", "foo1")][..], None),
        (&[("midWild", "barab")][..], Some(20)),
        (&[("midWild", "bar123b")][..], Some(20)),
        (&[("midWild", "barb")][..], Some(20)),
        (&[("midWild", "bara")][..], None),
        (&[("midWild", "xbarb")][..], None),
        (&[("multiWild", "foo123bar456baz")][..], Some(10)),
        (&[("multiWild", "foobarbaz")][..], Some(10)),
        (&[("multiWild", "foo123baz")][..], None),
        (&[("multiWild", "bar456baz")][..], None),
    ] {
        let r = p.ask("test-domain", vec![dh(e, 0)], 0).await;
        let got = r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit);
        assert_eq!(got, want, "{e:?}: {r:?}");
    }
}

/// The peer's `test/config/share_threshold.yaml` idea, rewritten.
const SHARE: &str = r#"domain: share
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: files_no_share
    value: files/*
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: path
    value: /api*v1
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 2}
"#;

/// config_test.go `TestShareThreshold` (and base_limiter_test.go
/// `TestGenerateCacheKeysWithShareThreshold`): every value under a
/// shared wildcard counts in one counter; without the flag, each value
/// has its own.
async fn config_test_share_threshold(store: Store) {
    let mut p = peer(store, &[("share.yaml", SHARE)], &[]).await;
    for (i, v) in ["files/a", "files/b", "files/c"].iter().enumerate() {
        let r = p.ask("share", vec![d(&[("files", v)])], 1).await;
        expect(&r, Code::Ok, &[ok(3, Unit::Hour, 2 - i as u32)]);
    }
    let r = p.ask("share", vec![d(&[("files", "files/d")])], 1).await;
    expect(&r, Code::OverLimit, &[over(3, Unit::Hour)]);
    for v in ["files/a", "files/b", "files/c", "files/d"] {
        let r = p.ask("share", vec![d(&[("files_no_share", v)])], 1).await;
        expect(&r, Code::Ok, &[ok(3, Unit::Hour, 2)]);
    }
    p.ask("share", vec![d(&[("path", "/api/x/v1")])], 1).await;
    p.ask("share", vec![d(&[("path", "/api/y/v1")])], 1).await;
    let r = p.ask("share", vec![d(&[("path", "/apiv1")])], 1).await;
    expect(&r, Code::OverLimit, &[over(2, Unit::Hour)]);
}

const METADATA: &str = r#"domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: minute, requests_per_unit: 5}
        metadata:
          name: service_1
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
    metadata:
      service_with_quota:
        name: service_2
"#;

/// config_test.go `TestMetadata`: a node's metadata comes back in the
/// response's dynamic metadata (with `RESPONSE_DYNAMIC_METADATA`).
async fn config_test_metadata(store: Store) {
    let mut p = peer(
        store,
        &[("metadata.yaml", METADATA)],
        &[("RESPONSE_DYNAMIC_METADATA", "true")],
    )
    .await;
    let r = p
        .ask(
            "test-domain",
            vec![d(&[("key1", "value1"), ("subkey1", "x")])],
            1,
        )
        .await;
    let m = r.dynamic_metadata.as_ref().expect("dynamic metadata");
    let passed = match m.fields.get("metadata").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s.clone(),
        other => panic!("no metadata: {other:?}"),
    };
    assert!(
        matches!(passed.fields.get("name").and_then(|v| v.kind.as_ref()), Some(Kind::StringValue(s)) if s == "service_1"),
        "{passed:?}"
    );
    assert!(
        matches!(m.fields.get("domain").and_then(|v| v.kind.as_ref()), Some(Kind::StringValue(s)) if s == "test-domain")
    );
    let r = p.ask("test-domain", vec![d(&[("key2", "x")])], 1).await;
    let m = r.dynamic_metadata.expect("dynamic metadata");
    let Some(Kind::StructValue(passed)) = m.fields.get("metadata").and_then(|v| v.kind.clone())
    else {
        panic!("no metadata: {m:?}");
    };
    assert!(
        matches!(
            passed
                .fields
                .get("service_with_quota")
                .and_then(|v| v.kind.as_ref()),
            Some(Kind::StructValue(_))
        ),
        "{passed:?}"
    );
}

// ---------------------------------------------------------------------
// test/service/ratelimit_test.go

const SERVICE: &str = r#"domain: different-domain
descriptors:
  - key: foo
    rate_limit: {name: key_name, unit: minute, requests_per_unit: 10}
  - key: baz
    rate_limit: {unit: minute, requests_per_unit: 10}
"#;

/// ratelimit_test.go `TestService`: an unknown descriptor is OK with no
/// limit; one over its limit makes the request OVER_LIMIT, whatever the
/// order; the limit's name is sent as configured.
async fn service_test_service(store: Store) {
    let mut p = peer(store, &[("service.yaml", SERVICE)], &[]).await;
    let r = p
        .ask("test-domain", vec![d(&[("hello", "world")])], 1)
        .await;
    expect(&r, Code::Ok, &[none()]);
    p.ask("different-domain", vec![dh(&[("foo", "bar")], 10)], 0)
        .await;
    let r = p
        .ask(
            "different-domain",
            vec![d(&[("foo", "bar")]), d(&[("hello", "world")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[named(over(10, Unit::Minute), "key_name"), none()],
    );
    p.ask("different-domain", vec![dh(&[("baz", "bar")], 10)], 0)
        .await;
    let r = p
        .ask(
            "different-domain",
            vec![d(&[("hello", "world")]), d(&[("baz", "bar")])],
            1,
        )
        .await;
    expect(&r, Code::OverLimit, &[none(), over(10, Unit::Minute)]);
    assert!(
        r.response_headers_to_add.is_empty(),
        "no headers unless asked: {r:?}"
    );
}

/// ratelimit_test.go `TestServiceGlobalShadowMode`: `SHADOW_MODE=true`
/// answers OK overall, the descriptor still says OVER_LIMIT.
async fn service_test_global_shadow_mode(store: Store) {
    let mut p = peer(
        store,
        &[("service.yaml", SERVICE)],
        &[("SHADOW_MODE", "true")],
    )
    .await;
    p.ask("different-domain", vec![dh(&[("foo", "bar")], 10)], 0)
        .await;
    let r = p
        .ask(
            "different-domain",
            vec![d(&[("foo", "bar")]), d(&[("hello", "world")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[named(over(10, Unit::Minute), "key_name"), none()],
    );
}

/// ratelimit_test.go `TestRuleShadowMode` and `TestMixedRuleShadowMode`.
async fn service_test_rule_and_mixed_shadow_mode(store: Store) {
    let yaml = "domain: different-domain\ndescriptors:\n  - key: foo\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: hello\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: plain\n    rate_limit: {unit: minute, requests_per_unit: 10}\n";
    let mut p = peer(store, &[("shadow.yaml", yaml)], &[]).await;
    p.ask(
        "different-domain",
        vec![
            dh(&[("foo", "bar")], 10),
            dh(&[("hello", "world")], 10),
            dh(&[("plain", "x")], 10),
        ],
        0,
    )
    .await;
    let shadow_over = Want {
        code: Code::Ok,
        ..over(10, Unit::Minute)
    };
    let r = p
        .ask(
            "different-domain",
            vec![d(&[("foo", "bar")]), d(&[("hello", "world")])],
            1,
        )
        .await;
    expect(&r, Code::Ok, &[shadow_over.clone(), shadow_over.clone()]);
    let r = p
        .ask(
            "different-domain",
            vec![d(&[("foo", "bar")]), d(&[("plain", "x")])],
            1,
        )
        .await;
    expect(&r, Code::OverLimit, &[shadow_over, over(10, Unit::Minute)]);
}

/// ratelimit_test.go `TestServiceWithCustomRatelimitHeaders` and
/// `TestServiceWithDefaultRatelimitHeaders`.
async fn service_test_custom_and_default_ratelimit_headers(store: Store) {
    let env = [
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_LIMIT_HEADER", "A-Ratelimit-Limit"),
        ("LIMIT_REMAINING_HEADER", "A-Ratelimit-Remaining"),
        ("LIMIT_RESET_HEADER", "A-Ratelimit-Reset"),
    ];
    for env in [&env[..], &env[..1]] {
        let custom = env.len() > 1;
        let mut p = peer(store, &[("service.yaml", SERVICE)], env).await;
        p.ask("different-domain", vec![dh(&[("foo", "bar")], 10)], 0)
            .await;
        let r = p
            .ask(
                "different-domain",
                vec![d(&[("foo", "bar")]), d(&[("hello", "world")])],
                1,
            )
            .await;
        expect(
            &r,
            Code::OverLimit,
            &[named(over(10, Unit::Minute), "key_name"), none()],
        );
        let name = |n: &str| {
            if custom {
                format!("A-Ratelimit-{n}")
            } else {
                format!("RateLimit-{n}")
            }
        };
        assert_eq!(header(&r, &name("Limit")), Some("10"), "{r:?}");
        assert_eq!(header(&r, &name("Remaining")), Some("0"), "{r:?}");
        let reset: u64 = header(&r, &name("Reset"))
            .expect("reset")
            .parse()
            .expect("a number");
        assert!((1..=60).contains(&reset), "{reset}");
        assert_eq!(
            header(&r, "retry-after"),
            None,
            "the peer sends no retry-after"
        );
        assert_eq!(r.response_headers_to_add.len(), 3, "{r:?}");
    }
}

/// ratelimit_test.go `TestEmptyDomain` and `TestEmptyDescriptors`: an
/// error, not an answer.
async fn service_test_empty_domain_and_descriptors(store: Store) {
    let mut p = peer(store, &[("service.yaml", SERVICE)], &[]).await;
    for req in [
        RateLimitRequest {
            domain: String::new(),
            descriptors: vec![d(&[("hello", "world")])],
            hits_addend: 1,
        },
        RateLimitRequest {
            domain: "test-domain".into(),
            descriptors: vec![],
            hits_addend: 1,
        },
    ] {
        let e = p.client.should_rate_limit(req).await.expect_err("refused");
        assert!(e.message().contains("must not be empty"), "{e:?}");
    }
}

/// ratelimit_test.go `TestUnlimited`: unlimited answers all of `u32` left
/// and no limit; beside it, a limited and an unknown descriptor.
async fn service_test_unlimited(store: Store) {
    let yaml = "domain: some-domain\ndescriptors:\n  - key: foo\n    rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: baz\n    rate_limit: {unlimited: true}\n";
    let mut p = peer(store, &[("unlimited.yaml", yaml)], &[]).await;
    let r = p
        .ask(
            "some-domain",
            vec![
                d(&[("foo", "bar")]),
                d(&[("hello", "world")]),
                d(&[("baz", "qux")]),
            ],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(10, Unit::Minute, 9), none(), unlimited()],
    );
}

const QUOTA: &str = r#"domain: quota-domain
descriptors:
  - key: foo
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: hello
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: regular
    rate_limit: {unit: minute, requests_per_unit: 10}
    metadata: {name: service_1}
  - key: quota
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
    metadata: {name: service_2, some_other_name: service_3}
  - key: quota2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: shadowquota
    quota_mode: true
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

/// ratelimit_test.go `TestServiceGlobalQuotaMode`: with `QUOTA_MODE`,
/// the request is over the limit only when every descriptor is.
async fn service_test_global_quota_mode(store: Store) {
    let mut p = peer(store, &[("quota.yaml", QUOTA)], &[("QUOTA_MODE", "true")]).await;
    p.ask(
        "quota-domain",
        vec![dh(&[("foo", "bar")], 10), dh(&[("hello", "world")], 5)],
        0,
    )
    .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("foo", "bar")]), d(&[("hello", "world")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[over(10, Unit::Minute), over(5, Unit::Minute)],
    );
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("foo", "new")]), d(&[("hello", "world")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(10, Unit::Minute, 9), over(5, Unit::Minute)],
    );
}

/// ratelimit_test.go `TestMetadataReturnedForPassedDescriptors`,
/// `TestMetadataReturnedForAllPassedDescriptors` and
/// `TestOverlappingMetadataReturnsTheFirstValue`.
async fn service_test_metadata_for_passed_descriptors(store: Store) {
    let mut p = peer(
        store,
        &[("quota.yaml", QUOTA)],
        &[
            ("QUOTA_MODE", "true"),
            ("RESPONSE_DYNAMIC_METADATA", "true"),
        ],
    )
    .await;
    let passed = |r: &RateLimitResponse| match r
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("metadata"))
        .and_then(|v| v.kind.clone())
    {
        Some(Kind::StructValue(s)) => s
            .fields
            .into_iter()
            .filter_map(|(k, v)| match v.kind {
                Some(Kind::StringValue(s)) => Some((k, s)),
                _ => None,
            })
            .collect::<std::collections::BTreeMap<_, _>>(),
        _ => Default::default(),
    };
    // Both pass: both metadata, the first value of a shared key.
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "limit")]), d(&[("quota", "limit")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(10, Unit::Minute, 9), ok(5, Unit::Minute, 4)],
    );
    let m = passed(&r);
    assert_eq!(
        m.get("name").map(String::as_str),
        Some("service_1"),
        "{m:?}"
    );
    assert_eq!(
        m.get("some_other_name").map(String::as_str),
        Some("service_3"),
        "{m:?}"
    );
    // The quota descriptor over its limit: only the first's metadata.
    p.ask("quota-domain", vec![dh(&[("quota", "limit")], 4)], 0)
        .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "limit")]), d(&[("quota", "limit")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(10, Unit::Minute, 8), over(5, Unit::Minute)],
    );
    let m = passed(&r);
    assert_eq!(
        m.get("name").map(String::as_str),
        Some("service_1"),
        "{m:?}"
    );
    assert!(!m.contains_key("some_other_name"), "{m:?}");
}

/// ratelimit_test.go `TestServicePerDescriptorQuotaMode`,
/// `TestServiceMixedPerDescriptorModes`,
/// `TestServiceMixedPerDescriptorModesUnderLimit`,
/// `TestServiceQuotaModeOnlyAllOverTheLimit` and
/// `TestServiceQuotaModeOnlySomeOverTheLimit`.
async fn service_test_per_descriptor_quota_modes(store: Store) {
    let mut p = peer(store, &[("quota.yaml", QUOTA)], &[]).await;
    // A quota descriptor over, a regular one within: every quota-mode
    // descriptor is over, so OVER_LIMIT (`TestServiceMixedPerDescriptorModes`).
    p.ask("quota-domain", vec![dh(&[("quota", "a")], 5)], 0)
        .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "a")]), d(&[("quota", "a")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[ok(10, Unit::Minute, 9), over(5, Unit::Minute)],
    );
    // A regular descriptor over: OVER_LIMIT, whatever the quota one says.
    p.ask("quota-domain", vec![dh(&[("regular", "b")], 10)], 0)
        .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "b")]), d(&[("quota", "b")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[over(10, Unit::Minute), ok(5, Unit::Minute, 4)],
    );
    // Both within.
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "c")]), d(&[("quota", "c")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(10, Unit::Minute, 9), ok(5, Unit::Minute, 4)],
    );
    // Only quota descriptors, all over: OVER_LIMIT; some over: OK.
    p.ask(
        "quota-domain",
        vec![dh(&[("quota", "d")], 5), dh(&[("quota2", "d")], 5)],
        0,
    )
    .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("quota", "d")]), d(&[("quota2", "d")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[over(5, Unit::Minute), over(5, Unit::Minute)],
    );
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("quota", "d")]), d(&[("quota2", "e")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[over(5, Unit::Minute), ok(5, Unit::Minute, 4)],
    );
}

/// ratelimit_test.go `TestServiceQuotaModeWithShadowMode` and
/// `TestServiceMixedModeWithShadowMode`: shadow wins over quota mode.
async fn service_test_quota_mode_with_shadow_mode(store: Store) {
    let mut p = peer(store, &[("quota.yaml", QUOTA)], &[]).await;
    p.ask("quota-domain", vec![dh(&[("shadowquota", "a")], 5)], 0)
        .await;
    let r = p
        .ask("quota-domain", vec![d(&[("shadowquota", "a")])], 1)
        .await;
    expect(
        &r,
        Code::Ok,
        &[Want {
            code: Code::Ok,
            ..over(5, Unit::Minute)
        }],
    );
    p.ask("quota-domain", vec![dh(&[("regular", "s")], 10)], 0)
        .await;
    let r = p
        .ask(
            "quota-domain",
            vec![d(&[("regular", "s")]), d(&[("shadowquota", "a")])],
            1,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[
            over(10, Unit::Minute),
            Want {
                code: Code::Ok,
                ..over(5, Unit::Minute)
            },
        ],
    );
}

// ---------------------------------------------------------------------
// test/limiter/base_limiter_test.go

/// base_limiter_test.go `TestGetResponseStatusEmptyKey`,
/// `TestGetResponseStatusOverLimit`, `...OverLimitShadowMode`,
/// `TestGetResponseStatusBelowLimit`, `...BelowLimitShadowMode`: over the
/// limit nothing is left, below it what is left, shadow says OK.
async fn base_limiter_test_response_status(store: Store) {
    let yaml = "domain: domain\ndescriptors:\n  - key: key\n    rate_limit: {unit: minute, requests_per_unit: 5}\n  - key: shadow\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 5}\n";
    let mut p = peer(store, &[("limiter.yaml", yaml)], &[]).await;
    let r = p.ask("domain", vec![d(&[("nothing", "here")])], 1).await;
    expect(&r, Code::Ok, &[none()]);
    let r = p.ask("domain", vec![dh(&[("key", "below")], 2)], 0).await;
    expect(&r, Code::Ok, &[ok(5, Unit::Minute, 3)]);
    let r = p
        .ask("domain", vec![dh(&[("shadow", "below")], 2)], 0)
        .await;
    expect(&r, Code::Ok, &[ok(5, Unit::Minute, 3)]);
    let r = p.ask("domain", vec![dh(&[("key", "over")], 7)], 0).await;
    expect(&r, Code::OverLimit, &[over(5, Unit::Minute)]);
    let r = p.ask("domain", vec![dh(&[("shadow", "over")], 7)], 0).await;
    expect(
        &r,
        Code::Ok,
        &[Want {
            code: Code::Ok,
            ..over(5, Unit::Minute)
        }],
    );
}

// ---------------------------------------------------------------------
// test/redis/fixed_cache_impl_test.go

/// fixed_cache_impl_test.go `TestRedis`: 5 of 10 used after a hit (remaining
/// 5); a descriptor with no limit beside one past its limit; hits_addend
/// 0 checks a counter already past its limit and says over.
async fn fixed_cache_impl_test_redis(store: Store) {
    let yaml = "domain: domain\ndescriptors:\n  - key: key\n    value: value\n    rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: key2\n    value: value2\n    descriptors:\n      - key: subkey2\n        value: subvalue2\n        rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: key3\n    value: value3\n    rate_limit: {unit: hour, requests_per_unit: 10}\n    descriptors:\n      - key: subkey3\n        value: subvalue3\n        rate_limit: {unit: day, requests_per_unit: 10}\n";
    let mut p = peer(store, &[("redis.yaml", yaml)], &[]).await;
    p.ask("domain", vec![dh(&[("key", "value")], 4)], 0).await;
    let r = p.ask("domain", vec![d(&[("key", "value")])], 1).await;
    expect(&r, Code::Ok, &[ok(10, Unit::Minute, 5)]);
    let sub = [("key2", "value2"), ("subkey2", "subvalue2")];
    p.ask("domain", vec![dh(&sub, 10)], 0).await;
    let r = p
        .ask("domain", vec![dh(&[("key2", "value2")], 0), dh(&sub, 1)], 0)
        .await;
    expect(&r, Code::OverLimit, &[none(), over(10, Unit::Minute)]);
    let sub3 = [("key3", "value3"), ("subkey3", "subvalue3")];
    p.ask(
        "domain",
        vec![dh(&[("key3", "value3")], 11), dh(&sub3, 12)],
        0,
    )
    .await;
    let r = p
        .ask(
            "domain",
            vec![dh(&[("key3", "value3")], 0), dh(&sub3, 1)],
            0,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[over(10, Unit::Hour), over(10, Unit::Day)],
    );
}

/// fixed_cache_impl_test.go
/// `TestOverLimitWithStopCacheKeyIncrementWhenOverlimitConfig`: when one
/// descriptor would pass its limit, the others are not counted.
async fn fixed_cache_impl_test_stop_cache_key_increment_when_overlimit(store: Store) {
    let yaml = "domain: domain\ndescriptors:\n  - key: key4\n    rate_limit: {unit: minute, requests_per_unit: 15}\n  - key: key5\n    rate_limit: {unit: minute, requests_per_unit: 20}\n";
    let mut p = peer(
        store,
        &[("stop.yaml", yaml)],
        &[("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true")],
    )
    .await;
    p.ask(
        "domain",
        vec![dh(&[("key4", "v")], 10), dh(&[("key5", "v")], 10)],
        0,
    )
    .await;
    let r = p
        .ask(
            "domain",
            vec![dh(&[("key4", "v")], 4), dh(&[("key5", "v")], 4)],
            0,
        )
        .await;
    expect(
        &r,
        Code::Ok,
        &[ok(15, Unit::Minute, 1), ok(20, Unit::Minute, 6)],
    );
    let r = p
        .ask(
            "domain",
            vec![dh(&[("key4", "v")], 2), dh(&[("key5", "v")], 2)],
            0,
        )
        .await;
    expect(
        &r,
        Code::OverLimit,
        &[over(15, Unit::Minute), ok(20, Unit::Minute, 6)],
    );
    // key5 was not counted by the denied request: 6 are still there.
    let r = p.ask("domain", vec![dh(&[("key5", "v")], 6)], 0).await;
    expect(&r, Code::Ok, &[ok(20, Unit::Minute, 0)]);
}

// ---------------------------------------------------------------------
// test/integration/integration_test.go

/// The peer's integration runtime (`basic.yaml`, `another.yaml`), rewritten.
const INTEGRATION_BASIC: &str = "domain: basic\ndescriptors:\n  - key: key1\n    rate_limit:\n      unit: second\n      requests_per_unit: 50\n  - key: one_per_minute\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1\n";
const INTEGRATION_ANOTHER: &str = "domain: another\ndescriptors:\n  - key: key2\n    rate_limit:\n      unit: minute\n      requests_per_unit: 20\n  - key: key3\n    rate_limit:\n      unit: hour\n      requests_per_unit: 10\n  - key: key4\n    rate_limit:\n      unit: day\n      requests_per_unit: 20\n";

async fn integration_basic(store: Store, stop: bool) {
    let env: &[(&str, &str)] = if stop {
        &[("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true")]
    } else {
        &[]
    };
    let mut p = peer(
        store,
        &[
            ("basic.yaml", INTEGRATION_BASIC),
            ("another.yaml", INTEGRATION_ANOTHER),
        ],
        env,
    )
    .await;
    let r = p.ask("foo", vec![d(&[("hello", "world")])], 1).await;
    expect(&r, Code::Ok, &[none()]);
    let r = p.ask("basic", vec![d(&[("key1", "foo")])], 1).await;
    expect(&r, Code::Ok, &[ok(50, Unit::Second, 49)]);
    for i in 0..25u32 {
        let r = p.ask("another", vec![d(&[("key2", "r1")])], 1).await;
        if i >= 20 {
            expect(&r, Code::OverLimit, &[over(20, Unit::Minute)]);
        } else {
            expect(&r, Code::Ok, &[ok(20, Unit::Minute, 20 - (i + 1))]);
        }
    }
    for i in 0..15u32 {
        let r = p
            .ask(
                "another",
                vec![d(&[("key2", "r2")]), d(&[("key3", "r2")])],
                1,
            )
            .await;
        if i >= 10 {
            let left = if stop { 10 } else { 20 - (i + 1) };
            expect(
                &r,
                Code::OverLimit,
                &[ok(20, Unit::Minute, left), over(10, Unit::Hour)],
            );
        } else {
            expect(
                &r,
                Code::Ok,
                &[
                    ok(20, Unit::Minute, 20 - (i + 1)),
                    ok(10, Unit::Hour, 10 - (i + 1)),
                ],
            );
        }
    }
    let first = p.ask("another", vec![d(&[("key4", "durTest")])], 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = p.ask("another", vec![d(&[("key4", "durTest")])], 1).await;
    let secs = |r: &RateLimitResponse| {
        r.statuses[0]
            .duration_until_reset
            .as_ref()
            .map(|d| d.seconds)
    };
    assert!(secs(&second) < secs(&first), "{first:?} {second:?}");
}

/// integration_test.go `TestBasicConfig` (`testBasicBaseConfig`).
async fn integration_test_basic_config(store: Store) {
    integration_basic(store, false).await
}

/// integration_test.go `testBasicBaseConfig` with
/// `makeSimpleRedisSettingsWithStopCacheKeyIncrementWhenOverlimit`.
async fn integration_test_basic_config_stop_increment(store: Store) {
    integration_basic(store, true).await
}

/// integration_test.go `TestBasicReloadConfig` (`testConfigReload` with the
/// runtime's `reload.yaml`): a new file is picked up without a restart,
/// and `requests_per_unit: 0` blocks.
async fn integration_test_reload_config(store: Store) {
    let mut p = peer(store, &[("basic.yaml", INTEGRATION_BASIC)], &[]).await;
    let r = p.ask("reload", vec![d(&[("block", "foo")])], 1).await;
    expect(&r, Code::Ok, &[none()]);
    let reload = "domain: reload\ndescriptors:\n  - key: key1\n    rate_limit: {unit: second, requests_per_unit: 50}\n  - key: block\n    rate_limit: {unit: second, requests_per_unit: 0}\n  - key: one_per_minute\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";
    let dir = p.tollgate.config_path().to_path_buf();
    std::fs::write(dir.join("reload.yaml"), reload).expect("write");
    let mut r = p.ask("reload", vec![d(&[("block", "foo")])], 1).await;
    for _ in 0..100 {
        if r.overall_code == Code::OverLimit as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = p.ask("reload", vec![d(&[("block", "foo")])], 1).await;
    }
    expect(&r, Code::OverLimit, &[over(0, Unit::Second)]);
    let r = p
        .ask("reload", vec![d(&[("one_per_minute", "x")])], 1)
        .await;
    expect(&r, Code::Ok, &[ok(1, Unit::Minute, 0)]);
    let r = p
        .ask("reload", vec![d(&[("one_per_minute", "x")])], 1)
        .await;
    expect(&r, Code::OverLimit, &[over(1, Unit::Minute)]);
}

/// integration_test.go `TestShareThreshold`, with the runtime's
/// `share_threshold.yaml` rewritten.
async fn integration_test_share_threshold(store: Store) {
    let yaml = "domain: share-threshold-test\ndescriptors:\n  - key: files\n    value: files/*\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 10}\n  - key: files_no_share\n    value: files_no_share/*\n    rate_limit: {unit: hour, requests_per_unit: 10}\n";
    let mut p = peer(store, &[("share.yaml", yaml)], &[]).await;
    for i in 0..10u32 {
        let v = format!("files/f{i}.txt");
        let r = p
            .ask("share-threshold-test", vec![d(&[("files", &v)])], 1)
            .await;
        expect(&r, Code::Ok, &[ok(10, Unit::Hour, 9 - i)]);
    }
    let r = p
        .ask(
            "share-threshold-test",
            vec![d(&[("files", "files/other.txt")])],
            1,
        )
        .await;
    expect(&r, Code::OverLimit, &[over(10, Unit::Hour)]);
    for i in 0..11u32 {
        let v = format!("files_no_share/f{i}.txt");
        let r = p
            .ask(
                "share-threshold-test",
                vec![d(&[("files_no_share", &v)])],
                1,
            )
            .await;
        expect(&r, Code::Ok, &[ok(10, Unit::Hour, 9)]);
    }
}

// ---------------------------------------------------------------------
// test/server/server_impl_test.go

/// server_impl_test.go `TestJsonHandler`: the protobuf JSON mapping in and
/// out, 429 when over the limit, 400 for a body that is not a request.
async fn server_impl_test_json_handler(store: Store) {
    let p = peer(store, &[("service.yaml", SERVICE)], &[]).await;
    let c = reqwest::Client::new();
    let url = format!("{}/json", p.tollgate.admin_url());
    for body in ["", "}"] {
        let r = c.post(&url).body(body).send().await.expect("answer");
        assert_eq!(r.status(), 400, "{body:?}");
    }
    let r = c
        .post(&url)
        .body(r#"{"domain": "foo"}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 400, "no descriptors is a service error");
    let ask = r#"{"domain": "different-domain", "descriptors": [{"entries": [{"key": "foo", "value": "json"}], "hitsAddend": "10"}]}"#;
    let r = c.post(&url).body(ask).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("application/json")
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["overallCode"], "OK", "{v}");
    assert_eq!(v["statuses"][0]["code"], "OK", "{v}");
    assert_eq!(
        v["statuses"][0]["currentLimit"]["requestsPerUnit"], 10,
        "{v}"
    );
    assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "MINUTE", "{v}");
    assert_eq!(v["statuses"][0]["currentLimit"]["name"], "key_name", "{v}");
    assert!(
        v["statuses"][0].get("limitRemaining").is_none(),
        "0 is left out: {v}"
    );
    let ask = r#"{"domain": "different-domain", "descriptors": [{"entries": [{"key": "foo", "value": "json"}]}]}"#;
    let r = c.post(&url).body(ask).send().await.expect("answer");
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["overallCode"], "OVER_LIMIT", "{v}");
    assert_eq!(v["statuses"][0]["code"], "OVER_LIMIT", "{v}");
    let ask = r#"{"domain": "nobody", "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}"#;
    let v: serde_json::Value = c
        .post(&url)
        .body(ask)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v,
        serde_json::json!({"overallCode": "OK", "statuses": [{"code": "OK"}]})
    );
}

// ---------------------------------------------------------------------
// The same answers for TOML rules (issue 15, items 1, 2, 3, 6, 7, 8 hold
// in every mode).

/// The peer's answers from TOML rules: the name as configured (or none),
/// 0 left without a limit and when over one, `*` anywhere, the request's
/// own limit; from ratelimit_test.go `TestService`, `TestUnlimited`,
/// config_test.go `TestWildcardConfig`, `TestConfigLimitOverride`.
async fn toml_domains_answer_as_the_peer(store: Store) {
    let toml = r#"
[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 10, per = "minute" }

[[rule]]
domain = "edge"
match = ["tenant=named"]
limit = { requests = 10, per = "minute" }
name = "the-name"

[[rule]]
domain = "edge"
match = ["path=/api*v1"]
limit = { requests = 10, per = "minute" }
"#;
    let mut p = peer(store, &[("rules.toml", toml)], &[]).await;
    let r = p.ask("edge", vec![d(&[("tenant", "a")])], 1).await;
    expect(&r, Code::Ok, &[ok(10, Unit::Minute, 9)]);
    let r = p.ask("edge", vec![d(&[("tenant", "named")])], 1).await;
    expect(&r, Code::Ok, &[named(ok(10, Unit::Minute, 9), "the-name")]);
    let r = p.ask("edge", vec![d(&[("nothing", "here")])], 1).await;
    expect(&r, Code::Ok, &[none()]);
    p.ask("edge", vec![dh(&[("tenant", "b")], 6)], 0).await;
    let r = p.ask("edge", vec![dh(&[("tenant", "b")], 6)], 0).await;
    expect(&r, Code::OverLimit, &[over(10, Unit::Minute)]);
    assert!(
        header(&r, "retry-after").is_some(),
        "TOML domains keep retry-after"
    );
    let r = p.ask("edge", vec![d(&[("path", "/api/x/v1")])], 1).await;
    expect(&r, Code::Ok, &[ok(10, Unit::Minute, 9)]);
    let r = p.ask("edge", vec![dl(&[("tenant", "c")], 1, 2)], 1).await;
    expect(&r, Code::Ok, &[ok(1, Unit::Minute, 0)]);
    let r = p.ask("edge", vec![dl(&[("tenant", "c")], 1, 2)], 1).await;
    expect(&r, Code::OverLimit, &[over(1, Unit::Minute)]);
}

/// config_test.go `TestReplacesSelf`, for TOML: a rule that replaces itself
/// would never be enforced; it is refused.
#[test]
fn toml_replaces_self_is_refused() {
    let toml = "[[rule]]\ndomain = \"d\"\nmatch = [\"k\"]\nname = \"me\"\nreplaces = [\"me\"]\nlimit = { requests = 1, per = \"minute\" }\n";
    let stderr = refused(&[("self.toml", toml)], &[]);
    assert!(
        stderr.contains("self.toml:1: rule[0].replaces: `me` replaces itself"),
        "{stderr}"
    );
}

/// `tollgate import` of the peer's YAML gives TOML with the same answers:
/// config_test.go `TestBasicConfig` again, and the peer's counting
/// (integration_test.go: a denied hit is counted).
async fn import_gives_the_same_answers(store: Store) {
    let dir = scratch_dir("conformance-import");
    std::fs::write(dir.join("basic.yaml"), BASIC).expect("write");
    let out = Command::new(bin())
        .arg("import")
        .arg(&dir)
        .output()
        .expect("run tollgate import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        toml.contains("# Allow-listed: a node with no rate_limit."),
        "{toml}"
    );
    let mut p = peer(store, &[("imported.toml", &toml)], &[]).await;
    basic_config_answers(&mut p).await;
    let r = p
        .ask("test-domain", vec![dh(&[("key2", "count")], 21)], 0)
        .await;
    expect(&r, Code::OverLimit, &[over(20, Unit::Minute)]);
    let r = p.ask("test-domain", vec![d(&[("key2", "count")])], 1).await;
    expect(&r, Code::OverLimit, &[over(20, Unit::Minute)]);
    assert!(header(&r, "retry-after").is_none(), "{r:?}");
}

/// The peer's long units, in every letter case it accepts.
const LONG_UNITS: &str = r#"domain: long
descriptors:
  - key: w
    rate_limit: {unit: week, requests_per_unit: 2}
  - key: m
    rate_limit: {unit: Month, requests_per_unit: 2}
  - key: y
    rate_limit: {unit: YEAR, requests_per_unit: 2}
"#;

const WEEK_S: u64 = 7 * 86_400;
const MONTH_S: u64 = 30 * 86_400;
const YEAR_S: u64 = 365 * 86_400;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The status's reset is the peer's `divider - now % divider`, give or take
/// the second the request took.
#[track_caller]
fn resets_as_the_peer(s: &DescriptorStatus, divider: u64) {
    let reset = s
        .duration_until_reset
        .as_ref()
        .map(|d| d.seconds as u64)
        .unwrap_or_else(|| panic!("no reset: {s:?}"));
    let want = divider - unix_now() % divider;
    assert!(
        reset.abs_diff(want) <= 2,
        "reset {reset}s, the peer's {want}s (divider {divider}s): {s:?}"
    );
}

async fn long_unit_answers(p: &mut Peer) {
    for (key, unit, divider) in [
        ("w", Unit::Week, WEEK_S),
        ("m", Unit::Month, MONTH_S),
        ("y", Unit::Year, YEAR_S),
    ] {
        let r = p.ask("long", vec![d(&[(key, "a")])], 1).await;
        expect(&r, Code::Ok, &[ok(2, unit, 1)]);
        resets_as_the_peer(&r.statuses[0], divider);
        let r = p.repeat(2, "long", &[(key, "a")]).await;
        expect(&r, Code::OverLimit, &[over(2, unit)]);
        resets_as_the_peer(&r.statuses[0], divider);
    }
}

/// No peer test asks for the long units; its source is the spec:
/// src/utils/utilities.go `UnitToDivider` and `CalculateReset` make a
/// week, month and year 7, 30 and 365 days counted from the epoch (a week
/// starts on a Thursday), reset `divider - now % divider`; the same for a
/// request's own WEEK limit (config_test.go `TestConfigLimitOverride`'s
/// path), and for the TOML `tollgate import` writes (`time_zone =
/// "epoch"`). A TOML rule without it keeps tollgate's calendar week (from
/// Monday), side by side.
async fn utilities_unit_to_divider_long_units(store: Store) {
    let mut p = peer(store, &[("long.yaml", LONG_UNITS)], &[]).await;
    long_unit_answers(&mut p).await;
    let r = p
        .ask("long", vec![dl(&[("w", "b")], 1, Unit::Week as i32)], 1)
        .await;
    expect(&r, Code::Ok, &[ok(1, Unit::Week, 0)]);
    resets_as_the_peer(&r.statuses[0], WEEK_S);

    let dir = scratch_dir("conformance-import-long");
    std::fs::write(dir.join("long.yaml"), LONG_UNITS).expect("write");
    let out = Command::new(bin())
        .arg("import")
        .arg(&dir)
        .output()
        .expect("run tollgate import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(toml.matches("time_zone = \"epoch\"").count(), 3, "{toml}");
    let calendar = "[[rule]]\ndomain = \"calendar\"\nmatch = [\"w\"]\nlimit = { requests = 2, per = \"week\" }\n";
    let mut p = peer(
        store,
        &[("imported.toml", &toml), ("calendar.toml", calendar)],
        &[],
    )
    .await;
    long_unit_answers(&mut p).await;
    let r = p.ask("calendar", vec![d(&[("w", "a")])], 1).await;
    let reset = r.statuses[0]
        .duration_until_reset
        .as_ref()
        .map(|d| d.seconds as u64)
        .expect("a reset");
    // 1970-01-05 was the first Monday: calendar weeks are 4 days later.
    let monday = WEEK_S - (unix_now() - 4 * 86_400) % WEEK_S;
    assert!(reset.abs_diff(monday) <= 2, "{reset} vs {monday}: {r:?}");
}

/// One counter of `/metrics`, by its labels (0 when absent).
fn metric(text: &str, family: &str, labels: &str) -> u64 {
    let prefix = format!("{family}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// fixed_cache_impl_test.go `TestNearLimit`, for whole hits (its split of
/// one hit across the threshold is a listed difference), with the peer's
/// `NEAR_LIMIT_RATIO` (base_limiter.go: near past `floor(limit × ratio)`):
/// 10 single hits against 10 are all within (the peer counts a near hit
/// as within too), 2 of them near at the default 0.8 and 5 at 0.5; the
/// 11th is over either way.
async fn fixed_cache_impl_test_near_limit_ratio(store: Store) {
    let yaml = "domain: near\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10}\n";
    for (env, within, near) in [
        (&[][..], 10, 2),
        (&[("NEAR_LIMIT_RATIO", "0.5")][..], 10, 5),
    ] {
        let mut p = peer(store, &[("near.yaml", yaml)], env).await;
        let r = p.repeat(11, "near", &[("k", "a")]).await;
        expect(&r, Code::OverLimit, &[over(10, Unit::Minute)]);
        let m = p.tollgate.metrics();
        let labels = "domain=\"near\",rule=\"k\"";
        let count = |family: &str| metric(&m, family, labels);
        assert_eq!(
            (
                count("tollgate_rule_within_limit_total"),
                count("tollgate_rule_near_limit_total"),
                count("tollgate_rule_over_limit_total"),
                count("tollgate_rule_total_hits_total"),
            ),
            (within, near, 1, 11),
            "{env:?}\n{m}"
        );
    }
}
