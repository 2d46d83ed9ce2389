//! Certificates for TLS tests, generated on the fly (rcgen): a CA, server
//! certificates, client certificates, written as PEM files to a temporary
//! directory.
//!
//! [`TestCerts::generate`] makes one set:
//!
//! | file | what | for |
//! | --- | --- | --- |
//! | [`ca.crt`](TestCerts::ca_path) | a CA (`selfrag test CA`) | `sslrootcert`, `--tls-ca-cert-file`, `root.crt` |
//! | [`server.crt`/`server.key`](TestCerts::server_cert_path) | signed by the CA, for `localhost`, `127.0.0.1`, `::1` | a server a client verifies (`verify-full`) |
//! | [`wrong-host.crt`/`.key`](TestCerts::wrong_host_cert_path) | signed by the CA, for `wrong-host.invalid` only | a server whose name check must fail |
//! | [`client.crt`/`client.key`](TestCerts::client_cert_path) | signed by the CA, CN = the user name given | client certificate auth (Postgres `cert`: CN = role) |
//! | [`other-ca.crt`](TestCerts::other_ca_path) | a second CA that signed nothing here | "a CA that is not the server's" |
//!
//! More client certificates: [`TestCerts::issue_client`]. Keys are ECDSA
//! P-256 (PKCS#8 PEM), written with mode 0600 (libpq refuses a client key
//! that others may read); certificates are valid from a day ago for 30
//! days. The directory is removed when the [`TestCerts`] is dropped.
//!
//! Postgres wants the server key owned by its user with mode 0600: pass the
//! PEM bytes through [`crate::servers::PgOptions::files`] (see
//! [`TestCerts::postgres_files`]) rather than these paths.
//!
//! ```no_run
//! use selfrag_testkit::certs::TestCerts;
//! let certs = TestCerts::generate("app_cert").unwrap();
//! let url = format!(
//!     "postgres://app@localhost:5432/db?sslmode=verify-full&sslrootcert={}",
//!     certs.ca_path().display()
//! );
//! # let _ = url;
//! ```

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration as TimeDuration, OffsetDateTime};

/// The DNS name on the wrong-host certificate: `.invalid` never resolves
/// (RFC 2606), so it can never be the name a test connects to.
pub const WRONG_HOST: &str = "wrong-host.invalid";

/// A generated set of test certificates and keys, as PEM strings and as
/// files in a temporary directory (removed on drop).
pub struct TestCerts {
    dir: tempfile::TempDir,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate for `localhost`, `127.0.0.1` and `::1` (PEM).
    pub server_cert_pem: String,
    /// The server certificate's private key (PKCS#8 PEM).
    pub server_key_pem: String,
    /// A server certificate, from the same CA, for [`WRONG_HOST`] only (PEM).
    pub wrong_host_cert_pem: String,
    /// The wrong-host certificate's private key (PKCS#8 PEM).
    pub wrong_host_key_pem: String,
    /// The client certificate; its subject CN is the user name given to
    /// [`TestCerts::generate`] (PEM).
    pub client_cert_pem: String,
    /// The client certificate's private key (PKCS#8 PEM).
    pub client_key_pem: String,
    /// A second, unrelated CA (PEM): trusting it must not make any of the
    /// server certificates here valid.
    pub other_ca_pem: String,
    client_user: String,
}

impl fmt::Debug for TestCerts {
    // Keys are test-only, but printing them helps no one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCerts")
            .field("dir", &self.dir.path())
            .field("client_user", &self.client_user)
            .finish_non_exhaustive()
    }
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> String + '_ {
    move |e| format!("generate {what}: {e}")
}

/// Validity: from a day ago (clock skew between the test and the server's
/// process is nil here, but a certificate "not yet valid" by a second
/// would be a confusing failure) for 30 days.
fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + TimeDuration::days(30);
}

fn new_ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "selfrag-testkit");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    params
}

fn leaf_params(common_name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    params
}

