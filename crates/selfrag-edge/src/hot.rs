//! The file work of a hot backup ([`EdgeIndex::backup_to`](crate::EdgeIndex::backup_to)):
//! which files may be copied after writes resume, and sparse copies.
//!
//! A hot backup is a crash image: the bytes every file holds at one
//! instant, the "hold", while the index's write lock keeps engine writes,
//! journal appends and engine flushes out and the optimization lock keeps
//! segments from being replaced. Opening such an image is what opening the
//! directory after a `kill -9` at that instant does: the engine loads its
//! segments, and the journal's records above the state file's position are
//! replayed on top (the path `tests/journal.rs` kills 50 processes to
//! check).
//!
//! Most bytes of an optimized index never change after the optimization
//! that wrote them (the engine's own partial snapshots rely on this; it
//! calls them "immutable files"): the vectors of a sealed segment
//! (`matrix.dat`), its HNSW graph, its quantized vectors, its payload index
//! files and its id mappings, and the engine WAL's closed segments. Those
//! are only listed during the hold and copied afterwards. Everything else
//! (appendable segments, deletion flags, versions, payload storage, the
//! WAL's open segments, our journal and its state) is copied during the
//! hold. A file copied later is checked afterwards: a change of size,
//! modification time or inode since the hold fails the backup (the copy
//! would not be an instant's image) rather than produce a wrong one.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Files the engine (qdrant-edge 0.7.2) never changes in place once
/// written, by file name: sealed segments' dense vectors, HNSW graph and
/// links, quantized vectors, memory-mapped payload index data, and
/// immutable id mappings (each listed by the engine's `immutable_files`).
const SEALED_NAMES: &[&str] = &[
    "matrix.dat",
    "graph.bin",
    "links.bin",
    "links_compressed.bin",
    "links_comp_vec.bin",
    "hnsw_config.json",
    "quantized.data",
    "quantized.offsets.data",
    "quantized.config.json",
    "quantized.meta.json",
    "id_tracker.mappings",
    "values_to_points.bin",
    "point_to_values.bin",
    "histogram_borders.bin",
    "histogram_config.json",
    "mmap_field_index_config.json",
];

/// Whether the file at `rel` (relative to the index directory) is one the
/// engine never rewrites in place, so it may be copied after writes resume.
pub(crate) fn is_sealed(rel: &Path) -> bool {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { return false };
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    match parts.next().as_deref() {
        // The WAL renames a full segment `open-N` to `closed-<index>` and
        // never writes it again; the pinned engine never deletes them.
        Some("wal") => name.starts_with("closed-"),
        Some("segments") => {
            // Memory-mapped payload indexes also keep a `data.bin` (numeric
            // pairs) and `deleted.bin` written only when built (deletions
            // stay in memory); only inside a payload index directory.
            let in_payload_index =
                rel.components().any(|c| c.as_os_str().to_string_lossy().starts_with("payload_index"));
            SEALED_NAMES.contains(&name) || (in_payload_index && matches!(name, "data.bin" | "deleted.bin"))
        }
        _ => false,
    }
}

/// A file listed during the hold.
pub(crate) struct Listed {
    pub(crate) rel: PathBuf,
    pub(crate) stamp: Stamp,
}

/// What identifies a file's content without reading it: a change of any
/// field means it was written (or replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ino: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(meta),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the last change is older than `before` by a clear margin:
    /// file times come from a clock that may lag by a tick, so a write just
    /// after the hold could carry the same time as one just before it.
    pub(crate) fn settled_before(&self, before: SystemTime) -> bool {
        self.modified.is_some_and(|m| m + Duration::from_secs(1) < before)
    }
}

/// Lists the directories and regular files under `root` (paths relative to
/// it), refusing anything else.
pub(crate) fn walk(root: &Path) -> io::Result<(Vec<PathBuf>, Vec<Listed>)> {
    fn go(root: &Path, dir: &Path, dirs: &mut Vec<PathBuf>, files: &mut Vec<Listed>) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                dirs.push(rel);
                go(root, &path, dirs, files)?;
            } else if meta.is_file() {
                files.push(Listed { rel, stamp: Stamp::of(&meta) });
            } else {
                return Err(io::Error::other(format!("{} is neither a file nor a directory", path.display())));
            }
        }
        Ok(())
    }
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    go(root, root, &mut dirs, &mut files)?;
    Ok((dirs, files))
}

/// Aligned runs of zeros this long are skipped rather than written, leaving
/// holes (the engine preallocates its WAL as 32 MiB sparse files).
const HOLE: usize = 4096;

