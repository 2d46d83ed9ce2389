//! TLS with libpq's `sslmode` semantics, on rustls
//! ([`tokio_postgres_rustls`]).
//!
//! [`PgTls`] holds the libpq options `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, read from a URL or `key=value` string (see
//! [`parse_url_with_tls`](crate::parse_url_with_tls)) or set on
//! [`PostgresConfig::tls`](crate::PostgresConfig::tls). [`PgTls::connector`]
//! makes the connector the pool (and cancel requests) use;
//! [`PgTls::libpq_env`] gives the same settings to libpq tools (`pg_dump`).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers TLS | no¹ |
//! | `require` | always (else the connection fails) | no¹ |
//! | `verify-ca` | always | chains to a trusted root |
//! | `verify-full` | always | chains to a trusted root **and** names the host |
//!
//! ¹ As in libpq, when `sslrootcert` names a file, `prefer` and `require`
//! check the chain too, like `verify-ca`.
//!
//! Trusted roots: the file `sslrootcert` names (PEM, one or more CA
//! certificates), or `sslrootcert=system` / no `sslrootcert`: the system's
//! roots (rustls-native-certs: the OS trust store, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`). As in libpq 16, `sslrootcert=system` makes `verify-full`
//! the default and refuses a weaker `sslmode`.
//!
//! Where this differs from libpq, on purpose: no `sslrootcert` means the
//! system roots (libpq reads `~/.postgresql/root.crt` and fails without
//! it); an `sslrootcert` file that cannot be read is an error in every mode
//! (libpq ignores a missing one below `verify-ca`); no default client
//! certificate is read from `~/.postgresql/`; `allow` is refused (use
//! `prefer` or `disable`); encrypted client keys (`sslpassword`) are not
//! supported. Over Unix-domain sockets no TLS is attempted whatever the
//! mode, as in libpq.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use selfrag_core::{Error, Result};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (see [`PgTls`] and `docs/postgres.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext otherwise; the certificate
    /// is not checked (unless an `sslrootcert` file is given). libpq's and
    /// this crate's default.
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless an
    /// `sslrootcert` file is given).
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host
    /// connected to (DNS name or IP address in its subject alternative
    /// names).
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    /// # Errors
    /// [`Error::InvalidInput`] (`sslmode`) for anything else, including
    /// libpq's `allow` (not supported by the driver: use `prefer` or
    /// `disable`). The value itself is not quoted.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(Error::invalid(
                "sslmode",
                "`allow` (plaintext first, TLS if the server insists) is not supported: use `prefer` or `disable`",
            )),
            _ => Err(Error::invalid("sslmode", "must be disable, prefer, require, verify-ca or verify-full")),
        }
    }
}

/// The trusted roots for checking the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RootCerts {
    /// The system's trust store (`sslrootcert=system`).
    System,
    /// CA certificates in a PEM file (`sslrootcert=/path/ca.crt`).
    File(PathBuf),
}

/// TLS settings: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`.
///
/// Every field is optional: `None` leaves it to the URL (for
/// [`PostgresConfig::tls`](crate::PostgresConfig::tls)) and then to the
/// defaults: `prefer` (`verify-full` with system roots), system roots, no
/// client certificate.
///
/// ```
/// use selfrag_postgres::{PgTls, SslMode};
/// let tls = PgTls::new(SslMode::VerifyFull)
///     .root_cert_file("/etc/selfrag/db-ca.crt")
///     .client_cert("/etc/selfrag/app.crt", "/etc/selfrag/app.key");
/// assert_eq!(tls.effective_mode(), SslMode::VerifyFull);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: Option<SslMode>,
    /// `sslrootcert` (`system` or a PEM file).
    pub root_cert: Option<RootCerts>,
    /// `sslcert`: the client certificate (PEM, the chain after it may
    /// follow), for certificate authentication. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1; not encrypted).
    pub client_key: Option<PathBuf>,
}

/// What a [`PgTls`] does, once resolved (for reports such as `selfrag
/// doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSummary {
    /// The effective `sslmode`.
    pub mode: SslMode,
    /// Whether a connection without TLS is refused.
    pub requires_encryption: bool,
    /// Whether the server's certificate must chain to a trusted root.
    pub verifies_chain: bool,
    /// Whether the certificate must also name the host.
    pub verifies_host: bool,
    /// The roots used when the chain is checked.
    pub roots: Option<RootCerts>,
    /// Whether a client certificate is presented.
    pub client_cert: bool,
}

