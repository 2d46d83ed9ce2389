//! The four conformance suites against the in-process reference backends of
//! `selfrag_core::local`: the reference must pass every check.

use std::sync::Arc;

use selfrag_core::local::{LocalRateLimiter, LocalStore, LocalVectorIndex};
use selfrag_core::{ManualClock, VectorIndex};
use selfrag_testkit::{ManualTestClock, MemoryFixture, RateLimitFixture, SessionFixture, VectorFixture};

async fn memory() -> Option<MemoryFixture> {
    let store = Arc::new(LocalStore::with_clock(Arc::new(ManualClock::starting_now())));
    Some(MemoryFixture::new(store.clone(), store))
}

async fn sessions() -> Option<SessionFixture> {
    let clock = ManualClock::starting_now();
    let store = Arc::new(LocalStore::with_clock(Arc::new(clock.clone())));
    let shared = (*store).clone();
    Some(
        SessionFixture::new(store.clone(), Some(store), Arc::new(ManualTestClock(clock)))
            .with_limits(move |limits| Arc::new(shared.clone().with_session_limits(limits))),
    )
}

async fn rate_limits() -> Option<RateLimitFixture> {
    let clock = ManualClock::starting_now();
    let shared = clock.clone();
    Some(RateLimitFixture::new(
        move |policy| Arc::new(LocalRateLimiter::with_clock(policy, Arc::new(shared.clone()))),
        Arc::new(ManualTestClock(clock)),
    ))
}

async fn vectors() -> Option<VectorFixture> {
    Some(VectorFixture::new(|spec| {
        Box::pin(async move { Ok(Arc::new(LocalVectorIndex::new(spec)) as Arc<dyn VectorIndex>) })
    }))
}

selfrag_testkit::memory_store_tests!(memory);
selfrag_testkit::session_store_tests!(sessions);
selfrag_testkit::rate_limiter_tests!(rate_limits);
selfrag_testkit::vector_index_tests!(vectors);

/// The session suite as a backend without a user store sees it (Redis):
/// `users` is `None`, and any user id may own sessions.
mod without_users {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use selfrag_core::{NewSession, Result, Session, SessionId, SessionStore, UserId, UserStore};
    use serde_json::{Map, Value};

    use super::*;

    /// A `LocalStore` that registers every user id on first sight.
    #[derive(Debug)]
    struct AnyUser {
        inner: LocalStore,
        /// Shared by the stores of one fixture (they share the data).
        known: Arc<Mutex<HashSet<UserId>>>,
    }

    impl AnyUser {
        async fn register(&self, user: UserId) -> Result<()> {
            if self.known.lock().unwrap().insert(user) {
                self.inner.ensure_user(user).await?;
            }
            Ok(())
        }
    }

    #[selfrag_core::async_trait]
    impl SessionStore for AnyUser {
        async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
            self.register(user).await?;
            self.inner.create(user, session).await
        }
        async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
            SessionStore::get(&self.inner, user, id).await
        }
        async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
            self.inner.touch(user, id).await
        }
        async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
            self.inner.set_data(user, id, data).await
        }
        async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
            self.inner.list_recent(user, limit).await
        }
        async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
            self.inner.revoke(user, id).await
        }
        async fn revoke_all(&self, user: UserId) -> Result<u64> {
            self.inner.revoke_all(user).await
        }
    }

    async fn sessions() -> Option<SessionFixture> {
        let clock = ManualClock::starting_now();
        let inner = LocalStore::with_clock(Arc::new(clock.clone()));
        let known = Arc::new(Mutex::default());
        let store = AnyUser { inner: inner.clone(), known: known.clone() };
        Some(SessionFixture::new(Arc::new(store), None, Arc::new(ManualTestClock(clock))).with_limits(move |limits| {
            Arc::new(AnyUser { inner: inner.clone().with_session_limits(limits), known: known.clone() })
        }))
    }

    selfrag_testkit::session_store_tests!(sessions);
}

/// The skip-list form: a listed check is skipped (loudly), the others run.
mod with_skip_list {
    use selfrag_testkit::StampedOutcome;

    use super::*;

    selfrag_testkit::rate_limiter_tests!(rate_limits, skip = [concurrent_checks_respect_the_limit, policy_is_kept]);

    /// What the stamped tests above do, check by check: exactly the listed
    /// checks are skipped (their fixture is never made), every other check
    /// runs and passes.
    #[test]
    fn exactly_the_listed_checks_are_skipped() {
        let skip = ["concurrent_checks_respect_the_limit", "policy_is_kept"];
        let checks = selfrag_testkit::ratelimit::checks();
        let mut skipped = Vec::new();
        for check in &checks {
            let outcome = selfrag_testkit::__run_stamped("rate_limiter", check.name, &skip, checks.clone(), || async {
                assert!(!skip.contains(&check.name), "the fixture of skipped check `{}` was made", check.name);
                rate_limits().await
            });
            match outcome {
                StampedOutcome::Skipped => skipped.push(check.name),
                StampedOutcome::Passed => {}
                StampedOutcome::NoFixture => panic!("check `{}`: the local fixture is always there", check.name),
            }
        }
        skipped.sort_unstable();
        assert_eq!(skipped, skip);
        // A check not in the suite is a panic, not a silent pass.
        let unknown = std::panic::catch_unwind(|| {
            selfrag_testkit::__run_stamped("rate_limiter", "no_such_check", &[], checks.clone(), rate_limits)
        });
        assert!(unknown.is_err(), "running an unknown check did not panic");
    }
}
