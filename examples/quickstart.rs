//! The whole storage layer in one process, with no server: a user, memory
//! logs, a session, a rate limit, and a filtered vector search, all on the
//! in-process (`local`) backends.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Every backend here implements the same traits as its server counterpart
//! (Postgres, Redis, Qdrant), so swapping one in changes the constructor, not
//! the calls.

use std::sync::Arc;
use std::time::Duration;

use selfrag::local::{LocalRateLimiter, LocalStore, LocalVectorIndex};
use selfrag::{
    Chunk, Distance, Field, Filter, IndexSpec, MemoryQuery, MemoryStore, NewMemoryLog, NewSession, RateLimitKey,
    RateLimitPolicy, RateLimiter, SearchRequest, SessionStore, Tenant, UserStore, VectorIndex, Window,
};
use serde_json::json;

/// A toy embedding so the example needs no model: words hashed into 64
/// buckets. Real services call their embedding model here.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 64];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        v[(h % 64) as usize] += 1.0;
    }
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
    // Users, memory logs and sessions share one store, as they share one
    // database in Postgres (deleting a user deletes its logs and sessions).
    let store = Arc::new(LocalStore::new());
    let memory: Arc<dyn MemoryStore> = store.clone();
    let sessions: Arc<dyn SessionStore> = store.clone();

    let user = store.create_user().await?;
    println!("created user {user}");

    // Memory logs: append-only, queried newest first.
    memory
        .append(
            user,
            NewMemoryLog::new("chat.user", "What is our refund policy?")?.with_metadata(json!({"channel": "web"}))?,
        )
        .await?;
    memory.append(user, NewMemoryLog::new("fact", "Prefers answers in French")?).await?;
    let batch = vec![
        NewMemoryLog::new("chat.assistant", "Refunds are possible within 30 days.")?,
        NewMemoryLog::new("summary", "Asked about refunds")?,
    ];
    memory.append_batch(user, batch).await?;
    let page = memory.query(user, &MemoryQuery::new().limit(10)).await?;
    println!("{} memory logs, newest first:", page.logs.len());
    for log in &page.logs {
        println!("  [{}] {}", log.kind, log.content);
    }
    let facts = memory.query(user, &MemoryQuery::new().of_type("fact".parse()?)).await?;
    println!("facts only: {:?}", facts.logs.iter().map(|l| &l.content).collect::<Vec<_>>());

    // Bad input is refused with the field named, and nothing is written.
    match NewMemoryLog::new("fact", "") {
        Err(e) => println!("refused as expected: {e}"),
        Ok(_) => unreachable!("empty content is invalid"),
    }

    // Sessions: a TTL that slides on every touch.
    let session =
        sessions.create(user, NewSession::new(Duration::from_secs(1800))?.with_data(json!({"lang": "fr"}))?).await?;
    println!("opened session {} (expires {})", session.id, session.expires_at);
    let touched = sessions.touch(user, session.id).await?.expect("live session");
    println!("touched: now expires {}", touched.expires_at);

    // Rate limits: every window must allow a request, or none is charged.
    let policy = RateLimitPolicy::new([Window::per_minute(3)?, Window::per_hour(100)?])?;
    let limiter = LocalRateLimiter::new(policy);
    let key = RateLimitKey::new(user, "chat")?;
    for attempt in 1..=4 {
        let d = limiter.check(&key, 1).await?;
        match d.retry_after {
            None => println!("request {attempt}: allowed, {} left this minute", d.windows[0].remaining),
            Some(wait) => println!("request {attempt}: rate limited, retry in {:.1} s", wait.as_secs_f64()),
        }
    }

    // Vectors: chunks scoped to a tenant, filtered similarity search.
    let index = LocalVectorIndex::new(IndexSpec::new(64, Distance::Cosine)?);
    let tenant = Tenant::from(user);
    let docs = [
        ("policy", 0, "pdf", &["billing"][..], "Refunds are possible within 30 days of purchase."),
        ("policy", 1, "pdf", &["billing", "legal"][..], "Refunds need the original receipt."),
        ("faq", 0, "markdown", &["support"][..], "Reset your password from the login page."),
        ("faq", 1, "markdown", &["billing"][..], "Invoices are emailed every month."),
    ];
    let chunks = docs
        .iter()
        .map(|(doc, i, kind, tags, text)| {
            Chunk::new(*doc, *i, *text, embed(text)).document_type(*kind).tags(tags.iter().copied()).source("handbook")
        })
        .collect();
    index.upsert(&tenant, chunks).await?;
    let query = "how do refunds work";
    let request = SearchRequest::new(embed(query), 3)
        .filter(Filter::all([Filter::eq(Field::DocumentType, "pdf"), Filter::any_of(Field::Tags, ["billing"])]));
    println!("search {query:?} in billing PDFs:");
    for hit in index.search(&tenant, &request).await? {
        println!("  {:.3}  {}#{}  {}", hit.score, hit.payload.document_id, hit.payload.chunk_index, hit.payload.text);
    }
    let other = Tenant::new("someone-else")?;
    println!("another tenant sees {} chunks", index.count(&other, None).await?);

    // Deleting the user deletes its logs and sessions.
    store.delete_user(user).await?;
    println!("deleted user; sessions left: {}", sessions.list(user).await?.len());
    Ok(())
}
