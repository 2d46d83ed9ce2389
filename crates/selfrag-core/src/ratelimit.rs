//! Multi-window rate limits with sliding-window counters.
//!
//! # Algorithm
//! Each window of length `W` counts requests in fixed buckets
//! `[k·W, (k+1)·W)` of the backend's clock (milliseconds since the Unix
//! epoch). At time `t` in bucket `k`, with `e = t − k·W` milliseconds elapsed,
//! the window's estimated use is
//!
//! ```text
//! used = prev · (W − e) / W + curr        (prev = bucket k−1, curr = bucket k)
//! ```
//!
//! A request of `cost` is allowed when `used + cost ≤ limit` holds in **every**
//! window; then `cost` is added to the current bucket of every window. When any
//! window denies, nothing is added anywhere. A bucket is kept for `2·W` (it is
//! needed as `prev` during the next bucket), which for the default windows
//! gives the key lifetimes 120 s, 7200 s and 172800 s.
//!
//! `retry_after` is the shortest wait after which the same request would be
//! allowed if nothing else is consumed meanwhile: the estimate only decreases
//! with time, so it is the largest of the per-window waits, each rounded up to
//! the millisecond. [`evaluate`] is the reference implementation; the Redis
//! backend runs the same arithmetic in a Lua script.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::UserId;

/// One window of a [`RateLimitPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawWindow")]
pub struct Window {
    length_ms: u64,
    limit: u32,
}

#[derive(Deserialize)]
struct RawWindow {
    length_ms: u64,
    limit: u32,
}

impl TryFrom<RawWindow> for Window {
    type Error = Error;
    fn try_from(raw: RawWindow) -> Result<Self> {
        Window::new(Duration::from_millis(raw.length_ms), raw.limit)
    }
}

impl Window {
    /// Shortest window.
    pub const MIN_LENGTH: Duration = Duration::from_millis(10);
    /// Longest window (31 days).
    pub const MAX_LENGTH: Duration = Duration::from_secs(31 * 24 * 3600);
    /// Largest limit of a window.
    pub const MAX_LIMIT: u32 = 1_000_000;

    /// A window of `length` allowing `limit` units of cost.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `window.length` (outside
    /// [`Window::MIN_LENGTH`]..=[`Window::MAX_LENGTH`] or not whole
    /// milliseconds) or `window.limit` (0 or above [`Window::MAX_LIMIT`]).
    pub fn new(length: Duration, limit: u32) -> Result<Self> {
        if length < Self::MIN_LENGTH || length > Self::MAX_LENGTH {
            return Err(Error::invalid(
                "window.length",
                format!("must be between {:?} and {:?}, got {length:?}", Self::MIN_LENGTH, Self::MAX_LENGTH),
            ));
        }
        if length.subsec_nanos() % 1_000_000 != 0 {
            return Err(Error::invalid("window.length", "must be whole milliseconds"));
        }
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(Error::invalid(
                "window.limit",
                format!("must be between 1 and {}, got {limit}", Self::MAX_LIMIT),
            ));
        }
        let length_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        Ok(Self { length_ms, limit })
    }

    /// A one-minute window.
    ///
    /// # Errors
    /// As [`Window::new`], for the limit.
    pub fn per_minute(limit: u32) -> Result<Self> {
        Self::new(Duration::from_secs(60), limit)
    }

    /// A one-hour window.
    ///
    /// # Errors
    /// As [`Window::new`], for the limit.
    pub fn per_hour(limit: u32) -> Result<Self> {
        Self::new(Duration::from_secs(3600), limit)
    }

    /// A one-day window.
    ///
    /// # Errors
    /// As [`Window::new`], for the limit.
    pub fn per_day(limit: u32) -> Result<Self> {
        Self::new(Duration::from_secs(86_400), limit)
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_millis(self.length_ms)
    }

    /// The window's length in milliseconds.
    pub fn length_ms(&self) -> u64 {
        self.length_ms
    }

    /// How much cost the window allows.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How long a bucket of this window is kept: twice its length.
    pub fn bucket_ttl(&self) -> Duration {
        Duration::from_millis(self.length_ms * 2)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.length_ms {
            60_000 => write!(f, "{}/minute", self.limit),
            3_600_000 => write!(f, "{}/hour", self.limit),
            86_400_000 => write!(f, "{}/day", self.limit),
            ms => write!(f, "{}/{}ms", self.limit, ms),
        }
    }
}

