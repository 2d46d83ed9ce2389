//! Embedded index (`selfrag-edge`) directories: consistent copies.
//!
//! An open `EdgeIndex` holds an exclusive `flock(2)` on `<dir>/wal` (taken
//! by the engine when it opens the directory) and may write segment files at
//! any moment (periodic flushes, background optimizations that swap
//! segments), so a copy taken while it is open may mix states. This module
//! therefore copies **closed** indexes only: it takes the same lock itself
//! (non-blocking) for the whole copy. If the index is open, the lock is
//! refused and the backup fails with [`Error::Unavailable`] before anything
//! is written; while the copy runs, an `EdgeIndex::open` of the directory
//! fails the same way instead of changing files under it. Close the index
//! (`EdgeIndex::close().await`, which flushes) before backing it up.
//!
//! An index that must keep serving is backed up in two steps by the process
//! that has it open: `EdgeIndex::backup_to(dir)` copies it at one point in
//! time (writes wait only while the files the engine rewrites in place are
//! copied, searches go on; the copy's journal is replayed when it is
//! opened), and [`backup_edge`] backs up that closed copy, which may then
//! be deleted.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fsutil;
use crate::manifest::{check_entry_files, EdgeInfo, Entry, EntryKind, FileEntry, Manifest};
use crate::run::BackupRun;
use crate::{io_err, Error, Result};

const EDGE: &str = "edge";

/// Holds the engine's directory lock (`flock` on `<dir>/wal`) until dropped.
#[derive(Debug)]
pub struct EdgeDirLock {
    _file: File,
    path: PathBuf,
}

impl EdgeDirLock {
    /// Takes the lock of the index in `dir`, without waiting.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `dir` holds no index (`wal/` missing);
    /// [`Error::Unavailable`] when the index is open (in this process or
    /// another).
    pub fn acquire(dir: &Path) -> Result<EdgeDirLock> {
        let wal = dir.join("wal");
        if !wal.is_dir() || !dir.join("segments").is_dir() {
            return Err(Error::NotFound {
                what: "embedded index",
                id: format!("{} (no wal/ and segments/ directories)", dir.display()),
            });
        }
        let file = File::open(&wal).map_err(|e| io_err(format!("cannot open {}", wal.display()), e))?;
        // UFCS: `File::try_lock` of std (1.89+) would otherwise win.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(EdgeDirLock { _file: file, path: wal }),
            Err(fs4::TryLockError::WouldBlock) => Err(open_elsewhere(dir, None)),
            Err(fs4::TryLockError::Error(e)) => Err(open_elsewhere(dir, Some(e))),
        }
    }

    /// The locked path (`<dir>/wal`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_elsewhere(dir: &Path, e: Option<std::io::Error>) -> Error {
    Error::Unavailable {
        backend: EDGE,
        message: format!(
            "the embedded index in {} is open (its directory lock is held); close it before a backup or restore",
            dir.display()
        ),
        maybe_applied: false,
        source: e.map(|e| Box::new(e) as _),
    }
}

