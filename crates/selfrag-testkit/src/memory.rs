//! The [`MemoryStore`](selfrag_core::MemoryStore) + [`UserStore`](selfrag_core::UserStore)
//! suite.
//!
//! Every check makes its own users, so a store may be shared between checks.
//! Logs are stamped with explicit timestamps; no check depends on the clock.

use std::collections::HashSet;
use std::time::Duration;

use selfrag_core::memory::MAX_BATCH;
use selfrag_core::{ErrorKind, MemoryLog, MemoryLogId, MemoryQuery, MemoryType, NewMemoryLog, UserId};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::util::{expect_invalid, expect_kind, Ctx, Rng};
use crate::{CheckResult, MemoryFixture};

/// A fixed, recent past instant, whole seconds: logs stamped from it sort
/// below anything appended "now".
fn base_time() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc() - Duration::from_secs(2 * 24 * 3600);
    now.replace_nanosecond(0).unwrap_or(now)
}

fn kind(s: &str) -> MemoryType {
    MemoryType::new(s).expect("valid type")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn log(kind: &str, content: &str, at: OffsetDateTime) -> NewMemoryLog {
    NewMemoryLog::new(kind, content).expect("valid log").at(at)
}

/// Newest first, as every query returns: `(timestamp, id)` descending.
fn newest_first(logs: &mut [MemoryLog]) {
    logs.sort_by_key(|l| std::cmp::Reverse((l.timestamp, l.id)));
}

fn ids(logs: &[MemoryLog]) -> Vec<MemoryLogId> {
    logs.iter().map(|l| l.id).collect()
}

/// Runs `query` page by page to the end (at most `max_pages`).
async fn all_pages(f: &MemoryFixture, user: UserId, query: &MemoryQuery) -> Result<Vec<MemoryLog>, String> {
    let mut out = Vec::new();
    let mut q = query.clone();
    for _ in 0..1000 {
        let page = f.store.query(user, &q).await.ctx("query page")?;
        ensure!(
            page.logs.len() <= q.effective_limit() as usize,
            "a page holds {} logs, more than the limit {}",
            page.logs.len(),
            q.effective_limit()
        );
        out.extend(page.logs);
        match page.next {
            Some(c) => q.after = Some(c),
            None => return Ok(out),
        }
    }
    Err("pagination did not end after 1000 pages".into())
}

async fn count_all(f: &MemoryFixture, user: UserId) -> Result<usize, String> {
    Ok(all_pages(f, user, &MemoryQuery::new().limit(MemoryQuery::MAX_LIMIT)).await?.len())
}

/// An appended log comes back exactly as given (id, user, type, content,
/// metadata, microsecond timestamp), from `append` and from `get`.
pub async fn append_then_get_round_trips(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    // Nanoseconds in the input: the stored timestamp is the microsecond one.
    let at = base_time() + Duration::from_nanos(123_456_789);
    let meta = json!({"topic": "tea", "n": 3, "nested": {"ok": true, "list": [1, "two", null]}});
    let new = log("chat.user", "I like green tea", at).with_metadata(meta.clone()).ctx("metadata")?;
    let expected = new.clone().into_log(user);
    let stored = f.store.append(user, new).await.ctx("append")?;
    ensure_eq!(stored, expected, "append returns the stored record");
    ensure_eq!(stored.timestamp.nanosecond() % 1000, 0, "stored timestamp is whole microseconds");
    let got = f.store.get(user, stored.id).await.ctx("get")?;
    ensure_eq!(got, Some(expected), "get returns the record as appended");
    Ok(())
}

/// Text and JSON survive the round trip byte for byte: Unicode, escapes,
/// a large content, deep metadata.
pub async fn content_round_trips_exactly(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let contents = [
        "émoji 🦀 and ünïcödé, \"quotes\", back\\slash, tab\tnewline\n".to_owned(),
        "x".repeat(200_000),
        "'; DROP TABLE memory_logs; --".to_owned(),
    ];
    let mut deep = json!({"leaf": "bottom"});
    for i in 0..20 {
        deep = json!({ format!("level{i}"): deep, "n": i });
    }
    for (i, content) in contents.iter().enumerate() {
        let new = log("fact", content, base_time() + Duration::from_secs(i as u64))
            .with_metadata(json!({"deep": deep.clone(), "big": 12345678901_i64, "f": 1.5, "s": "ü"}))
            .ctx("metadata")?;
        let expected = new.clone().into_log(user);
        f.store.append(user, new).await.ctx("append")?;
        let got = f.store.get(user, expected.id).await.ctx("get")?;
        ensure!(got.as_ref() == Some(&expected), "log {i} did not round-trip: got {:?}", got.map(|g| g.content.len()));
    }
    Ok(())
}

/// `get` and `delete` of ids that were never stored: `None` and `false`.
pub async fn absent_ids_read_as_none(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let id = MemoryLogId::new();
    ensure_eq!(f.store.get(user, id).await.ctx("get")?, None, "get of an absent id");
    ensure_eq!(f.store.delete(user, id).await.ctx("delete")?, false, "delete of an absent id");
    let page = f.store.query(user, &MemoryQuery::new()).await.ctx("query")?;
    ensure!(page.logs.is_empty() && page.next.is_none(), "a new user's query is empty, got {page:?}");
    Ok(())
}

/// Another user's log id returns nothing, deletes nothing, and never shows
/// in the other user's queries.
pub async fn user_isolation(f: &MemoryFixture) -> CheckResult {
    let alice = f.users.create_user().await.ctx("create_user")?;
    let bob = f.users.create_user().await.ctx("create_user")?;
    let a = f.store.append(alice, log("fact", "alice's secret", base_time())).await.ctx("append")?;
    let b = f.store.append(bob, log("fact", "bob's note", base_time())).await.ctx("append")?;
    ensure_eq!(f.store.get(bob, a.id).await.ctx("get")?, None, "bob reads alice's log by id");
    ensure_eq!(f.store.delete(bob, a.id).await.ctx("delete")?, false, "bob deletes alice's log by id");
    ensure_eq!(f.store.get(alice, a.id).await.ctx("get")?, Some(a.clone()), "alice's log after bob's delete");
    let bobs = all_pages(f, bob, &MemoryQuery::new()).await?;
    ensure_eq!(ids(&bobs), vec![b.id], "bob's query shows only bob's log");
    let alices = all_pages(f, alice, &MemoryQuery::new()).await?;
    ensure_eq!(ids(&alices), vec![a.id], "alice's query shows only alice's log");
    // A stranger (a user that does not exist) sees nothing either.
    let stranger = UserId::new();
    ensure_eq!(f.store.get(stranger, a.id).await.ctx("get")?, None, "an unknown user reads alice's log");
    ensure_eq!(f.store.delete(stranger, a.id).await.ctx("delete")?, false, "an unknown user deletes alice's log");
    ensure_eq!(f.store.get(alice, a.id).await.ctx("get")?, Some(a), "alice's log at the end");
    Ok(())
}

/// Writes for a user that does not exist fail with `NotFound` and store
/// nothing; reads for it are empty.
pub async fn unknown_user_writes_fail(f: &MemoryFixture) -> CheckResult {
    let ghost = UserId::new();
    let one = log("fact", "x", base_time());
    let id = one.id();
    expect_kind(f.store.append(ghost, one).await, ErrorKind::NotFound, "append for an unknown user")?;
    let batch = vec![log("fact", "a", base_time()), log("fact", "b", base_time())];
    let batch_ids: Vec<_> = batch.iter().map(NewMemoryLog::id).collect();
    expect_kind(f.store.append_batch(ghost, batch).await, ErrorKind::NotFound, "append_batch for an unknown user")?;
    let page = f.store.query(ghost, &MemoryQuery::new()).await.ctx("query for an unknown user")?;
    ensure!(page.logs.is_empty(), "query for an unknown user returned {:?}", page.logs);
    // Creating the user afterwards must not reveal anything written before.
    f.users.ensure_user(ghost).await.ctx("ensure_user")?;
    for id in batch_ids.into_iter().chain([id]) {
        ensure_eq!(f.store.get(ghost, id).await.ctx("get")?, None, "a log from the failed writes");
    }
    ensure_eq!(count_all(f, ghost).await?, 0, "logs of the user after failed writes");
    Ok(())
}

/// Appending an id that is taken (by the same or another user) is a
/// `Conflict` and changes nothing.
pub async fn append_taken_id_conflicts(f: &MemoryFixture) -> CheckResult {
    let alice = f.users.create_user().await.ctx("create_user")?;
    let bob = f.users.create_user().await.ctx("create_user")?;
    let first = f.store.append(alice, log("fact", "original", base_time())).await.ctx("append")?;
    let again = log("fact", "replacement", base_time() + Duration::from_secs(1)).with_id(first.id);
    expect_kind(f.store.append(alice, again.clone()).await, ErrorKind::Conflict, "append with a taken id")?;
    expect_kind(f.store.append(bob, again).await, ErrorKind::Conflict, "append with another user's id")?;
    ensure_eq!(f.store.get(alice, first.id).await.ctx("get")?, Some(first.clone()), "the original log");
    ensure_eq!(f.store.get(bob, first.id).await.ctx("get")?, None, "bob reads the conflicting id");
    ensure_eq!(count_all(f, alice).await?, 1, "alice's log count");
    ensure_eq!(count_all(f, bob).await?, 0, "bob's log count");
    Ok(())
}

/// A batch whose last log has a taken id is a `Conflict`, and none of the
/// batch is stored.
pub async fn batch_is_all_or_nothing(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let taken = f.store.append(user, log("fact", "taken", base_time())).await.ctx("append")?;
    let mut batch: Vec<NewMemoryLog> =
        (0..5).map(|i| log("fact", &format!("batch {i}"), base_time() + Duration::from_secs(i + 1))).collect();
    batch.push(log("fact", "collides", base_time() + Duration::from_secs(10)).with_id(taken.id));
    let fresh: Vec<_> = batch[..5].iter().map(NewMemoryLog::id).collect();
    expect_kind(f.store.append_batch(user, batch).await, ErrorKind::Conflict, "batch with a taken id")?;
    for id in fresh {
        ensure_eq!(f.store.get(user, id).await.ctx("get")?, None, "a log of the failed batch");
    }
    ensure_eq!(count_all(f, user).await?, 1, "logs after the failed batch");
    ensure_eq!(f.store.get(user, taken.id).await.ctx("get")?, Some(taken), "the log that held the id");
    Ok(())
}

/// A batch holding the same id twice is `InvalidInput` (`logs`), nothing
/// stored; so is a batch above the size limit.
pub async fn bad_batches_write_nothing(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let a = log("fact", "a", base_time());
    let b = log("fact", "b", base_time() + Duration::from_secs(1));
    let dup = log("fact", "a again", base_time() + Duration::from_secs(2)).with_id(a.id());
    expect_invalid(f.store.append_batch(user, vec![a, b, dup]).await, "batch with a duplicate id", "logs")?;
    ensure_eq!(count_all(f, user).await?, 0, "logs after the duplicate-id batch");
    let too_many: Vec<NewMemoryLog> =
        (0..=MAX_BATCH).map(|i| log("fact", "n", base_time() + Duration::from_micros(i as u64))).collect();
    expect_invalid(f.store.append_batch(user, too_many).await, "batch above MAX_BATCH", "logs")?;
    ensure_eq!(count_all(f, user).await?, 0, "logs after the oversized batch");
    Ok(())
}

/// An empty batch is a no-op; a batch returns its records in input order,
/// each retrievable.
pub async fn batch_returns_stored_records(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let none = f.store.append_batch(user, vec![]).await.ctx("empty batch")?;
    ensure!(none.is_empty(), "an empty batch returned {none:?}");
    // Out of time order on purpose: the batch keeps input order.
    let batch: Vec<NewMemoryLog> = [3u64, 1, 2, 0]
        .iter()
        .map(|&i| log("fact", &format!("n{i}"), base_time() + Duration::from_secs(i)).with_metadata(json!({"i": i})))
        .collect::<Result<_, _>>()
        .ctx("metadata")?;
    let expected: Vec<MemoryLog> = batch.iter().cloned().map(|l| l.into_log(user)).collect();
    let stored = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    ensure_eq!(stored, expected, "append_batch returns the records in input order");
    for e in &expected {
        ensure_eq!(f.store.get(user, e.id).await.ctx("get")?, Some(e.clone()), "a log of the batch");
    }
    Ok(())
}

/// Queries return newest first by `(timestamp, id)`, including ties on the
/// timestamp, whatever the insertion order.
pub async fn query_is_newest_first(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let mut rng = Rng::new(7);
    let mut offsets: Vec<u64> = (0..20).collect();
    rng.shuffle(&mut offsets);
    let mut expected = Vec::new();
    for (n, off) in offsets.iter().enumerate() {
        // Every third log shares its timestamp with another: ties break by id.
        let at = base_time() + Duration::from_millis(off / 3 * 1000);
        let stored = f.store.append(user, log("fact", &format!("log {n}"), at)).await.ctx("append")?;
        expected.push(stored);
    }
    newest_first(&mut expected);
    let got = f.store.query(user, &MemoryQuery::new().limit(100)).await.ctx("query")?;
    ensure_eq!(ids(&got.logs), ids(&expected), "query order (timestamp desc, id desc)");
    ensure!(got.next.is_none(), "a page holding everything must have no next cursor, got {:?}", got.next);
    Ok(())
}

/// Keyset pages cover the result exactly once; a last page that is exactly
/// full has no next cursor; the default page size is
/// [`MemoryQuery::DEFAULT_LIMIT`].
pub async fn pagination_has_no_duplicates_or_gaps(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let batch: Vec<NewMemoryLog> =
        (0..60u64).map(|i| log("fact", &format!("{i}"), base_time() + Duration::from_millis(i / 2 * 10))).collect();
    let mut expected = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    newest_first(&mut expected);
    for limit in [1u32, 7, 20, 60, 61] {
        let got = all_pages(f, user, &MemoryQuery::new().limit(limit)).await?;
        ensure_eq!(ids(&got), ids(&expected), "pages of {limit} concatenated");
    }
    // 60 logs in pages of 20: the third page is full and the last one.
    let mut q = MemoryQuery::new().limit(20);
    for page_no in 1..=3 {
        let page = f.store.query(user, &q).await.ctx("query")?;
        ensure_eq!(page.logs.len(), 20, "size of page {page_no}");
        if page_no < 3 {
            q.after = Some(page.next.ok_or(format!("page {page_no} of 3 has no next cursor"))?);
        } else {
            ensure!(page.next.is_none(), "the exactly full last page has a next cursor {:?}", page.next);
        }
    }
    let page = f.store.query(user, &MemoryQuery::new()).await.ctx("query")?;
    ensure_eq!(page.logs.len(), MemoryQuery::DEFAULT_LIMIT as usize, "default page size");
    // A cursor survives its string form.
    let cursor = page.next.ok_or("no next cursor after a default page of 50 out of 60")?;
    let parsed: selfrag_core::Cursor = cursor.to_string().parse().ctx("parse cursor")?;
    let rest = f.store.query(user, &MemoryQuery::new().after(parsed)).await.ctx("query after parsed cursor")?;
    ensure_eq!(ids(&rest.logs), ids(&expected[50..]), "the page after a parsed cursor");
    Ok(())
}

/// Paging while other tasks append (newer and older logs): no page repeats
/// or skips a log that existed when paging began, and the walk is strictly
/// newest first.
pub async fn pagination_under_concurrent_appends(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let base = base_time();
    let batch: Vec<NewMemoryLog> =
        (0..80u64).map(|i| log("fact", &format!("old {i}"), base - Duration::from_secs(i))).collect();
    let originals = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    let store = f.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..40u64 {
            // Newer than every original, and (every fourth) older than all.
            let at = if i % 4 == 0 { base - Duration::from_secs(10_000 + i) } else { OffsetDateTime::now_utc() };
            store.append(user, log("chat.user", &format!("new {i}"), at)).await?;
            tokio::task::yield_now().await;
        }
        Ok::<_, selfrag_core::Error>(())
    });
    let mut walked = Vec::new();
    let mut q = MemoryQuery::new().limit(6);
    for page_no in 0u64.. {
        ensure!(page_no < 1000, "pagination did not end after 1000 pages");
        let page = f.store.query(user, &q).await.ctx("query page")?;
        walked.extend(page.logs);
        // Besides the concurrent writer, append deterministically between
        // pages, one log newer and one older than all others, so that
        // offset-based paging fails every run, not only when the race goes
        // one way.
        let newer = log("chat.user", &format!("between {page_no}"), OffsetDateTime::now_utc());
        let older = log("chat.user", &format!("older {page_no}"), base - Duration::from_secs(20_000 + page_no));
        f.store.append_batch(user, vec![newer, older]).await.ctx("append between pages")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    writer.await.map_err(|e| format!("writer task: {e}"))?.ctx("concurrent append")?;
    for pair in walked.windows(2) {
        ensure!(
            (pair[0].timestamp, pair[0].id) > (pair[1].timestamp, pair[1].id),
            "pages are not strictly newest first (a duplicate or reordering): {:?} then {:?}",
            (pair[0].timestamp, pair[0].id),
            (pair[1].timestamp, pair[1].id)
        );
    }
    let seen: HashSet<MemoryLogId> = walked.iter().map(|l| l.id).collect();
    let missing: Vec<_> = originals.iter().filter(|l| !seen.contains(&l.id)).map(|l| l.content.clone()).collect();
    ensure!(missing.is_empty(), "pagination skipped logs that existed before it began: {missing:?}");
    Ok(())
}

