//! [`ErasureLedger`] on the `erasures` table (migration 004).

use async_trait::async_trait;
use deadpool_postgres::Pool;
use selfrag_core::erasure::{validate_list_limit, validate_vectors};
use selfrag_core::{ErasureLedger, ErasureRecord, Error, Result, UserId};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::conn::Db;
use crate::error::{self, BACKEND};

/// The erasure ledger in Postgres (`erasures`): one row per erased user,
/// `seq` from an identity column. Written with `INSERT ... ON CONFLICT
/// (user_id) DO NOTHING`, so recording a user twice keeps the first row.
///
/// `seq` comes from a sequence: concurrent erasures may commit out of `seq`
/// order, and a failed insert leaves a gap. A backup's ledger position is
/// read inside the backup's snapshot, so it is consistent with the rows
/// the backup holds.
///
/// Clones share the pool. Every call runs under the operation timeout (see
/// [`crate::PostgresMemoryStore::operation_timeout`]).
#[derive(Debug, Clone)]
pub struct PostgresErasureLedger {
    db: Db,
}

pool_store_common!(PostgresErasureLedger);

impl PostgresErasureLedger {
    /// A ledger on `pool`, whose connections must see the migrated tables
    /// (see [`crate::migrate`]), with the default operation timeout.
    pub fn new(pool: Pool) -> Self {
        Self { db: Db::new(pool, crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT) }
    }
}

fn to_record(row: &Row) -> Result<ErasureRecord> {
    let seq: i64 = row.try_get("seq").map_err(error::pg)?;
    let user: uuid::Uuid = row.try_get("user_id").map_err(error::pg)?;
    let erased_at: OffsetDateTime = row.try_get("erased_at").map_err(error::pg)?;
    let vectors: Value = row.try_get("vectors").map_err(error::pg)?;
    let seq = u64::try_from(seq).map_err(|_| Error::Incompatible {
        backend: BACKEND,
        message: format!("erasures row with a negative seq {seq}"),
    })?;
    Ok(ErasureRecord { seq, user: UserId::from_uuid(user), erased_at, vectors })
}

const COLUMNS: &str = "seq, user_id, erased_at, vectors";

#[async_trait]
impl ErasureLedger for PostgresErasureLedger {
    async fn record(&self, user: UserId, vectors: Value) -> Result<bool> {
        self.db
            .obs
            .run("erasures", "record", async move {
                validate_vectors(&vectors)?;
                let op = self.db.op("record erasure");
                let conn = op.conn().await?;
                let n = op
                    .run(async {
                        let sql =
                            "INSERT INTO erasures (user_id, vectors) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING";
                        let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
                        conn.execute(&stmt, &[user.as_uuid(), &vectors]).await.map_err(error::pg)
                    })
                    .await?;
                Ok(n == 1)
            })
            .await
    }

    async fn get(&self, user: UserId) -> Result<Option<ErasureRecord>> {
        self.db
            .obs
            .run("erasures", "get", async move {
                let op = self.db.op("get erasure");
                let conn = op.conn().await?;
                let row = op
                    .run(async {
                        let sql = format!("SELECT {COLUMNS} FROM erasures WHERE user_id = $1");
                        let stmt = conn.prepare_cached(&sql).await.map_err(error::pg)?;
                        conn.query_opt(&stmt, &[user.as_uuid()]).await.map_err(error::pg)
                    })
                    .await?;
                row.as_ref().map(to_record).transpose()
            })
            .await
    }

    async fn list_after(&self, after: u64, limit: u32) -> Result<Vec<ErasureRecord>> {
        self.db
            .obs
            .run("erasures", "list_after", async move {
                validate_list_limit(limit)?;
                // Beyond i64::MAX nothing can follow.
                let Ok(after) = i64::try_from(after) else { return Ok(Vec::new()) };
                let op = self.db.op("list erasures");
                let conn = op.conn().await?;
                let rows = op
                    .run(async {
                        let sql = format!("SELECT {COLUMNS} FROM erasures WHERE seq > $1 ORDER BY seq LIMIT $2");
                        let stmt = conn.prepare_cached(&sql).await.map_err(error::pg)?;
                        conn.query(&stmt, &[&after, &i64::from(limit)]).await.map_err(error::pg)
                    })
                    .await?;
                rows.iter().map(to_record).collect()
            })
            .await
    }

    async fn position(&self) -> Result<u64> {
        self.db
            .obs
            .run("erasures", "position", async move {
                let op = self.db.op("erasure ledger position");
                let conn = op.conn().await?;
                let seq: i64 = op
                    .run(async {
                        let stmt = conn
                            .prepare_cached("SELECT COALESCE(max(seq), 0) FROM erasures")
                            .await
                            .map_err(error::pg)?;
                        Ok(conn.query_one(&stmt, &[]).await.map_err(error::pg)?.get(0))
                    })
                    .await?;
                Ok(u64::try_from(seq).unwrap_or(0))
            })
            .await
    }
}
