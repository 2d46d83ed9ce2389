//! Embedded, checksummed Postgres migrations for selfrag storage.
//!
//! The SQL lives in the workspace's top-level `migrations/` directory as
//! `NNN_name.sql` files (`001_create_users.sql`, ...). The build script embeds
//! every file, so a binary carries its schema and needs no files at run time;
//! versions must run 1, 2, 3, ... without gaps or the crate does not build.
//!
//! # Applying
//! [`migrate`] applies the pending migrations in version order, each in its own
//! transaction together with its row in the history table
//! [`HISTORY_TABLE`] (`selfrag_schema_history`: version, name, applied_on,
//! checksum), so a migration is either fully applied and recorded or not at
//! all. The mechanics (history table, per-migration transactions, divergence
//! checks) are [refinery]'s; this crate adds what refinery lacks:
//!
//! - **An advisory lock.** [`migrate`] holds `pg_advisory_lock` on a key
//!   derived from the target schema for the whole run, on the same connection,
//!   so services that start together queue up and each migration is applied
//!   exactly once; the ones that wait find nothing left to do.
//! - **Clear refusals**, as [`Error`] variants for which
//!   [`Error::is_incompatible`] is true: an applied migration whose embedded
//!   SQL or name changed ([`Error::Edited`]), a database migrated by a newer
//!   build ([`Error::NotInBuild`]), a migration that was skipped while later
//!   ones were applied ([`Error::Skipped`]), or a history row that is not a
//!   migration record ([`Error::CorruptHistory`]). Nothing is applied in those
//!   cases. The rules live in [`status`] alone: [`migrate`] runs it under the
//!   lock and lets refinery apply only when it finds no problem (refinery
//!   itself would panic on a malformed row).
//! - **A status report** ([`status`]): applied, pending, edited and unknown
//!   migrations with their checksums, read without writing anything.
//!
//! Migrations go into the first existing schema of the session's
//! `search_path` (normally `public`), history table included, so one database
//! can hold several independent installations in separate schemas.
//!
//! # Checksums
//! The checksum is refinery's: SipHash-1-3 over the migration's name, version
//! and SQL text, recorded as a decimal `u64`. It detects edits, including
//! whitespace and comment changes; it is not a cryptographic hash.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut client, connection) =
//!     tokio_postgres::connect("postgres://postgres@127.0.0.1/app", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! let report = selfrag_migrations::migrate(&mut client).await?;
//! println!("applied {} migrations", report.applied.len());
//! for m in selfrag_migrations::status(&client).await?.migrations {
//!     println!("{:03} {} {:?}", m.version, m.name, m.state);
//! }
//! # Ok(()) }
//! ```

use std::fmt;

use refinery::{Migration, Runner};
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Client;

pub use tokio_postgres;

/// The table that records applied migrations, created in the target schema.
pub const HISTORY_TABLE: &str = "selfrag_schema_history";

/// One migration embedded in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedMigration {
    /// Its version, from the file name (`003_...` is 3).
    pub version: u32,
    /// Its name, from the file name (`add_memory_logs_table`).
    pub name: &'static str,
    /// The file it came from (`003_add_memory_logs_table.sql`).
    pub file: &'static str,
    /// The SQL, applied with the simple query protocol (several statements
    /// allowed).
    pub sql: &'static str,
}

/// Every embedded migration, in version order (1, 2, 3, ...).
pub const MIGRATIONS: &[EmbeddedMigration] = include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

impl EmbeddedMigration {
    /// The checksum recorded in [`HISTORY_TABLE`] when this migration is
    /// applied.
    pub fn checksum(&self) -> u64 {
        self.to_refinery().checksum()
    }

    fn to_refinery(self) -> Migration {
        // The build script only accepts `NNN_[a-z0-9_]+` names, which always
        // form a valid refinery name.
        Migration::unapplied(&format!("V{}__{}", self.version, self.name), self.sql)
            .expect("build script checked the migration name")
    }
}

