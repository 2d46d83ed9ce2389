//! Redis backends of selfrag storage: [`RedisSessionStore`] (a
//! [`SessionStore`](selfrag_core::SessionStore)) and [`RedisRateLimiter`] (a
//! [`RateLimiter`](selfrag_core::RateLimiter)), on
//! [deadpool-redis](deadpool_redis), with every multi-step operation in one
//! atomic Lua script.
//!
//! # Configuration
//! [`RedisConfig`] holds the URL, key prefix, pool size and timeouts; build it
//! with [`RedisConfig::builder`] or read it with [`RedisConfig::from_env`]
//! (`REDIS_URL`, `SELFRAG_REDIS_PREFIX`, `SELFRAG_REDIS_POOL_SIZE`,
//! `SELFRAG_REDIS_CONNECT_TIMEOUT_MS`, `SELFRAG_REDIS_RESPONSE_TIMEOUT_MS`).
//! Callers that already hold a [`deadpool_redis::Pool`] use `new(pool)`.
//!
//! TLS: a `rediss://` URL, checked against the system's roots or
//! [`RedisConfig::tls_ca_file`], with an optional client certificate
//! ([`RedisConfig::tls_client_cert_file`]); ACL users:
//! `rediss://user:password@host`. A refused handshake or password is a
//! non-retryable [`Error::Backend`](selfrag_core::Error::Backend) saying what
//! to change.
//!
//! ```no_run
//! use selfrag_core::{NewSession, RateLimitKey, RateLimitPolicy, RateLimiter, SessionStore, UserId};
//! use selfrag_redis::{FailurePolicy, RedisConfig, RedisRateLimiter, RedisSessionStore};
//! use std::time::Duration;
//!
//! # async fn demo() -> selfrag_core::Result<()> {
//! let config = RedisConfig::from_env()?;
//! let pool = config.create_pool()?;
//! let sessions = RedisSessionStore::with_config(pool.clone(), &config)?;
//! let limiter = RedisRateLimiter::with_config(pool, &config, RateLimitPolicy::default())?
//!     .with_failure_policy(FailurePolicy::fallback(RateLimitPolicy::default()));
//!
//! let user = UserId::new();
//! let session = sessions.create(user, NewSession::new(Duration::from_secs(1800))?).await?;
//! let decision = limiter.check(&RateLimitKey::new(user, "chat")?, 1).await?;
//! # let _ = (session, decision);
//! # Ok(()) }
//! ```
//!
//! # Secrets
//! No password is ever printed: the `Debug` of [`RedisConfig`], its builder,
//! [`RedisPool`] (what [`RedisConfig::create_pool`] and the stores' `pool()`
//! return, in place of the driver's pool, whose `Debug` shows the password)
//! and the stores show the URL through [`redact_url`], and errors never
//! quote the URL.
//!
//! # Key layout
//! Every key starts with the prefix (default `selfrag:`) and the user's hash
//! tag `{u:<user uuid>}`. Redis Cluster hashes only the part inside the first
//! braces, so all of one user's keys live in one slot and every script, which
//! only ever touches one user's keys, runs on one node. (The prefix may not
//! contain braces, for that reason.)
//!
//! | key | type | holds | expires |
//! | --- | --- | --- | --- |
//! | `<prefix>{u:<user>}:s:<session id>` | hash | `created_ms`, `last_ms`, `ttl_ms`, `data` (JSON text) | at `expires_at` (PEXPIREAT `expires_at − 1` ms) |
//! | `<prefix>{u:<user>}:sessions` | sorted set | session ids scored by `expires_at` (ms) | with the user's latest session |
//! | `<prefix>{u:<user>}:sessions:created` | sorted set | the same ids scored by `created_at` (ms) | with the user's latest session |
//! | `<prefix>{u:<user>}:rl:<scope>:<window ms>:<bucket>` | string | the bucket's count | `2·W` after its last increment: 120 s / 7200 s / 172800 s for minute / hour / day |
//!
//! `<bucket>` is `floor(now_ms / window_ms)` on the Redis clock. The list and
//! revoke-all scripts derive session keys from the index, and the check script
//! derives bucket keys from the server time, instead of receiving them in
//! `KEYS` (they cannot be known before the script runs); all of them carry the
//! hash tag of the declared key, so they are in the slot the script is routed
//! to.
//!
//! # Guarantees
//! - **Server clock.** Every timestamp (created, last activity, expiry, rate
//!   buckets) is read with `TIME` inside the script, so application hosts with
//!   skewed clocks agree. Redis ≥ 5 replicates scripts by effects, which makes
//!   `TIME` in a writing script safe; this crate is tested on Redis 7.0.
//! - **Sessions never outlive their expiry.** A session key expires in Redis at
//!   `expires_at` (Redis drops a key once `now > deadline`, hence the −1 ms),
//!   so a plain `HMGET` never returns an expired session; the scripts also
//!   compare with `TIME` for the sub-millisecond between the script's start
//!   and its clock reading. `touch` slides the deadline to `now + ttl`.
//! - **No overwrite.** `create` draws a [`SessionId`](selfrag_core::SessionId)
//!   (122 bits from the OS RNG) or takes the caller's, and the script never
//!   writes over a live session: a drawn id that collided is drawn again; a
//!   chosen one returns the stored session when it is the same (a retried
//!   create) and is `Conflict` otherwise. Ids are scoped to their user.
//! - **Bounded per user.** The create script enforces the store's
//!   [`SessionLimits`](selfrag_core::SessionLimits) atomically (evicting the
//!   soonest to expire, or refusing); `list_recent` reads the newest members
//!   of the created-at index only, and `revoke_all` deletes
//!   [`RedisSessionStore::REVOKE_ALL_BATCH`] sessions per script call, so no
//!   call holds the server long however many sessions a user has.
//! - **Listing stays correct as sessions expire.** Both per-user indexes are
//!   pruned (500 expired members per call at most) in every script that
//!   writes them and in `list_recent`; members whose session is gone
//!   (revoked, evicted) are dropped by `list_recent` as it meets them.
//! - **Rate limits are atomic and all-or-nothing.** One script reads every
//!   window's current and previous bucket, runs the arithmetic of
//!   [`selfrag_core::ratelimit::evaluate`] in exact integers (all values stay
//!   below 2⁵³, the limit of Lua's doubles), and adds the cost to every window
//!   only when all allow. The decision carries per-window remaining budget and
//!   a `retry_after`.
//! - **One round trip** per session `get` (`HMGET`), `touch`, `create`,
//!   `set_data`, `revoke`, `list_recent` and rate-limit `check` (one
//!   `EVALSHA` each), and per 500 sessions of `revoke_all`, once the scripts
//!   are cached by the server: the first
//!   call of a script after a server restart, a `SCRIPT FLUSH` or a failover
//!   (the script cache is not replicated) gets `NOSCRIPT` and is sent again
//!   as `EVAL` with the source, which caches it on that server (two round
//!   trips, once per script and server).
//!
//! # Redis Cluster
//! [`RedisConfig::cluster_nodes`] names seed nodes (from the environment:
//! several comma-separated URLs in `REDIS_URL`, or `SELFRAG_REDIS_CLUSTER=1`);
//! [`RedisConfig::connector`] then gives a [`RedisClusterClient`] instead of a
//! pool, and the stores take either ([`RedisConnector`]). A store holds one
//! driver cluster connection (a socket per node) and sends each call, one
//! command in its user's slot, to that slot's master. The driver retries
//! nothing itself (it would re-send a call whose connection broke with it in
//! flight); the store re-sends only what certainly did not run: `MOVED`,
//! `TRYAGAIN`, and `ASK` for `get` and the scripts whose keys are all
//! declared. Scripts that derive keys inside Lua (list, revoke-all, create,
//! the rate-limit buckets) never follow `ASK`: while their user's slot
//! migrates they fail as unavailable rather than run on half its keys. A
//! master failover fails calls with retryable errors for about the node
//! timeout plus 1-2 s and the same stores serve every call afterwards;
//! counts the master acknowledged but had not replicated are lost
//! (asynchronous replication). [`cluster_health`] reports the cluster state
//! and pings every master. See docs/redis.md, "Redis Cluster", for the
//! measured figures.
//!
//! # Connections
//! **Each store (with its clones, and stores derived from it with another
//! key prefix or response timeout) uses one connection**: on first use it
//! takes a connection out of the pool for good and pipelines all its calls
//! over it (redis-rs multiplexes concurrent requests on one socket). Why not
//! check out a pooled connection per call: deadpool-redis sends a `PING`
//! whenever it hands out a reused connection, which would double the round
//! trips. A taken connection no longer counts against the pool, so
//! [`RedisConfig::pool_size`] does not bound the stores' connections: `n`
//! stores on one pool hold `n` connections. It bounds how many connections
//! are being opened at once (stores sharing the pool, calls racing to
//! reconnect, which may each open one: the first wins, the others are
//! closed) and what your own `pool.get()` calls may hold.
//!
//! The store drops its connection, so that the next call opens a new one
//! under the connect timeout, after an I/O error, a timeout, a protocol error,
//! or any error mapped to `Unavailable` except `OOM`: notably `READONLY`,
//! `MASTERDOWN` and `CLUSTERDOWN`, which a failover that keeps the address
//! (Sentinel or a managed service behind one DNS name) leaves on the old
//! socket for good. `OOM` keeps the connection: a new one would reach the same
//! full server.
//!
//! # Errors and Redis being down
//! Connection refused or lost, no pooled connection within the connect
//! timeout, a loading, failing-over or read-only server, a busy script, and
//! `OOM` (writes refused under `maxmemory` with `noeviction`, the expected
//! way for a full Redis to fail): [`Error::Unavailable`](selfrag_core::Error::Unavailable)
//! (retryable). No reply within the response timeout:
//! [`Error::Timeout`](selfrag_core::Error::Timeout). The driver error is kept
//! as the source. For rate limits the caller picks a [`FailurePolicy`] that
//! applies to both: fail closed (the error, the default), fail open (allow,
//! marked), or fall back to an in-process
//! [`LocalRateLimiter`](selfrag_core::local::LocalRateLimiter). After a
//! timeout the script may have consumed the cost in Redis already, so the
//! fallback may count that request a second time (see [`FailurePolicy`]).
//! `reset` is not covered by the policy; it resets Redis first and the
//! fallback only if Redis succeeded.
//!
//! Redis does not track users: `create` accepts any user id. Run Redis with
//! `maxmemory-policy noeviction` (or enough memory): an evicted session is
//! gone early, and an evicted index hides live sessions from `list` and
//! `revoke_all`. With `noeviction` a full Redis refuses writes with `OOM`
//! (reported as `Unavailable`, see above) instead of losing data.

mod client;
mod cluster;
mod config;
mod ratelimit;
mod session;
mod tls;

pub use cluster::{cluster_health, ClusterHealth, MasterHealth, RedisClusterClient, RedisConnector, CLUSTER_SLOTS};
pub use config::{redact_url, RedisConfig, RedisConfigBuilder, RedisPool};
pub use ratelimit::{CheckOutcome, DecisionSource, FailurePolicy, RedisRateLimiter, RESET_USER_SCAN_COUNT};
pub use session::RedisSessionStore;

/// The driver and its pool, re-exported so applications need one dependency.
pub use deadpool_redis;
/// The Redis client library under the pool.
pub use deadpool_redis::redis;

/// The backend name in errors.
const BACKEND: &str = "redis";
