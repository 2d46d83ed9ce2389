//! Coalesced writes: the appends (or session touches) waiting at the same
//! moment go out as one statement and one commit ("natural batching", no
//! timer). The queue, its flusher and their bounds are the same for both;
//! a [`Work`] says how one call and how several calls are written.
//!
//! Callers put their (already validated) rows on a bounded queue and wait.
//! One flusher task takes the first waiting request at once, adds whatever
//! else is already queued (up to the statement bounds) and hands the batch to
//! a writer task; up to [`CoalesceConfig::max_in_flight`] batches are in
//! flight together, and while they all are, new requests wait in the queue
//! and form the next batch. Nothing ever waits for company: a lone append is
//! sent as soon as it is queued, with the same single-row `INSERT` as
//! without coalescing.
//!
//! Each request has a state, `QUEUED` → `TAKEN` (by the flusher, just
//! before its batch is built) or `QUEUED` → `CANCELLED` (by the caller,
//! when it gives up: its future dropped or its deadline passed). Both are
//! compare-and-swaps, so a caller that gave up while queued is never
//! written, and a caller that gives up once taken knows its rows may be
//! committed (the usual ambiguity of a write cut short).
//!
//! When a combined statement fails (any error: a taken id, an unknown user,
//! a lost connection), nothing of it is committed (one statement is
//! atomic), or, for a lost connection, perhaps all of it; each request is
//! then written again on its own through the store's plain path, which is
//! retry-safe by id. So every caller gets exactly the outcome and error
//! kind it would have had alone, and a neighbour's bad row never fails it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use selfrag_core::{Error, NewMemoryLog, Result, UserId};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::conn::Db;
use crate::error::BACKEND;

/// Bounds of coalesced appends (see
/// [`PostgresMemoryStore::coalescing`](crate::PostgresMemoryStore::coalescing)).
/// Every bound is at least 1; a setter given 0 uses 1 (except
/// [`copy_above`](Self::copy_above), which is a choice, not a bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalesceConfig {
    /// Most rows in one coalesced statement (default 512). A call with more
    /// rows is written on its own, as without coalescing.
    pub max_rows: usize,
    /// Most bytes of content and metadata (estimated: content length plus
    /// the lengths of the metadata's keys and strings, 8 bytes per other
    /// value) in one coalesced statement (default 4 MiB). A call above it is
    /// written on its own.
    pub max_bytes: usize,
    /// Most calls waiting in the queue (default 4,096). A call that finds
    /// it full waits for room (back-pressure) within its operation timeout.
    pub queue: usize,
    /// Most coalesced statements in flight at once (default 2), each on its
    /// own pooled connection. While all are in flight, new calls queue up
    /// and form the next statement. Fewer statements in flight make larger
    /// ones (fewer commits); two keep one statement filling while the
    /// other commits. Measured on a 2-core machine (`docs/benchmarks.md`):
    /// 2 beat 4 and 8 at 8, 64 and 256 callers. A server with more cores
    /// and faster flushes may do better with more.
    pub max_in_flight: usize,
    /// A coalesced statement of more rows than this is one binary `COPY`;
    /// up to it, one `INSERT ... SELECT * FROM unnest(...)` (one prepared
    /// statement for any row count, one round trip; default 32). Use
    /// `usize::MAX` for never `COPY`, 0 for always. Either is one statement
    /// and one commit.
    pub copy_above: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self { max_rows: 512, max_bytes: 4 * 1024 * 1024, queue: 4096, max_in_flight: 2, copy_above: 32 }
    }
}

