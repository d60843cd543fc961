//! The harness's own tests: each helper starts its real process, answers,
//! and survives the kill/restart moves the failure tests rely on.

use std::time::Duration;
use tollgate_testkit::{
    find_tool, render_template, repo_root, scratch_dir, Envoy, Fault, MockLlm, NetNs, Nginx, Pki,
    RedisCluster, RedisServer, Signal, Tollgate,
};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

#[test]
fn a_missing_tool_panics_naming_the_install_script() {
    let err = std::panic::catch_unwind(|| find_tool("no-such-tool-tollgate", "NO_SUCH_TOOL_BIN"))
        .expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("scripts/install-test-deps.sh"), "{msg}");
}

#[test]
fn redis_server_kill_and_restart_on_the_same_port() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.cli(&["GET", "k"]), "v");
    let port = redis.port();
    redis.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["GET", "k"]), "", "nothing is persisted");
}

/// One PING over a fresh TCP connection to `addr`: the round trip, or
/// `None` if nothing answered within `within`.
fn resp_ping(addr: std::net::SocketAddr, within: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, within).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    let connected = start.elapsed();
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).ok()?;
    assert_eq!(&buf, b"+PONG\r\n");
    Some(start.elapsed() - connected)
}

fn namespaces() -> String {
    let out = std::process::Command::new(find_tool("ip", "IP"))
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis inside a namespace, across the link: reached at the
/// namespace's address; the link's delay is seen on each round trip, a
/// partition lets nothing through, clearing it heals; `cli` works inside
/// whatever the link does; everything is gone after the drop, a panic's
/// included.
#[test]
fn redis_in_a_namespace_behind_a_faulty_link() {
    let ns = NetNs::create();
    let name = ns.name().to_string();
    assert!(namespaces().contains(&name));
    let redis = RedisServer::start_in(&ns);
    let addr = std::net::SocketAddr::from((ns.inside_ip(), redis.port()));
    assert_eq!(redis.url(), format!("redis://{addr}"));
    let healthy = resp_ping(addr, Duration::from_secs(2)).expect("PONG across the link");
    ns.set_fault(Fault::delay(Duration::from_millis(100), Duration::ZERO));
    let delayed = resp_ping(addr, Duration::from_secs(2)).expect("PONG, later");
    assert!(
        delayed >= Duration::from_millis(200),
        "100 ms each way: a round trip of {delayed:?}"
    );
    ns.set_fault(Fault::partition());
    assert_eq!(resp_ping(addr, Duration::from_millis(500)), None);
    assert_eq!(redis.cli(&["PING"]), "PONG", "inside, no fault");
    let (_, dropped) = ns.packets();
    assert!(dropped > 0);
    ns.clear_fault();
    assert!(resp_ping(addr, Duration::from_secs(2)).is_some(), "healed");
    eprintln!("round trip: healthy {healthy:?}, 100 ms each way {delayed:?}");
    drop(redis);
    drop(ns);
    assert!(!namespaces().contains(&name), "{name} deleted");

    let mut created = String::new();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = NetNs::create();
        created = ns.name().to_string();
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    assert!(
        !namespaces().contains(&created),
        "{created} deleted while unwinding"
    );
}

#[test]
fn redis_cluster_of_three_masters() {
    let mut cluster = RedisCluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    // Keys land on different masters; -c follows the MOVED redirections.
    for key in ["a", "b", "c", "{tenant}x"] {
        assert_eq!(cluster.cli(0, &["SET", key, "1"]), "OK");
        assert_eq!(cluster.cli(2, &["GET", key]), "1");
    }
    let slots = cluster.cli(1, &["CLUSTER", "INFO"]);
    assert!(slots.contains("cluster_slots_assigned:16384"), "{slots}");
    cluster.kill_node(1);
    cluster.restart_node(1);
    assert!(cluster
        .cli(1, &["CLUSTER", "INFO"])
        .contains("cluster_state:ok"));
}

/// Every config in envoy/ passes `envoy --mode validate`, with its port
/// placeholders (`*_PORT`, `*_PORT_<n>`) filled with example ports,
/// `*_FILE` with certificates made for the test, and the others left to the
/// harness defaults.
#[test]
fn envoy_configs_validate() {
    let dir = repo_root().join("envoy");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read envoy/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == "ratelimit.yaml"), "{names:?}");
    let pki = Pki::new("envoy-validate");
    let issued = pki.issue("envoy", 1);
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).expect("read template");
        let mut vars: Vec<(String, String)> = Vec::new();
        for (i, piece) in text.split("{{").skip(1).enumerate() {
            let key = piece.split("}}").next().unwrap_or_default().to_string();
            if vars.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if key.contains("PORT") {
                vars.push((key, (20000 + i).to_string()));
            } else if let Some(file) = key.strip_suffix("_FILE") {
                // Envoy reads certificate files even when it only validates.
                let path = if file.ends_with("CA") {
                    pki.ca()
                } else if file.ends_with("KEY") {
                    issued.key.clone()
                } else {
                    issued.cert.clone()
                };
                vars.push((key, path.display().to_string()));
            } else if key == "ESTIMATE" {
                vars.push((key, "1000".to_string()));
            }
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Envoy::validate(&name, &vars);
    }
}

