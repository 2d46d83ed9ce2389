//! Settings of an [`EdgeIndex`](crate::EdgeIndex).

use std::time::Duration;

use selfrag_core::{Error, Result};

/// How a write call is made durable before it returns.
///
/// The engine (qdrant-edge 0.7.2) keeps updates in memory-mapped segment
/// files and makes them durable only on a flush, and it does **not** replay
/// its own WAL on reopen. The two journal settings therefore append every
/// upsert / delete call to this crate's own journal (`selfrag-journal` in the
/// index directory, see `docs/edge.md`) before the call returns, flush the
/// engine in the background every
/// [`EdgeIndexConfig::engine_flush_interval`], and replay the journal on
/// open. The other settings do without the journal.
///
/// "Acknowledged" means the write call returned `Ok`:
///
/// | setting | process crash (panic, `kill -9`, OOM) loses | power loss / kernel crash loses | cost per call |
/// | --- | --- | --- | --- |
/// | [`Durability::Journal`] (default) | nothing acknowledged | nothing acknowledged | one `fdatasync`, shared by concurrent calls (group commit) |
/// | [`Durability::JournalNoSync`] | nothing acknowledged | at most the last `engine_flush_interval` | one `write` into the page cache |
/// | [`Durability::FlushEveryWrite`] | nothing acknowledged | nothing acknowledged | an engine flush (≈1 s at 100,000 points) |
/// | [`Durability::Periodic`]`(d)` | at most the last `d` | at most the last `d` | none |
/// | [`Durability::OnClose`] | everything since the last flush | the same | none |
///
/// The page cache belongs to the kernel, so a record written there survives
/// the death of the process; only `fsync` protects it from a power loss.
/// Measured costs are in `docs/edge.md`. A clean
/// [`EdgeIndex::close`](crate::EdgeIndex::close) or drop flushes under every
/// setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Journal every call and `fdatasync` the journal before it returns;
    /// concurrent calls share one `fdatasync`. Loses nothing acknowledged,
    /// even on power loss (on hardware that honours `fsync`).
    Journal,
    /// Journal every call into the page cache before it returns, without
    /// `fdatasync`: nothing acknowledged is lost when the process dies; a
    /// power loss loses what was written since the last engine flush (at
    /// most [`EdgeIndexConfig::engine_flush_interval`] ago).
    JournalNoSync,
    /// Flush the engine before every write call returns (no journal). Far
    /// slower than [`Durability::Journal`] (a flush rewrites the changed
    /// parts of every segment, about a second on 100,000 points), and not
    /// quite as safe: while an optimization runs, the engine keeps
    /// deletions of the points it rebuilds in memory, which a flush does
    /// not write, so a crash during an optimization brings those points
    /// back. The index flushes as soon as the optimization ends.
    FlushEveryWrite,
    /// Flush the engine on a background thread every period, when something
    /// was written since the last flush (no journal): a crash loses the
    /// writes of the last period, and deletions made during a running
    /// optimization (see [`Durability::FlushEveryWrite`]). The period must
    /// be above zero.
    Periodic(Duration),
    /// Flush only when the index is closed or dropped, or when
    /// [`EdgeIndex::flush`](crate::EdgeIndex::flush) is called (no journal).
    /// Fastest; for data that can be rebuilt (caches, tests, bulk loads
    /// followed by an explicit flush).
    OnClose,
}

impl Durability {
    /// Whether write calls go through the journal.
    pub fn journaled(self) -> bool {
        matches!(self, Durability::Journal | Durability::JournalNoSync)
    }
}

