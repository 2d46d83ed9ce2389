//! The embedded row: `EdgeIndex::search` with a filter against an exact scan
//! of the same vectors in this process, on clustered data (see [`selfrag_testkit::data`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::{ChunkId, Distance, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig};
use serde_json::json;

use crate::measure::{compare, op, round, Res, Row};
use crate::Plan;
use selfrag_testkit::data::{filter, normalize, Clustered};

const DIM: usize = 384;

/// The exact scan's data: normalized vectors, flat, and the filter's verdict
/// per point (evaluated once up front, which flatters the scan).
struct Exact {
    vectors: Vec<f32>,
    ids: Vec<ChunkId>,
    matches: Vec<bool>,
}

impl Exact {
    /// Top `k` ids by cosine among matching points.
    fn top(&self, q: &[f32], k: usize) -> Vec<ChunkId> {
        let mut qn = q.to_vec();
        normalize(&mut qn);
        // A sorted top-k buffer: k is 10, so insertion beats a heap.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for (i, v) in self.vectors.chunks_exact(DIM).enumerate() {
            if !self.matches[i] {
                continue;
            }
            let s = dot(v, &qn);
            if best.len() < k || s > best[best.len() - 1].0 {
                let pos = best.partition_point(|(b, _)| *b >= s);
                best.insert(pos, (s, i));
                best.truncate(k);
            }
        }
        best.into_iter().map(|(_, i)| self.ids[i]).collect()
    }
}

/// Dot product with eight independent accumulators, which the compiler
/// turns into SIMD (a plain `sum()` is a serial dependency chain): the exact
/// scan should be a decent one.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub(crate) async fn run(plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let (n, nq) = if plan.quick { (10_000, 200) } else { (100_000, 1_000) };
    println!("edge: {n} clustered vectors x {DIM} (1,000 clusters, noise sigma 0.5), cosine, {nq} queries");
    let mut gen = Clustered::new(DIM, 0x5E1F_4A6D_2024_0001);
    let tenant = Tenant::new("bench")?;
    let dir = tempfile::tempdir()?;
    let spec = IndexSpec::new(DIM, Distance::Cosine)?;
    let base = EdgeIndexConfig::default().durability(Durability::OnClose).optimize_after_points(None);
    let index = Arc::new(EdgeIndex::open(dir.path().join("index"), spec, base.clone()).await?);

    let mut exact = Exact { vectors: Vec::with_capacity(n * DIM), ids: Vec::with_capacity(n), matches: Vec::new() };
    let build = Instant::now();
    let mut upsert_s = 0.0;
    for start in (0..n).step_by(1_000) {
        let mut chunks = Vec::with_capacity(1_000);
        for i in start..(start + 1_000).min(n) {
            let (chunk, m) = gen.chunk(i);
            let mut v = chunk.vector.clone();
            normalize(&mut v);
            exact.vectors.extend(v);
            exact.ids.push(chunk.id);
            exact.matches.push(m);
            chunks.push(chunk);
        }
        let t = Instant::now();
        index.upsert(&tenant, chunks).await?;
        upsert_s += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    index.optimize_now().await?;
    let optimize_s = t.elapsed().as_secs_f64();
    let build_s = upsert_s + optimize_s;
    println!("edge: index built in {build_s:.1} s (upsert {upsert_s:.1} s + HNSW optimize {optimize_s:.1} s; wall incl. data generation {:.1} s)", build.elapsed().as_secs_f64());

    let queries: Arc<Vec<Vec<f32>>> = Arc::new((0..nq).map(|_| gen.vector()).collect());
    let exact = Arc::new(exact);
    let truth: Vec<Vec<ChunkId>> = queries.iter().map(|q| exact.top(q, 10)).collect();
    let path = dir.path().join("index");
    if let Ok(index) = Arc::try_unwrap(index) {
        index.close().await?;
    }
    // The adapter's defaults first (ACORN on, Qdrant's default ef), then the
    // other settings EdgeIndexConfig offers, each reopened on the same data.
    let variants: [(&str, Option<usize>, bool); 4] = [
        ("default config: acorn on", None, true),
        ("acorn on, ef 32", Some(32), true),
        ("acorn off", None, false),
        ("acorn off, ef 256", Some(256), false),
    ];
    for (name, ef, acorn) in variants {
        let config = base.clone().search_ef(ef).acorn(acorn);
        let index = Arc::new(EdgeIndex::open(&path, spec, config).await?);
        let (mut hit, mut total) = (0usize, 0usize);
        for (q, want) in queries.iter().zip(&truth) {
            let got = index.search(&tenant, &SearchRequest::new(q.clone(), 10).filter(filter())).await?;
            total += want.len();
            hit += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        #[allow(clippy::cast_precision_loss)]
        let recall = hit as f64 / total.max(1) as f64;

        let (ix, q, t) = (index.clone(), queries.clone(), tenant.clone());
        let ours = op(move |i| {
            let (ix, q, t) = (ix.clone(), q.clone(), t.clone());
            async move {
                let v = q[usize::try_from(i).unwrap_or(0) % q.len()].clone();
                ix.search(&t, &SearchRequest::new(v, 10).filter(filter())).await?;
                Ok(())
            }
        });
        let (ex, q) = (exact.clone(), queries.clone());
        let raw = op(move |i| {
            let (ex, q) = (ex.clone(), q.clone());
            async move {
                let top = ex.top(&q[usize::try_from(i).unwrap_or(0) % q.len()], 10);
                std::hint::black_box(top);
                Ok(())
            }
        });
        let (o, r) = compare(&ours, &raw, 1, nq as u64, 2, Duration::ZERO).await?;
        let size = if plan.quick { format!("QUICK: {n} x {DIM}") } else { format!("{n} x {DIM}") };
        let mut row = crate::row(&format!("embedded filtered search ({size}; {name}) vs exact scan"), 1, o, r);
        row.extra.insert("recall_at_10".into(), json!(round(recall, 4)));
        row.extra.insert("index_build_s".into(), json!(round(build_s, 2)));
        row.extra.insert("upsert_s".into(), json!(round(upsert_s, 2)));
        row.extra.insert("optimize_s".into(), json!(round(optimize_s, 2)));
        row.extra.insert("points".into(), json!(n));
        rows.push(row);
        crate::print_last(rows);
        println!("edge ({name}): recall@10 {recall:.4}");
        drop(ours);
        if let Ok(index) = Arc::try_unwrap(index) {
            index.close().await?;
        }
    }
    Ok(())
}
