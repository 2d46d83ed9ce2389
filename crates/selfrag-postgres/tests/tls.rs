//! TLS and authentication against a private Postgres of this test binary's
//! own: `ssl = on` with certificates the test generates
//! (`selfrag_testkit::certs`), TCP only through `hostssl` lines
//! (`scram-sha-256` for passwords, `cert` for the user `cert_user`), the Unix
//! socket `trust` for setup. Each `sslmode` is checked against it, a second
//! server with a certificate for another host name checks the host check,
//! and the memory and session conformance suites run over `verify-full`.
//!
//! One server per test binary (started by the first test that asks);
//! each conformance test gets a fresh schema.

use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::{Error, ErrorKind, MemoryStore, NewMemoryLog, UserStore};
use selfrag_postgres::{
    PgTls, Pool, PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore, SslMode,
};
use selfrag_testkit::certs::TestCerts;
use selfrag_testkit::servers::{PgOptions, PrivatePostgres};
use selfrag_testkit::{MemoryFixture, RealClock, SessionFixture};
use tokio::sync::OnceCell;

const PASSWORD: &str = "tls-Test-pw";
const CERT_USER: &str = "cert_user";

/// Only TLS over TCP: the `hostssl` lines, no `host` line.
const HBA: &str = "\
local all all trust
hostssl all cert_user 127.0.0.1/32 cert
hostssl all cert_user ::1/128 cert
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl all all ::1/128 scram-sha-256
";

struct TlsServer {
    pg: PrivatePostgres,
    certs: TestCerts,
}

impl TlsServer {
    async fn start(certs: TestCerts, wrong_host: bool) -> Option<Self> {
        let pg = PrivatePostgres::start_or_skip(PgOptions {
            conf: TestCerts::postgres_conf(),
            hba: Some(HBA.to_owned()),
            auth_method: "scram-sha-256".into(),
            password: Some(PASSWORD.into()),
            files: certs.postgres_files(wrong_host),
            ..PgOptions::default()
        })
        .await?;
        let server = Self { pg, certs };
        server
            .admin()
            .await
            .batch_execute(&format!("CREATE ROLE {CERT_USER} LOGIN; GRANT ALL ON DATABASE test TO {CERT_USER}"))
            .await
            .expect("create the certificate user");
        Some(server)
    }

    /// A superuser connection over the private Unix socket (`trust`, no
    /// TLS): for setup and inspection.
    async fn admin(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config.host_path(self.pg.dir()).port(self.pg.port()).user("postgres").dbname("test");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("admin over the Unix socket");
        tokio::spawn(conn);
        client
    }

    /// `postgres://postgres:PASSWORD@HOST:PORT/test?PARAMS`.
    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres:{PASSWORD}@{host}:{}/test?{params}", self.pg.port())
    }

    fn ca(&self) -> String {
        self.certs.ca_path().display().to_string()
    }
}

/// The server of this test binary, with the right host's certificate.
async fn server() -> Option<&'static TlsServer> {
    static SERVER: OnceCell<Option<TlsServer>> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async { TlsServer::start(TestCerts::generate(CERT_USER).expect("certificates"), false).await })
        .await
        .as_ref()
}

fn config(url: &str) -> PostgresConfig {
    PostgresConfig::with_url(url)
        .max_connections(2)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
}

/// Connects once through a pool built from `config`; the error of the
/// first use when it fails (connecting is lazy).
async fn connect(config: &PostgresConfig) -> Result<Pool, Error> {
    let pool = config.build()?;
    let users = PostgresUserStore::with_config(pool.clone(), config);
    // Any call needs a connection; this one also needs the table, which
    // the fixture's schemas have and the default search_path may not.
    match users.user_exists(selfrag_core::UserId::new()).await {
        Ok(_) => Ok(pool),
        Err(e) if e.kind() == ErrorKind::Backend && e.to_string().contains("42P01") => Ok(pool),
        Err(e) => Err(e),
    }
}

/// Whether the pool's connection is encrypted, from the server's side.
async fn ssl_in_use(pool: &Pool) -> bool {
    let conn = pool.get().await.expect("connection");
    conn.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl")
        .get::<_, bool>(0)
}