impl fmt::Display for TlsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        match (self.mode, self.verifies_chain, self.verifies_host) {
            (SslMode::Disable, ..) => f.write_str(" (plaintext)")?,
            (_, false, _) => f.write_str(" (encrypted when possible, certificate not checked)")?,
            (_, true, false) => f.write_str(" (certificate chain checked, host name not)")?,
            (_, true, true) => f.write_str(" (certificate chain and host name checked)")?,
        }
        match &self.roots {
            Some(RootCerts::System) if self.verifies_chain => f.write_str(", system roots")?,
            Some(RootCerts::File(p)) if self.verifies_chain => write!(f, ", roots from {}", p.display())?,
            _ => {}
        }
        if self.client_cert {
            f.write_str(", client certificate")?;
        }
        Ok(())
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

impl PgTls {
    /// Settings with `sslmode` = `mode` and the rest left to defaults.
    pub fn new(mode: SslMode) -> Self {
        Self { mode: Some(mode), ..Self::default() }
    }

    /// Sets `sslmode`.
    pub fn mode(mut self, mode: SslMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Trusts the CA certificates in the PEM file `path` (`sslrootcert`).
    pub fn root_cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_cert = Some(RootCerts::File(path.into()));
        self
    }

    /// Trusts the system's roots (`sslrootcert=system`).
    pub fn system_roots(mut self) -> Self {
        self.root_cert = Some(RootCerts::System);
        self
    }

