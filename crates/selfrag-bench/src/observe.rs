//! `--observability` rows: the same store call with a `tracing` subscriber
//! and a metrics recorder installed ("ours") against none ("raw"), in one
//! run. Both are installed per call (the subscriber with
//! `WithSubscriber`, the recorder as the polling thread's local recorder),
//! so the sides alternate in rounds like every other row while nothing
//! process-wide changes. The raw side is wrapped the same way with a
//! subscriber that listens to nothing and the no-op recorder, so that
//! setting them around every poll (which a service, with global ones, does
//! not do) costs both sides alike.
//!
//! The subscriber is `tracing-subscriber`'s registry with a fmt layer
//! writing to `io::sink()` (it records every span's fields as text, as a
//! real one does); the recorder is `metrics-exporter-prometheus`'s, the
//! usual production pair.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use selfrag_core::{MemoryStore, NewMemoryLog, NewSession, SessionId, SessionStore, UserId, UserStore};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresUserStore};
use selfrag_redis::{RedisConfig, RedisSessionStore};
use serde_json::{json, Value};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

use crate::measure::{compare, op, Op, Res, Row};
use crate::Plan;

const SCHEMA: &str = "selfrag_bench_observe";
const PREFIX: &str = "selfrag_bench_observe:";

/// Polls a future with `recorder` as the thread's metrics recorder.
struct WithRecorder<F> {
    recorder: &'static (dyn metrics::Recorder + Sync),
    fut: F,
}

impl<F: Future + Unpin> Future for WithRecorder<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _local = metrics::set_default_local_recorder(self.recorder);
        Pin::new(&mut self.fut).poll(cx)
    }
}

/// `op` with `dispatch` as the thread's subscriber and `recorder` as its
/// metrics recorder, set around every poll.
fn wrapped(op: Op, dispatch: tracing::Dispatch, recorder: &'static (dyn metrics::Recorder + Sync)) -> Op {
    Arc::new(move |i| {
        let fut = op(i).with_subscriber(dispatch.clone());
        Box::pin(WithRecorder { recorder, fut: Box::pin(fut) })
    })
}

/// A subscriber that listens to nothing, behind an `Arc` like a real one:
/// setting it around a poll costs what setting the real one costs.
fn no_subscriber() -> tracing::Dispatch {
    tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
}

/// `op` with a subscriber and a recorder installed around each call.
/// `SELFRAG_BENCH_OBSERVE=spans` (or `metrics`) installs only that one, to
/// tell their costs apart.
fn observed(op: Op) -> Op {
    let only = std::env::var("SELFRAG_BENCH_OBSERVE").unwrap_or_default();
    let dispatch = if only == "metrics" {
        no_subscriber()
    } else {
        tracing::Dispatch::new(
            tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_writer(std::io::sink)),
        )
    };
    let recorder: &'static (dyn metrics::Recorder + Sync) = if only == "spans" {
        &metrics::NoopRecorder
    } else {
        // Leaked: the rows run once per process.
        Box::leak(Box::new(PrometheusBuilder::new().build_recorder()))
    };
    wrapped(op, dispatch, recorder)
}

/// `op` with a subscriber that listens to nothing and the no-op recorder,
/// set the same way: the baseline pays the same per-poll cost of setting
/// them as the observed side, so the ratio is the instrumentation's cost
/// alone (a service sets both once, globally, and pays neither).
/// `SELFRAG_BENCH_OBSERVE_BASELINE=bare` leaves the baseline unwrapped,
/// to show what the wrapping itself costs.
fn baseline(op: Op) -> Op {
    if std::env::var("SELFRAG_BENCH_OBSERVE_BASELINE").is_ok_and(|v| v == "bare") {
        return op;
    }
    wrapped(op, no_subscriber(), &metrics::NoopRecorder)
}

fn idx(i: u64, n: usize) -> usize {
    usize::try_from(i).unwrap_or(0) % n
}

/// The session get row (`redis`) and the memory append row (`postgres`),
/// each at every concurrency of the plan.
pub(crate) async fn run(postgres: Option<&str>, redis: Option<&str>, plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    if let Some(url) = redis {
        let config = RedisConfig::builder().url(url).key_prefix(PREFIX).build()?;
        let sessions = RedisSessionStore::connect(&config)?;
        let mut ids: Vec<(UserId, SessionId)> = Vec::new();
        for k in 0..1_000 {
            let user = UserId::from_uuid(uuid::Uuid::from_u128(k % 100 + 1));
            let new = NewSession::new(Duration::from_secs(3600))?.with_data(json!({"lang": "en", "theme": "dark"}))?;
            ids.push((user, sessions.create(user, new).await?.id));
        }
        let ids = Arc::new(ids);
        for &c in &plan.concurrency {
            let (s, v) = (sessions.clone(), ids.clone());
            let plain = op(move |i| {
                let (s, v) = (s.clone(), v.clone());
                async move {
                    let (user, id) = v[idx(i, v.len())];
                    s.get(user, id).await?.ok_or("session vanished")?;
                    Ok(())
                }
            });
            let cmp =
                compare(&observed(plain.clone()), &baseline(plain), c, plan.ops(c, 20_000), plan.rounds, plan.target)
                    .await?;
            rows.push(crate::row("session get: subscriber + recorder vs none", c, cmp));
            crate::print_last(rows);
        }
        for (user, id) in ids.iter() {
            sessions.revoke(*user, *id).await?;
        }
    }
    if let Some(url) = postgres {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}")).await?;
        let pool = PostgresConfig::with_url(url).schema(SCHEMA).application_name("selfrag-bench-observe").build()?;
        selfrag_postgres::migrate(&pool).await?;
        client.batch_execute(&format!("TRUNCATE {SCHEMA}.memory_logs")).await?;
        let user = PostgresUserStore::new(pool.clone()).create_user().await?;
        let store = PostgresMemoryStore::new(pool);
        for &c in &plan.concurrency {
            let s = store.clone();
            let plain = op(move |i| {
                let s = s.clone();
                async move {
                    let log = NewMemoryLog::new("fact", format!("observed append {i}"))?
                        .with_metadata(Value::Object(serde_json::Map::new()))?;
                    s.append(user, log).await?;
                    Ok(())
                }
            });
            let cmp =
                compare(&observed(plain.clone()), &baseline(plain), c, plan.ops(c, 2_000), plan.rounds, plan.target)
                    .await?;
            rows.push(crate::row("memory append: subscriber + recorder vs none", c, cmp));
            crate::print_last(rows);
        }
        client.batch_execute(&format!("TRUNCATE {SCHEMA}.memory_logs")).await?;
    }
    Ok(())
}
