//! The manifest of a backup run (`manifest.json`).

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fsutil;
use crate::{corrupt, io_err, Error, Result};

/// The file name of the manifest inside a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What one backup run holds. Written last, atomically: a run directory
/// without a readable manifest is not a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] at the time of writing.
    pub format: u32,
    /// The run's name (its directory name, the UTC start time
    /// `YYYYMMDDTHHMMSSZ`, with `-N` appended on a collision).
    pub run: String,
    /// When the run started (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the run finished (UTC), just before the manifest was written.
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// The version of this crate (the selfrag release) that wrote it.
    pub selfrag_version: String,
    /// One entry per thing backed up, in the order they were taken.
    pub entries: Vec<Entry>,
}

/// What kind of thing an [`Entry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A `pg_dump --format=custom` archive (one file).
    Postgres,
    /// A Qdrant collection snapshot (one `.snapshot` file).
    Qdrant,
    /// A copy of an embedded index directory (many files).
    Edge,
}

/// One thing backed up in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Its name, unique in the run: `postgres`, `postgres-memory_logs`,
    /// `qdrant-<collection>`, `edge` (or what the caller chose).
    pub name: String,
    /// Its files, paths relative to the run directory.
    pub files: Vec<FileEntry>,
    /// Set for [`EntryKind::Postgres`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresInfo>,
    /// Set for [`EntryKind::Qdrant`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<QdrantInfo>,
    /// Set for [`EntryKind::Edge`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeInfo>,
    /// How long taking it took, in milliseconds.
    pub duration_ms: u64,
}

impl Entry {
    /// Total size of the entry's files in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// What this entry is a backup of, for retention (see
    /// [`crate::prune`]): `None` for an entry whose details are missing.
    pub fn retention_class(&self) -> Option<RetentionClass> {
        match self.kind {
            EntryKind::Postgres => {
                let info = self.postgres.as_ref()?;
                if info.table_only {
                    let mut tables = info.tables.clone();
                    tables.sort();
                    Some(RetentionClass::PostgresTables(tables.join(",")))
                } else {
                    Some(RetentionClass::PostgresFull)
                }
            }
            EntryKind::Qdrant => Some(RetentionClass::Qdrant(self.qdrant.as_ref()?.collection.clone())),
            EntryKind::Edge => Some(RetentionClass::Edge),
        }
    }
}

/// The kinds of backup that retention keeps at least one of each
/// ([`crate::prune`] never deletes the newest complete run holding one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetentionClass {
    /// A full Postgres archive (whole database or schema).
    PostgresFull,
    /// A table-only Postgres archive of these tables (sorted, `,`-joined).
    /// It does not protect, nor stand in for, a full archive.
    PostgresTables(String),
    /// A snapshot of this Qdrant collection.
    Qdrant(String),
    /// A copy of an embedded index directory.
    Edge,
}

/// One file of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the run directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// Details of a Postgres archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresInfo {
    /// The database dumped.
    pub database: String,
    /// The schema dumped (`None`: the whole database).
    pub schema: Option<String>,
    /// The tables the archive must contain (unqualified names): the four
    /// selfrag tables for a full backup, the requested ones otherwise.
    pub tables: Vec<String>,
    /// Whether only the listed tables were dumped (`--table`).
    pub table_only: bool,
    /// `SHOW server_version` of the server dumped.
    pub server_version: String,
    /// `SHOW server_version_num` (e.g. `150020`).
    pub server_version_num: u32,
    /// `pg_dump --version` output.
    pub pg_dump_version: String,
    /// The erasure ledger's position when the dump began (`None`: the
    /// database had no ledger, or a manifest written before ledgers). A
    /// restore re-applies the erasures of later ledgers, matched by user id
    /// (see [`crate::erasures`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasures: Option<crate::erasures::LedgerPosition>,
}

/// Details of a Qdrant snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdrantInfo {
    /// The collection.
    pub collection: String,
    /// The snapshot's name on the server.
    pub snapshot: String,
    /// The server's version (`health_check`).
    pub server_version: String,
    /// The server's SHA-256 of the snapshot, when it reported one (checked
    /// against the download).
    pub server_checksum: Option<String>,
}

