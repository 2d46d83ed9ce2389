//! The [`SessionStore`] suite.
//!
//! Every check makes its own users (through [`SessionFixture::users`] when
//! the backend tracks users, else fresh ids). Time moves through
//! [`SessionFixture::clock`]; deadlines are crossed with margins of at least
//! 150 ms, and a check waits at most about four seconds of real time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use selfrag_core::session::MAX_LIST_LIMIT;
use selfrag_core::{Error, ErrorKind, NewSession, OnLimit, Session, SessionId, SessionLimits, SessionStore, UserId};
use serde_json::{json, Map, Value};

use crate::util::{expect_invalid, expect_kind, Ctx};
use crate::{CheckResult, SessionFixture};

const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn new_user(f: &SessionFixture) -> Result<UserId, String> {
    match &f.users {
        Some(users) => users.create_user().await.ctx("create_user"),
        None => Ok(UserId::new()),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn new_session(ttl: Duration) -> NewSession {
    NewSession::new(ttl).expect("valid ttl")
}

async fn create(f: &SessionFixture, user: UserId, ttl: Duration) -> Result<Session, String> {
    f.store.create(user, new_session(ttl)).await.ctx("create")
}

fn ids(sessions: &[Session]) -> Vec<SessionId> {
    sessions.iter().map(|s| s.id).collect()
}

/// The ids, as a set: for sessions created in the same instant, whose list
/// order falls back to their random ids.
fn id_set(sessions: &[Session]) -> HashSet<SessionId> {
    sessions.iter().map(|s| s.id).collect()
}

/// A store on the fixture's data with the given limits.
fn limited(f: &SessionFixture, max_per_user: u32, on_limit: OnLimit) -> Result<Arc<dyn SessionStore>, String> {
    let make = f.limited.as_ref().ok_or("the fixture makes no stores with limits (SessionFixture::with_limits)")?;
    Ok(make(SessionLimits::new(max_per_user, on_limit).ctx("SessionLimits::new")?))
}

/// Expects [`Error::Conflict`] with `what`.
fn expect_conflict<T: std::fmt::Debug>(r: selfrag_core::Result<T>, what: &str, call: &str) -> CheckResult {
    match r {
        Err(Error::Conflict { what: got, .. }) if got == what => Ok(()),
        Err(e) => Err(format!("{call}: expected Conflict with what = {what:?}, got error {e} ({e:?})")),
        Ok(v) => Err(format!("{call}: expected Conflict with what = {what:?}, got Ok({v:?})")),
    }
}

/// A created session is returned whole (user, ttl, data, timestamps with
/// `expires_at = last_activity + ttl`), and `get` returns the same.
pub async fn create_then_get_round_trips(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let data = json!({"cart": [1, 2, 3], "name": "Zoë 🦀", "nested": {"a": null, "b": 1.5}});
    let s = f.store.create(user, new_session(LONG).with_data(data.clone()).ctx("with_data")?).await.ctx("create")?;
    ensure_eq!(s.user_id, user, "session user");
    ensure_eq!(s.ttl, LONG, "session ttl");
    ensure_eq!(Value::Object(s.data.clone()), data, "session data");
    ensure_eq!(s.last_activity, s.created_at, "last_activity of a new session");
    ensure_eq!(s.expires_at, s.created_at + LONG, "expires_at of a new session");
    let now = time::OffsetDateTime::now_utc();
    ensure!(
        (s.created_at - now).abs() < time::Duration::minutes(10),
        "created_at {} is far from the current time {now}",
        s.created_at
    );
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, Some(s.clone()), "get of the new session");
    let plain = create(f, user, SHORT).await?;
    ensure!(plain.data.is_empty(), "a session created without data has data {:?}", plain.data);
    Ok(())
}

/// Session ids are unique and random (UUIDv4 from the OS RNG).
pub async fn session_ids_are_unique(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let s = create(f, user, LONG).await?;
        ensure_eq!(s.id.as_uuid().get_version_num(), 4, "session id version");
        ensure!(seen.insert(s.id), "session id {} handed out twice", s.id);
    }
    ensure_eq!(f.store.list(user).await.ctx("list")?.len(), 40, "sessions listed");
    Ok(())
}

