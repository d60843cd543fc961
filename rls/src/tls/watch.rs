//! Certificate rotation: the certificate, key and CA files are watched
//! (`crate::watch`: through their directories, debounced, SIGHUP too) and
//! reloaded; new connections get the new certificate.
//!
//! Replace the certificate and the key within the debounce window: a reload
//! that sees a new certificate with the old key is refused (the pair must
//! match) and the next event retries it.

use super::server::ServerTls;
use crate::background::Background;
use crate::watch::Target;
use std::path::PathBuf;
use std::sync::Arc;

/// Reloads `tls` whenever one of its files changes, or on SIGHUP, until the
/// background work stops.
pub fn spawn(background: &Background, tls: Arc<ServerTls>) {
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
    crate::watch::spawn(
        background,
        "tls certificate",
        Target::Files(paths),
        move || {
            // A refused reload is logged and counted by `reload` itself.
            let _ = tls.reload();
        },
    );
}
