//! The testkit's conformance suites, stamped for the Postgres stores; each
//! test runs in a fresh, migrated schema.

mod common;

use std::sync::Arc;

use selfrag_postgres::{CoalesceConfig, PostgresMemoryStore, PostgresSessionStore, PostgresUserStore};
use selfrag_testkit::{MemoryFixture, RealClock, SessionFixture};

async fn memory_fixture() -> Option<MemoryFixture> {
    let db = common::fresh_db().await?;
    let store = Arc::new(PostgresMemoryStore::new(db.pool.clone()));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    Some(MemoryFixture::new(store, users).with_guard(db))
}

/// The same store with coalesced appends on, with small bounds (8 rows,
/// 2 statements in flight) so that the suite's concurrent appends share
/// statements and also overflow them.
async fn coalesced_memory_fixture() -> Option<MemoryFixture> {
    let db = common::fresh_db().await?;
    let config = CoalesceConfig::new().max_rows(8).max_in_flight(2).queue(64);
    let store = Arc::new(PostgresMemoryStore::new(db.pool.clone()).coalescing(config));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    Some(MemoryFixture::new(store, users).with_guard(db))
}

async fn session_fixture() -> Option<SessionFixture> {
    let db = common::fresh_db().await?;
    let store = Arc::new(PostgresSessionStore::new(db.pool.clone()));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    let pool = db.pool.clone();
    // Expiry runs on the database clock, which only real time moves.
    Some(
        SessionFixture::new(store, Some(users), Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(PostgresSessionStore::new(pool.clone()).with_limits(limits)))
            .with_guard(db),
    )
}

/// The same session store with coalesced touches on, with small bounds
/// (4 touches, 2 statements in flight).
async fn coalesced_session_fixture() -> Option<SessionFixture> {
    let db = common::fresh_db().await?;
    let config = CoalesceConfig::new().max_rows(4).max_in_flight(2).queue(64);
    let store = Arc::new(PostgresSessionStore::new(db.pool.clone()).coalescing(config));
    let users = Arc::new(PostgresUserStore::new(db.pool.clone()));
    let pool = db.pool.clone();
    Some(
        SessionFixture::new(store, Some(users), Arc::new(RealClock))
            .with_limits(move |limits| {
                Arc::new(PostgresSessionStore::new(pool.clone()).with_limits(limits).coalescing(config))
            })
            .with_guard(db),
    )
}

selfrag_testkit::memory_store_tests!(memory_fixture);

/// The memory suite again, through the coalescing queue.
mod coalesced {
    selfrag_testkit::memory_store_tests!(crate::coalesced_memory_fixture);
}
selfrag_testkit::session_store_tests!(session_fixture);

/// The session suite again, with touches through the coalescing queue.
mod coalesced_sessions {
    selfrag_testkit::session_store_tests!(crate::coalesced_session_fixture);
}
