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

use super::queue::Ticket;
use super::{plan, BudgetView, Budgets, Reserved};
use crate::engine::reservation::Reservation;
use crate::metrics::Metrics;
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

impl Budgets {
    /// Reserves, waiting in line for capacity as long as the request may.
    /// `on_wait` runs once, just before the first sleep, with the instant
    /// this wait gives up at the latest (ext_proc extends Envoy's message
    /// timeout there).
    pub async fn reserve_or_wait(
        &self,
        w: WaitFor<'_>,
        cancel: &CancellationToken,
        mut on_wait: impl FnMut(Instant),
    ) -> Waited {
        let mut waiter = Waiter::new(self, &w);
        waiter.queue_behind_others();
        loop {
            let mut timer = waiter.until().unwrap_or_else(Instant::now);
            if waiter.ticket.is_head() {
                match self
                    .reserve_as(w.llm, w.id, w.class, w.estimate, w.ttl)
                    .await
                {
                    Reserved::Admitted {
                        reservation,
                        headers,
                    } => return waiter.admitted(reservation, headers),
                    Reserved::Denied {
                        quota,
                        retry_after,
                        headers,
                        line,
                        on_release,
                    } => match waiter.denied(quota, retry_after, headers, &line, on_release) {
                        Some(t) => timer = t,
                        None => return waiter.give_up(),
                    },
                }
            }
            let until = match waiter.until() {
                Some(until) if Instant::now() < until => until,
                // Only a head that was admitted or denied can have no
                // deadline, and both return; never spin regardless.
                _ => return waiter.give_up(),
            };
            waiter.start_waiting(until, &mut on_wait);
            tokio::select! {
                _ = waiter.ticket.wait(timer) => {}
                _ = cancel.cancelled() => return waiter.cancelled(),
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        self.counters.metrics()
    }
}

/// One request's wait, from its first ask to its answer.
struct Waiter<'a> {
    budgets: &'a Budgets,
    w: &'a WaitFor<'a>,
    started: Instant,
    ticket: Ticket,
    /// When the answer is due, and whether that came from `"auto"`; set by
    /// the first denial (or the line queued behind).
    deadline: Option<(Instant, bool)>,
    /// Present while asleep at least once.
    waiting: Option<WaitingGuard<'a>>,
    /// The latest denial: (quota, retry after, budgets).
    last: Option<(String, Duration, BudgetView)>,
}

impl<'a> Waiter<'a> {
    fn new(budgets: &'a Budgets, w: &'a WaitFor<'a>) -> Waiter<'a> {
        let priority = w.class.map_or(0, |c| c.priority);
        Waiter {
            budgets,
            w,
            started: Instant::now(),
            ticket: budgets.lines().ticket(priority),
            deadline: None,
            waiting: None,
            last: None,
        }
    }

    fn until(&self) -> Option<Instant> {
        self.deadline.map(|(d, _)| d)
    }

    /// Joins the line of a waiter this request must not overtake (same or
    /// higher priority on one of its counters), if there is one.
    fn queue_behind_others(&mut self) {
        let (w, b) = (self.w, self.budgets);
        let now = b.counters.now_ms();
        let plan = plan::plan(&b.shares, w.llm, w.id, w.class, w.estimate, now);
        let keys: Vec<String> = plan.hits.iter().map(|(h, _)| h.key.clone()).collect();
        let priority = w.class.map_or(0, |c| c.priority);
        let Some(line) = b.lines().line_ahead(&keys, priority) else {
            return;
        };
        let quota = plan
            .hits
            .iter()
            .find(|(h, _)| h.key == line)
            .map(|(_, p)| p.quota.name.clone())
            .unwrap_or_default();
        let (until, auto) = deadline(w, &quota, self.started);
        if until > self.started {
            self.deadline = Some((until, auto));
            self.ticket.join(line);
            self.last = Some((quota, Duration::ZERO, BudgetView::default()));
        }
    }

    /// A denial as the head: when to ask again, or `None` to give up (the
    /// deadline passed, `"auto"` knows the capacity cannot be back in time,
    /// or there is no line: the store failed and `on_error` said no).
    fn denied(
        &mut self,
        quota: String,
        retry_after: Duration,
        headers: BudgetView,
        line: &str,
        on_release: bool,
    ) -> Option<Instant> {
        let now = Instant::now();
        let (w, started) = (self.w, self.started);
        let (until, auto) = *self
            .deadline
            .get_or_insert_with(|| deadline(w, &quota, started));
        self.last = Some((quota, retry_after, headers));
        let hopeless = auto && !on_release && now + retry_after > until;
        if now >= until || hopeless || line.is_empty() {
            return None;
        }
        self.ticket.join(line);
        Some((now + retry_after.max(MIN_RETRY)).min(until))
    }

    /// Counts the request as waiting (once) and tells the caller.
    fn start_waiting(&mut self, until: Instant, on_wait: &mut impl FnMut(Instant)) {
        if self.waiting.is_none() {
            self.waiting = Some(WaitingGuard::new(self.budgets, self.w));
            on_wait(until);
        }
    }

    fn admitted(self, reservation: Reservation, headers: BudgetView) -> Waited {
        let waited = self.started.elapsed();
        if self.ticket.line().is_some() {
            self.budgets
                .metrics()
                .llm_waited("admitted", waited.as_secs_f64());
        }
        Waited::Admitted {
            reservation,
            headers,
            waited,
        }
    }

    fn give_up(mut self) -> Waited {
        let waited = self.started.elapsed();
        if self.ticket.line().is_some() {
            self.budgets
                .metrics()
                .llm_waited("denied", waited.as_secs_f64());
        }
        let (quota, retry_after, headers) = self.last.take().unwrap_or_default();
        Waited::Denied {
            quota,
            retry_after,
            headers,
            waited,
        }
    }

    fn cancelled(self) -> Waited {
        self.budgets
            .metrics()
            .llm_waited("cancelled", self.started.elapsed().as_secs_f64());
        Waited::Cancelled
    }
}

/// When a request denied by `quota` must have its answer, and whether
/// that came from `"auto"`: the class's `max_wait`, else the quota's, else
/// the model's, else `[llm] max_wait`; never past `latest`.
fn deadline(w: &WaitFor<'_>, quota: &str, started: Instant) -> (Instant, bool) {
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

/// While a request waits: counted in the waiting gauge, and its costs
/// counted as demand on its class's shares.
struct WaitingGuard<'a> {
    budgets: &'a Budgets,
    llm: &'a LlmConfig,
    class: Option<&'a str>,
    costs: Vec<(String, Vec<u64>)>,
}

impl<'a> WaitingGuard<'a> {
    fn new(budgets: &'a Budgets, w: &WaitFor<'a>) -> WaitingGuard<'a> {
        budgets.metrics().llm_waiting.inc();
        let now = budgets.counters.now_ms();
        let mut costs = Vec::new();
        if let Some(class) = w.class {
            let plan = plan::plan(&budgets.shares, w.llm, w.id, w.class, w.estimate, now);
            for (budget, _) in &plan.class_budgets {
                let c = plan.class_costs(budget);
                budgets
                    .shares()
                    .waiting(budget, &w.llm.classes, &class.name, &c, true, now);
                costs.push((budget.clone(), c));
            }
        }
        WaitingGuard {
            budgets,
            llm: w.llm,
            class: w.class.map(|c| c.name.as_str()),
            costs,
        }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.budgets.metrics().llm_waiting.dec();
        if let Some(class) = self.class {
            let now = self.budgets.counters.now_ms();
            for (budget, c) in &self.costs {
                self.budgets
                    .shares()
                    .waiting(budget, &self.llm.classes, class, c, false, now);
            }
        }
    }
}
