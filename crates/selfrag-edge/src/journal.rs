//! The write-ahead journal that makes acknowledged writes survive a crash.
//!
//! The pinned engine (qdrant-edge 0.7.2) does not replay its own WAL when a
//! directory is reopened, so this crate keeps a journal of its own next to
//! the engine's files:
//!
//! - `selfrag-journal`: append-only records, one per upsert / delete call,
//!   written (and, under [`Durability::Journal`](crate::Durability::Journal),
//!   `fdatasync`ed) before the call returns;
//! - `selfrag-journal.state`: the sequence number of the last record the
//!   engine has flushed, replaced atomically (write, fsync, rename, fsync
//!   the directory) after every engine flush, after which the journal is
//!   truncated.
//!
//! # Record format
//! All integers little-endian:
//!
//! ```text
//! magic  "SRJ1"          4 bytes
//! len    u32             length of the body
//! check  u64             first 8 bytes of SHA-256(body), as little-endian u64
//! body:
//!   seq        u64       strictly increasing across the journal's life
//!   dimension  u32       the index's vector dimension
//!   kind       u8        1 upsert, 2 delete by ids, 3 delete by filter
//!   upsert:    count u32, then per point: id (16-byte UUID), dimension × f32,
//!              payload length u32, payload (JSON object)
//!   delete:    count u32, then count × 16-byte UUIDs
//!   filter:    the engine filter as JSON (the rest of the body)
//! ```
//!
//! # Recovery
//! On open, every record with `seq` above the state's is applied to the
//! engine in order. Replaying is idempotent: upserts and deletes are by
//! point id, and a delete by filter replayed over a state that already
//! contains later records matches the same points (every point it could
//! match differently is upserted again by a record replayed after it).
//! A record whose checksum fails, or that is cut short, is dropped when
//! nothing valid follows it (a torn write at a crash: the call that wrote
//! it never returned); when a valid record follows, the journal is corrupt
//! in the middle and open refuses with [`Error::Incompatible`], since
//! dropping it would silently lose acknowledged writes. A record for another
//! dimension is refused the same way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use qdrant_edge::{
    Filter as EngineFilter, PointId, PointInsertOperations, PointOperations, PointStruct, UpdateOperation,
};
use selfrag_core::{Error, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::index::BACKEND;

/// The journal's file name in the index directory.
pub const JOURNAL_FILE: &str = "selfrag-journal";
/// The state file's name in the index directory.
pub const STATE_FILE: &str = "selfrag-journal.state";

const MAGIC: [u8; 4] = *b"SRJ1";
/// Magic, length, checksum.
const HEADER: usize = 16;
/// Offset of `seq` in an encoded record (header first).
const SEQ_AT: usize = HEADER;
/// Bodies larger than this are not records (a corrupt length field).
const MAX_BODY: usize = 1 << 30;

const KIND_UPSERT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_FILTER: u8 = 3;

/// One point of an upsert record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalPoint {
    pub(crate) id: Uuid,
    pub(crate) vector: Vec<f32>,
    pub(crate) payload: Map<String, Value>,
}

/// What a record does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JournalOp {
    Upsert(Vec<JournalPoint>),
    Delete(Vec<Uuid>),
    DeleteByFilter(EngineFilter),
}

impl JournalOp {
    /// The engine operation, consuming the record's data.
    pub(crate) fn into_engine(self) -> UpdateOperation {
        match self {
            JournalOp::Upsert(points) => {
                let points = points
                    .into_iter()
                    .map(|p| PointStruct::new(PointId::Uuid(p.id), p.vector, Value::Object(p.payload)).into())
                    .collect();
                UpdateOperation::PointOperation(PointOperations::UpsertPoints(PointInsertOperations::PointsList(
                    points,
                )))
            }
            JournalOp::Delete(ids) => UpdateOperation::PointOperation(PointOperations::DeletePoints {
                ids: ids.into_iter().map(PointId::Uuid).collect(),
            }),
            JournalOp::DeleteByFilter(f) => UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(f)),
        }
    }

    /// The whole record (header and body) with sequence number 0; the
    /// journal sets the number and the checksum when it appends.
    pub(crate) fn encode(&self, dimension: usize) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u32_len(dimension, "dimension")?.to_le_bytes());
        match self {
            JournalOp::Upsert(points) => {
                b.push(KIND_UPSERT);
                b.reserve(points.len() * (16 + 4 * dimension + 256));
                b.extend_from_slice(&u32_len(points.len(), "chunks")?.to_le_bytes());
                for p in points {
                    b.extend_from_slice(p.id.as_bytes());
                    for x in &p.vector {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                    let json = serde_json::to_vec(&p.payload).map_err(|e| encode_err(e.to_string()))?;
                    b.extend_from_slice(&u32_len(json.len(), "payload")?.to_le_bytes());
                    b.extend_from_slice(&json);
                }
            }
            JournalOp::Delete(ids) => {
                b.push(KIND_DELETE);
                b.extend_from_slice(&u32_len(ids.len(), "ids")?.to_le_bytes());
                for id in ids {
                    b.extend_from_slice(id.as_bytes());
                }
            }
            JournalOp::DeleteByFilter(f) => {
                b.push(KIND_FILTER);
                let json = serde_json::to_vec(f).map_err(|e| encode_err(e.to_string()))?;
                b.extend_from_slice(&json);
            }
        }
        if b.len() - HEADER > MAX_BODY {
            return Err(Error::invalid("chunks", "one call's data exceeds the journal's 1 GiB record limit"));
        }
        Ok(b)
    }
}

