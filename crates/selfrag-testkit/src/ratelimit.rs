//! The [`RateLimiter`] suite.
//!
//! Every check uses fresh keys (a new user id), so limiters made by one
//! fixture may share storage. Time moves through
//! [`RateLimitFixture::clock`]; the windows are chosen so that results hold
//! wherever the backend's bucket boundaries fall (a long window's count only
//! decays by a whole unit after `length / limit`, far beyond the few seconds
//! a check takes).

use std::sync::Arc;
use std::time::Duration;

use selfrag_core::{RateLimitDecision, RateLimitKey, RateLimitPolicy, RateLimiter, UserId, Window};

use crate::util::{expect_invalid, Ctx};
use crate::{CheckResult, RateLimitFixture};

fn policy(windows: &[(u64, u32)]) -> RateLimitPolicy {
    RateLimitPolicy::new(windows.iter().map(|&(ms, limit)| Window::new(Duration::from_millis(ms), limit).unwrap()))
        .expect("valid policy")
}

fn key(user: UserId, scope: &str) -> RateLimitKey {
    RateLimitKey::new(user, scope).expect("valid scope")
}

fn remaining(d: &RateLimitDecision) -> Vec<u32> {
    d.windows.iter().map(|w| w.remaining).collect()
}

async fn check(l: &Arc<dyn RateLimiter>, k: &RateLimitKey, cost: u32) -> Result<RateLimitDecision, String> {
    let d = l.check(k, cost).await.ctx(format_args!("check(cost {cost})"))?;
    ensure_eq!(d.windows.len(), l.policy().windows().len(), "window statuses in a decision");
    for (status, window) in d.windows.iter().zip(l.policy().windows()) {
        ensure_eq!(status.window, *window, "decision windows in policy order");
    }
    if d.allowed {
        ensure!(d.retry_after.is_none(), "an allowed decision has retry_after {:?}", d.retry_after);
        ensure!(d.windows.iter().all(|w| w.allowed), "allowed although a window denies: {d:?}");
    } else {
        ensure!(d.windows.iter().any(|w| !w.allowed), "denied although every window allows: {d:?}");
        ensure!(d.retry_after.is_some(), "a denied decision has no retry_after");
    }
    Ok(d)
}

/// The limiter enforces the policy it was made with.
pub async fn policy_is_kept(f: &RateLimitFixture) -> CheckResult {
    for p in [policy(&[(60_000, 5)]), RateLimitPolicy::default(), policy(&[(1000, 3), (60_000, 10), (3_600_000, 50)])] {
        let l = (f.make)(p.clone());
        ensure_eq!(l.policy(), &p, "policy()");
    }
    Ok(())
}

/// A window allows exactly up to its limit, counting down `remaining`, then
/// denies with a `retry_after`.
pub async fn allows_up_to_the_limit(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 5)]));
    let k = key(UserId::new(), "chat");
    for n in 1..=5u32 {
        let d = check(&l, &k, 1).await?;
        ensure!(d.allowed, "request {n} of a limit of 5 was denied: {d:?}");
        ensure_eq!(d.remaining(), 5 - n, "remaining after request {n}");
    }
    for n in 6..=8 {
        let d = check(&l, &k, 1).await?;
        ensure!(!d.allowed, "request {n} of a limit of 5 was allowed: {d:?}");
        ensure_eq!(d.remaining(), 0, "remaining when denied");
    }
    Ok(())
}

/// Costs count as units: with a limit of 5, cost 3 is allowed, another 3
/// denied, then 2 allowed.
pub async fn costs_are_units(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 5)]));
    let k = key(UserId::new(), "embed");
    let d = check(&l, &k, 3).await?;
    ensure!(d.allowed, "cost 3 of 5 denied: {d:?}");
    ensure_eq!(d.remaining(), 2, "remaining after cost 3");
    let d = check(&l, &k, 3).await?;
    ensure!(!d.allowed, "cost 3 with 2 left allowed: {d:?}");
    ensure_eq!(d.remaining(), 2, "remaining after a denied cost 3 (a denial consumes nothing)");
    let d = check(&l, &k, 2).await?;
    ensure!(d.allowed, "cost 2 with 2 left denied: {d:?}");
    ensure_eq!(d.remaining(), 0, "remaining after using everything");
    Ok(())
}