/// The latest version this build knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Errors of [`migrate`] and [`status`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An applied migration's embedded SQL or name differs from what was
    /// applied. Applied migrations are history: add a new migration instead.
    #[error(
        "migration {version} `{name}` was changed after it was applied (recorded checksum {recorded}, \
         this build has {embedded}); applied migrations must not be edited, add a new migration instead"
    )]
    Edited {
        /// The version.
        version: u32,
        /// The name as this build has it.
        name: String,
        /// The checksum in the history table.
        recorded: u64,
        /// The checksum of the embedded migration.
        embedded: u64,
    },

    /// The database has a migration applied that this build does not contain:
    /// a newer build migrated it. Running older code on it is refused.
    #[error(
        "the database has migration {version} `{name}` applied, which this build does not contain \
         (this build knows versions 1 to {latest}); it was migrated by a newer build"
    )]
    NotInBuild {
        /// The version found in the history table.
        version: u32,
        /// Its recorded name.
        name: String,
        /// The latest version this build knows.
        latest: u32,
    },

    /// A migration was never applied although later ones were: the history
    /// has a gap (e.g. a migration added with an old version number).
    #[error("migration {version} `{name}` was never applied, but later migrations were; the history has a gap")]
    Skipped {
        /// The version of the skipped migration.
        version: u32,
        /// Its name.
        name: String,
    },

    /// A row of the history table is not a migration record (a NULL, a
    /// non-numeric checksum, an `applied_on` that is not RFC 3339, a negative
    /// version): someone edited the table by hand.
    #[error("the migration history is corrupt: the row for version {version} {problem}; fix it by hand")]
    CorruptHistory {
        /// The row's version.
        version: i32,
        /// What is wrong with it.
        problem: String,
    },

    /// The session's `search_path` names no existing schema, so there is
    /// nowhere to create tables.
    #[error("no schema to migrate: the search_path names no existing schema")]
    NoSchema,

    /// Applying a migration (or reading the history) failed in the database;
    /// migrations applied before the failure stay applied and recorded.
    #[error("applying migrations failed: {message}")]
    Failed {
        /// What failed, as refinery reports it.
        message: String,
        /// Refinery's error, whose source is the driver's error.
        #[source]
        source: refinery::Error,
    },

    /// A query of this crate's own (lock, status) failed.
    #[error("postgres error while {action}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Error {
    /// Whether the database holds a history this build cannot work with
    /// ([`Error::Edited`], [`Error::NotInBuild`], [`Error::Skipped`],
    /// [`Error::CorruptHistory`], [`Error::NoSchema`]). Retrying does not
    /// help; a person must look.
    pub fn is_incompatible(&self) -> bool {
        matches!(
            self,
            Error::Edited { .. }
                | Error::NotInBuild { .. }
                | Error::Skipped { .. }
                | Error::CorruptHistory { .. }
                | Error::NoSchema
        )
    }

    /// The driver error underneath, if the failure came from Postgres or the
    /// connection (for SQLSTATE inspection and retry decisions).
    pub fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = source {
            if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
                return Some(pg);
            }
            source = err.source();
        }
        None
    }

    fn db(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Database { action, source }
    }
}

fn version_u32(m: &Migration) -> u32 {
    // refinery's versions are i32; ours come from `u32` file names and the
    // history table only holds what was written from them.
    u32::try_from(m.version()).unwrap_or(0)
}

fn map_refinery(err: refinery::Error) -> Error {
    Error::Failed { message: err.to_string(), source: err }
}

/// What one [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The migrations this call applied, in order (empty when the schema was
    /// already up to date).
    pub applied: Vec<Applied>,
}

/// A migration applied by a [`migrate`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its version.
    pub version: u32,
    /// Its name.
    pub name: String,
}

/// Applies every pending migration to the first existing schema of the
/// session's `search_path`, under an advisory lock.
///
/// The lock is a session-level `pg_advisory_lock` on a key derived from the
/// schema name, taken and released on `client`'s connection; the session's
/// `statement_timeout` is lifted while waiting for it and applying, then
/// restored. If the connection is dropped mid-way, Postgres releases the lock
/// itself. Callers that borrow `client` from a pool should not return it to
/// the pool if this future is cancelled (the lock would stay held): detach it.
///
/// # Errors
/// The incompatible-history variants of [`Error`] (nothing applied),
/// [`Error::NoSchema`], [`Error::Failed`] when a migration's SQL fails (that
/// migration is rolled back; earlier ones stay), [`Error::Database`] for lock
/// and connection failures.
pub async fn migrate(client: &mut Client) -> Result<Report, Error> {
    let row = client
        .query_one(
            "SELECT current_schema(), \
                    hashtextextended('selfrag_migrations:' || coalesce(current_schema(), ''), 0), \
                    current_setting('statement_timeout')",
            &[],
        )
        .await
        .map_err(Error::db("reading the target schema"))?;
    let schema: Option<String> = row.get(0);
    let lock_key: i64 = row.get(1);
    let statement_timeout: String = row.get(2);
    let Some(schema) = schema else {
        return Err(Error::NoSchema);
    };

    // Waiting for another runner can take as long as its migrations do.
    client.batch_execute("SET statement_timeout = 0").await.map_err(Error::db("lifting statement_timeout"))?;
    client.execute("SELECT pg_advisory_lock($1)", &[&lock_key]).await.map_err(Error::db("taking the lock"))?;
    tracing::debug!(schema, lock_key, "holding the migration lock");

    let result = run_locked(client).await;

    // Release even after a failed run; a failure here means the connection is
    // gone, which releases the lock too.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&lock_key]).await;
    let restored = client.execute("SELECT set_config('statement_timeout', $1, false)", &[&statement_timeout]).await;
    let report = result?;
    unlocked.map_err(Error::db("releasing the lock"))?;
    restored.map_err(Error::db("restoring statement_timeout"))?;
    for m in &report.applied {
        tracing::info!(schema, version = m.version, name = %m.name, "applied migration");
    }
    Ok(report)
}

