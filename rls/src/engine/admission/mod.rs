//! LLM admission: whether one request may go upstream, and settling it
//! when its response ends.
//!
//! [`Admission::admit`] runs the stages in order, each of which may answer:
//!
//! ```text
//! read body ─▶ model ─▶ context ─▶ class ─▶ priced ─▶ candidates ─▶ reserve or wait ─▶ fallback ─▶ marketplace ─▶ deny
//!   413/400     400       400                  400      (model +        (budget::wait)    (next         (opted in:     429
//!                                                        fallbacks)                        candidate)    a quote)
//! ```
//!
//! Each stage is one step in [`Admission::run`]. [`Admission::finish`]
//! turns how the response ended into a settlement by the configured
//! policies; [`Admission::report`] sends a brokered request's usage to the
//! marketplace instead. Every outcome is counted and logged in one place
//! (`observe`).

mod bound;
mod market;
mod observe;
mod outcome;
mod request;
mod response;
mod retry;
mod stages;

pub use bound::UsageBound;
pub use outcome::{
    Admitted, Ask, Brokered, Denied, Finished, Outcome, Rejection, ResponseEnd, SettledBy, Tried,
};
pub use response::ResponseReader;
pub use stages::OTHER_MODEL;

use super::budget::{Budgets, WaitFor, Waited};
use super::reservation::Settlement;
use crate::marketplace::{Marketplace, UsageReport, UsageStatus};
use crate::rules::{Class, Identity, LlmConfig, LlmSettings, SettlePolicy, Tokens};
use stages::Candidate;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_filters::{self as filters, Endpoint, LlmRequest};

/// Admits and settles LLM requests. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    budgets: Budgets,
    /// Overflow capacity; `None` unless `[marketplace]` was on at start.
    market: Option<Arc<Marketplace>>,
}

impl Admission {
    pub fn new(budgets: Budgets) -> Admission {
        Admission {
            budgets,
            market: None,
        }
    }

    /// The same admission with a marketplace stage (`None`: without).
    pub fn with_marketplace(self, market: Option<Arc<Marketplace>>) -> Admission {
        Admission { market, ..self }
    }

    /// The marketplace, when there is one (its background work is started
    /// beside the listeners).
    pub fn marketplace(&self) -> Option<&Arc<Marketplace>> {
        self.market.as_ref()
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
        let market = market::offered(
            self.market.as_deref(),
            ask.marketplace,
            &candidates[0],
            class,
        );
        let mut on_wait = on_wait;
        let mut wait = Wait {
            llm,
            class,
            candidates: &candidates,
            latest,
            deadline: ask.deadline,
            after: market.map_or(Duration::ZERO, |_| {
                market::budget(ask.marketplace, ask.deadline)
            }),
            announced: false,
        };
        let denied = match self
            .reserve_or_fall_back(&ask, &request, identity, &mut wait, &mut on_wait)
            .await
        {
            Ok(outcome) => return outcome,
            Err(denied) => denied,
        };
        let Some(market) = market else {
            return Outcome::Denied(denied);
        };
        if !wait.announced {
            // Envoy's message timer has not been extended: it must cover
            // the marketplace step.
            on_wait(market::budget(ask.marketplace, ask.deadline));
        }
        match market::ask(market, &ask, &request, &candidates[0], denied).await {
            Outcome::Brokered(mut b) => {
                b.body = new_body(
                    llm,
                    ask.body,
                    &request,
                    b.endpoint,
                    b.quote.model.as_deref(),
                );
                Outcome::Brokered(b)
            }
            other => other,
        }
    }

