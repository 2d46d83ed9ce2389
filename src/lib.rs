//! selfrag storage: the storage layer of a self-RAG service, behind small
//! traits.
//!
//! This facade re-exports [`selfrag_core`] (the traits, ids, input types,
//! errors and the in-process `local` backends) and, behind features, the
//! server backends:
//!
//! | feature | module | backend |
//! | --- | --- | --- |
//! | `postgres` | `postgres`, `migrations` | memory logs, users and sessions in Postgres |
//! | `redis` | `redis` | sessions and rate limits in Redis |
//! | `qdrant` | `qdrant` | vectors in a Qdrant server |
//! | `edge` | `edge` | vectors in the Qdrant engine embedded in-process |
//!
//! With no feature, everything runs in process (see `examples/quickstart.rs`).
//!
#![doc = include_str!("../README.md")]

pub use selfrag_core::*;

mod composed;
mod storage;
pub use storage::{Backends, Storage, StorageOptions};

// The public API takes and returns these crates' types
// (`serde_json::Value`/`Map`, `time::OffsetDateTime`, `uuid::Uuid`): one
// dependency on `selfrag` is enough to name them, at the versions it uses.
pub use serde_json;
pub use time;
pub use uuid;

#[cfg(feature = "postgres")]
pub use selfrag_migrations as migrations;
#[cfg(feature = "postgres")]
pub use selfrag_postgres as postgres;

#[cfg(feature = "redis")]
pub use selfrag_redis as redis;

#[cfg(feature = "qdrant")]
pub use selfrag_qdrant as qdrant;

#[cfg(feature = "edge")]
pub use selfrag_edge as edge;
