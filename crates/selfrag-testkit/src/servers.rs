//! Servers for backend tests: shared ones for conformance tests, private
//! ones a test may crash, and a relay for network faults.
//!
//! # Shared servers: [`postgres`], [`redis`], [`qdrant`]
//! For each backend, in order:
//! 1. the URL in its environment variable (`SELFRAG_TEST_POSTGRES_URL`,
//!    `SELFRAG_TEST_REDIS_URL`, `SELFRAG_TEST_QDRANT_URL`), used as is;
//! 2. else a container started with testcontainers, but only when a Docker
//!    engine answers a ping within a second or two (`DOCKER_HOST`, or
//!    `/var/run/docker.sock`), so that machines without Docker move on at
//!    once; the container lives as long as the returned [`TestServer::guard`];
//! 3. else (Postgres and Redis) **a private server started from the
//!    machine's binaries**, one per test process, started by the first test
//!    that asks and shared by all tests of the process (they isolate
//!    themselves with fresh schemas and key prefixes). Postgres:
//!    `postgres://postgres@127.0.0.1:PORT/test`, from the newest
//!    `/usr/lib/postgresql/*/bin` (or `SELFRAG_TEST_PG_BIN_DIR`, or `initdb`
//!    on `PATH`), run as the `postgres` user when the tests run as root.
//!    Redis: `redis://127.0.0.1:PORT` from `redis-server` on `PATH` (or
//!    `SELFRAG_TEST_REDIS_SERVER`). It stops and its directory is removed
//!    when the test process ends, however it ends (see "Clean-up" below).
//!    `SELFRAG_TEST_LOCAL_SERVERS=off` skips this step;
//! 4. else a loud `SKIPPED <backend> tests: <why>` line on stderr and `None`.
//!
//! `SELFRAG_TEST_REQUIRE` (a comma list such as `postgres,redis`, or `all`)
//! turns step 4 into a panic for the listed backends, so CI cannot pass by
//! skipping. An unknown name in it is a panic too (a typo must not disable
//! the requirement).
//!
//! Containers: `postgres` (testcontainers-modules, user/password/db
//! `postgres`), `redis` (testcontainers-modules), and `qdrant/qdrant` (tag
//! [`QDRANT_TAG`], or `SELFRAG_TEST_QDRANT_TAG`) exposing 6333 (REST) and
//! 6334 (gRPC), ready when `GET /readyz` on 6333 answers 200. One container
//! per call: tests stay isolated, at the price of start-up time.
//!
//! The shared servers are never stopped, restarted or reconfigured by a
//! test: fault tests use private servers.
//!
//! # Private servers: [`PrivatePostgres`], [`PrivateRedis`]
//! A server of the test's own, from the machine's binaries, in a temporary
//! directory, on a free loopback port (or a given one), which the test may
//! crash ([`PrivatePostgres::kill`]: SIGKILL to the postmaster and all its
//! children), stop cleanly, and restart on the same port and data
//! ([`PrivatePostgres::restart`] returns once it accepts connections again,
//! after crash recovery). Options carry what TLS, auth and cluster tests
//! need: extra `postgresql.conf` lines, a replacement `pg_hba.conf`, the
//! auth method and superuser password, files for the data directory;
//! extra `redis-server` arguments and a password. Dropping one stops it and
//! removes its directory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use selfrag_testkit::servers::{PgOptions, PrivatePostgres};
//! let Some(pg) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return Ok(()) };
//! let url = pg.url(); // postgres://postgres@127.0.0.1:PORT/test
//! pg.kill().await?; // crash
//! pg.restart().await?; // crash recovery, same port
//! # Ok(()) }
//! ```
//!
//! Network faults: [`crate::relay::Relay`] (also re-exported here) sits
//! between a client and any server and can black-hole, refuse or cut the
//! connections.
//!
//! # Clean-up
//! Each server lives under `<tmp>/selfrag-testkit/`, with a watchdog
//! process that stops the server and removes its directory when the test
//! process ends (it reads a pipe only the test process holds, so the
//! kernel's closing of that pipe at exit, even after `SIGKILL`, is the
//! signal); the first server a process starts also reaps directories of
//! test processes that are gone.

use std::fmt;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Guard;

