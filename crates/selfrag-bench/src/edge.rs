//! The embedded row: `EdgeIndex::search` with a filter against an exact scan
//! of the same vectors in this process, on clustered data (see [`selfrag_testkit::data`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use selfrag_core::{ChunkId, ChunkPayload, Distance, Field, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig, Quantization};
use serde_json::json;

use crate::measure::{compare, op, round, Res, Row};
use crate::Plan;
use selfrag_testkit::data::{filter, normalize, Clustered, Corpus};

const DIM: usize = 384;

/// A filter of the embedded rows: its label, the filter, and the same test
/// on a payload, for the exact scan.
type BenchFilter = (&'static str, Filter, fn(&ChunkPayload) -> bool);

/// The filters of the embedded rows.
fn filters() -> [BenchFilter; 2] {
    fn pdf(p: &ChunkPayload) -> bool {
        p.document_type == "pdf"
    }
    fn pdf_ab(p: &ChunkPayload) -> bool {
        pdf(p) && p.tags.iter().any(|t| t == "a" || t == "b")
    }
    [("pdf AND tag a|b, 1/6", filter(), pdf_ab), ("pdf, 1/3", Filter::eq(Field::DocumentType, "pdf"), pdf)]
}

/// The exact scan's data: normalized vectors, flat, and each filter's
/// verdict per point, in the order of [`filters`] (evaluated once up front,
/// which flatters the scan).
struct Exact {
    vectors: Vec<f32>,
    ids: Vec<ChunkId>,
    matches: Vec<Vec<bool>>,
}

impl Exact {
    /// Top `k` ids by cosine among the points filter `f` matches.
    fn top(&self, f: usize, q: &[f32], k: usize) -> Vec<ChunkId> {
        let matches = &self.matches[f];
        let mut qn = q.to_vec();
        normalize(&mut qn);
        // A sorted top-k buffer: k is 10, so insertion beats a heap.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for (i, v) in self.vectors.chunks_exact(DIM).enumerate() {
            if !matches[i] {
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

/// A data set of the embedded row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dataset {
    /// [`Corpus`]: topics, documents and chunks on a low-dimensional latent
    /// space (the headline row).
    Corpus,
    /// [`Clustered`]: 1,000 isolated islands of isotropic noise (a stress
    /// case for filtered graph search).
    Islands,
}

impl Dataset {
    fn label(self) -> &'static str {
        match self {
            Self::Corpus => "corpus",
            Self::Islands => "islands",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Corpus => {
                "corpus: 100 topics, 20-chunk documents, 32-dim latent space (selfrag_testkit::data::Corpus)"
            }
            Self::Islands => "islands: 1,000 clusters, isotropic noise sigma 0.5 (selfrag_testkit::data::Clustered)",
        }
    }
}

enum Gen {
    Corpus(Corpus),
    Islands(Clustered),
}

impl Gen {
    fn chunk(&mut self, i: usize) -> (selfrag_core::Chunk, bool) {
        match self {
            Self::Corpus(g) => g.chunk(i),
            Self::Islands(g) => g.chunk(i),
        }
    }

    fn query(&mut self) -> Vec<f32> {
        match self {
            Self::Corpus(g) => g.query(),
            Self::Islands(g) => g.vector(),
        }
    }
}

pub(crate) async fn run(plan: &Plan, dataset: Dataset, rows: &mut Vec<Row>) -> Res<()> {
    let (n, nq) = if plan.quick { (10_000, 200) } else { (100_000, 1_000) };
    println!("edge: {n} vectors x {DIM}, {}, cosine, {nq} queries", dataset.describe());
    let mut gen = match dataset {
        Dataset::Corpus => Gen::Corpus(Corpus::new(DIM, 0x5E1F_C0B9_2026_0001)),
        Dataset::Islands => Gen::Islands(Clustered::new(DIM, 0x5E1F_4A6D_2024_0001)),
    };
    let tenant = Tenant::new("bench")?;
    let dir = tempfile::tempdir()?;
    let spec = IndexSpec::new(DIM, Distance::Cosine)?;
    let base = EdgeIndexConfig::default().durability(Durability::OnClose).optimize_after_points(None);
    let index = Arc::new(EdgeIndex::open(dir.path().join("index"), spec, base.clone()).await?);

    // The exact scan's tests, built once (not per chunk).
    let keeps: Vec<fn(&ChunkPayload) -> bool> = filters().iter().map(|(_, _, keeps)| *keeps).collect();
    let mut exact = Exact {
        vectors: Vec::with_capacity(n * DIM),
        ids: Vec::with_capacity(n),
        matches: vec![Vec::new(); keeps.len()],
    };
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
            for (matches, keeps) in exact.matches.iter_mut().zip(&keeps) {
                matches.push(keeps(&chunk.payload));
            }
            // The generator's own verdict for `filter()` agrees.
            assert_eq!(m, exact.matches[0][i], "filter verdicts disagree on chunk {i}");
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

    let queries: Arc<Vec<Vec<f32>>> = Arc::new((0..nq).map(|_| gen.query()).collect());
    let exact = Arc::new(exact);
    let truth: Vec<Vec<Vec<ChunkId>>> =
        (0..filters().len()).map(|f| queries.iter().map(|q| exact.top(f, q, 10)).collect()).collect();
    let path = dir.path().join("index");
    if let Ok(index) = Arc::try_unwrap(index) {
        index.close().await?;
    }
    let size = if plan.quick { format!("QUICK: {n} x {DIM}") } else { format!("{n} x {DIM}") };
    let label = dataset.label();
    let built = Built { build_s, upsert_s, optimize_s, rebuild_s: None };
    let ctx = Ctx { path: &path, spec, tenant: &tenant, queries: &queries, exact: &exact, truth: &truth };
    // Each graph in turn: the default one as loaded, then the same index
    // reopened with other graph settings, which `optimize_now` rebuilds.
    // On each, the adapter's defaults first where they apply, then other
    // search settings EdgeIndexConfig offers, each reopened on that graph.
    let data = format!("{label} {size}");
    let mut first = true;
    for graph in graphs() {
        let config =
            base.clone().hnsw_m(graph.m).hnsw_ef_construct(graph.ef_construct).quantization(graph.quantization);
        let mut built = built;
        if !first {
            let index = EdgeIndex::open(&path, spec, config.clone()).await?;
            let t = Instant::now();
            if !index.optimize_now().await? {
                return Err("reopening with other graph settings did not rebuild the graph".into());
            }
            let rebuild_s = t.elapsed().as_secs_f64();
            index.close().await?;
            println!("edge: graph rebuilt ({}) in {rebuild_s:.1} s", graph.label);
            built.rebuild_s = Some(rebuild_s);
        }
        first = false;
        for (search, ef, acorn) in graph.searches {
            let name = if graph.label.is_empty() { search.to_string() } else { format!("{}; {search}", graph.label) };
            let config = config.clone().search_ef(*ef).acorn(*acorn);
            measure_setting(plan, &ctx, config, &data, &name, built, rows).await?;
        }
    }
    Ok(())
}

/// A graph the embedded rows search, and the search settings tried on it
/// (label, `search_ef`, ACORN).
struct Graph {
    label: &'static str,
    m: Option<usize>,
    ef_construct: Option<usize>,
    quantization: Quantization,
    searches: &'static [(&'static str, Option<usize>, bool)],
}

