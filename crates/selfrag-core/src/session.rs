//! User-scoped sessions with a time to live and sliding expiry.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::ids::{SessionId, UserId};
use crate::validate;

/// What to create a session with.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    ttl: Duration,
    data: Map<String, Value>,
}

impl NewSession {
    /// Shortest accepted time to live.
    pub const MIN_TTL: Duration = Duration::from_millis(100);
    /// Longest accepted time to live (one year).
    pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

    /// A session that expires `ttl` after its last activity.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`ttl`) outside [`NewSession::MIN_TTL`] ..=
    /// [`NewSession::MAX_TTL`] or not a whole number of milliseconds.
    pub fn new(ttl: Duration) -> Result<Self> {
        check_ttl(ttl)?;
        Ok(Self { ttl, data: Map::new() })
    }

    /// Attaches application data (a JSON object of at most 64 KiB).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`data`), as for memory log metadata.
    pub fn with_data(mut self, data: Value) -> Result<Self> {
        self.data = validate::json_object("data", data)?;
        Ok(self)
    }

    /// The time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The data.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    /// The session this becomes when created for `user_id` at `now`.
    pub fn into_session(self, id: SessionId, user_id: UserId, now: OffsetDateTime) -> Session {
        Session {
            id,
            user_id,
            created_at: now,
            last_activity: now,
            expires_at: now + self.ttl,
            ttl: self.ttl,
            data: self.data,
        }
    }
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl < NewSession::MIN_TTL || ttl > NewSession::MAX_TTL {
        return Err(Error::invalid(
            "ttl",
            format!("must be between {:?} and {:?}, got {ttl:?}", NewSession::MIN_TTL, NewSession::MAX_TTL),
        ));
    }
    if ttl.subsec_nanos() % 1_000_000 != 0 {
        return Err(Error::invalid("ttl", "must be a whole number of milliseconds"));
    }
    Ok(())
}

/// Checks session data given to [`SessionStore::set_data`].
///
/// # Errors
/// [`Error::InvalidInput`] (`data`).
pub fn validate_data(data: &Map<String, Value>) -> Result<()> {
    validate::json_map("data", data).map(|_| ())
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The user it belongs to.
    pub user_id: UserId,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last created or touched.
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    /// When it expires unless touched: `last_activity + ttl`.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The sliding time to live.
    pub ttl: Duration,
    /// Application data.
    pub data: Map<String, Value>,
}

impl Session {
    /// Whether the session has expired at `now`. A session is live while
    /// `now < expires_at`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }

    /// The session after a touch at `now`: activity now, expiry `ttl` later.
    pub fn touched_at(mut self, now: OffsetDateTime) -> Self {
        self.last_activity = now;
        self.expires_at = now + self.ttl;
        self
    }
}

/// Sessions of users.
///
/// # Contract
/// - Every method is scoped to `user`: another user's session is invisible,
///   even with its id, and is never touched, changed or revoked.
/// - A session is live while `now < expires_at` on the backend's clock; an
///   expired session is gone: `get`/`touch`/`set_data` return `Ok(None)`,
///   `list` leaves it out, `revoke` returns `false`. No backend ever returns
///   a session past its expiry.
/// - `touch` slides the expiry: `expires_at = now + ttl`.
/// - Session ids come from the OS RNG; `create` never overwrites an existing
///   session.
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Creates a session for `user`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown user on backends that track users
    /// (Postgres, local); backend errors otherwise.
    async fn create(&self, user: UserId, session: NewSession) -> Result<Session>;

    /// The live session `id` of `user`, without extending it.
    async fn get(&self, user: UserId, id: SessionId) -> Result<Option<Session>>;

    /// Marks activity on the live session `id` of `user` and slides its
    /// expiry; returns the updated session, or `None` when absent or expired.
    async fn touch(&self, user: UserId, id: SessionId) -> Result<Option<Session>>;

    /// Replaces the data of the live session `id` of `user` (does not slide
    /// its expiry); returns the updated session, or `None`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`data`) as for [`NewSession::with_data`].
    async fn set_data(&self, user: UserId, id: SessionId, data: Map<String, Value>) -> Result<Option<Session>>;

    /// The live sessions of `user`, newest first (by `created_at`, then id).
    async fn list(&self, user: UserId) -> Result<Vec<Session>>;

    /// Ends the session `id` of `user`; returns whether a live one existed.
    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool>;

    /// Ends every session of `user`; returns how many live ones there were.
    async fn revoke_all(&self, user: UserId) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ttl_bounds() {
        assert_eq!(NewSession::new(Duration::ZERO).unwrap_err().field(), Some("ttl"));
        assert_eq!(NewSession::new(Duration::from_millis(99)).unwrap_err().field(), Some("ttl"));
        assert_eq!(NewSession::new(Duration::from_secs(366 * 24 * 3600)).unwrap_err().field(), Some("ttl"));
        assert_eq!(NewSession::new(Duration::from_nanos(1_500_000_001)).unwrap_err().field(), Some("ttl"));
        assert!(NewSession::new(Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn data_must_be_an_object() {
        let s = NewSession::new(Duration::from_secs(1)).unwrap();
        assert_eq!(s.clone().with_data(json!(1)).unwrap_err().field(), Some("data"));
        assert!(s.with_data(json!({"a": 1})).is_ok());
    }

    #[test]
    fn expiry_and_touch() {
        let now = OffsetDateTime::now_utc();
        let s =
            NewSession::new(Duration::from_secs(10)).unwrap().into_session(SessionId::generate(), UserId::new(), now);
        assert!(!s.is_expired_at(now + Duration::from_secs(9)));
        assert!(s.is_expired_at(now + Duration::from_secs(10)));
        let t = s.touched_at(now + Duration::from_secs(5));
        assert_eq!(t.expires_at, now + Duration::from_secs(15));
    }
}
