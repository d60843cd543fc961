//! LLM quotas: token, request and concurrency budgets matched on who is
//! asking (tenant, API key, class) and for what (model, route).

use super::class::{Classes, MaxWait};
use super::{Limit, RuleId};
use crate::config::FailurePolicy;
use serde::Serialize;
use std::time::Duration;

/// What a request is, for quota matching. Built by the ext_proc service
/// from headers and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Option<String>,
    /// A hash of the API key, never the key itself.
    pub api_key: Option<String>,
    pub class: Option<String>,
    pub model: String,
    pub route: String,
}

/// The identity fields a quota can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKey {
    Tenant,
    ApiKey,
    Class,
    Model,
    Route,
}

impl IdentityKey {
    pub fn parse(s: &str) -> Option<IdentityKey> {
        Some(match s {
            "tenant" => IdentityKey::Tenant,
            "api_key" => IdentityKey::ApiKey,
            "class" => IdentityKey::Class,
            "model" => IdentityKey::Model,
            "route" => IdentityKey::Route,
            _ => return None,
        })
    }

    pub fn of(self, id: &Identity) -> Option<&str> {
        match self {
            IdentityKey::Tenant => id.tenant.as_deref(),
            IdentityKey::ApiKey => id.api_key.as_deref(),
            IdentityKey::Class => id.class.as_deref(),
            IdentityKey::Model => Some(id.model.as_str()),
            IdentityKey::Route => Some(id.route.as_str()),
        }
    }
}

/// A value pattern in a quota's `match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValuePattern {
    /// This value only.
    Exact(String),
    /// Any value starting with this (written `prefix*`).
    Prefix(String),
    /// Any value, a separate budget per value (written `*`).
    Each,
}

impl ValuePattern {
    pub fn parse(s: &str) -> ValuePattern {
        if s == "*" {
            ValuePattern::Each
        } else if let Some(p) = s.strip_suffix('*') {
            ValuePattern::Prefix(p.to_string())
        } else {
            ValuePattern::Exact(s.to_string())
        }
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            ValuePattern::Exact(v) => v == value,
            ValuePattern::Prefix(p) => value.starts_with(p.as_str()),
            ValuePattern::Each => true,
        }
    }
}

/// How tokens become a cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSpec {
    Prompt,
    Completion,
    Total,
    /// A weighted sum; `cached` weighs the prompt tokens served from the
    /// provider's cache (counted as prompt at estimate time).
    Weights {
        prompt: f64,
        completion: f64,
        cached: f64,
    },
}

/// Token counts: an estimate before the response, usage after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Of `prompt`, how many were cached.
    pub cached: u64,
}

impl CountSpec {
    /// The cost of these tokens under this count.
    pub fn cost(&self, t: &Tokens) -> u64 {
        match *self {
            CountSpec::Prompt => t.prompt,
            CountSpec::Completion => t.completion,
            CountSpec::Total => t.prompt.saturating_add(t.completion),
            CountSpec::Weights {
                prompt,
                completion,
                cached,
            } => {
                let cached_n = t.cached.min(t.prompt);
                let fresh = (t.prompt - cached_n) as f64;
                (fresh * prompt + cached_n as f64 * cached + t.completion as f64 * completion)
                    .ceil() as u64
            }
        }
    }
}

/// One budget of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum QuotaLimit {
    Tokens(Limit),
    Requests(Limit),
    Concurrent { max: u64 },
}

/// A validated `[[quota]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Quota {
    pub id: RuleId,
    pub name: String,
    pub matchers: Vec<(IdentityKey, ValuePattern)>,
    pub limits: Vec<QuotaLimit>,
    pub count: CountSpec,
    pub on_error: Option<FailurePolicy>,
    /// How long a request this quota denies may wait for it.
    pub max_wait: Option<MaxWait>,
    pub source: String,
}

impl Quota {
    pub fn matches(&self, id: &Identity) -> bool {
        self.matchers
            .iter()
            .all(|(k, p)| k.of(id).is_some_and(|v| p.matches(v)))
    }
}

/// A validated `[[model]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub name: String,
    pub context_window: u64,
    pub default_max_output: u64,
    /// Tried in order when this model's quotas say no after waiting.
    pub fallback: Vec<String>,
    pub max_wait: Option<MaxWait>,
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

/// `[llm]`: how the ext_proc service reads and settles LLM requests.
#[derive(Debug, Clone, Serialize)]
pub struct LlmSettings {
    pub tenant_header: String,
    pub api_key_header: String,
    pub class_header: String,
    /// `bpe` (a real tokenizer for OpenAI-family models) or `bytes` (÷4).
    pub estimator: String,
    pub inject_stream_usage: bool,
    pub max_body_bytes: usize,
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
    /// No request waits longer than this in all (fallbacks included);
    /// Envoy's ext_proc `max_message_timeout` must allow it.
    #[serde(with = "humantime_secs")]
    pub max_wait_cap: Duration,
    /// Set on the upstream request to the model it goes to (after a
    /// fallback, the new one), for Envoy to route on.
    pub model_header: String,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            tenant_header: "x-tenant".into(),
            api_key_header: "authorization".into(),
            class_header: "x-priority".into(),
            estimator: "bpe".into(),
            inject_stream_usage: true,
            max_body_bytes: 4 << 20,
            reservation_ttl: Duration::from_secs(600),
            on_abort: SettlePolicy::ChargeStreamed,
            on_upstream_error: SettlePolicy::Refund,
            allow_unknown_models: true,
            unknown_model_max_output: 4096,
            max_wait: MaxWait::Auto,
            max_wait_cap: Duration::from_secs(30),
            model_header: "x-tollgate-model".into(),
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
}

impl LlmConfig {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Every quota that applies to this identity, in config order.
    pub fn quotas_for<'a>(&'a self, id: &'a Identity) -> impl Iterator<Item = &'a Quota> + 'a {
        self.quotas.iter().filter(move |q| q.matches(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let t = Tokens {
            prompt: 100,
            completion: 50,
            cached: 40,
        };
        assert_eq!(CountSpec::Prompt.cost(&t), 100);
        assert_eq!(CountSpec::Completion.cost(&t), 50);
        assert_eq!(CountSpec::Total.cost(&t), 150);
        let w = CountSpec::Weights {
            prompt: 1.0,
            completion: 4.0,
            cached: 0.0,
        };
        assert_eq!(w.cost(&t), 60 + 200);
    }

    #[test]
    fn matching() {
        let q = Quota {
            id: RuleId::new("q", &[]),
            name: "q".into(),
            matchers: vec![
                (IdentityKey::Tenant, ValuePattern::Each),
                (IdentityKey::Model, ValuePattern::Prefix("gpt-4o".into())),
            ],
            limits: vec![],
            count: CountSpec::Total,
            on_error: None,
            max_wait: None,
            source: String::new(),
        };
        let mut id = Identity {
            tenant: Some("a".into()),
            model: "gpt-4o-mini".into(),
            ..Default::default()
        };
        assert!(q.matches(&id));
        id.tenant = None;
        assert!(
            !q.matches(&id),
            "a quota on tenants does not match anonymous requests"
        );
        id.tenant = Some("a".into());
        id.model = "claude".into();
        assert!(!q.matches(&id));
    }
}
