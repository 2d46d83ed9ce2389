//! Fault tests on private Redis servers (the test's own, so it may kill them
//! or cut their network): `kill -9` and restart under concurrent load, a
//! black-holed TCP path, refused connections. Each asserts that every call
//! ends within its deadline, errors have the documented kinds, the same
//! store recovers without being recreated, and no acknowledged write is lost
//! or duplicated. The figures are printed (run with `--nocapture`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use selfrag_core::{
    ErrorKind, NewSession, RateLimitKey, RateLimitPolicy, RateLimiter, SessionId, SessionStore, UserId,
};
use selfrag_redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
use selfrag_testkit::relay::Relay;
use selfrag_testkit::servers::{PrivateRedis, RedisOptions};

/// Slack allowed past a deadline: scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

fn config(url: String) -> RedisConfig {
    RedisConfig::builder()
        .url(url)
        .key_prefix(format!("faults-{}:", uuid::Uuid::new_v4().simple()))
        .connect_timeout(Duration::from_millis(700))
        .response_timeout(Duration::from_millis(700))
        .build()
        .expect("config")
}

/// What one writer saw.
#[derive(Default)]
struct Tally {
    /// Acknowledged sessions, with their users.
    acked: HashSet<(UserId, SessionId)>,
    /// Users written to.
    users: HashSet<UserId>,
    /// Ambiguous failures given up on at the end of the run (those may
    /// have been applied without an acknowledgement).
    unresolved: usize,
    longest: Duration,
    kinds: HashMap<ErrorKind, usize>,
    successes: Vec<Instant>,
}