/// `remaining` is reported per window (after consuming), and
/// `RateLimitDecision::remaining` is the smallest.
pub async fn remaining_budget_is_reported(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 10), (3_600_000, 20), (86_400_000, 100)]));
    let k = key(UserId::new(), "chat");
    let d = check(&l, &k, 3).await?;
    ensure_eq!(remaining(&d), vec![7, 17, 97], "per-window remaining after cost 3");
    let d = check(&l, &k, 4).await?;
    ensure_eq!(remaining(&d), vec![3, 13, 93], "per-window remaining after cost 4 more");
    ensure_eq!(d.remaining(), 3, "overall remaining");
    let d = check(&l, &k, 5).await?;
    ensure!(!d.allowed, "cost 5 with 3 left allowed");
    ensure_eq!(remaining(&d), vec![3, 13, 93], "per-window remaining after a denial");
    ensure_eq!(d.windows.iter().map(|w| w.allowed).collect::<Vec<_>>(), vec![false, true, true], "per-window verdicts");
    Ok(())
}

/// A check is atomic across windows: a denial by one window consumes nothing
/// in any other. Windows (4 s, 3) and (60 s, 5): three requests fill the
/// short window; two denied ones must not eat the long window's last two
/// units, which are then used through the short window's headroom.
///
/// The short window is 4 s, not 1 s, so that a busy machine (or a slow round
/// trip to a real server) cannot let it decay between the requests that fill
/// it and the ones that must be denied; time passes (through the fixture's
/// clock) only once, for the `retry_after` of the short window.
pub async fn denial_is_atomic_across_windows(f: &RateLimitFixture) -> CheckResult {
    let short = Duration::from_secs(4);
    let l = (f.make)(policy(&[(4000, 3), (60_000, 5)]));
    let k = key(UserId::new(), "chat");
    for n in 1..=3 {
        let d = check(&l, &k, 1).await?;
        ensure!(d.allowed, "request {n} denied: {d:?}");
    }
    let mut wait = Duration::ZERO;
    for n in 1..=2 {
        let d = check(&l, &k, 1).await?;
        ensure!(!d.allowed, "request 4 within moments of a 3 per 4 s window allowed: {d:?}");
        ensure!(!d.windows[0].allowed && d.windows[1].allowed, "denial {n}: only the short window denies: {d:?}");
        ensure_eq!(d.windows[1].remaining, 2, "long window remaining after short-window denial {n}");
        let r = d.retry_after.unwrap_or_default();
        ensure!(r <= 2 * short, "denial {n} by the 4 s window only: retry_after {r:?} is above 8 s");
        wait = wait.max(r);
    }
    f.clock.advance(wait + Duration::from_millis(150)).await;
    let d = check(&l, &k, 1).await?;
    ensure!(d.allowed, "request after retry_after denied (did the denials consume the long window?): {d:?}");
    ensure_eq!(d.windows[1].remaining, 1, "long window remaining: the two denials must not have counted");
    Ok(())
}

/// When the longer window denies, nothing is consumed in the shorter one,
/// and `retry_after` is the **largest** of the denying windows' waits (the
/// request is allowed only once every window allows it), no time passing.
///
/// Windows (4 s, 5) and (60 s, 3): three requests use the long window up
/// while the short one has 2 left. Cost 1 and cost 2 are denied by the long
/// window alone (its wait is most of a minute: at least 2 of the short
/// window's lengths, at most 2 of its own); cost 3 is denied by both, and the
/// wait is still the long window's, not the short one's (at most about 1.3 of
/// its 4 s here).
pub async fn retry_after_is_the_longest_wait(f: &RateLimitFixture) -> CheckResult {
    let (short, long) = (Duration::from_secs(4), Duration::from_secs(60));
    let l = (f.make)(policy(&[(4000, 5), (60_000, 3)]));
    let k = key(UserId::new(), "chat");
    for n in 1..=3 {
        let d = check(&l, &k, 1).await?;
        ensure!(d.allowed, "request {n} denied: {d:?}");
    }
    for cost in [1, 2] {
        let d = check(&l, &k, cost).await?;
        ensure!(!d.allowed, "cost {cost} with the 3 per minute window used up allowed: {d:?}");
        ensure!(d.windows[0].allowed && !d.windows[1].allowed, "cost {cost}: only the long window denies: {d:?}");
        ensure_eq!(d.windows[0].remaining, 2, "short window remaining, unconsumed by the denial of cost {cost}");
        let r = d.retry_after.unwrap_or_default();
        ensure!(
            r >= 2 * short && r <= 2 * long,
            "cost {cost} denied by the 60 s window: retry_after {r:?} is not within [8 s, 120 s]"
        );
    }
    let d = check(&l, &k, 3).await?;
    ensure!(!d.allowed && !d.windows[0].allowed && !d.windows[1].allowed, "cost 3: both windows deny: {d:?}");
    let r = d.retry_after.unwrap_or_default();
    ensure!(
        r >= 2 * short && r <= 2 * long,
        "denied by both windows: retry_after {r:?} must be the 60 s window's wait (within [8 s, 120 s]), \
         the largest of the two"
    );
    ensure_eq!(remaining(&d), vec![2, 0], "remaining after the denials (nothing consumed)");
    Ok(())
}

