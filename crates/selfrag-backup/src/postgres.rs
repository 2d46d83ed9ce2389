//! Postgres: `pg_dump --format=custom` archives, `pg_restore --list`
//! verification, `pg_restore` into an empty or named database.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use selfrag_postgres::PgTls;
use tokio::process::Command;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use crate::erasures::{self, LedgerEntry};
use crate::fsutil;
use crate::manifest::{check_entry_files, Entry, EntryKind, FileEntry, Manifest, PostgresInfo};
use crate::run::BackupRun;
use crate::{corrupt, Error, Result};

const PG: &str = "postgres";

/// The tables a full (database or schema) archive must contain.
pub const SELFRAG_TABLES: [&str; 4] = ["users", "user_sessions", "memory_logs", "selfrag_schema_history"];

/// Where to find `pg_dump` and `pg_restore`.
///
/// Lookup order per tool: the explicit path, else `<bin_dir>/<tool>`, else
/// the first `<tool>` on `PATH`. A tool that is not found is
/// [`Error::Incompatible`] (a configuration problem, not retryable) before
/// anything is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTools {
    /// Explicit `pg_dump` path.
    pub pg_dump: Option<PathBuf>,
    /// Explicit `pg_restore` path.
    pub pg_restore: Option<PathBuf>,
    /// A directory holding both (e.g. `/usr/lib/postgresql/16/bin`).
    pub bin_dir: Option<PathBuf>,
}

/// A client tool's version, from `<tool> --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolVersion {
    /// The binary run.
    pub path: PathBuf,
    /// Its `--version` line, e.g. `pg_dump (PostgreSQL) 15.20 (Debian ...)`.
    pub text: String,
    /// The version as a number in `server_version_num` style: `150020`.
    pub num: u32,
}

impl ToolVersion {
    /// The major version (`15` for `150020`; `906`, i.e. 9.6, for `90624`).
    pub fn major(&self) -> u32 {
        major_of(self.num)
    }
}

/// The major version of a `server_version_num`-style number: `num / 10000`
/// since Postgres 10, `num / 100` (e.g. 906) before.
pub fn major_of(num: u32) -> u32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

/// Parses `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` (and
/// `16beta1`, `9.6.24`) into `150020`, `160000`, `90624`.
pub fn parse_tool_version(text: &str) -> Option<u32> {
    let word = text.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let numeric: String = word.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let parts: Vec<u32> =
        numeric.split('.').filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, rest @ ..] if *major >= 10 => Some(major * 10_000 + rest.first().copied().unwrap_or(0)),
        [major, minor, patch, ..] => Some(major * 10_000 + minor * 100 + patch),
        [major, minor] => Some(major * 10_000 + minor * 100),
        _ => None,
    }
}

impl PgTools {
    /// Tools found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `dir` for both tools.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Finds `tool` (`pg_dump` or `pg_restore`).
    ///
    /// # Errors
    /// [`Error::Incompatible`] naming the tool and where it was looked for.
    pub fn resolve(&self, tool: &str) -> Result<PathBuf> {
        let explicit = match tool {
            "pg_dump" => self.pg_dump.as_ref(),
            "pg_restore" => self.pg_restore.as_ref(),
            _ => None,
        };
        if let Some(p) = explicit {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(missing_tool(tool, &format!("{} does not exist", p.display())))
            };
        }
        if let Some(dir) = &self.bin_dir {
            let p = dir.join(tool);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(missing_tool(tool, &format!("{} does not exist", p.display())))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .ok_or_else(|| missing_tool(tool, "it is not on PATH"))
    }

    /// Runs `<tool> --version`.
    ///
    /// # Errors
    /// As [`PgTools::resolve`]; [`Error::Incompatible`] when the output is
    /// not a version.
    pub async fn version(&self, tool: &str) -> Result<ToolVersion> {
        let path = self.resolve(tool)?;
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::unavailable(PG, format!("cannot run {} --version", path.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let num = parse_tool_version(&text).filter(|_| out.status.success()).ok_or_else(|| Error::Incompatible {
            backend: PG,
            message: format!("{} --version answered {text:?}, not a PostgreSQL version", path.display()),
        })?;
        Ok(ToolVersion { path, text, num })
    }
}

/// A missing tool is a configuration problem, not an outage: retrying will
/// not make it appear, so it is [`Error::Incompatible`] (not retryable),
/// naming the tool and the setting to fix.
fn missing_tool(tool: &str, why: &str) -> Error {
    Error::Incompatible {
        backend: PG,
        message: format!(
            "{tool} not found: {why}; install the PostgreSQL client tools (same major version as the server or newer) \
             or configure their path (`{tool}` or `bin_dir` of PgTools)"
        ),
    }
}

/// What to dump: see [`backup_postgres`].
///
/// `Debug` shows the URL without its password
/// ([`redact_url`](selfrag_postgres::redact_url)).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresBackup {
    /// Connection URL (`postgres://user[:password]@host[:port]/db`) or
    /// `key=value` string. The password never reaches a command line: it is
    /// handed to `pg_dump` as `PGPASSWORD` in the child's environment. No
    /// error, `Debug` or manifest quotes it. TLS options (`sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`) apply to this crate's own
    /// connections and reach `pg_dump` as `PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY` (see `selfrag_postgres::PgTls::libpq_env`).
    pub url: String,
    /// Dump only this schema (where the selfrag tables live when the stores
    /// use `PostgresConfig::schema`). `None`: the whole database.
    pub schema: Option<String>,
    /// Dump only these tables (e.g. `memory_logs`), in `schema` or `public`.
    /// Empty: everything (a full backup, which must hold
    /// [`SELFRAG_TABLES`]).
    pub tables: Vec<String>,
    /// `pg_dump --compress` level, 0 to 9. Default: `None` (pg_dump's
    /// default, gzip level 6-ish for the custom format).
    pub compression: Option<u8>,
    /// Entry name in the run (default: `postgres`, or
    /// `postgres-<table>[-<table>...]` for table backups).
    pub name: Option<String>,
    /// Where the tools are.
    pub tools: PgTools,
}

impl fmt::Debug for PostgresBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackup")
            .field("url", &selfrag_postgres::redact_url(&self.url))
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .field("compression", &self.compression)
            .field("name", &self.name)
            .field("tools", &self.tools)
            .finish()
    }
}

