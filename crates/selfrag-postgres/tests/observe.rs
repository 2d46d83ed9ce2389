//! Spans and metrics of the Postgres stores against a real server: names,
//! attributes, counts, pool gauges, and no content or password anywhere.

mod common;

use selfrag_core::observe::{names, system::POSTGRESQL};
use selfrag_core::UserStore;
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use selfrag_testkit::observe::{self, Capture, Metrics};

#[tokio::test]
async fn memory_calls_are_observed() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let memory = PostgresMemoryStore::new(db.pool.clone());
    observe::check_memory(&users, &memory, POSTGRESQL, "memory_logs").await;
}

#[tokio::test]
async fn session_calls_are_observed() {
    let Some(db) = common::fresh_db().await else { return };
    let users = PostgresUserStore::new(db.pool.clone());
    let sessions = PostgresSessionStore::new(db.pool.clone());
    observe::check_sessions(Some(&users), &sessions, POSTGRESQL, "user_sessions").await;
}

/// The server's host, port and database are on every span and name the
/// pool's gauges; the password in the URL appears nowhere.
#[tokio::test]
async fn server_attributes_and_pool_gauges_without_the_password() {
    let Some(db) = common::fresh_db().await else { return };
    let password = "pw-observe-3b9e";
    let url = url::Url::parse(&db.url).expect("test URL");
    let mut with_password = url.clone();
    if with_password.username().is_empty() {
        with_password.set_username("postgres").expect("user");
    }
    with_password.set_password(Some(password)).expect("password");
    // The server trusts local connections: the password is sent to no one.
    let pool =
        PostgresConfig::with_url(with_password.as_str()).schema(&db.schema).max_connections(3).build().expect("pool");
    let users = PostgresUserStore::new(pool);
    let (capture, metrics) = (Capture::new(), Metrics::new());
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        users.create_user().await.expect("create user");
    }
    let span = capture.op("create_user");
    let host = url.host_str().expect("host");
    assert_eq!(span.field("server.address"), Some(host));
    assert_eq!(span.field("server.port"), Some(url.port().unwrap_or(5432).to_string().as_str()));
    assert_eq!(span.field("db.namespace"), Some(url.path().trim_start_matches('/')));
    assert_eq!(span.field("db.collection.name"), Some("users"));
    let pool_name = format!("{host}:{}{}", url.port().unwrap_or(5432), url.path());
    let labels = [("db.system.name", POSTGRESQL), ("db.client.connection.pool.name", pool_name.as_str())];
    assert_eq!(metrics.gauge(names::CONNECTION_MAX, &labels), Some(3.0));
    let used = [labels[0], labels[1], ("db.client.connection.state", "used")];
    assert_eq!(metrics.gauge(names::CONNECTION_COUNT, &used), Some(1.0), "{:#?}", metrics.samples());
    assert_eq!(metrics.gauge(names::CONNECTION_PENDING, &labels), Some(0.0));
    capture.assert_absent(&[password]);
    metrics.assert_absent(&[password]);
}

/// A call that cannot reach its server fails with `error.type` =
/// `unavailable` on its span and in the error counter.
#[tokio::test]
async fn unreachable_server_is_an_unavailable_span() {
    let pool = PostgresConfig::with_url("postgres://postgres:pw-unreachable@127.0.0.1:1/db")
        .connect_timeout(std::time::Duration::from_millis(500))
        .acquire_timeout(std::time::Duration::from_millis(500))
        .build()
        .expect("pool");
    let users = PostgresUserStore::new(pool);
    let (capture, metrics) = (Capture::new(), Metrics::new());
    {
        let _s = capture.set_default();
        let _m = metrics.set_default();
        users.create_user().await.expect_err("nothing listens on port 1");
    }
    let span = capture.op("create_user");
    assert_eq!(span.field("error.type"), Some("unavailable"), "{span:?}");
    assert_eq!(span.field("server.port"), Some("1"));
    let labels = [("db.system.name", POSTGRESQL), ("db.operation.name", "create_user"), ("error.type", "unavailable")];
    assert_eq!(metrics.counter(names::OPERATION_ERRORS, &labels), 1);
    capture.assert_absent(&["pw-unreachable"]);
    metrics.assert_absent(&["pw-unreachable"]);
}
