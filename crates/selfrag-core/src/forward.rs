//! The traits forwarded through `Arc<T>` and `Box<T>`, so that a shared or
//! boxed backend (including `Arc<dyn Trait>`) is itself a backend.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{
    Chunk, ChunkId, ChunkPage, ChunkRecord, ErasureLedger, ErasureRecord, Filter, IndexSpec, MemoryLog, MemoryLogId,
    MemoryPage, MemoryQuery, MemoryStore, NewMemoryLog, NewSession, RateLimitDecision, RateLimitKey, RateLimitPolicy,
    RateLimiter, Result, ScoredChunk, ScrollCursor, SearchRequest, Session, SessionId, SessionStore, Tenant, UserId,
    UserStore, VectorIndex,
};

macro_rules! forward {
    ($ptr:ident) => {
        #[async_trait]
        impl<T: MemoryStore + ?Sized> MemoryStore for $ptr<T> {
            async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog> {
                (**self).append(user, log).await
            }
            async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>> {
                (**self).append_batch(user, logs).await
            }
            async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>> {
                (**self).get(user, id).await
            }
            async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage> {
                (**self).query(user, query).await
            }
            async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool> {
                (**self).delete(user, id).await
            }
            async fn purge_user_logs(&self, user: UserId, max_rows: u32) -> Result<u64> {
                (**self).purge_user_logs(user, max_rows).await
            }
        }

        #[async_trait]
        impl<T: UserStore + ?Sized> UserStore for $ptr<T> {
            async fn create_user(&self) -> Result<UserId> {
                (**self).create_user().await
            }
            async fn ensure_user(&self, id: UserId) -> Result<bool> {
                (**self).ensure_user(id).await
            }
            async fn user_exists(&self, id: UserId) -> Result<bool> {
                (**self).user_exists(id).await
            }
            async fn delete_user(&self, id: UserId) -> Result<bool> {
                (**self).delete_user(id).await
            }
        }

        #[async_trait]
        impl<T: SessionStore + ?Sized> SessionStore for $ptr<T> {
            async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
                (**self).create(user, session).await
            }
            async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
                (**self).get(user, id).await
            }
            async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
                (**self).touch(user, id).await
            }
            async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
                (**self).set_data(user, id, data).await
            }
            async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
                (**self).list_recent(user, limit).await
            }
            // Forwarded too, so that an implementation's own `list` is kept.
            async fn list(&self, user: UserId) -> Result<Vec<Session>> {
                (**self).list(user).await
            }
            async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
                (**self).revoke(user, id).await
            }
            async fn revoke_all(&self, user: UserId) -> Result<u64> {
                (**self).revoke_all(user).await
            }
        }

        #[async_trait]
        impl<T: RateLimiter + ?Sized> RateLimiter for $ptr<T> {
            fn policy(&self) -> &RateLimitPolicy {
                (**self).policy()
            }
            async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision> {
                (**self).check(key, cost).await
            }
            async fn reset(&self, key: &RateLimitKey) -> Result<()> {
                (**self).reset(key).await
            }
            async fn reset_user(&self, user: UserId) -> Result<u64> {
                (**self).reset_user(user).await
            }
        }

        #[async_trait]
        impl<T: VectorIndex + ?Sized> VectorIndex for $ptr<T> {
            fn spec(&self) -> &IndexSpec {
                (**self).spec()
            }
            async fn upsert(&self, tenant: &Tenant, chunks: Vec<Chunk>) -> Result<()> {
                (**self).upsert(tenant, chunks).await
            }
            async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>> {
                (**self).search(tenant, request).await
            }
            async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
                (**self).get(tenant, ids).await
            }
            async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>> {
                (**self).document_chunks(tenant, document_id).await
            }
            async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()> {
                (**self).delete(tenant, ids).await
            }
            async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()> {
                (**self).delete_document(tenant, document_id).await
            }
            async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()> {
                (**self).delete_by_filter(tenant, filter).await
            }
            async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64> {
                (**self).count(tenant, filter).await
            }
            async fn scroll(
                &self,
                tenant: &Tenant,
                filter: Option<&Filter>,
                from: Option<ScrollCursor>,
                limit: usize,
            ) -> Result<ChunkPage> {
                (**self).scroll(tenant, filter, from, limit).await
            }
        }

        #[async_trait]
        impl<T: ErasureLedger + ?Sized> ErasureLedger for $ptr<T> {
            async fn record(&self, user: UserId, vectors: Value) -> Result<bool> {
                (**self).record(user, vectors).await
            }
            async fn get(&self, user: UserId) -> Result<Option<ErasureRecord>> {
                (**self).get(user).await
            }
            async fn list_after(&self, after: u64, limit: u32) -> Result<Vec<ErasureRecord>> {
                (**self).list_after(after, limit).await
            }
            async fn position(&self) -> Result<u64> {
                (**self).position().await
            }
        }
    };
}

forward!(Arc);
forward!(Box);
