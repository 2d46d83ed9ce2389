//! [`MemoryStore`] on the `memory_logs` table.

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::clock::ceil_micros;
use selfrag_core::memory::validate_batch;
use selfrag_core::{
    Cursor, Error, MemoryLog, MemoryLogId, MemoryPage, MemoryQuery, MemoryStore, MemoryType, NewMemoryLog, Result,
    UserId,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{error, explain, users};

const COLUMNS: &str = r#"id, user_id, "timestamp", type, content, meta_data"#;

// One statement over parallel arrays: one round trip for the whole batch,
// and atomic like any single statement (all rows or none).
const INSERT_BATCH: &str = r#"INSERT INTO memory_logs (id, user_id, "timestamp", type, content, meta_data)
SELECT b.id, $1, b.ts, b.type, b.content, b.meta
FROM unnest($2::uuid[], $3::timestamptz[], $4::varchar[], $5::text[], $6::jsonb[]) AS b(id, ts, type, content, meta)"#;

/// Memory logs in Postgres (`memory_logs`).
///
/// Clones share the pool. Every statement is prepared once per pooled
/// connection and cached (deadpool's statement cache).
#[derive(Debug, Clone)]
pub struct PostgresMemoryStore {
    pool: Pool,
}

impl PostgresMemoryStore {
    /// A store on `pool`, whose connections must see the migrated tables
    /// (see [`crate::migrate`]).
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

    /// The plan Postgres picks for the statement [`MemoryStore::query`] runs
    /// for `user` and `query` (`EXPLAIN`; with `analyze`, the statement is
    /// run and timings and buffer counts are included). For checking that a
    /// query is served by the `(user_id, timestamp, id)` index.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the query is invalid; backend errors.
    pub async fn explain_query(&self, user: UserId, query: &MemoryQuery, analyze: bool) -> Result<String> {
        query.validate()?;
        let built = BuiltQuery::new(user, query);
        let conn = self.conn().await?;
        explain(&conn, &built.sql, &built.params(), analyze).await
    }

    /// The SQL statement [`MemoryStore::query`] prepares for `query`. Only
    /// the filters `query` sets appear, numbered in this order: `$1` the
    /// user, then `since`, `until`, the types (`varchar[]`), the metadata
    /// filter (`jsonb`), the cursor's timestamp and id, and last the limit
    /// (`bigint`, one more than the page size). For inspecting plans, e.g.
    /// the generic plan a prepared statement falls back to.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the query is invalid.
    pub fn query_sql(query: &MemoryQuery) -> Result<String> {
        query.validate()?;
        Ok(BuiltQuery::new(UserId::from_uuid(Uuid::nil()), query).sql)
    }

    /// Validates `logs` and writes them in one statement (one round trip,
    /// all rows or none).
    async fn insert_batch(&self, user: UserId, logs: &[NewMemoryLog]) -> Result<()> {
        // Everything is checked before anything is sent.
        validate_batch(logs)?;
        let mut ids = Vec::with_capacity(logs.len());
        let mut timestamps = Vec::with_capacity(logs.len());
        let mut types = Vec::with_capacity(logs.len());
        let mut contents = Vec::with_capacity(logs.len());
        let mut metas = Vec::with_capacity(logs.len());
        for log in logs {
            ids.push(*log.id().as_uuid());
            timestamps.push(log.timestamp());
            types.push(log.kind().as_str());
            contents.push(log.content());
            metas.push(tokio_postgres::types::Json(log.metadata()));
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(INSERT_BATCH).await.map_err(error::pg)?;
        conn.execute(&stmt, &[user.as_uuid(), &ids, &timestamps, &types, &contents, &metas])
            .await
            .map_err(|e| error::write(e, user, "memory log"))?;
        Ok(())
    }
}

/// The `SELECT` for a [`MemoryQuery`]: only the filters the query sets become
/// SQL, so that each shape gets its own plan (a catch-all `($2 IS NULL OR
/// ...)` form would hide the range from the planner).
struct BuiltQuery {
    sql: String,
    user: Uuid,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    types: Vec<String>,
    metadata: Option<Value>,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
}

impl BuiltQuery {
    fn new(user: UserId, query: &MemoryQuery) -> Self {
        let mut sql = format!("SELECT {COLUMNS} FROM memory_logs WHERE user_id = $1");
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if query.since.is_some() {
            sql.push_str(&format!(r#" AND "timestamp" >= ${}"#, next()));
        }
        if query.until.is_some() {
            sql.push_str(&format!(r#" AND "timestamp" < ${}"#, next()));
        }
        if !query.types.is_empty() {
            sql.push_str(&format!(" AND type = ANY(${})", next()));
        }
        if query.metadata_contains.is_some() {
            sql.push_str(&format!(" AND meta_data @> ${}", next()));
        }
        if query.after.is_some() {
            // A row comparison, which the B-tree index takes as one range
            // bound: pages cost the same however deep they are.
            let (a, b) = (next(), next());
            sql.push_str(&format!(r#" AND ("timestamp", id) < (${a}, ${b})"#));
        }
        sql.push_str(&format!(r#" ORDER BY "timestamp" DESC, id DESC LIMIT ${}"#, next()));
        Self {
            sql,
            user: *user.as_uuid(),
            // Stored timestamps are whole microseconds, and the driver drops
            // any finer part of a bound: rounding the bounds up first keeps
            // `stored >= since` and `stored < until` exact (as in
            // `MemoryQuery::matches`).
            since: query.since.map(ceil_micros),
            until: query.until.map(ceil_micros),
            types: query.types.iter().map(|t| t.as_str().to_owned()).collect(),
            metadata: query.metadata_contains.clone().map(Value::Object),
            after: query.after.map(cursor_bound),
            // One extra row tells whether another page exists.
            limit: i64::from(query.effective_limit()) + 1,
        }
    }

    /// The parameters, in the order the SQL numbers them.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.user];
        if let Some(since) = &self.since {
            p.push(since);
        }
        if let Some(until) = &self.until {
            p.push(until);
        }
        if !self.types.is_empty() {
            p.push(&self.types);
        }
        if let Some(meta) = &self.metadata {
            p.push(meta);
        }
        if let Some((ts, id)) = &self.after {
            p.push(ts);
            p.push(id);
        }
        p.push(&self.limit);
        p
    }
}

/// The `(timestamp, id)` bound for a cursor. A cursor from a page is whole
/// microseconds and is bound as is. One with a finer timestamp `t` must let
/// through every stored row at or before `t`'s microsecond whatever its id,
/// and nothing later: `(ceil_micros(t), nil)` is exactly that bound, as no
/// uuid sorts below the nil one.
fn cursor_bound(c: Cursor) -> (OffsetDateTime, Uuid) {
    let ceil = ceil_micros(c.timestamp);
    if ceil == c.timestamp {
        (ceil, *c.id.as_uuid())
    } else {
        (ceil, Uuid::nil())
    }
}

fn to_log(row: &Row) -> Result<MemoryLog> {
    let kind: String = row.try_get(3).map_err(error::pg)?;
    let metadata = match row.try_get::<_, Value>(5).map_err(error::pg)? {
        Value::Object(map) => map,
        other => return Err(error::bad_row("meta_data", format!("expected a JSON object, got {other}"))),
    };
    Ok(MemoryLog {
        id: MemoryLogId::from_uuid(row.try_get(0).map_err(error::pg)?),
        user_id: UserId::from_uuid(row.try_get(1).map_err(error::pg)?),
        timestamp: row.try_get(2).map_err(error::pg)?,
        kind: MemoryType::new(kind).map_err(|e| error::bad_row("type", e))?,
        content: row.try_get(4).map_err(error::pg)?,
        metadata,
    })
}

#[async_trait]
impl MemoryStore for PostgresMemoryStore {
    async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog> {
        // A batch of one: the same checks and the same single statement.
        self.insert_batch(user, std::slice::from_ref(&log)).await?;
        Ok(log.into_log(user))
    }

    async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>> {
        if logs.is_empty() {
            // Nothing to write, but an unknown user is still an error, as for
            // any write.
            let conn = self.conn().await?;
            return if users::exists(&conn, user).await? { Ok(Vec::new()) } else { Err(Error::user_not_found(user)) };
        }
        self.insert_batch(user, &logs).await?;
        Ok(logs.into_iter().map(|l| l.into_log(user)).collect())
    }

    async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {COLUMNS} FROM memory_logs WHERE id = $1 AND user_id = $2");
        let stmt = conn.prepare_cached(&sql).await.map_err(error::pg)?;
        let row = conn.query_opt(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)?;
        row.as_ref().map(to_log).transpose()
    }

    async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage> {
        query.validate()?;
        let built = BuiltQuery::new(user, query);
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(&built.sql).await.map_err(error::pg)?;
        let rows = conn.query(&stmt, &built.params()).await.map_err(error::pg)?;
        let logs = rows.iter().map(to_log).collect::<Result<Vec<_>>>()?;
        Ok(MemoryPage::from_overfetch(logs, query.effective_limit()))
    }

    async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool> {
        let conn = self.conn().await?;
        let stmt =
            conn.prepare_cached("DELETE FROM memory_logs WHERE id = $1 AND user_id = $2").await.map_err(error::pg)?;
        let n = conn.execute(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)?;
        Ok(n == 1)
    }
}
