//! `selfrag`, the operator tool of selfrag storage.
//!
//! ```text
//! selfrag migrate up|status       apply / inspect the Postgres migrations
//! selfrag doctor                  check a deployment (Postgres, Redis, Qdrant, embedded index)
//! selfrag backup [all|postgres|qdrant|edge] [--table T]   a new run under --backup-dir
//! selfrag verify [--run NAME] [--deep]                    sizes, SHA-256, pg_restore --list
//! selfrag restore postgres|qdrant|edge [--run NAME] ...   checked restore of one store
//! selfrag prune [--keep-days 30] [--dry-run]              retention
//! ```
//!
//! The backup layout, manifest and guarantees are `selfrag-backup`'s; the
//! operating procedure is `BACKUP_STRATEGY.md` at the repository root.
//!
//! Every setting is a flag with an environment fallback (`--database-url` /
//! `DATABASE_URL`, `--schema` / `SELFRAG_POSTGRES_SCHEMA`, `--redis-url` /
//! `REDIS_URL`, `--redis-prefix` / `SELFRAG_REDIS_PREFIX`, `--qdrant-url` /
//! `QDRANT_URL`, `--qdrant-api-key` / `QDRANT_API_KEY`, `--collection` /
//! `SELFRAG_QDRANT_COLLECTION`, `--vector-dimension` /
//! `SELFRAG_VECTOR_DIMENSION`, `--distance` / `SELFRAG_VECTOR_DISTANCE`,
//! `--edge-path` / `SELFRAG_EDGE_PATH`, `--backup-dir` /
//! `SELFRAG_BACKUP_DIR`, `--pg-bin-dir` / `SELFRAG_PG_BIN_DIR`); see
//! `selfrag --help`.
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
//! | 0 | ok: the operation succeeded, every check passed (skipped services do not count) |
//! | 1 | a check or an operation failed (pending or edited migrations, a missing index, a wrong TTL, a corrupt backup, ...) |
//! | 2 | usage or configuration error (unknown flag, missing `DATABASE_URL`, invalid URL) |
//! | 3 | a service was unreachable or timed out, and nothing else failed |

mod backup;
mod cli;
mod config;
mod doctor;
mod migrate;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::{Exit, Failure, Out};

fn main() -> ExitCode {
    // Clap prints usage errors itself and exits with 2 (0 for --help).
    let cli = Cli::parse();
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
        }
    });
    let exit: Exit = match result {
        Ok(exit) => exit,
        Err(failure) => out.fail(&failure),
    };
    exit.into()
}
