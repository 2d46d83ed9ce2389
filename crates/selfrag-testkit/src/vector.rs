//! The [`VectorIndex`] suite.
//!
//! Every check makes its own indexes through [`VectorFixture::make`] and its
//! own tenants. Corpora are small (under 200 points) and generated from fixed
//! seeds, so an approximate (HNSW) backend is expected to return exact
//! results; expected results come from the reference semantics
//! ([`Distance::score`], [`Filter::matches`]). Scores may differ from the
//! reference by [`SCORE_TOLERANCE`], and near-ties (within it) may come in
//! either order.
//!
//! Thresholds are judged by the rule of `selfrag_core::vector` ("Precision
//! and thresholds"), with [`ThresholdProbe`]: a search with a threshold keeps
//! exactly the hits whose score, *as that backend computes it*, reaches the
//! threshold (ties included, a hit an ulp below excluded); against the
//! reference, only chunks within [`SCORE_TOLERANCE`] of the threshold may go
//! either way. Backend tests with their own corpora (e.g. a server's) use
//! the probe too.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use selfrag_core::vector::MAX_KEYWORD_BYTES;
use selfrag_core::{
    Chunk, ChunkId, ChunkRecord, Distance, Field, Filter, IndexSpec, ScoredChunk, SearchRequest, Tenant, VectorIndex,
};
use serde_json::json;

use crate::util::{expect_invalid, expect_invalid_where, Ctx, Rng};
use crate::{CheckResult, VectorFixture};

/// Allowed difference between a backend's score and the reference
/// [`Distance::score`], for vectors with components in `[-1, 1]` (what the
/// suite generates) or small integers. Engines sum in f32 (and normalise
/// cosine vectors in f32), the reference in f64: they agree to about 1e-6
/// here, so this leaves a wide margin while still catching a wrong formula.
pub const SCORE_TOLERANCE: f32 = 1e-3;

fn tenant(label: &str) -> Tenant {
    Tenant::new(format!("{label}-{}", uuid::Uuid::new_v4().simple())).expect("valid tenant")
}

fn spec(dimension: usize, distance: Distance) -> IndexSpec {
    IndexSpec::new(dimension, distance).expect("valid spec")
}

async fn index(f: &VectorFixture, spec: IndexSpec) -> Result<Arc<dyn VectorIndex>, String> {
    let index = (f.make)(spec).await.ctx(format_args!("make index {spec:?}"))?;
    ensure_eq!(*index.spec(), spec, "spec() of a new index");
    Ok(index)
}

fn random_vector(rng: &mut Rng, dimension: usize) -> Vec<f32> {
    loop {
        let v: Vec<f32> = (0..dimension).map(|_| rng.unit()).collect();
        // Keep away from the zero vector, which cosine cannot score.
        if v.iter().map(|x| x * x).sum::<f32>() > 0.05 {
            return v;
        }
    }
}

fn record(c: &Chunk) -> ChunkRecord {
    ChunkRecord { id: c.id, payload: c.payload.clone() }
}

fn id_set<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> BTreeSet<ChunkId> {
    ids.into_iter().copied().collect()
}

async fn all_ids(index: &Arc<dyn VectorIndex>, t: &Tenant, filter: Option<&Filter>) -> Result<Vec<ChunkId>, String> {
    let q = vec![1.0; index.spec().dimension()];
    let mut req = SearchRequest::new(q, SearchRequest::MAX_LIMIT);
    req.filter = filter.cloned();
    Ok(index.search(t, &req).await.ctx("search")?.into_iter().map(|h| h.id).collect())
}

/// A corpus with every payload field varied, for filter checks: documents
/// `doc0`..`doc5`, 14 chunks each.
fn filter_corpus(seed: u64, dimension: usize) -> Vec<Chunk> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for doc in 0..6 {
        for idx in 0..14u32 {
            let mut c =
                Chunk::new(format!("doc{doc}"), idx, format!("text {doc}/{idx}"), random_vector(&mut rng, dimension))
                    .document_type(*rng.pick(&["pdf", "md", "html"]))
                    .source(*rng.pick(&["web", "s3", "local"]))
                    .tags(["a", "b", "c", "d"].into_iter().filter(|_| rng.below(2) == 0));
            match rng.below(3) {
                0 => c = c.extra("lang", "en"),
                1 => c = c.extra("lang", "de"),
                _ => {}
            }
            if rng.below(4) != 0 {
                c = c.extra("year", 2019 + i64::try_from(rng.below(7)).unwrap_or(0));
            }
            match rng.below(3) {
                0 => c = c.extra("draft", true),
                1 => c = c.extra("draft", false),
                _ => {}
            }
            c = c.extra("score", i64::try_from(rng.below(11)).unwrap_or(0) - 5);
            if rng.below(5) == 0 {
                c = c.extra("meta", json!({"nested": [1, 2], "s": "x"}));
            }
            out.push(c);
        }
    }
    out
}

fn extra(key: &str) -> Field {
    Field::Extra(key.to_owned())
}

/// Filters covering every operator and their combinations.
fn filters() -> Vec<Filter> {
    let range = |field: Field, gte, gt, lte, lt| Filter::Range { field, gte, gt, lte, lt };
    vec![
        Filter::eq(Field::DocumentType, "pdf"),
        Filter::eq(Field::Tags, "a"),
        Filter::eq(Field::Source, "web"),
        Filter::eq(Field::DocumentId, "doc3"),
        Filter::eq(Field::ChunkIndex, 5u32),
        Filter::eq(Field::DocumentType, "no-such-type"),
        Filter::any_of(Field::DocumentType, ["pdf", "md"]),
        Filter::any_of(Field::Tags, ["c", "d"]),
        Filter::any_of(Field::DocumentId, ["doc1", "doc4", "nope"]),
        Filter::any_of(Field::ChunkIndex, [1i64, 3, 13]),
        range(Field::ChunkIndex, Some(3), None, None, Some(7)),
        range(Field::ChunkIndex, None, Some(3), Some(7), None),
        range(Field::ChunkIndex, Some(10), None, None, None),
        range(Field::ChunkIndex, None, None, None, Some(2)),
        range(Field::ChunkIndex, None, Some(12), None, None),
        range(Field::ChunkIndex, None, None, Some(0), None),
        range(extra("year"), Some(2022), None, None, None),
        range(extra("score"), None, None, None, Some(0)),
        range(extra("score"), Some(-2), None, Some(2), None),
        Filter::eq(extra("lang"), "en"),
        Filter::eq(extra("draft"), true),
        Filter::eq(extra("draft"), false),
        Filter::eq(extra("year"), 2021i64),
        Filter::eq(extra("score"), -5i64),
        Filter::any_of(extra("lang"), ["en", "de"]),
        Filter::eq(extra("missing_key"), "x"),
        Filter::not(Filter::eq(extra("lang"), "en")),
        Filter::not(Filter::eq(Field::Tags, "a")),
        Filter::not(Filter::eq(extra("missing_key"), "x")),
        Filter::all([]),
        Filter::all([Filter::eq(Field::DocumentType, "pdf"), Filter::eq(Field::Tags, "b")]),
        Filter::any([Filter::eq(Field::Source, "s3"), range(Field::ChunkIndex, Some(12), None, None, None)]),
        Filter::not(Filter::any([Filter::eq(Field::Tags, "a"), Filter::eq(Field::Tags, "b")])),
        Filter::all([
            Filter::not(Filter::eq(Field::Source, "web")),
            Filter::any([Filter::eq(extra("draft"), false), range(extra("year"), None, None, None, Some(2021))]),
        ]),
        Filter::any([
            Filter::all([Filter::eq(Field::DocumentId, "doc0"), Filter::not(Filter::eq(Field::ChunkIndex, 0u32))]),
            Filter::all([Filter::eq(Field::DocumentId, "doc5"), range(Field::ChunkIndex, None, None, Some(1), None)]),
        ]),
        Filter::not(Filter::not(Filter::eq(Field::Tags, "c"))),
    ]
}

fn reference_matches(t: &Tenant, chunks: &[Chunk], filter: &Filter) -> BTreeSet<ChunkId> {
    chunks.iter().filter(|c| filter.matches(&c.payload.to_json(t, c.id))).map(|c| c.id).collect()
}

