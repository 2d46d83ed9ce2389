//! `selfrag-bench`: every selfrag storage adapter against hand-written calls
//! of the same driver, measured side by side in one run.
//!
//! ```text
//! cargo run --release -p selfrag-bench -- \
//!     --postgres postgres://postgres@127.0.0.1:5432/test --redis redis://127.0.0.1:6379 \
//!     [--qdrant http://127.0.0.1:6334] [--edge] [--tls] [--observability] [--quick] [--json PATH]
//! ```
//!
//! Rows whose server is not given are skipped with a message. Each row runs
//! the adapter ("ours") and its raw baseline with the same driver, the same
//! pool settings (Postgres: two pools of 16 built from one `PostgresConfig`;
//! Redis: one multiplexed connection each, as the stores use) and the same
//! concurrency (1, 8 and 64 tasks), in alternating rounds after a warm-up
//! (10 rounds; 2 with `--quick`). Reported: ops/s, p50 and p99 latency of
//! each side over all rounds, and the ratio ours / raw as the median of the
//! rounds' ratios (the JSON also has each round's ratio and the ratio of the
//! totals). The control rows ("control: SQL vs SQL (A/A, two pools)",
//! "control: HMGET vs HMGET (A/A, two connections)") run a raw call against
//! itself: their ratios are the harness's own noise.
//!
//! | row | ours | raw baseline |
//! | --- | --- | --- |
//! | memory append (1 row) | `MemoryStore::append` | prepared `INSERT ... VALUES` |
//! | memory batch append (1,000 rows) | `append_batch` | binary `COPY` (`BinaryCopyInWriter`) |
//! | memory query (one user, last 24 h, 50 rows) | `MemoryStore::query` | prepared `SELECT ... ORDER BY ... LIMIT 50` |
//! | session get | `SessionStore::get` | `HMGET` of the same hash + decoding |
//! | session touch | `SessionStore::touch` | `EVALSHA` of the same touch script |
//! | rate-limit check (minute/hour/day) | `RateLimiter::check` | `EVALSHA` of the same check script |
//! | vector upsert (256 × 384) | `VectorIndex::upsert` | qdrant-client `upsert_points` |
//! | vector filtered search (top 10) | `VectorIndex::search` | qdrant-client `query` |
//! | embedded filtered search | `EdgeIndex::search` | exact scan (plus recall@10, build time) |
//! | memory append over TLS (`--tls`) | `verify-full` | `sslmode=disable`, same private server |
//! | session get over TLS (`--tls`) | `rediss://` | `redis://`, same private server |
//! | session get, memory append (`--observability`, only these rows) | with a `tracing` subscriber and a Prometheus recorder | the same call with neither |
//!
//! The embedded rows (`--edge`) load 100,000 × 384 vectors into an
//! `EdgeIndex` twice, from two generators in `selfrag_testkit::data`:
//! `Corpus` (topics, 20-chunk documents with per-document metadata, on a
//! 32-dimensional latent space: shaped like a RAG corpus) and `Clustered`
//! (1,000 isolated clusters of isotropic noise: a stress case for filtered
//! graph search). Each is searched with two filters (`pdf AND tag a|b`,
//! 1/6 of the points; `pdf`, 1/3) under several settings: on the default
//! graph (m 16, ef_construct 100) the defaults (ACORN on, the engine's ef),
//! ACORN with ef 32, ACORN off with ef 32 and 64; on the same graph rebuilt
//! with int8 quantization, ACORN on and off at ef 32; on a denser graph
//! (m 32, ef_construct 200), ACORN off at ef 32 and 64. The exact
//! scan is a filter-first scan with the filter's verdict per point computed
//! up front and an 8-lane dot product.
//!
//! The memory query table (1,000,000 rows over 1,000 users, 1,000 rows each
//! 864 s apart) is built once in schema `selfrag_bench` with `INSERT ...
//! SELECT generate_series` and reused; `--quick` uses 100,000 rows in
//! `selfrag_bench_quick`. "Last 24 h" is relative to the table's newest row
//! (its build time), so a reused table gives the same 50-row pages. Appends go
//! to schema `selfrag_bench_writes`, truncated before and after.

mod edge;
mod measure;
mod observe;
mod pg;
mod qdrant;
mod redis;
mod tls;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use measure::{Res, Row};

