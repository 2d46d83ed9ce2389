//! Embedded [`VectorIndex`](selfrag_core::VectorIndex) for selfrag storage:
//! the Qdrant engine running in-process (`qdrant-edge`), persisted in a
//! directory the caller names.
//!
//! ```no_run
//! # async fn demo() -> selfrag_core::Result<()> {
//! use selfrag_core::{Chunk, Distance, Field, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};
//! use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig};
//!
//! let spec = IndexSpec::new(3, Distance::Cosine)?;
//! let config = EdgeIndexConfig::default().durability(Durability::Journal); // the default
//! let index = EdgeIndex::open("./selfrag-data/vectors", spec, config).await?;
//! let tenant = Tenant::new("acme")?;
//! index.upsert(&tenant, vec![Chunk::new("doc", 0, "hello", vec![1.0, 0.0, 0.0]).tags(["intro"])]).await?;
//! let hits = index
//!     .search(&tenant, &SearchRequest::new(vec![1.0, 0.1, 0.0], 5).filter(Filter::eq(Field::Tags, "intro")))
//!     .await?;
//! index.close().await?;
//! # Ok(()) }
//! ```
//!
//! # When to choose it
//! `EdgeIndex` runs the same engine as a Qdrant server, inside your process:
//! no server to operate, one directory to back up. It fits one-machine
//! services, command-line tools, examples and tests. Choose the server
//! backend (`selfrag-qdrant`) for several processes or machines sharing an
//! index, replication, or memory beyond one process. A directory is opened by
//! one [`EdgeIndex`] at a time.
//!
//! # Layout
//! One engine shard per directory: `edge_config.json` (dimension,
//! distance), `segments/` (vectors, payloads, indexes) and `wal/`, plus this
//! crate's journal ([`JOURNAL_FILE`], [`STATE_FILE`]). All
//! tenants share it; each point's id is
//! [`point_id(tenant, chunk_id)`](selfrag_core::vector::point_id) (a UUID),
//! its payload is [`ChunkPayload::to_json`](selfrag_core::ChunkPayload::to_json),
//! and every read and write carries a `tenant == <tenant>` condition, so one
//! tenant never sees, counts or deletes another's chunks.
//!
//! Payload indexes, created at open (idempotent):
//!
//! | path | index | HNSW links |
//! | --- | --- | --- |
//! | `tenant` | keyword, `is_tenant` | yes |
//! | `document_type`, `tags`, `source` | keyword | yes: used by filtered search |
//! | `document_id` | keyword | no: lookups and deletes only |
//! | `chunk_index` | integer, lookup + range | no |
//!
//! Filters translate operator by operator ([`filter`]); extra keys live at
//! `extra.<key>`.
//!
//! # Scores
//! Higher is better, as on every backend: cosine similarity for
//! [`Distance::Cosine`](selfrag_core::Distance::Cosine), the dot product for
//! `Dot`, and the **negated** distance for `Euclid` and `Manhattan` (the
//! engine reports those as distances; this crate negates them). A
//! `score_threshold` keeps hits with `score >= threshold` in these terms.
//!
//! # Optimization
//! The engine searches new points by a full scan and builds an HNSW graph
//! only when optimized (blocking; minutes for 100,000 × 384 points on two
//! cores). `EdgeIndex` starts an optimization on a background thread after
//! [`EdgeIndexConfig::optimize_after_points`] written points (default
//! 10,000) and at open when that many points lack a graph; never two at once.
//! Searches and writes keep working during it and return the same results
//! (the engine serves reads through proxy segments while it builds).
//! [`EdgeIndex::optimize_now`] runs one and waits;
//! `optimize_after_points(None)` disables the automatic ones. Segments
//! under [`EdgeIndexConfig::indexing_threshold_kb`] (engine default about
//! 6,500 vectors of dimension 384) stay on exact search. Filtered searches
//! use the engine's ACORN traversal by default ([`EdgeIndexConfig::acorn`]):
//! on 100,000 clustered vectors it lifted recall@10 of a 1-in-6 filter from
//! 0.54 to 1.0 (see `docs/edge.md` and `examples/edge_bench.rs`).
//! The search and graph settings ([`EdgeIndexConfig::search_ef`],
//! [`EdgeIndexConfig::acorn_max_selectivity`], [`EdgeIndexConfig::hnsw_m`],
//! [`EdgeIndexConfig::hnsw_ef_construct`], [`Quantization`]) trade recall
//! against latency, memory and build time; `docs/edge.md` ("Tuning") has
//! measured guidance.
//!
//! # Durability
//! See [`Durability`]. By default every upsert and delete call is appended
//! to a journal of this crate's own (`selfrag-journal` in the directory) and
//! `fdatasync`ed before it returns, concurrent calls sharing one
//! `fdatasync`; the engine is flushed in the background and the journal
//! replayed on open, because the engine version used here (0.7.2) does not
//! replay its own WAL. The journal is emptied after a flush, but never
//! after one that an optimization overlaps: the engine writes deletions
//! made during an optimization only at the first flush after it. Nothing
//! acknowledged is lost on a process crash or a power loss. A torn last record is dropped; a damaged record followed by
//! intact ones, or a record of another dimension, makes
//! [`EdgeIndex::open`] refuse with `Error::Incompatible`.
//!
//! # Threads
//! The engine is synchronous and blocking. Every call runs on tokio's
//! blocking pool (`spawn_blocking`); optimization and periodic flushes run on
//! their own threads. Calls need a tokio runtime.

pub mod config;
pub mod filter;
mod hot;
mod index;
mod journal;

pub use config::{Durability, EdgeIndexConfig, Quantization};
pub use index::{EdgeIndex, EdgePoint, EdgeStats, HotBackup};
pub use journal::{JOURNAL_FILE, STATE_FILE};
/// The engine crate, for callers who need its types.
pub use qdrant_edge;
