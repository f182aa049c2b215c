//! Pruning of received pixel data (for retention), decided per instance inside the store.
//!
//! An instance's file goes in three steps, so that nothing acknowledged or still needed is
//! lost, and no crash leaves the index naming a file that is gone:
//!
//! 1. [`Store::claim_for_pruning`] re-checks, in one transaction, the study's state and
//!    each instance's record (unchanged since the caller read it, received, not named by
//!    the outbox) and marks the instances it accepts `pruned`;
//! 2. [`Store::remove_pruned`] makes those marks durable, then removes each file, holding
//!    that instance's placement lock and only while its record is still the one that was
//!    marked: a copy of the same SOP Instance placed and committed meanwhile
//!    ([`Store::place_and_commit`] holds the same lock from placement to commit) is never
//!    removed;
//! 3. a pass interrupted between the two (a crash, or an audit record that failed) leaves
//!    marks whose files are still there: [`Store::remove_pruned_leftovers`] (at start-up
//!    and before each pass) removes them, study by study once the caller has recorded
//!    the study in the audit trail.
//!
//! Objects this box generated are never pruned, nor any instance an outbox entry still
//! names ([`Store::outbox_needs`]).

use super::outbox::{self, Entry, Payload};
use super::{decode, encode, io_err, unwrap_tx, Store, StoreError};
use crate::model::{InstanceRecord, StudyRecord, StudyState};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Number of placement locks (instances share them by hash).
const LOCK_STRIPES: usize = 64;

/// Serialises, per SOP Instance UID, placing a file and committing its record against
/// removing a pruned file (striped: unrelated instances rarely share a lock).
#[derive(Debug)]
pub(super) struct InstanceLocks([Mutex<()>; LOCK_STRIPES]);

impl InstanceLocks {
    /// A new set of locks.
    pub(super) fn new() -> InstanceLocks {
        InstanceLocks(std::array::from_fn(|_| Mutex::new(())))
    }

    /// Holds the lock of `sop_uid` until the guard is dropped.
    pub(super) fn hold(&self, sop_uid: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sop_uid.hash(&mut h);
        let i = (h.finish() % LOCK_STRIPES as u64) as usize;
        self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What allows an instance's pixel data to be pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneRule {
    /// Received before this time (seconds since the epoch), whatever its study's state.
    ReceivedBefore(i64),
    /// Its study's processing is finished (`done` or `error`): pruned to free disk space.
    StudyFinished,
}

impl PruneRule {
    /// Why the rule prunes, as the audit trail names it: `age` or `disk`.
    pub fn reason(self) -> &'static str {
        match self {
            PruneRule::ReceivedBefore(_) => "age",
            PruneRule::StudyFinished => "disk",
        }
    }

    /// Whether the rule allows pruning in a study in `state`.
    fn admits_study(self, state: StudyState) -> bool {
        match self {
            PruneRule::ReceivedBefore(_) => true,
            PruneRule::StudyFinished => matches!(state, StudyState::Done | StudyState::Error),
        }
    }

    /// Whether the rule allows pruning `inst` (not yet pruned, received, old enough).
    pub fn admits_instance(self, inst: &InstanceRecord) -> bool {
        let old_enough = match self {
            PruneRule::ReceivedBefore(cutoff) => inst.received_at < cutoff,
            PruneRule::StudyFinished => true,
        };
        old_enough && !inst.pruned && !inst.generated
    }
}

/// An instance marked pruned by [`Store::claim_for_pruning`], whose file
/// [`Store::remove_pruned`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    sop_instance_uid: String,
    study_instance_uid: String,
    path: String,
    received_at: i64,
    size: u64,
}

impl Claimed {
    fn of(rec: &InstanceRecord) -> Claimed {
        Claimed {
            sop_instance_uid: rec.sop_instance_uid.clone(),
            study_instance_uid: rec.study_instance_uid.clone(),
            path: rec.path.clone(),
            received_at: rec.received_at,
            size: rec.size,
        }
    }

