//! The connection handle both stores share: a pool, one checked-out
//! multiplexed connection, the key prefix, and the mapping of driver errors.

use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, ErrorKind as RedisKind, FromRedisValue, RedisError, Script, ScriptInvocation};
use deadpool_redis::{Connection, PoolError};
use selfrag_core::{Error, Result, UserId};

use crate::config::{validate_prefix, RedisConfig, RedisPool};
use crate::BACKEND;

/// A pool plus the connection this store multiplexes its calls over.
///
/// Why not `pool.get()` per call: deadpool-redis checks a reused connection
/// with a `PING` before handing it out, which would make every operation two
/// round trips. A [`MultiplexedConnection`] already pipelines concurrent
/// requests over one socket, so the handle takes one connection out of the
/// pool for good ([`Connection::take`]: the pool forgets it and frees its
/// slot, so stores sharing a pool never starve it, and no other pool user can
/// run `MULTI`/`WATCH` on our socket), and clones it per call. The pool is
/// thus only a connection factory with a concurrency bound and a connect
/// timeout: a store holds one connection whatever the pool size. When a call
/// fails in a way that may have broken the connection or shows it reaches the
/// wrong server ([`Handle::forget`]), the handle drops it and the next call
/// takes a new one, under the pool's connect timeout. Calls racing to
/// reconnect may each open one; the first stored wins and the others are
/// closed.
///
/// Everything sits behind one [`Arc`], so cloning the handle (once per
/// task, typically, with its store) costs one atomic increment. Handles
/// derived with another prefix or timeout share the connection slot too.
#[derive(Clone)]
pub(crate) struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its `Debug` shows the URL without the password.
    pool: RedisPool,
    /// Shared with the handles [`Handle::rebuilt`] derives.
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    prefix: Box<str>,
    response_timeout: Duration,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("pool", &self.inner.pool)
            .field("connected", &self.lock().is_some())
            .field("prefix", &self.inner.prefix)
            .field("response_timeout", &self.inner.response_timeout)
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(pool: RedisPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                conn: Arc::default(),
                prefix: RedisConfig::DEFAULT_KEY_PREFIX.into(),
                response_timeout: RedisConfig::DEFAULT_TIMEOUT,
            }),
        }
    }

    /// A handle with another prefix or timeout on the same connection
    /// slot: one socket for all, and a reconnect by one serves all.
    fn rebuilt(&self, prefix: Box<str>, response_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: self.inner.pool.clone(),
                conn: self.inner.conn.clone(),
                prefix,
                response_timeout,
            }),
        }
    }

    pub(crate) fn with_config(pool: RedisPool, config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::new(pool).with_prefix(&config.key_prefix)?.with_response_timeout(config.response_timeout))
    }

    pub(crate) fn with_prefix(self, prefix: &str) -> Result<Self> {
        validate_prefix(prefix)?;
        Ok(self.rebuilt(prefix.into(), self.inner.response_timeout))
    }

    pub(crate) fn with_response_timeout(self, timeout: Duration) -> Self {
        self.rebuilt(self.inner.prefix.clone(), timeout)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub(crate) fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// A key of `user`'s: the stem of everything `user` owns,
    /// `<prefix>{u:<uuid>}`, followed by `suffix`. The braces make
    /// `u:<uuid>` the Redis Cluster hash tag, so all of a user's keys share
    /// one slot and a script may touch several of them. Built in one
    /// allocation of the exact size (keys are built on every call).
    pub(crate) fn user_key(&self, user: UserId, suffix: &[&str]) -> String {
        let mut uuid = uuid::Uuid::encode_buffer();
        let uuid = user.as_uuid().hyphenated().encode_lower(&mut uuid);
        let prefix = &*self.inner.prefix;
        let len = prefix.len() + "{u:".len() + uuid.len() + "}".len() + suffix.iter().map(|s| s.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        for part in [prefix, "{u:", uuid, "}"].into_iter().chain(suffix.iter().copied()) {
            key.push_str(part);
        }
        key
    }

    /// A clone of the store's connection, taking one from the pool first if
    /// there is none.
    async fn connection(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = self.lock().as_ref() {
            return Ok(self.configured(conn));
        }
        // Boxed, so this rare path stays out of every call's future: the
        // pool's connect future is several kilobytes, and each call's future
        // is boxed (`async_trait`), so unboxed it would make every call
        // allocate and copy about 7 KB instead of about 300 bytes. That cost
        // session reads a tenth of their throughput at concurrency 64
        // (`selfrag-bench`: 0.77-0.85 of a raw HMGET before, 0.88-0.93 after).
        let fresh = Box::pin(self.connect()).await?;
        // Another task may have stored one meanwhile: keep that one (ours is
        // closed when dropped) so all calls share a socket.
        let mut slot = self.lock();
        let conn = slot.get_or_insert(fresh);
        Ok(self.configured(conn))
    }

    /// A new connection from the pool, which forgets it.
    ///
    /// The whole wait (a free slot, then connecting) is bounded by the
    /// pool's wait timeout (`connect_timeout`): deadpool bounds each step on
    /// its own, which could add up to twice that.
    async fn connect(&self) -> Result<MultiplexedConnection> {
        let limit = self.inner.pool.timeouts().wait.unwrap_or(RedisConfig::DEFAULT_TIMEOUT);
        match tokio::time::timeout(limit, self.inner.pool.get()).await {
            Ok(conn) => Ok(Connection::take(conn.map_err(pool_error)?)),
            Err(_) => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!("connect: no connection within the connect timeout ({limit:?})"),
                maybe_applied: false,
                source: None,
            }),
        }
    }

    fn configured(&self, conn: &MultiplexedConnection) -> MultiplexedConnection {
        let mut conn = conn.clone();
        conn.set_response_timeout(self.inner.response_timeout);
        conn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // Held only to clone or swap the connection, never across an await.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the connection after an error that may have broken it or that
    /// says the server behind it no longer serves us, so the next call takes
    /// a new one: I/O errors, timeouts, protocol errors, and every error
    /// mapped to [`Error::Unavailable`] except `OOM` (see [`unavailable`]).
    /// A failover that keeps the address (a Sentinel or cloud failover behind
    /// a DNS name or VIP) leaves the old socket on the demoted primary, which
    /// answers `READONLY` forever; only a new connection reaches the new one.
    /// A healthy connection dropped by mistake costs one reconnect.
    fn forget(&self, err: &RedisError) {
        if breaks_connection(err) {
            *self.lock() = None;
        }
    }

    /// Runs `invocation` (EVALSHA, loading the script on NOSCRIPT): one round
    /// trip once the server has the script.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>, what: &str) -> Result<T> {
        let mut conn = self.connection().await?;
        invocation.invoke_async(&mut conn).await.map_err(|e| {
            self.forget(&e);
            redis_error(e, what)
        })
    }

    /// Runs one command: one round trip.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd, what: &str) -> Result<T> {
        let mut conn = self.connection().await?;
        cmd.query_async(&mut conn).await.map_err(|e| {
            self.forget(&e);
            redis_error(e, what)
        })
    }
}