/// Ids that were never handed out: `get`/`touch`/`set_data` are `None`,
/// `revoke` is `false`, `list` and `revoke_all` of a user without sessions
/// are empty and 0.
pub async fn absent_sessions_read_as_none(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let id = SessionId::generate();
    ensure_eq!(f.store.get(user, id).await.ctx("get")?, None, "get of an absent session");
    ensure_eq!(f.store.touch(user, id).await.ctx("touch")?, None, "touch of an absent session");
    let data = obj(json!({"a": 1}));
    ensure_eq!(f.store.set_data(user, id, data).await.ctx("set_data")?, None, "set_data of an absent session");
    ensure_eq!(f.store.revoke(user, id).await.ctx("revoke")?, false, "revoke of an absent session");
    ensure_eq!(f.store.list(user).await.ctx("list")?, vec![], "list of a user without sessions");
    ensure_eq!(f.store.revoke_all(user).await.ctx("revoke_all")?, 0, "revoke_all of a user without sessions");
    Ok(())
}

/// Another user's session id gives nothing: `get`, `touch`, `set_data`,
/// `revoke`, `list` and `revoke_all` of the wrong user neither see nor change
/// it.
pub async fn user_isolation(f: &SessionFixture) -> CheckResult {
    let alice = new_user(f).await?;
    let bob = new_user(f).await?;
    let s = f
        .store
        .create(alice, new_session(LONG).with_data(json!({"owner": "alice"})).ctx("with_data")?)
        .await
        .ctx("create")?;
    ensure_eq!(f.store.get(bob, s.id).await.ctx("get")?, None, "bob gets alice's session");
    ensure_eq!(f.store.touch(bob, s.id).await.ctx("touch")?, None, "bob touches alice's session");
    let hijack = obj(json!({"owner": "bob"}));
    ensure_eq!(f.store.set_data(bob, s.id, hijack).await.ctx("set_data")?, None, "bob sets alice's data");
    ensure_eq!(f.store.revoke(bob, s.id).await.ctx("revoke")?, false, "bob revokes alice's session");
    ensure_eq!(f.store.list(bob).await.ctx("list")?, vec![], "bob's list");
    ensure_eq!(f.store.revoke_all(bob).await.ctx("revoke_all")?, 0, "bob's revoke_all");
    ensure_eq!(f.store.get(alice, s.id).await.ctx("get")?, Some(s.clone()), "alice's session, unchanged");
    ensure_eq!(ids(&f.store.list(alice).await.ctx("list")?), vec![s.id], "alice's list");
    Ok(())
}

/// With a user store: creating a session for an unknown user is
/// `NotFound`; without one (Redis), any user id works.
pub async fn unknown_user_create(f: &SessionFixture) -> CheckResult {
    let ghost = UserId::new();
    match &f.users {
        Some(_) => {
            expect_kind(
                f.store.create(ghost, new_session(LONG)).await,
                ErrorKind::NotFound,
                "create for unknown user",
            )?;
            ensure_eq!(f.store.list(ghost).await.ctx("list")?, vec![], "sessions of the unknown user");
        }
        None => {
            let s = create(f, ghost, LONG).await?;
            ensure_eq!(f.store.get(ghost, s.id).await.ctx("get")?, Some(s), "session of a fresh user id");
        }
    }
    Ok(())
}

