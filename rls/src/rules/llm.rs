//! The LLM part of the config: `[llm]` settings, `[[model]]`s, and the
//! quotas and classes in force, as one immutable value a reload swaps.

use super::class::{Classes, MaxWait};
use super::identity::Identity;
use super::price::Price;
use super::quota::Quota;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A validated `[[model]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub name: String,
    pub context_window: u64,
    pub default_max_output: u64,
    /// Tried in order when this model's quotas say no after waiting.
    pub fallback: Vec<String>,
    pub max_wait: Option<MaxWait>,
    /// What its tokens cost; needed by quotas that limit spend.
    pub price: Option<Price>,
}

/// What to charge for a request that ended without reported usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlePolicy {
    /// Keep the estimate charged.
    KeepEstimate,
    /// Give every reserved token back.
    Refund,
    /// Charge the prompt estimate plus the output seen so far.
    ChargeStreamed,
}

impl SettlePolicy {
    pub fn parse(s: &str) -> Option<SettlePolicy> {
        Some(match s {
            "keep_estimate" => SettlePolicy::KeepEstimate,
            "refund" => SettlePolicy::Refund,
            "charge_streamed" => SettlePolicy::ChargeStreamed,
            _ => return None,
        })
    }
}

/// How prompt tokens are estimated before a request goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// A real BPE tokenizer for OpenAI-family models: within a few percent,
    /// at about 50 MB/s; a vocabulary takes some 50 MB, built only for the
    /// configured models that use it (`vocabularies`).
    Bpe,
    /// Bytes ÷ 4: no tables, an order of magnitude faster, looser.
    Bytes,
}

impl Estimator {
    pub fn parse(s: &str) -> Option<Estimator> {
        match s {
            "bpe" => Some(Estimator::Bpe),
            "bytes" => Some(Estimator::Bytes),
            _ => None,
        }
    }
}

/// `[llm]`: how the ext_proc service reads and settles LLM requests.
#[derive(Debug, Clone, Serialize)]
pub struct LlmSettings {
    pub tenant_header: String,
    pub api_key_header: String,
    pub class_header: String,
    pub estimator: Estimator,
    pub inject_stream_usage: bool,
    pub max_body_bytes: usize,
    /// Request bodies held at once by every ext_proc stream together
    /// (waiting requests keep theirs); a body past it is answered 503.
    pub max_buffered_bytes: usize,
    #[serde(with = "humantime_secs")]
    pub reservation_ttl: Duration,
    /// Client gone mid-stream.
    pub on_abort: SettlePolicy,
    /// Upstream answered an error status.
    pub on_upstream_error: SettlePolicy,
    /// Requests for a model without `[[model]]`: allowed with this many
    /// output tokens assumed, or refused when `false`.
    pub allow_unknown_models: bool,
    pub unknown_model_max_output: u64,
    /// The wait when no class, quota or model sets one.
    pub max_wait: MaxWait,
    /// No request waits longer than this in all (fallbacks included).
    #[serde(with = "humantime_secs")]
    pub max_wait_cap: Duration,
    /// The ext_proc filter's `max_message_timeout` in Envoy: the longest
    /// timer extension Envoy accepts (it ignores a longer one and answers
    /// 504). A waiting request asks for what it can still wait, never more
    /// than this, and waits at most this less one second.
    #[serde(with = "humantime_secs")]
    pub max_message_timeout: Duration,
    /// Set on the upstream request to the model it goes to (after a
    /// fallback, the new one), for Envoy to route on.
    pub model_header: String,
    /// The currency of every price and spend limit (a label: tollgate
    /// converts nothing).
    pub currency: String,
    /// Also answer the IETF `RateLimit-Policy` / `RateLimit` fields,
    /// beside the `x-ratelimit-*` ones.
    pub ietf_headers: bool,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            tenant_header: "x-tenant".into(),
            api_key_header: "authorization".into(),
            class_header: "x-priority".into(),
            estimator: Estimator::Bpe,
            inject_stream_usage: true,
            max_body_bytes: 4 << 20,
            max_buffered_bytes: 64 << 20,
            reservation_ttl: Duration::from_secs(600),
            on_abort: SettlePolicy::ChargeStreamed,
            on_upstream_error: SettlePolicy::Refund,
            allow_unknown_models: true,
            unknown_model_max_output: 4096,
            max_wait: MaxWait::Auto,
            max_wait_cap: Duration::from_secs(30),
            // As in the shipped envoy/ext_proc.yaml.
            max_message_timeout: Duration::from_secs(60),
            model_header: "x-tollgate-model".into(),
            currency: "USD".into(),
            ietf_headers: false,
        }
    }
}

/// Durations as "30s" in `/config`.
pub(crate) mod humantime_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// The LLM part of the config.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LlmConfig {
    pub settings: LlmSettings,
    pub models: Vec<Model>,
    pub quotas: Vec<Quota>,
    pub classes: Classes,
    /// `[prices]`: prices of models by name, `[[model]]` or not.
    pub prices: BTreeMap<String, Price>,
}

impl LlmConfig {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The price of a model: its `[[model]]`'s, else the `[prices]` table's.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.model(model)
            .and_then(|m| m.price.as_ref())
            .or_else(|| self.prices.get(model))
    }

    /// Every quota that applies to this identity, in config order.
    pub fn quotas_for<'a>(&'a self, id: &'a Identity) -> impl Iterator<Item = &'a Quota> + 'a {
        self.quotas.iter().filter(move |q| q.matches(id))
    }
}
