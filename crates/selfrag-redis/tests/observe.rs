//! Spans and metrics of the Redis stores against a real server, and of the
//! rate limiter's failure policies against none.

use std::time::Duration;

use selfrag_core::observe::{names, system::REDIS};
use selfrag_core::{RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, UserId, Window};
use selfrag_redis::{FailurePolicy, RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag_testkit::observe::{self, Capture, Metrics};

fn config(url: &str) -> RedisConfig {
    let prefix = format!("selfrag-test:{}:", SessionId::generate());
    RedisConfig::builder().url(url).key_prefix(prefix).pool_size(2).build().expect("test config")
}

fn one_a_minute() -> RateLimitPolicy {
    RateLimitPolicy::new([Window::per_minute(1).unwrap()]).unwrap()
}

#[tokio::test]
async fn session_calls_are_observed() {
    let Some(server) = selfrag_testkit::servers::redis().await else { return };
    let store = RedisSessionStore::connect(&config(&server.url)).expect("store");
    observe::check_sessions(None, &store, REDIS, "sessions").await;
}

#[tokio::test]
async fn rate_limit_calls_are_observed() {
    let Some(server) = selfrag_testkit::servers::redis().await else { return };
    let limiter = RedisRateLimiter::connect(&config(&server.url), one_a_minute()).expect("limiter");
    observe::check_rate_limiter(&limiter, REDIS, "redis").await;
}

/// Host, port and database number on the spans and the pool gauges.
#[tokio::test]
async fn server_attributes_and_pool_gauges() {
    let Some(server) = selfrag_testkit::servers::redis().await else { return };
    let url = url::Url::parse(&server.url).expect("test URL");
    let store = RedisSessionStore::connect(&config(&server.url)).expect("store");
    let (capture, metrics) = (Capture::new(), Metrics::new());
    {
        use selfrag_core::SessionStore;
        let _s = capture.set_default();
        let _m = metrics.set_default();
        store.list_recent(UserId::new(), 10).await.expect("list");
    }
    let span = capture.op("list_recent");
    let host = url.host_str().expect("host");
    let port = url.port().unwrap_or(6379);
    assert_eq!(span.field("server.address"), Some(host));
    assert_eq!(span.field("server.port"), Some(port.to_string().as_str()));
    assert_eq!(span.field("db.response.returned_rows"), Some("0"));
    let db = url.path().trim_start_matches('/');
    let pool_name = format!("{host}:{port}/{}", if db.is_empty() { "0" } else { db });
    let labels = [("db.system.name", REDIS), ("db.client.connection.pool.name", pool_name.as_str())];
    assert_eq!(metrics.gauge(names::CONNECTION_MAX, &labels), Some(2.0), "{:#?}", metrics.samples());
}

/// With Redis unreachable, fail-open and fallback decisions are counted
/// under their policy; fail-closed is an `unavailable` span. The password
/// of the URL shows nowhere.
#[tokio::test]
async fn failure_policies_are_counted() {
    let password = "pw-observe-redis-51aa";
    let config = RedisConfig::builder()
        .url(format!("redis://:{password}@127.0.0.1:1"))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("config");
    let key = RateLimitKey::new(UserId::new(), "chat").unwrap();
    let closed = RedisRateLimiter::connect(&config, one_a_minute()).expect("limiter");
    let open = closed.clone().with_failure_policy(FailurePolicy::FailOpen);
    let fallback = closed.clone().with_failure_policy(FailurePolicy::fallback(one_a_minute()));
    let (capture, metrics) = (Capture::new(), Metrics::new());
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        closed.check(&key, 1).await.expect_err("fail closed");
        assert!(open.check(&key, 1).await.expect("fail open").allowed);
        assert!(fallback.check(&key, 1).await.expect("fallback").allowed);
        assert!(!fallback.check(&key, 1).await.expect("fallback").allowed);
    }
    let checks: Vec<_> = capture
        .ops()
        .into_iter()
        .filter(|c| c.field("db.system.name") == Some(REDIS) && c.field("db.operation.name") == Some("check"))
        .collect();
    assert_eq!(checks.len(), 4, "{checks:#?}");
    assert_eq!(checks[0].field("error.type"), Some("unavailable"));
    assert_eq!(checks[1].field("error.type"), None);
    let of = |d: &'static str, s: &'static str| [("db.system.name", REDIS), ("decision", d), ("source", s)];
    assert_eq!(metrics.counter(names::RATE_LIMIT_DECISIONS, &of("allowed", "fail_open")), 1);
    assert_eq!(metrics.counter(names::RATE_LIMIT_DECISIONS, &of("allowed", "fallback")), 1);
    assert_eq!(metrics.counter(names::RATE_LIMIT_DECISIONS, &of("denied", "fallback")), 1);
    assert_eq!(metrics.counter(names::RATE_LIMIT_DECISIONS, &of("allowed", "redis")), 0);
    let errors = [("db.system.name", REDIS), ("db.operation.name", "check"), ("error.type", "unavailable")];
    assert_eq!(metrics.counter(names::OPERATION_ERRORS, &errors), 1);
    capture.assert_absent(&[password]);
    metrics.assert_absent(&[password]);
}
