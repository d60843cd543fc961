//! Reloading when files change: the config and the gRPC listener's
//! certificates both use this one watcher.
//!
//! Files are watched through their directories: an editor's
//! write-and-rename and Kubernetes' atomic `..data` symlink swap replace
//! the file's inode, which a watch on the file itself would lose. Events
//! are debounced (editors and `kubectl` write in bursts; a certificate and
//! its key arrive as two renames), and only events that can change a
//! watched file's content count: opening or reading a file (as every
//! reload does) is not a change, and neither is another file changing in
//! the same directory (a log file beside the config). SIGHUP reloads too.

use crate::background::Background;
use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long file events settle before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What is watched.
#[derive(Debug, Clone)]
pub enum Target {
    /// These files.
    Files(Vec<PathBuf>),
    /// Every `*.toml` (and envoyproxy/ratelimit `*.yaml`) in this directory.
    TomlDir(PathBuf),
}

impl Target {
    /// A config path: a file, or a directory of `*.toml` files.
    pub fn config(path: &Path) -> Target {
        let path = absolute(path);
        if path.is_dir() {
            Target::TomlDir(path)
        } else {
            Target::Files(vec![path])
        }
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        match self {
            Target::TomlDir(dir) => BTreeSet::from([dir.clone()]),
            Target::Files(files) => files
                .iter()
                .map(|f| {
                    f.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .to_path_buf()
                })
                .collect(),
        }
    }

    /// Whether a change of `changed` can change what is watched: a watched
    /// file, a `*.toml` of a watched directory, or a Kubernetes `..data`
    /// swap in one of their directories.
    pub fn concerns(&self, changed: &Path) -> bool {
        let swap = changed
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".."));
        match self {
            Target::TomlDir(dir) => {
                changed.parent() == Some(dir.as_path())
                    && (swap
                        || changed
                            .extension()
                            .is_some_and(|e| e == "toml" || e == "yaml" || e == "yml"))
            }
            Target::Files(files) => files
                .iter()
                .any(|f| f == changed || (swap && f.parent() == changed.parent())),
        }
    }
}

/// Whether an event can change a file's content. Opening, reading and
/// closing without writing are not changes (a reload does all three), nor
/// is an access-time update.
pub fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Absolute (events carry absolute paths), but not canonical: resolving a
/// symlink would watch the old target of a swap.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Runs `reload` (on the blocking pool: reading and validating is real
/// work) whenever `target` changes or SIGHUP arrives, until the background
/// work stops. A watcher that cannot start is logged; SIGHUP still works.
pub fn spawn(
    background: &Background,
    what: &'static str,
    target: Target,
    reload: impl Fn() + Send + Sync + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = watch(what, target, tx.clone());
    let reload = Arc::new(reload);
    background.spawn(what, move |cancel| async move {
        // Keeps the watcher alive as long as this task runs.
        let _watcher = watcher;
        let mut hup = hangups(what);
        loop {
            tokio::select! {
                changed = rx.recv() => if changed.is_none() { return },
                Some(()) = next(&mut hup) => tracing::info!("SIGHUP: reloading the {what}"),
                _ = cancel.cancelled() => return,
            }
            let reload = reload.clone();
            let _ = tokio::task::spawn_blocking(move || reload()).await;
        }
    });
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups(what: &str) -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the {what} reloads on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups(_what: &str) -> Hangups {
    None
}

/// The next SIGHUP; never, without a listener.
async fn next(hup: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = hup {
        return s.recv().await;
    }
    let _ = hup;
    std::future::pending().await
}

fn watch(what: &'static str, target: Target, tx: mpsc::Sender<()>) -> Option<Watcher> {
    let dirs = target.dirs();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let changed = events
                .iter()
                .filter(|e| is_change(&e.event.kind))
                .flat_map(|e| &e.event.paths)
                .any(|p| target.concerns(p));
            if changed {
                // A full channel means a reload is already pending.
                let _ = tx.try_send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "{what} watcher error");
            }
        }
    };
    let mut debouncer = match new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the {what}; SIGHUP still reloads it");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the {what} directory; SIGHUP still reloads it");
        }
    }
    Some(debouncer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    #[test]
    fn reading_is_not_a_change_writing_is() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(is_change(&kind), "{kind:?}");
        }
    }

    #[test]
    fn only_the_watched_files_and_kubernetes_swaps_concern_a_reload() {
        let files = Target::Files(vec![
            PathBuf::from("/etc/tls/tls.crt"),
            PathBuf::from("/etc/tls/tls.key"),
        ]);
        assert!(files.concerns(Path::new("/etc/tls/tls.crt")));
        assert!(files.concerns(Path::new("/etc/tls/..data")));
        assert!(!files.concerns(Path::new("/etc/tls/other.pem")));
        assert!(!files.concerns(Path::new("/etc/tls/tollgate.log")));
        assert!(!files.concerns(Path::new("/etc/other/..data")));
        let dir = Target::TomlDir(PathBuf::from("/etc/tollgate"));
        assert!(dir.concerns(Path::new("/etc/tollgate/quotas.toml")));
        assert!(dir.concerns(Path::new("/etc/tollgate/..data")));
        assert!(!dir.concerns(Path::new("/etc/tollgate/tollgate.log")));
        assert!(!dir.concerns(Path::new("/etc/other/quotas.toml")));
    }
}
