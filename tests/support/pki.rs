//! Certificates made at run time (rcgen, no `openssl` CLI needed): a
//! private CA and the server and client certificates it signs, written as
//! PEM files into a scratch directory.

use crate::process::scratch_dir;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::path::{Path, PathBuf};

/// A private CA; `ca.pem` in [`Pki::dir`].
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// One issued certificate: its files and its DER (to compare with what a
/// server presents).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A new CA named `name` (its common name), in a fresh scratch directory.
    pub fn new(name: &str) -> Pki {
        let dir = scratch_dir(&format!("pki-{name}"));
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(vec![]).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = name_of(name);
        let cert = params.self_signed(&key).expect("ca cert");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`: the CA certificate, to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `localhost` and `127.0.0.1` (usable by a
    /// server and as a client certificate), common name `name`, serial
    /// `serial`; writes `<name>.pem` and `<name>-key.pem`.
    pub fn issue(&self, name: &str, serial: u64) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params.distinguished_name = name_of(name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&issued.key, &issued.key_pem).expect("write key");
        issued
    }
}

fn name_of(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Replaces `path` by `content` the way deploy tools do: write a temporary
/// file beside it, then rename it over (atomic: a reader sees the old file
/// or the new one, never half of one).
pub fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-swap");
    std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
