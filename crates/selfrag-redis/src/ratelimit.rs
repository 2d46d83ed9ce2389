//! [`RedisRateLimiter`]: sliding-window counters checked and consumed by one
//! Lua script, with a caller-chosen [`FailurePolicy`] for when Redis is down.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use selfrag_core::local::LocalRateLimiter;
use selfrag_core::observe::{record_rate_limit, system};
use selfrag_core::{
    Error, ErrorKind, RateLimitDecision, RateLimitKey, RateLimitPolicy, RateLimiter, Result, UserId, WindowStatus,
};

use crate::client::{bad_reply, glob_escape, Handle, RATELIMIT_CHECK, RATELIMIT_RESET, RATELIMIT_RESET_USER};
use crate::cluster::RedisConnector;
use crate::config::RedisConfig;

/// What [`RedisRateLimiter::check`] does when Redis cannot decide (the call
/// fails with [`Error::Unavailable`] or [`Error::Timeout`]: connection
/// refused or lost, no pooled connection in time, no reply in time, server
/// loading or failing over, a read-only replica, or `OOM` under `maxmemory`
/// with `noeviction`). Other errors (bad input, a key of the wrong type) are
/// returned whatever the policy.
///
/// **A timeout may have counted.** [`Error::Timeout`] triggers the policy too,
/// because a server that stops answering (a network partition that drops
/// packets) is as common as one that refuses connections. But the script may
/// have run and consumed the cost in Redis before the reply was lost, so a
/// timed-out check can be counted twice: in Redis and again by
/// [`FailurePolicy::Fallback`] (or allowed by [`FailurePolicy::FailOpen`]
/// although Redis denied it). The error is on the strict side for `Fallback`
/// (the user's Redis budget may be one request lower than it should) and
/// within what `FailOpen` already accepts. [`Error::Unavailable`] mostly
/// means the script did not run (never sent, or refused by the server); a
/// connection that breaks after sending it is the same uncertain case as a
/// timeout.
#[derive(Debug, Clone, Default)]
pub enum FailurePolicy {
    /// Return the error (the default): the caller cannot know the budget, so
    /// it should refuse the request, typically with a 503. Chosen over a
    /// synthetic denial because a denial would need a `retry_after` nobody can
    /// compute and would look like the user's fault.
    #[default]
    FailClosed,
    /// Allow the request without counting it. The decision reports every
    /// window as allowed with its full limit minus the cost remaining, as if
    /// the key were unused; [`RedisRateLimiter::check_detailed`] marks it
    /// [`DecisionSource::FailOpen`] and every such decision is logged with
    /// `tracing::warn!` and counted in [`RedisRateLimiter::degraded_count`].
    FailOpen,
    /// Check against an in-process limiter instead (its own policy and
    /// counters, which this process alone sees: with `n` processes the
    /// effective limit is up to `n` times the policy while Redis is down).
    /// Marked [`DecisionSource::Fallback`], logged and counted like
    /// `FailOpen`.
    Fallback(LocalRateLimiter),
}

impl FailurePolicy {
    /// [`FailurePolicy::Fallback`] to a fresh in-process limiter with `policy`
    /// on the system clock.
    pub fn fallback(policy: RateLimitPolicy) -> Self {
        Self::Fallback(LocalRateLimiter::new(policy))
    }
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    /// The Redis script: the shared, exact budget.
    Redis,
    /// Redis was unreachable and the policy is [`FailurePolicy::FailOpen`].
    FailOpen,
    /// Redis was unreachable and the in-process fallback limiter decided.
    Fallback,
}

/// A decision with its provenance, from [`RedisRateLimiter::check_detailed`].
#[derive(Debug)]
pub struct CheckOutcome {
    /// The decision.
    pub decision: RateLimitDecision,
    /// Who made it.
    pub source: DecisionSource,
    /// The Redis error that triggered the failure policy, if it was applied.
    pub redis_error: Option<Error>,
    /// The Redis clock (ms since the Unix epoch) the script decided at, when
    /// Redis decided.
    pub redis_time_ms: Option<i64>,
}

/// A [`RateLimiter`] in Redis. See the crate docs for the key layout and the
/// guarantees.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    handle: Handle,
    policy: RateLimitPolicy,
    on_failure: FailurePolicy,
    degraded: Arc<AtomicU64>,
}

impl RedisRateLimiter {
    /// A limiter enforcing `policy` over `connector` (a
    /// [`RedisPool`](crate::RedisPool), a `deadpool_redis::Pool` or a
    /// [`RedisClusterClient`](crate::RedisClusterClient)), with the default
    /// key prefix (`selfrag:`), response timeout (2 s) and
    /// [`FailurePolicy::FailClosed`].
    pub fn new(connector: impl Into<RedisConnector>, policy: RateLimitPolicy) -> Self {
        Self::from_handle(Handle::new(connector.into()), policy)
    }

