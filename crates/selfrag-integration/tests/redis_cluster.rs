//! `Storage::from_lookup` with a Redis Cluster: several URLs in `REDIS_URL`
//! (or one with `SELFRAG_REDIS_CLUSTER=1`) give cluster stores, which work
//! against a private cluster (3 masters, 3 replicas) of this test binary.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::time::Duration;

use selfrag::{NewSession, RateLimitKey, Storage, StorageOptions};
use selfrag_testkit::cluster::PrivateRedisCluster;

fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    move |name| vars.get(name).cloned()
}

#[tokio::test]
async fn redis_url_with_several_seeds_composes_cluster_stores() {
    let Some(cluster) = PrivateRedisCluster::start_or_skip(3, 1).await else { return };
    let prefix = format!("facade-{}:", uuid::Uuid::new_v4().simple());
    let seeds = cluster.seed_list();
    let one = cluster.urls()[0].clone();
    for vars in [
        vec![("REDIS_URL", seeds), ("SELFRAG_REDIS_PREFIX", prefix.clone())],
        vec![("REDIS_URL", one), ("SELFRAG_REDIS_CLUSTER", "1".to_owned()), ("SELFRAG_REDIS_PREFIX", prefix.clone())],
    ] {
        let storage = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap();
        assert_eq!(storage.backends.sessions, "redis");
        assert_eq!(storage.backends.rate_limiter, "redis");
        // Users on every master: each call goes to its user's slot.
        for _ in 0..12 {
            let user = storage.users.create_user().await.unwrap();
            let session = storage.sessions.create(user, NewSession::new(Duration::from_secs(60)).unwrap()).await;
            let session = session.unwrap();
            assert_eq!(storage.sessions.get(user, session.id).await.unwrap().unwrap().id, session.id);
            assert_eq!(storage.sessions.revoke_all(user).await.unwrap(), 1);
            let key = RateLimitKey::new(user, "chat").unwrap();
            assert!(storage.rate_limiter.check(&key, 1).await.unwrap().allowed);
            storage.rate_limiter.reset(&key).await.unwrap();
        }
    }
    // Several URLs with the switch off is a configuration error naming the
    // variable.
    let vars = [("REDIS_URL", cluster.seed_list()), ("SELFRAG_REDIS_CLUSTER", "0".to_owned())];
    let err = Storage::from_lookup(&StorageOptions::default(), lookup(&vars)).await.unwrap_err();
    assert_eq!(err.field(), Some("REDIS_URL"), "{err}");
}
