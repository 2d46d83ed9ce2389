//! `selfrag doctor` against a private Redis Cluster of this test's own
//! (3 masters, no replicas, from the machine's `redis-server`): the
//! cluster's state, every master answering, the rate-limit TTLs through the
//! cluster, and the scan of the services' buckets on every master.

use std::process::{Command, Output};

use selfrag_redis::deadpool_redis::redis;
use selfrag_redis::RedisConfig;
use selfrag_testkit::cluster::PrivateRedisCluster;
use serde_json::Value;

mod common;
use common::TOOL_VARS;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (Run, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfrag"));
    for var in TOOL_VARS {
        cmd.env_remove(var);
    }
    cmd.arg("doctor").arg("--json").args(args).envs(env.iter().copied());
    let Output { status, stdout, stderr } = cmd.output().expect("run the selfrag binary");
    let run = Run {
        code: status.code().expect("exited normally"),
        stdout: String::from_utf8(stdout).expect("utf-8"),
        stderr: String::from_utf8(stderr).expect("utf-8"),
    };
    let doc = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n--- stderr\n{}", run.stdout, run.stderr));
    (run, doc)
}

fn check<'a>(doc: &'a Value, service: &str, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["service"] == service && c["check"] == name)
        .unwrap_or_else(|| panic!("no check {service}/{name} in {doc:#}"))
}

fn detail(doc: &Value, name: &str) -> String {
    check(doc, "redis", name)["detail"].as_str().expect("detail").to_owned()
}

/// Issue 13, item 5: the doctor reports the cluster state and that every
/// master answers; a master that is down fails the check by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_redis_cluster() {
    let Some(cluster) = PrivateRedisCluster::start_or_skip(3, 0).await else { return };
    let prefix = format!("cli-cluster-{}:", uuid::Uuid::new_v4().simple());
    let seeds = cluster.seed_list();
    let env = [("REDIS_URL", seeds.as_str()), ("SELFRAG_REDIS_PREFIX", prefix.as_str())];

    let (run, doc) = doctor(&[], &env);
    assert_eq!(run.code, 0, "{run:?}");
    let state = check(&doc, "redis", "cluster");
    assert_eq!(state["state"], "ok", "{doc:#}");
    let text = detail(&doc, "cluster");
    assert!(text.contains("cluster_state ok") && text.contains("16384/16384"), "{text}");
    assert!(text.contains("3 masters answer PING"), "{text}");
    assert_eq!(check(&doc, "redis", "rate-limit TTLs")["state"], "ok", "{doc:#}");
    assert!(detail(&doc, "connection").starts_with("cluster, seeds "), "{doc:#}");
    assert_eq!(check(&doc, "redis", "tls")["tls"]["encrypted"], false, "{doc:#}");

    // Buckets the services would have written, spread over the masters,
    // without a TTL: the scan of every master finds each of them.
    let config = RedisConfig::builder().cluster_nodes(cluster.urls()).build().unwrap();
    let connector = config.connector().unwrap();
    let mut conn = connector.cluster().unwrap().get_connection().await.unwrap();
    let mut keys = Vec::new();
    let mut masters = std::collections::HashSet::new();
    while masters.len() < 3 || keys.len() < 6 {
        let key = format!("{prefix}{{u:{}}}:rl:api:60000:1", uuid::Uuid::new_v4());
        let _: () = redis::cmd("SET").arg(&key).arg(1).query_async(&mut conn).await.unwrap();
        masters.insert(cluster.master_of(&key).await.unwrap());
        keys.push(key);
    }
    let (run, doc) = doctor(&[], &env);
    assert_eq!(run.code, 1, "{run:?}");
    let text = detail(&doc, "rate-limit keys");
    assert!(text.starts_with(&format!("{n} of {n} bucket key(s) on 3 masters wrong", n = keys.len())), "{text}");
    assert!(text.contains("has no TTL"), "{text}");
    for key in &keys {
        let _: () = redis::cmd("PEXPIRE").arg(key).arg(60_000).query_async(&mut conn).await.unwrap();
    }
    let (run, doc) = doctor(&[], &env);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(detail(&doc, "rate-limit keys").starts_with(&format!("{} bucket key(s) scanned on 3 masters", keys.len())));

    // One seed is enough with the switch; without it, it is one server.
    let one = cluster.urls()[0].clone();
    let (run, doc) = doctor(&["--redis-cluster", "1"], &[("REDIS_URL", one.as_str())]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(check(&doc, "redis", "cluster")["state"], "ok", "{doc:#}");

    // A master down: the cluster check fails and names it.
    let victim = cluster.master_of(&keys[0]).await.unwrap();
    let victim_port = cluster.nodes()[victim].port();
    cluster.kill(victim).await.unwrap();
    let (run, doc) = doctor(&[], &env);
    assert_ne!(run.code, 0, "{run:?}");
    let state = check(&doc, "redis", "cluster");
    assert_eq!(state["state"], "fail", "{doc:#}");
    assert!(detail(&doc, "cluster").contains(&format!(":{victim_port}")), "{doc:#}");
}
