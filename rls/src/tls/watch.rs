//! Certificate rotation: the certificate, key and CA files are watched
//! through their directories (an atomic rename or a Kubernetes `..data`
//! symlink swap replaces the inode, which a watch on the file would lose),
//! debounced, and reloaded; SIGHUP reloads them too.
//!
//! Replace the certificate and the key within the debounce window: a reload
//! that sees a new certificate with the old key is refused (the pair must
//! match) and the next event retries it.

use super::server::ServerTls;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long file events settle before a reload (cert and key arrive as two
/// renames).
const DEBOUNCE: Duration = Duration::from_millis(200);

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Reloads `tls` whenever one of its files changes, or on SIGHUP, until the
/// process ends. A watcher that cannot start is logged; SIGHUP still works.
pub fn spawn(tls: Arc<ServerTls>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let files = tls.files();
    let paths: Vec<PathBuf> = [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
    .collect();
    let watcher = watch(paths, tx.clone());
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            let tls = tls.clone();
            // File reads and key parsing: off the reactor.
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    });
}

/// Whether a changed path can change one of `files`: the file itself, or a
/// Kubernetes `..data` swap in its directory.
fn concerns(files: &[PathBuf], changed: &Path) -> bool {
    let swap = changed
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".."));
    files
        .iter()
        .any(|f| f == changed || (swap && f.parent() == changed.parent()))
}

fn watch(files: Vec<PathBuf>, tx: mpsc::Sender<()>) -> Option<Watcher> {
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            if events
                .iter()
                .flat_map(|e| &e.event.paths)
                .any(|p| concerns(&files, p))
            {
                // A full channel means a reload is already pending.
                let _ = tx.try_send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "tls file watcher error");
            }
        }
    };
    let mut debouncer = match new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the tls files; SIGHUP still reloads them");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a tls directory; SIGHUP still reloads");
        }
    }
    Some(debouncer)
}

#[cfg(test)]
mod tests {
    use super::concerns;
    use std::path::{Path, PathBuf};

    #[test]
    fn the_files_and_kubernetes_swaps_concern_a_reload() {
        let files = vec![
            PathBuf::from("/etc/tls/tls.crt"),
            PathBuf::from("/etc/tls/tls.key"),
        ];
        assert!(concerns(&files, Path::new("/etc/tls/tls.crt")));
        assert!(concerns(&files, Path::new("/etc/tls/..data")));
        assert!(!concerns(&files, Path::new("/etc/tls/other.pem")));
        assert!(!concerns(&files, Path::new("/etc/other/..data")));
    }
}
