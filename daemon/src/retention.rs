//! Retention of received pixel data. Results, study records and index entries are kept,
//! and so are the objects this box generated (SR, Secondary Capture, Parametric Map:
//! small, and made once per report) and every instance an outbox entry still names;
//! only the Part 10 files of received instances are removed (the record is marked
//! `pruned`), in two cases:
//!
//! - files older than `retention.pixel_days` (0 = keep forever);
//! - while free disk space is below `retention.disk_reserve_mb`: files of studies whose
//!   processing is finished (`done` or `error`) go first, oldest study first. Studies still
//!   in the pipeline are never pruned; until space is freed, C-STORE answers A700.
//!
//! Each instance is decided inside the store ([`crate::store::pruning`]): a pass reads the
//! studies once, then per study claims the instances it may prune (re-checked and marked
//! in one transaction, so an instance received meanwhile, or a study receiving again, is
//! left) and removes their files once the marks are durable. Each study a pass prunes is
//! recorded in the audit trail, once per reason (age, disk), with the number of instances
//! and bytes marked pruned; the record is durable with the marks, before any file goes.
//! A pass interrupted after its marks (a crash, or an audit record that failed) is
//! completed at the next start and before the next pass ([`complete_interrupted`]): each
//! study whose marked files are still there is recorded again ("retention prune completed
//! after a restart"), and only then are they removed.

use crate::audit::{Audit, Event};
use crate::model::{InstanceRecord, StudyRecord, StudyState};
use crate::store::pruning::{Claimed, PruneRule, Removed};
use crate::store::{Store, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Files removed because of their age.
    pub expired: u64,
    /// Files removed to get back above the disk reserve.
    pub for_space: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Files removed that an interrupted pass had marked ([`complete_interrupted`]).
    pub completed: u64,
}

/// What a pass starts from: the studies, oldest last instance first, and the instances
/// the outbox still names. Read once; every decision is checked again in the store.
#[derive(Debug, Clone)]
struct Plan {
    studies: Vec<StudyRecord>,
    needed: HashSet<String>,
}

impl Plan {
    fn take(store: &Store) -> Result<Plan, StoreError> {
        // What the outbox still has to send (result objects to push) is never pruned.
        let needed = store.outbox_needs()?;
        let mut studies = store.studies()?;
        studies.sort_by_key(|s| s.last_received);
        Ok(Plan { studies, needed })
    }
}

/// One retention pass. Blocking (file system work): call from a blocking context.
pub fn prune(
    store: &Store,
    audit: &Audit,
    pixel_days: u32,
    reserve_bytes: u64,
    now: i64,
) -> Result<PruneReport, StoreError> {
    // What an earlier pass marked and did not record or remove goes first (cheap when
    // there is none).
    let done = complete_interrupted(store, audit, "after an interrupted pass")?;
    // Nothing to prune by age and enough free space: no need to read the outbox and the
    // studies (the common case, every pass).
    let mut report = if pixel_days == 0 && !below_reserve(store, reserve_bytes) {
        PruneReport::default()
    } else {
        let plan = Plan::take(store)?;
        apply(store, audit, &plan, pixel_days, reserve_bytes, now)?
    };
    report.completed = done.files;
    report.bytes += done.bytes;
    Ok(report)
}

/// Completes what an interrupted pass left (a crash, or an audit record that failed,
/// between the marks and the removal): records each study whose marked files are still
/// there as a retention deletion completed `when` ([`Event::retention_prune_completed`]),
/// then removes its files (the record is durable before any file goes). A record that
/// fails leaves the files for the next call. Blocking.
pub fn complete_interrupted(
    store: &Store,
    audit: &Audit,
    when: &str,
) -> Result<Removed, StoreError> {
    store.remove_pruned_leftovers(|study, claimed: &[Claimed]| {
        let bytes = claimed.iter().map(|c| c.size()).sum();
        audit
            .append(Event::retention_prune_completed(
                study,
                claimed.len() as u64,
                bytes,
                when,
            ))
            .map(|_| ())
    })
}

/// Whether free disk is below `reserve_bytes` (unknown counts as not below).
fn below_reserve(store: &Store, reserve_bytes: u64) -> bool {
    store
        .files()
        .free_bytes()
        .map(|free| free < reserve_bytes)
        .unwrap_or(false)
}

