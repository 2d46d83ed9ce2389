//! Retention over fabricated run directories of various ages.

use std::path::Path;
use std::time::Duration;

use selfrag_backup::manifest::{EdgeInfo, PostgresInfo, QdrantInfo};
use selfrag_backup::run::run_name;
use selfrag_backup::{
    latest_run_where, latest_run_with, list_runs, prune, Entry, EntryKind, Manifest, RetentionClass, MANIFEST_FORMAT,
};
use time::macros::datetime;
use time::OffsetDateTime;

/// A run directory that looks like a finished (or, with `complete = false`,
/// crashed) run started at `at`.
fn fake_run(root: &Path, at: OffsetDateTime, complete: bool) -> String {
    let name = run_name(at);
    let dir = if complete { root.join(&name) } else { root.join(format!("{name}.partial")) };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("postgres.dump"), b"x").unwrap();
    if complete {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            run: name.clone(),
            started_at: at,
            finished_at: at,
            selfrag_version: "test".into(),
            entries: vec![],
        };
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

const NOW: OffsetDateTime = datetime!(2025-06-30 03:00 UTC);

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

#[test]
fn keeps_recent_runs_and_deletes_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let old1 = fake_run(root, NOW - days(90), true);
    let old2 = fake_run(root, NOW - days(31), true);
    let edge = fake_run(root, NOW - days(30) + Duration::from_secs(60), true); // 29 d 23 h 59 m: kept
    let recent = fake_run(root, NOW - days(1), true);
    let old_partial = fake_run(root, NOW - days(40), false);
    let new_partial = fake_run(root, NOW - Duration::from_secs(60), false);
    std::fs::create_dir(root.join("notes")).unwrap();
    std::fs::write(root.join("README"), b"not a run").unwrap();

    // Dry run: reports, deletes nothing.
    let before = names(root);
    let report = prune(root, 30, NOW, true).unwrap();
    assert_eq!(names(root), before);
    assert_eq!(report.deleted.len(), 3);

    let report = prune(root, 30, NOW, false).unwrap();
    let deleted: Vec<String> =
        report.deleted.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let mut expect_deleted = vec![old1, old_partial, old2];
    expect_deleted.sort();
    let mut deleted_sorted = deleted.clone();
    deleted_sorted.sort();
    assert_eq!(deleted_sorted, expect_deleted);
    let mut expect_left = vec![edge, recent, new_partial, "README".to_owned(), "notes".to_owned()];
    expect_left.sort();
    assert_eq!(names(root), expect_left);
}

#[test]
fn never_deletes_the_newest_complete_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = fake_run(root, NOW - days(100), true);
    let b = fake_run(root, NOW - days(60), true);
    // A newer run that crashed does not count as the newest good one.
    let crashed = fake_run(root, NOW - days(50), false);
    let report = prune(root, 30, NOW, false).unwrap();
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    assert_eq!(names(root), vec![b.clone()]);
    // Keep-days 0 still keeps it; a second prune is a no-op.
    let report = prune(root, 0, NOW, false).unwrap();
    assert!(report.deleted.is_empty());
    assert_eq!(names(root), vec![b]);
    let _ = (a, crashed);
}

#[test]
fn listing_orders_runs_and_tells_complete_from_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_run(root, NOW - days(2), true);
    fake_run(root, NOW - days(1), false);
    fake_run(root, NOW - days(3), true);
    let runs = list_runs(root).unwrap();
    assert_eq!(runs.iter().map(|r| r.is_complete()).collect::<Vec<_>>(), vec![true, true, false]);
    assert!(runs.windows(2).all(|w| w[0].started_at <= w[1].started_at));
    let latest = selfrag_backup::latest_run(root).unwrap();
    assert_eq!(latest.started_at, NOW - days(2));
    // A garbled manifest makes a run incomplete, not an error.
    std::fs::write(latest.dir.join("manifest.json"), b"{not json").unwrap();
    assert_eq!(selfrag_backup::latest_run(root).unwrap().started_at, NOW - days(3));
}

fn entry(kind: EntryKind, name: &str, table_only: bool, collection: &str) -> Entry {
    Entry {
        kind,
        name: name.into(),
        files: vec![],
        postgres: (kind == EntryKind::Postgres).then(|| PostgresInfo {
            database: "app".into(),
            schema: Some("selfrag".into()),
            tables: if table_only { vec!["memory_logs".into()] } else { vec!["users".into()] },
            table_only,
            server_version: "15.20".into(),
            server_version_num: 150020,
            pg_dump_version: "pg_dump (PostgreSQL) 15.20".into(),
            erasures: None,
        }),
        qdrant: (kind == EntryKind::Qdrant).then(|| QdrantInfo {
            collection: collection.into(),
            snapshot: "s".into(),
            server_version: "1.12.4".into(),
            server_checksum: None,
        }),
        edge: (kind == EntryKind::Edge).then(|| EdgeInfo {
            source: "/data/vectors".into(),
            disk_bytes: None,
            source_disk_bytes: None,
        }),
        duration_ms: 1,
    }
}

