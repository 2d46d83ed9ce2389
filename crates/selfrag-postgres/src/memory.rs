//! [`MemoryStore`] on the `memory_logs` table.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::clock::to_micros;
use selfrag_core::memory::{validate_batch, validate_purge_batch};
use selfrag_core::{
    BoxError, Cursor, Error, MemoryLog, MemoryLogId, MemoryPage, MemoryQuery, MemoryStore, MemoryType, NewMemoryLog,
    Result, UserId,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Error as PgError, Row};
use uuid::Uuid;

use crate::coalesce::{row_bytes, Boxed, CoalesceConfig, CoalesceStats, Coalescer, Many, Submitted, Work};
use crate::conn::Db;
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

// Several callers' rows in one statement (coalesced appends): the user is a
// column like the others.
const INSERT_MANY: &str = concat!(
    "INSERT INTO memory_logs (",
    columns!(),
    r#")
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::varchar[], $5::text[], $6::jsonb[])"#
);

/// Memory logs in Postgres (`memory_logs`).
///
/// Clones share the pool. Every statement is prepared once per pooled
/// connection and cached (deadpool's statement cache). Every call runs under
/// the operation timeout (see [`PostgresConfig::operation_timeout`]).
///
/// # Retries
/// Appends are retry-safe by log id: appending a log whose id is already
/// stored, for the same user with the same type, content, metadata and
/// timestamp, returns the stored log instead of failing; so after an
/// ambiguous failure ([`Error::is_ambiguous`]) the same call can be
/// repeated. A different record under a taken id stays [`Error::Conflict`].
/// In a batch, rows already stored identically are skipped and the others
/// written, all in one transaction.
///
/// # Coalesced appends
/// With [`coalescing`](Self::coalescing), the appends waiting at the same
/// moment share one statement and one commit (see `docs/postgres.md`,
/// "Coalesced appends"); each call still returns only after its own rows
/// are committed, with the same outcome it would have alone.
///
/// [`PostgresConfig::operation_timeout`]: crate::PostgresConfig::operation_timeout
#[derive(Debug, Clone)]
pub struct PostgresMemoryStore {
    db: Db,
    /// The operation timeout, kept here for the deadline of a call that
    /// waits in the coalescing queue.
    timeout: std::time::Duration,
    coalescer: Option<Arc<Coalescer<Appends>>>,
}

impl PostgresMemoryStore {
    /// A store on `pool`, whose connections must see the migrated tables
    /// (see [`crate::migrate`]), with the default operation timeout
    /// ([`PostgresConfig::DEFAULT_OPERATION_TIMEOUT`](crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT)).
    pub fn new(pool: Pool) -> Self {
        let timeout = crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT;
        Self { db: Db::new(pool, timeout), timeout, coalescer: None }
    }

    /// A store on `pool` with the operation timeout of `config`.
    pub fn with_config(pool: Pool, config: &crate::PostgresConfig) -> Self {
        Self::new(pool).operation_timeout(config.operation_timeout)
    }

    /// Turns on coalesced appends, bounded by `config`: `append` and
    /// `append_batch` calls that wait at the same moment are written in one
    /// statement and one commit. No call waits for company: a call that
    /// finds nothing queued and a statement slot free is written at once
    /// from its own task, with the same single-row `INSERT` as without
    /// coalescing (the fast path: no hand-off to another task), and the
    /// calls that arrive while [`CoalesceConfig::max_in_flight`] statements
    /// are in flight queue up and form the next statement.
    ///
    /// The contract of every call is unchanged: it returns after its rows
    /// are committed; its batch is all-or-nothing; a neighbour's taken id or
    /// unknown user never fails it (a failed statement is split and each
    /// call written alone); errors keep their kinds; retried appends are
    /// reconciled by id as always. Its operation timeout covers the wait in
    /// the queue. A call that gives up (times out or is dropped) while still
    /// queued is never written; one that gives up with its rows in flight
    /// may be committed ([`Error::is_ambiguous`]). A call above the
    /// statement bounds is written on its own. The queue starts on first use
    /// (which must be inside a Tokio runtime) and holds this store's
    /// operation timeout as set at that moment.
    ///
    /// Clones share the queue; [`close_coalescing`](Self::close_coalescing)
    /// flushes it. Dropping the last clone flushes it too.
    pub fn coalescing(mut self, config: CoalesceConfig) -> Self {
        self.coalescer = Some(Arc::new(Coalescer::new(config)));
        self
    }

