//! [`RedisSessionStore`]: sessions as Redis hashes that Redis itself expires.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis;
use selfrag_core::session::{validate_data, validate_list_limit};
use selfrag_core::{Error, NewSession, OnLimit, Result, Session, SessionId, SessionLimits, SessionStore, UserId};
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use crate::client::{
    bad_reply, Handle, SESSION_CREATE, SESSION_LIST, SESSION_REVOKE, SESSION_REVOKE_ALL, SESSION_SET_DATA,
    SESSION_TOUCH,
};
use crate::cluster::RedisConnector;
use crate::config::{RedisConfig, RedisPool};
use crate::BACKEND;

/// How many fresh ids `create` draws before giving up. With 122 random bits a
/// second draw already never happens; the loop exists so that a collision
/// can never overwrite a session.
const CREATE_ATTEMPTS: usize = 4;

/// Dead index members (sessions gone without their index entries being
/// removed: expired past the bounded prune, or evicted under memory
/// pressure) one `list_recent` script call steps over before it returns and
/// is called again.
const LIST_DEAD_BUDGET: u32 = 500;

/// A [`SessionStore`] in Redis. See the crate docs for the key layout and the
/// guarantees.
///
/// Redis does not track users: `create` accepts any [`UserId`] (it never
/// returns [`Error::NotFound`]); delete a user's sessions with
/// [`SessionStore::revoke_all`] when the user goes away.
///
/// Each user holds at most [`SessionLimits::max_per_user`] live sessions
/// (default 100, evicting the soonest to expire; see
/// [`RedisSessionStore::with_limits`]), enforced inside the create script,
/// so concurrent creates cannot overshoot it. `list_recent` reads at most
/// `limit` sessions per script call and `revoke_all` deletes
/// [`RedisSessionStore::REVOKE_ALL_BATCH`] per call, so no call holds the server for long.
///
/// Session ids are scoped to their user (every key carries the user's hash
/// tag, and Redis Cluster cannot check a global registry in the same atomic
/// script): a chosen id ([`NewSession::with_id`]) that another user also
/// holds makes an independent session of this user, never a
/// [`Error::Conflict`]. Every read is by (user, id), so it can never reach
/// the other user's session.
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    handle: Handle,
    limits: SessionLimits,
}

impl RedisSessionStore {
    /// Sessions one `revoke_all` script call deletes. At about 8 µs of
    /// server time per session (read, delete, two index removals), a batch
    /// holds Redis for a few milliseconds, whatever the user's total.
    pub const REVOKE_ALL_BATCH: u32 = 500;

    /// A store over `connector` (a [`RedisPool`], a `deadpool_redis::Pool`
    /// or a [`RedisClusterClient`](crate::RedisClusterClient)), with the
    /// default key prefix (`selfrag:`) and response timeout (2 s).
    pub fn new(connector: impl Into<RedisConnector>) -> Self {
        Self { handle: Handle::new(connector.into()), limits: SessionLimits::default() }
    }

    /// A store over `connector` with the prefix and timeouts of `config` (its
    /// URLs and pool size are the connector's business).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`].
    pub fn with_config(connector: impl Into<RedisConnector>, config: &RedisConfig) -> Result<Self> {
        Ok(Self { handle: Handle::with_config(connector.into(), config)?, limits: SessionLimits::default() })
    }

    /// A store with its own pool, or cluster client, built from `config`
    /// ([`RedisConfig::connector`]). Connects lazily.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::connector`].
    pub fn connect(config: &RedisConfig) -> Result<Self> {
        Self::with_config(config.connector()?, config)
    }

    /// Uses `prefix` for every key (see [`RedisConfig::key_prefix`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`key_prefix`).
    pub fn with_key_prefix(self, prefix: &str) -> Result<Self> {
        Ok(Self { handle: self.handle.with_prefix(prefix)?, limits: self.limits })
    }

    /// Fails calls whose reply takes longer than `timeout`.
    pub fn with_response_timeout(self, timeout: Duration) -> Self {
        Self { handle: self.handle.with_response_timeout(timeout), limits: self.limits }
    }

