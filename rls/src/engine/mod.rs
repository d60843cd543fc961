//! Decisions: from a [`Check`] and the rules in force to a [`Decision`].

mod budget;
mod check;
mod clock;
mod decide;
mod keys;
mod rls_reserve;

pub use budget::{
    token_cost, BudgetView, Remaining, Reservation, Reserved, Settlement, Taken, TakenKind,
};
pub use check::{Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit};
pub use clock::Clock;
pub use decide::Engine;
