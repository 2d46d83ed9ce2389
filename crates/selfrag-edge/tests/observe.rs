//! Spans and metrics of the embedded index (`db.system.name` =
//! `qdrant_edge`): the vector calls, and the optimizer and flush activity,
//! which runs on other threads and so is read from a process-wide
//! debugging recorder.

use std::sync::OnceLock;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use selfrag_core::observe::{names, system::QDRANT_EDGE};
use selfrag_core::{Chunk, Distance, IndexSpec, Tenant, VectorIndex};
use selfrag_edge::{EdgeIndex, EdgeIndexConfig};
use selfrag_testkit::observe;

fn spec() -> IndexSpec {
    IndexSpec::new(4, Distance::Cosine).unwrap()
}

/// The process-wide recorder, installed once for this test binary.
fn global() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only global recorder of this binary");
        snapshotter
    })
}

#[tokio::test]
async fn vector_calls_are_observed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("observe-index");
    let index = EdgeIndex::open(&path, spec(), EdgeIndexConfig::default()).await.unwrap();
    observe::check_vector_index(&index, QDRANT_EDGE, "observe-index").await;
    index.close().await.unwrap();
}

#[tokio::test]
async fn flushes_and_optimizations_are_counted() {
    let snapshot = global();
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeIndex::open(dir.path().join("idx"), spec(), EdgeIndexConfig::default()).await.unwrap();
    let tenant = Tenant::new("t").unwrap();
    index.upsert(&tenant, vec![Chunk::new("d", 0, "x", vec![1.0, 0.0, 0.0, 0.0])]).await.unwrap();
    // A snapshot drains the recorder: this one empties it, the next one
    // holds what the calls below (and any background flush) recorded.
    snapshot.snapshot();
    index.flush().await.unwrap();
    index.optimize_now().await.unwrap();
    let after = snapshot.snapshot().into_vec();
    let sum = |name: &str| -> usize {
        after
            .iter()
            .filter(|(k, ..)| {
                k.key().name() == name && k.key().labels().any(|l| l.key() == "outcome" && l.value() == "ok")
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => usize::try_from(*n).unwrap(),
                DebugValue::Histogram(v) => v.len(),
                DebugValue::Gauge(_) => 0,
            })
            .sum()
    };
    assert!(sum(names::EDGE_FLUSHES) >= 1);
    assert!(sum(names::EDGE_FLUSH_DURATION) >= 1);
    assert!(sum(names::EDGE_OPTIMIZER_RUNS) >= 1);
    assert!(sum(names::EDGE_OPTIMIZER_DURATION) >= 1);
    index.close().await.unwrap();
}
