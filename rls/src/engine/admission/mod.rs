//! LLM admission: whether one request may go upstream, and settling it
//! when its response ends.
//!
//! [`Admission::admit`] runs the stages in order, each of which may answer:
//!
//! ```text
//! read body ─▶ model ─▶ context ─▶ class ─▶ priced ─▶ candidates ─▶ reserve or wait ─▶ fallback ─▶ deny
//!   413/400     400       400                  400      (model +        (budget::wait)    (next         429
//!                                                        fallbacks)                        candidate)
//! ```
//!
//! A new stage (a capacity marketplace, say) is one more step in
//! [`Admission::run`]. [`Admission::finish`] turns how the response ended
//! into a settlement by the configured policies. Every outcome is counted
//! and logged in one place (`observe`).

mod bound;
mod observe;
mod outcome;
mod request;
mod response;
mod stages;

pub use bound::UsageBound;
pub use outcome::{Admitted, Ask, Denied, Finished, Outcome, Rejection, ResponseEnd, SettledBy};
pub use response::ResponseReader;
pub use stages::OTHER_MODEL;

use super::budget::{Budgets, WaitFor, Waited};
use super::reservation::Settlement;
use crate::rules::{Class, Identity, LlmConfig, LlmSettings, SettlePolicy, Tokens};
use stages::Candidate;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_filters::{self as filters, LlmRequest};

/// Admits and settles LLM requests. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    budgets: Budgets,
}

impl Admission {
    pub fn new(budgets: Budgets) -> Admission {
        Admission { budgets }
    }

    /// Decides whether the request goes upstream. `on_wait` is called once,
    /// just before the request first waits for capacity, with the longest
    /// it may still wait (fallbacks included), never past `ask.deadline`.
    pub async fn admit(&self, ask: Ask<'_>, on_wait: impl FnMut(Duration)) -> Outcome {
        let outcome = self.run(ask, on_wait).await;
        observe::admission(self.budgets.counters().metrics(), &outcome);
        outcome
    }

    async fn run(&self, ask: Ask<'_>, on_wait: impl FnMut(Duration)) -> Outcome {
        let llm = ask.llm;
        let request = match request::read(llm, ask.endpoint, ask.body, ask.complete).await {
            Ok(r) => r,
            Err(r) => return Outcome::Rejected(r),
        };
        let first = match stages::model(llm, &request) {
            Ok(m) => m,
            Err(r) => return Outcome::Rejected(r),
        };
        if let Err(r) = stages::context(&first, &request) {
            return Outcome::Rejected(r);
        }
        let mut identity = ask.identity.clone();
        let class = stages::class(llm, &mut identity);
        if let Err(r) = stages::priced(llm, &identity, &first) {
            return Outcome::Rejected(r);
        }
        let candidates = stages::candidates(llm, first, &request);
        let latest = ask.deadline.min(Instant::now() + llm.settings.max_wait_cap);
        let wait = Wait {
            llm,
            class,
            candidates: &candidates,
            latest,
            announced: false,
        };
        self.reserve_or_fall_back(&ask, &request, identity, wait, on_wait)
            .await
    }

    /// Reserves on each candidate in turn, waiting as long as each may:
    /// the first that admits serves the request; when none does, the
    /// request is denied.
    async fn reserve_or_fall_back(
        &self,
        ask: &Ask<'_>,
        request: &LlmRequest,
        mut identity: Identity,
        mut wait: Wait<'_>,
        mut on_wait: impl FnMut(Duration),
    ) -> Outcome {
        let (llm, candidates, class) = (ask.llm, wait.candidates, wait.class);
        let asked = &candidates[0];
        let mut denied = Denied::default();
        for (i, candidate) in candidates.iter().enumerate() {
            identity.model = candidate.name.clone();
            let waited = self
                .budgets
                .reserve_or_wait(
                    WaitFor {
                        llm,
                        id: &identity,
                        class,
                        estimate: stages::estimate(candidate, request),
                        ttl: llm.settings.reservation_ttl,
                        latest: wait.latest,
                    },
                    ask.cancel,
                    |until| wait.started(&identity, i, until, &mut on_wait),
                )
                .await;
            match waited {
                Waited::Admitted {
                    reservation,
                    headers,
                    waited,
                } => {
                    let admitted = Admitted {
                        reservation,
                        budget: headers,
                        model: candidate.name.clone(),
                        fallback_from: (i > 0).then(|| asked.name.clone()),
                        waited,
                        body: None,
                        endpoint: ask.endpoint,
                        streamed: request.stream,
                        model_label: candidate.label.clone(),
                        usage_bound: UsageBound::new(candidate.context, request.max_output_tokens),
                    };
                    let admitted = upstream_body(llm, admitted, ask.body, request);
                    return Outcome::Admitted(Box::new(admitted));
                }
                // Over budget after waiting: the next model, if any.
                Waited::Denied {
                    quota,
                    retry_after,
                    headers,
                    ..
                } => {
                    denied = Denied {
                        quota,
                        retry_after,
                        budget: headers,
                        model_label: asked.label.clone(),
                    };
                }
                Waited::Cancelled => {
                    return Outcome::Cancelled {
                        model_label: asked.label.clone(),
                    }
                }
            }
        }
        Outcome::Denied(denied)
    }

