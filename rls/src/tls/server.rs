//! TLS on the gRPC listener: a rustls config built from PEM files, swapped
//! whole on reload, and an accept loop that hands tonic finished TLS
//! streams.
//!
//! Each new connection takes the config in force when it was accepted
//! (`ArcSwap`), so a reload changes what new connections see and never
//! touches an established one. Handshakes run in their own tasks: a slow or
//! silent client cannot hold up the accept loop.

use super::pem::{self, TlsError};
use crate::config::ServerTlsFiles;
use crate::listen::{self, Gate, Guarded};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for tonic to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The process-wide crypto provider: ring, the only one compiled in.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process default, for the rustls users that ask for the
/// default (the Redis client). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the files and builds the listener's rustls config: the identity,
/// the client CA when mTLS is on, ALPN `h2` (gRPC).
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = pem::certificates(&files.cert)?;
    let key = pem::private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| identity_error(files, e))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = pem::roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| identity_error(files, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn identity_error(files: &ServerTlsFiles, e: rustls::Error) -> TlsError {
    TlsError::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    }
}

/// SHA-256 of the leaf certificate, hex: what the logs show so an operator
/// can tell which certificate is serving (`openssl x509 -fingerprint
/// -sha256` prints the same bytes).
fn fingerprint(files: &ServerTlsFiles) -> String {
    pem::certificates(&files.cert)
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default()
}

/// The listener's TLS state: the files and the config built from them.
pub struct ServerTls {
    files: ServerTlsFiles,
    config: ArcSwap<ServerConfig>,
    metrics: Arc<Metrics>,
}

impl ServerTls {
    /// Loads the files now; an error here stops startup.
    pub fn load(files: ServerTlsFiles, metrics: Arc<Metrics>) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        tracing::info!(
            cert = %files.cert.display(),
            mtls = files.client_ca.is_some(),
            sha256 = %fingerprint(&files),
            "tls on the grpc listener"
        );
        Ok(ServerTls {
            files,
            config: ArcSwap::from_pointee(config),
            metrics,
        })
    }

    /// The files this state was built from (the watcher needs them).
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Reads the files again and swaps the new config in; on any error the
    /// old one keeps serving, and the error is logged and counted.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.files) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    cert = %self.files.cert.display(),
                    sha256 = %fingerprint(&self.files),
                    "tls certificate reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .tls_reloads
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(
                    file = %e.path().display(),
                    problem = %e,
                    "tls reload refused; the previous certificate keeps serving"
                );
                Err(e)
            }
        }
    }

    /// Accepts TCP connections on `listener` under `gate`'s cap,
    /// handshakes each in its own task, and yields the finished TLS
    /// streams, each bound to send the HTTP/2 preface within the gate's
    /// `read_timeout`. Stops when the stream is dropped (tonic drops it on
    /// shutdown).
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        gate: Arc<Gate>,
    ) -> ReceiverStream<std::io::Result<Guarded<TlsStream<Guarded<TcpStream>>>>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listen::accept(&listener, &gate) => a,
                    _ = tx.closed() => return,
                };
                let Some((tcp, slot)) = accepted else {
                    continue;
                };
                let peer = tcp.peer_addr().ok();
                let tcp = gate.hold(tcp, slot);
                let acceptor = TlsAcceptor::from(self.config.load_full());
                let (tx, metrics, gate) = (tx.clone(), self.metrics.clone(), gate.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let stream = gate.first_bytes(stream, listen::H2_PREFACE_LEN, None);
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake_errors.inc();
                            tracing::debug!(?peer, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshake_errors.inc();
                            tracing::debug!(?peer, "tls handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
