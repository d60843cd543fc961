//! What admission is asked and what it answers, free of any wire format:
//! the ext_proc service turns Envoy's messages into an [`Ask`] and an
//! [`Outcome`] back into Envoy's answer.

use crate::engine::budget::BudgetView;
use crate::engine::reservation::Reservation;
use crate::rules::{Identity, LlmConfig, Tokens};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_filters::{Endpoint, RequestError};

/// One LLM request, as its headers and body describe it.
pub struct Ask<'a> {
    pub llm: &'a LlmConfig,
    /// Who asks (tenant, API key hash, class header, route); the model is
    /// filled in from the body.
    pub identity: Identity,
    pub endpoint: Endpoint,
    /// The request body as Envoy buffered it.
    pub body: &'a [u8],
    /// Envoy sent the whole body (a partial one overflowed its buffer).
    pub complete: bool,
    /// The answer must be given by then, however long the request may
    /// wait (what the proxy allows: Envoy's `max_message_timeout`).
    pub deadline: Instant,
    /// Fires when the client goes away: a waiting request stops waiting.
    pub cancel: &'a CancellationToken,
}

/// Whether the request goes upstream.
#[derive(Debug)]
pub enum Outcome {
    Admitted(Box<Admitted>),
    Denied(Denied),
    Rejected(Rejection),
    /// The client went away while the request waited; nothing was taken.
    Cancelled {
        model_label: String,
    },
}

/// A request that goes upstream with its reservation.
#[derive(Debug)]
pub struct Admitted {
    pub reservation: Reservation,
    pub budget: BudgetView,
    /// The model it goes to (after a fallback, not the one asked for).
    pub model: String,
    /// The model asked for, when it fell back.
    pub fallback_from: Option<String>,
    pub waited: Duration,
    /// The body to send upstream instead of the client's, when it changed
    /// (model rewritten after a fallback, stream usage asked for).
    pub body: Option<Vec<u8>>,
    pub endpoint: Endpoint,
    /// The request asked for a streamed (SSE) response.
    pub streamed: bool,
    /// The `model` label of its metrics: a configured model, or `_other`.
    pub model_label: String,
    /// The most its response may charge (`bound`).
    pub usage_bound: super::bound::UsageBound,
}

impl Admitted {
    /// What was reserved, in raw tokens.
    pub fn estimate(&self) -> Tokens {
        self.reservation.estimate
    }
}

/// A request over budget after waiting and every fallback.
#[derive(Debug, Default)]
pub struct Denied {
    /// The quota that said no (last).
    pub quota: String,
    pub retry_after: Duration,
    pub budget: BudgetView,
    pub model_label: String,
}

/// A request refused before any budget was asked.
#[derive(Debug)]
pub enum Rejection {
    /// The body is over `max_body_bytes` (or over Envoy's buffer).
    TooLarge { bytes: usize },
    /// The body is not a request of its endpoint.
    Unreadable(RequestError),
    /// No `[[model]]` of that name, and unknown models are refused.
    UnknownModel,
    /// The prompt (plus the output asked for) does not fit the model.
    ContextExceeded {
        model_label: String,
        context: u64,
        prompt: u64,
        output: u64,
    },
    /// The model has no price and a quota of the request limits spend.
    Unpriced { model_label: String, quota: String },
    /// tollgate failed reading the request (a bug): nothing was taken.
    Internal,
}

/// How the response of an admitted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseEnd {
    /// The response ended; `status` is 0 when the proxy sent none.
    Completed {
        status: u16,
        usage: Option<Tokens>,
        output_bytes: u64,
    },
    /// The stream closed before the response ended (client gone, upstream
    /// reset).
    Aborted { output_bytes: u64 },
}

/// What settling an admitted request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Settled(SettledBy),
    /// Settled before, or expired: nothing changed.
    AlreadySettled,
    /// The store failed: the reservation expires by its TTL, keeping the
    /// estimate charged.
    Failed,
}

/// What a settlement charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettledBy {
    /// The usage the response reported.
    Usage,
    /// A success without usage: the estimate stays charged.
    NoUsage,
    /// An error status (or none): `on_upstream_error`.
    UpstreamError,
    /// The stream closed first: `on_abort`.
    Aborted,
}

impl SettledBy {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SettledBy::Usage => "usage",
            SettledBy::NoUsage => "no_usage",
            SettledBy::UpstreamError => "upstream_error",
            SettledBy::Aborted => "aborted",
        }
    }
}