/// The graphs, in order: the first is the one the index is loaded with.
fn graphs() -> [Graph; 3] {
    [
        Graph {
            label: "",
            m: None,
            ef_construct: None,
            quantization: Quantization::None,
            searches: &[
                ("default: acorn on", None, true),
                ("acorn on, ef 32", Some(32), true),
                ("acorn off, ef 32", Some(32), false),
                ("acorn off, ef 64", Some(64), false),
            ],
        },
        Graph {
            label: "int8, oversampling 2",
            m: None,
            ef_construct: None,
            quantization: Quantization::Int8 { oversampling: 2.0 },
            searches: &[("acorn on, ef 32", Some(32), true), ("acorn off, ef 32", Some(32), false)],
        },
        Graph {
            label: "m 32, ef_construct 200",
            m: Some(32),
            ef_construct: Some(200),
            quantization: Quantization::None,
            searches: &[("acorn off, ef 32", Some(32), false), ("acorn off, ef 64", Some(64), false)],
        },
    ]
}

/// How long the index took to build, reported with every row.
#[derive(Clone, Copy)]
struct Built {
    build_s: f64,
    upsert_s: f64,
    optimize_s: f64,
    /// How long the graph of the rows took to rebuild, when it is not the
    /// one the index was loaded with.
    rebuild_s: Option<f64>,
}

