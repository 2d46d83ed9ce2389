use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::unix_millis;
use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::ids::UserId;
use crate::observe::{record_rate_limit, system, OpMeta};
use crate::ratelimit::{
    bucket_of, evaluate, BucketCounts, RateLimitDecision, RateLimitKey, RateLimitPolicy, RateLimiter,
};

/// The span attributes of every call.
const OBS: OpMeta = OpMeta::new(system::LOCAL);

/// A [`RateLimiter`] in process memory, running [`evaluate`] under one lock,
/// so a check is atomic across its windows. Clones share the same counters.
///
/// Buckets older than the previous one are dropped when their key is next
/// checked, the in-memory analogue of the Redis keys' `2·W` expiry.
#[derive(Debug, Clone)]
pub struct LocalRateLimiter {
    policy: RateLimitPolicy,
    clock: Arc<dyn Clock>,
    // Per key: per window, the (bucket index, count) of the buckets kept.
    counters: Arc<Mutex<HashMap<RateLimitKey, Vec<Buckets>>>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Buckets {
    /// Index of the newest bucket with a count.
    index: i64,
    current: u64,
    previous: u64,
}

impl Buckets {
    /// The counts as seen from bucket `now_index`. A clock that stepped back
    /// (before the newest bucket) sees the newest bucket, so use is never
    /// forgotten.
    fn at(self, now_index: i64) -> BucketCounts {
        match now_index.saturating_sub(self.index) {
            i64::MIN..=0 => BucketCounts { previous: self.previous, current: self.current },
            1 => BucketCounts { previous: self.current, current: 0 },
            _ => BucketCounts::default(),
        }
    }
}

impl LocalRateLimiter {
    /// A limiter enforcing `policy` on the system clock.
    pub fn new(policy: RateLimitPolicy) -> Self {
        Self::with_clock(policy, Arc::new(SystemClock))
    }

    /// A limiter enforcing `policy`, reading time from `clock`.
    pub fn with_clock(policy: RateLimitPolicy, clock: Arc<dyn Clock>) -> Self {
        Self { policy, clock, counters: Arc::default() }
    }
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self::new(RateLimitPolicy::default())
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    async fn check(&self, key: &RateLimitKey, cost: u32) -> Result<RateLimitDecision> {
        OBS.run("rate_limits", "check", async move {
            self.policy.check_cost(cost)?;
            let now = unix_millis(self.clock.now());
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            let windows = self.policy.windows();
            let buckets = counters.entry(key.clone()).or_insert_with(|| vec![Buckets::default(); windows.len()]);
            let indexes: Vec<i64> =
                windows.iter().zip(buckets.iter()).map(|(w, b)| bucket_of(now, w.length_ms()).max(b.index)).collect();
            let counts: Vec<BucketCounts> = buckets.iter().zip(&indexes).map(|(b, &i)| b.at(i)).collect();
            let decision = evaluate(&self.policy, &counts, now, cost);
            if decision.allowed {
                for ((b, &index), c) in buckets.iter_mut().zip(&indexes).zip(&counts) {
                    *b = Buckets { index, current: c.current + u64::from(cost), previous: c.previous };
                }
            }
            record_rate_limit(system::LOCAL, decision.allowed, "local");
            Ok(decision)
        })
        .await
    }

    async fn reset(&self, key: &RateLimitKey) -> Result<()> {
        OBS.run("rate_limits", "reset", async move {
            self.counters.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
            Ok(())
        })
        .await
    }

    async fn reset_user(&self, user: UserId) -> Result<u64> {
        OBS.run("rate_limits", "reset_user", async move {
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            let before = counters.len();
            counters.retain(|key, _| key.user() != user);
            Ok((before - counters.len()) as u64)
        })
        .await
    }
}
