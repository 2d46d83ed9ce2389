//! `selfrag backup|verify|restore|prune`, on the `selfrag-backup` library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use selfrag_backup::run::PARTIAL_SUFFIX;
use selfrag_backup::{
    BackupRun, Entry, EntryKind, Manifest, PgTools, PostgresBackup, PostgresRestore, QdrantRestoreReport, QdrantTarget,
    DEFAULT_KEEP_DAYS,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::cli::{BackupArgs, BackupTarget, Global, PruneArgs, RestoreArgs, RestoreTarget, VerifyArgs};
use crate::output::{chain, exit_of, explain, Exit, Failure, Out};
use crate::progress::{size, tree_size, Progress, Source};

impl Global {
    fn backup_root(&self) -> Result<&Path, Failure> {
        self.backup_dir
            .as_deref()
            .ok_or_else(|| Failure::usage("no backup directory: set SELFRAG_BACKUP_DIR or --backup-dir"))
    }

    fn pg_tools(&self) -> PgTools {
        match &self.pg_bin_dir {
            Some(dir) => PgTools::new().bin_dir(dir),
            None => PgTools::new(),
        }
    }

    fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    fn qdrant_target(&self) -> Option<QdrantTarget> {
        let url = self.qdrant_url.as_deref().map(str::trim).filter(|u| !u.is_empty())?;
        let mut target = QdrantTarget::new(url, self.collection.clone());
        if let Some(rest) = self.qdrant_rest_url.as_deref().filter(|u| !u.trim().is_empty()) {
            target = target.rest_url(rest);
        }
        if let Some(key) = self.qdrant_api_key.as_deref().filter(|k| !k.trim().is_empty()) {
            target = target.api_key(key);
        }
        Some(target)
    }

    /// The run directory named `run`, or the newest complete run that holds
    /// an entry of `kind` (named `entry`, when given): since a `backup all`
    /// can finish with some stores failed, the newest run need not hold
    /// the store being restored.
    fn run_dir(&self, run: Option<&str>, kind: Option<EntryKind>, entry: Option<&str>) -> Result<PathBuf, Failure> {
        let root = self.backup_root()?;
        match run {
            Some(name) => {
                if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                    return Err(Failure::usage(format!("--run `{name}` must be a run directory name")));
                }
                if name.ends_with(PARTIAL_SUFFIX) {
                    return Err(Failure::usage(format!(
                        "--run `{name}` is an unfinished run (`{PARTIAL_SUFFIX}`), never a backup"
                    )));
                }
                let dir = root.join(name);
                if !dir.is_dir() {
                    return Err(Failure::failed(format!("no backup run {}", dir.display())));
                }
                Ok(dir)
            }
            None => newest_run_with(root, kind, entry),
        }
    }
}

/// A run that could not start under `root`: a configuration error (2)
/// when the directory cannot be made or written for a reason the user must
/// fix (a missing parent it cannot create, a file in the way, no
/// permission, a read-only file system), else a failure (1: a full disk,
/// an I/O error).
fn backup_dir_failure(root: &Path, err: &selfrag_core::Error) -> Failure {
    use std::io::ErrorKind as K;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io_kind = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = e.source();
    }
    let config = matches!(
        io_kind,
        Some(K::NotFound | K::PermissionDenied | K::NotADirectory | K::AlreadyExists | K::ReadOnlyFilesystem)
    );
    if config {
        Failure::usage(format!(
            "cannot create a backup run under {}: {}. Fix: set --backup-dir / SELFRAG_BACKUP_DIR to a directory \
             this user can create and write",
            root.display(),
            chain(err)
        ))
    } else {
        Failure::from_core("cannot start a backup run", err)
    }
}

