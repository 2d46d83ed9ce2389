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
    id: Option<SessionId>,
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
        Ok(Self { id: None, ttl, data: Map::new() })
    }

    /// Creates the session under `id` instead of a fresh random one, which
    /// makes [`SessionStore::create`] retry-safe (see "Retries" there): draw
    /// the id once per session with [`SessionId::generate`] and send the same
    /// `NewSession` again when a create fails ambiguously
    /// ([`Error::is_ambiguous`]).
    ///
    /// The id is the session's handle for every later call, so it must be as
    /// unguessable as a generated one: never derive it from anything an
    /// attacker knows.
    pub fn with_id(mut self, id: SessionId) -> Self {
        self.id = Some(id);
        self
    }

    /// The id chosen with [`NewSession::with_id`], if any.
    pub fn id(&self) -> Option<SessionId> {
        self.id
    }

    /// Whether `stored` is what creating this for `user` made: same id (when
    /// one was chosen), user, TTL and data. A backend that finds the chosen
    /// id taken returns `stored` when this holds (the create is a retry of
    /// one that committed) and [`Error::Conflict`] otherwise
    /// ([`NewSession::id_taken`]). Activity since the first create (a touch
    /// slides `last_activity`) does not matter; changed data does.
    pub fn is_created_as(&self, user: UserId, stored: &Session) -> bool {
        self.id.is_none_or(|id| id == stored.id)
            && stored.user_id == user
            && stored.ttl == self.ttl
            && stored.data == self.data
    }

    /// The [`Error::Conflict`] (`what = "session"`) of a chosen id that is
    /// taken by a different session.
    pub fn id_taken(id: SessionId) -> Error {
        Error::Conflict { what: "session", id: id.to_string() }
    }

    /// Attaches application data (a JSON object of at most 64 KiB): a
    /// [`Value`] or a `serde_json::Map`, the type [`SessionStore::set_data`]
    /// takes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`data`), as for memory log metadata.
    pub fn with_data(mut self, data: impl Into<Value>) -> Result<Self> {
        self.data = validate::json_object("data", data.into())?;
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

/// Most sessions one [`SessionStore::list_recent`] call returns (and what
/// [`SessionStore::list`] asks for).
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// Checks the `limit` of [`SessionStore::list_recent`].
///
/// # Errors
/// [`Error::InvalidInput`] (`limit`) when 0 or above [`MAX_LIST_LIMIT`].
pub fn validate_list_limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(Error::invalid("limit", format!("must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }
    Ok(())
}

/// What [`SessionStore::create`] does for a user who already has
/// [`SessionLimits::max_per_user`] live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnLimit {
    /// Ends the user's live session that would expire soonest (ties: the
    /// smallest id), then creates the new one. With one TTL for all
    /// sessions, the usual setup, that is the least recently active
    /// session. The default.
    #[default]
    EvictOldest,
    /// Refuses the new session with [`Error::Conflict`]
    /// (`what = `[`SessionLimits::REACHED`]); nothing is written.
    Refuse,
}

impl OnLimit {
    /// Its name in configuration: `evict_oldest` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::EvictOldest => "evict_oldest",
            OnLimit::Refuse => "refuse",
        }
    }
}

impl fmt::Display for OnLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OnLimit {
    type Err = Error;

    /// `evict_oldest` (or `evict-oldest`, `evict`) or `refuse`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "evict_oldest" | "evict-oldest" | "evict" => Ok(OnLimit::EvictOldest),
            "refuse" => Ok(OnLimit::Refuse),
            other => Err(Error::invalid("on_limit", format!("must be `evict_oldest` or `refuse`, got {other:?}"))),
        }
    }
}

