//! Postgres rows: memory append, batch append and query, each against
//! hand-written tokio-postgres calls on a pool of the same configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use selfrag_core::{MemoryQuery, MemoryStore, NewMemoryLog, UserId, UserStore};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresUserStore};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::measure::{compare, op, Op, Res, Row};
use crate::Plan;

const INSERT_ONE: &str = r#"INSERT INTO memory_logs (id, user_id, "timestamp", type, content, meta_data)
VALUES ($1, $2, $3, $4, $5, $6)"#;
const COPY_IN: &str =
    r#"COPY memory_logs (id, user_id, "timestamp", type, content, meta_data) FROM STDIN (FORMAT binary)"#;
const SELECT_RECENT: &str = r#"SELECT id, user_id, "timestamp", type, content, meta_data FROM memory_logs
WHERE user_id = $1 AND "timestamp" >= $2 ORDER BY "timestamp" DESC, id DESC LIMIT $3"#;

/// Rows of the query table per user: 1,000 logs 864 s apart (10 days, 100 per
/// day, so "the last 24 h, 50 rows" is always a full page).
const ROWS_PER_USER: i64 = 1_000;
const WRITES_SCHEMA: &str = "selfrag_bench_writes";

fn pool(url: &str, schema: &str, side: &str) -> Res<Pool> {
    // Both sides get the same settings (pool size 16, the default); only the
    // application name differs, to tell them apart in pg_stat_activity.
    Ok(PostgresConfig::with_url(url).schema(schema).application_name(format!("selfrag-bench-{side}")).build()?)
}

async fn admin(url: &str) -> Res<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres admin connection: {e}");
        }
    });
    Ok(client)
}

fn meta() -> Map<String, Value> {
    let Value::Object(m) = json!({"source": "bench", "n": 7}) else { unreachable!() };
    m
}

fn content(i: u64) -> String {
    format!("benchmark memory log entry {i}: the user prefers short answers and green tea")
}

/// Builds the query table (`rows` logs over `rows / 1000` users) in `schema`
/// unless a complete one is there; returns its anchor (newest timestamp).
async fn query_table(admin: &tokio_postgres::Client, url: &str, schema: &str, rows: i64) -> Res<OffsetDateTime> {
    admin.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'bench_meta'",
            &[&schema],
        )
        .await?
        .is_some();
    if exists {
        if let Some(r) = admin.query_opt(&format!("SELECT rows, anchor FROM {schema}.bench_meta"), &[]).await? {
            if r.get::<_, i64>(0) == rows {
                println!("postgres: reusing {rows} rows in schema {schema}");
                return Ok(r.get(1));
            }
        }
    }
    let t = Instant::now();
    println!("postgres: building {rows} memory logs in schema {schema} (once; reused by later runs)...");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE; CREATE SCHEMA {schema}")).await?;
    selfrag_postgres::migrate(&pool(url, schema, "setup")?).await?;
    let users = rows / ROWS_PER_USER;
    // The composite index is built after the load: a sorted build is far
    // faster than a million random inserts into it. Same definition as the
    // migration's.
    admin
        .batch_execute(&format!(
            r#"SET search_path = {schema};
SET maintenance_work_mem = '256MB';
DROP INDEX memory_logs_user_timestamp_idx;
INSERT INTO users (id) SELECT md5('selfrag-bench-user-' || u)::uuid FROM generate_series(1, {users}) u;
INSERT INTO memory_logs (id, user_id, "timestamp", type, content, meta_data)
SELECT md5('selfrag-bench-log-' || g)::uuid,
       md5('selfrag-bench-user-' || (g % {users} + 1))::uuid,
       date_trunc('second', now()) - (g / {users}) * interval '864 seconds',
       (ARRAY['fact', 'episode', 'preference'])[g % 3 + 1],
       'benchmark memory log ' || g || ': the user prefers short answers and green tea',
       jsonb_build_object('source', 'bench', 'n', g % 100)
FROM generate_series(0, {rows} - 1) g;
CREATE INDEX memory_logs_user_timestamp_idx ON memory_logs (user_id, "timestamp" DESC, id DESC);
ANALYZE users, memory_logs;
CREATE TABLE bench_meta (rows bigint NOT NULL, anchor timestamptz NOT NULL);
INSERT INTO bench_meta SELECT {rows}, max("timestamp") FROM memory_logs;
RESET search_path;"#
        ))
        .await?;
    println!("postgres: table built in {:.1} s", t.elapsed().as_secs_f64());
    Ok(admin.query_one(&format!("SELECT anchor FROM {schema}.bench_meta"), &[]).await?.get(0))
}

