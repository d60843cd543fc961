//! Why the marketplace did not serve a request. Every refusal leaves the
//! client's original 429 as it was; the kind is only counted and logged.

/// Why a request was not served by the marketplace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No offer for the model under the price cap (from the supply list,
    /// cached, or the quote's 404).
    NoSupply,
    /// The marketplace answered 429, now or within its `retry_after`.
    Busy,
    /// The circuit breaker is open (or its one probe is out): no call made.
    BreakerOpen,
    /// The quote expired before it could be used.
    Expired,
    /// The quote costs more than `max_price_per_mtoken`.
    OverPrice,
    /// The quote's supplier host is not in `allowed_hosts`.
    HostNotAllowed,
    /// The quote is the protocol's shape with values tollgate cannot use
    /// (an endpoint that is not https, an empty id, a token that is not a
    /// header value, a time that is not RFC 3339).
    Malformed,
    /// The call failed.
    Failed(Failure),
    /// The request's own deadline left no time to ask.
    NoTime,
}

/// How a call failed: each counts towards opening the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An error status (other than 404 and 429).
    Status,
    /// No answer within the step's time.
    Timeout,
    /// No connection (refused, reset, DNS).
    Unreachable,
    /// An answer that is not the protocol's (not JSON, wrong shape, too big).
    Garbage,
}

impl Refusal {
    /// The `result` label of `tollgate_marketplace_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSupply => "no_supply",
            Refusal::Busy => "busy",
            Refusal::BreakerOpen => "breaker_open",
            Refusal::Expired => "expired",
            Refusal::OverPrice => "over_price",
            Refusal::HostNotAllowed => "host_not_allowed",
            Refusal::Malformed => "malformed",
            Refusal::Failed(f) => f.as_str(),
            Refusal::NoTime => "no_time",
        }
    }

    /// Whether this refusal counts against the marketplace's health.
    pub fn is_failure(self) -> bool {
        matches!(self, Refusal::Failed(_) | Refusal::Malformed)
    }
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Status => "error",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Garbage => "garbage",
        }
    }
}