/// The newest finished run under `root` whose manifest holds an entry of
/// `kind` (any kind when `None`) named `entry` (any name when `None`).
fn newest_run_with(root: &Path, kind: Option<EntryKind>, entry: Option<&str>) -> Result<PathBuf, Failure> {
    let wanted = |e: &Entry| kind.is_none_or(|k| e.kind == k) && entry.is_none_or(|n| e.name == n);
    match selfrag_backup::latest_run_where(root, wanted) {
        Ok(run) => Ok(run.dir),
        Err(e) if e.kind() == selfrag_core::ErrorKind::NotFound => {
            let what = match (kind, entry) {
                (_, Some(name)) => format!(" with an entry `{name}`"),
                (Some(kind), None) => format!(" with a {} entry", kind_name(kind)),
                (None, None) => String::new(),
            };
            Err(Failure::failed(format!("no complete backup run{what} under {}", root.display())))
        }
        Err(e) => Err(Failure::from_core("listing the backup runs", &e)),
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Postgres => "postgres",
        EntryKind::Qdrant => "qdrant",
        EntryKind::Edge => "edge",
    }
}

impl Global {
    /// Fails with a configuration error (2) unless `tool` is installed:
    /// checked before a run starts or a restore touches anything. The
    /// message names the tool's own settings (`--pg-bin-dir` /
    /// `SELFRAG_PG_BIN_DIR`) and, when Debian's layout holds the tool, the
    /// directory to give them.
    fn require_tool(&self, tool: &str) -> Result<(), Failure> {
        let Err(err) = self.pg_tools().resolve(tool) else { return Ok(()) };
        let found = debian_pg_bin_dirs().into_iter().find(|dir| dir.join(tool).is_file());
        let mut message = match &self.pg_bin_dir {
            Some(dir) => format!(
                "{tool} not found: {} does not exist. Fix: set --pg-bin-dir / SELFRAG_PG_BIN_DIR to the directory \
                 that holds pg_dump and pg_restore",
                dir.join(tool).display()
            ),
            None => format!(
                "{tool} not found on PATH. Fix: install the PostgreSQL client tools (the server's major version or \
                 newer), or set --pg-bin-dir / SELFRAG_PG_BIN_DIR to the directory that holds pg_dump and pg_restore"
            ),
        };
        if let Some(dir) = found {
            let _ = write!(message, " (this machine has one in {})", dir.display());
        }
        // Anything the library knows beyond "not found" is kept, in case.
        if !err.to_string().contains("not found") {
            let _ = write!(message, " ({})", chain(&err));
        }
        Err(Failure::usage(message))
    }
}

/// Where Debian and Ubuntu install the PostgreSQL client tools, newest
/// major version first (they are not on PATH there unless a wrapper is).
fn debian_pg_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    dirs.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    dirs.into_iter().map(|(_, dir)| dir).collect()
}

fn entry_line(entry: &Entry) -> String {
    format!(
        "  {:<24} {:<8} {:>10}  {} file(s)  {} ms\n",
        entry.name,
        format!("{:?}", entry.kind).to_lowercase(),
        size(entry.size()),
        entry.files.len(),
        entry.duration_ms
    )
}

/// What `backup` was asked for and what it took: printed, and in the JSON
/// document, so a run that lacks a store says why.
#[derive(Debug, Default)]
struct Plan {
    /// `all`, `postgres`, `qdrant` or `edge`.
    requested: &'static str,
    /// The stores that are backed up.
    included: Vec<&'static str>,
    /// Stores `all` leaves out, with the reason (not configured).
    skipped: Vec<(&'static str, &'static str)>,
}

