//! The stack the `marketplace_*` tests share: a mock marketplace (plain
//! HTTP, every byte kept), a mock supplier (TLS, its own CA), the mock LLM
//! as the local upstream, tollgate on a config with one `[marketplace]`
//! section, and a real Envoy on `envoy/marketplace.yaml`.
//!
//! The budgets: tenant `t` may send one `gpt-4o` request a minute and one
//! `gpt-4o-mini` (its fallback) a minute, token buckets (no window edge to
//! avoid), each waiting `WAIT` for capacity. So the first request goes to
//! the local upstream, the second falls back, and from the third on every
//! `gpt-4o` request is over budget after its wait and fallback: the
//! marketplace's turn. `gpt-4o-mini` is not opted in: its 429 is the
//! original one, as the marketplace never sees it.

#![allow(dead_code)]

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tollgate_testkit::{
    scratch_dir, Envoy, MockLlm, MockMarketplace, MockSupplier, Pki, Supply, Tollgate,
};

/// The marketplace API key tollgate is given (from a file).
pub const KEY: &str = "mk-live-KEY-3b9d21";
/// The signed token the supplier expects, from the quote.
pub const TOKEN: &str = "signed.SUPPLIER-TOKEN.5e2c";
/// The client's own credential: never at the marketplace or the supplier.
pub const CLIENT_KEY: &str = "sk-CLIENT-KEY-9c1e77";
/// The supplier's name for gpt-4o (the body is rewritten to it).
pub const SUPPLIER_MODEL: &str = "gpt-4o-supplier-2026";
/// Usage the supplier reports.
pub const SUPPLIER_PROMPT: u64 = 31;
pub const SUPPLIER_COMPLETION: u64 = 17;

pub const WAIT: &str = "200ms";

pub struct Stack {
    pub tollgate: Tollgate,
    pub envoy: Envoy,
    pub upstream: MockLlm,
    pub market: MockMarketplace,
    pub supplier: MockSupplier,
    pub pki: Pki,
    pub url: String,
    pub key_file: PathBuf,
}

/// The base config: models and quotas, no `[marketplace]`.
pub fn base_config() -> String {
    format!(
        r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[llm]
estimator = "bytes"
max_wait = "0s"

[[model]]
name = "gpt-4o"
context_window = 4000
default_max_output = 100
fallback = ["gpt-4o-mini"]

[[model]]
name = "gpt-4o-mini"
context_window = 4000
default_max_output = 100

[[quota]]
name = "big"
match = {{ tenant = "t", model = "gpt-4o" }}
requests_per_minute = 1
algorithm = "token_bucket"
max_wait = "{WAIT}"

[[quota]]
name = "small"
match = {{ tenant = "t", model = "gpt-4o-mini" }}
requests_per_minute = 1
algorithm = "token_bucket"
max_wait = "{WAIT}"
"#
    )
}

/// An enabled `[marketplace]` for the mock at `url`, its key in
/// `key_file`, with `extra` lines.
pub fn enabled(url: &str, key_file: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[marketplace]
enabled = true
endpoint = "{url}"
api_key_file = "{}"
models = ["gpt-4o"]
max_price_per_mtoken = 5.0
allowed_hosts = ["localhost"]
region = "eu-west"
{extra}
"#,
        key_file.display()
    )
}

/// Starts everything; `section` gives the `[marketplace]` text from the
/// mock marketplace's URL and the key file. `rust_log` is tollgate's
/// `RUST_LOG`.
pub fn start(section: impl Fn(&str, &std::path::Path) -> String, rust_log: &str) -> Stack {
    let pki = Pki::new("marketplace");
    let supplier = MockSupplier::start(&pki, TOKEN, SUPPLIER_PROMPT, SUPPLIER_COMPLETION);
    let market = MockMarketplace::start(
        KEY,
        Supply {
            supply_id: "supply-1".into(),
            endpoint: supplier.endpoint(),
            signed_token: TOKEN.into(),
            price_per_mtoken: 4.0,
            model: Some(SUPPLIER_MODEL.into()),
        },
    );
    let key_file = scratch_dir("marketplace-key").join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let upstream = MockLlm::start();
    let config = format!("{}{}", base_config(), section(&market.url(), &key_file));
    let tollgate = Tollgate::start_with_log(env!("CARGO_BIN_EXE_tollgate"), &config, rust_log);
    let envoy = Envoy::start(
        "marketplace.yaml",
        &[
            ("UPSTREAM_PORT", upstream.port().to_string()),
            ("TOLLGATE_PORT", tollgate.grpc_port().to_string()),
            ("SUPPLIER_CA_FILE", pki.ca().display().to_string()),
        ],
    );
    let url = envoy.url("/v1/chat/completions");
    Stack {
        tollgate,
        envoy,
        upstream,
        market,
        supplier,
        pki,
        url,
        key_file,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// A chat request from tenant `t` with the client's own key.
pub fn chat(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    content: &str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("x-tenant", "t")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .json(&json!({"model": model, "max_tokens": 10,
                      "messages": [{"role": "user", "content": content}]}))
}

pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

/// Spends the local budgets: one request served upstream, one by the
/// fallback. Every `gpt-4o` request after these is over budget.
pub async fn spend_budgets(s: &Stack, c: &reqwest::Client) {
    for expect_model in ["gpt-4o", "gpt-4o-mini"] {
        let r = chat(c, &s.url, "gpt-4o", "spend")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{}", s.tollgate.log_text());
        assert_eq!(
            header(&r, "x-tollgate-model").as_deref(),
            Some(expect_model)
        );
        assert_eq!(header(&r, "x-tollgate-provider"), None);
    }
}

/// One sample of a family with these labels (0 when absent).
pub fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    tollgate_testkit::metric(text, family, labels).unwrap_or(0.0)
}

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s: {what}");
}

/// The parts of a 429 that a client sees, minus the seconds that change
/// with time: header names, and the body with digits masked.
pub async fn shape_of_429(r: reqwest::Response) -> (Vec<String>, String) {
    assert_eq!(r.status(), 429);
    let mut names: Vec<String> = r
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k != "date")
        .collect();
    names.sort();
    let body = r.text().await.expect("body");
    let masked: String = body
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    (names, masked)
}