/// `since` is inclusive, `until` exclusive, to the microsecond; each alone
/// and together, also across pages.
pub async fn time_range_filters(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let t = |s: u64| base_time() + Duration::from_secs(s);
    let mut batch: Vec<NewMemoryLog> = (0..10).map(|i| log("fact", &format!("s{i}"), t(i))).collect();
    // Just before the `since` bound and just before the `until` bound.
    batch.push(log("fact", "3s-1us", t(3) - Duration::from_micros(1)));
    batch.push(log("fact", "7s-1us", t(7) - Duration::from_micros(1)));
    let stored = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    let contents = |logs: &[MemoryLog]| logs.iter().map(|l| l.content.clone()).collect::<Vec<_>>();
    let cases = [
        (MemoryQuery::new().since(t(3)).until(t(7)), vec!["7s-1us", "s6", "s5", "s4", "s3"]),
        (MemoryQuery::new().since(t(8)), vec!["s9", "s8"]),
        (MemoryQuery::new().until(t(2)), vec!["s1", "s0"]),
        (MemoryQuery::new().since(t(3) - Duration::from_micros(1)).until(t(3)), vec!["3s-1us"]),
        (MemoryQuery::new().since(t(20)), vec![]),
    ];
    for (q, want) in cases {
        let got = all_pages(f, user, &q.clone().limit(2)).await?;
        ensure_eq!(contents(&got), want, "query since {:?} until {:?}", q.since, q.until);
    }
    ensure_eq!(stored.len(), 12, "stored logs");
    Ok(())
}

