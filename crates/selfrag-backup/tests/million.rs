//! Measurement, not a CI test: backup and restore times for 1,000,000
//! memory logs. Run with
//! `SELFRAG_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!  cargo test -p selfrag-backup --release --test million -- --ignored --nocapture`.

use std::time::Instant;

use selfrag_backup::{
    backup_postgres, restore_postgres, verify_run, BackupRun, PgTools, PostgresBackup, PostgresRestore,
};
use selfrag_postgres::tokio_postgres::{self, Client, NoTls};
use selfrag_postgres::PostgresConfig;

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

fn with_db(url: &str, db: &str) -> String {
    format!("{}/{db}", url.rsplit_once('/').unwrap().0)
}

async fn fingerprint(client: &Client) -> (i64, String) {
    let row = client
        .query_one("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM memory_logs t", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: about a minute and 1 GB of scratch databases"]
async fn one_million_memory_logs() {
    let Some(server) = selfrag_testkit::servers::postgres().await else { return };
    let admin = connect(&server.url).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (src, dst) = (format!("selfrag_bench_{id}"), format!("selfrag_restore_{id}"));
    admin.batch_execute(&format!("CREATE DATABASE {src}")).await.unwrap();
    let src_url = with_db(&server.url, &src);
    let pool = PostgresConfig::with_url(&src_url).statement_timeout(None).build().unwrap();
    selfrag_postgres::migrate(&pool).await.unwrap();
    let db = connect(&src_url).await;
    let t = Instant::now();
    db.batch_execute(
        "INSERT INTO users (id) SELECT gen_random_uuid() FROM generate_series(1, 1000);
         INSERT INTO memory_logs (id, user_id, \"timestamp\", type, content, meta_data)
         SELECT gen_random_uuid(), u.id, now() - make_interval(secs => g),
                'fact', 'memory log number ' || g || ': ' || repeat(md5(g::text), 2),
                jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b'))
         FROM generate_series(1, 1000000) g
         JOIN (SELECT id, row_number() OVER () - 1 AS k FROM users) u ON u.k = g % 1000;
         ANALYZE;",
    )
    .await
    .unwrap();
    let before = fingerprint(&db).await;
    assert_eq!(before.0, 1_000_000);
    let size: String =
        db.query_one("SELECT pg_size_pretty(pg_database_size(current_database()))", &[]).await.unwrap().get(0);
    println!("populated 1,000,000 memory logs in {:.1?} (database size {size})", t.elapsed());

    let root = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut run = BackupRun::begin(root.path()).unwrap();
    let entry = backup_postgres(&mut run, &PostgresBackup::new(&src_url)).await.unwrap().clone();
    let done = run.finish().unwrap();
    println!("backup (pg_dump -Fc + pg_restore --list + sha256): {:.1?}, archive {} bytes", t.elapsed(), entry.size());
    let t = Instant::now();
    verify_run(&done.dir, &PgTools::new(), false).await.unwrap();
    println!("verify (sha256 + --list): {:.1?}", t.elapsed());
    let t = Instant::now();
    verify_run(&done.dir, &PgTools::new(), true).await.unwrap();
    println!("deep verify (+ full read): {:.1?}", t.elapsed());

    let t = Instant::now();
    let opts = PostgresRestore::new(&server.url).database(&dst).create_database(true);
    let result = restore_postgres(&done.dir, None, &opts).await;
    let restore_time = t.elapsed();
    let after = match result {
        Ok(_) => Some(fingerprint(&connect(&with_db(&server.url, &dst)).await).await),
        Err(e) => {
            eprintln!("restore failed: {e}");
            None
        }
    };
    println!("restore (checks + CREATE DATABASE + pg_restore --single-transaction): {restore_time:.1?}");
    drop(db);
    drop(pool);
    for d in [&src, &dst] {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)")).await.unwrap();
    }
    assert_eq!(after, Some(before), "every row restored");
}