async fn run_locked(client: &mut Client) -> Result<Report, Error> {
    // The history is judged here, by the same rules `status` reports, before
    // refinery reads it: refinery panics on a malformed row, and the lock
    // keeps the history from changing between the check and the run.
    if let Some(problem) = status(client).await?.problem() {
        return Err(problem);
    }
    // Refinery's own divergence checks stay on as a second line; having
    // passed the check above, they never fire.
    let migrations: Vec<Migration> = MIGRATIONS.iter().map(|m| m.to_refinery()).collect();
    let mut runner = Runner::new(&migrations).set_abort_divergent(true).set_abort_missing(true).set_grouped(false);
    runner.set_migration_table_name(HISTORY_TABLE);
    let report = runner.run_async(client).await.map_err(map_refinery)?;
    Ok(Report {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| Applied { version: version_u32(m), name: m.name().to_owned() })
            .collect(),
    })
}

/// The state of the schema against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The schema inspected (the first existing schema of the `search_path`).
    pub schema: String,
    /// Every migration known to the build or recorded in the database, by
    /// version.
    pub migrations: Vec<MigrationStatus>,
}

/// One line of a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The version.
    pub version: u32,
    /// The name (as this build has it, or as recorded when unknown here).
    pub name: String,
    /// The checksum of the embedded migration, or the recorded one for a
    /// migration this build does not contain.
    pub checksum: u64,
    /// Where it stands.
    pub state: MigrationState,
}

/// Where a migration stands; see [`MigrationStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied with the same checksum, at `applied_on` (RFC 3339, as recorded).
    Applied {
        /// When it was applied.
        applied_on: String,
    },
    /// Not applied yet; [`migrate`] will apply it.
    Pending,
    /// Not applied, but later migrations were: [`migrate`] refuses.
    Skipped,
    /// Applied, but with another checksum or name: [`migrate`] refuses.
    Edited {
        /// The recorded checksum.
        recorded: u64,
    },
    /// Recorded in the database but not in this build: [`migrate`] refuses.
    NotInBuild,
}

impl Status {
    /// The migrations [`migrate`] would apply.
    pub fn pending(&self) -> impl Iterator<Item = &MigrationStatus> {
        self.migrations.iter().filter(|m| m.state == MigrationState::Pending)
    }

    /// Whether every migration of the build is applied and nothing is wrong.
    pub fn is_up_to_date(&self) -> bool {
        self.migrations.iter().all(|m| matches!(m.state, MigrationState::Applied { .. }))
    }

    /// The error [`migrate`] would refuse with, if any.
    pub fn problem(&self) -> Option<Error> {
        self.migrations.iter().find_map(|m| match m.state {
            MigrationState::Edited { recorded } => {
                Some(Error::Edited { version: m.version, name: m.name.clone(), recorded, embedded: m.checksum })
            }
            MigrationState::NotInBuild => {
                Some(Error::NotInBuild { version: m.version, name: m.name.clone(), latest: latest_version() })
            }
            MigrationState::Skipped => Some(Error::Skipped { version: m.version, name: m.name.clone() }),
            MigrationState::Applied { .. } | MigrationState::Pending => None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "schema {}:", self.schema)?;
        for m in &self.migrations {
            let state = match &m.state {
                MigrationState::Applied { applied_on } => format!("applied {applied_on}"),
                MigrationState::Pending => "pending".to_owned(),
                MigrationState::Skipped => "SKIPPED (later migrations applied)".to_owned(),
                MigrationState::Edited { recorded } => format!("EDITED (recorded checksum {recorded})"),
                MigrationState::NotInBuild => "NOT IN THIS BUILD".to_owned(),
            };
            writeln!(f, "  {:03} {:<28} checksum {:>20}  {state}", m.version, m.name, m.checksum)?;
        }
        Ok(())
    }
}

/// Reads the history of the first existing schema of the `search_path` and
/// compares it with this build's migrations. Writes nothing (the history
/// table is not created when absent: everything is then pending).
///
/// # Errors
/// [`Error::NoSchema`]; [`Error::CorruptHistory`] when the history table
/// holds a row that is not a migration record; [`Error::Database`] when a
/// query fails (or the table's columns have other types).
pub async fn status(client: &Client) -> Result<Status, Error> {
    // The table [`migrate`] creates and reads is the one in current_schema(),
    // not whichever the search_path finds first: qualify it.
    let row = client
        .query_one(
            "SELECT s, CASE WHEN s IS NULL THEN NULL ELSE format('%I.%I', s, $1::text) END \
             FROM (SELECT current_schema() AS s) AS cur",
            &[&HISTORY_TABLE],
        )
        .await
        .map_err(Error::db("reading the target schema"))?;
    let (Some(schema), Some(table)) = (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1)) else {
        return Err(Error::NoSchema);
    };
    let has_history: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(Error::db("looking for the history table"))?
        .get(0);