/// The README's demo config is envoy/ratelimit.yaml with fixed ports plus an
/// upstream listener: every line of the rendered template appears in it, in
/// order, so the two cannot drift apart.
#[test]
fn demo_config_follows_the_template() {
    let rendered = render_template(
        "ratelimit.yaml",
        &[
            ("LISTEN_PORT", "10000"),
            ("ADMIN_PORT", "9901"),
            ("UPSTREAM_PORT", "10001"),
            ("TOLLGATE_PORT", "8081"),
            ("FAILURE_MODE_DENY", "false"),
        ],
    );
    let demo = std::fs::read_to_string(repo_root().join("envoy/demo-ratelimit.yaml"))
        .expect("read envoy/demo-ratelimit.yaml");
    let yaml_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let demo_lines = yaml_lines(&demo);
    let mut rest = demo_lines.iter();
    for line in yaml_lines(&rendered) {
        assert!(
            rest.any(|d| *d == line),
            "envoy/demo-ratelimit.yaml lacks (or reorders) this line of envoy/ratelimit.yaml: `{line}`"
        );
    }
}

/// With nothing on the rate limit service port, `failure_mode_deny: true`
/// answers 500 (so a broken tollgate is visible) and `false` lets the
/// request through to the upstream: the filter is in the chain either way.
#[tokio::test]
async fn envoy_ratelimit_filter_in_front_of_the_mock() {
    let upstream = MockLlm::start();
    let dead = tollgate_testkit::free_port().to_string();
    let up = upstream.port().to_string();
    let deny = Envoy::start(
        "ratelimit.yaml",
        &[("UPSTREAM_PORT", up.as_str()), ("TOLLGATE_PORT", &dead)],
    );
    let open = Envoy::start(
        "ratelimit.yaml",
        &[
            ("UPSTREAM_PORT", up.as_str()),
            ("TOLLGATE_PORT", &dead),
            ("FAILURE_MODE_DENY", "false"),
        ],
    );
    assert_ne!(deny.listener_port(), 0);
    assert!(deny.admin_url().starts_with("http://127.0.0.1:"));
    let c = client();
    let r = c
        .get(deny.url("/x"))
        .header("x-tenant", "a")
        .send()
        .await
        .expect("GET via envoy");
    assert_eq!(r.status(), 500, "failure_mode_deny: true");
    let r = c
        .get(open.url("/x"))
        .header("x-tenant", "a")
        .send()
        .await
        .expect("GET via envoy");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "ok\n");
    assert_eq!(upstream.request_count(), 1, "only the fail-open request");
    assert_eq!(deny.stat("cluster.upstream.ratelimit.error"), Some(1));
    assert_eq!(
        open.stat("cluster.upstream.ratelimit.failure_mode_allowed"),
        Some(1)
    );
}

#[tokio::test]
async fn mock_llm_json_usage_from_headers_and_records_requests() {
    let mock = MockLlm::start();
    let c = client();
    let body: serde_json::Value = c
        .post(format!("{}/v1/chat/completions", mock.url()))
        .header("x-mock-prompt-tokens", "7")
        .header("x-mock-completion-tokens", "9")
        .header("x-mock-cached-tokens", "2")
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["usage"]["total_tokens"], 16);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    let got = mock.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(got[0].header("X-Mock-Prompt-Tokens"), Some("7"));
    assert_eq!(got[0].json()["messages"][0]["content"], "hi");

    let r = c
        .post(format!("{}/v1/messages", mock.url()))
        .header("x-mock-status", "529")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 529);
    let err: serde_json::Value = r.json().await.expect("JSON error");
    assert_eq!(err["type"], "error");

    let r = c
        .get(format!("{}/anything", mock.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "ok\n");
}