    /// Settles an admitted request by how its response ended: the reported
    /// usage, or what `settings`' policies charge when there is none.
    pub async fn finish(
        &self,
        settings: &LlmSettings,
        admitted: &Admitted,
        end: ResponseEnd,
    ) -> Finished {
        let end = bound::checked(self.budgets.counters().metrics(), admitted, end);
        let (settlement, how) = settlement(settings, &admitted.reservation.estimate, end);
        let finished = match self.budgets.settle(&admitted.reservation, settlement).await {
            Ok(true) => Finished::Settled(how),
            Ok(false) => Finished::AlreadySettled,
            Err(e) => {
                // The record's TTL frees the slot and keeps the estimate.
                tracing::warn!(error = %e, "settle failed; the reservation expires by its TTL");
                Finished::Failed
            }
        };
        observe::finished(
            self.budgets.counters().metrics(),
            admitted,
            settlement,
            end,
            finished,
        );
        finished
    }
}

/// Envoy takes one timer extension per message, so the first wait asks
/// for every wait still possible: this one's, then each fallback's.
struct Wait<'a> {
    llm: &'a LlmConfig,
    class: Option<&'a Class>,
    candidates: &'a [Candidate],
    latest: Instant,
    announced: bool,
}

impl Wait<'_> {
    /// Candidate `i` is about to wait until `until`: the first time, tell
    /// `on_wait` the longest the request may still wait.
    fn started(
        &mut self,
        id: &Identity,
        i: usize,
        until: Instant,
        on_wait: &mut impl FnMut(Duration),
    ) {
        if std::mem::replace(&mut self.announced, true) {
            return;
        }
        let mut end = Some(until);
        for later in &self.candidates[i + 1..] {
            let id = Identity {
                model: later.name.clone(),
                ..id.clone()
            };
            end = match (end, stages::longest_wait(self.llm, &id, self.class)) {
                (Some(e), Some(d)) => Some(e + d),
                _ => None,
            };
        }
        let end = end.map_or(self.latest, |e| e.min(self.latest));
        on_wait(end.saturating_duration_since(Instant::now()));
    }
}

/// The body the admitted request goes upstream with: the fallback model
/// written in, and streamed usage asked for when configured.
fn upstream_body(
    llm: &LlmConfig,
    mut admitted: Admitted,
    body: &[u8],
    request: &LlmRequest,
) -> Admitted {
    let mut new_body = None;
    if admitted.fallback_from.is_some() {
        match filters::rewrite_model(body, &admitted.model) {
            Ok(b) => new_body = Some(b),
            // The body parsed a moment ago; if it cannot be rewritten the
            // upstream sees the model asked for, and the log says so.
            Err(e) => {
                tracing::error!(error = %e, to = %admitted.model, "cannot rewrite the model of a fallen-back request")
            }
        }
    }
    if llm.settings.inject_stream_usage && request.stream && !request.stream_usage_requested {
        let current = new_body.as_deref().unwrap_or(body);
        match filters::ensure_stream_usage(admitted.endpoint, current) {
            Ok(Some(b)) => new_body = Some(b),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the upstream for streamed usage; the estimate may stay charged")
            }
        }
    }
    admitted.body = new_body;
    admitted
}

/// The settlement of a response end, and which kind it is.
fn settlement(
    settings: &LlmSettings,
    estimate: &Tokens,
    end: ResponseEnd,
) -> (Settlement, SettledBy) {
    match end {
        ResponseEnd::Completed {
            status,
            usage: Some(u),
            ..
        } if status < 400 => (Settlement::Usage(u), SettledBy::Usage),
        ResponseEnd::Completed {
            status,
            output_bytes,
            ..
        } if status >= 400 || status == 0 => (
            assumed(settings.on_upstream_error, estimate, output_bytes),
            SettledBy::UpstreamError,
        ),
        ResponseEnd::Completed { output_bytes, .. } => (
            assumed(SettlePolicy::KeepEstimate, estimate, output_bytes),
            SettledBy::NoUsage,
        ),
        ResponseEnd::Aborted { output_bytes } => (
            assumed(settings.on_abort, estimate, output_bytes),
            SettledBy::Aborted,
        ),
    }
}

/// The tokens a policy charges when no usage was reported.
fn assumed(policy: SettlePolicy, estimate: &Tokens, output_bytes: u64) -> Settlement {
    Settlement::Assumed(match policy {
        SettlePolicy::KeepEstimate => *estimate,
        SettlePolicy::Refund => Tokens::default(),
        SettlePolicy::ChargeStreamed => Tokens {
            prompt: estimate.prompt,
            completion: output_bytes.div_ceil(4),
            cached: 0,
        },
    })
}
