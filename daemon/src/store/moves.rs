//! Instances sent again under another study: the record moves to the new study's file in
//! one commit, and the earlier file — the instance under another study, often another
//! patient — must go once that commit is durable, or the new file must go when a crash
//! lost the commit (its sender was never acknowledged).
//!
//! Before the new file is placed, a durable note names both files (`Store::note_move`),
//! one note per instance and earlier file, so that moves in quick succession (A to B, then
//! B to C before the first was finished) each keep theirs. A note is cleared once its
//! earlier file is removed ([`Store::remove_superseded`]) or the commit failed and the new
//! file was taken back (`Store::clear_move`). At open, each note a crash left removes
//! whichever of its files the index does not name (`Store::recover_moves`), so no copy
//! outlives the moves; a file that cannot be removed is logged and its note kept for the
//! next start.

use super::{decode, encode, io_err, Store, StoreError};
use crate::model::InstanceRecord;
use serde::{Deserialize, Serialize};

/// The tree of the notes, keyed by SOP Instance UID.
const MOVES: &str = "instance_moves";

/// The key of a note: the SOP Instance UID, a zero byte, the earlier file.
fn note_key(sop: &str, from: &str) -> Vec<u8> {
    let mut key = sop.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(from.as_bytes());
    key
}

/// One instance moving from one file to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Move {
    /// The file the index named before (relative to the data folder).
    from: String,
    /// The file the move places.
    to: String,
}

impl Store {
    /// Notes durably that `sop` moves from file `from` to file `to` (both relative to the
    /// data folder), before the new file is placed.
    pub(super) fn note_move(&self, sop: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let note = Move {
            from: from.to_string(),
            to: to.to_string(),
        };
        self.tree(MOVES)?
            .insert(note_key(sop, from), encode(&note))?;
        self.db.flush()?;
        Ok(())
    }

    /// Clears the note of `sop` moving from `from` (its earlier file removed, or the move's
    /// commit failed and its file was taken back).
    pub(super) fn clear_move(&self, sop: &str, from: &str) -> Result<(), StoreError> {
        self.tree(MOVES)?.remove(note_key(sop, from))?;
        Ok(())
    }

    /// Removes the file of `previous`, an instance's record before it was sent again under
    /// another study (see [`Store::place_and_commit`]), once the index no longer names that
    /// file, and clears the move's note. Call it after [`Store::flush`]: until then a crash
    /// would bring the old record back (and the next open finishes the move as the index
    /// then says).
    /// Holds the instance's lock from the check to the removal: the same instance sent
    /// back to the earlier study meanwhile places its new file at the same path.
    pub fn remove_superseded(&self, previous: &InstanceRecord) -> Result<(), StoreError> {
        let _placing = self.instance_locks.hold(&previous.sop_instance_uid);
        let now = self.instance(&previous.sop_instance_uid)?;
        if now.is_some_and(|n| n.path != previous.path) {
            self.remove_file(&previous.path)?;
        }
        self.clear_move(&previous.sop_instance_uid, &previous.path)
    }

    /// At open: finishes each move a crash left noted by removing its files the index does
    /// not name (the earlier one when the move's commit is durable, the new one when it was
    /// lost; both of a move the next one superseded). A file that cannot be removed is
    /// logged and its note kept, for the next start. Returns how many files it removed.
    pub(super) fn recover_moves(&self) -> Result<u64, StoreError> {
        let tree = self.tree(MOVES)?;
        let mut removed = 0;
        for kv in tree.iter() {
            let (key, value) = kv?;
            let sop_end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            let sop = String::from_utf8_lossy(&key[..sop_end]).into_owned();
            let note = match decode::<Move>(&key, &value) {
                Ok(m) => m,
                Err(e) => {
                    log::error!("store: undecodable move note: {e}");
                    tree.remove(&key)?;
                    continue;
                }
            };
            // Without a record nothing says which copy is the instance: both stay.
            let Some(named) = self.instance(&sop)?.map(|r| r.path) else {
                tree.remove(&key)?;
                continue;
            };
            let mut kept = false;
            for rel in [&note.from, &note.to] {
                if *rel == named || !self.root().join(rel).exists() {
                    continue;
                }
                match self.remove_file(rel) {
                    Ok(()) => {
                        log::warn!(
                            "store: instance {sop} moved between studies before a stop; removed \
                             the copy the index does not name ({rel})"
                        );
                        removed += 1;
                    }
                    Err(e) => {
                        log::error!("store: {rel}, a copy of moved instance {sop}, stays: {e}");
                        kept = true;
                    }
                }
            }
            if !kept {
                tree.remove(&key)?;
            }
        }
        Ok(removed)
    }

