//! Capturing what the stores emit: a `tracing` subscriber that keeps every
//! span's and event's fields ([`Capture`]), and checks over it and over a
//! `metrics-util` debugging recorder's snapshot ([`Metrics`]).
//!
//! Both are installed for the current thread only, so tests of one binary
//! do not see each other's spans: use them from a current-thread runtime
//! (`#[tokio::test]`'s default).
//!
//! ```no_run
//! # async fn demo(store: &dyn selfrag_core::MemoryStore, user: selfrag_core::UserId) {
//! use selfrag_testkit::observe::{Capture, Metrics};
//! let capture = Capture::new();
//! let metrics = Metrics::new();
//! {
//!     let _spans = capture.set_default();
//!     let _metrics = metrics.set_default();
//!     let _ = store.get(user, selfrag_core::MemoryLogId::new()).await;
//! }
//! let span = capture.op("get");
//! assert_eq!(span.field("db.operation.name"), Some("get"));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// One span (or event) and its fields, values as text.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The span's name (for an event, its metadata name).
    pub name: String,
    /// The target.
    pub target: String,
    /// Whether this is an event rather than a span.
    pub event: bool,
    /// Every field recorded, at creation or later.
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    /// A field's value as text.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A subscriber that keeps everything; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    items: Arc<Mutex<Vec<Captured>>>,
}