/// Details of an embedded index copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// The directory copied (as given).
    pub source: String,
    /// Bytes the copy occupies on disk (allocated blocks; the engine's
    /// sparse files keep their holes in the copy). Absent in manifests
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Bytes the source directory occupied on disk when it was copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_disk_bytes: Option<u64>,
}

impl Manifest {
    /// Reads and parses `<run_dir>/manifest.json`, and checks that it is a
    /// format this crate knows and that its paths stay inside the run.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`run`) for a `.partial` run directory (see
    /// [`crate::run::check_not_partial`]); [`Error::NotFound`] without a
    /// manifest (an incomplete run); [`Error::Incompatible`] when it does
    /// not parse, is of another format
    /// or names a path outside the run.
    pub fn read(run_dir: &Path) -> Result<Manifest> {
        crate::run::check_not_partial(run_dir)?;
        let path = run_dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: "backup manifest",
                    id: format!("{} (an incomplete or foreign run directory)", path.display()),
                })
            }
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()), e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("{} is not a valid backup manifest: {e}", path.display())))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(corrupt(format!(
                "{} has manifest format {}, this build reads format {MANIFEST_FORMAT}",
                path.display(),
                manifest.format
            )));
        }
        for file in manifest.entries.iter().flat_map(|e| &e.files) {
            check_relative(&file.path)?;
        }
        Ok(manifest)
    }

    /// Writes the manifest to `<run_dir>/manifest.json` atomically.
    pub(crate) fn write(&self, run_dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::backend(crate::BACKEND, "cannot serialize the manifest", false, e))?;
        fsutil::write_atomic(&run_dir.join(MANIFEST_FILE), &json)
    }

    /// The entry named `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what = "backup entry"`).
    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| Error::NotFound {
            what: "backup entry",
            id: format!("{name} in run {} (has: {})", self.run, self.names().join(", ")),
        })
    }

    /// The first entry of `kind`.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what = "backup entry"`).
    pub fn first_of(&self, kind: EntryKind) -> Result<&Entry> {
        self.entries.iter().find(|e| e.kind == kind).ok_or_else(|| Error::NotFound {
            what: "backup entry",
            id: format!("{kind:?} entry in run {} (has: {})", self.run, self.names().join(", ")),
        })
    }

    fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

/// Refuses absolute paths and `..` in manifest paths: a tampered manifest
/// must not make a restore read or a verify hash files outside the run.
fn check_relative(path: &str) -> Result<()> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(corrupt(format!("the manifest names the path `{path}`, which is not inside the run directory")))
    }
}

/// Checks every file of `entry` against the manifest: present, same size,
/// same SHA-256.
///
/// # Errors
/// [`Error::Incompatible`] naming the first file that is missing, of another
/// size or of another checksum.
pub fn check_entry_files(run_dir: &Path, entry: &Entry) -> Result<()> {
    for file in &entry.files {
        let path = run_dir.join(&file.path);
        let meta = std::fs::metadata(&path)
            .map_err(|e| corrupt(format!("{} of entry `{}` is missing: {e}", path.display(), entry.name)))?;
        if meta.len() != file.size {
            return Err(corrupt(format!(
                "{} is {} bytes, the manifest says {} (truncated or replaced)",
                path.display(),
                meta.len(),
                file.size
            )));
        }
        let (_, sum) = fsutil::sha256_file(&path)?;
        if sum != file.sha256 {
            return Err(corrupt(format!(
                "{} has SHA-256 {sum}, the manifest says {} (the file is corrupt)",
                path.display(),
                file.sha256
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        assert!(check_relative("postgres/full.dump").is_ok());
        assert!(check_relative("../x").is_err());
        assert!(check_relative("/etc/passwd").is_err());
        assert!(check_relative("a/../../b").is_err());
        assert!(check_relative("").is_err());
    }
}
