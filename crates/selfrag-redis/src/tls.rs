//! TLS for `rediss://` URLs: the certificate files of a [`RedisConfig`],
//! the rustls crypto provider, and the refusals a retry cannot fix.
//!
//! The driver (redis-rs with `tls-rustls`) checks the server's certificate
//! against the system's roots (rustls-native-certs), or against
//! [`RedisConfig::tls_ca_file`]; the host name must match (DNS name or IP
//! address in the certificate's subject alternative names) unless
//! [`RedisConfig::tls_insecure`].

use std::path::Path;

use deadpool_redis::redis::{ClientTlsConfig, RedisError, TlsCertificates};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use selfrag_core::{Error, Result};

use crate::config::RedisConfig;

/// Makes *ring* the process's default rustls provider, if none is yet.
///
/// The driver builds its TLS configuration with `ClientConfig::builder()`,
/// which takes the process default; rustls can pick one by itself only when
/// a single provider is compiled in, and an application that also uses
/// qdrant-client has both *ring* and aws-lc-rs (the driver would then
/// panic). An application that installed its own provider first keeps it.
pub(crate) fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn certs_pem(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(field, format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(field, format!("{}: holds no PEM certificate", path.display())));
    }
    Ok(pem)
}

/// The certificate files of `config`, read and checked; `None` when it
/// names none (the system's roots, no client certificate).
pub(crate) fn certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>> {
    let root_cert = config.tls_ca_file.as_deref().map(|p| certs_pem("tls_ca_file", p)).transpose()?;
    let client_tls = match (&config.tls_client_cert_file, &config.tls_client_key_file) {
        (Some(cert), Some(key)) => {
            let client_cert = certs_pem("tls_client_cert_file", cert)?;
            let client_key = read("tls_client_key_file", key)?;
            if let Err(e) = PrivateKeyDer::from_pem_slice(&client_key) {
                let why = if String::from_utf8_lossy(&client_key).contains("ENCRYPTED") {
                    "is encrypted (not supported: store it decrypted, readable only by the service)".to_owned()
                } else {
                    format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
                };
                return Err(Error::invalid("tls_client_key_file", format!("{}: {why}", key.display())));
            }
            Some(ClientTlsConfig { client_cert, client_key })
        }
        _ => None,
    };
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
}

/// What to change when `err` is a refused password or a TLS handshake the
/// client or the server refused (a `rustls::Error` in its source chain):
/// such a failure is configuration, which no retry fixes. `None` for other
/// errors.
pub(crate) fn refusal(err: &RedisError) -> Option<String> {
    use rustls::{AlertDescription, CertificateError};
    if err.kind() == deadpool_redis::redis::ErrorKind::AuthenticationFailed {
        return Some(
            "authentication failed: check the user name and password of the URL (an ACL user: \
             rediss://user:password@host; the default user: rediss://:password@host)"
                .to_owned(),
        );
    }
    let tls = rustls_error(err)?;
    let hint = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the server's certificate is not signed by a trusted root: set tls_ca_file (SELFRAG_REDIS_TLS_CA) to \
             the CA that signed it"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host connected to: use a host name (or IP) it holds",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. } | CertificateError::NotValidYet,
        ) => "the server's certificate is expired or not yet valid: renew it, or check the clocks",
        rustls::Error::InvalidCertificate(_) => "the server's certificate was refused: check tls_ca_file",
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure,
        ) => {
            "the server refused the handshake, most likely the client certificate: set tls_client_cert_file and \
             tls_client_key_file (SELFRAG_REDIS_TLS_CERT / _KEY) to one its CA signed"
        }
        _ => "the TLS handshake failed: check the rediss:// URL and the TLS settings",
    };
    Some(format!("TLS: {tls}; {hint}"))
}