/// Type filters: one type, several types, a type nobody used.
pub async fn type_filters(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let kinds = ["chat.user", "chat.assistant", "fact", "summary"];
    let batch: Vec<NewMemoryLog> = (0..24u64)
        .map(|i| log(kinds[(i % 4) as usize], &format!("{i}"), base_time() + Duration::from_secs(i)))
        .collect();
    let mut all = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    newest_first(&mut all);
    for types in [vec!["fact"], vec!["chat.user", "summary"], vec!["chat.user", "chat.assistant", "fact", "summary"]] {
        let mut q = MemoryQuery::new().limit(5);
        for t in &types {
            q = q.of_type(kind(t));
        }
        let got = all_pages(f, user, &q).await?;
        let want: Vec<_> = all.iter().filter(|l| types.contains(&l.kind.as_str())).map(|l| l.id).collect();
        ensure_eq!(ids(&got), want, "logs of types {types:?}");
    }
    let got = all_pages(f, user, &MemoryQuery::new().of_type(kind("never.used"))).await?;
    ensure!(got.is_empty(), "a type nobody used matched {} logs", got.len());
    Ok(())
}

fn metadata_corpus() -> Vec<Value> {
    vec![
        json!({}),
        json!({"topic": "tea"}),
        json!({"topic": "tea", "mood": "calm", "n": 1}),
        json!({"topic": "coffee", "n": 2, "tags": ["a", "b"]}),
        json!({"tags": ["b", "c"], "nested": {"k": true, "deep": {"x": 1}}}),
        json!({"nested": {"k": false}, "tags": []}),
        json!({"topic": null, "n": 1.5}),
        json!({"topic": "Tea", "list": [{"id": 1}, {"id": 2}]}),
    ]
}

