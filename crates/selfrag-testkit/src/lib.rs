//! Conformance suites and test-server provisioning for selfrag storage
//! backends (not published).
//!
//! # Suites
//! One suite per trait: [`memory`] ([`MemoryStore`] + [`UserStore`]),
//! [`session`] ([`SessionStore`]), [`ratelimit`] ([`RateLimiter`]) and
//! [`vector`] ([`VectorIndex`]). Each check is a plain
//! `pub async fn name(fixture: &XFixture) -> CheckResult` that says what it
//! expected and what it got when it fails; each module's `checks()` lists all
//! of them, for runners such as [`run_suite`].
//!
//! A backend crate stamps a suite into one named `#[test]` per check with a
//! macro whose argument is the path of an `async fn() -> Option<XFixture>`
//! (returning `None` skips: the fixture fn says why, see [`servers`]):
//!
//! ```ignore
//! async fn fixture() -> Option<selfrag_testkit::MemoryFixture> {
//!     let server = selfrag_testkit::servers::postgres().await?;
//!     let store = Arc::new(connect_to_a_fresh_schema(&server.url).await);
//!     Some(selfrag_testkit::MemoryFixture::new(store.clone(), store).with_guard(server.guard))
//! }
//! selfrag_testkit::memory_store_tests!(fixture);
//! // A backend that cannot do something says so, with the checks' names:
//! // selfrag_testkit::memory_store_tests!(fixture, skip = [pagination_under_concurrent_appends]);
//! ```
//!
//! The tests land in a module named after the suite (`memory_store`,
//! `session_store`, `rate_limiter`, `vector_index`), so
//! `cargo test memory_store::` runs one suite. Each test runs its check on a
//! fresh fixture, in its own multi-thread Tokio runtime with two workers (what
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds; the
//! macros build it themselves so that backend crates need no Tokio macros),
//! under a timeout of [`CHECK_TIMEOUT`].
//!
//! # Isolation and time
//! Checks create their own users, keys, tenants and indexes with fresh ids,
//! so one fixture (one schema, key prefix or collection) may be shared by
//! several checks, but each stamped test asks for its own. Checks that need
//! time to pass call [`TestClock::advance`]: a [`ManualTestClock`] moves the
//! clock of an in-process backend instantly, a [`RealClock`] sleeps, for
//! servers with their own clocks. Waits are chosen with margins (≥ 150 ms
//! around every deadline) that hold with real sleeps, and kept short (a few
//! seconds per check at most).
//!
//! # Servers
//! [`servers`] finds a server for a backend's tests: the URL in
//! `SELFRAG_TEST_{POSTGRES,REDIS,QDRANT}_URL`, else a container when a Docker
//! engine answers, else (Postgres, Redis) a private server started from the
//! machine's binaries and shared by the test process, else a loud `SKIPPED`
//! line and `None`. `SELFRAG_TEST_REQUIRE=postgres,redis` turns a skip into a
//! panic.
//!
//! # Faults
//! Fault tests own their servers: [`servers::PrivatePostgres`] and
//! [`servers::PrivateRedis`] start from the machine's binaries in a
//! temporary directory and can be crashed (SIGKILL), stopped and restarted
//! on the same port and data. [`relay::Relay`] sits between a client and a
//! server and black-holes, refuses or cuts connections on demand.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use selfrag_core::{
    IndexSpec, ManualClock, MemoryStore, RateLimitPolicy, RateLimiter, SessionLimits, SessionStore, UserStore,
    VectorIndex,
};

#[macro_use]
mod util;
pub mod certs;
#[cfg(unix)]
pub mod cluster;
pub mod data;
mod macros;
pub mod memory;
pub mod observe;
#[cfg(unix)]
mod private;
pub mod ratelimit;
pub mod relay;
pub mod servers;
pub mod session;
pub mod vector;

#[doc(hidden)]
pub use macros::__defined_checks;
pub use relay::Relay;
pub use servers::TestServer;

/// The outcome of one check: `Err` says what was expected and what happened.
pub type CheckResult = Result<(), String>;

/// Keeps whatever a fixture needs alive (a container, a temporary directory)
/// until the check is done; `None` when nothing needs keeping.
pub type Guard = Option<Box<dyn Any + Send + Sync>>;

/// How long one stamped check may run before it fails as hung.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// A source of time for checks: moves the backend's clock forward.
#[async_trait]
pub trait TestClock: fmt::Debug + Send + Sync {
    /// Lets `by` pass on the backend's clock.
    async fn advance(&self, by: Duration);
}

/// The clock of a real server: [`TestClock::advance`] sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