/// The windows a request must fit in, all at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Window>", into = "Vec<Window>")]
pub struct RateLimitPolicy {
    windows: Vec<Window>,
}

impl RateLimitPolicy {
    /// Most windows in one policy.
    pub const MAX_WINDOWS: usize = 8;

    /// A policy of `windows`, kept in order of increasing length.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`windows`) when there are none, more than
    /// [`RateLimitPolicy::MAX_WINDOWS`], or two of the same length.
    pub fn new(windows: impl IntoIterator<Item = Window>) -> Result<Self> {
        let mut windows: Vec<Window> = windows.into_iter().collect();
        if windows.is_empty() {
            return Err(Error::invalid("windows", "a policy needs at least one window"));
        }
        if windows.len() > Self::MAX_WINDOWS {
            return Err(Error::invalid(
                "windows",
                format!("at most {} windows, got {}", Self::MAX_WINDOWS, windows.len()),
            ));
        }
        windows.sort_by_key(|w| w.length_ms);
        if windows.windows(2).any(|p| p[0].length_ms == p[1].length_ms) {
            return Err(Error::invalid("windows", "two windows have the same length"));
        }
        Ok(Self { windows })
    }

    /// Minute, hour and day windows with these limits.
    ///
    /// # Errors
    /// As [`Window::new`].
    pub fn minute_hour_day(per_minute: u32, per_hour: u32, per_day: u32) -> Result<Self> {
        Self::new([Window::per_minute(per_minute)?, Window::per_hour(per_hour)?, Window::per_day(per_day)?])
    }

    /// The windows, shortest first.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Checks a request's cost against the policy.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`cost`) for 0, or a cost above a window's
    /// limit (it could never be allowed).
    pub fn check_cost(&self, cost: u32) -> Result<()> {
        if cost == 0 {
            return Err(Error::invalid("cost", "must be at least 1"));
        }
        if let Some(w) = self.windows.iter().find(|w| cost > w.limit) {
            return Err(Error::invalid(
                "cost",
                format!("{cost} exceeds the limit of window {w}, so it could never be allowed"),
            ));
        }
        Ok(())
    }
}

impl Default for RateLimitPolicy {
    /// 60 per minute, 1,000 per hour, 10,000 per day.
    fn default() -> Self {
        Self {
            windows: vec![
                Window { length_ms: 60_000, limit: 60 },
                Window { length_ms: 3_600_000, limit: 1_000 },
                Window { length_ms: 86_400_000, limit: 10_000 },
            ],
        }
    }
}

impl TryFrom<Vec<Window>> for RateLimitPolicy {
    type Error = Error;
    fn try_from(w: Vec<Window>) -> Result<Self> {
        Self::new(w)
    }
}

impl From<RateLimitPolicy> for Vec<Window> {
    fn from(p: RateLimitPolicy) -> Vec<Window> {
        p.windows
    }
}

/// What a limit applies to: one user's use of one scope (e.g. `chat`,
/// `embed`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitKey {
    user: UserId,
    scope: String,
}

impl RateLimitKey {
    /// Longest scope, in bytes.
    pub const MAX_SCOPE_LEN: usize = 64;