fn metadata_filters() -> Vec<Value> {
    vec![
        json!({}),
        json!({"topic": "tea"}),
        json!({"topic": "tea", "n": 1}),
        json!({"n": 2}),
        json!({"tags": ["b"]}),
        json!({"tags": ["a", "b"]}),
        json!({"tags": ["z"]}),
        json!({"tags": []}),
        json!({"nested": {"k": true}}),
        json!({"nested": {"deep": {"x": 1}}}),
        json!({"topic": null}),
        json!({"missing": "x"}),
        json!({"list": [{"id": 2}]}),
        json!({"topic": "TEA"}),
    ]
}

/// Metadata containment (Postgres `@>`): the backend's results equal the
/// reference [`MemoryQuery::matches`] for a set of filters.
pub async fn metadata_containment(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let batch: Vec<NewMemoryLog> = metadata_corpus()
        .into_iter()
        .enumerate()
        .map(|(i, m)| log("fact", &format!("m{i}"), base_time() + Duration::from_secs(i as u64)).with_metadata(m))
        .collect::<Result<_, _>>()
        .ctx("metadata")?;
    let mut all = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    newest_first(&mut all);
    for filter in metadata_filters() {
        let q = MemoryQuery::new().metadata_contains(obj(filter.clone()));
        let want: Vec<_> = all.iter().filter(|l| q.matches(l)).map(|l| l.id).collect();
        let got = all_pages(f, user, &q).await?;
        ensure_eq!(ids(&got), want, "logs whose metadata contains {filter}");
    }
    Ok(())
}

