//! The head of the trail kept outside the index ([`ANCHOR_FILE`]): the last record's
//! sequence number and hash and the last [`ANCHOR_TAIL`] records, rewritten with every
//! appended record (appends are serialised, so writes are too).
//!
//! Layout: two slots in one file, at offset 0 and [`SLOT`]; each holds the length of its
//! JSON (`u32`, little-endian), the SHA-256 of that JSON, then the JSON. Writes alternate
//! between the slots, one positioned write each (no new file, no rename: an append costs
//! tens of microseconds), so a write cut off midway (the process killed) spoils at most the
//! slot it was writing, and the other one, a record older, is read. The file is synced to
//! disk at most [`ANCHOR_SYNC`] apart and when the trail is closed: after a power cut it
//! names a record at most that much older, which still shows a lost index.

use super::{Record, ANCHOR_FILE, ANCHOR_SYNC, ANCHOR_TAIL};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The size of one slot: a tail whose JSON would not fit keeps fewer records.
pub const SLOT: u64 = 512 * 1024;
/// Length and checksum before each slot's JSON.
const SLOT_HEADER: usize = 4 + 32;

/// What a slot of [`ANCHOR_FILE`] holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AnchorFile {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The last records, oldest first, the last one `seq`.
    pub tail: Vec<Record>,
}

/// Why the anchor could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnchorError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither slot holds a whole, checksummed anchor.
    #[error("{path}: neither slot holds a readable anchor ({why})")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why each slot was refused.
        why: String,
    },
}

/// Why a slot holds no anchor.
#[derive(Debug, thiserror::Error)]
pub(super) enum SlotError {
    /// Nothing was ever written there.
    #[error("empty")]
    Empty,
    /// The length before the JSON is 0 or larger than a slot.
    #[error("length {0} out of range")]
    Length(usize),
    /// The file ends inside the JSON.
    #[error("cut short")]
    CutShort,
    /// The JSON does not match its checksum.
    #[error("checksum mismatch (a write cut off)")]
    Checksum,
    /// The JSON does not decode.
    #[error("does not parse: {0}")]
    Parse(#[from] serde_json::Error),
}

/// What changes with each write.
#[derive(Debug, Default)]
struct State {
    /// The last records, oldest first.
    records: VecDeque<Record>,
    /// The file, once opened for writing.
    file: Option<File>,
    /// The slot the next write goes to (0 or 1).
    next: u64,
    /// When the file was last synced.
    synced_at: Option<Instant>,
    /// Whether it was written since.
    dirty: bool,
}

/// The anchor of one trail.
#[derive(Debug)]
pub(super) struct Anchor {
    path: PathBuf,
    state: Mutex<State>,
    /// Set while writing fails (logged once per failing spell, not once per record).
    failing: AtomicBool,
}

impl Anchor {
    /// The anchor of the trail whose data directory is `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Anchor {
        Anchor {
            path: data_dir.join(ANCHOR_FILE),
            state: Mutex::new(State::default()),
            failing: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The anchor on disk, from the slot naming the later record; `None` when there is
    /// none (a new store, or one older than the anchor). Notes which slot to write next:
    /// the other one.
    pub fn read(&self) -> Result<Option<AnchorFile>, AnchorError> {
        let read_err = |source| AnchorError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        if !file.metadata().map_err(read_err)?.is_file() {
            return Err(read_err(std::io::Error::other("not a regular file")));
        }
        let mut bytes = Vec::new();
        file.take(2 * SLOT)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let slots: Vec<Result<AnchorFile, SlotError>> = (0..2u64)
            .map(|i| {
                let start = (i * SLOT) as usize;
                decode_slot(bytes.get(start..).unwrap_or_default())
            })
            .collect();
        let best = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().ok().map(|a| (i as u64, a)))
            .max_by_key(|(_, a)| a.seq);
        match best {
            Some((slot, a)) => {
                self.state().next = 1 - slot;
                Ok(Some(a.clone()))
            }
            None => Err(AnchorError::Unreadable {
                path: self.path.clone(),
                why: slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().err().map(|e| format!("slot {i}: {e}")))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Starts the tail from `records` (the trail's last ones, oldest first).
    pub fn reset(&self, records: Vec<Record>) {
        self.state().records = records.into();
    }

    /// Adds `rec` (just appended) to the tail and writes the anchor, synced when the last
    /// sync is [`ANCHOR_SYNC`] ago. A failure is logged, not returned: the record itself
    /// is in the trail, and an anchor left behind only names an earlier record of it.
    pub fn note(&self, rec: &Record) {
        let mut state = self.state();
        if state.records.len() >= ANCHOR_TAIL {
            state.records.pop_front();
        }
        state.records.push_back(rec.clone());
        let due = state.synced_at.is_none_or(|at| at.elapsed() >= ANCHOR_SYNC);
        self.write(&mut state, due);
    }

    /// Writes the anchor of the tail as it stands, synced.
    pub fn rewrite(&self) {
        let mut state = self.state();
        self.write(&mut state, true);
    }

    /// Writes the tail (nothing when it is empty) into the next slot, and syncs the file
    /// when `sync`.
    fn write(&self, state: &mut State, sync: bool) {
        let Some(last) = state.records.back() else {
            return;
        };
        let seq = last.seq;
        match self.write_slot(state, sync) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::info!("audit trail: {} written again", self.path.display());
                }
            }
            Err(e) => {
                // Reopened at the next write.
                state.file = None;
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "audit trail: cannot write its anchor {} ({e}); a lost index would not be noticed past record {seq}",
                        self.path.display()
                    );
                }
            }
        }
    }