    /// This store (same connection and keys) with `limits` on each user's
    /// live sessions (default [`SessionLimits::default`]: 100, evicting the
    /// soonest to expire). [`SessionLimits::from_env`] reads them from
    /// `SELFRAG_SESSIONS_MAX_PER_USER` and `SELFRAG_SESSIONS_ON_LIMIT`.
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits on each user's live sessions.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        self.handle.prefix()
    }

    /// The pool, unless the store talks to a Redis Cluster: it dereferences
    /// to the `deadpool_redis::Pool`, and its `Debug` never shows the
    /// password.
    pub fn pool(&self) -> Option<&RedisPool> {
        self.handle.connector().pool()
    }

    /// What the store connects through.
    pub fn connector(&self) -> &RedisConnector {
        self.handle.connector()
    }

    /// The key of session `id` of `user`: `<prefix>{u:<user>}:s:<id>`, a hash
    /// with fields `created_ms`, `last_ms`, `ttl_ms` and `data`.
    pub fn session_key(&self, user: UserId, id: SessionId) -> String {
        let mut id_text = uuid::Uuid::encode_buffer();
        self.handle.user_key(user, &[":s:", id.as_uuid().hyphenated().encode_lower(&mut id_text)])
    }

    /// The key of `user`'s session index: `<prefix>{u:<user>}:sessions`, a
    /// sorted set of session ids scored by expiry (ms since the epoch).
    pub fn index_key(&self, user: UserId) -> String {
        self.handle.user_key(user, &[":sessions"])
    }

    /// The key of `user`'s created-at index:
    /// `<prefix>{u:<user>}:sessions:created`, a sorted set of the same
    /// session ids scored by creation time (ms since the epoch), which
    /// `list_recent` reads newest first.
    pub fn created_index_key(&self, user: UserId) -> String {
        self.handle.user_key(user, &[":sessions:created"])
    }

    fn session_key_stem(&self, user: UserId) -> String {
        self.handle.user_key(user, &[":s:"])
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        self.handle
            .obs()
            .run("sessions", "create", async move {
                let data = serde_json::to_string(session.data())
                    .map_err(|e| Error::backend(BACKEND, "encode session data", false, e))?;
                let ttl_ms = millis(session.ttl());
                let policy = match self.limits.on_limit() {
                    OnLimit::EvictOldest => "evict",
                    OnLimit::Refuse => "refuse",
                };
                for _ in 0..CREATE_ATTEMPTS {
                    let id = session.id().unwrap_or_else(SessionId::generate);
                    let mut inv = SESSION_CREATE.prepare_invoke();
                    inv.key(self.session_key(user, id))
                        .key(self.index_key(user))
                        .key(self.created_index_key(user))
                        .arg(id.to_string())
                        .arg(ttl_ms)
                        .arg(&data)
                        .arg(self.limits.max_per_user())
                        .arg(policy)
                        .arg(SessionLimits::MAX_EVICTIONS_PER_CREATE);
                    let reply: Vec<String> = self.handle.invoke(&inv, "create session").await?;
                    match reply.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                        ["created", now_ms, _evicted] => {
                            return Ok(session.into_session(id, user, from_millis(parse_ms("created", now_ms)?)?));
                        }
                        ["exists", c, l, t, d] => {
                            // Never overwritten. A chosen id: this create retried
                            // (return what is stored) or a clash. A drawn id that
                            // collided (never, in practice): draw again.
                            if session.id().is_some() {
                                let stored = decode(id, user, c, l, t, d)?;
                                return if session.is_created_as(user, &stored) {
                                    Ok(stored)
                                } else {
                                    Err(NewSession::id_taken(id))
                                };
                            }
                        }
                        ["full", _live] => return Err(self.limits.reached(user)),
                        _ => return Err(bad_reply("create session", format!("{reply:?}"))),
                    }
                }
                Err(Error::Conflict {
                    what: "session",
                    id: format!("{CREATE_ATTEMPTS} random ids in a row were taken"),
                })
            })
            .await
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.handle
            .obs()
            .run("sessions", "get", async move {
                // A plain HMGET, no script: Redis deletes the key at expires_at - 1 ms,
                // so a key it still returns is a live session.
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.session_key(user, id)).arg(&["created_ms", "last_ms", "ttl_ms", "data"]);
                let fields: Vec<Option<String>> = self.handle.query(&cmd, "get session").await?;
                match fields.as_slice() {
                    [Some(c), Some(l), Some(t), Some(d)] => Ok(Some(decode(id, user, c, l, t, d)?)),
                    [None, None, None, None] => Ok(None),
                    other => Err(bad_reply("get session", format!("{other:?}"))),
                }
            })
            .await
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        self.handle
            .obs()
            .run("sessions", "touch", async move {
                let mut inv = SESSION_TOUCH.prepare_invoke();
                inv.key(self.session_key(user, id))
                    .key(self.index_key(user))
                    .key(self.created_index_key(user))
                    .arg(id.to_string());
                let fields: Option<Vec<String>> = self.handle.invoke(&inv, "touch session").await?;
                match fields.as_deref() {
                    None => Ok(None),
                    Some([c, l, t, d]) => Ok(Some(decode(id, user, c, l, t, d)?)),
                    Some(other) => Err(bad_reply("touch session", format!("{other:?}"))),
                }
            })
            .await
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Json>) -> Result<Option<Session>> {
        self.handle
            .obs()
            .run("sessions", "set_data", async move {
                validate_data(&data)?;
                let text = serde_json::to_string(&data)
                    .map_err(|e| Error::backend(BACKEND, "encode session data", false, e))?;
                let mut inv = SESSION_SET_DATA.prepare_invoke();
                inv.key(self.session_key(user, id)).arg(&text);
                let fields: Option<Vec<String>> = self.handle.invoke(&inv, "set session data").await?;
                match fields.as_deref() {
                    None => Ok(None),
                    Some([c, l, t]) => {
                        let mut session = decode(id, user, c, l, t, "{}")?;
                        session.data = data;
                        Ok(Some(session))
                    }
                    Some(other) => Err(bad_reply("set session data", format!("{other:?}"))),
                }
            })
            .await
    }

    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>> {
        self.handle
            .obs()
            .run("sessions", "list_recent", async move {
                validate_list_limit(limit)?;
                let mut inv = SESSION_LIST.prepare_invoke();
                inv.key(self.index_key(user))
                    .key(self.created_index_key(user))
                    .arg(self.session_key_stem(user))
                    .arg(limit)
                    .arg(LIST_DEAD_BUDGET);
                // Each incomplete call dropped LIST_DEAD_BUDGET dead members, and
                // an index holds at most the cap plus what expired lately, so this
                // ends; the bound only guards against a script bug.
                for _ in 0..=(SessionLimits::MAX_PER_USER / LIST_DEAD_BUDGET + 1) {
                    let flat: Vec<String> = self.handle.invoke(&inv, "list sessions").await?;
                    let Some((complete, fields)) = flat.split_first() else {
                        return Err(bad_reply("list sessions", "empty reply"));
                    };
                    if fields.len() % 5 != 0 {
                        return Err(bad_reply("list sessions", format!("{} fields", fields.len())));
                    }
                    if complete != "1" {
                        continue;
                    }
                    // Already newest first: the created-at index orders by time,
                    // then by id (as text, which orders like the UUID's bytes).
                    return fields
                        .chunks_exact(5)
                        .map(|f| {
                            let id = SessionId::parse(&f[0]).map_err(|e| bad_reply("list sessions", e))?;
                            decode(id, user, &f[1], &f[2], &f[3], &f[4])
                        })
                        .collect();
                }
                Err(bad_reply("list sessions", "the index did not shrink"))
            })
            .await
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        self.handle
            .obs()
            .run("sessions", "revoke", async move {
                let mut inv = SESSION_REVOKE.prepare_invoke();
                inv.key(self.session_key(user, id))
                    .key(self.index_key(user))
                    .key(self.created_index_key(user))
                    .arg(id.to_string());
                let live: i64 = self.handle.invoke(&inv, "revoke session").await?;
                Ok(live == 1)
            })
            .await
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        self.handle
            .obs()
            .run("sessions", "revoke_all", async move {
                let mut inv = SESSION_REVOKE_ALL.prepare_invoke();
                inv.key(self.index_key(user))
                    .key(self.created_index_key(user))
                    .arg(self.session_key_stem(user))
                    .arg(Self::REVOKE_ALL_BATCH);
                let batch = u64::from(Self::REVOKE_ALL_BATCH);
                let mut live = 0;
                // Set from the first reply: enough calls for every session there
                // was, plus one. Sessions created while this runs may be left (see
                // the trait), so racing creates cannot keep it going for ever.
                let mut calls_left: Option<u64> = None;
                loop {
                    let reply: Vec<i64> = self.handle.invoke(&inv, "revoke all sessions").await?;
                    let [gone_live, deleted, left] = reply[..] else {
                        return Err(bad_reply("revoke all sessions", format!("{reply:?}")));
                    };
                    let count = |n: i64| u64::try_from(n).map_err(|e| bad_reply("revoke all sessions", e));
                    live += count(gone_live)?;
                    let left = count(left)?;
                    let calls = calls_left.get_or_insert(left.div_ceil(batch) + 1);
                    if left == 0 || count(deleted)? < batch || *calls == 0 {
                        return Ok(live);
                    }
                    *calls -= 1;
                }
            })
            .await
    }
}