/// A session is gone at `expires_at`: `get`, `touch`, `set_data` are `None`,
/// `revoke` is `false`, `list` leaves it out; until then it is live.
pub async fn expired_sessions_are_gone(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let short = create(f, user, SHORT).await?;
    let long = create(f, user, LONG).await?;
    f.clock.advance(ms(600)).await;
    ensure!(f.store.get(user, short.id).await.ctx("get")?.is_some(), "the session is gone 0.6 s into a 1 s ttl");
    f.clock.advance(ms(600)).await;
    ensure_eq!(f.store.get(user, short.id).await.ctx("get")?, None, "get 1.2 s into a 1 s ttl");
    ensure_eq!(f.store.touch(user, short.id).await.ctx("touch")?, None, "touch of an expired session");
    let data = obj(json!({"late": true}));
    ensure_eq!(f.store.set_data(user, short.id, data).await.ctx("set_data")?, None, "set_data of an expired session");
    ensure_eq!(f.store.revoke(user, short.id).await.ctx("revoke")?, false, "revoke of an expired session");
    ensure_eq!(ids(&f.store.list(user).await.ctx("list")?), vec![long.id], "list after expiry");
    // Touching it cannot have revived it.
    ensure_eq!(f.store.get(user, short.id).await.ctx("get")?, None, "get after touching an expired session");
    Ok(())
}

/// `get` does not extend a session.
pub async fn get_does_not_extend(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let s = create(f, user, SHORT).await?;
    f.clock.advance(ms(600)).await;
    let got = f.store.get(user, s.id).await.ctx("get")?.ok_or("session gone 0.6 s into a 1 s ttl")?;
    ensure_eq!(got.expires_at, s.expires_at, "expires_at after get");
    ensure_eq!(got.last_activity, s.last_activity, "last_activity after get");
    f.clock.advance(ms(600)).await;
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, None, "get 1.2 s into a 1 s ttl (get must not extend)");
    Ok(())
}

/// `set_data` replaces the data (no merge), is visible to `get`, and does
/// not extend the session.
pub async fn set_data_replaces_without_extending(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let s = f
        .store
        .create(user, new_session(SHORT).with_data(json!({"a": 1, "b": 2})).ctx("with_data")?)
        .await
        .ctx("create")?;
    f.clock.advance(ms(600)).await;
    let data = obj(json!({"c": [3], "s": "ü"}));
    let updated =
        f.store.set_data(user, s.id, data.clone()).await.ctx("set_data")?.ok_or("set_data on a live session: None")?;
    ensure_eq!(updated.data, data, "data returned by set_data (replaced, not merged)");
    ensure_eq!(updated.expires_at, s.expires_at, "expires_at after set_data");
    ensure_eq!(updated.last_activity, s.last_activity, "last_activity after set_data");
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?.map(|g| g.data), Some(data), "data read back");
    f.clock.advance(ms(600)).await;
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, None, "get 1.2 s into a 1 s ttl (set_data must not extend)");
    Ok(())
}

/// `touch` slides the expiry to `now + ttl` and is persisted: ttl 2 s,
/// touched at 1.2 s, alive at 2.4 s, gone at 3.9 s.
pub async fn touch_slides_expiry(f: &SessionFixture) -> CheckResult {
    let ttl = Duration::from_secs(2);
    let user = new_user(f).await?;
    let s = create(f, user, ttl).await?;
    f.clock.advance(ms(1200)).await;
    let touched = f.store.touch(user, s.id).await.ctx("touch")?.ok_or("touch 1.2 s into a 2 s ttl: None")?;
    ensure!(
        touched.last_activity >= s.last_activity + ms(1150),
        "touch after 1.2 s moved last_activity from {} only to {}",
        s.last_activity,
        touched.last_activity
    );
    ensure_eq!(touched.expires_at, touched.last_activity + ttl, "expires_at after touch (last_activity + ttl)");
    ensure_eq!(touched.created_at, s.created_at, "created_at after touch");
    ensure_eq!(touched.ttl, ttl, "ttl after touch");
    ensure_eq!(touched.data, s.data, "data after touch");
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, Some(touched.clone()), "get after touch");
    f.clock.advance(ms(1200)).await;
    ensure!(
        f.store.get(user, s.id).await.ctx("get")?.is_some(),
        "session gone 2.4 s after creation although touched at 1.2 s with a 2 s ttl (touch did not slide)"
    );
    f.clock.advance(ms(1500)).await;
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, None, "get 2.7 s after the last touch (ttl 2 s)");
    Ok(())
}

