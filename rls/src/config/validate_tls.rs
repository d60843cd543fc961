//! `[server]` and `[store]` TLS fields: paths resolved against the config
//! file's directory, and every file read and parsed now, so `tollgate
//! check` and a reload report a missing or broken file with its line
//! rather than the listener failing later.

use super::error::Source;
use super::{ConfigError, ServerTlsFiles, StoreTlsFiles};
use crate::tls::{self, TlsError};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A file field as written: where it is (for errors), where it points.
struct FileField {
    at: usize,
    name: &'static str,
    path: PathBuf,
}

impl FileField {
    fn new(src: &Source, value: Option<Spanned<String>>, name: &'static str) -> Option<FileField> {
        value.map(|v| FileField {
            at: v.span().start,
            name,
            path: resolve(src, v.get_ref().trim()),
        })
    }

    fn check<T>(
        &self,
        src: &Source,
        errors: &mut Vec<ConfigError>,
        read: impl Fn(&Path) -> Result<T, TlsError>,
    ) -> bool {
        match read(&self.path) {
            Ok(_) => true,
            Err(e) => {
                errors.push(src.error(self.at, self.name, e.to_string()));
                false
            }
        }
    }
}

/// A relative path is relative to the directory of the file that names it.
fn resolve(src: &Source, path: &str) -> PathBuf {
    let path = Path::new(path);
    match Path::new(src.name).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// `tls_cert` and `tls_key` (both or neither), `tls_client_ca` (only with
/// them). Builds the rustls config once, which also catches a key that
/// does not belong to the certificate.
pub(super) fn server(
    src: &Source,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerTlsFiles> {
    let cert = FileField::new(src, cert, "server.tls_cert");
    let key = FileField::new(src, key, "server.tls_key");
    let ca = FileField::new(src, client_ca, "server.tls_client_ca");
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            if let Some(ca) = ca {
                errors.push(src.error(
                    ca.at,
                    ca.name,
                    "needs tls_cert and tls_key (mTLS is TLS that also checks clients)",
                ));
            }
            return None;
        }
        (Some(one), None) | (None, Some(one)) => {
            errors.push(src.error(one.at, one.name, "set tls_cert and tls_key together"));
            return None;
        }
    };
    let mut ok = cert.check(src, errors, tls::certificates);
    ok &= key.check(src, errors, tls::private_key);
    if let Some(ca) = &ca {
        ok &= ca.check(src, errors, tls::roots);
    }
    let files = ServerTlsFiles {
        cert: cert.path,
        key: key.path,
        client_ca: ca.map(|c| c.path),
    };
    if ok {
        if let Err(e) = tls::server_config(&files) {
            errors.push(src.error(key.at, key.name, e.to_string()));
        }
    }
    Some(files)
}

