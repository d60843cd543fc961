//! The marketplace as a provider of overflow capacity: one quote per
//! over-budget request, behind the breaker and the supply cache, within
//! the step's time; usage reports queued for the background. Exists only
//! when `[marketplace]` is enabled and not offline: [`Marketplace::build`]
//! returns `None` otherwise, and then nothing here ever runs.

use super::breaker::{Breaker, BreakerState, Change, Permit};
use super::cache::{SupplyCache, SupplyKey};
use super::client::{Ack, BuildError, CallError, Client, Reply};
use super::protocol::{QuoteRequest, UsageReport};
use super::quote::{self, Quote};
use super::refusal::Refusal;
use super::reporter::{self, Attempt, Reports};
use super::settings::{ApiKeySource, MarketplaceConfig};
use crate::background::Background;
use crate::metrics::Metrics;
use crate::repeated::Repeats;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What tollgate sends, call by call: logged once at start, and the
/// privacy statement of `docs/marketplace.md` (a test holds these to the
/// serialized payloads).
pub const SUPPLIES_FIELDS: &[&str] = &["model", "region", "max_price"];
pub const QUOTE_FIELDS: &[&str] = &[
    "request_id",
    "model",
    "estimated_tokens",
    "region_hint",
    "max_price_per_mtoken",
];
pub const USAGE_FIELDS: &[&str] = &[
    "request_id",
    "quote_id",
    "supply_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
];

/// How long a 429 without `retry_after_seconds` keeps tollgate from
/// asking again.
const BUSY_DEFAULT: Duration = Duration::from_secs(1);

/// One over-budget request, as the marketplace is told about it.
#[derive(Debug, Clone, Copy)]
pub struct QuoteAsk<'a> {
    /// Made by tollgate for this request; no client id.
    pub request_id: &'a str,
    pub model: &'a str,
    pub estimated_tokens: u64,
}

/// The marketplace client with its breaker, supply cache and report queue.
pub struct Marketplace {
    client: Client,
    breaker: Breaker,
    cache: SupplyCache,
    reports: Reports,
    /// Taken by [`Marketplace::spawn`].
    queue: Mutex<Option<mpsc::Receiver<UsageReport>>>,
    /// After a 429: no call before then.
    busy_until: Mutex<Option<Instant>>,
    /// The settings it was built from (the client's side; the policy comes
    /// with each quote from the config in force).
    settings: MarketplaceConfig,
    metrics: Arc<Metrics>,
    failing: Repeats,
}

