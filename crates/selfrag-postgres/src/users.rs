//! [`UserStore`] on the `users` table.

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::{Result, UserId, UserStore};

use crate::conn::Db;
use crate::error;

/// Whether `id` is a known user (shared by the stores that must tell an
/// unknown user from an empty result).
pub(crate) async fn exists(conn: &Object, id: UserId) -> Result<bool> {
    let stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)").await.map_err(error::pg)?;
    Ok(conn.query_one(&stmt, &[id.as_uuid()]).await.map_err(error::pg)?.get(0))
}

/// The users that own memory logs and sessions (`users`). Deleting a user
/// deletes its memory logs and sessions in the same statement, through the
/// tables' `ON DELETE CASCADE` foreign keys.
///
/// Clones share the pool. Every call runs under the operation timeout (see
/// [`crate::PostgresMemoryStore::operation_timeout`]).
#[derive(Debug, Clone)]
pub struct PostgresUserStore {
    db: Db,
}

pool_store_common!(PostgresUserStore);

impl PostgresUserStore {
    /// A store on `pool` (see [`crate::PostgresMemoryStore::new`]).
    pub fn new(pool: Pool) -> Self {
        Self { db: Db::new(pool, crate::PostgresConfig::DEFAULT_OPERATION_TIMEOUT) }
    }

    /// Runs one statement with one `uuid` parameter under the deadline and
    /// returns the rows it affected.
    async fn execute(&self, what: &'static str, sql: &'static str, id: UserId) -> Result<u64> {
        let op = self.db.op(what);
        let conn = op.conn().await?;
        op.run(async {
            let stmt = conn.prepare_cached(sql).await.map_err(error::pg)?;
            conn.execute(&stmt, &[id.as_uuid()]).await.map_err(error::pg)
        })
        .await
    }

    async fn insert(&self, id: UserId) -> Result<bool> {
        let sql = "INSERT INTO users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";
        Ok(self.execute("create user", sql, id).await? == 1)
    }
}

#[async_trait]
impl UserStore for PostgresUserStore {
    async fn create_user(&self) -> Result<UserId> {
        self.db
            .obs
            .run("users", "create_user", async move {
                // A UUIDv7 cannot collide in practice; ON CONFLICT makes a collision
                // a retry instead of an error.
                loop {
                    let id = UserId::new();
                    if self.insert(id).await? {
                        return Ok(id);
                    }
                }
            })
            .await
    }

    async fn ensure_user(&self, id: UserId) -> Result<bool> {
        self.db.obs.run("users", "ensure_user", async move { self.insert(id).await }).await
    }

    async fn user_exists(&self, id: UserId) -> Result<bool> {
        self.db
            .obs
            .run("users", "user_exists", async move {
                let op = self.db.op("check user");
                let conn = op.conn().await?;
                op.run(exists(&conn, id)).await
            })
            .await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool> {
        self.db
            .obs
            .run("users", "delete_user", async move {
                Ok(self.execute("delete user", "DELETE FROM users WHERE id = $1", id).await? == 1)
            })
            .await
    }
}