/// The pass over the studies of `plan`.
fn apply(
    store: &Store,
    audit: &Audit,
    plan: &Plan,
    pixel_days: u32,
    reserve_bytes: u64,
    now: i64,
) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    if pixel_days > 0 {
        let rule = PruneRule::ReceivedBefore(now - i64::from(pixel_days) * 86_400);
        for s in &plan.studies {
            let removed = prune_study(store, audit, plan, &s.study_instance_uid, rule)?;
            report.expired += removed.files;
            report.bytes += removed.bytes;
        }
    }
    let below = || below_reserve(store, reserve_bytes);
    if below() {
        // The states read at the start only choose the order; the claim checks them again.
        for s in plan
            .studies
            .iter()
            .filter(|s| matches!(s.state, StudyState::Done | StudyState::Error))
        {
            let removed = prune_study(
                store,
                audit,
                plan,
                &s.study_instance_uid,
                PruneRule::StudyFinished,
            )?;
            report.for_space += removed.files;
            report.bytes += removed.bytes;
            if !below() {
                break;
            }
        }
    }
    Ok(report)
}

/// Claims the instances of one study that `rule` admits, audits the claim and removes
/// their files.
fn prune_study(
    store: &Store,
    audit: &Audit,
    plan: &Plan,
    study_uid: &str,
    rule: PruneRule,
) -> Result<Removed, StoreError> {
    let candidates: Vec<InstanceRecord> = store
        .instances_of(study_uid)?
        .into_iter()
        .filter(|i| rule.admits_instance(i) && !plan.needed.contains(&i.sop_instance_uid))
        .collect();
    if candidates.is_empty() {
        return Ok(Removed::default());
    }
    let claimed = store.claim_for_pruning(study_uid, &candidates, rule, &plan.needed)?;
    if claimed.is_empty() {
        return Ok(Removed::default());
    }
    let bytes = claimed.iter().map(|c| c.size()).sum();
    // Should this record fail, the marks stay and the files too: the next pass (or start)
    // records and removes them ([`complete_interrupted`]).
    audit.append(Event::retention_prune(
        study_uid,
        claimed.len() as u64,
        bytes,
        rule.reason(),
    ))?;
    // Flushes the marks and the audit record before the first file goes.
    store.remove_pruned(&claimed)
}

