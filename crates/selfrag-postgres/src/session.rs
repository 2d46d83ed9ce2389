//! [`SessionStore`] on the `user_sessions` table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::session::{validate_data, validate_list_limit, MAX_LIST_LIMIT};
use selfrag_core::{Error, NewSession, OnLimit, Result, Session, SessionId, SessionLimits, SessionStore, UserId};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::{Error as PgError, Row};

use crate::coalesce::{Boxed, CoalesceConfig, CoalesceStats, Coalescer, Many, Submitted, Work};
use crate::conn::Db;
use crate::{error, explain};

// Every time comes from the database clock (`now()`, the start of the
// statement's transaction), so all service instances agree on expiry and no
// clock skew between them can revive a session. Every read filters on
// `expires_at > now()`: an expired row may linger until the sweep, but is
// never returned.

const COLUMNS: &str = "id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// `create` runs in one transaction that first locks the user's row, so that
// creates of one user are serialized and the cap holds under concurrency: a
// count in the same statement as the insert would read the snapshot taken
// before waiting on the lock, and two creates could both see room for one.
// `FOR NO KEY UPDATE` conflicts with itself and with deleting the user, but
// not with the `FOR KEY SHARE` that foreign-key checks take, so memory log
// appends of the same user are not held up. It also tells an unknown user.
const LOCK_USER: &str = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE";

// The row under a chosen id, of any user: whether it is live, and whether it
// is what this create would make (same user, TTL and data, jsonb equality).
const FIND: &str = "SELECT id, user_id, created_at, last_activity, expires_at, ttl_ms, data,
    expires_at > now(), user_id = $2 AND ttl_ms = $3 AND data = $4
FROM user_sessions WHERE id = $1";

// An expired row under a chosen id is garbage: dropped so the id is free.
const DROP_EXPIRED: &str = "DELETE FROM user_sessions WHERE id = $1 AND expires_at <= now()";

const INSERT: &str = "INSERT INTO user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms, data)
VALUES ($1, $2, now(), now(), now() + $3::bigint * interval '1 millisecond', $3::bigint, $4)
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// Inserts only while the user has fewer than $5 live sessions (counting at
// most $5 of them). No row back means the user is at the cap.
const INSERT_UNDER_CAP: &str =
    "INSERT INTO user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms, data)
SELECT $1, $2, now(), now(), now() + $3::bigint * interval '1 millisecond', $3::bigint, $4
WHERE (SELECT count(*) FROM (SELECT 1 FROM user_sessions WHERE user_id = $2 AND expires_at > now() LIMIT $5) live) < $5
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// The user's live sessions, counted up to $2.
const COUNT_LIVE: &str = "SELECT count(*) FROM (
    SELECT 1 FROM user_sessions WHERE user_id = $1 AND expires_at > now() LIMIT $2) live";

// Ends the $2 live sessions that expire soonest (ties: smallest id), as
// `OnLimit::EvictOldest` says.
const EVICT: &str = "DELETE FROM user_sessions WHERE id IN (
    SELECT id FROM user_sessions WHERE user_id = $1 AND expires_at > now()
    ORDER BY expires_at, id LIMIT $2)";

// Sliding expiry in one statement: no read-modify-write race with a
// concurrent touch or revoke. `now()` is when this statement's transaction
// began: a touch that waited on the row lock while a later one committed
// would move the row back in time, so both columns only ever move forward.
const TOUCH: &str = "UPDATE user_sessions
SET last_activity = GREATEST(last_activity, now()),
    expires_at = GREATEST(expires_at, now() + ttl_ms * interval '1 millisecond')
WHERE id = $1 AND user_id = $2 AND expires_at > now()
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// Several touches (coalesced) in one statement and one commit: the same
// update as `TOUCH` for each (id, user) pair given. The live rows are
// locked in id order first, so two such statements touching overlapping
// sessions wait on each other instead of deadlocking; a pair given twice
// is updated once.
const TOUCH_MANY: &str = "WITH t AS (
    SELECT s.id FROM user_sessions s
    JOIN unnest($1::uuid[], $2::uuid[]) AS b(id, user_id) ON s.id = b.id AND s.user_id = b.user_id
    WHERE s.expires_at > now()
    ORDER BY s.id
    FOR NO KEY UPDATE OF s)
UPDATE user_sessions s
SET last_activity = GREATEST(s.last_activity, now()),
    expires_at = GREATEST(s.expires_at, now() + s.ttl_ms * interval '1 millisecond')
