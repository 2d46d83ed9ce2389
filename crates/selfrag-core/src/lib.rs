//! Core of selfrag storage: the traits every backend implements, the ids and
//! validated input types they exchange, the one [`Error`], and in-process
//! reference backends in [`local`].
//!
//! | trait | what | backends |
//! | --- | --- | --- |
//! | [`MemoryStore`] + [`UserStore`] | per-user append-only memory logs | `local`, Postgres |
//! | [`SessionStore`] | sessions with TTL and sliding expiry | `local`, Postgres, Redis |
//! | [`RateLimiter`] | atomic multi-window rate limits | `local`, Redis |
//! | [`VectorIndex`] | tenant-scoped chunks and filtered search | `local`, Qdrant, embedded Qdrant |
//!
//! The traits are object-safe: applications hold `Arc<dyn MemoryStore>` and
//! swap backends without changing code. Each method's contract (what absence
//! returns, what is atomic, how results are ordered) is documented on the
//! trait and checked for every backend by the `selfrag-testkit` conformance
//! suites.
//!
//! ```
//! use std::sync::Arc;
//! use selfrag_core::{local::LocalStore, MemoryQuery, MemoryStore, NewMemoryLog, UserStore};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = Arc::new(LocalStore::new());
//! let user = store.create_user().await?;
//! let memory: Arc<dyn MemoryStore> = store.clone();
//! memory.append(user, NewMemoryLog::new("fact", "likes tea")?).await?;
//! let page = memory.query(user, &MemoryQuery::new().limit(10)).await?;
//! assert_eq!(page.logs[0].content, "likes tea");
//! # Ok::<(), selfrag_core::Error>(())
//! # }).unwrap();
//! ```

pub mod clock;
pub mod erasure;
pub mod error;
pub mod ids;
pub mod local;
pub mod memory;
pub mod observe;
pub mod ratelimit;
pub mod session;
mod validate;
pub mod vector;

pub use clock::{Clock, ManualClock, SystemClock};
pub use erasure::{ErasureLedger, ErasureRecord};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use ids::{ChunkId, MemoryLogId, SessionId, Tenant, UserId};
pub use memory::{Cursor, MemoryLog, MemoryPage, MemoryQuery, MemoryStore, MemoryType, NewMemoryLog, UserStore};
pub use ratelimit::{RateLimitDecision, RateLimitKey, RateLimitPolicy, RateLimiter, Window, WindowStatus};
pub use session::{NewSession, OnLimit, Session, SessionLimits, SessionStore};
pub use validate::{MAX_JSON_BYTES, MAX_JSON_DEPTH};
pub use vector::{
    Chunk, ChunkPage, ChunkPayload, ChunkRecord, Distance, Field, Filter, IndexSpec, MatchValue, ScoredChunk,
    ScrollCursor, SearchRequest, VectorIndex,
};

/// `dyn MemoryStore`, for `Arc<DynMemoryStore>`.
pub type DynMemoryStore = dyn MemoryStore;
/// `dyn SessionStore`.
pub type DynSessionStore = dyn SessionStore;
/// `dyn RateLimiter`.
pub type DynRateLimiter = dyn RateLimiter;
/// `dyn VectorIndex`.
pub type DynVectorIndex = dyn VectorIndex;
/// `dyn UserStore`.
pub type DynUserStore = dyn UserStore;
/// `dyn ErasureLedger`.
pub type DynErasureLedger = dyn ErasureLedger;

mod forward;

pub use async_trait::async_trait;
