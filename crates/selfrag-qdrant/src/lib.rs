//! A [`VectorIndex`](selfrag_core::VectorIndex) on a Qdrant server or
//! cluster, over gRPC with [`qdrant_client`] 1.20.
//!
//! [`QdrantIndex`] is bound to one collection. Many tenants share it: every
//! call is scoped to a [`Tenant`](selfrag_core::Tenant) by a payload condition
//! and by the point ids, so no call reads, counts or deletes another tenant's
//! chunks.
//!
//! # Setup
//! ```no_run
//! # async fn run() -> selfrag_core::Result<()> {
//! use selfrag_core::{Chunk, Distance, Field, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};
//! use selfrag_qdrant::QdrantIndexConfig;
//!
//! let spec = IndexSpec::new(384, Distance::Cosine)?;
//! let index = QdrantIndexConfig::from_env("chunks", spec)?.build()?; // QDRANT_URL, QDRANT_API_KEY
//! let report = index.ensure().await?; // creates the collection and payload indexes if missing
//! println!("{report}"); // collection `chunks`: green, 0 points, ... payload schema confirmed
//!
//! let acme = Tenant::new("acme")?;
//! # let embedding = vec![0.1; 384];
//! index.upsert(&acme, vec![Chunk::new("handbook", 0, "Vacation policy ...", embedding.clone()).tags(["hr"])]).await?;
//! let hits = index
//!     .search(&acme, &SearchRequest::new(embedding, 5).filter(Filter::eq(Field::Tags, "hr")))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Configuration
//! [`QdrantIndexConfig`]: `url` (the **gRPC** port, 6334 by default;
//! `QDRANT_URL` in [`QdrantIndexConfig::from_env`]), `api_key`
//! (`QDRANT_API_KEY`), `collection`, `spec` (dimension and distance),
//! `timeout` (30 s) and `connect_timeout` (5 s), `shard_number`,
//! `replication_factor` and `write_consistency_factor` (used when `ensure`
//! creates the collection), `write_order` (per-request write ordering across
//! replicas), `read_consistency` (replicas asked by each read; server default
//! unless set), `upsert_batch_size` (at most 256 points, and at most
//! [`MAX_UPSERT_BYTES`](convert::MAX_UPSERT_BYTES) = 16 MiB of encoded points,
//! per request) and `page_size` (256 points per scroll page). Callers who hold a [`qdrant_client::Qdrant`]
//! use [`QdrantIndex::new`] or [`QdrantIndexConfig::build_with_client`].
//!
//! The client's server-version check is off: it runs a blocking health check
//! inside `build` and only prints a warning (qdrant-client 1.20 works with
//! Qdrant 1.18 servers). [`QdrantIndex::ensure`] is the check that matters.
//!
//! **Qdrant Cloud** (HTTPS + API key): `QDRANT_URL=https://<cluster>:6334`
//! and `QDRANT_API_KEY`. An `https://` URL connects over TLS (rustls,
//! verified against the system's root certificates); the key goes in the
//! `api-key` header of every request ([`validate_api_key`]: printable ASCII
//! without spaces).
//!
//! The API key is never printed: `Debug` of the config and the index shows
//! only whether there is one. The URL may not hold a user, password or query
//! ([`validate_url`]: the client would ignore them, then quote them in its
//! connection errors), and is printed through [`redact_url`].
//!
//! # Collection layout
//! One unnamed dense vector per point, of the spec's dimension and distance.
//! The point id is [`point_id(tenant, chunk_id)`](selfrag_core::vector::point_id),
//! a UUIDv5, so the same chunk id under two tenants is two points. The payload
//! is [`ChunkPayload::to_json`](selfrag_core::ChunkPayload::to_json):
//!
//! | key | type | payload index |
//! | --- | --- | --- |
//! | `tenant` | keyword | keyword, `is_tenant: true` |
//! | `document_type` | keyword | keyword |
//! | `tags` | keyword array | keyword |
//! | `source` | keyword | keyword |
//! | `document_id` | keyword | keyword |
//! | `chunk_index` | integer | integer, `lookup` + `range` (ranges and ordering) |
//! | `chunk_id` | UUID string | none |
//! | `text` | string | none |
//! | `extra` | object | none; filterable as `extra.<key>` |
//!
//! [`QdrantIndex::ensure`] creates what is missing, idempotently, and returns
//! an [`EnsureReport`]: status (green/yellow/red/grey), point count, segments
//! and the payload schema as data; [`EnsureReport::is_ready`] is true when the
//! collection is green and all six indexes exist with the right kinds. An
//! existing collection with another dimension or distance is refused with
//! [`Error::Incompatible`](selfrag_core::Error::Incompatible).
//!
//! # Scores
//! Higher is better on every backend. Qdrant returns cosine similarity and
//! dot product as they are, but Euclidean and Manhattan **distances**; this
//! backend negates those, so a hit at distance 2 scores `-2.0`. A
//! `score_threshold` `t` keeps hits with `score >= t`. Qdrant's own threshold
//! is exclusive (`score > t`, `distance < d`), so the server gets a slightly
//! looser one (`t - max(|t|, 1) * 1e-6` for cosine and dot, the maximum
//! distance `-t + max(|t|, 1) * 1e-6` for Euclid and Manhattan) and the hits
//! are filtered again with the exact `score >= t`: an exact match passes a
//! Euclid threshold of `0.0`. A positive `t` on a distance matches nothing
//! and is answered without a request.
//!
//! # Filters
//! The core [`Filter`](selfrag_core::Filter) translates one to one (see
//! [`convert::filter_condition`]) and is always ANDed with `tenant == ...`.
//! Keyword equality is an exact `keyword` match, never full-text. Two edges
//! differ from the reference semantics: `Range` on an `extra` key holding a
//! float also matches the float (Qdrant ranges are numeric), and range bounds
//! travel as `f64` (exact up to 2^53). Filters on `extra` keys are not backed
//! by an index: fine by default, refused by a server running strict mode with
//! `unindexed_filtering_retrieve: false`.
//!
//! # Guarantees
//! - Writes are sent with `wait: true`: the call returns once the write is
//!   applied on the replicas that acknowledged it, at least
//!   `write_consistency_factor` of them (1 by default). On a collection with
//!   one replica per shard (`replication_factor` 1, the default) a write is
//!   therefore visible to every read when the call returns. With more
//!   replicas the others apply it in parallel and may lag: a read served by a
//!   lagging replica (the default reads one replica per shard) can miss a
//!   write that returned. For read-your-writes on a replicated collection
//!   set `write_consistency_factor` equal to `replication_factor` (writes
//!   then fail while a replica is down). A stronger `read_consistency` makes
//!   replicas agree (points missing from a queried replica are left out); it
//!   does not by itself make a lagging write visible.
//! - An upsert is checked whole before anything is sent. Large upserts go in
//!   requests of at most `upsert_batch_size` points and 16 MiB (Qdrant refuses
//!   gRPC messages over 32 MiB); each request is atomic, and if a later
//!   batch fails the earlier ones stay written. Upserts are idempotent by
//!   chunk id, so retrying the whole call is safe.
//! - `count` is exact. `document_chunks` reads every page of the document's
//!   points and orders them by `chunk_index` then chunk id.
//! - Errors keep the client error as their source; transport failures,
//!   timeouts and overload are retryable (see [`map_error`]).

pub mod config;
pub mod convert;
mod error;
mod index;
pub mod report;

pub use config::{redact_url, validate_api_key, validate_url, QdrantIndexConfig, ReadConsistency, WriteOrder};
pub use error::map_error;
pub use index::QdrantIndex;
pub use qdrant_client;
pub use report::{CollectionStatus, EnsureReport, PayloadIndex};
