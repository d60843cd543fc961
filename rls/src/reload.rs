//! Hot reload: read → parse → validate → swap, or keep the last good config.
//!
//! Triggers are file changes (watched through the parent directory, so an
//! editor's write-and-rename and Kubernetes' atomic `..data` symlink swap
//! are both seen; debounced) and SIGHUP. A new config is validated whole
//! before anything changes; requests in flight keep the snapshot they
//! started with (`ArcSwap`), and counters of unchanged rules survive
//! because a counter's key derives from its rule's domain and path.

use crate::app::App;
use crate::config::{self, Config};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long file events settle before a reload (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(200);

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
    app.config.store(Arc::new(new));
    app.metrics.config_loaded(&version);
    app.metrics.config_reloads.with_label_values(&["ok"]).inc();
    Reloaded::Swapped { version }
}

/// Watches the config and reloads on change or SIGHUP, until the process
/// ends. A watcher that cannot start is logged; SIGHUP still works.
pub fn spawn(app: Arc<App>, path: PathBuf) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = watch(&path, tx.clone());
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let _ = tx.try_send(());
            }
        });
    }
    tokio::spawn(async move {
        // Keeps the watcher alive as long as this task runs.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            let (app, path) = (app.clone(), path.clone());
            // Reading and validating 10,000 rules is real work: off the
            // reactor.
            let _ = tokio::task::spawn_blocking(move || reload(&app, &path)).await;
        }
    });
}

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Whether a changed path can change the config: the file itself, a
/// `*.toml` of a config directory, or a Kubernetes `..data` swap.
fn concerns(config: &Path, changed: &Path) -> bool {
    let name = changed
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    changed == config
        || name.starts_with("..")
        || (config.is_dir() && changed.extension().is_some_and(|e| e == "toml"))
}

fn watch(path: &Path, tx: mpsc::Sender<()>) -> Option<Watcher> {
    // Absolute (events carry absolute paths), but not canonical: resolving
    // a symlink would watch the old target of a swap.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let config = path.to_path_buf();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            if events
                .iter()
                .flat_map(|e| &e.event.paths)
                .any(|p| concerns(&config, p))
            {
                // A full channel means a reload is already pending.
                let _ = tx.try_send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "config watcher error");
            }
        }
    };
    // Watch the directory that holds the file (or the directory itself):
    // a symlink swap or rename replaces the file's inode, which a watch on
    // the file alone would lose.
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut debouncer = match new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config; SIGHUP still reloads");
            return None;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; SIGHUP still reloads");
        return None;
    }
    Some(debouncer)
}
