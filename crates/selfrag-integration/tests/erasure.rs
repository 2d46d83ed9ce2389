//! `Storage::erase_user` and `Storage::export_user` against the shared
//! Postgres and Redis and an embedded vector index: a user next to a
//! neighbour of the same shape, erased without a trace while the neighbour
//! stays whole; a failure half-way; the export's round trip; bad input.

#![cfg(all(feature = "postgres", feature = "redis", feature = "edge"))]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use selfrag::postgres::tokio_postgres::{self, NoTls};
use selfrag::redis::redis;
use selfrag::{
    Chunk, EraseOptions, ErasePlan, EraseStep, ErrorKind, Field, Filter, NewMemoryLog, NewSession, RateLimitKey,
    Storage, StorageOptions, Tenant, UserId,
};
use selfrag_testkit::relay::Relay;
use serde_json::{json, Value};

const DIM: usize = 4;

/// One test's servers: a fresh Postgres schema, a fresh Redis prefix, an
/// embedded index in a temporary directory.
struct Env {
    storage: Storage,
    admin: tokio_postgres::Client,
    schema: String,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Env {
    /// `pg_url` may point at a relay; the schema is made through `admin_url`.
    async fn start(admin_url: &str, pg_url: &str, redis_url: &str) -> Self {
        let (admin, conn) = tokio_postgres::connect(admin_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let schema = format!("erase_{}", uuid::Uuid::new_v4().simple());
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let prefix = format!("erase-{}:", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        let vars: HashMap<&str, String> = HashMap::from([
            ("DATABASE_URL", pg_url.to_owned()),
            ("SELFRAG_POSTGRES_SCHEMA", schema.clone()),
            ("REDIS_URL", redis_url.to_owned()),
            ("SELFRAG_REDIS_PREFIX", prefix.clone()),
            ("SELFRAG_EDGE_PATH", dir.path().display().to_string()),
        ]);
        let options = StorageOptions {
            spec: selfrag::IndexSpec::new(DIM, selfrag::Distance::Cosine).unwrap(),
            ..StorageOptions::default()
        };
        let storage = Storage::from_lookup(&options, |name| vars.get(name).cloned()).await.unwrap();
        assert_eq!(
            storage.backends.to_string(),
            "memory: postgres, sessions: redis, rate limits: redis, vectors: edge"
        );
        assert!(storage.user_sessions.is_some(), "Postgres sessions are kept next to Redis");
        let client = redis::Client::open(redis_url).unwrap();
        let redis = client.get_multiplexed_async_connection().await.unwrap();
        Self { storage, admin, schema, redis, prefix, _dir: dir }
    }

    async fn count(&self, sql: &str, user: UserId) -> i64 {
        let sql = sql.replace("{s}", &self.schema);
        self.admin.query_one(&sql, &[user.as_uuid()]).await.unwrap().get(0)
    }

    async fn logs(&self, user: UserId) -> i64 {
        self.count("SELECT count(*) FROM {s}.memory_logs WHERE user_id = $1", user).await
    }

    /// Every Redis key of this test's prefix that carries the user's tag.
    async fn redis_keys(&mut self, user: UserId) -> Vec<String> {
        let pattern = format!("{}{{u:{user}}}*", self.prefix);
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.redis)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    async fn drop_schema(&self) {
        self.admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await.unwrap();
    }
}

fn shared_tenant() -> Tenant {
    Tenant::new("t1").unwrap()
}

fn owned_by(user: UserId) -> Filter {
    Filter::eq(Field::Extra("user_id".into()), user.to_string())
}

/// The user's chunks: in the shared tenant `t1` (tagged with the user id)
/// and in the user's own tenant.
fn plan_for(user: UserId) -> ErasePlan {
    ErasePlan::new().with_vectors(shared_tenant(), Some(owned_by(user))).with_vectors(Tenant::from(user), None)
}

const SCOPES: [&str; 3] = ["chat", "embed", "search"];
const REDIS_SESSIONS: usize = 3;
const PG_SESSIONS: usize = 2;
const SHARED_CHUNKS: u32 = 10;
const OWN_CHUNKS: u32 = 5;

/// Gives `user` `logs` memory logs, sessions in Redis and Postgres,
/// rate-limit state in three scopes, and chunks in a shared and an own
/// tenant. Returns the ids of its logs, sessions and chunks.
async fn populate(storage: &Storage, user: UserId, logs: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    storage.users.ensure_user(user).await.unwrap();
    let mut log_ids = Vec::with_capacity(logs);
    let start = selfrag::time::OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    let mut i = 0;
    while i < logs {
        let n = (logs - i).min(selfrag::memory::MAX_BATCH);
        let batch: Vec<NewMemoryLog> = (i..i + n)
            .map(|k| {
                NewMemoryLog::new("fact", format!("log {k} of {user}"))
                    .unwrap()
                    .with_metadata(json!({"k": k}))
                    .unwrap()
                    .at(start + Duration::from_millis(k as u64))
            })
            .collect();
        log_ids.extend(batch.iter().map(|l| l.id().to_string()));
        storage.memory.append_batch(user, batch).await.unwrap();
        i += n;
    }
    let ttl = Duration::from_secs(3600);
    let mut session_ids = Vec::new();
    for k in 0..REDIS_SESSIONS {
        let data = json!({"n": k}).as_object().unwrap().clone();
        let s = storage.sessions.create(user, NewSession::new(ttl).unwrap().with_data(data).unwrap()).await.unwrap();
        session_ids.push(s.id.to_string());
    }
    let pg = storage.user_sessions.clone().unwrap();
    for _ in 0..PG_SESSIONS {
        session_ids.push(pg.create(user, NewSession::new(ttl).unwrap()).await.unwrap().id.to_string());
    }
    for scope in SCOPES {
        let d = storage.rate_limiter.check(&RateLimitKey::new(user, scope).unwrap(), 5).await.unwrap();
        assert!(d.allowed);
    }
    let vector = |k: u32| vec![1.0, k as f32 + 1.0, 0.5, -0.25];
    let shared: Vec<Chunk> = (0..SHARED_CHUNKS)
        .map(|k| {
            Chunk::new(format!("doc-{user}"), k, format!("shared {k}"), vector(k)).extra("user_id", user.to_string())
        })
        .collect();
    let own: Vec<Chunk> = (0..OWN_CHUNKS).map(|k| Chunk::new("notes", k, format!("own {k}"), vector(k))).collect();
    let mut chunk_ids: Vec<String> = shared.iter().map(|c| c.id.to_string()).collect();
    chunk_ids.extend(own.iter().map(|c| c.id.to_string()));
    storage.vectors.upsert(&shared_tenant(), shared).await.unwrap();
    storage.vectors.upsert(&Tenant::from(user), own).await.unwrap();
    (log_ids, session_ids, chunk_ids)
}

/// Everything of `user` is still there, as [`populate`] left it.
async fn assert_intact(env: &mut Env, user: UserId, logs: usize) {
    let s = &env.storage;
    assert!(s.users.user_exists(user).await.unwrap());
    assert_eq!(env.logs(user).await, logs as i64);
    assert_eq!(s.sessions.list(user).await.unwrap().len(), REDIS_SESSIONS);
    assert_eq!(s.user_sessions.as_ref().unwrap().list(user).await.unwrap().len(), PG_SESSIONS);
    for scope in SCOPES {
        let key = RateLimitKey::new(user, scope).unwrap();
        let d = s.rate_limiter.check(&key, 1).await.unwrap();
        // 5 used, then this 1: the state survived.
        assert_eq!(d.remaining(), 60 - 6, "{scope}: {d:?}");
    }
    assert_eq!(s.vectors.count(&shared_tenant(), Some(&owned_by(user))).await.unwrap(), u64::from(SHARED_CHUNKS));
    assert_eq!(s.vectors.count(&Tenant::from(user), None).await.unwrap(), u64::from(OWN_CHUNKS));
    assert!(s.erasures.get(user).await.unwrap().is_none());
}

/// No trace of `user` in any store.
async fn assert_erased(env: &mut Env, user: UserId) {
    assert_eq!(env.logs(user).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM {s}.users WHERE id = $1", user).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM {s}.user_sessions WHERE user_id = $1", user).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM {s}.erasures WHERE user_id = $1", user).await, 1);
    assert_eq!(env.redis_keys(user).await, Vec::<String>::new(), "Redis keys of the erased user");
    let s = &env.storage;
    assert_eq!(s.vectors.count(&shared_tenant(), Some(&owned_by(user))).await.unwrap(), 0);
    assert_eq!(s.vectors.count(&Tenant::from(user), None).await.unwrap(), 0);
}

async fn shared_env(pg_url: Option<&str>) -> Option<(Env, Option<Relay>)> {
    let pg = selfrag_testkit::servers::postgres().await?;
    let rd = selfrag_testkit::servers::redis().await?;
    let (url, relay) = match pg_url {
        Some(_) => {
            // Through a relay, so the test can make Postgres unreachable.
            let (head, rest) = pg.url.split_once('@').unwrap();
            let (host_port, tail) = rest.split_once('/').unwrap();
            let target = std::net::ToSocketAddrs::to_socket_addrs(host_port).unwrap().next().unwrap();
            let relay = Relay::start(target).await.unwrap();
            (format!("{head}@{}/{tail}", relay.addr()), Some(relay))
        }
        None => (pg.url.clone(), None),
    };
    Some((Env::start(&pg.url, &url, &rd.url).await, relay))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_leaves_no_trace_of_a_large_user_and_spares_the_neighbour() {
    let Some((mut env, _)) = shared_env(None).await else { return };
    let (user, neighbour) = (UserId::new(), UserId::new());
    const LOGS: usize = 100_000;
    const NEIGHBOUR_LOGS: usize = 2_000;
    populate(&env.storage, user, LOGS).await;
    populate(&env.storage, neighbour, NEIGHBOUR_LOGS).await;
    let plan = plan_for(user);

    // A dry run counts and deletes nothing.
    let dry = env.storage.erase_user_dry_run(user, &plan).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.memory_logs, LOGS as u64);
    let chunks: Vec<u64> = dry.vectors.iter().map(|v| v.chunks).collect();
    assert_eq!(chunks, [u64::from(SHARED_CHUNKS), u64::from(OWN_CHUNKS)]);
    let sessions: Vec<(&str, u64)> = dry.sessions.iter().map(|s| (s.backend, s.sessions)).collect();
    assert_eq!(sessions, [("redis", REDIS_SESSIONS as u64), ("postgres", PG_SESSIONS as u64)]);
    assert!(dry.user_row && !dry.ledger_recorded && dry.ledger_seq.is_none() && dry.rate_limit_keys.is_none());
    assert_intact(&mut env, user, LOGS).await;

    // The erasure, in batches that report progress.
    let batches = Arc::new(AtomicU64::new(0));
    let seen = batches.clone();
    let options = EraseOptions {
        progress: Some(Arc::new(move |e: &selfrag::ProgressEvent| {
            if e.step == "memory_logs" && !e.finished {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })),
        ..EraseOptions::default()
    };
    let report = env.storage.erase_user_with(user, &plan, &options).await.unwrap();
    assert!(!report.dry_run);
    assert_eq!(report.memory_logs, LOGS as u64);
    // 5,000 per statement: 20 full batches and the empty one that ends it.
    assert_eq!(batches.load(Ordering::Relaxed), 21);
    assert_eq!(report.vectors.iter().map(|v| v.chunks).collect::<Vec<_>>(), chunks);
    assert_eq!(report.sessions.iter().map(|s| (s.backend, s.sessions)).collect::<Vec<_>>(), sessions);
    // One bucket key per scope and window of the default policy (minute,
    // hour, day), two where a bucket boundary passed in between.
    let keys = report.rate_limit_keys.unwrap();
    assert!((9..=18).contains(&keys), "{keys} rate-limit keys");
    assert!(report.user_row && report.ledger_recorded);
    let seq = report.ledger_seq.unwrap();
    assert_erased(&mut env, user).await;

    // The ledger holds the user and the plan, nothing else of it.
    let record = env.storage.erasures.get(user).await.unwrap().unwrap();
    assert_eq!(record.seq, seq);
    assert_eq!(ErasePlan::from_json(&record.vectors).unwrap(), plan);
    assert_eq!(env.storage.erasures.position().await.unwrap(), seq);
    assert_eq!(env.storage.erasures.list_after(seq - 1, 10).await.unwrap(), vec![record.clone()]);

    // The neighbour is whole.
    assert_intact(&mut env, neighbour, NEIGHBOUR_LOGS).await;

    // Erasing again finds nothing and keeps the first record.
    let again = env.storage.erase_user(user, &plan).await.unwrap();
    assert_eq!(again.memory_logs, 0);
    assert!(again.vectors.iter().all(|v| v.chunks == 0));
    assert!(again.sessions.iter().all(|s| s.sessions == 0));
    assert_eq!(again.rate_limit_keys, Some(0));
    assert!(!again.user_row && !again.ledger_recorded);
    assert_eq!(again.ledger_seq, Some(seq));
    assert_eq!(env.storage.erasures.get(user).await.unwrap(), Some(record));
    assert_erased(&mut env, user).await;
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_half_way_names_the_steps_and_a_second_call_completes() {
    let Some((mut env, relay)) = shared_env(Some("relay")).await else { return };
    let relay = relay.unwrap();
    let (user, neighbour) = (UserId::new(), UserId::new());
    populate(&env.storage, user, 3_000).await;
    populate(&env.storage, neighbour, 300).await;
    let plan = plan_for(user);

    // Postgres becomes unreachable: vectors (embedded) and rate limits
    // (Redis) are erased, then the sessions step fails on Postgres.
    relay.refuse().await;
    let err = env.storage.erase_user(user, &plan).await.unwrap_err();
    assert_eq!(err.failed, EraseStep::Sessions, "{err}");
    assert_eq!(err.done, [EraseStep::Vectors, EraseStep::RateLimits], "{err}");
    assert_eq!(err.pending, [EraseStep::MemoryLogs, EraseStep::User, EraseStep::Ledger], "{err}");
    assert!(matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{err}");
    let text = err.to_string();
    assert!(text.contains("step `sessions` failed") && text.contains("done: vectors, rate_limits"), "{text}");
    assert!(text.contains("not started: memory_logs, user, ledger"), "{text}");
    assert!(std::error::Error::source(&err).is_some());
    // What the done steps report, and what they did.
    assert_eq!(err.partial.vectors.iter().map(|v| v.chunks).sum::<u64>(), u64::from(SHARED_CHUNKS + OWN_CHUNKS));
    // The Redis sessions went before the Postgres ones failed; no ledger
    // record: the erasure is not complete.
    assert_eq!(env.redis_keys(user).await, Vec::<String>::new());
    assert_eq!(env.count("SELECT count(*) FROM {s}.erasures WHERE user_id = $1", user).await, 0);
    assert_eq!(env.logs(user).await, 3_000);

    relay.pass().await;
    let report = env.storage.erase_user(user, &plan).await.unwrap();
    assert_eq!(report.memory_logs, 3_000);
    assert!(report.vectors.iter().all(|v| v.chunks == 0), "vectors were already erased: {report:?}");
    let pg_sessions = report.sessions.iter().find(|s| s.backend == "postgres").unwrap();
    assert_eq!(pg_sessions.sessions, PG_SESSIONS as u64);
    assert!(report.user_row && report.ledger_recorded);
    assert_erased(&mut env, user).await;
    assert_intact(&mut env, neighbour, 300).await;
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_every_record_exactly_once() {
    let Some((env, _)) = shared_env(None).await else { return };
    let (user, neighbour) = (UserId::new(), UserId::new());
    // More than two pages of memory logs (1,000 per page).
    let (logs, sessions, chunks) = populate(&env.storage, user, 2_345).await;
    populate(&env.storage, neighbour, 50).await;
    // The same scope twice: its chunks still come once.
    let plan = plan_for(user).with_vectors(shared_tenant(), Some(owned_by(user)));

    let mut out = Vec::new();
    let report = env.storage.export_user(user, &plan, &mut out).await.unwrap();
    let lines: Vec<Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(report.lines, lines.len() as u64);
    assert_eq!(lines[0]["kind"], "user");
    assert_eq!(lines[0]["user_id"], user.to_string());
    assert_eq!(lines[0]["exists"], true);
    assert_eq!(lines[0]["erasure"], Value::Null);
    let of_kind = |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["kind"] == kind).collect() };
    let ids = |values: &[&Value]| -> Vec<String> {
        let mut ids: Vec<String> = values.iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let log_lines = of_kind("memory_log");
    assert_eq!(ids(&log_lines), sorted(logs));
    assert!(log_lines.iter().all(|l| l["user_id"] == user.to_string() && l["content"].as_str().is_some()));
    let session_lines = of_kind("session");
    assert_eq!(ids(&session_lines), sorted(sessions));
    let backends: HashSet<&str> = session_lines.iter().map(|l| l["backend"].as_str().unwrap()).collect();
    assert_eq!(backends, HashSet::from(["redis", "postgres"]));
    let chunk_lines = of_kind("chunk");
    assert_eq!(ids(&chunk_lines), sorted(chunks));
    assert!(chunk_lines.iter().all(|l| l["payload"]["text"].as_str().is_some()));
    assert_eq!(lines.len(), 1 + log_lines.len() + session_lines.len() + chunk_lines.len());
    assert_eq!((report.memory_logs, report.sessions, report.chunks), (2_345, 5, 15));
    // Nothing of the neighbour.
    let text = lines.iter().map(Value::to_string).collect::<String>();
    assert!(!text.contains(&neighbour.to_string()), "the export mentions the neighbour");

    // After the erasure, the export says so and holds nothing else.
    env.storage.erase_user(user, &plan).await.unwrap();
    let mut out = Vec::new();
    let report = env.storage.export_user(user, &plan, &mut out).await.unwrap();
    assert_eq!((report.lines, report.user_exists), (1, false));
    let line: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["erasure"]["user"], user.to_string());
    env.drop_schema().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_erased() {
    use selfrag::memory::MemoryStore as _;
    let storage = Storage::local(&StorageOptions {
        spec: selfrag::IndexSpec::new(DIM, selfrag::Distance::Cosine).unwrap(),
        ..StorageOptions::default()
    });
    let user = storage.users.create_user().await.unwrap();
    storage.memory.append(user, NewMemoryLog::new("fact", "kept").unwrap()).await.unwrap();
    let bad_filter = ErasePlan::new().with_vectors(shared_tenant(), Some(Filter::eq(Field::Extra("a b".into()), "x")));
    let too_many = (0..=ErasePlan::MAX_SCOPES).fold(ErasePlan::new(), |p, _| p.with_vectors(shared_tenant(), None));
    let cases = [
        (bad_filter.clone(), EraseOptions::default(), "plan.vectors[0].filter.field"),
        (too_many, EraseOptions::default(), "plan.vectors"),
        (ErasePlan::new(), EraseOptions { batch: 0, ..EraseOptions::default() }, "batch"),
        (ErasePlan::new(), EraseOptions { batch: 10_001, ..EraseOptions::default() }, "batch"),
    ];
    for (plan, options, field) in cases {
        let err = storage.erase_user_with(user, &plan, &options).await.unwrap_err();
        assert_eq!(err.failed, EraseStep::Plan, "{err}");
        assert!(err.done.is_empty());
        assert_eq!(err.pending, EraseStep::ALL);
        assert_eq!(err.source.field(), Some(field), "{err}");
        assert!(!err.is_retryable());
    }
    let mut out = Vec::new();
    let err = storage.export_user(user, &bad_filter, &mut out).await.unwrap_err();
    assert_eq!(err.field(), Some("plan.vectors[0].filter.field"));
    assert!(out.is_empty(), "an export with a bad plan wrote something");
    assert_eq!(ErasePlan::from_json(&json!({"tenant": "t1"})).unwrap_err().field(), Some("plan.vectors"));
    let bad_json = json!([{"tenant": "t1", "filter": {"eq": {"field": {"extra": "a b"}, "value": "x"}}}]);
    assert_eq!(ErasePlan::from_json(&bad_json).unwrap_err().field(), Some("plan.vectors[0].filter.field"));
    // Nothing was erased.
    assert!(storage.users.user_exists(user).await.unwrap());
    assert_eq!(storage.memory.query(user, &selfrag::MemoryQuery::new()).await.unwrap().logs.len(), 1);
    assert!(storage.erasures.get(user).await.unwrap().is_none());

    // The in-process stores erase too; the ledger is in process.
    let report = storage.erase_user(user, &ErasePlan::new()).await.unwrap();
    assert_eq!(report.memory_logs, 1);
    assert_eq!(report.sessions.iter().map(|s| s.backend).collect::<Vec<_>>(), ["local"]);
    assert_eq!(report.ledger_seq, Some(1));
    assert!(!storage.users.user_exists(user).await.unwrap());
}
