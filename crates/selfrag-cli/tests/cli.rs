//! The `selfrag` binary against the real Postgres and Redis
//! (`SELFRAG_TEST_POSTGRES_URL`, `SELFRAG_TEST_REDIS_URL`, or containers; see
//! `selfrag_testkit::servers`). Each test works in a fresh Postgres schema
//! and a fresh Redis key prefix.

use std::process::{Command, Output};

use selfrag_redis::deadpool_redis::redis;
use serde_json::Value;
use tokio_postgres::NoTls;

mod common;
use common::TOOL_VARS;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn selfrag(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfrag"));
    for var in TOOL_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied());
    let Output { status, stdout, stderr } = cmd.output().expect("run the selfrag binary");
    Run {
        code: status.code().expect("exited normally"),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

/// A Postgres server and a fresh, empty schema in it (dropped at the end of
/// the test only when it passes; names are unique, so leftovers do no harm).
struct Pg {
    url: String,
    schema: String,
    client: tokio_postgres::Client,
    _guard: selfrag_testkit::Guard,
}

async fn postgres() -> Option<Pg> {
    let server = selfrag_testkit::servers::postgres().await?;
    let (client, conn) = tokio_postgres::connect(&server.url, NoTls).await.expect("connect to the test Postgres");
    tokio::spawn(conn);
    let schema = format!("cli_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    Some(Pg { url: server.url, schema, client, _guard: server.guard })
}

impl Pg {
    fn env(&self) -> Vec<(&str, &str)> {
        vec![("DATABASE_URL", self.url.as_str()), ("SELFRAG_POSTGRES_SCHEMA", self.schema.as_str())]
    }

    async fn drop_schema(&self) {
        self.client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await.expect("drop schema");
    }
}

fn check<'a>(doc: &'a Value, service: &str, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["service"] == service && c["check"] == name)
        .unwrap_or_else(|| panic!("no check {service}/{name} in {doc:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_up_status() {
    let Some(pg) = postgres().await else { return };
    let env = pg.env();

    let before = selfrag(&["migrate", "status", "--json"], &env);
    assert_eq!(before.code, 1, "a fresh schema has pending migrations: {before:?}");
    let doc = before.json();
    assert_eq!(doc["up_to_date"], false);
    assert_eq!(doc["schema"], pg.schema.as_str());
    let migrations = doc["migrations"].as_array().unwrap();
    assert!(migrations.len() >= 3, "{doc:#}");
    assert!(migrations.iter().all(|m| m["state"] == "pending"), "{doc:#}");

    let up = selfrag(&["migrate", "up", "--json"], &env);
    assert_eq!(up.code, 0, "{up:?}");
    let doc = up.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["applied"].as_array().unwrap().len(), migrations.len(), "{doc:#}");
    assert_eq!(doc["applied"][2]["name"], "add_memory_logs_table");
    assert!(up.stderr.contains("applying pending migrations"), "progress on stderr: {up:?}");

    let status = selfrag(&["migrate", "status", "--json"], &env);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    assert_eq!(doc["up_to_date"], true);
    assert!(doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "applied" && m["applied_on"].is_string()));
    // The tables really are in the schema the tool was pointed at.
    let n: i64 = pg
        .client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name IN ('users', 'user_sessions', 'memory_logs')",
            &[&pg.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // Again: nothing to do; the human output says so.
    let again = selfrag(&["migrate", "up"], &env);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already up to date"), "{again:?}");
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_all_green_and_cleans_up() {
    let Some(pg) = postgres().await else { return };
    let Some(redis_server) = selfrag_testkit::servers::redis().await else { return };
    let prefix = format!("clitest{}:", uuid::Uuid::new_v4().simple());
    let mut env = pg.env();
    env.push(("REDIS_URL", redis_server.url.as_str()));
    env.push(("SELFRAG_REDIS_PREFIX", prefix.as_str()));
    assert_eq!(selfrag(&["migrate", "up", "-q"], &env).code, 0);

    let run = selfrag(&["doctor", "--json"], &env);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["ok"], true);
    for (service, name) in [
        ("postgres", "connection"),
        ("postgres", "migrations"),
        ("postgres", "memory_logs index"),
        ("redis", "connection"),
        ("redis", "rate-limit TTLs"),
    ] {
        assert_eq!(check(&doc, service, name)["state"], "ok", "{service}/{name}: {doc:#}");
    }
    assert_eq!(check(&doc, "qdrant", "configured")["state"], "skip");
    assert_eq!(check(&doc, "edge", "configured")["state"], "skip");
    let ttl = check(&doc, "redis", "rate-limit TTLs")["detail"].as_str().unwrap().to_owned();
    assert!(ttl.contains("120s / 7200s / 172800s"), "{ttl}");

    // The doctor's bucket keys are gone.
    let client = redis::Client::open(redis_server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    assert!(left.is_empty(), "doctor left keys behind: {left:?}");

    // Human output: one line per check and a verdict.
    let human = selfrag(&["doctor", "-q"], &env);
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("doctor: all checks passed"), "{human:?}");
    assert!(human.stdout.contains("skip  qdrant"), "{human:?}");
    assert!(human.stderr.is_empty(), "-q silences progress: {human:?}");
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_an_unmigrated_schema() {
    let Some(pg) = postgres().await else { return };
    let run = selfrag(&["doctor", "--json"], &pg.env());
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    let migrations = check(&doc, "postgres", "migrations");
    assert_eq!(migrations["state"], "fail");
    assert!(migrations["detail"].as_str().unwrap().contains("pending: 001_create_users"), "{doc:#}");
    let index = check(&doc, "postgres", "memory_logs index");
    assert_eq!(index["state"], "fail");
    assert!(index["detail"].as_str().unwrap().contains("memory_logs_user_timestamp_idx"), "{doc:#}");

    let human = selfrag(&["doctor"], &pg.env());
    assert_eq!(human.code, 1);
    assert!(human.stdout.contains("FAIL  postgres migrations"), "{human:?}");
    assert!(human.stdout.contains("doctor: checks failed"), "{human:?}");
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_an_edited_migration_and_a_dropped_index() {
    let Some(pg) = postgres().await else { return };
    let env = pg.env();
    assert_eq!(selfrag(&["migrate", "up", "-q"], &env).code, 0);
    pg.client
        .batch_execute(&format!(
            "UPDATE {s}.selfrag_schema_history SET checksum = '42' WHERE version = 2; \
             DROP INDEX {s}.memory_logs_user_timestamp_idx;",
            s = pg.schema
        ))
        .await
        .unwrap();

    let run = selfrag(&["doctor", "--json"], &env);
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    let migrations = check(&doc, "postgres", "migrations");
    assert_eq!(migrations["state"], "fail");
    assert!(migrations["detail"].as_str().unwrap().contains("changed after it was applied"), "{doc:#}");
    let index = check(&doc, "postgres", "memory_logs index");
    assert!(index["detail"].as_str().unwrap().contains("is missing"), "{doc:#}");

    let status = selfrag(&["migrate", "status", "--json"], &env);
    assert_eq!(status.code, 1, "{status:?}");
    assert_eq!(status.json()["migrations"][1]["state"], "edited");
    let up = selfrag(&["migrate", "up"], &env);
    assert_eq!(up.code, 1, "an edited history is refused: {up:?}");
    assert!(up.stderr.contains("changed after it was applied"), "{up:?}");
    pg.drop_schema().await;
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let none = selfrag(&[], &[]);
    assert_eq!(none.code, 2, "{none:?}");
    let unknown = selfrag(&["migrate", "sideways"], &[]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    let flag = selfrag(&["doctor", "--no-such-flag"], &[]);
    assert_eq!(flag.code, 2, "{flag:?}");

    let missing = selfrag(&["migrate", "up"], &[]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("DATABASE_URL"), "{missing:?}");
    let missing_json = selfrag(&["migrate", "status", "--json"], &[]);
    assert_eq!(missing_json.code, 2);
    let doc = missing_json.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 2);
    assert!(doc["error"].as_str().unwrap().contains("DATABASE_URL"), "{doc:#}");

    let bad_url = selfrag(&["migrate", "status"], &[("DATABASE_URL", "postgres://u@h:notaport/d")]);
    assert_eq!(bad_url.code, 2, "{bad_url:?}");
    let bad_schema = selfrag(&["doctor", "--database-url", "postgres://u@h/d", "--schema", "No;Way"], &[]);
    assert_eq!(bad_schema.code, 2, "{bad_schema:?}");
    let bad_redis = selfrag(&["doctor", "--redis-url", "http://not-redis"], &[]);
    assert_eq!(bad_redis.code, 2, "{bad_redis:?}");
    assert!(bad_redis.stderr.contains("url"), "{bad_redis:?}");

    let help = selfrag(&["--help"], &[]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("migrate") && help.stdout.contains("doctor"), "{help:?}");
}

#[test]
fn nothing_configured_is_all_skipped() {
    let run = selfrag(&["doctor", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    for service in ["postgres", "redis", "qdrant", "edge"] {
        assert_eq!(check(&doc, service, "configured")["state"], "skip", "{doc:#}");
    }
}

#[test]
fn unreachable_services_exit_3() {
    // Port 1 on localhost: connection refused at once.
    let pg = selfrag(&["migrate", "status", "--json"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")]);
    assert_eq!(pg.code, 3, "{pg:?}");
    assert_eq!(pg.json()["outcome"], "unreachable");

    let doctor = selfrag(
        &["doctor", "--json", "--redis-url", "redis://127.0.0.1:1", "--qdrant-url", "http://127.0.0.1:1"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")],
    );
    assert_eq!(doctor.code, 3, "{doctor:?}");
    let doc = doctor.json();
    assert_eq!(check(&doc, "postgres", "connection")["state"], "unreachable", "{doc:#}");
    assert_eq!(check(&doc, "redis", "connection")["state"], "unreachable", "{doc:#}");
    assert_eq!(check(&doc, "qdrant", "collection")["state"], "unreachable", "{doc:#}");

    // A failed check outranks an unreachable service.
    let missing_dir =
        selfrag(&["doctor", "--redis-url", "redis://127.0.0.1:1", "--edge-path", "/nonexistent/selfrag"], &[]);
    assert_eq!(missing_dir.code, 1, "{missing_dir:?}");
    assert!(missing_dir.stdout.contains("FAIL  edge"), "{missing_dir:?}");
}

/// A checksum of every row the restore must bring back, computed in SQL so
/// the comparison covers every column.
async fn content_checksum(client: &tokio_postgres::Client, schema: &str) -> (i64, i64, i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {s}.users), (SELECT count(*) FROM {s}.user_sessions), \
                        (SELECT count(*) FROM {s}.memory_logs), \
                        md5(coalesce((SELECT string_agg(t::text, '|' ORDER BY id) FROM {s}.users t), '') || \
                            coalesce((SELECT string_agg(t::text, '|' ORDER BY id) FROM {s}.user_sessions t), '') || \
                            coalesce((SELECT string_agg(t::text, '|' ORDER BY id) FROM {s}.memory_logs t), ''))",
                s = schema
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_verify_restore_prune_postgres() {
    let Some(pg) = postgres().await else { return };
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().to_str().unwrap().to_owned();
    let mut env = pg.env();
    env.push(("SELFRAG_BACKUP_DIR", backup_dir.as_str()));
    assert_eq!(selfrag(&["migrate", "up", "-q"], &env).code, 0);
    pg.client
        .batch_execute(&format!(
            "SET search_path = {s};
             INSERT INTO users (id) SELECT gen_random_uuid() FROM generate_series(1, 3);
             INSERT INTO memory_logs (id, user_id, \"timestamp\", type, content, meta_data)
               SELECT gen_random_uuid(), u.id, now() - g * interval '1 minute', 'fact', 'log ' || g, jsonb_build_object('g', g)
               FROM users u, generate_series(1, 40) g;
             INSERT INTO user_sessions (id, user_id, expires_at, ttl_ms, data)
               SELECT gen_random_uuid(), id, now() + interval '1 hour', 3600000, '{{\"k\": 1}}' FROM users;
             SET search_path = public;",
            s = pg.schema
        ))
        .await
        .unwrap();
    let before = content_checksum(&pg.client, &pg.schema).await;
    assert_eq!((before.0, before.1, before.2), (3, 3, 120));

    let backup = selfrag(&["backup", "postgres", "--json"], &env);
    assert_eq!(backup.code, 0, "{backup:?}");
    let doc = backup.json();
    let run = doc["run"].as_str().unwrap().to_owned();
    assert_eq!(doc["manifest"]["entries"][0]["name"], "postgres", "{doc:#}");
    assert!(backup.stderr.contains("backing up Postgres"), "progress: {backup:?}");
    // The dump's bytes, rate and time, as a plain line (stderr is a pipe).
    assert!(backup.stderr.lines().any(|l| l.starts_with("... Postgres dump: ") && l.ends_with("/s)")), "{backup:?}");

    let verify = selfrag(&["verify", "--json"], &env);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(verify.json()["run"], run.as_str());

    // Restore into a new database and compare every row.
    let target_db = format!("cli_restore_{}", uuid::Uuid::new_v4().simple());
    let restore = selfrag(&["restore", "postgres", "--database", &target_db, "--create-database", "--json"], &env);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(restore.json()["created_database"], true);
    assert!(restore.stderr.contains("... archive checksum, then pg_restore: "), "{restore:?}");
    let restored_url = {
        let mut cfg: tokio_postgres::Config = pg.url.parse().unwrap();
        cfg.dbname(&target_db);
        cfg
    };
    let (restored, conn) = restored_url.connect(NoTls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    assert_eq!(content_checksum(&restored, &pg.schema).await, before, "every row restored as it was");
    drop(restored);
    let _ = conn_task.await;

    // The restored database passes doctor, migrations included.
    let restored_env =
        [("DATABASE_URL", restored_url_string(&pg.url, &target_db)), ("SELFRAG_POSTGRES_SCHEMA", pg.schema.clone())];
    let restored_env: Vec<(&str, &str)> = restored_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let doctor = selfrag(&["doctor", "--json"], &restored_env);
    assert_eq!(doctor.code, 0, "{doctor:?}");

    // A second restore into the now non-empty database is refused.
    let again = selfrag(&["restore", "postgres", "--database", &target_db], &env);
    assert_eq!(again.code, 1, "{again:?}");

    // A damaged archive is refused by verify and by restore.
    let archive = backups.path().join(&run).join("postgres.dump");
    let mut bytes = std::fs::read(&archive).unwrap();
    let len = bytes.len();
    bytes.truncate(len / 2);
    std::fs::write(&archive, &bytes).unwrap();
    let bad = selfrag(&["verify", "--run", &run], &env);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("postgres.dump"), "names the file: {bad:?}");
    let other_db = format!("cli_restore_{}", uuid::Uuid::new_v4().simple());
    let bad_restore = selfrag(&["restore", "postgres", "--database", &other_db, "--create-database"], &env);
    assert_eq!(bad_restore.code, 1, "{bad_restore:?}");

    // Retention: an unfinished run from long ago goes, the newest complete run stays.
    std::fs::create_dir(backups.path().join("20000101T000000Z.partial")).unwrap();
    let prune = selfrag(&["prune", "--keep-days", "30", "--json"], &env);
    assert_eq!(prune.code, 0, "{prune:?}");
    let doc = prune.json();
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 1, "{doc:#}");
    assert!(doc["deleted"][0].as_str().unwrap().ends_with("20000101T000000Z.partial"));
    assert!(backups.path().join(&run).is_dir());
    assert!(!backups.path().join("20000101T000000Z.partial").exists());

    pg.client.batch_execute(&format!("DROP DATABASE {target_db} WITH (FORCE)")).await.unwrap();
    let _ = pg.client.batch_execute(&format!("DROP DATABASE IF EXISTS {other_db} WITH (FORCE)")).await;
    pg.drop_schema().await;
}

fn restored_url_string(url: &str, db: &str) -> String {
    // The test URLs are `postgres://user[:pass]@host:port/db`.
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_the_embedded_index() {
    use selfrag_core::{Chunk, Distance, IndexSpec, Tenant, VectorIndex};
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    let tenant = Tenant::new("acme").unwrap();
    let index = selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap();
    let chunks =
        (0..5u32).map(|i| Chunk::new("doc", i, format!("chunk {i}"), vec![1.0, i as f32, 0.5, 0.25])).collect();
    index.upsert(&tenant, chunks).await.unwrap();
    index.close().await.unwrap();

    let backups = dir.path().join("backups");
    let env = [("SELFRAG_BACKUP_DIR", backups.to_str().unwrap()), ("SELFRAG_EDGE_PATH", index_dir.to_str().unwrap())];
    // `backup all` requires Postgres, the system of record: without
    // DATABASE_URL it is a configuration error and writes nothing.
    let all = selfrag(&["backup", "--json"], &env);
    assert_eq!(all.code, 2, "`backup all` without DATABASE_URL: {all:?}");
    assert!(all.json()["error"].as_str().unwrap().contains("DATABASE_URL"), "{all:?}");
    assert!(!backups.exists() || std::fs::read_dir(&backups).unwrap().next().is_none(), "no run written");
    let backup = selfrag(&["backup", "edge", "--json"], &env);
    assert_eq!(backup.code, 0, "{backup:?}");
    assert_eq!(backup.json()["manifest"]["entries"][0]["kind"], "edge", "{backup:?}");
    assert_eq!(backup.json()["requested"], "edge", "{backup:?}");
    assert_eq!(selfrag(&["verify"], &env).code, 0);

    // Into a non-empty directory: refused.
    let refused = selfrag(&["restore", "edge"], &env);
    assert_eq!(refused.code, 1, "{refused:?}");
    let says = format!("embedded index restore refused: {} is not empty", index_dir.display());
    assert!(refused.stderr.contains(&says) && refused.stderr.contains("--edge-path"), "{refused:?}");
    let refused = selfrag(&["restore", "edge", "--json"], &env);
    assert!(refused.json()["error"].as_str().unwrap().contains(&says), "{refused:?}");
    let restored_dir = dir.path().join("restored");
    let restore = selfrag(&["restore", "edge", "--edge-path", restored_dir.to_str().unwrap()], &env);
    assert_eq!(restore.code, 0, "{restore:?}");
    let restored = selfrag_edge::EdgeIndex::open(&restored_dir, spec, Default::default()).await.unwrap();
    assert_eq!(restored.count(&tenant, None).await.unwrap(), 5);
    restored.close().await.unwrap();
}

#[test]
fn backup_usage_errors_exit_2() {
    let no_dir = selfrag(&["backup"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")]);
    assert_eq!(no_dir.code, 2, "{no_dir:?}");
    assert!(no_dir.stderr.contains("SELFRAG_BACKUP_DIR"), "{no_dir:?}");
    let nothing = selfrag(&["backup"], &[("SELFRAG_BACKUP_DIR", "/tmp")]);
    assert_eq!(nothing.code, 2, "{nothing:?}");
    let no_qdrant = selfrag(&["backup", "qdrant"], &[("SELFRAG_BACKUP_DIR", "/tmp")]);
    assert_eq!(no_qdrant.code, 2, "{no_qdrant:?}");
    let bad_kind = selfrag(&["backup", "redis"], &[("SELFRAG_BACKUP_DIR", "/tmp")]);
    assert_eq!(bad_kind.code, 2, "{bad_kind:?}");
    let wrong_flag = selfrag(&["restore", "edge", "--clean"], &[("SELFRAG_BACKUP_DIR", "/tmp")]);
    assert_eq!(wrong_flag.code, 2, "{wrong_flag:?}");
    let no_run = selfrag(&["verify", "--run", "../etc"], &[("SELFRAG_BACKUP_DIR", "/tmp")]);
    assert_eq!(no_run.code, 2, "{no_run:?}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("20250101T000000Z.partial")).unwrap();
    let env = [("SELFRAG_BACKUP_DIR", dir.path().to_str().unwrap())];
    for args in [
        &["verify", "--run", "20250101T000000Z.partial"][..],
        &["restore", "edge", "--run", "20250101T000000Z.partial", "--edge-path", "/nonexistent/x"],
    ] {
        let partial = selfrag(args, &env);
        assert_eq!(partial.code, 2, "an unfinished run is refused: {partial:?}");
        assert!(partial.stderr.contains(".partial"), "{partial:?}");
    }
    let replace = selfrag(&["restore", "edge", "--replace"], &env);
    assert_eq!(replace.code, 2, "{replace:?}");
}

#[test]
fn usage_errors_with_json_are_one_json_document() {
    for args in [&["--json"][..], &["doctor", "--json", "--no-such-flag"], &["--json", "backup", "redis"]] {
        let run = selfrag(args, &[]);
        assert_eq!(run.code, 2, "{run:?}");
        let doc = run.json();
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["outcome"], "usage");
        assert!(!doc["error"].as_str().unwrap().is_empty(), "{doc:#}");
    }
    // After `--` it is an argument, not the flag: clap's own message.
    let plain = selfrag(&["doctor", "--no-such-flag"], &[]);
    assert_eq!(plain.code, 2);
    assert!(plain.stdout.is_empty() && plain.stderr.contains("--no-such-flag"), "{plain:?}");
    let help = selfrag(&["--json", "--help"], &[]);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout.contains("Usage"), "{help:?}");
}

#[test]
fn missing_pg_tools_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let env = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
        ("SELFRAG_BACKUP_DIR", backups.to_str().unwrap()),
        ("SELFRAG_PG_BIN_DIR", "/nonexistent/pg/bin"),
    ];
    let backup = selfrag(&["backup", "--json"], &env);
    assert_eq!(backup.code, 2, "{backup:?}");
    assert!(backup.json()["error"].as_str().unwrap().contains("pg_dump"), "{backup:?}");
    assert!(!backups.exists() || std::fs::read_dir(&backups).unwrap().next().is_none(), "no run started");
    let restore = selfrag(&["restore", "postgres", "--run", "20250101T000000Z"], &env);
    assert_eq!(restore.code, 2, "{restore:?}");
    assert!(restore.stderr.contains("pg_restore"), "{restore:?}");
}

/// The doctor never opens (and so never creates) an index in a directory
/// without `wal/` and `segments/`, and reports a locked index as a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_edge_directory_checks() {
    use selfrag_core::{Distance, IndexSpec};
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = selfrag(&["doctor", "--json", "--vector-dimension", "4", "--edge-path", empty.to_str().unwrap()], &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    assert_eq!(check(&doc, "edge", "directory")["state"], "fail", "{doc:#}");
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none(), "nothing created in the empty directory");
    let no_dim = selfrag(&["doctor", "--json", "--edge-path", empty.to_str().unwrap()], &[]);
    assert_eq!(no_dim.code, 1, "{no_dim:?}");

    let index_dir = dir.path().join("index");
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    let index = selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap();
    let args = ["doctor", "--json", "--vector-dimension", "4", "--edge-path", index_dir.to_str().unwrap()];
    let locked = selfrag(&args, &[]);
    assert_eq!(locked.code, 0, "a warning does not fail the doctor: {locked:?}");
    let doc = locked.json();
    assert_eq!(check(&doc, "edge", "index")["state"], "warn", "{doc:#}");
    assert!(check(&doc, "edge", "index")["detail"].as_str().unwrap().contains("not inspected"), "{doc:#}");
    index.close().await.unwrap();
    let open = selfrag(&args, &[]);
    assert_eq!(open.code, 0, "{open:?}");
    assert_eq!(check(&open.json(), "edge", "index")["state"], "ok", "{open:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_exit_2() {
    let Some(pg) = postgres().await else { return };
    // The same server as a role that does not exist: SQLSTATE 28000.
    let (scheme, rest) = pg.url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let url = format!("{scheme}://no_such_role_{}@{host}", uuid::Uuid::new_v4().simple());
    let status = selfrag(&["migrate", "status", "--json"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(status.code, 2, "{status:?}");
    assert_eq!(status.json()["outcome"], "usage");
    let doctor = selfrag(&["doctor", "--json"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(doctor.code, 2, "{doctor:?}");
    assert_eq!(check(&doctor.json(), "postgres", "connection")["state"], "config", "{doctor:?}");
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_scans_the_services_rate_limit_buckets() {
    let Some(redis_server) = selfrag_testkit::servers::redis().await else { return };
    let prefix = format!("clitest{}:", uuid::Uuid::new_v4().simple());
    let env = [("REDIS_URL", redis_server.url.as_str()), ("SELFRAG_REDIS_PREFIX", prefix.as_str())];
    let client = redis::Client::open(redis_server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}{{u:{}}}:rl:chat:60000:29000000", uuid::Uuid::new_v4());
    let _: () = redis::cmd("SET").arg(&key).arg(3).query_async(&mut conn).await.unwrap();

    let no_ttl = selfrag(&["doctor", "--json"], &env);
    assert_eq!(no_ttl.code, 1, "{no_ttl:?}");
    let doc = no_ttl.json();
    let keys = check(&doc, "redis", "rate-limit keys");
    assert_eq!(keys["state"], "fail", "{doc:#}");
    assert!(keys["detail"].as_str().unwrap().contains("no TTL"), "{doc:#}");
    assert_eq!(check(&doc, "redis", "rate-limit TTLs")["state"], "ok", "the write check still runs: {doc:#}");

    let _: () = redis::cmd("PEXPIRE").arg(&key).arg(1_000_000).query_async(&mut conn).await.unwrap();
    let too_long = selfrag(&["doctor", "--json"], &env);
    assert_eq!(too_long.code, 1, "{too_long:?}");
    assert!(check(&too_long.json(), "redis", "rate-limit keys")["detail"].as_str().unwrap().contains("more than 2x"));

    let _: () = redis::cmd("PEXPIRE").arg(&key).arg(100_000).query_async(&mut conn).await.unwrap();
    let fine = selfrag(&["doctor", "--json"], &env);
    assert_eq!(fine.code, 0, "{fine:?}");
    let doc = fine.json();
    assert!(check(&doc, "redis", "rate-limit keys")["detail"].as_str().unwrap().starts_with("1 bucket key"), "{doc:#}");
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
}

/// A store that fails does not throw the others away; restore and verify
/// without --run find the newest run holding what they need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_all_continues_past_a_failing_store() {
    use selfrag_core::{Distance, IndexSpec};
    let Some(pg) = postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let backups = dir.path().join("backups");
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap().close().await.unwrap();
    let mut env = pg.env();
    env.push(("SELFRAG_BACKUP_DIR", backups.to_str().unwrap()));
    env.push(("SELFRAG_EDGE_PATH", index_dir.to_str().unwrap()));
    assert_eq!(selfrag(&["migrate", "up", "-q"], &env).code, 0);

    let edge_only = selfrag(&["backup", "edge", "--json"], &env);
    assert_eq!(edge_only.code, 0, "{edge_only:?}");
    let edge_run = edge_only.json()["dir"].as_str().unwrap().to_owned();

    // The index is open: its backup fails (unreachable: exit 3), Postgres is
    // still backed up and the run finished with it.
    let index = selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap();
    let all = selfrag(&["backup", "all", "--json"], &env);
    assert_eq!(all.code, 3, "{all:?}");
    let doc = all.json();
    assert_eq!(doc["requested"], "all", "{doc:#}");
    assert_eq!(doc["included"], serde_json::json!(["postgres", "edge"]), "{doc:#}");
    assert_eq!(doc["skipped"][0]["store"], "qdrant", "{doc:#}");
    assert_eq!(doc["failed"][0]["store"], "edge", "{doc:#}");
    assert_eq!(doc["manifest"]["entries"].as_array().unwrap().len(), 1, "{doc:#}");
    assert_eq!(doc["manifest"]["entries"][0]["kind"], "postgres", "{doc:#}");
    let pg_run = doc["dir"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&pg_run).join("manifest.json").is_file(), "the run is finished");
    index.close().await.unwrap();

    // A store that fails for another reason (no index there): exit 1.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let failed = selfrag(&["backup", "-q", "--edge-path", empty.to_str().unwrap()], &env);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(failed.stdout.contains("FAILED edge"), "{failed:?}");

    // Without --run: the newest run holding the kind asked for.
    let verify_edge = selfrag(&["verify", "--kind", "edge", "--json"], &env);
    assert_eq!(verify_edge.code, 0, "{verify_edge:?}");
    assert_eq!(verify_edge.json()["dir"], edge_run.as_str());
    let restored = dir.path().join("restored");
    let restore = selfrag(&["restore", "edge", "--json", "--edge-path", restored.to_str().unwrap()], &env);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(restore.json()["run"], edge_run.as_str(), "{restore:?}");
    let verify_newest = selfrag(&["verify", "--json"], &env);
    assert_eq!(verify_newest.code, 0, "{verify_newest:?}");
    assert_ne!(verify_newest.json()["dir"], edge_run.as_str());
    pg.drop_schema().await;
}

/// Where the test server listens, as `host:port`, from its URL
/// (`postgres://user[:pass]@host:port/db`).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap().to_owned()
}

/// Issue 18, items 3 and 8: a database that does not exist is a
/// configuration error (2) for every command, and the doctor says where it
/// connected and why it failed, not the pool's "Error occurred while
/// creating a new object".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_a_configuration_error() {
    let Some(pg) = postgres().await else { return };
    let missing = format!("cli_nodb_{}", uuid::Uuid::new_v4().simple());
    let url = restored_url_string(&pg.url, &missing);
    let env = [("DATABASE_URL", url.as_str())];

    let doctor = selfrag(&["doctor", "--json"], &env);
    assert_eq!(doctor.code, 2, "{doctor:?}");
    let doc = doctor.json();
    let conn = check(&doc, "postgres", "connection");
    assert_eq!(conn["state"], "config", "{doc:#}");
    let detail = conn["detail"].as_str().unwrap();
    assert!(detail.contains(&host_port(&pg.url)), "names host:port: {detail}");
    assert!(detail.contains(&format!("database \"{missing}\" does not exist")), "the cause: {detail}");
    assert!(detail.contains("CREATE DATABASE"), "what to do: {detail}");
    assert!(!detail.contains("Error occurred while creating a new object"), "{detail}");
    let human = selfrag(&["doctor"], &env);
    assert_eq!(human.code, 2, "{human:?}");
    assert!(human.stdout.contains("CONF  postgres"), "{human:?}");

    for args in [&["migrate", "up"][..], &["migrate", "status"]] {
        let run = selfrag(args, &env);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("does not exist") && run.stderr.contains("Fix:"), "{args:?}: {run:?}");
    }

    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_str().unwrap();
    for target in ["all", "postgres"] {
        let run =
            selfrag(&["backup", target, "--json"], &[("DATABASE_URL", url.as_str()), ("SELFRAG_BACKUP_DIR", dir)]);
        assert_eq!(run.code, 2, "backup {target}: {run:?}");
        let error = run.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("does not exist") && error.contains("Fix:"), "backup {target}: {error}");
    }
    let runs: Vec<_> = std::fs::read_dir(backups.path()).unwrap().collect();
    assert!(runs.is_empty(), "no run written: {runs:?}");
    pg.drop_schema().await;
}

/// `?sslmode=require` (issue 18, item 3: it used to exit 3, "no TLS
/// implementation configured"): against a server with TLS on (the shared
/// test server) the connection works and the doctor reports it encrypted;
/// against one with TLS off (a private server) it is a configuration error
/// (2) naming `sslmode`, never "unreachable" (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_is_served_or_is_a_configuration_error() {
    let Some(pg) = postgres().await else { return };
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=require", pg.url);
    let env = [("DATABASE_URL", url.as_str()), ("SELFRAG_POSTGRES_SCHEMA", pg.schema.as_str())];
    let doctor = selfrag(&["doctor", "--json"], &env);
    let doc = doctor.json();
    let conn = check(&doc, "postgres", "connection");
    if conn["state"] == "ok" {
        let tls = check(&doc, "postgres", "tls");
        assert_eq!(tls["tls"]["encrypted"], true, "{doc:#}");
        assert_eq!(tls["tls"]["mode"], "sslmode=require", "{doc:#}");
    } else {
        assert_eq!(doctor.code, 2, "{doctor:?}");
        assert_eq!(conn["state"], "config", "{doc:#}");
        assert!(conn["detail"].as_str().unwrap().contains("sslmode"), "{doc:#}");
        let migrate = selfrag(&["migrate", "up"], &env);
        assert_eq!(migrate.code, 2, "{migrate:?}");
        assert!(migrate.stderr.contains("sslmode"), "{migrate:?}");
    }
    pg.drop_schema().await;
}

/// Issue 18, item 3: a backup directory that cannot be created is a
/// configuration error (2) naming the setting, not a failure (1).
#[test]
fn an_uncreatable_backup_directory_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let index = dir.path().join("index");
    std::fs::create_dir_all(index.join("wal")).unwrap();
    let backup_dir = file.join("backups");
    let env = [("SELFRAG_BACKUP_DIR", backup_dir.to_str().unwrap()), ("SELFRAG_EDGE_PATH", index.to_str().unwrap())];
    let run = selfrag(&["backup", "edge"], &env);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--backup-dir") && run.stderr.contains("SELFRAG_BACKUP_DIR"), "{run:?}");
    let json = selfrag(&["backup", "edge", "--json"], &env);
    assert_eq!(json.json()["outcome"], "usage", "{json:?}");
}

/// Issue 18, item 8: a missing `pg_dump` / `pg_restore` names the tool's
/// own settings, not a library's.
#[test]
fn a_missing_pg_dump_names_pg_bin_dir() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().to_str().unwrap();
    let env = [("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"), ("SELFRAG_BACKUP_DIR", backups)];
    let run_with_path = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfrag"));
        for var in TOOL_VARS {
            cmd.env_remove(var);
        }
        // No PATH entry holds pg_dump.
        cmd.env("PATH", dir.path()).args(args).envs(env.iter().copied()).envs(extra.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, stderr) = run_with_path(&["backup", "postgres"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("pg_dump not found on PATH"), "{stderr}");
    assert!(stderr.contains("--pg-bin-dir") && stderr.contains("SELFRAG_PG_BIN_DIR"), "{stderr}");
    assert!(!stderr.contains("PgTools"), "no library names: {stderr}");
    let (code, stderr) = run_with_path(&["restore", "postgres"], &[("SELFRAG_PG_BIN_DIR", "/nonexistent/pgbin")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/pgbin/pg_restore does not exist"), "{stderr}");
    assert!(stderr.contains("--pg-bin-dir") && !stderr.contains("PgTools"), "{stderr}");
}

/// Issue 18, item 8: a restore into a database that holds the archive's
/// tables says `--clean` (and a new database) in a readable sentence; a
/// missing target database says `--create-database` and is exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refusals_name_the_flag_that_fixes_them() {
    let Some(pg) = postgres().await else { return };
    let backups = tempfile::tempdir().unwrap();
    let mut env = pg.env();
    env.push(("SELFRAG_BACKUP_DIR", backups.path().to_str().unwrap()));
    assert_eq!(selfrag(&["migrate", "up", "-q"], &env).code, 0);
    let backup = selfrag(&["backup", "postgres", "-q"], &env);
    assert_eq!(backup.code, 0, "{backup:?}");

    // Into the database it came from: its tables are there.
    let filled = selfrag(&["restore", "postgres"], &env);
    assert_eq!(filled.code, 1, "{filled:?}");
    assert!(filled.stderr.contains("--clean"), "{filled:?}");
    assert!(filled.stderr.contains("--database NAME --create-database"), "{filled:?}");
    assert!(filled.stderr.contains(&format!("{}.users", pg.schema)), "names the tables: {filled:?}");
    assert!(!filled.stderr.contains("` already exists"), "no garbled sentence: {filled:?}");

    let missing = format!("cli_nodb_{}", uuid::Uuid::new_v4().simple());
    let run = selfrag(&["restore", "postgres", "--database", &missing, "--json"], &env);
    assert_eq!(run.code, 2, "{run:?}");
    let error = run.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&missing) && error.contains("--create-database"), "{error}");
    pg.drop_schema().await;
}

/// The doctor's `tls` checks: the test Postgres on loopback answers from
/// `pg_stat_ssl` (not encrypted with `sslmode=disable`; the encrypted case
/// is `sslmode_require_is_served_or_is_a_configuration_error`), Redis and
/// Qdrant by their URL schemes. (Remote hosts are judged
/// in the unit tests of `doctor.rs`: tests contact loopback only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_encryption_per_service() {
    let Some(pg) = postgres().await else { return };
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let plain_url = format!("{}{sep}sslmode=disable", pg.url);
    let mut env = vec![("DATABASE_URL", plain_url.as_str()), ("SELFRAG_POSTGRES_SCHEMA", pg.schema.as_str())];
    let redis_url = std::env::var("SELFRAG_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:1".to_owned());
    env.push(("REDIS_URL", redis_url.as_str()));
    env.push(("QDRANT_URL", "https://127.0.0.1:1"));
    let doctor = selfrag(&["doctor", "--json"], &env);
    let doc = doctor.json();
    let tls = check(&doc, "postgres", "tls");
    assert_eq!(tls["tls"]["encrypted"], false, "sslmode=disable: {doc:#}");
    assert_eq!(tls["tls"]["mode"], "sslmode=disable", "{doc:#}");
    assert_eq!(tls["tls"]["local"], true, "{doc:#}");
    assert_eq!(tls["state"], "ok", "{doc:#}");
    assert!(tls["detail"].as_str().unwrap().contains("not encrypted"), "{doc:#}");
    let q = check(&doc, "qdrant", "tls");
    assert_eq!((q["tls"]["encrypted"].clone(), q["tls"]["verified"].clone()), (Value::Bool(true), Value::Bool(true)));
    if check(&doc, "redis", "connection")["state"] == "ok" {
        let r = check(&doc, "redis", "tls");
        assert_eq!(r["tls"]["encrypted"], redis_url.starts_with("rediss://"), "{doc:#}");
    }

    pg.drop_schema().await;
}

/// The Redis keys of `user` under `prefix`.
async fn redis_keys_of(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, user: uuid::Uuid) -> Vec<String> {
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}{{u:{user}}}*")).query_async(conn).await.unwrap();
    keys.sort();
    keys
}

/// Two users with the same shapes in Postgres (memory logs, a session),
/// Redis (sessions, rate-limit state in two scopes) and an embedded index
/// (chunks in a shared tenant, told apart by `extra.user_id`); returns them.
async fn two_users(
    env: &[(&str, &str)],
    index_dir: &std::path::Path,
    spec: selfrag_core::IndexSpec,
) -> [uuid::Uuid; 2] {
    use selfrag_core::{Chunk, NewMemoryLog, NewSession, RateLimitKey, SessionStore, Tenant, VectorIndex};
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    let storage =
        selfrag_facade::Storage::from_lookup(&selfrag_facade::StorageOptions::default(), lookup).await.unwrap();
    assert_eq!(storage.backends.sessions, "redis");
    let pg_sessions = storage.user_sessions.clone().expect("Postgres sessions beside Redis");
    let index = selfrag_edge::EdgeIndex::open(index_dir, spec, Default::default()).await.unwrap();
    let tenant = Tenant::new("shared").unwrap();
    let mut users = Vec::new();
    for u in 0..2 {
        let user = storage.users.create_user().await.unwrap();
        let logs = (0..30).map(|i| NewMemoryLog::new("fact", format!("user {u} fact {i}")).unwrap()).collect();
        storage.memory.append_batch(user, logs).await.unwrap();
        for _ in 0..2 {
            storage.sessions.create(user, NewSession::new(std::time::Duration::from_secs(600)).unwrap()).await.unwrap();
        }
        pg_sessions.create(user, NewSession::new(std::time::Duration::from_secs(600)).unwrap()).await.unwrap();
        for scope in ["chat", "upload"] {
            storage.rate_limiter.check(&RateLimitKey::new(user, scope).unwrap(), 1).await.unwrap();
        }
        let chunks = (0..4u32)
            .map(|i| {
                let mut c =
                    Chunk::new(format!("doc-{u}"), i, format!("chunk {i} of user {u}"), vec![1.0, i as f32, 0.5, 0.25]);
                c.payload.extra.insert("user_id".into(), user.to_string().into());
                c
            })
            .collect();
        index.upsert(&tenant, chunks).await.unwrap();
        users.push(*user.as_uuid());
    }
    index.close().await.unwrap();
    [users[0], users[1]]
}

/// `erase-user`, `export-user` and `erasures` over Postgres, Redis and the
/// embedded index together, next to a neighbour with the same shapes; then
/// a backup taken before the erasure, restored: the user stays erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_export_and_restore_keep_an_erased_user_erased() {
    let Some(pg) = postgres().await else { return };
    let Some(redis_server) = selfrag_testkit::servers::redis().await else { return };
    let prefix = format!("clierase{}:", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let backups = dir.path().join("backups");
    let spec = selfrag_core::IndexSpec::new(4, selfrag_core::Distance::Cosine).unwrap();
    let mut env = pg.env();
    env.extend([
        ("REDIS_URL", redis_server.url.as_str()),
        ("SELFRAG_REDIS_PREFIX", prefix.as_str()),
        ("SELFRAG_EDGE_PATH", index_dir.to_str().unwrap()),
        ("SELFRAG_VECTOR_DIMENSION", "4"),
        ("SELFRAG_BACKUP_DIR", backups.to_str().unwrap()),
    ]);
    assert_eq!(selfrag(&["migrate", "up"], &env).code, 0);
    let [user, neighbour] = two_users(&env[..4], &index_dir, spec).await;
    let user_s = user.to_string();
    let filter = format!(r#"{{"eq":{{"field":{{"extra":"user_id"}},"value":"{user}"}}}}"#);
    let scope = ["--vectors-tenant", "shared", "--vectors-filter", filter.as_str()];

    // Export: every record once, nothing of the neighbour.
    let out = dir.path().join("export.jsonl");
    let mut args = vec!["export-user", user_s.as_str(), "--out", out.to_str().unwrap(), "--json"];
    args.extend(scope);
    let export = selfrag(&args, &env);
    assert_eq!(export.code, 0, "{export:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count();
    assert_eq!((count("user"), count("memory_log"), count("session"), count("chunk")), (1, 30, 3, 4), "{text}");
    assert!(!text.contains(&neighbour.to_string()), "the neighbour leaked into the export");
    assert_eq!(export.json()["report"]["lines"], 38, "{export:?}");
    // Mistakes: an existing file, --json onto stdout.
    let again = selfrag(&args, &env);
    assert_eq!(again.code, 2, "an export never overwrites: {again:?}");
    let onto_stdout = selfrag(&["export-user", user_s.as_str(), "--json"], &env);
    assert_eq!(onto_stdout.code, 2, "{onto_stdout:?}");

    // A backup before the erasure.
    let backup = selfrag(&["backup", "--json"], &env);
    assert_eq!(backup.code, 0, "{backup:?}");

    // Bad input: nothing erased.
    let long_tenant = "t".repeat(200);
    for (bad, why) in [
        (vec!["erase-user", "not-a-uuid"], "user id"),
        (vec!["erase-user", user_s.as_str(), "--vectors-filter", filter.as_str()], "needs at least one"),
        (
            vec!["erase-user", user_s.as_str(), "--vectors-tenant", "shared", "--vectors-filter", "{nope"],
            "vectors-filter",
        ),
        (vec!["erase-user", user_s.as_str(), "--vectors-tenant", long_tenant.as_str()], "vectors-tenant"),
    ] {
        let run = selfrag(&bad, &env);
        assert_eq!(run.code, 2, "{bad:?}: {run:?}");
        assert!(run.stderr.contains(why), "{bad:?} should mention {why}: {run:?}");
    }
    let mut dry = vec!["erase-user", user_s.as_str(), "--dry-run", "--json"];
    dry.extend(scope);
    let dry = selfrag(&dry, &env);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["report"]["memory_logs"], 30, "{dry:?}");
    assert_eq!(dry.json()["report"]["vectors"][0]["chunks"], 4, "{dry:?}");
    let (client, schema) = (&pg.client, pg.schema.clone());
    let logs_of = |u: uuid::Uuid| {
        let sql = format!("SELECT count(*) FROM {schema}.memory_logs WHERE user_id = '{u}'");
        async move { client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(logs_of(user).await, 30, "a dry run deletes nothing");

    // The erasure.
    let mut erase = vec!["erase-user", user_s.as_str(), "--json"];
    erase.extend(scope);
    let erased = selfrag(&erase, &env);
    assert_eq!(erased.code, 0, "{erased:?}");
    let report = &erased.json()["report"];
    assert_eq!(report["memory_logs"], 30, "{erased:?}");
    assert_eq!(report["vectors"][0]["chunks"], 4, "{erased:?}");
    assert_eq!(report["rate_limit_keys"].as_u64().map(|n| n > 0), Some(true), "{erased:?}");
    assert_eq!(report["ledger_recorded"], true, "{erased:?}");
    let client = redis::Client::open(redis_server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(logs_of(user).await, 0);
    assert_eq!(redis_keys_of(&mut conn, &prefix, user).await, Vec::<String>::new(), "no Redis key left");
    assert_eq!(logs_of(neighbour).await, 30, "the neighbour keeps its logs");
    assert!(!redis_keys_of(&mut conn, &prefix, neighbour).await.is_empty(), "the neighbour keeps its Redis keys");
    for (table, column) in [("users", "id"), ("user_sessions", "user_id")] {
        let sql = format!("SELECT count(*) FROM {}.{table} WHERE {column} = $1", pg.schema);
        assert_eq!(pg.client.query_one(&sql, &[&user]).await.unwrap().get::<_, i64>(0), 0, "{table}");
        assert_eq!(
            pg.client.query_one(&sql, &[&neighbour]).await.unwrap().get::<_, i64>(0),
            1,
            "{table} of the neighbour"
        );
    }
    let index = selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap();
    let tenant = selfrag_core::Tenant::new("shared").unwrap();
    assert_eq!(
        selfrag_core::VectorIndex::count(&index, &tenant, None).await.unwrap(),
        4,
        "the neighbour's chunks stay"
    );
    index.close().await.unwrap();
    // Idempotent.
    let twice = selfrag(&erase, &env);
    assert_eq!(twice.code, 0, "{twice:?}");
    assert_eq!(twice.json()["report"]["ledger_recorded"], false, "{twice:?}");
    let ledger = selfrag(&["erasures", "--json"], &env);
    assert_eq!(ledger.code, 0, "{ledger:?}");
    let records = ledger.json()["erasures"].as_array().unwrap().clone();
    assert_eq!(records.len(), 1, "{ledger:?}");
    assert_eq!(records[0]["user"], user_s, "{ledger:?}");

    // Restore the backup taken before the erasure into a new database, and
    // the index into a new directory: the user stays erased in both.
    let db = format!("selfrag_cli_erase_{}", uuid::Uuid::new_v4().simple());
    let restore = selfrag(&["restore", "postgres", "--database", &db, "--create-database", "--json"], &env);
    let restored_url = restored_url_string(&pg.url, &db);
    let (target, conn_task) = tokio_postgres::connect(&restored_url, NoTls).await.unwrap();
    tokio::spawn(conn_task);
    let check_restored = async {
        assert_eq!(restore.code, 0, "{restore:?}");
        assert_eq!(restore.json()["erasures_reapplied"], 1, "{restore:?}");
        let sql = format!("SELECT count(*) FROM {}.memory_logs WHERE user_id = $1", pg.schema);
        assert_eq!(target.query_one(&sql, &[&user]).await.unwrap().get::<_, i64>(0), 0, "erased user restored");
        assert_eq!(target.query_one(&sql, &[&neighbour]).await.unwrap().get::<_, i64>(0), 30);
    };
    check_restored.await;
    drop(target);
    pg.client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await.unwrap();

    let restored_dir = dir.path().join("restored-index");
    let restore = selfrag(&["restore", "edge", "--edge-path", restored_dir.to_str().unwrap(), "--json"], &env);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(restore.json()["erasures_reapplied"], 1, "{restore:?}");
    let index = selfrag_edge::EdgeIndex::open(&restored_dir, spec, Default::default()).await.unwrap();
    assert_eq!(
        selfrag_core::VectorIndex::count(&index, &tenant, None).await.unwrap(),
        4,
        "only the neighbour's chunks"
    );
    index.close().await.unwrap();
    pg.drop_schema().await;
}

/// The mistakes people make with `erase-user`: each is exit 2 with what to
/// change, before anything is erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_user_configuration_mistakes_exit_2() {
    let Some(pg) = postgres().await else { return };
    let user = uuid::Uuid::new_v4().to_string();
    let dir = tempfile::tempdir().unwrap();
    let not_an_index = dir.path().to_str().unwrap();

    let no_db = selfrag(&["erase-user", &user], &[]);
    assert_eq!(no_db.code, 2, "{no_db:?}");
    assert!(no_db.stderr.contains("DATABASE_URL"), "{no_db:?}");

    // An empty schema: not migrated.
    let unmigrated = selfrag(&["erase-user", &user], &pg.env());
    assert_eq!(unmigrated.code, 2, "{unmigrated:?}");
    assert!(unmigrated.stderr.contains("selfrag migrate up"), "{unmigrated:?}");
    let ledger = selfrag(&["erasures"], &pg.env());
    assert_eq!(ledger.code, 2, "{ledger:?}");
    assert!(ledger.stderr.contains("selfrag migrate up"), "{ledger:?}");

    assert_eq!(selfrag(&["migrate", "up"], &pg.env()).code, 0);
    let no_vectors = selfrag(&["erase-user", &user, "--vectors-tenant", "t"], &pg.env());
    assert_eq!(no_vectors.code, 2, "{no_vectors:?}");
    assert!(no_vectors.stderr.contains("no vector store is configured"), "{no_vectors:?}");

    let mut env = pg.env();
    env.push(("SELFRAG_EDGE_PATH", not_an_index));
    let no_dimension = selfrag(&["erase-user", &user, "--vectors-tenant", "t"], &env);
    assert_eq!(no_dimension.code, 2, "{no_dimension:?}");
    assert!(no_dimension.stderr.contains("--vector-dimension"), "{no_dimension:?}");
    env.push(("SELFRAG_VECTOR_DIMENSION", "4"));
    let wrong_dir = selfrag(&["erase-user", &user, "--vectors-tenant", "t"], &env);
    assert_eq!(wrong_dir.code, 2, "{wrong_dir:?}");
    assert!(wrong_dir.stderr.contains("holds no embedded index"), "{wrong_dir:?}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no index was created");

    // A ledger copy is an input of `restore postgres` only.
    let misplaced = selfrag(&["restore", "edge", "--erasures-file", "erasures.json"], &pg.env());
    assert_eq!(misplaced.code, 2, "{misplaced:?}");
    assert!(misplaced.stderr.contains("--erasures-file apply to `restore postgres` only"), "{misplaced:?}");

    // None of these recorded anything.
    let ledger = selfrag(&["erasures", "--json"], &pg.env());
    assert_eq!(ledger.code, 0, "{ledger:?}");
    assert_eq!(ledger.json()["erasures"].as_array().map(Vec::len), Some(0), "{ledger:?}");
    pg.drop_schema().await;
}

/// Progress when stderr is not a terminal: plain lines on stderr naming the
/// bytes done, rate and time (a last line per step), never on stdout (a
/// `--json` stdout is one document), and nothing with `--quiet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_plain_lines_on_stderr() {
    use selfrag_core::{Chunk, Distance, IndexSpec, Tenant, VectorIndex};
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    let index = selfrag_edge::EdgeIndex::open(&index_dir, spec, Default::default()).await.unwrap();
    let chunks = (0..5u32).map(|i| Chunk::new("doc", i, format!("chunk {i}"), vec![1.0, 0.5, 0.5, 0.25])).collect();
    index.upsert(&Tenant::new("acme").unwrap(), chunks).await.unwrap();
    index.close().await.unwrap();
    let backups = dir.path().join("backups");
    let env = [("SELFRAG_BACKUP_DIR", backups.to_str().unwrap()), ("SELFRAG_EDGE_PATH", index_dir.to_str().unwrap())];

    let backup = selfrag(&["backup", "edge", "--json"], &env);
    assert_eq!(backup.code, 0, "{backup:?}");
    backup.json();
    // Lines while it runs (every few seconds), then the last one: done, time, rate.
    let lines: Vec<&str> = backup.stderr.lines().filter(|l| l.starts_with("... embedded index copy: ")).collect();
    let line = *lines.last().unwrap_or_else(|| panic!("no progress line: {backup:?}"));
    assert!(line.contains(" in ") && line.ends_with("/s)"), "{line}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.contains("%), ") && l.ends_with(" left"), "{l}");
    }
    assert!(!line.contains('\r') && !line.contains('\x1b'), "plain, not redrawn: {line:?}");
    assert!(!backup.stdout.contains("... "), "{backup:?}");

    let verify = selfrag(&["verify", "--deep"], &env);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stderr.lines().any(|l| l.starts_with("... checksums: ") && l.ends_with("/s)")), "{verify:?}");
    assert!(!verify.stdout.contains("... checksums"), "{verify:?}");

    let restored = dir.path().join("restored");
    let restore = selfrag(&["restore", "edge", "--edge-path", restored.to_str().unwrap()], &env);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert!(restore.stderr.lines().any(|l| l.starts_with("... checksums and copy: ")), "{restore:?}");

    let quiet = selfrag(&["--quiet", "verify"], &env);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert!(quiet.stderr.is_empty(), "{quiet:?}");
}
