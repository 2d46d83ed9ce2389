//! Coalesced appends: callers that share one statement keep their own
//! outcomes, callers that give up while queued are never written, and a
//! closing queue answers every waiter.
//!
//! To put several callers into one statement deterministically, a test
//! holds an `EXCLUSIVE` lock on `memory_logs` from another connection: the
//! first append goes out at once and blocks on the lock (with one statement
//! in flight at most), the next callers queue behind it, and releasing the
//! lock lets them go out together as the second statement.

mod common;

use std::time::Duration;

use selfrag_core::{Error, ErrorKind, MemoryLogId, MemoryStore, NewMemoryLog, UserId, UserStore};
use selfrag_postgres::{CoalesceConfig, CoalesceStats, PostgresMemoryStore, PostgresUserStore};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

struct Setup {
    db: common::TestDb,
    admin: Client,
    store: PostgresMemoryStore,
    users: PostgresUserStore,
}

async fn setup(config: CoalesceConfig, timeout: Duration) -> Option<Setup> {
    let db = common::fresh_db().await?;
    let admin = common::admin(&db.url).await;
    let store = PostgresMemoryStore::new(db.pool.clone()).operation_timeout(timeout).coalescing(config);
    let users = PostgresUserStore::new(db.pool.clone());
    Some(Setup { db, admin, store, users })
}

impl Setup {
    /// Holds an `EXCLUSIVE` lock on the table until [`Setup::unlock`].
    async fn lock(&self) {
        let sql = format!("BEGIN; LOCK TABLE {}.memory_logs IN EXCLUSIVE MODE", self.db.schema);
        self.admin.batch_execute(&sql).await.expect("lock");
    }

    async fn unlock(&self) {
        self.admin.batch_execute("COMMIT").await.expect("unlock");
    }

    /// Waits until the first statement is blocked on the lock, then until
    /// `queued` more calls have been queued.
    async fn wait_blocked(&self, queued: u64) {
        common::wait_blocked(&self.admin, queued, || self.stats()).await;
    }

    fn stats(&self) -> CoalesceStats {
        self.store.coalescing_stats().expect("coalescing is on")
    }

    fn append(&self, user: UserId, log: NewMemoryLog) -> JoinHandle<selfrag_core::Result<selfrag_core::MemoryLog>> {
        let store = self.store.clone();
        tokio::spawn(async move { store.append(user, log).await })
    }

    async fn count(&self) -> i64 {
        let q = format!("SELECT count(*) FROM {}.memory_logs", self.db.schema);
        self.admin.query_one(&q, &[]).await.expect("count").get(0)
    }
}

fn log(content: &str) -> NewMemoryLog {
    NewMemoryLog::new("fact", content).expect("log")
}