/// Bad `set_data` input (NUL in a string or key, too large, too deep) is
/// `InvalidInput` naming `data`, and the session keeps its data and expiry;
/// data that is not an object is refused when building a session.
pub async fn bad_data_is_rejected(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let s = f
        .store
        .create(user, new_session(LONG).with_data(json!({"keep": "me"})).ctx("with_data")?)
        .await
        .ctx("create")?;
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let bad = [
        ("NUL in a string", obj(json!({"k": "a\u{0}b"}))),
        ("NUL in a key", obj(json!({"k\u{0}": 1}))),
        ("NUL in a nested string", obj(json!({"k": [{"x": "\u{0}"}]}))),
        ("more than 64 KiB", obj(json!({"big": "x".repeat(selfrag_core::MAX_JSON_BYTES)}))),
        ("nested too deep", obj(deep)),
    ];
    for (what, data) in bad {
        expect_invalid(f.store.set_data(user, s.id, data).await, &format!("set_data with {what}"), "data")?;
    }
    ensure_eq!(f.store.get(user, s.id).await.ctx("get")?, Some(s), "session after rejected set_data calls");
    for v in [json!([1]), json!("s"), json!(3), json!(null)] {
        expect_invalid(NewSession::new(LONG).and_then(|n| n.with_data(v.clone())), &format!("data {v}"), "data")?;
    }
    Ok(())
}

/// `list` returns the live sessions newest first (by `created_at`) and
/// leaves out expired ones.
pub async fn list_is_newest_first_and_live(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let first = create(f, user, SHORT).await?;
    f.clock.advance(ms(50)).await;
    let second = create(f, user, LONG).await?;
    f.clock.advance(ms(50)).await;
    let third = create(f, user, LONG).await?;
    let listed = f.store.list(user).await.ctx("list")?;
    ensure_eq!(ids(&listed), vec![third.id, second.id, first.id], "list order (newest first)");
    ensure_eq!(listed[0], third, "a listed session equals the created one");
    f.clock.advance(ms(1100)).await;
    let listed = f.store.list(user).await.ctx("list")?;
    ensure_eq!(ids(&listed), vec![third.id, second.id], "list after the first session expired");
    Ok(())
}

/// `revoke` ends one live session (true once, then false), others stay.
pub async fn revoke_ends_one_session(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let a = create(f, user, LONG).await?;
    let b = create(f, user, LONG).await?;
    ensure_eq!(f.store.revoke(user, a.id).await.ctx("revoke")?, true, "revoke of a live session");
    ensure_eq!(f.store.revoke(user, a.id).await.ctx("revoke")?, false, "second revoke");
    ensure_eq!(f.store.get(user, a.id).await.ctx("get")?, None, "get after revoke");
    ensure_eq!(f.store.touch(user, a.id).await.ctx("touch")?, None, "touch after revoke");
    ensure_eq!(f.store.get(user, b.id).await.ctx("get")?, Some(b.clone()), "the other session");
    ensure_eq!(ids(&f.store.list(user).await.ctx("list")?), vec![b.id], "list after revoke");
    Ok(())
}

