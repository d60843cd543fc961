//! The marketplace stage: after the wait and every fallback said no, an
//! opted-in request may be offered to the marketplace for a quote. Served,
//! it goes to the quoted supplier and charges no local budget; refused for
//! any reason, the denial stands exactly as it was.

use super::outcome::{Ask, Brokered, Denied, Outcome, Tried};
use super::stages::{self, Candidate};
use crate::marketplace::{Marketplace, MarketplaceConfig, QuoteAsk};
use crate::rules::Class;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_filters::LlmRequest;

/// The marketplace, when this request may be offered to it: built at
/// start, and the config in force opts in its model and class.
pub(super) fn offered<'m>(
    market: Option<&'m Marketplace>,
    policy: &MarketplaceConfig,
    model: &Candidate,
    class: Option<&Class>,
) -> Option<&'m Marketplace> {
    market.filter(|_| policy.opted_in(&model.name, class.map(|c| c.name.as_str())))
}

/// The longest the step may take: the configured timeout, never past the
/// request's deadline.
pub(super) fn budget(policy: &MarketplaceConfig, deadline: Instant) -> Duration {
    policy
        .timeout
        .min(deadline.saturating_duration_since(Instant::now()))
}

/// Asks `market` for a quote for the request `denied` refused: the
/// brokered request, or the denial with why the marketplace did not serve.
pub(super) async fn ask(
    market: &Marketplace,
    ask: &Ask<'_>,
    request: &LlmRequest,
    asked: &Candidate,
    denied: Denied,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + budget(ask.marketplace, ask.deadline);
    let request_id = uuid::Uuid::new_v4().to_string();
    let estimate = stages::estimate(asked, request);
    let quote = QuoteAsk {
        request_id: &request_id,
        model: &asked.name,
        estimated_tokens: estimate.prompt.saturating_add(estimate.completion),
    };
    let quoted = tokio::select! {
        q = market.quote(ask.marketplace, quote, deadline) => q,
        // The client went away: the call is dropped (the breaker counts it
        // neither way) and nothing was taken.
        _ = ask.cancel.cancelled() => {
            return Outcome::Cancelled { model_label: asked.label.clone() }
        }
    };
    let took = started.elapsed();
    match quoted {
        Ok(quote) => Outcome::Brokered(Box::new(Brokered {
            request_id,
            quote,
            model: asked.name.clone(),
            model_label: asked.label.clone(),
            budget: denied.budget,
            body: None,
            endpoint: ask.endpoint,
            streamed: request.stream,
            estimate,
            took,
            at: Instant::now(),
        })),
        Err(refusal) => Outcome::Denied(Denied {
            marketplace: Some(Tried { refusal, took }),
            ..denied
        }),
    }
}
