//! `selfrag backup|verify|restore|prune`, on the `selfrag-backup` library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use selfrag_backup::{
    BackupRun, Entry, PgTools, PostgresBackup, PostgresRestore, QdrantTarget, RunSummary, DEFAULT_KEEP_DAYS,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::cli::{BackupArgs, BackupTarget, Global, PruneArgs, RestoreArgs, RestoreTarget, VerifyArgs};
use crate::output::{Exit, Failure, Out};

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

    /// The run directory named `run`, or the newest complete run.
    fn run_dir(&self, run: Option<&str>) -> Result<PathBuf, Failure> {
        let root = self.backup_root()?;
        match run {
            Some(name) => {
                if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                    return Err(Failure::usage(format!("--run `{name}` must be a run directory name")));
                }
                let dir = root.join(name);
                if !dir.is_dir() {
                    return Err(Failure::failed(format!("no backup run {}", dir.display())));
                }
                Ok(dir)
            }
            None => selfrag_backup::latest_run(root)
                .map(|r: RunSummary| r.dir)
                .map_err(|e| Failure::from_core("finding the newest backup run", &e)),
        }
    }
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

pub(crate) async fn backup(global: &Global, args: &BackupArgs, out: Out) -> Result<Exit, Failure> {
    let root = global.backup_root()?;
    let want = |t: BackupTarget| args.target == BackupTarget::All || args.target == t;
    let explicit = |t: BackupTarget| args.target == t;

    // Decide and check everything before the run directory exists.
    let postgres = match global.database_url() {
        Some(url) if want(BackupTarget::Postgres) => {
            if let Some(config) = global.postgres() {
                config.pg_config().map_err(|e| Failure::from_core("invalid Postgres configuration", &e))?;
            }
            let mut opts = PostgresBackup::new(url).tools(global.pg_tools());
            if let Some(schema) = global.schema.as_deref().filter(|s| !s.trim().is_empty()) {
                opts = opts.schema(schema);
            }
            for table in &args.tables {
                opts = opts.table(table);
            }
            Some(opts)
        }
        None if explicit(BackupTarget::Postgres) => {
            return Err(Failure::usage("Postgres is not configured: set DATABASE_URL or --database-url"))
        }
        _ => None,
    };
    if !args.tables.is_empty() && postgres.is_none() {
        return Err(Failure::usage(
            "--table needs a Postgres backup (`backup postgres` or `backup all` with DATABASE_URL)",
        ));
    }
    let qdrant = match global.qdrant_target() {
        Some(target) if want(BackupTarget::Qdrant) => Some(target),
        None if explicit(BackupTarget::Qdrant) => {
            return Err(Failure::usage("Qdrant is not configured: set QDRANT_URL or --qdrant-url"))
        }
        _ => None,
    };
    let edge = match &global.edge_path {
        Some(path) if want(BackupTarget::Edge) => Some(path.clone()),
        None if explicit(BackupTarget::Edge) => {
            return Err(Failure::usage("the embedded index is not configured: set SELFRAG_EDGE_PATH or --edge-path"))
        }
        _ => None,
    };
    if postgres.is_none() && qdrant.is_none() && edge.is_none() {
        return Err(Failure::usage(
            "nothing to back up: set DATABASE_URL, QDRANT_URL or SELFRAG_EDGE_PATH (or the matching flags)",
        ));
    }

    let mut run = BackupRun::begin(root).map_err(|e| Failure::from_core("cannot start a backup run", &e))?;
    out.progress(format_args!("backup run {}", run.dir().display()));
    let partial = run.dir().display().to_string();
    let left = |what: &str, e: &selfrag_core::Error| {
        let mut f = Failure::from_core(what, e);
        f.message.push_str(&format!(" (the unfinished run {partial} is not a backup; `selfrag prune` removes it)"));
        f
    };
    if let Some(opts) = &postgres {
        out.progress("backing up Postgres (pg_dump --format=custom)");
        let entry =
            selfrag_backup::backup_postgres(&mut run, opts).await.map_err(|e| left("Postgres backup failed", &e))?;
        out.progress(format_args!("Postgres: {} in {} ms", size(entry.size()), entry.duration_ms));
    }
    if let Some(target) = &qdrant {
        out.progress(format_args!("backing up Qdrant collection `{}` (snapshot, download)", target.collection));
        let entry = selfrag_backup::backup_qdrant(&mut run, target, None)
            .await
            .map_err(|e| left("Qdrant backup failed", &e))?;
        out.progress(format_args!("Qdrant: {} in {} ms", size(entry.size()), entry.duration_ms));
    }
    if let Some(path) = &edge {
        out.progress(format_args!("backing up the embedded index {}", path.display()));
        let entry = selfrag_backup::backup_edge(&mut run, path, None)
            .await
            .map_err(|e| left("embedded index backup failed", &e))?;
        out.progress(format_args!("embedded index: {} in {} ms", size(entry.size()), entry.duration_ms));
    }
    let done = run.finish().map_err(|e| left("finishing the backup run failed", &e))?;

    let mut human = format!("backup run {} complete\n", done.dir.display());
    for entry in &done.manifest.entries {
        human.push_str(&entry_line(entry));
    }
    let doc = json!({
        "run": done.manifest.run,
        "dir": done.dir.display().to_string(),
        "manifest": serde_json::to_value(&done.manifest).unwrap_or(Value::Null),
    });
    Ok(out.finish(Exit::Ok, &human, doc))
}

pub(crate) async fn verify(global: &Global, args: &VerifyArgs, out: Out) -> Result<Exit, Failure> {
    let dir = global.run_dir(args.run.as_deref())?;
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
    let entry = args.entry.as_deref();
    match args.target {
        RestoreTarget::Postgres => {
            let url = global
                .database_url()
                .ok_or_else(|| Failure::usage("Postgres is not configured: set DATABASE_URL or --database-url"))?;
            let dir = global.run_dir(args.run.as_deref())?;
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
                .ok_or_else(|| Failure::usage("Qdrant is not configured: set QDRANT_URL or --qdrant-url"))?;
            let dir = global.run_dir(args.run.as_deref())?;
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
            let dir = global.run_dir(args.run.as_deref())?;
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