/// `backup`: decides and checks everything before the run directory exists
/// (configuration errors are exit 2 and leave nothing behind), then backs up
/// each store in turn. A store that fails does not stop the others: the run
/// is finished with the entries that succeeded and the failed stores are
/// listed; the exit code is then 1 (3 when every failure was an unreachable
/// service, 2 when one was a configuration problem such as rejected
/// credentials). `all` requires Postgres, the system of record: a lost
/// `DATABASE_URL` must not turn the nightly backup into a Qdrant-only run
/// that exits 0.
pub(crate) async fn backup(global: &Global, args: &BackupArgs, out: Out) -> Result<Exit, Failure> {
    let root = global.backup_root()?;
    let all = args.target == BackupTarget::All;
    let want = |t: BackupTarget| all || args.target == t;
    let mut plan = Plan {
        requested: match args.target {
            BackupTarget::All => "all",
            BackupTarget::Postgres => "postgres",
            BackupTarget::Qdrant => "qdrant",
            BackupTarget::Edge => "edge",
        },
        ..Plan::default()
    };

    let postgres = match global.database_url() {
        Some(url) if want(BackupTarget::Postgres) => {
            if let Some(config) = global.postgres() {
                config.pg_config().map_err(|e| Failure::from_core("invalid Postgres configuration", &e))?;
            }
            global.require_tool("pg_dump")?;
            let mut opts = PostgresBackup::new(url).tools(global.pg_tools());
            if let Some(schema) = global.schema.as_deref().filter(|s| !s.trim().is_empty()) {
                opts = opts.schema(schema);
            }
            for table in &args.tables {
                opts = opts.table(table);
            }
            plan.included.push("postgres");
            Some(opts)
        }
        None if all => {
            return Err(Failure::usage(
                "`backup all` needs Postgres, the system of record: set DATABASE_URL or --database-url \
                 (or name the store to back up: `backup qdrant`, `backup edge`)",
            ))
        }
        None if args.target == BackupTarget::Postgres => {
            return Err(Failure::usage("Postgres is not configured: set DATABASE_URL or --database-url"))
        }
        _ => None,
    };
    if !args.tables.is_empty() && postgres.is_none() {
        return Err(Failure::usage("--table needs a Postgres backup (`backup postgres` or `backup all`)"));
    }
    let qdrant = match global.qdrant_target() {
        Some(target) if want(BackupTarget::Qdrant) => {
            plan.included.push("qdrant");
            Some(target)
        }
        None if all => {
            plan.skipped.push(("qdrant", "not configured (QDRANT_URL)"));
            None
        }
        None if args.target == BackupTarget::Qdrant => {
            return Err(Failure::usage("Qdrant is not configured: set QDRANT_URL or --qdrant-url"))
        }
        _ => None,
    };
    let edge = match &global.edge_path {
        Some(path) if want(BackupTarget::Edge) => {
            plan.included.push("edge");
            Some(path.clone())
        }
        None if all => {
            plan.skipped.push(("edge", "not configured (SELFRAG_EDGE_PATH)"));
            None
        }
        None if args.target == BackupTarget::Edge => {
            return Err(Failure::usage("the embedded index is not configured: set SELFRAG_EDGE_PATH or --edge-path"))
        }
        _ => None,
    };

    let mut run = BackupRun::begin(root).map_err(|e| backup_dir_failure(root, &e))?;
    out.progress(format_args!("backup run {}: {}", run.dir().display(), plan.included.join(", ")));
    for (store, why) in &plan.skipped {
        out.progress(format_args!("{store}: skipped, {why}"));
    }
    // (store, error) of every store that failed.
    let mut failed: Vec<(&'static str, selfrag_core::Error)> = Vec::new();
    if let Some(opts) = &postgres {
        out.progress("backing up Postgres (pg_dump --format=custom)");
        let meter = Progress::start(out, "Postgres dump", None, Source::DirSize(run.dir().to_path_buf()));
        let result = selfrag_backup::backup_postgres(&mut run, opts).await;
        meter.finish().await;
        match result {
            Ok(entry) => out.progress(format_args!("Postgres: {} in {} ms", size(entry.size()), entry.duration_ms)),
            Err(e) => {
                out.progress(format_args!("Postgres backup FAILED: {}", explain(&e)));
                failed.push(("postgres", e));
            }
        }
    }
    if let Some(target) = &qdrant {
        out.progress(format_args!("backing up Qdrant collection `{}` (snapshot, download)", target.collection));
        let meter = Progress::start(out, "Qdrant snapshot download", None, Source::DirSize(run.dir().to_path_buf()));
        let result = selfrag_backup::backup_qdrant(&mut run, target, None).await;
        meter.finish().await;
        match result {
            Ok(entry) => out.progress(format_args!("Qdrant: {} in {} ms", size(entry.size()), entry.duration_ms)),
            Err(e) => {
                out.progress(format_args!("Qdrant backup FAILED: {}", explain(&e)));
                failed.push(("qdrant", e));
            }
        }
    }
    if let Some(path) = &edge {
        out.progress(format_args!("backing up the embedded index {}", path.display()));
        let meter = Progress::start(out, "embedded index copy", Some(tree_size(path)), Source::Checksummed);
        let result = selfrag_backup::backup_edge(&mut run, path, None).await;
        meter.finish().await;
        match result {
            Ok(entry) => {
                out.progress(format_args!("embedded index: {} in {} ms", size(entry.size()), entry.duration_ms))
            }
            Err(e) => {
                out.progress(format_args!("embedded index backup FAILED: {}", explain(&e)));
                failed.push(("edge", e));
            }
        }
    }
    // Only unreachable services (a blip a retry may fix) give 3; any other
    // failure 1; a configuration problem (rejected credentials) 2.
    let exit = failed.iter().fold(Exit::Ok, |exit, (_, e)| exit.worst(exit_of(e)));
    let failures: Vec<Value> = failed
        .iter()
        .map(|(store, e)| json!({ "store": store, "outcome": exit_of(e).name(), "error": explain(e) }))
        .collect();
    let failed_text = failed.iter().map(|(store, e)| format!("{store}: {}", explain(e))).collect::<Vec<_>>().join("; ");
    let skipped: Vec<Value> =
        plan.skipped.iter().map(|(store, why)| json!({ "store": store, "reason": why })).collect();

    if run.entries().is_empty() {
        // Nothing succeeded: there is no backup to finish. The unfinished
        // directory holds only temporary files of the failed stores.
        let dir = run.dir().to_path_buf();
        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Failure { exit, message: format!("backup failed, no run written: {failed_text}") });
    }
    let done = match run.finish() {
        Ok(done) => done,
        Err(e) => {
            let mut f = Failure::from_core("finishing the backup run failed", &e);
            f.message.push_str(" (the unfinished `.partial` run is not a backup; `selfrag prune` removes it)");
            if !failed_text.is_empty() {
                let _ = write!(f.message, "; also failed: {failed_text}");
            }
            return Err(f);
        }
    };

    let mut human = if failed.is_empty() {
        format!("backup run {} complete\n", done.dir.display())
    } else {
        format!(
            "backup run {} finished INCOMPLETE: {} failed\n",
            done.dir.display(),
            failed.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
        )
    };
    for entry in &done.manifest.entries {
        human.push_str(&entry_line(entry));
    }
    for (store, e) in &failed {
        let _ = writeln!(human, "  FAILED {store}: {}", explain(e));
    }
    for (store, why) in &plan.skipped {
        let _ = writeln!(human, "  skipped {store}: {why}");
    }
    let mut doc = json!({
        "run": done.manifest.run,
        "dir": done.dir.display().to_string(),
        "requested": plan.requested,
        "included": plan.included,
        "skipped": skipped,
        "failed": failures,
        "manifest": serde_json::to_value(&done.manifest).unwrap_or(Value::Null),
    });
    if !failed.is_empty() {
        doc["error"] = json!(format!("backup incomplete: {failed_text}"));
    }
    Ok(out.finish(exit, &human, doc))
}

