//! Observability: one `tracing` span and a few metrics per storage call.
//!
//! Every trait method of every backend runs its work through
//! [`OpMeta::run`], which opens a span named `selfrag.storage` (target
//! `selfrag_storage`, level `INFO`) with the attributes of the OpenTelemetry
//! database client conventions, times the call, and records through the
//! [`metrics`] facade:
//!
//! | metric | kind | unit | labels |
//! | --- | --- | --- | --- |
//! | [`names::OPERATION_DURATION`] | histogram | seconds | `db.system.name`, `db.operation.name`, `db.collection.name`, `error.type` (failures only) |
//! | [`names::OPERATION_ERRORS`] | counter | errors | `db.system.name`, `db.operation.name`, `db.collection.name`, `error.type` |
//! | [`names::CONNECTION_COUNT`] | gauge | connections | `db.system.name`, `db.client.connection.pool.name`, `db.client.connection.state` (`idle`, `used`) |
//! | [`names::CONNECTION_MAX`] | gauge | connections | `db.system.name`, `db.client.connection.pool.name` |
//! | [`names::CONNECTION_PENDING`] | gauge | requests | `db.system.name`, `db.client.connection.pool.name` |
//! | [`names::RATE_LIMIT_DECISIONS`] | counter | decisions | `db.system.name`, `decision` (`allowed`, `denied`), `source` |
//!
//! The embedded engine adds its optimizer and flush metrics
//! ([`names::EDGE_OPTIMIZER_RUNS`] and the rest). docs/observability.md
//! lists everything with example queries.
//!
//! Nothing a user stored (content, metadata, vectors, session data, filter
//! values) ever reaches a span or a label: the attributes are the backend,
//! the operation, the table or collection, the server's host and port (never
//! credentials), a row count and the error kind.
//!
//! With no `tracing` subscriber the span is disabled at its call site (one
//! relaxed atomic load) and its attributes are never computed; with no
//! metrics recorder the facade's no-op recorder drops the values.
//! `selfrag-bench --observability` measures both cases.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, gauge, histogram, SharedString};
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::Result;
use crate::ids::UserId;
use crate::memory::{MemoryLog, MemoryPage};
use crate::ratelimit::RateLimitDecision;
use crate::session::Session;

/// Values of `db.system.name`.
pub mod system {
    /// PostgreSQL (`selfrag-postgres`).
    pub const POSTGRESQL: &str = "postgresql";
    /// Redis, one server or a cluster (`selfrag-redis`).
    pub const REDIS: &str = "redis";
    /// A Qdrant server or cluster (`selfrag-qdrant`).
    pub const QDRANT: &str = "qdrant";
    /// The Qdrant engine embedded in the process (`selfrag-edge`).
    pub const QDRANT_EDGE: &str = "qdrant_edge";
    /// The in-process backends of [`crate::local`].
    pub const LOCAL: &str = "selfrag_local";
}

/// Names of the span, its target and the metrics.
pub mod names {
    /// The `tracing` target of every span (filter with
    /// `RUST_LOG=selfrag_storage=info`).
    pub const TARGET: &str = "selfrag_storage";
    /// The name of every operation span (`otel.name` holds the
    /// conventional `"{operation} {collection}"`).
    pub const SPAN: &str = "selfrag.storage";
    /// Histogram of call durations, in seconds.
    pub const OPERATION_DURATION: &str = "db.client.operation.duration";
    /// Counter of failed calls.
    pub const OPERATION_ERRORS: &str = "selfrag.operation.errors";
    /// Gauge of pooled connections by state (`idle`, `used`).
    pub const CONNECTION_COUNT: &str = "db.client.connection.count";
    /// Gauge of the pool's maximum size.
    pub const CONNECTION_MAX: &str = "db.client.connection.max";
    /// Gauge of callers waiting for a pooled connection.
    pub const CONNECTION_PENDING: &str = "db.client.connection.pending_requests";
    /// Counter of rate-limit decisions.
    pub const RATE_LIMIT_DECISIONS: &str = "selfrag.ratelimit.decisions";
    /// Counter of embedded-index optimizer runs (label `outcome`).
    pub const EDGE_OPTIMIZER_RUNS: &str = "selfrag.edge.optimizer.runs";
    /// Histogram of embedded-index optimizer run durations, in seconds.
    pub const EDGE_OPTIMIZER_DURATION: &str = "selfrag.edge.optimizer.duration";
    /// Counter of embedded-index flushes (label `outcome`).
    pub const EDGE_FLUSHES: &str = "selfrag.edge.flushes";
    /// Histogram of embedded-index flush durations, in seconds.
    pub const EDGE_FLUSH_DURATION: &str = "selfrag.edge.flush.duration";
}

