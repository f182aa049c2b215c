//! The audit trail: an append-only, hash-chained log of every access to patient data and
//! every administrative action, in the store (tree `audit`).
//!
//! Each record holds the SHA-256 of the previous record's hash and its own canonical JSON
//! body, so altering, removing or reordering any record breaks every later link
//! ([`Audit::verify`], `duli audit verify`). A chain kept on one box could be rewritten
//! whole, so the head hash is anchored off the box: [`Audit::head`] is published
//! periodically (health message, log).

use crate::store::records::Records;
use crate::store::{Store, StoreError};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Tree holding the records, keyed by big-endian sequence number.
pub const TREE: &str = "audit";
/// The "previous hash" of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How the detail of a retention deletion starts ([`Event::retention_prune`]).
pub const RETENTION_PRUNE: &str = "retention prune";

/// What happened (the event classes of the DICOM audit message vocabulary, plus ours).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A user logged in.
    Login,
    /// A login failed.
    LoginFailed,
    /// A user logged out.
    Logout,
    /// Patient data was viewed (study, image, report).
    View,
    /// Patient data left the box (export, C-MOVE, C-GET, push).
    Export,
    /// Data was received (upload, C-STORE from an unknown source).
    Import,
    /// A query over patient data (C-FIND, search).
    Query,
    /// Radiologist feedback recorded.
    Feedback,
    /// A user was created, changed or removed.
    UserChange,
    /// Configuration or provisioning changed.
    ConfigChange,
    /// Firmware or model installed, marked good, rolled back.
    Software,
    /// Patient data was deleted (retention pruning a study's pixel data).
    Delete,
    /// Anything else, named in `detail`.
    Other,
}

/// One audit record as stored: the [`Event`] with its place in the chain. Its fields
/// read through to the event (`record.actor`); stored as one flat JSON object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Sequence number (0-based, gap-free).
    pub seq: u64,
    /// Time, milliseconds since the epoch.
    pub at_ms: i64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// Hash of the previous record (hex).
    pub prev: String,
    /// SHA-256 over `prev` and the canonical body (hex).
    pub hash: String,
}

impl std::ops::Deref for Record {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// What an audit record says happened: the one shape of an audited action, whether the
/// daemon appends it, a CLI command sends it over the control socket, or it is read back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Who: user name, AE title (`ae:NAME`) or `system`.
    pub actor: String,
    /// Where from: IP address, `local` or empty.
    #[serde(default)]
    pub source: String,
    /// What kind of event.
    pub action: Action,
    /// The object: study UID, user name, config key, …
    pub object: String,
    /// Whether the action succeeded.
    pub success: bool,
    /// Free-text detail (counts, reasons).
    #[serde(default)]
    pub detail: String,
}

impl Event {
    /// A successful event with empty source and detail.
    pub fn new(actor: &str, action: Action, object: &str) -> Event {
        Event {
            actor: actor.to_string(),
            source: String::new(),
            action,
            object: object.to_string(),
            success: true,
            detail: String::new(),
        }
    }

    /// Retention removed the pixel data of `instances` received instances of study
    /// `study_uid` (`bytes` bytes) because of `reason` (`age` or `disk`). Recorded as
    /// [`Action::Delete`] by `system`, the detail starting with [`RETENTION_PRUNE`].
    pub fn retention_prune(study_uid: &str, instances: u64, bytes: u64, reason: &str) -> Event {
        Event::new("system", Action::Delete, study_uid).detail(format!(
            "{RETENTION_PRUNE}: {instances} instances, {bytes} bytes, reason {reason}"
        ))
    }

    /// Sets the source address.
    pub fn from(mut self, source: &str) -> Event {
        self.source = source.to_string();
        self
    }

    /// Sets the detail text.
    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = detail.into();
        self
    }

    /// Marks the event as failed.
    pub fn failed(mut self) -> Event {
        self.success = false;
        self
    }
}

/// The first broken link found by [`Audit::verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// Sequence number of the first record that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// The result of verifying the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record (the head), if any.
    pub head: Option<String>,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// A verification as the console and the control socket answer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationReport {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record (the head), if any.
    pub head: Option<String>,
    /// Whether every link verified.
    pub intact: bool,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
}

impl From<Verification> for VerificationReport {
    fn from(v: Verification) -> VerificationReport {
        VerificationReport {
            records: v.records,
            head: v.head,
            intact: v.broken.is_none(),
            first_broken: v.broken,
        }
    }
}

/// The last record of the trail: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// Hash.
    pub hash: String,
}

/// Appends to and verifies the trail.
#[derive(Debug)]
pub struct Audit {
    records: Records<Record>,
    /// Serialises appends so each record links to the one before it.
    last: Mutex<Option<(u64, String)>>,
}

fn canonical_hash(prev: &str, r: &Record) -> String {
    // The body is the record without its own hash, in a fixed field order.
    let body = serde_json::json!([
        r.seq, r.at_ms, r.actor, r.source, r.action, r.object, r.success, r.detail, prev
    ]);
    let mut input = prev.as_bytes().to_vec();
    input.extend_from_slice(body.to_string().as_bytes());
    hex::encode(digest(&SHA256, &input).as_ref())
}

