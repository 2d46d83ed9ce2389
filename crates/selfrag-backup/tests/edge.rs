//! Embedded index round trip: back up a closed `EdgeIndex`, restore it into
//! an empty directory, reopen it and compare every point.

use selfrag_backup::{backup_edge, restore_edge, verify_run, BackupRun, Error, PgTools};
use selfrag_core::{Chunk, ChunkId, Distance, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig};

const DIM: usize = 8;

fn vector(t: usize, i: usize) -> Vec<f32> {
    // Distinct, deterministic vectors: every point is its own nearest
    // neighbour at distance 0.
    (0..DIM).map(|d| ((t * 1000 + i) as f32 * 0.37 + d as f32 * 1.3).sin() * 10.0 + i as f32 * 0.01).collect()
}

fn chunks(t: usize) -> Vec<Chunk> {
    (0..150)
        .map(|i| {
            Chunk::new(
                format!("doc-{}", i % 7),
                u32::try_from(i).unwrap(),
                format!("tenant {t} chunk {i}"),
                vector(t, i),
            )
            .tags([format!("tag{}", i % 3)])
            .extra("i", i64::try_from(i).unwrap())
        })
        .collect()
}

fn config() -> EdgeIndexConfig {
    EdgeIndexConfig::default().durability(Durability::OnClose).optimize_after_points(None)
}

/// Every point of both tenants is in `index`, with its payload and its exact
/// vector.
async fn assert_all_points(index: &EdgeIndex, tenants: &[Tenant]) {
    for (t, tenant) in tenants.iter().enumerate() {
        let expected = chunks(t);
        assert_eq!(index.count(tenant, None).await.unwrap(), expected.len() as u64, "count of {tenant:?}");
        let ids: Vec<ChunkId> = expected.iter().map(|c| c.id).collect();
        let mut got = index.get(tenant, &ids).await.unwrap();
        got.sort_by_key(|r| r.payload.chunk_index);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!((g.id, &g.payload), (e.id, &e.payload));
        }
        for c in &expected {
            let hits = index.search(tenant, &SearchRequest::new(c.vector.clone(), 1)).await.unwrap();
            assert_eq!(hits.first().map(|h| h.id), Some(c.id), "nearest point to chunk {:?}", c.payload.chunk_index);
            assert!(
                hits[0].score > -1e-4,
                "vector of chunk {} changed: score {}",
                c.payload.chunk_index,
                hits[0].score
            );
        }
    }
}

/// Allocated bytes of every file under `dir`.
fn walk_disk(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk_disk(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_round_trip_keeps_every_point() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("vectors");
    let spec = IndexSpec::new(DIM, Distance::Euclid).unwrap();
    let tenants = [Tenant::new("acme").unwrap(), Tenant::new("globex").unwrap()];
    let index = EdgeIndex::open(&src, spec, config()).await.unwrap();
    for (t, tenant) in tenants.iter().enumerate() {
        index.upsert(tenant, chunks(t)).await.unwrap();
    }

    // Open: refused, nothing written.
    let root = tmp.path().join("backups");
    let mut run = BackupRun::begin(&root).unwrap();
    let err = backup_edge(&mut run, &src, None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("close it"), "{err}");
    assert_eq!(std::fs::read_dir(run.dir()).unwrap().count(), 0);

    index.close().await.unwrap();
    let entry = backup_edge(&mut run, &src, None).await.unwrap().clone();
    assert!(entry.files.iter().any(|f| f.path.starts_with("edge/segments/")), "{:?}", entry.files);
    assert!(entry.size() > 0);
    // The engine's write-ahead log is preallocated sparse (tens of MiB of
    // holes): the backup keeps the holes, so it occupies about what the
    // index does on disk, not its apparent size.
    let info = entry.edge.clone().expect("edge details");
    let (disk, source_disk) = (info.disk_bytes.expect("disk size"), info.source_disk_bytes.expect("source size"));
    eprintln!("edge backup: {} apparent bytes, {disk} on disk (source {source_disk} on disk)", entry.size());
    assert!(entry.size() > 8 * disk, "apparent {} vs on disk {disk}: the holes were written", entry.size());
    assert!(disk <= source_disk + (1 << 20), "the backup ({disk}) is larger on disk than its source ({source_disk})");
    let done = run.finish().unwrap();
    verify_run(&done.dir, &PgTools::new(), false).await.unwrap();

    // The source is gone; restore into a fresh directory.
    std::fs::remove_dir_all(&src).unwrap();
    let restored = tmp.path().join("restored");
    restore_edge(&done.dir, None, &restored).await.unwrap();
    // A non-empty target is refused.
    let err = restore_edge(&done.dir, None, &restored).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");

    let restored_disk: u64 = walk_disk(&restored);
    assert!(restored_disk <= disk + (1 << 20), "the restored copy occupies {restored_disk} bytes");
    let index = EdgeIndex::open(&restored, spec, config()).await.unwrap();
    assert_all_points(&index, &tenants).await;
    // While it is open, a backup of the restored copy is refused too.
    let mut run2 = BackupRun::begin(&root).unwrap();
    assert!(matches!(backup_edge(&mut run2, &restored, None).await, Err(Error::Unavailable { .. })));
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_edge_backup_is_refused_and_the_target_left_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("vectors");
    let spec = IndexSpec::new(DIM, Distance::Euclid).unwrap();
    let index = EdgeIndex::open(&src, spec, config()).await.unwrap();
    index.upsert(&Tenant::new("acme").unwrap(), chunks(0)).await.unwrap();
    index.close().await.unwrap();
    let mut run = BackupRun::begin(tmp.path().join("backups")).unwrap();
    let entry = backup_edge(&mut run, &src, Some("vectors")).await.unwrap().clone();
    let done = run.finish().unwrap();
    // Flip one bit in the largest file.
    let biggest = entry.files.iter().max_by_key(|f| f.size).unwrap();
    let path = done.dir.join(&biggest.path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x80;
    std::fs::write(&path, bytes).unwrap();
    let err = verify_run(&done.dir, &PgTools::new(), false).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    let target = tmp.path().join("restored");
    let err = restore_edge(&done.dir, Some("vectors"), &target).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    assert!(!target.exists(), "nothing restored");
    let err = backup_edge(&mut BackupRun::begin(tmp.path().join("b2")).unwrap(), tmp.path(), None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "not an index directory: {err}");
}

/// An existing empty target (e.g. a mount point, which can be neither
/// removed nor renamed onto) is filled in place: same directory, no
/// temporary sibling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_an_existing_empty_directory_keeps_that_directory() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("vectors");
    let spec = IndexSpec::new(DIM, Distance::Euclid).unwrap();
    let tenants = [Tenant::new("acme").unwrap(), Tenant::new("globex").unwrap()];
    let index = EdgeIndex::open(&src, spec, config()).await.unwrap();
    for (t, tenant) in tenants.iter().enumerate() {
        index.upsert(tenant, chunks(t)).await.unwrap();
    }
    index.close().await.unwrap();
    let mut run = BackupRun::begin(tmp.path().join("backups")).unwrap();
    backup_edge(&mut run, &src, None).await.unwrap();
    let done = run.finish().unwrap();

    let parent = tmp.path().join("mnt");
    let target = parent.join("vectors");
    std::fs::create_dir_all(&target).unwrap();
    let inode = std::fs::metadata(&target).unwrap().ino();
    restore_edge(&done.dir, None, &target).await.unwrap();
    assert_eq!(std::fs::metadata(&target).unwrap().ino(), inode, "the target directory itself was replaced");
    let left: Vec<String> =
        std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["vectors"], "no temporary sibling");
    assert!(!target.join(".selfrag-restore.partial").exists());
    let index = EdgeIndex::open(&target, spec, config()).await.unwrap();
    assert_all_points(&index, &tenants).await;
    index.close().await.unwrap();

    // A `.partial` run directory is never restored from, even with a manifest.
    let partial = done.dir.with_file_name(format!("{}.partial", done.dir.file_name().unwrap().to_string_lossy()));
    std::fs::rename(&done.dir, &partial).unwrap();
    let err = restore_edge(&partial, None, &tmp.path().join("other")).await.unwrap_err();
    assert_eq!(err.field(), Some("run"), "{err}");
    let err = verify_run(&partial, &PgTools::new(), false).await.unwrap_err();
    assert_eq!(err.field(), Some("run"), "{err}");
}

