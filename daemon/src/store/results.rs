//! Study results in the store.
//!
//! A result is committed in ONE transaction with the study's state change (`inferring →
//! done`, [`Committed::on`]) and any extra writes a later stage adds (the outbox entries): see
//! [`commit_result`]. Keys of the `results` tree are
//! `<study uid> NUL <version as 8 hex digits>`, so a study's versions sort in order.
//!
//! Heatmaps still to make are marked in their own tree (written with the result, removed
//! when the heatmap is recorded), so a restart finds them without reading every result.

use super::records::update_json;
use super::{decode, encode, write_extra, Change, Store, StoreError};
use crate::model::{ReportedPatient, StudyRecord, StudyState};
use crate::result::{HeatmapState, StudyResult};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// Tree of study results.
pub const RESULTS_TREE: &str = "results";
/// Marks of heatmaps still to make: `<result key> NUL <SOP Instance UID>`, empty values.
pub const PENDING_HEATMAPS_TREE: &str = "heatmaps_pending";
use super::outbox::Batch;
use super::{batch_writes, ExtraWrite};

/// What committing a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Recorded; the study is `done`.
    Done,
    /// Recorded, but instances arrived meanwhile: the study keeps its state (`receiving`,
    /// or already `complete` or `queued` again) and will be analysed again as version n+1.
    Superseded,
}