/// Benchmarks selfrag storage adapters against raw driver calls.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Postgres URL for the memory rows (e.g. postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    postgres: Option<String>,
    /// Redis URL for the session and rate-limit rows (e.g. redis://127.0.0.1:6379).
    #[arg(long)]
    redis: Option<String>,
    /// Qdrant gRPC URL for the vector rows (e.g. http://127.0.0.1:6334).
    #[arg(long)]
    qdrant: Option<String>,
    /// Run the embedded (qdrant-edge) row: 100,000 x 384 vectors (heavy).
    #[arg(long)]
    edge: bool,
    /// Run only the embedded durability rows (journaled upserts, recovery).
    #[arg(long)]
    edge_durability: bool,
    /// Run only the embedded hot-backup figures (how long writes are held,
    /// sizes) at 100,000 x 384 (10,000 with --quick).
    #[arg(long)]
    edge_hot_backup: bool,
    /// Run only the coalesced-append rows of Postgres (with --postgres).
    #[arg(long)]
    only_coalesced: bool,
    /// Run only the observability rows: session get (with --redis) and
    /// memory append (with --postgres) with a tracing subscriber and a
    /// Prometheus recorder installed, against the same calls with none.
    #[arg(long)]
    observability: bool,
    /// Run the TLS rows: memory append and session get over TLS against the
    /// same call in clear, on private Postgres and Redis servers started
    /// from the machine's binaries (see `src/tls.rs`).
    #[arg(long)]
    tls: bool,
    /// Smoke run: fewer operations, a 100,000-row query table, 10,000 embedded vectors.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/selfrag-bench.json")]
    json: PathBuf,
}

/// What to run: concurrency levels and how many operations.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) rounds: u64,
    /// Wall time each side of a fast row runs for (at least).
    pub(crate) target: std::time::Duration,
}

impl Plan {
    /// Operations per side for a row whose full run does `base` at
    /// concurrency 1 (more at higher concurrency, a tenth in quick mode).
    pub(crate) fn ops(&self, concurrency: usize, base: u64) -> u64 {
        let scale = match concurrency {
            1 => 1,
            2..=8 => 2,
            _ => 3,
        };
        let n = base * scale;
        if self.quick {
            (n / 10).max(self.rounds)
        } else {
            n
        }
    }
}

pub(crate) fn row(operation: &str, concurrency: usize, c: measure::Comparison) -> Row {
    Row::new(operation, concurrency, c)
}

const HEADER: &str = "operation                                                        conc   ours ops/s   p50 ms   p99 ms    raw ops/s   p50 ms   p99 ms  ratio";

fn line(r: &Row) -> String {
    format!(
        "{:<64} {:>4} {:>12.0} {:>8.3} {:>8.3} {:>12.0} {:>8.3} {:>8.3} {:>6.3}",
        r.operation,
        r.concurrency,
        r.ours.ops_per_s,
        r.ours.p50_ms,
        r.ours.p99_ms,
        r.raw.ops_per_s,
        r.raw.p50_ms,
        r.raw.p99_ms,
        r.ratio()
    )
}

pub(crate) fn print_last(rows: &[Row]) {
    if let Some(r) = rows.last() {
        println!("  {}", line(r));
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = Args::parse();
    let target = std::time::Duration::from_millis(if args.quick { 150 } else { 2_000 });
    let plan = Plan { quick: args.quick, concurrency: vec![1, 8, 64], rounds: if args.quick { 2 } else { 10 }, target };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("selfrag-bench ({profile} build{})", if plan.quick { ", QUICK smoke run" } else { "" });

    if args.observability {
        observe::run(args.postgres.as_deref(), args.redis.as_deref(), &plan, &mut rows).await?;
    }
    match &args.postgres {
        _ if args.observability => {}
        Some(url) => pg::run(url, &plan, args.only_coalesced, &mut rows).await?,
        None => skipped.push("postgres rows (memory append/batch/query): no --postgres URL"),
    }
    match &args.redis {
        _ if args.observability => {}
        Some(url) => redis::run(url, &plan, &mut rows).await?,
        None => skipped.push("redis rows (session get/touch, rate-limit check): no --redis URL"),
    }
    if args.tls {
        tls::run(&plan, &mut rows).await?;
    } else {
        skipped.push("TLS rows (memory append, session get over TLS vs plaintext): pass --tls");
    }
    match &args.qdrant {
        Some(url) => qdrant::run(url, &plan, &mut rows).await?,
        None => skipped.push("qdrant rows (vector upsert/search): no --qdrant URL"),
    }
    if args.edge {
        for dataset in [edge::Dataset::Corpus, edge::Dataset::Islands] {
            edge::run(&plan, dataset, &mut rows).await?;
        }
        edge::run_durability(&plan, &mut rows).await?;
    } else if args.edge_durability {
        edge::run_durability(&plan, &mut rows).await?;
    } else if args.edge_hot_backup {
        edge::run_hot_backup(&plan, &mut rows).await?;
    } else {
        skipped.push("embedded filtered search row: pass --edge (heavy: 100,000 x 384 vectors)");
    }

    println!("\n{HEADER}");
    for r in &rows {
        println!("{}", line(r));
    }
    for r in rows.iter().filter(|r| !r.extra.is_empty()) {
        println!("{}: {}", r.operation, serde_json::Value::Object(r.extra.clone()));
    }
    for s in &skipped {
        println!("SKIPPED: {s}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("total {elapsed:.1} s");

    let report = serde_json::json!({
        "profile": profile,
        "quick": plan.quick,
        "elapsed_s": measure::round(elapsed, 2),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "skipped": skipped,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", args.json.display());
    Ok(())
}
