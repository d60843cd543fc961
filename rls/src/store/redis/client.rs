//! The redis clients a store is made of: the main connection's backend (a
//! single node or a cluster) and one plain client per node for the
//! freed-capacity subscription. No connection is made here.

use crate::store::redis_link::Backend;
use crate::store::StoreError;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use std::time::Duration;

/// A client that cannot be built: the store is unavailable.
fn bad(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// One client for `url`, over TLS when `tls` is given.
fn client(url: &str, tls: Option<redis::TlsCertificates>) -> Result<redis::Client, StoreError> {
    match tls {
        Some(certs) => redis::Client::build_with_tls(url, certs),
        None => redis::Client::open(url),
    }
    .map_err(bad)
}

/// The freed-capacity subscription talks to the same nodes, the same way.
/// Validation parses every URL as the client does, so a failure here
/// is unexpected: refuse the store rather than lose the wake-ups.
pub(super) fn subscribers(
    urls: &[String],
    tls: Option<&redis::TlsCertificates>,
) -> Result<Vec<redis::Client>, StoreError> {
    urls.iter()
        .map(|u| client(u.as_str(), tls.cloned()))
        .collect()
}

/// A cluster client for several URLs (or `cluster`), else a single node's
/// connection manager, with the store's timeouts.
pub(super) fn backend(
    urls: &[String],
    cluster: bool,
    tls: Option<redis::TlsCertificates>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Backend, StoreError> {
    if cluster || urls.len() > 1 {
        let mut builder = ClusterClient::builder(urls.iter().map(String::as_str));
        if let Some(certs) = tls {
            builder = builder.certs(certs);
        }
        let client = builder
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()
            .map_err(bad)?;
        return Ok(Backend::Cluster(client));
    }
    let url = urls
        .first()
        .ok_or_else(|| StoreError::Unavailable("no url".into()))?;
    Ok(Backend::Single {
        client: client(url.as_str(), tls)?,
        config: ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            // One try per attempt: retrying is the breaker's job
            // (its probes pace the attempts), and a retry's backoff
            // would hide the real error behind `connect_timeout`.
            .set_number_of_retries(0),
    })
}
