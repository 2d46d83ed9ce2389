//! TLS (`rediss://`) and ACL users against private `redis-server`s of this
//! test binary's own, with certificates the test generates
//! (`selfrag_testkit::certs`): TLS port only (`--port 0`), an ACL user
//! `selfrag` limited to `~selfrag:*` and `+@all -@dangerous`, the default
//! user behind a password. The session and rate-limit conformance suites run
//! over TLS as that user (one server for the binary); other tests check the
//! certificate checks, client certificates and refused credentials.

use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::{Error, ErrorKind, NewSession, RateLimiter, SessionId, SessionStore, UserId};
use selfrag_redis::redis;
use selfrag_redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag_testkit::certs::TestCerts;
use selfrag_testkit::servers::{free_port, PrivateRedis, RedisOptions};
use selfrag_testkit::{RateLimitFixture, RealClock, SessionFixture};
use tokio::sync::OnceCell;

const ACL_USER: &str = "selfrag";
const ACL_PASSWORD: &str = "acl-S3cret";
const ADMIN_PASSWORD: &str = "admin-S3cret";

struct TlsRedis {
    /// Keeps the server running (dropping it stops the server).
    _redis: PrivateRedis,
    certs: TestCerts,
    port: u16,
}

impl TlsRedis {
    /// A TLS-only server with `certs` (the wrong-host certificate when
    /// `wrong_host`), clients' certificates `optional` or required, and the
    /// ACL user.
    async fn start(certs: TestCerts, wrong_host: bool, require_client_cert: bool) -> Option<Self> {
        let port = free_port().expect("a free port");
        let mut args = certs.redis_args(port, wrong_host);
        if require_client_cert {
            *args.last_mut().expect("--tls-auth-clients optional") = "yes".into();
        }
        args.extend(
            ["--user", ACL_USER, "on", &format!(">{ACL_PASSWORD}"), "~selfrag:*", "+@all", "-@dangerous"]
                .map(str::to_owned),
        );
        let redis = PrivateRedis::start_or_skip(RedisOptions {
            args,
            password: Some(ADMIN_PASSWORD.into()),
            ..RedisOptions::default()
        })
        .await?;
        Some(Self { _redis: redis, certs, port })
    }

    fn url(&self, userinfo: &str, host: &str) -> String {
        format!("rediss://{userinfo}@{host}:{}", self.port)
    }

    /// The ACL user over TLS, checked against the test CA, with a fresh key
    /// prefix under `selfrag:` (the user's key pattern).
    fn config(&self, host: &str) -> RedisConfig {
        RedisConfig::builder()
            .url(self.url(&format!("{ACL_USER}:{ACL_PASSWORD}"), host))
            .tls_ca_file(self.certs.ca_path())
            .key_prefix(format!("selfrag:test:{}:", SessionId::generate()))
            .pool_size(4)
            // A TLS connect costs about 65 ms in a debug build (1 ms in
            // clear), and the first calls of a store each open one while
            // none is stored yet (80 at once in a rate-limit check): more
            // than the default 2 s on 2 busy cores.
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("config")
    }
}

/// The server of this test binary.
async fn server() -> Option<&'static TlsRedis> {
    static SERVER: OnceCell<Option<TlsRedis>> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async { TlsRedis::start(TestCerts::generate("client").expect("certs"), false, false).await })
        .await
        .as_ref()
}

/// One round trip through a session store built from `config`.
async fn use_store(config: &RedisConfig) -> Result<(), Error> {
    let store = RedisSessionStore::connect(config)?;
    let user = UserId::new();
    let session = store.create(user, NewSession::new(Duration::from_secs(60))?).await?;
    assert!(store.get(user, session.id).await?.is_some());
    Ok(())
}