/// Random combinations of time range, types, metadata and page size over a
/// generated corpus: the backend returns exactly what the reference
/// [`MemoryQuery::matches`] selects, in order.
pub async fn filters_match_reference(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let mut rng = Rng::new(42);
    let kinds = ["chat.user", "chat.assistant", "fact"];
    let metas = metadata_corpus();
    let batch: Vec<NewMemoryLog> = (0..90)
        .map(|i| {
            let at = base_time() + Duration::from_secs(rng.below(60));
            log(rng.pick::<&str>(&kinds), &format!("r{i}"), at).with_metadata(rng.pick(&metas).clone())
        })
        .collect::<Result<_, _>>()
        .ctx("metadata")?;
    let mut all = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    newest_first(&mut all);
    let filters = metadata_filters();
    for round in 0..40 {
        let mut q = MemoryQuery::new().limit(1 + u32::try_from(rng.below(12)).unwrap_or(0));
        if rng.below(2) == 0 {
            q = q.since(base_time() + Duration::from_secs(rng.below(30)));
        }
        if rng.below(2) == 0 {
            q = q.until(base_time() + Duration::from_secs(30 + rng.below(31)));
        }
        if rng.below(2) == 0 {
            q = q.of_type(kind(rng.pick::<&str>(&kinds)));
        }
        if rng.below(3) == 0 {
            q = q.of_type(kind(rng.pick::<&str>(&kinds)));
        }
        if rng.below(2) == 0 {
            q = q.metadata_contains(obj(rng.pick(&filters).clone()));
        }
        let want: Vec<_> = all.iter().filter(|l| q.matches(l)).map(|l| l.id).collect();
        let got = all_pages(f, user, &q).await?;
        ensure_eq!(ids(&got), want, "round {round}: {q:?}");
    }
    Ok(())
}

/// Bad queries are `InvalidInput` naming the field: limit 0 or above the
/// maximum, `until` not after `since`, too many types, bad metadata filter.
pub async fn bad_queries_are_rejected(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    f.store.append(user, log("fact", "x", base_time())).await.ctx("append")?;
    let t = base_time();
    expect_invalid(f.store.query(user, &MemoryQuery::new().limit(0)).await, "limit 0", "limit")?;
    expect_invalid(
        f.store.query(user, &MemoryQuery::new().limit(MemoryQuery::MAX_LIMIT + 1)).await,
        "limit above the maximum",
        "limit",
    )?;
    expect_invalid(f.store.query(user, &MemoryQuery::new().since(t).until(t)).await, "until == since", "until")?;
    expect_invalid(
        f.store.query(user, &MemoryQuery::new().since(t).until(t - Duration::from_secs(1))).await,
        "until before since",
        "until",
    )?;
    let mut many = MemoryQuery::new();
    for i in 0..65 {
        many = many.of_type(kind(&format!("t{i}")));
    }
    expect_invalid(f.store.query(user, &many).await, "65 types", "types")?;
    let nul = MemoryQuery::new().metadata_contains(obj(json!({"k": "a\u{0}b"})));
    expect_invalid(f.store.query(user, &nul).await, "NUL in metadata filter", "metadata_contains")?;
    let nul_key = MemoryQuery::new().metadata_contains(obj(json!({"a\u{0}": 1})));
    expect_invalid(f.store.query(user, &nul_key).await, "NUL in a metadata filter key", "metadata_contains")?;
    // The largest page size is fine.
    f.store.query(user, &MemoryQuery::new().limit(MemoryQuery::MAX_LIMIT)).await.ctx("query at MAX_LIMIT")?;
    Ok(())
}

/// `delete` removes exactly one log, once.
pub async fn delete_removes_one_log(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let batch: Vec<NewMemoryLog> =
        (0..3u64).map(|i| log("fact", &format!("{i}"), base_time() + Duration::from_secs(i))).collect();
    let stored = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    ensure_eq!(f.store.delete(user, stored[1].id).await.ctx("delete")?, true, "first delete");
    ensure_eq!(f.store.delete(user, stored[1].id).await.ctx("delete")?, false, "second delete");
    ensure_eq!(f.store.get(user, stored[1].id).await.ctx("get")?, None, "get after delete");
    let rest = all_pages(f, user, &MemoryQuery::new()).await?;
    ensure_eq!(ids(&rest), vec![stored[2].id, stored[0].id], "logs left");
    Ok(())
}

/// Deleting a user deletes its logs (and only its logs); writes for the
/// deleted user then fail with `NotFound`.
pub async fn delete_user_cascades(f: &MemoryFixture) -> CheckResult {
    let gone = f.users.create_user().await.ctx("create_user")?;
    let kept = f.users.create_user().await.ctx("create_user")?;
    let batch: Vec<NewMemoryLog> =
        (0..5u64).map(|i| log("fact", &format!("{i}"), base_time() + Duration::from_secs(i))).collect();
    let logs = f.store.append_batch(gone, batch).await.ctx("append_batch")?;
    let other = f.store.append(kept, log("fact", "kept", base_time())).await.ctx("append")?;
    ensure_eq!(f.users.delete_user(gone).await.ctx("delete_user")?, true, "delete_user of an existing user");
    ensure_eq!(f.users.user_exists(gone).await.ctx("user_exists")?, false, "user_exists after delete");
    ensure_eq!(f.users.delete_user(gone).await.ctx("delete_user")?, false, "second delete_user");
    for l in &logs {
        ensure_eq!(f.store.get(gone, l.id).await.ctx("get")?, None, "a log of the deleted user");
    }
    expect_kind(
        f.store.append(gone, log("fact", "late", base_time())).await,
        ErrorKind::NotFound,
        "append for a deleted user",
    )?;
    // Re-creating the id must not bring old logs back.
    f.users.ensure_user(gone).await.ctx("ensure_user")?;
    ensure_eq!(count_all(f, gone).await?, 0, "logs of the re-created user");
    ensure_eq!(f.store.get(kept, other.id).await.ctx("get")?, Some(other), "the other user's log");
    Ok(())
}

