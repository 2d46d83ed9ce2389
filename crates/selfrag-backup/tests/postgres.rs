//! Postgres backups against a real server (`SELFRAG_TEST_POSTGRES_URL`, or a
//! container; skipped loudly otherwise): the restore drill, damaged
//! archives, table backups, missing tools.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use selfrag_backup::{
    backup_postgres, restore_postgres, verify_run, BackupRun, EntryKind, Error, PgTools, PostgresBackup,
    PostgresRestore,
};
use selfrag_core::{MemoryStore, NewMemoryLog, NewSession, SessionStore, UserStore};
use selfrag_postgres::tokio_postgres::{self, Client, NoTls};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};

const TABLES: [&str; 4] = ["users", "user_sessions", "memory_logs", "selfrag_schema_history"];

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

/// A fresh schema in the test database, migrated and populated through the
/// selfrag-postgres stores: `users` users, each with `logs` memory logs and
/// two sessions.
async fn populated_schema(url: &str, users: usize, logs: usize) -> String {
    let schema = format!("bk_{}", uuid::Uuid::new_v4().simple());
    connect(url).await.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let pool = PostgresConfig::with_url(url).schema(schema.clone()).build().unwrap();
    selfrag_postgres::migrate(&pool).await.unwrap();
    let user_store = PostgresUserStore::new(pool.clone());
    let memory: Arc<dyn MemoryStore> = Arc::new(PostgresMemoryStore::new(pool.clone()));
    let sessions = PostgresSessionStore::new(pool);
    for u in 0..users {
        let user = user_store.create_user().await.unwrap();
        let batch: Vec<NewMemoryLog> = (0..logs)
            .map(|i| {
                NewMemoryLog::new("fact", format!("user {u} fact {i}: ünïcode, 'quotes', \\ and \t tabs"))
                    .unwrap()
                    .with_metadata(serde_json::json!({"i": i, "tags": ["a", "b"], "nested": {"u": u}}))
                    .unwrap()
            })
            .collect();
        memory.append_batch(user, batch).await.unwrap();
        for _ in 0..2 {
            let s = NewSession::new(Duration::from_secs(3600)).unwrap();
            sessions.create(user, s).await.unwrap();
        }
    }
    schema
}

/// Row count and an md5 over every row's text, per table, in a fixed order.
async fn fingerprint(client: &Client, schema: &str) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for t in TABLES {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {schema}.{t} t"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((t.to_owned(), row.get(0), row.get(1)));
    }
    out
}

async fn database_exists(client: &Client, db: &str) -> bool {
    client.query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&db]).await.unwrap().get(0)
}

async fn drop_database(client: &Client, db: &str) {
    client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await.unwrap();
}

