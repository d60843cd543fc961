//! The live view end to end: a real tollgate behind a real Envoy (ext_proc,
//! the mock LLM upstream) and its HTTP check API, then `/quotas` over
//! HTTP (memory and Redis), and the quota page in a real headless
//! chromium (Debian's, driven by playwright-core): it shows the quotas and
//! keys with the right figures, redraws itself after more requests, loads
//! nothing from anywhere else, and shows a tenant's markup as text. The
//! screenshot is kept at `target/tollgate-test/quotas-page.png`.
//!
//! Estimates use `bytes`: a chat with one message "hi" and `max_tokens =
//! 100` reserves 8 + 100 = 108 tokens; the mock reports 10 + 20 = 30. In
//! money at 2.50 / 10.00 USD per million tokens in / out: 8 × 2.5 + 100 ×
//! 10 = 1,020 micro-dollars reserved, 10 × 2.5 + 20 × 10 = 225 spent.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;
use tollgate_testkit::{
    avoid_window_edge, find_tool, repo_root, Envoy, MockLlm, RedisServer, Tollgate,
};

fn config(store: &str) -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
{store}

[llm]
estimator = "bytes"
max_wait = "0s"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100

[prices]
"gpt-4o" = {{ input = 2.50, output = 10.00, cached_input = 1.25 }}

[[quota]]
name = "team"
match = {{ tenant = "*" }}
tokens_per_minute = 1000
requests_per_minute = 10
max_concurrent = 5
spend_per_day = 1.00

[[rule]]
domain = "edge"
match  = ["tenant"]
limit  = {{ requests = 10, per = "minute" }}
"#
    )
}

struct Stack {
    tollgate: Tollgate,
    envoy: Envoy,
    _upstream: MockLlm,
    client: reqwest::Client,
}

