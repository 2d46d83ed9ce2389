//! `selfrag erase-user`, `selfrag export-user` and `selfrag erasures`: one
//! user's data across every configured store, through the facade's
//! `Storage::erase_user` / `export_user`, and the erasure ledger.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use selfrag_core::{ErasureLedger, Filter, Tenant, UserId, VectorIndex};
use selfrag_facade::{EraseOptions, ErasePlan, ProgressEvent, ProgressFn, Storage, StorageOptions};
use serde_json::json;

use crate::cli::{EraseUserArgs, ErasuresArgs, ExportUserArgs, Global, UserScopeArgs};
use crate::output::{exit_of, explain, Exit, Failure, Out};

/// The user id argument, checked.
fn user_id(text: &str) -> Result<UserId, Failure> {
    UserId::parse(text.trim()).map_err(|e| Failure::usage(format!("invalid user id `{text}`: {}", explain(&e))))
}

/// The vector plan of `--vectors-tenant` / `--vectors-filter`.
fn plan(scope: &UserScopeArgs) -> Result<ErasePlan, Failure> {
    let filter = match &scope.vectors_filter {
        None => None,
        Some(text) => {
            if scope.vectors_tenants.is_empty() {
                return Err(Failure::usage(
                    "--vectors-filter needs at least one --vectors-tenant (the tenants the filter applies in)",
                ));
            }
            let filter: Filter = serde_json::from_str(text).map_err(|e| {
                Failure::usage(format!(
                    "invalid --vectors-filter: {e}. It is a selfrag filter as JSON, e.g. \
                     '{{\"eq\":{{\"field\":{{\"extra\":\"user_id\"}},\"value\":\"<uuid>\"}}}}'"
                ))
            })?;
            Some(filter)
        }
    };
    let mut plan = ErasePlan::new();
    for name in &scope.vectors_tenants {
        let tenant = Tenant::new(name.clone())
            .map_err(|e| Failure::usage(format!("invalid --vectors-tenant: {}", explain(&e))))?;
        plan = plan.with_vectors(tenant, filter.clone());
    }
    plan.validate().map_err(|e| Failure::usage(format!("invalid vector plan: {}", explain(&e))))?;
    Ok(plan)
}

