//! The Istio `EnvoyFilter`s of deploy/istio/, run through a real Envoy
//! with a real tollgate behind it, on the config the Kubernetes manifests
//! ship (ConfigMap + Secret, deploy/kubernetes/) and a real redis-server.
//!
//! Istio itself is not here: each test applies the file's patches to the
//! listener and routes Istio would generate (`apply_envoy_filter`: filters
//! inserted before the router, `MERGE` on the virtual host and the named
//! route), with the tollgate cluster under the name Istio gives the
//! Service's gRPC port, as HTTP/2 (what `appProtocol: grpc` makes Istio
//! do). The patch values themselves are passed to Envoy unchanged. Then:
//! the rate limit filter answers 200 until the shipped per-tenant limit,
//! then 429; the ext_proc filter reserves each LLM request's estimate and
//! settles it to the usage the upstream reported.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_testkit::deploy::{
    istio_bootstrap, istio_gateway_routes, shipped_config, shipped_config_files, yaml_doc,
    RouteSpec,
};
use tollgate_testkit::{
    avoid_window_edge, metric, wait_until, Envoy, MockLlm, RedisServer, Tollgate,
};

/// The shipped per-tenant request limit (domain `edge`, `match =
/// ["tenant"]`) and the per-tenant token budget (quota `per-tenant`).
struct Shipped {
    requests_per_minute: u64,
    tokens_per_minute: u64,
}

fn shipped() -> Shipped {
    let (config, _) = shipped_config_files();
    let v: toml::Value = toml::from_str(&config).expect("the ConfigMap's tollgate.toml is TOML");
    let rule = v["rule"]
        .as_array()
        .expect("[[rule]]")
        .iter()
        .find(|r| {
            r["domain"].as_str() == Some("edge")
                && r["match"]
                    .as_array()
                    .is_some_and(|m| m.len() == 1 && m[0].as_str() == Some("tenant"))
        })
        .expect("a rule for domain edge matching [\"tenant\"]");
    assert_eq!(rule["limit"]["per"].as_str(), Some("minute"));
    let quota = v["quota"]
        .as_array()
        .expect("[[quota]]")
        .iter()
        .find(|q| q["name"].as_str() == Some("per-tenant"))
        .expect("quota per-tenant");
    Shipped {
        requests_per_minute: rule["limit"]["requests"].as_integer().expect("requests") as u64,
        tokens_per_minute: quota["tokens_per_minute"]
            .as_integer()
            .expect("tokens_per_minute") as u64,
    }
}

struct Stack {
    envoy: Envoy,
    tollgate: Tollgate,
    upstream: MockLlm,
    _redis: RedisServer,
    client: reqwest::Client,
}

/// tollgate on the shipped config, Envoy on the EnvoyFilter's patches
/// applied to `routes` in virtual host `vhost_name`.
fn stack(file: &str, context: &str, vhost_name: &str, routes: &[RouteSpec]) -> Stack {
    let redis = RedisServer::start();
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(
        env!("CARGO_BIN_EXE_tollgate"),
        &shipped_config(&redis.url()),
    );
    let (path, names) = istio_bootstrap(
        file,
        context,
        vhost_name,
        routes,
        tollgate.grpc_port(),
        upstream.port(),
    );
    assert_eq!(
        names,
        [
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.ext_proc",
            "envoy.filters.http.router"
        ],
        "{file}: request rates first, then budgets"
    );
    let envoy = Envoy::start(&path, &[] as &[(&str, &str)]);
    Stack {
        envoy,
        tollgate,
        upstream,
        _redis: redis,
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
    }
}