fn millis(d: Duration) -> u64 {
    // NewSession bounds the TTL to one year: far inside u64.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A time from milliseconds since the epoch (in 64-bit arithmetic: the
/// 128-bit nanosecond path costs a slow division on every session read).
fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    let whole = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1_000)).map_err(|e| bad_reply("timestamp", e))?;
    // `rem_euclid(1_000)` is in 0..1000, so the conversion and the
    // replacement cannot fail.
    let millis = u16::try_from(ms.rem_euclid(1_000)).map_err(|e| bad_reply("timestamp", e))?;
    whole.replace_millisecond(millis).map_err(|e| bad_reply("timestamp", e))
}

fn parse_ms(what: &str, s: &str) -> Result<i64> {
    s.parse().map_err(|e| bad_reply(what, format!("{s:?}: {e}")))
}

/// A session from its hash fields.
fn decode(id: SessionId, user_id: UserId, created: &str, last: &str, ttl: &str, data: &str) -> Result<Session> {
    let created_at = from_millis(parse_ms("created_ms", created)?)?;
    let last_ms = parse_ms("last_ms", last)?;
    let ttl_ms = parse_ms("ttl_ms", ttl)?;
    let ttl = Duration::from_millis(u64::try_from(ttl_ms).map_err(|e| bad_reply("ttl_ms", e))?);
    // In milliseconds, checked: a hash written by someone else must not
    // make the addition panic.
    let expires_ms = last_ms.checked_add(ttl_ms).ok_or_else(|| bad_reply("ttl_ms", "expiry out of range"))?;
    let data: Map<String, Json> = serde_json::from_str(data).map_err(|e| bad_reply("session data", e))?;
    Ok(Session {
        id,
        user_id,
        created_at,
        last_activity: from_millis(last_ms)?,
        expires_at: from_millis(expires_ms)?,
        ttl,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_millis_matches_the_nanosecond_conversion() {
        let max = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let min = -62_135_596_800_000; // 0001-01-01T00:00:00Z
        for ms in [0, 1, 999, 1_000, 1_001, -1, -999, -1_000, -1_001, 1_764_288_000_123, max, min, min + 1] {
            let want = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            assert_eq!(from_millis(ms).unwrap(), want, "{ms} ms");
        }
    }

    #[test]
    fn decode_refuses_hashes_it_cannot_represent() {
        let (id, user) = (SessionId::generate(), UserId::new());
        let ok = decode(id, user, "1000", "2000", "500", r#"{"a":1}"#).unwrap();
        assert_eq!(ok.expires_at, from_millis(2_500).unwrap());
        assert_eq!(ok.ttl, Duration::from_millis(500));
        // An expiry past i64 must be an error, not a panic in the addition.
        let err = decode(id, user, "1000", &i64::MAX.to_string(), "1000", "{}").unwrap_err();
        assert!(err.to_string().contains("ttl_ms"), "{err}");
        // Past year 9999: refused by the conversion.
        assert!(decode(id, user, "1000", "253402300799999", "1", "{}").is_err());
        assert!(decode(id, user, "1000", "2000", "-1", "{}").unwrap_err().to_string().contains("ttl_ms"));
        assert!(decode(id, user, "x", "2000", "1", "{}").unwrap_err().to_string().contains("created_ms"));
        assert!(decode(id, user, "1000", "2000", "1", "[]").unwrap_err().to_string().contains("session data"));
    }

    #[test]
    fn from_millis_refuses_times_out_of_range() {
        for ms in [i64::MAX, i64::MIN, 253_402_300_800_000 * 1_000] {
            assert!(from_millis(ms).is_err(), "{ms} ms");
        }
    }
}