/// `retry_after` is honest: positive and at most two window lengths; the
/// same request is still denied halfway there and allowed right after it.
pub async fn retry_after_is_honest(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(1000, 2)]));
    let k = key(UserId::new(), "chat");
    for _ in 0..2 {
        let d = check(&l, &k, 1).await?;
        ensure!(d.allowed, "within the limit, denied: {d:?}");
    }
    let d = check(&l, &k, 1).await?;
    ensure!(!d.allowed, "third request in a 2/s window allowed: {d:?}");
    let wait = d.retry_after.ok_or("denied without retry_after")?;
    ensure!(
        wait > Duration::ZERO && wait <= Duration::from_millis(2000),
        "retry_after {wait:?} is not within (0, 2 s] for a 1 s window"
    );
    f.clock.advance(wait / 2).await;
    let d = check(&l, &k, 1).await?;
    ensure!(!d.allowed, "allowed at half of retry_after {wait:?}: retry_after overstates the wait");
    f.clock.advance(wait - wait / 2 + Duration::from_millis(100)).await;
    let d = check(&l, &k, 1).await?;
    ensure!(d.allowed, "denied just after retry_after {wait:?}: {d:?}");
    Ok(())
}

/// Limits are per key: another user, or another scope of the same user,
/// keeps its whole budget.
pub async fn keys_are_isolated(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 3)]));
    let user = UserId::new();
    let full = key(user, "chat");
    for _ in 0..3 {
        check(&l, &full, 1).await?;
    }
    ensure!(!check(&l, &full, 1).await?.allowed, "a full key allowed another request");
    for other in [key(UserId::new(), "chat"), key(user, "embed")] {
        let d = check(&l, &other, 1).await?;
        ensure!(d.allowed, "key {other:?} denied because another key is full: {d:?}");
        ensure_eq!(d.remaining(), 2, "remaining of key {other:?}");
    }
    ensure!(!check(&l, &full, 1).await?.allowed, "the full key after other keys were used");
    Ok(())
}

/// `reset` forgets a key's use (and only that key's).
pub async fn reset_forgets_use(f: &RateLimitFixture) -> CheckResult {
    // A 4 s short window: the filled keys must stay full for the whole
    // check, even on a slow machine against a real server.
    let l = (f.make)(policy(&[(4000, 2), (60_000, 4)]));
    let k = key(UserId::new(), "chat");
    let other = key(UserId::new(), "chat");
    for _ in 0..2 {
        check(&l, &k, 1).await?;
        check(&l, &other, 1).await?;
    }
    ensure!(!check(&l, &k, 1).await?.allowed, "full key allowed");
    l.reset(&k).await.ctx("reset")?;
    let d = check(&l, &k, 1).await?;
    ensure!(d.allowed, "denied after reset: {d:?}");
    ensure_eq!(remaining(&d), vec![1, 3], "remaining after reset and one request");
    ensure!(!check(&l, &other, 1).await?.allowed, "reset of one key reset another");
    l.reset(&key(UserId::new(), "never-used")).await.ctx("reset of an unused key")?;
    Ok(())
}

