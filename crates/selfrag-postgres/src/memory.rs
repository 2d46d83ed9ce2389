//! [`MemoryStore`] on the `memory_logs` table.

use std::sync::OnceLock;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::clock::to_micros;
use selfrag_core::memory::validate_batch;
use selfrag_core::{
    Cursor, Error, MemoryLog, MemoryLogId, MemoryPage, MemoryQuery, MemoryStore, MemoryType, NewMemoryLog, Result,
    UserId,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Error as PgError, Row};
use uuid::Uuid;

use crate::{error, explain, users};

/// The stored columns, in the order every statement here lists them.
macro_rules! columns {
    () => {
        r#"id, user_id, "timestamp", type, content, meta_data"#
    };
}

const COLUMNS: &str = columns!();

/// Their types, in the same order, for the binary `COPY` encoder (binary
/// `COPY` has no type inference: each value must be sent in its column's
/// wire format; `meta_data` is `jsonb`, whose format is a version byte then
/// the JSON text, which the driver writes for [`Json`] when told `JSONB`).
const COLUMN_TYPES: [Type; 6] = [Type::UUID, Type::UUID, Type::TIMESTAMPTZ, Type::VARCHAR, Type::TEXT, Type::JSONB];

/// One row.
const INSERT_ONE: &str = concat!("INSERT INTO memory_logs (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6)");

// One statement over parallel arrays: one round trip for the whole batch,
// and atomic like any single statement (all rows or none).
const INSERT_BATCH: &str = concat!(
    "INSERT INTO memory_logs (",
    columns!(),
    r#")
SELECT b.id, $1, b.ts, b.type, b.content, b.meta
FROM unnest($2::uuid[], $3::timestamptz[], $4::varchar[], $5::text[], $6::jsonb[]) AS b(id, ts, type, content, meta)"#
);

// Binary COPY skips the per-row executor work of INSERT; it is one statement
// too, so a failing row (taken id, unknown user) writes nothing. Constraint
// errors carry the same SQLSTATE and detail as for INSERT.
const COPY_IN: &str = concat!("COPY memory_logs (", columns!(), ") FROM STDIN (FORMAT binary)");

/// Batches above this many rows are written with [`COPY_IN`]; below it the
/// `COPY` protocol's extra messages cost more than they save.
const COPY_THRESHOLD: usize = 32;

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
        explain(&conn, built.sql, &built.params(), analyze).await
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
        Ok(BuiltQuery::new(UserId::from_uuid(Uuid::nil()), query).sql.to_owned())
    }

    /// Validates `logs` and writes them in one statement (one round trip
    /// for up to [`COPY_THRESHOLD`] rows; all rows or none).
    async fn insert_batch(&self, user: UserId, logs: &[NewMemoryLog]) -> Result<()> {
        // Everything is checked before anything is sent.
        validate_batch(logs)?;
        let conn = self.conn().await?;
        let written = match logs {
            [log] => {
                let stmt = conn.prepare_cached(INSERT_ONE).await.map_err(error::pg)?;
                let (id, ts, meta) = (*log.id().as_uuid(), log.timestamp(), Json(log.metadata()));
                conn.execute(&stmt, &[&id, user.as_uuid(), &ts, &log.kind().as_str(), &log.content(), &meta]).await
            }
            _ if logs.len() > COPY_THRESHOLD => copy_batch(&conn, user, logs).await,
            _ => {
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
                    metas.push(Json(log.metadata()));
                }
                let stmt = conn.prepare_cached(INSERT_BATCH).await.map_err(error::pg)?;
                conn.execute(&stmt, &[user.as_uuid(), &ids, &timestamps, &types, &contents, &metas]).await
            }
        };
        written.map(|_| ()).map_err(|e| error::write(e, user, "memory log"))
    }
}

