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

/// Most feedback records one user may give on one study.
pub const MAX_PER_USER_AND_STUDY: usize = 20;

/// Most feedback records a study page shows (the latest).
pub const MAX_SHOWN: usize = 200;

fn study_prefix(study_uid: &str) -> Vec<u8> {
    let mut prefix = study_uid.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// The latest [`MAX_SHOWN`] feedback records of a study, oldest first, and how many it
/// has in all.
pub fn of_study(store: &Store, study_uid: &str) -> Result<(Vec<Feedback>, usize), StoreError> {
    let mut latest = std::collections::VecDeque::with_capacity(MAX_SHOWN);
    let mut total = 0;
    for kv in store
        .records::<Feedback>(RecordTree::Feedback)?
        .scan_prefix(study_prefix(study_uid))
    {
        let (_, f) = kv?;
        total += 1;
        if latest.len() == MAX_SHOWN {
            latest.pop_front();
        }
        latest.push_back(f);
    }
    Ok((latest.into(), total))
}

/// How many feedback records `user` gave on the study.
pub fn given_by(store: &Store, study_uid: &str, user: &str) -> Result<usize, StoreError> {
    let mut n = 0;
    for kv in store
        .records::<Feedback>(RecordTree::Feedback)?
        .scan_prefix(study_prefix(study_uid))
    {
        if kv?.1.user == user {
            n += 1;
        }
    }
    Ok(n)
}
