//! File helpers: checksums, atomic writes, directory copies.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::{io_err, Result};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Size and SHA-256 (hex) of the file at `path`, read in 1 MiB blocks.
/// Bytes read through a checksum by this process (see
/// [`crate::bytes_checksummed`]).
pub(crate) static CHECKSUMMED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| io_err(format!("cannot open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io_err(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        CHECKSUMMED.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Flushes the directory entry list of `dir` to disk, so that a rename or
/// a new file inside it survives a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    // Opening a directory read-only and calling fsync is the POSIX way; other
    // platforms do not support it and do not need it.
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| io_err(format!("cannot open directory {}", dir.display()), e))?;
        d.sync_all().map_err(|e| io_err(format!("cannot fsync directory {}", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The temporary name used for `path` while it is written: a hidden sibling
/// ending in `.partial`, so nothing looks like a finished file.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Moves a complete, fsynced temporary file or directory into place and
/// fsyncs the parent directory.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| io_err(format!("cannot rename {} to {}", tmp.display(), path.display()), e))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: temporary name, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_name(path);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("cannot write {}", tmp.display()), e));
    }
    commit(&tmp, path)
}

/// Fsyncs a finished file.
pub(crate) fn fsync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_err(format!("cannot fsync {}", path.display()), e))
}

/// Every regular file under `dir`, as paths relative to it with `/`
/// separators, sorted. Symbolic links and other special files are refused:
/// an index directory holds none, and following one could copy anything.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let entries = fs::read_dir(dir).map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let parts: Vec<String> =
                    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push(parts.join("/"));
            } else {
                return Err(crate::Error::InvalidInput {
                    field: "path".into(),
                    reason: format!("{} is neither a file nor a directory; refusing to copy it", path.display()),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Aligned blocks of zeros this long (a file system block) are not written
/// but skipped, leaving a hole in the copy.
const HOLE_RUN: usize = 4096;

/// Copies `from` to `to` (which must not exist), hashing on the way, and
/// fsyncs the copy. Returns size and SHA-256.
///
/// Sparse: every aligned block of [`HOLE_RUN`] zero bytes is skipped
/// rather than written, so the copy keeps the holes of a sparse source (the
/// embedded engine preallocates its write-ahead log as large sparse files:
/// copied in full, a few kilobytes of data would take hundreds of
/// megabytes). The content, and so the checksum, is the same either way.
pub(crate) fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String)> {
    let mut src = File::open(from).map_err(|e| io_err(format!("cannot open {}", from.display()), e))?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err(format!("cannot create {}", parent.display()), e))?;
    }
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| io_err(format!("cannot create {}", to.display()), e))?;
    let write_err = |e| io_err(format!("cannot write {}", to.display()), e);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf).map_err(|e| io_err(format!("cannot read {}", from.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        for run in buf[..n].chunks(HOLE_RUN) {
            if run.len() == HOLE_RUN && run.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(HOLE_RUN as i64)).map_err(write_err)?;
            } else {
                dst.write_all(run).map_err(write_err)?;
            }
        }
        size += n as u64;
        CHECKSUMMED.fetch_add(n as u64, Ordering::Relaxed);
    }
    // A hole at the end is not a hole until the length says so.
    dst.set_len(size).map_err(write_err)?;
    dst.sync_all().map_err(|e| io_err(format!("cannot fsync {}", to.display()), e))?;
    Ok((size, hex(&hasher.finalize())))
}

/// Reads until `buf` is full or the end of the file, so that runs stay
/// aligned to file offsets whatever sizes `read` returns.
fn read_full(src: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The bytes `path`'s files occupy on disk (allocated blocks: holes do not
/// count), summed over the tree.
pub(crate) fn disk_usage(path: &Path) -> Result<u64> {
    #[cfg(unix)]
    fn allocated(meta: &fs::Metadata) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    fn allocated(meta: &fs::Metadata) -> u64 {
        meta.len()
    }
    let meta = fs::symlink_metadata(path).map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_dir() {
        return Ok(allocated(&meta));
    }
    let mut total = 0;
    let entries = fs::read_dir(path).map_err(|e| io_err(format!("cannot list {}", path.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("cannot list {}", path.display()), e))?;
        total += disk_usage(&entry.path())?;
    }
    Ok(total)
}

/// Fsyncs every directory under and including `dir` (after a tree copy).
pub(crate) fn fsync_tree(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fsync_tree(&entry.path())?;
        }
    }
    fsync_dir(dir)
}

/// Whether `dir` is missing or an empty directory.
pub(crate) fn is_missing_or_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err(format!("cannot list {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("sparse"), dir.path().join("copy"));
        // 64 MiB with 4 KiB of data at the start and 10 bytes near the end,
        // zeros (a hole) between.
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut f = File::options().write(true).open(&src).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 100)).unwrap();
        f.write_all(b"0123456789").unwrap();
        drop(f);
        let (size, sum) = copy_hashed(&src, &dst).unwrap();
        assert_eq!(size, 64 << 20);
        assert_eq!((size, sum), sha256_file(&src).unwrap(), "same content");
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let used = disk_usage(&dst).unwrap();
        assert!(used < 1 << 20, "the copy of a 64 MiB sparse file occupies {used} bytes");
        // A file of data (no zero runs) is copied in full; a trailing hole
        // keeps the length.
        let (dense, tail) = (dir.path().join("dense"), dir.path().join("tail"));
        fs::write(&dense, vec![1u8; 300_000]).unwrap();
        copy_hashed(&dense, &dir.path().join("dense-copy")).unwrap();
        assert_eq!(fs::read(&dense).unwrap(), fs::read(dir.path().join("dense-copy")).unwrap());
        let f = File::create(&tail).unwrap();
        f.set_len(1 << 20).unwrap();
        let (size, _) = copy_hashed(&tail, &dir.path().join("tail-copy")).unwrap();
        assert_eq!((size, fs::metadata(dir.path().join("tail-copy")).unwrap().len()), (1 << 20, 1 << 20));
    }

    #[test]
    fn hex_and_hash() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"abc").unwrap();
        let (size, sum) = sha256_file(&p).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sum, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!temp_name(&p).exists(), "the temporary name is gone after the rename");
    }
}