/// Copies the first `len` bytes of `from` into a new file `to`, keeping
/// holes: on Linux the source's holes are skipped without reading them
/// (`SEEK_DATA` / `SEEK_HOLE`), and within data every aligned 4 KiB block
/// of zeros is left a hole too. Returns the bytes read (the data extents:
/// holes are not read). Fails if `from` is shorter than `len`.
pub(crate) fn copy_sparse(from: &Path, to: &Path, len: u64) -> io::Result<u64> {
    let mut src = File::open(from)?;
    let actual = src.metadata()?.len();
    if actual < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} holds {actual} bytes, {len} expected", from.display()),
        ));
    }
    let mut dst = File::options().write(true).create_new(true).open(to)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let mut read = 0u64;
    while at < len {
        let (start, end) = match data_extent(&src, at, len)? {
            Some(extent) => extent,
            None => break,
        };
        src.seek(SeekFrom::Start(start))?;
        dst.seek(SeekFrom::Start(start))?;
        let mut pos = start;
        while pos < end {
            let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
            src.read_exact(&mut buf[..want])?;
            for block in buf[..want].chunks(HOLE) {
                if block.len() == HOLE && block.iter().all(|&b| b == 0) {
                    dst.seek(SeekFrom::Current(HOLE as i64))?;
                } else {
                    dst.write_all(block)?;
                }
            }
            pos += want as u64;
        }
        read += end - start;
        at = end;
    }
    // Trailing holes exist only once the length says so.
    dst.set_len(len)?;
    Ok(read)
}

/// The next range of `file` at or after `at` (and before `len`) that may
/// hold data: up to the next hole. `None` when only holes are left.
#[cfg(target_os = "linux")]
fn data_extent(file: &File, at: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as Seek};
    let start = match seek(file, Seek::Data(at)) {
        Ok(start) => start,
        // Nothing but a hole after `at`.
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        // A file system without hole reporting: all of it is data.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok(Some((at, len))),
        Err(e) => return Err(e.into()),
    };
    if start >= len {
        return Ok(None);
    }
    let end = seek(file, Seek::Hole(start))?;
    Ok(Some((start, end.min(len))))
}

/// Elsewhere every byte is read (zero blocks still become holes).
#[cfg(not(target_os = "linux"))]
fn data_extent(_file: &File, at: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    Ok((at < len).then_some((at, len)))
}

/// The bytes the files under `path` occupy on disk (allocated blocks; holes
/// do not count).
pub(crate) fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        #[cfg(unix)]
        return Ok(std::os::unix::fs::MetadataExt::blocks(&meta) * 512);
        #[cfg(not(unix))]
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        total += disk_usage(&entry?.path())?;
    }
    Ok(total)
}

/// `fsync`s every file and directory of a tree.
pub(crate) fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_by_place_and_name() {
        let sealed = |p: &str| is_sealed(Path::new(p));
        assert!(sealed("segments/0b1c/vector_storage/matrix.dat"));
        assert!(sealed("segments/0b1c/vector_index/links_compressed.bin"));
        assert!(sealed("segments/0b1c/payload_index/tenant-map/values_to_points.bin"));
        assert!(sealed("segments/0b1c/payload_index/chunk_index-numeric/data.bin"));
        assert!(sealed("wal/closed-1200"));
        // Rewritten in place: deletion flags, versions, payload storage,
        // appendable vectors, the open WAL segments, our journal.
        assert!(!sealed("segments/0b1c/vector_storage/deleted.dat"));
        assert!(!sealed("segments/0b1c/id_tracker.versions"));
        assert!(!sealed("segments/0b1c/payload_storage/page_0.dat"));
        assert!(!sealed("segments/0b1c/vector_storage/vectors/chunk_0.mmap"));
        assert!(!sealed("segments/0b1c/vector_storage/data.bin"));
        assert!(!sealed("wal/open-3"));
        assert!(!sealed("selfrag-journal"));
        assert!(!sealed("matrix.dat"));
    }

    #[test]
    fn sparse_copies_keep_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let mut data = vec![0u8; 5 * HOLE + 100];
        data[HOLE + 7] = 1;
        data[5 * HOLE + 99] = 2;
        std::fs::write(&from, &data).unwrap();
        let to = dir.path().join("to");
        copy_sparse(&from, &to, data.len() as u64).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), data);
        // A prefix, and a source shorter than asked.
        let prefix = dir.path().join("prefix");
        copy_sparse(&from, &prefix, 10).unwrap();
        assert_eq!(std::fs::read(&prefix).unwrap(), &data[..10]);
        assert!(copy_sparse(&from, &dir.path().join("long"), data.len() as u64 + 1).is_err());
        // A file of zeros only takes no data blocks.
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 64 * HOLE]).unwrap();
        copy_sparse(&zeros, &dir.path().join("zeros-copy"), 64 * HOLE as u64).unwrap();
        assert!(disk_usage(&dir.path().join("zeros-copy")).unwrap() < disk_usage(&zeros).unwrap());
        // A sparse source (8 MiB, two bytes of data): the holes are skipped.
        let holey = dir.path().join("holey");
        let mut f = File::create(&holey).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"x").unwrap();
        f.seek(SeekFrom::Start((8 << 20) - 1)).unwrap();
        f.write_all(b"y").unwrap();
        drop(f);
        let copy = dir.path().join("holey-copy");
        assert!(copy_sparse(&holey, &copy, 8 << 20).unwrap() < 1 << 20, "holes are not read");
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&holey).unwrap());
        assert!(disk_usage(&copy).unwrap() <= 64 * 1024, "{}", disk_usage(&copy).unwrap());
    }
}