impl Stack {
    /// Waits until an LLM request is answered 200 (tenant `warm-up`, which
    /// no assertion counts). The shipped config uses the BPE estimator,
    /// whose tables load in the background at start: seconds in a debug
    /// build, during which the first LLM request outlasts Envoy's 2 s
    /// message timeout (504).
    async fn warm_up(&self) {
        let start = std::time::Instant::now();
        loop {
            let r = self.chat("warm-up", 5, false).send().await.expect("send");
            if r.status() == 200 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no LLM request answered 200 in 60 s: {}\n{}",
                r.status(),
                self.tollgate.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn chat(&self, tenant: &str, max_tokens: u64, stream: bool) -> reqwest::RequestBuilder {
        self.client
            .post(self.envoy.url("/v1/chat/completions"))
            .header("x-tenant", tenant)
            .json(
                &json!({"model": "gpt-4o", "max_tokens": max_tokens, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}),
            )
    }

    fn metric(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.tollgate.metrics(), family, labels).unwrap_or(0.0)
    }

    /// 200 for each of the tenant's `limit` requests in the minute, then 429
    /// from the rate limit filter.
    async fn rate_limited_after(&self, limit: u64, send: impl Fn(&str) -> reqwest::RequestBuilder) {
        avoid_window_edge(Duration::from_secs(60), Duration::from_secs(20));
        for i in 0..limit {
            let r = send("rls-tenant").send().await.expect("send");
            assert_eq!(
                r.status(),
                200,
                "request {i} of {limit}\n{}",
                self.tollgate.log_text()
            );
        }
        let r = send("rls-tenant").send().await.expect("send");
        assert_eq!(
            r.status(),
            429,
            "request {} of a limit of {limit}",
            limit + 1
        );
        assert_eq!(
            header(&r, "x-envoy-ratelimited").as_deref(),
            Some("true"),
            "denied by the rate limit filter"
        );
        assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
        // Another tenant has its own counter.
        assert_eq!(
            send("other-tenant").send().await.expect("send").status(),
            200
        );
        assert_eq!(
            self.metric(
                "tollgate_rule_over_limit_total",
                &[("domain", "edge"), ("rule", "edge:tenant")]
            ),
            1.0
        );
    }

    /// One JSON and one streamed chat request: each reserves its estimate
    /// before going upstream and is settled to the mock's usage (10 prompt
    /// and 20 completion tokens): reserved − refunded = 30 per request.
    /// Counts are taken as differences, after whatever ran before.
    async fn reserves_and_settles(&self, budget: u64) {
        let reserved = || {
            self.metric(
                "tollgate_quota_tokens_total",
                &[("quota", "per-tenant"), ("kind", "reserved")],
            )
        };
        let refunded = || {
            self.metric(
                "tollgate_quota_tokens_total",
                &[("quota", "per-tenant"), ("kind", "refunded")],
            )
        };
        let settled = || self.metric("tollgate_llm_settlements_total", &[("how", "usage")]);
        let actual = || {
            self.metric(
                "tollgate_llm_tokens_total",
                &[("model", "gpt-4o"), ("kind", "actual")],
            )
        };
        let (reserved0, refunded0, settled0, actual0) =
            (reserved(), refunded(), settled(), actual());

        let r = self
            .chat("llm-tenant", 50, false)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{}", self.tollgate.log_text());
        let remaining: u64 = header(&r, "x-ratelimit-remaining-tokens")
            .expect("x-ratelimit-remaining-tokens on the response")
            .parse()
            .expect("a number");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["usage"]["total_tokens"], 30, "{body}");
        wait_until("the JSON request settled", Duration::from_secs(5), || {
            settled() == settled0 + 1.0
        });
        let estimate = reserved() - reserved0;
        assert!(
            estimate > 50.0,
            "the estimate covers max_tokens: {estimate}"
        );
        // The reservation was taken from the tenant's full budget before the
        // request went upstream...
        assert_eq!(remaining as f64, budget as f64 - estimate);
        // ...and settled to the 30 tokens the upstream reported.
        assert_eq!(refunded() - refunded0, estimate - 30.0);

        let r = self
            .chat("llm-tenant", 50, true)
            .header("x-mock-chunk-delay-ms", "300")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let text = streamed(r).await;
        assert!(text.contains("[DONE]"), "{text}");
        let last = self
            .upstream
            .requests()
            .pop()
            .expect("the upstream saw the request");
        assert_eq!(
            last.json()["stream_options"]["include_usage"],
            true,
            "tollgate asked for usage in the stream"
        );
        wait_until(
            "the streamed request settled",
            Duration::from_secs(5),
            || settled() == settled0 + 2.0,
        );
        assert_eq!(refunded() - refunded0, reserved() - reserved0 - 60.0);
        assert_eq!(actual() - actual0, 60.0);
    }
}

