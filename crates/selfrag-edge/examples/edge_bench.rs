//! Measures `EdgeIndex`: upsert rate, optimization (HNSW build) time, and
//! filtered and unfiltered search (queries per second, latency, recall@10
//! against exact search) on clustered vectors.
//!
//! ```text
//! cargo run --release -p selfrag-edge --example edge_bench
//! EDGE_BENCH_N=20000 EDGE_BENCH_QUERIES=300 cargo run --release -p selfrag-edge --example edge_bench
//! ```
//!
//! Data: `EDGE_BENCH_N` (default 100,000) vectors of dimension
//! `EDGE_BENCH_DIM` (default 384) from `selfrag_testkit::data::Clustered`
//! (1,000 clusters, seeded; described there), cosine distance; the filtered
//! query is `selfrag_testkit::data::filter()` (1/6 of the points). Queries are
//! fresh points drawn the same way (not in the index). Exact results come
//! from a brute-force scan in this process.

use std::time::{Duration, Instant};

use selfrag_core::{ChunkId, Distance, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig};
use selfrag_testkit::data::{filter, normalize, Clustered, CLUSTERS, NOISE};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct Point {
    id: ChunkId,
    vector: Vec<f32>,
    pdf_ab: bool,
}

/// Exact top-10 ids by cosine, over the points passing `keep`.
fn exact_top(points: &[Point], q: &[f32], k: usize, filtered: bool) -> Vec<ChunkId> {
    let mut qn = q.to_vec();
    normalize(&mut qn);
    let mut scored: Vec<(f32, ChunkId)> =
        points.iter().filter(|p| !filtered || p.pdf_ab).map(|p| (dot(&qn, &p.vector), p.id)).collect();
    let k = k.min(scored.len());
    scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.into_iter().map(|(_, id)| id).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn run_queries(
    index: &EdgeIndex,
    tenant: &Tenant,
    queries: &[Vec<f32>],
    truth: &[Vec<ChunkId>],
    filter: Option<&Filter>,
    label: &str,
) -> selfrag_core::Result<()> {
    let mut lat = Vec::with_capacity(queries.len());
    let mut hit = 0usize;
    let mut total = 0usize;
    let start = Instant::now();
    for (q, want) in queries.iter().zip(truth) {
        let mut req = SearchRequest::new(q.clone(), 10);
        if let Some(f) = filter {
            req = req.filter(f.clone());
        }
        let t = Instant::now();
        let hits = index.search(tenant, &req).await?;
        lat.push(t.elapsed());
        total += want.len();
        hit += hits.iter().filter(|h| want.contains(&h.id)).count();
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort();
    #[allow(clippy::cast_precision_loss)]
    let (qps, recall) = (queries.len() as f64 / wall, hit as f64 / total.max(1) as f64);
    println!(
        "{label:<44} p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.1} q/s  recall@10 {:.3}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        qps,
        recall
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> selfrag_core::Result<()> {
    let n = env_usize("EDGE_BENCH_N", 100_000);
    let dim = env_usize("EDGE_BENCH_DIM", 384);
    let nq = env_usize("EDGE_BENCH_QUERIES", 1_000);
    let batch = 1_000;
    println!("edge_bench: {n} points x {dim} dims, {CLUSTERS} clusters (noise sigma {NOISE}), cosine, {nq} queries");

    let mut data = Clustered::new(dim, 0x5E1F_4A6D_2024_0001);
    let tenant = Tenant::new("bench")?;
    let dir = tempfile::tempdir().map_err(|e| selfrag_core::Error::backend("bench", "tempdir", false, e))?;
    let spec = IndexSpec::new(dim, Distance::Cosine)?;
    let config = EdgeIndexConfig::default().durability(Durability::OnClose).optimize_after_points(None);
    let index = EdgeIndex::open(dir.path().join("index"), spec, config.clone()).await?;

    // Load.
    let mut points = Vec::with_capacity(n);
    let load = Instant::now();
    for start in (0..n).step_by(batch) {
        let mut chunks = Vec::with_capacity(batch);
        for i in start..(start + batch).min(n) {
            let (chunk, pdf_ab) = data.chunk(i);
            let mut normed = chunk.vector.clone();
            normalize(&mut normed);
            points.push(Point { id: chunk.id, vector: normed, pdf_ab });
            chunks.push(chunk);
        }
        index.upsert(&tenant, chunks).await?;
    }
    let load_s = load.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / load_s;
    println!("upsert: {load_s:.1} s ({rate:.0} points/s, batches of {batch})");
    let t = Instant::now();
    index.flush().await?;
    println!("flush: {:.2} s", t.elapsed().as_secs_f64());

    let filter = filter();
    let matching = points.iter().filter(|p| p.pdf_ab).count();
    #[allow(clippy::cast_precision_loss)]
    let share = 100.0 * matching as f64 / n as f64;
    println!("filter matches {matching} points ({share:.1}%)");

    let queries: Vec<Vec<f32>> = (0..nq).map(|_| data.vector()).collect();
    let t = Instant::now();
    let truth_f: Vec<_> = queries.iter().map(|q| exact_top(&points, q, 10, true)).collect();
    let truth_u: Vec<_> = queries.iter().map(|q| exact_top(&points, q, 10, false)).collect();
    #[allow(clippy::cast_precision_loss)]
    let brute_ms = t.elapsed().as_secs_f64() * 1e3 / (2 * nq) as f64;
    println!("brute force (this process, 1 thread): {brute_ms:.2} ms per query on average");

    let before = nq.min(200);
    run_queries(&index, &tenant, &queries[..before], &truth_f[..before], Some(&filter), "before optimize, filtered")
        .await?;

    let t = Instant::now();
    index.optimize_now().await?;
    let opt_s = t.elapsed().as_secs_f64();
    let stats = index.stats().await?;
    println!(
        "optimize: {opt_s:.1} s -> {} segments, {} of {} vectors indexed, payload indexes {:?}",
        stats.segments, stats.indexed_vectors, stats.points, stats.payload_indexes
    );

    run_queries(&index, &tenant, &queries, &truth_f, Some(&filter), "HNSW default ef, ACORN, filtered").await?;
    run_queries(&index, &tenant, &queries, &truth_u, None, "HNSW default ef, unfiltered").await?;
    index.close().await?;

    for (ef, acorn) in [(None, false), (Some(256usize), false), (Some(256), true)] {
        let label = format!("HNSW ef={}, ACORN {}", ef.map_or("default".into(), |e: usize| e.to_string()), acorn);
        let index = EdgeIndex::open(dir.path().join("index"), spec, config.clone().search_ef(ef).acorn(acorn)).await?;
        run_queries(&index, &tenant, &queries, &truth_f, Some(&filter), &format!("{label}, filtered")).await?;
        index.close().await?;
    }
    Ok(())
}
