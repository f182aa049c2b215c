//! The study state transitions of inference (`complete → queued → inferring → done |
//! error`), each checked by the store ([`Store::transition`]); the result records
//! themselves are kept by [`crate::store::results`] (re-exported here).

use crate::model::{StudyRecord, StudyState::*};
use crate::store::{Store, StoreError};

pub use crate::store::results::*;

/// Marks a study `queued` (handed to inference): from `complete`, or `queued` again.
pub fn mark_queued(store: &Store, study_uid: &str) -> Result<StudyRecord, StoreError> {
    store.transition(study_uid, &[Complete, Queued], Queued)
}

/// Marks a study `inferring`: from `queued`, or `inferring` when a restart resumes it.
pub fn mark_inferring(store: &Store, study_uid: &str) -> Result<StudyRecord, StoreError> {
    store.transition(study_uid, &[Queued, Inferring], Inferring)
}

/// Marks a study `error` with the reason (nothing of it could be analysed and it is not
/// worth retrying: e.g. every image undecodable): from `queued`, `inferring`, or `done`
/// when the recorded result has no analysed image.
pub fn mark_error(store: &Store, study_uid: &str, reason: &str) -> Result<StudyRecord, StoreError> {
    store.transition_to_error(study_uid, &[Queued, Inferring, Done], reason)
}