/// Settings of an [`EdgeIndex`](crate::EdgeIndex).
///
/// The defaults suit a service: every write journaled and fsynced before it
/// returns, an engine flush per second in the background, an HNSW build in the
/// background after every 10,000 written points, the engine's search and
/// indexing defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EdgeIndexConfig {
    /// When writes reach stable storage. Default: [`Durability::Journal`].
    pub durability: Durability,
    /// Under the journal settings, how often the engine is flushed in the
    /// background (when something was written), after which the journal is
    /// emptied. Longer intervals mean fewer flushes (each holds writes for
    /// its duration: up to about a second at 100,000 points) and a longer
    /// journal to replay after a crash. Above zero. Default: 1 s.
    pub engine_flush_interval: Duration,
    /// Start a background optimization (HNSW build, segment merge, vacuum)
    /// once this many points were upserted or deleted since the last one
    /// started; also at open when at least this many points are not in an
    /// HNSW graph yet. `None` disables automatic optimization (call
    /// [`EdgeIndex::optimize_now`](crate::EdgeIndex::optimize_now) yourself).
    /// At least 1. Default: `Some(10_000)`.
    pub optimize_after_points: Option<u64>,
    /// The HNSW `ef` used by searches (candidates examined; higher is more
    /// exact and slower). `None` keeps the engine default: the graph's
    /// `ef_construct` (100 unless [`hnsw_ef_construct`](Self::hnsw_ef_construct)
    /// says otherwise). Default: `None`. With ACORN, filtered searches need
    /// less: `Some(32)` kept filtered recall@10 at 0.999 or better on both
    /// data sets of `selfrag-bench` at several times the default's speed
    /// (see `docs/edge.md`, "Tuning").
    pub search_ef: Option<usize>,
    /// Whether filtered searches may use ACORN (the engine explores
    /// neighbours of neighbours when the filter matches at most
    /// [`acorn_max_selectivity`](Self::acorn_max_selectivity) of the
    /// points): better recall for selective filters on clustered data, at
    /// some cost in latency. Default: `true`.
    pub acorn: bool,
    /// Segments smaller than this many kilobytes of vectors are searched by
    /// a full scan and never get an HNSW graph. `None` keeps the engine
    /// default (10,000 KB: about 6,500 vectors of dimension 384). Lower it
    /// only for tests of the indexed path; `Some(0)` never builds a graph.
    /// Default: `None`.
    pub indexing_threshold_kb: Option<usize>,
    /// Filters that match at most this fraction of the points are searched
    /// with ACORN (when [`acorn`](Self::acorn) is on); broader filters walk
    /// the plain graph, which their matching points keep well connected.
    /// `None` keeps the engine default (0.4). Must be within 0..=1; has no
    /// effect when `acorn` is off. Default: `None`.
    pub acorn_max_selectivity: Option<f64>,
    /// HNSW links per point (`m`): more links give better recall at a given
    /// `ef` and cost memory and build time. `None` keeps the engine default
    /// (16). Within 4..=128. Default: `None`.
    ///
    /// This and [`hnsw_ef_construct`](Self::hnsw_ef_construct) shape the
    /// graph when it is built: changed on an existing index, they apply from
    /// its next optimization, which rebuilds the graph.
    pub hnsw_m: Option<usize>,
    /// Candidates examined per point while the graph is built
    /// (`ef_construct`): higher gives a better graph and a slower build.
    /// `None` keeps the engine default (100). Within 4..=1000. Default:
    /// `None`.
    pub hnsw_ef_construct: Option<usize>,
    /// A compressed copy of the vectors that searches score candidates on.
    /// Default: [`Quantization::None`].
    pub quantization: Quantization,
}

/// A compressed copy of the vectors, kept in RAM, that searches score
/// candidates on before the best are rescored with the full vectors.
///
/// Built with the graph: set on an existing index, it applies from the next
/// optimization.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Quantization {
    /// Full-precision vectors only.
    #[default]
    None,
    /// One byte per dimension (scalar `int8` quantization): a quarter of the
    /// memory traffic per scored candidate. Searches rescore their best
    /// `oversampling × limit` candidates with the full vectors, so scores
    /// are exact and recall loses little.
    Int8 {
        /// How many candidates per requested hit are rescored: within
        /// 1..=100 (1 rescores only the hits themselves).
        oversampling: f64,
    },
}

