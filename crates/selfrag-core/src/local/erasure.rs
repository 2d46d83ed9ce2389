use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use crate::clock::{to_micros, Clock, SystemClock};
use crate::erasure::{validate_list_limit, validate_vectors, ErasureLedger, ErasureRecord};
use crate::error::Result;
use crate::ids::UserId;

/// An [`ErasureLedger`] in process memory. Clones share the records.
///
/// It ends with the process: a service whose data outlives the process
/// keeps its ledger in Postgres (`selfrag_postgres::PostgresErasureLedger`).
#[derive(Debug, Clone)]
pub struct LocalErasureLedger {
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<Ledger>>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// In `seq` order: `records[i].seq == i + 1`.
    records: Vec<ErasureRecord>,
    by_user: HashMap<UserId, usize>,
}

impl Default for LocalErasureLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalErasureLedger {
    /// An empty ledger on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty ledger reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock, state: Arc::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ErasureLedger for LocalErasureLedger {
    async fn record(&self, user: UserId, vectors: Value) -> Result<bool> {
        validate_vectors(&vectors)?;
        let erased_at = to_micros(self.clock.now());
        let mut state = self.state();
        if state.by_user.contains_key(&user) {
            return Ok(false);
        }
        let seq = state.records.len() as u64 + 1;
        let at = state.records.len();
        state.records.push(ErasureRecord { seq, user, erased_at, vectors });
        state.by_user.insert(user, at);
        Ok(true)
    }

    async fn get(&self, user: UserId) -> Result<Option<ErasureRecord>> {
        let state = self.state();
        Ok(state.by_user.get(&user).map(|&i| state.records[i].clone()))
    }

    async fn list_after(&self, after: u64, limit: u32) -> Result<Vec<ErasureRecord>> {
        validate_list_limit(limit)?;
        let state = self.state();
        let start = usize::try_from(after).unwrap_or(usize::MAX).min(state.records.len());
        Ok(state.records[start..].iter().take(limit as usize).cloned().collect())
    }

    async fn position(&self) -> Result<u64> {
        Ok(self.state().records.len() as u64)
    }
}
