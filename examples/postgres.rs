//! Memory logs and sessions in Postgres: migrates the database in
//! `DATABASE_URL`, then uses both stores and prints what it does.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --example postgres --features postgres
//! ```
//!
//! The example cleans up after itself: it deletes the user it created, which
//! deletes that user's logs and sessions.

use std::time::Duration;

use selfrag::postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use selfrag::{MemoryQuery, MemoryStore, MemoryType, NewMemoryLog, NewSession, SessionStore, UserStore};
use serde_json::json;

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
    let config = PostgresConfig::from_env()?;
    // `redact_url` (like the config's `Debug`) never shows the password.
    println!("connecting to {}", selfrag::postgres::redact_url(&config.url));
    let pool = config.build()?;

    let report = selfrag::postgres::migrate(&pool).await?;
    println!("migrations applied now: {:?}", report.applied.iter().map(|m| m.version).collect::<Vec<_>>());
    print!("{}", selfrag::postgres::migration_status(&pool).await?);

    let users = PostgresUserStore::new(pool.clone());
    let memory = PostgresMemoryStore::new(pool.clone());
    let sessions = PostgresSessionStore::new(pool);

    let user = users.create_user().await?;
    println!("created user {user}");

    // One round trip for the whole batch; all rows or none.
    let start = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let batch = (0..120)
        .map(|i| {
            let kind = if i % 4 == 0 { "fact" } else { "chat.user" };
            NewMemoryLog::new(kind, format!("message {i}"))?
                .with_metadata(json!({ "turn": i, "topic": if i % 2 == 0 { "tea" } else { "trains" } }))
                .map(|log| log.at(start + Duration::from_secs(i * 30)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stored = memory.append_batch(user, batch).await?;
    println!("appended {} logs in one statement", stored.len());

    // Newest first, keyset-paginated.
    let mut query = MemoryQuery::new().since(start).limit(50);
    let mut pages = 0;
    loop {
        let page = memory.query(user, &query).await?;
        pages += 1;
        let (first, last) = (page.logs.first(), page.logs.last());
        println!(
            "page {pages}: {} logs, {:?} .. {:?}",
            page.logs.len(),
            first.map(|l| &l.content),
            last.map(|l| &l.content)
        );
        match page.next {
            Some(cursor) => query = query.after(cursor),
            None => break,
        }
    }

    let facts_about_tea = MemoryQuery::new()
        .of_type(MemoryType::new("fact")?)
        .metadata_contains(json!({ "topic": "tea" }).as_object().cloned().unwrap_or_default())
        .limit(5);
    let page = memory.query(user, &facts_about_tea).await?;
    println!("newest facts about tea: {:?}", page.logs.iter().map(|l| &l.content).collect::<Vec<_>>());
    println!("plan of the hot query:\n{}", memory.explain_query(user, &MemoryQuery::new().since(start), false).await?);

    // Sessions expire on the database clock; touch slides the expiry.
    let session =
        sessions.create(user, NewSession::new(Duration::from_secs(1800))?.with_data(json!({"ui": "dark"}))?).await?;
    println!("session {} expires at {}", session.id, session.expires_at);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Some(touched) = sessions.touch(user, session.id).await? {
        println!("touched: now expires at {}", touched.expires_at);
    }
    let short = sessions.create(user, NewSession::new(Duration::from_millis(200))?).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("short session after its TTL: {:?}", sessions.get(user, short.id).await?.map(|s| s.id));
    println!("live sessions: {}", sessions.list(user).await?.len());
    println!("swept {} expired session rows", sessions.sweep_expired().await?);
    println!("revoked {} live sessions", sessions.revoke_all(user).await?);

    println!("deleted user (cascades to logs and sessions): {}", users.delete_user(user).await?);
    Ok(())
}
