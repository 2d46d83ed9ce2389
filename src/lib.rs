//! selfrag storage: the storage layer of a self-RAG service (an assistant
//! that remembers its users and retrieves document chunks to answer them),
//! behind small object-safe traits.
//!
//! | need | trait | backends |
//! | --- | --- | --- |
//! | per-user, append-only memory logs, queried by user and time range | [`MemoryStore`] + [`UserStore`] | Postgres, in-process |
//! | sessions with TTL and sliding expiry | [`SessionStore`] | Postgres, Redis, in-process |
//! | rate limits over minute / hour / day windows | [`RateLimiter`] | Redis, in-process |
//! | vectors: tenant-scoped chunks, filtered similarity search | [`VectorIndex`] | Qdrant server, embedded Qdrant engine, in-process |
//!
//! This facade re-exports `selfrag_core` (the traits, ids, input types,
//! errors and the in-process [`local`] backends), the crates whose types
//! the API takes ([`serde_json`], [`time`], [`uuid`]) and, behind features,
//! the server backends:
//!
//! | feature | module | backend |
//! | --- | --- | --- |
//! | `postgres` | `postgres`, `migrations` | memory logs, users and sessions in Postgres |
//! | `redis` | `redis` | sessions and rate limits in Redis |
//! | `qdrant` | `qdrant` | vectors in a Qdrant server |
//! | `edge` | `edge` | vectors in the Qdrant engine embedded in-process |
//!
//! With no feature, everything runs in process. [`Storage::from_env`]
//! composes the backends named by environment variables (`DATABASE_URL`,
//! `REDIS_URL`, `QDRANT_URL`, `SELFRAG_EDGE_PATH`) and runs the rest in
//! process, keeping the contracts that span stores (deleting a user ends
//! its sessions wherever they live).
//!
//! ```
//! use std::sync::Arc;
//!
//! use selfrag::local::LocalStore;
//! use selfrag::{MemoryQuery, MemoryStore, NewMemoryLog, UserStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), selfrag::Error> {
//! let store = Arc::new(LocalStore::new());
//! let user = store.create_user().await?;
//! let memory: Arc<dyn MemoryStore> = store.clone();
//! memory.append(user, NewMemoryLog::new("fact", "prefers tea")?).await?;
//! let page = memory.query(user, &MemoryQuery::new().limit(20)).await?;
//! assert_eq!(page.logs[0].content, "prefers tea");
//! # Ok(()) }
//! ```
//!
//! The repository's README, `docs/` (one page per backend, the contracts,
//! the architecture) and `BACKUP_STRATEGY.md` describe configuration,
//! guarantees and operations in full.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's code blocks, compiled and run as doctests (the README is
/// not the front page here: its relative links only work in the
/// repository).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use selfrag_core::*;

mod composed;
mod erase;
mod storage;
pub use erase::{
    EraseError, EraseOptions, ErasePlan, EraseReport, EraseStep, ExportReport, ProgressEvent, ProgressFn, SessionCount,
    VectorCount, VectorScope,
};
pub use storage::{Backends, Storage, StorageOptions};

// The public API takes and returns these crates' types
// (`serde_json::Value`/`Map`, `time::OffsetDateTime`, `uuid::Uuid`): one
// dependency on `selfrag` is enough to name them, at the versions it uses.
pub use serde_json;
pub use time;
pub use uuid;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use selfrag_migrations as migrations;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use selfrag_postgres as postgres;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use selfrag_redis as redis;

#[cfg(feature = "qdrant")]
#[cfg_attr(docsrs, doc(cfg(feature = "qdrant")))]
pub use selfrag_qdrant as qdrant;

#[cfg(feature = "edge")]
#[cfg_attr(docsrs, doc(cfg(feature = "edge")))]
pub use selfrag_edge as edge;