impl PostgresBackup {
    /// A full backup of the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), schema: None, tables: Vec::new(), compression: None, name: None, tools: PgTools::new() }
    }

    /// Sets [`PostgresBackup::schema`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Adds a table to [`PostgresBackup::tables`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.tables.push(table.into());
        self
    }

    /// Sets [`PostgresBackup::compression`].
    pub fn compression(mut self, level: u8) -> Self {
        self.compression = Some(level);
        self
    }

    /// Sets [`PostgresBackup::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets [`PostgresBackup::tools`].
    pub fn tools(mut self, tools: PgTools) -> Self {
        self.tools = tools;
        self
    }

    fn entry_name(&self) -> String {
        match (&self.name, self.tables.is_empty()) {
            (Some(n), _) => n.clone(),
            (None, true) => "postgres".to_owned(),
            (None, false) => format!("postgres-{}", self.tables.join("-")),
        }
    }
}

/// Plain identifiers only (`[a-z_][a-z0-9_]*`, at most 63): they go into
/// `pg_dump` patterns and SQL without quoting surprises.
fn check_ident(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("`{name}` must be 1 to 63 of [a-z0-9_], not starting with a digit")))
    }
}

/// Database names for restores: `[A-Za-z0-9_-]`, at most 63, so they can be
/// passed as `--dbname` without being read as a connection string.
fn check_dbname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("database", format!("`{name}` must be 1 to 63 of [A-Za-z0-9_-], not starting with `-`")))
    }
}

/// The driver's settings for `url` and its TLS settings (checked); an
/// error quotes nothing of it.
fn parse_url(url: &str) -> Result<(Config, PgTls)> {
    let (config, tls) = selfrag_postgres::parse_url_with_tls(url)?;
    tls.summary()?;
    Ok((config, tls))
}

/// Connects to `config`, which `label` names in errors: the URL it came
/// from as [`redact_url`](selfrag_postgres::redact_url) prints it (the one
/// printable form of a connection string), and the database when it is not
/// the URL's.
///
/// TLS as the URL says, with the stores' connector; a refused
/// configuration (certificate, password, `pg_hba.conf`) is a non-retryable
/// error saying what to change (`selfrag_postgres::connect_error`).
async fn connect(config: &Config, tls: &PgTls, label: &str) -> Result<Client> {
    let (client, conn) =
        config.connect(tls.connector()?).await.map_err(|e| selfrag_postgres::connect_error(e, label))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backup connection ended");
        }
    });
    Ok(client)
}

/// The label of a connection to `database` (checked by `check_dbname`)
/// with the other settings of `url`.
fn label_for(url: &str, database: &str) -> String {
    format!("{} (database {database})", selfrag_postgres::redact_url(url))
}

/// A driver error of step `what`: [`Error::Unavailable`] when the
/// connection failed, else [`Error::Backend`] with the server's message.
pub(crate) fn sql_err(what: &str, e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_none() {
        Error::unavailable(PG, format!("{what}: connection failed"), e)
    } else {
        let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        Error::backend(PG, format!("{what}: {msg}"), false, e)
    }
}

/// The connection settings of `config` and `tls` as libpq environment
/// variables for a child process: the password goes there, never into
/// arguments; the TLS variables are always set (empty is "unset" to libpq),
/// so none inherited from this process applies.
fn child_env(config: &Config, tls: &PgTls) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.push(("PGHOST", hosts.join(",")));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        env.push(("PGPORT", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.to_owned()));
    }
    if let Some(db) = config.get_dbname() {
        env.push(("PGDATABASE", db.to_owned()));
    }
    if let Some(pw) = config.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
    }
    if let Some(t) = config.get_connect_timeout() {
        env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
    }
    env.push(("PGAPPNAME", "selfrag-backup".to_owned()));
    env.extend(tls.libpq_env());
    env
}

