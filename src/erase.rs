//! Erasing and exporting one user across every store of a [`Storage`]
//! (GDPR articles 17 and 20). See `docs/erasure.md`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use selfrag_core::memory::MAX_PURGE_BATCH;
use selfrag_core::{
    ChunkId, Error, ErrorKind, Filter, MemoryQuery, Result, ScrollCursor, SessionStore, Tenant, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::Storage;

/// Which vectors hold a user's chunks: a tenant, and optionally a filter
/// within it (e.g. `extra.user_id == <uuid>` in a shared tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorScope {
    /// The tenant.
    pub tenant: Tenant,
    /// The filter within the tenant; `None` means every chunk of the tenant
    /// (for a tenant of the user's own, e.g. [`Tenant::from`] the user).
    pub filter: Option<Filter>,
}

/// What [`Storage::erase_user`] and [`Storage::export_user`] cover besides
/// what is keyed by the user id (memory logs, sessions, rate-limit state,
/// the user row): the vectors, which only the application can name.
///
/// It is written to the erasure ledger as a JSON array of
/// `{"tenant": ..., "filter": ...}`, so a restore can erase the same
/// vectors again; tenant names should therefore be opaque (no personal
/// data). An empty plan erases no vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErasePlan {
    vectors: Vec<VectorScope>,
}

impl ErasePlan {
    /// Most vector scopes in one plan.
    pub const MAX_SCOPES: usize = 64;

    /// A plan that covers no vectors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the chunks of `tenant` passing `filter` (every chunk of the
    /// tenant when `None`).
    pub fn with_vectors(mut self, tenant: Tenant, filter: Option<Filter>) -> Self {
        self.vectors.push(VectorScope { tenant, filter });
        self
    }

    /// The vector scopes, in the order they are erased and exported.
    pub fn vectors(&self) -> &[VectorScope] {
        &self.vectors
    }

    /// Checks the plan: at most [`ErasePlan::MAX_SCOPES`] scopes, each
    /// filter valid.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `plan.vectors` or
    /// `plan.vectors[i].<field>`.
    pub fn validate(&self) -> Result<()> {
        if self.vectors.len() > Self::MAX_SCOPES {
            return Err(Error::invalid(
                "plan.vectors",
                format!("at most {} scopes, got {}", Self::MAX_SCOPES, self.vectors.len()),
            ));
        }
        for (i, scope) in self.vectors.iter().enumerate() {
            if let Some(f) = &scope.filter {
                f.validate().map_err(|e| match e {
                    Error::InvalidInput { field, reason } => {
                        Error::invalid(format!("plan.vectors[{i}].{field}"), reason)
                    }
                    other => other,
                })?;
            }
        }
        Ok(())
    }