impl std::fmt::Debug for Marketplace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marketplace")
            .field("endpoint", &self.settings.endpoint)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Marketplace {
    /// The marketplace, if `config` turns it on: reads the API key, builds
    /// the client (no connection yet) and logs once what will be sent
    /// where. `None` when disabled or offline: no client at all.
    pub fn build(
        config: &MarketplaceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Marketplace>>, BuildError> {
        if !config.active() {
            if config.enabled {
                tracing::info!("marketplace: offline_mode is set; no call will be made");
            }
            return Ok(None);
        }
        let key = read_key(config.api_key.as_ref())?;
        let client = Client::new(&config.endpoint, &key, config.timeout)?;
        let (reports, queue) = Reports::new(&config.reports, metrics.clone());
        tracing::info!(
            endpoint = %config.endpoint,
            supplies = %format!("GET /v1/supplies?{}", SUPPLIES_FIELDS.join("&")),
            quote = %format!("POST /v1/marketplace/quote {{{}}}", QUOTE_FIELDS.join(", ")),
            usage = %format!("POST /v1/marketplace/usage {{{}}}", USAGE_FIELDS.join(", ")),
            headers = "authorization (the marketplace API key), user-agent, accept, content-type",
            never = "prompt or completion content, client headers, client API keys, tenants, classes or any other identity",
            models = ?config.models,
            "marketplace enabled: exactly these fields go to this endpoint, for over-budget requests only"
        );
        let market = Marketplace {
            client,
            breaker: Breaker::new(config.breaker),
            cache: SupplyCache::new(config.cache_ttl),
            reports,
            queue: Mutex::new(Some(queue)),
            busy_until: Mutex::new(None),
            settings: config.clone(),
            metrics,
            failing: Repeats::new(Duration::from_secs(30)),
        };
        market.show_state();
        Ok(Some(Arc::new(market)))
    }

    /// Starts the background work: the supply lists' refresh (while
    /// `active()` says the marketplace is still on) and the usage reports.
    pub fn spawn(
        self: &Arc<Self>,
        background: &Background,
        active: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let market = self.clone();
        background.spawn("marketplace supply refresh", |cancel| async move {
            market.refresh(active, cancel).await
        });
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(queue) = queue {
            let market = self.clone();
            let settings = self.settings.reports;
            let metrics = self.metrics.clone();
            background.spawn("marketplace usage reports", move |cancel| {
                reporter::run(
                    queue,
                    settings,
                    metrics,
                    move |r| {
                        let m = market.clone();
                        async move { m.send_report(&r).await }
                    },
                    cancel,
                )
            });
        }
    }

    /// A quote for `ask` that meets `policy`, asked within `deadline`; or
    /// why there is none. No call is made while the breaker is open, while
    /// a 429's pause lasts, or when the cached supply list has nothing.
    pub async fn quote(
        &self,
        policy: &MarketplaceConfig,
        ask: QuoteAsk<'_>,
        deadline: Instant,
    ) -> Result<Quote, Refusal> {
        let time_left = || deadline.saturating_duration_since(Instant::now());
        if time_left().is_zero() {
            return Err(Refusal::NoTime);
        }
        if self.busy() {
            return Err(Refusal::Busy);
        }
        let key = SupplyKey {
            model: ask.model.to_string(),
            region: policy.region.clone(),
            max_price: policy.max_price,
        };
        let cached = self.cache.lookup(&key, Instant::now());
        self.metrics.marketplace.cache(cached.is_some());
        let has_supply = match cached {
            Some(s) => s,
            None => self.fetch_supplies(&key, time_left()).await?,
        };
        if !has_supply {
            return Err(Refusal::NoSupply);
        }
        let permit = self.permit().ok_or(Refusal::BreakerOpen)?;
        let request = QuoteRequest {
            request_id: ask.request_id,
            model: ask.model,
            estimated_tokens: ask.estimated_tokens,
            region_hint: policy.region.as_deref(),
            max_price_per_mtoken: policy.max_price.units(),
        };
        let reply = self.client.quote(&request, time_left()).await;
        match reply {
            Ok(Reply::Ok(answer)) => {
                let checked = quote::check(answer, policy, SystemTime::now());
                let ok = !matches!(checked, Err(r) if r.is_failure());
                self.settle(permit, "quote", if ok { "ok" } else { "malformed" }, ok);
                checked
            }
            Ok(Reply::NoSupply) => {
                self.settle(permit, "quote", "no_supply", true);
                Err(Refusal::NoSupply)
            }
            Ok(Reply::Busy(pause)) => {
                self.settle(permit, "quote", "busy", true);
                self.pause(pause);
                Err(Refusal::Busy)
            }
            Err(e) => {
                self.failed(permit, "quote", &e);
                Err(Refusal::Failed(e.failure()))
            }
        }
    }

    /// Queues the usage report of a served request; never waits.
    pub fn report(&self, report: UsageReport) {
        self.reports.submit(report);
    }

    /// Fetches and keeps the supply list of `key`: whether it has an
    /// offer that could serve.
    async fn fetch_supplies(&self, key: &SupplyKey, time: Duration) -> Result<bool, Refusal> {
        let permit = self.permit().ok_or(Refusal::BreakerOpen)?;
        let reply = self
            .client
            .supplies(
                &key.model,
                key.region.as_deref(),
                key.max_price.units(),
                time,
            )
            .await;
        match reply {
            Ok(Reply::Ok(offers)) => {
                self.settle(permit, "supplies", "ok", true);
                Ok(self.cache.store(key, &offers, Instant::now()))
            }
            Ok(Reply::NoSupply) => {
                self.settle(permit, "supplies", "no_supply", true);
                Ok(self.cache.store(key, &[], Instant::now()))
            }
            Ok(Reply::Busy(pause)) => {
                self.settle(permit, "supplies", "busy", true);
                self.pause(pause);
                Err(Refusal::Busy)
            }
            Err(e) => {
                self.failed(permit, "supplies", &e);
                Err(Refusal::Failed(e.failure()))
            }
        }
    }

    /// One try of one usage report (for the reporter).
    async fn send_report(&self, report: &UsageReport) -> Attempt {
        let Some(permit) = self.permit() else {
            return Attempt::Again {
                until: self.breaker.open_until(),
            };
        };
        match self.client.usage(report, self.settings.timeout).await {
            Ok(Ack::Taken) => {
                self.settle(permit, "usage", "ok", true);
                Attempt::Sent
            }
            Ok(Ack::Busy(pause)) => {
                self.settle(permit, "usage", "busy", true);
                Attempt::Again {
                    until: Some(Instant::now() + pause.unwrap_or(BUSY_DEFAULT)),
                }
            }
            Err(e) => {
                self.failed(permit, "usage", &e);
                Attempt::Again { until: None }
            }
        }
    }

    /// Refreshes the supply lists in use until cancelled; no call while
    /// the marketplace has been turned off since (a reload).
    async fn refresh(&self, active: impl Fn() -> bool, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.cache.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let now = Instant::now();
            let age = self.cache.oldest_age(now).unwrap_or_default();
            self.metrics
                .marketplace
                .cache_age_seconds
                .set(age.as_secs_f64());
            if !active() || self.busy() {
                continue;
            }
            for key in self.cache.due(now) {
                if let Err(r) = self.fetch_supplies(&key, self.settings.timeout).await {
                    tracing::debug!(model = %key.model, reason = r.as_str(), "supply list not refreshed");
                }
            }
        }
    }

    /// A permit from the breaker, the gauge following a probe.
    fn permit(&self) -> Option<Permit<'_>> {
        let permit = self.breaker.try_call();
        if permit.as_ref().is_some_and(|p| p.is_probe()) {
            self.show_state();
        }
        permit
    }

    fn settle(&self, permit: Permit<'_>, call: &str, result: &str, ok: bool) {
        self.metrics.marketplace.call(call, result);
        let change = if ok {
            permit.succeeded()
        } else {
            if let Some(unlogged) = self.failing.note() {
                tracing::warn!(
                    call,
                    result,
                    unlogged,
                    "marketplace answer not of the protocol"
                );
            }
            permit.failed()
        };
        self.changed(change);
    }

    fn failed(&self, permit: Permit<'_>, call: &str, e: &CallError) {
        self.metrics.marketplace.call(call, e.failure().as_str());
        if let Some(unlogged) = self.failing.note() {
            tracing::warn!(call, error = %e, unlogged, "marketplace call failed");
        }
        self.changed(permit.failed());
    }

    fn changed(&self, change: Option<Change>) {
        match change {
            Some(Change::Opened) => {
                self.metrics.marketplace.breaker_opened();
                tracing::warn!(
                    open_for = ?self.settings.breaker.open_for,
                    "marketplace circuit open: no call until it has passed, then one probe; over-budget requests get their 429"
                );
            }
            Some(Change::Closed) => {
                tracing::info!("marketplace circuit closed: the probe succeeded")
            }
            None => return,
        }
        self.show_state();
    }

    fn show_state(&self) {
        let all = BreakerState::ALL.map(BreakerState::as_str);
        self.metrics
            .marketplace
            .breaker(self.breaker.state().as_str(), &all);
    }

    fn busy(&self) -> bool {
        let mut until = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// A 429: no call for its `retry_after` (or a second), at most the
    /// breaker's open period.
    fn pause(&self, pause: Option<Duration>) {
        let pause = pause
            .unwrap_or(BUSY_DEFAULT)
            .min(self.settings.breaker.open_for);
        *self.busy_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + pause);
    }
}

