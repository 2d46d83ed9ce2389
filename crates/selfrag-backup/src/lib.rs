//! Backups of selfrag storage: Postgres archives (`pg_dump`/`pg_restore`),
//! Qdrant collection snapshots, copies of embedded (`selfrag-edge`) index
//! directories, one checksummed manifest per run, verification, restore and
//! retention. A library, so services can trigger backups too; the
//! `selfrag` command-line tool is built on it.
//!
//! ```no_run
//! # async fn run() -> selfrag_core::Result<()> {
//! use selfrag_backup::{BackupRun, PostgresBackup, PostgresRestore, QdrantTarget};
//!
//! // Back up: one run directory per call of `begin`.
//! let mut run = BackupRun::begin("/var/backups/selfrag")?;
//! selfrag_backup::backup_postgres(&mut run, &PostgresBackup::new("postgres://app@db/app").schema("selfrag")).await?;
//! selfrag_backup::backup_qdrant(&mut run, &QdrantTarget::new("http://qdrant:6334", "chunks"), None).await?;
//! let done = run.finish()?; // writes manifest.json, renames the run into place
//!
//! // Check it (sizes, SHA-256, `pg_restore --list`), then restore into a new database.
//! selfrag_backup::verify_run(&done.dir, &Default::default(), false).await?;
//! let opts = PostgresRestore::new("postgres://app@db/postgres").database("app_restored").create_database(true);
//! selfrag_backup::restore_postgres(&done.dir, None, &opts).await?;
//!
//! // Retention: runs older than 30 days, never the newest complete one.
//! selfrag_backup::prune("/var/backups/selfrag", 30, time::OffsetDateTime::now_utc(), false)?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! ```text
//! <root>/
//!   20250630T020000Z/              one run, named by its UTC start time (`-2`, `-3` on collisions)
//!     manifest.json                written last
//!     postgres.dump                pg_dump --format=custom (compressed)
//!     postgres-memory_logs.dump    a table backup (--table)
//!     qdrant-chunks.snapshot       a Qdrant collection snapshot
//!     edge/...                     a copy of an embedded index directory
//!   20250701T020000Z.partial/      a run in progress, or one that crashed: never a backup
//! ```
//! [`BackupRun::begin`] creates `<name>.partial/`; `backup_postgres`,
//! `backup_qdrant` and `backup_edge` each write their files under a
//! temporary name (`.<file>.partial`), fsync, check and hash them, and rename
//! them into place; [`BackupRun::finish`] writes `manifest.json` atomically
//! (temporary name, fsync, rename) and renames the directory to `<name>/`. A
//! crash at any point leaves a `.partial` name, which listing, verify,
//! restore and retention never take for a good backup.
//!
//! # Manifest
//! [`Manifest`] (JSON, format [`MANIFEST_FORMAT`]): run name, start and end
//! time, selfrag version, and per [`Entry`]: kind, name, files (relative
//! path, size, SHA-256), duration, and for Postgres the database, schema,
//! expected tables, server version (`server_version` and
//! `server_version_num`) and `pg_dump --version`; for Qdrant the collection,
//! snapshot name, server version and the server's checksum; for an
//! embedded index its source directory. Every restore reads the manifest and
//! checks the files' sizes and checksums before it touches its target. No
//! URL, password or key is recorded.
//!
//! # Postgres
//! [`backup_postgres`] with [`PostgresBackup`]: a full backup (the whole
//! database, or one `schema`, which must hold [`SELFRAG_TABLES`]) or a table
//! backup (`tables`, e.g. `memory_logs`, in `schema` or `public`).
//! `pg_dump` and `pg_restore` are found through [`PgTools`] (explicit
//! paths, a bin directory, or `PATH`). Before anything is written the tools
//! must exist and `pg_dump`'s major version must be at least the server's
//! (`pg_dump --version` against `SHOW server_version_num`); otherwise a
//! clear [`Error::Incompatible`] (a missing tool is a configuration problem,
//! not retryable). The URL's
//! password is passed to the child as `PGPASSWORD` (with `PGHOST`,
//! `PGPORT`, `PGUSER`, `PGDATABASE`), never on a command line. A failing
//! tool's stderr is in the error message. No error and no `Debug` of the
//! options quotes a password: URLs are shown through
//! [`selfrag_postgres::redact_url`] and [`selfrag_qdrant::redact_url`], and
//! Qdrant URLs with credentials in them are refused
//! ([`selfrag_qdrant::validate_url`]); the API key is never shown.
//!
//! [`verify_postgres`] (and [`verify_run`]) check size and SHA-256 against
//! the manifest, then that `pg_restore --list` reads the archive and lists
//! every expected table with its data; `deep` also reads every data block.
//!
//! [`restore_postgres`] with [`PostgresRestore`]: into the URL's database
//! or a named one, created when `create_database` is set. By default it
//! refuses ([`Error::Conflict`]) a target that already holds any table of
//! the archive, and restores in one transaction; `clean` replaces existing
//! objects (`--clean --if-exists`). Always `--no-owner --no-privileges
//! --exit-on-error`. Before the target is touched, the archive is read
//! through (every data block); a database created by a restore that then
//! fails is dropped again.
//!
//! # Qdrant
//! [`backup_qdrant`]: creates a snapshot over gRPC, downloads it over REST
//! (port 6333; see [`QdrantTarget::rest_url`]), checks the server's SHA-256,
//! then deletes the snapshot from the server (each one is a full copy of the
//! collection on its disk) unless [`QdrantTarget::keep_snapshot`].
//! [`restore_qdrant`]: refuses a server older than the one that made the
//! snapshot, and an existing collection unless [`QdrantTarget::replace`];
//! then uploads the snapshot to
//! `POST /collections/{c}/snapshots/upload?priority=snapshot` (multipart,
//! streamed, with the checksum), which creates (or, with `replace`,
//! replaces) the collection, then deletes the copy of the upload the server
//! keeps. [`prune_qdrant_snapshots`]: server-side retention of kept
//! snapshots (and of uploads a restore could not delete).
//!
//! # Embedded index
//! [`backup_edge`] copies a **closed** index directory, holding the
//! engine's own directory lock for the whole copy (see [`edge`]), so neither
//! an open index nor one opened during the copy can change files under it.
//! [`restore_edge`] copies back into a missing or empty directory (an
//! existing one, e.g. a mount point, is filled in place, never replaced).
//!
//! # Retention
//! [`prune`]: deletes run directories older than `keep_days` (default
//! [`DEFAULT_KEEP_DAYS`] = 30) by the time in their names, but never the
//! newest complete run holding each kind of backup ([`RetentionClass`]: a
//! full Postgres archive, a table archive, a Qdrant collection, an embedded
//! index), nor the newest complete run, nor a `.partial` run younger than
//! [`PARTIAL_GRACE`] (24 h, one may be in progress). [`latest_run_with`]
//! finds the newest run holding a kind of entry (what a restore or verify
//! without a named run should use). [`prune_qdrant_snapshots`] does the
//! same on the server.
//!
//! # Errors
//! Everything returns [`selfrag_core::Error`]: bad options are
//! [`Error::InvalidInput`] naming the field; a damaged, truncated or
//! incomplete backup is [`Error::Incompatible`] (backend `backup` or
//! `postgres`) saying which file and why, and so is a missing `pg_dump` or
//! `pg_restore`; an unreachable server is [`Error::Unavailable`]; a
//! `.partial` run directory given to verify or restore is
//! [`Error::InvalidInput`] (`run`); a non-empty restore target is [`Error::Conflict`];
//! a missing run, entry, manifest, table or database is [`Error::NotFound`].
//! Sources are kept.

