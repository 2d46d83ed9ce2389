//! [`EdgeIndex`]: the [`VectorIndex`] on the embedded engine.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_edge::{
    AcornSearchParams, CountRequest, CreateIndex, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeVectorParams,
    FieldIndexOperations, HnswIndexConfig, IntegerIndexParams, KeywordIndexParams, NamedQuery, OperationError,
    PayloadFieldSchema, PayloadSchemaParams, PointId, QuantizationConfig, QuantizationSearchParams, QueryEnum,
    QueryRequest, Record, ScalarQuantizationConfig, ScalarType, ScoringQuery, ScrollRequest, SearchParams,
    UpdateOperation, VectorInternal, VectorStructInternal, WithPayloadInterface, WithVector, DEFAULT_VECTOR_NAME,
};
use selfrag_core::observe::{names, system, OpMeta};
use selfrag_core::vector::{keys, point_id, validate_chunks, validate_document_id, validate_ids, validate_scroll};
use selfrag_core::{
    Chunk, ChunkId, ChunkPage, ChunkPayload, ChunkRecord, Distance, Error, Field, Filter, IndexSpec, Result,
    ScoredChunk, ScrollCursor, SearchRequest, Tenant, VectorIndex,
};
use serde_json::{Map, Value};

use crate::config::{Durability, EdgeIndexConfig, Quantization};
use crate::filter::tenant_filter;
use crate::hot;
use crate::journal::{Journal, JournalOp, JournalPoint};

/// The backend name in errors.
pub(crate) const BACKEND: &str = "qdrant-edge";

/// Page size of the scrolls behind `document_chunks`.
const SCROLL_PAGE: usize = 1_000;

/// A [`VectorIndex`] on the Qdrant engine embedded in this process
/// (`qdrant-edge`), persisted in one directory.
///
/// See the crate docs for the on-disk layout, durability and optimization.
/// Every engine call runs on tokio's blocking pool, never on a runtime
/// worker thread.
pub struct EdgeIndex {
    inner: Arc<Inner>,
    flusher: Option<Flusher>,
}

struct Flusher {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Everything shared with the blocking tasks and background threads.
struct Inner {
    shard: EdgeShard,
    spec: IndexSpec,
    path: PathBuf,
    config: EdgeIndexConfig,
    /// Serializes engine writes and flushes: the engine's `flush()` takes its
    /// WAL lock with `try_lock` and panics if an update holds it.
    write_lock: Mutex<()>,
    /// Held by a running optimization, so that there is never more than one.
    optimize_lock: Mutex<()>,
    /// Set while a background optimization thread exists.
    optimizing: AtomicBool,
    /// The background optimization thread, joined by `close`.
    optimizer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Points upserted or deleted since the last optimization started.
    pending: AtomicU64,
    /// Whether something was written since the last flush.
    dirty: AtomicBool,
    /// The write-ahead journal, under the journal durability settings.
    journal: Option<Journal>,
    /// Records replayed from the journal at open.
    replayed: u64,
    /// Optimizations finished (successfully or not) since open.
    optimizations: AtomicU64,
    /// The error of the last failed background optimization.
    last_optimize_error: Mutex<Option<String>>,
    /// `db.collection.name` of every span: the directory's name.
    collection: Arc<str>,
}

/// One stored point, all tenants together, from [`EdgeIndex::export_points`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EdgePoint {
    /// The point id ([`point_id`](selfrag_core::vector::point_id) of its
    /// tenant and chunk id).
    pub id: uuid::Uuid,
    /// The stored vector (normalised to length 1 under cosine distance).
    pub vector: Vec<f32>,
    /// The stored payload ([`ChunkPayload::to_json`]).
    pub payload: Map<String, Value>,
}

/// What [`EdgeIndex::backup_to`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HotBackup {
    /// The journal sequence number of the last write in the copy: the
    /// backup's point in time (0 when the index writes no journal).
    pub seq: u64,
    /// Journal records in the copy that its engine files may not hold yet;
    /// opening the copy replays them.
    pub replay: u64,
    /// How long writes were held: listing the files and copying those the
    /// engine rewrites in place (plus an engine flush when the index writes
    /// no journal).
    pub hold: Duration,
    /// The whole backup, from the call to the renamed, synced copy
    /// (including waiting for a running optimization).
    pub total: Duration,
    /// The length of the files copied (holes count).
    pub bytes: u64,
    /// Data read while writes were held (holes are skipped, not read).
    pub held_bytes: u64,
    /// Data read after the hold: the files the engine never rewrites.
    pub later_bytes: u64,
    /// The bytes the copy occupies on disk (holes are kept and not counted).
    pub disk_bytes: u64,
}

/// A snapshot of an index's state, from [`EdgeIndex::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EdgeStats {
    /// Points stored, all tenants together (approximate while an
    /// optimization runs).
    pub points: usize,
    /// Points in an HNSW graph; the rest are searched by a full scan.
    pub indexed_vectors: usize,
    /// Segments (an optimization merges them).
    pub segments: usize,
    /// Payload indexes present, by payload path.
    pub payload_indexes: Vec<String>,
    /// Whether an optimization is running now.
    pub optimizing: bool,
    /// Optimizations finished since open.
    pub optimizations: u64,
    /// The error of the last failed background optimization, if any.
    pub last_optimize_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant
    // behind (they guard the engine, not data of ours), so poisoning is
    // ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine_err(what: &str, e: OperationError) -> Error {
    Error::backend(BACKEND, format!("{what} failed: {e}"), false, e)
}

