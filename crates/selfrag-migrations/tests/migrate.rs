//! Migrations against a real Postgres (`SELFRAG_TEST_POSTGRES_URL`), each test
//! in a fresh schema.

use std::str::FromStr;

use selfrag_migrations::{latest_version, migrate, status, Error, MigrationState, HISTORY_TABLE, MIGRATIONS};
use tokio_postgres::{Client, NoTls};

/// A fresh schema on the test server, dropped at the end of a passing test.
struct Schema {
    url: String,
    name: String,
    /// Keeps the server (e.g. a testcontainers container) alive while the
    /// schema is in use.
    _server: selfrag_testkit::Guard,
}

impl Schema {
    async fn new() -> Option<Self> {
        let server = selfrag_testkit::servers::postgres().await?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&server.url, None).await;
        admin.batch_execute(&format!("CREATE SCHEMA {name}")).await.expect("create schema");
        Some(Self { url: server.url, name, _server: server.guard })
    }

    /// A connection whose search_path is this schema.
    async fn client(&self) -> Client {
        connect(&self.url, Some(&self.name)).await
    }

    async fn drop_schema(self) {
        let admin = connect(&self.url, None).await;
        admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)).await.expect("drop schema");
    }
}

async fn connect(url: &str, schema: Option<&str>) -> Client {
    let mut config = tokio_postgres::Config::from_str(url).expect("test URL");
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    let (client, connection) = config.connect(NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    client
}

async fn history(client: &Client) -> Vec<(i32, String)> {
    let sql = format!("SELECT version, name FROM {HISTORY_TABLE} ORDER BY version");
    client.query(&sql, &[]).await.expect("history").iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn expected_history() -> Vec<(i32, String)> {
    MIGRATIONS.iter().map(|m| (i32::try_from(m.version).unwrap(), m.name.to_owned())).collect()
}

#[tokio::test]
async fn fresh_schema_gets_every_migration_and_rerun_is_a_no_op() {
    let Some(schema) = Schema::new().await else { return };
    let mut client = schema.client().await;

    let before = status(&client).await.unwrap();
    assert_eq!(before.schema, schema.name);
    assert_eq!(before.pending().count(), MIGRATIONS.len());
    assert!(!before.is_up_to_date());
    let has_history: bool =
        client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE]).await.unwrap().get(0);
    assert!(!has_history, "status must not create the history table");

    let report = migrate(&mut client).await.unwrap();
    let applied: Vec<u32> = report.applied.iter().map(|a| a.version).collect();
    assert_eq!(applied, (1..=latest_version()).collect::<Vec<_>>());
    assert_eq!(history(&client).await, expected_history());

    // The tables are in the schema, with the columns and index the stores use.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["erasures", "memory_logs", HISTORY_TABLE, "user_sessions", "users"]);
    let index: String = client
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'memory_logs_user_timestamp_idx'",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(index.contains(r#"(user_id, "timestamp" DESC, id DESC)"#), "{index}");

    let after = status(&client).await.unwrap();
    assert!(after.is_up_to_date(), "{after}");
    for (line, m) in after.migrations.iter().zip(MIGRATIONS) {
        assert_eq!(line.checksum, m.checksum());
        assert!(matches!(line.state, MigrationState::Applied { .. }), "{after}");
    }

    // The rerun lifts the session's statement_timeout while it holds the
    // lock, and must put it back.
    client.batch_execute("SET statement_timeout = '1234'").await.unwrap();
    let again = migrate(&mut client).await.unwrap();
    assert!(again.applied.is_empty(), "rerun applied {:?}", again.applied);
    assert_eq!(history(&client).await, expected_history());

    // The lock is released and statement_timeout restored after a run.
    let timeout: String = client.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
    assert_eq!(timeout, "1234ms");
    let held: i64 = client
        .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn sixteen_concurrent_runners_apply_each_migration_once() {
    let Some(schema) = Schema::new().await else { return };
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(schema.client().await);
    }
    // Start together: every runner has its connection before any begins.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let runs = clients.into_iter().map(|mut client| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            migrate(&mut client).await
        })
    });
    let reports: Vec<_> = futures::future::join_all(runs).await;
    let mut applied = Vec::new();
    for report in reports {
        let report = report.expect("task").expect("every runner succeeds");
        applied.extend(report.applied.into_iter().map(|a| a.version));
    }
    applied.sort_unstable();
    assert_eq!(applied, (1..=latest_version()).collect::<Vec<_>>(), "each migration applied exactly once");
    let client = schema.client().await;
    assert_eq!(history(&client).await, expected_history());
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn edited_migration_is_refused() {
    let Some(schema) = Schema::new().await else { return };
    let mut client = schema.client().await;
    migrate(&mut client).await.unwrap();
    // What an edited file looks like from the database: another checksum.
    client.execute(&format!("UPDATE {HISTORY_TABLE} SET checksum = '12345' WHERE version = 2"), &[]).await.unwrap();

    let err = migrate(&mut client).await.unwrap_err();
    match &err {
        Error::Edited { version: 2, recorded: 12345, embedded, .. } => assert_eq!(*embedded, MIGRATIONS[1].checksum()),
        other => panic!("expected Edited for version 2, got {other:?}"),
    }
    assert!(err.is_incompatible());
    assert!(err.to_string().contains("must not be edited"), "{err}");

    let st = status(&client).await.unwrap();
    assert_eq!(st.migrations[1].state, MigrationState::Edited { recorded: 12345 });
    assert!(matches!(st.problem(), Some(Error::Edited { version: 2, .. })));
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn database_newer_than_the_build_is_refused() {
    let Some(schema) = Schema::new().await else { return };
    let mut client = schema.client().await;
    migrate(&mut client).await.unwrap();
    let next = i32::try_from(latest_version()).unwrap() + 1;
    client
        .execute(
            &format!(
                "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) \
                 VALUES ($1, 'from_the_future', '2030-01-01T00:00:00Z', '42')"
            ),
            &[&next],
        )
        .await
        .unwrap();

    let err = migrate(&mut client).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotInBuild { version, name, .. } if *version == next as u32 && name == "from_the_future"),
        "{err:?}"
    );
    assert!(err.is_incompatible());
    let st = status(&client).await.unwrap();
    assert_eq!(st.migrations.last().unwrap().state, MigrationState::NotInBuild);
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn gap_in_the_history_is_refused() {
    let Some(schema) = Schema::new().await else { return };
    let mut client = schema.client().await;
    migrate(&mut client).await.unwrap();
    client.execute(&format!("DELETE FROM {HISTORY_TABLE} WHERE version = 1"), &[]).await.unwrap();

    let err = migrate(&mut client).await.unwrap_err();
    assert!(matches!(&err, Error::Skipped { version: 1, .. }), "{err:?}");
    assert!(err.is_incompatible());
    assert_eq!(status(&client).await.unwrap().migrations[0].state, MigrationState::Skipped);
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn missing_schema_is_refused() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let mut client = connect(&server.url, Some("no_such_schema_here")).await;
    let err = migrate(&mut client).await.unwrap_err();
    assert!(matches!(err, Error::NoSchema), "{err:?}");
    assert!(matches!(status(&client).await.unwrap_err(), Error::NoSchema));
}