    /// Counters of coalesced appends (calls, statements, rows, split
    /// statements, calls cancelled in the queue), or `None` without
    /// [`coalescing`](Self::coalescing).
    pub fn coalescing_stats(&self) -> Option<CoalesceStats> {
        self.coalescer.as_ref().map(|c| c.stats())
    }

    /// Shuts the coalescing queue down cleanly: stops queueing (later
    /// appends on any clone are written on their own, as without
    /// coalescing), writes every call already queued and returns when each
    /// has been answered. Does nothing without coalescing.
    pub async fn close_coalescing(&self) {
        if let Some(c) = &self.coalescer {
            c.close().await;
        }
    }

    /// Sets the deadline of every call: getting a connection and every
    /// statement the call sends. Past it the call fails with
    /// [`Error::Timeout`], its statement is cancelled and its connection
    /// closed.
    pub fn operation_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.db = self.db.with_timeout(timeout);
        self.timeout = timeout;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        self.db.pool()
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
        let op = self.db.op("explain memory query");
        let conn = op.conn().await?;
        op.run(explain(&conn, built.sql, &built.params(), analyze)).await
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
    /// for up to [`COPY_THRESHOLD`] rows; all rows or none). A taken id is
    /// reconciled by [`reconcile`].
    /// With coalescing, through the queue unless the call is too big or the
    /// queue closed.
    async fn insert_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<NewMemoryLog>> {
        // Everything is checked before anything is sent (or queued).
        validate_batch(&logs)?;
        // `_slot`: a coalescing statement slot this call holds while it
        // writes on its own (dropped after the write).
        let (logs, _slot) = match &self.coalescer {
            Some(c) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                match c.submit(&self.db, user, logs, deadline).await {
                    Submitted::Done(result) => return result,
                    Submitted::Direct(logs, slot) => (logs, slot),
                }
            }
            None => (logs, None),
        };
        write_direct(&self.db, user, &logs).await?;
        Ok(logs)
    }
}

/// Writes one call's rows in one statement under its own deadline; a taken
/// id is reconciled by [`reconcile`].
async fn write_direct(db: &Db, user: UserId, logs: &[NewMemoryLog]) -> Result<()> {
    let op = db.op("append memory logs");
    let mut conn = op.conn().await?;
    let written = op.run(async { Ok(insert(&conn, user, logs).await) }).await?;
    match written {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => op.run(reconcile(&mut conn, user, logs)).await,
        Err(e) => Err(error::write(e, user, "memory log")),
    }
}

/// Coalesced appends: one call is [`write_direct`]; several are one
/// [`insert_many`].
#[derive(Debug)]
struct Appends;

impl Work for Appends {
    /// The call's rows, given back on success so the caller returns them
    /// without a copy.
    type Item = Vec<NewMemoryLog>;
    type Output = Vec<NewMemoryLog>;

    fn size(logs: &Vec<NewMemoryLog>) -> (usize, usize) {
        (logs.len(), logs.iter().map(row_bytes).sum())
    }

    fn one(db: Db, user: UserId, logs: Vec<NewMemoryLog>) -> Boxed<Result<Vec<NewMemoryLog>>> {
        Box::pin(async move { write_direct(&db, user, &logs).await.map(|()| logs) })
    }

    fn many(db: Db, calls: Vec<(UserId, Vec<NewMemoryLog>)>, config: CoalesceConfig) -> Boxed<Many<Self>> {
        Box::pin(async move {
            let op = db.op("append memory logs (coalesced)");
            let result = async {
                let conn = op.conn().await?;
                op.run(async { insert_many(&conn, &calls, config.copy_above).await.map_err(error::pg) }).await
            }
            .await;
            match result {
                Ok(_) => Ok(calls.into_iter().map(|(_, logs)| logs).collect()),
                Err(_) => Err(calls),
            }
        })
    }
}