/// The stores of the deployment, composed as the services compose them
/// (`Storage::from_lookup` over the tool's settings), without migrating.
///
/// Postgres is required (the users, memory logs and the ledger live
/// there) and must be migrated (the ledger is migration 4). Vectors are
/// opened only when the plan names some, and then never created: the
/// Qdrant collection must exist, and the embedded index directory must
/// hold an index.
async fn storage(global: &Global, plan: &ErasePlan, out: Out) -> Result<Storage, Failure> {
    let (_, pool) = global.postgres_pool()?;
    let status = selfrag_postgres::migration_status(&pool)
        .await
        .map_err(|e| Failure::from_core("reading the migration status failed", &e))?;
    if let Some(problem) = status.problem() {
        return Err(Failure::failed(format!("the database's migrations are not in order: {problem}")));
    }
    if !status.is_up_to_date() {
        return Err(Failure::usage(format!(
            "schema {} is not migrated (pending: {}); the erasure ledger needs migration 4. Fix: run `selfrag migrate up`",
            status.schema,
            status.pending().map(|m| format!("{:03}", m.version)).collect::<Vec<_>>().join(", ")
        )));
    }
    drop(pool);

    let lookup = |name: &str| -> Option<String> {
        let value = match name {
            "DATABASE_URL" => global.database_url.clone(),
            "SELFRAG_POSTGRES_SCHEMA" => global.schema.clone(),
            "REDIS_URL" => global.redis_url.clone(),
            "SELFRAG_REDIS_PREFIX" => Some(global.redis_prefix.clone()),
            "SELFRAG_REDIS_CLUSTER" => global.redis_cluster.clone(),
            // Vectors are opened below, only when the plan names some.
            "QDRANT_URL" | "QDRANT_API_KEY" | "SELFRAG_QDRANT_COLLECTION" | "SELFRAG_EDGE_PATH" => None,
            other => std::env::var(other).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    };
    let options = StorageOptions { migrate: false, ..StorageOptions::default() };
    let mut storage = Storage::from_lookup(&options, lookup)
        .await
        .map_err(|e| Failure::from_core("connecting to the stores failed", &e))?;
    out.progress(format_args!("stores: {}", storage.backends));
    if !plan.vectors().is_empty() {
        let (name, index) = vectors(global).await?;
        storage.vectors = index;
        storage.backends.vectors = name;
        out.progress(format_args!("vectors: {name}"));
    }
    Ok(storage)
}

/// The vector index the plan's scopes live in: Qdrant when configured,
/// else the embedded index; neither is created here.
async fn vectors(global: &Global) -> Result<(&'static str, Arc<dyn VectorIndex>), Failure> {
    if let Some(config) = global.qdrant() {
        let config = config?;
        let index = config.build().map_err(|e| Failure::from_core("invalid Qdrant configuration", &e))?;
        // `report` changes nothing, and fails for a missing collection.
        index.report().await.map_err(|e| match e.kind() {
            selfrag_core::ErrorKind::Incompatible => Failure::usage(format!(
                "Qdrant collection `{}`: {}. Fix: set --collection / SELFRAG_QDRANT_COLLECTION to the services' \
                 collection",
                global.collection,
                explain(&e)
            )),
            _ => Failure::from_core("checking the Qdrant collection failed", &e),
        })?;
        return Ok(("qdrant", Arc::new(index)));
    }
    if let Some(path) = &global.edge_path {
        let spec = global.spec().ok_or_else(|| {
            Failure::usage(
                "opening the embedded index needs its dimension. Fix: set --vector-dimension / \
                 SELFRAG_VECTOR_DIMENSION (and --distance if not cosine)",
            )
        })??;
        check_edge_dir(path)?;
        let index =
            selfrag_edge::EdgeIndex::open(path, spec, selfrag_edge::EdgeIndexConfig::default()).await.map_err(|e| {
                match e.kind() {
                    selfrag_core::ErrorKind::Unavailable => Failure::failed(format!(
                        "the embedded index at {} is open in another process ({}). Fix: stop the service that holds \
                     it, or erase through the service (`Storage::erase_user`)",
                        path.display(),
                        explain(&e)
                    )),
                    _ => Failure::from_core("opening the embedded index failed", &e),
                }
            })?;
        return Ok(("edge", Arc::new(index)));
    }
    Err(Failure::usage(
        "--vectors-tenant names vectors, but no vector store is configured. Fix: set QDRANT_URL / --qdrant-url or \
         SELFRAG_EDGE_PATH / --edge-path",
    ))
}

/// An embedded index directory must exist and hold an index: the tool
/// never creates one (a wrong path would otherwise "erase" from a new,
/// empty index).
fn check_edge_dir(path: &Path) -> Result<(), Failure> {
    let missing: Vec<&str> = ["wal", "segments"].into_iter().filter(|d| !path.join(d).is_dir()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{} holds no embedded index (missing {}). Fix: set --edge-path / SELFRAG_EDGE_PATH to the index directory",
            path.display(),
            missing.join(", ")
        )))
    }
}

/// Progress lines on stderr: at most one per step and second, and each
/// step's end.
fn progress_printer(out: Out) -> Option<ProgressFn> {
    if out.quiet {
        return None;
    }
    let state = std::sync::Mutex::new((Instant::now(), ""));
    let started = Instant::now();
    Some(Arc::new(move |event: &ProgressEvent| {
        let Ok(mut last) = state.lock() else { return };
        let due = event.finished || last.1 != event.step || last.0.elapsed().as_secs() >= 1;
        if !due {
            return;
        }
        *last = (Instant::now(), event.step);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = event.count as f64 / secs;
        if event.finished {
            out.progress(format_args!("{}: {} done", event.step, event.count));
        } else {
            out.progress(format_args!("{}: {} so far ({rate:.0}/s)", event.step, event.count));
        }
    }))
}