FROM (SELECT DISTINCT id FROM t) u
WHERE s.id = u.id
RETURNING s.id, s.user_id, s.created_at, s.last_activity, s.expires_at, s.ttl_ms, s.data";

const SET_DATA: &str = "UPDATE user_sessions SET data = $3
WHERE id = $1 AND user_id = $2 AND expires_at > now()
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// Deletes the row whether or not it is live (an expired row is garbage
// anyway) and reports whether it was live.
const REVOKE: &str = "DELETE FROM user_sessions WHERE id = $1 AND user_id = $2 RETURNING expires_at > now()";

// One batch of `revoke_all`: deletes up to $2 rows of the user (live or
// not) in its own short transaction, so a user with many sessions never
// holds many row locks or one long transaction. Returns how many rows were
// picked (fewer than $2: none is left) and how many of the deleted were live.
const REVOKE_BATCH: &str = "WITH picked AS (SELECT id FROM user_sessions WHERE user_id = $1 LIMIT $2),
gone AS (DELETE FROM user_sessions s USING picked WHERE s.id = picked.id RETURNING s.expires_at)
SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM gone WHERE expires_at > now())";
const REVOKE_BATCH_ROWS: i64 = 1_000;

// Batched so that a large backlog never holds many row locks in one
// transaction; SKIP LOCKED lets several sweepers run at once.
const SWEEP: &str = "DELETE FROM user_sessions WHERE id IN (
    SELECT id FROM user_sessions WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)";
const SWEEP_BATCH: i64 = 5_000;

/// How many times `create` runs its transaction when an insert meets a
/// unique violation: a fresh random id colliding (never, in practice), or a
/// chosen id inserted by a concurrent create, which the next attempt reads.
const CREATE_ATTEMPTS: usize = 4;

fn list_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM user_sessions WHERE user_id = $1 AND expires_at > now() \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )
}

/// Sessions in Postgres (`user_sessions`), with sliding expiry on the
/// database clock.
///
/// Expired sessions are never returned; their rows are deleted by
/// [`revoke`](SessionStore::revoke), [`revoke_all`](SessionStore::revoke_all),
/// deleting the user, or [`PostgresSessionStore::sweep_expired`], which a
/// service should call periodically (e.g. every few minutes).
///
/// Each user holds at most [`SessionLimits::max_per_user`] live sessions
/// (default 100, evicting the soonest to expire; see
/// [`PostgresSessionStore::with_limits`]). `create` runs in one transaction
/// that locks the user's row (`FOR NO KEY UPDATE`), so concurrent creates of
/// one user are serialized and the cap holds exactly; creates of different
/// users do not wait on each other. `revoke_all` deletes in batches of
/// 1,000 rows, each its own transaction.
///
/// Session ids are global (the primary key): a chosen id
/// ([`NewSession::with_id`]) held by another user's live session is
/// [`Error::Conflict`](selfrag_core::Error::Conflict).
///
/// Clones share the pool. Every call runs under the operation timeout (see
/// [`crate::PostgresMemoryStore::operation_timeout`]), `create`'s
/// transaction and all batches of `revoke_all` included.
///
/// # Coalesced touches
/// With [`coalescing`](Self::coalescing), the `touch` calls waiting at the
/// same moment are one `UPDATE` and one commit (see
/// [`CoalesceConfig`]; its `max_rows` bounds the touches per statement,
/// `max_bytes` and `copy_above` do not apply). Each call still returns only
/// after its own touch is committed, with its own session or `None`.
#[derive(Debug, Clone)]
pub struct PostgresSessionStore {
    db: Db,
    limits: SessionLimits,
    coalescer: Option<Arc<Coalescer<Touches>>>,
}

pool_store_common!(PostgresSessionStore);

impl PostgresSessionStore {
    /// A store on `pool` (see [`crate::PostgresMemoryStore::new`]), with the
    /// default [`SessionLimits`] and operation timeout
    /// ([`PostgresConfig::DEFAULT_OPERATION_TIMEOUT`](crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT)).
    pub fn new(pool: Pool) -> Self {
        Self {
            db: Db::new(pool, crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT),
            limits: SessionLimits::default(),
            coalescer: None,
        }
    }