#[async_trait]
impl TestClock for RealClock {
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

/// A [`ManualClock`] shared with an in-process backend:
/// [`TestClock::advance`] moves it instantly.
#[derive(Debug, Clone)]
pub struct ManualTestClock(pub ManualClock);

#[async_trait]
impl TestClock for ManualTestClock {
    async fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

fn boxed_guard(guard: impl Any + Send + Sync) -> Guard {
    Some(Box::new(guard))
}

struct GuardDebug<'a>(&'a Guard);

impl fmt::Debug for GuardDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// What the [`memory`] suite runs against.
pub struct MemoryFixture {
    /// The store under test.
    pub store: Arc<dyn MemoryStore>,
    /// The users of that store (deleting one must delete its logs).
    pub users: Arc<dyn UserStore>,
    /// Kept alive until the check ends.
    pub guard: Guard,
}

impl MemoryFixture {
    /// A fixture without a guard.
    pub fn new(store: Arc<dyn MemoryStore>, users: Arc<dyn UserStore>) -> Self {
        Self { store, users, guard: None }
    }

    /// Keeps `guard` (a container, a temp dir, or a [`Guard`]) alive with the
    /// fixture.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = boxed_guard(guard);
        self
    }
}

impl fmt::Debug for MemoryFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFixture")
            .field("store", &self.store)
            .field("users", &self.users)
            .field("guard", &GuardDebug(&self.guard))
            .finish()
    }
}

/// What the [`session`] suite runs against.
pub struct SessionFixture {
    /// The store under test.
    pub store: Arc<dyn SessionStore>,
    /// The users, for backends that track them (Postgres, local): then
    /// sessions are created for users made here, creating one for an unknown
    /// user must fail with `NotFound`, and deleting a user must delete its
    /// sessions. `None` (Redis): fresh [`selfrag_core::UserId`]s are used.
    pub users: Option<Arc<dyn UserStore>>,
    /// The backend's clock.
    pub clock: Arc<dyn TestClock>,
    /// Makes a store on the same data (same users) as `store` with other
    /// [`SessionLimits`], for the checks of the per-user cap. `None` fails
    /// those checks: every backend must take limits.
    pub limited: Option<MakeSessionStore>,
    /// Kept alive until the check ends.
    pub guard: Guard,
}

/// Makes a session store with the given limits (see
/// [`SessionFixture::limited`]).
pub type MakeSessionStore = Box<dyn Fn(SessionLimits) -> Arc<dyn SessionStore> + Send + Sync>;

impl SessionFixture {
    /// A fixture without a guard or limited stores.
    pub fn new(store: Arc<dyn SessionStore>, users: Option<Arc<dyn UserStore>>, clock: Arc<dyn TestClock>) -> Self {
        Self { store, users, clock, limited: None, guard: None }
    }

    /// Sets [`SessionFixture::limited`].
    pub fn with_limits(
        mut self,
        make: impl Fn(SessionLimits) -> Arc<dyn SessionStore> + Send + Sync + 'static,
    ) -> Self {
        self.limited = Some(Box::new(make));
        self
    }

    /// Keeps `guard` alive with the fixture.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = boxed_guard(guard);
        self
    }
}

impl fmt::Debug for SessionFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFixture")
            .field("store", &self.store)
            .field("users", &self.users)
            .field("clock", &self.clock)
            .field("limited", &self.limited.is_some())
            .field("guard", &GuardDebug(&self.guard))
            .finish()
    }
}

/// Makes a rate limiter enforcing a policy.
pub type MakeRateLimiter = Box<dyn Fn(RateLimitPolicy) -> Arc<dyn RateLimiter> + Send + Sync>;

/// What the [`ratelimit`] suite runs against.
pub struct RateLimitFixture {
    /// Makes a limiter for a policy. Limiters made by one fixture may share
    /// their storage: checks use fresh keys.
    pub make: MakeRateLimiter,
    /// The backend's clock (the one the limiter reads).
    pub clock: Arc<dyn TestClock>,
    /// Kept alive until the check ends.
    pub guard: Guard,
}

impl RateLimitFixture {
    /// A fixture without a guard.
    pub fn new(
        make: impl Fn(RateLimitPolicy) -> Arc<dyn RateLimiter> + Send + Sync + 'static,
        clock: Arc<dyn TestClock>,
    ) -> Self {
        Self { make: Box::new(make), clock, guard: None }
    }

    /// Keeps `guard` alive with the fixture.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = boxed_guard(guard);
        self
    }
}

impl fmt::Debug for RateLimitFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFixture")
            .field("clock", &self.clock)
            .field("guard", &GuardDebug(&self.guard))
            .finish_non_exhaustive()
    }
}

/// Makes a fresh, empty vector index of a spec.
pub type MakeVectorIndex =
    Box<dyn Fn(IndexSpec) -> BoxFuture<'static, selfrag_core::Result<Arc<dyn VectorIndex>>> + Send + Sync>;