pub(crate) async fn erase(global: &Global, args: &EraseUserArgs, out: Out) -> Result<Exit, Failure> {
    let user = user_id(&args.scope.user)?;
    let plan = plan(&args.scope)?;
    let storage = storage(global, &plan, out).await?;
    let options = EraseOptions { dry_run: args.dry_run, progress: progress_printer(out), ..EraseOptions::default() };
    out.progress(format_args!(
        "{} user {user} ({} vector scope(s))",
        if args.dry_run { "counting (dry run) what would be erased of" } else { "erasing" },
        plan.vectors().len()
    ));
    let report = storage.erase_user_with(user, &plan, &options).await.map_err(|e| Failure {
        exit: exit_of(&e.source),
        message: format!("{e}. Done: {}", serde_json::to_string(&e.partial).unwrap_or_default()),
    })?;

    let mut human = String::new();
    let verb = if report.dry_run { "would erase" } else { "erased" };
    let _ = writeln!(human, "user {user}: {verb}{}", if report.dry_run { " (dry run: nothing deleted)" } else { "" });
    for v in &report.vectors {
        let _ = writeln!(human, "  vectors in tenant {}: {} chunk(s)", v.tenant, v.chunks);
    }
    match report.rate_limit_keys {
        Some(n) => {
            let _ = writeln!(human, "  rate-limit state: {n} key(s)");
        }
        None => {
            let _ = writeln!(human, "  rate-limit state: not counted in a dry run");
        }
    }
    for s in &report.sessions {
        let _ = writeln!(human, "  sessions ({}): {}", s.backend, s.sessions);
    }
    let _ = writeln!(human, "  memory logs: {}", report.memory_logs);
    let _ = writeln!(human, "  user row: {}", if report.user_row { "yes" } else { "none" });
    if !report.dry_run {
        let _ = writeln!(
            human,
            "  ledger: {}{}",
            if report.ledger_recorded { "recorded" } else { "already recorded" },
            report.ledger_seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
        );
    }
    let doc = json!({ "user": user, "backends": storage.backends.to_string(), "report": report });
    Ok(out.finish(Exit::Ok, &human, doc))
}

pub(crate) async fn export(global: &Global, args: &ExportUserArgs, out: Out) -> Result<Exit, Failure> {
    let user = user_id(&args.scope.user)?;
    let plan = plan(&args.scope)?;
    if args.out.is_none() && out.json {
        return Err(Failure::usage(
            "--json prints a summary on stdout, where the export would go too. Fix: add --out FILE",
        ));
    }
    if let Some(path) = &args.out {
        if path.exists() {
            return Err(Failure::usage(format!(
                "{} already exists; an export never overwrites a file. Fix: remove it or choose another --out",
                path.display()
            )));
        }
    }
    let storage = storage(global, &plan, out).await?;
    let progress = progress_printer(out);
    let started = Instant::now();
    let report = match &args.out {
        Some(path) => {
            // Written under a temporary name and renamed when complete, so
            // a failed export leaves no file that looks whole.
            let tmp = path.with_file_name(format!(
                ".{}.partial",
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into())
            ));
            let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| {
                Failure::usage(format!("cannot create {}: {e}. Fix: choose a writable --out", tmp.display()))
            })?;
            let mut writer = std::io::BufWriter::new(file);
            let result = async {
                let report = storage
                    .export_user_with(user, &plan, &mut writer, progress)
                    .await
                    .map_err(|e| Failure::from_core("export failed", &e))?;
                let file = writer.into_inner().map_err(|e| Failure::failed(format!("writing the export: {e}")))?;
                file.sync_all().map_err(|e| Failure::failed(format!("writing the export: {e}")))?;
                std::fs::rename(&tmp, path).map_err(|e| Failure::failed(format!("renaming the export: {e}")))?;
                Ok::<_, Failure>(report)
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?
        }
        None => {
            let stdout = std::io::stdout();
            let mut writer = std::io::BufWriter::new(stdout.lock());
            let report = storage
                .export_user_with(user, &plan, &mut writer, progress)
                .await
                .map_err(|e| Failure::from_core("export failed", &e))?;
            writer.flush().map_err(|e| Failure::failed(format!("writing the export: {e}")))?;
            report
        }
    };
    let elapsed = started.elapsed().as_millis();
    out.progress(format_args!(
        "exported user {user}: {} memory log(s), {} session(s), {} chunk(s), {} line(s) in {elapsed} ms",
        report.memory_logs, report.sessions, report.chunks, report.lines
    ));
    match &args.out {
        Some(path) => {
            let human = format!(
                "exported user {user} to {}: {} line(s) ({} memory log(s), {} session(s), {} chunk(s){})\n",
                path.display(),
                report.lines,
                report.memory_logs,
                report.sessions,
                report.chunks,
                if report.user_exists { "" } else { "; no user row" }
            );
            let doc = json!({ "user": user, "out": path.display().to_string(), "report": report });
            Ok(out.finish(Exit::Ok, &human, doc))
        }
        // The export itself was the output.
        None => Ok(Exit::Ok),
    }
}