/// `revoke_all` returns how many live sessions the user had (expired ones do
/// not count), ends them all, and leaves other users alone.
pub async fn revoke_all_counts_live_sessions(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let other = new_user(f).await?;
    let _expiring = create(f, user, SHORT).await?;
    let a = create(f, user, LONG).await?;
    let b = create(f, user, LONG).await?;
    let theirs = create(f, other, LONG).await?;
    f.clock.advance(ms(1200)).await;
    ensure_eq!(f.store.revoke_all(user).await.ctx("revoke_all")?, 2, "revoke_all (2 live, 1 expired)");
    ensure_eq!(f.store.list(user).await.ctx("list")?, vec![], "list after revoke_all");
    for id in [a.id, b.id] {
        ensure_eq!(f.store.get(user, id).await.ctx("get")?, None, "a session after revoke_all");
    }
    ensure_eq!(f.store.revoke_all(user).await.ctx("revoke_all")?, 0, "second revoke_all");
    ensure_eq!(f.store.get(other, theirs.id).await.ctx("get")?, Some(theirs.clone()), "another user's session");
    ensure_eq!(ids(&f.store.list(other).await.ctx("list")?), vec![theirs.id], "another user's list");
    // New sessions after revoke_all work as usual.
    let c = create(f, user, LONG).await?;
    ensure_eq!(ids(&f.store.list(user).await.ctx("list")?), vec![c.id], "list after a new create");
    Ok(())
}

/// With a user store: deleting a user deletes its sessions.
pub async fn delete_user_cascades_to_sessions(f: &SessionFixture) -> CheckResult {
    let Some(users) = &f.users else {
        return Ok(());
    };
    let user = new_user(f).await?;
    let other = new_user(f).await?;
    let a = create(f, user, LONG).await?;
    let b = create(f, user, LONG).await?;
    let theirs = create(f, other, LONG).await?;
    ensure_eq!(users.delete_user(user).await.ctx("delete_user")?, true, "delete_user");
    for id in [a.id, b.id] {
        ensure_eq!(f.store.get(user, id).await.ctx("get")?, None, "a session of the deleted user");
    }
    ensure_eq!(f.store.list(user).await.ctx("list")?, vec![], "sessions of the deleted user");
    expect_kind(f.store.create(user, new_session(LONG)).await, ErrorKind::NotFound, "create for a deleted user")?;
    users.ensure_user(user).await.ctx("ensure_user")?;
    ensure_eq!(f.store.list(user).await.ctx("list")?, vec![], "sessions of the re-created user");
    ensure_eq!(f.store.get(other, theirs.id).await.ctx("get")?, Some(theirs), "another user's session");
    Ok(())
}

/// At the cap with [`OnLimit::EvictOldest`], `create` ends the live session
/// that would expire soonest (so a touch keeps a session), expired sessions
/// do not count, and other users are untouched.
pub async fn cap_evicts_the_session_expiring_soonest(f: &SessionFixture) -> CheckResult {
    let store = limited(f, 3, OnLimit::EvictOldest)?;
    let user = new_user(f).await?;
    let other = new_user(f).await?;
    let theirs = store.create(other, new_session(SHORT)).await.ctx("create")?;
    // Expiries: a after 60 s, b after 120 s, c after 90 s.
    let a = store.create(user, new_session(Duration::from_secs(60))).await.ctx("create")?;
    let b = store.create(user, new_session(Duration::from_secs(120))).await.ctx("create")?;
    let c = store.create(user, new_session(Duration::from_secs(90))).await.ctx("create")?;
    let d = store.create(user, new_session(LONG)).await.ctx("create at the cap")?;
    ensure_eq!(store.get(user, a.id).await.ctx("get")?, None, "the session expiring soonest after a create at the cap");
    ensure_eq!(
        id_set(&store.list(user).await.ctx("list")?),
        HashSet::from([d.id, c.id, b.id]),
        "sessions after evicting the soonest to expire"
    );
    ensure_eq!(store.get(other, theirs.id).await.ctx("get")?, Some(theirs), "another user's session");

    // With one TTL for all, the soonest to expire is the least recently
    // active: touching the oldest keeps it.
    let user = new_user(f).await?;
    let x = store.create(user, new_session(LONG)).await.ctx("create")?;
    let y = store.create(user, new_session(LONG)).await.ctx("create")?;
    let short = store.create(user, new_session(SHORT)).await.ctx("create")?;
    f.clock.advance(ms(1200)).await;
    // `short` expired: it does not count, so this create evicts nothing.
    let z = store.create(user, new_session(LONG)).await.ctx("create after an expiry")?;
    ensure_eq!(
        id_set(&store.list(user).await.ctx("list")?),
        HashSet::from([z.id, y.id, x.id]),
        "sessions (expired ones do not count)"
    );
    ensure_eq!(store.get(user, short.id).await.ctx("get")?, None, "the expired session");
    store.touch(user, x.id).await.ctx("touch")?.ok_or("touch of a live session: None")?;
    let w = store.create(user, new_session(LONG)).await.ctx("create at the cap")?;
    ensure_eq!(
        store.get(user, y.id).await.ctx("get")?,
        None,
        "the least recently active session after a create at the cap"
    );
    ensure_eq!(
        id_set(&store.list(user).await.ctx("list")?),
        HashSet::from([w.id, z.id, x.id]),
        "sessions after evicting"
    );
    Ok(())
}