/// Checks search hits against the reference scores of `corpus`: count, score
/// per hit, order, and that no better chunk was left out.
fn check_hits(
    what: &str,
    distance: Distance,
    query: &[f32],
    corpus: &[&Chunk],
    limit: usize,
    hits: &[ScoredChunk],
) -> CheckResult {
    let by_id: HashMap<ChunkId, &Chunk> = corpus.iter().map(|c| (c.id, *c)).collect();
    let mut reference: Vec<f32> = corpus.iter().map(|c| distance.score(query, &c.vector)).collect();
    reference.sort_by(|a, b| b.total_cmp(a));
    ensure_eq!(hits.len(), limit.min(corpus.len()), "{what}: number of hits");
    let mut seen = BTreeSet::new();
    for (i, hit) in hits.iter().enumerate() {
        ensure!(seen.insert(hit.id), "{what}: chunk {} returned twice", hit.id);
        let chunk = by_id.get(&hit.id).ok_or_else(|| format!("{what}: hit {} is not in the corpus", hit.id))?;
        ensure_eq!(hit.payload, chunk.payload, "{what}: payload of hit {i}");
        let own = distance.score(query, &chunk.vector);
        ensure!(
            (hit.score - own).abs() <= SCORE_TOLERANCE,
            "{what}: hit {i} scored {} but the reference {distance} score is {own}",
            hit.score
        );
        ensure!(
            own >= reference[i] - SCORE_TOLERANCE,
            "{what}: hit {i} has reference score {own}, but the {i}-th best is {} (order or recall is wrong)",
            reference[i]
        );
        if i > 0 {
            ensure!(
                hits[i - 1].score >= hit.score - SCORE_TOLERANCE,
                "{what}: hits not best first: {} then {}",
                hits[i - 1].score,
                hit.score
            );
        }
    }
    Ok(())
}

/// The smallest f32 above `x` (`f32::next_up`, stable only since Rust
/// 1.86, above this workspace's MSRV). `x` is finite.
fn next_up(x: f32) -> f32 {
    if x == 0.0 {
        // Above both +0.0 and -0.0: the smallest positive subnormal.
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    // Positive: a larger magnitude; negative: a smaller one.
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// The ground for judging searches with a `score_threshold`: the hits of one
/// search without a threshold that returned every chunk of a corpus (each
/// chunk's score *as the backend computes it*), and the reference scores
/// ([`Distance::score`]) of the same chunks.
///
/// The rule it checks (`selfrag_core::vector`, "Precision and thresholds"):
///
/// - a search with threshold `t` keeps exactly the chunks whose own score is
///   `>= t`, best first, cut at `limit`: a chunk scoring exactly `t` is kept,
///   one an ulp below is not;
/// - against the reference: a chunk whose reference score is at least
///   `t + SCORE_TOLERANCE` is kept, one below `t - SCORE_TOLERANCE` is not;
///   in between, the backend's own score decides.
///
/// Probing the thresholds of [`ThresholdProbe::thresholds`] (at, just above
/// and between the backend's scores, and at the reference scores) finds a
/// backend that drops ties, keeps hits just below the threshold, or applies
/// the threshold to another score than the one it returns.
///
/// Backends must score deterministically: the same query against the same
/// stored vector gives the same score in every search.
#[derive(Debug, Clone)]
pub struct ThresholdProbe {
    /// The backend's score of every chunk, best first.
    own: Vec<(ChunkId, f32)>,
    /// The reference score of every chunk.
    reference: HashMap<ChunkId, f32>,
}

impl ThresholdProbe {
    /// The probe for `query` over `corpus`, from `unthresholded`: the hits of
    /// the backend's search for `query` without a threshold, with a limit of
    /// at least `corpus.len()`.
    ///
    /// # Errors
    /// A message when `unthresholded` does not hold every chunk of `corpus`
    /// exactly once and nothing else, or holds a non-finite score.
    pub fn new(
        distance: Distance,
        query: &[f32],
        corpus: &[&Chunk],
        unthresholded: &[ScoredChunk],
    ) -> Result<Self, String> {
        let reference: HashMap<ChunkId, f32> =
            corpus.iter().map(|c| (c.id, distance.score(query, &c.vector))).collect();
        let mut own = Vec::with_capacity(unthresholded.len());
        let mut seen = BTreeSet::new();
        for h in unthresholded {
            ensure!(reference.contains_key(&h.id), "search without threshold: hit {} is not in the corpus", h.id);
            ensure!(seen.insert(h.id), "search without threshold: chunk {} returned twice", h.id);
            ensure!(h.score.is_finite(), "search without threshold: chunk {} scored {}", h.id, h.score);
            own.push((h.id, h.score));
        }
        ensure_eq!(own.len(), reference.len(), "search without threshold: hits (it must return the whole corpus)");
        own.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(Self { own, reference })
    }

    /// Thresholds worth probing, ascending: every score the backend returned
    /// (its chunk, and any tying with it, must be kept), the next f32 above
    /// each (that chunk must be left out), every reference score (the
    /// backend may go either way on that chunk, but must agree with its own
    /// score), and the midpoints between neighbouring distinct scores.
    pub fn thresholds(&self) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::with_capacity(self.own.len() * 4);
        for &(_, s) in &self.own {
            out.push(s);
            out.push(next_up(s));
        }
        out.extend(self.reference.values().copied());
        for w in self.own.windows(2) {
            if w[0].1 != w[1].1 {
                // Halves first: no overflow, whatever the magnitudes.
                out.push(w[0].1 / 2.0 + w[1].1 / 2.0);
            }
        }
        out.retain(|t| t.is_finite());
        out.sort_by(f32::total_cmp);
        out.dedup_by(|a, b| a.to_bits() == b.to_bits());
        out
    }

    /// The chunks a search with `threshold` keeps by the backend's own
    /// scores, best first (before any limit).
    pub fn expected(&self, threshold: f32) -> Vec<ChunkId> {
        self.own.iter().filter(|(_, s)| *s >= threshold).map(|(id, _)| *id).collect()
    }

    /// Checks `hits`, the answer of the same search with `score_threshold`
    /// = `threshold` and `limit`, against the rule (see the type docs).
    ///
    /// # Errors
    /// A message saying which chunk broke which half of the rule.
    pub fn check(&self, what: &str, threshold: f32, limit: usize, hits: &[ScoredChunk]) -> CheckResult {
        let own: HashMap<ChunkId, f32> = self.own.iter().copied().collect();
        let passing = self.expected(threshold);
        let mut seen = BTreeSet::new();
        for h in hits {
            let Some(own_score) = own.get(&h.id) else {
                return Err(format!("{what}: threshold {threshold} returned chunk {}, not in the corpus", h.id));
            };
            ensure!(seen.insert(h.id), "{what}: threshold {threshold} returned chunk {} twice", h.id);
            ensure!(
                h.score >= threshold,
                "{what}: threshold {threshold} kept chunk {} with score {} (as this backend computes it; \
                 {own_score} without a threshold): below the threshold",
                h.id,
                h.score
            );
        }
        ensure_eq!(
            hits.len(),
            passing.len().min(limit),
            "{what}: threshold {threshold}, limit {limit}: hits (the chunks this backend scores >= {threshold} \
             without a threshold: {})",
            passing.len()
        );
        let passing_set: BTreeSet<ChunkId> = passing.iter().copied().collect();
        if let Some(h) = hits.iter().find(|h| !passing_set.contains(&h.id)) {
            return Err(format!(
                "{what}: threshold {threshold} kept chunk {} (score {}), which scored {} without a threshold",
                h.id, h.score, own[&h.id]
            ));
        }
        if passing.len() <= limit {
            // Every chunk the backend scores at or above the threshold.
            if let Some(id) = passing.iter().find(|id| !seen.contains(id)) {
                return Err(format!(
                    "{what}: threshold {threshold} left out chunk {id}, which this backend scores {} (>= the \
                     threshold; reference {})",
                    own[id], self.reference[id]
                ));
            }
        } else {
            // The best `limit` of them: none left out scores above a kept one.
            let lowest_kept = hits.iter().map(|h| own[&h.id]).fold(f32::INFINITY, f32::min);
            if let Some(id) = passing.iter().find(|id| !seen.contains(id) && own[id] > lowest_kept) {
                return Err(format!(
                    "{what}: threshold {threshold}, limit {limit} left out chunk {id} scoring {} but kept one \
                     scoring {lowest_kept}",
                    own[id]
                ));
            }
        }
        // Against the reference, outside the tolerance band.
        for (id, &reference) in &self.reference {
            if seen.contains(id) {
                ensure!(
                    reference >= threshold - SCORE_TOLERANCE,
                    "{what}: threshold {threshold} kept chunk {id}, whose reference score {reference} is below it \
                     by more than {SCORE_TOLERANCE}"
                );
            } else if passing.len() <= limit {
                ensure!(
                    reference < threshold + SCORE_TOLERANCE,
                    "{what}: threshold {threshold} left out chunk {id}, whose reference score {reference} clears \
                     it by more than {SCORE_TOLERANCE}"
                );
            }
        }
        Ok(())
    }
}

/// Upserted chunks come back with their payloads intact (Unicode, tags,
/// nested extra fields), from `get`, `document_chunks` and `search`.
pub async fn upsert_then_get_round_trips(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let t = tenant("rt");
    let chunks = vec![
        Chunk::new("doc-1", 0, "Grüße 🦀 \"quoted\" \\ text\nline", vec![1.0, 0.0, 0.0, 0.0])
            .document_type("pdf")
            .source("s3://bucket/doc-1.pdf")
            .tags(["zeta", "alpha", "ünï"])
            .extra("lang", "de")
            .extra("year", 2024)
            .extra("draft", false)
            .extra("nested", json!({"list": [1, "two", null], "obj": {"x": 1.5}})),
        Chunk::new("doc-1", 1, "", vec![0.0, 1.0, 0.0, 0.0]),
    ];
    idx.upsert(&t, chunks.clone()).await.ctx("upsert")?;
    idx.upsert(&t, vec![]).await.ctx("empty upsert")?;
    let got = idx.get(&t, &[chunks[0].id, chunks[1].id]).await.ctx("get")?;
    ensure_eq!(got, chunks.iter().map(record).collect::<Vec<_>>(), "get after upsert");
    let doc = idx.document_chunks(&t, "doc-1").await.ctx("document_chunks")?;
    ensure_eq!(doc, chunks.iter().map(record).collect::<Vec<_>>(), "document_chunks after upsert");
    let hits = idx.search(&t, &SearchRequest::new(vec![1.0, 0.0, 0.0, 0.0], 1)).await.ctx("search")?;
    ensure_eq!(hits.first().map(|h| h.payload.clone()), Some(chunks[0].payload.clone()), "payload of the best hit");
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 2, "count");
    ensure!(idx.get(&t, &[]).await.ctx("get of no ids")?.is_empty(), "get of no ids returned chunks");
    Ok(())
}