/// `create_user`, `ensure_user`, `user_exists`, `delete_user` agree.
pub async fn user_store_lifecycle(f: &MemoryFixture) -> CheckResult {
    let a = f.users.create_user().await.ctx("create_user")?;
    let b = f.users.create_user().await.ctx("create_user")?;
    ensure!(a != b, "create_user returned the same id twice: {a}");
    ensure_eq!(f.users.user_exists(a).await.ctx("user_exists")?, true, "a created user exists");
    let ext = UserId::new();
    ensure_eq!(f.users.user_exists(ext).await.ctx("user_exists")?, false, "an unknown id exists");
    ensure_eq!(f.users.ensure_user(ext).await.ctx("ensure_user")?, true, "ensure_user of a new id creates it");
    ensure_eq!(f.users.ensure_user(ext).await.ctx("ensure_user")?, false, "ensure_user of an existing id");
    ensure_eq!(f.users.ensure_user(a).await.ctx("ensure_user")?, false, "ensure_user of a created user");
    ensure_eq!(f.users.user_exists(ext).await.ctx("user_exists")?, true, "an ensured user exists");
    f.store.append(ext, log("fact", "external user", base_time())).await.ctx("append for an ensured user")?;
    ensure_eq!(f.users.delete_user(ext).await.ctx("delete_user")?, true, "delete_user");
    ensure_eq!(f.users.delete_user(UserId::new()).await.ctx("delete_user")?, false, "delete_user of an unknown id");
    ensure_eq!(f.users.user_exists(b).await.ctx("user_exists")?, true, "another user after a delete");
    Ok(())
}

/// Metadata numbers match as Postgres `jsonb @>` matches them: by the exact
/// decimal value of the text serde_json writes (`numeric` equality, which
/// ignores scale), not as `f64`. So `1` matches `1.0` and `0` matches
/// `-0.0`, while integers above 2^53 that share one `f64` do not match each
/// other, nor the float they round to. The expected sets were read from
/// Postgres 15; the reference [`MemoryQuery::matches`] must agree.
pub async fn metadata_numbers_compare_exactly(f: &MemoryFixture) -> CheckResult {
    let user = f.users.create_user().await.ctx("create_user")?;
    let two53 = 1u64 << 53;
    // (content, stored `n`), one log each.
    #[allow(clippy::cast_precision_loss)] // the rounded floats are the point
    let corpus: Vec<(&str, Value)> = vec![
        ("u64max", json!(u64::MAX)),
        ("u64max-1", json!(u64::MAX - 1)),
        ("u64max-f", json!(u64::MAX as f64)),
        ("i64min", json!(i64::MIN)),
        ("i64min-f", json!(i64::MIN as f64)),
        ("one", json!(1)),
        ("one-f", json!(1.0)),
        ("zero", json!(0)),
        ("neg-zero-f", json!(-0.0)),
        ("2^53", json!(two53)),
        ("2^53+1", json!(two53 + 1)),
        ("2^53-f", json!(two53 as f64)),
        ("tenth-f", json!(0.1)),
        ("1e30-f", json!(1e30)),
        ("1e-7-f", json!(1e-7)),
        ("list", json!([1, 2.5, u64::MAX])),
    ];
    let batch: Vec<NewMemoryLog> = corpus
        .iter()
        .enumerate()
        .map(|(i, (name, n))| {
            log("fact", name, base_time() + Duration::from_secs(i as u64)).with_metadata(json!({ "n": n }))
        })
        .collect::<Result<_, _>>()
        .ctx("metadata")?;
    let mut all = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    // The numbers also come back as given.
    for stored in &all {
        let got = f.store.get(user, stored.id).await.ctx("get")?;
        ensure_eq!(got.as_ref(), Some(stored), "log {} read back", stored.content);
    }
    newest_first(&mut all);
    #[allow(clippy::cast_precision_loss)]
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!(u64::MAX), vec!["u64max"]),
        (json!(u64::MAX - 1), vec!["u64max-1"]),
        (json!(u64::MAX as f64), vec!["u64max-f"]),
        (json!(i64::MIN), vec!["i64min"]),
        (json!(i64::MIN + 1), vec![]),
        (json!(i64::MIN as f64), vec!["i64min-f"]),
        (json!(1), vec!["one-f", "one"]),
        (json!(1.0), vec!["one-f", "one"]),
        (json!(0), vec!["neg-zero-f", "zero"]),
        (json!(-0.0), vec!["neg-zero-f", "zero"]),
        (json!(two53), vec!["2^53-f", "2^53"]),
        (json!(two53 + 1), vec!["2^53+1"]),
        (json!(two53 as f64), vec!["2^53-f", "2^53"]),
        (json!(0.1), vec!["tenth-f"]),
        (json!(0.1 + 0.2), vec![]),
        (json!(1e30), vec!["1e30-f"]),
        (json!(1e-7), vec!["1e-7-f"]),
        (json!([1.0]), vec!["list"]),
        (json!([2.5, u64::MAX]), vec!["list"]),
        (json!([u64::MAX - 1]), vec![]),
    ];
    for (n, want) in cases {
        let q = MemoryQuery::new().metadata_contains(obj(json!({ "n": n })));
        let got = all_pages(f, user, &q).await?;
        let names: Vec<&str> = got.iter().map(|l| l.content.as_str()).collect();
        ensure_eq!(names, want, "logs whose metadata contains {{\"n\": {n}}}");
        let reference: Vec<_> = all.iter().filter(|l| q.matches(l)).map(|l| l.id).collect();
        ensure_eq!(ids(&got), reference, "the reference model for {{\"n\": {n}}}");
    }
    Ok(())
}

