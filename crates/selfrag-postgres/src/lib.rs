//! Postgres backends of selfrag storage, on tokio-postgres + deadpool-postgres:
//! [`PostgresMemoryStore`] ([`MemoryStore`](selfrag_core::MemoryStore)),
//! [`PostgresSessionStore`] ([`SessionStore`](selfrag_core::SessionStore)) and
//! [`PostgresUserStore`] ([`UserStore`](selfrag_core::UserStore)) and
//! [`PostgresErasureLedger`] ([`ErasureLedger`](selfrag_core::ErasureLedger)),
//! sharing one connection pool.
//!
//! ```no_run
//! use selfrag_core::{MemoryQuery, MemoryStore, NewMemoryLog, NewSession, SessionStore, UserStore};
//! use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
//!
//! # async fn run() -> selfrag_core::Result<()> {
//! let pool = PostgresConfig::from_env()?.build()?; // DATABASE_URL
//! selfrag_postgres::migrate(&pool).await?;
//! let users = PostgresUserStore::new(pool.clone());
//! let memory = PostgresMemoryStore::new(pool.clone());
//! let sessions = PostgresSessionStore::new(pool);
//!
//! let user = users.create_user().await?;
//! memory.append(user, NewMemoryLog::new("fact", "likes tea")?).await?;
//! let page = memory.query(user, &MemoryQuery::new().limit(20)).await?;
//! let session = sessions.create(user, NewSession::new(std::time::Duration::from_secs(1800))?).await?;
//! # Ok(()) }
//! ```
//!
//! # Configuration
//! [`PostgresConfig`]: the URL (`DATABASE_URL` with
//! [`PostgresConfig::from_env`]), pool size (16), connect and acquire
//! timeouts (5 s), `statement_timeout` (30 s), an optional schema (put first
//! on the `search_path` of every connection) and the `application_name`.
//! Callers that already hold a [`Pool`] pass it to the stores' `new`.
//!
//! TLS follows libpq's `sslmode` (`disable`, `prefer` (default), `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a CA file, or the system's
//! roots), `sslcert` / `sslkey`, read from the URL or `key=value` string
//! ([`parse_url_with_tls`]) or set with [`PostgresConfig::tls`] ([`PgTls`]),
//! on rustls (tokio-postgres-rustls). A refused certificate, password or
//! `pg_hba.conf` entry is a non-retryable
//! [`Error::Backend`](selfrag_core::Error::Backend) whose message says what to
//! change.
//!
//! No password is ever printed: `PostgresConfig`'s `Debug` shows the URL
//! through [`redact_url`] (rebuilt from the parsed settings, with `***` for
//! the password), parse errors ([`parse_url`]) quote nothing of the string,
//! and the driver's `Debug` of its config hides the password too.
//!
//! # Tables
//! Created by the embedded migrations ([`migrate`], [`selfrag_migrations`]):
//!
//! | table | columns | indexes |
//! | --- | --- | --- |
//! | `users` | `id uuid pk`, `created_at` | |
//! | `user_sessions` | `id uuid pk`, `user_id → users ON DELETE CASCADE`, `created_at`, `last_activity`, `expires_at`, `ttl_ms`, `data jsonb` | `(user_id, created_at desc, id desc)`, `(expires_at)` |
//! | `memory_logs` | `id uuid pk`, `user_id → users ON DELETE CASCADE`, `timestamp`, `type varchar(64)`, `content text`, `meta_data jsonb` | `(user_id, timestamp desc, id desc)` |
//!
//! # Guarantees
//! - **Queries** of one user's logs are one range scan of the
//!   `(user_id, timestamp desc, id desc)` index, newest first, with no sort;
//!   pages are keyset-paginated on `(timestamp, id)`, so deep pages cost the
//!   same as the first and concurrent appends never shift them.
//! - **Batch appends** are one statement, all rows or none: `INSERT ... SELECT
//!   FROM unnest(...)` (one round trip) up to 32 rows, binary `COPY ... FROM
//!   STDIN` above that; a single `append` is a prepared single-row `INSERT`. A taken id is [`Error::Conflict`]; an
//!   unknown user is [`Error::NotFound`] (`what = "user"`), from the foreign
//!   key, with no extra lookup.
//! - **Coalesced appends** (opt-in, [`PostgresMemoryStore::coalescing`]):
//!   appends waiting at the same moment share one statement and one commit,
//!   with no timer; each call keeps its own outcome (a failed shared
//!   statement is split and each call written alone), a call that gives up
//!   while queued is never written, and the queue is bounded in rows, bytes
//!   and waiting calls ([`CoalesceConfig`]). Session touches coalesce the
//!   same way ([`PostgresSessionStore::coalescing`]): one `UPDATE` that locks
//!   its rows in id order, each caller answered with its own session.
//! - **Sessions** use the database clock; reads filter on
//!   `expires_at > now()`, so an expired session is never returned, and a
//!   touch slides the expiry in one `UPDATE`. Expired rows are reclaimed by
//!   [`PostgresSessionStore::sweep_expired`]. Each user's live sessions are
//!   capped ([`PostgresSessionStore::with_limits`]) in a create transaction
//!   that locks the user's row; `revoke_all` deletes in 1,000-row batches.
//! - **Input** is checked before anything is sent: the core input types
//!   refuse NUL bytes (which `text` and `jsonb` cannot hold), oversized
//!   content and malformed metadata with [`Error::InvalidInput`].
//! - **Deadlines**: every call ends within its operation timeout
//!   ([`PostgresConfig::operation_timeout`], 10 s, set through the stores'
//!   `with_config`), getting a connection included; past it the call returns
//!   [`Error::Timeout`], a cancel request is sent for its statement, and its
//!   connection is closed rather than returned to the pool. The whole wait
//!   for a connection is bounded by [`PostgresConfig::acquire_timeout`].
//!   Connections use TCP keepalives and `TCP_USER_TIMEOUT`.
//! - **Retries**: appends are retry-safe by log id (see
//!   [`PostgresMemoryStore`]); [`Error::is_ambiguous`] says whether a failed
//!   call may have taken effect.
//! - **Errors** keep the driver error as their source. A server that cannot
//!   serve (refused, starting up `57P03`, shutting down `57P01`/`57P02`,
//!   class `08` and `53`) and pool timeouts are [`Error::Unavailable`]; a
//!   connection lost mid-statement is [`Error::Unavailable`] with
//!   `maybe_applied`; `statement_timeout` is [`Error::Timeout`]; `40001` and
//!   `40P01` are retryable [`Error::Backend`]s; see [`Error::is_retryable`].
//! - Hot statements are prepared once per connection and cached. (Behind
//!   PgBouncer, use session pooling or PgBouncer ≥ 1.21 with prepared
//!   statement support.)
//!
//! [`Error::Conflict`]: selfrag_core::Error::Conflict
//! [`Error::NotFound`]: selfrag_core::Error::NotFound
//! [`Error::InvalidInput`]: selfrag_core::Error::InvalidInput
//! [`Error::Unavailable`]: selfrag_core::Error::Unavailable
//! [`Error::Timeout`]: selfrag_core::Error::Timeout
//! [`Error::Backend`]: selfrag_core::Error::Backend
//! [`Error::is_retryable`]: selfrag_core::Error::is_retryable
//! [`Error::is_ambiguous`]: selfrag_core::Error::is_ambiguous