/// `get` returns chunks in the order of the ids given, leaving absent ids
/// out.
pub async fn get_keeps_input_order(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(3, Distance::Dot)).await?;
    let t = tenant("order");
    let mut rng = Rng::new(3);
    let chunks: Vec<Chunk> = (0..6).map(|i| Chunk::new("d", i, format!("{i}"), random_vector(&mut rng, 3))).collect();
    idx.upsert(&t, chunks.clone()).await.ctx("upsert")?;
    let absent = ChunkId::random();
    let ids = [chunks[4].id, absent, chunks[0].id, chunks[5].id, ChunkId::for_chunk("d", 99), chunks[2].id];
    let got = idx.get(&t, &ids).await.ctx("get")?;
    let want: Vec<ChunkRecord> = [4, 0, 5, 2].iter().map(|&i| record(&chunks[i])).collect();
    ensure_eq!(got, want, "get keeps input order and leaves absent ids out");
    Ok(())
}

/// Upserting the same chunk id again replaces payload and vector: the count
/// stays 1 and search sees the new vector.
pub async fn upsert_is_idempotent(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(3, Distance::Cosine)).await?;
    let t = tenant("idem");
    let first = Chunk::new("doc", 0, "first", vec![1.0, 0.0, 0.0]).tags(["old"]).extra("v", 1);
    let mut second = Chunk::new("doc", 0, "second", vec![0.0, 0.0, 1.0]).tags(["new"]);
    second.payload.source = "replaced".into();
    ensure_eq!(first.id, second.id, "deterministic chunk ids");
    let other = Chunk::new("doc", 1, "other", vec![0.0, 1.0, 0.0]);
    idx.upsert(&t, vec![first.clone(), other.clone()]).await.ctx("upsert")?;
    idx.upsert(&t, vec![first.clone()]).await.ctx("upsert again")?;
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 2, "count after upserting the same chunk twice");
    idx.upsert(&t, vec![second.clone()]).await.ctx("upsert replacement")?;
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 2, "count after replacing a chunk");
    ensure_eq!(idx.get(&t, &[first.id]).await.ctx("get")?, vec![record(&second)], "the replaced chunk");
    let hits = idx.search(&t, &SearchRequest::new(vec![0.0, 0.0, 1.0], 1)).await.ctx("search")?;
    ensure_eq!(hits.first().map(|h| h.id), Some(second.id), "best hit for the new vector");
    let score = hits.first().map(|h| h.score).unwrap_or_default();
    ensure!((score - 1.0).abs() <= SCORE_TOLERANCE, "cosine score of the replaced vector: {score}, expected 1");
    let old = idx.search(&t, &SearchRequest::new(vec![1.0, 0.0, 0.0], 2)).await.ctx("search")?;
    for h in &old {
        ensure!(h.score < 0.5, "the old vector still scores {} for chunk {}", h.score, h.id);
    }
    let filter = Filter::eq(Field::Tags, "old");
    ensure_eq!(idx.count(&t, Some(&filter)).await.ctx("count")?, 0, "chunks still carrying the old tag");
    Ok(())
}

/// No call of tenant B sees or touches tenant A's chunks, even with the same
/// chunk ids: search, get, count, document_chunks, delete, delete_document,
/// delete_by_filter.
pub async fn tenant_isolation(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let (a, b) = (tenant("a"), tenant("b"));
    let mut rng = Rng::new(11);
    let a_chunks: Vec<Chunk> = (0..8)
        .map(|i| Chunk::new("shared-doc", i, format!("A{i}"), random_vector(&mut rng, 4)).tags(["a"]).source("A"))
        .collect();
    idx.upsert(&a, a_chunks.clone()).await.ctx("upsert A")?;
    let ids: Vec<ChunkId> = a_chunks.iter().map(|c| c.id).collect();
    // B first sees nothing at all.
    ensure!(
        idx.search(&b, &SearchRequest::new(vec![1.0; 4], 100)).await.ctx("search B")?.is_empty(),
        "B's search sees A"
    );
    ensure!(idx.get(&b, &ids).await.ctx("get B")?.is_empty(), "B gets A's chunks by id");
    ensure_eq!(idx.count(&b, None).await.ctx("count B")?, 0, "B's count");
    ensure!(idx.document_chunks(&b, "shared-doc").await.ctx("document_chunks B")?.is_empty(), "B sees A's document");
    // Deletes by B leave A alone.
    idx.delete(&b, &ids[..2]).await.ctx("delete B")?;
    idx.delete_document(&b, "shared-doc").await.ctx("delete_document B")?;
    idx.delete_by_filter(&b, &Filter::all([])).await.ctx("delete_by_filter B")?;
    ensure_eq!(idx.count(&a, None).await.ctx("count A")?, 8, "A's count after B's deletes");
    // B writes the same chunk ids with other payloads: A is unchanged.
    let b_chunks: Vec<Chunk> = (0..4)
        .map(|i| Chunk::new("shared-doc", i, format!("B{i}"), random_vector(&mut rng, 4)).tags(["b"]).source("B"))
        .collect();
    idx.upsert(&b, b_chunks.clone()).await.ctx("upsert B")?;
    ensure_eq!(idx.count(&a, None).await.ctx("count A")?, 8, "A's count after B's upsert of the same ids");
    ensure_eq!(idx.count(&b, None).await.ctx("count B")?, 4, "B's count");
    ensure_eq!(idx.get(&a, &ids).await.ctx("get A")?, a_chunks.iter().map(record).collect::<Vec<_>>(), "A's chunks");
    ensure_eq!(
        idx.get(&b, &ids).await.ctx("get B")?,
        b_chunks.iter().map(record).collect::<Vec<_>>(),
        "B's chunks by the shared ids"
    );
    let hits = idx.search(&b, &SearchRequest::new(vec![1.0; 4], 100)).await.ctx("search B")?;
    ensure!(hits.iter().all(|h| h.payload.source == "B"), "B's search returned A's payloads: {hits:?}");
    ensure_eq!(hits.len(), 4, "B's hits");
    let doc = idx.document_chunks(&b, "shared-doc").await.ctx("document_chunks B")?;
    ensure_eq!(doc, b_chunks.iter().map(record).collect::<Vec<_>>(), "B's document");
    ensure_eq!(idx.count(&b, Some(&Filter::eq(Field::Tags, "a"))).await.ctx("count B")?, 0, "B's count of A's tag");
    idx.delete_document(&b, "shared-doc").await.ctx("delete_document B")?;
    ensure_eq!(idx.count(&b, None).await.ctx("count B")?, 0, "B's count after deleting its document");
    ensure_eq!(idx.count(&a, None).await.ctx("count A")?, 8, "A's count after B deleted the same document");
    Ok(())
}

