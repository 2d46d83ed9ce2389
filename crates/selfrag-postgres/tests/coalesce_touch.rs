//! Coalesced session touches: touches that share one `UPDATE` each get
//! their own answer (their session, or `None` when it is missing, expired
//! or another user's), a failed shared statement is split so that only the
//! touch that fails alone fails, a caller that gives up while queued is
//! never sent, and overlapping batches never deadlock.
//!
//! To put several touches into one statement deterministically, a test
//! locks one session's row from another connection: the first touch (of
//! that session) goes out at once and blocks on the lock (one statement in
//! flight at most), the next ones queue behind it, and releasing the lock
//! lets them go out together as the second statement.

mod common;

use std::time::Duration;

use selfrag_core::{NewSession, Session, SessionId, SessionStore, UserId, UserStore};
use selfrag_postgres::{CoalesceConfig, CoalesceStats, PostgresConfig, PostgresSessionStore, PostgresUserStore};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

struct Setup {
    db: common::TestDb,
    admin: Client,
    store: PostgresSessionStore,
    users: PostgresUserStore,
}

async fn setup(config: CoalesceConfig) -> Option<Setup> {
    let db = common::fresh_db().await?;
    let admin = common::admin(&db.url).await;
    let store =
        PostgresSessionStore::new(db.pool.clone()).operation_timeout(Duration::from_secs(20)).coalescing(config);
    let users = PostgresUserStore::new(db.pool.clone());
    Some(Setup { db, admin, store, users })
}

fn one_slot() -> CoalesceConfig {
    CoalesceConfig::new().max_in_flight(1)
}