/// Streams `logs` through [`COPY_IN`]. Any error, whether raised while
/// sending or reported when the copy ends, fails the whole statement.
async fn copy_batch(conn: &Object, user: UserId, logs: &[NewMemoryLog]) -> std::result::Result<u64, PgError> {
    let stmt = conn.prepare_cached(COPY_IN).await?;
    let sink = conn.copy_in(&stmt).await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    // Dropping the writer unfinished (an error below, or the caller giving
    // up) aborts the copy, so nothing is written.
    let mut writer = std::pin::pin!(writer);
    for log in logs {
        let (id, ts, meta) = (*log.id().as_uuid(), log.timestamp(), Json(log.metadata()));
        writer.as_mut().write(&[&id, user.as_uuid(), &ts, &log.kind().as_str(), &log.content(), &meta]).await?;
    }
    writer.finish().await
}

/// The `SELECT` for a [`MemoryQuery`]: only the filters the query sets become
/// SQL, so that each shape gets its own plan (a catch-all `($2 IS NULL OR
/// ...)` form would hide the range from the planner).
struct BuiltQuery {
    sql: &'static str,
    user: Uuid,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    types: Vec<String>,
    metadata: Option<Value>,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
}

/// Which optional filters a query sets, as bits: since, until, types,
/// metadata, after.
fn shape(query: &MemoryQuery) -> usize {
    usize::from(query.since.is_some())
        | usize::from(query.until.is_some()) << 1
        | usize::from(!query.types.is_empty()) << 2
        | usize::from(query.metadata_contains.is_some()) << 3
        | usize::from(query.after.is_some()) << 4
}

/// The SQL of query shape `shape` (see [`shape`]): built once per shape and
/// process, so a query builds no SQL text.
fn shape_sql(shape: usize) -> &'static str {
    static SQL: [OnceLock<String>; 32] = [const { OnceLock::new() }; 32];
    SQL[shape & 31].get_or_init(|| build_sql(shape))
}

