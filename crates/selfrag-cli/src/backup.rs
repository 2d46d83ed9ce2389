//! `selfrag backup|verify|restore|prune`, on the `selfrag-backup` library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use selfrag_backup::run::PARTIAL_SUFFIX;
use selfrag_backup::{
    BackupRun, Entry, EntryKind, Manifest, PgTools, PostgresBackup, PostgresRestore, QdrantTarget, DEFAULT_KEEP_DAYS,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::cli::{BackupArgs, BackupTarget, Global, PruneArgs, RestoreArgs, RestoreTarget, VerifyArgs};
use crate::output::{chain, exit_of, Exit, Failure, Out};

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

/// Fails with a configuration error (2) unless `tool` is installed: checked
/// before a run starts or a restore touches anything.
fn require_tool(tools: &PgTools, tool: &str) -> Result<(), Failure> {
    tools.resolve(tool).map(|_| ()).map_err(|e| Failure { exit: Exit::Usage, message: chain(&e) })
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
            require_tool(&global.pg_tools(), "pg_dump")?;
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

    let mut run = BackupRun::begin(root).map_err(|e| Failure::from_core("cannot start a backup run", &e))?;
    out.progress(format_args!("backup run {}: {}", run.dir().display(), plan.included.join(", ")));
    for (store, why) in &plan.skipped {
        out.progress(format_args!("{store}: skipped, {why}"));
    }
    // (store, error) of every store that failed.
    let mut failed: Vec<(&'static str, selfrag_core::Error)> = Vec::new();
    if let Some(opts) = &postgres {
        out.progress("backing up Postgres (pg_dump --format=custom)");
        match selfrag_backup::backup_postgres(&mut run, opts).await {
            Ok(entry) => out.progress(format_args!("Postgres: {} in {} ms", size(entry.size()), entry.duration_ms)),
            Err(e) => {
                out.progress(format_args!("Postgres backup FAILED: {}", chain(&e)));
                failed.push(("postgres", e));
            }
        }
    }
    if let Some(target) = &qdrant {
        out.progress(format_args!("backing up Qdrant collection `{}` (snapshot, download)", target.collection));
        match selfrag_backup::backup_qdrant(&mut run, target, None).await {
            Ok(entry) => out.progress(format_args!("Qdrant: {} in {} ms", size(entry.size()), entry.duration_ms)),
            Err(e) => {
                out.progress(format_args!("Qdrant backup FAILED: {}", chain(&e)));
                failed.push(("qdrant", e));
            }
        }
    }
    if let Some(path) = &edge {
        out.progress(format_args!("backing up the embedded index {}", path.display()));
        match selfrag_backup::backup_edge(&mut run, path, None).await {
            Ok(entry) => {
                out.progress(format_args!("embedded index: {} in {} ms", size(entry.size()), entry.duration_ms))
            }
            Err(e) => {
                out.progress(format_args!("embedded index backup FAILED: {}", chain(&e)));
                failed.push(("edge", e));
            }
        }
    }
    // Only unreachable services (a blip a retry may fix) give 3; any other
    // failure 1; a configuration problem (rejected credentials) 2.
    let exit = failed.iter().fold(Exit::Ok, |exit, (_, e)| exit.worst(exit_of(e)));
    let failures: Vec<Value> = failed
        .iter()
        .map(|(store, e)| json!({ "store": store, "outcome": exit_of(e).name(), "error": chain(e) }))
        .collect();
    let failed_text = failed.iter().map(|(store, e)| format!("{store}: {}", chain(e))).collect::<Vec<_>>().join("; ");
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
        let _ = writeln!(human, "  FAILED {store}: {}", chain(e));
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
    if let Ok(manifest) = Manifest::read(&dir) {
        if manifest.entries.iter().any(|e| e.kind == EntryKind::Postgres) {
            require_tool(&global.pg_tools(), "pg_restore")?;
        }
    }
    out.progress(format_args!("verifying {}{}", dir.display(), if args.deep { " (deep)" } else { "" }));
    let report = selfrag_backup::verify_run(&dir, &global.pg_tools(), args.deep)
        .await
        .map_err(|e| Failure::from_core(&format!("backup run {} failed verification", dir.display()), &e))?;
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
    let postgres_only = args.database.is_some() || args.create_database || args.clean || args.jobs.is_some();
    if postgres_only && args.target != RestoreTarget::Postgres {
        return Err(Failure::usage(
            "--database, --create-database, --clean and --jobs apply to `restore postgres` only",
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
            require_tool(&global.pg_tools(), "pg_restore")?;
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
            out.progress(format_args!("restoring Postgres from {} (checks first, then pg_restore)", dir.display()));
            let report = selfrag_backup::restore_postgres(&dir, entry, &opts)
                .await
                .map_err(|e| Failure::from_core("Postgres restore failed", &e))?;
            let mut human = format!(
                "restored `{}` into database {}{} in {} ms\n",
                report.entry,
                report.database,
                if report.created_database { " (created)" } else { "" },
                report.duration_ms
            );
            let _ = writeln!(human, "  tables: {}", report.tables.join(", "));
            let doc = json!({
                "run": dir.display().to_string(),
                "entry": report.entry,
                "database": report.database,
                "created_database": report.created_database,
                "tables": report.tables,
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
            let report = selfrag_backup::restore_qdrant(&dir, entry, &target)
                .await
                .map_err(|e| Failure::from_core("Qdrant restore failed", &e))?;
            let human = format!(
                "restored `{}` into collection `{}` ({}) in {} ms\n",
                report.entry,
                report.collection,
                size(report.bytes),
                report.duration_ms
            );
            let doc = json!({
                "run": dir.display().to_string(),
                "entry": report.entry,
                "collection": report.collection,
                "bytes": report.bytes,
                "duration_ms": report.duration_ms,
            });
            Ok(out.finish(Exit::Ok, &human, doc))
        }
        RestoreTarget::Edge => {
            let target = global.edge_path.as_deref().ok_or_else(|| {
                Failure::usage("no target directory: set SELFRAG_EDGE_PATH or --edge-path (missing or empty)")
            })?;
            let dir = global.run_dir(args.run.as_deref(), Some(EntryKind::Edge), entry)?;
            out.progress(format_args!("restoring the embedded index into {}", target.display()));
            selfrag_backup::restore_edge(&dir, entry, target)
                .await
                .map_err(|e| Failure::from_core("embedded index restore failed", &e))?;
            let human = format!("restored the embedded index from {} into {}\n", dir.display(), target.display());
            let doc = json!({ "run": dir.display().to_string(), "target": target.display().to_string() });
            Ok(out.finish(Exit::Ok, &human, doc))
        }
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