pub(crate) async fn verify(global: &Global, args: &VerifyArgs, out: Out) -> Result<Exit, Failure> {
    let dir = global.run_dir(args.run.as_deref(), args.kind.map(EntryKind::from), None)?;
    // A run holding a Postgres archive cannot be verified without
    // pg_restore: an installation problem (2), not a bad backup (1).
    let mut total = None;
    if let Ok(manifest) = Manifest::read(&dir) {
        if manifest.entries.iter().any(|e| e.kind == EntryKind::Postgres) {
            global.require_tool("pg_restore")?;
        }
        total = Some(manifest.entries.iter().map(Entry::size).sum());
    }
    out.progress(format_args!("verifying {}{}", dir.display(), if args.deep { " (deep)" } else { "" }));
    let meter = Progress::start(out, "checksums", total, Source::Checksummed);
    let result = selfrag_backup::verify_run(&dir, &global.pg_tools(), args.deep).await;
    meter.finish().await;
    let report =
        result.map_err(|e| Failure::from_core(&format!("backup run {} failed verification", dir.display()), &e))?;
    let mut human = format!(
        "backup run {} verified: {} entries, {} checked\n",
        dir.display(),
        report.entries.len(),
        size(report.bytes)
    );
    for entry in &report.manifest.entries {
        human.push_str(&entry_line(entry));
    }
    let doc = json!({
        "run": report.manifest.run,
        "dir": dir.display().to_string(),
        "entries": report.entries,
        "bytes": report.bytes,
        "deep": args.deep,
    });
    Ok(out.finish(Exit::Ok, &human, doc))
}