/// The bound on one user's live sessions that a [`SessionStore`] keeps.
///
/// Without a bound, a client that logs in in a loop and never logs out makes
/// one user's sessions grow without end, and with them the cost of every
/// per-user operation (at 20,000 sessions a Redis `list` or `revoke_all`
/// held the server for about 145 ms). Every backend takes a
/// `SessionLimits` (`LocalStore::with_session_limits`,
/// `PostgresSessionStore::with_limits`, `RedisSessionStore::with_limits`);
/// [`SessionLimits::from_env`] reads one from the environment.
///
/// The default is **100 sessions per user, evicting the oldest**
/// ([`OnLimit::EvictOldest`]): far more than the devices and browsers a
/// person uses, so a real user never meets it, while a leaking client costs
/// at most 100 sessions. Evicting rather than refusing keeps logging in
/// working when the sessions that fill the cap are forgotten ones (the usual
/// way a cap fills up); the evicted session is the one closest to expiring,
/// i.e. the least recently used. Choose [`OnLimit::Refuse`] where ending a
/// session the user may still hold is worse than refusing a login (e.g. a
/// cap that is a licence's seat count): the caller then gets
/// [`Error::Conflict`] with `what = "session limit"` and can ask the user to
/// log out elsewhere.
///
/// Expired sessions never count. Evictions per create are bounded by
/// [`SessionLimits::MAX_EVICTIONS_PER_CREATE`], so that lowering the cap of
/// a running service never makes one create do unbounded work: a user above
/// a lowered cap is brought under it over several creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionLimits {
    max_per_user: u32,
    on_limit: OnLimit,
}

impl SessionLimits {
    /// The default [`SessionLimits::max_per_user`].
    pub const DEFAULT_MAX_PER_USER: u32 = 100;
    /// The largest accepted [`SessionLimits::max_per_user`].
    pub const MAX_PER_USER: u32 = 1_000_000;
    /// Most sessions one create evicts (see the type's docs).
    pub const MAX_EVICTIONS_PER_CREATE: u32 = 500;
    /// The `what` of the [`Error::Conflict`] that refuses a session at the
    /// cap ([`OnLimit::Refuse`]). A taken session id is `what = "session"`.
    pub const REACHED: &'static str = "session limit";

    /// At most `max_per_user` live sessions per user, `on_limit` deciding
    /// what a create beyond that does.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`max_per_user`) when 0 or above
    /// [`SessionLimits::MAX_PER_USER`].
    pub fn new(max_per_user: u32, on_limit: OnLimit) -> Result<Self> {
        if max_per_user == 0 || max_per_user > Self::MAX_PER_USER {
            return Err(Error::invalid(
                "max_per_user",
                format!("must be between 1 and {}, got {max_per_user}", Self::MAX_PER_USER),
            ));
        }
        Ok(Self { max_per_user, on_limit })
    }