    fn write_slot(&self, state: &mut State, sync: bool) -> std::io::Result<()> {
        let bytes = encode_slot(&state.records);
        if state.file.is_none() {
            state.file = Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                    .open(&self.path)?,
            );
        }
        let file = state
            .file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no file"))?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        file.write_all_at(&bytes, state.next * SLOT)?;
        state.next = 1 - state.next;
        state.dirty = true;
        if sync {
            file.sync_data()?;
            state.synced_at = Some(Instant::now());
            state.dirty = false;
        }
        Ok(())
    }
}

impl Drop for Anchor {
    /// The trail is closed: what was written since the last sync is made durable.
    fn drop(&mut self) {
        let state = self.state();
        if let (true, Some(file)) = (state.dirty, state.file.as_ref()) {
            if let Err(e) = file.sync_data() {
                log::error!("audit trail: cannot sync {} ({e})", self.path.display());
            }
        }
    }
}

/// One slot's bytes for `records`: length, SHA-256 and JSON, with the oldest records left
/// out until the JSON fits in a slot (the last record's sequence number and hash always
/// do).
fn encode_slot(records: &VecDeque<Record>) -> Vec<u8> {
    let Some(last) = records.back() else {
        return Vec::new();
    };
    let mut skip = 0;
    loop {
        let file = AnchorFile {
            seq: last.seq,
            hash: last.hash.clone(),
            tail: records.iter().skip(skip).cloned().collect(),
        };
        let json = crate::store::encode(&file);
        if json.len() + SLOT_HEADER <= SLOT as usize || file.tail.is_empty() {
            let mut out = Vec::with_capacity(SLOT_HEADER + json.len());
            out.extend_from_slice(&(json.len() as u32).to_le_bytes());
            out.extend_from_slice(digest(&SHA256, &json).as_ref());
            out.extend_from_slice(&json);
            return out;
        }
        skip = (skip + 1).max(file.tail.len() / 2).min(records.len());
    }
}

