//! Waiting for capacity instead of answering 429 at once.
//!
//! A reservation that finds no capacity joins the line of the counter that
//! said no (see `queue`) and asks again only when it is the head and
//! capacity may exist: a reservation on that counter settled (here or on
//! another instance), the head before it left, or the store's
//! `retry_after` passed (the window reset, the bucket refilled). A newcomer
//! never overtakes a waiter of the same or higher priority: it queues
//! behind them even if it would fit, so capacity freed for the head goes to
//! the head.
//!
//! How long: the class's `max_wait`, else the denying quota's, else the
//! model's, else `[llm] max_wait`; never past `latest` (the request's
//! `max_wait_cap`). `"auto"` waits only while the capacity can be back in
//! time: a budget that refills after the deadline (a spent daily quota)
//! answers at once. Cancellation (the client went away) is only ever
//! observed while asleep, never during a store call, so a reservation is
//! never taken and then lost.

use super::budget::{BudgetView, Reservation, Reserved};
use super::decide::Engine;
use super::queue::Ticket;
use crate::rules::{Class, Identity, LlmConfig, MaxWait, Tokens};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A reservation that may wait.
pub struct WaitFor<'a> {
    pub llm: &'a LlmConfig,
    pub id: &'a Identity,
    pub class: Option<&'a Class>,
    pub estimate: Tokens,
    pub ttl: Duration,
    /// The request's answer is due by then, whatever it waits for.
    pub latest: Instant,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    Admitted {
        reservation: Reservation,
        headers: BudgetView,
        waited: Duration,
    },
    Denied {
        quota: String,
        retry_after: Duration,
        headers: BudgetView,
        waited: Duration,
    },
    /// The request went away while waiting; nothing was taken.
    Cancelled,
}

/// The shortest sleep before a head asks again, whatever the store said.
const MIN_RETRY: Duration = Duration::from_millis(5);

impl Engine {
    /// Reserves, waiting in line for capacity as long as the request may.
    /// `on_wait` runs once, just before the first sleep (ext_proc extends
    /// Envoy's message timeout there).
    pub async fn reserve_or_wait(
        &self,
        w: WaitFor<'_>,
        cancel: &CancellationToken,
        mut on_wait: impl FnMut(),
    ) -> Waited {
        let started = Instant::now();
        let priority = w.class.map_or(0, |c| c.priority);
        let mut ticket = self.lines().ticket(priority);
        let mut deadline: Option<(Instant, bool)> = None;
        let mut waiting: Option<WaitingGuard<'_>> = None;
        let mut last: Option<(String, Duration, BudgetView)> = None;

        // Queue behind waiters that must not be overtaken.
        let plan = self.plan_reservation(w.llm, w.id, w.class, w.estimate, self.clock().now_ms());
        let keys: Vec<String> = plan.hits.iter().map(|h| h.key.clone()).collect();
        if let Some(line) = self.lines().line_ahead(&keys, priority) {
            let quota = plan
                .hits
                .iter()
                .zip(&plan.owners)
                .find(|(h, _)| h.key == line)
                .map(|(_, p)| p.quota.name.clone())
                .unwrap_or_default();
            let (until, auto) = self.deadline(&w, &quota, started);
            if until > started {
                deadline = Some((until, auto));
                ticket.join(line);
                last = Some((quota, Duration::ZERO, BudgetView::default()));
            }
        }
        drop(plan);

        loop {
            let mut timer = deadline.map_or_else(Instant::now, |(d, _)| d);
            if ticket.is_head() {
                match self
                    .reserve_as(w.llm, w.id, w.class, w.estimate, w.ttl)
                    .await
                {
                    Reserved::Admitted {
                        reservation,
                        headers,
                    } => {
                        let waited = started.elapsed();
                        if ticket.line().is_some() {
                            self.metrics().llm_waited("admitted", waited.as_secs_f64());
                        }
                        return Waited::Admitted {
                            reservation,
                            headers,
                            waited,
                        };
                    }
                    Reserved::Denied {
                        quota,
                        retry_after,
                        headers,
                        line,
                        on_release,
                    } => {
                        let now = Instant::now();
                        let (until, auto) =
                            *deadline.get_or_insert_with(|| self.deadline(&w, &quota, started));
                        let hopeless = auto && !on_release && now + retry_after > until;
                        if now >= until || hopeless || line.is_empty() {
                            return self.gave_up(&ticket, quota, retry_after, headers, started);
                        }
                        ticket.join(&line);
                        timer = (now + retry_after.max(MIN_RETRY)).min(until);
                        last = Some((quota, retry_after, headers));
                    }
                }
            }
            let Some((until, _)) = deadline else {
                // Only a head that was admitted or denied gets here, and
                // both set the deadline or return; never spin regardless.
                let (quota, retry, headers) = last.take().unwrap_or_default();
                return self.gave_up(&ticket, quota, retry, headers, started);
            };
            if Instant::now() >= until {
                let (quota, retry, headers) = last.take().unwrap_or_default();
                return self.gave_up(&ticket, quota, retry, headers, started);
            }
            if waiting.is_none() {
                waiting = Some(WaitingGuard::new(self, &w));
                on_wait();
            }
            tokio::select! {
                _ = ticket.wait(timer) => {}
                _ = cancel.cancelled() => {
                    self.metrics().llm_waited("cancelled", started.elapsed().as_secs_f64());
                    return Waited::Cancelled;
                }
            }
        }
    }

