//! The erasure ledger through backups and restores.
//!
//! `Storage::erase_user` records each completed erasure in the `erasures`
//! table (migration 4): the user's id, when, and which vectors it covered.
//! A backup taken before an erasure still holds the user; restoring it
//! would bring them back. So:
//!
//! - a Postgres backup records the ledger's position when the dump began
//!   ([`LedgerPosition`] in [`PostgresInfo`](crate::manifest::PostgresInfo));
//! - a Postgres restore reads the ledger of every database that may know
//!   of later erasures *before* touching anything (the target itself, for a
//!   clean restore over a live database, and the URL's database when the
//!   target is another one), restores, then erases again every user those
//!   ledgers hold and the restored one does not, and records them in the
//!   restored ledger, before it reports success.
//!
//! Entries are matched by user id, not by `seq`: sequence values are handed
//! out when a row is inserted, not when it commits, so "every entry at or
//! below the position is in the archive" cannot be promised, while "every
//! user in the restored ledger is erased in the restored data" can (an
//! erasure writes its ledger row last, in its own transaction).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::postgres::sql_err;
use crate::{Error, Result};

/// Where a database's erasure ledger stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPosition {
    /// The highest `seq` (0 when the ledger is empty).
    pub seq: i64,
    /// How many erasures it held.
    pub count: u64,
}

/// One erasure, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The user erased.
    pub user_id: Uuid,
    /// When the erasure completed.
    pub erased_at: OffsetDateTime,
    /// The vectors it covered, as recorded (a JSON array).
    pub vectors: serde_json::Value,
}

/// `schema.erasures`, quoted.
fn table(schema: &str) -> String {
    format!("\"{schema}\".erasures")
}

/// Whether `schema` holds the ledger table (a database migrated before
/// migration 4 does not).
pub(crate) async fn has_ledger(client: &impl GenericClient, schema: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass(format('%I.erasures', $1::text)) IS NOT NULL", &[&schema])
        .await
        .map_err(|e| sql_err("looking for the erasure ledger", e))?;
    Ok(row.get(0))
}

/// The ledger's position, or `None` without a ledger.
pub(crate) async fn position(client: &Client, schema: &str) -> Result<Option<LedgerPosition>> {
    if !has_ledger(client, schema).await? {
        return Ok(None);
    }
    let row = client
        .query_one(&format!("SELECT coalesce(max(seq), 0), count(*) FROM {}", table(schema)), &[])
        .await
        .map_err(|e| sql_err("reading the erasure ledger's position", e))?;
    Ok(Some(LedgerPosition { seq: row.get(0), count: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0) }))
}

/// Every entry of the ledger, oldest first (empty without a ledger).
pub(crate) async fn read_all(client: &Client, schema: &str) -> Result<Vec<LedgerEntry>> {
    if !has_ledger(client, schema).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(&format!("SELECT user_id, erased_at, vectors FROM {} ORDER BY seq", table(schema)), &[])
        .await
        .map_err(|e| sql_err("reading the erasure ledger", e))?;
    Ok(rows.iter().map(|r| LedgerEntry { user_id: r.get(0), erased_at: r.get(1), vectors: r.get(2) }).collect())
}