    /// Presents the client certificate `cert` with its key `key` (PEM
    /// files; `sslcert`, `sslkey`).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// These settings, with each unset field taken from `fallback`.
    pub fn or(&self, fallback: &PgTls) -> PgTls {
        PgTls {
            mode: self.mode.or(fallback.mode),
            root_cert: self.root_cert.clone().or_else(|| fallback.root_cert.clone()),
            client_cert: self.client_cert.clone().or_else(|| fallback.client_cert.clone()),
            client_key: self.client_key.clone().or_else(|| fallback.client_key.clone()),
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == PgTls::default()
    }

    /// The `sslmode` in effect: the one set, else `verify-full` with
    /// `sslrootcert=system`, else `prefer`.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (Some(mode), _) => mode,
            (None, Some(RootCerts::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        }
    }

    /// Checks the combination (not the files: [`PgTls::connector`] reads
    /// them) and says what it does.
    ///
    /// # Errors
    /// [`Error::InvalidInput`]: `sslmode` weaker than `verify-full` with
    /// `sslrootcert=system` (libpq's rule), `sslcert` without `sslkey` or
    /// the reverse.
    pub fn summary(&self) -> Result<TlsSummary> {
        let mode = self.effective_mode();
        let verify = self.verify()?;
        Ok(TlsSummary {
            mode,
            requires_encryption: !matches!(mode, SslMode::Disable | SslMode::Prefer),
            verifies_chain: verify != Verify::Nothing,
            verifies_host: verify == Verify::Full,
            roots: (verify != Verify::Nothing).then(|| self.root_cert.clone().unwrap_or(RootCerts::System)),
            client_cert: self.client_cert.is_some() && mode != SslMode::Disable,
        })
    }

    fn verify(&self) -> Result<Verify> {
        let mode = self.effective_mode();
        if self.root_cert == Some(RootCerts::System) && mode != SslMode::VerifyFull {
            return Err(Error::invalid(
                "sslmode",
                format!("`{mode}` is weaker than `verify-full`, which `sslrootcert=system` requires (as in libpq)"),
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => return Err(Error::invalid("sslkey", "is needed with sslcert (the client key file)")),
            (None, Some(_)) => return Err(Error::invalid("sslcert", "is needed with sslkey (the client certificate)")),
            _ => {}
        }
        Ok(match mode {
            SslMode::Disable => Verify::Nothing,
            // libpq's rule: with a root certificate file, `prefer` and
            // `require` verify the chain (for compatibility with servers'
            // old advice), without checking the host name.
            SslMode::Prefer | SslMode::Require => match self.root_cert {
                Some(RootCerts::File(_)) => Verify::Chain,
                _ => Verify::Nothing,
            },
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        })
    }

    /// The driver's `sslmode` for these settings on `config`'s hosts:
    /// `disable` and `prefer` as they are, `require` for the three stronger
    /// modes (the connector does the checking), and `disable` when every
    /// host is a Unix-domain socket (no TLS there, as in libpq).
    pub(crate) fn apply_to(&self, config: &mut tokio_postgres::Config) {
        use tokio_postgres::config::{Host, SslMode as DriverMode};
        let all_unix = !config.get_hosts().is_empty() && config.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
        let mode = match self.effective_mode() {
            _ if all_unix => DriverMode::Disable,
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
        };
        config.ssl_mode(mode);
    }

    /// The connector for these settings: reads the root, certificate and
    /// key files now (and the system roots when they are used).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as for [`PgTls::summary`], and naming
    /// `sslrootcert`, `sslcert` or `sslkey` when a file cannot be read or
    /// holds no usable PEM (the message never quotes a key); `sslrootcert`
    /// when the system has no roots.
    pub fn connector(&self) -> Result<PgConnector> {
        let verify = self.verify()?;
        let mode = self.effective_mode();
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::backend(crate::error::BACKEND, "TLS: no usable protocol version", false, e))?;
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(NoVerify(provider.clone())),
            Verify::Chain | Verify::Full => {
                let roots = self.roots()?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::invalid("sslrootcert", format!("unusable roots: {e}")))?;
                if verify == Verify::Full {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) if mode != SslMode::Disable => {
                let chain = read_certs("sslcert", cert)?;
                let key = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::invalid("sslkey", format!("does not go with sslcert: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        // Postgres 17 requires this ALPN value for direct TLS
        // (`sslnegotiation=direct`); older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgConnector { inner: MakeRustlsConnect::new(config), mode })
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(RootCerts::File(path)) => {
                for cert in read_certs("sslrootcert", path)? {
                    roots.add(cert).map_err(|e| {
                        Error::invalid("sslrootcert", format!("{}: not a CA certificate: {e}", path.display()))
                    })?;
                }
            }
            Some(RootCerts::System) | None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                    return Err(Error::invalid(
                        "sslrootcert",
                        format!("no system root certificates found{why}: name a CA file with sslrootcert"),
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The same settings for a libpq tool (`pg_dump`, `pg_restore`, `psql`)
    /// as environment variables of the child process: `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, each set (an empty value is
    /// "unset" to libpq, so a value inherited from the parent's environment
    /// never applies). System roots become the system's CA bundle file
    /// when one is found (libpq before 16 does not know
    /// `sslrootcert=system`), else `system`. Paths only: no key material.
    ///
    /// One difference remains: with `prefer` or `require` and no
    /// `sslrootcert`, libpq checks the chain if `~/.postgresql/root.crt`
    /// exists, where the driver checks nothing.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mode = self.effective_mode();
        let verify = self.verify().unwrap_or(Verify::Nothing);
        let root = match (&self.root_cert, verify) {
            (Some(RootCerts::File(p)), _) => p.display().to_string(),
            (Some(RootCerts::System), _) | (None, Verify::Chain | Verify::Full) => system_bundle(),
            (None, Verify::Nothing) => String::new(),
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        vec![
            ("PGSSLMODE", mode.as_str().to_owned()),
            ("PGSSLROOTCERT", root),
            ("PGSSLCERT", path(&self.client_cert)),
            ("PGSSLKEY", path(&self.client_key)),
        ]
    }
}

/// The system's CA bundle as one file, for libpq tools: `SSL_CERT_FILE`,
/// else the usual locations (Debian/Ubuntu/Alpine, Fedora/RHEL, SUSE,
/// macOS/BSD), else `system` (understood by libpq 16 and later).
fn system_bundle() -> String {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return PathBuf::from(file).display().to_string();
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .find(|p| Path::new(p).is_file())
    .map_or_else(|| "system".to_owned(), |p| (*p).to_owned())
}

/// The crypto provider: *ring*, chosen explicitly rather than through the
/// process default, which rustls cannot pick when both of its providers
/// are compiled in (qdrant-client brings aws-lc-rs, tonic brings ring).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(field, format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(field, format!("{}: holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_file("sslkey", path)?;
    // The error of the PEM parser names the section kind, never its bytes.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let encrypted = String::from_utf8_lossy(&pem).contains("ENCRYPTED");
        let why = if encrypted {
            "is encrypted (sslpassword is not supported: store the key decrypted, readable only by the service)"
                .to_owned()
        } else {
            format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
        };
        Error::invalid("sslkey", format!("{}: {why}", path.display()))
    })
}

/// The connector made by [`PgTls::connector`]: a rustls
/// [`MakeTlsConnect`] for `tokio_postgres::Config::connect`, deadpool's
/// `Manager` and `CancelToken::cancel_query`. Cheap to clone.
#[derive(Clone)]
pub struct PgConnector {
    inner: MakeRustlsConnect,
    mode: SslMode,
}

impl fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The rustls config holds the client key: print none of it.
        f.debug_struct("PgConnector").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl PgConnector {
    /// A connector that encrypts but checks no certificate and presents
    /// none: for cancel requests of a pool whose settings are unknown
    /// (they carry no credentials, only the backend's cancel key, which
    /// libpq before 17 sent in plaintext).
    pub(crate) fn unverified() -> Self {
        let provider = provider();
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        Self { inner: MakeRustlsConnect::new(config), mode: SslMode::Require }
    }
}

impl<S> MakeTlsConnect<S> for PgConnector
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Self::TlsConnect, Self::Error> {
        <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut self.inner, domain)
    }
}

/// `prefer` / `require` without roots: any certificate is accepted (the
/// handshake signatures are still checked, so the server holds the key of
/// the certificate it sent).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check, less the host name. webpki checks
/// the name only after the chain has passed, so a name mismatch is the one
/// error that can be forgiven here.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
        }
        assert_eq!("allow".parse::<SslMode>().unwrap_err().field(), Some("sslmode"));
        let e = "verify_full".parse::<SslMode>().unwrap_err();
        assert_eq!(e.field(), Some("sslmode"));
        assert!(!e.to_string().contains("verify_full"), "{e}");
    }