/// One rule for every timestamp: logs, `since`/`until` bounds and cursors
/// are all truncated to whole microseconds. So a log appended `.at(t)` is
/// found by `.since(t)` and left out by `.until(t)` whatever nanoseconds `t`
/// carries, before 1970 and 2000 as after, through the builder methods and
/// through fields set directly; and a cursor at the log's position (finer
/// nanoseconds or not) continues strictly after it.
pub async fn sub_microsecond_bounds_find_their_logs(f: &MemoryFixture) -> CheckResult {
    use time::macros::datetime;
    let user = f.users.create_user().await.ctx("create_user")?;
    let base = base_time();
    let times = [
        base + Duration::from_nanos(999),
        base + Duration::from_secs(10) + Duration::from_nanos(1),
        base + Duration::from_secs(20) + Duration::from_nanos(123_456_789),
        base + Duration::from_secs(30) + Duration::from_nanos(999_999_999),
        datetime!(1999-12-31 23:59:59.999999999 UTC),
        datetime!(1969-12-31 23:59:59.999999999 UTC),
        datetime!(1950-06-15 08:30:00.000000500 +02:00),
        // Near both ends of the range stores keep, leaving room for t ± 1us.
        datetime!(0001-01-01 00:00:00.000001999 UTC),
        datetime!(9999-12-31 23:59:59.999998999 UTC),
    ];
    let batch: Vec<NewMemoryLog> = times.iter().enumerate().map(|(i, &t)| log("fact", &format!("t{i}"), t)).collect();
    let stamps: Vec<OffsetDateTime> = batch.iter().map(NewMemoryLog::timestamp).collect();
    let mut all = f.store.append_batch(user, batch).await.ctx("append_batch")?;
    for (stored, want) in all.iter().zip(&stamps) {
        ensure_eq!(stored.timestamp, *want, "stored timestamp of {}", stored.content);
        ensure_eq!(stored.timestamp.nanosecond() % 1000, 0, "{} is whole microseconds", stored.content);
    }
    newest_first(&mut all);
    let micro = Duration::from_micros(1);
    for (i, &t) in times.iter().enumerate() {
        let name = format!("t{i}");
        let contents = |logs: &[MemoryLog]| logs.iter().map(|l| l.content.clone()).collect::<Vec<_>>();
        let has = |logs: &[MemoryLog]| logs.iter().any(|l| l.content == name);
        let direct = MemoryQuery::new().limit(3);
        let cases = [
            ("since(t)", MemoryQuery::new().since(t), true),
            ("since: Some(t)", MemoryQuery { since: Some(t), ..direct.clone() }, true),
            ("until(t)", MemoryQuery::new().until(t), false),
            ("until: Some(t)", MemoryQuery { until: Some(t), ..direct.clone() }, false),
            ("until(t + 1us)", MemoryQuery::new().until(t + micro), true),
            ("since(t + 1us)", MemoryQuery::new().since(t + micro), false),
            ("since(t - 1us)", MemoryQuery::new().since(t - micro), true),
        ];
        for (what, q, want) in cases {
            let got = all_pages(f, user, &q.clone().limit(3)).await?;
            ensure_eq!(has(&got), want, "{what} with t = {t}: is at(t) among {:?}", contents(&got));
            let reference: Vec<_> = all.iter().filter(|l| q.matches(l)).map(|l| l.id).collect();
            ensure_eq!(ids(&got), reference, "{what} with t = {t}: the reference model");
        }
        // Exactly one log in [t, t + 1us), also with the fields set directly.
        let q = MemoryQuery { since: Some(t), until: Some(t + micro), ..MemoryQuery::new() };
        let got = all_pages(f, user, &q).await?;
        ensure_eq!(contents(&got), vec![name.clone()], "since: Some(t), until: Some(t + 1us) with t = {t}");
        // A cursor at the log's own position, with t's nanoseconds: the
        // next page starts strictly after the log.
        let at = all.iter().position(|l| l.content == name).ok_or("the log is missing")?;
        let cursor = selfrag_core::Cursor { timestamp: t, id: all[at].id };
        let q = MemoryQuery { after: Some(cursor), ..MemoryQuery::new().limit(4) };
        let got = all_pages(f, user, &q).await?;
        ensure_eq!(ids(&got), ids(&all[at + 1..]), "after a cursor at at({t}) with its nanoseconds");
    }
    Ok(())
}