pub(crate) async fn restore(global: &Global, args: &RestoreArgs, out: Out) -> Result<Exit, Failure> {
    let postgres_only = args.database.is_some()
        || args.create_database
        || args.clean
        || args.jobs.is_some()
        || !args.erasures_file.is_empty();
    if postgres_only && args.target != RestoreTarget::Postgres {
        return Err(Failure::usage(
            "--database, --create-database, --clean, --jobs and --erasures-file apply to `restore postgres` only",
        ));
    }
    if args.replace && args.target != RestoreTarget::Qdrant {
        return Err(Failure::usage("--replace applies to `restore qdrant` only"));
    }
    let entry = args.entry.as_deref();
    match args.target {
        RestoreTarget::Postgres => {
            let url = global
                .database_url()
                .ok_or_else(|| Failure::usage("Postgres is not configured: set DATABASE_URL or --database-url"))?;
            global.require_tool("pg_restore")?;
            let dir = global.run_dir(args.run.as_deref(), Some(EntryKind::Postgres), entry)?;
            let mut opts = PostgresRestore::new(url)
                .create_database(args.create_database)
                .clean(args.clean)
                .tools(global.pg_tools());
            if let Some(db) = &args.database {
                opts = opts.database(db);
            }
            if let Some(jobs) = args.jobs {
                opts = opts.jobs(jobs);
            }
            for file in &args.erasures_file {
                opts = opts.erasures_file(file);
            }
            out.progress(format_args!("restoring Postgres from {} (checks first, then pg_restore)", dir.display()));
            let total = entry_size(&dir, EntryKind::Postgres, entry);
            let meter = Progress::start(out, "archive checksum, then pg_restore", total, Source::Checksummed);
            let result = selfrag_backup::restore_postgres(&dir, entry, &opts).await;
            meter.finish().await;
            let report = result.map_err(|e| postgres_restore_failure(&e))?;
            let mut human = format!(
                "restored `{}` into database {}{} in {} ms\n",
                report.entry,
                report.database,
                if report.created_database { " (created)" } else { "" },
                report.duration_ms
            );
            let _ = writeln!(human, "  tables: {}", report.tables.join(", "));
            let _ = writeln!(
                human,
                "  erasures re-applied: {} (recorded after the backup, read from {})",
                report.erasures_reapplied,
                if report.ledger_sources.is_empty() {
                    "-".to_owned()
                } else {
                    let named = |s: &String| if s.starts_with("file ") { s.clone() } else { format!("database {s}") };
                    report.ledger_sources.iter().map(named).collect::<Vec<_>>().join(", ")
                }
            );
            let doc = json!({
                "run": dir.display().to_string(),
                "entry": report.entry,
                "database": report.database,
                "created_database": report.created_database,
                "tables": report.tables,
                "backup_ledger": report.backup_ledger,
                "ledger_sources": report.ledger_sources,
                "erasures_reapplied": report.erasures_reapplied,
                "duration_ms": report.duration_ms,
            });
            Ok(out.finish(Exit::Ok, &human, doc))
        }
        RestoreTarget::Qdrant => {
            let target = global
                .qdrant_target()
                .ok_or_else(|| Failure::usage("Qdrant is not configured: set QDRANT_URL or --qdrant-url"))?
                .replace(args.replace);
            let dir = global.run_dir(args.run.as_deref(), Some(EntryKind::Qdrant), entry)?;
            out.progress(format_args!("restoring Qdrant collection `{}` from {}", target.collection, dir.display()));
            let total = entry_size(&dir, EntryKind::Qdrant, entry);
            let meter = Progress::start(out, "snapshot checksum, then upload", total, Source::Checksummed);
            let result = selfrag_backup::restore_qdrant(&dir, entry, &target).await;
            meter.finish().await;
            let report = result.map_err(|e| match &e {
                selfrag_core::Error::Conflict { what: "qdrant collection", id } => Failure::failed(format!(
                    "Qdrant restore refused: collection `{id}` already exists and the restore would replace it. \
                     Fix: add --replace to replace it, or restore into another collection with --collection NAME"
                )),
                _ => Failure::from_core("Qdrant restore failed", &e),
            })?;
            let reapplied =
                crate::user::reapply_vector_erasures(global, crate::user::RestoredVectors::Qdrant, out).await?;
            let (mut human, mut doc) = qdrant_restore_output(&dir, &report);
            erasures_line(&mut human, reapplied);
            doc["erasures_reapplied"] = json!(reapplied);
            Ok(out.finish(Exit::Ok, &human, doc))
        }
        RestoreTarget::Edge => {
            let target = global.edge_path.as_deref().ok_or_else(|| {
                Failure::usage("no target directory: set SELFRAG_EDGE_PATH or --edge-path (missing or empty)")
            })?;
            let dir = global.run_dir(args.run.as_deref(), Some(EntryKind::Edge), entry)?;
            out.progress(format_args!("restoring the embedded index into {}", target.display()));
            // Every file is read twice: checked, then copied (and checked again).
            let total = entry_size(&dir, EntryKind::Edge, entry).map(|n| n * 2);
            let meter = Progress::start(out, "checksums and copy", total, Source::Checksummed);
            let result = selfrag_backup::restore_edge(&dir, entry, target).await;
            meter.finish().await;
            result.map_err(|e| match e {
                selfrag_core::Error::Conflict { what: "restore target", .. } => Failure::failed(format!(
                    "embedded index restore refused: {} is not empty, and restoring into it could mix two \
                     indexes. Fix: restore into a new or empty directory with --edge-path DIR (or \
                     SELFRAG_EDGE_PATH), or move the directory aside first",
                    target.display()
                )),
                e => Failure::from_core("embedded index restore failed", &e),
            })?;
            let reapplied =
                crate::user::reapply_vector_erasures(global, crate::user::RestoredVectors::Edge(target), out).await?;
            let mut human = format!("restored the embedded index from {} into {}\n", dir.display(), target.display());
            erasures_line(&mut human, reapplied);
            let doc = json!({
                "run": dir.display().to_string(),
                "target": target.display().to_string(),
                "erasures_reapplied": reapplied,
            });
            Ok(out.finish(Exit::Ok, &human, doc))
        }
    }
}