#[cfg(unix)]
pub use crate::private::{free_port, PgOptions, PrivatePostgres, PrivateRedis, RedisOptions};
pub use crate::relay::{Relay, RelayStats};

/// The environment variable that, set to `off` (or `0`, `false`, `no`),
/// skips the private servers step of [`postgres`] and [`redis`].
pub const LOCAL_SERVERS_VAR: &str = "SELFRAG_TEST_LOCAL_SERVERS";

/// The Qdrant image tag started when no URL is given.
pub const QDRANT_TAG: &str = "v1.18.0";

/// The environment variable that turns skips into failures.
pub const REQUIRE_VAR: &str = "SELFRAG_TEST_REQUIRE";

/// A server a backend's tests can use.
pub struct TestServer {
    /// Where to connect. Postgres: `postgres://user:pass@host:port/db`;
    /// Redis: `redis://host:port`; Qdrant: the gRPC URL
    /// `http://host:6334-mapped-port`.
    pub url: String,
    /// Keeps the container (if any) running; drop it to stop the server.
    pub guard: Guard,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer").field("url", &self.url).field("container", &self.guard.is_some()).finish()
    }
}

/// The backends this module provides servers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Redis,
    Qdrant,
}

impl Backend {
    const ALL: [Backend; 3] = [Backend::Postgres, Backend::Redis, Backend::Qdrant];

    fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Redis => "redis",
            Backend::Qdrant => "qdrant",
        }
    }

    fn url_var(self) -> &'static str {
        match self {
            Backend::Postgres => "SELFRAG_TEST_POSTGRES_URL",
            Backend::Redis => "SELFRAG_TEST_REDIS_URL",
            Backend::Qdrant => "SELFRAG_TEST_QDRANT_URL",
        }
    }
}

/// A Postgres server (see the module docs).
///
/// # Panics
/// When no server can be had and `SELFRAG_TEST_REQUIRE` lists `postgres`.
pub async fn postgres() -> Option<TestServer> {
    provide(Backend::Postgres).await
}

/// A Redis server (see the module docs).
///
/// # Panics
/// When no server can be had and `SELFRAG_TEST_REQUIRE` lists `redis`.
pub async fn redis() -> Option<TestServer> {
    provide(Backend::Redis).await
}

/// A Qdrant server; the URL is its gRPC endpoint (see the module docs).
///
/// # Panics
/// When no server can be had and `SELFRAG_TEST_REQUIRE` lists `qdrant`.
pub async fn qdrant() -> Option<TestServer> {
    provide(Backend::Qdrant).await
}

/// Whether `SELFRAG_TEST_REQUIRE` lists `backend` (`postgres`, `redis`,
/// `qdrant`), for backend tests that find their server another way.
///
/// # Panics
/// When the variable names an unknown backend.
pub fn is_required(backend: &str) -> bool {
    let value = std::env::var(REQUIRE_VAR).ok();
    match parse_require(value.as_deref()) {
        Ok(list) => list.iter().any(|b| b.name() == backend),
        Err(e) => panic!("{e}"),
    }
}

/// Prints the loud skip line for `backend` and returns `None`, or panics when
/// `SELFRAG_TEST_REQUIRE` lists it. For fixture fns that skip for their own
/// reasons.
///
/// # Panics
/// As described.
pub fn skip<T>(backend: &str, reason: &str) -> Option<T> {
    skip_with(std::env::var(REQUIRE_VAR).ok().as_deref(), backend, reason)
}

fn skip_with<T>(require: Option<&str>, backend: &str, reason: &str) -> Option<T> {
    let required = match parse_require(require) {
        Ok(list) => list.iter().any(|b| b.name() == backend),
        Err(e) => panic!("{e}"),
    };
    if required {
        panic!("{REQUIRE_VAR} requires the {backend} tests to run, but they would be skipped: {reason}");
    }
    let line = format!("SKIPPED {backend} tests: {reason}. (Set {REQUIRE_VAR}={backend} to make this a failure.)");
    // Written straight to the process's stderr, which the test harness does
    // not capture, so the line shows even without `--nocapture`...
    let _ = writeln!(std::io::stderr(), "{line}");
    // ...and through the captured stream, so it is part of the test's output.
    eprintln!("{line}");
    None
}

