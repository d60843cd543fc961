//! The live view of budgets, for operators: `/quotas` (JSON) and the page
//! that draws it (`/` and `/ui`), both on the admin listener. They show
//! tenant values (descriptor values, API key hashes), so they stay where
//! the admin listener is: loopback, or an operator-only network.
//!
//! * `owners`: the config's quotas and rules by id, with each limit's key
//!   segment (read back from the key builders).
//! * `figures`: one counter's used / limit / remaining / reset from the
//!   state the store holds, by the decision arithmetic.
//! * `quotas`: one bounded look at the store, mapped back to owners, keys
//!   and limits, with what reservations in flight hold; the top N.
//! * `page`: the page, one file with its CSS and script inline (no
//!   external asset: it works air-gapped).

mod figures;
mod owners;
mod page;
mod quotas;

pub use figures::Figures;
pub use owners::OwnerKind;
pub use page::{PAGE, PAGE_POLICY};
pub use quotas::{
    quotas, Answer, Filters, KeyView, LimitView, OwnerView, ScanReport, Value, ViewError,
    DEFAULT_TOP, MAX_TOP,
};