/// At the cap with [`OnLimit::Refuse`], `create` is `Conflict` with
/// `what = "session limit"` and writes nothing; a revoke or an expiry makes
/// room again, and the cap is per user.
pub async fn cap_refuses_when_full(f: &SessionFixture) -> CheckResult {
    let store = limited(f, 2, OnLimit::Refuse)?;
    let user = new_user(f).await?;
    let short = store.create(user, new_session(SHORT)).await.ctx("create")?;
    let long = store.create(user, new_session(LONG)).await.ctx("create")?;
    let id = SessionId::generate();
    let refused = store.create(user, new_session(LONG).with_id(id)).await;
    ensure!(
        refused.as_ref().is_err_and(|e| SessionLimits::is_reached(e) && !e.is_retryable()),
        "create at the cap: expected a non-retryable Conflict with what = \"session limit\", got {refused:?}"
    );
    expect_conflict(refused, SessionLimits::REACHED, "create at the cap")?;
    ensure_eq!(store.get(user, id).await.ctx("get")?, None, "the refused session");
    ensure_eq!(
        id_set(&store.list(user).await.ctx("list")?),
        HashSet::from([long.id, short.id]),
        "sessions after a refused create"
    );
    let other = new_user(f).await?;
    store.create(other, new_session(LONG)).await.ctx("create for another user")?;

    ensure_eq!(store.revoke(user, long.id).await.ctx("revoke")?, true, "revoke");
    let again = store.create(user, new_session(LONG)).await.ctx("create after a revoke")?;
    expect_conflict(store.create(user, new_session(LONG)).await, SessionLimits::REACHED, "create at the cap again")?;
    f.clock.advance(ms(1200)).await;
    let after = store.create(user, new_session(LONG)).await.ctx("create after an expiry")?;
    ensure_eq!(
        id_set(&store.list(user).await.ctx("list")?),
        HashSet::from([after.id, again.id]),
        "sessions after the expiry"
    );
    Ok(())
}

/// `list_recent(user, limit)` returns the `limit` newest live sessions,
/// newest first; `limit` must be 1 to 1,000.
pub async fn list_recent_returns_the_newest(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let mut made = vec![create(f, user, SHORT).await?];
    for _ in 0..4 {
        f.clock.advance(ms(20)).await;
        made.push(create(f, user, LONG).await?);
    }
    made.reverse();
    ensure_eq!(f.store.list_recent(user, 3).await.ctx("list_recent")?, made[..3].to_vec(), "list_recent(3)");
    ensure_eq!(f.store.list_recent(user, 1).await.ctx("list_recent")?, made[..1].to_vec(), "list_recent(1)");
    ensure_eq!(f.store.list_recent(user, 5).await.ctx("list_recent")?, made, "list_recent(5)");
    ensure_eq!(f.store.list_recent(user, MAX_LIST_LIMIT).await.ctx("list_recent")?, made, "list_recent(1000)");
    expect_invalid(f.store.list_recent(user, 0).await, "list_recent(0)", "limit")?;
    expect_invalid(f.store.list_recent(user, MAX_LIST_LIMIT + 1).await, "list_recent(1001)", "limit")?;
    f.clock.advance(ms(1100)).await;
    ensure_eq!(f.store.list_recent(user, 5).await.ctx("list_recent")?, made[..4].to_vec(), "list_recent after expiry");
    ensure_eq!(f.store.list_recent(user, 4).await.ctx("list_recent")?, made[..4].to_vec(), "list_recent(4)");
    let other = new_user(f).await?;
    ensure_eq!(f.store.list_recent(other, 5).await.ctx("list_recent")?, vec![], "another user's list");
    Ok(())
}

