//! [`UserStore`] on the `users` table.

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use selfrag_core::{Result, UserId, UserStore};

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
/// Clones share the pool.
#[derive(Debug, Clone)]
pub struct PostgresUserStore {
    pool: Pool,
}

impl PostgresUserStore {
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

    async fn insert(&self, id: UserId) -> Result<bool> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached("INSERT INTO users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
            .await
            .map_err(error::pg)?;
        Ok(conn.execute(&stmt, &[id.as_uuid()]).await.map_err(error::pg)? == 1)
    }
}

#[async_trait]
impl UserStore for PostgresUserStore {
    async fn create_user(&self) -> Result<UserId> {
        // A UUIDv7 cannot collide in practice; ON CONFLICT makes a collision
        // a retry instead of an error.
        loop {
            let id = UserId::new();
            if self.insert(id).await? {
                return Ok(id);
            }
        }
    }

    async fn ensure_user(&self, id: UserId) -> Result<bool> {
        self.insert(id).await
    }

    async fn user_exists(&self, id: UserId) -> Result<bool> {
        exists(&self.conn().await?, id).await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached("DELETE FROM users WHERE id = $1").await.map_err(error::pg)?;
        Ok(conn.execute(&stmt, &[id.as_uuid()]).await.map_err(error::pg)? == 1)
    }
}