    /// Turns on coalesced touches, bounded by `config`: the `touch` calls
    /// that wait at the same moment go out as one `UPDATE` and one commit,
    /// as [`PostgresMemoryStore::coalescing`](crate::PostgresMemoryStore::coalescing)
    /// does for appends (same queue, bounds, fast path and shutdown). A
    /// lone touch is the plain single-row statement, sent at once.
    ///
    /// Each call's contract is unchanged: it returns after its touch is
    /// committed, with the session as it now is, or `None` when the session
    /// is missing, expired or another user's (only that caller sees
    /// `None`); the expiry only moves forward. If a shared statement fails,
    /// each of its touches is sent again on its own (a touch is safe to
    /// repeat) and gets its own outcome. A call that gives up (its future
    /// dropped, its deadline passed) while still queued is never sent.
    ///
    /// Worth it when many sessions are touched at once: each touch is a
    /// commit (a WAL flush), which the shared statement pays once
    /// (`docs/postgres.md`, "Coalesced writes"). Clones share the queue;
    /// [`close_coalescing`](Self::close_coalescing) shuts it down cleanly.
    pub fn coalescing(mut self, config: CoalesceConfig) -> Self {
        self.coalescer = Some(Arc::new(Coalescer::new(config)));
        self
    }

    /// Counters of coalesced touches (calls, statements, touches as rows,
    /// split statements, cancelled and fast-path calls), or `None` without
    /// [`coalescing`](Self::coalescing).
    pub fn coalescing_stats(&self) -> Option<CoalesceStats> {
        self.coalescer.as_ref().map(|c| c.stats())
    }

    /// Shuts the coalescing queue down cleanly: stops queueing (later
    /// touches are sent on their own), sends every touch already queued and
    /// returns when each has been answered. Does nothing without
    /// coalescing.
    pub async fn close_coalescing(&self) {
        if let Some(c) = &self.coalescer {
            c.close().await;
        }
    }

    /// This store with `limits` on each user's live sessions (checked when
    /// built: see [`SessionLimits::new`]).
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits on each user's live sessions.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Deletes the rows of expired sessions (in batches of a few thousand)
    /// and returns how many were deleted. Reads never return expired
    /// sessions with or without a sweep; the sweep only reclaims space.
    ///
    /// # Errors
    /// Backend errors; rows deleted by earlier batches stay deleted.
    pub async fn sweep_expired(&self) -> Result<u64> {
        let op = self.db.op("sweep expired sessions");
        let conn = op.conn().await?;
        op.run(async {
            let stmt = conn.prepare_cached(SWEEP).await.map_err(error::pg)?;
            let mut total = 0;
            loop {
                let n = conn.execute(&stmt, &[&SWEEP_BATCH]).await.map_err(error::pg)?;
                total += n;
                if n < SWEEP_BATCH.unsigned_abs() {
                    return Ok(total);
                }
            }
        })
        .await
    }

    /// The plan Postgres picks for [`SessionStore::list`] of `user`
    /// (`EXPLAIN`, or `EXPLAIN (ANALYZE, BUFFERS)` with `analyze`).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn explain_list(&self, user: UserId, analyze: bool) -> Result<String> {
        let op = self.db.op("explain session list");
        let conn = op.conn().await?;
        op.run(explain(&conn, &list_sql(), &[user.as_uuid(), &i64::from(MAX_LIST_LIMIT)], analyze)).await
    }

    async fn one(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Session>> {
        one_session(&self.db, what, sql, params).await
    }

    /// One attempt of `create`, in one transaction on `conn`.
    async fn create_once(
        &self,
        conn: &mut Object,
        user: UserId,
        id: SessionId,
        session: &NewSession,
        ttl_ms: i64,
    ) -> std::result::Result<Created, PgError> {
        let tx = conn.transaction().await?;
        let lock = tx.prepare_cached(LOCK_USER).await?;
        if tx.query_opt(&lock, &[user.as_uuid()]).await?.is_none() {
            return Ok(Created::NoUser);
        }
        let data = Json(session.data());
        if session.id().is_some() {
            let find = tx.prepare_cached(FIND).await?;
            if let Some(row) = tx.query_opt(&find, &[id.as_uuid(), user.as_uuid(), &ttl_ms, &data]).await? {
                let (live, same): (bool, bool) = (row.try_get(7)?, row.try_get(8)?);
                if live {
                    // A retry of this very create (commit nothing new, evict
                    // nothing), or another session under the id.
                    return Ok(if same { Created::Existing(row) } else { Created::Taken });
                }
                let drop = tx.prepare_cached(DROP_EXPIRED).await?;
                tx.execute(&drop, &[id.as_uuid()]).await?;
            }
        }
        let max = i64::from(self.limits.max_per_user());
        let insert = tx.prepare_cached(INSERT_UNDER_CAP).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [id.as_uuid(), user.as_uuid(), &ttl_ms, &data, &max];
        let mut row = tx.query_opt(&insert, &params).await?;
        if row.is_none() {
            let count = tx.prepare_cached(COUNT_LIVE).await?;
            // Counting past the cap only as far as evictions can go.
            let upto = max + i64::from(SessionLimits::MAX_EVICTIONS_PER_CREATE);
            let live: i64 = tx.query_one(&count, &[user.as_uuid(), &upto]).await?.try_get(0)?;
            let evict = match self.limits.on_limit() {
                OnLimit::Refuse => return Ok(Created::Full),
                OnLimit::EvictOldest => self.limits.evictions_for(live.unsigned_abs()),
            };
            let evict_stmt = tx.prepare_cached(EVICT).await?;
            let n = i64::try_from(evict).unwrap_or(i64::MAX);
            tx.execute(&evict_stmt, &[user.as_uuid(), &n]).await?;
            // Unconditionally: a cap lowered below what the user holds may
            // leave more than one create evicts; later creates evict further.
            let plain = tx.prepare_cached(INSERT).await?;
            row = Some(tx.query_one(&plain, &params[..4]).await?);
        }
        let row = row.expect("inserted above");
        tx.commit().await?;
        Ok(Created::New(row))
    }
}