/// Runs a tool, capturing stdout and stderr; a failure carries the tool's
/// stderr.
async fn run_tool(path: &Path, args: &[String], env: &[(&'static str, String)]) -> Result<String> {
    let mut cmd = Command::new(path);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let tool = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = cmd.output().await.map_err(|e| Error::unavailable(PG, format!("cannot run {}", path.display()), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        // Keep the end: the last lines say what failed.
        let tail: String = if stderr.len() > 4000 {
            let cut = stderr.char_indices().map(|(i, _)| i).find(|&i| i >= stderr.len() - 4000).unwrap_or(0);
            format!("...{}", &stderr[cut..])
        } else {
            stderr.to_owned()
        };
        Err(Error::Backend {
            backend: PG,
            message: format!("{tool} failed ({}): {tail}", out.status),
            retryable: false,
            source: None,
        })
    }
}

/// What the server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `SHOW server_version`.
    pub version: String,
    /// `SHOW server_version_num`.
    pub version_num: u32,
    /// `current_database()`.
    pub database: String,
}

async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num'), current_database()",
            &[],
        )
        .await
        .map_err(|e| sql_err("reading the server version", e))?;
    let num: String = row.get(1);
    Ok(ServerInfo {
        version: row.get(0),
        version_num: num.trim().parse().map_err(|_| Error::Incompatible {
            backend: PG,
            message: format!("server_version_num {num:?} is not a number"),
        })?,
        database: row.get(2),
    })
}

/// Refuses a `pg_dump` older (by major version) than the server: it could
/// not read the server's catalogs, or would silently miss features. Minor
/// versions do not change the dump format.
pub fn check_dump_version(pg_dump: &ToolVersion, server_num: u32) -> Result<()> {
    if pg_dump.major() < major_of(server_num) {
        return Err(Error::Incompatible {
            backend: PG,
            message: format!(
                "{} is `{}` (major {}), older than the server (major {}, server_version_num {server_num}); \
                 use pg_dump {} or newer",
                pg_dump.path.display(),
                pg_dump.text,
                pg_dump.major(),
                major_of(server_num),
                major_of(server_num)
            ),
        });
    }
    Ok(())
}

/// Takes a `pg_dump --format=custom` archive into `run` as
/// `<name>.dump` and adds its entry.
///
/// Before anything is written: the tool is found and its version compared
/// with the server's ([`check_dump_version`]), the schema and tables are
/// checked to exist (a full backup needs [`SELFRAG_TABLES`]). The archive is
/// written to a temporary name, fsynced, listed with `pg_restore --list` to
/// check it holds the expected tables, hashed, and renamed.
///
/// # Errors
/// [`Error::InvalidInput`] for bad names or URL; [`Error::Unavailable`] for
/// an unreachable server; [`Error::Incompatible`] for a missing or old
/// `pg_dump`; [`Error::NotFound`] (`what = "table"`) for a missing table;
/// [`Error::Backend`] with `pg_dump`'s stderr when it fails.
pub async fn backup_postgres<'r>(run: &'r mut BackupRun, opts: &PostgresBackup) -> Result<&'r Entry> {
    let started = Instant::now();
    let name = opts.entry_name();
    run.check_new_entry(&name)?;
    if let Some(s) = &opts.schema {
        check_ident("schema", s)?;
    }
    for t in &opts.tables {
        check_ident("tables", t)?;
    }
    if opts.compression.is_some_and(|c| c > 9) {
        return Err(Error::invalid("compression", "must be 0 to 9"));
    }
    let (config, tls) = parse_url(&opts.url)?;
    let pg_dump = opts.tools.version("pg_dump").await?;
    // pg_restore is needed to check the archive: find it before dumping.
    opts.tools.resolve("pg_restore")?;
    let client = connect(&config, &tls, &selfrag_postgres::redact_url(&opts.url)).await?;
    let server = server_info(&client).await?;
    check_dump_version(&pg_dump, server.version_num)?;

    let schema = opts.schema.clone().unwrap_or_else(|| "public".to_owned());
    let expected: Vec<String> = if opts.tables.is_empty() {
        SELFRAG_TABLES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        opts.tables.clone()
    };
    for t in &expected {
        let row = client
            .query_one("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL", &[&schema, t])
            .await
            .map_err(|e| sql_err("checking the tables", e))?;
        if !row.get::<_, bool>(0) {
            return Err(Error::NotFound { what: "table", id: format!("{schema}.{t} in database {}", server.database) });
        }
    }
    // Read before the dump's snapshot is taken: whatever the ledger gains
    // meanwhile is above this position, and a restore re-applies it.
    let ledger = erasures::position(&client, &schema).await?;
    drop(client);

    let file_name = format!("{name}.dump");
    let path = run.dir().join(&file_name);
    let tmp = fsutil::temp_name(&path);
    let mut args = vec!["--format=custom".to_owned(), "--no-password".to_owned(), format!("--file={}", tmp.display())];
    if let Some(level) = opts.compression {
        args.push(format!("--compress={level}"));
    }
    if opts.tables.is_empty() {
        if let Some(s) = &opts.schema {
            args.push(format!("--schema={s}"));
        }
    } else {
        for t in &opts.tables {
            args.push(format!("--table={schema}.{t}"));
        }
    }
    let env = child_env(&config, &tls);
    if let Err(e) = run_tool(&pg_dump.path, &args, &env).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let checked = async {
        fsutil::fsync_file(&tmp)?;
        let toc = list_archive(&opts.tools, &tmp).await?;
        check_toc(&toc, &schema, &expected)?;
        fsutil::sha256_file(&tmp)
    }
    .await;
    let (size, sha256) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fsutil::commit(&tmp, &path)?;
    let entry = Entry {
        kind: EntryKind::Postgres,
        name,
        files: vec![FileEntry { path: file_name, size, sha256 }],
        postgres: Some(PostgresInfo {
            database: server.database,
            schema: opts.schema.clone(),
            tables: expected,
            table_only: !opts.tables.is_empty(),
            server_version: server.version,
            server_version_num: server.version_num,
            pg_dump_version: pg_dump.text,
            erasures: ledger,
        }),
        qdrant: None,
        edge: None,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok(run.push(entry))
}