impl Stack {
    fn start(store: &str) -> Stack {
        let upstream = MockLlm::start();
        let tollgate = Tollgate::start(env!("CARGO_BIN_EXE_tollgate"), &config(store));
        let envoy = Envoy::start(
            "ext_proc.yaml",
            &[
                ("UPSTREAM_PORT", upstream.port().to_string()),
                ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
                ("TOLLGATE_PORT_2", tollgate.grpc_port().to_string()),
            ],
        );
        Stack {
            tollgate,
            envoy,
            _upstream: upstream,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    fn chat(&self, tenant: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.envoy.url("/v1/chat/completions"))
            .header("x-tenant", tenant)
            .json(&json!({"model": "gpt-4o", "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hi"}]}))
    }

    /// A chat that completes: 108 reserved, settled at 30.
    async fn settled_chat(&self, tenant: &str) {
        let r = self.chat(tenant).send().await.expect("send");
        assert_eq!(r.status(), 200, "{}", self.tollgate.log_text());
        r.text().await.expect("body");
    }

    /// One rate limit hit on `edge`, the tenant sent verbatim.
    async fn check(&self, tenant: &str) {
        let r = self
            .client
            .get(format!("{}/check", self.tollgate.admin_url()))
            .header("x-tollgate-domain", "edge")
            .header("x-tollgate-entry", format!("tenant={tenant}"))
            .send()
            .await
            .expect("check");
        assert_eq!(r.status(), 200);
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.tollgate.admin_url()))
            .send()
            .await
            .expect("admin answers")
    }

    async fn quotas(&self, query: &str) -> Value {
        let r = self.get(&format!("/quotas{query}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }
}

/// The figures of one key of one quota in a `/quotas` answer, by kind.
fn figures<'a>(answer: &'a Value, quota: &str, tenant: &str, kind: &str) -> &'a Value {
    let q = answer["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == quota))
        .unwrap_or_else(|| panic!("no {quota} in {answer}"));
    let at = q["limits"]
        .as_array()
        .and_then(|ls| ls.iter().position(|l| l["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} limit in {q}"));
    let key = q["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["values"][0]["value"] == tenant))
        .unwrap_or_else(|| panic!("no tenant {tenant} in {q}"));
    &key["counters"][at]
}

fn used_reserved_remaining(f: &Value) -> (u64, u64, u64) {
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
    (n("used"), n("reserved"), n("remaining"))
}

/// Known traffic, then `/quotas` over HTTP: exact figures, with one
/// request in flight; filters; bad queries refused.
async fn endpoint_figures(store: &str) {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(30));
    let s = Stack::start(store);
    s.settled_chat("acme").await;
    s.settled_chat("acme").await;
    let mut slow = s
        .chat("beta")
        .header("x-mock-chunks", "40")
        .header("x-mock-chunk-delay-ms", "500")
        .json(
            &json!({"model": "gpt-4o", "max_tokens": 100, "stream": true,
                       "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(slow.status(), 200);
    slow.chunk().await.expect("first chunk");
    for _ in 0..3 {
        s.check("acme").await;
    }

    let a = s.quotas("").await;
    assert_eq!(a["scan"]["complete"], true, "{a}");
    assert_eq!(
        used_reserved_remaining(figures(&a, "team", "acme", "tokens")),
        (60, 0, 940)
    );
    assert_eq!(
        used_reserved_remaining(figures(&a, "team", "acme", "requests")),
        (2, 0, 8)
    );
    assert_eq!(
        used_reserved_remaining(figures(&a, "team", "beta", "tokens")),
        (108, 108, 892),
        "the stream in flight holds its estimate"
    );
    assert_eq!(
        used_reserved_remaining(figures(&a, "team", "beta", "concurrent")),
        (1, 1, 4)
    );
    assert_eq!(
        used_reserved_remaining(figures(&a, "edge:tenant", "acme", "requests")),
        (3, 0, 7)
    );
    assert_eq!(
        used_reserved_remaining(figures(&a, "team", "acme", "spend")),
        (450, 0, 999_550)
    );
    let beta = figures(&a, "team", "beta", "spend");
    assert_eq!(used_reserved_remaining(beta), (1020, 1020, 998_980));
    assert_eq!(
        (&beta["money"]["reserved"], &beta["money"]["remaining"]),
        (&json!("0.00102"), &json!("0.99898"))
    );
    let team = a["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "team"))
        .expect("team");
    let spend = team["limits"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["kind"] == "spend"))
        .expect("the spend limit");
    assert_eq!(
        (&spend["limit"], &spend["currency"], &spend["limit_money"]),
        (&json!(1_000_000), &json!("USD"), &json!("1.00"))
    );
    assert_eq!(team["in_flight"], 1);
    assert_eq!(team["keys_in_use"], 2);

    let only = s.quotas("?quota=team&tenant=beta&top=5").await;
    assert_eq!(only["quotas"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["quotas"][0]["keys_in_use"], 1);
    assert_eq!(only["filters"]["top"], 5);

    for (query, status, says) in [
        ("?quota=nope", 404, "no quota or rule named `nope`"),
        ("?top=0", 400, "top: `0`"),
        ("?top=many", 400, "top: `many`"),
        ("?tenent=acme", 400, "unknown parameter `tenent`"),
    ] {
        let r = s.get(&format!("/quotas{query}")).await;
        assert_eq!(r.status(), status, "{query}");
        let body: Value = r.json().await.expect("a JSON error");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{query}: {body}"
        );
    }
    drop(slow);
}

#[tokio::test]
async fn quotas_endpoint_on_memory() {
    endpoint_figures("kind = \"memory\"").await;
}

#[tokio::test]
async fn quotas_endpoint_on_redis() {
    let redis = RedisServer::start();
    endpoint_figures(&format!("kind = \"redis\"\nurl = \"{}\"", redis.url())).await;
}

/// The page driver (`tests/browser/quotas_page.mjs`): one JSON line per
/// step each way.
struct Browser {
    child: Child,
    /// Closed first on drop: the driver then closes chromium and removes
    /// its profile directory.
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl Browser {
    /// Opens `url` in chromium. Fails (never skips) without chromium, node
    /// or playwright-core, naming the install script.
    fn open(url: &str) -> Browser {
        let chromium = find_tool("chromium", "CHROMIUM_BIN");
        let node = find_tool("node", "NODE_BIN");
        let dir = repo_root().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is not installed in {}: run scripts/install-test-deps.sh",
            dir.display()
        );
        let mut child = Command::new(node)
            .arg(dir.join("quotas_page.mjs"))
            .arg(url)
            .env("CHROMIUM_BIN", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let to = child.stdin.take().expect("stdin");
        let from = BufReader::new(child.stdout.take().expect("stdout"));
        Browser {
            child,
            to: Some(to),
            from,
        }
    }

    /// Waits until every condition holds on the page; returns what it shows.
    fn step(&mut self, until: Value, screenshot: Option<&str>) -> Value {
        let line = json!({"until": until, "screenshot": screenshot}).to_string();
        let to = self.to.as_mut().expect("the driver's stdin is open");
        writeln!(to, "{line}").expect("write to the driver");
        to.flush().expect("flush");
        let mut answer = String::new();
        self.from
            .read_line(&mut answer)
            .expect("read from the driver");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("the driver said {answer:?}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.to.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cond(quota: &str, key: &str, kind: &str, field: &str, value: u64) -> Value {
    json!({"quota": quota, "key": key, "kind": kind, "field": field, "value": value})
}

/// One counter as the page shows it.
fn shown<'a>(page: &'a Value, quota: &str, key: &str, kind: &str) -> &'a Value {
    page["page"][quota][key]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["kind"] == kind))
        .unwrap_or_else(|| panic!("the page shows no {kind} of {key} in {quota}: {page}"))
}

#[tokio::test]
async fn the_page_shows_live_figures_and_redraws_itself() {
    avoid_window_edge(Duration::from_secs(60), Duration::from_secs(40));
    let s = Stack::start("kind = \"memory\"");
    for path in ["/", "/ui"] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap_or_default();
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
    }
    s.settled_chat("acme").await;
    s.settled_chat("acme").await;
    let mut slow = s
        .chat("beta")
        .header("x-mock-chunks", "60")
        .header("x-mock-chunk-delay-ms", "500")
        .json(
            &json!({"model": "gpt-4o", "max_tokens": 100, "stream": true,
                       "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(slow.status(), 200);
    slow.chunk().await.expect("first chunk");
    for _ in 0..3 {
        s.check("acme").await;
    }
    s.check("<img src=x onerror=alert(1)>").await;

    let mut browser = Browser::open(&format!("{}/ui?refresh=1", s.tollgate.admin_url()));
    let first = browser.step(
        json!([
            cond("team", "tenant=acme", "tokens", "used", 60),
            cond("team", "tenant=beta", "tokens", "reserved", 108),
            cond("edge:tenant", "tenant=acme", "requests", "used", 3),
            cond("team", "tenant=acme", "spend", "used", 450),
        ]),
        None,
    );
    assert_eq!(
        first["ok"], true,
        "the page never showed the figures: {first}"
    );
    let tokens = shown(&first, "team", "tenant=acme", "tokens");
    assert_eq!(
        (&tokens["limit"], &tokens["remaining"], &tokens["spent"]),
        (&json!("1000"), &json!("940"), &json!("60"))
    );
    assert_eq!(
        tokens["bars"],
        json!([["spent", "6%"], ["reserved", "0%"], ["left", "94%"]])
    );
    let beta = shown(&first, "team", "tenant=beta", "tokens");
    assert_eq!(
        (&beta["used"], &beta["spent"], &beta["remaining"]),
        (&json!("108"), &json!("0"), &json!("892"))
    );
    let money = shown(&first, "team", "tenant=beta", "spend");
    assert_eq!(money["reserved"], "1020", "micro-units in the data");
    let text = money["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("spend per day") && text.contains("0.00102 / 1.00 USD · 0.00102 reserved"),
        "in the currency: {text}"
    );
    let slot = shown(&first, "team", "tenant=beta", "concurrent");
    assert_eq!((&slot["used"], &slot["limit"]), (&json!("1"), &json!("5")));
    assert!(
        first["page"]["edge:tenant"]["tenant=<img src=x onerror=alert(1)>"].is_array(),
        "a tenant's markup is shown as text: {first}"
    );
    assert_eq!(first["markup"], json!([]), "no element inside a key's name");
    assert_eq!(first["errors"], json!([]), "no script error");

    // More traffic; the page redraws by itself.
    s.settled_chat("acme").await;
    s.settled_chat("acme").await;
    s.check("acme").await;
    s.check("acme").await;
    let shot = repo_root().join("target/tollgate-test/quotas-page.png");
    let second = browser.step(
        json!([
            cond("team", "tenant=acme", "tokens", "used", 120),
            cond("team", "tenant=acme", "requests", "used", 4),
            cond("edge:tenant", "tenant=acme", "requests", "used", 5),
        ]),
        shot.to_str(),
    );
    assert_eq!(second["ok"], true, "the page did not update: {second}");
    assert!(
        second["refreshes"].as_u64() > first["refreshes"].as_u64(),
        "{second}"
    );
    let beta = shown(&second, "team", "tenant=beta", "tokens");
    assert_eq!(beta["reserved"], "108", "still in flight");
    let origin = s.tollgate.admin_url();
    for url in second["requests"].as_array().expect("requests") {
        let url = url.as_str().unwrap_or_default();
        assert!(url.starts_with(&origin), "the page asked for {url}");
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "screenshot at {}",
        shot.display()
    );
    drop(slow);
}
