//! The erasure ledger: which users were erased, and when, so that a restore
//! from a backup taken before an erasure can erase them again.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::validate;

/// One completed erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureRecord {
    /// Its position in the ledger: increasing, from 1, with possible gaps.
    pub seq: u64,
    /// The user erased.
    pub user: UserId,
    /// When the erasure was recorded (the end of the erasure).
    #[serde(with = "time::serde::rfc3339")]
    pub erased_at: OffsetDateTime,
    /// What the erasure covered in the vector indexes, as the application
    /// gave it (a JSON array: the `selfrag` facade writes its `ErasePlan`
    /// here). No personal data belongs in it.
    pub vectors: Value,
}

/// Largest `vectors` of one record, in bytes of compact JSON.
pub const MAX_VECTORS_BYTES: usize = 64 * 1024;

/// Checks the `vectors` of [`ErasureLedger::record`].
///
/// # Errors
/// [`Error::InvalidInput`] (`vectors`): not an array, NUL bytes, more than
/// [`MAX_VECTORS_BYTES`] or too deep.
pub fn validate_vectors(vectors: &Value) -> Result<()> {
    if !vectors.is_array() {
        return Err(Error::invalid("vectors", "must be a JSON array"));
    }
    validate::json_value("vectors", vectors, MAX_VECTORS_BYTES)
}

/// The ledger of completed erasures (table `erasures` in Postgres).
///
/// # Contract
/// - A record means the user's erasure completed: write it last.
/// - At most one record per user: recording a user again keeps the first
///   record and returns `false`.
/// - `seq` increases with each new record; [`position`](Self::position) is
///   the highest `seq` (0 when empty), so a backup can note it and a
///   restore can ask for every record after it with
///   [`list_after`](Self::list_after).
/// - It holds no personal data: user ids, times, and the `vectors` scope the
///   application gave.
#[async_trait]
pub trait ErasureLedger: fmt::Debug + Send + Sync + 'static {
    /// Records that `user` was erased, covering `vectors` (a JSON array).
    /// Returns whether a record was added (`false`: the user was already
    /// recorded, and that record is kept as it was).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`vectors`) as for [`validate_vectors`];
    /// backend errors otherwise.
    async fn record(&self, user: UserId, vectors: Value) -> Result<bool>;

    /// The record of `user`, if it was erased.
    async fn get(&self, user: UserId) -> Result<Option<ErasureRecord>>;

    /// Up to `limit` records with `seq > after`, in `seq` order. Page by
    /// passing the last `seq` returned.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`limit`) for 0 or above
    /// [`MAX_LIST`].
    async fn list_after(&self, after: u64, limit: u32) -> Result<Vec<ErasureRecord>>;

    /// The highest `seq` recorded, 0 when the ledger is empty.
    async fn position(&self) -> Result<u64>;
}

/// Most records one [`ErasureLedger::list_after`] returns.
pub const MAX_LIST: u32 = 10_000;

/// Checks the `limit` of [`ErasureLedger::list_after`].
///
/// # Errors
/// [`Error::InvalidInput`] (`limit`).
pub fn validate_list_limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_LIST {
        return Err(Error::invalid("limit", format!("must be between 1 and {MAX_LIST}, got {limit}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vectors_must_be_a_small_array() {
        assert!(validate_vectors(&json!([])).is_ok());
        assert!(validate_vectors(&json!([{"tenant": "t1", "filter": null}])).is_ok());
        assert_eq!(validate_vectors(&json!({})).unwrap_err().field(), Some("vectors"));
        assert_eq!(validate_vectors(&json!(["a\0"])).unwrap_err().field(), Some("vectors"));
        assert_eq!(validate_vectors(&json!(["x".repeat(MAX_VECTORS_BYTES)])).unwrap_err().field(), Some("vectors"));
        assert_eq!(validate_list_limit(0).unwrap_err().field(), Some("limit"));
        assert!(validate_list_limit(MAX_LIST).is_ok());
    }
}
