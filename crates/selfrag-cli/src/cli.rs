//! The command line: global settings (flags with environment fallbacks) and
//! the subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use selfrag_core::Distance;

/// Operator tool for selfrag storage: migrations, backups, restore, retention
/// and deployment checks.
///
/// Exit codes: 0 ok; 1 a check or an operation failed; 2 usage or
/// configuration error (also rejected credentials, a database that does not
/// exist, missing pg_dump / pg_restore, a backup directory that cannot be
/// created); 3 a service was unreachable (and nothing else failed).
#[derive(Debug, Parser)]
#[command(name = "selfrag", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the services are, shared by every subcommand. A service whose URL
/// is unset is "not configured": commands that need it fail with exit 2,
/// `doctor` skips it.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Postgres schema holding the tables (must exist; default: the server's
    /// search_path, normally `public`).
    #[arg(long, env = "SELFRAG_POSTGRES_SCHEMA", global = true)]
    pub(crate) schema: Option<String>,
    /// Redis URL; several comma-separated URLs are the seed nodes of a
    /// Redis Cluster.
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// `1`: --redis-url names Redis Cluster seeds even when it is one URL;
    /// `0`: one server (default: a cluster when there are several URLs).
    #[arg(long, env = "SELFRAG_REDIS_CLUSTER", global = true)]
    pub(crate) redis_cluster: Option<String>,
    /// Redis key prefix.
    #[arg(long, env = "SELFRAG_REDIS_PREFIX", global = true, default_value = "selfrag:")]
    pub(crate) redis_prefix: String,
    /// Qdrant gRPC URL (port 6334).
    #[arg(long, env = "QDRANT_URL", global = true, hide_env_values = true)]
    pub(crate) qdrant_url: Option<String>,
    /// Qdrant REST URL for snapshot transfers (default: the gRPC URL with
    /// port 6333).
    #[arg(long, env = "QDRANT_REST_URL", global = true, hide_env_values = true)]
    pub(crate) qdrant_rest_url: Option<String>,
    /// Qdrant API key.
    #[arg(long, env = "QDRANT_API_KEY", global = true, hide_env_values = true)]
    pub(crate) qdrant_api_key: Option<String>,
    /// Qdrant collection name.
    #[arg(long, env = "SELFRAG_QDRANT_COLLECTION", global = true, default_value = "selfrag_chunks")]
    pub(crate) collection: String,
    /// Vector dimension; when set, `doctor` checks the collection (and the
    /// embedded index) against it.
    #[arg(long, env = "SELFRAG_VECTOR_DIMENSION", global = true)]
    pub(crate) vector_dimension: Option<usize>,
    /// Vector distance, checked with --vector-dimension.
    #[arg(long, env = "SELFRAG_VECTOR_DISTANCE", global = true, value_enum, default_value_t = DistanceArg::Cosine)]
    pub(crate) distance: DistanceArg,
    /// Directory of the embedded (qdrant-edge) vector index.
    #[arg(long, env = "SELFRAG_EDGE_PATH", global = true)]
    pub(crate) edge_path: Option<PathBuf>,
    /// Directory the backups are written to and read from.
    #[arg(long, env = "SELFRAG_BACKUP_DIR", global = true)]
    pub(crate) backup_dir: Option<PathBuf>,
    /// Directory holding `pg_dump` and `pg_restore` (default: found on PATH).
    #[arg(long, env = "SELFRAG_PG_BIN_DIR", global = true)]
    pub(crate) pg_bin_dir: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
}

/// The vector distances, as command-line values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DistanceArg {
    Cosine,
    Dot,
    Euclid,
    Manhattan,
}

