//! The stores on a Redis Cluster that changes under load: a master killed
//! (`SIGKILL`) and failed over to its replica, and a slot migrated from one
//! master to another. Each test owns its private cluster (3 masters, 1
//! replica each, `cluster-node-timeout` 1 s) and prints what it measured;
//! docs/redis.md quotes the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use selfrag_core::{
    Error, NewSession, OnLimit, RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, SessionLimits, SessionStore,
    UserId, Window,
};
use selfrag_redis::redis::{self, AsyncCommands};
use selfrag_redis::{cluster_health, RedisConfig, RedisRateLimiter, RedisSessionStore, CLUSTER_SLOTS};
use selfrag_testkit::cluster::{key_slot, PrivateRedisCluster};

fn config(cluster: &PrivateRedisCluster) -> RedisConfig {
    RedisConfig::builder()
        .cluster_nodes(cluster.urls())
        .key_prefix(format!("selfrag-test:{}:", SessionId::generate()))
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Limits no test reaches: every check is allowed, so the count the server
/// holds is the number of checks it applied.
fn roomy_policy() -> RateLimitPolicy {
    RateLimitPolicy::new([Window::per_minute(1_000_000).unwrap(), Window::per_hour(1_000_000).unwrap()]).unwrap()
}

fn roomy_sessions() -> SessionLimits {
    SessionLimits::new(100_000, OnLimit::Refuse).unwrap()
}

const HOUR_MS: u64 = 3_600_000;

/// What one call did, at `at` since the test's start.
#[derive(Debug, Clone)]
struct Record {
    at: Duration,
    op: &'static str,
    /// The call was for a user on the killed master.
    victim: bool,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    /// A rate-limit check Redis allowed.
    Allowed,
    /// A session `get` of a session whose create was acknowledged found
    /// nothing.
    Vanished,
    Failed {
        retryable: bool,
        maybe_applied: bool,
        message: String,
    },
}

impl Outcome {
    fn of(err: &Error) -> Self {
        let maybe_applied = match err {
            Error::Unavailable { maybe_applied, .. } => *maybe_applied,
            Error::Timeout { .. } => true,
            _ => true,
        };
        Outcome::Failed { retryable: err.is_retryable(), maybe_applied, message: err.to_string() }
    }

    fn failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

/// Records calls and remembers when the last one failed.
struct Log {
    start: Instant,
    records: Mutex<Vec<Record>>,
    /// Micros since `start` of the latest failure, and whether any.
    last_failure_us: AtomicU64,
    any_failure: AtomicBool,
}

impl Log {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            records: Mutex::default(),
            last_failure_us: AtomicU64::new(0),
            any_failure: AtomicBool::new(false),
        }
    }

    fn push(&self, op: &'static str, outcome: Outcome) {
        self.push_for(op, false, outcome);
    }

    fn push_for(&self, op: &'static str, victim: bool, outcome: Outcome) {
        let at = self.start.elapsed();
        if outcome.failed() {
            self.any_failure.store(true, Ordering::SeqCst);
            self.last_failure_us.fetch_max(u64::try_from(at.as_micros()).unwrap(), Ordering::SeqCst);
        }
        self.records.lock().unwrap().push(Record { at, op, victim, outcome });
    }

    fn last_failure(&self) -> Option<Duration> {
        self.any_failure
            .load(Ordering::SeqCst)
            .then(|| Duration::from_micros(self.last_failure_us.load(Ordering::SeqCst)))
    }
}

/// Users whose hash tag lands on the master `node`, and users elsewhere.
async fn users_on(cluster: &PrivateRedisCluster, node: usize, on: usize, off: usize) -> (Vec<UserId>, Vec<UserId>) {
    let (mut here, mut there) = (Vec::new(), Vec::new());
    while here.len() < on || there.len() < off {
        let user = UserId::new();
        let owner = cluster.master_of(&format!("{{u:{user}}}")).await.unwrap();
        if owner == node && here.len() < on {
            here.push(user);
        } else if owner != node && there.len() < off {
            there.push(user);
        }
    }
    (here, there)
}