/// `revoke_all` ends more sessions than any backend deletes in one batch,
/// counting only the live ones.
pub async fn revoke_all_ends_many_sessions(f: &SessionFixture) -> CheckResult {
    const N: usize = 1_200;
    let store = limited(f, 5_000, OnLimit::EvictOldest)?;
    let user = new_user(f).await?;
    let other = new_user(f).await?;
    let theirs = store.create(other, new_session(LONG)).await.ctx("create")?;
    for _ in 0..3 {
        store.create(user, new_session(SHORT)).await.ctx("create")?;
    }
    f.clock.advance(ms(1200)).await;
    let made: Vec<Session> = futures::stream::iter(0..N)
        .map(|_| store.create(user, new_session(LONG)))
        .buffer_unordered(16)
        .try_collect()
        .await
        .ctx("create")?;
    ensure_eq!(store.list_recent(user, 1000).await.ctx("list_recent")?.len(), 1000, "sessions listed");
    ensure_eq!(store.revoke_all(user).await.ctx("revoke_all")?, N as u64, "revoke_all of 1,200 live and 3 expired");
    ensure_eq!(store.list(user).await.ctx("list")?, vec![], "list after revoke_all");
    for s in made.iter().step_by(97) {
        ensure_eq!(store.get(user, s.id).await.ctx("get")?, None, "a session after revoke_all");
    }
    ensure_eq!(store.revoke_all(user).await.ctx("revoke_all")?, 0, "second revoke_all");
    ensure_eq!(store.get(other, theirs.id).await.ctx("get")?, Some(theirs), "another user's session");
    Ok(())
}

/// `create` with a chosen id is retry-safe: repeating it returns the stored
/// session (no second session, nothing evicted, even at a full cap); after
/// a revoke it creates the session again.
pub async fn retried_create_returns_the_stored_session(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let id = SessionId::generate();
    let new = new_session(LONG).with_data(json!({"cart": [1, 2], "x": 1.5})).ctx("with_data")?.with_id(id);
    let first = f.store.create(user, new.clone()).await.ctx("create")?;
    ensure_eq!(first.id, id, "id of a session created with a chosen id");
    f.clock.advance(ms(50)).await;
    ensure_eq!(f.store.create(user, new.clone()).await.ctx("retried create")?, first, "retried create");
    ensure_eq!(ids(&f.store.list(user).await.ctx("list")?), vec![id], "sessions after a retried create");
    let touched = f.store.touch(user, id).await.ctx("touch")?.ok_or("touch of a live session: None")?;
    ensure_eq!(f.store.create(user, new.clone()).await.ctx("retried create")?, touched, "retry after a touch");

    // A full cap neither refuses nor evicts a retry.
    let refuse = limited(f, 1, OnLimit::Refuse)?;
    ensure_eq!(refuse.create(user, new.clone()).await.ctx("retry at a full cap")?, touched, "retry, refusing cap");
    let evict = limited(f, 1, OnLimit::EvictOldest)?;
    ensure_eq!(evict.create(user, new.clone()).await.ctx("retry at a full cap")?, touched, "retry, evicting cap");
    ensure_eq!(f.store.get(user, id).await.ctx("get")?, Some(touched.clone()), "the session after the retries");

    ensure_eq!(f.store.revoke(user, id).await.ctx("revoke")?, true, "revoke");
    let again = f.store.create(user, new).await.ctx("create after revoke")?;
    ensure!(again.id == id && again.created_at >= first.created_at, "create after revoke made {again:?}");
    Ok(())
}

