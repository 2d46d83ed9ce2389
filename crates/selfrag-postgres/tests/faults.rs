//! Fault tests on private Postgres servers (the test's own, so it may kill
//! them or cut their network): a crash and restart under concurrent load, a
//! black-holed TCP path, refused connections, and a statement stuck behind
//! a lock. Each asserts that every call ends within its deadline, errors have
//! the documented kinds, the same store recovers without being recreated,
//! and no acknowledged write is lost or duplicated. The figures are printed
//! (run with `--nocapture` to see them).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use selfrag_core::{Error, ErrorKind, MemoryLogId, MemoryStore, NewMemoryLog, UserId, UserStore};
use selfrag_postgres::{PostgresConfig, PostgresMemoryStore, PostgresUserStore};
use selfrag_testkit::relay::Relay;
use selfrag_testkit::servers::{PgOptions, PrivatePostgres};

/// Slack allowed past a deadline: scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

fn config(url: &str) -> PostgresConfig {
    PostgresConfig::with_url(url)
        .max_connections(4)
        .connect_timeout(Duration::from_millis(800))
        .acquire_timeout(Duration::from_secs(1))
        .operation_timeout(Duration::from_secs(2))
}

async fn stores(config: &PostgresConfig) -> (PostgresUserStore, PostgresMemoryStore) {
    let pool = config.build().expect("pool");
    selfrag_postgres::migrate(&pool).await.expect("migrate");
    (PostgresUserStore::with_config(pool.clone(), config), PostgresMemoryStore::with_config(pool, config))
}

/// What one writer saw.
#[derive(Default)]
struct Tally {
    /// Logs whose append returned success, by id, with their content.
    acked: HashMap<MemoryLogId, String>,
    /// Longest single call.
    longest: Duration,
    /// Error kinds seen.
    kinds: HashMap<ErrorKind, usize>,
    /// Ambiguous failures that a retry of the same log resolved.
    resolved_by_retry: usize,
    /// When each success ended.
    successes: Vec<Instant>,
}