    #[test]
    fn defaults_and_libpq_rules() {
        assert_eq!(PgTls::default().effective_mode(), SslMode::Prefer);
        assert_eq!(PgTls::default().system_roots().effective_mode(), SslMode::VerifyFull);
        let s = PgTls::new(SslMode::Require).summary().unwrap();
        assert!(s.requires_encryption && !s.verifies_chain && !s.verifies_host);
        // A root file makes require check the chain (libpq's rule).
        let s = PgTls::new(SslMode::Require).root_cert_file("/x").summary().unwrap();
        assert!(s.verifies_chain && !s.verifies_host, "{s:?}");
        let s = PgTls::default().root_cert_file("/x").summary().unwrap();
        assert!(!s.requires_encryption && s.verifies_chain, "{s:?}");
        let s = PgTls::new(SslMode::VerifyFull).summary().unwrap();
        assert!(s.verifies_chain && s.verifies_host && s.roots == Some(RootCerts::System), "{s:?}");
        assert_eq!(s.to_string(), "sslmode=verify-full (certificate chain and host name checked), system roots");
        for weak in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let e = PgTls::new(weak).system_roots().summary().unwrap_err();
            assert_eq!(e.field(), Some("sslmode"), "{weak}");
        }
        assert_eq!(
            PgTls { client_cert: Some("/c".into()), ..PgTls::default() }.summary().unwrap_err().field(),
            Some("sslkey")
        );
        assert_eq!(
            PgTls { client_key: Some("/k".into()), ..PgTls::default() }.summary().unwrap_err().field(),
            Some("sslcert")
        );
    }

    #[test]
    fn or_takes_unset_fields_from_the_fallback() {
        let url = PgTls::new(SslMode::Require).root_cert_file("/url-ca");
        let merged = PgTls::default().root_cert_file("/cfg-ca").or(&url);
        assert_eq!(merged.mode, Some(SslMode::Require));
        assert_eq!(merged.root_cert, Some(RootCerts::File("/cfg-ca".into())));
    }

    #[test]
    fn unreadable_files_name_their_option() {
        let missing = std::env::temp_dir().join("selfrag-no-such-file.pem");
        let e = PgTls::new(SslMode::VerifyCa).root_cert_file(&missing).connector().unwrap_err();
        assert_eq!(e.field(), Some("sslrootcert"), "{e}");
        let e = PgTls::new(SslMode::Require).client_cert(&missing, &missing).connector().unwrap_err();
        assert_eq!(e.field(), Some("sslcert"), "{e}");
        // Not PEM at all.
        let dir = std::env::temp_dir().join(format!("selfrag-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = PgTls::new(SslMode::VerifyFull).root_cert_file(&junk).connector().unwrap_err();
        assert_eq!(e.field(), Some("sslrootcert"), "{e}");
        let key = dir.join("enc.key");
        std::fs::write(&key, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n")
            .unwrap();
        let e = PgTls::new(SslMode::Require).client_cert(&junk, &key).connector().unwrap_err();
        // The certificate is checked first.
        assert_eq!(e.field(), Some("sslcert"), "{e}");
        assert!(read_key(&key).unwrap_err().to_string().contains("encrypted"));
        let _ = std::fs::remove_dir_all(&dir);
        // Prefer and require need no files.
        assert!(PgTls::new(SslMode::Require).connector().is_ok());
        assert!(PgTls::default().connector().is_ok());
    }

    #[test]
    fn libpq_env_sets_every_variable() {
        let env = PgTls::new(SslMode::VerifyCa).root_cert_file("/ca.crt").client_cert("/c.crt", "/c.key").libpq_env();
        assert_eq!(
            env,
            vec![
                ("PGSSLMODE", "verify-ca".to_owned()),
                ("PGSSLROOTCERT", "/ca.crt".to_owned()),
                ("PGSSLCERT", "/c.crt".to_owned()),
                ("PGSSLKEY", "/c.key".to_owned()),
            ]
        );
        let env = PgTls::default().libpq_env();
        assert_eq!(env[0], ("PGSSLMODE", "prefer".to_owned()));
        assert!(env[1..].iter().all(|(_, v)| v.is_empty()), "{env:?}");
        // System roots: a bundle file, or `system`.
        let env = PgTls::new(SslMode::VerifyFull).libpq_env();
        assert!(!env[1].1.is_empty(), "{env:?}");
    }
}
