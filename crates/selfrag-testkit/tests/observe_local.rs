//! Spans and metrics of the in-process backends (`db.system.name` =
//! `selfrag_local`), captured by the testkit's subscriber and a debugging
//! recorder.

use selfrag_core::local::{LocalRateLimiter, LocalStore, LocalVectorIndex};
use selfrag_core::observe::system::LOCAL;
use selfrag_core::{Distance, IndexSpec, RateLimitPolicy, Window};
use selfrag_testkit::observe::{self, Capture, Metrics};

#[tokio::test]
async fn memory_calls_are_observed() {
    let store = LocalStore::new();
    observe::check_memory(&store, &store, LOCAL, "memory_logs").await;
}

#[tokio::test]
async fn session_calls_are_observed() {
    let store = LocalStore::new();
    observe::check_sessions(Some(&store), &store, LOCAL, "sessions").await;
}

#[tokio::test]
async fn rate_limit_calls_are_observed() {
    let policy = RateLimitPolicy::new([Window::per_minute(1).unwrap()]).unwrap();
    observe::check_rate_limiter(&LocalRateLimiter::new(policy), LOCAL, "local").await;
}

#[tokio::test]
async fn vector_calls_are_observed() {
    let index = LocalVectorIndex::new(IndexSpec::new(4, Distance::Cosine).unwrap());
    observe::check_vector_index(&index, LOCAL, "chunks").await;
}

/// The in-process backends have no server: no `server.*` attributes.
#[tokio::test]
async fn local_spans_name_no_server() {
    use selfrag_core::UserStore;
    let capture = Capture::new();
    let metrics = Metrics::new();
    let store = LocalStore::new();
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        store.create_user().await.unwrap();
    }
    let span = capture.op("create_user");
    assert_eq!(span.field("db.collection.name"), Some("users"));
    assert_eq!(span.field("server.address"), None);
    assert_eq!(span.field("server.port"), None);
    assert_eq!(metrics.counter(selfrag_core::observe::names::OPERATION_ERRORS, &[]), 0);
}
