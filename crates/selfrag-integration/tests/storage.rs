//! `Storage::from_lookup`: which backend serves what, and that each
//! composition really works against its backend.

use std::collections::HashMap;

use selfrag::{MemoryQuery, NewMemoryLog, NewSession, Storage, StorageOptions};

fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    move |name| vars.get(name).cloned()
}

/// Appends and reads back one memory log and one session.
async fn round_trip(storage: &Storage) {
    let user = storage.users.create_user().await.unwrap();
    storage.memory.append(user, NewMemoryLog::new("fact", "likes tea").unwrap()).await.unwrap();
    let page = storage.memory.query(user, &MemoryQuery::new()).await.unwrap();
    assert_eq!(page.logs.len(), 1);
    let session = storage.sessions.create(user, NewSession::new(std::time::Duration::from_secs(60)).unwrap()).await;
    let session = session.unwrap();
    assert_eq!(storage.sessions.get(user, session.id).await.unwrap().unwrap().id, session.id);
    storage.users.delete_user(user).await.unwrap();
}

#[tokio::test]
async fn nothing_set_means_everything_in_process() {
    let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&[])).await.unwrap();
    assert_eq!(storage.backends.to_string(), "memory: local, sessions: local, rate limits: local, vectors: local");
    round_trip(&storage).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn database_url_selects_postgres_and_migrates() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    // A fresh schema keeps this test apart from every other.
    let schema = format!("facade_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) =
        selfrag::postgres::tokio_postgres::connect(&server.url, selfrag::postgres::tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let vars = [("DATABASE_URL", server.url.clone()), ("SELFRAG_POSTGRES_SCHEMA", schema.clone())];
    let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
    assert_eq!(storage.backends.memory, "postgres");
    assert_eq!(storage.backends.sessions, "postgres");
    round_trip(&storage).await;
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_bad_database_url_is_an_error() {
    let vars = [("DATABASE_URL", "not a url".to_owned())];
    let err = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_url_selects_redis_for_sessions_and_limits() {
    let Some(server) = selfrag_testkit::servers::redis().await else { return };
    let prefix = format!("facade-{}:", uuid::Uuid::new_v4().simple());
    let vars = [("REDIS_URL", server.url.clone()), ("SELFRAG_REDIS_PREFIX", prefix)];
    let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
    assert_eq!(storage.backends.sessions, "redis");
    assert_eq!(storage.backends.rate_limiter, "redis");
    round_trip(&storage).await;
    let user = storage.users.create_user().await.unwrap();
    let key = selfrag::RateLimitKey::new(user, "chat").unwrap();
    let decision = storage.rate_limiter.check(&key, 1).await.unwrap();
    assert!(decision.allowed);
    storage.rate_limiter.reset(&key).await.unwrap();
}

#[cfg(feature = "edge")]
#[tokio::test]
async fn edge_path_selects_the_embedded_index() {
    use selfrag::{Chunk, Distance, IndexSpec, SearchRequest, Tenant};
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions { spec: IndexSpec::new(3, Distance::Cosine).unwrap(), ..StorageOptions::default() };
    let vars = [("SELFRAG_EDGE_PATH", dir.path().join("vectors").display().to_string())];
    let storage = Storage::from_lookup(&options, lookup(&vars)).await.unwrap();
    assert_eq!(storage.backends.vectors, "edge");
    let tenant = Tenant::new("t").unwrap();
    storage.vectors.upsert(&tenant, vec![Chunk::new("doc", 0, "hello", vec![1.0, 0.0, 0.0])]).await.unwrap();
    let hits = storage.vectors.search(&tenant, &SearchRequest::new(vec![1.0, 0.0, 0.0], 1)).await.unwrap();
    assert_eq!(hits[0].payload.text, "hello");
}

#[cfg(not(feature = "qdrant"))]
#[tokio::test]
async fn a_backend_built_without_its_feature_is_named() {
    let vars = [("QDRANT_URL", "http://127.0.0.1:6334".to_owned())];
    let err = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap_err();
    assert!(err.to_string().contains("`qdrant` feature"), "{err}");
}

/// The user contract across two backends: with users in one store and
/// sessions in another, deleting a user ends its sessions (get, touch and
/// list see nothing), a session cannot be created for a deleted or unknown
/// user, and a neighbour user's sessions are untouched.
async fn deleting_a_user_ends_its_sessions(storage: &Storage) {
    use std::time::Duration;
    let ttl = || NewSession::new(Duration::from_secs(600)).unwrap();
    let (user, neighbour) = (storage.users.create_user().await.unwrap(), storage.users.create_user().await.unwrap());
    let mine =
        [storage.sessions.create(user, ttl()).await.unwrap(), storage.sessions.create(user, ttl()).await.unwrap()];
    let theirs = storage.sessions.create(neighbour, ttl()).await.unwrap();

    assert!(storage.users.delete_user(user).await.unwrap());
    for s in &mine {
        assert_eq!(storage.sessions.get(user, s.id).await.unwrap(), None, "a deleted user's session is gone");
        assert_eq!(storage.sessions.touch(user, s.id).await.unwrap(), None, "and cannot be touched");
    }
    assert!(storage.sessions.list(user).await.unwrap().is_empty(), "a deleted user has no sessions");
    let err = storage.sessions.create(user, ttl()).await.unwrap_err();
    assert_eq!(err.kind(), selfrag::ErrorKind::NotFound, "a session for a deleted user: {err}");
    let err = storage.sessions.create(selfrag::UserId::new(), ttl()).await.unwrap_err();
    assert_eq!(err.kind(), selfrag::ErrorKind::NotFound, "a session for an unknown user: {err}");
    // Deleting again is not an error, and finds nothing.
    assert!(!storage.users.delete_user(user).await.unwrap());

    assert_eq!(storage.sessions.get(neighbour, theirs.id).await.unwrap().map(|s| s.id), Some(theirs.id));
    assert_eq!(storage.sessions.list(neighbour).await.unwrap().len(), 1);
    storage.users.delete_user(neighbour).await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn in_process_users_with_redis_sessions_keep_the_user_contract() {
    let Some(server) = selfrag_testkit::servers::redis().await else { return };
    let prefix = format!("facade-{}:", uuid::Uuid::new_v4().simple());
    let vars = [("REDIS_URL", server.url.clone()), ("SELFRAG_REDIS_PREFIX", prefix)];
    let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
    assert_eq!((storage.backends.memory, storage.backends.sessions), ("local", "redis"));
    deleting_a_user_ends_its_sessions(&storage).await;
}

#[cfg(all(feature = "postgres", feature = "redis"))]
#[tokio::test]
async fn postgres_users_with_redis_sessions_keep_the_user_contract() {
    let Some(pg) = selfrag_testkit::servers::postgres().await else { return };
    let Some(redis) = selfrag_testkit::servers::redis().await else { return };
    let schema = format!("facade_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) =
        selfrag::postgres::tokio_postgres::connect(&pg.url, selfrag::postgres::tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let vars = [
        ("DATABASE_URL", pg.url.clone()),
        ("SELFRAG_POSTGRES_SCHEMA", schema.clone()),
        ("REDIS_URL", redis.url.clone()),
        ("SELFRAG_REDIS_PREFIX", format!("facade-{}:", uuid::Uuid::new_v4().simple())),
    ];
    let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
    assert_eq!((storage.backends.memory, storage.backends.sessions), ("postgres", "redis"));
    deleting_a_user_ends_its_sessions(&storage).await;
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn start_up_ends_at_its_deadline() {
    // A listener that accepts and never answers: connecting hangs, as it
    // would behind a partition, and start-up must give up on time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let options =
        StorageOptions { startup_timeout: std::time::Duration::from_millis(500), ..StorageOptions::default() };
    let vars = [("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/db"))];
    let started = std::time::Instant::now();
    let err = Storage::from_lookup(&options, lookup(&vars)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), selfrag::ErrorKind::Timeout, "{err}");
    assert!(took < std::time::Duration::from_secs(3), "start-up gave up after {took:?}");
    drop(silent);
}

/// The session cap of `StorageOptions::session_limits`, with the fields the
/// environment sets replaced, reaches whichever backend serves sessions.
#[tokio::test]
async fn session_limits_come_from_the_options_and_the_environment() {
    use selfrag::{OnLimit, SessionLimits};
    let new = || NewSession::new(std::time::Duration::from_secs(60)).unwrap();
    let options =
        StorageOptions { session_limits: SessionLimits::new(1, OnLimit::EvictOldest).unwrap(), ..Default::default() };
    let mut cases = vec![vec![("SELFRAG_SESSIONS_ON_LIMIT", "refuse".to_owned())]];
    #[cfg(feature = "redis")]
    if let Some(server) = selfrag_testkit::servers::redis().await {
        cases.push(vec![
            ("SELFRAG_SESSIONS_ON_LIMIT", "refuse".to_owned()),
            ("REDIS_URL", server.url.clone()),
            ("SELFRAG_REDIS_PREFIX", format!("facade-limits-{}:", uuid::Uuid::new_v4().simple())),
        ]);
    }
    for vars in cases {
        let storage = Storage::from_lookup(&options, lookup(&vars)).await.unwrap();
        let user = storage.users.create_user().await.unwrap();
        let first = storage.sessions.create(user, new()).await.unwrap();
        let err = storage.sessions.create(user, new()).await.unwrap_err();
        assert!(SessionLimits::is_reached(&err), "{}: {err:?}", storage.backends);
        storage.sessions.revoke(user, first.id).await.unwrap();
    }
    let bad = lookup(&[("SELFRAG_SESSIONS_MAX_PER_USER", "0".to_owned())]);
    let err = Storage::from_lookup(&options, bad).await.unwrap_err();
    assert_eq!(err.field(), Some("max_per_user"));
}

/// `SELFRAG_POSTGRES_COALESCE` switches coalesced Postgres writes on: with
/// the table locked, twelve concurrent appends hold twelve connections
/// waiting on the lock when off, and at most two (the default statements
/// in flight; the rest wait in the queue) when on. Every append lands
/// either way. A value that is not a switch is an error naming it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_coalesce_when_switched_on() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let bad = [("SELFRAG_POSTGRES_COALESCE", "sometimes".to_owned())];
    let err = Storage::from_lookup(&StorageOptions::default(), lookup(&bad)).await.unwrap_err();
    assert_eq!(err.kind(), selfrag::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("SELFRAG_POSTGRES_COALESCE"), "{err}");

    let (client, conn) =
        selfrag::postgres::tokio_postgres::connect(&server.url, selfrag::postgres::tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    for (switch, on) in [("off", false), ("on", true)] {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let schema = format!("facade_{tag}");
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let vars = [
            ("DATABASE_URL", server.url.clone()),
            ("SELFRAG_POSTGRES_SCHEMA", schema.clone()),
            ("SELFRAG_POSTGRES_COALESCE", switch.to_owned()),
        ];
        let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
        let user = storage.users.create_user().await.unwrap();
        client.batch_execute(&format!("BEGIN; LOCK TABLE {schema}.memory_logs IN EXCLUSIVE MODE")).await.unwrap();
        let appends: Vec<_> = (0..12)
            .map(|i| {
                let memory = storage.memory.clone();
                tokio::spawn(
                    async move { memory.append(user, NewMemoryLog::new("fact", format!("m{i}")).unwrap()).await },
                )
            })
            .collect();
        let waiting = || async {
            let q = format!(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{schema}.memory_logs'::regclass"
            );
            client.query_one(&q, &[]).await.unwrap().get::<_, i64>(0)
        };
        let mut seen = 0;
        for _ in 0..300 {
            seen = waiting().await;
            if seen == 12 || (on && seen >= 1) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if on {
            // Give any further statement time to show up.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            seen = waiting().await;
            assert!((1..=2).contains(&seen), "{seen} connections wait on the lock with coalescing on");
        } else {
            assert_eq!(seen, 12, "each append waits on its own connection with coalescing off");
        }
        client.batch_execute("COMMIT").await.unwrap();
        for a in appends {
            a.await.unwrap().unwrap();
        }
        let q = format!("SELECT count(*) FROM {schema}.memory_logs");
        assert_eq!(client.query_one(&q, &[]).await.unwrap().get::<_, i64>(0), 12);
        drop(storage);
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}
