//! `selfrag doctor`: the deployment checks, one line each.
//!
//! Every check is `ok`, `warn`, `fail`, `config`, `unreachable` or `skip`.
//! The exit code is 2 when a service rejected the configured credentials
//! (`config`), else 1 when any check failed, else 3 when a service was
//! unreachable, else 0; skipped checks (a service that is not configured)
//! and warnings (e.g. an embedded index that is open elsewhere, so not
//! inspected) do not count.

use std::fmt::Write as _;
use std::time::Duration;

use selfrag_core::{RateLimitKey, RateLimitPolicy, UserId};
use selfrag_edge::{EdgeIndex, EdgeIndexConfig};
use selfrag_postgres::deadpool_postgres::Object;
use selfrag_postgres::selfrag_migrations::MigrationState;
use selfrag_qdrant::report::check_vectors;
use selfrag_redis::deadpool_redis::redis;
use selfrag_redis::RedisRateLimiter;
use serde::Serialize;
use serde_json::json;

use crate::cli::Global;
use crate::output::{chain, exit_of, is_auth_failure, Exit, Failure, Out};

/// The index migration 003 creates on `memory_logs`: one user's logs by time,
/// newest first, keyset-paginated.
const MEMORY_LOGS_INDEX: &str = "memory_logs_user_timestamp_idx";
/// Its key columns as `pg_indexes.indexdef` spells them.
const MEMORY_LOGS_INDEX_COLUMNS: &str = "(user_id, \"timestamp\" DESC, id DESC)";
/// How far below `2·W` a fresh bucket's PTTL may be: the round trips between
/// the check and the PTTL, on a slow link.
const TTL_TOLERANCE_MS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Ok,
    /// Could not be fully checked, for a benign reason (said in the detail).
    Warn,
    Fail,
    /// The service rejected the configuration (credentials): exit 2.
    Config,
    Unreachable,
    Skip,
}

#[derive(Debug, Serialize)]
struct Check {
    service: &'static str,
    check: &'static str,
    state: State,
    detail: String,
}

#[derive(Debug, Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, service: &'static str, check: &'static str, state: State, detail: impl Into<String>) {
        self.0.push(Check { service, check, state, detail: detail.into() });
    }

    /// A check that could not run because of `err`: unreachable for
    /// connection errors and timeouts, a configuration problem for rejected
    /// credentials, failed otherwise.
    fn error(&mut self, service: &'static str, check: &'static str, err: &selfrag_core::Error) {
        let state = match exit_of(err) {
            Exit::Unreachable => State::Unreachable,
            Exit::Usage => State::Config,
            _ => State::Fail,
        };
        self.push(service, check, state, chain(err));
    }

    /// A connection that failed: a configuration problem when the server
    /// rejected the credentials, else unreachable.
    fn connection(&mut self, service: &'static str, err: &(dyn std::error::Error + 'static)) {
        let state = if is_auth_failure(err) { State::Config } else { State::Unreachable };
        self.push(service, "connection", state, chain(err));
    }

    fn exit(&self) -> Exit {
        self.0.iter().fold(Exit::Ok, |exit, c| match c.state {
            State::Fail => exit.worst(Exit::Failed),
            State::Config => exit.worst(Exit::Usage),
            State::Unreachable => exit.worst(Exit::Unreachable),
            State::Ok | State::Warn | State::Skip => exit,
        })
    }
}