    /// A limiter over `connector` with the prefix and timeouts of `config`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`].
    pub fn with_config(
        connector: impl Into<RedisConnector>,
        config: &RedisConfig,
        policy: RateLimitPolicy,
    ) -> Result<Self> {
        Ok(Self::from_handle(Handle::with_config(connector.into(), config)?, policy))
    }

    /// A limiter with its own pool, or cluster client, built from `config`
    /// ([`RedisConfig::connector`]). Connects lazily, so it can be built
    /// while Redis is down.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::connector`].
    pub fn connect(config: &RedisConfig, policy: RateLimitPolicy) -> Result<Self> {
        Self::with_config(config.connector()?, config, policy)
    }

    /// What the limiter connects through.
    pub fn connector(&self) -> &RedisConnector {
        self.handle.connector()
    }

    fn from_handle(handle: Handle, policy: RateLimitPolicy) -> Self {
        Self { handle, policy, on_failure: FailurePolicy::default(), degraded: Arc::default() }
    }

    /// Uses `prefix` for every key (see [`RedisConfig::key_prefix`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`key_prefix`).
    pub fn with_key_prefix(self, prefix: &str) -> Result<Self> {
        Ok(Self { handle: self.handle.with_prefix(prefix)?, ..self })
    }

    /// Fails calls whose reply takes longer than `timeout` (which then fall
    /// under the failure policy).
    pub fn with_response_timeout(self, timeout: Duration) -> Self {
        Self { handle: self.handle.with_response_timeout(timeout), ..self }
    }