/// Bad costs (0, or above a window's limit) are `InvalidInput` naming
/// `cost` and consume nothing.
pub async fn bad_costs_are_rejected(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 5), (3_600_000, 50)]));
    let k = key(UserId::new(), "chat");
    expect_invalid(l.check(&k, 0).await, "cost 0", "cost")?;
    expect_invalid(l.check(&k, 6).await, "cost above the smallest limit", "cost")?;
    expect_invalid(l.check(&k, u32::MAX).await, "cost u32::MAX", "cost")?;
    let d = check(&l, &k, 5).await?;
    ensure!(d.allowed, "the full budget after rejected costs was denied: {d:?}");
    ensure_eq!(remaining(&d), vec![0, 45], "remaining (the rejected costs consumed nothing)");
    Ok(())
}

/// Concurrent checks on one key never allow more than the limit, and allow
/// exactly the limit.
pub async fn concurrent_checks_respect_the_limit(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 25), (3_600_000, 1000)]));
    let k = key(UserId::new(), "chat");
    let tasks: Vec<_> = (0..80)
        .map(|_| {
            let (l, k) = (l.clone(), k.clone());
            tokio::spawn(async move { l.check(&k, 1).await })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        if t.await.map_err(|e| format!("task: {e}"))?.ctx("concurrent check")?.allowed {
            allowed += 1;
        }
    }
    ensure_eq!(allowed, 25, "requests allowed out of 80 concurrent ones with a limit of 25");
    let d = check(&l, &k, 1).await?;
    ensure!(!d.allowed, "allowed after the limit was reached concurrently: {d:?}");
    ensure_eq!(d.windows[1].remaining, 975, "long window remaining (only allowed requests count)");
    Ok(())
}

/// `reset_user` forgets every scope of one user (a second call finds
/// nothing) and leaves other users' state alone.
pub async fn reset_user_forgets_every_scope(f: &RateLimitFixture) -> CheckResult {
    let l = (f.make)(policy(&[(60_000, 2)]));
    let (alice, bob) = (UserId::new(), UserId::new());
    let scopes = ["chat", "embed", "a:b.c"];
    for scope in scopes {
        for _ in 0..2 {
            check(&l, &key(alice, scope), 1).await?;
        }
        ensure!(!check(&l, &key(alice, scope), 1).await?.allowed, "alice's {scope} is not at its limit");
    }
    for _ in 0..2 {
        check(&l, &key(bob, "chat"), 1).await?;
    }
    let n = l.reset_user(alice).await.ctx("reset_user")?;
    // One entry per scope at least (a backend keeping one per window
    // bucket may have two when a bucket boundary passed meanwhile).
    ensure!(n >= scopes.len() as u64, "reset_user deleted {n} entries for {} scopes", scopes.len());
    for scope in scopes {
        let d = check(&l, &key(alice, scope), 1).await?;
        ensure!(d.allowed && d.remaining() == 1, "alice's {scope} after reset_user: {d:?}");
    }
    ensure!(!check(&l, &key(bob, "chat"), 1).await?.allowed, "bob's limit was reset with alice's");
    // Only what alice consumed since: one entry per scope, deleted again.
    let again = l.reset_user(alice).await.ctx("reset_user again")?;
    ensure!(again >= scopes.len() as u64, "the second reset_user deleted {again} entries");
    ensure_eq!(l.reset_user(alice).await.ctx("reset_user a third time")?, 0, "a reset_user with nothing left");
    ensure_eq!(l.reset_user(UserId::new()).await.ctx("reset_user unknown")?, 0, "an unknown user's reset_user");
    Ok(())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __ratelimit_checks {
    ($cb:ident!($($args:tt)*)) => {
        $crate::$cb! { $($args)* [
            policy_is_kept,
            allows_up_to_the_limit,
            costs_are_units,
            remaining_budget_is_reported,
            denial_is_atomic_across_windows,
            retry_after_is_the_longest_wait,
            retry_after_is_honest,
            keys_are_isolated,
            reset_forgets_use,
            bad_costs_are_rejected,
            concurrent_checks_respect_the_limit,
            reset_user_forgets_every_scope,
        ] }
    };
}
crate::__ratelimit_checks!(__suite_list!(RateLimitFixture, "ratelimit.rs", __ratelimit_checks,));
