//! [`RedisSessionStore`]: sessions as Redis hashes that Redis itself expires.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis;
use selfrag_core::session::validate_data;
use selfrag_core::{Error, NewSession, Result, Session, SessionId, SessionStore, UserId};
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use crate::client::{
    bad_reply, Handle, SESSION_CREATE, SESSION_LIST, SESSION_REVOKE, SESSION_REVOKE_ALL, SESSION_SET_DATA,
    SESSION_TOUCH,
};
use crate::config::{RedisConfig, RedisPool};
use crate::BACKEND;

/// How many fresh ids `create` draws before giving up. With 122 random bits a
/// second draw already never happens; the loop exists so that a collision
/// can never overwrite a session.
const CREATE_ATTEMPTS: usize = 4;

/// A [`SessionStore`] in Redis. See the crate docs for the key layout and the
/// guarantees.
///
/// Redis does not track users: `create` accepts any [`UserId`] (it never
/// returns [`Error::NotFound`]); delete a user's sessions with
/// [`SessionStore::revoke_all`] when the user goes away.
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    handle: Handle,
}

impl RedisSessionStore {
    /// A store over `pool`, with the default key prefix (`selfrag:`) and
    /// response timeout (2 s). `pool` is a [`RedisPool`] or a
    /// `deadpool_redis::Pool`.
    pub fn new(pool: impl Into<RedisPool>) -> Self {
        Self { handle: Handle::new(pool.into()) }
    }

    /// A store over `pool` with the prefix and timeouts of `config` (its URL
    /// and pool size are the pool's business).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`].
    pub fn with_config(pool: impl Into<RedisPool>, config: &RedisConfig) -> Result<Self> {
        Ok(Self { handle: Handle::with_config(pool.into(), config)? })
    }

    /// A store with its own pool built from `config`. Connects lazily.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::create_pool`].
    pub fn connect(config: &RedisConfig) -> Result<Self> {
        Self::with_config(config.create_pool()?, config)
    }

    /// Uses `prefix` for every key (see [`RedisConfig::key_prefix`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`key_prefix`).
    pub fn with_key_prefix(self, prefix: &str) -> Result<Self> {
        Ok(Self { handle: self.handle.with_prefix(prefix)? })
    }

    /// Fails calls whose reply takes longer than `timeout`.
    pub fn with_response_timeout(self, timeout: Duration) -> Self {
        Self { handle: self.handle.with_response_timeout(timeout) }
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        self.handle.prefix()
    }

    /// The pool: it dereferences to the `deadpool_redis::Pool`, and its
    /// `Debug` never shows the password.
    pub fn pool(&self) -> &RedisPool {
        self.handle.pool()
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

    fn session_key_stem(&self, user: UserId) -> String {
        self.handle.user_key(user, &[":s:"])
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session> {
        let data = serde_json::to_string(session.data())
            .map_err(|e| Error::backend(BACKEND, "encode session data", false, e))?;
        let ttl_ms = millis(session.ttl());
        for _ in 0..CREATE_ATTEMPTS {
            let id = SessionId::generate();
            let mut inv = SESSION_CREATE.prepare_invoke();
            inv.key(self.session_key(user, id)).key(self.index_key(user)).arg(id.to_string()).arg(ttl_ms).arg(&data);
            let created: Option<i64> = self.handle.invoke(&inv, "create session").await?;
            if let Some(now_ms) = created {
                return Ok(session.into_session(id, user, from_millis(now_ms)?));
            }
        }
        Err(Error::Conflict { what: "session", id: format!("{CREATE_ATTEMPTS} random ids in a row were taken") })
    }

    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
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
    }

    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>> {
        let mut inv = SESSION_TOUCH.prepare_invoke();
        inv.key(self.session_key(user, id)).key(self.index_key(user)).arg(id.to_string());
        let fields: Option<Vec<String>> = self.handle.invoke(&inv, "touch session").await?;
        match fields.as_deref() {
            None => Ok(None),
            Some([c, l, t, d]) => Ok(Some(decode(id, user, c, l, t, d)?)),
            Some(other) => Err(bad_reply("touch session", format!("{other:?}"))),
        }
    }

    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Json>) -> Result<Option<Session>> {
        validate_data(&data)?;
        let text =
            serde_json::to_string(&data).map_err(|e| Error::backend(BACKEND, "encode session data", false, e))?;
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
    }

    async fn list(&self, user: UserId) -> Result<Vec<Session>> {
        let mut inv = SESSION_LIST.prepare_invoke();
        inv.key(self.index_key(user)).arg(self.session_key_stem(user));
        let flat: Vec<String> = self.handle.invoke(&inv, "list sessions").await?;
        if flat.len() % 5 != 0 {
            return Err(bad_reply("list sessions", format!("{} fields", flat.len())));
        }
        let mut sessions = flat
            .chunks_exact(5)
            .map(|f| {
                let id = SessionId::parse(&f[0]).map_err(|e| bad_reply("list sessions", e))?;
                decode(id, user, &f[1], &f[2], &f[3], &f[4])
            })
            .collect::<Result<Vec<_>>>()?;
        sessions.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        Ok(sessions)
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool> {
        let mut inv = SESSION_REVOKE.prepare_invoke();
        inv.key(self.session_key(user, id)).key(self.index_key(user)).arg(id.to_string());
        let live: i64 = self.handle.invoke(&inv, "revoke session").await?;
        Ok(live == 1)
    }

    async fn revoke_all(&self, user: UserId) -> Result<u64> {
        let mut inv = SESSION_REVOKE_ALL.prepare_invoke();
        inv.key(self.index_key(user)).arg(self.session_key_stem(user));
        let live: i64 = self.handle.invoke(&inv, "revoke all sessions").await?;
        u64::try_from(live).map_err(|e| bad_reply("revoke all sessions", e))
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
