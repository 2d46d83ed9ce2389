//! Redis rows: session get and touch, rate-limit check, each against
//! hand-written redis-rs calls on the same key layout, over one multiplexed
//! connection taken from a pool of the same configuration (as the stores do).

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, aio::MultiplexedConnection, Script};
use selfrag_core::{NewSession, RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, SessionStore, UserId};
use selfrag_redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
use serde_json::{json, Map, Value};

use crate::measure::{compare, op, Op, Res, Row};
use crate::Plan;

// The raw baselines run the very scripts the adapter runs (same text, so the
// same SHA and the same server work); what differs is only the client code
// around the EVALSHA.
const COMMON: &str = include_str!("../../selfrag-redis/src/lua/common.lua");
const TOUCH: &str = include_str!("../../selfrag-redis/src/lua/session_touch.lua");
const CHECK: &str = include_str!("../../selfrag-redis/src/lua/ratelimit_check.lua");

const PREFIX: &str = "selfrag_bench:";
const RAW_PREFIX: &str = "selfrag_bench_raw:";
const SESSIONS: usize = 1_000;
const USERS: usize = 100;
const LIMIT: u32 = 1_000_000;

async fn raw_connection(config: &RedisConfig) -> Res<MultiplexedConnection> {
    let pool = config.create_pool()?;
    let mut conn = deadpool_redis::Connection::take(pool.get().await?);
    conn.set_response_timeout(config.response_timeout);
    Ok(conn)
}

fn idx(i: u64, n: usize) -> usize {
    usize::try_from(i).unwrap_or(0) % n
}