fn one_slot() -> CoalesceConfig {
    CoalesceConfig::new().max_in_flight(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_in_one_statement_keep_their_own_outcomes() {
    // Seven rows: one `unnest` insert.
    neighbours_keep_their_own_outcomes(one_slot()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_in_one_copy_keep_their_own_outcomes() {
    // The same seven rows as one binary `COPY`, which fails as a whole too.
    neighbours_keep_their_own_outcomes(one_slot().copy_above(0)).await;
}

async fn neighbours_keep_their_own_outcomes(config: CoalesceConfig) {
    let Some(s) = setup(config, Duration::from_secs(10)).await else { return };
    let (alice, bob) = (s.users.create_user().await.expect("user"), s.users.create_user().await.expect("user"));
    // Stored before: one id to retry identically, one to reuse with other content.
    let retried = log("stored once").at(time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("ts"));
    s.store.append(alice, retried.clone()).await.expect("first write");
    let taken = s.store.append(alice, log("the original")).await.expect("write").id;

    s.lock().await;
    let first = s.append(alice, log("goes out first"));
    s.wait_blocked(0).await;
    let good = s.append(alice, log("a good neighbour"));
    let unknown = s.append(UserId::new(), log("an unknown user"));
    let clash = s.append(alice, log("another record").with_id(taken));
    let retry = s.append(alice, retried.clone());
    let other_user = s.append(bob, log("bob's log"));
    let batch = {
        let store = s.store.clone();
        tokio::spawn(async move { store.append_batch(bob, vec![log("b1"), log("b2")]).await })
    };
    s.wait_blocked(6).await;
    s.unlock().await;

    first.await.expect("task").expect("first append");
    let good = good.await.expect("task").expect("the good neighbour succeeds");
    match unknown.await.expect("task") {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}"),
        Ok(l) => panic!("an unknown user's append succeeded: {l:?}"),
    }
    match clash.await.expect("task") {
        Err(Error::Conflict { what, id }) => assert_eq!((what, id), ("memory log", taken.to_string())),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let retry = retry.await.expect("task").expect("an identical retry succeeds");
    assert_eq!(retry.id, retried.id());
    let bobs = other_user.await.expect("task").expect("another user's append succeeds");
    assert_eq!(batch.await.expect("task").expect("a batch neighbour succeeds").len(), 2);

    // What is stored: the two from before, the first, the good one, bob's
    // three; the clash left the original alone.
    assert_eq!(s.count().await, 2 + 1 + 1 + 3);
    assert_eq!(s.store.get(alice, good.id).await.expect("get").map(|l| l.content), Some("a good neighbour".into()));
    assert_eq!(s.store.get(bob, bobs.id).await.expect("get").map(|l| l.content), Some("bob's log".into()));
    assert_eq!(s.store.get(alice, taken).await.expect("get").map(|l| l.content), Some("the original".into()));
    // The six queued calls went out as one statement, which failed and was
    // split; the first went alone.
    let stats = s.stats();
    assert_eq!((stats.calls, stats.statements, stats.split), (9, 4, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_appends_share_one_statement() {
    let Some(s) = setup(one_slot(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("first"));
    s.wait_blocked(0).await;
    let rest: Vec<_> = (0..40).map(|i| s.append(user, log(&format!("queued {i}")))).collect();
    s.wait_blocked(40).await;
    s.unlock().await;
    first.await.expect("task").expect("first");
    let mut ids = Vec::new();
    for r in rest {
        let stored = r.await.expect("task").expect("queued append");
        assert_eq!(s.store.get(user, stored.id).await.expect("get").as_ref(), Some(&stored));
        ids.push(stored.id);
    }
    assert_eq!(s.count().await, 41);
    // 40 rows > 32: the second statement was a binary COPY of all of them.
    // The first call found nothing queued and the slot free: it wrote from
    // its own task; the 40 others went through the queue.
    let stats = s.stats();
    assert_eq!((stats.statements, stats.rows, stats.split, stats.direct), (2, 41, 0, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_caller_never_goes_through_the_queue() {
    let Some(s) = setup(CoalesceConfig::new(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    for i in 0..20 {
        let stored = s.store.append(user, log(&format!("alone {i}"))).await.expect("append");
        assert_eq!(s.store.get(user, stored.id).await.expect("get").as_ref(), Some(&stored));
    }
    let batch = vec![log("batch 0"), log("batch 1"), log("batch 2")];
    assert_eq!(s.store.append_batch(user, batch).await.expect("append batch").len(), 3);
    // One at a time, each call found the queue empty and a slot free.
    let stats = s.stats();
    assert_eq!(
        (stats.calls, stats.direct, stats.statements, stats.rows, stats.split, stats.cancelled),
        (21, 21, 21, 23, 0, 0),
        "{stats:?}"
    );
    assert_eq!(s.count().await, 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_still_coalesces_behind_the_fast_path() {
    // The default bounds: 2 statements in flight.
    let Some(s) = setup(CoalesceConfig::new(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let burst: Vec<_> = (0..64).map(|i| s.append(user, log(&format!("burst {i}")))).collect();
    // Every call is counted: on the fast path or in the queue.
    s.wait_blocked(63).await;
    s.unlock().await;
    for r in burst {
        r.await.expect("task").expect("append");
    }
    assert_eq!(s.count().await, 64);
    let stats = s.stats();
    // At most one fast-path call per slot; everything else waited in the
    // queue while the slots were taken and went out in shared statements.
    assert_eq!((stats.calls, stats.rows, stats.split), (64, 64, 0), "{stats:?}");
    assert!(stats.direct <= 2, "{stats:?}");
    assert!(stats.statements < stats.calls / 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_waits_for_a_call_on_the_fast_path() {
    let Some(s) = setup(one_slot(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("first"));
    s.wait_blocked(0).await;
    assert_eq!(s.stats().direct, 1, "{:?}", s.stats());
    let closing = {
        let store = s.store.clone();
        tokio::spawn(async move { store.close_coalescing().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!closing.is_finished(), "close returned with a fast-path call in flight");
    s.unlock().await;
    closing.await.expect("close");
    // Close returned only once the fast-path call's slot was free again,
    // that is after its statement committed.
    assert_eq!(s.count().await, 1);
    first.await.expect("task").expect("first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_respect_the_row_bound() {
    let Some(s) = setup(one_slot().max_rows(4), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("first"));
    s.wait_blocked(0).await;
    let rest: Vec<_> = (0..10).map(|i| s.append(user, log(&format!("queued {i}")))).collect();
    s.wait_blocked(10).await;
    s.unlock().await;
    first.await.expect("task").expect("first");
    for r in rest {
        r.await.expect("task").expect("queued append");
    }
    // 1, then 4 + 4 + 2.
    let stats = s.stats();
    assert_eq!((stats.statements, stats.rows), (4, 11), "{stats:?}");
    // A batch above the bound is written on its own, not queued.
    let big: Vec<_> = (0..5).map(|i| log(&format!("big {i}"))).collect();
    s.store.append_batch(user, big).await.expect("big batch");
    assert_eq!(s.stats().calls, stats.calls);
    assert_eq!(s.count().await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_while_queued_are_not_written() {
    let Some(s) = setup(one_slot(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("first"));
    s.wait_blocked(0).await;
    let kept = s.append(user, log("kept"));
    let dropped_log = log("dropped");
    let dropped_id = dropped_log.id();
    let dropped = s.append(user, dropped_log);
    s.wait_blocked(2).await;
    // The caller goes away (its future is dropped) while its rows wait.
    dropped.abort();
    assert!(dropped.await.expect_err("aborted").is_cancelled());
    s.unlock().await;
    first.await.expect("task").expect("first");
    kept.await.expect("task").expect("kept");
    assert_eq!(s.store.get(user, dropped_id).await.expect("get"), None);
    assert_eq!(s.count().await, 2);
    assert_eq!(s.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_timeout_covers_the_queue_and_back_pressure() {
    // One statement in flight, room for two calls in the queue.
    let Some(s) = setup(one_slot().queue(2), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("in flight"));
    s.wait_blocked(0).await;
    // Callers with a short deadline, on a clone of the same store (sharing
    // its queue, whose writer keeps the 10 s timeout it started with).
    let short = s.store.clone().operation_timeout(Duration::from_millis(400));
    let queued: Vec<(MemoryLogId, _)> = (0..3)
        .map(|i| {
            let l = log(&format!("queued {i}"));
            let store = short.clone();
            (l.id(), tokio::spawn(async move { store.append(user, l).await }))
        })
        .collect();
    // Two wait in the queue, the third for room in it; all three time out
    // at 400 ms with nothing written.
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for (id, task) in queued {
        let err = task.await.expect("task").expect_err("timed out in the queue");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        ids.push(id);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(s.stats().cancelled, 3);
    s.unlock().await;
    first.await.expect("task").expect("the first append, once the lock is gone");
    // The flusher skips the abandoned calls when it reaches them.
    let after = s.store.append(user, log("after")).await.expect("append after the timeouts");
    for id in ids {
        assert_eq!(s.store.get(user, id).await.expect("get"), None);
    }
    assert_eq!(s.store.get(user, after.id).await.expect("get").map(|l| l.id), Some(after.id));
    assert_eq!(s.count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_flushes_every_waiter() {
    let Some(s) = setup(one_slot(), Duration::from_secs(10)).await else { return };
    let user = s.users.create_user().await.expect("user");
    s.lock().await;
    let first = s.append(user, log("first"));
    s.wait_blocked(0).await;
    let rest: Vec<_> = (0..5).map(|i| s.append(user, log(&format!("queued {i}")))).collect();
    s.wait_blocked(5).await;
    let closing = {
        let store = s.store.clone();
        tokio::spawn(async move { store.close_coalescing().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!closing.is_finished(), "close returned with calls still waiting");
    s.unlock().await;
    closing.await.expect("close");
    // Every waiter was answered before close returned (its task may still
    // need a moment to be scheduled and finish).
    let answered = |t| tokio::time::timeout(Duration::from_millis(500), t);
    answered(first).await.expect("answered").expect("task").expect("first");
    for r in rest {
        answered(r).await.expect("answered").expect("task").expect("queued append");
    }
    // After close, appends are written on their own.
    let calls = s.stats().calls;
    s.store.append(user, log("after close")).await.expect("append after close");
    assert_eq!(s.stats().calls, calls);
    assert_eq!(s.count().await, 7);
}
