//! Postgres rows: memory append, batch append and query, each against
//! hand-written tokio-postgres calls on a pool of the same configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use selfrag_core::{MemoryQuery, MemoryStore, NewMemoryLog, SessionId, SessionStore, UserId, UserStore};
use selfrag_postgres::{CoalesceConfig, PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::measure::{compare, op, phase, Op, Res, Row};
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

pub(crate) async fn run(url: &str, plan: &Plan, only_coalesced: bool, rows: &mut Vec<Row>) -> Res<()> {
    let admin = admin(url).await?;
    coalesced_rows(url, plan, &admin, rows).await?;
    coalesced_touch_rows(url, plan, &admin, rows).await?;
    if only_coalesced {
        return Ok(());
    }
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

/// Concurrency levels of the coalesced-append rows.
const COALESCED_CONCURRENCY: [usize; 4] = [1, 8, 64, 256];

/// The raw single-row append: a pooled connection, the prepared `INSERT`.
fn raw_append(pool: &Arc<Pool>, user: Uuid) -> Op {
    let p = pool.clone();
    op(move |i| {
        let p = p.clone();
        async move {
            let conn = p.get().await?;
            let stmt = conn.prepare_cached(INSERT_ONE).await?;
            let (id, now, text, m) = (Uuid::now_v7(), OffsetDateTime::now_utc(), content(i), meta());
            conn.execute(&stmt, &[&id, &user, &now, &"fact", &text, &Json(&m)]).await?;
            Ok(())
        }
    })
}

/// Server counters read around a counting pass.
#[derive(Debug, Clone, Copy)]
struct ServerCounters {
    commits: i64,
    wal_records: i64,
    wal_fpi: i64,
    wal_write: i64,
    wal_sync: i64,
    /// Milliseconds, counted only by backends with `track_wal_io_timing` on
    /// (the pool connections: see [`flush_stats`]), not by the WAL writer.
    wal_write_ms: f64,
    wal_sync_ms: f64,
    wal_bytes: f64,
}

/// Makes every connection of `pool` report its pending statistics: a
/// backend flushes them when it goes idle at least a second after its last
/// flush, so each of the pool's connections runs one statement after a
/// 1.1 s pause. Each also turns on `track_wal_io_timing` for its own
/// session (a superuser setting: the server's configuration is untouched;
/// where the role may not, the timings stay 0). Returns the connections'
/// backend pids.
async fn flush_stats(pool: &Pool) -> Res<Vec<i32>> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let size = pool.status().max_size;
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.get().await?);
    }
    let mut pids = Vec::with_capacity(size);
    for c in &held {
        let _ = c.batch_execute("SET track_wal_io_timing = on").await;
        pids.push(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0));
    }
    Ok(pids)
}

async fn server_counters(admin: &tokio_postgres::Client) -> Res<ServerCounters> {
    let r = admin
        .query_one(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                    wal_records, wal_fpi, wal_write, wal_sync, wal_write_time, wal_sync_time,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
             FROM pg_stat_wal",
            &[],
        )
        .await?;
    Ok(ServerCounters {
        commits: r.get(0),
        wal_records: r.get(1),
        wal_fpi: r.get(2),
        wal_write: r.get(3),
        wal_sync: r.get(4),
        wal_write_ms: r.get(5),
        wal_sync_ms: r.get(6),
        wal_bytes: r.get(7),
    })
}