#[tokio::test]
async fn corrupt_history_row_is_a_clear_error_not_a_panic() {
    let Some(schema) = Schema::new().await else { return };
    let mut client = schema.client().await;
    migrate(&mut client).await.unwrap();
    let table = format!("{}.{HISTORY_TABLE}", schema.name);
    let cases = [
        ("checksum = 'not-a-number'", "checksum \"not-a-number\""),
        ("applied_on = 'yesterday'", "not RFC 3339"),
        ("checksum = NULL", "no checksum"),
        ("name = NULL", "no name"),
    ];
    for (set, expected) in cases {
        client.batch_execute("BEGIN").await.unwrap();
        client.execute(&format!("UPDATE {table} SET {set} WHERE version = 2"), &[]).await.unwrap();
        // Refinery unwraps these fields; the run must stop before it reads them.
        let err = migrate(&mut client).await.unwrap_err();
        assert!(matches!(&err, Error::CorruptHistory { version: 2, .. }), "{set}: {err:?}");
        assert!(err.is_incompatible());
        assert!(err.to_string().contains(expected), "{set}: {err}");
        let st = status(&client).await.unwrap_err();
        assert!(matches!(st, Error::CorruptHistory { version: 2, .. }), "{set}: {st:?}");
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    // Still usable, and untouched, once the row is right again.
    assert!(migrate(&mut client).await.unwrap().applied.is_empty());
    assert_eq!(history(&client).await, expected_history());
    drop(client);
    schema.drop_schema().await;
}

#[tokio::test]
async fn status_reads_the_history_of_the_schema_migrate_uses() {
    // `first` is where migrate creates everything; `second`, later on the
    // search_path, already has a full history, which must not be mistaken
    // for `first`'s.
    let Some(first) = Schema::new().await else { return };
    let Some(second) = Schema::new().await else { return };
    migrate(&mut second.client().await).await.unwrap();
    let mut client = connect(&first.url, Some(&format!("{},{}", first.name, second.name))).await;

    let before = status(&client).await.unwrap();
    assert_eq!(before.schema, first.name);
    assert_eq!(before.pending().count(), MIGRATIONS.len(), "{before}");
    let report = migrate(&mut client).await.unwrap();
    assert_eq!(report.applied.len(), MIGRATIONS.len());
    assert!(status(&client).await.unwrap().is_up_to_date());
    assert_eq!(history(&first.client().await).await, expected_history());
    drop(client);
    first.drop_schema().await;
    second.drop_schema().await;
}