pub(crate) async fn run(global: &Global, out: Out) -> Result<Exit, Failure> {
    // Configuration errors are found before anything is contacted: they are
    // exit 2, whatever the services say.
    let postgres = global.postgres();
    if let Some(config) = &postgres {
        config.pg_config().map_err(|e| Failure::from_core("invalid Postgres configuration", &e))?;
    }
    let redis = global.redis().transpose()?;
    let qdrant = global.qdrant().transpose()?;
    let spec = global.spec().transpose()?;

    let mut checks = Checks::default();
    match postgres {
        Some(_) => {
            out.progress("checking Postgres");
            let (_, pool) = global.postgres_pool()?;
            check_postgres(&pool, &mut checks).await;
        }
        None => checks.push("postgres", "configured", State::Skip, "not configured (set DATABASE_URL)"),
    }
    match redis {
        Some(config) => {
            out.progress("checking Redis");
            check_redis(&config, &mut checks).await?;
        }
        None => checks.push("redis", "configured", State::Skip, "not configured (set REDIS_URL)"),
    }
    match qdrant {
        Some(config) => {
            out.progress(format_args!("checking Qdrant collection `{}`", config.collection));
            check_qdrant(config, spec.is_some(), &mut checks).await?;
        }
        None => checks.push("qdrant", "configured", State::Skip, "not configured (set QDRANT_URL)"),
    }
    match &global.edge_path {
        Some(path) => {
            out.progress(format_args!("checking the embedded index at {}", path.display()));
            check_edge(path, spec, &mut checks).await;
        }
        None => checks.push("edge", "configured", State::Skip, "not configured (set SELFRAG_EDGE_PATH)"),
    }

    let exit = checks.exit();
    let mut human = String::new();
    for c in &checks.0 {
        let label = match c.state {
            State::Ok => "ok  ",
            State::Warn => "WARN",
            State::Fail => "FAIL",
            State::Config => "CONF",
            State::Unreachable => "DOWN",
            State::Skip => "skip",
        };
        let _ = writeln!(human, "{label}  {:<8} {:<16} {}", c.service, c.check, c.detail);
    }
    let _ = writeln!(
        human,
        "{}",
        match exit {
            Exit::Ok => "doctor: all checks passed",
            Exit::Unreachable => "doctor: a service is unreachable",
            Exit::Usage => "doctor: a service rejected the configured credentials",
            _ => "doctor: checks failed",
        }
    );
    Ok(out.finish(exit, &human, json!({ "checks": checks.0 })))
}

async fn check_postgres(pool: &selfrag_postgres::Pool, checks: &mut Checks) {
    const S: &str = "postgres";
    let conn: Object = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            checks.connection(S, &e);
            return;
        }
    };
    let row = match conn.query_one("SELECT current_setting('server_version'), current_schema()", &[]).await {
        Ok(row) => row,
        Err(e) => {
            checks.push(S, "connection", State::Fail, chain(&e));
            return;
        }
    };
    let version: String = row.get(0);
    let Some(schema) = row.get::<_, Option<String>>(1) else {
        checks.push(S, "connection", State::Fail, "the search_path names no existing schema (check --schema)");
        return;
    };
    checks.push(S, "connection", State::Ok, format!("server {version}, schema {schema}"));

    match selfrag_postgres::migration_status(pool).await {
        Ok(status) => {
            let applied =
                status.migrations.iter().filter(|m| matches!(m.state, MigrationState::Applied { .. })).count();
            if let Some(problem) = status.problem() {
                checks.push(S, "migrations", State::Fail, problem.to_string());
            } else if !status.is_up_to_date() {
                let pending: Vec<String> = status.pending().map(|m| format!("{:03}_{}", m.version, m.name)).collect();
                checks.push(
                    S,
                    "migrations",
                    State::Fail,
                    format!("{applied} applied, pending: {} (run `selfrag migrate up`)", pending.join(", ")),
                );
            } else {
                checks.push(S, "migrations", State::Ok, format!("{applied} applied, none pending or edited"));
            }
        }
        Err(e) => checks.error(S, "migrations", &e),
    }

    let found = conn
        .query_opt(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'memory_logs' \
             AND indexname = $1",
            &[&MEMORY_LOGS_INDEX],
        )
        .await;
    match found {
        Ok(Some(row)) => {
            let def: String = row.get(0);
            if def.contains(MEMORY_LOGS_INDEX_COLUMNS) {
                checks.push(
                    S,
                    "memory_logs index",
                    State::Ok,
                    format!("{MEMORY_LOGS_INDEX} {MEMORY_LOGS_INDEX_COLUMNS}"),
                );
            } else {
                checks.push(
                    S,
                    "memory_logs index",
                    State::Fail,
                    format!("{MEMORY_LOGS_INDEX} exists but is `{def}`, expected columns {MEMORY_LOGS_INDEX_COLUMNS}"),
                );
            }
        }
        Ok(None) => checks.push(
            S,
            "memory_logs index",
            State::Fail,
            format!("index {MEMORY_LOGS_INDEX} on memory_logs is missing in schema {schema}"),
        ),
        Err(e) => checks.push(S, "memory_logs index", State::Fail, chain(&e)),
    }
}