/// The line a vector restore adds about the erasure ledger.
fn erasures_line(human: &mut String, reapplied: Option<u64>) {
    let _ = match reapplied {
        Some(n) => writeln!(human, "  erasures re-applied to the vectors: {n} (from the ledger of DATABASE_URL)"),
        None => writeln!(human, "  erasures not re-applied: DATABASE_URL is not set (see BACKUP_STRATEGY.md)"),
    };
}

/// The size of the entry a restore reads: `name`, else the run's entry of
/// `kind` (unknown when the manifest cannot be read: the restore reports
/// that).
fn entry_size(dir: &Path, kind: EntryKind, name: Option<&str>) -> Option<u64> {
    let manifest = Manifest::read(dir).ok()?;
    let entry = manifest.entries.iter().find(|e| match name {
        Some(n) => e.name == n,
        None => e.kind == kind,
    })?;
    Some(entry.size())
}

/// What `restore qdrant` prints: the human text and the JSON document,
/// both naming the snapshot the server kept when the restore could not
/// delete its upload (`leftover_snapshot`, `null` when none is left).
fn qdrant_restore_output(dir: &Path, report: &QdrantRestoreReport) -> (String, Value) {
    let mut human = format!(
        "restored `{}` into collection `{}` ({}) in {} ms\n",
        report.entry,
        report.collection,
        size(report.bytes),
        report.duration_ms
    );
    if let Some(left) = &report.leftover_snapshot {
        let _ = writeln!(
            human,
            "  warning: the server kept the uploaded snapshot `{left}` (a full copy of the collection on its disk); \
             `selfrag prune` deletes it after 24 h, or delete it on the server"
        );
    }
    let doc = json!({
        "run": dir.display().to_string(),
        "entry": report.entry,
        "collection": report.collection,
        "bytes": report.bytes,
        "duration_ms": report.duration_ms,
        "leftover_snapshot": report.leftover_snapshot,
    });
    (human, doc)
}