/// Appends are retry-safe by id: appending again a log that is stored (same
/// id, user, type, content, metadata and timestamp) returns it and writes
/// nothing new, alone or inside a batch with new logs; the same id with any
/// difference, or for another user, stays a `Conflict` that writes nothing.
pub async fn retried_appends_return_the_stored_log(f: &MemoryFixture) -> CheckResult {
    let alice = f.users.create_user().await.ctx("create_user")?;
    let bob = f.users.create_user().await.ctx("create_user")?;
    let meta = json!({"n": 1.5, "big": u64::MAX, "tags": ["a", "b"], "nested": {"k": null}});
    let first = log("fact", "said once", base_time()).with_metadata(meta.clone()).expect("metadata");
    let stored = f.store.append(alice, first.clone()).await.ctx("append")?;
    let again = f.store.append(alice, first.clone()).await.ctx("retried append of a stored log")?;
    ensure_eq!(again, stored, "a retried append returns the stored log");
    ensure_eq!(count_all(f, alice).await?, 1, "logs after a retried append");

    expect_kind(f.store.append(bob, first.clone()).await, ErrorKind::Conflict, "the same log for another user")?;
    let differs = [
        ("content", log("fact", "said twice", base_time()).with_metadata(meta.clone()).expect("metadata")),
        ("type", log("event", "said once", base_time()).with_metadata(meta.clone()).expect("metadata")),
        ("metadata", log("fact", "said once", base_time()).with_metadata(json!({"n": 1.25})).expect("metadata")),
        (
            "timestamp",
            log("fact", "said once", base_time() + Duration::from_millis(1))
                .with_metadata(meta.clone())
                .expect("metadata"),
        ),
    ];
    for (what, other) in differs {
        let other = other.with_id(stored.id);
        expect_kind(f.store.append(alice, other).await, ErrorKind::Conflict, &format!("same id, other {what}"))?;
    }
    ensure_eq!(f.store.get(alice, stored.id).await.ctx("get")?, Some(stored.clone()), "the stored log after conflicts");

    // A batch that repeats a stored log writes only the new ones, once.
    let fresh = log("fact", "new in the batch", base_time() + Duration::from_secs(1));
    let batch = vec![first.clone(), fresh.clone()];
    let out = f.store.append_batch(alice, batch.clone()).await.ctx("batch with a stored log")?;
    ensure_eq!(out.len(), 2, "logs returned by the batch");
    ensure_eq!(out[0], stored, "the stored log, returned by the batch");
    let out = f.store.append_batch(alice, batch).await.ctx("the same batch retried")?;
    ensure_eq!(out.len(), 2, "logs returned by the retried batch");
    ensure_eq!(count_all(f, alice).await?, 2, "logs after the retried batch");

    // A batch with a new log and a clash writes nothing.
    let unseen = log("fact", "must not be written", base_time() + Duration::from_secs(2));
    let clash = log("fact", "clash", base_time()).with_id(stored.id);
    expect_kind(f.store.append_batch(alice, vec![unseen.clone(), clash]).await, ErrorKind::Conflict, "batch clash")?;
    ensure_eq!(f.store.get(alice, unseen.id()).await.ctx("get")?, None, "the new log of a clashing batch");
    ensure_eq!(count_all(f, alice).await?, 2, "logs after the clashing batch");
    ensure_eq!(count_all(f, bob).await?, 0, "bob's logs");
    Ok(())
}

/// `purge_user_logs` deletes at most `max_rows` of one user's logs per call,
/// counts them, reaches 0 when none is left, keeps the user and never
/// touches another user's logs; a bad `max_rows` is refused.
pub async fn purge_user_logs_is_bounded_and_scoped(f: &MemoryFixture) -> CheckResult {
    let alice = f.users.create_user().await.ctx("create_user")?;
    let bob = f.users.create_user().await.ctx("create_user")?;
    let t = base_time();
    let alices: Vec<NewMemoryLog> =
        (0..25).map(|i| log("fact", &format!("a{i}"), t + Duration::from_secs(i))).collect();
    f.store.append_batch(alice, alices).await.ctx("append_batch alice")?;
    let bobs: Vec<NewMemoryLog> = (0..3).map(|i| log("fact", &format!("b{i}"), t + Duration::from_secs(i))).collect();
    let bobs = f.store.append_batch(bob, bobs).await.ctx("append_batch bob")?;
    for bad in [0, selfrag_core::memory::MAX_PURGE_BATCH + 1] {
        expect_invalid(f.store.purge_user_logs(alice, bad).await, "purge_user_logs(max_rows bad)", "max_rows")?;
    }
    ensure_eq!(count_all(f, alice).await?, 25, "alice's logs after refused purges");
    let mut steps = Vec::new();
    loop {
        let n = f.store.purge_user_logs(alice, 10).await.ctx("purge_user_logs")?;
        steps.push(n);
        if n == 0 || steps.len() > 10 {
            break;
        }
    }
    ensure_eq!(steps, vec![10, 10, 5, 0], "rows deleted per call of 10");
    ensure_eq!(count_all(f, alice).await?, 0, "alice's logs after purging");
    ensure!(f.users.user_exists(alice).await.ctx("user_exists")?, "purging deleted the user");
    ensure_eq!(all_pages(f, bob, &MemoryQuery::new()).await?.len(), bobs.len(), "bob's logs after alice's purge");
    ensure_eq!(f.store.get(bob, bobs[0].id).await.ctx("get")?, Some(bobs[0].clone()), "bob's log");
    ensure_eq!(f.store.purge_user_logs(UserId::new(), 10).await.ctx("purge unknown")?, 0, "an unknown user's purge");
    // The user can write again afterwards.
    f.store.append(alice, log("fact", "again", t)).await.ctx("append after purge")?;
    ensure_eq!(count_all(f, alice).await?, 1, "alice's logs after appending again");
    Ok(())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __memory_checks {
    ($cb:ident!($($args:tt)*)) => {
        $crate::$cb! { $($args)* [
            append_then_get_round_trips,
            content_round_trips_exactly,
            absent_ids_read_as_none,
            user_isolation,
            unknown_user_writes_fail,
            append_taken_id_conflicts,
            batch_is_all_or_nothing,
            bad_batches_write_nothing,
            batch_returns_stored_records,
            query_is_newest_first,
            pagination_has_no_duplicates_or_gaps,
            pagination_under_concurrent_appends,
            time_range_filters,
            type_filters,
            metadata_containment,
            filters_match_reference,
            bad_queries_are_rejected,
            delete_removes_one_log,
            delete_user_cascades,
            user_store_lifecycle,
            metadata_numbers_compare_exactly,
            sub_microsecond_bounds_find_their_logs,
            retried_appends_return_the_stored_log,
            purge_user_logs_is_bounded_and_scoped,
        ] }
    };
}
crate::__memory_checks!(__suite_list!(MemoryFixture, "memory.rs", __memory_checks,));