/// What one attempt of `create` found or did.
enum Created {
    New(Row),
    Existing(Row),
    Taken,
    Full,
    NoUser,
}

/// Runs `sql`, which returns at most one session row.
async fn one_session(
    db: &Db,
    what: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Session>> {
    let op = db.op(what);
    let conn = op.conn().await?;
    op.run(async {
        let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
        let row = conn.query_opt(&stmt, params).await.map_err(error::pg)?;
        row.as_ref().map(to_session).transpose()
    })
    .await
}

/// Coalesced touches: one call is `TOUCH`; several are one `TOUCH_MANY`.
#[derive(Debug)]
struct Touches;

impl Work for Touches {
    type Item = SessionId;
    type Output = Option<Session>;

    fn size(_: &SessionId) -> (usize, usize) {
        (1, 0)
    }

    fn one(db: Db, user: UserId, id: SessionId) -> Boxed<Result<Option<Session>>> {
        Box::pin(async move { one_session(&db, "touch session", TOUCH, &[id.as_uuid(), user.as_uuid()]).await })
    }

    fn many(db: Db, calls: Vec<(UserId, SessionId)>, _: CoalesceConfig) -> Boxed<Many<Self>> {
        Box::pin(async move {
            let op = db.op("touch sessions (coalesced)");
            let result = async {
                let conn = op.conn().await?;
                op.run(async {
                    let ids: Vec<uuid::Uuid> = calls.iter().map(|(_, id)| *id.as_uuid()).collect();
                    let users: Vec<uuid::Uuid> = calls.iter().map(|(user, _)| *user.as_uuid()).collect();
                    let stmt = conn.prepare_cached(TOUCH_MANY).await.map_err(error::pg)?;
                    let rows = conn.query(&stmt, &[&ids, &users]).await.map_err(error::pg)?;
                    rows.iter().map(to_session).collect::<Result<Vec<_>>>()
                })
                .await
            }
            .await;
            let Ok(touched) = result else { return Err(calls) };
            let touched: HashMap<(SessionId, UserId), Session> =
                touched.into_iter().map(|s| ((s.id, s.user_id), s)).collect();
            Ok(calls.iter().map(|(user, id)| touched.get(&(*id, *user)).cloned()).collect())
        })
    }
}

fn to_session(row: &Row) -> Result<Session> {
    let ttl_ms: i64 = row.try_get(5).map_err(error::pg)?;
    let ttl = u64::try_from(ttl_ms).map_err(|e| error::bad_row("ttl_ms", e))?;
    let data = match row.try_get::<_, Value>(6).map_err(error::pg)? {
        Value::Object(map) => map,
        other => return Err(error::bad_row("data", format!("expected a JSON object, got {other}"))),
    };
    Ok(Session {
        id: SessionId::from_uuid(row.try_get(0).map_err(error::pg)?),
        user_id: UserId::from_uuid(row.try_get(1).map_err(error::pg)?),
        created_at: row.try_get(2).map_err(error::pg)?,
        last_activity: row.try_get(3).map_err(error::pg)?,
        expires_at: row.try_get(4).map_err(error::pg)?,
        ttl: Duration::from_millis(ttl),
        data,
    })
}

#[async_trait]
impl SessionStore for PostgresSessionStore {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        self.db
            .obs
            .run("user_sessions", "create", async move {
                // `NewSession` checked the TTL (at most a year) and the data.
                let ttl_ms = i64::try_from(session.ttl().as_millis()).expect("NewSession bounds the TTL to a year");
                let op = self.db.op("create session");
                let mut conn = op.conn().await?;
                op.run(async {
                    let mut last = None;
                    for _ in 0..CREATE_ATTEMPTS {
                        let id = session.id().unwrap_or_else(SessionId::generate);
                        match self.create_once(&mut conn, user, id, &session, ttl_ms).await {
                            Ok(Created::New(row) | Created::Existing(row)) => return to_session(&row),
                            Ok(Created::Taken) => return Err(NewSession::id_taken(id)),
                            Ok(Created::Full) => return Err(self.limits.reached(user)),
                            Ok(Created::NoUser) => return Err(Error::user_not_found(user)),
                            // A random id that collided (122 random bits: never in
                            // practice) is drawn again; a chosen id that a
                            // concurrent create inserted is read by the next attempt.
                            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => last = Some(e),
                            Err(e) => return Err(error::write(e, user, "session")),
                        }
                    }
                    Err(error::write(last.expect("an attempt failed"), user, "session"))
                })
                .await
            })
            .await
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.db
            .obs
            .run("user_sessions", "get", async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM user_sessions WHERE id = $1 AND user_id = $2 AND expires_at > now()"
                );
                self.one("get session", &sql, &[id.as_uuid(), user.as_uuid()]).await
            })
            .await
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.db
            .obs
            .run("user_sessions", "touch", async move {
                // `_slot`: a coalescing statement slot this call holds while
                // it touches on its own (the fast path).
                let _slot = match &self.coalescer {
                    Some(c) => {
                        let deadline = tokio::time::Instant::now() + self.db.timeout();
                        match c.submit(&self.db, user, id, deadline).await {
                            Submitted::Done(result) => return result,
                            Submitted::Direct(_, slot) => slot,
                        }
                    }
                    None => None,
                };
                self.one("touch session", TOUCH, &[id.as_uuid(), user.as_uuid()]).await
            })
            .await
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
        self.db
            .obs
            .run("user_sessions", "set_data", async move {
                validate_data(&data)?;
                self.one("set session data", SET_DATA, &[id.as_uuid(), user.as_uuid(), &Json(&data)]).await
            })
            .await
    }

    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
        self.db
            .obs
            .run("user_sessions", "list_recent", async move {
                validate_list_limit(limit)?;
                let op = self.db.op("list sessions");
                let conn = op.conn().await?;
                op.run(async {
                    let stmt = conn.prepare_cached(&list_sql()).await.map_err(error::pg)?;
                    let rows = conn.query(&stmt, &[user.as_uuid(), &i64::from(limit)]).await.map_err(error::pg)?;
                    rows.iter().map(to_session).collect()
                })
                .await
            })
            .await
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        self.db
            .obs
            .run("user_sessions", "revoke", async move {
                let op = self.db.op("revoke session");
                let conn = op.conn().await?;
                op.run(async {
                    let stmt = conn.prepare_cached(REVOKE).await.map_err(error::pg)?;
                    let row = conn.query_opt(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)?;
                    Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
                })
                .await
            })
            .await
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        self.db
            .obs
            .run("user_sessions", "revoke_all", async move {
                // One deadline for all batches: the call is the operation. Batches
                // that committed before it ran out stay committed (see the trait).
                let op = self.db.op("revoke all sessions");
                let conn = op.conn().await?;
                op.run(async {
                    let stmt = conn.prepare_cached(REVOKE_BATCH).await.map_err(error::pg)?;
                    let mut live = 0;
                    loop {
                        let row =
                            conn.query_one(&stmt, &[user.as_uuid(), &REVOKE_BATCH_ROWS]).await.map_err(error::pg)?;
                        let (picked, gone_live): (i64, i64) = (row.get(0), row.get(1));
                        live += gone_live.unsigned_abs();
                        // Fewer picked than asked: no row of the user was left when
                        // the batch ran (sessions created since may remain; see the
                        // trait).
                        if picked < REVOKE_BATCH_ROWS {
                            return Ok(live);
                        }
                    }
                })
                .await
            })
            .await
    }
}