/// An index that is open and serving: `EdgeIndex::backup_to` takes a
/// point-in-time copy while a writer upserts and a reader searches, and
/// `backup_edge` backs that closed copy up; restored into a new directory,
/// it holds every point of the source at the copy's point in time (a
/// prefix of the writer's calls, each point equal to the source's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_index_is_backed_up_through_a_point_in_time_copy() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("vectors");
    let spec = IndexSpec::new(DIM, Distance::Euclid).unwrap();
    let tenant = Tenant::new("acme").unwrap();
    let index =
        Arc::new(EdgeIndex::open(&src, spec, EdgeIndexConfig::default().optimize_after_points(None)).await.unwrap());
    let all = chunks(0);
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let writer = {
        let (index, stop, acked, tenant, all) =
            (index.clone(), stop.clone(), acked.clone(), tenant.clone(), all.clone());
        tokio::spawn(async move {
            for (i, c) in all.into_iter().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                index.upsert(&tenant, vec![c]).await.unwrap();
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let reader = {
        let (index, stop, tenant) = (index.clone(), stop.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                index.search(&tenant, &SearchRequest::new(vector(0, 1), 3)).await.unwrap();
                n += 1;
            }
            n
        })
    };
    while acked.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = acked.load(Ordering::SeqCst);
    let copy = tmp.path().join("copy");
    let hot = index.backup_to(&copy).await.unwrap();
    let after = acked.load(Ordering::SeqCst) + 1;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(reader.await.unwrap() > 0, "searches ran during the backup");

    let root = tmp.path().join("backups");
    let mut run = BackupRun::begin(&root).unwrap();
    backup_edge(&mut run, &copy, None).await.unwrap();
    let done = run.finish().unwrap();
    verify_run(&done.dir, &PgTools::new(), false).await.unwrap();
    let restored = tmp.path().join("restored");
    restore_edge(&done.dir, None, &restored).await.unwrap();

    let source: std::collections::HashMap<_, _> =
        index.export_points().await.unwrap().into_iter().map(|p| (p.id, p)).collect();
    let back = EdgeIndex::open(&restored, spec, EdgeIndexConfig::default()).await.unwrap();
    let got = back.export_points().await.unwrap();
    let n = got.len();
    eprintln!("hot edge backup: hold {:?}, {n} points (acked {before} before, at most {after} started)", hot.hold);
    assert!((before..=after).contains(&n), "{n} points, expected {before}..={after}");
    let ids: Vec<ChunkId> = all[..n].iter().map(|c| c.id).collect();
    assert_eq!(back.get(&tenant, &ids).await.unwrap().len(), n, "the copy holds the first {n} calls");
    for p in &got {
        assert_eq!(Some(p), source.get(&p.id), "point {} differs from the source", p.id);
    }
    back.close().await.unwrap();
}