/// A refusal no retry fixes: a non-retryable backend error, quickly, whose
/// message holds `needle` and no password.
async fn expect_refused(config: &RedisConfig, needle: &str) -> Error {
    let started = Instant::now();
    let err = use_store(config).await.expect_err("refused");
    let took = started.elapsed();
    eprintln!("refused in {took:?}: {err}");
    assert_eq!(err.kind(), ErrorKind::Backend, "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains(needle), "expected `{needle}` in: {err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(ACL_PASSWORD) && !text.contains(ADMIN_PASSWORD), "{text}");
    assert!(took < Duration::from_secs(2), "took {took:?}: a refusal must not wait for a timeout");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_works_by_name_and_by_ip() {
    let Some(s) = server().await else { return };
    for host in ["localhost", "127.0.0.1"] {
        use_store(&s.config(host)).await.unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    // The same from the environment variables.
    let env = [
        ("REDIS_URL", s.url(&format!("{ACL_USER}:{ACL_PASSWORD}"), "localhost")),
        ("SELFRAG_REDIS_TLS_CA", s.certs.ca_path().display().to_string()),
        ("SELFRAG_REDIS_PREFIX", format!("selfrag:test:{}:", SessionId::generate())),
    ];
    let config = RedisConfig::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
    use_store(&config).await.expect("configured from the environment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let Some(s) = server().await else { return };
    // No CA: the system's roots, which do not hold the test CA.
    let config = RedisConfig { tls_ca_file: None, ..s.config("localhost") };
    let err = expect_refused(&config, "not signed by a trusted root").await;
    assert!(err.to_string().contains("SELFRAG_REDIS_TLS_CA"), "says what to set: {err}");
    // Another CA.
    let config = RedisConfig { tls_ca_file: Some(s.certs.other_ca_path()), ..s.config("localhost") };
    expect_refused(&config, "not signed by a trusted root").await;
    // Encryption without checks (as `sslmode=require`) connects.
    let config = RedisConfig { tls_ca_file: None, tls_insecure: true, ..s.config("localhost") };
    use_store(&config).await.expect("tls_insecure checks nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused() {
    let Some(wrong) = TlsRedis::start(TestCerts::generate("client").expect("certs"), true, false).await else {
        return;
    };
    for host in ["localhost", "127.0.0.1"] {
        expect_refused(&wrong.config(host), "does not name the host").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_the_server_requires_them() {
    let Some(s) = TlsRedis::start(TestCerts::generate("client").expect("certs"), false, true).await else {
        return;
    };
    let with_cert = RedisConfig {
        tls_client_cert_file: Some(s.certs.client_cert_path()),
        tls_client_key_file: Some(s.certs.client_key_path()),
        ..s.config("localhost")
    };
    use_store(&with_cert).await.expect("with a client certificate");
    // Without one, the server ends the handshake: under TLS 1.3 the client
    // hears of it on its first read, as a TLS alert.
    let err = use_store(&s.config("localhost")).await.expect_err("no client certificate");
    eprintln!("without a client certificate: {err}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("client certificate") || err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_acl_password_is_refused_and_not_retryable() {
    let Some(s) = server().await else { return };
    let config =
        RedisConfig { url: s.url(&format!("{ACL_USER}:not-the-password"), "localhost"), ..s.config("localhost") };
    let err = expect_refused(&config, "uth").await;
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    // An unknown user likewise.
    let config = RedisConfig { url: s.url("nobody:whatever", "localhost"), ..s.config("localhost") };
    expect_refused(&config, "uth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_user_reaches_only_its_keys() {
    let Some(s) = server().await else { return };
    let config = s.config("localhost");
    let pool = config.create_pool().expect("pool");
    let mut conn = pool.get().await.expect("connection as the ACL user");
    let whoami: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut *conn).await.expect("ACL WHOAMI");
    assert_eq!(whoami, ACL_USER);
    let _: () = redis::cmd("SET").arg("selfrag:test:own").arg(1).query_async(&mut *conn).await.expect("own key");
    let denied = redis::cmd("SET").arg("other:key").arg(1).query_async::<()>(&mut *conn).await.unwrap_err();
    assert!(denied.to_string().contains("NOPERM"), "{denied}");
    let denied = redis::cmd("FLUSHALL").query_async::<()>(&mut *conn).await.unwrap_err();
    assert!(denied.to_string().contains("NOPERM"), "{denied}");
}

// --- The conformance suites over TLS, as the ACL user -----------------------

async fn sessions() -> Option<SessionFixture> {
    let s = server().await?;
    let store = RedisSessionStore::connect(&s.config("localhost")).expect("session store");
    let shared = store.clone();
    Some(
        SessionFixture::new(Arc::new(store), None, Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(shared.clone().with_limits(limits))),
    )
}

async fn rate_limits() -> Option<RateLimitFixture> {
    let s = server().await?;
    let config = s.config("localhost");
    let pool = config.create_pool().expect("pool");
    let parent = config.key_prefix.clone();
    let make = move |policy| {
        let prefix = format!("{parent}{}:", SessionId::generate());
        let config = RedisConfig { key_prefix: prefix, ..config.clone() };
        Arc::new(RedisRateLimiter::with_config(pool.clone(), &config, policy).expect("limiter")) as Arc<dyn RateLimiter>
    };
    Some(RateLimitFixture::new(make, Arc::new(RealClock)))
}

// As in tests/conformance.rs: Redis scopes session ids to their user.
selfrag_testkit::session_store_tests!(sessions, skip = [session_id_of_another_user_is_refused]);
selfrag_testkit::rate_limiter_tests!(rate_limits);
