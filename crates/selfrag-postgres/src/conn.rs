//! Deadlines for every operation, and what happens to a connection whose
//! operation was abandoned.
//!
//! A store call is one [`Op`]: it has one deadline, set when the call
//! starts, that covers getting a connection (connecting included) and every
//! statement the call sends. Past it the call returns [`Error::Timeout`]. A
//! connection that still had a request in flight at that moment (or when
//! the caller dropped the call's future) is in an unknown state: it is
//! taken out of the pool for good and closed, and a cancel request is sent
//! for whatever it was running, so that neither the next caller nor the
//! server keeps waiting on it.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Object, Pool, WeakPool};
use selfrag_core::observe::{record_pool, system, OpMeta, PoolStatus};
use selfrag_core::{Error, Result};
use tokio::time::Instant;
use tokio_postgres::config::Host;

use crate::error::{self, BACKEND};
use crate::tls::PgConnector;

/// How long a cancel request may take. It runs in the background after the
/// call has already returned, so this only bounds a task that would
/// otherwise wait on a partitioned network.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS connectors of the pools [`PostgresConfig::build`] made, so that
/// cancel requests use the pool's own TLS settings (roots, host check,
/// client certificate) without every store constructor having to carry
/// them, and the span attributes of their calls (host, port, database).
/// Entries hold the pool weakly and go when it is dropped.
///
/// [`PostgresConfig::build`]: crate::PostgresConfig::build
type CancelTls = Vec<(WeakPool, PgConnector, OpMeta)>;

fn cancel_registry() -> &'static Mutex<CancelTls> {
    static REGISTRY: OnceLock<Mutex<CancelTls>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// Records `connector` as the one cancel requests for `pool` use, and
/// `obs` as the span attributes of the stores on it.
pub(crate) fn register_cancel_tls(pool: &Pool, connector: PgConnector, obs: OpMeta) {
    let mut registry = cancel_registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(weak, _, _)| weak.upgrade().is_some());
    registry.push((pool.weak(), connector, obs));
}

/// The span attributes of calls through a pool of `config`: the first TCP
/// host and its port, and the database (never the user or password).
pub(crate) fn op_meta(config: &tokio_postgres::Config) -> OpMeta {
    let mut meta = OpMeta::new(system::POSTGRESQL);
    if let Some(db) = config.get_dbname() {
        meta = meta.with_namespace(db);
    }
    let host = config.get_hosts().iter().find_map(|h| match h {
        Host::Tcp(name) => Some(name.as_str()),
        #[cfg(unix)]
        Host::Unix(_) => None,
    });
    if let Some(host) = host {
        meta = meta.with_server(host, Some(config.get_ports().first().copied().unwrap_or(5432)));
    }
    meta
}

/// The connector registered for `pool`; for a pool built elsewhere, one
/// that encrypts without checking the certificate (used only when the
/// pool's connections use TLS: the cancel request follows the `sslmode`
/// the connection was made with). Also the pool's span attributes (for a
/// pool built elsewhere, only `db.system.name`).
fn cancel_tls_for(pool: &Pool) -> (PgConnector, OpMeta) {
    let registry = cancel_registry().lock().unwrap_or_else(|e| e.into_inner());
    registry
        .iter()
        .find(|(weak, _, _)| weak.upgrade().is_some_and(|p| std::ptr::eq(p.manager(), pool.manager())))
        .map(|(_, connector, obs)| (connector.clone(), obs.clone()))
        .unwrap_or_else(|| (PgConnector::unverified(), OpMeta::new(system::POSTGRESQL)))
}

/// A pool plus the deadline of each operation run on it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pool: Pool,
    timeout: Duration,
    /// For cancel requests: the pool's TLS connector.
    cancel_tls: PgConnector,
    /// The span attributes of every call.
    pub(crate) obs: OpMeta,
    /// `db.client.connection.pool.name`: `host:port/database`.
    pool_name: Arc<str>,
}