    struct Recorded {
        version: u32,
        name: String,
        applied_on: String,
        checksum: u64,
    }
    let mut recorded = Vec::new();
    if has_history {
        // `table` was quoted by Postgres' format('%I.%I').
        let sql = format!("SELECT version, name, applied_on, checksum FROM {table} ORDER BY version");
        for row in client.query(&sql, &[]).await.map_err(Error::db("reading the history table"))? {
            let version: i32 = row.try_get(0).map_err(Error::db("reading the history table"))?;
            let name: Option<String> = row.try_get(1).map_err(Error::db("reading the history table"))?;
            let applied_on: Option<String> = row.try_get(2).map_err(Error::db("reading the history table"))?;
            let checksum: Option<String> = row.try_get(3).map_err(Error::db("reading the history table"))?;
            // Everything refinery would unwrap is checked here.
            let corrupt = |problem: String| Error::CorruptHistory { version, problem };
            let number = u32::try_from(version).map_err(|_| corrupt("has a negative version".to_owned()))?;
            let name = name.ok_or_else(|| corrupt("has no name".to_owned()))?;
            let applied_on = applied_on.ok_or_else(|| corrupt("has no applied_on".to_owned()))?;
            if let Err(e) = time::OffsetDateTime::parse(&applied_on, &Rfc3339) {
                return Err(corrupt(format!("has applied_on {applied_on:?}, which is not RFC 3339 ({e})")));
            }
            let checksum = checksum.ok_or_else(|| corrupt("has no checksum".to_owned()))?;
            let checksum = checksum
                .parse()
                .map_err(|_| corrupt(format!("has checksum {checksum:?}, which is not an unsigned 64-bit number")))?;
            recorded.push(Recorded { version: number, name, applied_on, checksum });
        }
    }

    let latest_applied = recorded.iter().map(|r| r.version).max().unwrap_or(0);
    let mut migrations = Vec::new();
    for m in MIGRATIONS {
        let checksum = m.checksum();
        let state = match recorded.iter().find(|r| r.version == m.version) {
            Some(r) if r.checksum == checksum && r.name == m.name => {
                MigrationState::Applied { applied_on: r.applied_on.clone() }
            }
            Some(r) => MigrationState::Edited { recorded: r.checksum },
            None if m.version < latest_applied => MigrationState::Skipped,
            None => MigrationState::Pending,
        };
        migrations.push(MigrationStatus { version: m.version, name: m.name.to_owned(), checksum, state });
    }
    for r in recorded.iter().filter(|r| !MIGRATIONS.iter().any(|m| m.version == r.version)) {
        migrations.push(MigrationStatus {
            version: r.version,
            name: r.name.clone(),
            checksum: r.checksum,
            state: MigrationState::NotInBuild,
        });
    }
    migrations.sort_by_key(|m| m.version);
    Ok(Status { schema, migrations })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_in_order_without_gaps() {
        let names: Vec<_> = MIGRATIONS.iter().map(|m| (m.version, m.name)).collect();
        assert_eq!(
            names[..3],
            [(1, "create_users"), (2, "create_user_sessions"), (3, "add_memory_logs_table")],
            "the three first migrations are fixed history"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.file.starts_with(&format!("{:03}_", m.version)), "{}", m.file);
            assert!(!m.sql.trim().is_empty());
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }

    #[test]
    fn checksum_covers_the_sql() {
        let m = MIGRATIONS[0];
        let edited = EmbeddedMigration { sql: "CREATE TABLE users (id uuid);", ..m };
        assert_ne!(m.checksum(), edited.checksum());
        assert_eq!(m.checksum(), MIGRATIONS[0].checksum(), "stable across calls");
    }
}
