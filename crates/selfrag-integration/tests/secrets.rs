//! No password or API key in any `Debug`, `Display` or error: every
//! configuration, builder, pool, store and error of the Postgres, Redis and
//! Qdrant backends (and of `Storage::from_lookup`) is rendered with a known
//! secret in every form their URLs and connection strings accept, and the
//! test fails if the secret shows. The servers are closed ports (port 1
//! refuses at once), nonexistent sockets and malformed strings, so no server
//! is needed and every call fails fast.
#![cfg(all(feature = "postgres", feature = "redis", feature = "qdrant"))]

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt::Debug;
use std::time::Duration;

use selfrag::postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use selfrag::qdrant::QdrantIndexConfig;
use selfrag::redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag::{
    Distance, IndexSpec, RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, SessionStore, Storage, StorageOptions,
    Tenant, UserId, UserStore, VectorIndex,
};

/// The secret; distinctive, so that any occurrence is a leak.
const PW: &str = "Pa55w0rdEveryForm";

/// Fails when `text` (what `what` rendered to) holds the secret, raw or
/// percent-encoded.
fn check(what: &str, text: &str) {
    for form in [PW.to_owned(), PW.replace('0', "%30")] {
        assert!(!text.contains(&form), "{what} shows the secret:\n{text}");
    }
}

/// `Debug`, pretty `Debug` and, when given, `Display`.
fn check_debug(what: &str, value: &impl Debug) {
    check(what, &format!("{value:?}\n{value:#?}"));
}

/// An error's `Display` and `Debug`, and those of every source in its chain.
fn check_error(what: &str, err: &(dyn StdError + 'static)) {
    let mut text = format!("{err}\n{err:?}\n{err:#?}\n");
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!("{s}\n{s:?}\n"));
        source = s.source();
    }
    check(what, &text);
}

fn lookup(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<&str, String> = vars.into_iter().collect();
    move |name| vars.get(name).cloned()
}

/// Start-up with nothing to wait for: a closed port fails at once, and a
/// bound keeps a surprise (a resolver that hangs) from stalling the test.
fn options() -> StorageOptions {
    StorageOptions { startup_timeout: Duration::from_secs(5), ..StorageOptions::default() }
}

/// Every form libpq (and so `DATABASE_URL`) can hold a password in, and some
/// malformed ones, all pointing at a closed port.
fn postgres_forms() -> Vec<String> {
    vec![
        format!("postgres://u:{PW}@127.0.0.1:1/d"),
        format!("postgresql://u:{PW}@127.0.0.1:1/d?sslmode=disable"),
        format!("postgres://u:{}@127.0.0.1:1/d", PW.replace('0', "%30")),
        format!("postgres://u@127.0.0.1:1/d?password={PW}"),
        format!("postgres://127.0.0.1:1/d?user=u&password={PW}&application_name=x"),
        // An unencoded `@` in the password: the driver reads host
        // `<PW>@127.0.0.1`.
        format!("postgres://u:p@{PW}@127.0.0.1:1/d"),
        format!("postgres://u:{PW}@@127.0.0.1:1/d"),
        // An unencoded `/` in the password.
        format!("postgres://u:{PW}/x@127.0.0.1:1/d"),
        format!("postgres://u:{PW}@127.0.0.1:notaport/d"),
        format!("host=127.0.0.1 port=1 user=u password={PW}"),
        format!("host=127.0.0.1 port=1 user=u password = {PW}"),
        format!("host=127.0.0.1 port=1 user=u password='{PW} with spaces'"),
        format!(r"host=127.0.0.1 port=1 user=u password = 'a\\b\' {PW}'"),
        // Unquoted spaces: the rest of the password reads as options.
        format!("host=127.0.0.1 port=1 password={PW} {PW}=x"),
        format!("host=127.0.0.1 port=1 password={PW} more words"),
        format!("host=127.0.0.1 port=1 sslpassword={PW}"),
        format!("password='{PW}"),
    ]
}

fn redis_forms() -> Vec<String> {
    vec![
        format!("redis://:{PW}@127.0.0.1:1"),
        format!("redis://default:{PW}@127.0.0.1:1/0"),
        format!("rediss://:{PW}@127.0.0.1:1"),
        format!("redis://u:p@{PW}@127.0.0.1:1"),
        format!("redis://{PW}@127.0.0.1:1"),
        format!("redis://:{PW}@127.0.0.1:1/notadb"),
        format!("redis://:{PW}@127.0.0.1:1/?protocol=bogus"),
        format!("redis://u:{PW}/x@127.0.0.1:1"),
        format!("redis://:{PW}@127.0.0.1:notaport"),
        format!("redis+unix:///nonexistent/redis.sock?pass={PW}"),
        format!("unix:///nonexistent/redis.sock?password={PW}"),
        format!("http://:{PW}@127.0.0.1:1"),
    ]
}

fn qdrant_forms() -> Vec<String> {
    vec![
        // Clean URLs: only the key is secret.
        "http://127.0.0.1:1".to_owned(),
        "https://127.0.0.1:1/".to_owned(),
        format!("http://u:{PW}@127.0.0.1:1"),
        format!("https://{PW}@127.0.0.1:1"),
        format!("http://u:p@{PW}@127.0.0.1:1"),
        format!("http://127.0.0.1:1/?api-key={PW}"),
        format!("http://127.0.0.1:1/#{PW}"),
        format!("http://u:{PW}/x@127.0.0.1:1"),
        format!("127.0.0.1:1?api_key={PW}"),
        format!("{PW}:1"),
    ]
}

