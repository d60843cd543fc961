//! The rule model: what the config means once validated, free of TOML and
//! of any wire format. Imports run one way: `config` builds these, the
//! engine reads them, and nothing here imports either.
//!
//! * `rule`, `tree`, `limit`: envoyproxy/ratelimit-style rules and the
//!   descriptor tree that finds the rule for a request descriptor.
//! * `identity`, `quota`, `class`, `llm`: LLM quotas, priority classes and
//!   models, matched on who is asking and for what; `price`: what tokens
//!   cost, in integer micro-units.
//! * `policy`: what to answer when the store fails; `lease`: which shared
//!   budgets an instance leases slices of.
//! * `mode`: how a domain answers (tollgate's all-or-nothing or
//!   envoyproxy/ratelimit's per-descriptor counting, and its headers).

mod calendar;
mod class;
mod identity;
mod lease;
mod limit;
mod llm;
mod mode;
mod policy;
mod price;
mod quota;
mod rule;
mod tree;

pub use class::{Class, Classes, MaxWait};
pub use identity::{Identity, IdentityKey, ValuePattern};
pub use lease::LeasePolicy;
pub use limit::{Algorithm, Limit, Period, Zone, MAX_COST};
pub use llm::{Estimator, LlmConfig, LlmSettings, Model, SettlePolicy};
pub use mode::{Counting, DomainMode, LimitHeaders};
pub use policy::FailurePolicy;
pub use price::{format_micros, micros, MoneyError, Price, MICROS};
pub use quota::{CountSpec, Quota, QuotaLimit, Tokens};
pub use rule::{glob_matches, EntryPattern, Rule, RuleId, RuleSet};
pub use tree::RuleTree;
