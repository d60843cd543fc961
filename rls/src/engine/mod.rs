//! Decisions: from a [`Check`] and the rules in force to a [`Decision`].

mod budget;
mod check;
mod clock;
mod decide;
mod keys;
mod queue;
mod rls_reserve;
mod shares;
mod wait;

pub use budget::{
    token_cost, BudgetView, Remaining, Reservation, Reserved, Settlement, Taken, TakenKind,
};
pub use check::{Check, Code, Decision, Descriptor, DescriptorResult, MatchedLimit};
pub use clock::Clock;
pub use decide::Engine;
pub use queue::{Ticket, WaitLines, Woken};
pub use shares::{adjust, ClassRatio, Shares, Tuning};
pub use wait::{WaitFor, Waited};