/// Bad vectors (wrong dimension, NaN, ±infinity, a squared norm that
/// overflows f32, the zero vector or a vector of tiny norm under cosine)
/// reject the whole upsert with `InvalidInput`: nothing is written, not even
/// the good chunks of the batch.
pub async fn bad_vectors_write_nothing(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(3, Distance::Cosine)).await?;
    let t = tenant("badvec");
    let good = Chunk::new("good", 0, "fine", vec![1.0, 2.0, 3.0]);
    let cases: Vec<(&str, Vec<f32>)> = vec![
        ("a short vector", vec![1.0, 2.0]),
        ("a long vector", vec![1.0, 2.0, 3.0, 4.0]),
        ("an empty vector", vec![]),
        ("NaN", vec![1.0, f32::NAN, 0.0]),
        ("infinity", vec![f32::INFINITY, 0.0, 0.0]),
        ("negative infinity", vec![0.0, 0.0, f32::NEG_INFINITY]),
        ("the zero vector under cosine", vec![0.0, 0.0, 0.0]),
        // Squared norm 1e-8 < f32::EPSILON: engines leave it unnormalised.
        ("a vector of tiny norm under cosine", vec![1e-4, 0.0, 0.0]),
        // Finite components whose squared norm (2e40) overflows f32.
        ("a vector whose squared norm overflows", vec![1e20, 1e20, 0.0]),
    ];
    for (what, v) in cases {
        let bad = Chunk::new("bad", 0, "bad", v);
        let r = idx.upsert(&t, vec![good.clone(), bad]).await;
        expect_invalid_where(r, &format!("upsert with {what}"), "`chunks[1].vector...`", |f| {
            f.starts_with("chunks[1].vector")
        })?;
    }
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 0, "chunks after rejected upserts");
    ensure!(idx.get(&t, &[good.id]).await.ctx("get")?.is_empty(), "the good chunk of a rejected batch was stored");
    // Zero vectors are fine where they have a score.
    let dot = index(f, spec(3, Distance::Dot)).await?;
    dot.upsert(&t, vec![Chunk::new("zero", 0, "z", vec![0.0; 3])]).await.ctx("zero vector under dot")?;
    ensure_eq!(dot.count(&t, None).await.ctx("count")?, 1, "zero vector stored under dot");
    let huge = Chunk::new("huge", 0, "h", vec![1e20, 1e20, 0.0]);
    expect_invalid_where(
        dot.upsert(&t, vec![huge]).await,
        "upsert under dot of a vector whose squared norm overflows",
        "`chunks[0].vector`",
        |f| f.starts_with("chunks[0].vector"),
    )?;
    ensure_eq!(dot.count(&t, None).await.ctx("count")?, 1, "chunks under dot after the rejected upsert");
    Ok(())
}

/// Bad payloads (empty `document_id`, NUL bytes, empty tags, an `extra`
/// integer above `i64::MAX`) and duplicate ids in one upsert reject the
/// whole upsert: nothing is written.
pub async fn bad_payloads_write_nothing(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Euclid)).await?;
    let t = tenant("badpayload");
    let good = Chunk::new("good", 0, "fine", vec![1.0, 0.0]);
    let cases: Vec<(&str, Chunk, &str)> = vec![
        ("an empty document_id", Chunk::new("", 0, "x", vec![1.0, 1.0]), "chunks[1].document_id"),
        ("NUL in text", Chunk::new("d", 0, "a\u{0}b", vec![1.0, 1.0]), "chunks[1].text"),
        ("NUL in document_id", Chunk::new("d\u{0}", 0, "x", vec![1.0, 1.0]), "chunks[1].document_id"),
        ("NUL in a tag", Chunk::new("d", 0, "x", vec![1.0, 1.0]).tags(["ok", "b\u{0}"]), "chunks[1].tags[1]"),
        ("an empty tag", Chunk::new("d", 0, "x", vec![1.0, 1.0]).tags([""]), "chunks[1].tags[0]"),
        ("NUL in extra", Chunk::new("d", 0, "x", vec![1.0, 1.0]).extra("k", "\u{0}"), "chunks[1].extra"),
        (
            "an extra integer above i64::MAX",
            Chunk::new("d", 0, "x", vec![1.0, 1.0]).extra("n", u64::MAX),
            "chunks[1].extra",
        ),
        (
            "a nested extra integer above i64::MAX",
            Chunk::new("d", 0, "x", vec![1.0, 1.0]).extra("n", json!({"deep": [1, i64::MAX as u64 + 1]})),
            "chunks[1].extra",
        ),
    ];
    for (what, bad, field) in cases {
        expect_invalid(idx.upsert(&t, vec![good.clone(), bad]).await, &format!("upsert with {what}"), field)?;
    }
    let dup = Chunk::new("good", 0, "same id, other text", vec![0.0, 1.0]);
    expect_invalid(idx.upsert(&t, vec![good.clone(), dup]).await, "upsert with a duplicate id", "chunks")?;
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 0, "chunks after rejected upserts");
    Ok(())
}

/// Bad search requests are `InvalidInput` naming the field: wrong dimension,
/// NaN, limit 0 or above the maximum, a non-finite threshold.
pub async fn bad_search_requests_are_rejected(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(3, Distance::Cosine)).await?;
    let t = tenant("badsearch");
    idx.upsert(&t, vec![Chunk::new("d", 0, "x", vec![1.0, 0.0, 0.0])]).await.ctx("upsert")?;
    let search = |r: SearchRequest| {
        let (idx, t) = (idx.clone(), t.clone());
        async move { idx.search(&t, &r).await }
    };
    let vector_field = |f: &str| f == "vector" || f.starts_with("vector[");
    expect_invalid_where(
        search(SearchRequest::new(vec![1.0, 0.0], 5)).await,
        "a short query",
        "`vector`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![1.0, 0.0, 0.0, 0.0], 5)).await,
        "a long query",
        "`vector`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![f32::NAN, 0.0, 0.0], 5)).await,
        "a NaN query",
        "`vector[0]`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![0.0, f32::INFINITY, 0.0], 5)).await,
        "an infinite query",
        "`vector[1]`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![0.0; 3], 5)).await,
        "a zero query under cosine",
        "`vector`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![1e-4, 0.0, 0.0], 5)).await,
        "a query of tiny norm under cosine",
        "`vector`",
        vector_field,
    )?;
    expect_invalid_where(
        search(SearchRequest::new(vec![1e20, 1e20, 0.0], 5)).await,
        "a query whose squared norm overflows",
        "`vector`",
        vector_field,
    )?;
    expect_invalid(search(SearchRequest::new(vec![1.0, 0.0, 0.0], 0)).await, "limit 0", "limit")?;
    expect_invalid(
        search(SearchRequest::new(vec![1.0, 0.0, 0.0], SearchRequest::MAX_LIMIT + 1)).await,
        "limit above the maximum",
        "limit",
    )?;
    for th in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        expect_invalid(
            search(SearchRequest::new(vec![1.0, 0.0, 0.0], 5).score_threshold(th)).await,
            &format!("score_threshold {th}"),
            "score_threshold",
        )?;
    }
    Ok(())
}

