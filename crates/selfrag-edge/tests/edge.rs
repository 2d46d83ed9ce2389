//! `EdgeIndex` beyond the conformance suite: persistence, reopening,
//! locking, durability settings, optimization while serving.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use selfrag_core::{Chunk, ChunkId, Distance, Error, Field, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_edge::{Durability, EdgeIndex, EdgeIndexConfig, Quantization};

fn tenant(name: &str) -> Tenant {
    Tenant::new(name).unwrap()
}

fn spec(dim: usize, d: Distance) -> IndexSpec {
    IndexSpec::new(dim, d).unwrap()
}

fn quiet() -> EdgeIndexConfig {
    EdgeIndexConfig::default().optimize_after_points(None)
}

/// Deterministic pseudo-random numbers (splitmix64), for clustered data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly normal: the sum of four uniforms, centred.
    fn noise(&mut self) -> f32 {
        let s: f64 = (0..4).map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64).sum();
        #[allow(clippy::cast_possible_truncation)]
        let x = (s - 2.0) as f32;
        x
    }
}

fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centroids: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| 3.0 * rng.noise()).collect()).collect();
    (0..n).map(|i| centroids[i % centroids.len()].iter().map(|c| c + 0.5 * rng.noise()).collect()).collect()
}

fn chunks(vectors: &[Vec<f32>], offset: usize) -> Vec<Chunk> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let i = i + offset;
            Chunk::new(format!("doc-{}", i / 10), u32::try_from(i % 10).unwrap(), format!("text {i}"), v.clone())
                .document_type(if i % 3 == 0 { "pdf" } else { "md" })
                .tags([if i % 2 == 0 { "even" } else { "odd" }])
        })
        .collect()
}

/// The exact top `k` of `chunks` for `q`, among those passing `keep`.
fn exact(d: Distance, chunks: &[Chunk], q: &[f32], k: usize, keep: impl Fn(&Chunk) -> bool) -> Vec<(ChunkId, f32)> {
    let mut s: Vec<(ChunkId, f32)> = chunks.iter().filter(|c| keep(c)).map(|c| (c.id, d.score(q, &c.vector))).collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.truncate(k);
    s
}