    /// When a request denied by `quota` must have its answer, and whether
    /// that came from `"auto"`.
    fn deadline(&self, w: &WaitFor<'_>, quota: &str, started: Instant) -> (Instant, bool) {
        let quota = w.llm.quotas.iter().find(|q| q.name == quota);
        let model = w.llm.model(&w.id.model);
        let max_wait = w
            .class
            .and_then(|c| c.max_wait)
            .or(quota.and_then(|q| q.max_wait))
            .or(model.and_then(|m| m.max_wait))
            .unwrap_or(w.llm.settings.max_wait);
        match max_wait {
            MaxWait::For(d) => ((started + d).min(w.latest), false),
            MaxWait::Auto => (w.latest, true),
        }
    }

    fn gave_up(
        &self,
        ticket: &Ticket,
        quota: String,
        retry_after: Duration,
        headers: BudgetView,
        started: Instant,
    ) -> Waited {
        let waited = started.elapsed();
        if ticket.line().is_some() {
            self.metrics().llm_waited("denied", waited.as_secs_f64());
        }
        Waited::Denied {
            quota,
            retry_after,
            headers,
            waited,
        }
    }
}

/// While a request waits: counted in the waiting gauge, and its costs
/// counted as demand on its class's shares.
struct WaitingGuard<'a> {
    engine: &'a Engine,
    llm: &'a LlmConfig,
    class: Option<&'a str>,
    costs: Vec<(String, Vec<u64>)>,
}

impl<'a> WaitingGuard<'a> {
    fn new(engine: &'a Engine, w: &WaitFor<'a>) -> WaitingGuard<'a> {
        engine.metrics().llm_waiting.inc();
        let now = engine.clock().now_ms();
        let mut costs = Vec::new();
        if let Some(class) = w.class {
            let plan = engine.plan_reservation(w.llm, w.id, w.class, w.estimate, now);
            for (budget, _) in &plan.class_budgets {
                let c: Vec<u64> = plan
                    .hits
                    .iter()
                    .zip(&plan.owners)
                    .filter(|(_, p)| p.class_cap.is_some() && &p.budget == budget)
                    .map(|(h, _)| h.cost)
                    .collect();
                engine
                    .shares()
                    .waiting(budget, &w.llm.classes, &class.name, &c, true, now);
                costs.push((budget.clone(), c));
            }
        }
        WaitingGuard {
            engine,
            llm: w.llm,
            class: w.class.map(|c| c.name.as_str()),
            costs,
        }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.engine.metrics().llm_waiting.dec();
        if let Some(class) = self.class {
            let now = self.engine.clock().now_ms();
            for (budget, c) in &self.costs {
                self.engine
                    .shares()
                    .waiting(budget, &self.llm.classes, class, c, false, now);
            }
        }
    }
}