fn restore_db_name() -> String {
    format!("selfrag_restore_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_users_sessions_memory_logs() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let schema = populated_schema(&url, 5, 40).await;
    let before = fingerprint(&admin, &schema).await;
    assert_eq!(before[0].1, 5);
    assert_eq!(before[1].1, 10);
    assert_eq!(before[2].1, 200);
    assert!(before[3].1 >= 3, "migration history recorded: {before:?}");

    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let entry = backup_postgres(&mut run, &PostgresBackup::new(&url).schema(&schema)).await.unwrap().clone();
    let done = run.finish().unwrap();
    let info = entry.postgres.as_ref().unwrap();
    assert_eq!(info.tables, TABLES);
    assert!(info.server_version_num >= 100_000, "{info:?}");
    assert!(info.pg_dump_version.contains("pg_dump"), "{info:?}");
    assert!(done.dir.join("postgres.dump").is_file());
    assert!(done.dir.join("manifest.json").is_file());
    let report = verify_run(&done.dir, &PgTools::new(), true).await.unwrap();
    assert_eq!(report.entries, vec!["postgres"]);

    // Drop the data, then restore into a fresh database.
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    let db = restore_db_name();
    let opts = PostgresRestore::new(&url).database(&db).create_database(true);
    let restored = restore_postgres(&done.dir, None, &opts).await;
    let target = connect(&with_db(&url, &db)).await;
    let result = async {
        let restored = restored?;
        assert!(restored.created_database);
        let after = fingerprint(&target, &schema).await;
        assert_eq!(after, before, "every row of every table comes back");

        // The comparison notices a single lost row.
        target
            .batch_execute(&format!(
                "DELETE FROM {schema}.memory_logs WHERE id = (SELECT id FROM {schema}.memory_logs ORDER BY id LIMIT 1)"
            ))
            .await
            .unwrap();
        assert_ne!(fingerprint(&target, &schema).await, before);

        // A second restore into the now non-empty database is refused
        // without `clean` and leaves it alone...
        let again = restore_postgres(&done.dir, None, &PostgresRestore::new(with_db(&url, &db))).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
        assert_eq!(fingerprint(&target, &schema).await[2].1, 199);
        // ...and with `clean` replaces it with the backup.
        restore_postgres(&done.dir, None, &PostgresRestore::new(with_db(&url, &db)).clean(true)).await?;
        assert_eq!(fingerprint(&target, &schema).await, before);
        Ok::<_, Error>(())
    }
    .await;
    drop(target);
    drop_database(&admin, &db).await;
    result.unwrap();
}

/// Copies a finished run directory.
/// A populated schema, backed up into a new run (with `tune` applied to the
/// backup settings) and then dropped: the starting point of the refusal tests.
/// Returns the backup root (keep it alive) and the finished run's directory.
async fn backed_up_then_dropped(
    url: &str,
    admin: &Client,
    users: usize,
    logs: usize,
    tune: impl FnOnce(PostgresBackup) -> PostgresBackup,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let schema = populated_schema(url, users, logs).await;
    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    backup_postgres(&mut run, &tune(PostgresBackup::new(url).schema(&schema))).await.unwrap();
    let dir = run.finish().unwrap().dir;
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    (root, dir)
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_archives_are_refused_before_the_target_is_touched() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let (_root, good) = backed_up_then_dropped(&url, &admin, 2, 30, |b| b).await;

    let damaged = tempfile::tempdir().unwrap();
    let flipped = damaged.path().join("flipped");
    copy_run(&good, &flipped);
    let dump = flipped.join("postgres.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&dump, &bytes).unwrap();

    let truncated = damaged.path().join("truncated");
    copy_run(&good, &truncated);
    let dump = truncated.join("postgres.dump");
    let len = std::fs::metadata(&dump).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&dump).unwrap().set_len(len - 100).unwrap();

    let no_manifest = damaged.path().join("no_manifest");
    copy_run(&good, &no_manifest);
    std::fs::remove_file(no_manifest.join("manifest.json")).unwrap();

    for (dir, expect) in [(&flipped, "corrupt"), (&truncated, "truncated")] {
        let err = verify_run(dir, &PgTools::new(), false).await.unwrap_err();
        assert!(matches!(err, Error::Incompatible { .. }), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
        let db = restore_db_name();
        let opts = PostgresRestore::new(&url).database(&db).create_database(true);
        let err = restore_postgres(dir, None, &opts).await.unwrap_err();
        assert!(matches!(err, Error::Incompatible { .. }), "{err}");
        assert!(!database_exists(&admin, &db).await, "the refused restore created its target");
    }
    let err = verify_run(&no_manifest, &PgTools::new(), false).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // The intact run still verifies (the copies were damaged, not it).
    verify_run(&good, &PgTools::new(), true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_backup_holds_only_that_table() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let schema = populated_schema(&url, 2, 10).await;
    let before = fingerprint(&admin, &schema).await;
    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let entry = backup_postgres(&mut run, &PostgresBackup::new(&url).schema(&schema).table("memory_logs"))
        .await
        .unwrap()
        .clone();
    assert_eq!(entry.name, "postgres-memory_logs");
    assert!(entry.postgres.as_ref().unwrap().table_only);
    let done = run.finish().unwrap();
    let toc = selfrag_backup::postgres::list_archive(&PgTools::new(), &done.dir.join("postgres-memory_logs.dump"))
        .await
        .unwrap();
    assert_eq!(toc.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["memory_logs"]);
    verify_run(&done.dir, &PgTools::new(), false).await.unwrap();

    // Lose the logs, restore the table in place (the rest of the schema is
    // there): the rows come back.
    admin.batch_execute(&format!("DELETE FROM {schema}.memory_logs")).await.unwrap();
    restore_postgres(&done.dir, None, &PostgresRestore::new(&url).clean(true)).await.unwrap();
    assert_eq!(fingerprint(&admin, &schema).await, before);
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tools_and_tables_fail_before_anything_is_written() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let nowhere = PgTools::new().bin_dir("/nonexistent/pg/bin");
    let err = backup_postgres(&mut run, &PostgresBackup::new(&url).tools(nowhere)).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "a configuration problem, not retryable: {err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("pg_dump not found"), "{err}");

    // A schema without the selfrag tables.
    let schema = format!("bk_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&url).await;
    admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let err = backup_postgres(&mut run, &PostgresBackup::new(&url).schema(&schema)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { what: "table", .. }), "{err}");
    admin.batch_execute(&format!("DROP SCHEMA {schema}")).await.unwrap();

    // Bad names name their field.
    let err = backup_postgres(&mut run, &PostgresBackup::new(&url).schema("x; drop")).await.unwrap_err();
    assert_eq!(err.field(), Some("schema"));
    assert_eq!(std::fs::read_dir(run.dir()).unwrap().count(), 0, "nothing was written");
    assert!(run.entries().is_empty());
    assert_eq!(run.finish().unwrap_err().field(), Some("entries"));
    // The unfinished run is no backup.
    let runs = selfrag_backup::list_runs(root.path()).unwrap();
    assert!(runs.iter().all(|r| !r.is_complete()));
    assert!(matches!(selfrag_backup::latest_run(root.path()), Err(Error::NotFound { .. })));
    let _ = EntryKind::Postgres;
}

/// Rewrites the manifest's checksum and size of `file` to match its current
/// content, as someone (or something) covering up damage would.
fn recompute_checksum(run_dir: &Path, file: &str) {
    use sha2::Digest;
    let bytes = std::fs::read(run_dir.join(file)).unwrap();
    let sum: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let path = run_dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for e in m["entries"].as_array_mut().unwrap() {
        for f in e["files"].as_array_mut().unwrap() {
            if f["path"] == file {
                f["sha256"] = sum.clone().into();
                f["size"] = bytes.len().into();
            }
        }
    }
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_archive_with_a_matching_checksum_is_still_refused() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let (_root, good) = backed_up_then_dropped(&url, &admin, 4, 300, |b| b).await;

    let damaged = tempfile::tempdir().unwrap();
    let garbled = damaged.path().join("20250101T000000Z");
    copy_run(&good, &garbled);
    let dump = garbled.join("postgres.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    // Inside the compressed rows (the data blocks follow the table of contents).
    let at = bytes.len() * 3 / 4;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&dump, &bytes).unwrap();
    recompute_checksum(&garbled, "postgres.dump");

    // The table of contents is intact, so checksums and `--list` pass...
    verify_run(&garbled, &PgTools::new(), false).await.unwrap();
    // ...but reading the data blocks does not.
    let err = verify_run(&garbled, &PgTools::new(), true).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    let db = restore_db_name();
    let opts = PostgresRestore::new(&url).database(&db).create_database(true);
    let err = restore_postgres(&garbled, None, &opts).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    assert!(!database_exists(&admin, &db).await, "the refused restore created its target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_created_for_a_failed_restore_is_dropped() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let (_root, done_dir) = backed_up_then_dropped(&url, &admin, 2, 10, |b| b.table("memory_logs")).await;

    // A table archive needs its schema (and `users`) in the target: in a
    // brand-new database, pg_restore fails after the database was created.
    let db = restore_db_name();
    let opts = PostgresRestore::new(&url).database(&db).create_database(true);
    let err = restore_postgres(&done_dir, None, &opts).await.unwrap_err();
    let exists = database_exists(&admin, &db).await;
    drop_database(&admin, &db).await;
    assert!(matches!(err, Error::Backend { .. }), "pg_restore failed: {err}");
    assert!(err.to_string().contains("pg_restore failed"), "{err}");
    assert!(!exists, "the database created for the failed restore was left behind");
}

/// Erases `user` the way the ledger sees it: the user's rows go (memory
/// logs and sessions by cascade), then the ledger row is written.
async fn erase_in_sql(client: &Client, schema: &str, user: uuid::Uuid) {
    client.execute(&format!("DELETE FROM {schema}.users WHERE id = $1"), &[&user]).await.unwrap();
    client
        .execute(&format!("INSERT INTO {schema}.erasures (user_id, vectors) VALUES ($1, '[]')"), &[&user])
        .await
        .unwrap();
}

/// The ids of the users in `schema`, in id order.
async fn user_ids(client: &Client, schema: &str) -> Vec<uuid::Uuid> {
    let rows = client.query(&format!("SELECT id FROM {schema}.users ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// How many rows of `user` each user-owned table holds.
async fn traces(client: &Client, schema: &str, user: uuid::Uuid) -> [i64; 3] {
    let mut out = [0; 3];
    for (i, (table, column)) in
        [("users", "id"), ("memory_logs", "user_id"), ("user_sessions", "user_id")].iter().enumerate()
    {
        out[i] = client
            .query_one(&format!("SELECT count(*) FROM {schema}.{table} WHERE {column} = $1"), &[&user])
            .await
            .unwrap()
            .get(0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reapplies_erasures_recorded_after_the_backup() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let url_db = url.rsplit_once('/').unwrap().1.split('?').next().unwrap().to_owned();
    let schema = populated_schema(&url, 5, 20).await;
    let users = user_ids(&admin, &schema).await;
    // One erasure before the backup: the archive holds it.
    erase_in_sql(&admin, &schema, users[0]).await;

    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let entry = backup_postgres(&mut run, &PostgresBackup::new(&url).schema(&schema)).await.unwrap().clone();
    let done = run.finish().unwrap();
    let position = entry.postgres.as_ref().unwrap().erasures.expect("the manifest records the ledger position");
    assert_eq!(position.count, 1, "{position:?}");
    assert!(position.seq >= 1, "{position:?}");

    // Two erasures after it.
    erase_in_sql(&admin, &schema, users[1]).await;
    erase_in_sql(&admin, &schema, users[2]).await;
    let live = fingerprint(&admin, &schema).await;

    // Into a new database: the URL's database holds the later ledger.
    let db = restore_db_name();
    let restored =
        restore_postgres(&done.dir, None, &PostgresRestore::new(&url).database(&db).create_database(true)).await;
    let target = connect(&with_db(&url, &db)).await;
    let result = async {
        let report = restored?;
        assert_eq!(report.erasures_reapplied, 2, "{report:?}");
        assert_eq!(report.backup_ledger, Some(position));
        assert_eq!(report.ledger_sources, vec![url_db.clone()], "the new database had no ledger yet");
        for erased in &users[..3] {
            assert_eq!(traces(&target, &schema, *erased).await, [0, 0, 0], "erased user {erased} came back");
        }
        for kept in &users[3..] {
            assert_eq!(traces(&target, &schema, *kept).await, [1, 20, 2], "a neighbour lost data");
        }
        // The restored database now holds the same data and ledger users as
        // the live one.
        assert_eq!(fingerprint(&target, &schema).await[..3], live[..3]);
        let ledger: i64 =
            target.query_one(&format!("SELECT count(*) FROM {schema}.erasures"), &[]).await.unwrap().get(0);
        assert_eq!(ledger, 3);

        // A clean restore over the live schema: its own ledger is read first.
        let over = restore_postgres(&done.dir, None, &PostgresRestore::new(&url).clean(true)).await?;
        assert_eq!(over.erasures_reapplied, 2, "{over:?}");
        assert_eq!(over.ledger_sources, vec![url_db.clone()], "the target is the URL's database");
        for erased in &users[..3] {
            assert_eq!(traces(&admin, &schema, *erased).await, [0, 0, 0], "erased user {erased} came back");
        }
        assert_eq!(fingerprint(&admin, &schema).await[..3], live[..3]);
        Ok::<_, Error>(())
    }
    .await;
    drop(target);
    drop_database(&admin, &db).await;
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    result.unwrap();
}

/// After the server that held the ledger is lost, a copy of the ledger
/// (`selfrag erasures --json`) given as an erasures file keeps an erasure
/// recorded after the backup applied; without it the user comes back. A
/// file that is not such a list stops the restore before anything is
/// created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_file_keeps_erasures_when_the_ledger_is_lost() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let url = server.url.clone();
    let admin = connect(&url).await;
    let schema = populated_schema(&url, 3, 20).await;
    let users = user_ids(&admin, &schema).await;
    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    backup_postgres(&mut run, &PostgresBackup::new(&url).schema(&schema)).await.unwrap();
    let done = run.finish().unwrap();

    // Erased after the backup; the ledger copy is written as the CLI does.
    erase_in_sql(&admin, &schema, users[0]).await;
    let row = admin
        .query_one(&format!("SELECT seq, erased_at FROM {schema}.erasures WHERE user_id = $1"), &[&users[0]])
        .await
        .unwrap();
    let (seq, erased_at): (i64, time::OffsetDateTime) = (row.get(0), row.get(1));
    let record = selfrag_core::ErasureRecord {
        seq: u64::try_from(seq).unwrap(),
        user: selfrag_core::UserId::from_uuid(users[0]),
        erased_at,
        vectors: serde_json::json!([]),
    };
    let file = root.path().join("erasures.json");
    let doc = serde_json::json!({ "position": seq, "after": 0, "erasures": [record] });
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    // The server's ledger is lost (here: its rows deleted).
    admin.batch_execute(&format!("DELETE FROM {schema}.erasures")).await.unwrap();

    let bad = root.path().join("bad.json");
    std::fs::write(&bad, "{\"position\": 1}").unwrap();
    let (with_file, without, refused) = (restore_db_name(), restore_db_name(), restore_db_name());
    let result = async {
        let err = restore_postgres(
            &done.dir,
            None,
            &PostgresRestore::new(&url).database(&refused).create_database(true).erasures_file(&bad),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), selfrag_core::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("erasures_file") && err.to_string().contains("bad.json"), "{err}");
        let exists = |db: String| {
            let admin = &admin;
            async move {
                admin
                    .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&db])
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            }
        };
        assert!(!exists(refused.clone()).await, "a bad file stops the restore before the database is created");

        let report = restore_postgres(
            &done.dir,
            None,
            &PostgresRestore::new(&url).database(&with_file).create_database(true).erasures_file(&file),
        )
        .await?;
        assert_eq!(report.erasures_reapplied, 1, "{report:?}");
        assert!(report.ledger_sources.contains(&format!("file {}", file.display())), "{report:?}");
        let target = connect(&with_db(&url, &with_file)).await;
        assert_eq!(traces(&target, &schema, users[0]).await, [0, 0, 0], "the erased user came back");
        assert_eq!(traces(&target, &schema, users[1]).await, [1, 20, 2], "a neighbour lost data");
        drop(target);

        let report =
            restore_postgres(&done.dir, None, &PostgresRestore::new(&url).database(&without).create_database(true))
                .await?;
        assert_eq!(report.erasures_reapplied, 0, "{report:?}");
        let target = connect(&with_db(&url, &without)).await;
        assert_eq!(traces(&target, &schema, users[0]).await, [1, 20, 2], "without the file the ledger is lost");
        Ok::<_, Error>(())
    }
    .await;
    for db in [&with_file, &without, &refused] {
        drop_database(&admin, db).await;
    }
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    result.unwrap();
}
