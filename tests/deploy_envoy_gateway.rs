//! The `EnvoyExtensionPolicy` of deploy/envoy-gateway/, as the Envoy config
//! it amounts to, run through a real Envoy with a real tollgate behind it
//! (the config deploy/kubernetes/ ships, on a real redis-server).
//!
//! Envoy Gateway is not here. `translate` builds what its translator
//! builds from the policy (envoyproxy/gateway `internal/gatewayapi/
//! envoyextensionpolicy.go` `buildExtProc` and `internal/xds/translator/
//! extproc.go` `extProcConfig`, `buildProcessingMode`, `patchRoute`): one
//! ext_proc filter per policy entry, named
//! `envoy.filters.http.ext_proc/envoyextensionpolicy/<ns>/<name>/extproc/<i>`,
//! disabled in the listener and enabled on the routes of the target
//! HTTPRoute by an empty `FilterConfig`; its gRPC service on the cluster
//! `envoyextensionpolicy/<ns>/<name>/extproc/<i>` with authority
//! `<service>.<namespace>:<port>` and a 10 s timeout; a `request` or
//! `response` block sends that side's headers and its `body` mode;
//! `writableNamespaces` become the receiving namespaces. A policy field it
//! does not know fails the test.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_testkit::deploy::{
    bootstrap, router_filter, shipped_config, shipped_config_files, vhost, yaml_doc, RouteSpec,
};
use tollgate_testkit::{metric, wait_until, Envoy, MockLlm, RedisServer, Tollgate};

const POLICY: &str = "deploy/envoy-gateway/envoyextensionpolicy.yaml";
const ROUTES: &str = "deploy/envoy-gateway/gateway.yaml";

/// What Envoy Gateway makes of the policy: the HTTP filters, the routes
/// of its HTTPRoute (with the filter enabled on each), and the ext_proc
/// cluster's name and the Service it stands for.
struct Translated {
    filters: Vec<Value>,
    vhost: Value,
    cluster: String,
    backend: (String, String, u64),
}