/// Runs blocking engine work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Backend {
        backend: BACKEND,
        message: format!("engine task failed: {e}"),
        retryable: false,
        source: None,
    })?
}

impl fmt::Debug for EdgeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeIndex")
            .field("path", &self.inner.path)
            .field("spec", &self.inner.spec)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn engine_distance(d: Distance) -> qdrant_edge::Distance {
    match d {
        Distance::Cosine => qdrant_edge::Distance::Cosine,
        Distance::Dot => qdrant_edge::Distance::Dot,
        Distance::Euclid => qdrant_edge::Distance::Euclid,
        Distance::Manhattan => qdrant_edge::Distance::Manhattan,
        // `Distance` is non-exhaustive: a distance added to the core later
        // must be mapped here before it can be used.
        #[allow(unreachable_patterns)]
        other => unreachable!("distance {other} has no engine equivalent"),
    }
}

/// The engine's score for a hit, in the core convention (higher is better):
/// the engine reports Euclid and Manhattan as distances (smaller is better).
fn core_score(d: Distance, engine_score: f32) -> f32 {
    match d {
        Distance::Euclid | Distance::Manhattan => -engine_score,
        _ => engine_score,
    }
}

/// The payload indexes every index carries (see the crate docs).
fn payload_indexes() -> Vec<(&'static str, PayloadSchemaParams)> {
    let keyword = |is_tenant: bool, hnsw: bool| {
        PayloadSchemaParams::Keyword(KeywordIndexParams {
            is_tenant: Some(is_tenant),
            enable_hnsw: Some(hnsw),
            ..KeywordIndexParams::default()
        })
    };
    vec![
        (keys::TENANT, keyword(true, true)),
        (keys::DOCUMENT_TYPE, keyword(false, true)),
        (keys::TAGS, keyword(false, true)),
        (keys::SOURCE, keyword(false, true)),
        // Lookup-only fields (delete by document, document_chunks): no HNSW
        // links, which makes the build about 3x faster.
        (keys::DOCUMENT_ID, keyword(false, false)),
        (
            keys::CHUNK_INDEX,
            PayloadSchemaParams::Integer(IntegerIndexParams {
                lookup: Some(true),
                range: Some(true),
                is_principal: Some(false),
                enable_hnsw: Some(false),
                ..IntegerIndexParams::default()
            }),
        ),
    ]
}