/// The rustls error in `err`'s source chain (inside the `io::Error`s the
/// TLS stream reports, which `io::Error::source` does not show).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            if let Some(tls) = rustls_error(inner) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinctive, so that no generated temporary path can contain it (a
    /// CI run once saw a certificate directory named `...VeFpwE`).
    const PASSWORD: &str = "unit-secret-7f3a";

    fn tls_config() -> RedisConfig {
        RedisConfig { url: format!("rediss://u:{PASSWORD}@redis.internal:6380"), ..RedisConfig::default() }
    }

    #[test]
    fn tls_fields_are_checked_with_their_names() {
        let field = |c: RedisConfig| c.validate().unwrap_err().field().map(str::to_owned);
        let plain = RedisConfig::default();
        assert_eq!(
            field(RedisConfig { tls_ca_file: Some("/ca".into()), ..plain.clone() }).as_deref(),
            Some("tls_ca_file")
        );
        assert_eq!(field(RedisConfig { tls_insecure: true, ..plain }).as_deref(), Some("tls_insecure"));
        let cert_only = RedisConfig { tls_client_cert_file: Some("/c".into()), ..tls_config() };
        assert_eq!(field(cert_only).as_deref(), Some("tls_client_key_file"));
        let key_only = RedisConfig { tls_client_key_file: Some("/k".into()), ..tls_config() };
        assert_eq!(field(key_only).as_deref(), Some("tls_client_cert_file"));
        let both = RedisConfig { tls_insecure: true, tls_ca_file: Some("/ca".into()), ..tls_config() };
        assert_eq!(field(both).as_deref(), Some("tls_insecure"));
        assert!(RedisConfig { tls_ca_file: Some("/ca".into()), ..tls_config() }.validate().is_ok());
    }

    #[test]
    fn unreadable_or_wrong_files_name_their_field() {
        let dir = std::env::temp_dir().join(format!("selfrag-redis-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not PEM").unwrap();
        let enc = dir.join("enc.key");
        std::fs::write(&enc, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n")
            .unwrap();
        let field = |c: RedisConfig| c.create_pool().unwrap_err().field().map(str::to_owned);
        let missing = dir.join("missing.pem");
        assert_eq!(field(RedisConfig { tls_ca_file: Some(missing), ..tls_config() }).as_deref(), Some("tls_ca_file"));
        assert_eq!(
            field(RedisConfig { tls_ca_file: Some(junk.clone()), ..tls_config() }).as_deref(),
            Some("tls_ca_file")
        );
        let certs = selfrag_testkit::certs::TestCerts::generate("u").unwrap();
        let bad_key = RedisConfig {
            tls_client_cert_file: Some(certs.client_cert_path()),
            tls_client_key_file: Some(enc),
            ..tls_config()
        };
        let err = bad_key.create_pool().unwrap_err();
        assert_eq!(err.field(), Some("tls_client_key_file"));
        assert!(err.to_string().contains("encrypted"), "{err}");
        let good = RedisConfig {
            tls_ca_file: Some(certs.ca_path()),
            tls_client_cert_file: Some(certs.client_cert_path()),
            tls_client_key_file: Some(certs.client_key_path()),
            ..tls_config()
        };
        let pool = good.create_pool().expect("TLS pool without a server");
        assert!(!format!("{pool:?} {good:?}").contains(PASSWORD), "{good:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_settings_from_the_environment() {
        let vars = [
            ("REDIS_URL", "rediss://u:pw@h:6380"),
            ("SELFRAG_REDIS_TLS_CA", "/etc/ca.pem"),
            ("SELFRAG_REDIS_TLS_CERT", "/etc/c.pem"),
            ("SELFRAG_REDIS_TLS_KEY", "/etc/k.pem"),
        ];
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let c = RedisConfig::from_lookup(lookup(Box::leak(Box::new(vars)))).unwrap();
        assert_eq!(c.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.tls_client_key_file.as_deref(), Some(Path::new("/etc/k.pem")));
        assert!(!c.tls_insecure);
        let insecure = [("REDIS_URL", "rediss://h"), ("SELFRAG_REDIS_TLS_INSECURE", "true")];
        assert!(RedisConfig::from_lookup(lookup(Box::leak(Box::new(insecure)))).unwrap().tls_insecure);
        let bad = [("REDIS_URL", "rediss://h"), ("SELFRAG_REDIS_TLS_INSECURE", "maybe")];
        let err = RedisConfig::from_lookup(lookup(Box::leak(Box::new(bad)))).unwrap_err();
        assert_eq!(err.field(), Some("SELFRAG_REDIS_TLS_INSECURE"));
    }
}