/// Signs a leaf certificate with a fresh key: (certificate PEM, key PEM).
fn issue(params: &CertificateParams, issuer: &Issuer<'_, &KeyPair>, what: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(rc(what))?;
    let cert = params.signed_by(&key, issuer).map_err(rc(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

impl TestCerts {
    /// Generates a CA, the server, wrong-host and client certificates (the
    /// client's CN is `client_user`) and a second CA, and writes them to a
    /// fresh temporary directory.
    ///
    /// # Errors
    /// When a key or certificate cannot be generated or a file written.
    pub fn generate(client_user: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("selfrag-certs-")
            .tempdir()
            .map_err(|e| format!("create a temporary directory: {e}"))?;

        let ca_key = KeyPair::generate().map_err(rc("the CA key"))?;
        let ca_params = new_ca_params("selfrag test CA");
        let ca_pem = ca_params.self_signed(&ca_key).map_err(rc("the CA"))?.pem();

        let other_key = KeyPair::generate().map_err(rc("the other CA key"))?;
        let other_ca_pem = new_ca_params("selfrag other CA").self_signed(&other_key).map_err(rc("the other CA"))?.pem();

        let (server_cert_pem, server_key_pem, wrong_host_cert_pem, wrong_host_key_pem, client_cert_pem, client_key_pem) = {
            let issuer = Issuer::from_params(&ca_params, &ca_key);
            let server = leaf_params(
                "localhost",
                vec![
                    SanType::DnsName("localhost".try_into().map_err(rc("a SAN"))?),
                    SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                ],
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let (server_cert, server_key) = issue(&server, &issuer, "the server certificate")?;
            let wrong = leaf_params(
                WRONG_HOST,
                vec![SanType::DnsName(WRONG_HOST.try_into().map_err(rc("a SAN"))?)],
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let (wrong_cert, wrong_key) = issue(&wrong, &issuer, "the wrong-host certificate")?;
            let client = leaf_params(client_user, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
            let (client_cert, client_key) = issue(&client, &issuer, "the client certificate")?;
            (server_cert, server_key, wrong_cert, wrong_key, client_cert, client_key)
        };

        let certs = Self {
            dir,
            ca_key,
            ca_params,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            wrong_host_cert_pem,
            wrong_host_key_pem,
            client_cert_pem,
            client_key_pem,
            other_ca_pem,
            client_user: client_user.to_owned(),
        };
        for (name, text, mode) in [
            ("ca.crt", &certs.ca_pem, 0o644),
            ("other-ca.crt", &certs.other_ca_pem, 0o644),
            ("server.crt", &certs.server_cert_pem, 0o644),
            ("server.key", &certs.server_key_pem, 0o600),
            ("wrong-host.crt", &certs.wrong_host_cert_pem, 0o644),
            ("wrong-host.key", &certs.wrong_host_key_pem, 0o600),
            ("client.crt", &certs.client_cert_pem, 0o644),
            ("client.key", &certs.client_key_pem, 0o600),
        ] {
            write(&certs.dir.path().join(name), text, mode)?;
        }
        Ok(certs)
    }

    /// Issues another client certificate from the CA, CN = `user`, and
    /// writes it as `client-<user>.crt` / `client-<user>.key`; returns the
    /// two paths.
    ///
    /// # Errors
    /// When `user` is not a plain file-name part, or generation or writing
    /// fails.
    pub fn issue_client(&self, user: &str) -> Result<(PathBuf, PathBuf), String> {
        if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            return Err(format!("issue_client: `{user}` must be ASCII letters, digits, `_`, `-` or `.`"));
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let params = leaf_params(user, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        let (cert, key) = issue(&params, &issuer, "a client certificate")?;
        let cert_path = self.dir.path().join(format!("client-{user}.crt"));
        let key_path = self.dir.path().join(format!("client-{user}.key"));
        write(&cert_path, &cert, 0o644)?;
        write(&key_path, &key, 0o600)?;
        Ok((cert_path, key_path))
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The user name in the client certificate's CN.
    pub fn client_user(&self) -> &str {
        &self.client_user
    }

    /// `ca.crt`: the CA that signed every certificate here.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `other-ca.crt`: a CA that signed none of them.
    pub fn other_ca_path(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    /// `server.crt`: for `localhost`, `127.0.0.1`, `::1`.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// `server.key`.
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// `wrong-host.crt`: for [`WRONG_HOST`] only.
    pub fn wrong_host_cert_path(&self) -> PathBuf {
        self.dir.path().join("wrong-host.crt")
    }

    /// `wrong-host.key`.
    pub fn wrong_host_key_path(&self) -> PathBuf {
        self.dir.path().join("wrong-host.key")
    }

    /// `client.crt`: CN = [`TestCerts::client_user`].
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// `client.key` (mode 0600).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The files a Postgres data directory needs for TLS, for
    /// [`crate::servers::PgOptions::files`]: `server.crt`, `server.key` (the
    /// right host, or [`WRONG_HOST`] when `wrong_host`) and `root.crt` (the
    /// CA, to verify client certificates). Pair with the `conf` lines
    /// `ssl = on`, `ssl_cert_file = 'server.crt'`, `ssl_key_file =
    /// 'server.key'`, `ssl_ca_file = 'root.crt'`.
    pub fn postgres_files(&self, wrong_host: bool) -> Vec<(String, Vec<u8>)> {
        let (cert, key) = if wrong_host {
            (&self.wrong_host_cert_pem, &self.wrong_host_key_pem)
        } else {
            (&self.server_cert_pem, &self.server_key_pem)
        };
        vec![
            ("server.crt".into(), cert.as_bytes().to_vec()),
            ("server.key".into(), key.as_bytes().to_vec()),
            ("root.crt".into(), self.ca_pem.as_bytes().to_vec()),
        ]
    }

    /// The `postgresql.conf` lines that go with [`TestCerts::postgres_files`].
    pub fn postgres_conf() -> Vec<String> {
        vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'root.crt'".into(),
        ]
    }

    /// [`crate::servers::PgOptions`] for a server with these certificates
    /// ([`TestCerts::postgres_conf`] and [`TestCerts::postgres_files`]);
    /// set `hba`, `auth_method` and `password` on the result as the test
    /// needs (e.g. `hostssl` lines only, `scram-sha-256`).
    #[cfg(unix)]
    pub fn postgres_options(&self, wrong_host: bool) -> crate::servers::PgOptions {
        crate::servers::PgOptions {
            conf: Self::postgres_conf(),
            files: self.postgres_files(wrong_host),
            ..crate::servers::PgOptions::default()
        }
    }

    /// The `redis-server` arguments for a TLS-only server on `tls_port`
    /// with these certificates (`--port 0` closes the plaintext port; the
    /// wrong-host certificate when `wrong_host`). `--tls-auth-clients
    /// optional`: clients may present a certificate (verified against the
    /// CA) but need not.
    pub fn redis_args(&self, tls_port: u16, wrong_host: bool) -> Vec<String> {
        let (cert, key) = if wrong_host {
            (self.wrong_host_cert_path(), self.wrong_host_key_path())
        } else {
            (self.server_cert_path(), self.server_key_path())
        };
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca_path().display().to_string(),
            "--tls-auth-clients".into(),
            "optional".into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_and_keys_private() {
        let certs = TestCerts::generate("app_cert").unwrap();
        for path in [
            certs.ca_path(),
            certs.other_ca_path(),
            certs.server_cert_path(),
            certs.wrong_host_cert_path(),
            certs.client_cert_path(),
        ] {
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{}: {text}", path.display());
        }
        for path in [certs.server_key_path(), certs.wrong_host_key_path(), certs.client_key_path()] {
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{}", path.display());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
        let (cert, key) = certs.issue_client("second_user").unwrap();
        assert!(fs::read_to_string(cert).unwrap().contains("BEGIN CERTIFICATE"));
        assert!(fs::read_to_string(key).unwrap().contains("BEGIN PRIVATE KEY"));
        assert!(certs.issue_client("../x").is_err());
        let dir = certs.dir().to_path_buf();
        drop(certs);
        assert!(!dir.exists(), "the directory is removed on drop");
    }

    /// The certificates chain as their names say, checked by `openssl
    /// verify` (what the servers use) when the machine has it.
    #[test]
    fn chains_verify_with_openssl() {
        let Ok(out) = std::process::Command::new("openssl").arg("version").output() else {
            eprintln!("no openssl binary: chain check skipped");
            return;
        };
        assert!(out.status.success());
        let certs = TestCerts::generate("app_cert").unwrap();
        let verify = |ca: &Path, cert: &Path, extra: &[&str]| {
            let out = std::process::Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .args(extra)
                .arg(cert)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let ca = certs.ca_path();
        for (cert, extra) in [
            (certs.server_cert_path(), vec!["-verify_hostname", "localhost"]),
            (certs.server_cert_path(), vec!["-verify_ip", "127.0.0.1"]),
            (certs.wrong_host_cert_path(), vec!["-verify_hostname", WRONG_HOST]),
            (certs.client_cert_path(), vec!["-purpose", "sslclient"]),
        ] {
            let (ok, text) = verify(&ca, &cert, &extra);
            assert!(ok, "{} {extra:?}: {text}", cert.display());
        }
        let (ok, _) = verify(&ca, &certs.wrong_host_cert_path(), &["-verify_hostname", "localhost"]);
        assert!(!ok, "the wrong-host certificate must not be valid for localhost");
        let (ok, _) = verify(&certs.other_ca_path(), &certs.server_cert_path(), &[]);
        assert!(!ok, "the other CA must not verify the server certificate");
        let subject = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(certs.client_cert_path())
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&subject.stdout).contains("CN = app_cert"), "{subject:?}");
    }
}
