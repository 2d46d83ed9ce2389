//! `selfrag doctor`: the deployment checks, one line each.
//!
//! Every check is `ok`, `warn`, `fail`, `config`, `unreachable` or `skip`.
//! The exit code is 2 when the configuration must change (`config`: a
//! service rejected the credentials, a database that does not exist, TLS
//! asked for where it cannot work), else 1 when any check failed, else 3
//! when a service was unreachable, else 0; skipped checks (a service that
//! is not configured) and warnings (e.g. an embedded index that is open
//! elsewhere, so not inspected; a remote connection that is not encrypted
//! or not verified) do not count.
//!
//! Redis Cluster (several URLs in `REDIS_URL`, or `SELFRAG_REDIS_CLUSTER=1`):
//! a `cluster` check gives `cluster_state`, the slots served and every
//! master answering `PING` (with its latency), and fails naming any master
//! that does not; the rate-limit check runs through the cluster, and the
//! scan of existing buckets walks every master.
//!
//! A failed connection names where it went (`host:port`, database and
//! user; the URL without its password for Redis) and the driver's own
//! cause, never the pool's "Error occurred while creating a new object".
//!
//! Each reachable service also gets a `tls` check saying whether its
//! connection is encrypted and whether the server's certificate is
//! verified (JSON: `tls: {encrypted, verified, host_verified, mode, local,
//! version, cipher}`): Postgres from the server's `pg_stat_ssl` row for our
//! own backend and the effective TLS settings (`sslmode`, `sslrootcert`,
//! client certificate: `PostgresConfig::effective_tls`); Redis from the URL
//! and its TLS settings (`rediss://`, `#insecure` or `tls_insecure`,
//! `tls_ca_file`, a client certificate); Qdrant from the URL (`https://` is
//! always verified).

use std::fmt::Write as _;
use std::time::Duration;

use selfrag_core::{RateLimitKey, RateLimitPolicy, UserId};
use selfrag_edge::{EdgeIndex, EdgeIndexConfig};
use selfrag_postgres::deadpool_postgres::Object;
use selfrag_postgres::selfrag_migrations::MigrationState;
use selfrag_qdrant::report::check_vectors;
use selfrag_redis::deadpool_redis::redis;
use selfrag_redis::{RedisConnector, RedisRateLimiter};
use serde::Serialize;
use serde_json::json;

use crate::cli::Global;
use crate::output::{chain, config_problem, exit_of, explain, is_auth_failure, Exit, Failure, Out};

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
    /// For the `tls` check of each service: how its connection is
    /// protected.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
}

/// How a service's connection is protected (`doctor --json`: the `tls`
/// object of the service's `tls` check).
#[derive(Debug, Serialize)]
struct Tls {
    /// Whether the traffic is encrypted.
    encrypted: bool,
    /// Whether the server's certificate is checked against trusted roots.
    verified: bool,
    /// Whether the certificate must also name the host connected to
    /// (Postgres `verify-full`; always with Redis and Qdrant verification).
    host_verified: bool,
    /// The setting that decides it: `sslmode=...`, `rediss://`, `https://`.
    mode: String,
    /// Every host is this machine (loopback or a Unix socket): nothing
    /// crosses a network.
    local: bool,
    /// Protocol version and cipher, when the server reports them (Postgres).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cipher: Option<String>,
}