    /// Reserves on each candidate in turn, waiting as long as each may:
    /// the first that admits serves the request; when none does, its
    /// denial (for the next stage).
    async fn reserve_or_fall_back(
        &self,
        ask: &Ask<'_>,
        request: &LlmRequest,
        mut identity: Identity,
        wait: &mut Wait<'_>,
        on_wait: &mut impl FnMut(Duration),
    ) -> Result<Outcome, Denied> {
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
                    |until| wait.started(&identity, i, until, &mut *on_wait),
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
                    return Ok(Outcome::Admitted(Box::new(admitted)));
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
                        marketplace: None,
                    };
                }
                Waited::Cancelled => {
                    return Ok(Outcome::Cancelled {
                        model_label: asked.label.clone(),
                    })
                }
            }
        }
        Err(denied)
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
                tracing::warn!(error = %e, "settle failed; retrying until the store answers or the reservation expires");
                let pending = retry::Pending {
                    reservation: admitted.reservation.clone(),
                    settlement,
                    model_label: admitted.model_label.clone(),
                };
                retry::spawn(self.budgets.clone(), pending, settings.reservation_ttl);
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

    /// The response of a brokered request ended: its usage report is
    /// queued for the marketplace (never waited on); nothing is settled,
    /// as nothing was reserved.
    pub fn report(&self, brokered: &Brokered, end: ResponseEnd) {
        let report = usage_report(brokered, end);
        observe::reported(self.budgets.counters().metrics(), brokered, &report);
        match &self.market {
            Some(m) => m.report(report),
            // A brokered request needs a marketplace: none means a bug.
            None => tracing::error!("a brokered request ended without a marketplace to report to"),
        }
    }
}

/// The usage report of a brokered request from how its response ended.
fn usage_report(b: &Brokered, end: ResponseEnd) -> UsageReport {
    let (usage, status) = match end {
        ResponseEnd::Completed { status, usage, .. } => (
            usage,
            match status {
                200..=399 => UsageStatus::Ok,
                408 | 504 => UsageStatus::Timeout,
                _ => UsageStatus::Error,
            },
        ),
        ResponseEnd::Aborted { .. } => (None, UsageStatus::Error),
    };
    UsageReport {
        request_id: b.request_id.clone(),
        quote_id: b.quote.quote_id.clone(),
        supply_id: b.quote.supply_id.clone(),
        model: b.model.clone(),
        prompt_tokens: usage.map(|u| u.prompt),
        completion_tokens: usage.map(|u| u.completion),
        latency_ms: u64::try_from(b.at.elapsed().as_millis()).unwrap_or(u64::MAX),
        status,
    }
}

/// Envoy takes one timer extension per message, so the first wait asks
/// for every wait still possible: this one's, then each fallback's, then
/// the marketplace step's.
struct Wait<'a> {
    llm: &'a LlmConfig,
    class: Option<&'a Class>,
    candidates: &'a [Candidate],
    /// Waits end by then.
    latest: Instant,
    /// The answer is due by then (what the proxy allows).
    deadline: Instant,
    /// What may come after the waits (the marketplace step).
    after: Duration,
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
        let end = (end + self.after).min(self.deadline);
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
    let model = admitted
        .fallback_from
        .is_some()
        .then_some(admitted.model.as_str());
    admitted.body = new_body(llm, body, request, admitted.endpoint, model);
    admitted
}

/// The request's body with `model` written in (a fallback, a supplier's
/// name for it) and streamed usage asked for when configured; `None` when
/// it goes as the client sent it.
fn new_body(
    llm: &LlmConfig,
    body: &[u8],
    request: &LlmRequest,
    endpoint: Endpoint,
    model: Option<&str>,
) -> Option<Vec<u8>> {
    let mut new_body = None;
    if let Some(model) = model.filter(|m| *m != request.model) {
        match filters::rewrite_model(body, model) {
            Ok(b) => new_body = Some(b),
            // The body parsed a moment ago; if it cannot be rewritten the
            // upstream sees the model asked for, and the log says so.
            Err(e) => {
                tracing::error!(error = %e, to = %model, "cannot rewrite the model of the request")
            }
        }
    }
    if llm.settings.inject_stream_usage && request.stream && !request.stream_usage_requested {
        let current = new_body.as_deref().unwrap_or(body);
        match filters::ensure_stream_usage(endpoint, current) {
            Ok(Some(b)) => new_body = Some(b),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the upstream for streamed usage; the estimate may stay charged")
            }
        }
    }
    new_body
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
