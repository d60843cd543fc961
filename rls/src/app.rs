//! What every front end shares: the config in force, the engine, metrics.

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Shared state. The config sits behind an `ArcSwap`: a request loads one
/// snapshot and keeps it to its end, a reload swaps in a new one without
/// waiting for anyone.
pub struct App {
    pub config: ArcSwap<Config>,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
}

impl App {
    pub fn new(config: Config, engine: Engine, metrics: Arc<Metrics>) -> Arc<App> {
        metrics.config_loaded(&config.version);
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            engine,
            metrics,
        })
    }
}