    /// Size of its file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// What [`Store::remove_pruned`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Set in the store's meta tree while a claim's files may still be on disk.
const PRUNING_MARK: &str = "pruning_in_progress";

impl Store {
    /// The SOP Instance UIDs that outbox entries (queued, retrying or dead, which a
    /// technician can re-queue) still name in a DICOM push: their files must stay until
    /// the entry is delivered. Undecodable entries are logged and skipped (the outbox
    /// skips them too).
    pub fn outbox_needs(&self) -> Result<HashSet<String>, StoreError> {
        let mut needed = HashSet::new();
        for kv in self.tree(outbox::TREE)?.iter() {
            let (k, v) = kv?;
            match decode::<Entry>(&k, &v) {
                Ok(Entry {
                    payload: Payload::Dicom { sop_instance_uids },
                    ..
                }) => needed.extend(sop_instance_uids),
                Ok(_) => {}
                Err(e) => log::error!("retention: skipping undecodable outbox entry: {e}"),
            }
        }
        Ok(needed)
    }

    /// Marks pruned, in one transaction, those of `candidates` (instances of study
    /// `study_uid` as the caller read them) that may still be pruned: the study exists and
    /// `rule` admits its current state; the instance's current record is in that study,
    /// has the path and receive time the caller read, is neither pruned nor generated,
    /// `rule` admits it, and `keep` (what the outbox still names, [`Store::outbox_needs`];
    /// new entries only ever name objects generated in the same transaction) does not
    /// name it. Returns what it marked; their files stay until [`Store::remove_pruned`].
    pub fn claim_for_pruning(
        &self,
        study_uid: &str,
        candidates: &[InstanceRecord],
        rule: PruneRule,
        keep: &HashSet<String>,
    ) -> Result<Vec<Claimed>, StoreError> {
        // Set before any mark, cleared once the claim's files are gone: a start-up after a
        // crash in between looks for leftovers, every other start does not.
        self.meta.insert(PRUNING_MARK, &[1u8])?;
        let pending_tree = self.tree(super::results::PENDING_HEATMAPS_TREE)?;
        // Every image of the study (the claim checks the heatmap marks of them all).
        let mut prefix = study_uid.as_bytes().to_vec();
        prefix.push(0);
        let mut study_sops: Vec<String> = candidates
            .iter()
            .map(|c| c.sop_instance_uid.clone())
            .collect();
        for key in self.study_instances.scan_prefix(&prefix).keys() {
            let key = key?;
            study_sops.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        let trees = (&self.instances, &self.studies, &pending_tree);
        let result = trees.transaction(|(instances, studies, pending)| {
            let mut claimed = Vec::new();
            let study = match studies.get(study_uid.as_bytes())? {
                Some(v) => serde_json::from_slice::<StudyRecord>(&v).ok(),
                None => None,
            };
            let Some(study) = study.filter(|s| rule.admits_study(s.state)) else {
                return Ok(claimed);
            };
            // While a heatmap of the study's result is still to be made, none of its
            // images' pixels go: the Parametric Map and Secondary Capture are made, once
            // the last heatmap settles, from whichever image explains the finding best,
            // which may be one whose own heatmap is long done.
            let mut heatmap_pending = false;
            for sop in &study_sops {
                let key = super::results::pending_key(study_uid, study.result_version, sop);
                if pending.get(key)?.is_some() {
                    heatmap_pending = true;
                    break;
                }
            }
            for cand in candidates {
                let key = cand.sop_instance_uid.as_bytes();
                let Some(current) = instances.get(key)? else {
                    continue;
                };
                let Ok(mut current) = serde_json::from_slice::<InstanceRecord>(&current) else {
                    continue;
                };
                let unchanged = current.study_instance_uid == study_uid
                    && current.path == cand.path
                    && current.received_at == cand.received_at;
                if !unchanged
                    || !rule.admits_instance(&current)
                    || keep.contains(&current.sop_instance_uid)
                    || heatmap_pending
                {
                    continue;
                }
                current.pruned = true;
                instances.insert(key, encode(&current))?;
                claimed.push(Claimed::of(&current));
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(claimed)
        });
        let claimed = unwrap_tx(result)?;
        if claimed.is_empty() {
            self.meta.remove(PRUNING_MARK)?;
        }
        Ok(claimed)
    }

    /// Removes the files of `claimed` ([`Store::claim_for_pruning`]): first makes the
    /// marks durable, then removes each file while holding its instance's placement lock,
    /// and only if its record is still marked pruned with the path and receive time that
    /// were claimed (a copy sent again meanwhile is committed unpruned and stays).
    /// Blocking (file system work).
    pub fn remove_pruned(&self, claimed: &[Claimed]) -> Result<Removed, StoreError> {
        let removed = self.remove_claimed(claimed)?;
        self.meta.remove(PRUNING_MARK)?;
        Ok(removed)
    }

    /// [`Store::remove_pruned`] without clearing the pruning mark.
    fn remove_claimed(&self, claimed: &[Claimed]) -> Result<Removed, StoreError> {
        let mut removed = Removed::default();
        if claimed.is_empty() {
            return Ok(removed);
        }
        self.flush_blocking()?;
        for c in claimed {
            let _placing = self.instance_locks.hold(&c.sop_instance_uid);
            let still_claimed = self
                .instance(&c.sop_instance_uid)?
                .is_some_and(|r| r.pruned && r.path == c.path && r.received_at == c.received_at);
            if !still_claimed {
                continue;
            }
            self.files
                .remove(Path::new(&c.path))
                .map_err(io_err(format!("remove {}", c.path)))?;
            removed.files += 1;
            removed.bytes += c.size;
        }
        Ok(removed)
    }

    /// Removes the files that records marked pruned still name, left by a pass interrupted
    /// between the mark and the removal (a crash, or an audit record that failed), study
    /// by study: `record` is given the study and its leftovers first (the caller records
    /// the deletion in the audit trail), and that study's files go only once it succeeded,
    /// after a flush. A `record` error stops there and leaves the pruning mark, so a later
    /// call tries again; the mark is cleared once every study is done. Reads every instance
    /// record, but only after such an interruption (the mark is still set): call at
    /// start-up and before a pass. Blocking.
    pub fn remove_pruned_leftovers(
        &self,
        mut record: impl FnMut(&str, &[Claimed]) -> Result<(), StoreError>,
    ) -> Result<Removed, StoreError> {
        if self.meta.get(PRUNING_MARK)?.is_none() {
            return Ok(Removed::default());
        }
        let mut left: std::collections::BTreeMap<String, Vec<Claimed>> = Default::default();
        for kv in self.instances.iter() {
            let (k, v) = kv?;
            let rec: InstanceRecord = match decode(&k, &v) {
                Ok(rec) => rec,
                Err(e) => {
                    log::error!("index: passing over an instance record: {e}");
                    continue;
                }
            };
            if rec.pruned && !rec.generated && self.root().join(&rec.path).exists() {
                left.entry(rec.study_instance_uid.clone())
                    .or_default()
                    .push(Claimed::of(&rec));
            }
        }
        let mut removed = Removed::default();
        for (study, claimed) in &left {
            record(study, claimed)?;
            let r = self.remove_claimed(claimed)?;
            removed.files += r.files;
            removed.bytes += r.bytes;
        }
        self.meta.remove(PRUNING_MARK)?;
        Ok(removed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::header::Header;

    pub(crate) fn staged(store: &Store, byte: u8) -> crate::store::files::StagedFile {
        let mut f = store.files().incoming().unwrap();
        f.write(&[byte; 100]).unwrap();
        f.finish().unwrap()
    }

    /// Receives (places and commits) a copy of instance `sop` of study `study` whose
    /// bytes are all `byte`, as a C-STORE does.
    pub(crate) fn receive(store: &Store, study: &str, sop: &str, byte: u8) -> InstanceRecord {
        let header = Header {
            instance: InstanceRecord {
                sop_instance_uid: sop.into(),
                study_instance_uid: study.into(),
                ..Default::default()
            },
            study: StudyRecord::default(),
            identity_from_meta: None,
        };
        store
            .place_and_commit(staged(store, byte), &header, "MODALITY", false, &[])
            .unwrap()
            .0
    }

    /// An index commit that fails after the file was placed (a full disk) leaves the
    /// files as the index says: an earlier copy is put back, a new instance's file is
    /// removed, and no kept copy stays behind; a commit that succeeds replaces the copy.
    #[test]
    fn a_failed_commit_puts_the_earlier_copy_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = receive(&store, "6.1", "6.1.1", 1);
        let path = store.root().join(&first.path);
        let header = |sop: &str| Header {
            instance: InstanceRecord {
                sop_instance_uid: sop.into(),
                study_instance_uid: "6.1".into(),
                ..Default::default()
            },
            study: StudyRecord::default(),
            identity_from_meta: None,
        };
        let fail = |sop: &str| {
            *crate::store::instances::FAIL_COMMIT_OF.lock().unwrap() = Some(sop.into());
        };
        fail("6.1.1");
        let e = store.place_and_commit(staged(&store, 2), &header("6.1.1"), "MODALITY", false, &[]);
        assert!(e.is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![1u8; 100],
            "earlier copy back"
        );
        assert!(store.files().kept_copies().unwrap().is_empty());
        fail("6.1.2");
        let e = store.place_and_commit(staged(&store, 2), &header("6.1.2"), "MODALITY", false, &[]);
        assert!(e.is_err());
        let placed = store
            .root()
            .join(crate::store::files::FileArea::relative_path("6.1", "6.1.2"));
        assert!(!placed.exists(), "a new instance's file is removed");
        assert!(store.instance("6.1.2").unwrap().is_none());
        receive(&store, "6.1", "6.1.1", 3);
        assert_eq!(std::fs::read(&path).unwrap(), vec![3u8; 100]);
        assert_eq!(
            store.files().kept_copies().unwrap().len(),
            1,
            "kept until the commit is durable"
        );
        store.flush_blocking().unwrap();
        assert!(store.files().kept_copies().unwrap().is_empty());
    }

    /// A copy of an instance sent again after its old copy was claimed is neither removed
    /// nor left marked pruned: the removal sees that the record is no longer the claimed one.
    #[test]
    fn a_copy_sent_again_after_the_claim_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = receive(&store, "5.1", "5.1.1", 1);
        store.force_state("5.1", StudyState::Done);
        let claimed = store
            .claim_for_pruning(
                "5.1",
                std::slice::from_ref(&old),
                PruneRule::StudyFinished,
                &HashSet::new(),
            )
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(store.instance("5.1.1").unwrap().unwrap().pruned);
        // The modality sends it again (same path) before the file is removed.
        let again = receive(&store, "5.1", "5.1.1", 2);
        assert_eq!(again.path, old.path);
        let removed = store.remove_pruned(&claimed).unwrap();
        assert_eq!(removed, Removed::default());
        let rec = store.instance("5.1.1").unwrap().unwrap();
        assert!(!rec.pruned);
        assert_eq!(
            std::fs::read(dir.path().join(&rec.path)).unwrap(),
            [2u8; 100]
        );
    }

    /// An image of a finished study whose heatmap is still to be made keeps its pixels
    /// (the heatmap and the objects made from it read them); once the heatmap is settled
    /// it may be pruned.
    #[test]
    fn an_image_whose_heatmap_is_pending_is_not_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = receive(&store, "5.7", "5.7.1", 1);
        store.force_state("5.7", StudyState::Done);
        store.update_study("5.7", |s| s.result_version = 2).unwrap();
        let mark = super::super::results::pending_key("5.7", 2, "5.7.1");
        let pending = store
            .tree(super::super::results::PENDING_HEATMAPS_TREE)
            .unwrap();
        pending.insert(&mark, &[1u8]).unwrap();
        let claim = || {
            store
                .claim_for_pruning(
                    "5.7",
                    std::slice::from_ref(&image),
                    PruneRule::StudyFinished,
                    &HashSet::new(),
                )
                .unwrap()
        };
        assert!(claim().is_empty());
        assert!(!store.instance("5.7.1").unwrap().unwrap().pruned);
        pending.remove(&mark).unwrap();
        assert_eq!(claim().len(), 1);
    }

    /// A copy placed while its old copy is claimed, and not yet committed, is not removed:
    /// the removal waits for the placement lock, then sees the committed copy.
    #[test]
    fn the_removal_waits_for_a_placement_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = receive(&store, "5.2", "5.2.1", 1);
        store.force_state("5.2", StudyState::Done);
        let claimed = store
            .claim_for_pruning(
                "5.2",
                std::slice::from_ref(&old),
                PruneRule::StudyFinished,
                &HashSet::new(),
            )
            .unwrap();
        assert_eq!(claimed.len(), 1);
        // A C-STORE of the same instance: placed, not yet committed (as in place_and_commit).
        let placing = store.instance_locks.hold("5.2.1");
        store
            .files()
            .place(staged(&store, 2), "5.2", "5.2.1")
            .unwrap();
        std::thread::scope(|scope| {
            let removal = scope.spawn(|| store.remove_pruned(&claimed).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!removal.is_finished(), "the removal did not wait");
            let again = InstanceRecord {
                received_at: old.received_at + 1,
                pruned: false,
                ..old.clone()
            };
            store
                .commit_instance(&again, &StudyRecord::default())
                .unwrap();
            drop(placing);
            assert_eq!(removal.join().unwrap(), Removed::default());
        });
        let rec = store.instance("5.2.1").unwrap().unwrap();
        assert!(!rec.pruned);
        assert_eq!(
            std::fs::read(dir.path().join(&rec.path)).unwrap(),
            [2u8; 100]
        );
    }