    /// Sets what happens when Redis is unreachable.
    pub fn with_failure_policy(self, on_failure: FailurePolicy) -> Self {
        Self { on_failure, ..self }
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> &FailurePolicy {
        &self.on_failure
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        self.handle.prefix()
    }

    /// How many decisions this limiter (and its clones) made without Redis.
    pub fn degraded_count(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The key of one bucket: `<prefix>{u:<user>}:rl:<scope>:<window_ms>:<bucket>`
    /// where `bucket` is `floor(now_ms / window_ms)` on the Redis clock. The
    /// last two segments are always numbers, so a scope holding `:` cannot be
    /// confused with another.
    pub fn bucket_key(&self, key: &RateLimitKey, window_ms: u64, bucket: i64) -> String {
        format!("{}:{window_ms}:{bucket}", self.key_base(key))
    }

    fn key_base(&self, key: &RateLimitKey) -> String {
        self.handle.user_key(key.user(), &[":rl:", key.scope()])
    }

    /// Like [`RateLimiter::check`], but tells where the decision came from.
    ///
    /// # Errors
    /// As [`RateLimiter::check`]; an unreachable Redis is an error only under
    /// [`FailurePolicy::FailClosed`].
    pub async fn check_detailed(&self, key: &RateLimitKey, cost: u32) -> Result<CheckOutcome> {
        self.policy.check_cost(cost)?;
        let err = match self.check_redis(key, cost).await {
            Ok((decision, now)) => {
                let source = DecisionSource::Redis;
                record_rate_limit(system::REDIS, decision.allowed, source.label());
                return Ok(CheckOutcome { decision, source, redis_error: None, redis_time_ms: Some(now) });
            }
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) => e,
            Err(e) => return Err(e),
        };
        let (decision, source) = match &self.on_failure {
            FailurePolicy::FailClosed => return Err(err),
            FailurePolicy::FailOpen => (self.open_decision(cost), DecisionSource::FailOpen),
            FailurePolicy::Fallback(local) => (local.check(key, cost).await?, DecisionSource::Fallback),
        };
        self.degraded.fetch_add(1, Ordering::Relaxed);
        record_rate_limit(system::REDIS, decision.allowed, source.label());
        tracing::warn!(error = %err, ?source, allowed = decision.allowed, scope = key.scope(), "rate limit decided without Redis");
        Ok(CheckOutcome { decision, source, redis_error: Some(err), redis_time_ms: None })
    }

    fn open_decision(&self, cost: u32) -> RateLimitDecision {
        let windows = self
            .policy
            .windows()
            .iter()
            .map(|w| WindowStatus { window: *w, allowed: true, remaining: w.limit().saturating_sub(cost) })
            .collect();
        RateLimitDecision { allowed: true, windows, retry_after: None }
    }

    /// One EVALSHA of the check script; also returns the Redis clock reading
    /// (ms) the script decided at.
    async fn check_redis(&self, key: &RateLimitKey, cost: u32) -> Result<(RateLimitDecision, i64)> {
        let mut inv = RATELIMIT_CHECK.prepare_invoke();
        inv.key(self.key_base(key)).arg(cost);
        for w in self.policy.windows() {
            inv.arg(w.length_ms()).arg(w.limit());
        }
        let reply: Vec<i64> = self.handle.invoke(&inv, "rate limit check").await?;
        let decision = self.decode(&reply)?;
        Ok((decision, reply[2]))
    }

    fn decode(&self, reply: &[i64]) -> Result<RateLimitDecision> {
        let windows = self.policy.windows();
        if reply.len() != 3 + 2 * windows.len() {
            return Err(bad_reply("rate limit check", format!("{} values for {} windows", reply.len(), windows.len())));
        }
        let flag = |v: i64| match v {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad_reply("rate limit check", format!("flag {v}"))),
        };
        let allowed = flag(reply[0])?;
        let retry_ms = u64::try_from(reply[1]).map_err(|e| bad_reply("rate limit check", e))?;
        let statuses = windows
            .iter()
            .zip(reply[3..].chunks_exact(2))
            .map(|(w, pair)| {
                Ok(WindowStatus {
                    window: *w,
                    allowed: flag(pair[0])?,
                    remaining: u32::try_from(pair[1]).map_err(|e| bad_reply("rate limit check", e))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RateLimitDecision {
            allowed,
            windows: statuses,
            retry_after: (!allowed).then(|| Duration::from_millis(retry_ms)),
        })
    }
}

impl DecisionSource {
    /// The `source` label of the rate-limit decision counter: `redis`,
    /// `fail_open` or `fallback`.
    pub fn label(self) -> &'static str {
        match self {
            DecisionSource::Redis => "redis",
            DecisionSource::FailOpen => "fail_open",
            DecisionSource::Fallback => "fallback",
        }
    }
}

impl fmt::Display for DecisionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecisionSource::Redis => "redis",
            DecisionSource::FailOpen => "fail-open",
            DecisionSource::Fallback => "fallback",
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision> {
        self.handle
            .obs()
            .run("rate_limits", "check", async move { Ok(self.check_detailed(key, cost).await?.decision) })
            .await
    }

    /// Deletes the buckets the policy's windows read now, then the fallback
    /// limiter's counters for `key` (if there is one). Not covered by the
    /// failure policy: a reset that did not happen in Redis is an error, and
    /// then the fallback limiter is left as it was too (Redis goes first so a
    /// failed reset is not half done).
    async fn reset(&self, key: &RateLimitKey) -> Result<()> {
        self.handle
            .obs()
            .run("rate_limits", "reset", async move {
                let mut inv = RATELIMIT_RESET.prepare_invoke();
                inv.key(self.key_base(key));
                for w in self.policy.windows() {
                    inv.arg(w.length_ms());
                }
                let _: i64 = self.handle.invoke(&inv, "rate limit reset").await?;
                if let FailurePolicy::Fallback(local) = &self.on_failure {
                    local.reset(key).await?;
                }
                Ok(())
            })
            .await
    }

    /// Deletes every key under `<prefix>{u:<user>}:rl:` (every scope and
    /// window, whatever policy wrote it), then the fallback limiter's
    /// states of `user`, and returns how many Redis keys it deleted.
    ///
    /// It runs a script that makes one bounded `SCAN` step (`COUNT`
    /// [`RESET_USER_SCAN_COUNT`]) and deletes what it matched, until the
    /// scan ends; the script is routed by the user's hash tag, so on a
    /// cluster it scans the node owning the user's slot, where every key of
    /// the user lives. The steps are not one transaction: a failed call may
    /// have deleted some keys (call again). During a migration of the user's
    /// slot the call fails as unavailable, like the check script.
    async fn reset_user(&self, user: UserId) -> Result<u64> {
        self.handle
            .obs()
            .run("rate_limits", "reset_user", async move {
                let stem = self.handle.user_key(user, &[":rl:"]);
                let pattern = format!("{}*", glob_escape(&stem));
                let mut cursor = String::from("0");
                let mut deleted = 0u64;
                loop {
                    let mut inv = RATELIMIT_RESET_USER.prepare_invoke();
                    inv.key(&stem).arg(&cursor).arg(&pattern).arg(RESET_USER_SCAN_COUNT);
                    let (next, n): (String, u64) = self.handle.invoke(&inv, "rate limit reset user").await?;
                    deleted += n;
                    if next == "0" {
                        break;
                    }
                    cursor = next;
                }
                if let FailurePolicy::Fallback(local) = &self.on_failure {
                    local.reset_user(user).await?;
                }
                Ok(deleted)
            })
            .await
    }
}

/// The `COUNT` of each `SCAN` step of [`RateLimiter::reset_user`]: how many
/// keys of the node one step looks at (each step runs as one script, so this
/// bounds how long one step holds the server).
pub const RESET_USER_SCAN_COUNT: u32 = 5_000;