/// Malformed filters are `InvalidInput` on search, count and
/// delete_by_filter, and delete nothing.
pub async fn bad_filters_are_rejected(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Dot)).await?;
    let t = tenant("badfilter");
    idx.upsert(&t, vec![Chunk::new("d", 0, "x", vec![1.0, 0.0]).tags(["a"])]).await.ctx("upsert")?;
    let mut deep = Filter::eq(Field::Tags, "a");
    for _ in 0..Filter::MAX_DEPTH + 2 {
        deep = Filter::not(deep);
    }
    let bad = vec![
        ("an empty any", Filter::any([])),
        ("an empty any_of", Filter::any_of(Field::Tags, Vec::<String>::new())),
        ("a range without bounds", Filter::range(Field::ChunkIndex, None, None)),
        ("a range on a keyword field", Filter::range(Field::Source, Some(1), None)),
        ("a keyword value on chunk_index", Filter::eq(Field::ChunkIndex, "x")),
        ("an integer value on tags", Filter::eq(Field::Tags, 3i64)),
        ("a dotted extra key", Filter::eq(extra("a.b"), "x")),
        ("an empty extra key", Filter::eq(extra(""), "x")),
        ("a NUL in a keyword", Filter::eq(Field::Source, "a\u{0}")),
        ("a keyword over MAX_KEYWORD_BYTES", Filter::eq(Field::Source, "k".repeat(MAX_KEYWORD_BYTES + 1))),
        (
            "an any_of keyword over MAX_KEYWORD_BYTES",
            Filter::any_of(Field::Tags, ["a".to_owned(), "k".repeat(MAX_KEYWORD_BYTES + 1)]),
        ),
        (
            "an any_of with MAX_ANY_OF + 1 values",
            Filter::any_of(Field::Tags, (0..=Filter::MAX_ANY_OF).map(|i| format!("t{i}"))),
        ),
        (
            "an integer any_of with MAX_ANY_OF + 1 values",
            Filter::any_of(Field::ChunkIndex, (0..=Filter::MAX_ANY_OF).map(|i| i as i64)),
        ),
        ("nesting too deep", deep),
        ("a bad filter nested in a good one", Filter::all([Filter::eq(Field::Tags, "a"), Filter::any([])])),
    ];
    let is_filter = |f: &str| f.starts_with("filter");
    for (what, filter) in bad {
        let req = SearchRequest::new(vec![1.0, 0.0], 5).filter(filter.clone());
        expect_invalid_where(idx.search(&t, &req).await, &format!("search with {what}"), "`filter...`", is_filter)?;
        expect_invalid_where(
            idx.count(&t, Some(&filter)).await,
            &format!("count with {what}"),
            "`filter...`",
            is_filter,
        )?;
        expect_invalid_where(
            idx.delete_by_filter(&t, &filter).await,
            &format!("delete_by_filter with {what}"),
            "`filter...`",
            is_filter,
        )?;
    }
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 1, "chunks after rejected delete_by_filter calls");
    Ok(())
}

/// `document_chunks` and `delete_document` refuse a bad document id (empty,
/// over [`MAX_KEYWORD_BYTES`], with a NUL) with `InvalidInput` naming
/// `document_id`, and delete nothing. (A backend that passed `""` on as a
/// filter value might match chunks without a document id, or all of them.)
pub async fn bad_document_ids_are_rejected(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Dot)).await?;
    let t = tenant("baddocid");
    let chunks: Vec<Chunk> = (0..3).map(|i| Chunk::new("doc", i, "x", vec![1.0, i as f32])).collect();
    idx.upsert(&t, chunks.clone()).await.ctx("upsert")?;
    let long = "d".repeat(MAX_KEYWORD_BYTES + 1);
    for (what, id) in
        [("an empty document_id", ""), ("a document_id with NUL", "doc\u{0}"), ("a long document_id", &long)]
    {
        expect_invalid(idx.document_chunks(&t, id).await, &format!("document_chunks of {what}"), "document_id")?;
        expect_invalid(idx.delete_document(&t, id).await, &format!("delete_document of {what}"), "document_id")?;
    }
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 3, "chunks after rejected delete_document calls");
    ensure_eq!(
        idx.document_chunks(&t, "doc").await.ctx("document_chunks")?,
        chunks.iter().map(record).collect::<Vec<_>>(),
        "the document after rejected calls"
    );
    Ok(())
}

/// `score_threshold` is inclusive (`score >= threshold`) exactly at the
/// boundary: a query equal to a stored vector under Euclid or Manhattan with
/// threshold `0.0` returns that chunk; a chunk at distance exactly 1 passes
/// `-1.0`; under dot, small-integer vectors scoring exactly `k` pass
/// threshold `k`; under cosine, an axis vector passes `1.0` with its own
/// axis as the query. All these scores are exact in f32, so every backend
/// computes them bit for bit like the reference: the rule's "as the backend
/// computes it" leaves no room, and a tie must be kept.
pub async fn score_threshold_is_inclusive(f: &VectorFixture) -> CheckResult {
    let t = tenant("inclusive");
    let ids = |hits: &[ScoredChunk]| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    let scores_near = |hits: &[ScoredChunk], want: &[f32]| {
        hits.len() == want.len() && hits.iter().zip(want).all(|(h, w)| (h.score - w).abs() <= SCORE_TOLERANCE)
    };
    for distance in [Distance::Euclid, Distance::Manhattan] {
        let idx = index(f, spec(4, distance)).await?;
        let exact = Chunk::new("d", 0, "exact", vec![1.0, 2.0, 3.0, 4.0]);
        let one_off = Chunk::new("d", 1, "one off", vec![1.0, 2.0, 3.0, 5.0]);
        let far = Chunk::new("d", 2, "far", vec![-4.0, 2.0, 3.0, 4.0]);
        idx.upsert(&t, vec![exact.clone(), one_off.clone(), far]).await.ctx("upsert")?;
        let req = SearchRequest::new(exact.vector.clone(), 10).score_threshold(0.0);
        let hits = idx.search(&t, &req).await.ctx("search")?;
        ensure_eq!(ids(&hits), vec![exact.id], "{distance}: the stored vector itself with threshold 0.0");
        let req = SearchRequest::new(exact.vector.clone(), 10).score_threshold(-1.0);
        let hits = idx.search(&t, &req).await.ctx("search")?;
        ensure_eq!(
            ids(&hits),
            vec![exact.id, one_off.id],
            "{distance}: hits at distance 0 and exactly 1, threshold -1.0"
        );
        ensure!(scores_near(&hits, &[0.0, -1.0]), "{distance}: scores {hits:?}, expected 0 and -1 (negated distances)");
    }
    let idx = index(f, spec(4, Distance::Dot)).await?;
    let query = vec![1.0, 2.0, 3.0, 0.0];
    let above = Chunk::new("d", 0, "8", vec![0.0, 1.0, 2.0, 0.0]);
    let at = Chunk::new("d", 1, "6", vec![1.0, 1.0, 1.0, 7.0]);
    let below = Chunk::new("d", 2, "3", vec![1.0, 1.0, 0.0, 0.0]);
    idx.upsert(&t, vec![above.clone(), at.clone(), below]).await.ctx("upsert")?;
    let req = SearchRequest::new(query.clone(), 10).score_threshold(6.0);
    let hits = idx.search(&t, &req).await.ctx("search")?;
    ensure_eq!(ids(&hits), vec![above.id, at.id], "dot: scores 8 and exactly 6 with threshold 6.0");
    ensure!(scores_near(&hits, &[8.0, 6.0]), "dot: scores {hits:?}, expected 8 and 6");
    let req = SearchRequest::new(query, 10).score_threshold(8.0);
    ensure_eq!(ids(&idx.search(&t, &req).await.ctx("search")?), vec![above.id], "dot: score exactly 8, threshold 8.0");
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let axis = Chunk::new("d", 0, "x", vec![1.0, 0.0, 0.0, 0.0]);
    let other = Chunk::new("d", 1, "y", vec![0.0, 1.0, 0.0, 0.0]);
    idx.upsert(&t, vec![axis.clone(), other]).await.ctx("upsert")?;
    let req = SearchRequest::new(vec![2.0, 0.0, 0.0, 0.0], 10).score_threshold(1.0);
    ensure_eq!(
        ids(&idx.search(&t, &req).await.ctx("search")?),
        vec![axis.id],
        "cosine: similarity exactly 1, threshold 1.0"
    );
    Ok(())
}

