use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::clock::{to_micros, Clock, SystemClock};
use crate::error::{Error, Result};
use crate::ids::{MemoryLogId, SessionId, UserId};
use crate::memory::{
    validate_batch, validate_purge_batch, MemoryLog, MemoryPage, MemoryQuery, MemoryStore, NewMemoryLog, UserStore,
};
use crate::observe::{system, OpMeta};
use crate::session::{validate_data, validate_list_limit, NewSession, OnLimit, Session, SessionLimits, SessionStore};

/// The span attributes of every call.
const OBS: OpMeta = OpMeta::new(system::LOCAL);

/// Users, memory logs and sessions in memory: implements [`UserStore`],
/// [`MemoryStore`] and [`SessionStore`] over one shared state, so deleting a
/// user deletes its logs and sessions, as the Postgres backend does.
///
/// Clones share the same data, as do stores made from it with
/// [`LocalStore::with_session_limits`].
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
    /// Outside `inner`: stores with other limits share the data.
    limits: SessionLimits,
}

#[derive(Debug)]
struct Inner {
    clock: Arc<dyn Clock>,
    // A std mutex: no critical section awaits, and each is short.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserId, UserData>,
    /// Owner and timestamp of every memory log id (ids are unique across
    /// users).
    log_owner: HashMap<MemoryLogId, (UserId, OffsetDateTime)>,
    /// Owner of every session id.
    session_owner: HashMap<SessionId, UserId>,
}

#[derive(Debug, Default)]
struct UserData {
    /// Logs by (timestamp, id): iterating backwards is newest first.
    logs: BTreeMap<(OffsetDateTime, MemoryLogId), MemoryLog>,
    sessions: HashMap<SessionId, Session>,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { inner: Arc::new(Inner { clock, state: Mutex::new(State::default()) }), limits: SessionLimits::default() }
    }

    /// This store (same data) with `limits` on each user's live sessions
    /// (default [`SessionLimits::default`]: 100, evicting the oldest).
    pub fn with_session_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits on each user's live sessions.
    pub fn session_limits(&self) -> SessionLimits {
        self.limits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later calls would misread, so poisoning is ignored.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> OffsetDateTime {
        to_micros(self.inner.clock.now())
    }
}

impl State {
    fn user_mut(&mut self, user: UserId) -> Result<&mut UserData> {
        self.users.get_mut(&user).ok_or_else(|| Error::user_not_found(user))
    }

    fn live_session(&mut self, user: UserId, id: SessionId, now: OffsetDateTime) -> Option<&mut Session> {
        let data = self.users.get_mut(&user)?;
        if data.sessions.get(&id)?.is_expired_at(now) {
            data.sessions.remove(&id);
            self.session_owner.remove(&id);
            return None;
        }
        data.sessions.get_mut(&id)
    }
}

/// Whether `a` and `b` are the same record, as Postgres compares the
/// columns: JSON numbers by value (`1` equals `1.0`), everything else
/// exactly.
fn same_log(a: &MemoryLog, b: &MemoryLog) -> bool {
    a.id == b.id
        && a.user_id == b.user_id
        && a.timestamp == b.timestamp
        && a.kind == b.kind
        && a.content == b.content
        && a.metadata.len() == b.metadata.len()
        && a.metadata.iter().all(|(k, v)| b.metadata.get(k).is_some_and(|w| json_equal(v, w)))
}

/// `jsonb` equality: numbers by exact value, arrays in order, objects by
/// key.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => crate::memory::json_contains(a, b),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_equal(v, w)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[async_trait]
impl UserStore for LocalStore {
    async fn create_user(&self) -> Result<UserId> {
        OBS.run("users", "create_user", async move {
            let id = UserId::new();
            self.state().users.insert(id, UserData::default());
            Ok(id)
        })
        .await
    }

    async fn ensure_user(&self, id: UserId) -> Result<bool> {
        OBS.run("users", "ensure_user", async move {
            let mut state = self.state();
            if state.users.contains_key(&id) {
                return Ok(false);
            }
            state.users.insert(id, UserData::default());
            Ok(true)
        })
        .await
    }

