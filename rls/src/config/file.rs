//! The serde views of a config file's tables (`tree` deserializes each
//! table on its own). Fields that validation may refuse are `Spanned`, so
//! the error can name their line.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerView {
    pub grpc_listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub tls_client_ca: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreView {
    pub kind: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub cluster: Option<bool>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub tls_ca: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleView {
    pub domain: Spanned<String>,
    #[serde(rename = "match")]
    pub path: Spanned<Vec<String>>,
    pub limit: Option<Spanned<LimitView>>,
    pub limits: Option<Spanned<Vec<LimitView>>>,
    pub algorithm: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub replaces: Vec<String>,
    #[serde(default)]
    pub unlimited: bool,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    pub on_error: Option<Spanned<String>>,
    /// Reserve/reconcile over RLS: the descriptor key whose value names the
    /// request (e.g. `request_id`).
    pub reserve: Option<Spanned<String>>,
    /// The path matches but sets no limit (envoyproxy/ratelimit's node
    /// without `rate_limit`): allow-lists its values.
    #[serde(default)]
    pub no_limit: bool,
    /// envoyproxy/ratelimit's `quota_mode`.
    #[serde(default)]
    pub quota_mode: bool,
    /// envoyproxy/ratelimit's `metadata`, returned in dynamic metadata.
    pub metadata: Option<Spanned<toml::Table>>,
    /// envoyproxy/ratelimit's `share_threshold`: the `match` keys whose
    /// wildcard counts every value it matches in one counter.
    pub share_threshold: Option<Spanned<Vec<String>>>,
    /// Decide from this instance's lease (overrides `[leases] enabled`).
    pub lease: Option<bool>,
    /// Whose midnights start the rule's days, weeks, months and years: an
    /// IANA zone, `UTC` (the default), or `epoch` (envoyproxy/ratelimit's
    /// fixed 7, 30 and 365 days from the Unix epoch).
    pub time_zone: Option<Spanned<String>>,
}

/// `[envoy_ratelimit]`: envoyproxy/ratelimit's YAML files and the settings
/// it reads from its environment (which, when set, win over these).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerView {
    /// YAML files or directories of `*.yaml`, beside this file's.
    pub yaml: Option<Vec<String>>,
    pub response_headers: Option<bool>,
    pub limit_header: Option<Spanned<String>>,
    pub remaining_header: Option<Spanned<String>>,
    pub reset_header: Option<Spanned<String>>,
    pub stop_increment_when_over_limit: Option<bool>,
    pub shadow_mode: Option<bool>,
    pub quota_mode: Option<bool>,
    pub merge_domains: Option<bool>,
    pub near_limit_ratio: Option<Spanned<f64>>,
    pub dynamic_metadata: Option<bool>,
}

/// `[[domain]]`: how one domain answers, tollgate's way or the peer's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainView {
    pub name: Spanned<String>,
    pub counting: Option<Spanned<String>>,
    pub retry_after: Option<bool>,
    pub response_headers: Option<bool>,
    pub ietf_headers: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeasesView {
    pub enabled: Option<bool>,
    pub ttl: Option<Spanned<String>>,
    pub max_slice: Option<Spanned<f64>>,
    pub first_slice: Option<Spanned<u64>>,
    pub heartbeat: Option<Spanned<String>>,
    pub evict_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitView {
    /// Hits allowed per period; `tokens` reads better when Envoy sends
    /// token counts as `hits_addend`.
    #[serde(alias = "tokens", alias = "hits")]
    pub requests: u64,
    pub per: String,
    pub algorithm: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LlmView {
    pub tenant_header: Option<String>,
    pub api_key_header: Option<String>,
    pub class_header: Option<String>,
    pub estimator: Option<Spanned<String>>,
    pub inject_stream_usage: Option<bool>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub max_buffered_bytes: Option<Spanned<u64>>,
    pub reservation_ttl: Option<Spanned<String>>,
    pub on_abort: Option<Spanned<String>>,
    pub on_upstream_error: Option<Spanned<String>>,
    pub allow_unknown_models: Option<bool>,
    pub unknown_model_max_output: Option<u64>,
    pub max_wait: Option<Spanned<String>>,
    pub max_wait_cap: Option<Spanned<String>>,
    pub max_message_timeout: Option<Spanned<String>>,
    pub model_header: Option<String>,
    pub currency: Option<Spanned<String>>,
    pub ietf_headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelView {
    pub name: Spanned<String>,
    pub context_window: Spanned<u64>,
    pub default_max_output: Spanned<u64>,
    #[serde(default)]
    pub fallback: Vec<String>,
    pub max_wait: Option<Spanned<String>>,
    pub price: Option<Spanned<PriceView>>,
}

/// Prices per million tokens, as written (`input = 2.50`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceView {
    pub input: f64,
    pub output: f64,
    /// Defaults to `input`.
    pub cached_input: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaView {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matchers: Option<Spanned<BTreeMap<String, String>>>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_hour: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_week: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub requests_per_week: Option<u64>,
    pub requests_per_month: Option<u64>,
    /// Money, in the currency's units (`1.50`).
    pub spend_per_minute: Option<f64>,
    pub spend_per_hour: Option<f64>,
    pub spend_per_day: Option<f64>,
    pub spend_per_week: Option<f64>,
    pub spend_per_month: Option<f64>,
    pub max_concurrent: Option<u64>,
    /// Whose midnights start its days, weeks and months.
    pub time_zone: Option<Spanned<String>>,
    pub warn_at: Option<Spanned<f64>>,
    pub algorithm: Option<Spanned<String>>,
    pub count: Option<Spanned<CountView>>,
    pub on_error: Option<Spanned<String>>,
    pub max_wait: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassView {
    pub name: Spanned<String>,
    #[serde(default)]
    pub priority: i64,
    pub share: Option<Spanned<f64>>,
    pub flexible: Option<bool>,
    pub max_wait: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub matchers: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum CountView {
    Name(String),
    Weights(WeightsView),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightsView {
    #[serde(default)]
    pub prompt: f64,
    #[serde(default)]
    pub completion: f64,
    #[serde(default)]
    pub cached: f64,
}
