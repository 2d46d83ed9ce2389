//! Proof that the suites can fail: each deliberately broken wrapper of a
//! local reference backend is run through its whole suite, and the checks
//! that must catch the bug are named. A suite that passed a broken backend
//! would be worthless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use selfrag_core::local::{LocalRateLimiter, LocalStore, LocalVectorIndex};
use selfrag_core::{
    Chunk, ChunkId, ChunkPage, ChunkRecord, Distance, Filter, IndexSpec, ManualClock, MemoryLog, MemoryLogId,
    MemoryPage, MemoryQuery, MemoryStore, NewMemoryLog, NewSession, RateLimitDecision, RateLimitKey, RateLimitPolicy,
    RateLimiter, Result, ScoredChunk, ScrollCursor, SearchRequest, Session, SessionId, SessionLimits, SessionStore,
    Tenant, UserId, VectorIndex,
};
use selfrag_testkit::vector::SCORE_TOLERANCE;
use selfrag_testkit::{
    memory, ratelimit, run_suite, session, vector, ManualTestClock, MemoryFixture, RateLimitFixture, SessionFixture,
    SuiteReport, VectorFixture,
};
use serde_json::{Map, Value};

/// Asserts that the suite failed, and that each of `expected` is among the
/// failed checks.
fn assert_caught(bug: &str, report: &SuiteReport, expected: &[&str]) {
    assert!(!report.is_success(), "{bug}: the whole suite passed a broken backend");
    for name in expected {
        assert!(report.failed(name), "{bug}: check `{name}` did not catch it; report:\n{report}");
    }
    eprintln!("{bug}: caught by {:?}", report.failed_names());
}

// ---------------------------------------------------------------- memory --

/// How a broken memory store misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MemoryBug {
    /// `get` ignores the user: any user reads any log by id.
    LeaksAcrossUsers,
    /// `append_batch` appends one by one and stops at the first error,
    /// leaving the earlier logs stored.
    BatchNotAtomic,
    /// `query` drops `since` and `until`.
    IgnoresTimeRange,
    /// `query` ignores the cursor: every page is the first.
    IgnoresCursor,
    /// Pages by offset (the cursor stands for a row count), so appends
    /// between pages shift them.
    OffsetPaging,
    /// `delete` ignores the user: any user deletes any log by id.
    DeleteIgnoresUser,
    /// `purge_user_logs` ignores `max_rows` and deletes everything at once.
    PurgeUnbounded,
}

