//! The forwarding cursor: how far the trail has been forwarded, kept in the store (tree
//! `audit_forward`) so a restart resumes where the last write to the repository ended.
//! The trail itself is the queue: nothing but this position is kept for the forwarder.

use crate::audit::{Audit, Record};
use crate::store::records::RecordTree;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Its one key.
const KEY: &[u8] = b"cursor";

/// The position after the last record written to the repository and flushed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Sequence number of the next record to forward.
    pub next_seq: u64,
    /// Hash of the record before it (the last one forwarded), to tell that the trail is
    /// still the one the cursor was made on.
    pub last_hash: Option<String>,
}

impl Cursor {
    /// The cursor just after `rec`.
    pub fn after(rec: &Record) -> Cursor {
        Cursor {
            next_seq: rec.seq.saturating_add(1),
            last_hash: Some(rec.hash.clone()),
        }
    }
}

/// The stored cursor.
#[derive(Debug, Clone)]
pub struct Cursors {
    records: Records<Cursor>,
}

impl Cursors {
    /// Opens the cursor's tree in `store`.
    pub fn open(store: &Store) -> Result<Cursors, StoreError> {
        Ok(Cursors {
            records: store.records(RecordTree::AuditForward)?,
        })
    }

    /// The stored cursor (the start of the trail when none is).
    pub fn load(&self) -> Result<Cursor, StoreError> {
        Ok(self.records.get(KEY)?.unwrap_or_default())
    }

    /// Stores `cursor` (durable at the store's next flush).
    pub fn save(&self, cursor: &Cursor) -> Result<(), StoreError> {
        self.records.insert(KEY, cursor)?;
        Ok(())
    }

    /// Where forwarding resumes: the stored cursor while the trail still holds the record
    /// it follows with the same hash; else the trail is not the one it was made on (a
    /// store restored or replaced), and forwarding starts again from the first record.
    pub fn resume(&self, audit: &Audit) -> Result<Cursor, StoreError> {
        let cursor = self.load()?;
        let Some(before) = cursor.next_seq.checked_sub(1) else {
            return Ok(cursor);
        };
        let held = audit.records(before, 1)?.into_iter().next();
        match held {
            Some(rec) if rec.seq == before && Some(&rec.hash) == cursor.last_hash.as_ref() => {
                Ok(cursor)
            }
            _ => {
                log::warn!(
                    "audit forwarding: the trail does not hold record {before} as forwarded \
                     (hash {}); forwarding it again from the first record",
                    cursor.last_hash.as_deref().unwrap_or("-")
                );
                Ok(Cursor::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};

    #[test]
    fn the_cursor_resumes_only_on_the_trail_it_was_made_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let cursors = Cursors::open(&store).unwrap();
        assert_eq!(cursors.resume(&audit).unwrap(), Cursor::default());
        let recs: Vec<Record> = (0..3)
            .map(|_| audit.append(Event::new("a", Action::Login, "a")).unwrap())
            .collect();
        cursors.save(&Cursor::after(&recs[1])).unwrap();
        assert_eq!(cursors.resume(&audit).unwrap().next_seq, 2);

        // Another trail (a new store) under the same cursor: from the start again.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path()).unwrap();
        let audit2 = Audit::open(&store2).unwrap();
        let cursors2 = Cursors::open(&store2).unwrap();
        audit2.append(Event::new("b", Action::Login, "b")).unwrap();
        cursors2.save(&Cursor::after(&recs[1])).unwrap();
        assert_eq!(cursors2.resume(&audit2).unwrap(), Cursor::default());
    }
}