/// Scores follow the reference for every distance: hits best first, each
/// score within 1e-3 of [`Distance::score`], no better chunk left out.
pub async fn scores_match_reference(f: &VectorFixture) -> CheckResult {
    for (n, distance) in
        [Distance::Cosine, Distance::Dot, Distance::Euclid, Distance::Manhattan].into_iter().enumerate()
    {
        let dim = 8;
        let idx = index(f, spec(dim, distance)).await?;
        let t = tenant("scores");
        let mut rng = Rng::new(100 + n as u64);
        let corpus: Vec<Chunk> = (0..60)
            .map(|i| Chunk::new(format!("d{}", i % 7), i, format!("{i}"), random_vector(&mut rng, dim)))
            .collect();
        idx.upsert(&t, corpus.clone()).await.ctx("upsert")?;
        let refs: Vec<&Chunk> = corpus.iter().collect();
        for q in 0..5 {
            let query = random_vector(&mut rng, dim);
            for limit in [1, 10, 60, 100] {
                let hits = idx.search(&t, &SearchRequest::new(query.clone(), limit)).await.ctx("search")?;
                check_hits(&format!("{distance} query {q} limit {limit}"), distance, &query, &refs, limit, &hits)?;
            }
        }
        // A chunk queried by its own vector is the best hit under cosine
        // and Euclid/Manhattan (distance 0).
        if distance != Distance::Dot {
            let target = &corpus[17];
            let hits = idx.search(&t, &SearchRequest::new(target.vector.clone(), 1)).await.ctx("search")?;
            ensure_eq!(hits.first().map(|h| h.id), Some(target.id), "{distance}: best hit for a stored vector");
        }
    }
    Ok(())
}

/// `score_threshold` keeps exactly the hits scoring at least the threshold
/// (higher is better, also for the negated Euclid and Manhattan scores), by
/// the rule of [`ThresholdProbe`]: thresholds at, an ulp above and between
/// the backend's own scores and at the reference scores, over a corpus with
/// ties (two copies of one vector) and, under cosine, a near-tie (a scaled
/// copy: the same direction, which an engine normalising in f32 may score an
/// ulp apart); with limits above and below the number of chunks passing.
/// A threshold in a clear gap keeps exactly the chunks above it.
pub async fn score_threshold_filters_hits(f: &VectorFixture) -> CheckResult {
    for (n, distance) in
        [Distance::Cosine, Distance::Dot, Distance::Euclid, Distance::Manhattan].into_iter().enumerate()
    {
        let idx = index(f, spec(6, distance)).await?;
        let t = tenant("threshold");
        let mut rng = Rng::new(200 + n as u64);
        let mut corpus: Vec<Chunk> =
            (0..40).map(|i| Chunk::new("d", i, format!("{i}"), random_vector(&mut rng, 6))).collect();
        corpus.push(Chunk::new("d", 40, "copy of 5", corpus[5].vector.clone()));
        corpus.push(Chunk::new("d", 41, "3 x 9", corpus[9].vector.iter().map(|x| x * 3.0).collect()));
        idx.upsert(&t, corpus.clone()).await.ctx("upsert")?;
        let query = random_vector(&mut rng, 6);
        let refs: Vec<&Chunk> = corpus.iter().collect();
        let all = idx.search(&t, &SearchRequest::new(query.clone(), 100)).await.ctx("search without threshold")?;
        check_hits(&format!("{distance} without threshold"), distance, &query, &refs, refs.len(), &all)?;
        let probe = ThresholdProbe::new(distance, &query, &refs, &all)?;
        let thresholds = probe.thresholds();
        for (i, &threshold) in thresholds.iter().enumerate() {
            // Limit 100 (all that pass) always; limit 3 on a sample.
            let limits: &[usize] = if i % 5 == 0 { &[100, 3] } else { &[100] };
            for &limit in limits {
                let req = SearchRequest::new(query.clone(), limit).score_threshold(threshold);
                let hits = idx.search(&t, &req).await.ctx("search with threshold")?;
                probe.check(&distance.to_string(), threshold, limit, &hits)?;
            }
        }
        let mut scores: Vec<f32> = corpus.iter().map(|c| distance.score(&query, &c.vector)).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        // A threshold in a clear gap between two neighbouring reference
        // scores, so that tolerance never decides membership: the count is
        // known without asking the backend.
        let cut = (8..scores.len() - 1)
            .find(|&i| scores[i] - scores[i + 1] > 4.0 * SCORE_TOLERANCE)
            .ok_or("no gap in the generated scores")?;
        let threshold = (scores[cut] + scores[cut + 1]) / 2.0;
        let req = SearchRequest::new(query.clone(), 100).score_threshold(threshold);
        let hits = idx.search(&t, &req).await.ctx("search with threshold")?;
        ensure_eq!(hits.len(), cut + 1, "{distance}: hits scoring at least {threshold}");
        ensure!(hits.iter().all(|h| h.score >= threshold), "{distance}: a hit below the threshold {threshold}");
        check_hits(&format!("{distance} with threshold"), distance, &query, &refs, cut + 1, &hits)?;
        // Threshold and limit together: the limit wins when smaller.
        let req = SearchRequest::new(query.clone(), 3).score_threshold(threshold);
        ensure_eq!(idx.search(&t, &req).await.ctx("search")?.len(), 3, "{distance}: limit 3 with a threshold");
        let above_all = scores[0] + 1.0;
        let req = SearchRequest::new(query, 100).score_threshold(above_all);
        ensure!(idx.search(&t, &req).await.ctx("search")?.is_empty(), "{distance}: hits above the best score");
    }
    Ok(())
}

/// Filters select exactly what the reference [`Filter::matches`] selects,
/// for every operator and combination, in `count` and in `search`, and never
/// include another tenant's chunks with the same ids.
pub async fn filters_match_reference(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let t = tenant("filters");
    let decoy = tenant("decoy");
    let corpus = filter_corpus(5, 4);
    // Another tenant with the same ids and different payloads.
    let decoys: Vec<Chunk> = filter_corpus(6, 4);
    idx.upsert(&t, corpus.clone()).await.ctx("upsert")?;
    idx.upsert(&decoy, decoys).await.ctx("upsert decoys")?;
    let payloads: HashMap<ChunkId, &Chunk> = corpus.iter().map(|c| (c.id, c)).collect();
    let filters = filters();
    let selective =
        filters.iter().filter(|f| (1..corpus.len()).contains(&reference_matches(&t, &corpus, f).len())).count();
    // Only the deliberately empty or total filters may select none or all.
    ensure!(selective + 5 >= filters.len(), "the generated corpus makes only {selective} filters selective");
    for filter in filters {
        let want = reference_matches(&t, &corpus, &filter);
        let count = idx.count(&t, Some(&filter)).await.ctx(format_args!("count {filter:?}"))?;
        ensure_eq!(count, want.len() as u64, "count with {filter:?}");
        let req = SearchRequest::new(vec![0.5, -0.5, 1.0, 0.1], SearchRequest::MAX_LIMIT).filter(filter.clone());
        let hits = idx.search(&t, &req).await.ctx(format_args!("search {filter:?}"))?;
        for h in &hits {
            let own = payloads.get(&h.id).map(|c| &c.payload);
            ensure!(own == Some(&h.payload), "search with {filter:?} returned a payload not of this tenant: {h:?}");
        }
        let got = id_set(hits.iter().map(|h| &h.id));
        ensure!(
            got == want,
            "search with {filter:?}: {} hits, expected {}; extra {:?}, missing {:?}",
            got.len(),
            want.len(),
            got.difference(&want).count(),
            want.difference(&got).count()
        );
    }
    Ok(())
}

/// `limit` caps the hits; a filter applies before the limit (a filtered
/// search still returns `limit` hits when enough chunks match).
pub async fn limit_caps_hits(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Euclid)).await?;
    let t = tenant("limit");
    let corpus = filter_corpus(9, 4);
    idx.upsert(&t, corpus.clone()).await.ctx("upsert")?;
    let q = vec![0.1, 0.2, 0.3, 0.4];
    for limit in [1, 5, 50] {
        let hits = idx.search(&t, &SearchRequest::new(q.clone(), limit)).await.ctx("search")?;
        ensure_eq!(hits.len(), limit, "hits with limit {limit}");
    }
    let filter = Filter::eq(Field::DocumentId, "doc2");
    let matching: Vec<&Chunk> = corpus.iter().filter(|c| c.payload.document_id == "doc2").collect();
    let hits = idx.search(&t, &SearchRequest::new(q.clone(), 5).filter(filter)).await.ctx("search")?;
    check_hits("filtered search with limit 5", Distance::Euclid, &q, &matching, 5, &hits)?;
    Ok(())
}