async fn provide(backend: Backend) -> Option<TestServer> {
    provide_with(backend, |name| std::env::var(name).ok()).await
}

/// [`provide`] with the environment read through `env` (so tests can give
/// variables without touching the process environment).
async fn provide_with(backend: Backend, env: impl Fn(&str) -> Option<String>) -> Option<TestServer> {
    let require = env(REQUIRE_VAR);
    // Parse the requirement first: a typo in it must fail every run.
    if let Err(e) = parse_require(require.as_deref()) {
        panic!("{e}");
    }
    if let Some(url) = env(backend.url_var()) {
        if !url.trim().is_empty() {
            return Some(TestServer { url: url.trim().to_owned(), guard: None });
        }
    }
    let probe = tokio::task::spawn_blocking(docker_engine).await.unwrap_or_else(|e| Err(e.to_string()));
    let mut reason = match probe {
        Ok(()) => match start_container(backend).await {
            Ok(server) => return Some(server),
            Err(e) => format!("{} is not set, and starting a container failed: {e}", backend.url_var()),
        },
        Err(why) => format!("{} is not set, and no Docker engine answers ({why})", backend.url_var()),
    };
    if backend != Backend::Qdrant {
        let disabled = env(LOCAL_SERVERS_VAR)
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "off" | "false" | "no"));
        if disabled {
            reason.push_str(&format!(", and {LOCAL_SERVERS_VAR} turns off private servers"));
        } else {
            match tokio::task::spawn_blocking(move || shared_local(backend)).await {
                Ok(Ok(server)) => return Some(server),
                Ok(Err(e)) => reason.push_str(&format!(", and no private server could be started: {e}")),
                Err(e) => reason.push_str(&format!(", and starting a private server panicked: {e}")),
            }
        }
    }
    skip_with(require.as_deref(), backend.name(), &reason)
}

/// The process-shared private server of `backend` (Postgres or Redis),
/// started on first use. A failure is remembered: later tests skip at once
/// with the same reason instead of trying again.
#[cfg(unix)]
fn shared_local(backend: Backend) -> Result<TestServer, String> {
    // Statics are never dropped: the watchdog stops these servers when the
    // process ends (see the module docs).
    static POSTGRES: OnceLock<Result<PrivatePostgres, String>> = OnceLock::new();
    static REDIS: OnceLock<Result<PrivateRedis, String>> = OnceLock::new();
    match backend {
        Backend::Postgres => POSTGRES
            .get_or_init(|| PrivatePostgres::start_blocking(PgOptions::default()).map_err(|e| e.to_string()))
            .as_ref()
            .map(|pg| TestServer { url: pg.url(), guard: None })
            .map_err(Clone::clone),
        Backend::Redis => REDIS
            .get_or_init(|| PrivateRedis::start_blocking(RedisOptions::default()).map_err(|e| e.to_string()))
            .as_ref()
            .map(|r| TestServer { url: r.url(), guard: None })
            .map_err(Clone::clone),
        Backend::Qdrant => Err("no private Qdrant server".into()),
    }
}

#[cfg(not(unix))]
fn shared_local(_backend: Backend) -> Result<TestServer, String> {
    Err("private servers need a Unix system".into())
}

/// Parses `SELFRAG_TEST_REQUIRE`: comma-separated backend names, any case,
/// blanks ignored; `all` or `*` means every backend.
fn parse_require(value: Option<&str>) -> Result<Vec<Backend>, String> {
    let mut out = Vec::new();
    for item in value.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = item.to_ascii_lowercase();
        if item == "all" || item == "*" {
            return Ok(Backend::ALL.to_vec());
        }
        match Backend::ALL.iter().find(|b| b.name() == item) {
            Some(b) if !out.contains(b) => out.push(*b),
            Some(_) => {}
            None => {
                return Err(format!(
                    "{REQUIRE_VAR} names an unknown backend `{item}` (known: postgres, redis, qdrant, all)"
                ))
            }
        }
    }
    Ok(out)
}