impl EdgeIndex {
    /// Opens the index in directory `path`, creating the directory and an
    /// empty index when there is none, creates the payload indexes
    /// (idempotent), and replays the journal's records that the engine had
    /// not flushed (whatever the [`Durability`] setting), then flushes and
    /// empties the journal. A torn last record (a write cut short by a
    /// crash, never acknowledged) is dropped.
    ///
    /// # Errors
    /// - [`Error::Incompatible`] when the directory holds an index of
    ///   another dimension or distance, or data the engine cannot read; when
    ///   the journal is damaged before its last record (an intact record
    ///   follows a damaged one: dropping it would lose acknowledged writes),
    ///   or holds a record of another dimension. The journal is left as it
    ///   was then.
    /// - [`Error::Unavailable`] when the directory is already open (in this
    ///   process or another): the engine holds an exclusive lock on it.
    /// - [`Error::Backend`] for I/O and other engine failures.
    pub async fn open(path: impl AsRef<Path>, spec: IndexSpec, config: EdgeIndexConfig) -> Result<Self> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let (inner, unindexed) = blocking(move || {
            let inner = Inner::open(path, spec, config)?;
            let info = inner.shard.info();
            Ok((Arc::new(inner), info.points_count.saturating_sub(info.indexed_vectors_count) as u64))
        })
        .await?;
        let flusher = match inner.config.durability {
            Durability::Periodic(period) => Some(Flusher::start(&inner, period)?),
            Durability::Journal | Durability::JournalNoSync => {
                Some(Flusher::start(&inner, inner.config.engine_flush_interval)?)
            }
            _ => None,
        };
        // An index left unoptimized (e.g. by a process that exited right
        // after a bulk load) gets its graph now.
        if inner.config.optimize_after_points.is_some_and(|after| unindexed >= after) {
            inner.pending.store(unindexed, Ordering::SeqCst);
            inner.spawn_optimizer();
        }
        Ok(Self { inner, flusher })
    }

    /// The directory of the index.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The settings the index was opened with.
    pub fn config(&self) -> &EdgeIndexConfig {
        &self.inner.config
    }

    /// Point counts, segments, payload indexes and optimization state.
    pub async fn stats(&self) -> Result<EdgeStats> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.stats())).await
    }

    /// Every stored point of every tenant with its vector and payload,
    /// ordered by id: for checks, exports and comparing a restored copy
    /// with its source. Reads the whole index into memory.
    ///
    /// # Errors
    /// [`Error::Backend`] when the engine fails.
    pub async fn export_points(&self) -> Result<Vec<EdgePoint>> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut offset = None;
            loop {
                let request = ScrollRequest {
                    offset,
                    limit: Some(SCROLL_PAGE),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(true),
                    order_by: None,
                };
                let (records, next) = inner.shard.scroll(request).map_err(|e| engine_err("export", e))?;
                for r in records {
                    let PointId::Uuid(id) = r.id else { continue };
                    let vector = match r.vector {
                        Some(VectorStructInternal::Single(v)) => v,
                        Some(VectorStructInternal::Named(mut m)) => match m.remove(DEFAULT_VECTOR_NAME) {
                            Some(VectorInternal::Dense(v)) => v,
                            _ => Vec::new(),
                        },
                        _ => Vec::new(),
                    };
                    out.push(EdgePoint { id, vector, payload: r.payload.map(|p| p.0).unwrap_or_default() });
                }
                match next {
                    Some(n) => offset = Some(n),
                    None => break,
                }
            }
            out.sort_by_key(|p| p.id);
            Ok(out)
        })
        .await
    }

    /// Journal records replayed when this index was opened (writes
    /// acknowledged before a crash that the engine had not flushed).
    pub fn replayed_at_open(&self) -> u64 {
        self.inner.replayed
    }

    /// Whether a background optimization is running.
    pub fn is_optimizing(&self) -> bool {
        self.inner.optimizing.load(Ordering::SeqCst)
    }

    /// Runs an optimization now (builds the HNSW graph of large enough
    /// segments, merges small segments, vacuums deleted points) and waits for
    /// it; if a background one is running, waits for that first. Searches
    /// and writes keep working meanwhile. Returns whether anything changed.
    ///
    /// # Errors
    /// [`Error::Backend`] when the engine fails.
    pub async fn optimize_now(&self) -> Result<bool> {
        let inner = self.inner.clone();
        blocking(move || inner.run_optimize()).await
    }

    /// Waits until no background optimization runs.
    pub async fn wait_for_optimization(&self) {
        while self.is_optimizing() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Copies the open index into directory `dest` (missing or empty),
    /// consistent to one point in time, while it keeps serving.
    ///
    /// - Writes wait only for the "hold" ([`HotBackup::hold`]): the files
    ///   are listed and those the engine rewrites in place (appendable
    ///   segments, deletion flags, versions, payload storage, the open
    ///   segments of its WAL, the journal and its state) are copied. The
    ///   last journal record then is the backup's point in time
    ///   ([`HotBackup::seq`]). Under a non-journal [`Durability`] the hold
    ///   also flushes the engine.
    /// - Then writes resume, and the files the engine never changes once
    ///   written (a sealed segment's vectors, graph, quantized vectors,
    ///   payload index data and id mappings; the WAL's closed segments) are
    ///   copied and checked unchanged since the hold.
    /// - Searches and other reads run throughout. A running optimization is
    ///   waited for before the hold, and none starts until the copy is done
    ///   (an optimization replaces segment files).
    ///
    /// The copy is what a crash at the hold would leave: [`EdgeIndex::open`]
    /// it (where it is, or after `selfrag_backup::backup_edge` and
    /// `restore_edge`), which replays the journal records its engine files
    /// may lack ([`HotBackup::replay`]), exactly as after a crash. Every
    /// write acknowledged before the hold is in it, none started after.
    /// Holes (the engine's preallocated WAL) stay holes in the copy.
    ///
    /// # Errors
    /// [`Error::Conflict`] when `dest` exists and is not empty (nothing is
    /// written); [`Error::Backend`] when a copy fails, or (retryable) when a
    /// file copied after the hold changed meanwhile; a partial copy is
    /// removed.
    pub async fn backup_to(&self, dest: impl AsRef<Path>) -> Result<HotBackup> {
        let dest = dest.as_ref().to_path_buf();
        let inner = self.inner.clone();
        blocking(move || inner.backup_to(&dest)).await
    }

    /// Forces everything written so far to stable storage, whatever the
    /// [`Durability`] setting; under a non-journal setting, except
    /// deletions made while an optimization runs, which the engine writes
    /// only once it is over (see [`Durability::FlushEveryWrite`]).
    ///
    /// # Errors
    /// [`Error::Backend`] when the engine fails to flush.
    pub async fn flush(&self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let _w = lock(&inner.write_lock);
            inner.flush_locked()
        })
        .await
    }

    /// Closes the index: stops the periodic flusher, waits for a running
    /// optimization to finish, flushes, and releases the directory so that it
    /// can be opened again when this returns. Dropping the index also flushes
    /// and releases it, but without waiting for a background optimization
    /// (the directory stays locked until that finishes).
    ///
    /// # Errors
    /// [`Error::Backend`] when the final flush fails.
    pub async fn close(mut self) -> Result<()> {
        let flusher = self.flusher.take();
        let inner = self.inner.clone();
        let result = blocking(move || {
            if let Some(f) = flusher {
                f.stop();
            }
            let thread = lock(&inner.optimizer_thread).take();
            if let Some(t) = thread {
                // A panic in the optimizer thread was already recorded.
                let _ = t.join();
            }
            let _w = lock(&inner.write_lock);
            inner.flush_locked()
        })
        .await;
        // The last reference drops the engine shard, which releases the
        // directory lock. Requests still running on the blocking pool (from
        // cancelled futures) keep it until they finish.
        drop(self);
        result
    }
}

/// Stops the periodic flusher (waiting for a flush in progress). The engine
/// flushes when the last reference to it goes, which is here unless a
/// background optimization still runs: prefer [`EdgeIndex::close`] in async
/// code, which does that work on the blocking pool.
impl Drop for EdgeIndex {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
    }
}