/// Registers a description and unit for every metric with the installed
/// recorder (exporters print them as `# HELP` lines). Optional; call it
/// once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(names::OPERATION_DURATION, Unit::Seconds, "Duration of selfrag storage calls");
    describe_counter!(names::OPERATION_ERRORS, Unit::Count, "Failed selfrag storage calls, by error.type");
    describe_gauge!(names::CONNECTION_COUNT, Unit::Count, "Pooled connections by state (idle, used)");
    describe_gauge!(names::CONNECTION_MAX, Unit::Count, "Maximum size of the connection pool");
    describe_gauge!(names::CONNECTION_PENDING, Unit::Count, "Callers waiting for a pooled connection");
    describe_counter!(names::RATE_LIMIT_DECISIONS, Unit::Count, "Rate-limit decisions by decision and source");
    describe_counter!(names::EDGE_OPTIMIZER_RUNS, Unit::Count, "Optimizer runs of embedded indexes");
    describe_histogram!(names::EDGE_OPTIMIZER_DURATION, Unit::Seconds, "Duration of embedded-index optimizer runs");
    describe_counter!(names::EDGE_FLUSHES, Unit::Count, "Flushes of embedded indexes to disk");
    describe_histogram!(names::EDGE_FLUSH_DURATION, Unit::Seconds, "Duration of embedded-index flushes");
}

/// What every span of one store carries: the backend, and where applicable
/// the database (or key prefix) and the server's host and port. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct OpMeta {
    system: &'static str,
    namespace: Option<Arc<str>>,
    server_address: Option<Arc<str>>,
    server_port: Option<u16>,
}

impl OpMeta {
    /// Spans of backend `system` (one of [`system`]'s values).
    pub const fn new(system: &'static str) -> Self {
        Self { system, namespace: None, server_address: None, server_port: None }
    }

    /// With `db.namespace` (a database name, a key prefix).
    pub fn with_namespace(mut self, namespace: impl Into<Arc<str>>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// With `server.address` and `server.port`. Pass a host name or IP
    /// address only, never a URL with credentials.
    pub fn with_server(mut self, address: impl Into<Arc<str>>, port: Option<u16>) -> Self {
        self.server_address = Some(address.into());
        self.server_port = port;
        self
    }

    /// `db.system.name`.
    pub fn system(&self) -> &'static str {
        self.system
    }

    /// `db.namespace`, if known.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// `server.port`, if known.
    pub fn server_port(&self) -> Option<u16> {
        self.server_port
    }

    /// `server.address`, if known.
    pub fn server_address(&self) -> Option<&str> {
        self.server_address.as_deref()
    }