/// A failed Postgres restore, saying what to change for the two refusals
/// a person can fix with a flag: a target that already holds the archive's
/// tables (`--clean`, or a new database) and a target database that does
/// not exist (`--create-database`). The first is a refused operation (1,
/// as before: nothing was changed), the second a configuration error (2,
/// like any database that does not exist).
fn postgres_restore_failure(err: &selfrag_core::Error) -> Failure {
    match err {
        selfrag_core::Error::Conflict { what: "restore target", id } => {
            // The library's id reads "database D already holds T1, T2, ...; <advice>".
            let (database, tables) = id
                .split_once(" already holds ")
                .map(|(db, rest)| (db.trim_start_matches("database ").to_owned(), rest))
                .unwrap_or_else(|| (String::from("the target database"), id.as_str()));
            let tables: Vec<&str> = tables.split(';').next().unwrap_or_default().split(", ").collect();
            let shown = tables.len().min(8);
            let more = if tables.len() > shown { format!(" and {} more", tables.len() - shown) } else { String::new() };
            Failure::failed(format!(
                "Postgres restore refused: database `{database}` already holds {} of the archive's tables ({}{more}), \
                 and restoring over them could mix old and restored rows. Fix: add --clean to drop and replace \
                 those objects, or restore into a new database with --database NAME --create-database",
                tables.len(),
                tables[..shown].join(", ")
            ))
        }
        selfrag_core::Error::NotFound { what: "database", id } => Failure::usage(format!(
            "Postgres restore: the target database `{id}` does not exist. Fix: add --create-database to create \
             it, or name an existing database with --database NAME"
        )),
        _ => Failure::from_core("Postgres restore failed", err),
    }
}