/// Copies the closed embedded index in `index_dir` into `run` under
/// `<name>/` (default name `edge`) and adds its entry: every file with its
/// size and SHA-256. The copy goes to a temporary directory first and is
/// renamed when complete. The directory lock is held throughout (see the
/// module docs).
///
/// # Errors
/// [`Error::Unavailable`] when the index is open; [`Error::NotFound`] when
/// `index_dir` holds no index; [`Error::InvalidInput`] for a bad name or a
/// special file in the directory; [`Error::Backend`] for I/O failures.
pub async fn backup_edge<'r>(run: &'r mut BackupRun, index_dir: &Path, name: Option<&str>) -> Result<&'r Entry> {
    let name = name.unwrap_or(EDGE).to_owned();
    run.check_new_entry(&name)?;
    let src = index_dir.to_path_buf();
    let dest = run.dir().join(&name);
    let started = Instant::now();
    let (files, (disk_bytes, source_disk_bytes)) = blocking(move || {
        let _lock = EdgeDirLock::acquire(&src)?;
        let tmp = fsutil::temp_name(&dest);
        let result = (|| {
            let mut files = Vec::new();
            for rel in fsutil::list_files(&src)? {
                let (size, sha256) = fsutil::copy_hashed(&src.join(&rel), &tmp.join(&rel))?;
                files.push((rel, size, sha256));
            }
            fs::create_dir_all(&tmp).map_err(|e| io_err(format!("cannot create {}", tmp.display()), e))?;
            fsutil::fsync_tree(&tmp)?;
            let sizes = (fsutil::disk_usage(&tmp)?, fsutil::disk_usage(&src)?);
            fsutil::commit(&tmp, &dest)?;
            Ok((files, sizes))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    })
    .await?;
    let entry = Entry {
        kind: EntryKind::Edge,
        files: files
            .into_iter()
            .map(|(rel, size, sha256)| FileEntry { path: format!("{name}/{rel}"), size, sha256 })
            .collect(),
        name,
        postgres: None,
        qdrant: None,
        edge: Some(EdgeInfo {
            source: index_dir.display().to_string(),
            disk_bytes: Some(disk_bytes),
            source_disk_bytes: Some(source_disk_bytes),
        }),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok(run.push(entry))
}

/// Restores an embedded index entry of the run in `run_dir` (`entry`: its
/// name, or `None` for the first one) into `target`, which must not exist or
/// be an empty directory. Checks the manifest and every file's checksum
/// first. A missing `target` is created by copying into a temporary sibling
/// and renaming it into place. An existing empty `target` is kept (it may be
/// a mount point, which can be neither removed nor renamed onto): the copy
/// goes to a temporary directory inside it, `.selfrag-restore.partial/`, and
/// its top-level entries are then renamed into `target` (same file system,
/// so each rename is atomic) before the temporary directory is removed. A
/// crash during those renames leaves `target` non-empty with the temporary
/// directory still present: restore again into an emptied directory.
///
/// # Errors
/// [`Error::Conflict`] when `target` is not empty (nothing is touched);
/// [`Error::Incompatible`] for a damaged backup; [`Error::NotFound`] for a
/// missing manifest or entry; [`Error::Backend`] for I/O failures.
pub async fn restore_edge(run_dir: &Path, entry: Option<&str>, target: &Path) -> Result<()> {
    let manifest = Manifest::read(run_dir)?;
    let entry = match entry {
        Some(name) => manifest.entry(name)?.clone(),
        None => manifest.first_of(EntryKind::Edge)?.clone(),
    };
    if entry.kind != EntryKind::Edge {
        return Err(Error::invalid("entry", format!("`{}` is not an embedded index entry", entry.name)));
    }
    let run_dir = run_dir.to_path_buf();
    let target = target.to_path_buf();
    blocking(move || {
        if !fsutil::is_missing_or_empty(&target)? {
            // Displays as "restore target `DIR` already exists".
            return Err(Error::Conflict { what: "restore target", id: target.display().to_string() });
        }
        check_entry_files(&run_dir, &entry)?;
        let in_place = target.exists();
        let tmp = if in_place { target.join(RESTORE_TMP) } else { fsutil::temp_name(&target) };
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| {
            fs::create_dir_all(&tmp).map_err(|e| io_err(format!("cannot create {}", tmp.display()), e))?;
            copy_entry(&run_dir, &entry, &tmp)?;
            fsutil::fsync_tree(&tmp)?;
            if !in_place {
                return fsutil::commit(&tmp, &target);
            }
            let moved = fs::read_dir(&tmp).map_err(|e| io_err(format!("cannot list {}", tmp.display()), e))?;
            for item in moved {
                let item = item.map_err(|e| io_err(format!("cannot list {}", tmp.display()), e))?;
                let to = target.join(item.file_name());
                fs::rename(item.path(), &to)
                    .map_err(|e| io_err(format!("cannot move {} to {}", item.path().display(), to.display()), e))?;
            }
            fs::remove_dir(&tmp).map_err(|e| io_err(format!("cannot remove {}", tmp.display()), e))?;
            fsutil::fsync_dir(&target)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    })
    .await
}

/// The temporary directory of a restore into an existing empty directory.
const RESTORE_TMP: &str = ".selfrag-restore.partial";

/// Copies the files of `entry` into `dest`, checking each copy's checksum
/// against the manifest.
fn copy_entry(run_dir: &Path, entry: &Entry, dest: &Path) -> Result<()> {
    let prefix = format!("{}/", entry.name);
    for file in &entry.files {
        let rel = file.path.strip_prefix(&prefix).ok_or_else(|| {
            crate::corrupt(format!("file {} of entry `{}` lies outside its directory", file.path, entry.name))
        })?;
        let (size, sha256) = fsutil::copy_hashed(&run_dir.join(&file.path), &dest.join(rel))?;
        if size != file.size || sha256 != file.sha256 {
            return Err(crate::corrupt(format!("{} changed while it was restored", file.path)));
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend(crate::BACKEND, "a file copy task panicked or was cancelled", false, e))?
}