/// Reachability, then one rate-limit check on a fresh user (so no real
/// user's budget is touched) with the default policy, the PTTL of each
/// bucket it wrote against `2·W`, and the keys deleted again.
async fn check_redis(config: &selfrag_redis::RedisConfig, checks: &mut Checks) -> Result<(), Failure> {
    const S: &str = "redis";
    let pool = config.create_pool().map_err(|e| Failure::from_core("invalid Redis configuration", &e))?;
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            checks.connection(S, &e);
            return Ok(());
        }
    };
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    match pong {
        Ok(_) => checks.push(S, "connection", State::Ok, format!("PING ok, key prefix `{}`", config.key_prefix)),
        Err(e) => {
            checks.connection(S, &e);
            return Ok(());
        }
    }

    let policy = RateLimitPolicy::default();
    let limiter = RedisRateLimiter::with_config(pool.clone(), config, policy.clone())
        .map_err(|e| Failure::from_core("invalid Redis configuration", &e))?;
    let key =
        RateLimitKey::new(UserId::new(), "selfrag-doctor").map_err(|e| Failure::from_core("rate-limit key", &e))?;
    let outcome = match limiter.check_detailed(&key, 1).await {
        Ok(outcome) => outcome,
        Err(e) => {
            checks.error(S, "rate-limit TTLs", &e);
            return Ok(());
        }
    };
    let Some(now_ms) = outcome.redis_time_ms else {
        checks.push(S, "rate-limit TTLs", State::Fail, "the check was not decided by Redis");
        return Ok(());
    };
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for window in policy.windows() {
        let length = window.length_ms();
        let Ok(length_i64) = i64::try_from(length) else { continue };
        let bucket_key = limiter.bucket_key(&key, length, now_ms.div_euclid(length_i64));
        let pttl: redis::RedisResult<i64> = redis::cmd("PTTL").arg(&bucket_key).query_async(&mut conn).await;
        let expected = 2 * length_i64;
        match pttl {
            Ok(ttl) if ttl <= expected && ttl >= expected - TTL_TOLERANCE_MS => {
                seen.push(format!("{}s", Duration::from_millis(ttl.unsigned_abs()).as_secs_f64().round()));
            }
            Ok(-2) => problems.push(format!("bucket key {bucket_key} was not written")),
            Ok(-1) => problems.push(format!("bucket key {bucket_key} has no TTL (expected {}s)", expected / 1000)),
            Ok(ttl) => {
                problems.push(format!("bucket key {bucket_key} has PTTL {ttl} ms, expected about {expected} ms"))
            }
            Err(e) => problems.push(format!("PTTL {bucket_key}: {}", chain(&e))),
        }
        keys.push(bucket_key);
    }
    let deleted: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    if let Err(e) = deleted {
        problems.push(format!("deleting the doctor's keys failed: {}", chain(&e)));
    }
    if problems.is_empty() {
        checks.push(
            S,
            "rate-limit TTLs",
            State::Ok,
            format!("buckets expire after {} (2x the windows 60s/3600s/86400s)", seen.join(" / ")),
        );
    } else {
        checks.push(S, "rate-limit TTLs", State::Fail, problems.join("; "));
    }
    check_existing_buckets(&config.key_prefix, &mut conn, checks).await;
    Ok(())
}