#[tokio::test]
async fn mock_llm_streams_slowly_and_can_fail_mid_stream() {
    let mock = MockLlm::start();
    let c = client();
    let url = format!("{}/v1/chat/completions", mock.url());
    let req = serde_json::json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}});
    let started = std::time::Instant::now();
    let r = c
        .post(&url)
        .header("x-mock-chunks", "5")
        .header("x-mock-chunk-delay-ms", "20")
        .json(&req)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.expect("stream");
    // role chunk + 5 content chunks + finish + usage + [DONE], 20 ms apart
    assert!(
        started.elapsed() >= Duration::from_millis(9 * 20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(text.matches("data: ").count(), 9, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        text.contains(r#""choices":[]"#) && text.contains(r#""total_tokens":30"#),
        "{text}"
    );

    let cut = c
        .post(&url)
        .header("x-mock-fail-mid-stream", "true")
        .json(&req)
        .send()
        .await
        .expect("headers arrive before the cut")
        .text()
        .await;
    assert!(cut.is_err(), "the body must end in an error: {cut:?}");
    tollgate_testkit::wait_until("streams to end", Duration::from_secs(5), || {
        mock.open_streams() == 0
    });
}

/// Tollgate's harness against a stand-in that speaks the ready-file
/// protocol (the real binary is tested from the tollgate package).
#[test]
fn tollgate_ready_file_and_signals() {
    let dir = scratch_dir("fake-tollgate");
    let fake = dir.join("fake-tollgate.sh");
    std::fs::write(
        &fake,
        // `env --default-signal`: sh cannot trap a signal that was ignored
        // when it started (POSIX), and a runner started with `nohup`
        // passes SIGHUP on ignored; tollgate itself installs its handler
        // whatever it inherits.
        "#!/usr/bin/env -S --default-signal=HUP /bin/sh\n# serve --config FILE --ready-file READY\n\
         trap 'echo got HUP' HUP\n\
         printf '{\"grpc\":\"127.0.0.1:1111\",\"admin\":\"127.0.0.1:2222\"}' > \"$5.tmp\"\n\
         mv \"$5.tmp\" \"$5\"\n\
         while :; do sleep 0.05 & wait $!; done\n",
    )
    .expect("write fake");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    let mut t = Tollgate::start(
        fake.to_str().expect("utf-8 path"),
        "[store]\nkind = \"memory\"\n",
    );
    assert_eq!(t.grpc_addr(), "127.0.0.1:1111");
    assert_eq!(t.grpc_port(), 1111);
    assert_eq!(t.admin_url(), "http://127.0.0.1:2222");
    assert!(std::fs::read_to_string(t.config_path())
        .expect("config")
        .contains("memory"));
    // The fake waits for its sleep with the `wait` builtin, which a
    // trapped signal interrupts at once (a foreground `sleep` defers the
    // trap until it ends).
    t.signal(Signal::SIGHUP);
    let start = std::time::Instant::now();
    while !t.log_text().contains("got HUP") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the HUP was not logged within 10 s; the log: {:?}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.signal(Signal::SIGTERM);
    assert!(!t.wait_exit(Duration::from_secs(5)).success());
}

#[tokio::test]
async fn nginx_proxies_to_the_mock() {
    let mock = MockLlm::start();
    let port = mock.port().to_string();
    let nginx = Nginx::start(
        "server {\n  listen 127.0.0.1:{{LISTEN_PORT}};\n  location / { proxy_pass http://127.0.0.1:{{UPSTREAM_PORT}}; }\n}",
        &[("UPSTREAM_PORT", port.as_str())],
    );
    let r = client()
        .get(nginx.url("/via-nginx"))
        .send()
        .await
        .expect("GET via nginx");
    assert_eq!(r.status(), 200);
    assert!(mock.requests().iter().any(|r| r.path == "/via-nginx"));
}
