//! The time-dependent suites against the local backends on the system clock,
//! with [`RealClock`] sleeping: proves that the suites' waits and margins
//! hold with real time passing, as they must against real servers.

use std::sync::Arc;

use selfrag_core::local::{LocalRateLimiter, LocalStore};
use selfrag_testkit::{RateLimitFixture, RealClock, SessionFixture};

async fn sessions() -> Option<SessionFixture> {
    let store = Arc::new(LocalStore::new());
    let shared = (*store).clone();
    Some(
        SessionFixture::new(store.clone(), Some(store), Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(shared.clone().with_session_limits(limits))),
    )
}

async fn rate_limits() -> Option<RateLimitFixture> {
    Some(RateLimitFixture::new(|policy| Arc::new(LocalRateLimiter::new(policy)), Arc::new(RealClock)))
}

selfrag_testkit::session_store_tests!(sessions);
selfrag_testkit::rate_limiter_tests!(rate_limits);