/// Reads a streamed response to its end; asserts that its events came
/// through as the upstream sent them (the mock waits 300 ms before each),
/// not gathered at the end: the first part arrives at least 400 ms before
/// the last.
async fn streamed(mut r: reqwest::Response) -> String {
    let mut text = String::new();
    let mut first = None;
    while let Some(chunk) = r.chunk().await.expect("stream") {
        first.get_or_insert_with(std::time::Instant::now);
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let spread = first.expect("a body").elapsed();
    assert!(
        spread >= Duration::from_millis(400),
        "the stream arrived in one piece ({spread:?}): Envoy buffered it"
    );
    text
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn ingress_gateway_filters_limit_and_budget() {
    let shipped = shipped();
    let s = stack(
        "deploy/istio/ingress-gateway.yaml",
        "GATEWAY",
        "*:80",
        &istio_gateway_routes(),
    );
    s.warm_up().await;
    let streams = |s: &Stack| {
        s.envoy
            .stat("http.ingress.ext_proc.streams_started")
            .unwrap_or(0)
    };
    let before = streams(&s);
    // A route other than `llm` goes through the rate limit filter only.
    s.rate_limited_after(shipped.requests_per_minute, |tenant| {
        s.client
            .get(s.envoy.url("/api/things"))
            .header("x-tenant", tenant)
    })
    .await;
    assert!(before >= 1, "the warm-up went through ext_proc");
    assert_eq!(streams(&s), before, "ext_proc is off outside the llm route");
    assert!(
        s.upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/api/things")
            .count() as u64
            > shipped.requests_per_minute
    );
    // The llm route: budgets, with tollgate's headers from its metadata.
    s.reserves_and_settles(shipped.tokens_per_minute).await;
}

#[tokio::test]
async fn sidecar_filters_limit_and_budget() {
    let shipped = shipped();
    let routes = [RouteSpec {
        name: "default".into(),
        prefix: "/".into(),
        cluster: "inbound|8000||".into(),
        timeout: "0s".into(),
    }];
    let s = stack(
        "deploy/istio/sidecar.yaml",
        "SIDECAR_INBOUND",
        "inbound|http|8000",
        &routes,
    );
    s.warm_up().await;
    // Every request to the workload is an LLM request: the rate limit
    // filter counts them before ext_proc budgets them.
    s.rate_limited_after(shipped.requests_per_minute, |tenant| {
        s.chat(tenant, 5, false)
    })
    .await;
    s.reserves_and_settles(shipped.tokens_per_minute).await;
}

/// The ext_proc filter lets a waiting request ask for as long as tollgate
/// may make it wait: `max_message_timeout` ≥ `[llm] max_wait_cap` + 1 s.
#[test]
fn message_timeouts_cover_the_longest_wait() {
    let (config, _) = shipped_config_files();
    let v: toml::Value = toml::from_str(&config).expect("TOML");
    let cap = seconds(v["llm"]["max_wait_cap"].as_str().expect("max_wait_cap"));
    for file in [
        "deploy/istio/ingress-gateway.yaml",
        "deploy/istio/sidecar.yaml",
    ] {
        let ef = yaml_doc(file, "EnvoyFilter");
        let ext_proc = ef["spec"]["configPatches"]
            .as_array()
            .expect("patches")
            .iter()
            .find(|p| p["patch"]["value"]["name"] == "envoy.filters.http.ext_proc")
            .expect("an ext_proc patch");
        let max = seconds(
            ext_proc["patch"]["value"]["typed_config"]["max_message_timeout"]
                .as_str()
                .expect("max_message_timeout"),
        );
        assert!(
            max > cap,
            "{file}: max_message_timeout {max}s < max_wait_cap {cap}s + 1s"
        );
    }
}

fn seconds(d: &str) -> u64 {
    d.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{d}`: expected whole seconds"))
}