pub(crate) async fn run(url: &str, plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let config = RedisConfig::builder().url(url).key_prefix(PREFIX).build()?;
    let sessions = RedisSessionStore::connect(&config)?;
    let raw = raw_connection(&config).await?;

    // 1,000 live sessions over 100 users, made by the store.
    let users: Vec<UserId> = (0..USERS).map(|_| UserId::new()).collect();
    let mut ids: Vec<(UserId, SessionId)> = Vec::with_capacity(SESSIONS);
    let Value::Object(data) = json!({"lang": "en", "theme": "dark", "model": "small"}) else { unreachable!() };
    for k in 0..SESSIONS {
        let user = users[k % USERS];
        let s = sessions
            .create(user, NewSession::new(Duration::from_secs(3600))?.with_data(Value::Object(data.clone()))?)
            .await?;
        ids.push((user, s.id));
    }
    let ids = Arc::new(ids);

    let raw2 = raw_connection(&config).await?;
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 20_000);
        let (s, v) = (sessions.clone(), ids.clone());
        let ours = op(move |i| {
            let (s, v) = (s.clone(), v.clone());
            async move {
                let (user, id) = v[idx(i, v.len())];
                s.get(user, id).await?.ok_or("session vanished")?;
                Ok(())
            }
        });
        let cmp = compare(&ours, &raw_get(&raw, &ids), c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("session get vs HMGET (same hash)", c, cmp));
        crate::print_last(rows);
        // A/A control: the raw HMGET against itself on a second connection
        // of the same kind. Its ratio is the harness's own noise at this
        // concurrency (it should be 1).
        let cmp = compare(&raw_get(&raw2, &ids), &raw_get(&raw, &ids), c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("control: HMGET vs HMGET (A/A, two connections)", c, cmp));
        crate::print_last(rows);
    }

    let touch_script = Arc::new(Script::new(&format!("{COMMON}\n{TOUCH}")));
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 20_000);
        let (s, v) = (sessions.clone(), ids.clone());
        let ours = op(move |i| {
            let (s, v) = (s.clone(), v.clone());
            async move {
                let (user, id) = v[idx(i, v.len())];
                s.touch(user, id).await?.ok_or("session vanished")?;
                Ok(())
            }
        });
        let (conn, v, script) = (raw.clone(), ids.clone(), touch_script.clone());
        let raw_op = op(move |i| {
            let (mut conn, v, script) = (conn.clone(), v.clone(), script.clone());
            async move {
                let (user, id) = v[idx(i, v.len())];
                let mut inv = script.prepare_invoke();
                inv.key(format!("{PREFIX}{{u:{user}}}:s:{id}"))
                    .key(format!("{PREFIX}{{u:{user}}}:sessions"))
                    .key(format!("{PREFIX}{{u:{user}}}:sessions:created"))
                    .arg(id.to_string());
                let f: Option<Vec<String>> = inv.invoke_async(&mut conn).await?;
                let f = f.ok_or("session vanished")?;
                decode(&f.into_iter().map(Some).collect::<Vec<_>>())
            }
        });
        let cmp = compare(&ours, &raw_op, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("session touch vs EVALSHA (same script)", c, cmp));
        crate::print_last(rows);
    }

    let policy = RateLimitPolicy::minute_hour_day(LIMIT, LIMIT, LIMIT)?;
    let limiter = RedisRateLimiter::connect(&config, policy.clone())?;
    let check_script = Arc::new(Script::new(&format!("{COMMON}\n{CHECK}")));
    let users = Arc::new(users);
    let windows: Arc<Vec<(u64, u32)>> = Arc::new(policy.windows().iter().map(|w| (w.length_ms(), w.limit())).collect());
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 20_000);
        let (l, u) = (limiter.clone(), users.clone());
        let ours = op(move |i| {
            let (l, u) = (l.clone(), u.clone());
            async move {
                let key = RateLimitKey::new(u[idx(i, u.len())], "bench")?;
                if !l.check(&key, 1).await?.allowed {
                    return Err("rate limit denied".into());
                }
                Ok(())
            }
        });
        let (conn, u, script, w) = (raw.clone(), users.clone(), check_script.clone(), windows.clone());
        let raw_op = op(move |i| {
            let (mut conn, u, script, w) = (conn.clone(), u.clone(), script.clone(), w.clone());
            async move {
                let user = u[idx(i, u.len())];
                let mut inv = script.prepare_invoke();
                inv.key(format!("{RAW_PREFIX}{{u:{user}}}:rl:bench")).arg(1);
                for (len, limit) in w.iter() {
                    inv.arg(len).arg(limit);
                }
                let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
                if reply.len() != 3 + 2 * w.len() || reply[0] != 1 {
                    return Err(format!("rate limit reply {reply:?}").into());
                }
                Ok(())
            }
        });
        let cmp = compare(&ours, &raw_op, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("rate-limit check (3 windows) vs EVALSHA (same script)", c, cmp));
        crate::print_last(rows);
    }

    // Clean up what this run wrote (sessions would expire in an hour, rate
    // buckets in up to two days).
    let mut conn = raw.clone();
    for pattern in [format!("{PREFIX}*"), format!("{RAW_PREFIX}*")] {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for chunk in keys.chunks(500) {
            let _: i64 = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await?;
        }
    }
    Ok(())
}

/// The raw session read: `HMGET` of the session hash and [`decode`].
fn raw_get(conn: &MultiplexedConnection, ids: &Arc<Vec<(UserId, SessionId)>>) -> Op {
    let (conn, v) = (conn.clone(), ids.clone());
    op(move |i| {
        let (mut conn, v) = (conn.clone(), v.clone());
        async move {
            let (user, id) = v[idx(i, v.len())];
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(format!("{PREFIX}{{u:{user}}}:s:{id}")).arg(&["created_ms", "last_ms", "ttl_ms", "data"]);
            let f: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
            decode(&f)
        }
    })
}

/// What a hand-written reader does with the hash: three integers and the
/// JSON data.
fn decode(f: &[Option<String>]) -> Res<()> {
    let [Some(c), Some(l), Some(t), Some(d)] = f else { return Err(format!("bad session hash {f:?}").into()) };
    let (_c, _l, _t): (i64, i64, u64) = (c.parse()?, l.parse()?, t.parse()?);
    let _data: Map<String, Value> = serde_json::from_str(d)?;
    Ok(())
}