impl Setup {
    /// Locks the row of session `id` until [`Setup::unlock`].
    async fn lock(&self, id: SessionId) {
        let sql = format!("BEGIN; SELECT 1 FROM {}.user_sessions WHERE id = '{id}' FOR UPDATE", self.db.schema);
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

    fn touch(&self, user: UserId, id: SessionId) -> JoinHandle<selfrag_core::Result<Option<Session>>> {
        let store = self.store.clone();
        tokio::spawn(async move { store.touch(user, id).await })
    }

    async fn session(&self, user: UserId) -> Session {
        self.store.create(user, NewSession::new(Duration::from_secs(600)).expect("ttl")).await.expect("create")
    }

    /// `last_activity` of a row, read directly (live or not).
    async fn last_activity(&self, id: SessionId) -> time::OffsetDateTime {
        let q = format!("SELECT last_activity FROM {}.user_sessions WHERE id = $1", self.db.schema);
        self.admin.query_one(&q, &[id.as_uuid()]).await.expect("row").get(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touches_in_one_statement_get_their_own_answers() {
    let Some(s) = setup(one_slot()).await else { return };
    let (user, other) = (s.users.create_user().await.expect("user"), s.users.create_user().await.expect("user"));
    let blocker = s.session(user).await;
    let (a, b) = (s.session(user).await, s.session(user).await);
    let others = s.session(other).await;
    let expired = s.session(user).await;
    let sql =
        format!("UPDATE {}.user_sessions SET expires_at = now() - interval '1 second' WHERE id = $1", s.db.schema);
    s.admin.execute(&sql, &[expired.id.as_uuid()]).await.expect("expire");
    let before = (s.last_activity(a.id).await, s.last_activity(others.id).await);

    s.lock(blocker.id).await;
    let first = s.touch(user, blocker.id);
    s.wait_blocked(0).await;
    let queued = [
        (user, a.id),
        (user, b.id),
        (user, a.id),                  // the same session twice in one statement
        (user, SessionId::generate()), // never existed
        (user, others.id),             // another user's session
        (user, expired.id),            // expired
        (other, others.id),            // the other user's own touch of it
    ];
    let tasks: Vec<_> = queued.iter().map(|&(u, id)| s.touch(u, id)).collect();
    s.wait_blocked(queued.len() as u64).await;
    s.unlock().await;
    assert_eq!(first.await.expect("task").expect("first").map(|x| x.id), Some(blocker.id));
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task").expect("touch"));
    }
    let ids: Vec<Option<SessionId>> = answers.iter().map(|a| a.as_ref().map(|x| x.id)).collect();
    assert_eq!(ids, [Some(a.id), Some(b.id), Some(a.id), None, None, None, Some(others.id)]);
    assert_eq!(answers[0], answers[2], "both callers of one session get the same row");
    let touched_a = answers[0].as_ref().expect("a");
    assert!(touched_a.last_activity > before.0 && touched_a.expires_at > a.expires_at, "{touched_a:?}");
    assert_eq!(answers[6].as_ref().expect("others").user_id, other);
    assert!(s.last_activity(others.id).await > before.1, "touched once, by its owner");
    // Each answer is what a plain get now reads.
    assert_eq!(s.store.get(user, a.id).await.expect("get").as_ref(), Some(touched_a));
    assert_eq!(s.store.get(user, expired.id).await.expect("get"), None);
    // The first call went out on its own (fast path); the seven queued ones
    // were one statement.
    let stats = s.stats();
    assert_eq!((stats.statements, stats.rows, stats.split, stats.direct), (2, 8, 0, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_statement_fails_only_the_touch_that_fails_alone() {
    let Some(db) = common::fresh_db().await else { return };
    // A statement waiting on a row lock fails after 1.5 s: the shared
    // statement (which includes the locked session) fails, and so does
    // that session's touch alone, but not its neighbours'.
    let config =
        PostgresConfig::with_url(&db.url).schema(&db.schema).statement_timeout(Some(Duration::from_millis(1_500)));
    let pool = config.max_connections(4).build().expect("pool");
    let store =
        PostgresSessionStore::new(pool.clone()).operation_timeout(Duration::from_secs(20)).coalescing(one_slot());
    let s = Setup { admin: common::admin(&db.url).await, db, store, users: PostgresUserStore::new(pool) };
    let user = s.users.create_user().await.expect("user");
    let locked = s.session(user).await;
    let (a, b) = (s.session(user).await, s.session(user).await);
    s.lock(locked.id).await;
    let first = s.touch(user, locked.id);
    s.wait_blocked(0).await;
    let tasks = [s.touch(user, a.id), s.touch(user, locked.id), s.touch(user, b.id)];
    s.wait_blocked(3).await;
    let [ta, tl, tb] = tasks;
    first.await.expect("task").expect_err("the first touch waits on the lock past the statement timeout");
    assert_eq!(ta.await.expect("task").expect("a alone").map(|x| x.id), Some(a.id));
    assert_eq!(tb.await.expect("task").expect("b alone").map(|x| x.id), Some(b.id));
    tl.await.expect("task").expect_err("the locked session's touch fails alone too");
    s.unlock().await;
    let stats = s.stats();
    assert_eq!(stats.split, 1, "{stats:?}");
    assert_eq!(s.store.touch(user, locked.id).await.expect("after the lock").map(|x| x.id), Some(locked.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_given_up_while_queued_is_never_sent() {
    let Some(s) = setup(one_slot()).await else { return };
    let user = s.users.create_user().await.expect("user");
    let (blocker, kept, dropped) = (s.session(user).await, s.session(user).await, s.session(user).await);
    let before = s.last_activity(dropped.id).await;
    s.lock(blocker.id).await;
    let first = s.touch(user, blocker.id);
    s.wait_blocked(0).await;
    let kept_task = s.touch(user, kept.id);
    let dropped_task = s.touch(user, dropped.id);
    s.wait_blocked(2).await;
    dropped_task.abort();
    assert!(dropped_task.await.expect_err("aborted").is_cancelled());
    s.unlock().await;
    first.await.expect("task").expect("first");
    assert!(kept_task.await.expect("task").expect("kept").is_some());
    assert_eq!(s.last_activity(dropped.id).await, before, "never sent");
    assert_eq!(s.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_statements_do_not_deadlock() {
    // Four statements in flight, each taking whatever waits: 400 touches
    // over 8 sessions, in shuffled orders, so statements overlap on rows
    // and would lock them in different orders if not sorted.
    let Some(s) = setup(CoalesceConfig::new().max_in_flight(4).max_rows(8)).await else { return };
    let user = s.users.create_user().await.expect("user");
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(s.session(user).await.id);
    }
    // A table big enough that each touch is an index lookup in the order
    // the statement's input gives (rows of another user).
    let filler = s.users.create_user().await.expect("user");
    let sql = format!(
        "INSERT INTO {0}.user_sessions (id, user_id, created_at, last_activity, expires_at, ttl_ms, data)
         SELECT gen_random_uuid(), $1, now(), now(), now() + interval '1 hour', 3600000, '{{}}'
         FROM generate_series(1, 20000); ANALYZE {0}.user_sessions",
        s.db.schema
    );
    let (insert, analyze) = sql.split_once("; ").expect("two statements");
    s.admin.execute(insert, &[filler.as_uuid()]).await.expect("filler");
    s.admin.batch_execute(analyze).await.expect("analyze");
    let tasks: Vec<_> = (0..400usize).map(|i| s.touch(user, sessions[(i * 5 + i / 8) % 8])).collect();
    for t in tasks {
        assert!(t.await.expect("task").expect("touch").is_some());
    }
    let stats = s.stats();
    // A deadlock would fail a statement (Postgres aborts one of the two),
    // which the coalescer would split: none may have.
    assert_eq!(stats.split, 0, "{stats:?}");
    assert!(stats.statements < 400, "some touches shared a statement: {stats:?}");
    s.store.close_coalescing().await;
    // Closed: touches go out on their own.
    assert!(s.store.touch(user, sessions[0]).await.expect("after close").is_some());
}