impl CoalesceConfig {
    /// The defaults (see the fields).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`max_rows`](Self::max_rows).
    pub fn max_rows(mut self, n: usize) -> Self {
        self.max_rows = n.max(1);
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// Sets [`queue`](Self::queue).
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets [`copy_above`](Self::copy_above) (0 is allowed here: always
    /// `COPY`).
    pub fn copy_above(mut self, rows: usize) -> Self {
        self.copy_above = rows;
        self
    }
}

/// Counters of a store's coalesced appends since it was built (see
/// [`PostgresMemoryStore::coalescing_stats`](crate::PostgresMemoryStore::coalescing_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalesceStats {
    /// Calls answered by the coalescer: through the queue, or on the fast
    /// path (see [`direct`](Self::direct)).
    pub calls: u64,
    /// Coalesced statements sent (a batch of one call counts as one).
    pub statements: u64,
    /// Rows in those statements.
    pub rows: u64,
    /// Statements that failed and whose calls were written again one by one.
    pub split: u64,
    /// Calls that gave up while still queued, and were not written.
    pub cancelled: u64,
    /// Calls that found nothing queued and a statement slot free, and so
    /// wrote their rows from their own task, as a statement of their own,
    /// without going through the queue (counted in `calls` and
    /// `statements` too).
    pub direct: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    statements: AtomicU64,
    rows: AtomicU64,
    split: AtomicU64,
    cancelled: AtomicU64,
    direct: AtomicU64,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const CANCELLED: u8 = 2;

/// What is coalesced: how one call, and how several calls in one
/// statement, are written.
pub(crate) trait Work: Send + Sync + 'static {
    /// One call's input (validated).
    type Item: Send + 'static;
    /// One call's answer.
    type Output: Send + 'static;

    /// Rows and estimated bytes of one call (see [`CoalesceConfig`]).
    fn size(item: &Self::Item) -> (usize, usize);

    /// Writes one call on its own: the store's plain path.
    fn one(db: Db, user: UserId, item: Self::Item) -> Boxed<Result<Self::Output>>;

    /// Writes several calls in one statement and one commit, answering
    /// each in order; on any error it gives the calls back, to be written
    /// one by one (so the error itself is not mapped with care).
    fn many(db: Db, calls: Vec<(UserId, Self::Item)>, config: CoalesceConfig) -> Boxed<Many<Self>>;
}

/// What [`Work::many`] returns: every call's answer, or the calls back.
pub(crate) type Many<W> = std::result::Result<Vec<<W as Work>::Output>, Vec<(UserId, <W as Work>::Item)>>;

/// One waiting call.
struct Request<W: Work> {
    user: UserId,
    item: W::Item,
    rows: usize,
    bytes: usize,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<W::Output>>,
}

/// What [`Coalescer::submit`] did.
pub(crate) enum Submitted<W: Work> {
    /// Written (or failed) through the queue.
    Done(Result<W::Output>),
    /// Not queued: the caller writes this itself, holding the statement
    /// slot if one is given (nothing was waiting and a slot was free: the
    /// call is its own statement, with no hop to another task), or none
    /// (too big, or the coalescer is closed).
    Direct(W::Item, Option<OwnedSemaphorePermit>),
}

/// A boxed, sendable future.
pub(crate) type Boxed<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The queue and its flusher, shared by a store's clones. Started on first
/// use, inside the caller's runtime.
pub(crate) struct Coalescer<W: Work> {
    config: CoalesceConfig,
    running: OnceLock<Running<W>>,
    counters: Arc<Counters>,
}

impl<W: Work> std::fmt::Debug for Coalescer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("config", &self.config).field("stats", &self.stats()).finish()
    }
}

struct Running<W: Work> {
    tx: mpsc::Sender<Request<W>>,
    /// The statements in flight, shared with the flusher.
    slots: Arc<Semaphore>,
    close: Arc<Notify>,
    done: watch::Receiver<bool>,
}

/// Marks a queued request cancelled when the waiting call goes away.
struct CancelOnDrop<'a>(&'a AtomicU8, &'a Counters);

