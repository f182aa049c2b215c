//! Study results in the store.
//!
//! A result is committed in ONE transaction with the study's state change (`inferring →
//! done`) and any extra writes a later stage adds (the outbox entries): see
//! [`commit_result`] and [`ExtraWrite`]. Keys of the `results` tree are
//! `<study uid> NUL <version as 8 hex digits>`, so a study's versions sort in order.
//!
//! Heatmaps still to make are marked in their own tree (written with the result, removed
//! when the heatmap is recorded), so a restart finds them without reading every result.

use super::records::update_json;
use super::{decode, encode, write_extra, Change, Store, StoreError};
use crate::model::{StudyRecord, StudyState};
use crate::result::{HeatmapState, StudyResult};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// Tree of study results.
pub const RESULTS_TREE: &str = "results";
/// Marks of heatmaps still to make: `<result key> NUL <SOP Instance UID>`, empty values.
pub const PENDING_HEATMAPS_TREE: &str = "heatmaps_pending";
pub use super::ExtraWrite;

/// Builds the extra writes for a result about to be committed (given the study record as
/// it is before the commit). The deliver stage supplies one for its outbox entries.
pub type ExtraWrites =
    std::sync::Arc<dyn Fn(&StudyResult, &StudyRecord) -> Vec<ExtraWrite> + Send + Sync>;

/// What committing a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Recorded; the study is `done`.
    Done,
    /// Recorded, but instances arrived meanwhile: the study stays `receiving` and will be
    /// analysed again as version n+1.
    Superseded,
}

/// Key of a result in [`RESULTS_TREE`].
pub fn result_key(study_uid: &str, version: u32) -> Vec<u8> {
    let mut k = study_uid.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(format!("{version:08x}").as_bytes());
    k
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Commits `result`, moves the study to `done` (unless new instances reopened it) with
/// `result_version = result.version`, and applies `extra` — all in one transaction; the
/// new study record is broadcast ([`Store::changes`]). Not durable until [`Store::flush`].
pub fn commit_result(
    store: &Store,
    result: &StudyResult,
    extra: &[ExtraWrite],
) -> Result<Committed, StoreError> {
    let (names, extra_trees) = store.extra_trees(extra)?;
    let results_tree = store.tree(RESULTS_TREE)?;
    let mut refs: Vec<&sled::Tree> = vec![&results_tree, &store.studies];
    refs.extend(extra_trees.iter());
    let key = result_key(&result.study_instance_uid, result.version);
    let value = encode(result);
    let uid = result.study_instance_uid.as_str();
    let out = refs.as_slice().transaction(|views| {
        let (results, studies) = (&views[0], &views[1]);
        let Some(raw) = studies.get(uid.as_bytes())? else {
            return Err(corrupt(uid, "the study is not in the index"));
        };
        let mut study: StudyRecord = serde_json::from_slice(&raw).map_err(|e| corrupt(uid, e))?;
        results.insert(key.as_slice(), value.as_slice())?;
        let outcome = if study.state == StudyState::Receiving {
            Committed::Superseded
        } else {
            study.state = StudyState::Done;
            study.error = None;
            Committed::Done
        };
        study.result_version = study.result_version.max(result.version);
        studies.insert(uid.as_bytes(), encode(&study))?;
        write_extra(&views[2..], &names, extra)?;
        Ok((outcome, study))
    });
    match out {
        Ok((outcome, study)) => {
            // Like every write of a study record, the state change is broadcast.
            store.notify(Change::Study(Box::new(study)));
            Ok(outcome)
        }
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(StoreError::Index(e)),
    }
}

/// One result version of a study.
pub fn result(
    store: &Store,
    study_uid: &str,
    version: u32,
) -> Result<Option<StudyResult>, StoreError> {
    let key = result_key(study_uid, version);
    store
        .tree(RESULTS_TREE)?
        .get(&key)?
        .map(|v| decode(&key, &v))
        .transpose()
}

/// The latest result of a study.
pub fn latest_result(store: &Store, study_uid: &str) -> Result<Option<StudyResult>, StoreError> {
    let mut prefix = study_uid.as_bytes().to_vec();
    prefix.push(0);
    match store.tree(RESULTS_TREE)?.scan_prefix(&prefix).next_back() {
        Some(kv) => {
            let (k, v) = kv?;
            Ok(Some(decode(&k, &v)?))
        }
        None => Ok(None),
    }
}

/// Records the heatmap state of one image of a stored result.
/// The marks of the heatmaps of `sops` in result `version` of `study_uid`, to commit with
/// the result.
pub fn pending_heatmap_marks(study_uid: &str, version: u32, sops: &[&str]) -> Vec<ExtraWrite> {
    sops.iter()
        .map(|sop| ExtraWrite {
            tree: PENDING_HEATMAPS_TREE.to_string(),
            key: pending_key(study_uid, version, sop),
            value: Vec::new(),
        })
        .collect()
}

fn pending_key(study_uid: &str, version: u32, sop: &str) -> Vec<u8> {
    let mut k = result_key(study_uid, version);
    k.push(0);
    k.extend_from_slice(sop.as_bytes());
    k
}

/// The heatmaps marked as still to make: (study UID, result version, SOP Instance UID).
/// Marks that do not parse are skipped.
pub fn pending_heatmaps(store: &Store) -> Result<Vec<(String, u32, String)>, StoreError> {
    let mut out = Vec::new();
    for item in store.tree(PENDING_HEATMAPS_TREE)?.iter() {
        let (key, _) = item?;
        let mut parts = key.split(|b| *b == 0);
        let (Some(study), Some(version), Some(sop)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let version = std::str::from_utf8(version)
            .ok()
            .and_then(|v| u32::from_str_radix(v, 16).ok());
        if let (Ok(study), Some(version), Ok(sop)) = (
            std::str::from_utf8(study),
            version,
            std::str::from_utf8(sop),
        ) {
            out.push((study.to_string(), version, sop.to_string()));
        }
    }
    Ok(out)
}

/// Removes the mark of a heatmap that is no longer to be made.
pub fn clear_pending_heatmap(
    store: &Store,
    study_uid: &str,
    version: u32,
    sop: &str,
) -> Result<(), StoreError> {
    store
        .tree(PENDING_HEATMAPS_TREE)?
        .remove(pending_key(study_uid, version, sop))?;
    Ok(())
}

/// Records the heatmap state of one image of a result; a state other than pending
/// clears its mark (a crash in between leaves a mark the next start discards).
pub fn set_heatmap(
    store: &Store,
    study_uid: &str,
    version: u32,
    sop_instance_uid: &str,
    state: HeatmapState,
    heatmap_ms: f64,
) -> Result<(), StoreError> {
    let key = result_key(study_uid, version);
    update_json(&store.tree(RESULTS_TREE)?, &key, |r: &mut StudyResult| {
        for img in r
            .images
            .iter_mut()
            .filter(|i| i.sop_instance_uid == sop_instance_uid)
        {
            img.heatmap = state.clone();
            img.timings.heatmap_ms = heatmap_ms;
        }
        r.timings.heatmap_ms = r.images.iter().map(|i| i.timings.heatmap_ms).sum();
    })?;
    if !matches!(state, HeatmapState::Pending { .. }) {
        clear_pending_heatmap(store, study_uid, version, sop_instance_uid)?;
    }
    Ok(())
}
