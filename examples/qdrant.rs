//! Vectors in a Qdrant server: ensure a collection, upsert a tenant's chunks,
//! run a filtered search.
//!
//! ```text
//! QDRANT_URL=http://localhost:6334 cargo run --example qdrant --features qdrant
//! ```
//!
//! `QDRANT_URL` is the **gRPC** endpoint (port 6334); `QDRANT_API_KEY` is
//! sent when set; `SELFRAG_QDRANT_COLLECTION` picks the collection, as for
//! `Storage::from_env` (default `selfrag_example`). Running it twice is fine:
//! `ensure` and the upserts are idempotent, so the second run finds the
//! collection ready and the same three chunks.

use selfrag::qdrant::QdrantIndexConfig;
use selfrag::{Chunk, Distance, Field, Filter, IndexSpec, SearchRequest, Tenant, VectorIndex};

/// A toy embedding so the example needs no model: words hashed into 64
/// buckets. Real services call their embedding model here.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 64];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        v[usize::try_from(h % 64).unwrap_or(0)] += 1.0;
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
    let collection = std::env::var("SELFRAG_QDRANT_COLLECTION").unwrap_or_else(|_| "selfrag_example".to_owned());
    let spec = IndexSpec::new(64, Distance::Cosine)?;
    let index = match QdrantIndexConfig::from_env(collection, spec) {
        Ok(config) => config.build()?,
        Err(e) => {
            eprintln!("{e}\nstart a server, e.g. `docker run -p 6333:6333 -p 6334:6334 qdrant/qdrant`, then");
            eprintln!("QDRANT_URL=http://localhost:6334 cargo run --example qdrant --features qdrant");
            std::process::exit(2);
        }
    };

    // Creates the collection and its six payload indexes when missing;
    // refuses a collection of another dimension or distance.
    let report = index.ensure().await?;
    println!("{report}");
    if !report.is_ready() {
        // Yellow while Qdrant optimizes: every call still works.
        println!("not fully ready yet: {:?}", report.schema_problems());
    }

    let tenant = Tenant::new("acme")?;
    // (document, chunk index, text, tag, document type)
    let docs = [
        ("handbook", 0, "Vacation policy: employees get 25 days of paid leave per year.", "hr", "pdf"),
        ("handbook", 1, "Expense reports are due by the fifth day of each month.", "finance", "pdf"),
        ("wiki", 0, "Deploy the service with the release pipeline, never by hand.", "engineering", "markdown"),
    ];
    let chunks: Vec<Chunk> = docs
        .into_iter()
        .map(|(doc, i, text, tag, kind)| {
            Chunk::new(doc, i, text, embed(text)).tags([tag]).document_type(kind).source("example")
        })
        .collect();
    index.upsert(&tenant, chunks).await?;
    println!("{} chunks stored for tenant {tenant}", index.count(&tenant, None).await?);

    let question = "how many days of paid vacation do employees get";
    let request =
        SearchRequest::new(embed(question), 3).filter(Filter::eq(Field::DocumentType, "pdf")).score_threshold(0.1);
    println!("search (pdf only): {question:?}");
    for hit in index.search(&tenant, &request).await? {
        println!("  {:.3}  {}#{}  {}", hit.score, hit.payload.document_id, hit.payload.chunk_index, hit.payload.text);
    }

    let handbook = index.document_chunks(&tenant, "handbook").await?;
    println!("document `handbook` has {} chunks, in order:", handbook.len());
    for c in handbook {
        println!("  #{} {}", c.payload.chunk_index, c.payload.text);
    }
    Ok(())
}