impl Tls {
    /// The check's state and detail: verified encryption, or any local
    /// connection, is ok (the facts are in the detail); a remote connection
    /// that is not encrypted, or whose server is not verified, is a
    /// warning naming the setting to change (`fix`), since anyone on the
    /// path could read or impersonate it. A warning does not change the
    /// exit code: plaintext on a private network may be a choice.
    fn judge(&self, fix: &str) -> (State, String) {
        let how = match (&self.version, &self.cipher) {
            (Some(v), Some(c)) => format!(" ({v}, {c})"),
            (Some(v), None) => format!(" ({v})"),
            _ => String::new(),
        };
        let place = if self.local { "local connection" } else { "remote connection" };
        match (self.encrypted, self.verified) {
            (true, true) if self.host_verified => {
                (State::Ok, format!("encrypted{how}, server certificate verified ({})", self.mode))
            }
            (true, true) => (
                State::Ok,
                format!("encrypted{how}, server certificate chain verified, host name not checked ({})", self.mode),
            ),
            (true, false) => (
                if self.local { State::Ok } else { State::Warn },
                format!(
                    "encrypted{how}, server certificate NOT verified ({}, {place}){}",
                    self.mode,
                    if self.local { String::new() } else { format!(": {fix}") }
                ),
            ),
            (false, _) if self.local => {
                (State::Ok, format!("not encrypted ({}, {place}: nothing crosses a network)", self.mode))
            }
            (false, _) => (State::Warn, format!("NOT encrypted ({}, {place}): {fix}", self.mode)),
        }
    }
}

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, service: &'static str, check: &'static str, state: State, detail: impl Into<String>) {
        self.0.push(Check { service, check, state, detail: detail.into(), tls: None });
    }

    /// The `tls` check of `service`, judged by [`Tls::judge`].
    fn tls(&mut self, service: &'static str, tls: Tls, fix: &str) {
        let (state, detail) = tls.judge(fix);
        self.0.push(Check { service, check: "tls", state, detail, tls: Some(tls) });
    }

    /// A check that could not run because of `err`: unreachable for
    /// connection errors and timeouts, a configuration problem for rejected
    /// credentials and the like ([`config_problem`]), failed otherwise.
    fn error(&mut self, service: &'static str, check: &'static str, err: &selfrag_core::Error) {
        let state = match exit_of(err) {
            Exit::Unreachable => State::Unreachable,
            Exit::Usage => State::Config,
            _ => State::Fail,
        };
        self.push(service, check, state, explain(err));
    }

    /// A connection to `endpoint` that failed with `cause` (the driver's
    /// error, without the pool's wrapper text): a configuration problem when
    /// the server rejected the credentials or the configuration names
    /// something that is not there, else unreachable.
    fn connection(
        &mut self,
        service: &'static str,
        endpoint: &str,
        cause: &str,
        err: &(dyn std::error::Error + 'static),
    ) {
        let state =
            if is_auth_failure(err) || config_problem(err).is_some() { State::Config } else { State::Unreachable };
        let mut detail = format!("cannot connect to {endpoint}: {cause}");
        if let Some(fix) = config_problem(err) {
            let _ = write!(detail, ". Fix: {fix}");
        }
        self.push(service, "connection", state, detail);
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
            let (config, pool) = global.postgres_pool()?;
            let invalid = |e: selfrag_core::Error| Failure::from_core("invalid Postgres configuration", &e);
            let pg = config.pg_config().map_err(invalid)?;
            let summary = config.effective_tls().and_then(|tls| tls.summary()).map_err(invalid)?;
            check_postgres(&pool, &pg, &summary, &mut checks).await;
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
            Exit::Usage => "doctor: configuration problem (CONF above): the configuration must change",
            _ => "doctor: checks failed",
        }
    );
    Ok(out.finish(exit, &human, json!({ "checks": checks.0 })))
}

/// Where a Postgres configuration connects, for messages: `host:port`
/// (each host of a multi-host URL; a socket directory for a Unix socket),
/// the database and the user. Never the password.
fn pg_endpoint(pg: &selfrag_postgres::tokio_postgres::Config) -> String {
    use selfrag_postgres::tokio_postgres::config::Host;
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            // libpq: one port for all hosts, or one per host; 5432 by default.
            let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let mut text = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    let user = pg.get_user().unwrap_or("(default user)");
    match pg.get_dbname() {
        Some(db) => {
            let _ = write!(text, " (database {db}, user {user})");
        }
        None => {
            let _ = write!(text, " (user {user})");
        }
    }
    text
}

/// The cause of a failure to get a pooled Postgres connection: the
/// server's message and SQLSTATE, or the driver's error, without the pool's
/// "Error occurred while creating a new object".
fn pg_pool_cause(err: &selfrag_postgres::deadpool_postgres::PoolError) -> String {
    use selfrag_postgres::deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(pg) => match pg.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => chain(pg),
        },
        PoolError::Timeout(_) => "timed out connecting".to_owned(),
        other => chain(other),
    }
}

/// Whether every host of `pg` is this machine.
fn pg_is_local(pg: &selfrag_postgres::tokio_postgres::Config) -> bool {
    use selfrag_postgres::tokio_postgres::config::Host;
    !pg.get_hostaddrs().iter().any(|ip| !ip.is_loopback())
        && pg.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => is_local_host(name),
            #[cfg(unix)]
            Host::Unix(_) => true,
        })
}