/// What every setting of one data set is measured on.
struct Ctx<'a> {
    path: &'a std::path::Path,
    spec: IndexSpec,
    tenant: &'a Tenant,
    queries: &'a Arc<Vec<Vec<f32>>>,
    exact: &'a Arc<Exact>,
    /// The exact top 10 per filter and query.
    truth: &'a [Vec<Vec<ChunkId>>],
}

/// Reopens the index with `config` and measures every filter: recall@10
/// against the exact scan, then throughput side by side with it.
async fn measure_setting(
    plan: &Plan,
    ctx: &Ctx<'_>,
    config: EdgeIndexConfig,
    data: &str,
    name: &str,
    built: Built,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let index = Arc::new(EdgeIndex::open(ctx.path, ctx.spec, config).await?);
    let nq = ctx.queries.len();
    for (f, (filter_label, filter, _)) in filters().into_iter().enumerate() {
        let (mut hit, mut total) = (0usize, 0usize);
        for (q, want) in ctx.queries.iter().zip(&ctx.truth[f]) {
            let got = index.search(ctx.tenant, &SearchRequest::new(q.clone(), 10).filter(filter.clone())).await?;
            total += want.len();
            hit += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        #[allow(clippy::cast_precision_loss)]
        let recall = hit as f64 / total.max(1) as f64;

        let (ix, q, t, fl) = (index.clone(), ctx.queries.clone(), ctx.tenant.clone(), filter.clone());
        let ours = op(move |i| {
            let (ix, q, t, fl) = (ix.clone(), q.clone(), t.clone(), fl.clone());
            async move {
                let v = q[usize::try_from(i).unwrap_or(0) % q.len()].clone();
                ix.search(&t, &SearchRequest::new(v, 10).filter(fl)).await?;
                Ok(())
            }
        });
        let (ex, q) = (ctx.exact.clone(), ctx.queries.clone());
        let raw = op(move |i| {
            let (ex, q) = (ex.clone(), q.clone());
            async move {
                let top = ex.top(f, &q[usize::try_from(i).unwrap_or(0) % q.len()], 10);
                std::hint::black_box(top);
                Ok(())
            }
        });
        // Every query once per side, spread over the plan's rounds.
        let cmp = compare(&ours, &raw, 1, nq as u64, plan.rounds, Duration::ZERO).await?;
        let operation = format!("embedded search ({data}; {filter_label}; {name}) vs exact scan");
        let mut row = crate::row(&operation, 1, cmp);
        row.extra.insert("recall_at_10".into(), json!(round(recall, 4)));
        row.extra.insert("index_build_s".into(), json!(round(built.build_s, 2)));
        row.extra.insert("upsert_s".into(), json!(round(built.upsert_s, 2)));
        row.extra.insert("optimize_s".into(), json!(round(built.optimize_s, 2)));
        if let Some(r) = built.rebuild_s {
            row.extra.insert("graph_rebuild_s".into(), json!(round(r, 2)));
        }
        row.extra.insert("points".into(), json!(ctx.exact.ids.len()));
        rows.push(row);
        crate::print_last(rows);
        println!("edge ({data}; {filter_label}; {name}): recall@10 {recall:.4}");
    }
    if let Ok(index) = Arc::try_unwrap(index) {
        index.close().await?;
    }
    Ok(())
}

/// One single-chunk upsert of the durability rows: a 384-dimensional vector
/// drawn from the sequence number.
fn durable_chunk(i: u64) -> selfrag_core::Chunk {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let vector = (0..DIM)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            #[allow(clippy::cast_precision_loss)]
            let x = (s >> 11) as f32 / (1u64 << 53) as f32;
            x - 0.5
        })
        .collect();
    selfrag_core::Chunk::new(format!("doc-{}", i / 20), (i % 20) as u32, "durability bench", vector)
}