/// Maps a pool error: every failure to get a connection means Redis is not
/// reachable now (refused, unreachable, pool exhausted), which a retry later
/// can fix.
pub(crate) fn pool_error(err: PoolError) -> Error {
    match err {
        // Nothing of the caller's was sent on a connection that failed to
        // open.
        PoolError::Backend(e) => match redis_error(e, "connect") {
            Error::Unavailable { backend, message, source, .. } => {
                Error::Unavailable { backend, message, maybe_applied: false, source }
            }
            other => other,
        },
        PoolError::Timeout(t) => Error::unavailable(BACKEND, format!("no connection within the timeout ({t:?})"), err),
        PoolError::Closed => Error::unavailable(BACKEND, "the connection pool is closed", err),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            Error::backend(BACKEND, "connection pool misconfigured", false, err)
        }
    }
}

/// Whether the handle should drop its connection after `err` (see
/// [`Handle::forget`]).
fn breaks_connection(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        // `OOM` is about the server's memory, not about which server the
        // socket reaches: a new connection would meet the same full server,
        // at the cost of a connect per call while memory stays full.
        || unavailable(err).is_some_and(|why| why != OOM)
}

const OOM: &str = "out of memory";

/// Why `err` means Redis cannot serve us now, if it does: a retry later (on a
/// new connection) can succeed.
fn unavailable(err: &RedisError) -> Option<&'static str> {
    match err.kind() {
        RedisKind::IoError => Some("I/O error"),
        // Loading a dump after a restart.
        RedisKind::BusyLoadingError => Some("loading the dataset"),
        // Cluster resharding or failover in progress.
        RedisKind::TryAgain => Some("try again"),
        RedisKind::ClusterDown => Some("cluster down"),
        // A replica whose link to its primary is down.
        RedisKind::MasterDown => Some("primary down"),
        // The socket reaches a replica: a primary demoted by a failover.
        RedisKind::ReadOnly => Some("read-only replica (failover?)"),
        // A script or function running past `busy-reply-threshold`.
        _ if err.code() == Some("BUSY") => Some("server busy"),
        // Writes refused under `maxmemory` with `noeviction` (the policy the
        // crate docs recommend), so a full Redis is the expected way for it
        // to fail: treated like a server that cannot serve writes now, which
        // lets the rate limiter's failure policy apply.
        _ if err.code() == Some("OOM") => Some(OOM),
        _ => None,
    }
}

