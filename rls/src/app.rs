//! What every front end shares: the config in force, the engine, metrics.

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Health;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Shared state. The config sits behind an `ArcSwap`: a request loads one
/// snapshot and keeps it to its end, a reload swaps in a new one without
/// waiting for anyone.
pub struct App {
    pub config: ArcSwap<Config>,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// The shared store's circuit breaker; `None` for the memory store.
    pub store_health: Option<Arc<Health>>,
}

impl App {
    pub fn new(
        config: Config,
        engine: Engine,
        metrics: Arc<Metrics>,
        store_health: Option<Arc<Health>>,
    ) -> Arc<App> {
        metrics.config_loaded(&config.version);
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            engine,
            metrics,
            store_health,
        })
    }

    /// Whether decisions come from the store (not from `on_error`).
    pub fn store_ready(&self) -> bool {
        self.store_health.as_ref().is_none_or(|h| h.is_closed())
    }
}