    /// Removes a file of the data folder (gone already is fine), durably: its folder is
    /// synced before the caller clears the move's note, or a power cut could bring back
    /// a copy (often under another patient's study) that no note names any more, which
    /// nothing would then ever remove.
    fn remove_file(&self, rel: &str) -> Result<(), StoreError> {
        let path = self.root().join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove a superseded file")(e)),
        }
        match path.parent() {
            Some(dir) => match super::files::sync_dir(dir) {
                Ok(()) => Ok(()),
                // Its folder went with it (the study's last file): nothing left to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("sync the folder of a removed superseded file")(e)),
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pruning::tests::receive;

    fn exists(store: &Store, rel: &str) -> bool {
        store.root().join(rel).is_file()
    }

    /// An instance sent again under another study while the daemon stops: killed after
    /// the move's commit was durable, the next open removes the earlier file; killed
    /// before, it removes the new one (whose sender was never acknowledged); either way the
    /// file in place is the one the index names, and no note is left.
    #[test]
    fn a_move_cut_off_by_a_stop_leaves_only_the_file_the_index_names() {
        let dir = tempfile::tempdir().unwrap();
        let (first, moved) = {
            let store = Store::open(dir.path()).unwrap();
            let first = receive(&store, "7.1", "7.9", 1);
            let moved = receive(&store, "7.2", "7.9", 2);
            store.db.flush().unwrap();
            // Stopped before `remove_superseded`: both files, the index names the new one.
            assert!(exists(&store, &first.path) && exists(&store, &moved.path));
            (first, moved)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance("7.9").unwrap().unwrap().path, moved.path);
        assert!(
            !exists(&store, &first.path),
            "the earlier study's copy is gone"
        );
        assert!(exists(&store, &moved.path));
        assert_eq!(store.tree(MOVES).unwrap().len(), 0);

        // Moved back, and the commit lost: the index names the earlier file again.
        let back = receive(&store, "7.1", "7.9", 3);
        store
            .instances
            .insert("7.9".as_bytes(), encode(&moved))
            .unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance("7.9").unwrap().unwrap().path, moved.path);
        assert!(exists(&store, &moved.path));
        assert!(
            !exists(&store, &back.path),
            "the unacknowledged copy is gone"
        );
        assert_eq!(store.tree(MOVES).unwrap().len(), 0);
    }

    /// Two moves in quick succession (A to B, then B to C) before the first was finished:
    /// each keeps its note, the first one's finish does not clear the second's, and a
    /// stop then leaves only the file the index names.
    #[test]
    fn moves_in_quick_succession_keep_their_notes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = {
            let store = Store::open(dir.path()).unwrap();
            let a = receive(&store, "9.1", "9.9", 1);
            let b = receive(&store, "9.2", "9.9", 2);
            let c = receive(&store, "9.3", "9.9", 3);
            assert_eq!(store.tree(MOVES).unwrap().len(), 2);
            // The first move is finished; the second is not when the daemon stops.
            store.remove_superseded(&a).unwrap();
            assert_eq!(store.tree(MOVES).unwrap().len(), 1);
            store.db.flush().unwrap();
            (a, b, c)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance("9.9").unwrap().unwrap().path, c.path);
        assert!(!exists(&store, &a.path) && !exists(&store, &b.path));
        assert!(exists(&store, &c.path));
        assert_eq!(store.tree(MOVES).unwrap().len(), 0);
    }

    /// The move finished by the receiver (after its flush) removes the earlier file and
    /// its note; an instance sent again within its study needs no note.
    #[test]
    fn a_finished_move_leaves_no_note() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = receive(&store, "8.1", "8.9", 1);
        let again = receive(&store, "8.1", "8.9", 2);
        assert_eq!(first.path, again.path);
        assert_eq!(store.tree(MOVES).unwrap().len(), 0);
        receive(&store, "8.2", "8.9", 3);
        assert_eq!(store.tree(MOVES).unwrap().len(), 1);
        store.remove_superseded(&first).unwrap();
        assert!(!exists(&store, &first.path));
        assert_eq!(store.tree(MOVES).unwrap().len(), 0);
    }
}
