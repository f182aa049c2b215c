//! Earlier copies of replaced instances, kept until the replacement is durable.
//!
//! An instance sent again replaces its file before the index commit that names the new
//! copy, and that commit is durable only after the next [`Store::flush`]; the sender is
//! acknowledged after it. Until then the copy it replaced is kept (a hard link under
//! `kept/`, [`FileArea::keep_previous`](super::files::FileArea::keep_previous)):
//! [`Pending`] holds the copies whose replacement is committed, and a flush drops those
//! committed before it began. After a crash, the store's open compares each kept
//! copy with the instance's record as the index then has it: the file whose identity (its
//! inode, [`InstanceRecord::file_id`]) the record names is put in place and the others are
//! removed, so a record never describes bytes it was not made from.

use super::{io_err, Store, StoreError};
use crate::model::InstanceRecord;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Kept copies whose replacement is committed but maybe not yet durable.
#[derive(Debug, Default)]
pub struct Pending(Mutex<Vec<PathBuf>>);

impl Pending {
    /// Notes a kept copy whose replacement was just committed.
    pub fn add(&self, kept: PathBuf) {
        self.lock().push(kept);
    }

    /// The copies noted so far: a flush that begins now makes their replacements durable.
    pub fn take(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.lock())
    }

    /// Gives back copies a failed flush did not make safe to drop.
    pub fn put_back(&self, copies: Vec<PathBuf>) {
        self.lock().extend(copies);
    }

    /// The copies noted so far, held by a flush that begins now: given back unless the
    /// flush ends and hands them on ([`Due::finish`]), so a flush dropped mid-way (a
    /// timeout around it) leaves them to the next.
    pub fn take_due(&self) -> Due<'_> {
        Due {
            pending: self,
            copies: Some(self.take()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Kept copies a flush in progress holds ([`Pending::take_due`]).
#[derive(Debug)]
pub struct Due<'a> {
    pending: &'a Pending,
    copies: Option<Vec<PathBuf>>,
}

impl Due<'_> {
    /// The flush ended: its copies, to drop or give back as it went.
    pub fn finish(mut self) -> Vec<PathBuf> {
        self.copies.take().unwrap_or_default()
    }
}

impl Drop for Due<'_> {
    fn drop(&mut self) {
        if let Some(copies) = self.copies.take() {
            self.pending.put_back(copies);
        }
    }
}

/// What start-up did with the kept copies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Copies put back in place: their replacement's commit was lost.
    pub restored: usize,
    /// Copies removed: the index names the file in place (or none of them).
    pub removed: usize,
}

/// The file the record names among the one in place and a kept copy.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    /// The file in place (or neither: the file in place stays).
    InPlace,
    /// The kept copy.
    Kept,
}

/// Which file `rec` describes: by inode when the record has one, else (records written
/// before identities were kept) by size, the file in place when both fit.
fn named(
    rec: &InstanceRecord,
    in_place: Option<&std::fs::Metadata>,
    kept: &std::fs::Metadata,
) -> Named {
    let fits = |m: &std::fs::Metadata| {
        if rec.file_id != 0 {
            m.ino() == rec.file_id
        } else {
            m.len() == rec.size
        }
    };
    match in_place {
        Some(m) if fits(m) => Named::InPlace,
        None => Named::Kept,
        _ if fits(kept) => Named::Kept,
        _ => Named::InPlace,
    }
}

impl Store {
    /// Drops the kept copies of replacements a flush that began after their commit made
    /// durable.
    pub(super) fn drop_durably_replaced(&self, copies: Vec<PathBuf>) {
        for kept in copies {
            if let Err(e) = self.files.drop_kept(Some(kept.clone())) {
                log::warn!(
                    "store: cannot remove the earlier copy {}: {e}",
                    kept.display()
                );
            }
        }
    }