impl From<DistanceArg> for Distance {
    fn from(d: DistanceArg) -> Self {
        match d {
            DistanceArg::Cosine => Distance::Cosine,
            DistanceArg::Dot => Distance::Dot,
            DistanceArg::Euclid => Distance::Euclid,
            DistanceArg::Manhattan => Distance::Manhattan,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply or inspect the Postgres migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Check a deployment: migrations, indexes, Redis TTLs, the Qdrant
    /// collection. Services that are not configured are skipped.
    Doctor,
    /// Back up into a new run directory under --backup-dir (`all`: Postgres,
    /// which must be configured, plus Qdrant and the embedded index when
    /// configured). A failing store does not stop the others.
    Backup(BackupArgs),
    /// Check a backup run: manifest, sizes, SHA-256, and that pg_restore reads
    /// the Postgres archives.
    Verify(VerifyArgs),
    /// Restore one store from a backup run (checked before anything is
    /// touched).
    Restore(RestoreArgs),
    /// Delete backup runs (and, with Qdrant configured, server snapshots)
    /// older than --keep-days; never the newest complete run.
    Prune(PruneArgs),
    /// Erase one user from every configured store (vectors named by
    /// --vectors-tenant, rate-limit state, sessions in Redis and Postgres,
    /// memory logs, the user row), then record the erasure in the ledger.
    /// Resumable: after a failure, run it again. Configure every store the
    /// services use (DATABASE_URL is required).
    EraseUser(EraseUserArgs),
    /// Write everything stored about one user as JSON lines (the user,
    /// memory logs, sessions, the payloads of the chunks named by
    /// --vectors-tenant) to --out (or stdout).
    ExportUser(ExportUserArgs),
    /// List the erasure ledger (user ids and times; no personal data), e.g.
    /// to keep a copy beside the backups.
    Erasures(ErasuresArgs),
}

/// The user and the vectors that hold the user's chunks.
#[derive(Debug, Args)]
pub(crate) struct UserScopeArgs {
    /// The user's id (a UUID).
    pub(crate) user: String,
    /// A vector tenant holding the user's chunks (repeatable). Without
    /// --vectors-filter, every chunk of the tenant is the user's.
    #[arg(long = "vectors-tenant", value_name = "TENANT")]
    pub(crate) vectors_tenants: Vec<String>,
    /// Only the chunks passing this filter in each --vectors-tenant: a
    /// selfrag filter as JSON, e.g.
    /// '{"eq":{"field":{"extra":"user_id"},"value":"<uuid>"}}'.
    #[arg(long = "vectors-filter", value_name = "JSON")]
    pub(crate) vectors_filter: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EraseUserArgs {
    #[command(flatten)]
    pub(crate) scope: UserScopeArgs,
    /// Count what would be erased; delete and record nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExportUserArgs {
    #[command(flatten)]
    pub(crate) scope: UserScopeArgs,
    /// The file to write (must not exist; written under a temporary name
    /// and renamed when complete). Default: stdout (not with --json).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ErasuresArgs {
    /// Only the records after this position (`seq`).
    #[arg(long, default_value_t = 0)]
    pub(crate) after: u64,
}

/// What `backup` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackupTarget {
    /// Postgres (required: DATABASE_URL), plus Qdrant and the embedded index
    /// when configured.
    All,
    /// The Postgres database (or --schema).
    Postgres,
    /// The Qdrant collection (a snapshot).
    Qdrant,
    /// The embedded index directory (it must not be open).
    Edge,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// What to back up.
    #[arg(value_enum, default_value_t = BackupTarget::All)]
    pub(crate) target: BackupTarget,
    /// Back up only these Postgres tables (repeatable, e.g. `--table
    /// memory_logs`) instead of the whole database or schema.
    #[arg(long = "table")]
    pub(crate) tables: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The run to verify (a directory name under --backup-dir; default: the
    /// newest complete run, holding --kind when given).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// Without --run: the newest complete run holding an entry of this kind.
    #[arg(long, value_enum, conflicts_with = "run")]
    pub(crate) kind: Option<RestoreTarget>,
    /// Also read every data block of the Postgres archives.
    #[arg(long)]
    pub(crate) deep: bool,
}

/// What `restore` restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RestoreTarget {
    /// A Postgres archive, into --database (or the URL's database).
    Postgres,
    /// A Qdrant snapshot, into --collection (created; an existing one only
    /// with --replace).
    Qdrant,
    /// An embedded index copy, into --edge-path (missing or empty).
    Edge,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// What to restore.
    #[arg(value_enum)]
    pub(crate) target: RestoreTarget,
    /// The run to restore from (default: the newest complete run holding an
    /// entry of this kind, and named --entry when given).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// The entry of the run (default: the run's first entry of that kind).
    #[arg(long)]
    pub(crate) entry: Option<String>,
    /// Postgres: the target database (default: the URL's database).
    #[arg(long)]
    pub(crate) database: Option<String>,
    /// Postgres: create the target database if it does not exist.
    #[arg(long)]
    pub(crate) create_database: bool,
    /// Postgres: drop and recreate the archive's objects that exist in the
    /// target (default: refuse a target that holds any of its tables).
    #[arg(long)]
    pub(crate) clean: bool,
    /// Postgres: parallel restore with this many jobs (not atomic).
    #[arg(long)]
    pub(crate) jobs: Option<u32>,
    /// Postgres: a copy of the erasure ledger (`selfrag erasures --json`
    /// output) whose erasures the restore also re-applies; for when the
    /// server that held the ledger is lost. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) erasures_file: Vec<std::path::PathBuf>,
    /// Qdrant: replace the collection if it exists (default: refuse, so a
    /// restore never silently overwrites live vectors).
    #[arg(long)]
    pub(crate) replace: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Keep runs that started less than this many days ago.
    #[arg(long, default_value_t = 30)]
    pub(crate) keep_days: u32,
    /// Only say what would be deleted.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MigrateAction {
    /// Apply the pending migrations (under an advisory lock).
    Up,
    /// Show applied, pending and edited migrations; exit 1 unless up to date.
    Status,
}

impl From<RestoreTarget> for selfrag_backup::EntryKind {
    fn from(t: RestoreTarget) -> Self {
        match t {
            RestoreTarget::Postgres => selfrag_backup::EntryKind::Postgres,
            RestoreTarget::Qdrant => selfrag_backup::EntryKind::Qdrant,
            RestoreTarget::Edge => selfrag_backup::EntryKind::Edge,
        }
    }
}