#[tokio::test]
async fn postgres_configs_pools_stores_and_errors_hide_the_password() {
    let user = UserId::new();
    for url in postgres_forms() {
        let config = PostgresConfig::with_url(url.as_str())
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(2));
        check_debug(&format!("PostgresConfig for {url:?}"), &config);
        check(&format!("redact_url of {url:?}"), &selfrag::postgres::redact_url(&url));
        if let Err(e) = selfrag::postgres::parse_url(&url) {
            check_error(&format!("parse_url of {url:?}"), &e);
        }
        if let Err(e) = config.pg_config() {
            check_error(&format!("pg_config of {url:?}"), &e);
        }
        match config.build() {
            Err(e) => check_error(&format!("build of {url:?}"), &e),
            Ok(pool) => {
                check_debug(&format!("pool of {url:?}"), &pool);
                let users = PostgresUserStore::with_config(pool.clone(), &config);
                let memory = PostgresMemoryStore::with_config(pool.clone(), &config);
                let sessions = PostgresSessionStore::new(pool.clone());
                check_debug(&format!("stores of {url:?}"), &(&users, &memory, &sessions));
                let err = users.create_user().await.expect_err("nothing listens on port 1");
                check_error(&format!("create_user through {url:?}"), &err);
                let err = sessions.get(user, SessionId::generate()).await.expect_err("nothing listens");
                check_error(&format!("session get through {url:?}"), &err);
                let err = selfrag::postgres::migrate(&pool).await.expect_err("nothing listens");
                check_error(&format!("migrate through {url:?}"), &err);
            }
        }
        let err = Storage::from_lookup(&options(), lookup(vec![("DATABASE_URL", url.clone())]))
            .await
            .expect_err("nothing listens on port 1");
        check_error(&format!("Storage::from_lookup with DATABASE_URL={url:?}"), &err);
    }
}

#[tokio::test]
async fn redis_configs_pools_stores_and_errors_hide_the_password() {
    let user = UserId::new();
    let key = RateLimitKey::new(user, "chat").unwrap();
    for url in redis_forms() {
        let what = |thing: &str| format!("{thing} for {url:?}");
        let config = RedisConfig { url: url.clone(), connect_timeout: Duration::from_secs(2), ..Default::default() };
        check_debug(&what("RedisConfig"), &config);
        check_debug(&what("RedisConfigBuilder"), &RedisConfig::builder().url(url.as_str()));
        check(&what("redacted_url"), &config.redacted_url());
        match RedisConfig::from_lookup(lookup(vec![("REDIS_URL", url.clone())])) {
            Ok(c) => check_debug(&what("RedisConfig::from_lookup"), &c),
            Err(e) => check_error(&what("RedisConfig::from_lookup"), &e),
        }
        let pool = match config.create_pool() {
            Ok(pool) => pool,
            Err(e) => {
                check_error(&what("create_pool"), &e);
                continue;
            }
        };
        check_debug(&what("RedisPool"), &pool);
        let sessions = RedisSessionStore::with_config(pool.clone(), &config).unwrap();
        let limiter = RedisRateLimiter::with_config(pool.clone(), &config, RateLimitPolicy::default()).unwrap();
        check_debug(&what("stores"), &(&sessions, &limiter));
        check_debug(&what("store.pool()"), sessions.pool().expect("a single-server store has a pool"));
        let err = sessions.get(user, SessionId::generate()).await.expect_err("nothing listens");
        check_error(&what("session get"), &err);
        let err = limiter.check(&key, 1).await.expect_err("nothing listens, and the limiter fails closed");
        check_error(&what("rate-limit check"), &err);

        let storage = Storage::from_lookup(&options(), lookup(vec![("REDIS_URL", url.clone())]))
            .await
            .expect("Redis connects lazily");
        check_debug(&what("Storage"), &storage);
        check_debug(&what("Storage::sessions"), &storage.sessions);
        check_debug(&what("Storage::rate_limiter"), &storage.rate_limiter);
        let err = storage.sessions.get(user, SessionId::generate()).await.expect_err("nothing listens");
        check_error(&what("Storage session get"), &err);
        let err = storage.rate_limiter.check(&key, 1).await.expect_err("nothing listens");
        check_error(&what("Storage rate-limit check"), &err);
    }
}

#[tokio::test]
async fn qdrant_configs_indexes_and_errors_hide_the_key() {
    let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
    let tenant = Tenant::from(UserId::new());
    for url in qdrant_forms() {
        let what = |thing: &str| format!("{thing} for {url:?}");
        let config = QdrantIndexConfig::new(url.as_str(), "secrets_test", spec)
            .api_key(PW)
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2));
        check_debug(&what("QdrantIndexConfig"), &config);
        check(&what("redact_url"), &selfrag::qdrant::redact_url(&url));
        if let Err(e) = config.validate() {
            check_error(&what("validate"), &e);
        }
        match config.build() {
            Err(e) => check_error(&what("build"), &e),
            Ok(index) => {
                check_debug(&what("QdrantIndex"), &index);
                let err = index.ensure().await.expect_err("nothing listens");
                check_error(&what("ensure"), &err);
                let err = index.count(&tenant, None).await.expect_err("nothing listens");
                check_error(&what("count"), &err);
            }
        }
        let vars = vec![("QDRANT_URL", url.clone()), ("QDRANT_API_KEY", PW.to_owned())];
        let err = Storage::from_lookup(&options(), lookup(vars)).await.expect_err("nothing listens");
        check_error(&what("Storage::from_lookup"), &err);
    }
}