#[derive(Debug)]
struct BrokenMemory {
    inner: LocalStore,
    bug: MemoryBug,
    owners: Mutex<HashMap<MemoryLogId, UserId>>,
    offsets: Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl MemoryStore for BrokenMemory {
    async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog> {
        let stored = self.inner.append(user, log).await?;
        self.owners.lock().unwrap().insert(stored.id, user);
        Ok(stored)
    }

    async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>> {
        if self.bug == MemoryBug::BatchNotAtomic {
            let mut out = Vec::new();
            for log in logs {
                out.push(self.append(user, log).await?);
            }
            return Ok(out);
        }
        let stored = self.inner.append_batch(user, logs).await?;
        self.owners.lock().unwrap().extend(stored.iter().map(|l| (l.id, user)));
        Ok(stored)
    }

    async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>> {
        if self.bug == MemoryBug::LeaksAcrossUsers {
            let owner = self.owners.lock().unwrap().get(&id).copied();
            if let Some(owner) = owner {
                return MemoryStore::get(&self.inner, owner, id).await;
            }
        }
        MemoryStore::get(&self.inner, user, id).await
    }

    async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage> {
        match self.bug {
            MemoryBug::IgnoresTimeRange => {
                let q = MemoryQuery { since: None, until: None, ..query.clone() };
                self.inner.query(user, &q).await
            }
            MemoryBug::IgnoresCursor => {
                let q = MemoryQuery { after: None, ..query.clone() };
                self.inner.query(user, &q).await
            }
            MemoryBug::OffsetPaging => {
                query.validate()?;
                let limit = query.effective_limit() as usize;
                let offset = match &query.after {
                    Some(c) => self.offsets.lock().unwrap().get(&c.to_string()).copied().unwrap_or(0),
                    None => 0,
                };
                let all = MemoryQuery { after: None, limit: Some(MemoryQuery::MAX_LIMIT), ..query.clone() };
                let mut logs = self.inner.query(user, &all).await?.logs;
                let more = logs.len() > offset + limit;
                logs = logs.into_iter().skip(offset).take(limit).collect();
                let next = if more { logs.last().map(MemoryLog::cursor) } else { None };
                if let Some(c) = &next {
                    self.offsets.lock().unwrap().insert(c.to_string(), offset + limit);
                }
                Ok(MemoryPage { logs, next })
            }
            _ => self.inner.query(user, query).await,
        }
    }

    async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool> {
        if self.bug == MemoryBug::DeleteIgnoresUser {
            let owner = self.owners.lock().unwrap().get(&id).copied();
            if let Some(owner) = owner {
                return self.inner.delete(owner, id).await;
            }
        }
        self.inner.delete(user, id).await
    }

    async fn purge_user_logs(&self, user: UserId, max_rows: u32) -> Result<u64> {
        if self.bug == MemoryBug::PurgeUnbounded {
            let mut total = 0;
            loop {
                let n = self.inner.purge_user_logs(user, max_rows).await?;
                total += n;
                if n == 0 {
                    return Ok(total);
                }
            }
        }
        self.inner.purge_user_logs(user, max_rows).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_unbounded_purge_is_caught() {
    let report = memory_report(MemoryBug::PurgeUnbounded).await;
    assert_caught("memory purge ignores max_rows", &report, &["purge_user_logs_is_bounded_and_scoped"]);
}

async fn memory_report(bug: MemoryBug) -> SuiteReport {
    run_suite(memory::checks(), || async move {
        let inner = LocalStore::with_clock(Arc::new(ManualClock::starting_now()));
        let store = BrokenMemory { inner: inner.clone(), bug, owners: Mutex::default(), offsets: Mutex::default() };
        Some(MemoryFixture::new(Arc::new(store), Arc::new(inner)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_leaking_across_users_is_caught() {
    let report = memory_report(MemoryBug::LeaksAcrossUsers).await;
    assert_caught("memory get ignores the user", &report, &["user_isolation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_delete_ignoring_the_user_is_caught() {
    let report = memory_report(MemoryBug::DeleteIgnoresUser).await;
    assert_caught("memory delete ignores the user", &report, &["user_isolation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_batch_that_is_not_all_or_nothing_is_caught() {
    let report = memory_report(MemoryBug::BatchNotAtomic).await;
    assert_caught("memory batch not atomic", &report, &["batch_is_all_or_nothing", "bad_batches_write_nothing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_query_ignoring_the_time_range_is_caught() {
    let report = memory_report(MemoryBug::IgnoresTimeRange).await;
    assert_caught("memory query ignores since/until", &report, &["time_range_filters", "filters_match_reference"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_query_ignoring_the_cursor_is_caught() {
    let report = memory_report(MemoryBug::IgnoresCursor).await;
    assert_caught(
        "memory query ignores the cursor",
        &report,
        &["pagination_has_no_duplicates_or_gaps", "pagination_under_concurrent_appends", "time_range_filters"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_offset_paging_is_caught() {
    let report = memory_report(MemoryBug::OffsetPaging).await;
    assert_caught("memory pages by offset", &report, &["pagination_under_concurrent_appends"]);
    // Without concurrent writes, offset paging looks right: only the
    // concurrency check can tell.
    assert!(!report.failed("pagination_has_no_duplicates_or_gaps"), "{report}");
}

// -------------------------------------------------------------- sessions --

#[derive(Debug, Clone, Copy, PartialEq)]
enum SessionBug {
    /// `get` hands out sessions past their expiry.
    ForgetsExpiry,
    /// `touch` marks nothing: the expiry does not slide.
    TouchDoesNotSlide,
    /// `get` ignores the user: any user reads any live session by id.
    LeaksAcrossUsers,
    /// `create` with a chosen id that the user's live session already holds
    /// is `Conflict` even when it is the same session: a retry of a create
    /// that committed looks like a clash (issue 12, item 3).
    RetryIsConflict,
    /// The stores made with limits ignore them (default: 100, evicting).
    IgnoresLimits,
    /// `revoke_all` ends only what one `list` returns (the newest 1,000).
    RevokeAllOneList,
}

#[derive(Debug)]
struct BrokenSessions {
    inner: LocalStore,
    bug: SessionBug,
    /// Every session ever handed out and not revoked, as last seen (shared
    /// by the stores of one fixture).
    seen: Arc<Mutex<HashMap<SessionId, Session>>>,
}

impl BrokenSessions {
    fn remember(&self, s: &Option<Session>) {
        if let Some(s) = s {
            self.seen.lock().unwrap().insert(s.id, s.clone());
        }
    }
}

#[async_trait]
impl SessionStore for BrokenSessions {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        if let Some(id) = session.id().filter(|_| self.bug == SessionBug::RetryIsConflict) {
            if SessionStore::get(&self.inner, user, id).await?.is_some() {
                return Err(NewSession::id_taken(id));
            }
        }
        let s = self.inner.create(user, session).await?;
        self.remember(&Some(s.clone()));
        Ok(s)
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        if self.bug == SessionBug::LeaksAcrossUsers {
            let owner = self.seen.lock().unwrap().get(&id).map(|s| s.user_id);
            return SessionStore::get(&self.inner, owner.unwrap_or(user), id).await;
        }
        let s = SessionStore::get(&self.inner, user, id).await?;
        if s.is_none() && self.bug == SessionBug::ForgetsExpiry {
            let stale = self.seen.lock().unwrap().get(&id).cloned();
            return Ok(stale.filter(|s| s.user_id == user));
        }
        Ok(s)
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        let s = match self.bug {
            SessionBug::TouchDoesNotSlide => SessionStore::get(&self.inner, user, id).await?,
            _ => self.inner.touch(user, id).await?,
        };
        self.remember(&s);
        Ok(s)
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
        let s = self.inner.set_data(user, id, data).await?;
        self.remember(&s);
        Ok(s)
    }

    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
        self.inner.list_recent(user, limit).await
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        let live = self.inner.revoke(user, id).await?;
        if live {
            self.seen.lock().unwrap().remove(&id);
        }
        Ok(live)
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        self.seen.lock().unwrap().retain(|_, s| s.user_id != user);
        if self.bug == SessionBug::RevokeAllOneList {
            let mut live = 0;
            for s in self.inner.list(user).await? {
                live += u64::from(self.inner.revoke(user, s.id).await?);
            }
            return Ok(live);
        }
        self.inner.revoke_all(user).await
    }
}

async fn session_report(bug: SessionBug) -> SuiteReport {
    run_suite(session::checks(), || async move {
        let clock = ManualClock::starting_now();
        let inner = LocalStore::with_clock(Arc::new(clock.clone()));
        let seen = Arc::new(Mutex::default());
        let store = BrokenSessions { inner: inner.clone(), bug, seen: seen.clone() };
        let users = Arc::new(inner.clone());
        Some(SessionFixture::new(Arc::new(store), Some(users), Arc::new(ManualTestClock(clock))).with_limits(
            move |limits| {
                let limits = if bug == SessionBug::IgnoresLimits { SessionLimits::default() } else { limits };
                let inner = inner.clone().with_session_limits(limits);
                Arc::new(BrokenSessions { inner, bug, seen: seen.clone() })
            },
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_forgetting_expiry_is_caught() {
    let report = session_report(SessionBug::ForgetsExpiry).await;
    assert_caught(
        "sessions returned past expiry",
        &report,
        &["expired_sessions_are_gone", "get_does_not_extend", "set_data_replaces_without_extending"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_leaking_across_users_is_caught() {
    let report = session_report(SessionBug::LeaksAcrossUsers).await;
    assert_caught("session get ignores the user", &report, &["user_isolation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_retry_answered_with_conflict_is_caught() {
    let report = session_report(SessionBug::RetryIsConflict).await;
    assert_caught("a retried create is a conflict", &report, &["retried_create_returns_the_stored_session"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_ignoring_its_limits_is_caught() {
    let report = session_report(SessionBug::IgnoresLimits).await;
    assert_caught(
        "the per-user cap is not kept",
        &report,
        &["cap_evicts_the_session_expiring_soonest", "cap_refuses_when_full"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_bounded_by_one_list_is_caught() {
    let report = session_report(SessionBug::RevokeAllOneList).await;
    assert_caught("revoke_all ends only one list's worth", &report, &["revoke_all_ends_many_sessions"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_touch_that_does_not_slide_is_caught() {
    let report = session_report(SessionBug::TouchDoesNotSlide).await;
    assert_caught("touch does not slide", &report, &["touch_slides_expiry"]);
}

// ----------------------------------------------------------- rate limits --

/// Checks each window separately, consuming in every window that allows,
/// even when another denies.
#[derive(Debug)]
struct ConsumesOnDenial {
    policy: RateLimitPolicy,
    per_window: Vec<LocalRateLimiter>,
}

#[async_trait]
impl RateLimiter for ConsumesOnDenial {
    fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision> {
        self.policy.check_cost(cost)?;
        let mut windows = Vec::new();
        let mut retry_after = None;
        for limiter in &self.per_window {
            let d = limiter.check(key, cost).await?;
            windows.extend(d.windows);
            retry_after = retry_after.max(d.retry_after);
        }
        let allowed = windows.iter().all(|w| w.allowed);
        Ok(RateLimitDecision { allowed, windows, retry_after: if allowed { None } else { retry_after } })
    }

    async fn reset(&self, key: &RateLimitKey) -> Result<()> {
        for l in &self.per_window {
            l.reset(key).await?;
        }
        Ok(())
    }

    async fn reset_user(&self, user: UserId) -> Result<u64> {
        let mut n = 0;
        for l in &self.per_window {
            n += l.reset_user(user).await?;
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LimiterBug {
    /// Turns every denial into an allowance.
    NeverDenies,
    /// Reports a quarter of the real `retry_after`.
    RetryAfterTooShort,
}

#[derive(Debug)]
struct BrokenLimiter {
    inner: LocalRateLimiter,
    bug: LimiterBug,
}

#[async_trait]
impl RateLimiter for BrokenLimiter {
    fn policy(&self) -> &RateLimitPolicy {
        self.inner.policy()
    }

    async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision> {
        let mut d = self.inner.check(key, cost).await?;
        match self.bug {
            LimiterBug::NeverDenies => {
                d.allowed = true;
                d.retry_after = None;
                for w in &mut d.windows {
                    w.allowed = true;
                }
            }
            LimiterBug::RetryAfterTooShort => d.retry_after = d.retry_after.map(|r| r / 4),
        }
        Ok(d)
    }

    async fn reset(&self, key: &RateLimitKey) -> Result<()> {
        self.inner.reset(key).await
    }

    async fn reset_user(&self, user: UserId) -> Result<u64> {
        self.inner.reset_user(user).await
    }
}

async fn limiter_report(
    make: impl Fn(RateLimitPolicy, ManualClock) -> Arc<dyn RateLimiter> + Send + Sync + Copy + 'static,
) -> SuiteReport {
    run_suite(ratelimit::checks(), || async move {
        let clock = ManualClock::starting_now();
        let shared = clock.clone();
        Some(RateLimitFixture::new(move |policy| make(policy, shared.clone()), Arc::new(ManualTestClock(clock))))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_consuming_on_denial_is_caught() {
    let report = limiter_report(|policy, clock| {
        let per_window = policy
            .windows()
            .iter()
            .map(|w| LocalRateLimiter::with_clock(RateLimitPolicy::new([*w]).unwrap(), Arc::new(clock.clone())))
            .collect();
        Arc::new(ConsumesOnDenial { policy, per_window })
    })
    .await;
    assert_caught(
        "limiter consumes on denial",
        &report,
        &[
            "denial_is_atomic_across_windows",
            "retry_after_is_the_longest_wait",
            "remaining_budget_is_reported",
            "concurrent_checks_respect_the_limit",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_that_never_denies_is_caught() {
    let report = limiter_report(|policy, clock| {
        Arc::new(BrokenLimiter {
            inner: LocalRateLimiter::with_clock(policy, Arc::new(clock)),
            bug: LimiterBug::NeverDenies,
        })
    })
    .await;
    assert_caught(
        "limiter never denies",
        &report,
        &["allows_up_to_the_limit", "costs_are_units", "concurrent_checks_respect_the_limit", "keys_are_isolated"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_with_a_short_retry_after_is_caught() {
    let report = limiter_report(|policy, clock| {
        Arc::new(BrokenLimiter {
            inner: LocalRateLimiter::with_clock(policy, Arc::new(clock)),
            bug: LimiterBug::RetryAfterTooShort,
        })
    })
    .await;
    assert_caught("retry_after too short", &report, &["retry_after_is_honest"]);
}

// --------------------------------------------------------------- vectors --

#[derive(Debug, Clone, Copy, PartialEq)]
enum VectorBug {
    /// `search` and `count` drop the filter.
    IgnoresFilter,
    /// Every call works on one shared tenant.
    LeaksAcrossTenants,
    /// Non-finite components are quietly stored as 0 instead of rejected.
    AcceptsNaN,
    /// Euclid and Manhattan hits carry the raw distance (lower is better)
    /// instead of its negation, as an engine's score would.
    RawDistances,
    /// `score_threshold` keeps `score > threshold` instead of `>=`.
    ExclusiveThreshold,
    /// `score_threshold` is loosened by half the score tolerance (e.g. a
    /// server's slack that is never filtered away): hits just below the
    /// threshold come back.
    LooseThreshold,
    /// The threshold is applied to the exact score, but the hits carry a
    /// score rounded down by 1e-4 (within the tolerance of the reference),
    /// as when a backend filters on one score and returns another.
    ThresholdOnAnotherScore,
}

#[derive(Debug)]
struct BrokenIndex {
    inner: LocalVectorIndex,
    bug: VectorBug,
    everyone: Tenant,
}

impl BrokenIndex {
    fn tenant<'a>(&'a self, t: &'a Tenant) -> &'a Tenant {
        if self.bug == VectorBug::LeaksAcrossTenants {
            &self.everyone
        } else {
            t
        }
    }
}

#[async_trait]
impl VectorIndex for BrokenIndex {
    fn spec(&self) -> &IndexSpec {
        self.inner.spec()
    }

    async fn upsert(&self, tenant: &Tenant, mut chunks: Vec<Chunk>) -> Result<()> {
        if self.bug == VectorBug::AcceptsNaN {
            for c in &mut chunks {
                for x in &mut c.vector {
                    if !x.is_finite() {
                        *x = 0.0;
                    }
                }
            }
        }
        self.inner.upsert(self.tenant(tenant), chunks).await
    }

    async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>> {
        if self.bug == VectorBug::IgnoresFilter {
            // Still rejects a malformed filter, but never applies one.
            if let Some(f) = &request.filter {
                f.validate()?;
            }
            let request = SearchRequest { filter: None, ..request.clone() };
            return self.inner.search(tenant, &request).await;
        }
        let mut hits = match (self.bug, request.score_threshold) {
            (VectorBug::LooseThreshold, Some(t)) => {
                let loose = SearchRequest { score_threshold: Some(t - SCORE_TOLERANCE / 2.0), ..request.clone() };
                self.inner.search(self.tenant(tenant), &loose).await?
            }
            _ => self.inner.search(self.tenant(tenant), request).await?,
        };
        match self.bug {
            VectorBug::RawDistances if matches!(self.spec().distance(), Distance::Euclid | Distance::Manhattan) => {
                for h in &mut hits {
                    h.score = -h.score;
                }
            }
            VectorBug::ExclusiveThreshold => {
                if let Some(t) = request.score_threshold {
                    hits.retain(|h| h.score > t);
                }
            }
            VectorBug::ThresholdOnAnotherScore => {
                for h in &mut hits {
                    h.score -= 1e-4;
                }
            }
            _ => {}
        }
        Ok(hits)
    }

    async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        self.inner.get(self.tenant(tenant), ids).await
    }

    async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>> {
        self.inner.document_chunks(self.tenant(tenant), document_id).await
    }

    async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()> {
        self.inner.delete(self.tenant(tenant), ids).await
    }

    async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()> {
        self.inner.delete_document(self.tenant(tenant), document_id).await
    }

    async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()> {
        self.inner.delete_by_filter(self.tenant(tenant), filter).await
    }

    async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64> {
        if self.bug == VectorBug::IgnoresFilter {
            if let Some(f) = filter {
                f.validate()?;
            }
            return self.inner.count(tenant, None).await;
        }
        self.inner.count(self.tenant(tenant), filter).await
    }

    async fn scroll(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        from: Option<ScrollCursor>,
        limit: usize,
    ) -> Result<ChunkPage> {
        self.inner.scroll(self.tenant(tenant), filter, from, limit).await
    }
}

async fn vector_report(bug: VectorBug) -> SuiteReport {
    run_suite(vector::checks(), || async move {
        Some(VectorFixture::new(move |spec| {
            Box::pin(async move {
                let index =
                    BrokenIndex { inner: LocalVectorIndex::new(spec), bug, everyone: Tenant::new("everyone").unwrap() };
                Ok(Arc::new(index) as Arc<dyn VectorIndex>)
            })
        }))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_ignoring_the_filter_is_caught() {
    let report = vector_report(VectorBug::IgnoresFilter).await;
    assert_caught("vector filter ignored", &report, &["filters_match_reference", "limit_caps_hits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_leaking_across_tenants_is_caught() {
    let report = vector_report(VectorBug::LeaksAcrossTenants).await;
    assert_caught(
        "vector tenants leak",
        &report,
        &["tenant_isolation", "filters_match_reference", "delete_by_filter_matches_reference"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_returning_raw_distances_is_caught() {
    let report = vector_report(VectorBug::RawDistances).await;
    assert_caught(
        "vector Euclid/Manhattan scores not negated",
        &report,
        &["scores_match_reference", "score_threshold_is_inclusive", "limit_caps_hits"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_with_an_exclusive_threshold_is_caught() {
    let report = vector_report(VectorBug::ExclusiveThreshold).await;
    // At exact scores (the reference's and the backend's), and at the
    // backend's own scores, ties included.
    assert_caught(
        "vector threshold exclusive",
        &report,
        &["score_threshold_is_inclusive", "score_threshold_filters_hits"],
    );
}

/// Tolerance decides nothing about the backend's own scores: a threshold
/// loosened by less than the score tolerance is still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_with_a_loose_threshold_is_caught() {
    let report = vector_report(VectorBug::LooseThreshold).await;
    assert_caught("vector threshold loosened within the tolerance", &report, &["score_threshold_filters_hits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_filtering_on_another_score_is_caught() {
    let report = vector_report(VectorBug::ThresholdOnAnotherScore).await;
    assert_caught("vector threshold applied to another score", &report, &["score_threshold_filters_hits"]);
    // The scores themselves are within the tolerance of the reference.
    assert!(!report.failed("scores_match_reference"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_index_accepting_nan_is_caught() {
    let report = vector_report(VectorBug::AcceptsNaN).await;
    assert_caught("vector NaN accepted", &report, &["bad_vectors_write_nothing"]);
}

/// The runner itself: a panicking check counts as a failure, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_suite_reports_panics_and_skips() {
    fn boom(_: &()) -> futures::future::BoxFuture<'_, selfrag_testkit::CheckResult> {
        Box::pin(async { panic!("boom") })
    }
    fn fine(_: &()) -> futures::future::BoxFuture<'_, selfrag_testkit::CheckResult> {
        Box::pin(async { Ok(()) })
    }
    let checks =
        vec![selfrag_testkit::Check { name: "boom", run: boom }, selfrag_testkit::Check { name: "fine", run: fine }];
    let report = run_suite(checks.clone(), || async { Some(()) }).await;
    assert_eq!(report.passed, vec!["fine"]);
    assert_eq!(report.failed_names(), vec!["boom"]);
    let skipped = run_suite(checks, || async { None::<()> }).await;
    assert_eq!(skipped.skipped, vec!["boom", "fine"]);
    assert!(skipped.is_success());
}