/// CPU time (ns) of each process in `pids`, from `/proc/<pid>/schedstat`
/// (a Postgres process has one thread, so its first field is the whole
/// process's time on CPU); processes not visible here (another machine,
/// another pid namespace) are left out.
fn cpu_ns(pids: &[i32]) -> std::collections::HashMap<i32, u64> {
    pids.iter()
        .filter_map(|&pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
            Some((pid, text.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// CPU time used between two [`cpu_ns`] readings by the processes present
/// in both, in ms; `None` when none was visible.
#[allow(clippy::cast_precision_loss)]
fn cpu_ms(before: &std::collections::HashMap<i32, u64>, after: &std::collections::HashMap<i32, u64>) -> Option<f64> {
    let common: Vec<u64> = before.iter().filter_map(|(pid, b)| after.get(pid).map(|a| a.saturating_sub(*b))).collect();
    (!common.is_empty()).then(|| common.iter().sum::<u64>() as f64 / 1e6)
}

/// The server's background processes that do WAL and buffer work for the
/// backends (WAL writer, checkpointer, background writer).
async fn background_pids(admin: &tokio_postgres::Client) -> Res<Vec<i32>> {
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE backend_type IN ('walwriter', 'checkpointer', 'background writer')",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// CPU time (user + system, ms) of this process, all threads, from
/// `/proc/self/stat` (clock ticks of 10 ms, `CLK_TCK` 100 on Linux).
fn client_cpu_ms() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): state is the
    // 3rd field of the line, utime the 14th and stime the 15th.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// Runs `ops` operations of `side` at `concurrency` between two counter
/// snapshots; returns the per-row figures.
async fn counted(
    admin: &tokio_postgres::Client,
    pool: &Pool,
    side: &Op,
    concurrency: usize,
    ops: u64,
) -> Res<serde_json::Map<String, Value>> {
    let mut pids = flush_stats(pool).await?;
    let background = background_pids(admin).await?;
    pids.sort_unstable();
    pids.dedup();
    let before = server_counters(admin).await?;
    let (backends_before, background_before, client_before) = (cpu_ns(&pids), cpu_ns(&background), client_cpu_ms());
    let (wall, _) = phase(side, concurrency, 1 << 41, ops).await?;
    let (backends_after, background_after, client_after) = (cpu_ns(&pids), cpu_ns(&background), client_cpu_ms());
    flush_stats(pool).await?;
    let after = server_counters(admin).await?;
    #[allow(clippy::cast_precision_loss)]
    let per_k = |d: f64| crate::measure::round(d * 1000.0 / ops as f64, 1);
    let mut m = serde_json::Map::new();
    #[allow(clippy::cast_precision_loss)]
    let rate = ops as f64 / wall.as_secs_f64();
    m.insert("rows_per_s".into(), json!(crate::measure::round(rate, 0)));
    // Commits, WAL records, writes and fsyncs are cluster-wide (the
    // machine is shared), per 1,000 appended rows.
    #[allow(clippy::cast_precision_loss)]
    let d = |a: i64, b: i64| (a - b) as f64;
    m.insert("commits_per_1k_rows".into(), json!(per_k(d(after.commits, before.commits))));
    m.insert("wal_records_per_1k_rows".into(), json!(per_k(d(after.wal_records, before.wal_records))));
    m.insert("wal_fpi_per_1k_rows".into(), json!(per_k(d(after.wal_fpi, before.wal_fpi))));
    m.insert("wal_writes_per_1k_rows".into(), json!(per_k(d(after.wal_write, before.wal_write))));
    m.insert("wal_syncs_per_1k_rows".into(), json!(per_k(d(after.wal_sync, before.wal_sync))));
    m.insert("wal_write_ms_per_1k_rows".into(), json!(per_k(after.wal_write_ms - before.wal_write_ms)));
    m.insert("wal_sync_ms_per_1k_rows".into(), json!(per_k(after.wal_sync_ms - before.wal_sync_ms)));
    #[allow(clippy::cast_precision_loss)]
    let wal_bytes_per_row = (after.wal_bytes - before.wal_bytes) / ops as f64;
    m.insert("wal_bytes_per_row".into(), json!(crate::measure::round(wal_bytes_per_row, 0)));
    // CPU per 1,000 rows: the pool's backends, the server's background
    // processes, this process (both pools' tasks and the driver).
    let cpu = |ms: Option<f64>| ms.map_or(Value::Null, |ms| json!(per_k(ms)));
    m.insert("server_backend_cpu_ms_per_1k_rows".into(), cpu(cpu_ms(&backends_before, &backends_after)));
    m.insert("server_background_cpu_ms_per_1k_rows".into(), cpu(cpu_ms(&background_before, &background_after)));
    m.insert("client_cpu_ms_per_1k_rows".into(), cpu(client_before.zip(client_after).map(|(b, a)| a - b)));
    #[allow(clippy::cast_precision_loss)]
    m.insert("wall_ms_per_1k_rows".into(), json!(per_k(wall.as_secs_f64() * 1000.0)));
    Ok(m)
}

/// One coalesced row (`label`, `c` tasks, `ops` calls): ours against raw,
/// then the counting passes: about a second of the raw side (CPU times are
/// read in 10 ms ticks for this process), the same calls for ours, with
/// the coalescer's own counters (`stats`) around ours. Pushed to `rows` and
/// printed.
async fn coalesced_row(
    admin: &tokio_postgres::Client,
    (ours_pool, raw_pool): (&Pool, &Pool),
    (ours, raw): (&Op, &Op),
    (label, c, ops): (&str, usize, u64),
    plan: &Plan,
    rows: &mut Vec<Row>,
    stats: impl Fn() -> selfrag_postgres::CoalesceStats,
) -> Res<()> {
    let cmp = compare(ours, raw, c, ops, plan.rounds, plan.target).await?;
    let mut row = crate::row(label, c, cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count_ops = (row.raw.ops_per_s as u64).max(c as u64 * 4);
    let before = stats();
    let mut ours_counts = counted(admin, ours_pool, ours, c, count_ops).await?;
    let after = stats();
    let statements = after.statements - before.statements;
    #[allow(clippy::cast_precision_loss)]
    let per_statement = (after.rows - before.rows) as f64 / statements.max(1) as f64;
    ours_counts.insert("statements".into(), json!(statements));
    ours_counts.insert("rows_per_statement".into(), json!(crate::measure::round(per_statement, 1)));
    ours_counts.insert("split_statements".into(), json!(after.split - before.split));
    ours_counts.insert("direct_calls".into(), json!(after.direct - before.direct));
    let raw_counts = counted(admin, raw_pool, raw, c, count_ops).await?;
    let lines = [counters_line("coalesced", &ours_counts), counters_line("raw", &raw_counts)];
    row.extra.insert("counted_rows".into(), json!(count_ops));
    row.extra.insert("ours_counters".into(), Value::Object(ours_counts));
    row.extra.insert("raw_counters".into(), Value::Object(raw_counts));
    rows.push(row);
    crate::print_last(rows);
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// One line of a counting pass's figures, for the console.
fn counters_line(side: &str, m: &serde_json::Map<String, Value>) -> String {
    let g = |k: &str| m.get(k).map_or_else(|| "-".to_owned(), Value::to_string);
    format!(
        "    {side:<9} per 1k rows: wall {} ms, cpu server {} + bg {} ms, client {} ms; \
         WAL syncs {} ({} ms), writes {} ({} ms), records {}, fpi {}, bytes/row {}; rows/stmt {}",
        g("wall_ms_per_1k_rows"),
        g("server_backend_cpu_ms_per_1k_rows"),
        g("server_background_cpu_ms_per_1k_rows"),
        g("client_cpu_ms_per_1k_rows"),
        g("wal_syncs_per_1k_rows"),
        g("wal_sync_ms_per_1k_rows"),
        g("wal_writes_per_1k_rows"),
        g("wal_write_ms_per_1k_rows"),
        g("wal_records_per_1k_rows"),
        g("wal_fpi_per_1k_rows"),
        g("wal_bytes_per_row"),
        g("rows_per_statement"),
    )
}

/// What a user would write for a sliding-expiry touch: one prepared
/// `UPDATE` per call.
const RAW_TOUCH: &str = "UPDATE user_sessions SET last_activity = now(),
    expires_at = now() + ttl_ms * interval '1 millisecond'
WHERE id = $1 AND user_id = $2 AND expires_at > now()
RETURNING id, user_id, created_at, last_activity, expires_at, ttl_ms, data";

/// Sessions of the touch rows: 10,000 live ones over 4 users.
const TOUCH_SESSIONS: i64 = 10_000;

/// Session touches with coalescing on against the raw prepared `UPDATE`, at
/// 1, 8, 64 and 256 tasks, two pools of 16, over [`TOUCH_SESSIONS`] live
/// sessions (call `i` touches a session picked by `i`, spread over all of
/// them), then a counting pass of each side, as for appends.
async fn coalesced_touch_rows(url: &str, plan: &Plan, admin: &tokio_postgres::Client, rows: &mut Vec<Row>) -> Res<()> {
    let size = std::env::var("SELFRAG_BENCH_POOL_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let sized = |side: &str| -> Res<Pool> {
        let config = PostgresConfig::with_url(url).schema(WRITES_SCHEMA).max_connections(size);
        Ok(config.application_name(format!("selfrag-bench-touch-{side}")).build()?)
    };
    let (ours_pool, raw_pool) = (sized("ours")?, sized("raw")?);
    let users = PostgresUserStore::new(ours_pool.clone());
    let mut owners = Vec::new();
    for _ in 0..4 {
        owners.push(*users.create_user().await?.as_uuid());
    }
    // Inserted directly: the store caps live sessions per user.
    let inserted = admin
        .query(
            &format!(
                "INSERT INTO {WRITES_SCHEMA}.user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms, data)
                 SELECT gen_random_uuid(), ($1::uuid[])[1 + g % 4], now(), now(), now() + interval '1 day', 86400000, '{{}}'
                 FROM generate_series(1, $2::bigint) g RETURNING id, user_id"
            ),
            &[&owners, &TOUCH_SESSIONS],
        )
        .await?;
    admin.batch_execute(&format!("ANALYZE {WRITES_SCHEMA}.user_sessions")).await?;
    let sessions: Arc<Vec<(Uuid, Uuid)>> = Arc::new(inserted.iter().map(|r| (r.get(0), r.get(1))).collect());
    let pick = |i: u64, n: usize| usize::try_from(i.wrapping_mul(7_919)).unwrap_or(0) % n;
    let in_flight = std::env::var("SELFRAG_BENCH_COALESCE_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CoalesceConfig::new().max_in_flight);
    let store = PostgresSessionStore::new(ours_pool.clone()).coalescing(CoalesceConfig::new().max_in_flight(in_flight));
    let raw_pool = Arc::new(raw_pool);
    for c in COALESCED_CONCURRENCY {
        let ops = plan.ops(c, 2_000);
        let (s, v) = (store.clone(), sessions.clone());
        let ours = op(move |i| {
            let (s, v) = (s.clone(), v.clone());
            async move {
                let (id, user) = v[pick(i, v.len())];
                s.touch(UserId::from_uuid(user), SessionId::from_uuid(id)).await?.ok_or("session vanished")?;
                Ok(())
            }
        });
        let (p, v) = (raw_pool.clone(), sessions.clone());
        let raw = op(move |i| {
            let (p, v) = (p.clone(), v.clone());
            async move {
                let (id, user) = v[pick(i, v.len())];
                let conn = p.get().await?;
                let stmt = conn.prepare_cached(RAW_TOUCH).await?;
                conn.query_opt(&stmt, &[&id, &user]).await?.ok_or("session vanished")?;
                Ok(())
            }
        });
        let stats = || store.coalescing_stats().unwrap_or_default();
        let label = "session touch (coalesced) vs prepared UPDATE";
        coalesced_row(admin, (&ours_pool, &raw_pool), (&ours, &raw), (label, c, ops), plan, rows, stats).await?;
    }
    store.close_coalescing().await;
    admin.batch_execute(&format!("TRUNCATE {WRITES_SCHEMA}.user_sessions")).await?;
    Ok(())
}

/// Single-row appends with coalescing on against the raw prepared `INSERT`,
/// at 1, 8, 64 and 256 tasks, two pools of 16; then a counting pass of each
/// side (server commits, WAL records/writes/fsyncs per 1,000 rows, the
/// store's statements and rows per statement).
async fn coalesced_rows(url: &str, plan: &Plan, admin: &tokio_postgres::Client, rows: &mut Vec<Row>) -> Res<()> {
    admin.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {WRITES_SCHEMA}")).await?;
    // SELFRAG_BENCH_POOL_SIZE overrides the size of both pools (default 16).
    let size = std::env::var("SELFRAG_BENCH_POOL_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let sized = |side: &str| -> Res<Pool> {
        let config = PostgresConfig::with_url(url).schema(WRITES_SCHEMA).max_connections(size);
        Ok(config.application_name(format!("selfrag-bench-{side}")).build()?)
    };
    let (ours_pool, raw_pool) = (sized("ours")?, sized("raw")?);
    selfrag_postgres::migrate(&ours_pool).await?;
    admin.batch_execute(&format!("TRUNCATE {WRITES_SCHEMA}.memory_logs")).await?;
    let users = PostgresUserStore::new(ours_pool.clone());
    let (ours_user, raw_user) = (users.create_user().await?, users.create_user().await?);
    // SELFRAG_BENCH_COALESCE_IN_FLIGHT overrides `max_in_flight` (default 2),
    // to compare statement sizes against flushes.
    let in_flight = std::env::var("SELFRAG_BENCH_COALESCE_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CoalesceConfig::new().max_in_flight);
    println!("postgres: coalesced appends with max_in_flight {in_flight}, pools of {size}");
    // SELFRAG_BENCH_COALESCE_COPY_ABOVE overrides `copy_above` (default 32):
    // binary COPY against one unnest INSERT for the shared statements.
    let copy_above = CoalesceConfig::new().copy_above;
    let copy_above =
        std::env::var("SELFRAG_BENCH_COALESCE_COPY_ABOVE").ok().and_then(|v| v.parse().ok()).unwrap_or(copy_above);
    println!("postgres: coalesced statements above {copy_above} rows are a binary COPY");
    let config = CoalesceConfig::new().max_in_flight(in_flight).copy_above(copy_above);
    let store = PostgresMemoryStore::new(ours_pool.clone()).coalescing(config);
    let raw_pool = Arc::new(raw_pool);
    for c in COALESCED_CONCURRENCY {
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
        let raw = raw_append(&raw_pool, *raw_user.as_uuid());
        let stats = || store.coalescing_stats().unwrap_or_default();
        let label = "memory append (1 row, coalesced) vs prepared INSERT";
        coalesced_row(admin, (&ours_pool, &raw_pool), (&ours, &raw), (label, c, ops), plan, rows, stats).await?;
    }
    store.close_coalescing().await;
    admin.batch_execute(&format!("TRUNCATE {WRITES_SCHEMA}.memory_logs")).await?;
    Ok(())
}