pub(crate) async fn run(url: &str, plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let admin = admin(url).await?;
    let (schema, table_rows) = if plan.quick { ("selfrag_bench_quick", 100_000) } else { ("selfrag_bench", 1_000_000) };

    // Writes go to their own schema, emptied before and after, so the query
    // table stays as built.
    admin.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {WRITES_SCHEMA}")).await?;
    {
        let (ours_pool, raw_pool) = (pool(url, WRITES_SCHEMA, "ours")?, pool(url, WRITES_SCHEMA, "raw")?);
        selfrag_postgres::migrate(&ours_pool).await?;
        admin.batch_execute(&format!("TRUNCATE {WRITES_SCHEMA}.memory_logs")).await?;
        let users = PostgresUserStore::new(ours_pool.clone());
        let (ours_user, raw_user) = (users.create_user().await?, users.create_user().await?);
        let store = PostgresMemoryStore::new(ours_pool);
        let raw_pool = Arc::new(raw_pool);

        for &c in &plan.concurrency {
            let ops = plan.ops(c, 2_000);
            let s = store.clone();
            let ours = op(move |i| {
                let s = s.clone();
                async move {
                    let log = NewMemoryLog::new("fact", content(i))?.with_metadata(Value::Object(meta()))?;
                    s.append(ours_user, log).await?;
                    Ok(())
                }
            });
            let p = raw_pool.clone();
            let raw_uuid = *raw_user.as_uuid();
            let raw = op(move |i| {
                let p = p.clone();
                async move {
                    let conn = p.get().await?;
                    let stmt = conn.prepare_cached(INSERT_ONE).await?;
                    let (id, now, text, m) = (Uuid::now_v7(), OffsetDateTime::now_utc(), content(i), meta());
                    conn.execute(&stmt, &[&id, &raw_uuid, &now, &"fact", &text, &Json(&m)]).await?;
                    Ok(())
                }
            });
            let cmp = compare(&ours, &raw, c, ops, plan.rounds, plan.target).await?;
            rows.push(crate::row("memory append (1 row) vs prepared INSERT", c, cmp));
            crate::print_last(rows);
        }

        for &c in &plan.concurrency {
            let ops = plan.ops(c, 60).max(c as u64);
            let s = store.clone();
            let ours = op(move |i| {
                let s = s.clone();
                async move {
                    let mut logs = Vec::with_capacity(1000);
                    for k in 0..1000 {
                        logs.push(
                            NewMemoryLog::new("fact", content(i * 1000 + k))?.with_metadata(Value::Object(meta()))?,
                        );
                    }
                    s.append_batch(ours_user, logs).await?;
                    Ok(())
                }
            });
            let p = raw_pool.clone();
            let raw_uuid = *raw_user.as_uuid();
            let raw = op(move |i| {
                let p = p.clone();
                async move {
                    let conn = p.get().await?;
                    let stmt = conn.prepare_cached(COPY_IN).await?;
                    let sink = conn.copy_in(&stmt).await?;
                    let types = [Type::UUID, Type::UUID, Type::TIMESTAMPTZ, Type::VARCHAR, Type::TEXT, Type::JSONB];
                    let writer = BinaryCopyInWriter::new(sink, &types);
                    futures::pin_mut!(writer);
                    for k in 0..1000 {
                        // Each row with its own metadata, as each adapter
                        // log owns its own (and as the single-row baseline).
                        let (id, now, text, m) =
                            (Uuid::now_v7(), OffsetDateTime::now_utc(), content(i * 1000 + k), meta());
                        writer.as_mut().write(&[&id, &raw_uuid, &now, &"fact", &text, &Json(&m)]).await?;
                    }
                    writer.finish().await?;
                    Ok(())
                }
            });
            let cmp = compare(&ours, &raw, c, ops, plan.rounds, plan.target).await?;
            rows.push(crate::row("memory batch append (1,000 rows) vs binary COPY", c, cmp));
            crate::print_last(rows);
        }
        admin.batch_execute(&format!("TRUNCATE {WRITES_SCHEMA}.memory_logs")).await?;
    }

    let anchor = query_table(&admin, url, schema, table_rows).await?;
    let since = anchor - Duration::from_secs(24 * 3600);
    let user_ids: Arc<Vec<Uuid>> = Arc::new(
        admin
            .query(&format!("SELECT id FROM {schema}.users ORDER BY id"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    );
    let label = if plan.quick {
        format!("memory query (1 user, 24 h, 50 rows; QUICK: {table_rows} rows) vs SQL")
    } else {
        format!("memory query (1 user, 24 h, 50 rows; {table_rows} rows) vs SQL")
    };
    let store = PostgresMemoryStore::new(pool(url, schema, "ours")?);
    let raw_pool = Arc::new(pool(url, schema, "raw")?);
    let control_pool = Arc::new(pool(url, schema, "control")?);
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 4_000);
        let (s, u) = (store.clone(), user_ids.clone());
        let ours = op(move |i| {
            let (s, u) = (s.clone(), u.clone());
            async move {
                let user = UserId::from_uuid(u[usize::try_from(i).unwrap_or(0) % u.len()]);
                let page = s.query(user, &MemoryQuery::new().since(since).limit(50)).await?;
                check_len(page.logs.len())
            }
        });
        let raw = raw_query(&raw_pool, &user_ids, since);
        let cmp = compare(&ours, &raw, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row(&label, c, cmp));
        crate::print_last(rows);
        // A/A control: the raw query against itself on a second pool of the
        // same settings: its ratio is the harness's own noise here.
        let cmp = compare(&raw_query(&control_pool, &user_ids, since), &raw, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("control: SQL vs SQL (A/A, two pools)", c, cmp));
        crate::print_last(rows);
    }
    Ok(())
}

