//! Sessions and rate limits in Redis, printing what happens.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis --features redis
//! ```
//!
//! Everything goes under the key prefix `selfrag-example:` (or
//! `SELFRAG_REDIS_PREFIX`), and the example deletes what it created.

use std::time::Duration;

use selfrag::redis::{FailurePolicy, RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag::{NewSession, RateLimitKey, RateLimitPolicy, RateLimiter, SessionStore, UserId, Window};
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
    let mut config = RedisConfig::from_env()?;
    if std::env::var_os("SELFRAG_REDIS_PREFIX").is_none() {
        config.key_prefix = "selfrag-example:".into();
    }
    // `redacted_url` (like the config's `Debug`) never shows the password.
    println!("Redis at {}, keys under {:?}", config.redacted_url(), config.key_prefix);
    // One pool, shared by both stores: each takes one connection out of it
    // and multiplexes all its calls over it (two connections in all).
    let pool = config.create_pool()?;
    let sessions = RedisSessionStore::with_config(pool.clone(), &config)?;

    // Redis does not track users: any id is a user.
    let user = UserId::new();
    let session =
        sessions.create(user, NewSession::new(Duration::from_secs(2))?.with_data(json!({"theme": "dark"}))?).await?;
    println!("created session {} for user {user}, expires at {}", session.id, session.expires_at);
    println!("  stored as the hash {}", sessions.session_key(user, session.id));
    println!("  indexed in the sorted set {}", sessions.index_key(user));

    tokio::time::sleep(Duration::from_millis(800)).await;
    let touched = sessions.touch(user, session.id).await?.expect("still live");
    println!("touched after 0.8 s: expiry slid to {} (Redis clock)", touched.expires_at);

    let other = UserId::new();
    println!("another user asking for it gets {:?}", sessions.get(other, session.id).await?.map(|s| s.id));

    let short = sessions.create(user, NewSession::new(Duration::from_millis(300))?).await?;
    println!("created a 300 ms session {}; live sessions now: {}", short.id, sessions.list(user).await?.len());
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!(
        "0.4 s later: get -> {:?}, live sessions: {}",
        sessions.get(user, short.id).await?.map(|s| s.id),
        sessions.list(user).await?.len()
    );
    println!("revoke_all ended {} live session(s)", sessions.revoke_all(user).await?);

    // Rate limits: 5 per second and 8 per minute, checked atomically in one
    // Lua script; an in-process limiter takes over if Redis goes away.
    let policy = RateLimitPolicy::new([Window::new(Duration::from_secs(1), 5)?, Window::per_minute(8)?])?;
    let limiter = RedisRateLimiter::with_config(pool, &config, policy.clone())?
        .with_failure_policy(FailurePolicy::fallback(policy));
    let key = RateLimitKey::new(user, "chat")?;
    for i in 1..=7 {
        let outcome = limiter.check_detailed(&key, 1).await?;
        let d = &outcome.decision;
        let remaining: Vec<String> = d.windows.iter().map(|w| format!("{}: {} left", w.window, w.remaining)).collect();
        match d.retry_after {
            None => println!("request {i}: allowed ({}) [{}]", remaining.join(", "), outcome.source),
            Some(wait) => {
                println!("request {i}: denied, retry after {wait:?} ({}) [{}]", remaining.join(", "), outcome.source)
            }
        }
    }
    let wait = limiter.check(&key, 1).await?.retry_after.unwrap_or_default();
    tokio::time::sleep(wait).await;
    let d = limiter.check(&key, 1).await?;
    println!("after waiting {wait:?}: allowed = {}, minute window has {} left", d.allowed, d.windows[1].remaining);
    for w in limiter.policy().windows() {
        println!("  buckets of {w} live for {:?} in Redis", w.bucket_ttl());
    }
    limiter.reset(&key).await?;
    println!("reset the limit; done");
    Ok(())
}
