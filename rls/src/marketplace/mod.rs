//! Overflow capacity from an external marketplace: off by default, and
//! when off nothing here exists (no client, no lookup, no socket, no
//! background task).
//!
//! When an LLM request is over budget after its wait and its fallbacks,
//! the admission stage (`engine/admission/market.rs`) may ask for a quote:
//!
//! ```text
//! provider::Marketplace::quote
//!   ├ breaker   open → no call (the 429 stands)
//!   ├ cache     the supply list, 5 min, refreshed in the background while in use
//!   ├ client    GET /v1/supplies, POST /v1/marketplace/quote (tight timeout)
//!   └ quote     checked: shape, expiry, price cap, supplier allowlist
//! served → Envoy routes the request to the supplier; at its end
//! provider::Marketplace::report → reporter (queued, retried, in the background)
//! ```
//!
//! Only metadata leaves (`protocol` lists every field); `docs/marketplace.md`
//! is the contract and the privacy statement.

mod breaker;
mod cache;
mod client;
mod protocol;
mod provider;
mod quote;
mod refusal;
mod reporter;
mod settings;

pub use breaker::BreakerState;
pub use client::BuildError;
pub use protocol::{UsageReport, UsageStatus};
pub use provider::{spawn, Marketplace, QuoteAsk, QUOTE_FIELDS, SUPPLIES_FIELDS, USAGE_FIELDS};
pub use quote::{Quote, Supplier};
pub use refusal::{Failure, Refusal};
pub use settings::{
    AllowedHost, ApiKeySource, BreakerSettings, MarketplaceConfig, Price, ReportSettings,
};