/// A document's chunks come back in `chunk_index` order (numerically:
/// 2 before 10), whatever order they were written in, and only that
/// document's.
pub async fn document_chunks_are_ordered(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Dot)).await?;
    let t = tenant("docs");
    let mut rng = Rng::new(21);
    let mut chunks: Vec<Chunk> =
        (0..14).map(|i| Chunk::new("report", i, format!("part {i}"), random_vector(&mut rng, 2))).collect();
    rng.shuffle(&mut chunks);
    // Written in three out-of-order batches, next to other documents.
    for part in chunks.chunks(5) {
        idx.upsert(&t, part.to_vec()).await.ctx("upsert")?;
    }
    let others = vec![
        Chunk::new("report-2", 0, "other", vec![1.0, 1.0]),
        Chunk::new("Report", 1, "case differs", vec![1.0, 1.0]),
        Chunk::new("repor", 2, "prefix", vec![1.0, 1.0]),
    ];
    idx.upsert(&t, others).await.ctx("upsert others")?;
    let got = idx.document_chunks(&t, "report").await.ctx("document_chunks")?;
    let indexes: Vec<u32> = got.iter().map(|r| r.payload.chunk_index).collect();
    ensure_eq!(indexes, (0..14).collect::<Vec<u32>>(), "chunk indexes of the document");
    ensure!(got.iter().all(|r| r.payload.document_id == "report"), "another document's chunk: {got:?}");
    ensure!(
        idx.document_chunks(&t, "absent").await.ctx("document_chunks")?.is_empty(),
        "an absent document has chunks"
    );
    Ok(())
}

/// `delete` removes the given ids (absent ones are ignored) and nothing
/// else.
pub async fn delete_by_ids(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Cosine)).await?;
    let t = tenant("del");
    let chunks: Vec<Chunk> = (0..5).map(|i| Chunk::new("d", i, format!("{i}"), vec![1.0, i as f32])).collect();
    idx.upsert(&t, chunks.clone()).await.ctx("upsert")?;
    idx.delete(&t, &[chunks[1].id, ChunkId::random(), chunks[3].id]).await.ctx("delete")?;
    idx.delete(&t, &[chunks[1].id]).await.ctx("delete again")?;
    idx.delete(&t, &[]).await.ctx("delete of no ids")?;
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 3, "count after delete");
    let all: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    let left = idx.get(&t, &all).await.ctx("get")?;
    ensure_eq!(left, [0, 2, 4].iter().map(|&i| record(&chunks[i])).collect::<Vec<_>>(), "chunks left");
    let found = id_set(&all_ids(&idx, &t, None).await?);
    ensure_eq!(found, id_set([&chunks[0].id, &chunks[2].id, &chunks[4].id]), "chunks found by search after delete");
    Ok(())
}

/// `delete_document` removes every chunk of one document and nothing else;
/// an absent document is no error.
pub async fn delete_document_removes_its_chunks(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(2, Distance::Dot)).await?;
    let t = tenant("deldoc");
    let a: Vec<Chunk> = (0..12).map(|i| Chunk::new("a", i, "a", vec![1.0, 0.0])).collect();
    let b: Vec<Chunk> = (0..3).map(|i| Chunk::new("b", i, "b", vec![0.0, 1.0])).collect();
    idx.upsert(&t, a.iter().chain(&b).cloned().collect()).await.ctx("upsert")?;
    idx.delete_document(&t, "a").await.ctx("delete_document")?;
    idx.delete_document(&t, "absent").await.ctx("delete_document of an absent document")?;
    ensure!(idx.document_chunks(&t, "a").await.ctx("document_chunks")?.is_empty(), "document a after deleting it");
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 3, "count after delete_document");
    ensure_eq!(
        idx.document_chunks(&t, "b").await.ctx("document_chunks")?,
        b.iter().map(record).collect::<Vec<_>>(),
        "document b"
    );
    Ok(())
}

/// `delete_by_filter` removes exactly what the reference filter selects,
/// filter after filter, and nothing of another tenant.
pub async fn delete_by_filter_matches_reference(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let t = tenant("delfilter");
    let other = tenant("delfilter-other");
    let corpus = filter_corpus(13, 4);
    idx.upsert(&t, corpus.clone()).await.ctx("upsert")?;
    idx.upsert(&other, corpus.clone()).await.ctx("upsert other tenant")?;
    let mut left: Vec<Chunk> = corpus.clone();
    let steps = [
        Filter::eq(Field::Tags, "a"),
        Filter::all([Filter::eq(Field::DocumentType, "pdf"), Filter::range(Field::ChunkIndex, Some(5), None)]),
        Filter::not(Filter::any_of(extra("lang"), ["en", "de"])),
        Filter::any([Filter::eq(extra("draft"), true), Filter::eq(Field::Source, "s3")]),
    ];
    for filter in steps {
        let doomed = reference_matches(&t, &left, &filter);
        idx.delete_by_filter(&t, &filter).await.ctx(format_args!("delete_by_filter {filter:?}"))?;
        left.retain(|c| !doomed.contains(&c.id));
        let got = id_set(&all_ids(&idx, &t, None).await?);
        let want = id_set(left.iter().map(|c| &c.id));
        ensure!(got == want, "after delete_by_filter {filter:?}: {} chunks left, expected {}", got.len(), want.len());
    }
    ensure!(left.len() < corpus.len() && !left.is_empty(), "the generated corpus did not exercise the deletes");
    ensure_eq!(idx.count(&other, None).await.ctx("count")?, corpus.len() as u64, "the other tenant's chunks");
    idx.delete_by_filter(&t, &Filter::all([])).await.ctx("delete_by_filter all")?;
    ensure_eq!(idx.count(&t, None).await.ctx("count")?, 0, "count after deleting everything");
    ensure_eq!(idx.count(&other, None).await.ctx("count")?, corpus.len() as u64, "the other tenant at the end");
    Ok(())
}

