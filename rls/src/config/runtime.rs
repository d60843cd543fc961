use super::redis_url::redacted_url;
use crate::rules::{FailurePolicy, LeasePolicy, LlmConfig, RuleSet};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The validated configuration. Cheap to share: the rules sit behind an
/// `Arc` so a reload swaps one pointer.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// Slices of shared budgets decided locally; read at start (a change
    /// needs a restart, as `[store]` does).
    pub leases: LeasePolicy,
    pub rules: Arc<RuleSet>,
    /// Models and token quotas for the ext_proc service.
    pub llm: Arc<LlmConfig>,
    /// Content hash of the files, so `/config` and logs say which config
    /// is in force.
    pub version: String,
    pub sources: Vec<PathBuf>,
    pub loaded_at: SystemTime,
}

/// Listeners and process settings; these need a restart to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// TLS (and mTLS) on the gRPC listener; plaintext when `None`.
    pub tls: Option<ServerTlsFiles>,
    /// The longest a client may take to send what it must: the HTTP/2
    /// preface, an answer to a ping, an HTTP request's headers, and (on
    /// the admin listener) its whole request.
    #[serde(with = "humantime_serde_compat")]
    pub read_timeout: Duration,
    /// A gRPC connection silent this long is pinged (and closed if the
    /// ping goes unanswered for `read_timeout`).
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Connections open at once on each listener; past it a new one is
    /// closed at once.
    pub max_connections: usize,
}

/// PEM files for the gRPC listener, resolved against the config file's
/// directory. Watched: a change is served to new connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTlsFiles {
    /// The chain the listener presents, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key; it must match `cert`.
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// PEM files for `rediss://`; all optional. Read once at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreTlsFiles {
    /// The CA that signed Redis's certificate, instead of the system's.
    pub ca: Option<PathBuf>,
    /// This instance's client certificate and key, for a Redis that
    /// checks clients (`tls-auth-clients yes`, Redis's default).
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            log_format: LogFormat::Human,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Log line format: `human` for terminals, `json` for log pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// Where counters live.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// `redis://` or `rediss://` URL; for a cluster, several URLs.
    /// Serialized masked (they may carry a password).
    #[serde(serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
    /// A Redis Cluster (also implied by several URLs).
    pub cluster: bool,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Longest wait for one Redis answer; the request path never waits
    /// longer on the store.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub on_error: FailurePolicy,
    pub tls: StoreTlsFiles,
}

fn redacted_urls<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| redacted_url(u)))
}

/// URLs may carry a password: `Debug` shows them masked.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redacted_url(u)).collect();
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            urls: vec![],
            cluster: false,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_millis(50),
            on_error: FailurePolicy::FailClosed,
            tls: StoreTlsFiles::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One process, no dependencies: the default.
    Memory,
    /// Shared by every instance; one Lua script per decision.
    Redis,
}

/// Serializes durations as "50ms" in `/config`.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_masked_in_debug_and_serialized() {
        let c = StoreConfig {
            kind: StoreKind::Redis,
            urls: vec!["redis://app:S3cr3tPW@h:6379".into()],
            ..StoreConfig::default()
        };
        let debug = format!("{c:?}");
        let json = serde_json::to_string(&c).unwrap();
        for shown in [debug, json] {
            assert!(!shown.contains("S3cr3tPW"), "{shown}");
            assert!(shown.contains("redis://app:***@h:6379"), "{shown}");
        }
    }
}
