//! The rule model: what a `[[rule]]` means once validated, and the descriptor
//! tree that finds the rule for a request descriptor.

mod class;
mod limit;
mod quota;
mod rule;
mod tree;

pub use class::{Class, Classes, MaxWait};
pub use limit::{Algorithm, Limit, Period, MAX_COST};
pub use quota::{
    CountSpec, Identity, IdentityKey, LlmConfig, LlmSettings, Model, Quota, QuotaLimit,
    SettlePolicy, Tokens, ValuePattern,
};
pub use rule::{EntryPattern, Rule, RuleId, RuleSet};
pub use tree::RuleTree;