pub mod edge;
pub mod erasures;
mod fsutil;
pub mod manifest;
pub mod postgres;
pub mod qdrant;
pub mod run;

use std::path::Path;

pub use edge::{backup_edge, restore_edge, EdgeDirLock};
pub use erasures::{read_erasures_file, LedgerEntry, LedgerPosition};
pub use manifest::{Entry, EntryKind, FileEntry, Manifest, RetentionClass, MANIFEST_FILE, MANIFEST_FORMAT};
pub use postgres::{
    backup_postgres, restore_postgres, verify_postgres, PgTools, PostgresBackup, PostgresRestore,
    PostgresRestoreReport, SELFRAG_TABLES,
};
pub use qdrant::{backup_qdrant, prune_qdrant_snapshots, restore_qdrant, QdrantRestoreReport, QdrantTarget};
pub use run::{
    latest_run, latest_run_where, latest_run_with, list_runs, prune, BackupRun, FinishedRun, PruneReport, RunSummary,
    DEFAULT_KEEP_DAYS, PARTIAL_GRACE,
};
pub use selfrag_core::{Error, Result};

/// Bytes this process has read through a SHA-256 so far: files hashed
/// after a dump or download, copies of embedded indexes (both ways), and
/// the checks of verification and of every restore. A monotonic counter
/// for progress displays: read it before and during a call and take the
/// difference (the `selfrag` tool does).
pub fn bytes_checksummed() -> u64 {
    fsutil::CHECKSUMMED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The backend name in errors about backup files.
pub const BACKEND: &str = "backup";

/// A damaged or unusable backup.
pub(crate) fn corrupt(message: String) -> Error {
    Error::Incompatible { backend: BACKEND, message }
}

/// A local file-system failure.
pub(crate) fn io_err(message: String, e: std::io::Error) -> Error {
    Error::backend(BACKEND, message, false, e)
}

/// What [`verify_run`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// The run's manifest.
    pub manifest: Manifest,
    /// The entries checked (all of them).
    pub entries: Vec<String>,
    /// Total bytes hashed.
    pub bytes: u64,
}

/// Verifies a finished run: the manifest reads, every file of every entry
/// has its recorded size and SHA-256, and every Postgres archive is readable
/// by `pg_restore --list` and lists its expected tables with data (`deep`:
/// also reads every data block).
///
/// # Errors
/// [`Error::NotFound`] without a manifest; [`Error::Incompatible`] naming the
/// first damaged file, or without `pg_restore` when the run holds a
/// Postgres archive; [`Error::InvalidInput`] (`run`) for a `.partial` run.
pub async fn verify_run(run_dir: &Path, tools: &PgTools, deep: bool) -> Result<VerifyReport> {
    let manifest = Manifest::read(run_dir)?;
    let mut bytes = 0;
    for entry in &manifest.entries {
        match entry.kind {
            EntryKind::Postgres => {
                verify_postgres(run_dir, entry, tools, deep).await?;
            }
            EntryKind::Qdrant | EntryKind::Edge => {
                let (dir, entry) = (run_dir.to_path_buf(), entry.clone());
                tokio::task::spawn_blocking(move || manifest::check_entry_files(&dir, &entry))
                    .await
                    .map_err(|e| Error::backend(BACKEND, "a checksum task panicked or was cancelled", false, e))??;
            }
        }
        bytes += entry.size();
    }
    let entries = manifest.entries.iter().map(|e| e.name.clone()).collect();
    Ok(VerifyReport { manifest, entries, bytes })
}