    /// The claim re-checks everything in its transaction: a study that is receiving
    /// again, a record that changed, a generated object and one the outbox names are left.
    #[test]
    fn the_claim_refuses_what_changed_or_must_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = receive(&store, "6.1", "6.1.1", 1);
        let b = receive(&store, "6.1", "6.1.2", 1);
        let c = receive(&store, "6.1", "6.1.3", 1);
        store.force_state("6.1", StudyState::Done);
        let keep: HashSet<String> = ["6.1.3".to_string()].into();
        let stale = InstanceRecord {
            received_at: b.received_at - 1,
            ..b.clone()
        };
        let generated = InstanceRecord {
            generated: true,
            ..a.clone()
        };
        crate::store::records::update_json(&store.instances, b"6.1.1", |r: &mut InstanceRecord| {
            r.generated = true
        })
        .unwrap();
        let claimed = store
            .claim_for_pruning(
                "6.1",
                &[generated, stale, c],
                PruneRule::StudyFinished,
                &keep,
            )
            .unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        // A study receiving again is not pruned for space; by age it still is.
        receive(&store, "6.1", "6.1.4", 1);
        let claimed = store
            .claim_for_pruning(
                "6.1",
                std::slice::from_ref(&b),
                PruneRule::StudyFinished,
                &keep,
            )
            .unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        let claimed = store
            .claim_for_pruning(
                "6.1",
                std::slice::from_ref(&b),
                PruneRule::ReceivedBefore(b.received_at + 1),
                &keep,
            )
            .unwrap();
        assert_eq!(claimed.len(), 1);
    }

