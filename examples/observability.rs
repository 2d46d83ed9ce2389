//! Tracing spans and metrics of the storage calls: `tracing-subscriber`
//! prints each call's span when it closes, and a Prometheus recorder
//! (`metrics-exporter-prometheus`, no HTTP listener) collects the metrics,
//! printed at the end as a scrape would show them. The backends are the
//! in-process ones, so no server is needed.
//!
//! ```text
//! cargo run --example observability --features observability-example
//! ```
//!
//! A service serves `handle.render()` on its own `/metrics` route (or
//! lets the exporter's `http-listener` feature do it), and sends spans
//! to its tracing backend with `tracing-opentelemetry`.
//! docs/observability.md lists every span attribute and metric.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use selfrag::local::{LocalRateLimiter, LocalStore, LocalVectorIndex};
use selfrag::{
    Chunk, Distance, IndexSpec, MemoryQuery, MemoryStore, NewMemoryLog, NewSession, RateLimitKey, RateLimitPolicy,
    RateLimiter, SearchRequest, SessionStore, Tenant, UserStore, VectorIndex, Window,
};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans to stderr, one line as each closes, with its fields and time.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Histogram buckets (seconds) make `_bucket` series, which
    // `histogram_quantile` needs; without them the exporter renders
    // summaries.
    let buckets = [0.000_01, 0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
    let handle = PrometheusBuilder::new().set_buckets(&buckets)?.install_recorder()?;
    selfrag::observe::describe_metrics();

    let store = LocalStore::new();
    let user = store.create_user().await?;
    for fact in ["likes tea", "lives in Lyon", "has a cat"] {
        store.append(user, NewMemoryLog::new("fact", fact)?).await?;
    }
    store.query(user, &MemoryQuery::new().limit(10)).await?;
    // A failure: the span gets `error.type`, the error counter goes up.
    let _ = store.query(user, &MemoryQuery::new().limit(0)).await;

    let session = store.create(user, NewSession::new(Duration::from_secs(1800))?).await?;
    SessionStore::get(&store, user, session.id).await?;

    let limiter = LocalRateLimiter::new(RateLimitPolicy::new([Window::per_minute(2)?])?);
    let key = RateLimitKey::new(user, "chat")?;
    for _ in 0..3 {
        limiter.check(&key, 1).await?;
    }

    let index = LocalVectorIndex::new(IndexSpec::new(3, Distance::Cosine)?);
    let tenant = Tenant::new("acme")?;
    index.upsert(&tenant, vec![Chunk::new("handbook", 0, "Holidays are 25 days.", vec![0.1, 0.9, 0.2])]).await?;
    index.search(&tenant, &SearchRequest::new(vec![0.1, 0.8, 0.3], 3)).await?;

    println!("# What a Prometheus scrape of this process shows:");
    println!("{}", handle.render());
    Ok(())
}