impl Committed {
    /// What committing a result does to a study in state `now`: a study that new
    /// instances reopened since its analysis began (`receiving`, and `complete` or
    /// `queued` once their quiet period passed) keeps its state, so that it is analysed
    /// again with them; any other becomes `done` (`inferring`, or `done` and `error` left
    /// by another analysis of the same study that ended first).
    pub fn on(now: StudyState) -> Committed {
        match now {
            StudyState::Receiving | StudyState::Complete | StudyState::Queued => {
                Committed::Superseded
            }
            StudyState::Inferring | StudyState::Done | StudyState::Error => Committed::Done,
        }
    }
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

/// Whom the study's results are reported for once a result is committed
/// ([`StudyRecord::reported_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedFor<'a> {
    /// As before (the result reports nothing anywhere).
    Keep,
    /// This patient: the result's report went out for them.
    Now(&'a ReportedPatient),
    /// No one: what was reported for a former patient was withdrawn, and nothing new was
    /// reported.
    Nobody,
}

/// Commits `result`, moves the study to `done` (unless new instances reopened it: see
/// [`Committed::on`]) with
/// `result_version = result.version`, writes the outbox `batches` and marks the heatmaps
/// of `pending_heatmaps` (SOP Instance UIDs) as still to make — all in one transaction; the
/// new study record is broadcast ([`Store::changes`]). Not durable until [`Store::flush`];
/// tell each batch's outbox ([`super::outbox::Outbox::committed`]) once it is.
pub fn commit_result(
    store: &Store,
    result: &StudyResult,
    batches: &[Batch],
    pending_heatmaps: &[&str],
    reported_for: ReportedFor<'_>,
) -> Result<Committed, StoreError> {
    let mut extra = batch_writes(batches)?;
    extra.extend(pending_heatmap_marks(
        &result.study_instance_uid,
        result.version,
        pending_heatmaps,
    ));
    let extra = extra.as_slice();
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
        let outcome = Committed::on(study.state);
        if outcome == Committed::Done {
            study.state = StudyState::Done;
            study.error = None;
        }
        study.result_version = study.result_version.max(result.version);
        match reported_for {
            ReportedFor::Keep => {}
            ReportedFor::Now(p) => study.reported_for = Some(p.clone()),
            ReportedFor::Nobody => study.reported_for = None,
        }
        studies.insert(uid.as_bytes(), encode(&study))?;
        write_extra(&views[2..], &names, extra)?;
        Ok((outcome, study))
    });
    match out {
        Ok((outcome, study)) => {
            super::batches_written(batches);
            store.index_result(result);
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

/// The marks of the heatmaps of `sops` in result `version` of `study_uid`, to commit with
/// the result.
fn pending_heatmap_marks(study_uid: &str, version: u32, sops: &[&str]) -> Vec<ExtraWrite> {
    sops.iter()
        .map(|sop| ExtraWrite {
            tree: PENDING_HEATMAPS_TREE.to_string(),
            key: pending_key(study_uid, version, sop),
            value: Vec::new(),
        })
        .collect()
}

/// Key of the mark of a heatmap still to make in [`PENDING_HEATMAPS_TREE`].
pub(super) fn pending_key(study_uid: &str, version: u32, sop: &str) -> Vec<u8> {
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

/// Marks the heatmap of `sop` in result `version` of `study_uid` as still to make, outside
/// a result commit (tests of the restart path).
#[cfg(test)]
pub(crate) fn mark_pending_heatmap(
    store: &Store,
    study_uid: &str,
    version: u32,
    sop: &str,
) -> Result<(), StoreError> {
    store
        .tree(PENDING_HEATMAPS_TREE)?
        .insert(pending_key(study_uid, version, sop), &[])?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::{Destination, Kind, NewEntry, OutboxLimits, Payload};

    /// The outbox entries of a result commit with it or not at all: a result whose study
    /// is not in the index is refused, and no entry is left behind.
    #[test]
    fn outbox_entries_commit_with_the_result_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outbox = store.outbox(OutboxLimits::default()).unwrap();
        let entries = vec![NewEntry {
            dest: Destination::Hl7,
            kind: Kind::Report,
            report_id: "r-1".into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: Payload::Hl7 {
                message: "MSH|^~\\&|DULI\r".into(),
            },
        }];
        let result = StudyResult {
            report_id: "r-1".into(),
            findings: Vec::new(),
            ..result("4.4", 1, 0.0)
        };
        let batch = Batch {
            outbox: &outbox,
            entries: &entries,
        };
        let err =
            commit_result(&store, &result, &[batch], &["4.4.1"], ReportedFor::Keep).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(outbox.list(None).unwrap().is_empty());
        assert!(pending_heatmaps(&store).unwrap().is_empty());
        assert!(super::result(&store, "4.4", 1).unwrap().is_none());

        store
            .commit_instance(
                &crate::model::InstanceRecord {
                    sop_instance_uid: "4.4.1".into(),
                    study_instance_uid: "4.4".into(),
                    ..Default::default()
                },
                &StudyRecord::default(),
            )
            .unwrap();
        store.force_state("4.4", StudyState::Inferring);
        assert_eq!(
            commit_result(&store, &result, &[batch], &["4.4.1"], ReportedFor::Keep).unwrap(),
            Committed::Done
        );
        assert_eq!(outbox.list(None).unwrap().len(), 1);
        assert_eq!(pending_heatmaps(&store).unwrap().len(), 1);
    }

    fn result(uid: &str, version: u32, p: f32) -> StudyResult {
        let finding = crate::result::Finding {
            label: "Pneumonia".into(),
            code: "PNEUMONIA".into(),
            probability: p,
            threshold: 0.5,
            positive: p >= 0.5,
            standard: None,
        };
        StudyResult {
            report_id: format!("r-{uid}-{version}"),
            study_instance_uid: uid.into(),
            version,
            images: Vec::new(),
            findings: vec![finding],
            triage: p >= 0.5,
            model: crate::result::ModelInfo {
                name: "m".into(),
                version: "1".into(),
                sha256: String::new(),
                weights_sha256: String::new(),
                precision: "f32".into(),
                coding_scheme: crate::result::local_scheme(),
            },
            timings: Default::default(),
            created_at: 0,
        }
    }

    fn add_study(store: &Store, uid: &str, received_at: i64) {
        let inst = crate::model::InstanceRecord {
            sop_instance_uid: format!("{uid}.1"),
            study_instance_uid: uid.into(),
            received_at,
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
    }

    fn page(store: &Store) -> Vec<(String, StudyState, Option<bool>)> {
        store
            .worklist_page(|_| true, 10)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| {
                let urgent = r.result.as_ref().map(|s| s.urgent);
                (r.study.study_instance_uid, r.study.state, urgent)
            })
            .collect()
    }

    /// The worklist index follows every commit once built: new studies, state changes
    /// and results (urgent first, then the newest), and a reindex rebuilds it.
    #[test]
    fn the_worklist_index_follows_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add_study(&store, "1.1", 100);
        store.prepare_worklist().unwrap();
        add_study(&store, "1.2", 200);
        assert_eq!(
            page(&store),
            vec![
                ("1.2".into(), StudyState::Receiving, None),
                ("1.1".into(), StudyState::Receiving, None)
            ]
        );
        store.force_state("1.1", StudyState::Inferring);
        commit_result(&store, &result("1.1", 1, 0.9), &[], &[], ReportedFor::Keep).unwrap();
        assert_eq!(
            page(&store),
            vec![
                ("1.1".into(), StudyState::Done, Some(true)),
                ("1.2".into(), StudyState::Receiving, None)
            ]
        );
        // A newer version that is not urgent moves the study back to its place.
        store.force_state("1.1", StudyState::Inferring);
        commit_result(&store, &result("1.1", 2, 0.1), &[], &[], ReportedFor::Keep).unwrap();
        assert_eq!(
            page(&store)[1],
            ("1.1".into(), StudyState::Done, Some(false))
        );
        let urgent = store.worklist_page(|r| r.urgent(), 10).unwrap();
        assert_eq!((urgent.total, urgent.rows.len()), (0, 0));
        let limited = store.worklist_page(|_| true, 1).unwrap();
        assert_eq!((limited.total, limited.rows.len()), (2, 1));
    }

    /// A study that new instances reopened while it was analysed, and that became
    /// `complete` or `queued` again before the result was recorded, keeps its state: the
    /// result is kept as a version, and the new instances are analysed in the next one
    /// (moving it to `done` would leave them unanalysed: `queued` only starts from
    /// `complete`, `inferring` only from `queued`).
    #[test]
    fn a_study_reopened_during_its_analysis_is_analysed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        use StudyState::*;
        for (uid, now, committed, after) in [
            ("3.1", Receiving, Committed::Superseded, Receiving),
            ("3.2", Complete, Committed::Superseded, Complete),
            ("3.3", Queued, Committed::Superseded, Queued),
            ("3.4", Inferring, Committed::Done, Done),
            ("3.5", Done, Committed::Done, Done),
            ("3.6", Error, Committed::Done, Done),
        ] {
            add_study(&store, uid, 100);
            store.force_state(uid, now);
            assert_eq!(
                commit_result(&store, &result(uid, 1, 0.9), &[], &[], ReportedFor::Keep).unwrap(),
                committed,
                "{now:?}"
            );
            let study = store.study(uid).unwrap().unwrap();
            assert_eq!((study.state, study.result_version), (after, 1), "{now:?}");
            assert!(super::result(&store, uid, 1).unwrap().is_some());
        }
    }

    /// A result already in the store when its study first appears is shown with it.
    #[test]
    fn a_study_new_to_the_index_brings_its_recorded_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.prepare_worklist().unwrap();
        let r = result("2.1", 1, 0.9);
        store
            .tree(RESULTS_TREE)
            .unwrap()
            .insert(result_key("2.1", 1), encode(&r))
            .unwrap();
        add_study(&store, "2.1", 100);
        assert_eq!(
            page(&store),
            vec![("2.1".into(), StudyState::Receiving, Some(true))]
        );
    }
}