pub(crate) async fn erasures(global: &Global, args: &ErasuresArgs, out: Out) -> Result<Exit, Failure> {
    let (config, pool) = global.postgres_pool()?;
    let ledger = selfrag_postgres::PostgresErasureLedger::with_config(pool, &config);
    let position = ledger.position().await.map_err(|e| ledger_failure(&e))?;
    let mut records = Vec::new();
    let mut after = args.after;
    loop {
        let page = ledger.list_after(after, selfrag_core::erasure::MAX_LIST).await.map_err(|e| ledger_failure(&e))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        records.extend(page);
    }
    let mut human =
        format!("erasure ledger: {} record(s) after seq {}, position {position}\n", records.len(), args.after);
    for r in &records {
        let _ = writeln!(human, "  {:>6}  {}  {}  vectors {}", r.seq, r.user, r.erased_at, r.vectors);
    }
    let doc = json!({ "position": position, "after": args.after, "erasures": records });
    Ok(out.finish(Exit::Ok, &human, doc))
}

fn ledger_failure(e: &selfrag_core::Error) -> Failure {
    let text = e.to_string();
    if text.contains("erasures") && text.contains("does not exist") {
        return Failure::usage("the erasure ledger does not exist yet (migration 4). Fix: run `selfrag migrate up`");
    }
    Failure::from_core("reading the erasure ledger failed", e)
}

/// The vector store a restore just wrote.
pub(crate) enum RestoredVectors<'a> {
    /// The Qdrant collection of the settings.
    Qdrant,
    /// The embedded index in this directory.
    Edge(&'a Path),
}

/// Re-applies, in a restored vector store, the vector scopes of every
/// erasure in the ledger of `DATABASE_URL` (see BACKUP_STRATEGY.md,
/// "Erasures and restores"): a snapshot taken before an erasure holds the
/// user's chunks. Returns how many erasures named vectors (`None`: no
/// Postgres configured, so no ledger to read). The index is opened only
/// when some erasure names vectors.
pub(crate) async fn reapply_vector_erasures(
    global: &Global,
    target: RestoredVectors<'_>,
    out: Out,
) -> Result<Option<u64>, Failure> {
    let Some(config) = global.postgres() else {
        out.progress("DATABASE_URL is not set: no erasure ledger to re-apply to the restored vectors");
        return Ok(None);
    };
    let pool = config.build().map_err(|e| Failure::from_core("invalid Postgres configuration", &e))?;
    let ledger = selfrag_postgres::PostgresErasureLedger::with_config(pool, &config);
    let mut plans = Vec::new();
    let mut after = 0;
    loop {
        let page = ledger.list_after(after, selfrag_core::erasure::MAX_LIST).await.map_err(|e| ledger_failure(&e))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in page {
            let plan = ErasePlan::from_json(&record.vectors).map_err(|e| {
                Failure::failed(format!("ledger record {} holds no readable plan: {}", record.seq, explain(&e)))
            })?;
            if !plan.vectors().is_empty() {
                plans.push((record.user, plan));
            }
        }
    }
    if plans.is_empty() {
        return Ok(Some(0));
    }
    out.progress(format_args!("re-applying {} erasure(s) to the restored vectors", plans.len()));
    let index: Arc<dyn VectorIndex> = match target {
        RestoredVectors::Qdrant => {
            let config = global.qdrant().ok_or_else(|| Failure::usage("Qdrant is not configured"))??;
            Arc::new(config.build().map_err(|e| Failure::from_core("invalid Qdrant configuration", &e))?)
        }
        RestoredVectors::Edge(path) => {
            let spec = global.spec().ok_or_else(|| {
                Failure::failed(format!(
                    "the index was restored, but {} erasure(s) in the ledger name vectors and opening the index to \
                     erase them again needs its dimension. Fix: run `selfrag erase-user` for them with \
                     --vector-dimension, or restore again with --vector-dimension / SELFRAG_VECTOR_DIMENSION",
                    plans.len()
                ))
            })??;
            Arc::new(
                selfrag_edge::EdgeIndex::open(path, spec, selfrag_edge::EdgeIndexConfig::default())
                    .await
                    .map_err(|e| Failure::from_core("opening the restored index failed", &e))?,
            )
        }
    };
    let all = Filter::All(Vec::new());
    for (user, plan) in &plans {
        for scope in plan.vectors() {
            index.delete_by_filter(&scope.tenant, scope.filter.as_ref().unwrap_or(&all)).await.map_err(|e| {
                Failure::from_core(&format!("re-applying the erasure of user {user} to the restored vectors"), &e)
            })?;
        }
    }
    Ok(Some(u64::try_from(plans.len()).unwrap_or(u64::MAX)))
}