/// `scroll` pages through one tenant's chunks (optionally filtered) so that
/// every chunk comes exactly once, no page is longer than `limit`, another
/// tenant never shows, and bad limits and filters are refused.
pub async fn scroll_visits_each_chunk_once(f: &VectorFixture) -> CheckResult {
    let idx = index(f, spec(4, Distance::Cosine)).await?;
    let (shared, other) = (tenant("shared"), tenant("other"));
    let mut rng = Rng::new(29);
    let owner = |i: u32| if i % 3 == 0 { "u1" } else { "u2" };
    let chunks: Vec<Chunk> = (0..37)
        .map(|i| {
            Chunk::new(format!("doc{}", i % 4), i, format!("c{i}"), random_vector(&mut rng, 4))
                .extra("user_id", owner(i))
        })
        .collect();
    idx.upsert(&shared, chunks.clone()).await.ctx("upsert shared")?;
    let others: Vec<Chunk> = (0..5)
        .map(|i| Chunk::new("doc0", i, format!("o{i}"), random_vector(&mut rng, 4)).extra("user_id", "u1"))
        .collect();
    idx.upsert(&other, others).await.ctx("upsert other")?;
    let u1 = Filter::eq(Field::Extra("user_id".into()), "u1");
    for (filter, limit) in [(None, 5), (None, 37), (None, 1000), (Some(&u1), 4), (Some(&u1), 1)] {
        let mut seen = Vec::new();
        let mut from = None;
        for page_no in 0.. {
            ensure!(page_no <= 40, "scroll(limit {limit}) does not end");
            let page = idx.scroll(&shared, filter, from, limit).await.ctx(format_args!("scroll(limit {limit})"))?;
            ensure!(page.chunks.len() <= limit, "a page of {} chunks for limit {limit}", page.chunks.len());
            seen.extend(page.chunks);
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        let want: Vec<ChunkRecord> =
            chunks.iter().filter(|c| filter.is_none() || c.payload.extra["user_id"] == "u1").map(record).collect();
        ensure_eq!(seen.len(), want.len(), "chunks scrolled with filter {filter:?}, limit {limit}");
        ensure_eq!(id_set(seen.iter().map(|c| &c.id)), id_set(want.iter().map(|c| &c.id)), "ids scrolled");
        let by_id: HashMap<ChunkId, &ChunkRecord> = want.iter().map(|c| (c.id, c)).collect();
        for c in &seen {
            ensure_eq!(Some(&c), by_id.get(&c.id), "a scrolled chunk's payload");
        }
    }
    let empty = idx.scroll(&tenant("empty"), None, None, 10).await.ctx("scroll an empty tenant")?;
    ensure!(empty.chunks.is_empty() && empty.next.is_none(), "an empty tenant's page: {empty:?}");
    for limit in [0, selfrag_core::vector::MAX_SCROLL + 1] {
        expect_invalid(idx.scroll(&shared, None, None, limit).await, "scroll(bad limit)", "limit")?;
    }
    let bad = Filter::eq(Field::Extra("not a key".into()), "x");
    expect_invalid(idx.scroll(&shared, Some(&bad), None, 10).await, "scroll(bad filter)", "filter.field")?;
    Ok(())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __vector_checks {
    ($cb:ident!($($args:tt)*)) => {
        $crate::$cb! { $($args)* [
            upsert_then_get_round_trips,
            get_keeps_input_order,
            upsert_is_idempotent,
            tenant_isolation,
            bad_vectors_write_nothing,
            bad_payloads_write_nothing,
            bad_search_requests_are_rejected,
            bad_filters_are_rejected,
            bad_document_ids_are_rejected,
            scores_match_reference,
            score_threshold_filters_hits,
            score_threshold_is_inclusive,
            filters_match_reference,
            limit_caps_hits,
            document_chunks_are_ordered,
            delete_by_ids,
            delete_document_removes_its_chunks,
            delete_by_filter_matches_reference,
            scroll_visits_each_chunk_once,
        ] }
    };
}
crate::__vector_checks!(__suite_list!(VectorFixture, "vector.rs", __vector_checks,));

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(c: &Chunk, score: f32) -> ScoredChunk {
        ScoredChunk { id: c.id, score, payload: c.payload.clone() }
    }

    /// The corpus of `selfrag-qdrant`'s server test, with the scores a
    /// Qdrant 1.18 server returned for query `[1, 1]` under cosine.
    fn server_case() -> (Vec<Chunk>, Vec<f32>, Vec<ScoredChunk>) {
        let vectors = [[1.0f32, 0.0], [0.0, 2.0], [3.0, 4.0], [-1.0, -1.0]];
        let corpus: Vec<Chunk> = (0u32..).zip(vectors).map(|(i, v)| Chunk::new("d", i, "x", v.to_vec())).collect();
        let query = vec![1.0f32, 1.0];
        let server = [0.707_106_77_f32, 0.707_106_77, 0.989_949_5, -1.0];
        let mut hits: Vec<ScoredChunk> = corpus.iter().zip(server).map(|(c, s)| hit(c, s)).collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        (corpus, query, hits)
    }

    fn keep(hits: &[ScoredChunk], threshold: f32) -> Vec<ScoredChunk> {
        hits.iter().filter(|h| h.score >= threshold).cloned().collect()
    }

    #[test]
    fn next_up_is_the_next_float() {
        for x in [0.0f32, -0.0, 1.0, -1.0, 0.707_106_77, -3.5, 1e-40, -1e-40] {
            let up = next_up(x);
            assert!(up > x, "{x}");
            // Nothing between: the midpoint rounds to one end.
            let mid = (f64::from(x) + f64::from(up)) / 2.0;
            #[allow(clippy::cast_possible_truncation)]
            let m = mid as f32;
            assert!(m == x || m == up, "{x} {up}");
        }
    }

    /// Issue 19: the 2nd and 3rd best tie (both 1/sqrt 2 on the server and
    /// in the reference): a threshold halfway between them is that score,
    /// and the server rightly kept both. The old test expected 2 hits.
    #[test]
    fn a_tie_at_the_threshold_is_kept() {
        let (corpus, query, hits) = server_case();
        let refs: Vec<&Chunk> = corpus.iter().collect();
        let probe = ThresholdProbe::new(Distance::Cosine, &query, &refs, &hits).unwrap();
        let cut = (hits[1].score + hits[2].score) / 2.0;
        assert_eq!(cut, hits[1].score);
        assert_eq!(probe.expected(cut).len(), 3);
        probe.check("cosine", cut, 10, &keep(&hits, cut)).unwrap();
        // Dropping either tied chunk (an exclusive or a stricter threshold)
        // breaks the rule.
        let err = probe.check("cosine", cut, 10, &hits[..2]).unwrap_err();
        assert!(err.contains("hits"), "{err}");
        for t in probe.thresholds() {
            probe.check("cosine", t, 10, &keep(&hits, t)).unwrap();
            probe.check("cosine", t, 1, &keep(&hits, t)[..probe.expected(t).len().min(1)]).unwrap();
        }
    }

    /// Within the tolerance of the threshold the backend's own score
    /// decides, either way; outside it the reference does.
    #[test]
    fn the_reference_decides_only_outside_the_tolerance() {
        let corpus = [Chunk::new("d", 0, "x", vec![1.0, 0.0]), Chunk::new("d", 1, "y", vec![0.0, 1.0])];
        let refs: Vec<&Chunk> = corpus.iter().collect();
        let query = [1.0f32, 0.0];
        // Reference scores 1 and 0; a backend a little off, inside the
        // tolerance, in both directions.
        for (a, b) in [(1.0 - SCORE_TOLERANCE / 2.0, SCORE_TOLERANCE / 2.0), (1.0, -SCORE_TOLERANCE / 2.0)] {
            let hits = vec![hit(&corpus[0], a), hit(&corpus[1], b)];
            let probe = ThresholdProbe::new(Distance::Dot, &query, &refs, &hits).unwrap();
            for t in probe.thresholds().into_iter().chain([1.0, 0.0, 0.5]) {
                probe.check("dot", t, 10, &keep(&hits, t)).unwrap();
            }
        }
        // A backend whose scores are off by more than the tolerance is
        // caught by the reference half even when it follows its own scores.
        let hits = vec![hit(&corpus[0], 1.0), hit(&corpus[1], 0.1)];
        let probe = ThresholdProbe::new(Distance::Dot, &query, &refs, &hits).unwrap();
        let err = probe.check("dot", 0.05, 10, &keep(&hits, 0.05)).unwrap_err();
        assert!(err.contains("reference score 0"), "{err}");
    }

    /// A hit an ulp below the threshold (as the backend scored it) is a
    /// failure, and so is a hit whose returned score reaches the threshold
    /// while the backend scored it below without one (a threshold applied
    /// to another score than the one returned).
    #[test]
    fn hits_below_the_threshold_are_caught() {
        let (corpus, query, hits) = server_case();
        let refs: Vec<&Chunk> = corpus.iter().collect();
        let probe = ThresholdProbe::new(Distance::Cosine, &query, &refs, &hits).unwrap();
        let above = next_up(hits[0].score);
        let err = probe.check("cosine", above, 10, &hits[..1]).unwrap_err();
        assert!(err.contains("below the threshold"), "{err}");
        let mut lifted = hits[..1].to_vec();
        lifted[0].score = above;
        let err = probe.check("cosine", above, 10, &lifted).unwrap_err();
        assert!(err.contains("without a threshold"), "{err}");
        // Leaving out a chunk that scores at the threshold, or keeping a
        // worse one than a dropped one under a limit.
        let t = hits[1].score;
        assert!(probe.check("cosine", t, 10, &[hits[0].clone(), hits[2].clone()]).is_err());
        assert!(probe.check("cosine", hits[3].score, 2, &[hits[0].clone(), hits[3].clone()]).is_err());
    }

    #[test]
    fn the_probe_needs_the_whole_corpus() {
        let (corpus, query, hits) = server_case();
        let refs: Vec<&Chunk> = corpus.iter().collect();
        assert!(ThresholdProbe::new(Distance::Cosine, &query, &refs, &hits[..3]).is_err());
        let twice = [hits.clone(), hits[..1].to_vec()].concat();
        assert!(ThresholdProbe::new(Distance::Cosine, &query, &refs, &twice).is_err());
        assert!(ThresholdProbe::new(Distance::Cosine, &query, &refs[..3], &hits).is_err());
    }
}
