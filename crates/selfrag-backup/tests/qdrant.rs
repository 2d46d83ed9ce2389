//! Qdrant snapshot round trip against a real server
//! (`SELFRAG_TEST_QDRANT_URL` = gRPC URL, plus `SELFRAG_TEST_QDRANT_REST_URL`
//! when the REST port cannot be derived (gRPC port other than 6334);
//! or a container). Skipped loudly without a server.

use selfrag_backup::qdrant::{list_qdrant_snapshots, prune_qdrant_snapshots};
use selfrag_backup::{backup_qdrant, restore_qdrant, verify_run, BackupRun, Error, PgTools, QdrantTarget};
use selfrag_core::{Chunk, ChunkId, Distance, IndexSpec, Tenant, VectorIndex};
use selfrag_qdrant::QdrantIndexConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_snapshot_round_trip() {
    let Some(server) = selfrag_testkit::servers::qdrant().await else { return };
    let collection = format!("bk_{}", uuid::Uuid::new_v4().simple());
    let mut target = QdrantTarget::new(&server.url, &collection);
    if let Ok(rest) = std::env::var("SELFRAG_TEST_QDRANT_REST_URL") {
        target = target.rest_url(rest);
    } else if target.rest_base().is_err() {
        // A container maps 6333 to a random port that the testkit does not
        // report: skip loudly rather than guess.
        let _: Option<()> = selfrag_testkit::servers::skip(
            "qdrant",
            "the REST URL cannot be derived from the gRPC URL; set SELFRAG_TEST_QDRANT_REST_URL",
        );
        return;
    }
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    let index = QdrantIndexConfig::new(&server.url, &collection, spec).build().unwrap();
    index.ensure().await.unwrap();
    let tenant = Tenant::new("acme").unwrap();
    let chunks: Vec<Chunk> =
        (0..50u32).map(|i| Chunk::new("doc", i, format!("chunk {i}"), vec![1.0, i as f32, 0.5, 2.0])).collect();
    index.upsert(&tenant, chunks.clone()).await.unwrap();

    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let entry = backup_qdrant(&mut run, &target, None).await.unwrap().clone();
    let info = entry.qdrant.clone().unwrap();
    assert!(!info.server_version.is_empty());
    // By default the server snapshot is deleted once the download checked out.
    assert!(list_qdrant_snapshots(&target).await.unwrap().is_empty(), "the backup left its snapshot on the server");
    let done = run.finish().unwrap();
    verify_run(&done.dir, &PgTools::new(), false).await.unwrap();

    // The collection still exists: a restore is refused unless asked to replace it.
    let err = restore_qdrant(&done.dir, None, &target).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(index.count(&tenant, None).await.unwrap(), 50);

    index.delete_collection().await.unwrap();
    let restored = restore_qdrant(&done.dir, None, &target).await.unwrap();
    assert_eq!(index.count(&tenant, None).await.unwrap(), 50);
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    assert_eq!(index.get(&tenant, &ids).await.unwrap().len(), 50);
    // The server keeps what was uploaded for the recovery in the
    // collection's snapshot directory (issue 19): the restore deleted it.
    assert_eq!(restored.leftover_snapshot, None, "{restored:?}");
    let left = list_qdrant_snapshots(&target).await.unwrap();
    assert!(left.is_empty(), "the restore left snapshots on the server: {left:?}");
    let replaced = restore_qdrant(&done.dir, None, &target.clone().replace(true)).await.unwrap();
    assert_eq!(index.count(&tenant, None).await.unwrap(), 50);
    assert_eq!(replaced.leftover_snapshot, None, "{replaced:?}");
    let left = list_qdrant_snapshots(&target).await.unwrap();
    assert!(left.is_empty(), "the restore with replace left snapshots on the server: {left:?}");

    // Two kept snapshots: retention with 0 days deletes one, keeps the newest.
    let kept = target.clone().keep_snapshot(true);
    for _ in 0..2 {
        let mut run = BackupRun::begin(root.path()).unwrap();
        backup_qdrant(&mut run, &kept, None).await.unwrap();
        run.finish().unwrap();
        // Snapshot names carry the time to the second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // Only the two backups: no restore upload is listed or counted.
    let listed = list_qdrant_snapshots(&target).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let report = prune_qdrant_snapshots(&target, 0, time::OffsetDateTime::now_utc(), false).await.unwrap();
    assert_eq!((report.deleted.len(), report.kept.len()), (1, 1), "{report:?}");
    assert_eq!(list_qdrant_snapshots(&target).await.unwrap().len(), 1, "{report:?}");
    index.delete_collection().await.unwrap();
}