impl Flusher {
    fn start(inner: &Arc<Inner>, period: Duration) -> Result<Self> {
        let (stop, rx) = mpsc::channel::<()>();
        // A weak reference: the flusher must not keep the shard (and its
        // directory lock) alive after the index is dropped.
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let thread = std::thread::Builder::new()
            .name("selfrag-edge-flush".into())
            .spawn(move || loop {
                match rx.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {
                        let Some(inner) = weak.upgrade() else { return };
                        if inner.dirty.load(Ordering::SeqCst) {
                            let _w = lock(&inner.write_lock);
                            if let Err(e) = inner.flush_locked() {
                                tracing::warn!(path = %inner.path.display(), error = %e, "periodic flush failed");
                            }
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| Error::backend(BACKEND, "cannot start the flusher thread", false, e))?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl Inner {
    fn open(path: PathBuf, spec: IndexSpec, config: EdgeIndexConfig) -> Result<Self> {
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::backend(BACKEND, format!("cannot create directory {}", path.display()), false, e))?;
        // Compare with the stored configuration before the engine loads
        // anything, to name the mismatch precisely.
        if let Some(stored) = EdgeConfig::load(&path) {
            let stored = stored.map_err(|e| Error::Incompatible {
                backend: BACKEND,
                message: format!("cannot read the index configuration in {}: {e}", path.display()),
            })?;
            check_compatible(&path, &spec, &stored)?;
        }
        let defaults = HnswIndexConfig::default();
        let mut engine_config = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParams::builder(spec.dimension(), engine_distance(spec.distance())).build(),
            )
            .hnsw_config(HnswIndexConfig {
                m: config.hnsw_m.unwrap_or(defaults.m),
                ef_construct: config.hnsw_ef_construct.unwrap_or(defaults.ef_construct),
                ..defaults
            })
            .optimizers(EdgeOptimizersConfig {
                indexing_threshold: config.indexing_threshold_kb,
                ..EdgeOptimizersConfig::default()
            })
            .build();
        engine_config.quantization_config = engine_quantization(config.quantization);
        let shard = EdgeShard::load(&path, Some(engine_config)).map_err(|e| open_error(&path, e))?;
        let collection = path.file_name().map(|n| n.to_string_lossy().into()).unwrap_or_else(|| "index".into());
        let mut inner = Inner {
            shard,
            spec,
            collection,
            path,
            config,
            write_lock: Mutex::new(()),
            optimize_lock: Mutex::new(()),
            optimizing: AtomicBool::new(false),
            optimizer_thread: Mutex::new(None),
            pending: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            optimizations: AtomicU64::new(0),
            last_optimize_error: Mutex::new(None),
            journal: None,
            replayed: 0,
        };
        // Before the journal is attached: this flush must not mark the
        // journal's records as flushed.
        inner.ensure_payload_indexes()?;
        // Read the journal under every setting: an index last opened with a
        // journal setting may hold acknowledged writes only there. The
        // engine's directory lock is held from here on.
        let (journal, pending) = Journal::open(&inner.path, inner.spec.dimension())?;
        inner.journal = Some(journal);
        if !pending.is_empty() {
            let started = std::time::Instant::now();
            let n = pending.len();
            let _w = lock(&inner.write_lock);
            for record in pending {
                let seq = record.seq;
                inner.shard.update(record.op.into_engine()).map_err(|e| Error::Incompatible {
                    backend: BACKEND,
                    message: format!("{}: journal record {seq} cannot be replayed: {e}", inner.path.display()),
                })?;
            }
            inner.dirty.store(true, Ordering::SeqCst);
            // Flushing records the replay in the state file and empties the
            // journal, so the next open does not replay it again (doing so
            // would change nothing, only take time).
            inner.flush_locked()?;
            drop(_w);
            inner.replayed = n as u64;
            tracing::info!(path = %inner.path.display(), records = n, elapsed = ?started.elapsed(), "replayed the journal");
        }
        if !inner.config.durability.journaled() {
            inner.journal = None;
        }
        Ok(inner)
    }

    /// Creates the payload indexes; the engine skips those that exist.
    fn ensure_payload_indexes(&self) -> Result<()> {
        let _w = lock(&self.write_lock);
        for (key, params) in payload_indexes() {
            let op = UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: crate::filter::field_path_str(key)?,
                field_schema: Some(PayloadFieldSchema::FieldParams(params)),
            }));
            self.shard.update(op).map_err(|e| engine_err("creating a payload index", e))?;
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.flush_locked()
    }

    /// Flushes; the caller holds `write_lock`.
    ///
    /// The engine's `flush()` also takes the segment list lock with
    /// `try_read` and panics when it is taken for writing, which a running
    /// optimization does for a few milliseconds when it swaps segments. The
    /// panic happens before anything is written, so it is caught and the
    /// flush retried.
    fn flush_locked(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.flush_engine();
        record_activity(names::EDGE_FLUSHES, names::EDGE_FLUSH_DURATION, started, result.is_ok());
        result
    }

    fn flush_engine(&self) -> Result<()> {
        // While an optimization runs, the engine keeps the deletions made
        // in the segments it rebuilds in memory (its proxy segments); a
        // flush writes the other changes but not those, and when the
        // optimization ends the new segment holds them in memory until the
        // next flush. So the journal may only be emptied by a flush that no
        // optimization overlaps: holding the optimization lock keeps one
        // from starting, and when it is taken (an optimization runs, or a
        // hot backup of this thread holds it) the journal keeps its records
        // until the flush that `run_optimize` asks for when it ends.
        let no_optimization = match self.optimize_lock.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        self.dirty.store(false, Ordering::SeqCst);
        let mut attempts = 0;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.shard.flush())) {
                Ok(()) => {
                    // Everything journaled so far is in the flushed engine
                    // files now (the write lock keeps appends out).
                    if let (Some(j), Some(_)) = (&self.journal, &no_optimization) {
                        if let Err(e) = j.flushed(j.last_appended()) {
                            self.dirty.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                    return Ok(());
                }
                Err(_) if attempts < 500 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    self.dirty.store(true, Ordering::SeqCst);
                    return Err(Error::Backend {
                        backend: BACKEND,
                        message: "flush failed: the segment lock stayed busy for 5 s".into(),
                        retryable: true,
                        source: None,
                    });
                }
            }
        }
    }

    /// Applies one engine write of `points` points, then flushes or
    /// schedules an optimization as configured.
    ///
    /// Under a journal setting the record is appended right after the
    /// engine applied the operation, under the write lock, so the journal's
    /// order is the engine's; the `fdatasync` (group commit) happens after
    /// the lock is released, so concurrent calls share it.
    fn write(self: &Arc<Self>, what: &str, op: JournalOp, points: u64) -> Result<()> {
        let record = match &self.journal {
            Some(_) => Some(op.encode(self.spec.dimension())?),
            None => None,
        };
        let seq = {
            let _w = lock(&self.write_lock);
            self.shard.update(op.into_engine()).map_err(|e| engine_err(what, e))?;
            self.dirty.store(true, Ordering::SeqCst);
            if self.config.durability == Durability::FlushEveryWrite {
                self.flush_locked()?;
            }
            match (&self.journal, record) {
                (Some(j), Some(r)) => Some(j.append(r).map_err(|e| match e {
                    Error::Backend { message, source, .. } => Error::Unavailable {
                        backend: BACKEND,
                        message: format!("{message}; the write is applied in memory but may not survive a crash"),
                        maybe_applied: true,
                        source,
                    },
                    other => other,
                })?),
                _ => None,
            }
        };
        if let (Some(j), Some(seq)) = (&self.journal, seq) {
            if self.config.durability == Durability::Journal {
                j.wait_durable(seq)?;
            }
        }
        if let Some(after) = self.config.optimize_after_points {
            let pending = self.pending.fetch_add(points, Ordering::SeqCst) + points;
            if pending >= after {
                self.spawn_optimizer();
            }
        }
        Ok(())
    }

    /// Starts a background optimization unless one is running.
    fn spawn_optimizer(self: &Arc<Self>) {
        if self.optimizing.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new().name("selfrag-edge-optimize".into()).spawn(move || {
            loop {
                if let Err(e) = inner.run_optimize() {
                    tracing::warn!(path = %inner.path.display(), error = %e, "background optimization failed");
                    *lock(&inner.last_optimize_error) = Some(e.to_string());
                    break;
                }
                // Writes that arrived during a long build may call for
                // another round.
                let again =
                    inner.config.optimize_after_points.is_some_and(|a| inner.pending.load(Ordering::SeqCst) >= a);
                if !again {
                    break;
                }
            }
            inner.optimizing.store(false, Ordering::SeqCst);
        });
        match spawned {
            Ok(handle) => {
                // Keep the handle for `close`; an older one has finished (the
                // flag was clear), joining it is instant.
                if let Some(old) = lock(&self.optimizer_thread).replace(handle) {
                    let _ = old.join();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the optimizer thread");
                self.optimizing.store(false, Ordering::SeqCst);
            }
        }
    }

    fn backup_to(&self, dest: &Path) -> Result<HotBackup> {
        let io = |what: String, e: std::io::Error| Error::backend(BACKEND, what, false, e);
        let started = Instant::now();
        match std::fs::read_dir(dest) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::Conflict { what: "backup target", id: dest.display().to_string() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot read {}", dest.display()), e)),
        }
        let tmp = dest.with_file_name(format!(
            ".{}.partial",
            dest.file_name().map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned())
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = self.hot_copy(&tmp, started);
        let finish = |_: &HotBackup| -> std::io::Result<u64> {
            hot::sync_tree(&tmp)?;
            let disk = hot::disk_usage(&tmp)?;
            if dest.exists() {
                std::fs::remove_dir(dest)?;
            }
            std::fs::rename(&tmp, dest)?;
            if let Some(parent) = dest.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(disk)
        };
        let done = result.and_then(|mut backup| match finish(&backup) {
            Ok(disk) => {
                backup.disk_bytes = disk;
                backup.total = started.elapsed();
                Ok(backup)
            }
            Err(e) => Err(io(format!("cannot complete the backup in {}", dest.display()), e)),
        });
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        done
    }

    /// The copy of [`Self::backup_to`] into `tmp` (see the `hot` module).
    fn hot_copy(&self, tmp: &Path, started: Instant) -> Result<HotBackup> {
        let io = |what: String, e: std::io::Error| Error::backend(BACKEND, what, false, e);
        // No optimization may replace segments until the copy is complete;
        // a running one is waited for (writes go on meanwhile).
        let _o = lock(&self.optimize_lock);
        let mut later = Vec::new();
        let mut bytes = 0;
        let (seq, replay, hold, held_bytes) = {
            let _w = lock(&self.write_lock);
            let held = Instant::now();
            let now = std::time::SystemTime::now();
            // With a journal, the files as they are now plus the journal's
            // unflushed records are what a crash now would leave, and what
            // an open repairs; without one, only a flushed engine is whole.
            let (seq, replay) = match &self.journal {
                Some(j) => (j.last_appended(), j.last_appended().saturating_sub(j.last_flushed())),
                None => {
                    self.dirty.store(true, Ordering::SeqCst);
                    self.flush_locked()?;
                    (0, 0)
                }
            };
            let (dirs, files) =
                hot::walk(&self.path).map_err(|e| io(format!("cannot list {}", self.path.display()), e))?;
            std::fs::create_dir_all(tmp).map_err(|e| io(format!("cannot create {}", tmp.display()), e))?;
            for d in &dirs {
                let to = tmp.join(d);
                std::fs::create_dir_all(&to).map_err(|e| io(format!("cannot create {}", to.display()), e))?;
            }
            let mut read = 0;
            for f in files {
                if hot::is_sealed(&f.rel) && f.stamp.settled_before(now) {
                    later.push(f);
                    continue;
                }
                let (from, to) = (self.path.join(&f.rel), tmp.join(&f.rel));
                bytes += f.stamp.len();
                read += hot::copy_sparse(&from, &to, f.stamp.len())
                    .map_err(|e| io(format!("cannot copy {} to {}", from.display(), to.display()), e))?;
            }
            (seq, replay, held.elapsed(), read)
        };
        // Writes go on; the sealed files are copied now and checked to be
        // the ones listed during the hold.
        let mut later_bytes = 0;
        for f in later {
            let (from, to) = (self.path.join(&f.rel), tmp.join(&f.rel));
            bytes += f.stamp.len();
            later_bytes += hot::copy_sparse(&from, &to, f.stamp.len())
                .map_err(|e| io(format!("cannot copy {} to {}", from.display(), to.display()), e))?;
            let now = std::fs::symlink_metadata(&from).map(|m| hot::Stamp::of(&m));
            if now.as_ref().ok() != Some(&f.stamp) {
                return Err(Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "{} changed while it was copied after the hold (the engine rewrote a file this \
                         version treats as immutable); the backup is incomplete, retry it",
                        from.display()
                    ),
                    retryable: true,
                    source: None,
                });
            }
        }
        Ok(HotBackup { seq, hold, bytes, held_bytes, later_bytes, replay, disk_bytes: 0, total: started.elapsed() })
    }

    /// One optimization, never concurrent with another.
    fn run_optimize(&self) -> Result<bool> {
        let o = lock(&self.optimize_lock);
        self.pending.store(0, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = self.shard.optimize();
        drop(o);
        self.optimizations.fetch_add(1, Ordering::SeqCst);
        record_activity(names::EDGE_OPTIMIZER_RUNS, names::EDGE_OPTIMIZER_DURATION, started, result.is_ok());
        tracing::debug!(path = %self.path.display(), elapsed = ?started.elapsed(), ok = result.is_ok(), "optimization finished");
        // The new segments hold the deletions made during the optimization
        // in memory only (see `flush_engine`): the next flush writes them.
        // Under `FlushEveryWrite` no flusher runs, so flush at once.
        self.dirty.store(true, Ordering::SeqCst);
        let changed = result.map_err(|e| engine_err("optimization", e))?;
        if self.config.durability == Durability::FlushEveryWrite {
            let _w = lock(&self.write_lock);
            self.flush_locked()?;
        }
        Ok(changed)
    }

    fn stats(&self) -> EdgeStats {
        let info = self.shard.info();
        let mut payload_indexes: Vec<String> = info.payload_schema.keys().map(ToString::to_string).collect();
        payload_indexes.sort();
        EdgeStats {
            points: info.points_count,
            indexed_vectors: info.indexed_vectors_count,
            segments: info.segments_count,
            payload_indexes,
            optimizing: self.optimizing.load(Ordering::SeqCst),
            optimizations: self.optimizations.load(Ordering::SeqCst),
            last_optimize_error: lock(&self.last_optimize_error).clone(),
        }
    }
}