    /// A crash between the durable mark and the removal leaves the file: the clean-up at
    /// start-up removes it, and the record stays marked.
    /// After a pass that removed what it claimed, no pruning mark is left, so the next
    /// start does not read every instance record for leftovers.
    #[test]
    fn a_finished_pass_leaves_no_pruning_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = receive(&store, "8.1", "8.1.1", 1);
        store.force_state("8.1", StudyState::Done);
        let claimed = store
            .claim_for_pruning(
                "8.1",
                std::slice::from_ref(&rec),
                PruneRule::StudyFinished,
                &HashSet::new(),
            )
            .unwrap();
        assert!(store.meta.get(PRUNING_MARK).unwrap().is_some());
        assert_eq!(store.remove_pruned(&claimed).unwrap().files, 1);
        assert!(store.meta.get(PRUNING_MARK).unwrap().is_none());
        let nothing = store
            .remove_pruned_leftovers(|study, _| panic!("{study} recorded"))
            .unwrap();
        assert_eq!(nothing, Removed::default());
    }

    #[test]
    fn leftovers_of_a_crash_between_mark_and_removal_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let store = Store::open(dir.path()).unwrap();
            let rec = receive(&store, "7.1", "7.1.1", 1);
            receive(&store, "7.1", "7.1.2", 1);
            store.force_state("7.1", StudyState::Done);
            let claimed = store
                .claim_for_pruning(
                    "7.1",
                    std::slice::from_ref(&rec),
                    PruneRule::StudyFinished,
                    &HashSet::new(),
                )
                .unwrap();
            assert_eq!(claimed.len(), 1);
            store.flush_blocking().unwrap();
            rec.path
        };
        assert!(dir.path().join(&path).exists());
        let store = Store::open(dir.path()).unwrap();
        // A record that fails leaves the file and the mark; the next call removes it,
        // having been given the study to record first.
        let failed =
            store.remove_pruned_leftovers(|_, _| Err(StoreError::UnknownStudy("x".into())));
        assert!(failed.is_err());
        assert!(dir.path().join(&path).exists());
        let mut recorded = Vec::new();
        let removed = store
            .remove_pruned_leftovers(|study, claimed| {
                recorded.push((study.to_string(), claimed.len()));
                Ok(())
            })
            .unwrap();
        assert_eq!(recorded, [("7.1".to_string(), 1)]);
        assert_eq!((removed.files, removed.bytes), (1, 100));
        assert!(!dir.path().join(&path).exists());
        assert!(store.instance("7.1.1").unwrap().unwrap().pruned);
        let other = store.instance("7.1.2").unwrap().unwrap();
        assert!(dir.path().join(other.path).exists());
    }
}