/// What the [`vector`] suite runs against.
pub struct VectorFixture {
    /// Makes a fresh, empty index (e.g. a new collection) of a spec. A check
    /// may make several, with different specs.
    pub make: MakeVectorIndex,
    /// Kept alive until the check ends.
    pub guard: Guard,
}

impl VectorFixture {
    /// A fixture without a guard.
    pub fn new(
        make: impl Fn(IndexSpec) -> BoxFuture<'static, selfrag_core::Result<Arc<dyn VectorIndex>>> + Send + Sync + 'static,
    ) -> Self {
        Self { make: Box::new(make), guard: None }
    }

    /// Keeps `guard` alive with the fixture.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = boxed_guard(guard);
        self
    }
}

impl fmt::Debug for VectorFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorFixture").field("guard", &GuardDebug(&self.guard)).finish_non_exhaustive()
    }
}

/// A check as a function pointer, so that suites can be listed and run.
pub type CheckFn<F> = for<'a> fn(&'a F) -> BoxFuture<'a, CheckResult>;

/// One named check of a suite over fixture type `F`.
pub struct Check<F> {
    /// The check's name (its function's name).
    pub name: &'static str,
    /// Runs the check.
    pub run: CheckFn<F>,
}

impl<F> Clone for Check<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F> Copy for Check<F> {}

impl<F> fmt::Debug for Check<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The outcome of [`run_suite`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuiteReport {
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with their messages.
    pub failed: Vec<(&'static str, String)>,
    /// Checks skipped because the fixture fn returned `None`.
    pub skipped: Vec<&'static str>,
}

impl SuiteReport {
    /// Whether no check failed.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }

    /// The names of the failed checks.
    pub fn failed_names(&self) -> Vec<&'static str> {
        self.failed.iter().map(|(n, _)| *n).collect()
    }

    /// Whether the check `name` failed.
    pub fn failed(&self, name: &str) -> bool {
        self.failed.iter().any(|(n, _)| *n == name)
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} passed, {} failed, {} skipped", self.passed.len(), self.failed.len(), self.skipped.len())?;
        for (name, msg) in &self.failed {
            writeln!(f, "  FAILED {name}: {msg}")?;
        }
        Ok(())
    }
}

/// Runs every check of `checks`, each on a fresh fixture from `fixture`,
/// concurrently, each under [`CHECK_TIMEOUT`]; a panicking check counts as
/// failed.
pub async fn run_suite<F, Fut>(checks: Vec<Check<F>>, fixture: impl Fn() -> Fut) -> SuiteReport
where
    F: Send + Sync + 'static,
    Fut: Future<Output = Option<F>>,
{
    let mut tasks = Vec::new();
    let mut report = SuiteReport::default();
    for check in checks {
        let Some(f) = fixture().await else {
            report.skipped.push(check.name);
            continue;
        };
        // A task per check: time-based checks sleep concurrently, and a
        // panic is caught by the join handle instead of ending the run.
        let task = tokio::spawn(async move {
            match tokio::time::timeout(CHECK_TIMEOUT, (check.run)(&f)).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {CHECK_TIMEOUT:?}")),
            }
        });
        tasks.push((check.name, task));
    }
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => report.passed.push(name),
            Ok(Err(msg)) => report.failed.push((name, msg)),
            Err(e) => report.failed.push((name, format!("panicked: {e}"))),
        }
    }
    report
}

/// What [`__run_stamped`] did with a check (a failure panics).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampedOutcome {
    /// Listed in the backend's skip list: no fixture was made.
    Skipped,
    /// The fixture fn returned `None` (no server).
    NoFixture,
    /// The check ran and passed.
    Passed,
}

/// Runs one stamped check: used by the stamping macros.
///
/// # Panics
/// When the check fails (that is the test failing).
#[doc(hidden)]
pub fn __run_stamped<F, Fut>(
    suite: &'static str,
    name: &'static str,
    skip: &[&str],
    checks: Vec<Check<F>>,
    fixture: impl FnOnce() -> Fut,
) -> StampedOutcome
where
    Fut: Future<Output = Option<F>>,
{
    if skip.contains(&name) {
        // Not silent: a backend's skip list shows up in the test output,
        // also without `--nocapture` (direct writes to stderr are not
        // captured by the test harness).
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED {suite}::{name}: listed in the backend's skip list");
        return StampedOutcome::Skipped;
    }
    let check =
        checks.into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check `{name}` in the {suite} suite"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a Tokio runtime");
    let result = runtime.block_on(async move {
        let Some(f) = fixture().await else {
            return Ok(StampedOutcome::NoFixture);
        };
        let r = match tokio::time::timeout(CHECK_TIMEOUT, (check.run)(&f)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {CHECK_TIMEOUT:?}")),
        };
        drop(f);
        r.map(|()| StampedOutcome::Passed)
    });
    match result {
        Ok(outcome) => outcome,
        Err(msg) => panic!("conformance check {suite}::{name} failed: {msg}"),
    }
}