/// Creates sessions with ids of its own until `stop`, for a new user every
/// 50 sessions (below the per-user cap, which would evict the oldest); an
/// ambiguous failure is retried with the same id (retry-safe), an
/// unambiguous one moves on.
async fn writer(store: RedisSessionStore, stop: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut user = UserId::new();
    let mut i = 0;
    while Instant::now() < stop {
        if i % 50 == 0 {
            user = UserId::new();
            tally.users.insert(user);
        }
        i += 1;
        let id = SessionId::generate();
        let new = NewSession::new(Duration::from_secs(600)).expect("ttl").with_id(id);
        let mut maybe_applied = false;
        loop {
            let started = Instant::now();
            let result = store.create(user, new.clone()).await;
            tally.longest = tally.longest.max(started.elapsed());
            match result {
                Ok(s) => {
                    assert_eq!(s.id, id);
                    tally.acked.insert((user, id));
                    tally.successes.push(Instant::now());
                    break;
                }
                Err(e) => {
                    *tally.kinds.entry(e.kind()).or_default() += 1;
                    assert!(matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{e:?}");
                    assert!(e.is_retryable(), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // Once an attempt may have been applied, only a success
                    // settles it: keep retrying the same id.
                    maybe_applied |= e.is_ambiguous();
                    if !maybe_applied {
                        break;
                    }
                    if Instant::now() >= stop {
                        tally.unresolved += 1;
                        break;
                    }
                }
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_under_load_loses_and_duplicates_nothing() {
    // Durable on every write, so that what Redis acknowledged survives a
    // kill -9 (without persistence a restart empties it by design).
    let opts = RedisOptions {
        args: ["--appendonly", "yes", "--appendfsync", "always"].map(String::from).to_vec(),
        ..RedisOptions::default()
    };
    let Some(server) = PrivateRedis::start_or_skip(opts).await else { return };
    let config = config(server.url());
    let store = RedisSessionStore::connect(&config).expect("store");
    let limiter = RedisRateLimiter::connect(&config, RateLimitPolicy::default()).expect("limiter");

    let stop = Instant::now() + Duration::from_secs(5);
    let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(writer(store.clone(), stop))).collect();
    // Rate-limit checks under the same fault: they end on time with the
    // documented kinds, and work again afterwards.
    let checks = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let key = RateLimitKey::new(UserId::new(), "chat").unwrap();
            let (mut longest, mut failed, mut ok_after) = (Duration::ZERO, 0, 0);
            while Instant::now() < stop {
                let t = Instant::now();
                match limiter.check(&key, 1).await {
                    Ok(_) => ok_after += 1,
                    Err(e) => {
                        assert!(matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{e:?}");
                        failed += 1;
                    }
                }
                longest = longest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (longest, failed, ok_after)
        })
    };

    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.kill().await.expect("kill -9");
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.restart().await.expect("restart");
    let back = Instant::now();

    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("writer");
        all.longest = all.longest.max(t.longest);
        for (k, v) in t.kinds {
            *all.kinds.entry(k).or_default() += v;
        }
        all.successes.extend(t.successes);
        all.acked.extend(t.acked);
        all.users.extend(t.users);
        all.unresolved += t.unresolved;
    }
    let (check_longest, check_failed, _) = checks.await.unwrap();
    let recovered = all.successes.iter().filter(|t| **t > back).min().map(|t| *t - back);

    let mut lost = Vec::new();
    for (user, id) in &all.acked {
        if store.get(*user, *id).await.expect("get").is_none() {
            lost.push(*id);
        }
    }
    // Every stored session was acknowledged, or is the effect of one of the
    // ambiguous failures given up on at the very end.
    let (mut stored, mut extra) = (0, 0);
    for user in &all.users {
        for s in store.list_recent(*user, selfrag_core::session::MAX_LIST_LIMIT).await.expect("list") {
            stored += 1;
            extra += usize::from(!all.acked.contains(&(*user, s.id)));
        }
    }
    let duplicates = extra.saturating_sub(all.unresolved);
    eprintln!(
        "redis kill -9: {} acked, {} stored, lost {}, duplicates {}, longest call {:?} (checks {:?}, {} failed), \
         first success {:?} after restart (down {:?}), errors {:?}",
        all.acked.len(),
        stored,
        lost.len(),
        duplicates,
        all.longest,
        check_longest,
        check_failed,
        recovered,
        back - killed,
        all.kinds,
    );
    assert!(lost.is_empty(), "acknowledged sessions lost: {lost:?}");
    assert_eq!(duplicates, 0, "sessions stored that no call created");
    let bound = config.connect_timeout + config.response_timeout + SLACK;
    assert!(all.longest <= bound, "a call took {:?}", all.longest);
    assert!(check_longest <= bound, "a rate-limit check took {check_longest:?}");
    assert!(!all.kinds.is_empty(), "the crash was not noticed by any call");
    let recovered = recovered.expect("the same store succeeded again after the restart");
    assert!(recovered < Duration::from_secs(3), "first success {recovered:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_path_times_out_within_the_deadline_and_recovers() {
    let Some(server) = PrivateRedis::start_or_skip(RedisOptions::default()).await else { return };
    let relay = Relay::start(server.addr()).await.expect("relay");
    let config = config(format!("redis://127.0.0.1:{}", relay.port()));
    let store = RedisSessionStore::connect(&config).expect("store");
    let user = UserId::new();
    let session = store.create(user, NewSession::new(Duration::from_secs(600)).unwrap()).await.expect("warm");

    relay.blackhole().await;
    let mut longest = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        let err = store.get(user, session.id).await.expect_err("a black hole answers nothing");
        longest = longest.max(t.elapsed());
        assert!(matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable), "{err:?}");
        assert!(err.is_retryable(), "{err:?}");
    }
    eprintln!("redis black hole: longest call {longest:?}");
    assert!(longest <= config.connect_timeout + config.response_timeout + SLACK, "a call took {longest:?}");

    relay.pass().await;
    let back = Instant::now();
    let mut first = None;
    while back.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(s)) = store.get(user, session.id).await {
            assert_eq!(s.id, session.id);
            first = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("redis black hole: first success {first:?} after the path came back");
    assert!(first.is_some(), "the same store did not recover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_fail_fast_as_unavailable_and_recover() {
    let Some(server) = PrivateRedis::start_or_skip(RedisOptions::default()).await else { return };
    let relay = Relay::start(server.addr()).await.expect("relay");
    let config = config(format!("redis://127.0.0.1:{}", relay.port()));
    let store = RedisSessionStore::connect(&config).expect("store");
    let user = UserId::new();
    store.list_recent(user, 10).await.expect("warm");

    relay.refuse().await;
    let new = NewSession::new(Duration::from_secs(600)).unwrap().with_id(SessionId::generate());
    let mut last = None;
    let mut longest = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        let err = store.create(user, new.clone()).await.expect_err("refused");
        longest = longest.max(t.elapsed());
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
        last = Some(err);
    }
    assert!(!last.unwrap().is_ambiguous(), "a refused connection sends nothing");
    assert!(longest <= config.connect_timeout + config.response_timeout + SLACK, "a call took {longest:?}");

    relay.pass().await;
    let mut created = None;
    for _ in 0..50 {
        if let Ok(s) = store.create(user, new.clone()).await {
            created = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = created.expect("the same store recovers");
    // A retry of the same create is the same session, not a second one.
    assert_eq!(store.create(user, new).await.expect("retry").id, created.id);
    assert_eq!(store.list_recent(user, 10).await.unwrap().len(), 1);
    eprintln!("redis refused: longest call {longest:?}");
}
