//! What a process crash keeps under each `Durability` setting.
//!
//! `process_crash_keeps_what_durability_promises` runs this test binary
//! again as a child (`crash_child`, which does nothing unless
//! `SELFRAG_EDGE_CRASH_DIR` is set), lets it write and then abort without
//! any cleanup (no drop, no flush: what `kill -9` or an abort does), and
//! reopens the directory.

use std::process::Command;
use std::time::Duration;

use selfrag_core::{Chunk, Distance, IndexSpec, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig};

const POINTS: u32 = 50;

fn durability(mode: &str) -> Durability {
    match mode {
        "every" => Durability::FlushEveryWrite,
        "periodic" => Durability::Periodic(Duration::from_millis(100)),
        _ => Durability::OnClose,
    }
}

fn config(mode: &str) -> EdgeIndexConfig {
    EdgeIndexConfig::default().durability(durability(mode)).optimize_after_points(None)
}

fn spec() -> IndexSpec {
    IndexSpec::new(4, Distance::Cosine).unwrap()
}

/// The child's side; a no-op in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var("SELFRAG_EDGE_CRASH_DIR"), std::env::var("SELFRAG_EDGE_CRASH_MODE"))
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let index = EdgeIndex::open(&dir, spec(), config(&mode)).await.unwrap();
        let t = Tenant::new("t").unwrap();
        for i in 0..POINTS {
            index.upsert(&t, vec![Chunk::new("d", i, "x", vec![1.0, i as f32, 0.0, 1.0])]).await.unwrap();
        }
        if mode == "periodic" {
            // Longer than the period: a flush has happened since the last write.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        std::process::abort();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_crash_keeps_what_durability_promises() {
    let exe = std::env::current_exe().unwrap();
    for mode in ["every", "periodic", "onclose"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let status = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("SELFRAG_EDGE_CRASH_DIR", &path)
            .env("SELFRAG_EDGE_CRASH_MODE", mode)
            .status()
            .unwrap();
        assert!(!status.success(), "{mode}: the child was meant to abort");
        let index = EdgeIndex::open(&path, spec(), config(mode)).await.unwrap();
        let count = index.count(&Tenant::new("t").unwrap(), None).await.unwrap();
        println!("{mode}: {count} of {POINTS} points survived the crash");
        match mode {
            "every" | "periodic" => assert_eq!(count, u64::from(POINTS), "{mode}"),
            // OnClose keeps only what was flushed (here: nothing after
            // open): qdrant-edge 0.7.2 does not replay its WAL. If this
            // fails, the engine started replaying it: update the docs of
            // `Durability`.
            _ => assert_eq!(count, 0, "{mode}"),
        }
        index.close().await.unwrap();
    }
}