/// Whether a Docker engine answers, probed once per process.
fn docker_engine() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_docker).clone()
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn probe_docker() -> Result<(), String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.trim().is_empty() => {
            let host = host.trim();
            if let Some(path) = host.strip_prefix("unix://") {
                ping_unix(path)
            } else if let Some(addr) = host.strip_prefix("tcp://") {
                if std::env::var_os("DOCKER_TLS_VERIFY").is_some() {
                    // A TLS engine cannot be pinged in plain HTTP; let
                    // testcontainers try (a failure still becomes a skip).
                    return Ok(());
                }
                ping_tcp(addr)
            } else {
                Err(format!("DOCKER_HOST={host} has a scheme this probe does not handle"))
            }
        }
        _ => ping_unix("/var/run/docker.sock"),
    }
}

fn ping(mut stream: impl Read + Write, target: &str) -> Result<(), String> {
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{target}: write failed: {e}"))?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).map_err(|e| format!("{target}: no answer: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("{target}: unexpected answer to /_ping: {:?}", head.lines().next().unwrap_or("")))
    }
}

#[cfg(unix)]
fn ping_unix(path: &str) -> Result<(), String> {
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    ping(stream, path)
}

#[cfg(not(unix))]
fn ping_unix(path: &str) -> Result<(), String> {
    Err(format!("{path}: unix sockets are not supported on this platform"))
}

fn ping_tcp(addr: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addr = addr.trim_end_matches('/');
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&sock, PROBE_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    ping(stream, addr)
}

async fn start_container(backend: Backend) -> Result<TestServer, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    let err = |e: testcontainers::TestcontainersError| e.to_string();
    match backend {
        Backend::Postgres => {
            let c = testcontainers_modules::postgres::Postgres::default().start().await.map_err(err)?;
            let host = c.get_host().await.map_err(err)?;
            let port = c.get_host_port_ipv4(5432).await.map_err(err)?;
            Ok(TestServer {
                url: format!("postgres://postgres:postgres@{host}:{port}/postgres"),
                guard: Some(Box::new(c)),
            })
        }
        Backend::Redis => {
            let c = testcontainers_modules::redis::Redis::default().start().await.map_err(err)?;
            let host = c.get_host().await.map_err(err)?;
            let port = c.get_host_port_ipv4(testcontainers_modules::redis::REDIS_PORT).await.map_err(err)?;
            Ok(TestServer { url: format!("redis://{host}:{port}"), guard: Some(Box::new(c)) })
        }
        Backend::Qdrant => {
            let tag = std::env::var("SELFRAG_TEST_QDRANT_TAG").unwrap_or_else(|_| QDRANT_TAG.to_owned());
            let c = GenericImage::new("qdrant/qdrant", tag.as_str())
                .with_exposed_port(6333.tcp())
                .with_exposed_port(6334.tcp())
                .with_wait_for(WaitFor::Nothing)
                .with_startup_timeout(Duration::from_secs(120))
                .start()
                .await
                .map_err(err)?;
            let host = c.get_host().await.map_err(err)?;
            let rest = c.get_host_port_ipv4(6333).await.map_err(err)?;
            let grpc = c.get_host_port_ipv4(6334).await.map_err(err)?;
            wait_ready(&host.to_string(), rest, Duration::from_secs(60)).await?;
            Ok(TestServer { url: format!("http://{host}:{grpc}"), guard: Some(Box::new(c)) })
        }
    }
}