/// Writes the rows of several calls (of any users) in one statement: a
/// binary `COPY` above `copy_above` rows, else one `unnest` insert.
async fn insert_many(
    conn: &Object,
    batch: &[(UserId, Vec<NewMemoryLog>)],
    copy_above: usize,
) -> std::result::Result<u64, PgError> {
    let rows: usize = batch.iter().map(|(_, logs)| logs.len()).sum();
    if rows > copy_above {
        let stmt = conn.prepare_cached(COPY_IN).await?;
        let sink = conn.copy_in(&stmt).await?;
        let writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &COLUMN_TYPES));
        let mut writer = writer;
        for (user, logs) in batch {
            for log in logs {
                let (id, ts, meta) = (*log.id().as_uuid(), log.timestamp(), Json(log.metadata()));
                writer.as_mut().write(&[&id, user.as_uuid(), &ts, &log.kind().as_str(), &log.content(), &meta]).await?;
            }
        }
        return writer.finish().await;
    }
    let mut users = Vec::with_capacity(rows);
    let mut ids = Vec::with_capacity(rows);
    let mut timestamps = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    let mut contents = Vec::with_capacity(rows);
    let mut metas = Vec::with_capacity(rows);
    for (user, logs) in batch {
        for log in logs {
            users.push(*user.as_uuid());
            ids.push(*log.id().as_uuid());
            timestamps.push(log.timestamp());
            types.push(log.kind().as_str());
            contents.push(log.content());
            metas.push(Json(log.metadata()));
        }
    }
    let stmt = conn.prepare_cached(INSERT_MANY).await?;
    conn.execute(&stmt, &[&ids, &users, &timestamps, &types, &contents, &metas]).await
}

/// Writes `logs` in one statement.
async fn insert(conn: &Object, user: UserId, logs: &[NewMemoryLog]) -> std::result::Result<u64, PgError> {
    match logs {
        [log] => {
            let stmt = conn.prepare_cached(INSERT_ONE).await?;
            let (id, ts, meta) = (*log.id().as_uuid(), log.timestamp(), Json(log.metadata()));
            conn.execute(&stmt, &[&id, user.as_uuid(), &ts, &log.kind().as_str(), &log.content(), &meta]).await
        }
        _ if logs.len() > COPY_THRESHOLD => copy_batch(conn, user, logs).await,
        _ => {
            let columns = BatchColumns::new(user, logs);
            let stmt = conn.prepare_cached(INSERT_BATCH).await?;
            conn.execute(&stmt, &columns.params()).await
        }
    }
}

/// The columns of a batch as parallel arrays, for the `unnest` statements.
struct BatchColumns<'a> {
    user: Uuid,
    ids: Vec<Uuid>,
    timestamps: Vec<OffsetDateTime>,
    types: Vec<&'a str>,
    contents: Vec<&'a str>,
    metas: Vec<Json<&'a serde_json::Map<String, Value>>>,
}

impl<'a> BatchColumns<'a> {
    fn new(user: UserId, logs: &'a [NewMemoryLog]) -> Self {
        let mut c = Self {
            user: *user.as_uuid(),
            ids: Vec::with_capacity(logs.len()),
            timestamps: Vec::with_capacity(logs.len()),
            types: Vec::with_capacity(logs.len()),
            contents: Vec::with_capacity(logs.len()),
            metas: Vec::with_capacity(logs.len()),
        };
        for log in logs {
            c.ids.push(*log.id().as_uuid());
            c.timestamps.push(log.timestamp());
            c.types.push(log.kind().as_str());
            c.contents.push(log.content());
            c.metas.push(Json(log.metadata()));
        }
        c
    }

    /// `$1` the user, then the five arrays.
    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [&self.user, &self.ids, &self.timestamps, &self.types, &self.contents, &self.metas]
    }
}