impl CancelOnDrop<'_> {
    /// Gives up: true when the request was still queued (so it will not be
    /// written).
    fn cancel(&self) -> bool {
        let cancelled = self.0.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if cancelled {
            self.1.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        cancelled
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl<W: Work> Coalescer<W> {
    pub(crate) fn new(config: CoalesceConfig) -> Self {
        Self { config, running: OnceLock::new(), counters: Arc::default() }
    }

    pub(crate) fn stats(&self) -> CoalesceStats {
        let c = &self.counters;
        CoalesceStats {
            calls: c.calls.load(Ordering::Relaxed),
            statements: c.statements.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            split: c.split.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            direct: c.direct.load(Ordering::Relaxed),
        }
    }

    fn running(&self, db: &Db) -> &Running<W> {
        self.running.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.config.queue);
            let close = Arc::new(Notify::new());
            let (done_tx, done) = watch::channel(false);
            let slots = Arc::new(Semaphore::new(self.config.max_in_flight));
            let flusher = Flusher::<W> {
                db: db.clone(),
                config: self.config,
                counters: self.counters.clone(),
                work: std::marker::PhantomData,
            };
            tokio::spawn(flusher.run(rx, slots.clone(), close.clone(), done_tx));
            Running { tx, slots, close, done }
        })
    }

    /// Queues `item` (validated) for `user` and waits for its commit,
    /// until `deadline`.
    pub(crate) async fn submit(&self, db: &Db, user: UserId, item: W::Item, deadline: Instant) -> Submitted<W> {
        let (rows, bytes) = W::size(&item);
        if rows > self.config.max_rows || bytes > self.config.max_bytes {
            return Submitted::Direct(item, None);
        }
        let running = self.running(db);
        // Nothing waiting and a statement slot free: this call would be a
        // statement of its own anyway, so it goes out from here, sparing
        // the two task hand-offs (to the flusher and back) that cost a lone
        // caller latency. Holding the slot keeps the in-flight bound, and
        // calls arriving meanwhile queue up as usual. The slot is taken
        // before the queue is looked at: once `close` has closed the queue,
        // a call never writes on a slot the flusher's final count waits
        // for, so `close` returns only after every fast-path call that
        // started before it has answered.
        if running.tx.capacity() == self.config.queue {
            if let Ok(slot) = running.slots.clone().try_acquire_owned() {
                if !running.tx.is_closed() && running.tx.capacity() == self.config.queue {
                    self.counters.calls.fetch_add(1, Ordering::Relaxed);
                    self.counters.direct.fetch_add(1, Ordering::Relaxed);
                    self.counters.statements.fetch_add(1, Ordering::Relaxed);
                    self.counters.rows.fetch_add(rows as u64, Ordering::Relaxed);
                    return Submitted::Direct(item, Some(slot));
                }
            }
        }
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let request = Request { user, item, rows, bytes, state: state.clone(), reply };
        let guard = CancelOnDrop(&state, &self.counters);
        match tokio::time::timeout_at(deadline, running.tx.send(request)).await {
            Ok(Ok(())) => {}
            // Closed: the caller writes on its own.
            Ok(Err(mpsc::error::SendError(request))) => {
                std::mem::forget(guard);
                return Submitted::Direct(request.item, None);
            }
            Err(_) => {
                guard.cancel();
                return Submitted::Done(Err(Error::timeout(
                    BACKEND,
                    "append memory logs: the coalescing queue stayed full until the operation timeout; nothing was written",
                )));
            }
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            // The flusher went away without answering (its runtime shut
            // down): written or not, depending on whether it was taken.
            Ok(Err(_)) => Err(Error::Unavailable {
                backend: BACKEND,
                message: "append memory logs: the coalescing writer stopped before answering".into(),
                maybe_applied: !guard.cancel(),
                source: None,
            }),
            Err(_) => Err(Error::timeout(
                BACKEND,
                if guard.cancel() {
                    "append memory logs: still queued at the operation timeout; nothing was written"
                } else {
                    "append memory logs: no result within the operation timeout (the rows were in flight and may be committed)"
                },
            )),
        };
        Submitted::Done(result)
    }

    /// Stops queueing (later calls write on their own), writes everything
    /// already queued and waits until every batch in flight has answered.
    pub(crate) async fn close(&self) {
        let Some(running) = self.running.get() else { return };
        running.close.notify_one();
        let mut done = running.done.clone();
        // An error means the flusher is gone, which is done too.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Estimated bytes of a row's content and metadata (see
/// [`CoalesceConfig::max_bytes`]).
pub(crate) fn row_bytes(log: &NewMemoryLog) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => 2 + a.iter().map(value).sum::<usize>(),
            Value::Object(m) => 2 + m.iter().map(|(k, v)| k.len() + 3 + value(v)).sum::<usize>(),
            _ => 8,
        }
    }
    log.content().len() + 2 + log.metadata().iter().map(|(k, v)| k.len() + 3 + value(v)).sum::<usize>()
}