    /// The key for `user` in `scope`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`scope`): 1 to 64 ASCII letters, digits, `_`,
    /// `-`, `.` or `:`.
    pub fn new(user: UserId, scope: impl Into<String>) -> Result<Self> {
        let scope = scope.into();
        if scope.is_empty() || scope.len() > Self::MAX_SCOPE_LEN {
            return Err(Error::invalid(
                "scope",
                format!("must be 1 to {} bytes, got {}", Self::MAX_SCOPE_LEN, scope.len()),
            ));
        }
        if let Some(bad) = scope.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
            return Err(Error::invalid(
                "scope",
                format!("may hold only ASCII letters, digits, `_`, `-`, `.` and `:`, found {bad:?}"),
            ));
        }
        Ok(Self { user, scope })
    }

    /// The user.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// The state of one window after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStatus {
    /// The window.
    pub window: Window,
    /// Whether this window alone would allow the request.
    pub allowed: bool,
    /// Cost still available in this window after the check (after consuming,
    /// when the request was allowed).
    pub remaining: u32,
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitDecision {
    /// Whether the request was allowed (and its cost consumed in every
    /// window).
    pub allowed: bool,
    /// Each window's state, shortest window first.
    pub windows: Vec<WindowStatus>,
    /// When denied: the shortest wait after which the same request would be
    /// allowed, if nothing else is consumed meanwhile. `None` when allowed.
    pub retry_after: Option<Duration>,
}

impl RateLimitDecision {
    /// The smallest remaining budget over all windows.
    pub fn remaining(&self) -> u32 {
        self.windows.iter().map(|w| w.remaining).min().unwrap_or(0)
    }
}

/// Bucket counts of one window, as read from a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketCounts {
    /// The previous bucket's count.
    pub previous: u64,
    /// The current bucket's count.
    pub current: u64,
}

/// The bucket index of `now_ms` in a window of `length_ms`.
pub fn bucket_of(now_ms: i64, length_ms: u64) -> i64 {
    now_ms.div_euclid(i64::try_from(length_ms).unwrap_or(i64::MAX))
}

/// The reference evaluation of a check at `now_ms` (milliseconds since the
/// Unix epoch) given each window's bucket counts, in the policy's order.
/// Consuming (adding `cost` to every current bucket when allowed) is left to
/// the caller, which must do it atomically with reading the counts.
///
/// # Panics
/// When `counts` and the policy's windows differ in length.
pub fn evaluate(policy: &RateLimitPolicy, counts: &[BucketCounts], now_ms: i64, cost: u32) -> RateLimitDecision {
    assert_eq!(counts.len(), policy.windows().len(), "one BucketCounts per window");
    let cost = u128::from(cost);
    let mut statuses = Vec::with_capacity(counts.len());
    let mut retry_ms: u128 = 0;
    for (window, c) in policy.windows().iter().zip(counts) {
        let w = u128::from(window.length_ms);
        let elapsed =
            u128::try_from(now_ms.rem_euclid(i64::try_from(window.length_ms).unwrap_or(i64::MAX))).unwrap_or(0);
        let (prev, curr, limit) = (u128::from(c.previous), u128::from(c.current), u128::from(window.limit));
        // Everything scaled by W to stay in integers: used·W = prev·(W−e) + curr·W.
        let used_w = prev * (w - elapsed) + curr * w;
        let allowed = used_w + cost * w <= limit * w;
        statuses.push((window, allowed, used_w));
        if !allowed {
            let wait = if curr + cost <= limit {
                // Wait inside this bucket until prev's share has decayed.
                let need = used_w + cost * w - limit * w; // > 0
                need.div_ceil(prev)
            } else if curr == 0 {
                // The cost alone exceeds the limit: never allowed
                // (`RateLimitPolicy::check_cost` refuses such costs first).
                u128::from(u64::MAX)
            } else {
                // Wait for the next bucket, where this bucket becomes `prev`.
                (w - elapsed) + (w * (curr + cost - limit)).div_ceil(curr)
            };
            retry_ms = retry_ms.max(wait);
        }
    }
    let allowed = statuses.iter().all(|s| s.1);
    let windows = statuses
        .into_iter()
        .map(|(window, ok, used_w)| {
            let w = u128::from(window.length_ms);
            let after = if allowed { used_w + cost * w } else { used_w };
            let remaining = (u128::from(window.limit) * w).saturating_sub(after) / w;
            WindowStatus { window: *window, allowed: ok, remaining: u32::try_from(remaining).unwrap_or(u32::MAX) }
        })
        .collect();
    RateLimitDecision {
        allowed,
        windows,
        retry_after: (!allowed).then(|| Duration::from_millis(u64::try_from(retry_ms).unwrap_or(u64::MAX))),
    }
}