/// A refused configuration: a non-retryable backend error, quickly, whose
/// message holds `needle` (what went wrong) and never the password.
fn assert_config_error(err: &Error, needle: &str, took: Duration) {
    let text = format!("{err}");
    assert_eq!(err.kind(), ErrorKind::Backend, "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(text.contains(needle), "expected `{needle}` in: {text}");
    assert!(!format!("{err} {err:?}").contains(PASSWORD), "{err:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}: a refusal must not wait for a timeout");
}

async fn expect_refused(config: &PostgresConfig, needle: &str) -> Error {
    let started = Instant::now();
    let err = connect(config).await.expect_err("the connection must be refused");
    eprintln!("refused in {:?}: {err}", started.elapsed());
    assert_config_error(&err, needle, started.elapsed());
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_ca_connects_encrypted_by_name_and_by_ip() {
    let Some(s) = server().await else { return };
    for host in ["localhost", "127.0.0.1"] {
        let url = s.url(host, &format!("sslmode=verify-full&sslrootcert={}", s.ca()));
        let pool = connect(&config(&url)).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(ssl_in_use(&pool).await, "{host}");
    }
    // The same through a key=value string, and through the config's fields.
    let kv = format!(
        "host=localhost port={} user=postgres password={PASSWORD} dbname=test sslmode=verify-full sslrootcert='{}'",
        s.pg.port(),
        s.ca()
    );
    assert!(ssl_in_use(&connect(&config(&kv)).await.expect("key=value form")).await);
    let fields = config(&s.url("localhost", "")).tls(PgTls::new(SslMode::VerifyFull).root_cert_file(s.ca()));
    assert!(ssl_in_use(&connect(&fields).await.expect("PgTls fields")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_without_the_servers_ca_is_refused() {
    let Some(s) = server().await else { return };
    // No sslrootcert: the system roots, which do not hold the test CA.
    let err = expect_refused(&config(&s.url("localhost", "sslmode=verify-full")), "not signed by a trusted root").await;
    assert!(err.to_string().contains("sslrootcert"), "the message says what to set: {err}");
    // Another CA.
    let other = format!("sslmode=verify-full&sslrootcert={}", s.certs.other_ca_path().display());
    expect_refused(&config(&s.url("localhost", &other)), "not signed by a trusted root").await;
    // verify-ca checks the chain just the same.
    let other = format!("sslmode=verify-ca&sslrootcert={}", s.certs.other_ca_path().display());
    expect_refused(&config(&s.url("localhost", &other)), "not signed by a trusted root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_fails_verify_full_only() {
    let Some(s) = server().await else { return };
    // A second server, same CA, whose certificate names only WRONG_HOST.
    let certs = TestCerts::generate(CERT_USER).expect("certificates");
    let Some(wrong) = TlsServer::start(certs, true).await else { return };
    let ca = wrong.ca();
    let err = expect_refused(
        &config(&wrong.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"))),
        "does not name the host",
    )
    .await;
    assert!(err.to_string().contains("verify-ca"), "{err}");
    expect_refused(
        &config(&wrong.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))),
        "does not name the host",
    )
    .await;
    // verify-ca checks the chain only: it connects, encrypted.
    let pool = connect(&config(&wrong.url("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}"))))
        .await
        .expect("verify-ca ignores the host name");
    assert!(ssl_in_use(&pool).await);
    // The right server passes verify-full with its own CA (the CAs differ:
    // each TestCerts has its own).
    let own = format!("sslmode=verify-full&sslrootcert={}", s.ca());
    assert!(connect(&config(&s.url("localhost", &own))).await.is_ok());
    expect_refused(&config(&wrong.url("localhost", &own)), "not signed by a trusted root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_encrypt_without_verifying() {
    let Some(s) = server().await else { return };
    for mode in ["require", "prefer"] {
        let pool = connect(&config(&s.url("localhost", &format!("sslmode={mode}"))))
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode} needs no CA: {e}"));
        assert!(ssl_in_use(&pool).await, "sslmode={mode}");
    }
    // No sslmode at all: prefer.
    assert!(ssl_in_use(&connect(&config(&s.url("localhost", ""))).await.expect("default sslmode")).await);
    // libpq's rule: with an sslrootcert file, require checks the chain.
    let other = format!("sslmode=require&sslrootcert={}", s.certs.other_ca_path().display());
    expect_refused(&config(&s.url("localhost", &other)), "not signed by a trusted root").await;
    let own = format!("sslmode=require&sslrootcert={}", s.ca());
    assert!(connect(&config(&s.url("localhost", &own))).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_against_a_hostssl_only_server_is_refused() {
    let Some(s) = server().await else { return };
    let err = expect_refused(&config(&s.url("localhost", "sslmode=disable")), "no encryption").await;
    assert!(err.to_string().contains("sslmode=verify-full"), "the message says what to set: {err}");
}

/// `require` and stronger against a server with `ssl = off` (a private
/// server of its own, plaintext, `trust`): refused, saying so; `prefer`
/// falls back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused() {
    let Some(plain) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    for mode in ["require", "verify-full"] {
        let err = expect_refused(&config(&format!("{}?sslmode={mode}", plain.url())), "does not offer TLS").await;
        assert!(err.to_string().contains("sslmode=prefer"), "{err}");
    }
    let pool = connect(&config(&format!("{}?sslmode=prefer", plain.url()))).await.expect("prefer falls back");
    assert!(!ssl_in_use(&pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_authentication_error_not_a_hang() {
    let Some(s) = server().await else { return };
    let url = format!(
        "postgres://postgres:not-the-password@localhost:{}/test?sslmode=verify-full&sslrootcert={}",
        s.pg.port(),
        s.ca()
    );
    let err = expect_refused(&config(&url), "28P01").await;
    assert!(err.to_string().contains("password"), "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let Some(s) = server().await else { return };
    let base = format!("postgres://{CERT_USER}@localhost:{}/test", s.pg.port());
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        s.ca(),
        s.certs.client_cert_path().display(),
        s.certs.client_key_path().display()
    );
    let pool = connect(&config(&url)).await.expect("certificate authentication");
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one("SELECT current_user::text, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), CERT_USER);
    assert!(row.get::<_, bool>(1));
    assert!(row.get::<_, Option<String>>(2).unwrap_or_default().contains(CERT_USER));

    // Without a certificate, or with one for another user: refused.
    expect_refused(&config(&format!("{base}?sslmode=verify-full&sslrootcert={}", s.ca())), "client certificate").await;
    let (other_cert, other_key) = s.certs.issue_client("someone_else").expect("another client certificate");
    let other = format!(
        "{base}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        s.ca(),
        other_cert.display(),
        other_key.display()
    );
    expect_refused(&config(&other), "28000").await;
}

/// A statement stuck past the deadline is cancelled on the server through
/// the pool's own TLS connector: the server takes TCP only over TLS, so a
/// cancel request the driver could not encrypt would never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_statement_is_cancelled_over_tls() {
    let Some(s) = server().await else { return };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = s.admin().await;
    admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let url = s.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", s.ca()));
    let config =
        config(&url).schema(&schema).application_name("selfrag-tls-cancel").operation_timeout(Duration::from_secs(1));
    let pool = config.build().unwrap();
    selfrag_postgres::migrate(&pool).await.unwrap();
    let users = PostgresUserStore::with_config(pool.clone(), &config);
    let store = PostgresMemoryStore::with_config(pool, &config);
    let user = users.create_user().await.unwrap();

    let mut locker = s.admin().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {schema}.memory_logs IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    let err = store.append(user, NewMemoryLog::new("fact", "blocked").unwrap()).await.expect_err("blocked");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");

    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'selfrag-tls-cancel' \
                   AND state = 'active' AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = admin.query_one(waiting, &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the timed-out statement still waits: the cancel request did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.rollback().await.unwrap();
    store.append(user, NewMemoryLog::new("fact", "after").unwrap()).await.expect("append after the timeout");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

// --- The conformance suites over verify-full -----------------------------------

/// A fresh, migrated schema on the TLS server and a `verify-full` pool on
/// it; the schema is dropped with the guard.
struct TlsDb {
    pool: Pool,
    schema: String,
    server: &'static TlsServer,
}

impl Drop for TlsDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping schema {} of the failed test", self.schema);
            return;
        }
        // Drop runs inside the test's runtime, which cannot block: clean up
        // from a runtime of its own on its own thread.
        let (server, schema) = (self.server, self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async { server.admin().await.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await })
        })
        .join();
    }
}

async fn fresh_tls_db() -> Option<TlsDb> {
    let server = server().await?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    server.admin().await.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("schema");
    let url = server.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", server.ca()));
    let pool = config(&url).max_connections(4).schema(&schema).build().expect("pool");
    selfrag_postgres::migrate(&pool).await.expect("migrate over verify-full");
    Some(TlsDb { pool, schema, server })
}

async fn memory_fixture() -> Option<MemoryFixture> {
    let db = fresh_tls_db().await?;
    let store = Arc::new(PostgresMemoryStore::new(db.pool.clone()));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    Some(MemoryFixture::new(store, users).with_guard(db))
}

async fn session_fixture() -> Option<SessionFixture> {
    let db = fresh_tls_db().await?;
    let store = Arc::new(PostgresSessionStore::new(db.pool.clone()));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    let pool = db.pool.clone();
    Some(
        SessionFixture::new(store, Some(users), Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(PostgresSessionStore::new(pool.clone()).with_limits(limits)))
            .with_guard(db),
    )
}

selfrag_testkit::memory_store_tests!(memory_fixture);
selfrag_testkit::session_store_tests!(session_fixture);