/// A length as the journal's u32.
fn u32_len(n: usize, field: &'static str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::invalid(field, format!("{n} is too large for one journal record")))
}

fn encode_err(e: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("cannot encode a journal record: {e}"),
        retryable: false,
        source: None,
    }
}

fn checksum(body: &[u8]) -> u64 {
    let d = Sha256::digest(body);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Sets `seq` and the header of an encoded record.
fn seal(record: &mut [u8], seq: u64) {
    record[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    // `encode` kept the body under MAX_BODY (1 GiB), which fits a u32.
    let body_len = u32::try_from(record.len() - HEADER).unwrap_or(u32::MAX);
    let check = checksum(&record[HEADER..]);
    record[4..8].copy_from_slice(&body_len.to_le_bytes());
    record[8..16].copy_from_slice(&check.to_le_bytes());
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) dimension: usize,
    pub(crate) op: JournalOp,
}

/// A little-endian reader over a body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
}

/// Decodes a body whose checksum matched; `None` when it is malformed.
fn decode_body(body: &[u8]) -> Option<Record> {
    let mut c = Cursor(body);
    let seq = c.u64()?;
    let dimension = c.u32()? as usize;
    let kind = c.take(1)?[0];
    let op = match kind {
        KIND_UPSERT => {
            let n = c.u32()? as usize;
            let mut points = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let id = Uuid::from_slice(c.take(16)?).ok()?;
                let raw = c.take(dimension.checked_mul(4)?)?;
                let vector = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect();
                let len = c.u32()? as usize;
                let payload = serde_json::from_slice(c.take(len)?).ok()?;
                points.push(JournalPoint { id, vector, payload });
            }
            JournalOp::Upsert(points)
        }
        KIND_DELETE => {
            let n = c.u32()? as usize;
            let mut ids = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                ids.push(Uuid::from_slice(c.take(16)?).ok()?);
            }
            JournalOp::Delete(ids)
        }
        KIND_FILTER => JournalOp::DeleteByFilter(serde_json::from_slice(c.take(c.0.len())?).ok()?),
        _ => return None,
    };
    if !c.0.is_empty() {
        return None;
    }
    Some(Record { seq, dimension, op })
}

/// The record starting at `at`, with its end offset, when one is intact
/// there.
fn record_at(data: &[u8], at: usize) -> Option<(Record, usize)> {
    let header = data.get(at..at + HEADER)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4")) as usize;
    let check = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    if len > MAX_BODY {
        return None;
    }
    let body = data.get(at + HEADER..at + HEADER + len)?;
    if checksum(body) != check {
        return None;
    }
    Some((decode_body(body)?, at + HEADER + len))
}

/// The outcome of reading a journal file.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every intact record, in file order.
    pub(crate) records: Vec<Record>,
    /// Where the intact records end; bytes after it are a torn tail.
    pub(crate) valid_len: usize,
}