impl Audit {
    /// Opens the trail in `store`.
    pub fn open(store: &Store) -> Result<Audit, StoreError> {
        let records = store.records::<Record>(TREE)?;
        let last = records.last()?.map(|(_, rec)| (rec.seq, rec.hash));
        Ok(Audit {
            records,
            last: Mutex::new(last),
        })
    }

    /// Appends an event; durable after the store's next flush (callers that answer a
    /// request flush before answering).
    pub fn append(&self, event: Event) -> Result<Record, StoreError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, prev) = match &*last {
            Some((s, h)) => (s + 1, h.clone()),
            None => (0, GENESIS.to_string()),
        };
        let mut rec = Record {
            seq,
            at_ms: crate::clock::now_millis(),
            event,
            prev: prev.clone(),
            hash: String::new(),
        };
        rec.hash = canonical_hash(&prev, &rec);
        self.records.insert(seq.to_be_bytes(), &rec)?;
        *last = Some((seq, rec.hash.clone()));
        Ok(rec)
    }

    /// The hash of the last record (to anchor off the box), if any.
    pub fn head(&self) -> Option<(u64, String)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records from `from_seq` on, at most `limit`.
    pub fn records(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.records
            .from_key(from_seq.to_be_bytes())
            .take(limit)
            .map(|kv| kv.map(|(_, rec)| rec))
            .collect()
    }

    /// Walks the whole chain and reports the first broken link.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let mut prev = GENESIS.to_string();
        let mut records = 0u64;
        for kv in self.records.iter() {
            let expected_seq = records;
            let broken = |reason: String| Verification {
                records,
                head: None,
                broken: Some(BrokenLink {
                    seq: expected_seq,
                    reason,
                }),
            };
            let (k, rec) = match kv {
                Ok(entry) => entry,
                Err(StoreError::Corrupt { reason, .. }) => {
                    return Ok(broken(format!("record does not parse: {reason}")))
                }
                Err(e) => return Err(e),
            };
            let key_seq = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes).ok();
            if rec.seq != expected_seq || key_seq != Some(rec.seq) {
                return Ok(broken(format!(
                    "sequence {} (key {:?}) where {expected_seq} was expected: a record was removed or moved",
                    rec.seq, key_seq
                )));
            }
            if rec.prev != prev {
                return Ok(broken(format!(
                    "previous hash {} does not match the hash {prev} of record {}",
                    rec.prev,
                    expected_seq.wrapping_sub(1)
                )));
            }
            let want = canonical_hash(&prev, &rec);
            if rec.hash != want {
                return Ok(broken(format!(
                    "content changed: hash {} recomputes as {want}",
                    rec.hash
                )));
            }
            prev = rec.hash;
            records += 1;
        }
        Ok(Verification {
            records,
            head: (records > 0).then_some(prev),
            broken: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record is stored as one flat object, as before the event was its own type: old
    /// trails read, and a record reads back equal.
    #[test]
    fn records_are_stored_flat_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let rec = audit
            .append(Event::new("ana", Action::Login, "ana").from("10.0.0.5"))
            .unwrap();
        let v = serde_json::to_value(&rec).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "action", "actor", "at_ms", "detail", "hash", "object", "prev", "seq", "source",
                "success"
            ]
        );
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), rec);
        assert_eq!(
            (rec.actor.as_str(), rec.source.as_str()),
            ("ana", "10.0.0.5")
        );
        assert_eq!(audit.records(0, 10).unwrap(), vec![rec]);
    }

    #[test]
    fn chain_verifies_and_any_change_breaks_it_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..5 {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")).from("10.0.0.5"))
                .unwrap();
        }
        let v = audit.verify().unwrap();
        assert_eq!(v.records, 5);
        assert!(v.broken.is_none());
        assert_eq!(v.head.as_deref(), audit.head().map(|h| h.1).as_deref());

        // Reopen continues the chain.
        drop(audit);
        let audit = Audit::open(&store).unwrap();
        audit
            .append(Event::new("admin", Action::UserChange, "bob"))
            .unwrap();
        assert_eq!(audit.verify().unwrap().records, 6);

        // Tamper with record 2's object.
        let tree = store.records::<Record>(TREE).unwrap();
        let mut rec = tree.get(2u64.to_be_bytes()).unwrap().unwrap();
        rec.event.object = "9.9.9".into();
        tree.insert(2u64.to_be_bytes(), &rec).unwrap();
        let v = audit.verify().unwrap();
        assert_eq!(v.broken.as_ref().unwrap().seq, 2, "{v:?}");

        // Removing a record is found too.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path()).unwrap();
        let a2 = Audit::open(&store2).unwrap();
        for _ in 0..3 {
            a2.append(Event::new("x", Action::Login, "x")).unwrap();
        }
        store2
            .records::<Record>(TREE)
            .unwrap()
            .remove(1u64.to_be_bytes())
            .unwrap();
        assert_eq!(a2.verify().unwrap().broken.unwrap().seq, 1);
    }
}