    /// At open, after a crash: each copy kept for a replacement goes back in place when
    /// the index (whose commit of the replacement was lost) names it, and is removed
    /// otherwise. With an index rebuilt from the files (`rebuilt`) the files in place are
    /// the truth and every kept copy is removed.
    pub(super) fn recover_kept(&self, rebuilt: bool) -> Result<Recovery, StoreError> {
        let mut done = Recovery::default();
        for copy in self
            .files
            .kept_copies()
            .map_err(io_err("list kept copies"))?
        {
            let rec = if rebuilt || copy.sop_component.is_empty() {
                None
            } else {
                self.instance(&copy.sop_component)?
            };
            let restore = match rec {
                Some(rec) if !rec.pruned && Path::new(&rec.path) == copy.rel => {
                    let kept = std::fs::metadata(&copy.path).map_err(io_err("stat a kept copy"))?;
                    let in_place = std::fs::metadata(self.root().join(&copy.rel)).ok();
                    named(&rec, in_place.as_ref(), &kept) == Named::Kept
                }
                _ => false,
            };
            if restore {
                self.files
                    .restore_kept(&copy.path, &copy.rel)
                    .map_err(io_err("put a kept copy back"))?;
                log::warn!(
                    "store: {} put back to the copy its index record names (the commit of a \
                     copy received again was lost when the daemon stopped; that copy was never \
                     acknowledged)",
                    copy.rel.display()
                );
                done.restored += 1;
            } else {
                self.files
                    .drop_kept(Some(copy.path))
                    .map_err(io_err("remove a kept copy"))?;
                done.removed += 1;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pruning::tests::receive;

    /// What a crash leaves when the index lost its latest commits: the record as it was.
    fn lose_commits_back_to(store: &Store, rec: &InstanceRecord) {
        store
            .instances
            .insert(rec.sop_instance_uid.as_bytes(), super::super::encode(rec))
            .unwrap();
        store.db.flush().unwrap();
    }

    fn bytes(store: &Store, rec: &InstanceRecord) -> Vec<u8> {
        std::fs::read(store.root().join(&rec.path)).unwrap()
    }

    /// A flush dropped before it ended (a timeout around it: the watchdog's probe) gives
    /// the copies it held back to the next flush, which drops them once it made their
    /// replacements durable.
    #[tokio::test]
    async fn a_flush_dropped_mid_way_leaves_its_copies_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = dir.path().join("kept-copy.dcm");
        std::fs::write(&kept, b"earlier copy").unwrap();
        store.kept.add(kept.clone());
        // What a flush holds while it waits for the index (`Store::flush` takes its copies
        // so), dropped with the flush's future.
        let held = store.kept.take_due();
        assert!(store.kept.take().is_empty(), "held by the flush");
        drop(held);
        assert_eq!(store.kept.take(), vec![kept.clone()], "given back");
        store.kept.add(kept.clone());
        store.flush().await.unwrap();
        assert!(store.kept.take().is_empty());
        assert!(!kept.exists(), "dropped by the flush that ended");
    }

    /// A copy received again is committed; the daemon stops before a flush made the
    /// commit durable, so the index names the earlier copy: at start that copy is back in
    /// place, and nothing is left under `kept/`.
    #[test]
    fn a_lost_commit_puts_the_copy_the_index_names_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Store::open(dir.path()).unwrap();
            let first = receive(&store, "7.1", "7.1.1", 1);
            store.flush_blocking().unwrap();
            receive(&store, "7.1", "7.1.1", 2);
            assert_eq!(bytes(&store, &first), vec![2u8; 100]);
            assert_eq!(store.files().kept_copies().unwrap().len(), 1);
            lose_commits_back_to(&store, &first);
            first
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(bytes(&store, &first), vec![1u8; 100], "the indexed copy");
        assert_eq!(store.instance("7.1.1").unwrap().unwrap(), first);
        assert!(store.files().kept_copies().unwrap().is_empty());
    }

    /// The commit of the copy received again became durable, but the daemon stopped
    /// before the kept copy was dropped: the new copy stays, the kept one goes.
    #[test]
    fn a_durable_commit_keeps_the_new_copy() {
        let dir = tempfile::tempdir().unwrap();
        let second = {
            let store = Store::open(dir.path()).unwrap();
            receive(&store, "7.2", "7.2.1", 1);
            store.flush_blocking().unwrap();
            let second = receive(&store, "7.2", "7.2.1", 2);
            // Durable, but not through `Store::flush`, which would drop the kept copy.
            store.db.flush().unwrap();
            assert_eq!(store.files().kept_copies().unwrap().len(), 1);
            second
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(bytes(&store, &second), vec![2u8; 100]);
        assert!(store.files().kept_copies().unwrap().is_empty());
    }

    /// Three copies of one instance, the last two not yet flushed: whichever of them the
    /// index names after the crash is the one in place.
    #[test]
    fn among_several_replacements_the_named_copy_wins() {
        for named in 0..3u8 {
            let dir = tempfile::tempdir().unwrap();
            let recs = {
                let store = Store::open(dir.path()).unwrap();
                let a = receive(&store, "7.3", "7.3.1", 1);
                store.flush_blocking().unwrap();
                let b = receive(&store, "7.3", "7.3.1", 2);
                let c = receive(&store, "7.3", "7.3.1", 3);
                assert_eq!(store.files().kept_copies().unwrap().len(), 2);
                let recs = [a, b, c];
                lose_commits_back_to(&store, &recs[usize::from(named)]);
                recs
            };
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                bytes(&store, &recs[0]),
                vec![named + 1; 100],
                "index names copy {named}"
            );
            assert!(store.files().kept_copies().unwrap().is_empty());
        }
    }

    /// A record written before file identities were kept is matched by size; a copy whose
    /// record is gone, names another file or was pruned, and a name this store did not
    /// make, are removed without touching the file in place.
    #[test]
    fn records_without_identity_match_by_size_and_strays_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Store::open(dir.path()).unwrap();
            let first = receive(&store, "7.4", "7.4.1", 1);
            store.flush_blocking().unwrap();
            // A copy of another size replaces it; the index keeps the old record, which
            // has no identity.
            let mut f = store.files().incoming().unwrap();
            f.write(&[2u8; 50]).unwrap();
            let staged = f.finish().unwrap();
            let header = crate::store::header::Header {
                instance: InstanceRecord {
                    sop_instance_uid: "7.4.1".into(),
                    study_instance_uid: "7.4".into(),
                    ..Default::default()
                },
                study: Default::default(),
                identity_from_meta: None,
            };
            store
                .place_and_commit(staged, &header, "MODALITY", false, &[])
                .unwrap();
            let legacy = InstanceRecord {
                file_id: 0,
                ..first.clone()
            };
            lose_commits_back_to(&store, &legacy);
            std::fs::write(dir.path().join("kept/stray.dcm"), b"x").unwrap();
            std::fs::write(dir.path().join("kept/7.9_7.9.1_1-1.dcm"), b"y").unwrap();
            legacy
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(bytes(&store, &first), vec![1u8; 100]);
        assert!(store.files().kept_copies().unwrap().is_empty());
        assert!(store.instance("7.9.1").unwrap().is_none());
    }
}