/// A chosen id held by a different session of the same user (other TTL or
/// data) is `Conflict` with `what = "session"`, and the stored session is
/// unchanged; an expired session's id is free again.
pub async fn conflicting_session_id_is_refused(f: &SessionFixture) -> CheckResult {
    let user = new_user(f).await?;
    let id = SessionId::generate();
    let s = f
        .store
        .create(user, new_session(LONG).with_data(json!({"a": 1})).ctx("with_data")?.with_id(id))
        .await
        .ctx("create")?;
    let other_data = new_session(LONG).with_data(json!({"a": 2})).ctx("with_data")?.with_id(id);
    expect_conflict(f.store.create(user, other_data).await, "session", "create with the id and other data")?;
    let other_ttl = new_session(SHORT).with_data(json!({"a": 1})).ctx("with_data")?.with_id(id);
    expect_conflict(f.store.create(user, other_ttl).await, "session", "create with the id and another ttl")?;
    ensure_eq!(f.store.get(user, id).await.ctx("get")?, Some(s), "the session after conflicting creates");
    ensure_eq!(ids(&f.store.list(user).await.ctx("list")?), vec![id], "list after conflicting creates");

    let short_id = SessionId::generate();
    let gone = f.store.create(user, new_session(SHORT).with_id(short_id)).await.ctx("create")?;
    f.clock.advance(ms(1200)).await;
    let reborn = f.store.create(user, new_session(LONG).with_id(short_id)).await.ctx("create with an expired id")?;
    ensure!(reborn.ttl == LONG && reborn.created_at > gone.created_at, "create with an expired id made {reborn:?}");
    Ok(())
}

/// Where session ids are global (Postgres, local), a chosen id held by
/// another user's session is `Conflict` with `what = "session"`, and that
/// session is untouched. (Redis scopes ids to their user and skips this.)
pub async fn session_id_of_another_user_is_refused(f: &SessionFixture) -> CheckResult {
    let alice = new_user(f).await?;
    let bob = new_user(f).await?;
    let new = new_session(LONG).with_id(SessionId::generate());
    let s = f.store.create(alice, new.clone()).await.ctx("create")?;
    expect_conflict(f.store.create(bob, new).await, "session", "create with another user's session id")?;
    ensure_eq!(f.store.get(alice, s.id).await.ctx("get")?, Some(s.clone()), "the first user's session");
    ensure_eq!(f.store.get(bob, s.id).await.ctx("get")?, None, "the id for the second user");
    ensure_eq!(f.store.list(bob).await.ctx("list")?, vec![], "the second user's list");
    Ok(())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __session_checks {
    ($cb:ident!($($args:tt)*)) => {
        $crate::$cb! { $($args)* [
            create_then_get_round_trips,
            session_ids_are_unique,
            absent_sessions_read_as_none,
            user_isolation,
            unknown_user_create,
            expired_sessions_are_gone,
            get_does_not_extend,
            set_data_replaces_without_extending,
            touch_slides_expiry,
            bad_data_is_rejected,
            list_is_newest_first_and_live,
            revoke_ends_one_session,
            revoke_all_counts_live_sessions,
            delete_user_cascades_to_sessions,
            cap_evicts_the_session_expiring_soonest,
            cap_refuses_when_full,
            list_recent_returns_the_newest,
            revoke_all_ends_many_sessions,
            retried_create_returns_the_stored_session,
            conflicting_session_id_is_refused,
            session_id_of_another_user_is_refused,
        ] }
    };
}
crate::__session_checks!(__suite_list!(SessionFixture, "session.rs", __session_checks,));