    /// The limits from environment variables, defaults for those unset:
    ///
    /// | variable | field | default |
    /// | --- | --- | --- |
    /// | `SELFRAG_SESSIONS_MAX_PER_USER` | `max_per_user` | 100 |
    /// | `SELFRAG_SESSIONS_ON_LIMIT` | `on_limit` (`evict_oldest` or `refuse`) | `evict_oldest` |
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the variable when a value does not
    /// parse, and as [`SessionLimits::new`].
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`SessionLimits::from_env`] over any lookup function.
    ///
    /// # Errors
    /// As [`SessionLimits::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Self::default().overridden_by(lookup)
    }

    /// These limits with the fields whose variable `lookup` finds (see
    /// [`SessionLimits::from_env`]) replaced; for configuration that
    /// starts from the application's own limits.
    ///
    /// # Errors
    /// As [`SessionLimits::from_env`].
    pub fn overridden_by(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        const MAX: &str = "SELFRAG_SESSIONS_MAX_PER_USER";
        const ON: &str = "SELFRAG_SESSIONS_ON_LIMIT";
        let max_per_user = match lookup(MAX).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.trim().parse().map_err(|e| Error::invalid(MAX, format!("{v:?} is not a number: {e}")))?,
            None => self.max_per_user,
        };
        let on_limit = match lookup(ON).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.parse().map_err(|e: Error| Error::invalid(ON, e.to_string()))?,
            None => self.on_limit,
        };
        Self::new(max_per_user, on_limit)
    }

    /// Most live sessions one user may hold.
    pub fn max_per_user(&self) -> u32 {
        self.max_per_user
    }

    /// What a create beyond [`SessionLimits::max_per_user`] does.
    pub fn on_limit(&self) -> OnLimit {
        self.on_limit
    }

    /// The [`Error::Conflict`] that refuses a session of `user` at the cap.
    pub fn reached(&self, user: UserId) -> Error {
        Error::Conflict { what: Self::REACHED, id: format!("{} live sessions of user {user}", self.max_per_user) }
    }

    /// Whether `err` is a refusal at the cap ([`SessionLimits::reached`]).
    pub fn is_reached(err: &Error) -> bool {
        matches!(err, Error::Conflict { what, .. } if *what == Self::REACHED)
    }

    /// How many of `live` sessions a create must evict first under
    /// [`OnLimit::EvictOldest`]: enough to make room for one more, at most
    /// [`SessionLimits::MAX_EVICTIONS_PER_CREATE`]; 0 below the cap.
    pub fn evictions_for(&self, live: u64) -> u64 {
        if live < u64::from(self.max_per_user) {
            return 0;
        }
        (live - u64::from(self.max_per_user) + 1).min(u64::from(Self::MAX_EVICTIONS_PER_CREATE))
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self { max_per_user: Self::DEFAULT_MAX_PER_USER, on_limit: OnLimit::EvictOldest }
    }
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
/// - Session ids come from the OS RNG unless the caller chose one
///   ([`NewSession::with_id`]); `create` never overwrites an existing
///   session.
/// - A user holds at most [`SessionLimits::max_per_user`] live sessions (the
///   store's [`SessionLimits`], default 100); a create beyond that evicts the
///   session that would expire soonest, or is refused with
///   [`Error::Conflict`] (`what = "session limit"`), as the store's
///   [`OnLimit`] says. Expired sessions never count.
/// - No call does work proportional to all of a user's sessions in one
///   server request: `list_recent` reads at most `limit` of them, and
///   `revoke_all` deletes in bounded batches.
///
/// # Retries
/// Which calls may be repeated after a failure that may have taken effect
/// ([`Error::is_ambiguous`]: a timeout, or a connection lost with the
/// request in flight):
/// - `create` **with a chosen id** ([`NewSession::with_id`]) is retry-safe:
///   send the same `NewSession` (same id, TTL and data) again. If the first
///   attempt committed, the retry returns the stored session (and evicts
///   nothing); otherwise it creates it. The id held by a different session
///   (other TTL or data, or another user's session on backends whose ids are
///   global: Postgres and local) is [`Error::Conflict`] with
///   `what = "session"`, which a retry only repeats. A retry after the
///   session was revoked or expired creates it again; after its data was
///   changed it is a conflict.
/// - `create` without a chosen id draws a new id per call, so a retry after
///   an ambiguous failure may leave the first session behind (it expires
///   with its TTL and counts against the cap until then).
/// - `get`, `list_recent`, `list` are reads; `touch` and `set_data` with the
///   same data may be repeated (a repeated touch slides the expiry again).
/// - `revoke` may be repeated; a retry answers `false` if the first attempt
///   ended the session. `revoke_all` may be repeated, and should be after a
///   failure: it ends sessions in batches, so a failed call may have ended
///   some of them; its count then misses those the failed call ended.
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Creates a session for `user`, under the id chosen with
    /// [`NewSession::with_id`] or a fresh random one; see "Retries" above
    /// for a chosen id that exists. At the cap, evicts or refuses as the
    /// store's [`OnLimit`] says.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown user on backends that track users
    /// (Postgres, local); [`Error::Conflict`] with `what = "session"` when
    /// the chosen id is held by a different session, and with
    /// `what = "session limit"` ([`SessionLimits::REACHED`]) when the user
    /// is at the cap under [`OnLimit::Refuse`]; backend errors otherwise.
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

    /// The `limit` newest live sessions of `user`, newest first (by
    /// `created_at`, then id, both descending).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`limit`) when 0 or above
    /// [`MAX_LIST_LIMIT`] ([`validate_list_limit`]).
    async fn list_recent(&self, user: UserId, limit: u32) -> Result<Vec<Session>>;

    /// The live sessions of `user`, newest first: `list_recent` with
    /// [`MAX_LIST_LIMIT`] (1,000). That is all of them unless the store's
    /// cap was raised above 1,000.
    async fn list(&self, user: UserId) -> Result<Vec<Session>> {
        self.list_recent(user, MAX_LIST_LIMIT).await
    }

    /// Ends the session `id` of `user`; returns whether a live one existed.
    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool>;

    /// Ends every session of `user`; returns how many live ones there were.
    ///
    /// Deletes in bounded batches (one server request each), so a user with
    /// many sessions never holds the backend for long; it is therefore not
    /// atomic: a session created while it runs may or may not be ended, and
    /// a failed call may have ended some sessions (repeat it).
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
    fn limits_are_checked_and_read_from_the_environment() {
        assert_eq!(SessionLimits::new(0, OnLimit::Refuse).unwrap_err().field(), Some("max_per_user"));
        let over = SessionLimits::MAX_PER_USER + 1;
        assert_eq!(SessionLimits::new(over, OnLimit::Refuse).unwrap_err().field(), Some("max_per_user"));
        let d = SessionLimits::default();
        assert_eq!((d.max_per_user(), d.on_limit()), (100, OnLimit::EvictOldest));
        let env = |vars: &'static [(&'static str, &'static str)]| {
            SessionLimits::from_lookup(move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
        };
        assert_eq!(env(&[]).unwrap(), d);
        let l = env(&[("SELFRAG_SESSIONS_MAX_PER_USER", " 5 "), ("SELFRAG_SESSIONS_ON_LIMIT", "Refuse")]).unwrap();
        assert_eq!((l.max_per_user(), l.on_limit()), (5, OnLimit::Refuse));
        let bad = env(&[("SELFRAG_SESSIONS_MAX_PER_USER", "many")]).unwrap_err();
        assert_eq!(bad.field(), Some("SELFRAG_SESSIONS_MAX_PER_USER"));
        let bad = env(&[("SELFRAG_SESSIONS_ON_LIMIT", "drop")]).unwrap_err();
        assert_eq!(bad.field(), Some("SELFRAG_SESSIONS_ON_LIMIT"));
        assert_eq!(env(&[("SELFRAG_SESSIONS_MAX_PER_USER", "0")]).unwrap_err().field(), Some("max_per_user"));
        let base = SessionLimits::new(7, OnLimit::Refuse).unwrap();
        let only_policy = [("SELFRAG_SESSIONS_ON_LIMIT", "evict_oldest")];
        let merged = base.overridden_by(|k| only_policy.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()));
        assert_eq!(merged.unwrap(), SessionLimits::new(7, OnLimit::EvictOldest).unwrap(), "unset fields are kept");
        for p in [OnLimit::EvictOldest, OnLimit::Refuse] {
            assert_eq!(p.as_str().parse::<OnLimit>().unwrap(), p);
        }
    }

    #[test]
    fn evictions_make_room_for_one_within_the_bound() {
        let l = SessionLimits::new(3, OnLimit::EvictOldest).unwrap();
        assert_eq!([0, 2, 3, 4, 10].map(|n| l.evictions_for(n)), [0, 0, 1, 2, 8]);
        assert_eq!(l.evictions_for(100_000), u64::from(SessionLimits::MAX_EVICTIONS_PER_CREATE));
        let err = l.reached(UserId::new());
        assert!(SessionLimits::is_reached(&err) && !err.is_retryable() && !err.is_ambiguous(), "{err}");
        assert!(!SessionLimits::is_reached(&NewSession::id_taken(SessionId::generate())));
    }

    #[test]
    fn list_limits() {
        assert_eq!(validate_list_limit(0).unwrap_err().field(), Some("limit"));
        assert_eq!(validate_list_limit(MAX_LIST_LIMIT + 1).unwrap_err().field(), Some("limit"));
        assert!(validate_list_limit(1).is_ok() && validate_list_limit(MAX_LIST_LIMIT).is_ok());
    }

    #[test]
    fn a_retry_matches_only_the_same_session() {
        let (user, id, now) = (UserId::new(), SessionId::generate(), OffsetDateTime::now_utc());
        let new = NewSession::new(Duration::from_secs(10)).unwrap().with_data(json!({"a": 1})).unwrap().with_id(id);
        assert_eq!(new.id(), Some(id));
        let stored = new.clone().into_session(id, user, now);
        assert!(new.is_created_as(user, &stored));
        assert!(new.is_created_as(user, &stored.clone().touched_at(now + Duration::from_secs(1))));
        assert!(!new.is_created_as(UserId::new(), &stored), "another user");
        let other_ttl = NewSession::new(Duration::from_secs(11)).unwrap().with_data(json!({"a": 1})).unwrap();
        assert!(!other_ttl.with_id(id).is_created_as(user, &stored), "another ttl");
        assert!(!new.clone().with_data(json!({"a": 2})).unwrap().is_created_as(user, &stored), "other data");
        assert!(!new.with_id(SessionId::generate()).is_created_as(user, &stored), "another id");
        assert_eq!(NewSession::new(Duration::from_secs(1)).unwrap().id(), None);
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