impl Default for EdgeIndexConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Journal,
            engine_flush_interval: Duration::from_secs(1),
            optimize_after_points: Some(10_000),
            search_ef: None,
            acorn: true,
            indexing_threshold_kb: None,
            acorn_max_selectivity: None,
            hnsw_m: None,
            hnsw_ef_construct: None,
            quantization: Quantization::None,
        }
    }
}

impl EdgeIndexConfig {
    /// Checks every setting's range; [`EdgeIndex::open`](crate::EdgeIndex::open)
    /// calls it before touching the directory.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        if let Durability::Periodic(d) = self.durability {
            if d.is_zero() {
                return Err(Error::invalid("durability", "a periodic flush needs a period above zero"));
            }
        }
        if self.engine_flush_interval.is_zero() {
            return Err(Error::invalid("engine_flush_interval", "must be above zero"));
        }
        if self.optimize_after_points == Some(0) {
            return Err(Error::invalid("optimize_after_points", "must be at least 1 (None disables it)"));
        }
        if self.search_ef == Some(0) {
            return Err(Error::invalid("search_ef", "must be at least 1"));
        }
        if let Some(f) = self.acorn_max_selectivity {
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::invalid("acorn_max_selectivity", format!("{f} is not a fraction within 0..=1")));
            }
        }
        if let Some(m) = self.hnsw_m {
            if !(4..=128).contains(&m) {
                return Err(Error::invalid("hnsw_m", format!("{m} is not within 4..=128")));
            }
        }
        if let Some(ef) = self.hnsw_ef_construct {
            if !(4..=1000).contains(&ef) {
                return Err(Error::invalid("hnsw_ef_construct", format!("{ef} is not within 4..=1000")));
            }
        }
        if let Quantization::Int8 { oversampling } = self.quantization {
            if !(1.0..=100.0).contains(&oversampling) {
                return Err(Error::invalid(
                    "quantization.oversampling",
                    format!("{oversampling} is not within 1..=100"),
                ));
            }
        }
        Ok(())
    }

    /// Sets [`EdgeIndexConfig::durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`EdgeIndexConfig::engine_flush_interval`].
    pub fn engine_flush_interval(mut self, interval: Duration) -> Self {
        self.engine_flush_interval = interval;
        self
    }

    /// Sets [`EdgeIndexConfig::optimize_after_points`] (`None` disables
    /// background optimization).
    pub fn optimize_after_points(mut self, points: Option<u64>) -> Self {
        self.optimize_after_points = points;
        self
    }

    /// Sets [`EdgeIndexConfig::search_ef`].
    pub fn search_ef(mut self, ef: Option<usize>) -> Self {
        self.search_ef = ef;
        self
    }

    /// Sets [`EdgeIndexConfig::acorn`].
    pub fn acorn(mut self, acorn: bool) -> Self {
        self.acorn = acorn;
        self
    }

    /// Sets [`EdgeIndexConfig::indexing_threshold_kb`].
    pub fn indexing_threshold_kb(mut self, kb: Option<usize>) -> Self {
        self.indexing_threshold_kb = kb;
        self
    }

    /// Sets [`EdgeIndexConfig::acorn_max_selectivity`].
    pub fn acorn_max_selectivity(mut self, fraction: Option<f64>) -> Self {
        self.acorn_max_selectivity = fraction;
        self
    }

    /// Sets [`EdgeIndexConfig::hnsw_m`].
    pub fn hnsw_m(mut self, m: Option<usize>) -> Self {
        self.hnsw_m = m;
        self
    }

    /// Sets [`EdgeIndexConfig::hnsw_ef_construct`].
    pub fn hnsw_ef_construct(mut self, ef: Option<usize>) -> Self {
        self.hnsw_ef_construct = ef;
        self
    }

    /// Sets [`EdgeIndexConfig::quantization`].
    pub fn quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }
}
