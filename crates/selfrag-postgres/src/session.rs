//! [`SessionStore`] on the `user_sessions` table.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::session::validate_data;
use selfrag_core::{NewSession, Result, Session, SessionId, SessionStore, UserId};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use crate::{error, explain};

// Every time comes from the database clock (`now()`, the start of the
// statement's transaction), so all service instances agree on expiry and no
// clock skew between them can revive a session. Every read filters on
// `expires_at > now()`: an expired row may linger until the sweep, but is
// never returned.

const COLUMNS: &str = "id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

const INSERT: &str = "INSERT INTO user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms, data)
VALUES ($1, $2, now(), now(), now() + $3::bigint * interval '1 millisecond', $3::bigint, $4)
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// Sliding expiry in one statement: no read-modify-write race with a
// concurrent touch or revoke. `now()` is when this statement's transaction
// began: a touch that waited on the row lock while a later one committed
// would move the row back in time, so both columns only ever move forward.
const TOUCH: &str = "UPDATE user_sessions
SET last_activity = GREATEST(last_activity, now()),
    expires_at = GREATEST(expires_at, now() + ttl_ms * interval '1 millisecond')
WHERE id = $1 AND user_id = $2 AND expires_at > now()
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

const SET_DATA: &str = "UPDATE user_sessions SET data = $3
WHERE id = $1 AND user_id = $2 AND expires_at > now()
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

// Deletes the row whether or not it is live (an expired row is garbage
// anyway) and reports whether it was live.
const REVOKE: &str = "DELETE FROM user_sessions WHERE id = $1 AND user_id = $2 RETURNING expires_at > now()";

const REVOKE_ALL: &str = "WITH gone AS (DELETE FROM user_sessions WHERE user_id = $1 RETURNING expires_at)
SELECT count(*) FILTER (WHERE expires_at > now()) FROM gone";

// Batched so that a large backlog never holds many row locks in one
// transaction; SKIP LOCKED lets several sweepers run at once.
const SWEEP: &str = "DELETE FROM user_sessions WHERE id IN (
    SELECT id FROM user_sessions WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)";
const SWEEP_BATCH: i64 = 5_000;

fn list_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM user_sessions WHERE user_id = $1 AND expires_at > now() \
         ORDER BY created_at DESC, id DESC"
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
/// Clones share the pool.
#[derive(Debug, Clone)]
pub struct PostgresSessionStore {
    pool: Pool,
}

impl PostgresSessionStore {
    /// A store on `pool` (see [`crate::PostgresMemoryStore::new`]).
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(error::pool)
    }

    /// Deletes the rows of expired sessions (in batches of a few thousand)
    /// and returns how many were deleted. Reads never return expired
    /// sessions with or without a sweep; the sweep only reclaims space.
    ///
    /// # Errors
    /// Backend errors; rows deleted by earlier batches stay deleted.
    pub async fn sweep_expired(&self) -> Result<u64> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(SWEEP).await.map_err(error::pg)?;
        let mut total = 0;
        loop {
            let n = conn.execute(&stmt, &[&SWEEP_BATCH]).await.map_err(error::pg)?;
            total += n;
            if n < SWEEP_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// The plan Postgres picks for [`SessionStore::list`] of `user`
    /// (`EXPLAIN`, or `EXPLAIN (ANALYZE, BUFFERS)` with `analyze`).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn explain_list(&self, user: UserId, analyze: bool) -> Result<String> {
        let conn = self.conn().await?;
        explain(&conn, &list_sql(), &[user.as_uuid()], analyze).await
    }

    async fn one(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Option<Session>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
        let row = conn.query_opt(&stmt, params).await.map_err(error::pg)?;
        row.as_ref().map(to_session).transpose()
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
        // `NewSession` checked the TTL (at most a year) and the data.
        let ttl_ms = i64::try_from(session.ttl().as_millis()).expect("NewSession bounds the TTL to a year");
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(INSERT).await.map_err(error::pg)?;
        loop {
            let id = SessionId::generate();
            let result = conn.query_one(&stmt, &[id.as_uuid(), user.as_uuid(), &ttl_ms, &Json(session.data())]).await;
            match result {
                Ok(row) => return to_session(&row),
                // 122 random bits never collide in practice; if they do, the
                // existing session is kept and another id is drawn.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
                Err(e) => return Err(error::write(e, user, "session")),
            }
        }
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        let sql = format!("SELECT {COLUMNS} FROM user_sessions WHERE id = $1 AND user_id = $2 AND expires_at > now()");
        self.one(&sql, &[id.as_uuid(), user.as_uuid()]).await
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.one(TOUCH, &[id.as_uuid(), user.as_uuid()]).await
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
        validate_data(&data)?;
        self.one(SET_DATA, &[id.as_uuid(), user.as_uuid(), &Json(&data)]).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Session>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(&list_sql()).await.map_err(error::pg)?;
        let rows = conn.query(&stmt, &[user.as_uuid()]).await.map_err(error::pg)?;
        rows.iter().map(to_session).collect()
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(REVOKE).await.map_err(error::pg)?;
        let row = conn.query_opt(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(REVOKE_ALL).await.map_err(error::pg)?;
        let live: i64 = conn.query_one(&stmt, &[user.as_uuid()]).await.map_err(error::pg)?.get(0);
        Ok(live.unsigned_abs())
    }
}