fn full_pg() -> Entry {
    entry(EntryKind::Postgres, "postgres", false, "")
}
fn table_pg() -> Entry {
    entry(EntryKind::Postgres, "postgres-memory_logs", true, "")
}
fn qdrant(c: &str) -> Entry {
    entry(EntryKind::Qdrant, &format!("qdrant-{c}"), false, c)
}
fn edge() -> Entry {
    entry(EntryKind::Edge, "edge", false, "")
}

/// A finished run started at `at` holding `entries`.
fn run_with(root: &Path, at: OffsetDateTime, entries: Vec<Entry>) -> String {
    let name = run_name(at);
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let m = Manifest {
        format: MANIFEST_FORMAT,
        run: name.clone(),
        started_at: at,
        finished_at: at,
        selfrag_version: "test".into(),
        entries,
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    name
}

#[test]
fn keeps_the_newest_run_of_each_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let _older_full = run_with(root, NOW - days(95), vec![full_pg(), qdrant("chunks")]);
    let full = run_with(root, NOW - days(90), vec![full_pg()]);
    let _oldest_chunks = run_with(root, NOW - days(80), vec![qdrant("chunks")]);
    let edge_run = run_with(root, NOW - days(60), vec![edge()]);
    let _older_chunks = run_with(root, NOW - days(50), vec![qdrant("chunks")]);
    let chunks = run_with(root, NOW - days(40), vec![qdrant("chunks"), table_pg()]);
    // Thirty days of failed full dumps: only table and Qdrant backups since.
    let tables = run_with(root, NOW - days(35), vec![table_pg()]);
    let other = run_with(root, NOW - days(31), vec![qdrant("other")]);
    prune(root, 30, NOW, false).unwrap();
    let mut expect = vec![full, edge_run, chunks, tables, other];
    expect.sort();
    assert_eq!(names(root), expect, "one run per kind survives: a table-only run does not protect a full dump");
}

#[test]
fn partial_runs_younger_than_a_day_survive_keep_days_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let done = run_with(root, NOW - days(3), vec![full_pg()]);
    let in_progress = fake_run(root, NOW - Duration::from_secs(3600), false);
    let crashed = fake_run(root, NOW - Duration::from_secs(25 * 3600), false);
    let report = prune(root, 0, NOW, false).unwrap();
    assert_eq!(names(root), vec![done, in_progress], "{report:?}");
    assert_eq!(report.deleted.len(), 1);
    assert!(report.deleted[0].ends_with(crashed));
    assert_eq!(selfrag_backup::PARTIAL_GRACE, Duration::from_secs(86_400));
}

#[test]
fn latest_run_with_picks_the_newest_run_holding_that_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run_with(root, NOW - days(3), vec![full_pg()]);
    run_with(root, NOW - days(2), vec![table_pg(), edge()]);
    run_with(root, NOW - days(1), vec![qdrant("chunks")]);
    assert_eq!(selfrag_backup::latest_run(root).unwrap().started_at, NOW - days(1));
    assert_eq!(latest_run_with(root, EntryKind::Postgres).unwrap().started_at, NOW - days(2));
    assert_eq!(latest_run_with(root, EntryKind::Edge).unwrap().started_at, NOW - days(2));
    assert_eq!(latest_run_with(root, EntryKind::Qdrant).unwrap().started_at, NOW - days(1));
    let full = latest_run_where(root, |e| e.retention_class() == Some(RetentionClass::PostgresFull)).unwrap();
    assert_eq!(full.started_at, NOW - days(3));
    let err = latest_run_where(root, |e| e.name == "nothing").unwrap_err();
    assert!(matches!(err, selfrag_backup::Error::NotFound { .. }), "{err}");
}

#[test]
fn a_partial_run_with_a_manifest_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = run_with(root, NOW - days(1), vec![full_pg()]);
    let partial = root.join(format!("{name}.partial"));
    std::fs::rename(root.join(&name), &partial).unwrap();
    let err = Manifest::read(&partial).unwrap_err();
    assert_eq!(err.field(), Some("run"), "{err}");
    assert!(list_runs(root).unwrap().iter().all(|r| !r.is_complete()));
}