/// At most this many keys are looked at by the scan of existing buckets, so
/// a check every few minutes stays cheap on a large keyspace.
const SCAN_LIMIT: usize = 10_000;

/// `*`, `?`, `[`, `]` and `\` escaped for a Redis `MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The window length (ms) of a bucket key
/// `<prefix>{u:<user>}:rl:<scope>:<window_ms>:<bucket>`.
fn window_of(key: &str) -> Option<i64> {
    let mut parts = key.rsplitn(3, ':');
    let bucket = parts.next()?;
    let window = parts.next()?;
    bucket.parse::<i64>().ok()?;
    window.parse::<i64>().ok().filter(|w| *w > 0)
}

/// The rate-limit buckets the services wrote (not only the doctor's own):
/// `SCAN` over `<prefix>{u:*}:rl:*` (at most [`SCAN_LIMIT`] keys), each
/// must expire (PTTL not -1) within twice its window. A bucket without a
/// TTL never goes away; one with a longer TTL outlives the policy.
async fn check_existing_buckets(
    prefix: &str,
    conn: &mut selfrag_redis::deadpool_redis::Connection,
    checks: &mut Checks,
) {
    const S: &str = "redis";
    const CHECK: &str = "rate-limit keys";
    let pattern = format!("{}{{u:*}}:rl:*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut keys: Vec<String> = Vec::new();
    loop {
        let page: redis::RedisResult<(u64, Vec<String>)> =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(conn).await;
        match page {
            Ok((next, found)) => {
                keys.extend(found);
                cursor = next;
            }
            Err(e) => return checks.push(S, CHECK, State::Fail, format!("SCAN {pattern}: {}", chain(&e))),
        }
        if cursor == 0 || keys.len() >= SCAN_LIMIT {
            break;
        }
    }
    let complete = cursor == 0;
    keys.truncate(SCAN_LIMIT);
    let mut problems = Vec::new();
    let mut checked = 0usize;
    for batch in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("PTTL").arg(key);
        }
        let ttls: redis::RedisResult<Vec<i64>> = pipe.query_async(conn).await;
        let ttls = match ttls {
            Ok(ttls) => ttls,
            Err(e) => return checks.push(S, CHECK, State::Fail, format!("PTTL: {}", chain(&e))),
        };
        for (key, ttl) in batch.iter().zip(ttls) {
            let Some(window) = window_of(key) else {
                problems.push(format!("{key} is not a bucket key `...:rl:<scope>:<window_ms>:<bucket>`"));
                continue;
            };
            match ttl {
                -2 => continue, // expired between SCAN and PTTL
                -1 => problems.push(format!("{key} has no TTL (expected at most {}s)", 2 * window / 1000)),
                ttl if ttl > 2 * window => {
                    problems.push(format!("{key} has PTTL {ttl} ms, more than 2x its window ({} ms)", 2 * window))
                }
                _ => {}
            }
            checked += 1;
        }
    }
    let scope = if complete { String::new() } else { format!(" (the first {SCAN_LIMIT}; the scan stops there)") };
    if problems.is_empty() {
        checks.push(
            S,
            CHECK,
            State::Ok,
            format!("{checked} bucket key(s) scanned{scope}, all expire within 2x their window"),
        );
    } else {
        let shown = problems.len().min(5);
        let more =
            if problems.len() > shown { format!("; and {} more", problems.len() - shown) } else { String::new() };
        checks.push(
            S,
            CHECK,
            State::Fail,
            format!(
                "{} of {checked} bucket key(s){scope} wrong: {}{more}",
                problems.len(),
                problems[..shown].join("; ")
            ),
        );
    }
}