/// Refuses a `pg_restore` older (by major version) than the `pg_dump` that
/// wrote the archive, and a manifest whose `pg_dump_version` does not read
/// as a version: without it the check cannot be made, and skipping it could
/// let an old `pg_restore` fail half-way or misread the archive.
///
/// # Errors
/// [`Error::Incompatible`].
pub fn check_restore_version(pg_restore: &ToolVersion, info: &PostgresInfo) -> Result<()> {
    let dumped_by = parse_tool_version(&info.pg_dump_version).ok_or_else(|| {
        corrupt(format!(
            "the manifest's pg_dump_version {:?} is not a pg_dump version; cannot check that {} can read the archive",
            info.pg_dump_version,
            pg_restore.path.display()
        ))
    })?;
    if pg_restore.major() < major_of(dumped_by) {
        return Err(Error::Incompatible {
            backend: PG,
            message: format!(
                "{} is `{}`, older than the pg_dump that wrote the archive (`{}`)",
                pg_restore.path.display(),
                pg_restore.text,
                info.pg_dump_version
            ),
        });
    }
    Ok(())
}

/// Reads the whole archive (`pg_restore --file=/dev/null`), which
/// decompresses every data block: catches damage that `--list` (which reads
/// the table of contents only) does not.
async fn read_through(tools: &PgTools, archive: &Path) -> Result<()> {
    let pg_restore = tools.resolve("pg_restore")?;
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    run_tool(&pg_restore, &[format!("--file={null}"), archive.display().to_string()], &[])
        .await
        .map_err(|e| corrupt(format!("{} cannot be read through: {e}", archive.display())))?;
    Ok(())
}

/// One table of an archive's table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocTable {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Whether the archive holds its rows (`TABLE DATA`), not only its
    /// definition.
    pub has_data: bool,
}

/// The tables listed by `pg_restore --list <archive>`.
///
/// # Errors
/// [`Error::Incompatible`] without `pg_restore`, or when
/// `pg_restore` cannot read the archive (with its stderr).
pub async fn list_archive(tools: &PgTools, archive: &Path) -> Result<Vec<TocTable>> {
    let pg_restore = tools.resolve("pg_restore")?;
    let out = run_tool(&pg_restore, &["--list".to_owned(), archive.display().to_string()], &[])
        .await
        .map_err(|e| corrupt(format!("{} is not a readable pg_dump archive: {e}", archive.display())))?;
    Ok(parse_toc(&out))
}

/// Parses `pg_restore --list` output: lines such as
/// `215; 1259 16390 TABLE public users postgres` and
/// `3340; 0 16390 TABLE DATA public users postgres`.
pub fn parse_toc(listing: &str) -> Vec<TocTable> {
    let mut tables: Vec<TocTable> = Vec::new();
    for line in listing.lines() {
        if line.starts_with(';') {
            continue;
        }
        let Some((_, rest)) = line.split_once("; ") else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        // words: tableoid oid TYPE... schema name owner
        let (data, tail) = match words.get(2..) {
            Some(["TABLE", "DATA", tail @ ..]) => (true, tail),
            Some(["TABLE", tail @ ..]) => (false, tail),
            _ => continue,
        };
        let [schema, name, ..] = tail else { continue };
        match tables.iter_mut().find(|t| t.schema == *schema && t.name == *name) {
            Some(t) => t.has_data |= data,
            None => tables.push(TocTable { schema: (*schema).to_owned(), name: (*name).to_owned(), has_data: data }),
        }
    }
    tables
}

/// Checks that every expected table is in the archive with its data.
fn check_toc(toc: &[TocTable], schema: &str, expected: &[String]) -> Result<()> {
    let missing: Vec<&str> = expected
        .iter()
        .filter(|t| !toc.iter().any(|e| e.schema == schema && &e.name == *t && e.has_data))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(corrupt(format!(
            "the archive lacks the table(s) {} in schema {schema} (definition or data)",
            missing.join(", ")
        )))
    }
}

/// Verifies a Postgres entry of a run: its file's size and SHA-256 against
/// the manifest, then `pg_restore --list` for the expected tables; with
/// `deep`, also reads the whole archive (`pg_restore --file=/dev/null`),
/// which decompresses every data block.
///
/// # Errors
/// [`Error::Incompatible`] for a damaged or incomplete archive, or without
/// `pg_restore`.
pub async fn verify_postgres(run_dir: &Path, entry: &Entry, tools: &PgTools, deep: bool) -> Result<Vec<TocTable>> {
    let info = postgres_info(entry)?;
    check_entry_files(run_dir, entry)?;
    let archive = run_dir.join(&entry.files[0].path);
    let toc = list_archive(tools, &archive).await?;
    check_toc(&toc, info.schema.as_deref().unwrap_or("public"), &info.tables)?;
    if deep {
        read_through(tools, &archive).await?;
    }
    Ok(toc)
}