fn translate(policy: &Value, route: &Value) -> Translated {
    let ns = policy["metadata"]["namespace"].as_str().expect("namespace");
    let name = policy["metadata"]["name"].as_str().expect("name");
    let target = &policy["spec"]["targetRefs"][0];
    assert_eq!(target["kind"], "HTTPRoute");
    assert_eq!(
        target["name"], route["metadata"]["name"],
        "the policy targets the HTTPRoute"
    );
    let entries = policy["spec"]["extProc"].as_array().expect("extProc");
    assert_eq!(entries.len(), 1, "one ext_proc entry: tollgate");
    let ep = &entries[0];
    let known = [
        "backendRefs",
        "messageTimeout",
        "failOpen",
        "processingMode",
        "metadata",
    ];
    for key in ep.as_object().expect("extProc entry").keys() {
        assert!(
            known.contains(&key.as_str()),
            "extProc.{key}: not translated by this test"
        );
    }
    let backend = &ep["backendRefs"][0];
    let (svc, svc_ns, port) = (
        backend["name"].as_str().expect("backend name").to_string(),
        backend["namespace"].as_str().unwrap_or(ns).to_string(),
        backend["port"].as_u64().expect("backend port"),
    );
    let config_name = format!("envoyextensionpolicy/{ns}/{name}/extproc/0");
    let filter_name = format!("envoy.filters.http.ext_proc/{config_name}");

    let mode = |side: &Value| -> (&str, &str) {
        match side {
            Value::Null => ("SKIP", "NONE"),
            v => {
                for key in v.as_object().expect("processing mode").keys() {
                    assert!(
                        ["body", "attributes"].contains(&key.as_str()),
                        "processingMode.*.{key}"
                    );
                }
                let body = match v["body"].as_str() {
                    None => "NONE",
                    Some("Buffered") => "BUFFERED",
                    Some("Streamed") => "STREAMED",
                    Some("BufferedPartial") => "BUFFERED_PARTIAL",
                    Some("FullDuplexStreamed") => "FULL_DUPLEX_STREAMED",
                    Some(other) => panic!("body mode {other}"),
                };
                ("SEND", body)
            }
        }
    };
    let pm = &ep["processingMode"];
    let (req_headers, req_body) = mode(&pm["request"]);
    let (resp_headers, resp_body) = mode(&pm["response"]);
    let trailer = |body: &str| {
        if body == "FULL_DUPLEX_STREAMED" {
            "SEND"
        } else {
            "SKIP"
        }
    };
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {
            "envoy_grpc": {"cluster_name": config_name, "authority": format!("{svc}.{svc_ns}:{port}")},
            "timeout": "10s"
        },
        "processing_mode": {
            "request_header_mode": req_headers,
            "response_header_mode": resp_headers,
            "request_body_mode": req_body,
            "response_body_mode": resp_body,
            "request_trailer_mode": trailer(req_body),
            "response_trailer_mode": trailer(resp_body)
        },
        "failure_mode_allow": ep["failOpen"].as_bool().unwrap_or(false),
        "allow_mode_override": pm["allowModeOverride"].as_bool().unwrap_or(false)
    });
    if let Some(t) = ep["messageTimeout"].as_str() {
        config["message_timeout"] = json!(t);
    }
    if pm["request"]["attributes"].is_array() {
        config["request_attributes"] = pm["request"]["attributes"].clone();
    }
    if pm["response"]["attributes"].is_array() {
        config["response_attributes"] = pm["response"]["attributes"].clone();
    }
    let md = &ep["metadata"];
    if md.is_object() {
        let mut opts = json!({});
        if md["accessibleNamespaces"].is_array() {
            opts["forwarding_namespaces"] = json!({"untyped": md["accessibleNamespaces"]});
        }
        if md["writableNamespaces"].is_array() {
            opts["receiving_namespaces"] = json!({"untyped": md["writableNamespaces"]});
        }
        config["metadata_options"] = opts;
    }
    let filter = json!({"name": filter_name, "disabled": true, "typed_config": config});

    // The HTTPRoute's rules, each with the policy's filter enabled.
    let mut routes = Vec::new();
    for (i, rule) in route["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .enumerate()
    {
        let path = &rule["matches"][0]["path"];
        assert_eq!(path["type"], "PathPrefix", "rule {i}");
        routes.push(RouteSpec {
            name: format!("rule-{i}"),
            prefix: path["value"].as_str().expect("prefix").to_string(),
            cluster: "llm".into(),
            timeout: rule["timeouts"]["request"]
                .as_str()
                .unwrap_or("15s")
                .to_string(),
        });
    }
    let mut vh = vhost("llm-gateway/http", &routes);
    for r in vh["routes"].as_array_mut().expect("routes") {
        r["typed_per_filter_config"] = json!({
            filter_name.clone(): {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
        });
    }
    Translated {
        filters: vec![filter, router_filter()],
        vhost: vh,
        cluster: config_name,
        backend: (svc, svc_ns, port),
    }
}

#[tokio::test]
async fn extension_policy_reserves_and_settles_through_envoy() {
    let policy = yaml_doc(POLICY, "EnvoyExtensionPolicy");
    let route = yaml_doc(ROUTES, "HTTPRoute");
    let t = translate(&policy, &route);
    // The backend is the tollgate Service's gRPC port.
    let svc = yaml_doc("deploy/kubernetes/service.yaml", "Service");
    let grpc = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("grpc port");
    assert_eq!(
        (t.backend.0.as_str(), t.backend.2),
        (
            svc["metadata"]["name"].as_str().expect("name"),
            grpc["port"].as_u64().expect("port")
        )
    );
    let ns = yaml_doc("deploy/kubernetes/kustomization.yaml", "Kustomization")["namespace"].clone();
    assert_eq!(t.backend.1, ns.as_str().expect("namespace"));

    let redis = RedisServer::start();
    let upstream = MockLlm::start();
    let tollgate = Tollgate::start(
        env!("CARGO_BIN_EXE_tollgate"),
        &shipped_config(&redis.url()),
    );
    let path = bootstrap(
        t.filters,
        t.vhost,
        &[
            (t.cluster.as_str(), tollgate.grpc_port(), true),
            ("llm", upstream.port(), false),
        ],
        "envoy-gateway",
    );
    let envoy = Envoy::start(&path, &[] as &[(&str, &str)]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let chat = |tenant: &str, stream: bool| {
        client
            .post(envoy.url("/v1/chat/completions"))
            .header("x-tenant", tenant)
            .json(
                &json!({"model": "gpt-4o", "max_tokens": 50, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}),
            )
    };
    let m = |family: &str, labels: &[(&str, &str)]| {
        metric(&tollgate.metrics(), family, labels).unwrap_or(0.0)
    };

    // The shipped config's BPE tables load in the background at start
    // (seconds in a debug build); wait for an LLM request to pass.
    let start = std::time::Instant::now();
    while chat("warm-up", false)
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 200 in 60 s\n{}",
            tollgate.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reserved = || {
        m(
            "tollgate_quota_tokens_total",
            &[("quota", "per-tenant"), ("kind", "reserved")],
        )
    };
    let refunded = || {
        m(
            "tollgate_quota_tokens_total",
            &[("quota", "per-tenant"), ("kind", "refunded")],
        )
    };
    let settled = || m("tollgate_llm_settlements_total", &[("how", "usage")]);
    let (reserved0, refunded0, settled0) = (reserved(), refunded(), settled());

    // JSON: reserved before it went upstream (tollgate read x-tenant from
    // the headers message and set x-ratelimit-* on the response itself)...
    let r = chat("eg-tenant", false).send().await.expect("send");
    assert_eq!(r.status(), 200, "{}", tollgate.log_text());
    let remaining: f64 = r
        .headers()
        .get("x-ratelimit-remaining-tokens")
        .expect("x-ratelimit-remaining-tokens")
        .to_str()
        .expect("text")
        .parse()
        .expect("number");
    wait_until("the JSON request settled", Duration::from_secs(5), || {
        settled() == settled0 + 1.0
    });
    let estimate = reserved() - reserved0;
    let (config, _) = shipped_config_files();
    let budget = toml::from_str::<toml::Value>(&config).expect("TOML")["quota"][0]
        ["tokens_per_minute"]
        .as_integer()
        .expect("budget") as f64;
    assert_eq!(
        remaining,
        budget - estimate,
        "taken from eg-tenant's full budget"
    );
    // ...and settled to the 30 tokens the mock reported.
    assert_eq!(refunded() - refunded0, estimate - 30.0);

    // SSE, streamed through (STREAMED response body), settled at its end.
    let mut r = chat("eg-tenant", true)
        .header("x-mock-chunk-delay-ms", "300")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // The events pass through as the upstream sends them (300 ms apart),
    // not gathered at the end.
    let mut text = String::new();
    let mut first = None;
    while let Some(chunk) = r.chunk().await.expect("stream") {
        first.get_or_insert_with(std::time::Instant::now);
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let spread = first.expect("a body").elapsed();
    assert!(
        spread >= Duration::from_millis(400),
        "the stream arrived in one piece ({spread:?})"
    );
    assert!(text.contains("[DONE]"), "{text}");
    wait_until("the stream settled", Duration::from_secs(5), || {
        settled() == settled0 + 2.0
    });
    assert_eq!(refunded() - refunded0, reserved() - reserved0 - 60.0);
    assert_eq!(
        upstream.requests().last().expect("request").json()["stream_options"]["include_usage"],
        true
    );
}

/// Envoy Gateway sets no `max_message_timeout`, so tollgate's request for
/// more time while a request waits is ignored: `messageTimeout` itself must
/// cover `[llm] max_wait_cap` + 1 s.
#[test]
fn message_timeout_covers_the_longest_wait() {
    let policy = yaml_doc(POLICY, "EnvoyExtensionPolicy");
    let (config, _) = shipped_config_files();
    let v: toml::Value = toml::from_str(&config).expect("TOML");
    let secs = |d: &str| -> u64 {
        d.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{d}"))
    };
    let cap = secs(v["llm"]["max_wait_cap"].as_str().expect("max_wait_cap"));
    let timeout = secs(
        policy["spec"]["extProc"][0]["messageTimeout"]
            .as_str()
            .expect("messageTimeout"),
    );
    assert!(
        timeout > cap,
        "messageTimeout {timeout}s must exceed max_wait_cap {cap}s"
    );
}