/// Polls `GET /readyz` until it answers 200 (Qdrant's readiness endpoint).
async fn wait_ready(host: &str, port: u16, within: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
            s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            let head = String::from_utf8_lossy(&buf);
            match head.split_whitespace().nth(1) {
                Some("200") => Ok(()),
                other => Err(format!("/readyz answered {other:?}")),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "/readyz timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("qdrant on {host}:{port} not ready within {within:?}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_parsing() {
        assert_eq!(parse_require(None), Ok(vec![]));
        assert_eq!(parse_require(Some("")), Ok(vec![]));
        assert_eq!(parse_require(Some(" , ")), Ok(vec![]));
        assert_eq!(parse_require(Some("postgres")), Ok(vec![Backend::Postgres]));
        assert_eq!(parse_require(Some("Postgres, REDIS ,")), Ok(vec![Backend::Postgres, Backend::Redis]));
        assert_eq!(parse_require(Some("redis,redis")), Ok(vec![Backend::Redis]));
        assert_eq!(parse_require(Some("qdrant,all")), Ok(Backend::ALL.to_vec()));
        assert_eq!(parse_require(Some("*")), Ok(Backend::ALL.to_vec()));
        let err = parse_require(Some("postgres,postgress")).unwrap_err();
        assert!(err.contains("postgress"), "{err}");
    }

    #[test]
    fn skip_without_requirement_returns_none() {
        assert!(skip_with::<()>(None, "redis", "testing the skip line").is_none());
        assert!(skip_with::<()>(Some("postgres"), "redis", "testing the skip line").is_none());
    }

    #[test]
    #[should_panic(expected = "requires the redis tests to run")]
    fn skip_of_a_required_backend_panics() {
        let _ = skip_with::<()>(Some("postgres, redis"), "redis", "no server");
    }

    #[test]
    #[should_panic(expected = "unknown backend `mongo`")]
    fn a_typo_in_the_requirement_panics() {
        let _ = skip_with::<()>(Some("mongo"), "redis", "no server");
    }

    #[test]
    fn docker_probe_fails_fast_without_an_engine() {
        // Whatever this machine has, the probe must answer within a few
        // seconds (a dead socket path fails at once).
        let start = Instant::now();
        let r = ping_unix("/nonexistent/docker.sock");
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
        let start = Instant::now();
        let _ = docker_engine();
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn ping_reads_the_status() {
        struct Fake(std::io::Cursor<Vec<u8>>);
        impl Read for Fake {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Fake {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let ok = Fake(std::io::Cursor::new(b"HTTP/1.1 200 OK\r\n\r\nOK".to_vec()));
        assert!(ping(ok, "x").is_ok());
        let bad = Fake(std::io::Cursor::new(b"HTTP/1.1 500 Oops\r\n\r\n".to_vec()));
        assert!(ping(bad, "x").is_err());
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn url_from_the_environment_wins() {
        // No Docker is needed or tried: a URL in the environment is used as
        // is (trimmed), without a container, also when the backend is
        // required.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let vars = env(&[
            ("SELFRAG_TEST_QDRANT_URL", "  http://qdrant.example:6334 \n"),
            ("SELFRAG_TEST_REDIS_URL", "redis://r:6379"),
            (REQUIRE_VAR, "all"),
        ]);
        let server = rt.block_on(provide_with(Backend::Qdrant, &vars)).expect("a server from the environment");
        assert_eq!(server.url, "http://qdrant.example:6334");
        assert!(server.guard.is_none(), "no container for a URL from the environment");
        let server = rt.block_on(provide_with(Backend::Redis, &vars)).unwrap();
        assert_eq!((server.url.as_str(), server.guard.is_none()), ("redis://r:6379", true));
        // A blank URL counts as unset: without Docker (and not required),
        // the backend is skipped.
        if docker_engine().is_err() {
            let blank = env(&[("SELFRAG_TEST_POSTGRES_URL", "   "), (LOCAL_SERVERS_VAR, "off")]);
            assert!(rt.block_on(provide_with(Backend::Postgres, blank)).is_none());
        }
    }

    #[test]
    fn without_url_or_docker_a_private_server_is_started() {
        if docker_engine().is_ok() {
            return; // the container step comes first
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let has_redis = crate::private::tests_support::redis_available();
        match rt.block_on(provide_with(Backend::Redis, env(&[]))) {
            Some(server) => {
                assert!(server.url.starts_with("redis://127.0.0.1:"), "{}", server.url);
                assert!(!server.url.ends_with(":6379"), "the machine's Redis, not a private one");
                // The same one for the whole process.
                let again = rt.block_on(provide_with(Backend::Redis, env(&[]))).unwrap();
                assert_eq!(again.url, server.url);
            }
            None => assert!(!has_redis, "redis-server is here, yet no private server was started"),
        }
    }

    #[test]
    #[should_panic(expected = "unknown backend `qdrnt`")]
    fn a_typo_in_the_requirement_panics_even_with_a_url() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let vars = env(&[("SELFRAG_TEST_QDRANT_URL", "http://q:6334"), (REQUIRE_VAR, "qdrnt")]);
        let _ = rt.block_on(provide_with(Backend::Qdrant, vars));
    }
}
