//! Retention over fabricated run directories of various ages.

use std::path::Path;
use std::time::Duration;

use selfrag_backup::run::run_name;
use selfrag_backup::{list_runs, prune, Manifest, MANIFEST_FORMAT};
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
