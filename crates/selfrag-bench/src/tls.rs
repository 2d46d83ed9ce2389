//! TLS rows (`--tls`): the cost of TLS per operation, the same store call
//! over TLS ("ours" column) and in clear ("raw" column) against the same
//! private server, started here from the machine's binaries with
//! certificates generated on the fly (`selfrag_testkit::certs`).
//!
//! - Postgres (`ssl = on`, `trust` for TCP with or without TLS): memory
//!   append, `sslmode=verify-full` against `sslmode=disable`.
//! - Redis (one server with both a TLS port and a plaintext port): session
//!   get, `rediss://` checked against the test CA against `redis://`.
//!
//! Each row's extra fields give the cost of opening one connection each way
//! (mean of 20 sequential connects), which pooled connections pay once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::{MemoryStore, NewMemoryLog, NewSession, SessionId, SessionStore, UserId, UserStore};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresUserStore};
use selfrag_redis::{RedisConfig, RedisSessionStore};
use selfrag_testkit::certs::TestCerts;
use selfrag_testkit::servers::{free_port, PgOptions, PrivatePostgres, PrivateRedis, RedisOptions};
use serde_json::json;

use crate::measure::{compare, op, Res, Row};
use crate::Plan;

const USERS: usize = 100;
const SESSIONS: usize = 1_000;
const CONNECTS: u32 = 20;

fn idx(i: u64, n: usize) -> usize {
    usize::try_from(i).unwrap_or(0) % n
}

pub(crate) async fn run(plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let certs = TestCerts::generate("bench")?;
    postgres(plan, &certs, rows).await?;
    redis(plan, &certs, rows).await?;
    Ok(())
}

async fn postgres(plan: &Plan, certs: &TestCerts, rows: &mut Vec<Row>) -> Res<()> {
    let pg = PrivatePostgres::start(PgOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 trust\n".into()),
        ..certs.postgres_options(false)
    })
    .await?;
    let base = format!("postgres://postgres@localhost:{}/test", pg.port());
    let tls = PostgresConfig::with_url(format!("{base}?sslmode=verify-full&sslrootcert={}", certs.ca_path().display()));
    let plain = PostgresConfig::with_url(format!("{base}?sslmode=disable"));
    let tls_pool = tls.build()?;
    let plain_pool = plain.build()?;
    selfrag_postgres::migrate(&plain_pool).await?;
    let users = PostgresUserStore::new(plain_pool.clone());
    let mut ids = Vec::with_capacity(USERS);
    for _ in 0..USERS {
        ids.push(users.create_user().await?);
    }
    let ids = Arc::new(ids);
    let ours_store = PostgresMemoryStore::with_config(tls_pool.clone(), &tls);
    let raw_store = PostgresMemoryStore::with_config(plain_pool.clone(), &plain);
    let append = |store: PostgresMemoryStore| {
        let ids = ids.clone();
        op(move |i| {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                store.append(ids[idx(i, ids.len())], NewMemoryLog::new("fact", format!("fact {i}"))?).await?;
                Ok(())
            }
        })
    };
    let connect = |config: PostgresConfig| async move {
        let started = Instant::now();
        for _ in 0..CONNECTS {
            let pg = config.pg_config()?;
            let (client, conn) = pg.connect(config.effective_tls()?.connector()?).await?;
            drop(conn);
            drop(client);
        }
        Ok::<_, crate::measure::BoxError>(started.elapsed() / CONNECTS)
    };
    let tls_connect = connect(tls.clone()).await?;
    let plain_connect = connect(plain.clone()).await?;
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 2_000);
        let cmp =
            compare(&append(ours_store.clone()), &append(raw_store.clone()), c, ops, plan.rounds, plan.target).await?;
        let mut row = crate::row("memory append: TLS verify-full (ours) vs plaintext (raw), same server", c, cmp);
        row.extra.insert("connect_ms_tls".into(), json!(crate::measure::round(ms(tls_connect), 3)));
        row.extra.insert("connect_ms_plain".into(), json!(crate::measure::round(ms(plain_connect), 3)));
        rows.push(row);
        crate::print_last(rows);
    }
    Ok(())
}

async fn redis(plan: &Plan, certs: &TestCerts, rows: &mut Vec<Row>) -> Res<()> {
    let tls_port = free_port()?;
    // Both ports: the plaintext one the testkit sets, and a TLS one.
    let mut args = certs.redis_args(tls_port, false);
    args.drain(..2); // `--port 0`: keep the plaintext port
    *args.last_mut().ok_or("no args")? = "no".into(); // no client certificates
    let redis = PrivateRedis::start(RedisOptions { args, ..RedisOptions::default() }).await?;
    let prefix = format!("selfrag_bench_tls:{}:", SessionId::generate());
    let tls = RedisConfig::builder()
        .url(format!("rediss://localhost:{tls_port}"))
        .tls_ca_file(certs.ca_path())
        .key_prefix(prefix.clone())
        .build()?;
    let plain = RedisConfig::builder().url(format!("redis://localhost:{}", redis.port())).key_prefix(prefix).build()?;
    let ours_store = RedisSessionStore::connect(&tls)?;
    let raw_store = RedisSessionStore::connect(&plain)?;
    let users: Vec<UserId> = (0..USERS).map(|_| UserId::new()).collect();
    let mut ids = Vec::with_capacity(SESSIONS);
    for k in 0..SESSIONS {
        let user = users[k % USERS];
        ids.push((user, raw_store.create(user, NewSession::new(Duration::from_secs(3600))?).await?.id));
    }
    let ids = Arc::new(ids);
    let get = |store: RedisSessionStore| {
        let ids = ids.clone();
        op(move |i| {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                let (user, id) = ids[idx(i, ids.len())];
                store.get(user, id).await?.ok_or("session vanished")?;
                Ok(())
            }
        })
    };
    let connect = |config: RedisConfig| async move {
        let pool = config.create_pool()?;
        let started = Instant::now();
        for _ in 0..CONNECTS {
            drop(deadpool_redis::Connection::take(pool.get().await?));
        }
        Ok::<_, crate::measure::BoxError>(started.elapsed() / CONNECTS)
    };
    let tls_connect = connect(tls.clone()).await?;
    let plain_connect = connect(plain.clone()).await?;
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 20_000);
        let cmp = compare(&get(ours_store.clone()), &get(raw_store.clone()), c, ops, plan.rounds, plan.target).await?;
        let mut row = crate::row("session get: TLS rediss:// (ours) vs plaintext (raw), same server", c, cmp);
        row.extra.insert("connect_ms_tls".into(), json!(crate::measure::round(ms(tls_connect), 3)));
        row.extra.insert("connect_ms_plain".into(), json!(crate::measure::round(ms(plain_connect), 3)));
        rows.push(row);
        crate::print_last(rows);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
