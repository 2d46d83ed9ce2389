//! Deterministic clustered vectors for benchmarks and recall measurements
//! (used by `selfrag-bench` and `selfrag-edge/examples/edge_bench.rs`).
//! Uniform random vectors of high dimension have no meaningful neighbours
//! and defeat every graph index, so these are clustered: 1,000 centroids with components
//! ~ N(0, 1); each point is a centroid plus N(0, 0.5²) noise per component.
//! Payload: `document_type` one of pdf/markdown/html, one tag of a/b/c/d; the
//! filtered query is `document_type == pdf AND tags any_of [a, b]` (1/6 of
//! the points). Queries are fresh points drawn the same way.

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