/// Upserts of one chunk per call into `index`, ids from the sequence number.
fn upsert_op(index: &Arc<EdgeIndex>, tenant: &Tenant, offset: u64) -> crate::measure::Op {
    let (ix, t) = (index.clone(), tenant.clone());
    op(move |i| {
        let (ix, t) = (ix.clone(), t.clone());
        async move {
            ix.upsert(&t, vec![durable_chunk(offset + i)]).await?;
            Ok(())
        }
    })
}

/// The durability rows: single-chunk upserts under the default
/// (`Durability::Journal`: journaled and fdatasynced before returning, group
/// commit) and under `JournalNoSync` (page cache only), each against the same
/// calls under `OnClose` (no durability), at every concurrency of the plan;
/// then the time to open an index after a crash left 10,000 points in the
/// journal, against opening it clean.
pub(crate) async fn run_durability(plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let preload: u64 = if plan.quick { 1_000 } else { 10_000 };
    println!("edge durability: single-chunk upserts, {DIM} dims, indexes preloaded with {preload} points");
    let tenant = Tenant::new("bench")?;
    let spec = IndexSpec::new(DIM, Distance::Cosine)?;
    let dir = tempfile::tempdir()?;
    let base = EdgeIndexConfig::default().optimize_after_points(None);
    let open = |name: &str, d: Durability| {
        let path = dir.path().join(name);
        let config = base.clone().durability(d);
        async move { EdgeIndex::open(path, spec, config).await.map(Arc::new) }
    };
    let raw = open("onclose", Durability::OnClose).await?;
    for (label, durability) in [("default: Journal", Durability::Journal), ("JournalNoSync", Durability::JournalNoSync)]
    {
        let ours = open(label.split(' ').next_back().unwrap_or(label), durability).await?;
        for ix in [&ours, &raw] {
            for start in (0..preload).step_by(1_000) {
                let chunks: Vec<_> = (start..start + 1_000).map(|i| durable_chunk(1 << 40 | i)).collect();
                ix.upsert(&tenant, chunks).await?;
            }
            ix.flush().await?;
        }
        for &c in &plan.concurrency {
            let offset = (c as u64) << 32;
            let cmp = compare(
                &upsert_op(&ours, &tenant, offset),
                &upsert_op(&raw, &tenant, offset),
                c,
                plan.ops(c, 500),
                plan.rounds,
                plan.target,
            )
            .await?;
            let operation = format!("embedded upsert, 1 chunk ({label}) vs same under OnClose");
            let mut row = crate::row(&operation, c, cmp);
            row.extra.insert("preloaded_points".into(), json!(preload));
            rows.push(row);
            crate::print_last(rows);
        }
        if let Ok(ix) = Arc::try_unwrap(ours) {
            ix.close().await?;
        }
    }
    // FlushEveryWrite for scale: an engine flush per call.
    {
        let ix = open("every", Durability::FlushEveryWrite).await?;
        let chunks: Vec<_> = (0..preload).map(|i| durable_chunk(1 << 40 | i)).collect();
        ix.upsert(&tenant, chunks).await?;
        let t = Instant::now();
        for i in 0..20 {
            ix.upsert(&tenant, vec![durable_chunk(i)]).await?;
        }
        let per_call = t.elapsed().as_secs_f64() * 1e3 / 20.0;
        println!("edge durability: FlushEveryWrite, 1 chunk per call at {preload} points: {per_call:.1} ms per call");
        if let Some(row) = rows.iter_mut().rev().find(|r| r.operation.contains("Journal)") && r.concurrency == 1) {
            row.extra.insert("flush_every_write_ms_per_call".into(), json!(round(per_call, 1)));
        }
        if let Ok(ix) = Arc::try_unwrap(ix) {
            ix.close().await?;
        }
    }
    if let Ok(ix) = Arc::try_unwrap(raw) {
        ix.close().await?;
    }
    recovery(plan, &dir, spec, &tenant, rows).await?;
    hot_backup_hold(plan, &dir, spec, &tenant, rows).await
}