/// Parses a journal. A damaged record followed by nothing intact is a torn
/// tail (reported by `valid_len`); followed by an intact record, it is an
/// error, as is a record of another dimension or out of sequence.
pub(crate) fn scan(data: &[u8], dimension: usize, path: &Path) -> Result<Scan> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match record_at(data, at) {
            Some((r, end)) => {
                if r.dimension != dimension {
                    return Err(Error::Incompatible {
                        backend: BACKEND,
                        message: format!(
                            "journal {} holds record {} (byte {at}) for vectors of dimension {}, but this index has \
                             dimension {dimension}; it belongs to another index. Refusing to open: move the file \
                             aside to discard it",
                            path.display(),
                            r.seq,
                            r.dimension
                        ),
                    });
                }
                if let Some(prev) = records.last() {
                    if r.seq <= prev.seq {
                        return Err(corrupt(path, at, &format!("record {} follows record {}", r.seq, prev.seq)));
                    }
                }
                records.push(r);
                at = end;
            }
            None => {
                // Is anything intact after the damage? Records start with
                // the magic, so only those offsets are tried.
                let mut probe = at + 1;
                while let Some(found) = find_magic(data, probe) {
                    if record_at(data, found).is_some() {
                        return Err(corrupt(
                            path,
                            at,
                            &format!("the record there is damaged but an intact record follows at byte {found}"),
                        ));
                    }
                    probe = found + 1;
                }
                return Ok(Scan { records, valid_len: at });
            }
        }
    }
    Ok(Scan { records, valid_len: at })
}

fn find_magic(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?.windows(4).position(|w| w == MAGIC).map(|p| p + from)
}

fn corrupt(path: &Path, at: usize, what: &str) -> Error {
    Error::Incompatible {
        backend: BACKEND,
        message: format!(
            "journal {} is corrupt at byte {at}: {what}. Refusing to open, since dropping it would lose acknowledged \
             writes; restore the directory from a backup, or move the journal aside to accept the loss of its \
             unflushed writes",
            path.display()
        ),
    }
}

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::backend(BACKEND, what, false, e)
}

/// Reads the state file: the last flushed sequence number (0 when absent).
fn read_state(dir: &Path) -> Result<u64> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(format!("cannot read {}", path.display()), e)),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Incompatible {
        backend: BACKEND,
        message: format!("{} is not a journal state file: {e}", path.display()),
    })?;
    v.get("flushed_seq").and_then(Value::as_u64).ok_or_else(|| Error::Incompatible {
        backend: BACKEND,
        message: format!("{} has no flushed_seq", path.display()),
    })
}

/// Replaces the state file atomically and durably.
fn write_state(dir: &Path, flushed: u64) -> Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let path = dir.join(STATE_FILE);
    let text = format!("{{\"flushed_seq\":{flushed}}}\n");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_err(format!("cannot write {}", path.display()), e))
}

/// Who fsyncs the journal, and how far it is synced.
struct SyncState {
    synced: u64,
    leader: bool,
}