struct Visitor<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs this capture as the current thread's subscriber until the
    /// guard drops.
    pub fn set_default(&self) -> tracing::subscriber::DefaultGuard {
        keep_interest_per_thread();
        let guard = tracing::subscriber::set_default(self.clone());
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// Everything captured so far.
    pub fn all(&self) -> Vec<Captured> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The storage operation spans (`selfrag.storage`).
    pub fn ops(&self) -> Vec<Captured> {
        self.all().into_iter().filter(|c| !c.event && c.name == selfrag_core::observe::names::SPAN).collect()
    }

    /// The last storage span of operation `operation`.
    ///
    /// # Panics
    /// When there is none.
    pub fn op(&self, operation: &str) -> Captured {
        self.ops()
            .into_iter()
            .rev()
            .find(|c| c.field("db.operation.name") == Some(operation))
            .unwrap_or_else(|| panic!("no span of operation {operation}; spans: {:#?}", self.ops()))
    }

    /// Panics if any field of any span or event contains one of `needles`.
    pub fn assert_absent(&self, needles: &[&str]) {
        for c in self.all() {
            for (k, v) in &c.fields {
                for n in needles {
                    assert!(!v.contains(n) && !k.contains(n), "{n:?} appears in field {k} of {}: {v}", c.name);
                }
            }
        }
    }

    fn push(&self, c: Captured) -> u64 {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.push(c);
        items.len() as u64
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut c = Captured {
            name: span.metadata().name().to_owned(),
            target: span.metadata().target().to_owned(),
            ..Captured::default()
        };
        span.record(&mut Visitor(&mut c.fields));
        Id::from_u64(self.push(c))
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::try_from(span.into_u64() - 1).expect("span index");
        if let Some(c) = items.get_mut(index) {
            values.record(&mut Visitor(&mut c.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut c = Captured {
            name: event.metadata().name().to_owned(),
            target: event.metadata().target().to_owned(),
            event: true,
            ..Captured::default()
        };
        event.record(&mut Visitor(&mut c.fields));
        self.push(c);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Keeps `tracing` asking each thread's own subscriber about every callsite.
///
/// `tracing-core` caches, per callsite, the interest of the registered
/// subscribers. While exactly one is registered (one capturing test), a
/// callsite first hit on *another* thread (a parallel test without a
/// subscriber) is asked of that thread's default, which is none: the callsite
/// is cached as "never" and the capturing test loses its spans from then on
/// (seen in CI: an upsert span captured, the searches after it not). With a
/// second subscriber registered for the whole process, interest is combined
/// over every registered one and becomes "sometimes", so each span asks the
/// current thread's subscriber.
fn keep_interest_per_thread() {
    struct Undecided;
    impl Subscriber for Undecided {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    static KEPT: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| tracing::Dispatch::new(Undecided));
}

/// A `metrics-util` debugging recorder and reads of its snapshot.
///
/// A snapshot drains the recorder (counters and gauges to zero, histograms
/// emptied), so the first read takes one and every later read sees that
/// one: read after the calls under test.
#[derive(Debug)]
pub struct Metrics {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
    taken: Mutex<Option<Vec<Sample>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One metric in a snapshot: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: Value,
}

/// A metric's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's total.
    Counter(u64),
    /// A gauge's last value.
    Gauge(f64),
    /// Every value a histogram recorded.
    Histogram(Vec<f64>),
}

impl Metrics {
    /// A fresh recorder.
    pub fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Self { recorder, snapshotter, taken: Mutex::new(None) }
    }

    /// Installs the recorder for the current thread until the guard drops.
    pub fn set_default(&self) -> metrics::LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(&self.recorder)
    }

    /// Every metric recorded before the first read.
    pub fn samples(&self) -> Vec<Sample> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken
            .get_or_insert_with(|| {
                self.snapshotter
                    .snapshot()
                    .into_vec()
                    .into_iter()
                    .map(|(key, _, _, value)| {
                        let key = key.key();
                        Sample {
                            name: key.name().to_owned(),
                            labels: key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect(),
                            value: match value {
                                DebugValue::Counter(n) => Value::Counter(n),
                                DebugValue::Gauge(v) => Value::Gauge(v.0),
                                DebugValue::Histogram(v) => Value::Histogram(v.into_iter().map(|x| x.0).collect()),
                            },
                        }
                    })
                    .collect()
            })
            .clone()
    }

    /// The samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
        self.samples()
            .into_iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The sum of the counters named `name` with `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(name, labels).iter().map(|s| if let Value::Counter(n) = s.value { n } else { 0 }).sum()
    }

    /// How many values the histograms named `name` with `labels` hold.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.find(name, labels).iter().map(|s| if let Value::Histogram(v) = &s.value { v.len() } else { 0 }).sum()
    }

    /// The value of the gauge named `name` with `labels`, if set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).iter().find_map(|s| if let Value::Gauge(v) = s.value { Some(v) } else { None })
    }

    /// Panics if any metric name, label name or label value contains one of
    /// `needles`.
    pub fn assert_absent(&self, needles: &[&str]) {
        for s in self.samples() {
            for n in needles {
                assert!(!s.name.contains(n), "{n:?} appears in metric name {}", s.name);
                for (k, v) in &s.labels {
                    assert!(!k.contains(n) && !v.contains(n), "{n:?} appears in label {k}={v} of {}", s.name);
                }
            }
        }
    }
}

/// Content and metadata the checks store, which no span or metric may
/// show.
pub const SECRET_CONTENT: &str = "observe-secret-content-7f3a";
/// A metadata value the checks store.
pub const SECRET_META: &str = "observe-secret-meta-91c2";

fn assert_op(span: &Captured, system: &str, collection: &str) {
    assert_eq!(span.target, selfrag_core::observe::names::TARGET, "{span:?}");
    assert_eq!(span.field("db.system.name"), Some(system), "{span:?}");
    assert_eq!(span.field("db.collection.name"), Some(collection), "{span:?}");
    assert_eq!(span.field("otel.kind"), Some("client"), "{span:?}");
    let op = span.field("db.operation.name").expect("operation");
    assert_eq!(span.field("otel.name"), Some(format!("{op} {collection}").as_str()), "{span:?}");
}

fn assert_failed(span: &Captured, kind: &str) {
    assert_eq!(span.field("error.type"), Some(kind), "{span:?}");
    assert_eq!(span.field("otel.status_code"), Some("ERROR"), "{span:?}");
}

fn assert_metrics(metrics: &Metrics, system: &str, op: &str, failures: &[(&str, u64)]) {
    let labels = [("db.system.name", system), ("db.operation.name", op)];
    assert!(metrics.histogram_count(selfrag_core::observe::names::OPERATION_DURATION, &labels) >= 1, "{op}");
    for (kind, n) in failures {
        let with_kind = [labels[0], labels[1], ("error.type", *kind)];
        assert_eq!(metrics.counter(selfrag_core::observe::names::OPERATION_ERRORS, &with_kind), *n, "{op} {kind}");
        assert!(metrics.histogram_count(selfrag_core::observe::names::OPERATION_DURATION, &with_kind) >= 1);
    }
}

/// Spans and metrics of memory calls on `system` (table `collection`): a
/// successful append, get and query, and a failed append (unknown user) and
/// query (bad limit). Nothing stored and no user id shows. Run it on a
/// current-thread runtime.
pub async fn check_memory(
    users: &dyn selfrag_core::UserStore,
    memory: &dyn selfrag_core::MemoryStore,
    system: &str,
    collection: &str,
) {
    use selfrag_core::{MemoryQuery, NewMemoryLog, UserId};
    let (capture, metrics) = (Capture::new(), Metrics::new());
    let user = users.create_user().await.expect("create user");
    let stranger = UserId::new();
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        let log = NewMemoryLog::new("fact", SECRET_CONTENT)
            .expect("log")
            .with_metadata(serde_json::json!({ "k": SECRET_META }))
            .expect("metadata");
        let stored = memory.append(user, log).await.expect("append");
        assert!(memory.get(user, stored.id).await.expect("get").is_some());
        let page = memory.query(user, &MemoryQuery::new().limit(10)).await.expect("query");
        assert_eq!(page.logs.len(), 1);
        // A fresh log (a new id): the same one would be a conflict first.
        let log = NewMemoryLog::new("fact", SECRET_CONTENT).expect("log");
        let err = memory.append(stranger, log).await.expect_err("unknown user");
        assert_eq!(err.kind(), selfrag_core::ErrorKind::NotFound);
        memory.query(user, &MemoryQuery::new().limit(0)).await.expect_err("limit 0");
    }
    let appends: Vec<Captured> =
        capture.ops().into_iter().filter(|c| c.field("db.operation.name") == Some("append")).collect();
    assert_eq!(appends.len(), 2, "{appends:#?}");
    assert_op(&appends[0], system, collection);
    assert_eq!(appends[0].field("db.response.returned_rows"), Some("1"));
    assert_eq!(appends[0].field("error.type"), None);
    assert_failed(&appends[1], "not_found");
    let get = capture.op("get");
    assert_op(&get, system, collection);
    assert_eq!(get.field("db.response.returned_rows"), Some("1"));
    let query = capture.op("query");
    assert_failed(&query, "invalid_input");
    assert_metrics(&metrics, system, "append", &[("not_found", 1)]);
    assert_metrics(&metrics, system, "query", &[("invalid_input", 1)]);
    assert_metrics(&metrics, system, "get", &[]);
    let (user, stranger) = (user.to_string(), stranger.to_string());
    let needles = [SECRET_CONTENT, SECRET_META, user.as_str(), stranger.as_str()];
    capture.assert_absent(&needles);
    metrics.assert_absent(&needles);
}

/// Spans and metrics of session calls: create (with data), get, a failed
/// `list_recent` (limit 0). No session data and no user id shows.
pub async fn check_sessions(
    users: Option<&dyn selfrag_core::UserStore>,
    sessions: &dyn selfrag_core::SessionStore,
    system: &str,
    collection: &str,
) {
    use selfrag_core::{NewSession, UserId};
    let (capture, metrics) = (Capture::new(), Metrics::new());
    let user = match users {
        Some(u) => u.create_user().await.expect("create user"),
        None => UserId::new(),
    };
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        let new = NewSession::new(std::time::Duration::from_secs(60))
            .expect("ttl")
            .with_data(serde_json::json!({ "secret": SECRET_CONTENT }))
            .expect("data");
        let s = sessions.create(user, new).await.expect("create");
        assert!(sessions.get(user, s.id).await.expect("get").is_some());
        sessions.list_recent(user, 0).await.expect_err("limit 0");
    }
    let create = capture.op("create");
    assert_op(&create, system, collection);
    assert_eq!(create.field("db.response.returned_rows"), Some("1"));
    let get = capture.op("get");
    assert_op(&get, system, collection);
    assert_eq!(get.field("db.response.returned_rows"), Some("1"));
    let list = capture.op("list_recent");
    assert_op(&list, system, collection);
    assert_failed(&list, "invalid_input");
    assert_metrics(&metrics, system, "get", &[]);
    assert_metrics(&metrics, system, "list_recent", &[("invalid_input", 1)]);
    let user = user.to_string();
    capture.assert_absent(&[SECRET_CONTENT, user.as_str()]);
    metrics.assert_absent(&[SECRET_CONTENT, user.as_str()]);
}

/// Spans and metrics of rate-limit calls on a limiter whose policy allows
/// one request a minute: an allowed check, a denied one, a failed one (cost
/// 0). `source` is the decision counter's `source` label.
pub async fn check_rate_limiter(limiter: &dyn selfrag_core::RateLimiter, system: &str, source: &str) {
    use selfrag_core::{RateLimitKey, UserId};
    let (capture, metrics) = (Capture::new(), Metrics::new());
    let user = UserId::new();
    let key = RateLimitKey::new(user, SECRET_CONTENT).expect("key");
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        assert!(limiter.check(&key, 1).await.expect("first").allowed);
        assert!(!limiter.check(&key, 1).await.expect("second").allowed);
        limiter.check(&key, 0).await.expect_err("cost 0");
    }
    let checks: Vec<Captured> =
        capture.ops().into_iter().filter(|c| c.field("db.operation.name") == Some("check")).collect();
    assert_eq!(checks.len(), 3, "{checks:#?}");
    assert_op(&checks[0], system, "rate_limits");
    assert_failed(&checks[2], "invalid_input");
    let decisions = selfrag_core::observe::names::RATE_LIMIT_DECISIONS;
    let of = |d: &'static str| [("db.system.name", system), ("decision", d), ("source", source)];
    assert_eq!(metrics.counter(decisions, &of("allowed")), 1);
    assert_eq!(metrics.counter(decisions, &of("denied")), 1);
    assert_metrics(&metrics, system, "check", &[("invalid_input", 1)]);
    let user = user.to_string();
    capture.assert_absent(&[SECRET_CONTENT, user.as_str()]);
    metrics.assert_absent(&[SECRET_CONTENT, user.as_str()]);
}

/// Spans and metrics of vector calls on an index of dimension 4: an upsert
/// (chunk text secret), a search, a failed search (wrong dimension).
/// Neither text, vectors nor the tenant show.
pub async fn check_vector_index(index: &dyn selfrag_core::VectorIndex, system: &str, collection: &str) {
    use selfrag_core::{Chunk, SearchRequest, Tenant};
    let (capture, metrics) = (Capture::new(), Metrics::new());
    let tenant = Tenant::new("observe-tenant-5d1e").expect("tenant");
    let vector = vec![0.125_f32, 0.25, 0.375, 0.5];
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        index.upsert(&tenant, vec![Chunk::new("doc", 0, SECRET_CONTENT, vector.clone())]).await.expect("upsert");
        let found = index.search(&tenant, &SearchRequest::new(vector.clone(), 5)).await.expect("search");
        assert_eq!(found.len(), 1);
        index.search(&tenant, &SearchRequest::new(vec![1.0; 3], 5)).await.expect_err("wrong dimension");
    }
    let upsert = capture.op("upsert");
    assert_op(&upsert, system, collection);
    let searches: Vec<Captured> =
        capture.ops().into_iter().filter(|c| c.field("db.operation.name") == Some("search")).collect();
    assert_eq!(searches.len(), 2, "{searches:#?}");
    assert_eq!(searches[0].field("db.response.returned_rows"), Some("1"));
    assert_failed(&searches[1], "invalid_input");
    assert_metrics(&metrics, system, "upsert", &[]);
    assert_metrics(&metrics, system, "search", &[("invalid_input", 1)]);
    let needles = [SECRET_CONTENT, "observe-tenant-5d1e", "0.125", "0.375"];
    capture.assert_absent(&needles);
    metrics.assert_absent(&needles);
}

#[cfg(test)]
mod tests {
    use super::Capture;
    use std::sync::mpsc;

    fn probe() {
        let _span = tracing::info_span!(target: "selfrag_testkit_probe", "probe").entered();
    }

    /// A callsite first hit on a thread with no subscriber, while a capture
    /// is installed on another thread, is still captured there afterwards.
    #[test]
    fn a_callsite_first_hit_elsewhere_is_still_captured() {
        let capture = Capture::new();
        let (installed_tx, installed_rx) = mpsc::channel();
        let (hit_tx, hit_rx) = mpsc::channel();
        let capturing = {
            let capture = capture.clone();
            std::thread::spawn(move || {
                let _guard = capture.set_default();
                installed_tx.send(()).unwrap();
                hit_rx.recv().unwrap();
                probe();
            })
        };
        installed_rx.recv().unwrap();
        // This thread has no subscriber: it registers the callsite first.
        probe();
        hit_tx.send(()).unwrap();
        capturing.join().unwrap();
        let probes = capture.all().into_iter().filter(|c| c.name == "probe").count();
        assert_eq!(probes, 1, "{:#?}", capture.all());
    }
}