fn postgres_info(entry: &Entry) -> Result<&PostgresInfo> {
    match (&entry.postgres, entry.kind, entry.files.len()) {
        (Some(info), EntryKind::Postgres, 1) => Ok(info),
        _ => Err(corrupt(format!("entry `{}` is not a Postgres archive entry", entry.name))),
    }
}

/// How to restore: see [`restore_postgres`].
///
/// `Debug` shows the URL without its password
/// ([`redact_url`](selfrag_postgres::redact_url)).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresRestore {
    /// Connection URL of the target server. Its database is the target
    /// unless [`PostgresRestore::database`] names another; with
    /// `create_database`, it is also the database connected to for
    /// `CREATE DATABASE`, so it must exist (e.g. `postgres`). The password
    /// reaches `pg_restore` through its environment (`PGPASSWORD`), never
    /// its command line, and no error or `Debug` quotes it.
    pub url: String,
    /// Target database (default: the URL's).
    pub database: Option<String>,
    /// Create the target database when it does not exist. Default: false
    /// (a missing database is [`Error::NotFound`]).
    pub create_database: bool,
    /// Replace what exists: `pg_restore --clean --if-exists` drops the
    /// archive's objects before recreating them. Default: false, and then a
    /// target that already holds any of the archive's tables is refused with
    /// [`Error::Conflict`] before anything is changed.
    pub clean: bool,
    /// `pg_restore --jobs`: parallel restore. Default: `None`, which
    /// restores in one transaction (`--single-transaction`): a failed
    /// restore leaves the target as it was. With jobs the restore is not
    /// atomic.
    pub jobs: Option<u32>,
    /// Where the tools are.
    pub tools: PgTools,
    /// Copies of an erasure ledger to honour besides the databases' own
    /// (files `selfrag erasures --json` wrote; see
    /// [`read_erasures_file`](crate::read_erasures_file)): for a restore
    /// after the server that held the ledger was lost. Default: none.
    pub erasures_files: Vec<std::path::PathBuf>,
}

impl fmt::Debug for PostgresRestore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresRestore")
            .field("url", &selfrag_postgres::redact_url(&self.url))
            .field("database", &self.database)
            .field("create_database", &self.create_database)
            .field("clean", &self.clean)
            .field("jobs", &self.jobs)
            .field("tools", &self.tools)
            .field("erasures_files", &self.erasures_files)
            .finish()
    }
}

impl PostgresRestore {
    /// Restore into the URL's database, which must not hold the tables yet.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: None,
            create_database: false,
            clean: false,
            jobs: None,
            tools: PgTools::new(),
            erasures_files: Vec::new(),
        }
    }

    /// Adds a file to [`PostgresRestore::erasures_files`].
    pub fn erasures_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.erasures_files.push(path.into());
        self
    }

    /// Sets [`PostgresRestore::database`].
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// Sets [`PostgresRestore::create_database`].
    pub fn create_database(mut self, create: bool) -> Self {
        self.create_database = create;
        self
    }

    /// Sets [`PostgresRestore::clean`].
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Sets [`PostgresRestore::jobs`].
    pub fn jobs(mut self, jobs: u32) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Sets [`PostgresRestore::tools`].
    pub fn tools(mut self, tools: PgTools) -> Self {
        self.tools = tools;
        self
    }
}