/// Appends logs with fresh ids until `stop`; an ambiguous failure is
/// retried with the same log (retry-safe by id) until it succeeds or `stop`.
async fn writer(store: PostgresMemoryStore, user: UserId, n: usize, stop: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0;
    while Instant::now() < stop {
        let content = format!("writer {n} log {i}");
        i += 1;
        let log = NewMemoryLog::new("fact", content.clone()).expect("log");
        let mut retried = false;
        loop {
            let started = Instant::now();
            let result = store.append(user, log.clone()).await;
            let took = started.elapsed();
            tally.longest = tally.longest.max(took);
            match result {
                Ok(stored) => {
                    tally.acked.insert(stored.id, content.clone());
                    tally.successes.push(Instant::now());
                    tally.resolved_by_retry += usize::from(retried);
                    break;
                }
                Err(e) => {
                    *tally.kinds.entry(e.kind()).or_default() += 1;
                    assert!(
                        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                        "a crash gives Unavailable or Timeout, got {e:?}"
                    );
                    assert!(e.is_retryable(), "{e:?}");
                    if Instant::now() >= stop {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if e.is_ambiguous() {
                        retried = true;
                        continue; // the same log again
                    }
                    if !retried {
                        break; // nothing was applied: move on to a new log
                    }
                }
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_under_load_loses_and_duplicates_nothing() {
    let Some(server) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    let config = config(&server.url());
    let (users, store) = stores(&config).await;
    let user = users.create_user().await.expect("user");

    let writers = 8;
    let start = Instant::now();
    let stop = start + Duration::from_secs(6);
    let tasks: Vec<_> = (0..writers).map(|n| tokio::spawn(writer(store.clone(), user, n, stop))).collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().await.expect("kill -9");
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart().await.expect("restart");
    let back = Instant::now();

    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("writer");
        all.longest = all.longest.max(t.longest);
        all.resolved_by_retry += t.resolved_by_retry;
        for (k, v) in t.kinds {
            *all.kinds.entry(k).or_default() += v;
        }
        all.successes.extend(t.successes);
        for (id, c) in t.acked {
            assert!(all.acked.insert(id, c).is_none(), "one id acknowledged twice");
        }
    }
    let first_after = all.successes.iter().filter(|t| **t > back).min().copied();
    let recovered = first_after.map(|t| t - back);

    // Every acknowledged log is stored, exactly once, and no content is
    // stored twice (a retried write was never duplicated).
    let (admin, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.expect("admin");
    tokio::spawn(conn);
    let rows = admin.query("SELECT id, content FROM memory_logs WHERE user_id = $1", &[user.as_uuid()]).await.unwrap();
    let stored: HashMap<uuid::Uuid, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lost: Vec<_> = all.acked.keys().filter(|id| !stored.contains_key(id.as_uuid())).collect();
    let distinct: HashSet<&String> = stored.values().collect();
    let duplicates = stored.len() - distinct.len();
    eprintln!(
        "postgres crash: {} acked, {} stored, lost {}, duplicates {}, longest call {:?}, \
         first success {:?} after restart (down {:?}), errors {:?}, ambiguous failures resolved by retry {}",
        all.acked.len(),
        stored.len(),
        lost.len(),
        duplicates,
        all.longest,
        recovered,
        back - killed,
        all.kinds,
        all.resolved_by_retry
    );
    assert!(lost.is_empty(), "acknowledged logs lost: {lost:?}");
    assert_eq!(duplicates, 0, "a log stored twice");
    assert!(all.longest <= config.operation_timeout + SLACK, "a call took {:?}", all.longest);
    assert!(!all.kinds.is_empty(), "the crash was not noticed by any call");
    let recovered = recovered.expect("the same store succeeded again after the restart");
    assert!(recovered < Duration::from_secs(3), "first success {recovered:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_path_times_out_within_the_deadline_and_recovers() {
    let Some(server) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    let relay = Relay::start(server.addr()).await.expect("relay");
    let url = format!("postgres://postgres@127.0.0.1:{}/test", relay.port());
    let config = config(&url).max_connections(2);
    let (users, store) = stores(&config).await;
    let user = users.create_user().await.expect("user");
    store.append(user, NewMemoryLog::new("fact", "before").unwrap()).await.expect("warm");

    relay.blackhole().await;
    // Four calls on a pool of two: two wait for a connection, two hang on
    // the partitioned ones. All must end by the deadline.
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = store.append(user, NewMemoryLog::new("fact", format!("during {i}")).unwrap()).await;
                (t.elapsed(), r)
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    for c in calls {
        let (took, result) = c.await.unwrap();
        longest = longest.max(took);
        let err = result.expect_err("no write gets through a black hole");
        assert!(matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable), "{err:?}");
        assert!(err.is_retryable(), "{err:?}");
    }
    eprintln!("postgres black hole: longest call {longest:?} (operation timeout {:?})", config.operation_timeout);
    assert!(longest <= config.operation_timeout + SLACK, "a call took {longest:?}");
    assert!(started.elapsed() <= config.operation_timeout + SLACK);

    relay.pass().await;
    let back = Instant::now();
    let mut first = None;
    while back.elapsed() < Duration::from_secs(10) {
        if store.append(user, NewMemoryLog::new("fact", "after").unwrap()).await.is_ok() {
            first = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("postgres black hole: first success {first:?} after the path came back");
    assert!(first.is_some(), "the same store did not recover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_fail_fast_as_unavailable_and_nothing_applied() {
    let Some(server) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    let relay = Relay::start(server.addr()).await.expect("relay");
    let url = format!("postgres://postgres@127.0.0.1:{}/test", relay.port());
    let config = config(&url);
    let (users, store) = stores(&config).await;
    let user = users.create_user().await.expect("user");

    relay.refuse().await;
    let log = NewMemoryLog::new("fact", "refused").unwrap();
    let mut longest = Duration::ZERO;
    // The first call may meet a pooled connection that the relay just cut
    // (ambiguous); later ones cannot get a connection at all (not applied).
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let err = store.append(user, log.clone()).await.expect_err("refused");
        longest = longest.max(t.elapsed());
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
        last = Some(err);
    }
    let last = last.unwrap();
    assert!(!last.is_ambiguous(), "a refused connection sends nothing: {last:?}");
    assert!(longest <= config.acquire_timeout + SLACK, "a call took {longest:?}");

    relay.pass().await;
    let stored = store.append(user, log.clone()).await.expect("the same store recovers");
    // And a retry of it is not a duplicate.
    assert_eq!(store.append(user, log).await.expect("retry"), stored);
    eprintln!("postgres refused: longest call {longest:?}");
}

/// The whole wait for a connection is bounded by `acquire_timeout`, not by
/// the pool's wait plus its connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_timeout_bounds_the_whole_wait_for_a_connection() {
    // A listener that accepts and never answers: connecting hangs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let config = PostgresConfig::with_url(format!("postgres://postgres@127.0.0.1:{port}/db"))
        .max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_millis(700))
        .operation_timeout(Duration::from_secs(5));
    let store = PostgresMemoryStore::with_config(config.build().unwrap(), &config);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = store.get(UserId::new(), MemoryLogId::new()).await;
                (t.elapsed(), r)
            })
        })
        .collect();
    for c in calls {
        let (took, result) = c.await.unwrap();
        let err = result.expect_err("no server answers");
        assert!(matches!(err, Error::Unavailable { maybe_applied: false, .. }), "{err:?}");
        assert!(took <= Duration::from_millis(700) + SLACK, "waited {took:?} for a connection");
    }
    held.abort();
}

/// A statement stuck past the deadline (here: behind a lock) returns
/// `Timeout` on time, is cancelled on the server, and its connection is not
/// reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_statement_is_cancelled_on_the_server() {
    let Some(server) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    let config =
        config(&server.url()).application_name("selfrag-cancel-test").operation_timeout(Duration::from_secs(1));
    let (users, store) = stores(&config).await;
    let user = users.create_user().await.expect("user");

    let (mut admin, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.expect("admin");
    tokio::spawn(conn);
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE memory_logs IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let started = Instant::now();
    let err = store.append(user, NewMemoryLog::new("fact", "blocked").unwrap()).await.expect_err("blocked");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_ambiguous());
    assert!(took <= Duration::from_secs(1) + SLACK, "took {took:?}");

    // The server stops waiting on the lock: the cancel request ended it.
    let (watch, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.expect("watch");
    tokio::spawn(conn);
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'selfrag-cancel-test' \
                   AND state = 'active' AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = watch.query_one(waiting, &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the timed-out statement still waits on the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.rollback().await.unwrap();
    // Nothing was written, and the store works on.
    let page = store.query(user, &selfrag_core::MemoryQuery::new()).await.expect("query after the timeout");
    assert!(page.logs.is_empty());
    store.append(user, NewMemoryLog::new("fact", "after").unwrap()).await.expect("append after the timeout");
}
