//! PEM files to rustls types. Every error names the file; none quotes the
//! file's content (a key must never reach a log line).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::path::{Path, PathBuf};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Missing or unreadable (permissions): named so the operator can fix it.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that parses but holds no certificate (a key given as cert).
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file does not parse; `reason` never quotes it.
    #[error("{}: not a PEM private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    /// A certificate file that does not parse, e.g. cut short mid-write.
    #[error("{}: bad PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    /// A CA file whose certificate cannot be a trust anchor.
    #[error("{}: not a usable CA certificate: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    /// The files parse but do not form a usable identity (for example the
    /// key does not belong to the certificate).
    #[error("{} with {}: {reason}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

impl TlsError {
    /// The file at fault (the key file for a mismatched pair).
    pub fn path(&self) -> &Path {
        match self {
            TlsError::Read { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::Key { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::Ca { path, .. } => path,
            TlsError::Identity { key, .. } => key,
        }
    }
}

/// What is wrong with a PEM file, in words that quote none of it (the
/// library's own messages may echo a line or the bytes of a key).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a section is not valid base64".into(),
        Error::NoItemsFound => "no PEM section of the expected kind".into(),
        Error::SectionTooLarge => "a section is over 256 MB".into(),
        _ => "unreadable PEM".into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate chain: every `CERTIFICATE` block of the file, leaf first.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: pem_problem(&e),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The first private key of the file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: pem_problem(&e),
    })
}

/// Trust anchors: every certificate of the file must be a usable CA.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_file_and_never_its_content() {
        let missing = Path::new("/nonexistent/tollgate/cert.pem");
        let e = certificates(missing).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/tollgate/cert.pem: cannot read"),
            "{e}"
        );

        let empty = scratch("empty.pem", "hello\n");
        let e = certificates(&empty).unwrap_err().to_string();
        assert!(e.ends_with("empty.pem: no PEM certificate in it"), "{e}");

        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n";
        let broken = scratch("broken-key.pem", secret);
        let e = private_key(&broken).unwrap_err().to_string();
        assert!(e.contains("broken-key.pem: not a PEM private key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "the key's content leaked: {e}");
    }

    #[test]
    fn a_generated_pair_parses() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = scratch("ok-cert.pem", &cert.pem());
        let k = scratch("ok-key.pem", &key.serialize_pem());
        assert_eq!(certificates(&c).unwrap().len(), 1);
        private_key(&k).unwrap();
        let e = private_key(&c).unwrap_err();
        assert_eq!(e.path(), c.as_path());
    }
}
