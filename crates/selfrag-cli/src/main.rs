//! `selfrag`, the operator tool of selfrag storage.
//!
//! ```text
//! selfrag migrate up|status       apply / inspect the Postgres migrations
//! selfrag doctor                  check a deployment (Postgres, Redis, Qdrant, embedded index)
//! selfrag backup [all|postgres|qdrant|edge] [--table T]   a new run under --backup-dir
//! selfrag verify [--run NAME | --kind K] [--deep]         sizes, SHA-256, pg_restore --list
//! selfrag restore postgres|qdrant|edge [--run NAME] ...   checked restore of one store
//! selfrag prune [--keep-days 30] [--dry-run]              retention
//! selfrag erase-user <uuid> [--vectors-tenant T] [--vectors-filter JSON] [--dry-run]
//! selfrag export-user <uuid> [--vectors-tenant T] [--vectors-filter JSON] [--out FILE]
//! selfrag erasures [--after SEQ]                          the erasure ledger
//! ```
//!
//! The backup layout, manifest and guarantees are `selfrag-backup`'s; the
//! operating procedure is `BACKUP_STRATEGY.md` at the repository root.
//!
//! Every setting is a flag with an environment fallback (`--database-url` /
//! `DATABASE_URL`, `--schema` / `SELFRAG_POSTGRES_SCHEMA`, `--redis-url` /
//! `REDIS_URL` (several comma-separated URLs: Redis Cluster seeds),
//! `--redis-cluster` / `SELFRAG_REDIS_CLUSTER`, `--redis-prefix` /
//! `SELFRAG_REDIS_PREFIX`, `--qdrant-url` /
//! `QDRANT_URL`, `--qdrant-api-key` / `QDRANT_API_KEY`, `--collection` /
//! `SELFRAG_QDRANT_COLLECTION`, `--vector-dimension` /
//! `SELFRAG_VECTOR_DIMENSION`, `--distance` / `SELFRAG_VECTOR_DISTANCE`,
//! `--edge-path` / `SELFRAG_EDGE_PATH`, `--backup-dir` /
//! `SELFRAG_BACKUP_DIR`, `--pg-bin-dir` / `SELFRAG_PG_BIN_DIR`); see
//! `selfrag --help`. The TLS settings are the services' own: Postgres's in
//! the URL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), Redis's
//! `rediss://` and the other `SELFRAG_REDIS_*` variables, Qdrant's
//! `https://`.
//!
//! # Output
//! Human-readable text on stdout by default; with `--json` exactly one JSON
//! document on stdout, always with `ok`, `exit_code` and `outcome`, plus
//! `error` on failure. Progress lines for long steps go to stderr (`-q`
//! silences them), so they never mix with the JSON.
//!
//! # Exit codes
//! | code | meaning |
//! | --- | --- |
//! | 0 | ok: the operation succeeded, every check passed (skipped services and warnings do not count) |
//! | 1 | a check or an operation failed (pending or edited migrations, a missing index, a wrong TTL, a corrupt backup, a store of `backup` that failed, ...) |
//! | 2 | usage or configuration error: unknown flag, missing `DATABASE_URL` (also for `backup all`), invalid URL or API key, a Postgres database that does not exist (also the target of `restore postgres` without `--create-database`), TLS asked for where it cannot work, credentials the service rejected, `pg_dump`/`pg_restore` not installed, a backup directory that cannot be created |
//! | 3 | a service was unreachable or timed out, and nothing else failed |
//!
//! With `--json`, usage errors clap finds are the one JSON document too.
//! A configuration error says what to change (`... Fix: ...`): the setting
//! or flag, e.g. `--pg-bin-dir` / `SELFRAG_PG_BIN_DIR`, `--create-database`,
//! `--clean`, `--replace`.
//!
//! # Secrets
//! No password or API key is ever printed, in either mode or on either
//! stream: URLs are shown (when at all) without their password, `--help`
//! hides the values of the URL and key variables, and as a last net every
//! password and key found in the settings (at least 4 characters long) is
//! replaced by `***` in everything the tool writes.

mod backup;
mod cli;
mod config;
mod doctor;
mod migrate;
mod output;
mod progress;
mod secrets;
mod user;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::output::{Exit, Failure, Out};

fn main() -> ExitCode {
    // Before parsing: clap's usage errors are printed through the net too.
    secrets::collect();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let out = Out { json: cli.global.json, quiet: cli.global.quiet };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return out.fail(&Failure::failed(format!("cannot start the async runtime: {e}"))).into(),
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Migrate { action } => migrate::run(&cli.global, action, out).await,
            Command::Doctor => doctor::run(&cli.global, out).await,
            Command::Backup(args) => backup::backup(&cli.global, args, out).await,
            Command::Verify(args) => backup::verify(&cli.global, args, out).await,
            Command::Restore(args) => backup::restore(&cli.global, args, out).await,
            Command::Prune(args) => backup::prune(&cli.global, args, out).await,
            Command::EraseUser(args) => user::erase(&cli.global, args, out).await,
            Command::ExportUser(args) => user::export(&cli.global, args, out).await,
            Command::Erasures(args) => user::erasures(&cli.global, args, out).await,
        }
    });
    let exit: Exit = match result {
        Ok(exit) => exit,
        Err(failure) => out.fail(&failure),
    };
    exit.into()
}

/// A command line clap rejected (or `--help` / `--version`). Help and version
/// go to stdout with exit 0; a usage error is exit 2, printed by clap, or
/// with `--json` anywhere before a `--` as the one JSON document on stdout
/// (the arguments did not parse, so the flag is looked for by hand).
fn usage_error(e: &clap::Error) -> ExitCode {
    let code = e.exit_code();
    let json = std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
    if code == 0 || !json {
        // Rendered without styles, so the scrubbed text is plain; help and
        // version go to stdout, errors to stderr, as clap does.
        let text = e.render().to_string();
        if e.use_stderr() {
            eprint!("{}", secrets::scrub(&text));
        } else {
            print!("{}", secrets::scrub(&text));
        }
        return ExitCode::from(u8::try_from(code).unwrap_or(Exit::Usage.code()));
    }
    let doc = json!({
        "ok": false,
        "exit_code": Exit::Usage.code(),
        "outcome": Exit::Usage.name(),
        "error": e.render().to_string().trim(),
    });
    println!("{}", secrets::scrub(&format!("{doc:#}")));
    Exit::Usage.into()
}