// A retried append: rows whose id is free are inserted, and every row whose
// id is taken is compared with what is stored (in SQL, so that `jsonb` and
// `timestamptz` compare as Postgres stores them). One transaction: if any
// stored row differs, nothing is written.
const RECONCILE_INSERT: &str = concat!(
    "INSERT INTO memory_logs (",
    columns!(),
    r#")
SELECT b.id, $1, b.ts, b.type, b.content, b.meta
FROM unnest($2::uuid[], $3::timestamptz[], $4::varchar[], $5::text[], $6::jsonb[]) AS b(id, ts, type, content, meta)
ON CONFLICT (id) DO NOTHING"#
);

const RECONCILE_CHECK: &str = r#"SELECT b.id
FROM unnest($2::uuid[], $3::timestamptz[], $4::varchar[], $5::text[], $6::jsonb[]) AS b(id, ts, type, content, meta)
JOIN memory_logs m ON m.id = b.id
WHERE NOT (m.user_id = $1 AND m."timestamp" = b.ts AND m.type = b.type AND m.content = b.content AND m.meta_data = b.meta)
LIMIT 1"#;

/// Finishes an append whose first attempt met a taken id: succeeds when
/// every taken id holds exactly the row the caller asked for (a retry of a
/// write that did commit), writing the rows not yet stored; otherwise
/// [`Error::Conflict`] naming the first differing id, with nothing written.
async fn reconcile(conn: &mut Object, user: UserId, logs: &[NewMemoryLog]) -> Result<()> {
    let columns = BatchColumns::new(user, logs);
    let params = columns.params();
    let tx = conn.transaction().await.map_err(error::pg)?;
    let insert = tx.prepare_cached(RECONCILE_INSERT).await.map_err(error::pg)?;
    tx.execute(&insert, &params).await.map_err(|e| error::write(e, user, "memory log"))?;
    let check = tx.prepare_cached(RECONCILE_CHECK).await.map_err(error::pg)?;
    if let Some(row) = tx.query_opt(&check, &params).await.map_err(error::pg)? {
        let id: Uuid = row.get(0);
        // Dropping the transaction rolls it back.
        return Err(Error::Conflict { what: "memory log", id: id.to_string() });
    }
    tx.commit().await.map_err(error::pg)
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

/// Decodes a row. A row that does not hold what the schema promises
/// (written by other SQL: say, `meta_data` nested deeper than the JSON
/// decoder allows, or not an object) is an error naming the row's id and
/// the column.
fn to_log(row: &Row) -> Result<MemoryLog> {
    let id: Uuid = row.try_get(0).map_err(error::pg)?;
    let bad = |column: &str, e: BoxError| error::bad_row(&format!("`{column}` in memory log {id}"), e);
    let kind: String = row.try_get(3).map_err(|e| bad("type", e.into()))?;
    let metadata = match row.try_get::<_, Value>(5).map_err(|e| bad("meta_data", e.into()))? {
        Value::Object(map) => map,
        other => return Err(bad("meta_data", format!("expected a JSON object, got {}", json_kind(&other)).into())),
    };
    Ok(MemoryLog {
        id: MemoryLogId::from_uuid(id),
        user_id: UserId::from_uuid(row.try_get(1).map_err(|e| bad("user_id", e.into()))?),
        timestamp: row.try_get(2).map_err(|e| bad("timestamp", e.into()))?,
        kind: MemoryType::new(kind).map_err(|e| bad("type", e.into()))?,
        content: row.try_get(4).map_err(|e| bad("content", e.into()))?,
        metadata,
    })
}

/// The JSON type of `v`, for messages that must not echo stored content.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[async_trait]
impl MemoryStore for PostgresMemoryStore {
    async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog> {
        self.db
            .obs
            .run("memory_logs", "append", async move {
                // A batch of one: the same checks; written with a single-row INSERT.
                let mut logs = self.insert_batch(user, vec![log]).await?;
                Ok(logs.pop().expect("the appended log").into_log(user))
            })
            .await
    }

    async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>> {
        self.db
            .obs
            .run("memory_logs", "append_batch", async move {
                if logs.is_empty() {
                    // Nothing to write, but an unknown user is still an error, as for
                    // any write.
                    let op = self.db.op("append memory logs");
                    let conn = op.conn().await?;
                    let exists = op.run(users::exists(&conn, user)).await?;
                    return if exists { Ok(Vec::new()) } else { Err(Error::user_not_found(user)) };
                }
                let logs = self.insert_batch(user, logs).await?;
                Ok(logs.into_iter().map(|l| l.into_log(user)).collect())
            })
            .await
    }

    async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>> {
        self.db
            .obs
            .run("memory_logs", "get", async move {
                let op = self.db.op("get memory log");
                let conn = op.conn().await?;
                let row = op
                    .run(async {
                        let sql = concat!("SELECT ", columns!(), " FROM memory_logs WHERE id = $1 AND user_id = $2");
                        let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
                        conn.query_opt(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)
                    })
                    .await?;
                row.as_ref().map(to_log).transpose()
            })
            .await
    }

    async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage> {
        self.db
            .obs
            .run("memory_logs", "query", async move {
                query.validate()?;
                let built = BuiltQuery::new(user, query);
                let op = self.db.op("query memory logs");
                let conn = op.conn().await?;
                let mut rows = op
                    .run(async {
                        let stmt = conn.prepare_cached(built.sql).await.map_err(error::pg)?;
                        conn.query(&stmt, &built.params()).await.map_err(error::pg)
                    })
                    .await?;
                drop(conn);
                // The extra row only says that another page follows: it is not
                // decoded, so a row this code cannot read fails only the page that
                // returns it.
                let limit = query.effective_limit() as usize;
                let more = rows.len() > limit;
                rows.truncate(limit);
                let logs = rows.iter().map(to_log).collect::<Result<Vec<_>>>()?;
                let next = if more { logs.last().map(MemoryLog::cursor) } else { None };
                Ok(MemoryPage { logs, next })
            })
            .await
    }

    async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool> {
        self.db
            .obs
            .run("memory_logs", "delete", async move {
                let op = self.db.op("delete memory log");
                let conn = op.conn().await?;
                let n = op
                    .run(async {
                        let sql = "DELETE FROM memory_logs WHERE id = $1 AND user_id = $2";
                        let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
                        conn.execute(&stmt, &[id.as_uuid(), user.as_uuid()]).await.map_err(error::pg)
                    })
                    .await?;
                Ok(n == 1)
            })
            .await
    }

    /// One `DELETE` of at most `max_rows` rows, chosen by the
    /// `(user_id, timestamp, id)` index (one autocommit statement: no
    /// transaction spans batches).
    async fn purge_user_logs(&self, user: UserId, max_rows: u32) -> Result<u64> {
        self.db
            .obs
            .run("memory_logs", "purge_user_logs", async move {
                validate_purge_batch(max_rows)?;
                let op = self.db.op("purge memory logs");
                let conn = op.conn().await?;
                op.run(async {
                    let sql = "DELETE FROM memory_logs WHERE user_id = $1 AND id IN \
                           (SELECT id FROM memory_logs WHERE user_id = $1 LIMIT $2)";
                    let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
                    conn.execute(&stmt, &[user.as_uuid(), &i64::from(max_rows)]).await.map_err(error::pg)
                })
                .await
            })
            .await
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

        // One taken id in the middle, holding another record: Conflict
        // naming it, nothing written.
        let mut again = batch(n);
        let taken = stored[n / 2].id;
        again[n / 2] = NewMemoryLog::new("fact", "another record").expect("log").with_id(taken);
        match store.append_batch(user, again).await {
            Err(Error::Conflict { what, id }) => {
                assert_eq!((what, id), ("memory log", taken.to_string()));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(count().await, i64::try_from(n).expect("small"));

        // A retried COPY batch (every row already stored identically)
        // succeeds and writes nothing new; with new rows added, only those
        // are written.
        let first = batch(n);
        store.append_batch(user, first.clone()).await.expect("copy batch");
        let before = count().await;
        assert_eq!(store.append_batch(user, first.clone()).await.expect("retried copy batch").len(), n);
        assert_eq!(count().await, before);
        let mut grown = first;
        grown.extend(batch(2));
        store.append_batch(user, grown).await.expect("retried batch with new rows");
        assert_eq!(count().await, before + 2);

        // The connection is usable after a failed copy.
        store.append_batch(user, batch(n)).await.expect("copy after a failure");
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
    }
}
