//! The write-ahead journal: acknowledged writes survive `kill -9` at random
//! moments, a torn tail is dropped, damage in the middle and a record of
//! another dimension refuse to open, replaying twice changes nothing.
//!
//! The child processes are this test binary again, running the ignored
//! helper tests with an environment variable set (the pattern of
//! `selfrag-testkit/tests/private_servers.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::vector::point_id;
use selfrag_core::{Chunk, Distance, Error, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig, JOURNAL_FILE, STATE_FILE};
use serde_json::{Map, Value};
use uuid::Uuid;

const DIM: usize = 8;
const WRITERS: u32 = 4;
const CHILD_VAR: &str = "SELFRAG_EDGE_JOURNAL_CHILD";

fn spec(dim: usize) -> IndexSpec {
    // Dot product on small integer vectors: every score is an exact integer,
    // so the engine's scores can be compared with an exact scan bit for bit.
    IndexSpec::new(dim, Distance::Dot).unwrap()
}

fn config(durability: Durability, flush: Duration) -> EdgeIndexConfig {
    EdgeIndexConfig::default().durability(durability).engine_flush_interval(flush).optimize_after_points(None)
}

fn tenant() -> Tenant {
    Tenant::new("t").unwrap()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The chunks of upsert call `k` of writer `t` in child `cycle`: 1 to 3
/// chunks with integer components in -4..=4 and a payload naming them.
fn batch(cycle: u32, t: u32, k: u32, dim: usize) -> Vec<Chunk> {
    let n = 1 + k % 3;
    (0..n)
        .map(|j| {
            let mut s = u64::from(cycle) << 40 | u64::from(t) << 32 | u64::from(k) << 8 | u64::from(j);
            let vector = (0..dim).map(|_| (splitmix(&mut s) % 9) as f32 - 4.0).collect();
            Chunk::new(format!("c{cycle}-w{t}-k{k}"), j, format!("text {cycle} {t} {k} {j}"), vector)
                .tags([format!("w{t}")])
        })
        .collect()
}

/// Whether call `k` of a writer deletes (the chunks of its call `k - 3`)
/// rather than upserts.
fn is_delete(k: u32) -> bool {
    k % 5 == 4
}

/// Child: writes with `WRITERS` concurrent tasks under the default
/// durability and prints `ACK <writer> <call>` after each call returned,
/// until killed (or, with `SELFRAG_EDGE_JOURNAL_CALLS`, aborts after that
/// many calls of one writer).
#[test]
#[ignore = "helper process of the journal tests"]
fn journal_child() {
    let Ok(dir) = std::env::var(CHILD_VAR) else { return };
    let cycle: u32 = std::env::var("SELFRAG_EDGE_JOURNAL_CYCLE").unwrap().parse().unwrap();
    let dim: usize = std::env::var("SELFRAG_EDGE_JOURNAL_DIM").map_or(DIM, |d| d.parse().unwrap());
    let calls: Option<u32> = std::env::var("SELFRAG_EDGE_JOURNAL_CALLS").ok().map(|c| c.parse().unwrap());
    let flush_ms: u64 = std::env::var("SELFRAG_EDGE_JOURNAL_FLUSH_MS").map_or(40, |c| c.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let index = Arc::new(
            EdgeIndex::open(&dir, spec(dim), config(Durability::Journal, Duration::from_millis(flush_ms)))
                .await
                .unwrap(),
        );
        let writers = if calls.is_some() { 1 } else { WRITERS };
        let mut tasks = Vec::new();
        for t in 0..writers {
            let index = index.clone();
            tasks.push(tokio::spawn(async move {
                let tenant = tenant();
                for k in 0.. {
                    if calls == Some(k) {
                        std::process::abort();
                    }
                    if is_delete(k) {
                        let ids: Vec<_> = batch(cycle, t, k - 3, dim).iter().map(|c| c.id).collect();
                        index.delete(&tenant, &ids).await.unwrap();
                    } else {
                        index.upsert(&tenant, batch(cycle, t, k, dim)).await.unwrap();
                    }
                    // `println!` goes through a line-buffered stdout: the
                    // line is out when this returns.
                    println!("ACK {t} {k}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Runs a child to completion (it aborts after `calls` calls).
fn run_child(dir: &Path, cycle: u32, dim: usize, calls: u32) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "journal_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, dir)
        .env("SELFRAG_EDGE_JOURNAL_CYCLE", cycle.to_string())
        .env("SELFRAG_EDGE_JOURNAL_DIM", dim.to_string())
        .env("SELFRAG_EDGE_JOURNAL_CALLS", calls.to_string())
        // No engine flush during the child's life: everything it wrote is
        // only in the journal when it aborts.
        .env("SELFRAG_EDGE_JOURNAL_FLUSH_MS", "3600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");
}

/// What the parent knows a point must look like.
fn expected_point(chunk: &Chunk) -> (Uuid, Vec<f32>, Map<String, Value>) {
    let t = tenant();
    (point_id(&t, chunk.id), chunk.vector.clone(), chunk.payload.to_json(&t, chunk.id))
}

/// Every stored point by id.
async fn stored(index: &EdgeIndex) -> HashMap<Uuid, (Vec<f32>, Map<String, Value>)> {
    index.export_points().await.unwrap().into_iter().map(|p| (p.id, (p.vector, p.payload))).collect()
}

/// Checks searches against an exact scan of `points`.
async fn search_agrees(index: &EdgeIndex, points: &HashMap<Uuid, (Vec<f32>, Map<String, Value>)>, seed: u64) {
    let mut s = seed;
    for _ in 0..3 {
        let q: Vec<f32> = (0..DIM).map(|_| (splitmix(&mut s) % 9) as f32 - 4.0).collect();
        let hits = index.search(&tenant(), &SearchRequest::new(q.clone(), 10)).await.unwrap();
        let mut exact: Vec<f32> = points.values().map(|(v, _)| v.iter().zip(&q).map(|(a, b)| a * b).sum()).collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        exact.truncate(10);
        let got: Vec<f32> = hits.iter().map(|h| h.score).collect();
        assert_eq!(got, exact, "search scores against the exact scan");
        for h in hits {
            let (v, _) = &points[&point_id(&tenant(), h.id)];
            let score: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
            assert_eq!(h.score, score, "hit {}", h.id);
        }
    }
}

/// 50 children write under load and are killed with SIGKILL at random
/// moments; after each, the reopened index holds every acknowledged write
/// exactly, each unacknowledged call entirely or not at all, nothing else,
/// and search agrees with an exact scan. Every tenth cycle also replays the
/// same journal a second time over the flushed result (a crash between the
/// engine flush and the state update), which must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let cycles: u32 = std::env::var("SELFRAG_EDGE_KILLS").map_or(50, |c| c.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        ^ u64::from(std::process::id()) << 32;
    println!("seed {seed}");
    // The model: every point that must exist.
    let mut model: BTreeMap<Uuid, (Vec<f32>, Map<String, Value>)> = BTreeMap::new();
    let started = Instant::now();
    let (mut replayed, mut in_flight_applied, mut in_flight_total) = (0u64, 0u32, 0u32);
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "journal_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, &path)
            .env("SELFRAG_EDGE_JOURNAL_CYCLE", cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut acked: HashMap<u32, u32> = HashMap::new();
            let mut first = Some(first_tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may print the test name on the same line.
                let Some(at) = line.find("ACK ") else { continue };
                let mut parts = line[at + 4..].split(' ');
                let t: u32 = parts.next().unwrap().parse().unwrap();
                let k: u32 = parts.next().unwrap().parse().unwrap();
                assert_eq!(acked.get(&t).map_or(0, |k| k + 1), k, "acks of writer {t} in order");
                acked.insert(t, k);
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            acked
        });
        // Kill at a random moment once writing is under way (the child
        // flushes the engine every 40 ms, so kills land before, during and
        // after flushes and journal truncations).
        let _ = first_rx.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_micros(splitmix(&mut seed) % 150_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(!acked.is_empty(), "cycle {cycle}: the child acknowledged nothing");

        let before = (std::fs::read(path.join(JOURNAL_FILE)).ok(), std::fs::read(path.join(STATE_FILE)).ok());
        let index =
            EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default().optimize_after_points(None)).await.unwrap();
        replayed += index.replayed_at_open();
        let got = stored(&index).await;

        for t in 0..WRITERS {
            let last = acked.get(&t).map(|k| i64::from(*k)).unwrap_or(-1);
            for k in 0..=(last + 1) {
                let k = u32::try_from(k).unwrap();
                let in_flight = i64::from(k) == last + 1;
                if is_delete(k) {
                    let chunks = batch(cycle, t, k - 3, DIM);
                    let gone = chunks.iter().filter(|c| !got.contains_key(&expected_point(c).0)).count();
                    if in_flight {
                        in_flight_total += 1;
                        assert!(gone == 0 || gone == chunks.len(), "cycle {cycle}: delete {t}/{k} half applied");
                        if gone == 0 {
                            continue;
                        }
                        in_flight_applied += 1;
                    }
                    for c in &chunks {
                        model.remove(&expected_point(c).0);
                    }
                } else {
                    let chunks = batch(cycle, t, k, DIM);
                    if in_flight {
                        in_flight_total += 1;
                        let there = chunks.iter().filter(|c| got.contains_key(&expected_point(c).0)).count();
                        assert!(there == 0 || there == chunks.len(), "cycle {cycle}: upsert {t}/{k} half visible");
                        if there == 0 {
                            continue;
                        }
                        in_flight_applied += 1;
                    }
                    for c in &chunks {
                        let (id, v, p) = expected_point(c);
                        model.insert(id, (v, p));
                    }
                }
            }
        }
        // Exactly the model: every acknowledged point with its exact vector
        // and payload, nothing else.
        let mut missing = 0;
        for (id, (v, p)) in &model {
            match got.get(id) {
                Some((gv, gp)) => {
                    assert_eq!(gv, v, "cycle {cycle}: vector of {id}");
                    assert_eq!(gp, p, "cycle {cycle}: payload of {id}");
                }
                None => missing += 1,
            }
        }
        assert_eq!(missing, 0, "cycle {cycle}: {missing} acknowledged points lost");
        assert_eq!(got.len(), model.len(), "cycle {cycle}: points that were never written or were deleted");
        search_agrees(&index, &got, splitmix(&mut seed)).await;
        index.close().await.unwrap();

        if cycle % 10 == 9 {
            // Replay the same journal again over the flushed state.
            if let (Some(j), Some(s)) = &before {
                std::fs::write(path.join(JOURNAL_FILE), j).unwrap();
                std::fs::write(path.join(STATE_FILE), s).unwrap();
            } else if let (Some(j), None) = &before {
                std::fs::write(path.join(JOURNAL_FILE), j).unwrap();
                let _ = std::fs::remove_file(path.join(STATE_FILE));
            }
            let index = EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap();
            assert_eq!(stored(&index).await, got, "cycle {cycle}: replaying twice changed the index");
            index.close().await.unwrap();
        }
    }
    println!(
        "{cycles} kills in {:.1} s: {} points, {replayed} records replayed, {in_flight_applied} of \
         {in_flight_total} unacknowledged calls found applied (all whole)",
        started.elapsed().as_secs_f64(),
        model.len()
    );
    assert!(replayed > 0, "no kill left anything to replay: the test did not exercise the journal");
}

/// A child writes 3 calls and aborts with everything only in the journal;
/// returns its directory.
fn crashed_with_journal(dim: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_child(&dir.path().join("idx"), 0, dim, 3);
    dir
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len()
}

async fn ids_present(index: &EdgeIndex, dim: usize) -> Vec<u32> {
    let got = stored(index).await;
    (0..3).filter(|k| batch(0, 0, *k, dim).iter().all(|c| got.contains_key(&expected_point(c).0))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_journal_is_replayed() {
    let dir = crashed_with_journal(DIM);
    let path = dir.path().join("idx");
    assert!(journal_len(&path) > 0);
    let index = EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap();
    assert_eq!(index.replayed_at_open(), 3);
    assert_eq!(ids_present(&index, DIM).await, [0, 1, 2]);
    // Replayed, flushed and emptied.
    assert_eq!(journal_len(&path), 0);
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped() {
    let dir = crashed_with_journal(DIM);
    let path = dir.path().join("idx");
    let len = journal_len(&path);
    let f = std::fs::OpenOptions::new().write(true).open(path.join(JOURNAL_FILE)).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let index = EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap();
    assert_eq!(index.replayed_at_open(), 2);
    assert_eq!(ids_present(&index, DIM).await, [0, 1], "the torn third call is dropped, the others kept");
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_middle_refuses_to_open() {
    let dir = crashed_with_journal(DIM);
    let path = dir.path().join("idx");
    let mut bytes = std::fs::read(path.join(JOURNAL_FILE)).unwrap();
    // Byte 40 is inside the first record's body (header 16, seq, dimension,
    // kind, count, then the first point).
    bytes[40] ^= 0x10;
    std::fs::write(path.join(JOURNAL_FILE), &bytes).unwrap();
    let err = EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("corrupt at byte 0") && text.contains("intact record follows"), "{text}");
    // Nothing was changed: the journal is still there for a person to look at.
    assert_eq!(std::fs::read(path.join(JOURNAL_FILE)).unwrap(), bytes);
    // And the refusal released the directory.
    std::fs::remove_file(path.join(JOURNAL_FILE)).unwrap();
    EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_another_dimension_refuses_to_open() {
    let four = crashed_with_journal(4);
    let eight = tempfile::tempdir().unwrap();
    let path = eight.path().join("idx");
    EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap().close().await.unwrap();
    std::fs::copy(four.path().join("idx").join(JOURNAL_FILE), path.join(JOURNAL_FILE)).unwrap();
    let err = EdgeIndex::open(&path, spec(DIM), EdgeIndexConfig::default()).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("dimension 4, but this index has dimension 8"), "{err}");
}

/// A journal left by a journaled run is replayed whatever the setting the
/// next open uses, and the non-journal settings write none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_replayed_under_every_setting() {
    for durability in [Durability::OnClose, Durability::Periodic(Duration::from_secs(1)), Durability::FlushEveryWrite] {
        let dir = crashed_with_journal(DIM);
        let path = dir.path().join("idx");
        let index = EdgeIndex::open(&path, spec(DIM), config(durability, Duration::from_secs(1))).await.unwrap();
        assert_eq!(ids_present(&index, DIM).await, [0, 1, 2], "{durability:?}");
        index.upsert(&tenant(), batch(9, 9, 9, DIM)).await.unwrap();
        assert_eq!(journal_len(&path), 0, "{durability:?} writes no journal");
        index.close().await.unwrap();
    }
    // Many concurrent writers under the default all return, each durable.
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(EdgeIndex::open(dir.path(), spec(DIM), EdgeIndexConfig::default()).await.unwrap());
    let mut tasks = Vec::new();
    for t in 0..64 {
        let index = index.clone();
        tasks.push(tokio::spawn(async move { index.upsert(&tenant(), batch(1, t, 0, DIM)).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(index.count(&tenant(), None).await.unwrap(), 64);
    let ids: HashSet<_> = stored(&index).await.into_keys().collect();
    assert_eq!(ids.len(), 64);
}

/// While an optimization runs, the engine keeps deletions of the points it
/// rebuilds in memory (a flush does not write them), and after it the new
/// segment holds them in memory until the next flush. A flush during the
/// optimization must therefore not empty the journal: here deletions are
/// flushed mid-optimization, and a crash image taken right after it (a hot
/// backup, with no flush in between) must still not hold the deleted points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_during_an_optimization_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic flush: only the explicit ones below.
    let cfg = config(Durability::Journal, Duration::from_secs(3_600)).indexing_threshold_kb(Some(1));
    let index = Arc::new(EdgeIndex::open(dir.path().join("src"), spec(DIM), cfg).await.unwrap());
    let base: Vec<Chunk> = (0..4_000).map(|i| keyed(99, i, u32::MAX)).collect();
    for part in base.chunks(500) {
        index.upsert(&tenant(), part.to_vec()).await.unwrap();
    }
    index.flush().await.unwrap();
    let optimizer = {
        let index = index.clone();
        tokio::spawn(async move { index.optimize_now().await.unwrap() })
    };
    // The optimization copies the points first, then builds the graph:
    // deletions from then on reach the new segment only at its end.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut deleted = Vec::new();
    while !optimizer.is_finished() {
        let chunk = &base[deleted.len()];
        index.delete(&tenant(), &[chunk.id]).await.unwrap();
        deleted.push(expected_point(chunk).0);
        if deleted.len() % 5 == 0 {
            index.flush().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(optimizer.await.unwrap(), "the optimization rebuilt segments");
    assert!(deleted.len() >= 10, "only {} deletions during the optimization", deleted.len());
    let backup = index.backup_to(dir.path().join("copy")).await.unwrap();
    assert!(backup.replay >= deleted.len() as u64, "the journal keeps the deletions: {} records", backup.replay);
    let copy = EdgeIndex::open(dir.path().join("copy"), spec(DIM), EdgeIndexConfig::default()).await.unwrap();
    let got = stored(&copy).await;
    let back: Vec<_> = deleted.iter().filter(|id| got.contains_key(id)).collect();
    assert!(back.is_empty(), "{} of {} deleted points are back after the crash", back.len(), deleted.len());
    assert_eq!(got.len(), base.len() - deleted.len());
    copy.close().await.unwrap();
}

/// Keys each hot-backup writer overwrites and deletes.
const KEYS: u32 = 24;

/// The chunk writer `t` stores under key `key` at its call `k` (call
/// `u32::MAX`: the preloaded version).
fn keyed(t: u32, key: u32, k: u32) -> Chunk {
    let mut s = u64::from(t) << 48 | u64::from(key) << 32 | u64::from(k);
    let vector = (0..DIM).map(|_| (splitmix(&mut s) % 9) as f32 - 4.0).collect();
    Chunk::new(format!("w{t}-key{key}"), 0, format!("version {k}"), vector).tags([format!("w{t}")])
}

/// What call `k` of writer `t` does: `(key, upsert?)`. Every fifth call
/// deletes.
fn keyed_call(k: u32) -> (u32, bool) {
    ((k * 7) % KEYS, k % 5 != 4)
}

/// The points of writer `t`'s keys after its first `n` calls.
fn keyed_model(t: u32, n: u32) -> HashMap<Uuid, (Vec<f32>, Map<String, Value>)> {
    let mut state: BTreeMap<u32, Option<u32>> = (0..KEYS).map(|key| (key, Some(u32::MAX))).collect();
    for k in 0..n {
        let (key, upsert) = keyed_call(k);
        state.insert(key, upsert.then_some(k));
    }
    state
        .into_iter()
        .filter_map(|(key, v)| v.map(|k| expected_point(&keyed(t, key, k))))
        .map(|(id, v, p)| (id, (v, p)))
        .collect()
}

/// How a hot-backup scenario runs.
struct HotCase {
    durability: Durability,
    /// Points preloaded besides the writers' keys.
    base: u32,
    /// Run an optimization before the writers start (sealed segments).
    optimize_first: bool,
    /// Start a background optimization and take the backup while it runs.
    during_optimization: bool,
    /// The engine's indexing threshold (KB of vectors). A segment above it
    /// is indexed by an optimization, which then runs again as long as
    /// writes refill the appendable segment past it: the backup waits for
    /// that, so the case with a running optimization keeps the writers'
    /// points (96) under it.
    threshold_kb: usize,
}

/// Preloads an index (the writers' keys and `base` other points), starts
/// four writers that overwrite and delete their keys and a reader that
/// searches, takes a hot backup, then opens the copy and checks it is the
/// source at one point in time: per writer, the state after exactly its
/// first `n` calls for some `n` between the calls acknowledged before the
/// backup and those started before it returned; the other points as
/// preloaded; nothing else; each with its exact vector and payload.
async fn hot_backup_case(case: HotCase) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(case.durability, Duration::from_millis(50)).indexing_threshold_kb(Some(case.threshold_kb));
    let index = Arc::new(EdgeIndex::open(dir.path().join("src"), spec(DIM), cfg).await.unwrap());
    let base: Vec<Chunk> = (0..case.base).map(|i| keyed(99, i, u32::MAX)).collect();
    for part in base.chunks(500) {
        index.upsert(&tenant(), part.to_vec()).await.unwrap();
    }
    for t in 0..WRITERS {
        index.upsert(&tenant(), (0..KEYS).map(|key| keyed(t, key, u32::MAX)).collect()).await.unwrap();
    }
    if case.optimize_first {
        index.optimize_now().await.unwrap();
        assert!(index.stats().await.unwrap().indexed_vectors > 0, "sealed, indexed segments exist");
        // A sealed file is copied after the hold only once its modification
        // time is clearly (over a second) before the hold: file times may
        // lag by a clock tick. On a fast machine the whole case runs in
        // under a second, so let the optimizer's files settle first.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    let optimizer = case.during_optimization.then(|| {
        let index = index.clone();
        tokio::spawn(async move { index.optimize_now().await.unwrap() })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU32>> = Arc::new((0..WRITERS).map(|_| AtomicU32::new(0)).collect());
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let (index, stop, acked) = (index.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                let (key, upsert) = keyed_call(k);
                let chunk = keyed(t, key, k);
                if upsert {
                    index.upsert(&tenant(), vec![chunk]).await.unwrap();
                } else {
                    index.delete(&tenant(), &[chunk.id]).await.unwrap();
                }
                k += 1;
                acked[t as usize].store(k, Ordering::SeqCst);
            }
        }));
    }
    let searches = {
        let (index, stop) = (index.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                index.search(&tenant(), &SearchRequest::new(vec![1.0; DIM], 5)).await.unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let optimizing = index.stats().await.unwrap().optimizations == 0 && optimizer.is_some();
    let before: Vec<u32> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let backup = index.backup_to(dir.path().join("copy")).await.unwrap();
    // A call that had not started when the backup returned cannot be in it.
    let after: Vec<u32> = acked.iter().map(|a| a.load(Ordering::SeqCst) + 1).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let searched = searches.await.unwrap();
    if let Some(o) = optimizer {
        o.await.unwrap();
    }
    let written: u32 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    println!(
        "hot backup ({:?}{}): hold {:?} of {:?}; {} bytes of data read in the hold, {} after; {} bytes long, {} on disk; journal seq {}, {} to replay; \
         {searched} searches and {written} writes meanwhile",
        case.durability,
        if optimizing { ", optimization running at the call" } else { "" },
        backup.hold,
        backup.total,
        backup.held_bytes,
        backup.later_bytes,
        backup.bytes,
        backup.disk_bytes,
        backup.seq,
        backup.replay
    );
    assert!(searched > 0);
    assert!(backup.hold <= backup.total);
    // Holes stay holes: the engine's WAL preallocates 2 x 32 MiB.
    assert!(backup.disk_bytes < backup.bytes / 2, "{} on disk of {}", backup.disk_bytes, backup.bytes);
    if case.optimize_first {
        assert!(backup.later_bytes > 0, "sealed files are copied after the hold");
    }

    let copy = EdgeIndex::open(dir.path().join("copy"), spec(DIM), EdgeIndexConfig::default()).await.unwrap();
    assert_eq!(copy.replayed_at_open(), backup.replay, "opening the copy replays the journal it holds");
    let mut got = stored(&copy).await;
    for t in 0..WRITERS {
        let ids: HashSet<Uuid> = (0..KEYS).map(|key| expected_point(&keyed(t, key, 0)).0).collect();
        let mine: HashMap<_, _> = ids.iter().filter_map(|id| got.remove(id).map(|p| (*id, p))).collect();
        let (lo, hi) = (before[t as usize], after[t as usize]);
        let n = (lo..=hi).find(|&n| keyed_model(t, n) == mine);
        assert!(n.is_some(), "writer {t}: the copy is not its state after any of calls {lo}..={hi}");
    }
    let base_expected: HashMap<_, _> = base.iter().map(expected_point).map(|(id, v, p)| (id, (v, p))).collect();
    assert_eq!(got, base_expected, "the other points as preloaded, nothing else");
    copy.close().await.unwrap();
    let err = index.backup_to(dir.path().join("copy")).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

/// Sealed (optimized) segments whose points the writers overwrite and
/// delete during the copy, under the default durability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_backup_is_the_source_at_one_point_in_time() {
    hot_backup_case(HotCase {
        durability: Durability::Journal,
        base: 2_000,
        optimize_first: true,
        during_optimization: false,
        threshold_kb: 1,
    })
    .await;
}

/// A backup called while an optimization (which replaces segments) runs
/// waits for it; writes and searches go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_backup_during_an_optimization() {
    hot_backup_case(HotCase {
        durability: Durability::Journal,
        base: 6_000,
        optimize_first: false,
        during_optimization: true,
        threshold_kb: 64,
    })
    .await;
}

/// Without a journal the hold flushes the engine; the copy is still one
/// point in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_backup_without_a_journal() {
    hot_backup_case(HotCase {
        durability: Durability::OnClose,
        base: 500,
        optimize_first: true,
        during_optimization: false,
        threshold_kb: 1,
    })
    .await;
}
