//! LLM quotas: token, request and concurrency budgets matched on who is
//! asking (tenant, API key, class) and for what (model, route).

use super::class::MaxWait;
use super::identity::{Identity, IdentityKey, ValuePattern};
use super::price::format_micros;
use super::{FailurePolicy, Limit, RuleId};
use serde::Serialize;

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
    /// Money, in micro-units of `[llm] currency`, at the model's prices.
    Spend(Limit),
    Concurrent {
        max: u64,
    },
}

impl QuotaLimit {
    /// The config field that sets it (`spend_per_day`): how a client, a
    /// log line and a metric name it.
    pub fn field(&self) -> String {
        let (what, l) = match self {
            QuotaLimit::Tokens(l) => ("tokens", l),
            QuotaLimit::Requests(l) => ("requests", l),
            QuotaLimit::Spend(l) => ("spend", l),
            QuotaLimit::Concurrent { .. } => return "max_concurrent".into(),
        };
        format!("{what}_per_{}", l.period.as_str())
    }

    /// The field and its amount as configured (`spend_per_day = 1.00 USD`).
    pub fn describe(&self, currency: &str) -> String {
        let amount = match self {
            QuotaLimit::Tokens(l) | QuotaLimit::Requests(l) => l.amount.to_string(),
            QuotaLimit::Spend(l) => format!("{} {currency}", format_micros(l.amount)),
            QuotaLimit::Concurrent { max } => max.to_string(),
        };
        format!("{} = {amount}", self.field())
    }

    /// The amount per window (or the slots), whatever it counts.
    pub fn amount(&self) -> u64 {
        match self {
            QuotaLimit::Tokens(l) | QuotaLimit::Requests(l) | QuotaLimit::Spend(l) => l.amount,
            QuotaLimit::Concurrent { max } => *max,
        }
    }
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
    /// A soft limit: the fraction of a rate or spend limit whose crossing
    /// is logged (once per window and key) and counted.
    pub warn_at: Option<f64>,
    pub source: String,
}

impl Quota {
    /// Whether a limit counts money (then requests need a priced model).
    pub fn limits_spend(&self) -> bool {
        self.limits
            .iter()
            .any(|l| matches!(l, QuotaLimit::Spend(_)))
    }

    pub fn matches(&self, id: &Identity) -> bool {
        self.matchers
            .iter()
            .all(|(k, p)| k.of(id).is_some_and(|v| p.matches(v)))
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
    fn limits_are_named_by_their_field() {
        use crate::rules::{Algorithm, Period};
        let day = Limit::new(1_500_000, Period::Day, Algorithm::FixedWindow);
        let week = Limit::new(70, Period::Week, Algorithm::FixedWindow);
        assert_eq!(
            QuotaLimit::Spend(day).describe("USD"),
            "spend_per_day = 1.50 USD"
        );
        assert_eq!(
            QuotaLimit::Tokens(week).describe("EUR"),
            "tokens_per_week = 70"
        );
        assert_eq!(QuotaLimit::Requests(day).field(), "requests_per_day");
        assert_eq!(
            QuotaLimit::Concurrent { max: 3 }.describe("USD"),
            "max_concurrent = 3"
        );
        assert_eq!(QuotaLimit::Concurrent { max: 3 }.amount(), 3);
        assert_eq!(QuotaLimit::Spend(day).amount(), 1_500_000);
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
            warn_at: None,
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