/// How long `EdgeIndex::backup_to` holds writes on an index of 100,000 ×
/// 384 (10,000 in quick mode) while a writer keeps upserting: first with
/// every point in appendable segments (loaded, not optimized: everything
/// is copied in the hold), then after `optimize_now` (sealed segments,
/// copied after the hold). Printed, and put in the extras of the last row
/// (when there is one).
pub(crate) async fn hot_backup_hold(
    plan: &Plan,
    dir: &tempfile::TempDir,
    spec: IndexSpec,
    tenant: &Tenant,
    rows: &mut [Row],
) -> Res<()> {
    let n: u64 = if plan.quick { 10_000 } else { 100_000 };
    let src = dir.path().join("hot");
    let ix = Arc::new(EdgeIndex::open(&src, spec, EdgeIndexConfig::default().optimize_after_points(None)).await?);
    for start in (0..n).step_by(1_000) {
        ix.upsert(tenant, (start..start + 1_000).map(|i| durable_chunk(2 << 40 | i)).collect()).await?;
    }
    ix.flush().await?;
    let mut figures = serde_json::Map::new();
    // The third pass waits until the optimizer's files are over a second
    // old: only then does the backup trust them to stay as listed and copy
    // them after the hold (right after an optimization, the second pass,
    // they are copied in it).
    for (pass, label) in [(0u64, "unoptimized"), (1, "optimized just now"), (2, "optimized, files settled")] {
        if pass == 1 {
            let t = Instant::now();
            ix.optimize_now().await?;
            println!("edge hot backup: optimize_now at {n} points took {:.1} s", t.elapsed().as_secs_f64());
        }
        if pass == 2 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (ix, stop, t) = (ix.clone(), stop.clone(), tenant.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut worst = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let s = Instant::now();
                    ix.upsert(&t, vec![durable_chunk(3 << 40 | pass << 32 | i)]).await?;
                    worst = worst.max(s.elapsed());
                    i += 1;
                }
                Ok::<_, selfrag_core::Error>((worst, i))
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let copy = dir.path().join(format!("hot-copy-{pass}"));
        let hot = ix.backup_to(&copy).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (worst, writes) = writer.await??;
        let (src_len, src_disk) = (apparent_size(&src)?, disk_size(&src)?);
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "edge hot backup at {n} x {DIM}, {label}: writes held {:.3} s (read {:.1} MB in the hold, {:.1} MB after), \
             backup_to {:.2} s in all, {writes} upserts during the run (slowest {:.3} s); \
             copy {:.1} MB apparent / {:.1} MB on disk, source {:.1} MB apparent / {:.1} MB on disk; {} journal records to replay",
            hot.hold.as_secs_f64(),
            mb(hot.held_bytes),
            mb(hot.later_bytes),
            hot.total.as_secs_f64(),
            worst.as_secs_f64(),
            mb(hot.bytes),
            mb(hot.disk_bytes),
            mb(src_len),
            mb(src_disk),
            hot.replay,
        );
        figures.insert(
            label.into(),
            json!({
                "points": n,
                "hold_s": round(hot.hold.as_secs_f64(), 4),
                "total_s": round(hot.total.as_secs_f64(), 3),
                "held_bytes": hot.held_bytes,
                "later_bytes": hot.later_bytes,
                "copy_bytes": hot.bytes,
                "copy_disk_bytes": hot.disk_bytes,
                "source_bytes": src_len,
                "source_disk_bytes": src_disk,
                "slowest_upsert_s": round(worst.as_secs_f64(), 4),
                "replay_records": hot.replay,
            }),
        );
        std::fs::remove_dir_all(&copy)?;
    }
    if let Some(row) = rows.last_mut() {
        row.extra.insert("hot_backup".into(), serde_json::Value::Object(figures));
    }
    if let Ok(ix) = Arc::try_unwrap(ix) {
        ix.close().await?;
    }
    Ok(())
}

