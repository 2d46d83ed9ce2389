//! The stores on a Redis Cluster: the conformance suites, the one-slot key
//! layout, seeds and the health report, against one private cluster (3
//! masters, 3 replicas) shared by this test binary (started once, about 3 s).
//! Failover and slot migration, which change the cluster, are in
//! `tests/cluster_faults.rs`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use selfrag_core::{
    Error, NewSession, OnLimit, RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, SessionLimits, SessionStore,
    UserId,
};
use selfrag_redis::redis::{self, Commands};
use selfrag_redis::{cluster_health, RedisConfig, RedisConnector, RedisRateLimiter, RedisSessionStore, CLUSTER_SLOTS};
use selfrag_testkit::cluster::{key_slot, PrivateRedisCluster};
use selfrag_testkit::{RateLimitFixture, RealClock, SessionFixture};

/// A key prefix no other test uses, so every fixture starts empty.
fn fresh_prefix() -> String {
    format!("selfrag-test:{}:", SessionId::generate())
}

fn config(cluster: &PrivateRedisCluster) -> RedisConfig {
    RedisConfig::builder()
        .cluster_nodes(cluster.urls())
        .key_prefix(fresh_prefix())
        .pool_size(4)
        .build()
        .expect("test config")
}

/// Every key under `prefix` on every node (replicas hold copies), by node
/// URL.
fn keys_by_node(urls: &[String], prefix: &str) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for url in urls {
        let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) else { continue };
        let keys: Vec<String> = match conn.scan_match(format!("{prefix}*")) {
            Ok(iter) => iter.collect(),
            Err(_) => continue,
        };
        out.insert(url.clone(), keys);
    }
    out
}

/// Deletes the fixture's keys on every master when the check ends (a
/// replica refuses the `DEL`, and gets it from its master).
struct Cleanup {
    urls: Vec<String>,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (url, keys) in keys_by_node(&self.urls, &self.prefix) {
            let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) else { continue };
            for key in keys {
                let _: redis::RedisResult<i64> = conn.del(key);
            }
        }
    }
}

async fn sessions() -> Option<SessionFixture> {
    let cluster = PrivateRedisCluster::shared().await?;
    let config = config(cluster);
    let store = RedisSessionStore::connect(&config).expect("session store");
    assert!(store.connector().is_cluster());
    let cleanup = Cleanup { urls: cluster.urls(), prefix: config.key_prefix };
    let shared = store.clone();
    Some(
        SessionFixture::new(Arc::new(store), None, Arc::new(RealClock))
            .with_limits(move |limits| Arc::new(shared.clone().with_limits(limits)))
            .with_guard(cleanup),
    )
}

async fn rate_limits() -> Option<RateLimitFixture> {
    let cluster = PrivateRedisCluster::shared().await?;
    let config = config(cluster);
    let connector = config.connector().expect("cluster client");
    let parent = config.key_prefix.clone();
    let cleanup = Cleanup { urls: cluster.urls(), prefix: parent.clone() };
    let make = move |policy| {
        // One prefix per limiter under the fixture's.
        let prefix = format!("{parent}{}:", SessionId::generate());
        let config = RedisConfig { key_prefix: prefix, ..config.clone() };
        let limiter = RedisRateLimiter::with_config(connector.clone(), &config, policy).expect("limiter");
        Arc::new(limiter) as Arc<dyn RateLimiter>
    };
    Some(RateLimitFixture::new(make, Arc::new(RealClock)).with_guard(cleanup))
}

// As on one server (tests/conformance.rs): session ids are scoped to their
// user, which is what lets every script stay in the user's slot.
selfrag_testkit::session_store_tests!(sessions, skip = [session_id_of_another_user_is_refused]);
selfrag_testkit::rate_limiter_tests!(rate_limits);

