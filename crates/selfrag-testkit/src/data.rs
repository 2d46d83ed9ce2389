//! Deterministic vectors for benchmarks and recall measurements (used by
//! `selfrag-bench` and `selfrag-edge/examples/edge_bench.rs`). Uniform random
//! vectors of high dimension have no meaningful neighbours and defeat every
//! graph index, so there are two structured data sets:
//!
//! - [`Corpus`]: topics, documents and chunks on a low-dimensional latent
//!   space, with metadata per document: shaped like a RAG service's chunks;
//! - [`Clustered`]: 1,000 centroids with components ~ N(0, 1), each point a
//!   centroid plus N(0, 0.5²) noise per component: isolated islands whose
//!   members are all about equally far from a query, a stress case for
//!   filtered graph search.
//!
//! Payload: `document_type` one of pdf/markdown/html, one tag of a/b/c/d; the
//! filtered query [`filter`] is `document_type == pdf AND tags any_of [a, b]`
//! (1/6 of the points).

use selfrag_core::{Chunk, Field, Filter};

/// A seeded generator: splitmix64, with Box-Muller for normals.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        u
    }

    /// A standard normal sample.
    pub fn gauss(&mut self) -> f32 {
        let (u1, u2) = (self.unit(), self.unit());
        #[allow(clippy::cast_possible_truncation)]
        let g = ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
        g
    }

    /// A uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).unwrap_or(0)
    }
}

/// Number of clusters.
pub const CLUSTERS: usize = 1_000;
/// Standard deviation of the noise around a centroid, per component.
pub const NOISE: f32 = 0.5;
const TYPES: [&str; 3] = ["pdf", "markdown", "html"];
const TAGS: [&str; 4] = ["a", "b", "c", "d"];

/// The clustered data set.
#[derive(Debug)]
pub struct Clustered {
    rng: Rng,
    centroids: Vec<Vec<f32>>,
}

impl Clustered {
    /// The data set of dimension `dim` drawn from `seed`.
    pub fn new(dim: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let centroids = (0..CLUSTERS).map(|_| (0..dim).map(|_| rng.gauss()).collect()).collect();
        Self { rng, centroids }
    }

    /// A fresh point (also used as a query: it is not in the index).
    pub fn vector(&mut self) -> Vec<f32> {
        let c = &self.centroids[self.rng.below(CLUSTERS)];
        c.iter().map(|x| x + NOISE * self.rng.gauss()).collect::<Vec<f32>>()
    }

    /// Chunk `i` and whether it matches [`filter`].
    pub fn chunk(&mut self, i: usize) -> (Chunk, bool) {
        let vector = self.vector();
        let ty = TYPES[self.rng.below(TYPES.len())];
        let tag = TAGS[self.rng.below(TAGS.len())];
        let chunk = Chunk::new(format!("doc-{}", i / 20), u32::try_from(i % 20).unwrap_or(0), "bench chunk", vector)
            .document_type(ty)
            .tags([tag]);
        (chunk, ty == "pdf" && (tag == "a" || tag == "b"))
    }
}

/// `document_type == pdf AND tags any_of [a, b]`.
pub fn filter() -> Filter {
    Filter::all([Filter::eq(Field::DocumentType, "pdf"), Filter::any_of(Field::Tags, ["a", "b"])])
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Topics of a [`Corpus`].
pub const CORPUS_TOPICS: usize = 100;
/// Chunks per document of a [`Corpus`].
pub const CORPUS_CHUNKS_PER_DOCUMENT: usize = 20;
/// Dimension of a [`Corpus`]'s latent space.
pub const CORPUS_LATENT_DIM: usize = 32;
const CORPUS_DOC_SPREAD: f32 = 0.5;
const CORPUS_CHUNK_SPREAD: f32 = 0.25;
const CORPUS_AMBIENT_NOISE: f32 = 0.5;

struct Document {
    latent: Vec<f32>,
    ty: &'static str,
    tag: &'static str,
}

/// A document corpus shaped like a RAG service's chunks: topics, documents
/// within topics, chunks within documents, on a low-dimensional latent space
/// embedded in the vector space.
///
/// - [`CORPUS_TOPICS`] topic centres in a [`CORPUS_LATENT_DIM`]-dimensional
///   latent space, components ~ N(0, 1);
/// - document `d` (chunks `20d .. 20d + 19`) = a random topic's centre +
///   N(0, 0.5²) per latent component; its `document_type` (pdf / markdown /
///   html) and its one tag (a / b / c / d) are drawn per document, as a
///   document's metadata would be;
/// - a chunk = its document + N(0, 0.25²) per latent component;
/// - the vector = a fixed random linear map (entries ~ N(0, 1)) of the latent
///   point, plus N(0, 0.5²) per component of the vector space.
///
/// Unlike [`Clustered`] (isolated islands of isotropic noise, where every
/// point of a cluster is about as far from a query as every other, so the
/// true top 10 inside a cluster is decided by noise), neighbours here are
/// meaningful at every scale: chunks of one document, documents of one topic.
/// Real text embeddings likewise vary along far fewer directions than their
/// dimension. The filtered query [`filter`] matches 1/6 of the documents.
/// Queries ([`Corpus::query`]) are fresh chunks of random existing documents:
/// a question about something in the corpus.
pub struct Corpus {
    rng: Rng,
    dim: usize,
    topics: Vec<Vec<f32>>,
    /// `dim` rows of `CORPUS_LATENT_DIM` columns.
    map: Vec<f32>,
    documents: Vec<Document>,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corpus").field("dim", &self.dim).field("documents", &self.documents.len()).finish()
    }
}