/// The engine's form of [`Quantization`].
fn engine_quantization(q: Quantization) -> Option<QuantizationConfig> {
    match q {
        Quantization::None => None,
        Quantization::Int8 { .. } => {
            Some(ScalarQuantizationConfig { r#type: ScalarType::Int8, quantile: None, always_ram: Some(true) }.into())
        }
    }
}

/// Search parameters from the index settings.
fn search_params(config: &EdgeIndexConfig) -> SearchParams {
    let acorn = config
        .acorn
        .then(|| AcornSearchParams { enable: true, max_selectivity: config.acorn_max_selectivity.map(Into::into) });
    let quantization = match config.quantization {
        Quantization::None => None,
        Quantization::Int8 { oversampling } => {
            Some(QuantizationSearchParams { ignore: false, rescore: Some(true), oversampling: Some(oversampling) })
        }
    };
    SearchParams { hnsw_ef: config.search_ef, acorn, quantization, ..SearchParams::default() }
}

fn check_compatible(path: &Path, spec: &IndexSpec, stored: &EdgeConfig) -> Result<()> {
    let Some(v) = stored.vectors.get(DEFAULT_VECTOR_NAME) else {
        return Err(Error::Incompatible {
            backend: BACKEND,
            message: format!("{} holds an index without the default dense vector", path.display()),
        });
    };
    let wanted = engine_distance(spec.distance());
    if v.size != spec.dimension() || v.distance != wanted {
        return Err(Error::Incompatible {
            backend: BACKEND,
            message: format!(
                "{} holds vectors of dimension {} compared by {:?}, not dimension {} by {:?}",
                path.display(),
                v.size,
                v.distance,
                spec.dimension(),
                wanted
            ),
        });
    }
    Ok(())
}

fn open_error(path: &Path, e: OperationError) -> Error {
    let text = e.to_string();
    if text.contains("WouldBlock") || text.contains("Resource temporarily unavailable") {
        Error::Unavailable {
            backend: BACKEND,
            message: format!("{} is already open (by this or another process); close it first", path.display()),
            maybe_applied: false,
            source: Some(Box::new(e)),
        }
    } else if text.contains("incompatible") {
        Error::Incompatible { backend: BACKEND, message: format!("{}: {text}", path.display()) }
    } else {
        engine_err("opening the index", e)
    }
}

fn record_chunk(tenant: &Tenant, r: Record) -> Result<Option<ChunkRecord>> {
    let Some(payload) = r.payload else { return Ok(None) };
    to_record(tenant, &payload.0)
}

/// A stored payload as a chunk record, `None` when it belongs to another
/// tenant (a defence in depth: every read is already filtered by tenant).
fn to_record(tenant: &Tenant, payload: &Map<String, Value>) -> Result<Option<ChunkRecord>> {
    if payload.get(keys::TENANT).and_then(Value::as_str) != Some(tenant.as_str()) {
        return Ok(None);
    }
    let (id, payload) = ChunkPayload::from_json(BACKEND, payload)?;
    Ok(Some(ChunkRecord { id, payload }))
}

/// The span attributes of every call: no server, and the directory's name as
/// the collection.
const OBS: OpMeta = OpMeta::new(system::QDRANT_EDGE);

/// Counts one optimizer run or flush (`counter`, label `outcome`: `ok` or
/// `error`) and records its duration (`histogram`, seconds).
fn record_activity(counter: &'static str, histogram: &'static str, started: std::time::Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(counter, "db.system.name" => system::QDRANT_EDGE, "outcome" => outcome).increment(1);
    metrics::histogram!(histogram, "db.system.name" => system::QDRANT_EDGE, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    fn spec(&self) -> &IndexSpec {
        &self.inner.spec
    }

    async fn upsert(&self, tenant: &Tenant, chunks: Vec<Chunk>) -> Result<()> {
        OBS.run(self.inner.collection.clone(), "upsert", async move {
            validate_chunks(&self.inner.spec, &chunks)?;
            if chunks.is_empty() {
                return Ok(());
            }
            let points: Vec<_> = chunks
                .into_iter()
                .map(|c| JournalPoint {
                    id: point_id(tenant, c.id),
                    payload: c.payload.to_json(tenant, c.id),
                    vector: c.vector,
                })
                .collect();
            let n = points.len() as u64;
            let op = JournalOp::Upsert(points);
            let inner = self.inner.clone();
            blocking(move || inner.write("upsert", op, n)).await
        })
        .await
    }

    async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>> {
        OBS.run(self.inner.collection.clone(), "search", async move {
            request.validate(&self.inner.spec)?;
            let filter = tenant_filter(tenant, request.filter.as_ref())?;
            let query = QueryRequest {
                prefetches: Vec::new(),
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::default_dense(
                    request.vector.clone(),
                )))),
                filter: Some(filter),
                // Applied below in the core convention (`score >= threshold`):
                // the engine compares strictly, and as a distance for Euclid and
                // Manhattan. Filtering the best-first top `limit` afterwards gives
                // the same hits as filtering before the cut.
                score_threshold: None,
                limit: request.limit,
                offset: 0,
                params: Some(search_params(&self.inner.config)),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            };
            let inner = self.inner.clone();
            let tenant = tenant.clone();
            let threshold = request.score_threshold;
            blocking(move || {
                let distance = inner.spec.distance();
                let points = inner.shard.query(query).map_err(|e| engine_err("search", e))?;
                let mut hits = Vec::with_capacity(points.len());
                for p in points {
                    let score = core_score(distance, p.score);
                    if threshold.is_some_and(|t| score < t) {
                        continue;
                    }
                    let Some(payload) = p.payload else { continue };
                    if let Some(r) = to_record(&tenant, &payload.0)? {
                        hits.push(ScoredChunk { id: r.id, score, payload: r.payload });
                    }
                }
                // The engine returns best first; ties are ordered by id so that
                // results are deterministic, like the reference backend.
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
                Ok(hits)
            })
            .await
        })
        .await
    }

    async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        OBS.run(self.inner.collection.clone(), "get", async move {
            validate_ids(ids)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let point_ids: Vec<PointId> = ids.iter().map(|id| PointId::Uuid(point_id(tenant, *id))).collect();
            let wanted = ids.to_vec();
            let inner = self.inner.clone();
            let tenant = tenant.clone();
            blocking(move || {
                let records = inner
                    .shard
                    .retrieve(&point_ids, Some(WithPayloadInterface::Bool(true)), Some(WithVector::Bool(false)))
                    .map_err(|e| engine_err("get", e))?;
                let mut found = HashMap::with_capacity(records.len());
                for r in records {
                    if let Some(c) = record_chunk(&tenant, r)? {
                        found.insert(c.id, c);
                    }
                }
                // In the order asked for, repeating repeated ids like the
                // reference backend.
                Ok(wanted.iter().filter_map(|id| found.get(id).cloned()).collect())
            })
            .await
        })
        .await
    }

    async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>> {
        OBS.run(self.inner.collection.clone(), "document_chunks", async move {
            validate_document_id(document_id)?;
            let filter = tenant_filter(tenant, Some(&Filter::eq(Field::DocumentId, document_id)))?;
            let inner = self.inner.clone();
            let tenant = tenant.clone();
            blocking(move || {
                let mut out = Vec::new();
                let mut offset = None;
                loop {
                    let request = ScrollRequest {
                        offset,
                        limit: Some(SCROLL_PAGE),
                        filter: Some(filter.clone()),
                        with_payload: Some(WithPayloadInterface::Bool(true)),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    };
                    let (records, next) = inner.shard.scroll(request).map_err(|e| engine_err("document_chunks", e))?;
                    for r in records {
                        if let Some(c) = record_chunk(&tenant, r)? {
                            out.push(c);
                        }
                    }
                    match next {
                        Some(n) => offset = Some(n),
                        None => break,
                    }
                }
                out.sort_by(|a, b| a.payload.chunk_index.cmp(&b.payload.chunk_index).then(a.id.cmp(&b.id)));
                Ok(out)
            })
            .await
        })
        .await
    }

    async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()> {
        OBS.run(self.inner.collection.clone(), "delete", async move {
            validate_ids(ids)?;
            if ids.is_empty() {
                return Ok(());
            }
            // Point ids embed the tenant (see `point_id`), so deleting by id
            // cannot reach another tenant's points.
            let point_ids: Vec<_> = ids.iter().map(|id| point_id(tenant, *id)).collect();
            let n = point_ids.len() as u64;
            let op = JournalOp::Delete(point_ids);
            let inner = self.inner.clone();
            blocking(move || inner.write("delete", op, n)).await
        })
        .await
    }

    async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()> {
        OBS.run(self.inner.collection.clone(), "delete_document", async move {
            validate_document_id(document_id)?;
            self.delete_by_filter(tenant, &Filter::eq(Field::DocumentId, document_id)).await
        })
        .await
    }

    async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()> {
        OBS.run(self.inner.collection.clone(), "delete_by_filter", async move {
            let filter = tenant_filter(tenant, Some(filter))?;
            let op = JournalOp::DeleteByFilter(filter);
            let inner = self.inner.clone();
            // The number of deleted points is unknown; count the call as one.
            blocking(move || inner.write("delete_by_filter", op, 1)).await
        })
        .await
    }

    async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64> {
        OBS.run(self.inner.collection.clone(), "count", async move {
            let filter = tenant_filter(tenant, filter)?;
            let inner = self.inner.clone();
            blocking(move || {
                let n = inner
                    .shard
                    .count(CountRequest { filter: Some(filter), exact: true })
                    .map_err(|e| engine_err("count", e))?;
                Ok(n as u64)
            })
            .await
        })
        .await
    }

    async fn scroll(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        from: Option<ScrollCursor>,
        limit: usize,
    ) -> Result<ChunkPage> {
        OBS.run(self.inner.collection.clone(), "scroll", async move {
            validate_scroll(filter, limit)?;
            let filter = tenant_filter(tenant, filter)?;
            let inner = self.inner.clone();
            let tenant = tenant.clone();
            blocking(move || {
                let request = ScrollRequest {
                    offset: from.map(|c| PointId::Uuid(c.point())),
                    limit: Some(limit),
                    filter: Some(filter),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                };
                let (records, next) = inner.shard.scroll(request).map_err(|e| engine_err("scroll", e))?;
                let mut chunks = Vec::with_capacity(records.len());
                for r in records {
                    chunks.extend(record_chunk(&tenant, r)?);
                }
                let next = match next {
                    None => None,
                    Some(PointId::Uuid(id)) => Some(ScrollCursor::from_point(id)),
                    Some(other) => {
                        return Err(Error::Incompatible {
                            backend: BACKEND,
                            message: format!("stored point id {other:?} is not a UUID: not written by this library"),
                        })
                    }
                };
                Ok(ChunkPage { chunks, next })
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_core_convention() {
        assert_eq!(core_score(Distance::Cosine, 0.5), 0.5);
        assert_eq!(core_score(Distance::Dot, -3.0), -3.0);
        assert_eq!(core_score(Distance::Euclid, 5.0), -5.0);
        assert_eq!(core_score(Distance::Manhattan, 7.0), -7.0);
    }

    #[test]
    fn payload_index_layout() {
        let idx = payload_indexes();
        let names: Vec<_> = idx.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["tenant", "document_type", "tags", "source", "document_id", "chunk_index"]);
        match &idx[0].1 {
            PayloadSchemaParams::Keyword(k) => assert_eq!((k.is_tenant, k.enable_hnsw), (Some(true), Some(true))),
            other => panic!("{other:?}"),
        }
        match &idx[4].1 {
            PayloadSchemaParams::Keyword(k) => assert_eq!(k.enable_hnsw, Some(false)),
            other => panic!("{other:?}"),
        }
        match &idx[5].1 {
            PayloadSchemaParams::Integer(i) => {
                assert_eq!((i.lookup, i.range, i.enable_hnsw), (Some(true), Some(true), Some(false)));
            }
            other => panic!("{other:?}"),
        }
    }
}