fn build_sql(shape: usize) -> String {
    let set = |bit: usize| shape & (1 << bit) != 0;
    let mut sql = format!("SELECT {COLUMNS} FROM memory_logs WHERE user_id = $1");
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    if set(0) {
        sql.push_str(&format!(r#" AND "timestamp" >= ${}"#, next()));
    }
    if set(1) {
        sql.push_str(&format!(r#" AND "timestamp" < ${}"#, next()));
    }
    if set(2) {
        sql.push_str(&format!(" AND type = ANY(${})", next()));
    }
    if set(3) {
        sql.push_str(&format!(" AND meta_data @> ${}", next()));
    }
    if set(4) {
        // A row comparison, which the B-tree index takes as one range
        // bound: pages cost the same however deep they are.
        let (a, b) = (next(), next());
        sql.push_str(&format!(r#" AND ("timestamp", id) < (${a}, ${b})"#));
    }
    sql.push_str(&format!(r#" ORDER BY "timestamp" DESC, id DESC LIMIT ${}"#, next()));
    sql
}

impl BuiltQuery {
    fn new(user: UserId, query: &MemoryQuery) -> Self {
        let sql = shape_sql(shape(query));
        Self {
            sql,
            user: *user.as_uuid(),
            // One rule for every timestamp (`MemoryQuery::matches`): bounds
            // are truncated to the microsecond like stored timestamps. Done
            // here because the driver truncates towards 2000-01-01, which
            // would round earlier bounds up.
            since: query.since.map(to_micros),
            until: query.until.map(to_micros),
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

/// The `(timestamp, id)` bound for a cursor: its timestamp truncated to the
/// microsecond like every other timestamp (a cursor from a page already is),
/// as `MemoryQuery::matches` compares it.
fn cursor_bound(c: Cursor) -> (OffsetDateTime, Uuid) {
    (to_micros(c.timestamp), *c.id.as_uuid())
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
        // A batch of one: the same checks; written with a single-row INSERT.
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
        let stmt = conn.prepare_cached(built.sql).await.map_err(error::pg)?;
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

#[cfg(test)]
mod tests {
    //! The `COPY` path's error mapping (the conformance suite's failing
    //! batches are small, so they take the `INSERT` path).
    use super::*;
    use crate::{PostgresConfig, PostgresUserStore};
    use selfrag_core::{ErrorKind, UserStore};

    #[test]
    fn every_query_shape_numbers_its_parameters() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("timestamp");
        for bits in 0..32usize {
            let set = |bit: usize| bits & (1 << bit) != 0;
            let mut q = MemoryQuery::new();
            if set(0) {
                q = q.since(at);
            }
            if set(1) {
                q = q.until(at);
            }
            if set(2) {
                q = q.of_type(MemoryType::new("fact").expect("type"));
            }
            if set(3) {
                let serde_json::Value::Object(m) = serde_json::json!({"k": 1}) else { unreachable!() };
                q = q.metadata_contains(m);
            }
            if set(4) {
                q = q.after(selfrag_core::Cursor { timestamp: at, id: MemoryLogId::new() });
            }
            assert_eq!(shape(&q), bits);
            let built = BuiltQuery::new(UserId::new(), &q);
            let n = built.params().len();
            assert!(built.sql.contains(&format!("LIMIT ${n}")), "{bits:05b}: {}", built.sql);
            assert!(!built.sql.contains(&format!("${}", n + 1)), "{bits:05b}: {}", built.sql);
            // Built once: the same string for the same shape.
            assert!(std::ptr::eq(built.sql, BuiltQuery::new(UserId::new(), &q).sql));
        }
        // Where each value goes, for the shape with every filter and one with
        // a gap in the bits.
        let select = format!("SELECT {COLUMNS} FROM memory_logs WHERE user_id = $1");
        let order = r#" ORDER BY "timestamp" DESC, id DESC"#;
        assert_eq!(
            shape_sql(0b11111),
            format!(
                r#"{select} AND "timestamp" >= $2 AND "timestamp" < $3 AND type = ANY($4) AND meta_data @> $5 AND ("timestamp", id) < ($6, $7){order} LIMIT $8"#
            )
        );
        assert_eq!(shape_sql(0b01010), format!(r#"{select} AND "timestamp" < $2 AND meta_data @> $3{order} LIMIT $4"#));
    }

    fn batch(n: usize) -> Vec<NewMemoryLog> {
        let base = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("timestamp");
        (0..n)
            .map(|i| {
                let meta = serde_json::json!({ "i": i, "tag": "copy \u{e9}" });
                NewMemoryLog::new("fact", format!("row {i}"))
                    .and_then(|l| l.with_metadata(meta))
                    .expect("log")
                    .at(base + time::Duration::seconds(i64::try_from(i).expect("small")))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_batches_are_atomic_and_map_errors() {
        let Some(server) = selfrag_testkit::servers::postgres().await else { return };
        let schema = format!("t_{}", Uuid::new_v4().simple());
        let (admin, connection) = tokio_postgres::connect(&server.url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
        let pool = PostgresConfig::with_url(&server.url).schema(&schema).max_connections(2).build().expect("pool");
        crate::migrate(&pool).await.expect("migrate");
        let (store, users) = (PostgresMemoryStore::new(pool.clone()), PostgresUserStore::new(pool));
        let user = users.create_user().await.expect("user");
        let n = COPY_THRESHOLD * 3;
        let count = || async {
            let q = format!("SELECT count(*) FROM {schema}.memory_logs");
            admin.query_one(&q, &[]).await.expect("count").get::<_, i64>(0)
        };

        // Unknown user: NotFound, nothing written.
        let err = store.append_batch(UserId::new(), batch(n)).await.expect_err("unknown user");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
        assert_eq!(count().await, 0);

        // Success: the returned logs are what is stored, metadata included.
        let stored = store.append_batch(user, batch(n)).await.expect("copy batch");
        assert_eq!(stored.len(), n);
        assert_eq!(count().await, i64::try_from(n).expect("small"));
        for log in [&stored[0], &stored[n - 1]] {
            assert_eq!(store.get(user, log.id).await.expect("get").as_ref(), Some(log));
        }

        // One taken id in the middle: Conflict naming it, nothing written.
        let mut again = batch(n);
        let taken = stored[n / 2].id;
        again[n / 2] = again.remove(n / 2).with_id(taken);
        match store.append_batch(user, again).await {
            Err(Error::Conflict { what, id }) => {
                assert_eq!((what, id), ("memory log", taken.to_string()));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(count().await, i64::try_from(n).expect("small"));

        // The connection is usable after a failed copy.
        store.append_batch(user, batch(n)).await.expect("copy after a failure");
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
    }
}
