//! Hot reload: read → parse → validate → swap, or keep the last good config.
//!
//! Triggers are file changes and SIGHUP (`watch`). A new config is validated whole
//! before anything changes; requests in flight keep the snapshot they
//! started with (`ArcSwap`), and counters of unchanged rules survive
//! because a counter's key derives from its rule's domain and path.

use crate::app::App;
use crate::background::Background;
use crate::config::{self, Config};
use crate::watch::Target;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new config is in force.
    Swapped { version: String },
    /// The files hash to the version already in force.
    Unchanged,
    /// The new config was refused; the old one keeps serving.
    Refused,
}

/// Loads `path` again and swaps it in if it is valid and different.
pub fn reload(app: &App, path: &Path) -> Reloaded {
    let started = std::time::Instant::now();
    let new: Config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %e.file, line = e.line, field = %e.field, problem = %e.message, "config refused; the previous config stays in force");
            }
            app.metrics
                .config_reloads
                .with_label_values(&["refused"])
                .inc();
            return Reloaded::Refused;
        }
    };
    let old = app.config.load();
    if new.version == old.version {
        app.metrics
            .config_reloads
            .with_label_values(&["unchanged"])
            .inc();
        return Reloaded::Unchanged;
    }
    if new.server != old.server || new.store != old.store {
        // Listeners and the store are built once; say so rather than
        // pretend they changed.
        tracing::warn!("[server] or [store] changed: restart tollgate for those to apply; rules, models and quotas are reloaded now");
    }
    let version = new.version.clone();
    tracing::info!(
        version = %version,
        previous = %old.version,
        rules = new.rules.rules.len(),
        quotas = new.llm.quotas.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "config reloaded"
    );
    // A model added by this config may need a vocabulary not built yet.
    crate::vocabularies::load_for(&new.llm);
    app.config.store(Arc::new(new));
    app.metrics.config_loaded(&version);
    app.metrics.config_reloads.with_label_values(&["ok"]).inc();
    Reloaded::Swapped { version }
}

/// Reloads the config whenever its files change, or on SIGHUP, until the
/// background work stops.
pub fn spawn(background: &Background, app: Arc<App>, path: PathBuf) {
    let target = Target::config(&path);
    crate::watch::spawn(background, "config", target, move || {
        reload(&app, &path);
    });
}