/// Runs every script and command the stores have (eviction at the cap and
/// a reset included) on the cluster, then finds every key written under the
/// prefix: each is in the user's slot (`CLUSTER KEYSLOT` agrees with the
/// hash tag), held by that slot's master alone, and every key shape of the
/// documented layout is there. A multi-key script on keys of several slots
/// would have failed with `CROSSSLOT`, and one touching an undeclared key of
/// another slot with "keys that do not hash to the same slot".
#[tokio::test]
async fn every_key_a_script_touches_is_in_the_users_slot() {
    let Some(cluster) = PrivateRedisCluster::shared().await else { return };
    let config = config(cluster);
    let store = RedisSessionStore::connect(&config).unwrap();
    let capped = store.clone().with_limits(SessionLimits::new(2, OnLimit::EvictOldest).unwrap());
    let limiter = RedisRateLimiter::connect(&config, RateLimitPolicy::default()).unwrap();
    let _cleanup = Cleanup { urls: cluster.urls(), prefix: config.key_prefix.clone() };
    let users: Vec<UserId> = (0..4).map(|_| UserId::new()).collect();
    let ttl = NewSession::new(Duration::from_secs(60)).unwrap();
    for &user in &users {
        let data = serde_json::json!({"k": "v"});
        let a = store.create(user, ttl.clone().with_data(data).unwrap()).await.unwrap();
        let b = store.create(user, ttl.clone()).await.unwrap();
        assert_eq!(store.get(user, a.id).await.unwrap().unwrap().id, a.id);
        store.touch(user, a.id).await.unwrap().unwrap();
        store.set_data(user, b.id, serde_json::Map::new()).await.unwrap().unwrap();
        // At the cap of 2: evicts one of a, b (keys derived in the script).
        capped.create(user, ttl.clone()).await.unwrap();
        assert_eq!(store.list_recent(user, 10).await.unwrap().len(), 2);
        let gone = store.create(user, ttl.clone()).await.unwrap();
        assert!(store.revoke(user, gone.id).await.unwrap());
        for scope in ["chat", "search"] {
            let key = RateLimitKey::new(user, scope).unwrap();
            for _ in 0..3 {
                assert!(limiter.check(&key, 1).await.unwrap().allowed);
            }
        }
        limiter.reset(&RateLimitKey::new(user, "search").unwrap()).await.unwrap();
        assert!(limiter.check(&RateLimitKey::new(user, "search").unwrap(), 1).await.unwrap().allowed);
    }
    // revoke_all on the last user, so its index keys go and come back.
    let last = users[3];
    assert_eq!(store.revoke_all(last).await.unwrap(), 2);
    store.create(last, ttl.clone()).await.unwrap();

    let view = cluster.view().await.unwrap();
    let masters: BTreeSet<u16> = view.iter().filter(|n| n.master && !n.failing).map(|n| n.port).collect();
    let by_node = keys_by_node(&cluster.urls(), &config.key_prefix);
    let mut probe = redis::Client::open(cluster.urls()[0].as_str()).unwrap().get_connection().unwrap();
    for &user in &users {
        let tag = format!("{{u:{user}}}");
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&tag).query(&mut probe).unwrap();
        assert_eq!(slot, key_slot(tag.as_bytes()), "the testkit's CRC16 agrees with Redis");
        let owner = cluster.master_of(&tag).await.unwrap();
        let owner_url = cluster.urls()[owner].clone();
        let mut shapes = BTreeSet::new();
        for (url, keys) in &by_node {
            let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
            for key in keys.iter().filter(|k| k.contains(&tag)) {
                let key_slot_of: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut probe).unwrap();
                assert_eq!(key_slot_of, slot, "{key} is not in its user's slot");
                if masters.contains(&port) {
                    assert_eq!(url, &owner_url, "{key} is on master {url}, its slot's master is {owner_url}");
                }
                // The shape: what follows the tag, with ids and numbers
                // generalised.
                let rest = &key[key.find(&tag).unwrap() + tag.len()..];
                let parts: Vec<&str> = rest.split(':').collect();
                let shape: Vec<String> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if SessionId::parse(p).is_ok() {
                            "<id>".to_owned()
                        } else if i == parts.len() - 1 && p.parse::<i64>().is_ok() {
                            "<bucket>".to_owned()
                        } else {
                            (*p).to_owned()
                        }
                    })
                    .collect();
                shapes.insert(shape.join(":"));
            }
        }
        let expected: BTreeSet<String> = [
            ":s:<id>",
            ":sessions",
            ":sessions:created",
            ":rl:chat:60000:<bucket>",
            ":rl:chat:3600000:<bucket>",
            ":rl:chat:86400000:<bucket>",
            ":rl:search:60000:<bucket>",
            ":rl:search:3600000:<bucket>",
            ":rl:search:86400000:<bucket>",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(shapes, expected, "the key shapes of user {user}");
    }
}