pub(crate) async fn prune(global: &Global, args: &PruneArgs, out: Out) -> Result<Exit, Failure> {
    let root = global.backup_root()?;
    let now = OffsetDateTime::now_utc();
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    out.progress(format_args!(
        "pruning runs under {} older than {} days (default {DEFAULT_KEEP_DAYS})",
        root.display(),
        args.keep_days
    ));
    let report = selfrag_backup::prune(root, args.keep_days, now, args.dry_run)
        .map_err(|e| Failure::from_core("pruning backup runs failed", &e))?;
    let mut human = format!("{verb} {} run(s), kept {}\n", report.deleted.len(), report.kept.len());
    for dir in &report.deleted {
        let _ = writeln!(human, "  {verb} {}", dir.display());
    }
    let paths = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    let mut doc = json!({
        "keep_days": args.keep_days,
        "dry_run": args.dry_run,
        "deleted": paths(&report.deleted),
        "kept": paths(&report.kept),
    });
    if let Some(target) = global.qdrant_target() {
        out.progress(format_args!("pruning server snapshots of Qdrant collection `{}`", target.collection));
        let snaps = selfrag_backup::prune_qdrant_snapshots(&target, args.keep_days, now, args.dry_run)
            .await
            .map_err(|e| Failure::from_core("pruning Qdrant snapshots failed (local runs were pruned)", &e))?;
        let _ = writeln!(
            human,
            "Qdrant `{}`: {verb} {} snapshot(s), kept {}",
            target.collection,
            snaps.deleted.len(),
            snaps.kept.len()
        );
        doc["qdrant_snapshots"] = json!({ "deleted": snaps.deleted, "kept": snaps.kept });
    }
    Ok(out.finish(Exit::Ok, &human, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restore report's `leftover_snapshot` reaches both outputs.
    #[test]
    fn qdrant_restore_output_names_a_leftover_snapshot() {
        let mut report = QdrantRestoreReport {
            entry: "qdrant-chunks".into(),
            collection: "chunks".into(),
            bytes: 2048,
            duration_ms: 12,
            leftover_snapshot: None,
        };
        let (human, doc) = qdrant_restore_output(Path::new("/b/run"), &report);
        assert_eq!(doc["leftover_snapshot"], Value::Null, "{doc:#}");
        assert!(doc.as_object().unwrap().contains_key("leftover_snapshot"), "always present: {doc:#}");
        assert!(!human.contains("warning"), "{human}");
        report.leftover_snapshot = Some("selfrag-restore-0123.snapshot".into());
        let (human, doc) = qdrant_restore_output(Path::new("/b/run"), &report);
        assert_eq!(doc["leftover_snapshot"], "selfrag-restore-0123.snapshot", "{doc:#}");
        assert!(human.contains("warning") && human.contains("selfrag-restore-0123.snapshot"), "{human}");
    }

    /// The library's conflict reads "restore target `database D already
    /// holds T...; advice` already exists": the CLI's sentence names the
    /// database, the tables and the flags.
    #[test]
    fn a_filled_restore_target_names_clean_and_a_new_database() {
        let tables: Vec<String> = (0..12).map(|i| format!("public.t{i}")).collect();
        let err = selfrag_core::Error::Conflict {
            what: "restore target",
            id: format!(
                "database app already holds {}; restore into an empty database or ask for a clean restore",
                tables.join(", ")
            ),
        };
        let f = postgres_restore_failure(&err);
        assert_eq!(f.exit, Exit::Failed);
        assert!(f.message.contains("database `app` already holds 12 of the archive's tables"), "{}", f.message);
        assert!(f.message.contains("public.t0, public.t1") && f.message.contains("and 4 more"), "{}", f.message);
        assert!(f.message.contains("--clean") && f.message.contains("--create-database"), "{}", f.message);
        assert!(!f.message.contains("already exists"), "{}", f.message);
        let missing = postgres_restore_failure(&selfrag_core::Error::NotFound { what: "database", id: "app2".into() });
        assert_eq!(missing.exit, Exit::Usage);
        assert!(missing.message.contains("`app2` does not exist") && missing.message.contains("--create-database"));
    }
}