    /// The plan as the ledger stores it: a JSON array.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Array(Vec::new()))
    }

    /// Reads a plan back from [`ErasePlan::to_json`] (e.g. a ledger
    /// record's `vectors`), and checks it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`plan.vectors...`) for JSON of another
    /// shape or an invalid plan.
    pub fn from_json(value: &Value) -> Result<Self> {
        let plan: Self = Self::deserialize(value)
            .map_err(|e| Error::invalid("plan.vectors", format!("is not an erase plan: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }
}

/// One step of [`Storage::erase_user`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EraseStep {
    /// Checking the plan (before anything is deleted).
    Plan,
    /// The vectors the plan names.
    Vectors,
    /// Rate-limit state of every scope.
    RateLimits,
    /// Sessions, on every session backend.
    Sessions,
    /// Memory logs, in batches.
    MemoryLogs,
    /// The user row.
    User,
    /// The erasure ledger record, written last: it means "complete".
    Ledger,
}

impl EraseStep {
    /// The steps that delete or record, in order.
    pub const ALL: [EraseStep; 6] = [
        EraseStep::Vectors,
        EraseStep::RateLimits,
        EraseStep::Sessions,
        EraseStep::MemoryLogs,
        EraseStep::User,
        EraseStep::Ledger,
    ];

    /// Its name, e.g. `memory_logs`.
    pub fn name(self) -> &'static str {
        match self {
            EraseStep::Plan => "plan",
            EraseStep::Vectors => "vectors",
            EraseStep::RateLimits => "rate_limits",
            EraseStep::Sessions => "sessions",
            EraseStep::MemoryLogs => "memory_logs",
            EraseStep::User => "user",
            EraseStep::Ledger => "ledger",
        }
    }
}

impl fmt::Display for EraseStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Progress of a long erase or export, given to a [`ProgressFn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The step ([`EraseStep::name`]) or the record kind being exported
    /// (`memory_log`, `session`, `chunk`).
    pub step: &'static str,
    /// How many items the step has handled so far.
    pub count: u64,
    /// Whether the step is complete.
    pub finished: bool,
}

/// A progress callback (e.g. printing to stderr). Called after each batch
/// and at the end of each step; it must return quickly.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// How [`Storage::erase_user_with`] runs.
#[derive(Clone)]
pub struct EraseOptions {
    /// Count what would be erased, delete nothing, record nothing.
    pub dry_run: bool,
    /// Memory logs deleted per statement (default 5,000; at most
    /// [`MAX_PURGE_BATCH`]).
    pub batch: u32,
    /// Called as the erasure progresses.
    pub progress: Option<ProgressFn>,
}

impl Default for EraseOptions {
    fn default() -> Self {
        Self { dry_run: false, batch: 5_000, progress: None }
    }
}

impl fmt::Debug for EraseOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EraseOptions")
            .field("dry_run", &self.dry_run)
            .field("batch", &self.batch)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Chunks erased (or, in a dry run, that would be) in one [`VectorScope`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorCount {
    /// The scope's tenant.
    pub tenant: Tenant,
    /// The scope's filter.
    pub filter: Option<Filter>,
    /// Chunks that passed the scope when the step ran (counted just before
    /// deleting).
    pub chunks: u64,
}

/// Sessions ended on one session backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionCount {
    /// The backend, e.g. `redis`, `postgres`, `local`.
    pub backend: &'static str,
    /// Live sessions ended (in a dry run: live sessions found, at most
    /// 1,000 per backend, the listing bound).
    pub sessions: u64,
}

/// What [`Storage::erase_user`] did (or, in a dry run, would do), per store.
/// A step that had already been done by an earlier call counts 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EraseReport {
    /// The user.
    pub user: UserId,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Chunks per vector scope of the plan.
    pub vectors: Vec<VectorCount>,
    /// Rate-limit entries deleted (Redis keys); `None` in a dry run, which
    /// cannot count them without scanning.
    pub rate_limit_keys: Option<u64>,
    /// Sessions per session backend.
    pub sessions: Vec<SessionCount>,
    /// Memory logs deleted.
    pub memory_logs: u64,
    /// Whether the user row existed (and was deleted).
    pub user_row: bool,
    /// Whether this call wrote the ledger record (`false`: already
    /// recorded, or a dry run).
    pub ledger_recorded: bool,
    /// The ledger record's `seq`, once the user is recorded.
    pub ledger_seq: Option<u64>,
}

impl EraseReport {
    fn new(user: UserId, dry_run: bool) -> Self {
        Self {
            user,
            dry_run,
            vectors: Vec::new(),
            rate_limit_keys: None,
            sessions: Vec::new(),
            memory_logs: 0,
            user_row: false,
            ledger_recorded: false,
            ledger_seq: None,
        }
    }
}

/// An erasure that stopped at a step. The steps in `done` completed, the
/// step `failed` may be partly done, the steps in `pending` did not start.
/// Every step is idempotent: calling [`Storage::erase_user`] again with the
/// same plan completes the erasure. The ledger is written only by the last
/// step, so a user with an `EraseError` is never recorded as erased.
#[derive(Debug)]
pub struct EraseError {
    /// The user.
    pub user: UserId,
    /// Steps completed, in order.
    pub done: Vec<EraseStep>,
    /// The step that failed ([`EraseStep::Plan`]: nothing was deleted).
    pub failed: EraseStep,
    /// Steps not started, in order.
    pub pending: Vec<EraseStep>,
    /// What the completed steps did.
    pub partial: Box<EraseReport>,
    /// Why the step failed.
    pub source: Error,
}

impl EraseError {
    /// The kind of the underlying error.
    pub fn kind(&self) -> ErrorKind {
        self.source.kind()
    }

    /// Whether calling again may succeed (the underlying error is
    /// retryable).
    pub fn is_retryable(&self) -> bool {
        self.source.is_retryable()
    }
}

fn names(steps: &[EraseStep]) -> String {
    if steps.is_empty() {
        return "none".into();
    }
    steps.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for EraseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "erasing user {}: step `{}` failed: {}; done: {}; not started: {}",
            self.user,
            self.failed,
            self.source,
            names(&self.done),
            names(&self.pending)
        )?;
        if self.failed != EraseStep::Plan {
            f.write_str(" (erase again to complete)")?;
        }
        Ok(())
    }
}

impl std::error::Error for EraseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What [`Storage::export_user`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// The user.
    pub user: UserId,
    /// Whether the user row exists.
    pub user_exists: bool,
    /// `memory_log` lines.
    pub memory_logs: u64,
    /// `session` lines, over every session backend.
    pub sessions: u64,
    /// `chunk` lines (each chunk once, even when several scopes hold it).
    pub chunks: u64,
    /// Every line, the `user` line included.
    pub lines: u64,
}

/// Chunks per [`VectorIndex::scroll`](selfrag_core::VectorIndex::scroll)
/// page in exports.
const EXPORT_PAGE: usize = 256;

fn progress(options: Option<&ProgressFn>, step: &'static str, count: u64, finished: bool) {
    if let Some(p) = options {
        p(&ProgressEvent { step, count, finished });
    }
}

fn write_line(out: &mut impl std::io::Write, value: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| Error::backend("export", format!("writing the export failed: {e}"), false, e))
}

fn tagged(kind: &str, value: impl Serialize, extra: &[(&str, Value)]) -> Result<Value> {
    let mut object = match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
        Err(e) => return Err(Error::backend("export", format!("encoding a {kind} failed: {e}"), false, e)),
    };
    let mut out = Map::with_capacity(object.len() + 1 + extra.len());
    out.insert("kind".into(), Value::String(kind.into()));
    for (k, v) in extra {
        out.insert((*k).into(), v.clone());
    }
    out.append(&mut object);
    Ok(Value::Object(out))
}

impl Storage {
    /// Every session backend, named: the one serving
    /// [`sessions`](Storage::sessions), then the users' own backend when it
    /// is another one ([`user_sessions`](Storage::user_sessions)).
    pub fn session_backends(&self) -> Vec<(&'static str, Arc<dyn SessionStore>)> {
        let mut out = vec![(self.backends.sessions, self.sessions.clone())];
        if let Some(s) = &self.user_sessions {
            out.push((self.backends.memory, s.clone()));
        }
        out
    }

    /// Erases `user` from every store, in this order: the vectors `plan`
    /// names, rate-limit state of every scope, sessions on every session
    /// backend, memory logs (in batches), the user row, and last the
    /// erasure ledger record (which means "complete"). Nothing of another
    /// user is touched. See `docs/erasure.md`.
    ///
    /// Every step is idempotent, so the call is resumable: after an
    /// [`EraseError`], calling again with the same plan completes the
    /// erasure; after success, calling again deletes nothing more and
    /// keeps the first ledger record. A user that never existed is recorded
    /// too (a restore may bring back data of a user erased since).
    ///
    /// # Errors
    /// [`EraseError`] naming the steps done, the one that failed and those
    /// not started; an invalid plan fails at [`EraseStep::Plan`], before
    /// anything is deleted.
    pub async fn erase_user(&self, user: UserId, plan: &ErasePlan) -> std::result::Result<EraseReport, EraseError> {
        self.erase_user_with(user, plan, &EraseOptions::default()).await
    }

    /// What [`Storage::erase_user`] would erase, counted, with nothing
    /// deleted or recorded (rate-limit keys are not counted).
    ///
    /// # Errors
    /// As [`Storage::erase_user`].
    pub async fn erase_user_dry_run(
        &self,
        user: UserId,
        plan: &ErasePlan,
    ) -> std::result::Result<EraseReport, EraseError> {
        self.erase_user_with(user, plan, &EraseOptions { dry_run: true, ..EraseOptions::default() }).await
    }

    /// [`Storage::erase_user`] with options: a dry run, the batch size of
    /// memory-log deletes, a progress callback.
    ///
    /// # Errors
    /// As [`Storage::erase_user`]; an `options.batch` of 0 or above
    /// [`MAX_PURGE_BATCH`] fails at [`EraseStep::Plan`] (`batch`).
    pub async fn erase_user_with(
        &self,
        user: UserId,
        plan: &ErasePlan,
        options: &EraseOptions,
    ) -> std::result::Result<EraseReport, EraseError> {
        let mut report = EraseReport::new(user, options.dry_run);
        let fail = |report: EraseReport, done: Vec<EraseStep>, failed: EraseStep, source: Error| {
            let pending = EraseStep::ALL.iter().copied().filter(|s| *s != failed && !done.contains(s)).collect();
            EraseError { user, done, failed, pending, partial: Box::new(report), source }
        };
        let checked = plan.validate().and_then(|()| {
            if options.batch == 0 || options.batch > MAX_PURGE_BATCH {
                return Err(Error::invalid(
                    "batch",
                    format!("must be between 1 and {MAX_PURGE_BATCH}, got {}", options.batch),
                ));
            }
            Ok(())
        });
        if let Err(e) = checked {
            return Err(fail(report, Vec::new(), EraseStep::Plan, e));
        }
        let mut done = Vec::with_capacity(EraseStep::ALL.len());
        for step in EraseStep::ALL {
            if let Err(e) = self.erase_step(step, user, plan, options, &mut report).await {
                return Err(fail(report, done, step, e));
            }
            done.push(step);
        }
        Ok(report)
    }

    async fn erase_step(
        &self,
        step: EraseStep,
        user: UserId,
        plan: &ErasePlan,
        options: &EraseOptions,
        report: &mut EraseReport,
    ) -> Result<()> {
        let dry = options.dry_run;
        let cb = options.progress.as_ref();
        let name = step.name();
        match step {
            EraseStep::Plan => {}
            EraseStep::Vectors => {
                // Counted just before deleting: the report says what the
                // delete found (the trait's delete does not count).
                for scope in plan.vectors() {
                    let chunks = self.vectors.count(&scope.tenant, scope.filter.as_ref()).await?;
                    if !dry && chunks > 0 {
                        let all = Filter::All(Vec::new());
                        self.vectors.delete_by_filter(&scope.tenant, scope.filter.as_ref().unwrap_or(&all)).await?;
                    }
                    report.vectors.push(VectorCount {
                        tenant: scope.tenant.clone(),
                        filter: scope.filter.clone(),
                        chunks,
                    });
                    progress(cb, name, report.vectors.iter().map(|v| v.chunks).sum(), false);
                }
            }
            EraseStep::RateLimits => {
                if !dry {
                    report.rate_limit_keys = Some(self.rate_limiter.reset_user(user).await?);
                }
            }
            EraseStep::Sessions => {
                for (backend, store) in self.session_backends() {
                    let sessions =
                        if dry { store.list(user).await?.len() as u64 } else { store.revoke_all(user).await? };
                    report.sessions.push(SessionCount { backend, sessions });
                    progress(cb, name, report.sessions.iter().map(|s| s.sessions).sum(), false);
                }
            }
            EraseStep::MemoryLogs => {
                if dry {
                    let mut query = MemoryQuery::new().limit(MemoryQuery::MAX_LIMIT);
                    loop {
                        let page = self.memory.query(user, &query).await?;
                        report.memory_logs += page.logs.len() as u64;
                        progress(cb, name, report.memory_logs, false);
                        match page.next {
                            Some(c) => query = query.after(c),
                            None => break,
                        }
                    }
                } else {
                    loop {
                        let n = self.memory.purge_user_logs(user, options.batch).await?;
                        report.memory_logs += n;
                        progress(cb, name, report.memory_logs, false);
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            EraseStep::User => {
                report.user_row =
                    if dry { self.users.user_exists(user).await? } else { self.users.delete_user(user).await? };
            }
            EraseStep::Ledger => {
                if !dry {
                    report.ledger_recorded = self.erasures.record(user, plan.to_json()).await?;
                }
                report.ledger_seq = self.erasures.get(user).await?.map(|r| r.seq);
            }
        }
        let count = match step {
            EraseStep::Vectors => report.vectors.iter().map(|v| v.chunks).sum(),
            EraseStep::RateLimits => report.rate_limit_keys.unwrap_or(0),
            EraseStep::Sessions => report.sessions.iter().map(|s| s.sessions).sum(),
            EraseStep::MemoryLogs => report.memory_logs,
            EraseStep::User => u64::from(report.user_row),
            EraseStep::Plan | EraseStep::Ledger => u64::from(report.ledger_recorded),
        };
        progress(cb, name, count, true);
        Ok(())
    }

    /// Writes everything stored about `user` to `out` as JSON lines, one
    /// object per record with a `kind`:
    ///
    /// | kind | fields |
    /// | --- | --- |
    /// | `user` (first line) | `user_id`, `exists`, `erasure` (the ledger record, or `null`) |
    /// | `memory_log` | the log's fields (`id`, `user_id`, `timestamp`, `type`, `content`, `metadata`) |
    /// | `session` | `backend` and the session's fields |
    /// | `chunk` | `tenant`, `id`, `payload` (no vector) |
    ///
    /// Memory logs are read page by page through the query cursor and
    /// chunks through [`VectorIndex::scroll`](selfrag_core::VectorIndex::scroll),
    /// so a large user is never held in memory (only the ids of the chunks
    /// written, to write a chunk that several scopes hold once). Sessions
    /// come from every session backend (at most 1,000 live sessions per
    /// backend, the listing bound, which is above every default cap).
    /// `out` is not flushed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid plan (nothing written); a
    /// store's error, or [`Error::Backend`] (`export`) when writing fails:
    /// `out` then holds a truncated export.
    pub async fn export_user<W: std::io::Write>(
        &self,
        user: UserId,
        plan: &ErasePlan,
        out: &mut W,
    ) -> Result<ExportReport> {
        self.export_user_with(user, plan, out, None).await
    }

    /// [`Storage::export_user`] with a progress callback.
    ///
    /// # Errors
    /// As [`Storage::export_user`].
    pub async fn export_user_with<W: std::io::Write>(
        &self,
        user: UserId,
        plan: &ErasePlan,
        out: &mut W,
        progress_fn: Option<ProgressFn>,
    ) -> Result<ExportReport> {
        plan.validate()?;
        let cb = progress_fn.as_ref();
        let user_exists = self.users.user_exists(user).await?;
        let erasure = self.erasures.get(user).await?;
        let mut report = ExportReport { user, user_exists, memory_logs: 0, sessions: 0, chunks: 0, lines: 0 };
        write_line(out, &json!({"kind": "user", "user_id": user, "exists": user_exists, "erasure": erasure}))?;
        report.lines += 1;

        let mut query = MemoryQuery::new().limit(MemoryQuery::MAX_LIMIT);
        loop {
            let page = self.memory.query(user, &query).await?;
            for log in &page.logs {
                write_line(out, &tagged("memory_log", log, &[])?)?;
            }
            report.memory_logs += page.logs.len() as u64;
            progress(cb, "memory_log", report.memory_logs, false);
            match page.next {
                Some(c) => query = query.after(c),
                None => break,
            }
        }
        progress(cb, "memory_log", report.memory_logs, true);

        for (backend, store) in self.session_backends() {
            for session in store.list(user).await? {
                write_line(out, &tagged("session", &session, &[("backend", Value::String(backend.into()))])?)?;
                report.sessions += 1;
            }
        }
        progress(cb, "session", report.sessions, true);

        let mut seen: HashSet<(Tenant, ChunkId)> = HashSet::new();
        for scope in plan.vectors() {
            let mut from: Option<ScrollCursor> = None;
            loop {
                let page = self.vectors.scroll(&scope.tenant, scope.filter.as_ref(), from, EXPORT_PAGE).await?;
                for chunk in page.chunks {
                    if !seen.insert((scope.tenant.clone(), chunk.id)) {
                        continue;
                    }
                    let line =
                        json!({"kind": "chunk", "tenant": scope.tenant, "id": chunk.id, "payload": chunk.payload});
                    write_line(out, &line)?;
                    report.chunks += 1;
                }
                progress(cb, "chunk", report.chunks, false);
                match page.next {
                    Some(next) => from = Some(next),
                    None => break,
                }
            }
        }
        progress(cb, "chunk", report.chunks, true);
        report.lines += report.memory_logs + report.sessions + report.chunks;
        Ok(report)
    }
}