/// Sum of file lengths under `path` (holes count).
fn apparent_size(path: &std::path::Path) -> std::io::Result<u64> {
    tree_size(path, &|m| m.len())
}

/// Bytes allocated on disk under `path` (holes do not count).
fn disk_size(path: &std::path::Path) -> std::io::Result<u64> {
    tree_size(path, &|m| std::os::unix::fs::MetadataExt::blocks(m) * 512)
}

fn tree_size(path: &std::path::Path, size: &dyn Fn(&std::fs::Metadata) -> u64) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(size(&meta));
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += tree_size(&entry?.path(), size)?;
    }
    Ok(total)
}

/// Only the hot backup figures (`--edge-hot-backup`).
pub(crate) async fn run_hot_backup(plan: &Plan, rows: &mut [Row]) -> Res<()> {
    let tenant = Tenant::new("bench")?;
    let spec = IndexSpec::new(DIM, Distance::Cosine)?;
    let dir = tempfile::tempdir()?;
    hot_backup_hold(plan, &dir, spec, &tenant, rows).await
}

/// Recovery time: 10,000 points journaled (calls of 10 chunks) and never
/// flushed by the engine, as a crash leaves them, replayed at open; against
/// opening the same index with an empty journal.
async fn recovery(
    plan: &Plan,
    dir: &tempfile::TempDir,
    spec: IndexSpec,
    tenant: &Tenant,
    rows: &mut Vec<Row>,
) -> Res<()> {
    use crate::measure::{Comparison, Stats};
    let points: u64 = 10_000;
    // Write the journal: no engine flush while writing (1 h interval).
    let source = dir.path().join("journal-source");
    let config =
        EdgeIndexConfig::default().optimize_after_points(None).engine_flush_interval(Duration::from_secs(3_600));
    let ix = EdgeIndex::open(&source, spec, config.clone()).await?;
    for start in (0..points).step_by(10) {
        ix.upsert(tenant, (start..start + 10).map(durable_chunk).collect()).await?;
    }
    let journal = std::fs::read(source.join(selfrag_edge::JOURNAL_FILE))?;
    ix.close().await?;
    let target = dir.path().join("recovered");
    EdgeIndex::open(&target, spec, config.clone()).await?.close().await?;
    let reps = if plan.quick { 2 } else { 5 };
    let (mut replay, mut clean) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        std::fs::write(target.join(selfrag_edge::JOURNAL_FILE), &journal)?;
        let _ = std::fs::remove_file(target.join(selfrag_edge::STATE_FILE));
        let t = Instant::now();
        let ix = EdgeIndex::open(&target, spec, config.clone()).await?;
        replay.push(t.elapsed());
        if ix.replayed_at_open() != points / 10 {
            return Err(format!("replayed {} records, not {}", ix.replayed_at_open(), points / 10).into());
        }
        ix.close().await?;
        let t = Instant::now();
        let ix = EdgeIndex::open(&target, spec, config.clone()).await?;
        clean.push(t.elapsed());
        ix.close().await?;
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let total: f64 = v.iter().map(|d| d.as_secs_f64()).sum();
        #[allow(clippy::cast_precision_loss)]
        let ops_per_s = v.len() as f64 / total.max(1e-9);
        Stats { ops: v.len() as u64, ops_per_s, p50_ms: ms(v[v.len() / 2]), p99_ms: ms(v[v.len() - 1]) }
    };
    let (ours, raw) = (stats(replay), stats(clean));
    let cmp = Comparison { ours, raw, round_ratios: Vec::new() };
    let mut row = crate::row("embedded open after a crash, 10,000 journaled points vs clean open", 1, cmp);
    row.extra.insert("journal_bytes".into(), json!(journal.len()));
    row.extra.insert("journal_records".into(), json!(points / 10));
    rows.push(row);
    crate::print_last(rows);
    Ok(())
}