impl Db {
    pub(crate) fn new(pool: Pool, timeout: Duration) -> Self {
        let (cancel_tls, obs) = cancel_tls_for(&pool);
        let pool_name = match obs.server_address() {
            Some(host) => format!("{host}:{}/{}", obs.server_port().unwrap_or(5432), obs.namespace().unwrap_or("")),
            None => "postgres".to_owned(),
        };
        Self { pool, timeout, cancel_tls, obs, pool_name: pool_name.into() }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The deadline of each operation, from its start.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts an operation: its deadline runs from now.
    pub(crate) fn op(&self, what: &'static str) -> Op<'_> {
        Op { db: self, what, deadline: Instant::now() + self.timeout, in_flight: AtomicBool::new(false) }
    }
}

/// One operation under one deadline.
#[derive(Debug)]
pub(crate) struct Op<'a> {
    db: &'a Db,
    what: &'static str,
    deadline: Instant,
    /// Set while [`Op::run`] awaits its work, and left set when the deadline
    /// cut it short; read by the [`Conn`]s of this operation when dropped.
    in_flight: AtomicBool,
}

impl Op<'_> {
    /// A pooled connection. The whole wait (for a free slot, then for a new
    /// connection to be established) is bounded by the pool's wait timeout
    /// (`acquire_timeout`) and by the operation's deadline, whichever comes
    /// first. Running out of the first is [`Error::Unavailable`] (nothing
    /// was sent); of the second, [`Error::Timeout`].
    pub(crate) async fn conn(&self) -> Result<Conn<'_>> {
        let acquire = self.db.pool.timeouts().wait.unwrap_or(self.db.timeout);
        let acquire_end = Instant::now() + acquire;
        let end = acquire_end.min(self.deadline);
        let got = tokio::time::timeout_at(end, self.db.pool.get()).await;
        let status = self.db.pool.status();
        let status = PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        };
        record_pool(system::POSTGRESQL, self.db.pool_name.clone(), status);
        match got {
            Ok(Ok(obj)) => Ok(Conn { obj: Some(obj), in_flight: &self.in_flight, cancel_tls: &self.db.cancel_tls }),
            Ok(Err(e)) => Err(error::pool(e)),
            Err(_) if end == self.deadline && self.deadline < acquire_end => Err(self.timed_out()),
            Err(_) => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!("{}: no connection within the acquire timeout ({acquire:?})", self.what),
                maybe_applied: false,
                source: None,
            }),
        }
    }

    /// Runs `work` (statements on this operation's connection) within the
    /// operation's deadline. If the deadline passes first (or the caller
    /// drops this future), the connection is left marked in flight:
    /// dropping it discards it and cancels its statement.
    pub(crate) async fn run<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        self.in_flight.store(true, Ordering::Relaxed);
        let result = tokio::time::timeout_at(self.deadline, work).await.map_err(|_| self.timed_out())?;
        self.in_flight.store(false, Ordering::Relaxed);
        result
    }

    fn timed_out(&self) -> Error {
        Error::timeout(
            BACKEND,
            format!("{}: no result within the operation timeout ({:?})", self.what, self.db.timeout),
        )
    }
}

/// A pooled connection used by one operation. Dropped with a request in
/// flight (the deadline passed, or the caller dropped the call), it is
/// removed from the pool and closed, and its statement is cancelled;
/// otherwise it goes back to the pool.
#[derive(Debug)]
pub(crate) struct Conn<'op> {
    obj: Option<Object>,
    in_flight: &'op AtomicBool,
    cancel_tls: &'op PgConnector,
}

impl Deref for Conn<'_> {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.obj.as_ref().expect("present until drop")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Object {
        self.obj.as_mut().expect("present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if !self.in_flight.load(Ordering::Relaxed) {
            return;
        }
        let Some(obj) = self.obj.take() else { return };
        // Out of the pool for good: its slot is freed, and the client is
        // closed when `client` is dropped below.
        let client = Object::take(obj);
        let token = client.cancel_token();
        drop(client);
        let tls = self.cancel_tls.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Best effort: the server may be unreachable (that may be
                // why the call timed out); `statement_timeout` is the
                // server-side backstop then. Same TLS as the connection:
                // the cancel key should not travel in clear.
                let _ = tokio::time::timeout(CANCEL_TIMEOUT, token.cancel_query(tls)).await;
            });
        }
    }
}