/// The `tls` check: what the server says of our own backend
/// (`pg_stat_ssl`: encrypted or not, protocol, cipher) and what the
/// configured TLS settings check (`summary`: `sslmode`, roots).
async fn check_postgres_tls(
    conn: &Object,
    pg: &selfrag_postgres::tokio_postgres::Config,
    summary: &selfrag_postgres::TlsSummary,
    checks: &mut Checks,
) {
    const S: &str = "postgres";
    let row = conn.query_opt("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await;
    let (encrypted, version, cipher) = match row {
        Ok(Some(row)) => (row.get::<_, bool>(0), row.get::<_, Option<String>>(1), row.get::<_, Option<String>>(2)),
        Ok(None) => return checks.push(S, "tls", State::Warn, "pg_stat_ssl has no row for this connection"),
        Err(e) => return checks.push(S, "tls", State::Warn, format!("cannot read pg_stat_ssl: {}", chain(&e))),
    };
    // `sslmode=verify-full`, and where the trusted roots come from when
    // the chain is checked.
    let mut mode = format!("sslmode={}", summary.mode);
    match &summary.roots {
        Some(selfrag_postgres::RootCerts::File(path)) if summary.verifies_chain => {
            let _ = write!(mode, ", roots from {}", path.display());
        }
        Some(selfrag_postgres::RootCerts::System) if summary.verifies_chain => mode.push_str(", system roots"),
        _ => {}
    }
    if summary.client_cert {
        mode.push_str(", client certificate");
    }
    let tls = Tls {
        encrypted,
        verified: encrypted && summary.verifies_chain,
        host_verified: encrypted && summary.verifies_host,
        mode,
        local: pg_is_local(pg),
        version,
        cipher,
    };
    checks.tls(S, tls, "set sslmode=verify-full in DATABASE_URL (with sslrootcert=<CA file> when the server's CA is not a system root)");
}

async fn check_postgres(
    pool: &selfrag_postgres::Pool,
    pg: &selfrag_postgres::tokio_postgres::Config,
    summary: &selfrag_postgres::TlsSummary,
    checks: &mut Checks,
) {
    const S: &str = "postgres";
    let conn: Object = match pool.get().await {
        Ok(conn) => conn,
        Err(selfrag_postgres::deadpool_postgres::PoolError::Backend(e)) => {
            // The stores' own mapping: TLS, password and pg_hba refusals
            // say what to change.
            let err = selfrag_postgres::connect_error(e, &pg_endpoint(pg));
            let state = match exit_of(&err) {
                Exit::Usage => State::Config,
                Exit::Unreachable => State::Unreachable,
                _ => State::Fail,
            };
            checks.push(S, "connection", state, explain(&err));
            return;
        }
        Err(e) => {
            checks.connection(S, &pg_endpoint(pg), &pg_pool_cause(&e), &e);
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
    checks.push(S, "connection", State::Ok, format!("{}: server {version}, schema {schema}", pg_endpoint(pg)));
    check_postgres_tls(&conn, pg, summary, checks).await;

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

/// Reachability (every master of a cluster, and the cluster's state), the
/// connection's protection, then one rate-limit check on a fresh user (so
/// no real user's budget is touched) with the default policy, the PTTL of
/// each bucket it wrote against `2·W`, and the keys deleted again; then a
/// bounded scan of the services' own buckets.
async fn check_redis(config: &selfrag_redis::RedisConfig, checks: &mut Checks) -> Result<(), Failure> {
    const S: &str = "redis";
    let connector = config.connector().map_err(|e| Failure::from_core("invalid Redis configuration", &e))?;
    let limiter = RedisRateLimiter::with_config(connector.clone(), config, RateLimitPolicy::default())
        .map_err(|e| Failure::from_core("invalid Redis configuration", &e))?;
    match &connector {
        RedisConnector::Pool(pool) => {
            let endpoint = selfrag_redis::redact_url(&config.url);
            let mut conn = match pool.get().await {
                Ok(conn) => conn,
                Err(e) => {
                    use selfrag_redis::deadpool_redis::PoolError;
                    // Without the pool's "Error occurred while creating a new object".
                    let cause = match &e {
                        PoolError::Backend(inner) => chain(inner),
                        PoolError::Timeout(_) => "timed out connecting".to_owned(),
                        other => chain(other),
                    };
                    checks.connection(S, &endpoint, &cause, &e);
                    return Ok(());
                }
            };
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if let Err(e) = pong {
                checks.connection(S, &endpoint, &chain(&e), &e);
                return Ok(());
            }
            checks.push(S, "connection", State::Ok, format!("{endpoint}: PING ok, key prefix `{}`", config.key_prefix));
            checks.tls(S, redis_tls(config, &config.url), REDIS_TLS_FIX);
            check_bucket_ttls(&limiter, &mut conn, checks).await;
            check_existing_buckets(&config.key_prefix, &mut Nodes::Server(&mut conn), checks).await;
        }
        RedisConnector::Cluster(client) => {
            let seeds: Vec<String> = config.cluster_nodes.iter().map(|u| selfrag_redis::redact_url(u)).collect();
            let health = match selfrag_redis::cluster_health(config).await {
                Ok(health) => health,
                Err(e) => {
                    let detail = format!("no seed of the cluster answered ({}): {}", seeds.join(", "), explain(&e));
                    let state = match exit_of(&e) {
                        Exit::Usage => State::Config,
                        Exit::Unreachable => State::Unreachable,
                        _ => State::Fail,
                    };
                    checks.push(S, "connection", state, detail);
                    return Ok(());
                }
            };
            checks.push(
                S,
                "connection",
                State::Ok,
                format!(
                    "cluster, seeds {}: {} answered, {} nodes known, key prefix `{}`",
                    seeds.join(", "),
                    health.reported_by,
                    health.known_nodes,
                    config.key_prefix
                ),
            );
            checks.tls(S, redis_tls(config, &config.cluster_nodes[0]), REDIS_TLS_FIX);
            checks.push(S, "cluster", cluster_state(&health).0, cluster_state(&health).1);
            let mut conn = match client.get_connection().await {
                Ok(conn) => conn,
                Err(e) => {
                    checks.error(S, "rate-limit TTLs", &e);
                    return Ok(());
                }
            };
            check_bucket_ttls(&limiter, &mut conn, checks).await;
            let masters: Vec<(String, u16)> = health
                .masters
                .iter()
                .filter(|m| m.slots > 0 && m.reachable)
                .filter_map(|m| {
                    let (host, port) = m.addr.rsplit_once(':')?;
                    Some((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().ok()?))
                })
                .collect();
            check_existing_buckets(&config.key_prefix, &mut Nodes::Cluster(&mut conn, masters), checks).await;
        }
    }
    Ok(())
}

/// The `cluster` check: `cluster_state`, slots, and every master serving
/// slots answering `PING` (with its latency); any problem fails it.
fn cluster_state(health: &selfrag_redis::ClusterHealth) -> (State, String) {
    let problems = health.problems();
    if !problems.is_empty() {
        return (State::Fail, problems.join("; "));
    }
    let serving: Vec<String> = health
        .masters
        .iter()
        .filter(|m| m.slots > 0)
        .map(|m| match m.latency {
            Some(t) => format!("{} ({} slots, {} ms)", m.addr, m.slots, t.as_millis()),
            None => format!("{} ({} slots)", m.addr, m.slots),
        })
        .collect();
    (
        State::Ok,
        format!(
            "cluster_state {}, {}/{} slots ok, {} masters answer PING: {}",
            health.state,
            health.slots_ok,
            selfrag_redis::CLUSTER_SLOTS,
            serving.len(),
            serving.join(", ")
        ),
    )
}

/// One rate-limit check on a fresh user with the default policy, then the
/// PTTL of each bucket it wrote against `2·W`, and the keys deleted again.
/// The keys share the user's hash tag, so on a cluster they are one slot.
async fn check_bucket_ttls<C: redis::aio::ConnectionLike + Send>(
    limiter: &RedisRateLimiter,
    conn: &mut C,
    checks: &mut Checks,
) {
    const S: &str = "redis";
    let policy = RateLimitPolicy::default();
    let key = match RateLimitKey::new(UserId::new(), "selfrag-doctor") {
        Ok(key) => key,
        Err(e) => return checks.error(S, "rate-limit TTLs", &e),
    };
    let outcome = match limiter.check_detailed(&key, 1).await {
        Ok(outcome) => outcome,
        Err(e) => return checks.error(S, "rate-limit TTLs", &e),
    };
    let Some(now_ms) = outcome.redis_time_ms else {
        return checks.push(S, "rate-limit TTLs", State::Fail, "the check was not decided by Redis");
    };
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for window in policy.windows() {
        let length = window.length_ms();
        let Ok(length_i64) = i64::try_from(length) else { continue };
        let bucket_key = limiter.bucket_key(&key, length, now_ms.div_euclid(length_i64));
        let pttl: redis::RedisResult<i64> = redis::cmd("PTTL").arg(&bucket_key).query_async(conn).await;
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
    let deleted: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query_async(conn).await;
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
}

/// What to change for a Redis connection that is not encrypted or not
/// verified.
const REDIS_TLS_FIX: &str =
    "use rediss:// in REDIS_URL, without #insecure or SELFRAG_REDIS_TLS_INSECURE (SELFRAG_REDIS_TLS_CA names a private CA)";

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

/// Where the keyspace is scanned: one server, or each master of a cluster
/// (`SCAN` walks one node's keys), addressed by `host:port` as the cluster
/// announces it.
enum Nodes<'a> {
    Server(&'a mut selfrag_redis::deadpool_redis::Connection),
    Cluster(&'a mut redis::cluster_async::ClusterConnection, Vec<(String, u16)>),
}

impl Nodes<'_> {
    /// How many nodes there are to scan.
    fn len(&self) -> usize {
        match self {
            Nodes::Server(_) => 1,
            Nodes::Cluster(_, masters) => masters.len(),
        }
    }

    fn route(masters: &[(String, u16)], node: usize) -> redis::cluster_routing::SingleNodeRoutingInfo {
        let (host, port) = masters[node].clone();
        redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port }
    }

    /// One `SCAN` page of node `node`.
    async fn scan(&mut self, node: usize, cursor: u64, pattern: &str) -> redis::RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
        match self {
            Nodes::Server(conn) => cmd.query_async(&mut **conn).await,
            Nodes::Cluster(conn, masters) => {
                let route = redis::cluster_routing::RoutingInfo::SingleNode(Self::route(masters, node));
                redis::from_redis_value(&conn.route_command(&cmd, route).await?)
            }
        }
    }

    /// `PTTL` of each key, all held by node `node`, in one pipeline.
    async fn pttls(&mut self, node: usize, keys: &[String]) -> redis::RedisResult<Vec<i64>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("PTTL").arg(key);
        }
        match self {
            Nodes::Server(conn) => pipe.query_async(&mut **conn).await,
            Nodes::Cluster(conn, masters) => {
                let values = conn.route_pipeline(&pipe, 0, keys.len(), Self::route(masters, node)).await?;
                values.iter().map(redis::from_redis_value).collect()
            }
        }
    }
}

/// The rate-limit buckets the services wrote (not only the doctor's own):
/// `SCAN` over `<prefix>{u:*}:rl:*` on the server, or on each master of a
/// cluster (at most [`SCAN_LIMIT`] keys in all), each must expire (PTTL not
/// -1) within twice its window. A bucket without a TTL never goes away; one
/// with a longer TTL outlives the policy.
async fn check_existing_buckets(prefix: &str, nodes: &mut Nodes<'_>, checks: &mut Checks) {
    const S: &str = "redis";
    const CHECK: &str = "rate-limit keys";
    let pattern = format!("{}{{u:*}}:rl:*", glob_escape(prefix));
    // (node, key) of every key found.
    let mut keys: Vec<(usize, String)> = Vec::new();
    let mut complete = true;
    for node in 0..nodes.len() {
        let mut cursor: u64 = 0;
        loop {
            match nodes.scan(node, cursor, &pattern).await {
                Ok((next, found)) => {
                    keys.extend(found.into_iter().map(|k| (node, k)));
                    cursor = next;
                }
                Err(e) => return checks.push(S, CHECK, State::Fail, format!("SCAN {pattern}: {}", chain(&e))),
            }
            if cursor == 0 || keys.len() >= SCAN_LIMIT {
                break;
            }
        }
        if keys.len() >= SCAN_LIMIT {
            complete = cursor == 0 && node + 1 == nodes.len();
            break;
        }
    }
    keys.truncate(SCAN_LIMIT);
    let mut problems = Vec::new();
    let mut checked = 0usize;
    for node in 0..nodes.len() {
        let on_node: Vec<String> = keys.iter().filter(|(n, _)| *n == node).map(|(_, k)| k.clone()).collect();
        for batch in on_node.chunks(500) {
            let ttls = match nodes.pttls(node, batch).await {
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
    }
    let scope = if complete { String::new() } else { format!(" (the first {SCAN_LIMIT}; the scan stops there)") };
    let on = match nodes {
        Nodes::Server(_) => String::new(),
        Nodes::Cluster(_, masters) => format!(" on {} masters", masters.len()),
    };
    if problems.is_empty() {
        checks.push(
            S,
            CHECK,
            State::Ok,
            format!("{checked} bucket key(s) scanned{on}{scope}, all expire within 2x their window"),
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
                "{} of {checked} bucket key(s){on}{scope} wrong: {}{more}",
                problems.len(),
                problems[..shown].join("; ")
            ),
        );
    }
}

/// How a Redis connection is protected: `rediss://` is TLS, verified
/// (issuer and host name) unless the URL says `#insecure` or
/// `tls_insecure` is set; the roots are `tls_ca_file` or the system's.
fn redis_tls(config: &selfrag_redis::RedisConfig, url: &str) -> Tls {
    use selfrag_redis::deadpool_redis::redis::{ConnectionAddr, IntoConnectionInfo};
    let url = url.trim();
    let (encrypted, insecure_url, local) = match url.into_connection_info().map(|info| info.addr) {
        Ok(ConnectionAddr::TcpTls { host, insecure, .. }) => (true, insecure, is_local_host(&host)),
        Ok(ConnectionAddr::Tcp(host, _)) => (false, false, is_local_host(&host)),
        Ok(ConnectionAddr::Unix(_)) => (false, false, true),
        // Not parsed here (connecting reports why): judged from the text.
        Err(_) => {
            let rest = url.split_once("://").map_or("", |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = match host_port.rsplit_once(':') {
                Some((h, port)) if !port.contains(']') => h,
                _ => host_port,
            };
            (url.starts_with("rediss://"), url.ends_with("#insecure"), url.starts_with("unix") || is_local_host(host))
        }
    };
    let verified = encrypted && !insecure_url && !config.tls_insecure;
    let scheme = url.split_once("://").map_or("redis", |(s, _)| s);
    let mut mode = format!("{scheme}://");
    if encrypted && !verified {
        mode.push_str(if insecure_url { " #insecure" } else { ", tls_insecure" });
    } else if verified {
        match &config.tls_ca_file {
            Some(ca) => {
                let _ = write!(mode, ", roots from {}", ca.display());
            }
            None => mode.push_str(", system roots"),
        }
    }
    if encrypted && config.tls_client_cert_file.is_some() {
        mode.push_str(", client certificate");
    }
    Tls { encrypted, verified, host_verified: verified, mode, local, version: None, cipher: None }
}

/// How a Qdrant URL connects: `https://` is TLS verified against the
/// system's roots (qdrant-client always verifies), `http://` is not
/// encrypted, and then the API key crosses in clear text too.
fn qdrant_tls(config: &selfrag_qdrant::QdrantIndexConfig) -> (Tls, &'static str) {
    let url = config.url.trim();
    let encrypted = url.starts_with("https://");
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    let host = host.split(['/', '?', '#']).next().unwrap_or_default();
    // `[::1]:6334`, `host:6334`, `host`.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => host,
    };
    let mode = if encrypted { "https://" } else { "http://" }.to_owned();
    let fix = if config.api_key.is_some() {
        "use an https:// QDRANT_URL: the API key is sent with every request"
    } else {
        "use an https:// QDRANT_URL"
    };
    let tls = Tls {
        encrypted,
        verified: encrypted,
        host_verified: encrypted,
        mode,
        local: is_local_host(host),
        version: None,
        cipher: None,
    };
    (tls, fix)
}

async fn check_qdrant(
    config: selfrag_qdrant::QdrantIndexConfig,
    check_spec: bool,
    checks: &mut Checks,
) -> Result<(), Failure> {
    const S: &str = "qdrant";
    let spec = config.spec;
    // Said whether or not the server answers: it is what every request uses.
    let (tls, fix) = qdrant_tls(&config);
    checks.tls(S, tls, fix);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(encrypted: bool, verified: bool, local: bool) -> Tls {
        Tls {
            encrypted,
            verified,
            host_verified: verified,
            mode: "m".into(),
            local,
            version: Some("TLSv1.3".into()),
            cipher: None,
        }
    }

    /// Verified encryption and local connections are ok; a remote
    /// connection that is plaintext or unverified is a warning naming the
    /// fix.
    #[test]
    fn tls_states() {
        assert_eq!(tls(true, true, false).judge("fix").0, State::Ok);
        let (state, detail) = tls(true, false, false).judge("set verify-full");
        assert_eq!(state, State::Warn);
        assert!(detail.contains("NOT verified") && detail.contains("set verify-full"), "{detail}");
        assert_eq!(tls(true, false, true).judge("fix").0, State::Ok);
        let (state, detail) = tls(false, false, false).judge("use https");
        assert_eq!(state, State::Warn);
        assert!(detail.contains("NOT encrypted") && detail.contains("use https"), "{detail}");
        let (state, detail) = tls(false, false, true).judge("fix");
        assert_eq!(state, State::Ok);
        assert!(detail.contains("not encrypted"), "{detail}");
    }

    #[test]
    fn redis_and_qdrant_urls() {
        let plain = selfrag_redis::RedisConfig::default();
        let r = redis_tls(&plain, "rediss://:pw@cache.example:6380");
        assert!(r.encrypted && r.verified && !r.local && r.mode.contains("system roots"), "{r:?}");
        let r = redis_tls(&plain, "rediss://cache.example:6380/#insecure");
        assert!(r.encrypted && !r.verified && r.mode.contains("#insecure"), "{r:?}");
        let insecure = selfrag_redis::RedisConfig { tls_insecure: true, ..plain.clone() };
        let r = redis_tls(&insecure, "rediss://cache.example:6380");
        assert!(r.encrypted && !r.verified && r.mode.contains("tls_insecure"), "{r:?}");
        let ca = selfrag_redis::RedisConfig {
            tls_ca_file: Some("/etc/ca.pem".into()),
            tls_client_cert_file: Some("/etc/c.pem".into()),
            ..plain.clone()
        };
        let r = redis_tls(&ca, "rediss://cache.example:6380");
        assert!(r.verified && r.mode.contains("roots from /etc/ca.pem, client certificate"), "{r:?}");
        let r = redis_tls(&plain, "redis://127.0.0.1:6379");
        assert!(!r.encrypted && r.local, "{r:?}");
        assert!(redis_tls(&plain, "redis+unix:///run/redis.sock").local);

        let spec = selfrag_core::IndexSpec::new(4, selfrag_core::Distance::Cosine).unwrap();
        let config = |url: &str| selfrag_qdrant::QdrantIndexConfig::new(url, "c", spec);
        let (t, _) = qdrant_tls(&config("https://xyz.cloud.example:6334"));
        assert!(t.encrypted && t.verified && !t.local, "{t:?}");
        let (t, fix) = qdrant_tls(&config("http://qdrant.internal:6334").api_key("k-0123456789"));
        assert!(!t.encrypted && !t.local && fix.contains("API key"), "{t:?}");
        assert_eq!(t.judge(fix).0, State::Warn);
        let (t, _) = qdrant_tls(&config("http://[::1]:6334"));
        assert!(t.local, "{t:?}");
    }

    #[test]
    fn postgres_endpoints_and_locality() {
        let pg = selfrag_postgres::parse_url("postgres://app:pw@db.example:6543/app").unwrap();
        assert_eq!(pg_endpoint(&pg), "db.example:6543 (database app, user app)");
        assert!(!pg_is_local(&pg));
        let pg = selfrag_postgres::parse_url("postgres://u@127.0.0.1,localhost:5433/d").unwrap();
        assert!(pg_is_local(&pg));
        assert!(pg_endpoint(&pg).starts_with("127.0.0.1:5432,localhost:5433"), "{}", pg_endpoint(&pg));
        let pg = selfrag_postgres::parse_url("host=/var/run/postgresql user=u").unwrap();
        assert!(pg_is_local(&pg));
        assert!(pg_endpoint(&pg).starts_with("/var/run/postgresql/.s.PGSQL.5432"), "{}", pg_endpoint(&pg));
    }
}