/// The count of `key` the cluster holds: the sum of the hour window's
/// buckets around now (the test may cross an hour boundary).
async fn server_count(cluster: &PrivateRedisCluster, limiter: &RedisRateLimiter, key: &RateLimitKey) -> u64 {
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let bucket = now / i64::try_from(HOUR_MS).unwrap();
    let mut total = 0;
    for b in bucket - 1..=bucket + 1 {
        let count: Option<u64> = conn.get(limiter.bucket_key(key, HOUR_MS, b)).await.unwrap();
        total += count.unwrap_or(0);
    }
    total
}

/// One worker: for its user, in a loop until `stop`: a rate-limit check, a
/// session create, a get of the last session created. Returns the sessions
/// whose create was acknowledged, and how many checks were allowed and how
/// many failed in a way that may have counted.
async fn worker(
    store: RedisSessionStore,
    limiter: RedisRateLimiter,
    user: UserId,
    victim: bool,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
) -> (Vec<SessionId>, u64, u64) {
    let key = RateLimitKey::new(user, "load").unwrap();
    let ttl = NewSession::new(Duration::from_secs(120)).unwrap();
    let (mut created, mut allowed, mut ambiguous) = (Vec::new(), 0, 0);
    while !stop.load(Ordering::SeqCst) {
        match limiter.check(&key, 1).await {
            Ok(d) => {
                assert!(d.allowed, "the policy has room for every check");
                allowed += 1;
                log.push_for("check", victim, Outcome::Allowed);
            }
            Err(e) => {
                let outcome = Outcome::of(&e);
                if let Outcome::Failed { maybe_applied: true, .. } = outcome {
                    ambiguous += 1;
                }
                log.push_for("check", victim, outcome);
            }
        }
        match store.create(user, ttl.clone()).await {
            Ok(s) => {
                created.push(s.id);
                log.push_for("create", victim, Outcome::Ok);
            }
            Err(e) => log.push_for("create", victim, Outcome::of(&e)),
        }
        if let Some(&last) = created.last() {
            match store.get(user, last).await {
                Ok(Some(_)) => log.push_for("get", victim, Outcome::Ok),
                Ok(None) => log.push_for("get", victim, Outcome::Vanished),
                Err(e) => log.push_for("get", victim, Outcome::of(&e)),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (created, allowed, ambiguous)
}

/// `SIGKILL` a master while 8 tasks create and read sessions and check rate
/// limits for users on it and elsewhere. Calls fail with retryable errors
/// while the cluster fails the master over to its replica, and the same
/// stores serve every call again afterwards. Measures the window (kill to
/// the last failed call) and counts what asynchronous replication lost:
/// rate-limit checks allowed but not counted, and acknowledged sessions
/// gone; and checks that nothing was counted twice (the stores never send a
/// call again after a broken connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_under_load_is_survived_by_the_same_stores() {
    let Some(cluster) = PrivateRedisCluster::start_or_skip(3, 1).await else { return };
    let config = config(&cluster);
    // A cap no worker reaches, so every acknowledged session should live.
    let store = RedisSessionStore::connect(&config).unwrap().with_limits(roomy_sessions());
    let limiter = RedisRateLimiter::connect(&config, roomy_policy()).unwrap();

    let probe = UserId::new();
    let victim = cluster.master_of(&format!("{{u:{probe}}}")).await.unwrap();
    let replicas = cluster.replicas_of(victim).await.unwrap();
    assert_eq!(replicas.len(), 1);
    let (on_victim, elsewhere) = users_on(&cluster, victim, 5, 3).await;
    let users: Vec<(UserId, bool)> =
        on_victim.iter().map(|u| (*u, true)).chain(elsewhere.iter().map(|u| (*u, false))).collect();

    let log = Arc::new(Log::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = users
        .iter()
        .map(|&(user, victim)| {
            tokio::spawn(worker(store.clone(), limiter.clone(), user, victim, log.clone(), stop.clone()))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(log.last_failure().is_none(), "calls failed before the kill: {:?}", log.records.lock().unwrap().last());
    let killed_at = log.start.elapsed();
    cluster.kill(victim).await.unwrap();
    // Until every call has succeeded for 1.5 s after the last failure (or
    // 15 s, which fails the test below).
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = log.start.elapsed();
        let quiet_since = log.last_failure().unwrap_or(killed_at).max(killed_at);
        if (log.last_failure().is_some() && now.saturating_sub(quiet_since) > Duration::from_millis(1500))
            || now - killed_at > Duration::from_secs(15)
        {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let records = log.records.lock().unwrap().clone();

    // Every failure is retryable, and comes after the kill.
    let failures: Vec<&Record> = records.iter().filter(|r| r.outcome.failed()).collect();
    assert!(!failures.is_empty(), "killing a master should fail some calls");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &failures {
        let Outcome::Failed { retryable, message, .. } = &r.outcome else { unreachable!() };
        assert!(*retryable, "{} failed without a retryable error: {message}", r.op);
        assert!(r.at >= killed_at, "{} failed before the kill: {message}", r.op);
        // The message without ids: "<op>: <why>".
        let why = message.split(" (").next().unwrap_or(message).to_owned();
        *kinds.entry(format!("{}: {why}", r.op)).or_default() += 1;
    }
    let last_failure = log.last_failure().unwrap();
    let window = last_failure - killed_at;
    let after: Vec<&Record> = records.iter().filter(|r| r.at > last_failure).collect();
    assert!(
        after.len() >= users.len() * 3 * 10,
        "every call succeeds again after the failover, with the same stores: {} calls after it",
        after.len()
    );
    assert!(window < Duration::from_secs(12), "the failover window is {window:?}");

    // Rate limits: what the clients saw allowed against what the cluster
    // holds.
    let (mut seen, mut ambiguous, mut held, mut lost, mut extra) = (0, 0, 0, 0, 0);
    for (&(user, _), (_, allowed, maybe)) in users.iter().zip(&results) {
        let key = RateLimitKey::new(user, "load").unwrap();
        let count = server_count(&cluster, &limiter, &key).await;
        // Counted at most once per call that may have run: nothing twice.
        assert!(count <= allowed + maybe, "{user}: {count} counted for {allowed} allowed + {maybe} ambiguous calls");
        seen += allowed;
        ambiguous += maybe;
        held += count;
        lost += allowed.saturating_sub(count);
        extra += count.saturating_sub(*allowed);
    }
    // Sessions: acknowledged creates that the new master does not have.
    let mut vanished_sessions = 0;
    let mut acknowledged = 0;
    for (&(user, _), (created, _, _)) in users.iter().zip(&results) {
        for &id in created {
            acknowledged += 1;
            if store.get(user, id).await.unwrap().is_none() {
                vanished_sessions += 1;
            }
        }
    }
    let calls = records.len();
    let span = |victim: bool| {
        let failed: Vec<Duration> =
            records.iter().filter(|r| r.victim == victim && r.outcome.failed()).map(|r| r.at - killed_at).collect();
        (failed.first().copied(), failed.last().copied())
    };
    let vanished_gets = records.iter().filter(|r| matches!(r.outcome, Outcome::Vanished)).count();
    println!(
        "failover: window {window:?} (kill to the last failed call); failures for users on the killed master \
         from/to {:?}, for the others {:?}; {calls} calls, {} failed: {kinds:#?}",
        span(true),
        span(false),
        failures.len()
    );
    println!(
        "failover: rate limits: {seen} checks allowed, {ambiguous} failed ambiguously, {held} counted by the \
         cluster: at least {lost} lost, {extra} counted for failed calls; sessions: {vanished_sessions} of \
         {acknowledged} acknowledged creates gone, {vanished_gets} gets found an acknowledged session gone"
    );

    // The health report: the cluster is whole again without the dead
    // master, which is listed failed with no slots.
    let health = cluster_health(&config).await.unwrap();
    assert_eq!(health.state, "ok", "{health:?}");
    assert_eq!(health.slots_ok, CLUSTER_SLOTS, "{health:?}");
    let dead_port = format!("127.0.0.1:{}", cluster.nodes()[victim].port());
    let dead = health.masters.iter().find(|m| m.addr == dead_port).expect("the dead master is listed");
    assert!(!dead.reachable && dead.slots == 0 && dead.flagged.as_deref() == Some("fail"), "{dead:?}");
    assert!(health.is_healthy(), "a failed master without slots is no problem: {:?}", health.problems());
    let promoted = format!("127.0.0.1:{}", cluster.nodes()[replicas[0]].port());
    assert!(health.masters.iter().any(|m| m.addr == promoted && m.reachable && m.slots > 0), "{health:?}");

    // The old master comes back as a replica; the stores notice nothing.
    let restarting = Instant::now();
    cluster.restart(victim).await.unwrap();
    cluster.wait_ok(Duration::from_secs(20)).await.unwrap();
    println!("failover: the old master rejoined in {:?}; test time {:?}", restarting.elapsed(), log.start.elapsed());
    // The cluster is `ok` once every slot is served; the node the health
    // report asks may still list the old master (now reachable, with no
    // slots, flagged `fail`) until gossip tells it of the new role.
    let rejoined = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = cluster_health(&config).await.unwrap();
        if health.masters.iter().all(|m| m.addr != dead_port) || Instant::now() > rejoined {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(health.is_healthy(), "{:?}", health.problems());
    assert!(health.masters.iter().all(|m| m.addr != dead_port), "it rejoined as a replica: {health:?}");
    let user = on_victim[0];
    let s = store.create(user, NewSession::new(Duration::from_secs(30)).unwrap()).await.unwrap();
    assert_eq!(store.get(user, s.id).await.unwrap().unwrap().id, s.id);
    assert!(limiter.check(&RateLimitKey::new(user, "load").unwrap(), 1).await.unwrap().allowed);
}

/// Moves the slot of one user from its master to another, key by key
/// (`CLUSTER SETSLOT ... IMPORTING/MIGRATING`, `MIGRATE`, then `SETSLOT ...
/// NODE`), while 4 tasks read, touch, list and create that user's sessions
/// and check its rate limit. Reads follow `ASK` and never fail; scripts that
/// derive keys (list, create, rate limits) fail as retryable instead of
/// running on half the data; afterwards every acknowledged session is
/// there and listed, and the rate-limit count is exactly what was allowed
/// (plus ambiguous failures), so no count was lost or made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrating_under_load_keeps_sessions_and_counts() {
    let Some(cluster) = PrivateRedisCluster::start_or_skip(3, 1).await else { return };
    let config = config(&cluster);
    let store = RedisSessionStore::connect(&config).unwrap().with_limits(roomy_sessions());
    let limiter = RedisRateLimiter::connect(&config, roomy_policy()).unwrap();
    let user = UserId::new();
    let tag = format!("{{u:{user}}}");
    let slot = key_slot(tag.as_bytes());
    let source = cluster.master_of(&tag).await.unwrap();
    let view = cluster.view().await.unwrap();
    let port_of = |i: usize| cluster.nodes()[i].port();
    let id_of = |port: u16| view.iter().find(|n| n.port == port).unwrap().id.clone();
    let target_port = view.iter().find(|n| n.master && n.port != port_of(source)).unwrap().port;
    let target = cluster.nodes().iter().position(|n| n.port() == target_port).unwrap();
    let masters: Vec<usize> = view
        .iter()
        .filter(|n| n.master)
        .map(|n| cluster.nodes().iter().position(|x| x.port() == n.port).unwrap())
        .collect();

    let ttl = NewSession::new(Duration::from_secs(120)).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(store.create(user, ttl.clone()).await.unwrap().id);
    }
    let key = RateLimitKey::new(user, "load").unwrap();
    let log = Arc::new(Log::new());
    let stop = Arc::new(AtomicBool::new(false));
    let known = Arc::new(Mutex::new(sessions.clone()));
    let mut tasks = Vec::new();
    for n in 0..4 {
        let (store, limiter, key, log, stop, known) =
            (store.clone(), limiter.clone(), key.clone(), log.clone(), stop.clone(), known.clone());
        let ttl = ttl.clone();
        tasks.push(tokio::spawn(async move {
            let (mut allowed, mut ambiguous) = (0_u64, 0_u64);
            let mut i = n;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let id = {
                    let known = known.lock().unwrap();
                    known[i % known.len()]
                };
                match store.get(user, id).await {
                    Ok(Some(_)) => log.push("get", Outcome::Ok),
                    Ok(None) => log.push("get", Outcome::Vanished),
                    Err(e) => log.push("get", Outcome::of(&e)),
                }
                match store.touch(user, id).await {
                    Ok(Some(_)) => log.push("touch", Outcome::Ok),
                    Ok(None) => log.push("touch", Outcome::Vanished),
                    Err(e) => log.push("touch", Outcome::of(&e)),
                }
                match store.list_recent(user, 100).await {
                    Ok(_) => log.push("list_recent", Outcome::Ok),
                    Err(e) => log.push("list_recent", Outcome::of(&e)),
                }
                match limiter.check(&key, 1).await {
                    Ok(_) => {
                        allowed += 1;
                        log.push("check", Outcome::Allowed);
                    }
                    Err(e) => {
                        if matches!(Outcome::of(&e), Outcome::Failed { maybe_applied: true, .. }) {
                            ambiguous += 1;
                        }
                        log.push("check", Outcome::of(&e));
                    }
                }
                if i % 8 == 0 {
                    match store.create(user, ttl.clone()).await {
                        Ok(s) => {
                            known.lock().unwrap().push(s.id);
                            log.push("create", Outcome::Ok);
                        }
                        Err(e) => log.push("create", Outcome::of(&e)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (allowed, ambiguous)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The migration, one key at a time with pauses, so the slot spends a
    // while half moved.
    let (src_id, dst_id) = (id_of(port_of(source)), id_of(target_port));
    let slot_arg = slot.to_string();
    let started = log.start.elapsed();
    cluster.cli(target, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &src_id]).await.unwrap();
    cluster.cli(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &dst_id]).await.unwrap();
    let target_port_arg = target_port.to_string();
    let mut moved = 0;
    loop {
        let keys = cluster.cli(source, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "1"]).await.unwrap();
        let Some(key) = keys.lines().map(str::trim).find(|k| !k.is_empty()) else { break };
        let key = key.to_owned();
        let out = cluster
            .cli(source, &["MIGRATE", "127.0.0.1", &target_port_arg, "", "0", "5000", "KEYS", &key])
            .await
            .unwrap();
        assert!(out.trim() == "OK" || out.trim() == "NOKEY", "MIGRATE {key}: {out}");
        moved += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The new owner first, then the old one, then the rest (as
    // `redis-cli --cluster reshard` does), so no two nodes send a client
    // back and forth.
    let mut order = vec![target, source];
    order.extend(masters.iter().filter(|m| **m != target && **m != source));
    for node in order {
        cluster.cli(node, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &dst_id]).await.unwrap();
    }
    let ended = log.start.elapsed();
    // Let the stores run on the new layout a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut allowed, mut ambiguous) = (0, 0);
    for task in tasks {
        let (a, m) = task.await.unwrap();
        allowed += a;
        ambiguous += m;
    }
    assert_eq!(cluster.master_of(&tag).await.unwrap(), target, "the slot moved");

    let records = log.records.lock().unwrap().clone();
    let mut failures: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *calls.entry(r.op).or_default() += 1;
        match &r.outcome {
            Outcome::Failed { retryable, message, .. } => {
                assert!(*retryable, "{} failed without a retryable error: {message}", r.op);
                assert!(r.at >= started, "{} failed before the migration: {message}", r.op);
                let why = message.rsplit(": ").next().unwrap_or(message).to_owned();
                *failures.entry((r.op, why)).or_default() += 1;
            }
            Outcome::Vanished => panic!("{} found a live session gone during the migration", r.op),
            _ => {}
        }
    }
    assert!(!failures.keys().any(|(op, _)| *op == "get"), "reads follow ASK: {failures:?}");
    let after: Vec<&Record> = records.iter().filter(|r| r.at > ended + Duration::from_millis(100)).collect();
    assert!(after.iter().all(|r| !r.outcome.failed()), "calls after the migration fail: {:?}", after.first());
    assert!(after.len() > 50, "{} calls after the migration", after.len());

    // Every acknowledged session is there, and listed.
    let known = known.lock().unwrap().clone();
    let listed: BTreeSet<SessionId> = store.list_recent(user, 1000).await.unwrap().iter().map(|s| s.id).collect();
    for id in &known {
        assert!(store.get(user, *id).await.unwrap().is_some(), "session {id} is gone");
        assert!(listed.contains(id), "session {id} is no longer listed");
    }
    assert_eq!(listed.len(), known.len());
    let count = server_count(&cluster, &limiter, &key).await;
    assert!(
        count >= allowed && count <= allowed + ambiguous,
        "{count} counted for {allowed} allowed and {ambiguous} ambiguous checks"
    );
    println!(
        "migration of slot {slot}: {moved} keys in {:?}; calls {calls:?}; failed: {failures:#?}; \
         rate limit: {allowed} allowed, {count} counted",
        ended - started
    );
}