    async fn user_exists(&self, id: UserId) -> Result<bool> {
        OBS.run("users", "user_exists", async move { Ok(self.state().users.contains_key(&id)) }).await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool> {
        OBS.run("users", "delete_user", async move {
            let mut state = self.state();
            let Some(data) = state.users.remove(&id) else {
                return Ok(false);
            };
            for log_id in data.logs.values().map(|l| l.id) {
                state.log_owner.remove(&log_id);
            }
            for session_id in data.sessions.keys() {
                state.session_owner.remove(session_id);
            }
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl MemoryStore for LocalStore {
    async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog> {
        OBS.run("memory_logs", "append", async move {
            let mut out = self.append_batch(user, vec![log]).await?;
            Ok(out.remove(0))
        })
        .await
    }

    async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>> {
        OBS.run("memory_logs", "append_batch", async move {
            validate_batch(&logs)?;
            let mut state = self.state();
            // Check everything before writing anything: all or nothing.
            if !state.users.contains_key(&user) {
                return Err(Error::user_not_found(user));
            }
            // A taken id is a retry of this very write (the same record for the
            // same user: skipped) or a conflict (nothing written).
            let stored: Vec<MemoryLog> = logs.into_iter().map(|l| l.into_log(user)).collect();
            let mut fresh = Vec::with_capacity(stored.len());
            for log in &stored {
                match state.log_owner.get(&log.id) {
                    None => fresh.push(log),
                    Some(&(owner, ts)) => {
                        let existing = state.users.get(&owner).and_then(|d| d.logs.get(&(ts, log.id)));
                        if owner != user || !existing.is_some_and(|e| same_log(e, log)) {
                            return Err(Error::Conflict { what: "memory log", id: log.id.to_string() });
                        }
                    }
                }
            }
            for log in &fresh {
                state.log_owner.insert(log.id, (user, log.timestamp));
            }
            let data = state.user_mut(user)?;
            for log in fresh {
                data.logs.insert((log.timestamp, log.id), log.clone());
            }
            Ok(stored)
        })
        .await
    }

    async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>> {
        OBS.run("memory_logs", "get", async move {
            let state = self.state();
            let Some(&(owner, ts)) = state.log_owner.get(&id) else {
                return Ok(None);
            };
            if owner != user {
                return Ok(None);
            }
            Ok(state.users.get(&user).and_then(|d| d.logs.get(&(ts, id)).cloned()))
        })
        .await
    }

    async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage> {
        OBS.run("memory_logs", "query", async move {
            query.validate()?;
            let limit = query.effective_limit() as usize;
            let state = self.state();
            let Some(data) = state.users.get(&user) else {
                return Ok(MemoryPage { logs: Vec::new(), next: None });
            };
            // Fetch one extra row to know whether another page exists.
            let logs = data.logs.values().rev().filter(|l| query.matches(l)).take(limit + 1).cloned().collect();
            Ok(MemoryPage::from_overfetch(logs, query.effective_limit()))
        })
        .await
    }

    async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool> {
        OBS.run("memory_logs", "delete", async move {
            let mut state = self.state();
            let Some(&(owner, ts)) = state.log_owner.get(&id) else {
                return Ok(false);
            };
            if owner != user {
                return Ok(false);
            }
            state.log_owner.remove(&id);
            Ok(state.user_mut(user)?.logs.remove(&(ts, id)).is_some())
        })
        .await
    }

    async fn purge_user_logs(&self, user: UserId, max_rows: u32) -> Result<u64> {
        OBS.run("memory_logs", "purge_user_logs", async move {
            validate_purge_batch(max_rows)?;
            let mut state = self.state();
            let Some(data) = state.users.get_mut(&user) else {
                return Ok(0);
            };
            // Oldest first, one batch per lock acquisition.
            let doomed: Vec<(OffsetDateTime, MemoryLogId)> =
                data.logs.keys().take(max_rows as usize).copied().collect();
            for key in &doomed {
                data.logs.remove(key);
            }
            for (_, id) in &doomed {
                state.log_owner.remove(id);
            }
            Ok(doomed.len() as u64)
        })
        .await
    }
}

/// Sessions `revoke_all` deletes per lock acquisition, so that other calls
/// get the lock in between (as the server backends delete in batches).
const REVOKE_BATCH: usize = 1_000;

impl State {
    /// Drops `user`'s expired sessions: they never count against the cap,
    /// and this keeps a user's map as small as the cap plus what expired
    /// since the last create.
    fn purge_expired(&mut self, user: UserId, now: OffsetDateTime) {
        let Some(data) = self.users.get_mut(&user) else { return };
        let expired: Vec<SessionId> = data.sessions.values().filter(|s| s.is_expired_at(now)).map(|s| s.id).collect();
        for id in expired {
            data.sessions.remove(&id);
            self.session_owner.remove(&id);
        }
    }

    /// Ends the `n` live sessions of `user` that expire soonest (ties: the
    /// smallest id).
    fn evict_soonest(&mut self, user: UserId, n: usize) {
        let Some(data) = self.users.get_mut(&user) else { return };
        let mut by_expiry: Vec<(OffsetDateTime, SessionId)> =
            data.sessions.values().map(|s| (s.expires_at, s.id)).collect();
        by_expiry.sort_unstable();
        for (_, id) in by_expiry.into_iter().take(n) {
            data.sessions.remove(&id);
            self.session_owner.remove(&id);
        }
    }
}

#[async_trait]
impl SessionStore for LocalStore {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        OBS.run("sessions", "create", async move {
            let now = self.now();
            let mut state = self.state();
            if !state.users.contains_key(&user) {
                return Err(Error::user_not_found(user));
            }
            // A chosen id that is live is this very create retried (return what
            // is stored, evict nothing) or a conflict. An expired one is gone
            // (`live_session` drops it), so the id is free again.
            if let Some(id) = session.id() {
                if let Some(owner) = state.session_owner.get(&id).copied() {
                    if let Some(stored) = state.live_session(owner, id, now) {
                        return if session.is_created_as(user, stored) {
                            Ok(stored.clone())
                        } else {
                            Err(NewSession::id_taken(id))
                        };
                    }
                }
            }
            state.purge_expired(user, now);
            let live = state.user_mut(user)?.sessions.len() as u64;
            let evict = match self.limits.on_limit() {
                OnLimit::Refuse if live >= u64::from(self.limits.max_per_user()) => {
                    return Err(self.limits.reached(user))
                }
                OnLimit::Refuse => 0,
                OnLimit::EvictOldest => self.limits.evictions_for(live),
            };
            if evict > 0 {
                state.evict_soonest(user, usize::try_from(evict).unwrap_or(usize::MAX));
            }
            let id = match session.id() {
                Some(id) => id,
                None => {
                    let mut id = SessionId::generate();
                    while state.session_owner.contains_key(&id) {
                        id = SessionId::generate();
                    }
                    id
                }
            };
            let session = session.into_session(id, user, now);
            state.session_owner.insert(id, user);
            state.user_mut(user)?.sessions.insert(id, session.clone());
            Ok(session)
        })
        .await
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        OBS.run("sessions", "get", async move {
            let now = self.now();
            Ok(self.state().live_session(user, id, now).map(|s| s.clone()))
        })
        .await
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        OBS.run("sessions", "touch", async move {
            let now = self.now();
            let mut state = self.state();
            Ok(state.live_session(user, id, now).map(|s| {
                *s = s.clone().touched_at(now);
                s.clone()
            }))
        })
        .await
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>> {
        OBS.run("sessions", "set_data", async move {
            validate_data(&data)?;
            let now = self.now();
            let mut state = self.state();
            Ok(state.live_session(user, id, now).map(|s| {
                s.data = data;
                s.clone()
            }))
        })
        .await
    }

    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
        OBS.run("sessions", "list_recent", async move {
            validate_list_limit(limit)?;
            let limit = limit as usize;
            let now = self.now();
            let state = self.state();
            let Some(data) = state.users.get(&user) else {
                return Ok(Vec::new());
            };
            let newest_first = |s: &&Session| std::cmp::Reverse((s.created_at, s.id));
            let mut live: Vec<&Session> = data.sessions.values().filter(|s| !s.is_expired_at(now)).collect();
            // Only the `limit` newest need sorting.
            if live.len() > limit {
                live.select_nth_unstable_by_key(limit, newest_first);
                live.truncate(limit);
            }
            live.sort_unstable_by_key(newest_first);
            Ok(live.into_iter().cloned().collect())
        })
        .await
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        OBS.run("sessions", "revoke", async move {
            let now = self.now();
            let mut state = self.state();
            let live = state.live_session(user, id, now).is_some();
            if live {
                state.session_owner.remove(&id);
                state.user_mut(user)?.sessions.remove(&id);
            }
            Ok(live)
        })
        .await
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        OBS.run("sessions", "revoke_all", async move {
            let mut live = 0;
            // Bounded: sessions created while this runs may be left (see the
            // trait), so creates racing it cannot keep it going for ever.
            let mut rounds_left: Option<usize> = None;
            loop {
                let now = self.now();
                let mut state = self.state();
                let Some(data) = state.users.get_mut(&user) else {
                    return Ok(live);
                };
                let rounds = rounds_left.get_or_insert(data.sessions.len() / REVOKE_BATCH + 2);
                let batch: Vec<Session> = {
                    let ids: Vec<SessionId> = data.sessions.keys().take(REVOKE_BATCH).copied().collect();
                    ids.iter().filter_map(|id| data.sessions.remove(id)).collect()
                };
                live += batch.iter().filter(|s| !s.is_expired_at(now)).count() as u64;
                for s in &batch {
                    state.session_owner.remove(&s.id);
                }
                *rounds -= 1;
                if batch.len() < REVOKE_BATCH || *rounds == 0 {
                    return Ok(live);
                }
            }
        })
        .await
    }
}