/// Multi-window rate limits.
///
/// # Contract
/// - A check is atomic across all the policy's windows: when any window
///   denies, nothing is consumed in any window.
/// - Limits are per [`RateLimitKey`]: one user's use never counts against
///   another's, nor one scope against another.
/// - A denial reports `retry_after`; retrying after it succeeds if nothing
///   else was consumed meanwhile.
/// - The arithmetic is that of [`evaluate`] on the backend's clock.
#[async_trait]
pub trait RateLimiter: fmt::Debug + Send + Sync + 'static {
    /// The policy this limiter enforces.
    fn policy(&self) -> &RateLimitPolicy;

    /// Checks a request of `cost` units for `key` and consumes it if allowed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`cost`) as for [`RateLimitPolicy::check_cost`];
    /// backend errors otherwise.
    async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision>;

    /// Forgets all use recorded for `key`.
    async fn reset(&self, key: &RateLimitKey) -> Result<()>;

    /// Forgets the use recorded for `user` in every scope, and returns how
    /// many stored entries it deleted (Redis keys; per-scope states in
    /// process). For erasing a user.
    ///
    /// # Contract
    /// - Every scope of `user` is reset, including scopes this process never
    ///   checked; no other user's state is touched.
    /// - Idempotent: a second call returns `0`. A failed call may have
    ///   deleted some entries; call it again.
    /// - A check of `user` racing it may leave a fresh entry behind.
    async fn reset_user(&self, user: UserId) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(windows: &[(u64, u32)]) -> RateLimitPolicy {
        RateLimitPolicy::new(windows.iter().map(|&(ms, limit)| Window::new(Duration::from_millis(ms), limit).unwrap()))
            .unwrap()
    }

    #[test]
    fn default_policy_is_minute_hour_day() {
        let p = RateLimitPolicy::default();
        let ttls: Vec<_> = p.windows().iter().map(|w| w.bucket_ttl().as_secs()).collect();
        assert_eq!(ttls, [120, 7200, 172_800]);
        assert_eq!(p, RateLimitPolicy::minute_hour_day(60, 1000, 10_000).unwrap());
    }

    #[test]
    fn policy_and_cost_validation() {
        assert_eq!(RateLimitPolicy::new([]).unwrap_err().field(), Some("windows"));
        let w = Window::per_minute(5).unwrap();
        assert_eq!(RateLimitPolicy::new([w, w]).unwrap_err().field(), Some("windows"));
        assert_eq!(Window::per_minute(0).unwrap_err().field(), Some("window.limit"));
        assert_eq!(Window::new(Duration::from_millis(1), 1).unwrap_err().field(), Some("window.length"));
        let p = policy(&[(1000, 3), (10_000, 5)]);
        assert_eq!(p.check_cost(0).unwrap_err().field(), Some("cost"));
        assert_eq!(p.check_cost(4).unwrap_err().field(), Some("cost"));
        assert!(p.check_cost(3).is_ok());
    }

    #[test]
    fn key_scope_rules() {
        let u = UserId::new();
        assert!(RateLimitKey::new(u, "chat").is_ok());
        assert_eq!(RateLimitKey::new(u, "").unwrap_err().field(), Some("scope"));
        assert_eq!(RateLimitKey::new(u, "a{b}").unwrap_err().field(), Some("scope"));
    }

    #[test]
    fn allows_until_the_limit_then_denies() {
        let p = policy(&[(1000, 3)]);
        let now = 10_000; // start of a bucket
        let d = evaluate(&p, &[BucketCounts { previous: 0, current: 2 }], now, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 0);
        let d = evaluate(&p, &[BucketCounts { previous: 0, current: 3 }], now, 1);
        assert!(!d.allowed);
        // Current bucket full: wait for the next bucket (1000 ms) plus the
        // time for the old bucket's share to fall to 2: 1000·(3+1−3)/3 → 334.
        assert_eq!(d.retry_after, Some(Duration::from_millis(1334)));
    }

    #[test]
    fn previous_bucket_decays() {
        let p = policy(&[(1000, 10)]);
        // 250 ms into the bucket, prev = 10 counts 7.5, curr = 2: used 9.5.
        let counts = [BucketCounts { previous: 10, current: 2 }];
        let d = evaluate(&p, &counts, 5250, 1);
        assert!(!d.allowed);
        // Need 10·(750 − t)/1000 + 2 + 1 ≤ 10 → t ≥ 50 ms.
        assert_eq!(d.retry_after, Some(Duration::from_millis(50)));
        assert!(evaluate(&p, &counts, 5300, 1).allowed);
        assert!(!evaluate(&p, &counts, 5299, 1).allowed);
    }

    #[test]
    fn retry_after_is_exact_for_every_state() {
        // Brute-force check: after retry_after the request is allowed, one
        // millisecond earlier it is not.
        let p = policy(&[(100, 4), (300, 7)]);
        for prev_a in 0..=4u64 {
            for cur_a in 0..=4u64 {
                for cur_b in 0..=7u64 {
                    for start in [1000i64, 1013, 1050, 1099] {
                        for cost in 1..=4u32 {
                            let counts = [
                                BucketCounts { previous: prev_a, current: cur_a },
                                BucketCounts { previous: 3, current: cur_b },
                            ];
                            let d = evaluate(&p, &counts, start, cost);
                            let Some(wait) = d.retry_after else { continue };
                            let wait = i64::try_from(wait.as_millis()).unwrap();
                            let at = |t: i64| {
                                // Advance each window's buckets to time t.
                                let c: Vec<_> = p
                                    .windows()
                                    .iter()
                                    .zip(&counts)
                                    .map(|(w, c)| {
                                        let shift = bucket_of(t, w.length_ms()) - bucket_of(start, w.length_ms());
                                        match shift {
                                            0 => *c,
                                            1 => BucketCounts { previous: c.current, current: 0 },
                                            _ => BucketCounts::default(),
                                        }
                                    })
                                    .collect();
                                evaluate(&p, &c, t, cost).allowed
                            };
                            assert!(at(start + wait), "allowed after retry_after");
                            assert!(!at(start + wait - 1), "denied just before retry_after");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Window>(r#"{"length_ms":0,"limit":1}"#).is_err());
        assert!(serde_json::from_str::<Window>(r#"{"length_ms":1000,"limit":0}"#).is_err());
        let w: Window = serde_json::from_str(r#"{"length_ms":1000,"limit":5}"#).unwrap();
        assert_eq!(w, Window::new(Duration::from_secs(1), 5).unwrap());
        assert!(serde_json::from_str::<RateLimitPolicy>("[]").is_err());
    }

    #[test]
    fn a_cost_above_the_limit_never_panics() {
        let p = policy(&[(1000, 3)]);
        let d = evaluate(&p, &[BucketCounts::default()], 0, 5);
        assert!(!d.allowed);
        assert!(d.retry_after.is_some());
    }

    #[test]
    fn denial_reports_each_window() {
        let p = policy(&[(1000, 5), (60_000, 6)]);
        let d =
            evaluate(&p, &[BucketCounts { previous: 0, current: 1 }, BucketCounts { previous: 0, current: 6 }], 0, 1);
        assert!(!d.allowed);
        assert!(d.windows[0].allowed);
        assert!(!d.windows[1].allowed);
        assert_eq!(d.windows[0].remaining, 4);
    }
}
