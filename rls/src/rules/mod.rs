//! The rule model: what a `[[rule]]` means once validated, and the descriptor
//! tree that finds the rule for a request descriptor.

mod limit;
mod rule;
mod tree;

pub use limit::{Algorithm, Limit, Period, MAX_COST};
pub use rule::{EntryPattern, Rule, RuleId, RuleSet};
pub use tree::RuleTree;