/// Starts the marketplace's background work, if there is a marketplace;
/// `active` reads whether the config in force still has it on.
pub fn spawn(
    background: &Background,
    market: Option<&Arc<Marketplace>>,
    active: impl Fn() -> bool + Send + Sync + 'static,
) {
    if let Some(m) = market {
        m.spawn(background, active);
    }
}

/// The API key from its environment variable or file, never logged.
fn read_key(source: Option<&ApiKeySource>) -> Result<String, BuildError> {
    let key = match source {
        None => return Err(BuildError("no api_key_env or api_key_file".into())),
        Some(ApiKeySource::Env(name)) => std::env::var(name)
            .map_err(|_| BuildError(format!("environment variable {name} is not set")))?,
        Some(ApiKeySource::File(path)) => std::fs::read_to_string(path)
            .map_err(|e| BuildError(format!("cannot read {}: {e}", path.display())))?,
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(BuildError("the API key is empty".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::protocol::UsageStatus;

    #[test]
    fn the_logged_field_lists_are_the_payloads() {
        let quote = serde_json::to_value(QuoteRequest {
            request_id: "r",
            model: "m",
            estimated_tokens: 1,
            region_hint: None,
            max_price_per_mtoken: 1.0,
        })
        .unwrap();
        assert_eq!(keys(&quote), sorted(QUOTE_FIELDS));
        let usage = serde_json::to_value(UsageReport {
            request_id: "r".into(),
            quote_id: "q".into(),
            supply_id: "s".into(),
            model: "m".into(),
            prompt_tokens: None,
            completion_tokens: None,
            latency_ms: 0,
            status: UsageStatus::Ok,
        })
        .unwrap();
        assert_eq!(keys(&usage), sorted(USAGE_FIELDS));
    }

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn sorted(fields: &[&str]) -> Vec<String> {
        let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        f.sort();
        f
    }

    #[test]
    fn off_or_offline_builds_nothing() {
        let metrics = Arc::new(Metrics::default());
        let off = MarketplaceConfig::default();
        assert!(Marketplace::build(&off, metrics.clone()).unwrap().is_none());
        let offline = MarketplaceConfig {
            enabled: true,
            offline_mode: true,
            // Would fail to build: offline_mode never gets that far.
            api_key: Some(ApiKeySource::Env("TOLLGATE_TEST_UNSET_KEY".into())),
            ..Default::default()
        };
        assert!(Marketplace::build(&offline, metrics.clone())
            .unwrap()
            .is_none());
        assert!(!metrics
            .render()
            .contains("tollgate_marketplace_breaker_state{"));
    }

    #[test]
    fn a_key_comes_from_its_file_trimmed() {
        let dir = std::env::temp_dir().join(format!("tollgate-mkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  s3cret\n").unwrap();
        assert_eq!(
            read_key(Some(&ApiKeySource::File(file.clone()))).unwrap(),
            "s3cret"
        );
        std::fs::write(&file, "\n").unwrap();
        let e = read_key(Some(&ApiKeySource::File(file))).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = read_key(Some(&ApiKeySource::Env("TOLLGATE_TEST_UNSET_KEY".into()))).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_TEST_UNSET_KEY"), "{e}");
    }
}
