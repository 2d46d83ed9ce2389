//! The quickstart flow with vectors in the embedded engine (`EdgeIndex`),
//! persisted in a directory: run it twice and the second run finds the
//! first run's chunks.
//!
//! ```text
//! cargo run --example embedded --features edge              # ./selfrag-data
//! cargo run --example embedded --features edge -- /tmp/demo # or a directory of your choice
//! SELFRAG_EDGE_PATH=/tmp/demo cargo run --example embedded --features edge
//! ```
//!
//! Users, memory logs, sessions and rate limits stay in process
//! (`selfrag::local`) to keep the example self-contained; only the vectors
//! (and the demo user's id, so that its chunks can be found again) persist.

use std::path::PathBuf;
use std::time::Duration;

use selfrag::edge::{Durability, EdgeIndex, EdgeIndexConfig};
use selfrag::local::{LocalRateLimiter, LocalStore};
use selfrag::{
    Chunk, Distance, Field, Filter, IndexSpec, MemoryQuery, MemoryStore, NewMemoryLog, NewSession, RateLimitKey,
    RateLimitPolicy, RateLimiter, SearchRequest, SessionStore, Tenant, UserId, UserStore, VectorIndex,
};

/// Dimension of the toy embedding below.
const DIM: usize = 64;

/// A toy embedding so that the example needs no model: each word adds to
/// a few hashed dimensions. Similar word sets give similar vectors.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.to_lowercase().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        for k in 0..3u64 {
            let i = usize::try_from((h >> (k * 16)) % DIM as u64).unwrap_or(0);
            v[i] += 1.0;
        }
    }
    v[0] += 0.01; // never all zeros, which cosine rejects
    v
}

#[tokio::main]
async fn main() {
    // Errors are printed with Display (and their causes), not with the
    // Debug output `main` returning an error would print.
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        let mut source = std::error::Error::source(&*e);
        while let Some(cause) = source {
            eprintln!("  caused by: {cause}");
            source = cause.source();
        }
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SELFRAG_EDGE_PATH").ok())
        .unwrap_or_else(|| "./selfrag-data".into())
        .into();
    std::fs::create_dir_all(&dir)
        .map_err(|e| selfrag::Error::backend("example", "create the data directory", false, e))?;
    println!("data directory: {}", dir.display());

    // The demo user: its id is kept next to the index so that a second run
    // is the same user (the same vector tenant).
    let users = LocalStore::new();
    let id_file = dir.join("demo-user-id");
    let user = match std::fs::read_to_string(&id_file) {
        Ok(s) => {
            let id = UserId::parse(s.trim())?;
            users.ensure_user(id).await?;
            println!("returning user {id}");
            id
        }
        Err(_) => {
            let id = users.create_user().await?;
            std::fs::write(&id_file, id.to_string())
                .map_err(|e| selfrag::Error::backend("example", "save the user id", false, e))?;
            println!("new user {id}");
            id
        }
    };

    // Memory logs (in process).
    users.append(user, NewMemoryLog::new("conversation", "asked how to rotate API keys")?).await?;
    users.append(user, NewMemoryLog::new("feedback", "liked the short answer")?).await?;
    let page = users.query(user, &MemoryQuery::new().limit(10)).await?;
    println!("{} memory logs this run, newest: {:?}", page.logs.len(), page.logs[0].content);

    // A session and a rate limit (in process).
    let session = users.create(user, NewSession::new(Duration::from_secs(1800))?).await?;
    println!("session {} expires at {}", session.id, session.expires_at);
    let limiter = LocalRateLimiter::new(RateLimitPolicy::minute_hour_day(20, 200, 1000)?);
    let decision = limiter.check(&RateLimitKey::new(user, "search")?, 1).await?;
    println!("rate limit: allowed={} remaining={}", decision.allowed, decision.remaining());

    // Vectors, persisted in the directory.
    let config = EdgeIndexConfig::default().durability(Durability::FlushEveryWrite);
    let index = EdgeIndex::open(dir.join("vectors"), IndexSpec::new(DIM, Distance::Cosine)?, config).await?;
    let tenant = Tenant::from(user);
    let before = index.count(&tenant, None).await?;
    let texts = [
        "Rotate API keys every ninety days and revoke old keys at once.",
        "Store API keys in a secret manager, never in the repository.",
        "Release notes: the search endpoint now accepts filters.",
    ];
    // One document per run, so that runs add up.
    let run = before / texts.len() as u64 + 1;
    if before > 0 {
        println!("found {before} chunks from {} earlier run(s):", run - 1);
        for r in 1..run {
            let chunks = index.document_chunks(&tenant, &format!("run-{r}")).await?;
            println!("  run-{r}: {} chunks, first: {:?}", chunks.len(), chunks.first().map(|c| &c.payload.text));
        }
    } else {
        println!("no chunks yet: this is the first run");
    }
    let doc = format!("run-{run}");
    let chunks: Vec<Chunk> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = if i < 2 { "guide" } else { "changelog" };
            Chunk::new(&doc, u32::try_from(i).unwrap_or(0), *t, embed(t))
                .document_type(kind)
                .source("examples/embedded.rs")
                .tags(["security"].into_iter().take(usize::from(i < 2)))
                .extra("run", run as i64)
        })
        .collect();
    index.upsert(&tenant, chunks).await?;

    let question = "how should I keep API keys";
    let request = SearchRequest::new(embed(question), 5)
        .filter(Filter::all([Filter::eq(Field::DocumentType, "guide"), Filter::eq(Field::Tags, "security")]));
    let hits = index.search(&tenant, &request).await?;
    println!("search {question:?} in security guides ({} chunks stored):", index.count(&tenant, None).await?);
    for h in &hits {
        println!("  {:.3}  {}#{}  {}", h.score, h.payload.document_id, h.payload.chunk_index, h.payload.text);
    }
    let stats = index.stats().await?;
    println!(
        "index: {} points, {} segment(s), payload indexes {:?}",
        stats.points, stats.segments, stats.payload_indexes
    );
    index.close().await?;
    println!("closed; run again to find this run's chunks");
    Ok(())
}