    /// Runs `work`, the body of operation `operation` on `collection` (a
    /// table, a key family, a Qdrant collection), inside its span, and
    /// records its duration and, on failure, its error kind.
    ///
    /// # Errors
    /// Those of `work`, unchanged.
    pub async fn run<T, F>(&self, collection: impl Into<SharedString>, operation: &'static str, work: F) -> Result<T>
    where
        T: Rows,
        F: Future<Output = Result<T>>,
    {
        let collection: SharedString = collection.into();
        let span = tracing::info_span!(
            target: "selfrag_storage",
            "selfrag.storage",
            otel.name = %OtelName(operation, &collection),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = self.system,
            db.operation.name = operation,
            db.collection.name = &*collection,
            db.namespace = self.namespace.as_deref(),
            server.address = self.server_address.as_deref(),
            server.port = self.server_port,
            db.response.returned_rows = Empty,
            error.type = Empty,
        );
        let start = Instant::now();
        let result = work.instrument(span.clone()).await;
        let seconds = start.elapsed().as_secs_f64();
        match &result {
            Ok(value) => {
                if let Some(rows) = value.rows() {
                    span.record("db.response.returned_rows", rows);
                }
                histogram!(
                    names::OPERATION_DURATION,
                    "db.system.name" => self.system,
                    "db.operation.name" => operation,
                    "db.collection.name" => collection,
                )
                .record(seconds);
            }
            Err(e) => {
                let kind = e.kind().as_str();
                span.record("error.type", kind);
                span.record("otel.status_code", "ERROR");
                histogram!(
                    names::OPERATION_DURATION,
                    "db.system.name" => self.system,
                    "db.operation.name" => operation,
                    "db.collection.name" => collection.clone(),
                    "error.type" => kind,
                )
                .record(seconds);
                counter!(
                    names::OPERATION_ERRORS,
                    "db.system.name" => self.system,
                    "db.operation.name" => operation,
                    "db.collection.name" => collection,
                    "error.type" => kind,
                )
                .increment(1);
            }
        }
        result
    }
}

/// `otel.name`, the conventional `"{operation} {collection}"`: written by
/// the subscriber when it reads the field, so nothing is formatted when no
/// subscriber listens (and no second `record` call when one does).
struct OtelName<'a>(&'static str, &'a str);

impl std::fmt::Display for OtelName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// A connection pool's state, as the pool gauges show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now (idle and in use).
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// Sets the pool gauges of pool `pool` (its `host:port/database`, no
/// credentials) of backend `system`.
pub fn record_pool(system: &'static str, pool: impl Into<SharedString>, status: PoolStatus) {
    let pool: SharedString = pool.into();
    let f = |n: usize| n as f64;
    let used = status.size.saturating_sub(status.available);
    gauge!(names::CONNECTION_COUNT, "db.system.name" => system, "db.client.connection.pool.name" => pool.clone(), "db.client.connection.state" => "idle")
        .set(f(status.available));
    gauge!(names::CONNECTION_COUNT, "db.system.name" => system, "db.client.connection.pool.name" => pool.clone(), "db.client.connection.state" => "used")
        .set(f(used));
    gauge!(names::CONNECTION_MAX, "db.system.name" => system, "db.client.connection.pool.name" => pool.clone())
        .set(f(status.max_size));
    gauge!(names::CONNECTION_PENDING, "db.system.name" => system, "db.client.connection.pool.name" => pool)
        .set(f(status.waiting));
}

/// Counts one rate-limit decision of backend `system`: `source` says who
/// decided (`local`, `redis`, or a failure policy: `fail_open`, `fallback`).
pub fn record_rate_limit(system: &'static str, allowed: bool, source: &'static str) {
    let decision = if allowed { "allowed" } else { "denied" };
    counter!(names::RATE_LIMIT_DECISIONS, "db.system.name" => system, "decision" => decision, "source" => source)
        .increment(1);
}

/// What a call's result says about the rows or points it returned or
/// changed, recorded as the span's `db.response.returned_rows`.
pub trait Rows {
    /// The count, when the result carries one.
    fn rows(&self) -> Option<u64> {
        None
    }
}

fn count(n: usize) -> Option<u64> {
    Some(u64::try_from(n).unwrap_or(u64::MAX))
}

impl Rows for () {}
impl Rows for RateLimitDecision {}
impl Rows for bool {
    fn rows(&self) -> Option<u64> {
        Some(u64::from(*self))
    }
}
impl Rows for u64 {
    fn rows(&self) -> Option<u64> {
        Some(*self)
    }
}
impl<T> Rows for Vec<T> {
    fn rows(&self) -> Option<u64> {
        count(self.len())
    }
}
impl<T> Rows for Option<T> {
    fn rows(&self) -> Option<u64> {
        Some(u64::from(self.is_some()))
    }
}
impl Rows for UserId {
    fn rows(&self) -> Option<u64> {
        Some(1)
    }
}
impl Rows for MemoryLog {
    fn rows(&self) -> Option<u64> {
        Some(1)
    }
}
impl Rows for Session {
    fn rows(&self) -> Option<u64> {
        Some(1)
    }
}
impl Rows for MemoryPage {
    fn rows(&self) -> Option<u64> {
        count(self.logs.len())
    }
}
impl Rows for crate::vector::ChunkPage {
    fn rows(&self) -> Option<u64> {
        count(self.chunks.len())
    }
}
