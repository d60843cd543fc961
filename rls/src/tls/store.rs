//! The Redis client's TLS material for `rediss://`: a private CA to trust
//! and, when Redis asks for client certificates (its default,
//! `tls-auth-clients yes`), this instance's certificate and key.

use super::pem::{self, TlsError};
use crate::config::StoreTlsFiles;
use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `None` when no file is set: the system's trust store (or
/// `SSL_CERT_FILE`) decides, with no client certificate. Each file is
/// parsed here first, so a bad one is reported with its name.
pub fn redis_certificates(
    files: &StoreTlsFiles,
) -> Result<Option<redis::TlsCertificates>, TlsError> {
    if files.ca.is_none() && files.cert.is_none() {
        return Ok(None);
    }
    let root_cert = match &files.ca {
        Some(ca) => {
            pem::roots(ca)?;
            Some(read(ca)?)
        }
        None => None,
    };
    let client_tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            pem::certificates(cert)?;
            pem::private_key(key)?;
            Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            })
        }
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}