async fn check_qdrant(
    config: selfrag_qdrant::QdrantIndexConfig,
    check_spec: bool,
    checks: &mut Checks,
) -> Result<(), Failure> {
    const S: &str = "qdrant";
    let spec = config.spec;
    let index = config.build().map_err(|e| Failure::from_core("invalid Qdrant configuration", &e))?;
    let name = index.collection().to_owned();
    let report = match index.report().await {
        Ok(report) => report,
        Err(e) => {
            checks.error(S, "collection", &e);
            return Ok(());
        }
    };
    let indexes: Vec<String> = report.payload_schema.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let problems = report.schema_problems();
    if report.status != selfrag_qdrant::CollectionStatus::Green {
        checks.push(S, "collection", State::Fail, format!("{report} (status must be green)"));
    } else {
        checks.push(
            S,
            "collection",
            State::Ok,
            format!("`{name}` green, {} points, {} segments", report.points, report.segments),
        );
    }
    if problems.is_empty() {
        checks.push(S, "payload indexes", State::Ok, indexes.join(", "));
    } else {
        checks.push(S, "payload indexes", State::Fail, problems.join("; "));
    }
    if check_spec {
        match index.client().collection_info(name.as_str()).await {
            Ok(resp) => match resp.result {
                Some(info) => match check_vectors(&name, &spec, &info) {
                    Ok(()) => checks.push(
                        S,
                        "vectors",
                        State::Ok,
                        format!("{} dimensions, {}", spec.dimension(), spec.distance()),
                    ),
                    Err(e) => checks.push(S, "vectors", State::Fail, chain(&e)),
                },
                None => checks.push(S, "vectors", State::Fail, "the server returned no collection info"),
            },
            Err(e) => checks.error(S, "vectors", &selfrag_qdrant::map_error("collection info", e)),
        }
    }
    Ok(())
}

/// The directory must look like an index (`wal/` and `segments/`, which the
/// engine creates): opening anything else would create a new, empty index
/// there and report it healthy. With a configured spec the index is opened
/// and its payload indexes listed; an index a running service holds locked
/// is reported as a warning, "not inspected", never as ok.
async fn check_edge(path: &std::path::Path, spec: Option<selfrag_core::IndexSpec>, checks: &mut Checks) {
    const S: &str = "edge";
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return checks.push(S, "directory", State::Fail, format!("{} is not a directory", path.display())),
        Err(e) => return checks.push(S, "directory", State::Fail, format!("{}: {e}", path.display())),
    }
    let missing: Vec<&str> = ["wal", "segments"].into_iter().filter(|d| !path.join(d).is_dir()).collect();
    if !missing.is_empty() {
        return checks.push(
            S,
            "directory",
            State::Fail,
            format!(
                "{} is not an embedded index: no {} (empty, wrong or damaged directory)",
                path.display(),
                missing.iter().map(|d| format!("{d}/")).collect::<Vec<_>>().join(" or ")
            ),
        );
    }
    let Some(spec) = spec else {
        checks.push(
            S,
            "directory",
            State::Ok,
            format!("{} holds wal/ and segments/ (set --vector-dimension to open it)", path.display()),
        );
        return;
    };
    checks.push(S, "directory", State::Ok, format!("{} holds wal/ and segments/", path.display()));
    match EdgeIndex::open(path, spec, EdgeIndexConfig::default()).await {
        Ok(index) => {
            let stats = index.stats().await;
            let closed = index.close().await;
            match (stats, closed) {
                (Ok(stats), Ok(())) => checks.push(
                    S,
                    "index",
                    State::Ok,
                    format!("{} points, payload indexes: {}", stats.points, stats.payload_indexes.join(", ")),
                ),
                (Err(e), _) | (_, Err(e)) => checks.push(S, "index", State::Fail, chain(&e)),
            }
        }
        Err(e) if e.kind() == selfrag_core::ErrorKind::Unavailable => checks.push(
            S,
            "index",
            State::Warn,
            format!("not inspected: {} is open in a running process (locked)", path.display()),
        ),
        Err(e) => checks.push(S, "index", State::Fail, chain(&e)),
    }
}
