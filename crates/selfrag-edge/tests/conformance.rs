//! The vector conformance suite of `selfrag-testkit`, on `EdgeIndex`: every
//! index the suite asks for is a fresh directory under one temporary
//! directory that lives as long as the fixture.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use selfrag_core::VectorIndex;
use selfrag_edge::{EdgeIndex, EdgeIndexConfig};
use selfrag_testkit::VectorFixture;

async fn fixture() -> Option<VectorFixture> {
    let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
    let root = dir.path().to_path_buf();
    let counter = Arc::new(AtomicUsize::new(0));
    Some(
        VectorFixture::new(move |spec| {
            let path = root.join(format!("index-{}", counter.fetch_add(1, Ordering::SeqCst)));
            Box::pin(async move {
                let index = EdgeIndex::open(path, spec, EdgeIndexConfig::default()).await?;
                Ok(Arc::new(index) as Arc<dyn VectorIndex>)
            })
        })
        .with_guard(dir),
    )
}

selfrag_testkit::vector_index_tests!(fixture);
