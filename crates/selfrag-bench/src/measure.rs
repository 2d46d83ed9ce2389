//! The measuring harness: runs an operation at a fixed concurrency and
//! alternates the adapter with its raw baseline in rounds, so drift (a CI job
//! next door, autovacuum, page cache) hits both sides alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{json, Value};

/// Any error; the benchmark only reports it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`BoxError`].
pub(crate) type Res<T> = Result<T, BoxError>;
/// One operation; the argument is the operation's sequence number (used to
/// pick users, sessions, queries).
pub(crate) type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, Res<()>> + Send + Sync>;

/// Wraps a closure returning a future as an [`Op`].
pub(crate) fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<()>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// Throughput and latency of one side of a row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) ops: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Stats {
    fn from(ops: u64, wall: Duration, mut lat: Vec<Duration>) -> Self {
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i].as_secs_f64() * 1e3
        };
        #[allow(clippy::cast_precision_loss)]
        let ops_per_s = ops as f64 / wall.as_secs_f64().max(1e-9);
        Self { ops, ops_per_s, p50_ms: pct(0.50), p99_ms: pct(0.99) }
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "ops": self.ops, "ops_per_s": round(self.ops_per_s, 1), "p50_ms": round(self.p50_ms, 3),
                "p99_ms": round(self.p99_ms, 3) })
    }
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Both sides of a row, and ours / raw in each round.
#[derive(Debug, Clone)]
pub(crate) struct Comparison {
    pub(crate) ours: Stats,
    pub(crate) raw: Stats,
    /// Ours / raw throughput of each round (the two sides ran back to back).
    pub(crate) round_ratios: Vec<f64>,
}

impl Comparison {
    /// The median of the per-round ratios: each round pairs the two sides
    /// seconds apart, so a burst of load from elsewhere (a compile, autovacuum,
    /// the kernel) that hits one round moves that round's ratio only.
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.round_ratios).unwrap_or_else(|| self.total_ratio())
    }

    /// Ours / raw over all rounds together.
    pub(crate) fn total_ratio(&self) -> f64 {
        self.ours.ops_per_s / self.raw.ops_per_s.max(1e-9)
    }
}

fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// One line of the report.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) operation: String,
    pub(crate) concurrency: usize,
    pub(crate) ours: Stats,
    pub(crate) raw: Stats,
    pub(crate) round_ratios: Vec<f64>,
    /// Extra figures (recall, build time) for the JSON and the notes.
    pub(crate) extra: serde_json::Map<String, Value>,
}

impl Row {
    pub(crate) fn new(operation: &str, concurrency: usize, c: Comparison) -> Self {
        Self {
            operation: operation.to_owned(),
            concurrency,
            ours: c.ours,
            raw: c.raw,
            round_ratios: c.round_ratios,
            extra: serde_json::Map::new(),
        }
    }

    fn comparison(&self) -> Comparison {
        Comparison { ours: self.ours, raw: self.raw, round_ratios: self.round_ratios.clone() }
    }

    /// The reported ratio: see [`Comparison::ratio`].
    pub(crate) fn ratio(&self) -> f64 {
        self.comparison().ratio()
    }

    pub(crate) fn json(&self) -> Value {
        let c = self.comparison();
        let mut v = json!({
            "operation": self.operation, "concurrency": self.concurrency,
            "ours": self.ours.json(), "raw": self.raw.json(), "ratio": round(c.ratio(), 3),
            "ratio_of_totals": round(c.total_ratio(), 3),
            "round_ratios": self.round_ratios.iter().map(|r| round(*r, 3)).collect::<Vec<_>>(),
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.extra.clone());
        }
        v
    }
}

/// Most operations of the warm pass: enough to touch every key the rows
/// cycle over (1,000 users or sessions, 1,000 queries) at least once.
const WARM_CAP: u64 = 2_000;

/// Runs `count` operations (numbered from `first`) on `concurrency` tasks;
/// returns the wall time and every operation's latency.
pub(crate) async fn phase(op: &Op, concurrency: usize, first: u64, count: u64) -> Res<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, BoxError>(lat);
                }
                let t = Instant::now();
                op(first + i).await?;
                lat.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok((start.elapsed(), all))
}

/// Measures `ours` against `raw`: a warm-up of both (statement caches,
/// connections) that also calibrates the operation count, an unmeasured
/// pass of each over the measured operations (warm data, see [`WARM_CAP`]),
/// then `rounds` rounds, the order alternating (ours, raw, raw, ours, ...)
/// so neither side always runs second. The ratio reported is the median of
/// the rounds' ratios (see [`Comparison::ratio`]); the totals give ops/s and
/// latencies. Each side runs at least `min_ops` operations and, when faster,
/// about `target` of wall time in total (so fast rows are not measured over a
/// few milliseconds).
pub(crate) async fn compare(
    ours: &Op,
    raw: &Op,
    concurrency: usize,
    min_ops: u64,
    rounds: u64,
    target: Duration,
) -> Res<Comparison> {
    let warm = (concurrency as u64).max(16);
    let warm_first = 1 << 40;
    phase(ours, concurrency, warm_first, warm).await?;
    let (wall, _) = phase(raw, concurrency, warm_first, warm).await?;
    // Calibrate on the raw side's warm-up rate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let by_time = (warm as f64 / wall.as_secs_f64().max(1e-9) * target.as_secs_f64()) as u64;
    let ops = min_ops.max(by_time).max(concurrency as u64 * rounds);
    let per = (ops / rounds).max(1);
    // One unmeasured pass per side over the operations the rounds will run
    // (up to WARM_CAP of them): the data they read (index pages, buffers) is
    // warm before the first measured round. Without it the side that runs
    // first in a round pays for the cold reads and the other side profits.
    let warm_ops = (per * rounds).min(WARM_CAP.max(per));
    for side in [ours, raw] {
        phase(side, concurrency, 0, warm_ops).await?;
    }
    let mut acc = [(Duration::ZERO, Vec::new()), (Duration::ZERO, Vec::new())];
    let mut round_ratios = Vec::new();
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut walls = [Duration::ZERO; 2];
        for side in order {
            let op = if side == 0 { ours } else { raw };
            let (wall, lat) = phase(op, concurrency, r * per, per).await?;
            walls[side] = wall;
            acc[side].0 += wall;
            acc[side].1.extend(lat);
        }
        // Same operation count on both sides: the throughput ratio is the
        // inverse ratio of the wall times.
        round_ratios.push(walls[1].as_secs_f64() / walls[0].as_secs_f64().max(1e-9));
    }
    let [(ow, ol), (rw, rl)] = acc;
    Ok(Comparison { ours: Stats::from(per * rounds, ow, ol), raw: Stats::from(per * rounds, rw, rl), round_ratios })
}