/// The constructor helpers every pool-backed store shares (`with_config`,
/// `operation_timeout`, `pool`), for a store type with a `db: Db` field and
/// a `new(pool)`.
macro_rules! pool_store_common {
    ($store:ty) => {
        impl $store {
            /// A store on `pool` with the operation timeout of `config`.
            pub fn with_config(pool: deadpool_postgres::Pool, config: &crate::PostgresConfig) -> Self {
                Self::new(pool).operation_timeout(config.operation_timeout)
            }

            /// Sets the deadline of every call (see
            /// [`crate::PostgresMemoryStore::operation_timeout`]).
            pub fn operation_timeout(mut self, timeout: std::time::Duration) -> Self {
                self.db = self.db.with_timeout(timeout);
                self
            }

            /// The pool.
            pub fn pool(&self) -> &deadpool_postgres::Pool {
                self.db.pool()
            }
        }
    };
}

mod coalesce;
mod config;
mod conn;
mod erasures;
mod error;
mod memory;
mod redact;
mod session;
mod tls;
mod users;

pub use coalesce::{CoalesceConfig, CoalesceStats};
pub use config::PostgresConfig;
pub use erasures::PostgresErasureLedger;
pub use error::connect_error;
pub use memory::PostgresMemoryStore;
pub use redact::{parse_url, parse_url_with_tls, redact_url};
pub use session::PostgresSessionStore;
pub use tls::{PgConnector, PgTls, RootCerts, SslMode, TlsSummary};
pub use users::PostgresUserStore;

pub use deadpool_postgres;
pub use deadpool_postgres::Pool;
pub use selfrag_migrations;
pub use tokio_postgres;

use deadpool_postgres::Object;
use selfrag_core::Result;

/// `EXPLAIN` of `sql` with `params` (with `analyze`, `EXPLAIN (ANALYZE,
/// BUFFERS)`, which runs the statement), as one text.
async fn explain(
    conn: &Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    analyze: bool,
) -> Result<String> {
    let options = if analyze { "ANALYZE, BUFFERS" } else { "COSTS" };
    let rows = conn.query(&format!("EXPLAIN ({options}) {sql}"), params).await.map_err(error::pg)?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
}

/// Applies the pending migrations to the pool's schema (the first existing
/// schema of its `search_path`), under the migrations' advisory lock, so
/// that services starting together apply each migration exactly once.
///
/// Runs on a connection taken out of the pool for good: if this future is
/// dropped mid-way, the connection closes and Postgres releases the lock,
/// instead of a pooled connection keeping it.
///
/// # Errors
/// [`Error::Incompatible`](selfrag_core::Error::Incompatible) when the
/// database's history was edited, has a gap or is newer than this build (see
/// [`selfrag_migrations::Error`]); connection and SQL failures as for any
/// call.
pub async fn migrate(pool: &Pool) -> Result<selfrag_migrations::Report> {
    let conn = pool.get().await.map_err(error::pool)?;
    let mut client = Object::take(conn);
    selfrag_migrations::migrate(&mut client).await.map_err(error::migration)
}

/// The migration status of the pool's schema: applied, pending, edited and
/// unknown migrations with their checksums. Writes nothing.
///
/// # Errors
/// Connection failures as for any call; a schema-less `search_path` is
/// [`Error::Incompatible`](selfrag_core::Error::Incompatible).
pub async fn migration_status(pool: &Pool) -> Result<selfrag_migrations::Status> {
    let conn = pool.get().await.map_err(error::pool)?;
    selfrag_migrations::status(&conn).await.map_err(error::migration)
}