/// The anchor in one slot's bytes, or why there is none.
fn decode_slot(bytes: &[u8]) -> Result<AnchorFile, SlotError> {
    let header = bytes.get(..SLOT_HEADER).ok_or(SlotError::Empty)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > SLOT as usize - SLOT_HEADER {
        return Err(SlotError::Length(len));
    }
    let json = bytes
        .get(SLOT_HEADER..SLOT_HEADER + len)
        .ok_or(SlotError::CutShort)?;
    if digest(&SHA256, json).as_ref() != &header[4..] {
        return Err(SlotError::Checksum);
    }
    Ok(serde_json::from_slice(json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};

    fn rec(seq: u64, detail: &str) -> Record {
        Record {
            seq,
            at_ms: 0,
            event: Event::new("x", Action::Other, "y").detail(detail.to_string()),
            prev: String::new(),
            hash: format!("h{seq}"),
        }
    }

    /// Writes alternate between the slots; a slot spoilt midway (a write cut off) leaves
    /// the other, one record older, to be read; both spoilt is an error naming each.
    #[test]
    fn a_cut_off_write_leaves_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let anchor = Anchor::in_dir(dir.path());
        for seq in 0..3 {
            anchor.note(&rec(seq, "d"));
        }
        drop(anchor);
        let anchor = Anchor::in_dir(dir.path());
        let a = anchor.read().unwrap().unwrap();
        assert_eq!((a.seq, a.tail.len()), (2, 3));
        // Record 2 went to slot 0 (0, 1, 0): spoil its JSON.
        let path = dir.path().join(ANCHOR_FILE);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"XXXX", SLOT_HEADER as u64 + 10).unwrap();
        let a = anchor.read().unwrap().unwrap();
        assert_eq!(a.seq, 1, "the other slot");
        // The next write goes to the spoilt slot, not over the good one.
        anchor.reset(a.tail);
        anchor.note(&rec(2, "again"));
        assert_eq!(anchor.read().unwrap().unwrap().seq, 2);
        f.write_all_at(b"XXXX", SLOT + SLOT_HEADER as u64 + 10)
            .unwrap();
        f.write_all_at(b"XXXX", SLOT_HEADER as u64 + 10).unwrap();
        let e = anchor.read().unwrap_err().to_string();
        assert!(
            e.contains("slot 0: checksum mismatch") && e.contains("slot 1:"),
            "{e}"
        );
        // A slot whose length lies (4 GiB, or past the file's end) is refused, not read.
        f.write_all_at(&u32::MAX.to_le_bytes(), 0).unwrap();
        let e = anchor.read().unwrap_err().to_string();
        assert!(e.contains("slot 0: length 4294967295 out of range"), "{e}");
        f.write_all_at(&(SLOT as u32 - 100).to_le_bytes(), 0)
            .unwrap();
        f.set_len(SLOT / 2).unwrap();
        let e = anchor.read().unwrap_err().to_string();
        assert!(
            e.contains("slot 0: cut short") && e.contains("slot 1: empty"),
            "{e}"
        );
    }

    /// A tail too large for a slot keeps its newest records, always the last one.
    #[test]
    fn a_tail_larger_than_a_slot_keeps_its_newest_records() {
        let big = "x".repeat(100_000);
        let records: VecDeque<Record> = (0..ANCHOR_TAIL as u64).map(|s| rec(s, &big)).collect();
        let bytes = encode_slot(&records);
        assert!(bytes.len() as u64 <= SLOT);
        let a = decode_slot(&bytes).unwrap();
        assert_eq!(a.seq, ANCHOR_TAIL as u64 - 1);
        assert!(!a.tail.is_empty() && a.tail.len() < ANCHOR_TAIL);
        assert_eq!(a.tail.last().unwrap().seq, a.seq);
        let huge: VecDeque<Record> = [rec(7, &"y".repeat(SLOT as usize))].into();
        let a = decode_slot(&encode_slot(&huge)).unwrap();
        assert_eq!((a.seq, a.tail.len()), (7, 0));
    }

    /// A link or a folder in the anchor's place is refused, never followed.
    #[test]
    fn a_link_in_its_place_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(ANCHOR_FILE)).unwrap();
        let anchor = Anchor::in_dir(dir.path());
        assert!(anchor.read().is_err());
        anchor.note(&rec(0, "d"));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