/// The hand-written query: the adapter's SQL for "since, newest first, 50
/// rows", prepared, rows decoded into owned values.
fn raw_query(pool: &Arc<Pool>, user_ids: &Arc<Vec<Uuid>>, since: OffsetDateTime) -> Op {
    let (p, u) = (pool.clone(), user_ids.clone());
    op(move |i| {
        let (p, u) = (p.clone(), u.clone());
        async move {
            let user = u[usize::try_from(i).unwrap_or(0) % u.len()];
            let conn = p.get().await?;
            let stmt = conn.prepare_cached(SELECT_RECENT).await?;
            let found = conn.query(&stmt, &[&user, &since, &50i64]).await?;
            // Decoded into owned values, as any caller would.
            let logs = found
                .iter()
                .map(|r| {
                    Ok::<_, tokio_postgres::Error>((
                        r.try_get::<_, Uuid>(0)?,
                        r.try_get::<_, Uuid>(1)?,
                        r.try_get::<_, OffsetDateTime>(2)?,
                        r.try_get::<_, String>(3)?,
                        r.try_get::<_, String>(4)?,
                        r.try_get::<_, Value>(5)?,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_len(logs.len())
        }
    })
}

fn check_len(n: usize) -> Res<()> {
    if n == 50 {
        Ok(())
    } else {
        Err(format!("memory query returned {n} rows, expected 50").into())
    }
}