/// `tls_ca`, `tls_cert`, `tls_key` for `rediss://` URLs.
pub(super) fn store(
    src: &Source,
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    urls: &[String],
    errors: &mut Vec<ConfigError>,
) -> StoreTlsFiles {
    let ca = FileField::new(src, ca, "store.tls_ca");
    let cert = FileField::new(src, cert, "store.tls_cert");
    let key = FileField::new(src, key, "store.tls_key");
    let mut files = StoreTlsFiles::default();
    if let Some(first) = [&ca, &cert, &key].into_iter().flatten().next() {
        if !urls.iter().any(|u| u.starts_with("rediss://")) {
            errors.push(src.error(first.at, first.name, "only used with a rediss:// url"));
        }
    }
    match (&cert, &key) {
        (Some(_), Some(_)) | (None, None) => {}
        (Some(one), None) | (None, Some(one)) => {
            errors.push(src.error(one.at, one.name, "set tls_cert and tls_key together"));
        }
    }
    if let Some(ca) = ca {
        ca.check(src, errors, tls::roots);
        files.ca = Some(ca.path);
    }
    if let Some(cert) = cert {
        cert.check(src, errors, tls::certificates);
        files.cert = Some(cert.path);
    }
    if let Some(key) = key {
        key.check(src, errors, tls::private_key);
        files.key = Some(key.path);
    }
    files
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use crate::config::redis_url::redacted_url;
    use std::path::{Path, PathBuf};

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted_url("redis://app:s3cret@h:6379/0"),
            "redis://app:***@h:6379/0"
        );
        assert_eq!(redacted_url("rediss://:s3cret@h"), "rediss://:***@h");
        assert_eq!(redacted_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redacted_url("http://u:p@h"), "http://u:***@h");
    }

    /// A CA and a server certificate it signed, as PEM files in `dir`.
    fn write_pki(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
    }

    fn pki_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{name}-{}", std::process::id()));
        write_pki(&dir);
        dir
    }

    fn errors(file: &Path, text: &str) -> Vec<String> {
        std::fs::write(file, text).unwrap();
        match crate::config::load(file) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = pki_dir("relative");
        let file = dir.join("tollgate.toml");
        std::fs::write(
            &file,
            "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\ntls_client_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let c = crate::config::load(&file).unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert, dir.join("cert.pem"));
        assert_eq!(tls.client_ca, Some(dir.join("ca.pem")));
    }

    #[test]
    fn missing_broken_and_mismatched_files_are_located() {
        let dir = pki_dir("errors");
        let file = dir.join("bad.toml");
        let name = file.display().to_string();
        std::fs::write(dir.join("garbage.pem"), "not pem\n").unwrap();
        let e = errors(
            &file,
            "[server]\ntls_cert = \"nope.pem\"\ntls_key = \"garbage.pem\"\ntls_client_ca = \"garbage.pem\"\n",
        );
        let want = [
            format!(
                "{name}:2: server.tls_cert: {}: cannot read",
                dir.join("nope.pem").display()
            ),
            format!(
                "{name}:3: server.tls_key: {}: not a PEM private key",
                dir.join("garbage.pem").display()
            ),
            format!(
                "{name}:4: server.tls_client_ca: {}: no PEM certificate",
                dir.join("garbage.pem").display()
            ),
        ];
        for w in &want {
            assert!(
                e.iter().any(|l| l.starts_with(w.as_str())),
                "no `{w}` in {e:#?}"
            );
        }
        assert_eq!(e.len(), 3, "{e:#?}");

        let e = errors(
            &file,
            "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"other-key.pem\"\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with(&format!("{name}:3: server.tls_key: ")),
            "{e:?}"
        );

        let e = errors(&file, "[server]\ntls_key = \"key.pem\"\n");
        assert_eq!(
            e,
            [format!(
                "{name}:2: server.tls_key: set tls_cert and tls_key together"
            )]
        );
    }

    #[test]
    fn store_tls_files_need_rediss() {
        let dir = pki_dir("store");
        let file = dir.join("store.toml");
        let name = file.display().to_string();
        let e = errors(
            &file,
            "[store]\nkind = \"redis\"\nurl = \"redis://u:hunter2@127.0.0.1:6379\"\ntls_ca = \"ca.pem\"\n",
        );
        assert_eq!(
            e,
            [format!(
                "{name}:4: store.tls_ca: only used with a rediss:// url"
            )]
        );
        let e = errors(
            &file,
            "[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:6379\"\ntls_ca = \"ca.pem\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
        );
        assert!(e.is_empty(), "{e:#?}");
        let e = errors(
            &file,
            "[store]\nkind = \"redis\"\nurl = \"http://u:hunter2@h\"\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(!e[0].contains("hunter2"), "the password leaked: {e:?}");
    }

    #[test]
    fn no_tls_by_default() {
        let c = parse_str("t.toml", "").unwrap();
        assert_eq!(c.server.tls, None);
        assert_eq!(c.store.tls, Default::default());
    }
}
