//! Postgres-specific behaviour: query plans, error mapping, input checks
//! before the network, the session sweep and migrations through the pool.

mod common;

use std::error::Error as _;
use std::time::Duration;

use selfrag_core::{
    Error, ErrorKind, MemoryLogId, MemoryQuery, MemoryStore, MemoryType, NewMemoryLog, NewSession, SessionId,
    SessionStore, UserId, UserStore,
};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use serde_json::json;
use time::OffsetDateTime;

/// The plan reads `index` and never scans the whole table.
fn assert_plan_uses(plan: &str, index: &str) {
    assert!(plan.contains(&format!(" {index} ")), "plan does not use {index}:\n{plan}");
    assert!(!plan.contains("Seq Scan"), "plan has a sequential scan:\n{plan}");
}

/// The plan is an ordered scan of `index`: rows come out newest first and
/// the LIMIT stops the scan, with no sort.
fn assert_ordered_index_scan(plan: &str, index: &str) {
    assert!(plan.contains(&format!("Index Scan using {index} ")), "plan is not an index scan of {index}:\n{plan}");
    assert!(!plan.contains("Seq Scan"), "plan has a sequential scan:\n{plan}");
    assert!(!plan.contains("Sort"), "plan sorts:\n{plan}");
}

/// 200 users with 250 logs each (50,000 rows) over the last ~3 days, then
/// ANALYZE, so the planner sees a realistically shaped table.
async fn fill_memory_logs(db: &common::TestDb) -> Vec<UserId> {
    let conn = db.pool.get().await.unwrap();
    conn.batch_execute(
        "INSERT INTO users (id) SELECT gen_random_uuid() FROM generate_series(1, 200);
         INSERT INTO memory_logs (id, user_id, \"timestamp\", type, content, meta_data)
         SELECT gen_random_uuid(), u.id, now() - (g * interval '1 second') * 1000,
                CASE WHEN g % 3 = 0 THEN 'fact' ELSE 'chat.user' END,
                'log ' || g, jsonb_build_object('n', g % 10)
         FROM users u, generate_series(1, 250) g;
         ANALYZE users; ANALYZE memory_logs;",
    )
    .await
    .unwrap();
    conn.query("SELECT id FROM users", &[]).await.unwrap().iter().map(|r| UserId::from_uuid(r.get(0))).collect()
}

#[tokio::test]
async fn memory_query_is_an_index_range_scan_without_sort() {
    let Some(db) = common::fresh_db().await else { return };
    let users = fill_memory_logs(&db).await;
    let user = users[7];
    let store = PostgresMemoryStore::new(db.pool.clone());
    let now = OffsetDateTime::now_utc();
    let range = MemoryQuery::new().since(now - Duration::from_secs(86_400)).until(now).limit(50);

    // The hot query: one user's logs in a time range, newest first.
    let plan = store.explain_query(user, &range, false).await.unwrap();
    assert_ordered_index_scan(&plan, "memory_logs_user_timestamp_idx");

    // Its next page (keyset cursor), and with type and metadata filters.
    let first = store.query(user, &range).await.unwrap();
    assert_eq!(first.logs.len(), 50);
    let next = range.clone().after(first.next.expect("more pages"));
    let plan = store.explain_query(user, &next, false).await.unwrap();
    assert_ordered_index_scan(&plan, "memory_logs_user_timestamp_idx");
    // Selective filters on top may make a bitmap scan of the same index
    // range plus a sort of the few survivors cheaper; the range is still
    // bounded by the index.
    let filtered = next
        .clone()
        .of_type(MemoryType::new("fact").unwrap())
        .metadata_contains(json!({"n": 3}).as_object().unwrap().clone());
    let plan = store.explain_query(user, &filtered, true).await.unwrap();
    assert_plan_uses(&plan, "memory_logs_user_timestamp_idx");
    assert!(plan.contains("Execution Time"), "ANALYZE output expected:\n{plan}");

    // The plan a prepared statement falls back to after a few executions
    // (the generic plan, planned without the parameter values) must be the
    // same shape. Bound parameters of a one-off EXPLAIN are planned as
    // constants, so the store's statement is prepared by name here.
    let conn = common::admin(&db.url).await;
    conn.batch_execute(&format!("SET search_path = {}; SET plan_cache_mode = force_generic_plan", db.schema))
        .await
        .unwrap();
    let (since, until) = (range.since.unwrap(), range.until.unwrap());
    let cursor = next.after.unwrap();
    for (name, query, args) in [
        ("q_range", &range, format!("'{user}', {}, {}, 51", lit(since), lit(until))),
        (
            "q_page",
            &next,
            format!("'{user}', {}, {}, {}, '{}', 51", lit(since), lit(until), lit(cursor.timestamp), cursor.id),
        ),
    ] {
        let sql = PostgresMemoryStore::query_sql(query).unwrap();
        conn.batch_execute(&format!("PREPARE {name} AS {sql}")).await.unwrap();
        let rows = conn.query(&format!("EXPLAIN EXECUTE {name}({args})"), &[]).await.unwrap();
        let plan = rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n");
        // A generic plan keeps the parameters symbolic.
        assert!(plan.contains("$1"), "not a generic plan:\n{plan}");
        assert_ordered_index_scan(&plan, "memory_logs_user_timestamp_idx");
    }
}

/// A timestamptz literal.
fn lit(t: OffsetDateTime) -> String {
    format!("'{}'::timestamptz", t.format(&time::format_description::well_known::Rfc3339).unwrap())
}

#[tokio::test]
async fn sub_microsecond_bounds_match_the_reference() {
    let Some(db) = common::fresh_db().await else { return };
    let user = PostgresUserStore::new(db.pool.clone()).create_user().await.unwrap();
    let store = PostgresMemoryStore::new(db.pool.clone());
    let t = time::macros::datetime!(2026-03-01 12:00:00.000001 UTC);
    let ns = time::Duration::nanoseconds;
    let at_t = store.append(user, NewMemoryLog::new("fact", "at t").unwrap().at(t)).await.unwrap();
    let after_t = NewMemoryLog::new("fact", "1us later").unwrap().at(t + time::Duration::MICROSECOND);
    let after_t = store.append(user, after_t).await.unwrap();
    let before_t = NewMemoryLog::new("fact", "1us earlier").unwrap().at(t - time::Duration::MICROSECOND);
    let before_t = store.append(user, before_t).await.unwrap();
    let all = [&after_t, &at_t, &before_t];

    let cursor = |timestamp| selfrag_core::Cursor { timestamp, id: at_t.id };
    // One rule: bounds and cursors are truncated to the microsecond, like
    // stored timestamps, then compared (`t + 400ns` is `t`, `t - 400ns` is
    // `t - 1us`).
    let cases = [
        (MemoryQuery::new().until(t + ns(400)), vec![before_t.id]),
        (MemoryQuery::new().since(t + ns(400)), vec![after_t.id, at_t.id]),
        (MemoryQuery::new().since(t - ns(400)), vec![after_t.id, at_t.id, before_t.id]),
        (MemoryQuery::new().until(t - ns(400)), vec![]),
        (MemoryQuery::new().since(t - ns(400)).until(t + ns(400)), vec![before_t.id]),
        (MemoryQuery::new().since(t + ns(400)).until(t + ns(1400)), vec![at_t.id]),
        // A cursor between two microseconds is the cursor at the earlier.
        (MemoryQuery::new().after(cursor(t + ns(400))), vec![before_t.id]),
    ];
    for (query, expected) in cases {
        let got: Vec<_> = store.query(user, &query).await.unwrap().logs.iter().map(|l| l.id).collect();
        let reference: Vec<_> = all.iter().filter(|l| query.matches(l)).map(|l| l.id).collect();
        assert_eq!(reference, expected, "reference for {query:?}");
        assert_eq!(got, expected, "{query:?}");
    }
}

#[tokio::test]
async fn touch_that_waited_on_the_row_never_moves_expiry_back() {
    let Some(db) = common::fresh_db().await else { return };
    let user = PostgresUserStore::new(db.pool.clone()).create_user().await.unwrap();
    let sessions = PostgresSessionStore::new(db.pool.clone());
    let s = sessions.create(user, NewSession::new(Duration::from_secs(60)).unwrap()).await.unwrap();

    // Another writer holds the row; the touch starts (fixing its now())
    // and waits for it.
    let mut admin = common::admin(&db.url).await;
    let tx = admin.transaction().await.unwrap();
    let table = format!("{}.user_sessions", db.schema);
    tx.execute(&format!("SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE"), &[s.id.as_uuid()]).await.unwrap();
    let waiting = {
        let sessions = sessions.clone();
        tokio::spawn(async move { sessions.touch(user, s.id).await })
    };
    let watcher = common::admin(&db.url).await;
    for _ in 0..100 {
        let blocked: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE 'UPDATE user_sessions%last_activity%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if blocked > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The holder slides the session to a time after the touch's now(), as a
    // later touch would, and commits.
    let row = tx
        .query_one(
            &format!(
                "UPDATE {table} SET last_activity = clock_timestamp(), \
                 expires_at = clock_timestamp() + ttl_ms * interval '1 millisecond' \
                 WHERE id = $1 RETURNING last_activity, expires_at"
            ),
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    let (later_activity, later_expiry): (OffsetDateTime, OffsetDateTime) = (row.get(0), row.get(1));
    tx.commit().await.unwrap();

    let touched = waiting.await.unwrap().unwrap().expect("the session is live");
    assert_eq!(touched.last_activity, later_activity, "last_activity moved back");
    assert_eq!(touched.expires_at, later_expiry, "expires_at moved back");
}

#[tokio::test]
async fn session_list_uses_the_user_index() {
    let Some(db) = common::fresh_db().await else { return };
    let conn = db.pool.get().await.unwrap();
    conn.batch_execute(
        "INSERT INTO users (id) SELECT gen_random_uuid() FROM generate_series(1, 2000);
         INSERT INTO user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms)
         SELECT gen_random_uuid(), u.id, now() - g * interval '1 minute', now(),
                now() + g * interval '1 minute' - interval '5 minutes', 3600000
         FROM users u, generate_series(1, 10) g;
         ANALYZE users; ANALYZE user_sessions;",
    )
    .await
    .unwrap();
    let user = UserId::from_uuid(conn.query_one("SELECT id FROM users LIMIT 1", &[]).await.unwrap().get(0));
    drop(conn);
    let store = PostgresSessionStore::new(db.pool.clone());
    // A user has few sessions: the planner may sort them after the index
    // lookup, which costs less than an ordered scan; what matters is that it
    // never scans the table.
    let plan = store.explain_list(user, true).await.unwrap();
    assert_plan_uses(&plan, "user_sessions_user_id_idx");
    // 10 sessions, 4 of them already expired (g <= 4 would be; g = 5 ends now).
    let live = store.list(user).await.unwrap();
    assert!((5..=6).contains(&live.len()), "{} live", live.len());
}

#[tokio::test]
async fn unknown_user_is_not_found_and_taken_id_is_conflict() {
    let Some(db) = common::fresh_db().await else { return };
    let memory = PostgresMemoryStore::new(db.pool.clone());
    let sessions = PostgresSessionStore::new(db.pool.clone());
    let users = PostgresUserStore::new(db.pool.clone());
    let ghost = UserId::new();

    let log = NewMemoryLog::new("fact", "x").unwrap();
    for err in [
        memory.append(ghost, log.clone()).await.unwrap_err(),
        memory.append_batch(ghost, vec![log.clone(), NewMemoryLog::new("fact", "y").unwrap()]).await.unwrap_err(),
        memory.append_batch(ghost, vec![]).await.unwrap_err(),
        sessions.create(ghost, NewSession::new(Duration::from_secs(5)).unwrap()).await.unwrap_err(),
    ] {
        assert!(matches!(&err, Error::NotFound { what: "user", id } if *id == ghost.to_string()), "{err:?}");
        assert!(!err.is_retryable());
    }

    let user = users.create_user().await.unwrap();
    let stored = memory.append(user, log.clone()).await.unwrap();
    let fresh = NewMemoryLog::new("fact", "fresh").unwrap();
    let clash = NewMemoryLog::new("fact", "another record").unwrap().with_id(stored.id);
    let err = memory.append_batch(user, vec![fresh.clone(), clash]).await.unwrap_err();
    assert!(matches!(&err, Error::Conflict { what: "memory log", id } if *id == stored.id.to_string()), "{err:?}");
    assert!(memory.get(user, fresh.id()).await.unwrap().is_none(), "the batch wrote nothing");
}

/// A pool on a port nothing listens on.
fn dead_pool() -> selfrag_postgres::Pool {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again here
    PostgresConfig::with_url(format!("postgres://postgres@127.0.0.1:{port}/test"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn bad_input_is_rejected_before_anything_is_sent() {
    // Against a server that is not there: an InvalidInput proves that the
    // check ran before any connection was attempted.
    let pool = dead_pool();
    let memory = PostgresMemoryStore::new(pool.clone());
    let sessions = PostgresSessionStore::new(pool);
    let user = UserId::new();

    let nul_filter = json!({"k": "a\u{0}b"}).as_object().unwrap().clone();
    let err = memory.query(user, &MemoryQuery::new().metadata_contains(nul_filter.clone())).await.unwrap_err();
    assert_eq!(err.field(), Some("metadata_contains"), "{err:?}");
    let err = sessions.set_data(user, SessionId::generate(), nul_filter).await.unwrap_err();
    assert_eq!(err.field(), Some("data"), "{err:?}");
    let log = NewMemoryLog::new("fact", "x").unwrap();
    let err = memory.append_batch(user, vec![log.clone(), log]).await.unwrap_err();
    assert_eq!(err.field(), Some("logs"), "{err:?}");
    let err = memory.query(user, &MemoryQuery::new().limit(0)).await.unwrap_err();
    assert_eq!(err.field(), Some("limit"), "{err:?}");
    // Timestamps Postgres cannot hold exactly, in single appends too.
    let ancient = NewMemoryLog::new("fact", "x").unwrap().at(time::macros::datetime!(-100-01-01 00:00 UTC));
    let err = memory.append(user, ancient.clone()).await.unwrap_err();
    assert_eq!(err.field(), Some("logs[0].timestamp"), "{err:?}");
    let err = memory.append_batch(user, vec![ancient]).await.unwrap_err();
    assert_eq!(err.field(), Some("logs[0].timestamp"), "{err:?}");
    let ancient = time::macros::datetime!(-5000-01-01 00:00 UTC);
    let err = memory.query(user, &MemoryQuery::new().since(ancient)).await.unwrap_err();
    assert_eq!(err.field(), Some("since"), "{err:?}");
    // More bytes than one batch may carry.
    let big = "x".repeat(NewMemoryLog::MAX_CONTENT_BYTES);
    let logs: Vec<_> = (0..(selfrag_core::memory::MAX_BATCH_BYTES / big.len() + 1))
        .map(|_| NewMemoryLog::new("fact", big.clone()).unwrap())
        .collect();
    let err = memory.append_batch(user, logs).await.unwrap_err();
    assert_eq!(err.field(), Some("logs"), "{err:?}");
    // And the input types cannot even hold a NUL byte.
    assert_eq!(NewMemoryLog::new("fact", "a\0b").unwrap_err().field(), Some("content"));
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_retryable() {
    let pool = dead_pool();
    let memory = PostgresMemoryStore::new(pool.clone());
    let err = memory.get(UserId::new(), MemoryLogId::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    let mut source = err.source();
    let mut saw_io = false;
    while let Some(s) = source {
        saw_io |= s.is::<std::io::Error>();
        source = s.source();
    }
    assert!(saw_io, "the I/O error is kept in the chain: {err:?}");
    let err = selfrag_postgres::migrate(&pool).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
}

#[tokio::test]
async fn too_many_connections_is_unavailable() {
    let Some(db) = common::fresh_db().await else { return };
    let admin = common::admin(&db.url).await;
    // A role that may open no connection: the server answers 53300.
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'selfrag_test_no_conn') THEN
                 CREATE ROLE selfrag_test_no_conn LOGIN CONNECTION LIMIT 0;
               END IF;
             END $$",
        )
        .await
        .unwrap();
    let pg: tokio_postgres::Config = db.url.parse().expect("test URL");
    let url = format!(
        "postgres://selfrag_test_no_conn@{}:{}/{}",
        host_of(&pg),
        pg.get_ports().first().copied().unwrap_or(5432),
        pg.get_dbname().unwrap_or("postgres")
    );
    let store = PostgresMemoryStore::new(PostgresConfig::with_url(url).build().unwrap());
    let err = store.get(UserId::new(), MemoryLogId::new()).await.unwrap_err();
    // The server cannot serve now: Unavailable, and nothing was sent.
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable() && !err.is_ambiguous(), "53300 is transient: {err:?}");
    assert!(err.to_string().contains("53300"), "{err}");
}

fn host_of(pg: &tokio_postgres::Config) -> String {
    match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    }
}

#[tokio::test]
async fn statement_timeout_is_a_retryable_timeout() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let user = users.create_user().await.unwrap();
    // Hold a lock the query must wait for, longer than its statement_timeout.
    let mut admin = common::admin(&db.url).await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {}.memory_logs IN ACCESS EXCLUSIVE MODE", db.schema)).await.unwrap();
    let pool = PostgresConfig::with_url(&db.url)
        .schema(&db.schema)
        .statement_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let err = PostgresMemoryStore::new(pool).query(user, &MemoryQuery::new()).await.unwrap_err();
    tx.rollback().await.unwrap();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn sweep_deletes_only_expired_rows() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let sessions = PostgresSessionStore::new(db.pool.clone());
    let user = users.create_user().await.unwrap();
    let short = NewSession::new(NewSession::MIN_TTL).unwrap();
    let a = sessions.create(user, short.clone()).await.unwrap();
    sessions.create(user, short).await.unwrap();
    let keep = sessions.create(user, NewSession::new(Duration::from_secs(60)).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Expired rows are still there, but never returned.
    assert_eq!(session_rows(&db).await, 3);
    assert!(sessions.get(user, a.id).await.unwrap().is_none());
    assert!(sessions.touch(user, a.id).await.unwrap().is_none());
    assert_eq!(sessions.list(user).await.unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), [keep.id]);

    assert_eq!(sessions.sweep_expired().await.unwrap(), 2);
    assert_eq!(session_rows(&db).await, 1);
    assert_eq!(sessions.sweep_expired().await.unwrap(), 0);
    assert!(sessions.get(user, keep.id).await.unwrap().is_some());
}

async fn session_rows(db: &common::TestDb) -> i64 {
    let conn = db.pool.get().await.unwrap();
    conn.query_one("SELECT count(*) FROM user_sessions", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn sessions_follow_the_database_clock() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let sessions = PostgresSessionStore::new(db.pool.clone());
    let user = users.create_user().await.unwrap();
    let s = sessions.create(user, NewSession::new(Duration::from_millis(1500)).unwrap()).await.unwrap();
    assert_eq!(s.expires_at - s.created_at, time::Duration::milliseconds(1500));
    let db_now: OffsetDateTime = db.pool.get().await.unwrap().query_one("SELECT now()", &[]).await.unwrap().get(0);
    assert!((db_now - s.created_at).abs() < time::Duration::seconds(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = sessions.touch(user, s.id).await.unwrap().unwrap();
    assert!(t.last_activity > s.last_activity);
    assert_eq!(t.expires_at - t.last_activity, time::Duration::milliseconds(1500));
    assert_eq!(t.created_at, s.created_at);
}

#[tokio::test]
async fn migrations_through_the_pool() {
    let Some(db) = common::fresh_db().await else { return };
    // The fixture migrated already: again is a no-op.
    assert!(selfrag_postgres::migrate(&db.pool).await.unwrap().applied.is_empty());
    let status = selfrag_postgres::migration_status(&db.pool).await.unwrap();
    assert!(status.is_up_to_date(), "{status}");
    assert_eq!(status.schema, db.schema);

    let conn = db.pool.get().await.unwrap();
    conn.execute("UPDATE selfrag_schema_history SET checksum = '1' WHERE version = 3", &[]).await.unwrap();
    drop(conn);
    let err = selfrag_postgres::migrate(&db.pool).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err:?}");
    assert!(err.to_string().contains("migration 3"), "{err}");
    assert!(!err.is_retryable());
}

/// A row that other SQL wrote with `meta_data` the JSON decoder refuses
/// (nested deeper than its recursion limit) fails only the page that
/// returns it, with an error naming the row; as the extra row a page
/// fetches to detect the next one, it fails nothing.
#[tokio::test]
async fn an_undecodable_row_fails_only_its_own_page_and_is_named() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let store = PostgresMemoryStore::new(db.pool.clone());
    let user = users.create_user().await.unwrap();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    for i in 1..=3u64 {
        let at = base + Duration::from_secs(i);
        store.append(user, NewMemoryLog::new("fact", format!("good {i}")).unwrap().at(at)).await.unwrap();
    }
    // The oldest row: `{"a":{"a":...}}` 200 deep, which `jsonb` accepts and
    // serde_json's default decoder (limit 128) does not.
    let bad = uuid::Uuid::now_v7();
    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let conn = db.pool.get().await.unwrap();
    conn.execute(
        "INSERT INTO memory_logs (id, user_id, \"timestamp\", type, content, meta_data) VALUES ($1, $2, $3, 'fact', 'bad', $4::text::jsonb)",
        &[&bad, user.as_uuid(), &base, &deep],
    )
    .await
    .unwrap();

    // The bad row is the over-fetched one: the page of 3 is fine and says
    // that another page follows.
    let page = store.query(user, &MemoryQuery::new().limit(3)).await.expect("a page that does not hold the row");
    assert_eq!(page.logs.len(), 3);
    let next = page.next.expect("another page follows");
    // The page that holds it fails, naming the row and the column.
    let err = store.query(user, &MemoryQuery::new().limit(3).after(next)).await.expect_err("the bad row's page");
    let message = err.to_string();
    assert!(message.contains(&bad.to_string()) && message.contains("meta_data"), "{message}");
    assert!(!err.is_retryable(), "{err:?}");
    let err = store.get(user, MemoryLogId::from_uuid(bad)).await.expect_err("get of the bad row");
    assert!(err.to_string().contains(&bad.to_string()), "{err}");
}

/// Creates of one user are serialized on the user's row (so the session cap
/// holds), within the operation timeout: a create behind a transaction that
/// holds that row returns `Timeout` on time and writes nothing, other users'
/// creates do not wait, and the store works on once the row is free.
#[tokio::test]
async fn session_creates_wait_on_the_user_row_within_the_deadline() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let deadline = Duration::from_millis(500);
    let sessions = PostgresSessionStore::new(db.pool.clone()).operation_timeout(deadline);
    let (user, other) = (users.create_user().await.unwrap(), users.create_user().await.unwrap());
    let new = || NewSession::new(Duration::from_secs(60)).unwrap();

    let mut admin = common::admin(&db.url).await;
    let tx = admin.transaction().await.unwrap();
    let lock = format!("SELECT 1 FROM {}.users WHERE id = $1 FOR NO KEY UPDATE", db.schema);
    tx.execute(&lock, &[user.as_uuid()]).await.unwrap();
    let started = std::time::Instant::now();
    let err = sessions.create(user, new()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(took < deadline + Duration::from_millis(500), "took {took:?}");
    sessions.create(other, new()).await.expect("another user's create does not wait");
    tx.rollback().await.unwrap();

    assert!(sessions.list(user).await.unwrap().is_empty(), "the timed-out create wrote nothing");
    sessions.create(user, new()).await.expect("create once the row is free");
}
