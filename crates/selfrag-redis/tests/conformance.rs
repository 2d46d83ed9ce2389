//! The selfrag-testkit conformance suites against a real Redis
//! (`SELFRAG_TEST_REDIS_URL`, else a container, else a loud skip).

use std::sync::Arc;

use selfrag_core::{RateLimiter, SessionId};
use selfrag_redis::redis::{self, Commands};
use selfrag_redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag_testkit::{RateLimitFixture, RealClock, SessionFixture};

/// A key prefix no other test uses, so every fixture starts empty.
fn fresh_prefix() -> String {
    format!("selfrag-test:{}:", SessionId::generate())
}

fn config(url: &str) -> RedisConfig {
    RedisConfig::builder().url(url).key_prefix(fresh_prefix()).pool_size(4).build().expect("test config")
}

/// Deletes the fixture's keys when the check ends (rate-limit buckets of
/// hour and day windows would otherwise linger for up to two days), then
/// drops the server guard.
struct Cleanup {
    url: String,
    prefix: String,
    _server: selfrag_testkit::Guard,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Best effort, with the blocking client: Drop cannot await.
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) else { return };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = match conn.scan_match(&pattern) {
            Ok(iter) => iter.collect(),
            Err(_) => return,
        };
        for key in keys {
            let _: redis::RedisResult<i64> = conn.del(key);
        }
    }
}

async fn sessions() -> Option<SessionFixture> {
    let server = selfrag_testkit::servers::redis().await?;
    let config = config(&server.url);
    let store = RedisSessionStore::connect(&config).expect("session store");
    let cleanup = Cleanup { url: server.url, prefix: config.key_prefix, _server: server.guard };
    let shared = store.clone();
    Some(
        SessionFixture::new(Arc::new(store), None, Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(shared.clone().with_limits(limits)))
            .with_guard(cleanup),
    )
}

async fn rate_limits() -> Option<RateLimitFixture> {
    let server = selfrag_testkit::servers::redis().await?;
    let config = config(&server.url);
    let pool = config.create_pool().expect("pool");
    let parent = config.key_prefix.clone();
    let cleanup = Cleanup { url: server.url, prefix: parent.clone(), _server: server.guard };
    let make = move |policy| {
        // One prefix per limiter under the fixture's: limiters of one
        // fixture never share keys.
        let prefix = format!("{parent}{}:", SessionId::generate());
        let config = RedisConfig { key_prefix: prefix, ..config.clone() };
        let limiter = RedisRateLimiter::with_config(pool.clone(), &config, policy).expect("limiter");
        Arc::new(limiter) as Arc<dyn RateLimiter>
    };
    Some(RateLimitFixture::new(make, Arc::new(RealClock)).with_guard(cleanup))
}

// Redis scopes session ids to their user: every key carries the user's
// hash tag, and a global id registry could not be checked in the same
// atomic script on Redis Cluster. A chosen id that another user holds makes
// an independent session of this user (reads are always by user and id);
// `tests/behaviour.rs` checks that instead.
selfrag_testkit::session_store_tests!(sessions, skip = [session_id_of_another_user_is_refused]);
selfrag_testkit::rate_limiter_tests!(rate_limits);