/// First records and removes the files an interrupted pass left behind their pruned marks
/// ([`complete_interrupted`]); then runs a full pass at start and every `every`,
/// and an extra one whenever a check (every 30 s) finds free space below the reserve;
/// logs what was removed (each pruned study is also audited).
pub async fn run(
    store: Arc<Store>,
    audit: Arc<Audit>,
    pixel_days: u32,
    reserve_bytes: u64,
    every: Duration,
) {
    let check = Duration::from_secs(30);
    let mut since_full = every;
    // Files whose record was marked pruned before a crash removed them.
    let (s, a) = (store.clone(), audit.clone());
    match tokio::task::spawn_blocking(move || complete_interrupted(&s, &a, "after a restart")).await
    {
        Ok(Ok(r)) if r.files > 0 => log::info!(
            "retention: removed {} files left by an interrupted pass ({} MB)",
            r.files,
            r.bytes / 1_000_000
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            log::error!("retention: removing files left by an interrupted pass failed: {e}")
        }
        Err(e) => log::error!("retention clean-up task failed: {e}"),
    }
    loop {
        let below = store
            .files()
            .free_bytes()
            .map(|free| free < reserve_bytes)
            .unwrap_or(false);
        if since_full >= every || below {
            since_full = Duration::ZERO;
            let (s, a) = (store.clone(), audit.clone());
            let result = tokio::task::spawn_blocking(move || {
                prune(&s, &a, pixel_days, reserve_bytes, crate::clock::now_secs())
            })
            .await;
            match result {
                Ok(Ok(r)) if r.expired + r.for_space + r.completed > 0 => log::info!(
                    "retention: removed pixel data of {} expired and {} instances for disk space, and {} left by an interrupted pass ({} MB)",
                    r.expired,
                    r.for_space,
                    r.completed,
                    r.bytes / 1_000_000
                ),
                Ok(Ok(_)) if below => log::warn!(
                    "free disk below the reserve and nothing finished is left to prune; C-STORE answers A700"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::error!("retention pass failed: {e}"),
                Err(e) => log::error!("retention task failed: {e}"),
            }
        }
        tokio::time::sleep(check).await;
        since_full += check;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, study: &str, sop: &str, received_at: i64) {
        let mut f = store.files().incoming().unwrap();
        f.write(&[0u8; 1000]).unwrap();
        let staged = f.finish().unwrap();
        let rel = store.files().place(staged, study, sop).unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            path: rel.to_string_lossy().into(),
            size: 1000,
            received_at,
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
    }

    fn staged(store: &Store) -> crate::store::files::StagedFile {
        let mut f = store.files().incoming().unwrap();
        f.write(&[0u8; 500]).unwrap();
        f.finish().unwrap()
    }

    /// A study with a received image received at `received_at`, an SR this box generated
    /// whose PACS push is still queued, a Secondary Capture it generated (already
    /// delivered), and a received image that an outbox entry still names.
    fn study_with_results(store: &Store, received_at: i64) {
        put(store, "3.1", "3.1.1", received_at);
        put(store, "3.1", "3.1.2", received_at);
        let outbox = store
            .outbox(crate::store::outbox::OutboxLimits::default())
            .unwrap();
        let push = |sop: &str| crate::store::outbox::NewEntry {
            dest: crate::store::outbox::Destination::Pacs("main".into()),
            kind: crate::store::outbox::Kind::StructuredReport,
            report_id: "r-3.1".into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: crate::store::outbox::Payload::Dicom {
                sop_instance_uids: vec![sop.into()],
            },
        };
        for (sop, entries) in [("3.1.9", vec![push("3.1.9")]), ("3.1.8", vec![])] {
            let header = crate::store::header::Header {
                instance: InstanceRecord {
                    sop_instance_uid: sop.into(),
                    study_instance_uid: "3.1".into(),
                    ..Default::default()
                },
                study: StudyRecord::default(),
                identity_from_meta: None,
            };
            let batch = crate::store::outbox::Batch {
                outbox: &outbox,
                entries: &entries,
            };
            store
                .place_and_commit(staged(store), &header, "DULI", true, &[batch])
                .unwrap();
        }
        outbox.enqueue(&[push("3.1.2")]).unwrap();
    }

    fn assert_kept(dir: &std::path::Path, store: &Store, sops: &[&str]) {
        for sop in sops {
            let rec = store.instance(sop).unwrap().unwrap();
            assert!(!rec.pruned, "{sop} was marked pruned");
            assert!(dir.join(&rec.path).exists(), "the file of {sop} is gone");
        }
    }

    /// Results this box generated, and whatever the outbox still has to push, outlive the
    /// age limit; the received image past it goes as before.
    #[test]
    fn generated_objects_and_queued_pushes_survive_the_age_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let now = crate::clock::now_secs() + 40 * 86_400;
        study_with_results(&store, now - 40 * 86_400);
        let r = prune(&store, &audit, 30, 0, now).unwrap();
        assert_eq!(r.expired, 1);
        assert!(store.instance("3.1.1").unwrap().unwrap().pruned);
        assert_kept(dir.path(), &store, &["3.1.9", "3.1.8", "3.1.2"]);
    }

    /// The same below the disk reserve, in a finished study.
    #[test]
    fn generated_objects_and_queued_pushes_survive_the_disk_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        study_with_results(&store, 100);
        store.force_state("3.1", StudyState::Done);
        let r = prune(&store, &audit, 0, u64::MAX, crate::clock::now_secs()).unwrap();
        assert_eq!(r.for_space, 1);
        assert!(store.instance("3.1.1").unwrap().unwrap().pruned);
        assert_kept(dir.path(), &store, &["3.1.9", "3.1.8", "3.1.2"]);
    }

    /// A study that was done when the pass started and receives an instance before the
    /// pass reaches it is receiving again: the new instance is neither removed nor marked
    /// pruned, and neither is the rest of the study (it is in the pipeline again).
    #[test]
    fn an_instance_received_after_the_pass_started_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        put(&store, "4.1", "4.1.1", 100);
        store.force_state("4.1", StudyState::Done);
        let plan = Plan::take(&store).unwrap();
        // Acknowledged between the snapshot and the per-study step.
        put(&store, "4.1", "4.1.2", 200);
        assert_eq!(
            store.study("4.1").unwrap().unwrap().state,
            StudyState::Receiving
        );
        let r = apply(&store, &audit, &plan, 0, u64::MAX, 1000).unwrap();
        assert_eq!(r, PruneReport::default());
        for sop in ["4.1.1", "4.1.2"] {
            let rec = store.instance(sop).unwrap().unwrap();
            assert!(!rec.pruned, "{sop} was marked pruned");
            assert!(
                dir.path().join(&rec.path).exists(),
                "the file of {sop} is gone"
            );
        }
    }

    /// The retention records of the audit trail: (study, detail).
    fn pruned_studies(audit: &Audit) -> Vec<(String, String)> {
        audit
            .records(0, 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.detail.starts_with(crate::audit::RETENTION_PRUNE))
            .map(|r| (r.object.clone(), r.detail.clone()))
            .collect()
    }

    /// Every study a pass prunes leaves one audit record per reason, naming how many
    /// instances and bytes went; the chain still verifies.
    #[test]
    fn each_pruned_study_is_audited_once_per_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let now = 10_000_000;
        put(&store, "8.1", "8.1.1", now - 40 * 86_400);
        put(&store, "8.1", "8.1.2", now - 40 * 86_400);
        put(&store, "8.2", "8.2.1", now - 35 * 86_400);
        put(&store, "8.3", "8.3.1", now - 86_400);
        prune(&store, &audit, 30, 0, now).unwrap();
        assert_eq!(
            pruned_studies(&audit),
            [
                (
                    "8.1".to_string(),
                    "retention prune: 2 instances, 2000 bytes, reason age".to_string()
                ),
                (
                    "8.2".to_string(),
                    "retention prune: 1 instances, 1000 bytes, reason age".to_string()
                ),
            ]
        );
        // A pass that prunes nothing records nothing; one for space names its reason.
        prune(&store, &audit, 30, 0, now).unwrap();
        assert_eq!(pruned_studies(&audit).len(), 2);
        store.force_state("8.3", StudyState::Done);
        prune(&store, &audit, 0, u64::MAX, now).unwrap();
        let records = pruned_studies(&audit);
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[2],
            (
                "8.3".to_string(),
                "retention prune: 1 instances, 1000 bytes, reason disk".to_string()
            )
        );
        let rec = audit.records(0, 100).unwrap().pop().unwrap();
        assert_eq!((rec.actor.as_str(), rec.success), ("system", true));
        assert!(audit.verify().unwrap().broken.is_none());
    }

    /// A pass interrupted after its claim (a crash, or an audit record that failed) left
    /// instances marked pruned with their files still there and no record: the next pass
    /// records the study as a retention deletion before its files go, and only once.
    #[test]
    fn a_claim_left_without_its_record_is_recorded_before_its_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<String> = {
            let store = Store::open(dir.path()).unwrap();
            put(&store, "9.1", "9.1.1", 100);
            put(&store, "9.1", "9.1.2", 100);
            store.force_state("9.1", StudyState::Done);
            let candidates = store.instances_of("9.1").unwrap();
            let claimed = store
                .claim_for_pruning(
                    "9.1",
                    &candidates,
                    PruneRule::StudyFinished,
                    &HashSet::new(),
                )
                .unwrap();
            assert_eq!(claimed.len(), 2);
            // The marks are durable; then the crash (or the failed append): no record, no
            // removal.
            store.flush_blocking().unwrap();
            candidates.into_iter().map(|i| i.path).collect()
        };
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        assert!(paths.iter().all(|p| dir.path().join(p).exists()));
        let r = prune(&store, &audit, 0, 0, 1000).unwrap();
        assert_eq!((r.completed, r.bytes), (2, 2000));
        assert_eq!(
            pruned_studies(&audit),
            [(
                "9.1".to_string(),
                "retention prune completed after an interrupted pass: 2 instances, 2000 bytes"
                    .to_string()
            )]
        );
        assert!(paths.iter().all(|p| !dir.path().join(p).exists()));
        prune(&store, &audit, 0, 0, 1000).unwrap();
        assert_eq!(pruned_studies(&audit).len(), 1);
        assert!(audit.verify().unwrap().broken.is_none());
    }

    #[test]
    fn expired_pixel_data_goes_and_records_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let now = 10_000_000;
        put(&store, "1.1", "1.1.1", now - 40 * 86_400);
        put(&store, "1.2", "1.2.1", now - 86_400);
        let r = prune(&store, &audit, 30, 0, now).unwrap();
        assert_eq!(r.expired, 1);
        let old = store.instance("1.1.1").unwrap().unwrap();
        assert!(old.pruned);
        assert!(!dir.path().join(&old.path).exists());
        let young = store.instance("1.2.1").unwrap().unwrap();
        assert!(!young.pruned);
        assert!(dir.path().join(&young.path).exists());
        // study records are kept
        assert!(store.study("1.1").unwrap().is_some());
    }

    #[test]
    fn below_the_reserve_only_finished_studies_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        put(&store, "2.1", "2.1.1", 100);
        put(&store, "2.2", "2.2.1", 200);
        put(&store, "2.3", "2.3.1", 300);
        store.force_state("2.1", StudyState::Done);
        store.force_state("2.3", StudyState::Done);
        // An impossible reserve: everything finished goes, the rest stays.
        let r = prune(&store, &audit, 0, u64::MAX, 1000).unwrap();
        assert_eq!(r.for_space, 2);
        assert!(store.instance("2.1.1").unwrap().unwrap().pruned);
        assert!(store.instance("2.3.1").unwrap().unwrap().pruned);
        assert!(!store.instance("2.2.1").unwrap().unwrap().pruned);
    }
}