impl Corpus {
    /// The corpus of dimension `dim` drawn from `seed`.
    pub fn new(dim: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let topics = (0..CORPUS_TOPICS).map(|_| (0..CORPUS_LATENT_DIM).map(|_| rng.gauss()).collect()).collect();
        let map = (0..dim * CORPUS_LATENT_DIM).map(|_| rng.gauss()).collect();
        Self { rng, dim, topics, map, documents: Vec::new() }
    }

    fn document(&mut self, d: usize) -> &Document {
        while self.documents.len() <= d {
            let topic = self.rng.below(CORPUS_TOPICS);
            let latent =
                (0..CORPUS_LATENT_DIM).map(|j| self.topics[topic][j] + CORPUS_DOC_SPREAD * self.rng.gauss()).collect();
            let ty = TYPES[self.rng.below(TYPES.len())];
            let tag = TAGS[self.rng.below(TAGS.len())];
            self.documents.push(Document { latent, ty, tag });
        }
        &self.documents[d]
    }

    /// A fresh chunk vector of document `d`.
    fn chunk_vector(&mut self, d: usize) -> Vec<f32> {
        let base = self.document(d).latent.clone();
        let latent: Vec<f32> = base.iter().map(|x| x + CORPUS_CHUNK_SPREAD * self.rng.gauss()).collect();
        (0..self.dim)
            .map(|row| {
                let m = &self.map[row * CORPUS_LATENT_DIM..(row + 1) * CORPUS_LATENT_DIM];
                let y: f32 = m.iter().zip(&latent).map(|(a, z)| a * z).sum();
                y + CORPUS_AMBIENT_NOISE * self.rng.gauss()
            })
            .collect()
    }

    /// Chunk `i` (document `i / 20`, chunk index `i % 20`) and whether it
    /// matches [`filter`].
    pub fn chunk(&mut self, i: usize) -> (Chunk, bool) {
        let d = i / CORPUS_CHUNKS_PER_DOCUMENT;
        let vector = self.chunk_vector(d);
        let doc = self.document(d);
        let (ty, tag) = (doc.ty, doc.tag);
        let index = u32::try_from(i % CORPUS_CHUNKS_PER_DOCUMENT).unwrap_or(0);
        let chunk = Chunk::new(format!("doc-{d}"), index, "bench chunk", vector).document_type(ty).tags([tag]);
        (chunk, ty == "pdf" && (tag == "a" || tag == "b"))
    }

    /// A query: a fresh chunk of a random document among those generated
    /// so far (of a new document when there are none yet).
    pub fn query(&mut self) -> Vec<f32> {
        let d = if self.documents.is_empty() { 0 } else { self.rng.below(self.documents.len()) };
        self.chunk_vector(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        normalize(&mut a);
        normalize(&mut b);
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn corpus_is_deterministic_and_document_shaped() {
        let (mut one, mut two) = (Corpus::new(64, 7), Corpus::new(64, 7));
        let chunks: Vec<(Chunk, bool)> = (0..2_000).map(|i| one.chunk(i)).collect();
        for (i, (c, m)) in chunks.iter().enumerate() {
            let (again, m2) = two.chunk(i);
            assert_eq!((c.id, &c.vector, m), (again.id, &again.vector, &m2));
            let d = i / CORPUS_CHUNKS_PER_DOCUMENT;
            assert_eq!(c.payload.document_id, format!("doc-{d}"));
            // Metadata is per document: every chunk of a document carries
            // its first chunk's type and tag.
            let first = &chunks[d * CORPUS_CHUNKS_PER_DOCUMENT].0.payload;
            assert_eq!((&c.payload.document_type, &c.payload.tags), (&first.document_type, &first.tags));
            let want = c.payload.document_type == "pdf" && (c.payload.tags == ["a"] || c.payload.tags == ["b"]);
            assert_eq!(*m, want);
        }
        let matching = chunks.iter().filter(|(_, m)| *m).count();
        assert!((150..=550).contains(&matching), "{matching} of 2,000 match the filter (expected about 1/6)");

        // Neighbours mean something: a chunk is closer to the other chunks
        // of its document than to the chunks of the rest of the corpus, on
        // average.
        let (mut same, mut other, mut ns, mut no) = (0f32, 0f32, 0f32, 0f32);
        for (i, (a, _)) in chunks.iter().enumerate().step_by(37) {
            for (j, (b, _)) in chunks.iter().enumerate() {
                if i == j {
                    continue;
                }
                let s = cosine(&a.vector, &b.vector);
                if i / CORPUS_CHUNKS_PER_DOCUMENT == j / CORPUS_CHUNKS_PER_DOCUMENT {
                    (same, ns) = (same + s, ns + 1.0);
                } else {
                    (other, no) = (other + s, no + 1.0);
                }
            }
        }
        let (same, other) = (same / ns, other / no);
        assert!(same > other + 0.3, "same document {same:.3}, other documents {other:.3}");
    }

    #[test]
    fn corpus_queries_come_from_existing_documents() {
        let mut corpus = Corpus::new(32, 9);
        let chunks: Vec<Chunk> = (0..100).map(|i| corpus.chunk(i).0).collect();
        assert_eq!(corpus.documents.len(), 5);
        for _ in 0..50 {
            let q = corpus.query();
            assert_eq!(corpus.documents.len(), 5, "a query made up a new document");
            // A query is a chunk of one of the five documents: the chunks
            // nearest to it are all of one document.
            let mut by_score: Vec<(f32, &Chunk)> = chunks.iter().map(|c| (cosine(&q, &c.vector), c)).collect();
            by_score.sort_by(|a, b| b.0.total_cmp(&a.0));
            let doc = &by_score[0].1.payload.document_id;
            assert!(by_score[..5].iter().all(|(_, c)| &c.payload.document_id == doc));
        }
    }
}
