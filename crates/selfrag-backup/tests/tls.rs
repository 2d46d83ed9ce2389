//! `pg_dump` / `pg_restore` over TLS with a client certificate, against a
//! private Postgres that takes TCP only through `hostssl` lines and
//! authenticates the backup user by certificate. The URL's TLS options must
//! reach the tools through `PGSSLMODE` / `PGSSLROOTCERT` / `PGSSLCERT` /
//! `PGSSLKEY`: without the certificate, the server refuses them.

use std::time::Duration;

use selfrag_backup::{backup_postgres, restore_postgres, BackupRun, PostgresBackup, PostgresRestore};
use selfrag_core::{MemoryStore, NewMemoryLog, NewSession, SessionStore, UserStore};
use selfrag_postgres::tokio_postgres::{self, NoTls};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use selfrag_testkit::certs::TestCerts;
use selfrag_testkit::servers::{PgOptions, PrivatePostgres};

const USER: &str = "backup_user";

/// Certificates for `backup_user`; `postgres` has a password; no plaintext
/// TCP at all.
const HBA: &str = "\
local all all trust
hostssl all backup_user 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 scram-sha-256
";

async fn admin(pg: &PrivatePostgres, db: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config.host_path(pg.dir()).port(pg.port()).user("postgres").dbname(db);
    let (client, conn) = config.connect(NoTls).await.expect("admin over the Unix socket");
    tokio::spawn(conn);
    client
}

async fn counts(client: &tokio_postgres::Client, schema: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for t in ["users", "user_sessions", "memory_logs"] {
        out.push(client.query_one(&format!("SELECT count(*) FROM {schema}.{t}"), &[]).await.unwrap().get(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_over_verify_full_with_a_client_certificate() {
    let certs = TestCerts::generate(USER).expect("certificates");
    let opts = PgOptions {
        hba: Some(HBA.into()),
        auth_method: "scram-sha-256".into(),
        password: Some("unused-here".into()),
        ..certs.postgres_options(false)
    };
    let Some(pg) = PrivatePostgres::start_or_skip(opts).await else { return };
    let schema = "tls_bk";
    admin(&pg, "test")
        .await
        .batch_execute(&format!("CREATE ROLE {USER} LOGIN CREATEDB; CREATE SCHEMA {schema} AUTHORIZATION {USER}"))
        .await
        .unwrap();

    let url = format!(
        "postgres://{USER}@localhost:{}/test?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pg.port(),
        certs.ca_path().display(),
        certs.client_cert_path().display(),
        certs.client_key_path().display()
    );
    // Data written through the stores, over the same URL.
    let pool = PostgresConfig::with_url(&url).schema(schema).build().unwrap();
    selfrag_postgres::migrate(&pool).await.unwrap();
    let users = PostgresUserStore::new(pool.clone());
    let memory = PostgresMemoryStore::new(pool.clone());
    let sessions = PostgresSessionStore::new(pool);
    for _ in 0..3 {
        let user = users.create_user().await.unwrap();
        for i in 0..5 {
            memory.append(user, NewMemoryLog::new("fact", format!("fact {i}")).unwrap()).await.unwrap();
        }
        sessions.create(user, NewSession::new(Duration::from_secs(600)).unwrap()).await.unwrap();
    }
    let before = counts(&admin(&pg, "test").await, schema).await;
    assert_eq!(before, vec![3, 3, 15]);

    let root = tempfile::tempdir().unwrap();
    let mut run = BackupRun::begin(root.path()).unwrap();
    backup_postgres(&mut run, &PostgresBackup::new(&url).schema(schema))
        .await
        .expect("pg_dump over verify-full with the client certificate");
    let done = run.finish().unwrap();

    let db = format!("selfrag_restore_{}", uuid::Uuid::new_v4().simple());
    restore_postgres(&done.dir, None, &PostgresRestore::new(&url).database(&db).create_database(true))
        .await
        .expect("pg_restore over verify-full with the client certificate");
    assert_eq!(counts(&admin(&pg, &db).await, schema).await, before);

    // The same URL without the certificate: refused, by our own check
    // before any tool runs, as a configuration error naming the cause.
    let no_cert = format!("postgres://{USER}@localhost:{}/test?sslmode=verify-full&sslrootcert={}", pg.port(), {
        certs.ca_path().display()
    });
    let mut run = BackupRun::begin(root.path()).unwrap();
    let err = backup_postgres(&mut run, &PostgresBackup::new(&no_cert).schema(schema)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("client certificate"), "{err}");
}
