//! A fresh, migrated schema per test on the server from
//! `selfrag_testkit::servers::postgres()`.

#![allow(dead_code)] // each test binary uses a different part

use std::str::FromStr;

use selfrag_postgres::{Pool, PostgresConfig};
use tokio_postgres::NoTls;

/// A migrated schema `t_<uuid>` and a pool whose `search_path` is that
/// schema. The schema is dropped when this is dropped, unless the test is
/// panicking (then it is kept for inspection and its name printed).
#[derive(Debug)]
pub(crate) struct TestDb {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
    pub(crate) url: String,
    _drop: DropSchema,
}

pub(crate) async fn fresh_db() -> Option<TestDb> {
    let server = selfrag_testkit::servers::postgres().await?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = admin(&server.url).await;
    admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create the test schema");
    let pool = PostgresConfig::with_url(&server.url).schema(&schema).max_connections(4).build().expect("pool");
    selfrag_postgres::migrate(&pool).await.expect("migrate the test schema");
    let guard = DropSchema { url: server.url.clone(), schema: schema.clone(), _server: server.guard };
    Some(TestDb { pool, schema, url: server.url, _drop: guard })
}

/// A plain connection (default search_path) for setup and inspection.
pub(crate) async fn admin(url: &str) -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(url).expect("test URL");
    let (client, connection) = config.connect(NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    client
}

/// For the coalescing tests: waits until some backend of the test database
/// waits on a lock (the first statement is in flight, blocked), then until
/// the coalescer has counted more than `queued` calls (`stats`), and gives
/// the flusher a moment to park on its slot.
pub(crate) async fn wait_blocked(
    admin: &tokio_postgres::Client,
    queued: u64,
    stats: impl Fn() -> selfrag_postgres::CoalesceStats,
) {
    let q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    for _ in 0..500 {
        let blocked: i64 = admin.query_one(q, &[]).await.expect("activity").get(0);
        if blocked >= 1 && stats().calls > queued {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the first call never blocked on the lock: {:?}", stats());
}

struct DropSchema {
    url: String,
    schema: String,
    _server: selfrag_testkit::Guard,
}

impl std::fmt::Debug for DropSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropSchema").field("schema", &self.schema).finish()
    }
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping schema {} of the failed test", self.schema);
            return;
        }
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a short-lived runtime on its own thread does the async cleanup.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let client = admin(&url).await;
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {done:?}", self.schema);
        }
    }
}