/// The erasures listed in a file that `selfrag erasures --json` wrote (an
/// object whose `erasures` field is the array of records), or a bare JSON
/// array of such records (`seq`, `user`, `erased_at` in RFC 3339,
/// `vectors`): a copy of the ledger kept beside the backups, for when the
/// server that held the ledger is lost with it.
///
/// # Errors
/// [`Error::InvalidInput`] naming `erasures_file` and the path when the
/// file cannot be read or is not such a list.
pub fn read_erasures_file(path: &std::path::Path) -> Result<Vec<LedgerEntry>> {
    let bad = |why: String| Error::invalid("erasures_file", format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON (`selfrag erasures --json` writes it): {e}")))?;
    let list = match doc {
        serde_json::Value::Object(mut o) => o
            .remove("erasures")
            .ok_or_else(|| bad("no `erasures` field (`selfrag erasures --json` writes one)".into()))?,
        list @ serde_json::Value::Array(_) => list,
        _ => return Err(bad("expected the output of `selfrag erasures --json` or an array of erasures".into())),
    };
    let records: Vec<selfrag_core::ErasureRecord> =
        serde_json::from_value(list).map_err(|e| bad(format!("not a list of erasures: {e}")))?;
    Ok(records
        .into_iter()
        .map(|r| LedgerEntry { user_id: *r.user.as_uuid(), erased_at: r.erased_at, vectors: r.vectors })
        .collect())
}

/// Merges ledgers, keeping each user's earliest erasure.
pub(crate) fn merge(sources: Vec<Vec<LedgerEntry>>) -> Vec<LedgerEntry> {
    let mut seen = std::collections::HashMap::<Uuid, usize>::new();
    let mut out: Vec<LedgerEntry> = Vec::new();
    for entry in sources.into_iter().flatten() {
        match seen.get(&entry.user_id) {
            Some(&i) if out[i].erased_at <= entry.erased_at => {}
            Some(&i) => out[i] = entry,
            None => {
                seen.insert(entry.user_id, out.len());
                out.push(entry);
            }
        }
    }
    out.sort_by_key(|e| e.erased_at);
    out
}

/// How many users are erased per transaction when re-applying.
const BATCH: usize = 500;

/// Erases, in the restored database, every user of `entries` its own
/// ledger does not hold: their memory logs, sessions and user rows, then
/// records them in its ledger. Returns the users erased again, in ledger
/// order. Idempotent: a second run finds them in the ledger and does
/// nothing.
///
/// A restored database without a ledger table (a backup from before
/// migration 4) still has the users' rows deleted; the ledger rows are
/// written once migrations create the table, which is why the caller
/// reports such a restore.
pub(crate) async fn reapply(client: &mut Client, schema: &str, entries: &[LedgerEntry]) -> Result<Vec<Uuid>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let ledger = has_ledger(client, schema).await?;
    let known: std::collections::HashSet<Uuid> = if ledger {
        read_all(client, schema).await?.into_iter().map(|e| e.user_id).collect()
    } else {
        Default::default()
    };
    let missing: Vec<&LedgerEntry> = entries.iter().filter(|e| !known.contains(&e.user_id)).collect();
    let mut done = Vec::with_capacity(missing.len());
    for batch in missing.chunks(BATCH) {
        let ids: Vec<Uuid> = batch.iter().map(|e| e.user_id).collect();
        let times: Vec<OffsetDateTime> = batch.iter().map(|e| e.erased_at).collect();
        let vectors: Vec<serde_json::Value> = batch.iter().map(|e| e.vectors.clone()).collect();
        let tx = client.transaction().await.map_err(|e| sql_err("re-applying erasures", e))?;
        for table in ["memory_logs", "user_sessions"] {
            if has_table(&tx, schema, table).await? {
                tx.execute(&format!("DELETE FROM \"{schema}\".{table} WHERE user_id = ANY($1)"), &[&ids])
                    .await
                    .map_err(|e| sql_err(&format!("re-applying erasures to {table}"), e))?;
            }
        }
        if has_table(&tx, schema, "users").await? {
            tx.execute(&format!("DELETE FROM \"{schema}\".users WHERE id = ANY($1)"), &[&ids])
                .await
                .map_err(|e| sql_err("re-applying erasures to users", e))?;
        }
        if ledger {
            tx.execute(
                &format!(
                    "INSERT INTO {} (user_id, erased_at, vectors) \
                     SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::jsonb[]) \
                     ON CONFLICT (user_id) DO NOTHING",
                    table(schema)
                ),
                &[&ids, &times, &vectors],
            )
            .await
            .map_err(|e| sql_err("recording re-applied erasures", e))?;
        }
        tx.commit().await.map_err(|e| sql_err("re-applying erasures", e))?;
        done.extend(ids);
    }
    Ok(done)
}

async fn has_table(client: &impl GenericClient, schema: &str, table: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL", &[&schema, &table])
        .await
        .map_err(|e| sql_err("checking the restored tables", e))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: u128, at: i64) -> LedgerEntry {
        LedgerEntry {
            user_id: Uuid::from_u128(user),
            erased_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            vectors: serde_json::json!([]),
        }
    }

    #[test]
    fn merging_keeps_each_user_once_at_the_earliest_erasure_in_time_order() {
        let merged = merge(vec![vec![entry(1, 30), entry(2, 10)], vec![entry(1, 20), entry(3, 5)], vec![]]);
        let got: Vec<(u128, i64)> =
            merged.iter().map(|e| (e.user_id.as_u128(), e.erased_at.unix_timestamp())).collect();
        assert_eq!(got, vec![(3, 5), (2, 10), (1, 20)]);
    }

    #[test]
    fn position_round_trips_through_json() {
        let p = LedgerPosition { seq: 42, count: 40 };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"seq":42,"count":40}"#);
        assert_eq!(serde_json::from_str::<LedgerPosition>(&text).unwrap(), p);
    }
}