/// The health report of a healthy cluster, through the first seed that
/// answers, and an unreachable cluster as a retryable error.
#[tokio::test]
async fn cluster_health_reports_state_slots_and_every_master() {
    let Some(cluster) = PrivateRedisCluster::shared().await else { return };
    // A dead first seed: the next one answers.
    let mut seeds = vec!["redis://127.0.0.1:1".to_owned()];
    seeds.extend(cluster.urls());
    let config =
        RedisConfig::builder().cluster_nodes(seeds).connect_timeout(Duration::from_millis(500)).build().unwrap();
    let health = cluster_health(&config).await.unwrap();
    assert!(health.is_healthy(), "{:?}", health.problems());
    assert_eq!(health.state, "ok");
    assert_eq!((health.slots_assigned, health.slots_ok, health.slots_fail), (CLUSTER_SLOTS, CLUSTER_SLOTS, 0));
    assert_eq!(health.known_nodes, 6);
    assert_eq!(health.masters.len(), 3, "{health:?}");
    assert_eq!(health.masters.iter().map(|m| m.slots).sum::<u32>(), CLUSTER_SLOTS);
    assert!(health.masters.iter().all(|m| m.reachable && m.latency.is_some() && m.flagged.is_none()), "{health:?}");
    let ports: BTreeSet<String> = cluster.nodes().iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
    assert!(health.masters.iter().all(|m| ports.contains(&m.addr)), "{health:?}");
    assert_ne!(health.reported_by, "127.0.0.1:1");

    let dead = RedisConfig::builder()
        .cluster_nodes(["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = cluster_health(&dead).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { maybe_applied: false, .. }), "{err:?}");
    let single = RedisConfig::default();
    assert_eq!(cluster_health(&single).await.unwrap_err().field(), Some("cluster_nodes"));
}

/// One reachable seed is enough (the driver finds the other nodes), and
/// `SELFRAG_REDIS_CLUSTER=1` makes one URL a seed; with the switch off the
/// same URL is a single server, whose keys in other slots get `MOVED`, which
/// a single-server store reports instead of following.
#[tokio::test]
async fn one_seed_and_the_switch_reach_the_whole_cluster() {
    let Some(cluster) = PrivateRedisCluster::shared().await else { return };
    let url = cluster.urls()[0].clone();
    let prefix = fresh_prefix();
    let _cleanup = Cleanup { urls: cluster.urls(), prefix: prefix.clone() };
    let env = |switch: &'static str| {
        let url = url.clone();
        let prefix = prefix.clone();
        move |name: &str| match name {
            "REDIS_URL" => Some(url.clone()),
            "SELFRAG_REDIS_CLUSTER" => Some(switch.to_owned()),
            "SELFRAG_REDIS_PREFIX" => Some(prefix.clone()),
            _ => None,
        }
    };
    let config = RedisConfig::from_lookup(env("1")).unwrap();
    assert_eq!(config.cluster_nodes, std::slice::from_ref(&url));
    let store = RedisSessionStore::connect(&config).unwrap();
    // Enough users to land on every master.
    let users: Vec<UserId> = (0..30).map(|_| UserId::new()).collect();
    let mut owners = BTreeSet::new();
    for &user in &users {
        let s = store.create(user, NewSession::new(Duration::from_secs(30)).unwrap()).await.unwrap();
        assert_eq!(store.get(user, s.id).await.unwrap().unwrap().id, s.id);
        owners.insert(cluster.master_of(&format!("{{u:{user}}}")).await.unwrap());
    }
    assert_eq!(owners.len(), 3, "30 users should span the 3 masters");

    let single = RedisConfig::from_lookup(env("0")).unwrap();
    assert!(!single.is_cluster());
    let plain = RedisSessionStore::connect(&single).unwrap();
    assert!(matches!(plain.connector(), RedisConnector::Pool(_)));
    let mut moved = 0;
    for &user in &users {
        match plain.get(user, SessionId::generate()).await {
            Ok(_) => {}
            Err(e) => {
                assert!(!e.is_retryable(), "MOVED is a configuration error on a single-server store: {e}");
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "users on other masters answer MOVED");
}

/// Cluster configurations, clients, stores and their errors never show a
/// password.
#[tokio::test]
async fn cluster_configs_and_errors_hide_the_password() {
    const PW: &str = "Cl4sterS3cret";
    let seeds = [format!("redis://:{PW}@127.0.0.1:1"), format!("redis://:{PW}@127.0.0.1:2")];
    let config = RedisConfig::builder()
        .cluster_nodes(seeds.iter().cloned())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let from_env = RedisConfig::from_lookup(|name| (name == "REDIS_URL").then(|| seeds.join(","))).unwrap();
    assert_eq!(from_env.cluster_nodes, seeds);
    let store = RedisSessionStore::connect(&config).unwrap();
    let limiter = RedisRateLimiter::connect(&config, RateLimitPolicy::default()).unwrap();
    let user = UserId::new();
    let errors = [
        store.get(user, SessionId::generate()).await.unwrap_err(),
        limiter.check(&RateLimitKey::new(user, "chat").unwrap(), 1).await.unwrap_err(),
        cluster_health(&config).await.unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, Error::Unavailable { maybe_applied: false, .. }), "{err:?}");
    }
    for text in [
        format!("{config:?}"),
        format!("{from_env:?}"),
        format!("{:?}", config.connector().unwrap()),
        format!("{store:?} {limiter:?}"),
        errors.iter().map(|e| format!("{e} {e:?}")).collect::<Vec<_>>().join(" "),
    ] {
        assert!(!text.contains(PW), "{text}");
    }
}

/// A cluster connection runs a background task on the runtime that opened
/// it; when that runtime ends, every call on it fails with a broken pipe.
/// The store then drops it and opens a new one, instead of failing for good.
#[test]
fn a_cluster_connection_whose_runtime_ended_is_replaced() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let opened = first.block_on(async {
        let cluster = PrivateRedisCluster::shared().await?;
        let config = config(cluster);
        let store = RedisSessionStore::connect(&config).unwrap();
        let user = UserId::new();
        let session = store.create(user, NewSession::new(Duration::from_secs(60)).unwrap()).await.unwrap();
        Some((Cleanup { urls: cluster.urls(), prefix: config.key_prefix }, store, user, session.id))
    });
    let Some((_cleanup, store, user, id)) = opened else { return };
    drop(first);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        if let Err(e) = store.get(user, id).await {
            assert!(e.is_retryable(), "{e}");
        }
        assert_eq!(store.get(user, id).await.unwrap().unwrap().id, id, "a new connection serves the store");
    });
}