/// Maps a driver error by what a caller can do about it.
pub(crate) fn redis_error(err: RedisError, what: &str) -> Error {
    if err.is_timeout() {
        return Error::Timeout {
            backend: BACKEND,
            message: format!("{what}: no reply in time"),
            source: Some(err.into()),
        };
    }
    match unavailable(&err) {
        // A connection that broke with the command in flight: it may have
        // run. The other conditions are the server refusing the command.
        Some(why) if err.is_io_error() => Error::connection_lost(BACKEND, format!("{what}: {why}"), err),
        Some(why) => Error::unavailable(BACKEND, format!("{what}: {why}"), err),
        None => Error::backend(BACKEND, format!("{what}: {}", err.category()), false, err),
    }
}

/// A script: the shared helpers followed by its body.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{}", include_str!("lua/common.lua"), body))
}

pub(crate) static SESSION_CREATE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/session_create.lua")));
pub(crate) static SESSION_TOUCH: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/session_touch.lua")));
pub(crate) static SESSION_SET_DATA: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/session_set_data.lua")));
pub(crate) static SESSION_REVOKE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/session_revoke.lua")));
pub(crate) static SESSION_LIST: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/session_list.lua")));
pub(crate) static SESSION_REVOKE_ALL: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/session_revoke_all.lua")));
pub(crate) static RATELIMIT_CHECK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/ratelimit_check.lua")));
pub(crate) static RATELIMIT_RESET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/ratelimit_reset.lua")));

/// A reply that does not have the shape the script returns: a bug or a key
/// written by someone else.
pub(crate) fn bad_reply(what: &str, detail: impl fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("{what}: unexpected reply: {detail}"),
        retryable: false,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_are_built_exactly() {
        let user = UserId::new();
        for prefix in ["", "selfrag:", "tenant-7/"] {
            let pool = RedisConfig::builder().url("redis://127.0.0.1:1").build().unwrap().create_pool().unwrap();
            let handle = Handle::new(pool).with_prefix(prefix).unwrap();
            for suffix in [&[][..], &[":sessions"][..], &[":s:", "abc"][..], &[":rl:", "chat"][..]] {
                let key = handle.user_key(user, suffix);
                assert_eq!(key, format!("{prefix}{{u:{user}}}{}", suffix.concat()));
                assert_eq!(key.capacity(), key.len(), "one allocation of the exact size");
            }
        }
    }
}