/// What [`restore_postgres`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresRestoreReport {
    /// The entry restored.
    pub entry: String,
    /// The target database.
    pub database: String,
    /// Whether it was created.
    pub created_database: bool,
    /// The tables restored (`schema.table`).
    pub tables: Vec<String>,
    /// The erasure ledger's position in the archive, as the manifest
    /// recorded it.
    pub backup_ledger: Option<crate::LedgerPosition>,
    /// The ledgers read before the restore: the target database when it
    /// existed, the URL's database when it is another, and each of
    /// [`PostgresRestore::erasures_files`] (as `file <path>`).
    pub ledger_sources: Vec<String>,
    /// The users erased again after the restore: erasures those ledgers
    /// held and the archive did not.
    pub erasures_reapplied: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Restores a Postgres entry of the run in `run_dir` (`entry`: its name, or
/// `None` for the run's first Postgres entry).
///
/// Order, so that nothing is touched unless everything checks out: read the
/// manifest; check the archive's size and SHA-256; check `pg_restore`'s
/// major version is at least the dumping `pg_dump`'s; list the archive
/// (`pg_restore --list`) and check its tables; read every data block
/// (`pg_restore --file=/dev/null`); connect; create the database if asked
/// and missing; refuse a target holding any of the
/// archive's tables unless `clean`; then run `pg_restore --no-owner
/// --no-privileges --exit-on-error` (and `--single-transaction` unless
/// `jobs`). A database created by the restore is dropped again when a
/// later step fails, so a retry finds the same state. Owners and grants are not restored: the restoring role owns
/// everything, and roles need not exist on the target.
///
/// A table-only archive (`--table`) restores into a database that already
/// has the rest of the schema (its foreign keys reference `users`): use
/// `clean` to replace the table there.
///
/// # Errors
/// [`Error::NotFound`] for a missing manifest, entry or database;
/// [`Error::Incompatible`] for a damaged archive or a too old `pg_restore`;
/// [`Error::Conflict`] for a non-empty target without `clean`;
/// [`Error::Incompatible`] also for a missing tool or an unreadable
/// `pg_dump_version` in the manifest; [`Error::Unavailable`] for an
/// unreachable server; [`Error::Backend`]
/// with `pg_restore`'s stderr when it fails.
pub async fn restore_postgres(
    run_dir: &Path,
    entry: Option<&str>,
    opts: &PostgresRestore,
) -> Result<PostgresRestoreReport> {
    let started = Instant::now();
    let manifest = Manifest::read(run_dir)?;
    let entry = match entry {
        Some(name) => manifest.entry(name)?,
        None => manifest.first_of(EntryKind::Postgres)?,
    };
    let info = postgres_info(entry)?;
    let (mut config, tls) = parse_url(&opts.url)?;
    let database = match &opts.database {
        Some(d) => d.clone(),
        None => config.get_dbname().map(str::to_owned).ok_or_else(|| Error::invalid("url", "names no database"))?,
    };
    check_dbname(&database)?;
    if opts.jobs == Some(0) {
        return Err(Error::invalid("jobs", "must be at least 1"));
    }
    // Ledger copies are read first: a bad file stops the restore before
    // anything is touched.
    let mut ledgers = Vec::new();
    let mut ledger_sources = Vec::new();
    for file in &opts.erasures_files {
        ledgers.push(erasures::read_erasures_file(file)?);
        ledger_sources.push(format!("file {}", file.display()));
    }

    check_entry_files(run_dir, entry)?;
    let pg_restore = opts.tools.version("pg_restore").await?;
    check_restore_version(&pg_restore, info)?;
    let archive = run_dir.join(&entry.files[0].path);
    let toc = list_archive(&opts.tools, &archive).await?;
    let schema = info.schema.as_deref().unwrap_or("public");
    check_toc(&toc, schema, &info.tables)?;
    // A damaged data block with a matching checksum (a manifest rewritten
    // after the damage) passes the checks above: read every block before
    // the target is touched.
    read_through(&opts.tools, &archive).await?;

    // The target database.
    let mut created = false;
    let admin_db = config.get_dbname().map(str::to_owned);
    let admin = connect(&config, &tls, &selfrag_postgres::redact_url(&opts.url)).await?;
    let exists = admin
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&database])
        .await
        .map_err(|e| sql_err("looking up the target database", e))?
        .get::<_, bool>(0);
    if !exists {
        if !opts.create_database {
            return Err(Error::NotFound { what: "database", id: database });
        }
        admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .map_err(|e| sql_err(&format!("creating database {database}"), e))?;
        created = true;
    }
    // Erasures the archive may not hold, read before anything is touched: a
    // clean restore replaces the target's own ledger.
    if admin_db.as_deref() != Some(database.as_str()) {
        let entries = erasures::read_all(&admin, schema).await?;
        ledger_sources.push(admin_db.clone().unwrap_or_else(|| "postgres".to_owned()));
        ledgers.push(entries);
    }
    drop(admin);
    if exists {
        let mut target_config = config.clone();
        target_config.dbname(&database);
        let target = connect(&target_config, &tls, &label_for(&opts.url, &database)).await?;
        ledgers.push(erasures::read_all(&target, schema).await?);
        ledger_sources.push(database.clone());
    }
    let pending = erasures::merge(ledgers);
    let result = async {
        restore_into(&mut config, &tls, &database, opts, &toc, &archive, &pg_restore.path).await?;
        reapply_erasures(&config, &tls, &label_for(&opts.url, &database), schema, &pending).await
    }
    .await;
    if result.is_err() && created {
        // Leave no half-restored database behind that a retry would then
        // refuse as non-empty (nor one holding users erased since the
        // backup).
        config.dbname(admin_db.as_deref().unwrap_or("postgres"));
        let label = match &admin_db {
            Some(_) => selfrag_postgres::redact_url(&opts.url),
            None => label_for(&opts.url, "postgres"),
        };
        if let Err(drop_err) = drop_database(&config, &tls, &label, &database).await {
            tracing::warn!(database, error = %drop_err, "could not drop the database created for a failed restore");
        }
    }
    let reapplied = result?;
    Ok(PostgresRestoreReport {
        entry: entry.name.clone(),
        database,
        created_database: created,
        tables: toc.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect(),
        backup_ledger: info.erasures,
        ledger_sources,
        erasures_reapplied: reapplied,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Re-applies `pending` erasures in the restored database (see
/// [`erasures`]), retrying a transient failure: each batch is idempotent.
/// A failure that persists names the users still to erase, so that an
/// operator can finish with `selfrag erase-user`.
async fn reapply_erasures(
    config: &Config,
    tls: &PgTls,
    label: &str,
    schema: &str,
    pending: &[LedgerEntry],
) -> Result<u64> {
    if pending.is_empty() {
        return Ok(0);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let run = async {
            let mut client = connect(config, tls, label).await?;
            erasures::reapply(&mut client, schema, pending).await
        }
        .await;
        match run {
            Ok(done) => return Ok(u64::try_from(done.len()).unwrap_or(u64::MAX)),
            Err(e) if e.is_retryable() && attempt < 4 => {
                tracing::warn!(attempt, error = %e, "re-applying erasures after the restore failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250 * attempt)).await;
            }
            Err(e) => {
                let ids: Vec<String> = pending.iter().take(20).map(|p| p.user_id.to_string()).collect();
                let more = pending.len().saturating_sub(ids.len());
                return Err(Error::Backend {
                    backend: PG,
                    message: format!(
                        "the archive was restored, but re-applying {} erasure(s) recorded after the backup failed \
                         ({e}); the restored data may hold erased users until they are erased again: {}{}",
                        pending.len(),
                        ids.join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    ),
                    retryable: false,
                    source: Some(Box::new(e)),
                });
            }
        }
    }
}

/// Drops `database` (created by a restore that then failed), ending any
/// session still attached (`WITH (FORCE)` since Postgres 13).
async fn drop_database(config: &Config, tls: &PgTls, label: &str, database: &str) -> Result<()> {
    let admin = connect(config, tls, label).await?;
    let server = server_info(&admin).await?;
    let force = if server.version_num >= 130_000 { " WITH (FORCE)" } else { "" };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{database}\"{force}"))
        .await
        .map_err(|e| sql_err(&format!("dropping database {database}"), e))
}

/// The part of a restore that runs against the target database: the
/// emptiness check and `pg_restore`.
async fn restore_into(
    config: &mut Config,
    tls: &PgTls,
    database: &str,
    opts: &PostgresRestore,
    toc: &[TocTable],
    archive: &Path,
    pg_restore: &Path,
) -> Result<()> {
    config.dbname(database);
    let target = connect(config, tls, &label_for(&opts.url, database)).await?;
    let mut present = Vec::new();
    for t in toc {
        let row = target
            .query_one("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL", &[&t.schema, &t.name])
            .await
            .map_err(|e| sql_err("checking the target database", e))?;
        if row.get::<_, bool>(0) {
            present.push(format!("{}.{}", t.schema, t.name));
        }
    }
    drop(target);
    if !present.is_empty() && !opts.clean {
        return Err(Error::Conflict {
            what: "restore target",
            id: format!(
                "database {database} already holds {}; restore into an empty database or ask for a clean restore",
                present.join(", ")
            ),
        });
    }

    let mut args = vec![
        "--no-owner".to_owned(),
        "--no-privileges".to_owned(),
        "--exit-on-error".to_owned(),
        "--no-password".to_owned(),
        format!("--dbname={database}"),
    ];
    match opts.jobs {
        Some(n) => args.push(format!("--jobs={n}")),
        None => args.push("--single-transaction".to_owned()),
    }
    if opts.clean {
        args.push("--clean".to_owned());
        args.push("--if-exists".to_owned());
    }
    args.push(archive.display().to_string());
    run_tool(pg_restore, &args, &child_env(config, tls)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions() {
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"), Some(150020));
        assert_eq!(parse_tool_version("pg_restore (PostgreSQL) 16beta1"), Some(160000));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24"), Some(90624));
        assert_eq!(parse_tool_version("nothing here"), None);
        assert_eq!(major_of(150020), 15);
        assert_eq!(major_of(90624), 906, "9.6 was a major version");
    }

    #[test]
    fn old_pg_dump_is_refused() {
        let v = |num| ToolVersion { path: "pg_dump".into(), text: "pg_dump (PostgreSQL) x".into(), num };
        assert!(check_dump_version(&v(150020), 150020).is_ok());
        assert!(check_dump_version(&v(150002), 150020).is_ok(), "minor versions do not matter");
        assert!(check_dump_version(&v(160001), 150020).is_ok());
        let e = check_dump_version(&v(140011), 150020).unwrap_err();
        assert!(matches!(e, Error::Incompatible { .. }), "{e}");
        assert!(e.to_string().contains("older than the server"), "{e}");
    }

    #[test]
    fn unreadable_dump_version_in_the_manifest_is_refused() {
        let restore =
            ToolVersion { path: "pg_restore".into(), text: "pg_restore (PostgreSQL) 15.20".into(), num: 150020 };
        let info = |v: &str| PostgresInfo {
            database: "app".into(),
            schema: None,
            tables: vec![],
            table_only: false,
            server_version: "15.20".into(),
            server_version_num: 150020,
            pg_dump_version: v.into(),
            erasures: None,
        };
        assert!(check_restore_version(&restore, &info("pg_dump (PostgreSQL) 15.2")).is_ok());
        let e = check_restore_version(&restore, &info("pg_dump (PostgreSQL) 16.1")).unwrap_err();
        assert!(matches!(e, Error::Incompatible { .. }), "{e}");
        let e = check_restore_version(&restore, &info("garbled")).unwrap_err();
        assert!(matches!(e, Error::Incompatible { .. }), "{e}");
        assert!(e.to_string().contains("not a pg_dump version"), "{e}");
    }

    #[test]
    fn a_missing_tool_is_not_retryable() {
        let e = PgTools::new().bin_dir("/nonexistent/pg/bin").resolve("pg_dump").unwrap_err();
        assert!(matches!(e, Error::Incompatible { .. }), "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("pg_dump not found") && e.to_string().contains("bin_dir"), "{e}");
    }

    #[test]
    fn toc_parsing() {
        let listing = ";\n; Archive created at 2025-01-01\n;\n\
            5; 2615 16385 SCHEMA - s1 postgres\n\
            215; 1259 16390 TABLE s1 users postgres\n\
            216; 1259 16391 TABLE s1 memory_logs postgres\n\
            3340; 0 16390 TABLE DATA s1 users postgres\n\
            3200; 1259 16400 INDEX s1 memory_logs_user_ts postgres\n";
        let toc = parse_toc(listing);
        assert_eq!(toc.len(), 2);
        assert!(toc[0].has_data && toc[0].name == "users" && toc[0].schema == "s1");
        assert!(!toc[1].has_data);
        assert!(check_toc(&toc, "s1", &["users".into()]).is_ok());
        assert!(check_toc(&toc, "s1", &["memory_logs".into()]).is_err(), "no data for memory_logs");
        assert!(check_toc(&toc, "public", &["users".into()]).is_err());
    }

    #[test]
    fn the_password_goes_to_the_environment_only() {
        let (config, tls) = parse_url("postgres://u:s3cret@db.example:5433/app").unwrap();
        let env = child_env(&config, &tls);
        assert!(env.contains(&("PGPASSWORD", "s3cret".to_owned())));
        assert!(env.contains(&("PGHOST", "db.example".to_owned())));
        assert!(env.contains(&("PGPORT", "5433".to_owned())));
        assert!(env.contains(&("PGDATABASE", "app".to_owned())));
        // Always set, so that none inherited from this process applies.
        assert!(env.contains(&("PGSSLMODE", "prefer".to_owned())));
        assert!(env.contains(&("PGSSLROOTCERT", String::new())));
    }

    /// The URL's TLS options reach the tools through their environment
    /// (libpq's variables), not the command line.
    #[test]
    fn tls_options_go_to_the_environment() {
        let url =
            "postgres://u:pw@db.example/app?sslmode=verify-full&sslrootcert=/etc/ca.crt&sslcert=/c.crt&sslkey=/c.key";
        let (config, tls) = parse_url(url).unwrap();
        let env = child_env(&config, &tls);
        for pair in [
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/etc/ca.crt"),
            ("PGSSLCERT", "/c.crt"),
            ("PGSSLKEY", "/c.key"),
            ("PGPASSWORD", "pw"),
        ] {
            assert!(env.contains(&(pair.0, pair.1.to_owned())), "{pair:?} in {env:?}");
        }
        assert_eq!(
            parse_url("postgres://h/d?sslmode=require&sslrootcert=system").unwrap_err().field(),
            Some("sslmode")
        );
    }

    /// Every form a password can take in a libpq URL or `key=value`
    /// string: `Debug` of the options and the parse errors never show it.
    #[test]
    fn no_password_in_debug_or_parse_errors() {
        const PW: &str = "Bk9SecretPw";
        for url in [
            format!("postgres://u:{PW}@h/d"),
            format!("postgres://u:p@{PW}@h/d"),
            format!("postgres://u:{PW}/x@h/d"),
            format!("postgres://h/d?user=u&password={PW}"),
            format!("host=h password = '{PW} with spaces' user=u"),
            format!("host=h password={PW} {PW}x=y"),
            format!("host=h password={PW} oops"),
            format!("postgres://u:{PW}@h:badport/d"),
        ] {
            let backup = format!("{:?}", PostgresBackup::new(url.as_str()).schema("s"));
            let restore = format!("{:?}", PostgresRestore::new(url.as_str()).database("x"));
            assert!(!backup.contains(PW) && backup.contains("schema: Some(\"s\")"), "{url}: {backup}");
            assert!(!restore.contains(PW) && restore.contains("database: Some(\"x\")"), "{url}: {restore}");
            if let Err(e) = parse_url(&url) {
                assert!(!format!("{e} {e:?}").contains(PW), "{url}: {e}");
            }
        }
    }

    /// A connection error names the target through the redacted URL.
    #[tokio::test]
    async fn connection_errors_name_no_password() {
        const PW: &str = "Bk9SecretPw";
        for url in [format!("postgres://u:{PW}@127.0.0.1:1/d"), format!("host=127.0.0.1 port=1 password='{PW} x'")] {
            let (config, tls) = parse_url(&url).unwrap();
            let err = connect(&config, &tls, &selfrag_postgres::redact_url(&url)).await.unwrap_err();
            let mut text = format!("{err} {err:?}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(&format!(" {s} {s:?}"));
                source = s.source();
            }
            assert!(!text.contains(PW), "{url}: {text}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_dbname("selfrag_restore_0b1c-2").is_ok());
        assert!(check_dbname("postgres://x").is_err());
        assert!(check_dbname("-x").is_err());
        assert!(check_ident("schema", "Bad").is_err());
    }
}
