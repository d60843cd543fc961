//! Decisions: from a [`Check`] and the rules in force to a [`Decision`].

mod check;
mod clock;
mod decide;
mod keys;

pub use check::{Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit};
pub use clock::Clock;
pub use decide::Engine;
