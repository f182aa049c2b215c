//! Whether the store still answers in time: the daemon's liveness probe before each
//! watchdog ping (see [`crate::supervise::watchdog`]).

use super::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Why the store did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum Unresponsive {
    /// Reading the study states failed.
    #[error("store read failed: {0}")]
    ReadFailed(StoreError),
    /// The blocking task of the read failed (panicked or was cancelled).
    #[error("store read task: {0}")]
    ReadTask(tokio::task::JoinError),
    /// The read did not finish within the budget.
    #[error("store read took longer than {0:?}")]
    SlowRead(Duration),
    /// The index flush failed.
    #[error("index flush failed: {0}")]
    FlushFailed(StoreError),
    /// The index flush did not finish within the budget.
    #[error("index flush took longer than {0:?}")]
    SlowFlush(Duration),
}

impl Store {
    /// `Ok` when the store answers a read of every study record, then completes an index
    /// flush, each within `budget`. The records are read, not decoded: one that does not
    /// decode is the listings' concern (passed over, logged), not a reason to have the
    /// daemon restarted again and again.
    pub async fn answers_within(self: Arc<Self>, budget: Duration) -> Result<(), Unresponsive> {
        let s = self.clone();
        let read = tokio::task::spawn_blocking(move || s.study_records_read().map(|_| ()));
        match tokio::time::timeout(budget, read).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Unresponsive::ReadFailed(e)),
            Ok(Err(e)) => return Err(Unresponsive::ReadTask(e)),
            Err(_) => return Err(Unresponsive::SlowRead(budget)),
        }
        match tokio::time::timeout(budget, self.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Unresponsive::FlushFailed(e)),
            Err(_) => Err(Unresponsive::SlowFlush(budget)),
        }
    }
}