/// Whether `hits` are the exact top `k`: the same ids, except that chunks
/// tied (within float noise) at the cut may be swapped.
fn same_as_exact(hits: &[(ChunkId, f32)], want: &[(ChunkId, f32)]) -> Result<(), String> {
    if hits.len() != want.len() {
        return Err(format!("{} hits, exact search has {}", hits.len(), want.len()));
    }
    let cut = want.last().map_or(0.0, |w| w.1);
    let got: HashSet<_> = hits.iter().map(|h| h.0).collect();
    for (id, score) in want {
        if !got.contains(id) && (score - cut).abs() > 1e-4 {
            return Err(format!("missing {id} (score {score}); got {hits:?}, want {want:?}"));
        }
    }
    for (h, w) in hits.iter().zip(want) {
        if (h.1 - w.1).abs() > 1e-3 {
            return Err(format!("score {} where exact search has {}", h.1, w.1));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let s = spec(4, Distance::Cosine);
    let (a, b) = (tenant("a"), tenant("b"));
    let docs: Vec<Chunk> = (0..5u32)
        .map(|i| Chunk::new("d1", i, format!("chunk {i}"), vec![1.0, i as f32, 0.5, -1.0]).tags(["x"]).extra("n", i))
        .collect();
    {
        let index = EdgeIndex::open(&path, s, quiet()).await.unwrap();
        index.upsert(&a, docs.clone()).await.unwrap();
        index.upsert(&b, docs[..2].to_vec()).await.unwrap();
        index.close().await.unwrap();
    }
    let index = EdgeIndex::open(&path, s, quiet()).await.unwrap();
    assert_eq!(index.count(&a, None).await.unwrap(), 5);
    assert_eq!(index.count(&b, None).await.unwrap(), 2);
    let chunks = index.document_chunks(&a, "d1").await.unwrap();
    let indexes: Vec<u32> = chunks.iter().map(|c| c.payload.chunk_index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    assert_eq!(chunks[3].payload, docs[3].payload);
    let got = index.get(&a, &[docs[4].id, docs[0].id]).await.unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [docs[4].id, docs[0].id]);
    let hits = index
        .search(&a, &SearchRequest::new(vec![1.0, 3.0, 0.5, -1.0], 1).filter(Filter::eq(Field::Tags, "x")))
        .await
        .unwrap();
    assert_eq!(hits[0].id, docs[3].id);
    let stats = index.stats().await.unwrap();
    assert_eq!(
        stats.payload_indexes,
        ["chunk_index", "document_id", "document_type", "source", "tags", "tenant"],
        "payload indexes after reopen"
    );
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_another_dimension_or_distance_is_incompatible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let index = EdgeIndex::open(&path, spec(4, Distance::Cosine), quiet()).await.unwrap();
    index.upsert(&tenant("t"), vec![Chunk::new("d", 0, "x", vec![1.0, 0.0, 0.0, 0.0])]).await.unwrap();
    index.close().await.unwrap();

    for other in [spec(8, Distance::Cosine), spec(4, Distance::Dot), spec(4, Distance::Euclid)] {
        let err = EdgeIndex::open(&path, other, quiet()).await.unwrap_err();
        assert!(matches!(err, Error::Incompatible { .. }), "{other:?}: {err}");
        assert!(err.to_string().contains("dimension 4"), "{err}");
    }
    // The refusals changed nothing.
    let index = EdgeIndex::open(&path, spec(4, Distance::Cosine), quiet()).await.unwrap();
    assert_eq!(index.count(&tenant("t"), None).await.unwrap(), 1);
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let s = spec(3, Distance::Dot);
    let first = EdgeIndex::open(&path, s, quiet()).await.unwrap();
    let err = EdgeIndex::open(&path, s, quiet()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("already open"), "{err}");
    first.upsert(&tenant("t"), vec![Chunk::new("d", 0, "x", vec![1.0, 2.0, 3.0])]).await.unwrap();
    first.close().await.unwrap();
    let again = EdgeIndex::open(&path, s, quiet()).await.unwrap();
    assert_eq!(again.count(&tenant("t"), None).await.unwrap(), 1);
    drop(again);
    // Dropping releases the directory too.
    let third = EdgeIndex::open(&path, s, quiet()).await.unwrap();
    third.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_durability_setting_survives_drop_and_reopen() {
    let settings = [Durability::FlushEveryWrite, Durability::Periodic(Duration::from_millis(50)), Durability::OnClose];
    for durability in settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let s = spec(2, Distance::Euclid);
        let config = quiet().durability(durability);
        let index = EdgeIndex::open(&path, s, config.clone()).await.unwrap();
        let t = tenant("t");
        for i in 0..3u32 {
            index.upsert(&t, vec![Chunk::new("d", i, "x", vec![i as f32, 1.0])]).await.unwrap();
        }
        index.delete(&t, &[ChunkId::for_chunk("d", 0)]).await.unwrap();
        drop(index);
        let index = EdgeIndex::open(&path, s, config).await.unwrap();
        assert_eq!(index.count(&t, None).await.unwrap(), 2, "{durability:?}");
        let chunks = index.document_chunks(&t, "d").await.unwrap();
        assert_eq!(chunks.iter().map(|c| c.payload.chunk_index).collect::<Vec<_>>(), [1, 2], "{durability:?}");
        index.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_follow_the_core_convention_for_every_distance() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("t");
    let a = vec![3.0, 4.0];
    let q = vec![0.0, 0.0];
    for (i, d) in [Distance::Euclid, Distance::Manhattan, Distance::Dot].into_iter().enumerate() {
        let index = EdgeIndex::open(dir.path().join(format!("{i}")), spec(2, d), quiet()).await.unwrap();
        index
            .upsert(&t, vec![Chunk::new("d", 0, "a", a.clone()), Chunk::new("d", 1, "b", vec![1.0, 1.0])])
            .await
            .unwrap();
        let query = if d == Distance::Dot { vec![1.0, 1.0] } else { q.clone() };
        let hits = index.search(&t, &SearchRequest::new(query.clone(), 2)).await.unwrap();
        for h in &hits {
            let v = if h.payload.chunk_index == 0 { &a } else { &vec![1.0, 1.0] };
            let want = d.score(&query, v);
            assert!((h.score - want).abs() < 1e-4, "{d}: score {} want {want}", h.score);
        }
        assert!(hits[0].score >= hits[1].score, "{d}: best first");
        // The threshold is inclusive, in the core convention.
        let exact = hits[1].score;
        let kept = index.search(&t, &SearchRequest::new(query, 2).score_threshold(exact)).await.unwrap();
        assert_eq!(kept.len(), 2, "{d}: threshold {exact} keeps a hit scoring exactly {exact}");
        index.close().await.unwrap();
    }
}

/// Loads clustered points with a low indexing threshold (so that the
/// optimizer builds an HNSW graph even for a small test), then searches
/// and writes while the optimization runs, comparing with exact search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_stay_exact_while_an_optimization_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim) = (4_000, 32);
    let d = Distance::Cosine;
    let config = quiet().indexing_threshold_kb(Some(10)).search_ef(Some(512));
    let index = std::sync::Arc::new(EdgeIndex::open(dir.path().join("idx"), spec(dim, d), config).await.unwrap());
    let t = tenant("t");
    let mut all = chunks(&clustered(n, dim, 7), 0);
    for batch in all.chunks(1_000) {
        index.upsert(&t, batch.to_vec()).await.unwrap();
    }
    // Another tenant's points must never show up.
    index.upsert(&tenant("other"), chunks(&clustered(300, dim, 8), 0)).await.unwrap();
    let before = index.stats().await.unwrap();
    assert_eq!(before.indexed_vectors, 0, "nothing indexed before optimizing: {before:?}");

    let queries = clustered(60, dim, 99);
    let filter = Filter::all([Filter::eq(Field::DocumentType, "pdf"), Filter::eq(Field::Tags, "even")]);
    let keep_filtered = |c: &Chunk| c.payload.document_type == "pdf" && c.payload.tags == ["even"];

    let optimizer = {
        let index = index.clone();
        tokio::spawn(async move { index.optimize_now().await })
    };
    let mut during = 0;
    let mut round = 0;
    let extra = chunks(&clustered(200, dim, 11), n);
    while !optimizer.is_finished() || round < 2 {
        for (qi, q) in queries.iter().enumerate() {
            let filtered = qi % 2 == 0;
            let mut req = SearchRequest::new(q.clone(), 10);
            if filtered {
                req = req.filter(filter.clone());
            }
            let running = !optimizer.is_finished();
            let hits: Vec<(ChunkId, f32)> =
                index.search(&t, &req).await.unwrap().into_iter().map(|h| (h.id, h.score)).collect();
            let want = if filtered { exact(d, &all, q, 10, keep_filtered) } else { exact(d, &all, q, 10, |_| true) };
            if let Err(e) = same_as_exact(&hits, &want) {
                panic!("query {qi} (filtered: {filtered}, optimization running: {running}): {e}");
            }
            if running {
                during += 1;
            }
        }
        // Writes during the optimization are visible at once.
        if round < extra.len() / 20 && !optimizer.is_finished() {
            let batch = extra[round * 20..(round + 1) * 20].to_vec();
            index.upsert(&t, batch.clone()).await.unwrap();
            all.extend(batch);
            assert_eq!(index.count(&t, None).await.unwrap(), all.len() as u64);
        }
        round += 1;
    }
    let changed = optimizer.await.unwrap().unwrap();
    assert!(changed, "the optimization did something");
    assert!(during > 0, "no query ran during the optimization; make the data larger");
    let after = index.stats().await.unwrap();
    assert!(after.indexed_vectors >= n, "HNSW built: {after:?}");
    assert_eq!(after.payload_indexes.len(), 6, "payload indexes kept: {after:?}");
    println!("{during} queries ran during the optimization; after: {after:?}");
    assert_eq!(index.count(&tenant("other"), None).await.unwrap(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enough_writes_start_a_background_optimization() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let config = EdgeIndexConfig::default().optimize_after_points(Some(1_500)).indexing_threshold_kb(Some(10));
    let index = EdgeIndex::open(dir.path().join("idx"), spec(dim, Distance::Dot), config).await.unwrap();
    let t = tenant("t");
    let data = chunks(&clustered(2_000, dim, 3), 0);
    index.upsert(&t, data[..1_000].to_vec()).await.unwrap();
    assert_eq!(index.stats().await.unwrap().optimizations, 0, "below the threshold");
    index.upsert(&t, data[1_000..].to_vec()).await.unwrap();
    // The optimization started by that write runs in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = index.stats().await.unwrap();
        if s.optimizations >= 1 && !s.optimizing {
            assert!(s.indexed_vectors >= 2_000, "{s:?}");
            assert_eq!(s.last_optimize_error, None);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no background optimization: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(index.count(&t, None).await.unwrap(), 2_000);
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeIndex::open(dir.path().join("idx"), spec(2, Distance::Cosine), quiet()).await.unwrap();
    let t = tenant("t");
    let err = index
        .upsert(&t, vec![Chunk::new("d", 0, "ok", vec![1.0, 0.0]), Chunk::new("d", 1, "bad", vec![1.0])])
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("chunks[1].vector"));
    assert_eq!(index.count(&t, None).await.unwrap(), 0);
    let err = index.count(&t, Some(&Filter::any([]))).await.unwrap_err();
    assert_eq!(err.field(), Some("filter"));
    let err = index.delete_by_filter(&t, &Filter::eq(Field::Extra("a-b".into()), 1i64)).await.unwrap_err();
    assert_eq!(err.field(), Some("filter.field"));
    index.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let int8 = |oversampling| quiet().quantization(Quantization::Int8 { oversampling });
    let cases = [
        (quiet().durability(Durability::Periodic(Duration::ZERO)), "durability"),
        (quiet().optimize_after_points(Some(0)), "optimize_after_points"),
        (quiet().search_ef(Some(0)), "search_ef"),
        (quiet().acorn_max_selectivity(Some(1.5)), "acorn_max_selectivity"),
        (quiet().acorn_max_selectivity(Some(-0.1)), "acorn_max_selectivity"),
        (quiet().acorn_max_selectivity(Some(f64::NAN)), "acorn_max_selectivity"),
        (quiet().hnsw_m(Some(3)), "hnsw_m"),
        (quiet().hnsw_m(Some(129)), "hnsw_m"),
        (quiet().hnsw_ef_construct(Some(3)), "hnsw_ef_construct"),
        (quiet().hnsw_ef_construct(Some(1_001)), "hnsw_ef_construct"),
        (int8(0.5), "quantization.oversampling"),
        (int8(100.5), "quantization.oversampling"),
        (int8(f64::NAN), "quantization.oversampling"),
        (int8(f64::INFINITY), "quantization.oversampling"),
    ];
    for (i, (config, field)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("idx-{i}"));
        let err = EdgeIndex::open(&path, spec(4, Distance::Cosine), config.clone()).await.unwrap_err();
        assert_eq!(err.field(), Some(field), "{config:?}: {err}");
        assert!(!path.exists(), "{config:?}: nothing may be created");
    }
    // The bounds themselves are allowed.
    let edges = quiet()
        .acorn_max_selectivity(Some(0.0))
        .hnsw_m(Some(4))
        .hnsw_ef_construct(Some(1_000))
        .search_ef(Some(1))
        .quantization(Quantization::Int8 { oversampling: 1.0 });
    edges.validate().unwrap();
    quiet().acorn_max_selectivity(Some(1.0)).hnsw_m(Some(128)).hnsw_ef_construct(Some(4)).validate().unwrap();
}

/// The engine's own record of the settings it was opened with.
fn engine_config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("edge_config.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_settings_and_int8_quantization_keep_searches_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let (n, dim) = (3_000, 32);
    let d = Distance::Cosine;
    let config = quiet()
        .indexing_threshold_kb(Some(10))
        .hnsw_m(Some(8))
        .hnsw_ef_construct(Some(64))
        .search_ef(Some(128))
        .acorn_max_selectivity(Some(0.2))
        .quantization(Quantization::Int8 { oversampling: 2.0 });
    let index = EdgeIndex::open(&path, spec(dim, d), config).await.unwrap();
    let t = tenant("t");
    let all = chunks(&clustered(n, dim, 21), 0);
    index.upsert(&t, all.clone()).await.unwrap();
    assert!(index.optimize_now().await.unwrap());
    let stats = index.stats().await.unwrap();
    assert!(stats.indexed_vectors >= n, "HNSW built: {stats:?}");
    let stored = engine_config(&path);
    assert_eq!(stored["hnsw_config"]["m"], 8, "{stored}");
    assert_eq!(stored["hnsw_config"]["ef_construct"], 64, "{stored}");
    assert_eq!(stored["quantization_config"]["scalar"]["type"], "int8", "{stored}");

    // Candidates are scored on one-byte copies, then rescored: the hits
    // carry exact scores, and are the exact top 10 (ties at the cut aside)
    // for nearly every query.
    let filter = Filter::eq(Field::DocumentType, "pdf");
    let (mut exact_queries, mut total) = (0, 0);
    for (qi, q) in clustered(80, dim, 77).iter().enumerate() {
        let filtered = qi % 2 == 0;
        let mut req = SearchRequest::new(q.clone(), 10);
        if filtered {
            req = req.filter(filter.clone());
        }
        let hits = index.search(&t, &req).await.unwrap();
        for h in &hits {
            let c = all.iter().find(|c| c.id == h.id).unwrap();
            assert!((h.score - d.score(q, &c.vector)).abs() < 1e-4, "query {qi}: score {} is not exact", h.score);
        }
        let hits: Vec<(ChunkId, f32)> = hits.into_iter().map(|h| (h.id, h.score)).collect();
        let want = exact(d, &all, q, 10, |c| !filtered || c.payload.document_type == "pdf");
        total += 1;
        exact_queries += usize::from(same_as_exact(&hits, &want).is_ok());
    }
    assert!(exact_queries * 100 >= total * 95, "{exact_queries} of {total} queries exact");
    index.close().await.unwrap();

    // Other graph settings on reopen: the next optimization rebuilds the
    // graph with them, and searches still work.
    let index = EdgeIndex::open(&path, spec(dim, d), quiet().indexing_threshold_kb(Some(10))).await.unwrap();
    assert!(engine_config(&path).get("quantization_config").is_none_or(serde_json::Value::is_null));
    assert!(index.optimize_now().await.unwrap(), "settings changed: the graph is rebuilt");
    assert_eq!(engine_config(&path)["hnsw_config"]["m"], 16);
    assert!(index.stats().await.unwrap().indexed_vectors >= n);
    let q = &all[5].vector;
    let hits = index.search(&t, &SearchRequest::new(q.clone(), 1)).await.unwrap();
    assert_eq!(hits[0].id, all[5].id);
    index.close().await.unwrap();
}

fn _assert_send_sync(p: &Path) -> impl Send + '_ {
    // `open` must be usable from spawned tasks.
    EdgeIndex::open(p, spec(1, Distance::Dot), quiet())
}