struct Flusher<W: Work> {
    db: Db,
    config: CoalesceConfig,
    counters: Arc<Counters>,
    work: std::marker::PhantomData<fn() -> W>,
}

impl<W: Work> Flusher<W> {
    async fn run(
        self,
        mut rx: mpsc::Receiver<Request<W>>,
        slots: Arc<Semaphore>,
        close: Arc<Notify>,
        done: watch::Sender<bool>,
    ) {
        let this = Arc::new(self);
        // A request that did not fit the previous batch opens the next one.
        let mut carry: Option<Request<W>> = None;
        let mut closing = false;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let mut batch: Vec<Request<W>> = Vec::new();
            let (mut rows, mut bytes) = (0usize, 0usize);
            loop {
                let next = match carry.take() {
                    Some(r) => r,
                    None if batch.is_empty() => {
                        let received = if closing {
                            rx.recv().await
                        } else {
                            tokio::select! {
                                r = rx.recv() => r,
                                () = close.notified() => {
                                    // Refuse new requests, keep the queued ones.
                                    closing = true;
                                    rx.close();
                                    continue;
                                }
                            }
                        };
                        match received {
                            Some(r) => r,
                            None => break,
                        }
                    }
                    None => match rx.try_recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    },
                };
                if !batch.is_empty()
                    && (rows + next.rows > this.config.max_rows || bytes + next.bytes > this.config.max_bytes)
                {
                    carry = Some(next);
                    break;
                }
                if next.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    // Its caller gave up while it waited: never written.
                    continue;
                }
                rows += next.rows;
                bytes += next.bytes;
                batch.push(next);
            }
            if batch.is_empty() {
                // The queue is closed and empty.
                drop(slot);
                break;
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.write(batch).await;
                drop(slot);
            });
        }
        // Every batch in flight (and every caller writing on its own slot)
        // has answered once all slots are free again.
        let all = u32::try_from(this.config.max_in_flight).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        let _ = done.send(true);
    }

    async fn write(&self, mut batch: Vec<Request<W>>) {
        let rows: usize = batch.iter().map(|r| r.rows).sum();
        self.counters.statements.fetch_add(1, Ordering::Relaxed);
        self.counters.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if batch.len() == 1 {
            let r = batch.pop().expect("one request");
            let _ = r.reply.send(W::one(self.db.clone(), r.user, r.item).await);
            return;
        }
        let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| ((r.user, r.item), r.reply)).unzip();
        let calls = match W::many(self.db.clone(), calls, self.config).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
                return;
            }
            Err(calls) => calls,
        };
        // Nothing of the statement is committed (or, after a lost
        // connection, maybe all of it): each call is written again alone,
        // retry-safe, and gets its own outcome.
        self.counters.split.fetch_add(1, Ordering::Relaxed);
        let mut alone = tokio::task::JoinSet::new();
        for ((user, item), reply) in calls.into_iter().zip(replies) {
            if reply.is_closed() {
                // Its caller gave up with the call in flight: it was told
                // it may be committed; nobody waits for the answer.
                continue;
            }
            let db = self.db.clone();
            alone.spawn(async move {
                let _ = reply.send(W::one(db, user, item).await);
            });
        }
        while alone.join_next().await.is_some() {}
    }
}
