//! Radiologist feedback on a study's result: agree or disagree, with a comment. Stored in
//! the tree `feedback` (key: study UID, NUL, time, user), audited by the caller, and handed
//! to delivery ([`super::services::FeedbackSink`]) so it reaches the cloud through the outbox.

pub use crate::report::Feedback;
use crate::store::records::RecordTree;
use crate::store::{Store, StoreError};

/// Longest comment accepted, in characters.
pub const MAX_COMMENT: usize = 2000;

fn key(f: &Feedback) -> Vec<u8> {
    let mut k = f.study_uid.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&f.at_ms.to_be_bytes());
    k.extend_from_slice(f.user.as_bytes());
    k
}

/// Stores a feedback record (durable after the store's next flush).
pub fn store(store: &Store, f: &Feedback) -> Result<(), StoreError> {
    store
        .records::<Feedback>(RecordTree::Feedback)?
        .insert(key(f), f)?;
    Ok(())
}

/// The feedback records of a study, oldest first.
pub fn of_study(store: &Store, study_uid: &str) -> Result<Vec<Feedback>, StoreError> {
    let mut prefix = study_uid.as_bytes().to_vec();
    prefix.push(0);
    store
        .records::<Feedback>(RecordTree::Feedback)?
        .scan_prefix(prefix)
        .map(|kv| kv.map(|(_, f)| f))
        .collect()
}