/// An open journal.
pub(crate) struct Journal {
    dir: PathBuf,
    /// Append handle (`O_APPEND`); appends are serialized by the index's
    /// write lock, this mutex only guards the handle.
    file: Mutex<File>,
    /// A second handle on the same file, so that a group-commit leader can
    /// `fdatasync` without blocking appends.
    sync_file: File,
    next_seq: AtomicU64,
    last_appended: AtomicU64,
    /// The position of the state file: the last record the engine flushed.
    last_flushed: AtomicU64,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, drops a torn tail, and
    /// returns it with the records the engine has not flushed yet.
    pub(crate) fn open(dir: &Path, dimension: usize) -> Result<(Self, Vec<Record>)> {
        let flushed = read_state(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()), e)),
        };
        let scan = scan(&data, dimension, &path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(format!("cannot open {}", path.display()), e))?;
        if scan.valid_len < data.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = data.len() - scan.valid_len,
                "dropping a torn record at the end of the journal (a write cut short by a crash; never acknowledged)"
            );
            file.set_len(scan.valid_len as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_err(format!("cannot truncate {}", path.display()), e))?;
        }
        let last = scan.records.last().map_or(0, |r| r.seq).max(flushed);
        let pending: Vec<Record> = scan.records.into_iter().filter(|r| r.seq > flushed).collect();
        let sync_file = file.try_clone().map_err(|e| io_err(format!("cannot open {}", path.display()), e))?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            file: Mutex::new(file),
            sync_file,
            next_seq: AtomicU64::new(last + 1),
            last_appended: AtomicU64::new(last),
            last_flushed: AtomicU64::new(flushed),
            sync: Mutex::new(SyncState { synced: last, leader: false }),
            synced_cv: Condvar::new(),
        };
        Ok((journal, pending))
    }

    /// Appends an encoded record (page cache only); the caller holds the
    /// index's write lock, so records are in the order the engine applied
    /// them. Returns its sequence number.
    pub(crate) fn append(&self, mut record: Vec<u8>) -> Result<u64> {
        let seq = self.next_seq.load(Ordering::SeqCst);
        seal(&mut record, seq);
        let mut f = lock(&self.file);
        f.write_all(&record)
            .map_err(|e| io_err(format!("cannot append to the journal in {}", self.dir.display()), e))?;
        self.next_seq.store(seq + 1, Ordering::SeqCst);
        self.last_appended.store(seq, Ordering::SeqCst);
        Ok(seq)
    }

    /// Returns once record `seq` is on stable storage. Group commit: one
    /// caller (the leader) `fdatasync`s for every record appended so far
    /// while the others wait for it.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = lock(&self.sync);
        loop {
            if st.synced >= seq {
                return Ok(());
            }
            if st.leader {
                st = self.synced_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let target = self.last_appended.load(Ordering::SeqCst);
            drop(st);
            let result = self.sync_file.sync_data();
            st = lock(&self.sync);
            st.leader = false;
            if result.is_ok() {
                st.synced = st.synced.max(target);
            }
            self.synced_cv.notify_all();
            if let Err(e) = result {
                return Err(Error::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "cannot fsync the journal in {}; the write is applied in memory but may not survive a crash",
                        self.dir.display()
                    ),
                    maybe_applied: true,
                    source: Some(Box::new(e)),
                });
            }
        }
    }

    /// The sequence number of the last record appended.
    pub(crate) fn last_appended(&self) -> u64 {
        self.last_appended.load(Ordering::SeqCst)
    }

    /// The last record the engine has flushed (the state file's position).
    pub(crate) fn last_flushed(&self) -> u64 {
        self.last_flushed.load(Ordering::SeqCst)
    }

    /// Records that the engine has flushed everything up to `seq` (the last
    /// appended record; the caller holds the write lock): writes the state
    /// file, truncates the journal and releases waiters.
    pub(crate) fn flushed(&self, seq: u64) -> Result<()> {
        write_state(&self.dir, seq)?;
        self.last_flushed.store(seq, Ordering::SeqCst);
        lock(&self.file)
            .set_len(0)
            .map_err(|e| io_err(format!("cannot truncate the journal in {}", self.dir.display()), e))?;
        let mut st = lock(&self.sync);
        st.synced = st.synced.max(seq);
        self.synced_cv.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: u128, dim: usize) -> JournalOp {
        let mut payload = Map::new();
        payload.insert("k".into(), Value::from(id.to_string()));
        JournalOp::Upsert(vec![JournalPoint {
            id: Uuid::from_u128(id),
            vector: (0..dim).map(|i| i as f32 + 0.25).collect(),
            payload,
        }])
    }

    fn sealed(op: &JournalOp, dim: usize, seq: u64) -> Vec<u8> {
        let mut r = op.encode(dim).unwrap();
        seal(&mut r, seq);
        r
    }

    #[test]
    fn records_round_trip() {
        let ops = [upsert(7, 3), JournalOp::Delete(vec![Uuid::from_u128(1), Uuid::from_u128(2)])];
        let mut data = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            data.extend(sealed(op, 3, i as u64 + 1));
        }
        let s = scan(&data, 3, Path::new("j")).unwrap();
        assert_eq!(s.valid_len, data.len());
        assert_eq!(s.records.iter().map(|r| r.op.clone()).collect::<Vec<_>>(), ops);
        assert_eq!(s.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn torn_tail_is_dropped_and_middle_damage_refused() {
        let a = sealed(&upsert(1, 3), 3, 1);
        let b = sealed(&upsert(2, 3), 3, 2);
        let c = sealed(&upsert(3, 3), 3, 3);
        // Every cut inside the last record is a torn tail.
        for cut in 1..c.len() {
            let data = [a.clone(), b.clone(), c[..cut].to_vec()].concat();
            let s = scan(&data, 3, Path::new("j")).unwrap();
            assert_eq!((s.records.len(), s.valid_len), (2, a.len() + b.len()), "cut at {cut}");
        }
        // A flipped bit anywhere in the middle record is refused.
        for bit in 0..b.len() * 8 {
            let mut bad = b.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let data = [a.clone(), bad, c.clone()].concat();
            let e = scan(&data, 3, Path::new("j")).unwrap_err();
            assert!(matches!(e, Error::Incompatible { .. }), "bit {bit}: {e}");
        }
        // A flipped bit in the last record is a torn tail.
        let mut bad = c.clone();
        bad[HEADER + 3] ^= 4;
        let s = scan(&[a.clone(), b.clone(), bad].concat(), 3, Path::new("j")).unwrap();
        assert_eq!(s.records.len(), 2);
    }

    #[test]
    fn other_dimension_is_refused() {
        let data = [sealed(&upsert(1, 3), 3, 1), sealed(&upsert(2, 4), 4, 2)].concat();
        let e = scan(&data, 3, Path::new("j")).unwrap_err();
        assert!(e.to_string().contains("dimension 4"), "{e}");
    }
}
