//! The audit trail: an append-only, hash-chained log of every access to patient data and
//! every administrative action, in the store (tree `audit`).
//!
//! Each record holds the SHA-256 of the previous record's hash and its own canonical JSON
//! body, so altering, removing or reordering any record breaks every later link
//! ([`Audit::verify`], `duli audit verify`). A chain kept on one box could be rewritten
//! whole, so the head hash is anchored off the box: [`Audit::head`] is published
//! periodically (health message, log).
//!
//! The records live in the index, which the store rebuilds from the files when it is lost
//! or unreadable; so the head is also kept beside the index, in `<data>/audit.head`
//! ([`ANCHOR_FILE`], rewritten with each record, with the last few records, in one of two
//! checksummed slots so a write cut off leaves the other ([`anchor`]); synced to disk at
//! most [`ANCHOR_SYNC`] apart and when the trail is closed, so an append costs no disk sync
//! and a power cut leaves it at most that far behind). A
//! trail opened short of its anchor takes back the anchored records it lost in an unclean
//! stop; one that lost more starts its new part with a failed record stating the loss
//! ([`TRAIL_LOST`]: the last known sequence number and hash, which it links to), and
//! [`Audit::verify`] reports the records missing before it, never an intact trail.
//!
//! The trail on the box holds at most `[audit] max_records` ([`budget`]): past it, the
//! oldest records the audit record repository acknowledged are removed, the chain verified
//! from the last one removed; a record not forwarded is never removed.
//!
//! A record on patient data names the patients of its studies, and [`search`] finds one
//! patient's records, a bounded walk at a time.

pub mod anchor;
pub mod budget;
pub mod search;

use crate::store::records::RecordTree;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use anchor::{Anchor, AnchorFile};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The "previous hash" of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How the detail of a retention deletion starts ([`Event::retention_prune`]).
pub const RETENTION_PRUNE: &str = "retention prune";

/// The anchor of the trail outside the index, in the data directory: the last record's
/// sequence number and hash, and the last [`ANCHOR_TAIL`] records (JSON).
pub const ANCHOR_FILE: &str = "audit.head";
/// How many of the last records the anchor keeps: a trail that lost no more than these in
/// an unclean stop (appended, not yet flushed) takes them back whole.
pub const ANCHOR_TAIL: usize = 32;
/// How often at most the anchor is synced to disk: it is rewritten with every record, and
/// synced with the first record after this long and when the trail is closed.
pub const ANCHOR_SYNC: std::time::Duration = std::time::Duration::from_secs(1);
/// How the detail of the record that states a break of the trail starts: records its
/// anchor names are gone (with a lost or rebuilt index).
pub const TRAIL_LOST: &str = "audit trail lost with the index";
/// The object of the records the trail writes about itself.
pub const TRAIL_OBJECT: &str = "audit trail";

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
    /// Patient data left the box other than as DICOM instances (a report to the RIS, the
    /// audit trail exported).
    Export,
    /// DICOM instances sent to another node (the result push, C-MOVE and C-GET
    /// sub-operations): DICOM "DICOM Instances Transferred".
    Transfer,
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
    /// Patient data changed hands: a study given to another patient, what was reported
    /// for the former withdrawn.
    Update,
    /// Anything else, named in `detail`.
    Other,
}

impl Action {
    /// Whether the action is on patient data (its object, when it names studies, names
    /// them by Study Instance UID, and the record names their patients).
    pub fn is_on_patient_data(&self) -> bool {
        matches!(
            self,
            Action::View
                | Action::Export
                | Action::Transfer
                | Action::Import
                | Action::Query
                | Action::Feedback
                | Action::Delete
                | Action::Update
        )
    }
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
    /// The patients of the studies the event is about (Patient ID, `ID^^^ISSUER` with an
    /// issuer), filled in by [`Audit::append`] for an event on patient data whose object
    /// names studies held in the store; empty otherwise (and in records made before the
    /// trail named patients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// Who received what the event sent, when that is not this box (the PACS of a push
    /// or a C-MOVE, the requestor of a C-GET, as `ae:TITLE`; the RIS of a report, as
    /// `hl7:HOST:PORT`); empty otherwise (and in records made before the trail named it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
}

/// Most patients one record names (its object names at most a few studies).
pub const MAX_PATIENTS: usize = 16;

/// Most bytes of an event's detail kept in the trail (a record is never pruned, and a
/// peer's values, a C-FIND's keys or a refusal's reason, reach it).
pub const MAX_DETAIL: usize = 4096;

/// Most bytes of an event's actor, source and object kept in the trail.
pub const MAX_FIELD: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    const MARK: &str = "…[cut]";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end]).into()
}

impl Event {
    /// The event with its free-text fields held to [`MAX_FIELD`] and [`MAX_DETAIL`] bytes.
    fn bounded(mut self) -> Event {
        for (field, max) in [
            (&mut self.actor, MAX_FIELD),
            (&mut self.source, MAX_FIELD),
            (&mut self.object, MAX_FIELD),
            (&mut self.detail, MAX_DETAIL),
            (&mut self.destination, MAX_FIELD),
        ] {
            if field.len() > max {
                *field = cut(field, max).into_owned();
            }
        }
        self.patients.truncate(MAX_PATIENTS);
        for patient in &mut self.patients {
            if patient.len() > MAX_FIELD {
                *patient = cut(patient, MAX_FIELD).into_owned();
            }
        }
        self
    }

    /// A successful event with empty source and detail.
    pub fn new(actor: &str, action: Action, object: &str) -> Event {
        Event {
            actor: actor.to_string(),
            source: String::new(),
            action,
            object: object.to_string(),
            success: true,
            detail: String::new(),
            patients: Vec::new(),
            destination: String::new(),
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

    /// The pixel data of `instances` instances of study `study_uid` (`bytes` bytes) that
    /// a retention pass had marked pruned was removed later, `when` (e.g. "after a
    /// restart"): the pass was interrupted between the mark and its record or the removal.
    /// Recorded as [`Action::Delete`] by `system`, the detail starting with
    /// [`RETENTION_PRUNE`].
    pub fn retention_prune_completed(
        study_uid: &str,
        instances: u64,
        bytes: u64,
        when: &str,
    ) -> Event {
        Event::new("system", Action::Delete, study_uid).detail(format!(
            "{RETENTION_PRUNE} completed {when}: {instances} instances, {bytes} bytes"
        ))
    }

    /// The failed record that states a break of the trail (`detail` starts with
    /// [`TRAIL_LOST`]).
    fn trail_lost(detail: String) -> Event {
        Event::new("system", Action::Other, TRAIL_OBJECT)
            .detail(detail)
            .failed()
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

    /// Names who received what the event sent ([`Event::destination`]).
    pub fn to(mut self, destination: &str) -> Event {
        self.destination = destination.to_string();
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

/// Told of every record as it is appended ([`Audit::set_sink`]), e.g. the forwarder to
/// an audit record repository. Called while the append holds its lock: it must return at
/// once (a signal, never I/O), so an append never waits for it.
pub trait AppendSink: Send + Sync + std::fmt::Debug {
    /// `rec` was just appended.
    fn appended(&self, rec: &Record);

    /// The sink as its own type, for a reader of its state (e.g. the console).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Appends to and verifies the trail.
#[derive(Debug)]
pub struct Audit {
    records: Records<Record>,
    /// Serialises appends so each record links to the one before it.
    last: Mutex<Option<(u64, String)>>,
    /// Told of each appended record, when one is set.
    sink: std::sync::OnceLock<std::sync::Arc<dyn AppendSink>>,
    /// The head kept outside the index.
    anchor: Anchor,
    /// The last record removed from the start of the trail ([`budget`]).
    shed: Records<budget::Shed>,
    /// Sequence number of the first record held.
    first: std::sync::atomic::AtomicU64,
    /// The budget of records kept on the box ([`budget`]).
    limit: budget::Limit,
    /// Names the patients of the studies a record is about.
    patients: crate::store::StudyPatients,
}

/// Whether `rec` is a record stating a break of the trail ([`TRAIL_LOST`]).
fn states_a_break(rec: &Record) -> bool {
    rec.action == Action::Other
        && !rec.success
        && rec.actor == "system"
        && rec.object == TRAIL_OBJECT
        && rec.detail.starts_with(TRAIL_LOST)
}

/// The set-aside indexes to name in a break record: the one `store` set aside at this
/// open, or else those an earlier open left in `data_dir` (they may hold lost records).
fn set_aside_note(store: &Store) -> String {
    if let Some(aside) = store.index_set_aside() {
        return format!(
            "; the unreadable index was set aside as {}",
            aside.display()
        );
    }
    let mut earlier: Vec<String> = std::fs::read_dir(store.root())
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("index.broken-"))
                .collect()
        })
        .unwrap_or_default();
    earlier.sort();
    if earlier.is_empty() {
        String::new()
    } else {
        format!(
            "; indexes set aside earlier: {} (in {})",
            earlier.join(", "),
            store.root().display()
        )
    }
}

fn canonical_hash(prev: &str, r: &Record) -> String {
    // The body is the record without its own hash, in a fixed field order; the patients
    // and the destination follow only when there are some, so records made before the
    // trail named them hash as they did.
    let mut body = serde_json::json!([
        r.seq, r.at_ms, r.actor, r.source, r.action, r.object, r.success, r.detail, prev
    ]);
    if let Some(fields) = body.as_array_mut() {
        if !r.patients.is_empty() {
            fields.push(serde_json::json!(r.patients));
        }
        if !r.destination.is_empty() {
            fields.push(serde_json::json!({ "destination": r.destination }));
        }
    }
    let mut input = prev.as_bytes().to_vec();
    input.extend_from_slice(body.to_string().as_bytes());
    hex::encode(digest(&SHA256, &input).as_ref())
}

impl Audit {
    /// Opens the trail in `store`, checked against its anchor ([`ANCHOR_FILE`]): records
    /// the anchor names that the index lost are taken back from its tail when it holds
    /// them all, and otherwise the trail goes on with a failed record stating the loss.
    pub fn open(store: &Store) -> Result<Audit, StoreError> {
        let records = store.records::<Record>(RecordTree::Audit)?;
        let last = records.last()?.map(|(_, rec)| (rec.seq, rec.hash));
        // An empty trail has no first record yet: its first append sets it (a trail that
        // goes on from its anchor after a lost index starts past 0).
        let first = match records.iter().next() {
            Some(Ok((key, _))) => <[u8; 8]>::try_from(key.as_slice()).map_or(0, u64::from_be_bytes),
            Some(Err(_)) => 0,
            None => budget::NONE_HELD,
        };
        let audit = Audit {
            records,
            last: Mutex::new(last),
            sink: std::sync::OnceLock::new(),
            anchor: Anchor::in_dir(store.root()),
            shed: store.records(RecordTree::AuditShed)?,
            first: std::sync::atomic::AtomicU64::new(first),
            limit: budget::Limit::default(),
            patients: store.study_patients(),
        };
        audit.reconcile_anchor(store)?;
        Ok(audit)
    }

    /// Compares the trail with its anchor ([`ANCHOR_FILE`]) at open: takes back the
    /// anchored records an unclean stop lost, or, when more is gone (a lost or rebuilt
    /// index), appends the record that states the break, linked to the anchored head.
    /// Then starts the anchor's tail from the trail.
    fn reconcile_anchor(&self, store: &Store) -> Result<(), StoreError> {
        let saved = self.anchor.read().unwrap_or_else(|e| {
            log::error!("audit trail: anchor unreadable ({e}); written anew from the trail");
            None
        });
        let held = self.head();
        let mut continue_from_anchor = false;
        let mut restored = None;
        let lost = match (&saved, &held) {
            (None, _) => None,
            (Some(a), Some((m, _))) if *m >= a.seq => match self.records.get(a.seq.to_be_bytes()) {
                Ok(Some(r)) if r.hash == a.hash => None,
                Ok(Some(r)) => Some(format!(
                    "{TRAIL_LOST}: last known seq {} hash {}, but record {} of this trail has hash {}{}",
                    a.seq,
                    a.hash,
                    a.seq,
                    r.hash,
                    set_aside_note(store)
                )),
                Ok(None) => Some(format!(
                    "{TRAIL_LOST}: last known seq {} hash {}, which this trail does not hold{}",
                    a.seq,
                    a.hash,
                    set_aside_note(store)
                )),
                // Verification reports a record that does not parse.
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            },
            (Some(a), held) => {
                if let Some(n) = self.restore_from_tail(a, held.as_ref())? {
                    restored = Some(n);
                    None
                } else {
                    continue_from_anchor = true;
                    let (first, holds) = match held {
                        Some((m, _)) => (m + 1, format!("this index holds records up to {m}")),
                        None => (0, "this index holds none".to_string()),
                    };
                    Some(format!(
                        "{TRAIL_LOST}: last known seq {} hash {}; records {first} to {} are missing ({holds}){}",
                        a.seq,
                        a.hash,
                        a.seq,
                        set_aside_note(store)
                    ))
                }
            }
        };
        let head = self.head();
        let from = head
            .as_ref()
            .map_or(0, |(seq, _)| seq.saturating_sub(ANCHOR_TAIL as u64 - 1));
        self.anchor.reset(self.records(from, ANCHOR_TAIL)?);
        match (lost, saved) {
            (Some(detail), Some(a)) => {
                log::error!("{detail}");
                if continue_from_anchor {
                    // The new part of the trail links to the last record known.
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((a.seq, a.hash));
                }
                self.append(Event::trail_lost(detail))?;
                store.flush_blocking()?;
            }
            (_, saved) => {
                if let Some(n) = restored {
                    self.append(Event::new("system", Action::Other, TRAIL_OBJECT).detail(
                        format!(
                            "{n} record(s) not yet in the index at an unclean stop taken back from {ANCHOR_FILE}"
                        ),
                    ))?;
                    store.flush_blocking()?;
                }
                // A store older than the anchor, or an unreadable anchor: anchor the trail
                // as it stands.
                let anchored = saved.map(|a| (a.seq, a.hash));
                if head.is_some() && anchored != self.head() {
                    self.anchor.rewrite();
                }
            }
        }
        Ok(())
    }

    /// Takes back from the anchor's tail the records after `held` (the trail's head, or
    /// none) up to the anchored head, when the tail holds them all and they link to
    /// `held`: records appended but not yet durable in the index at an unclean stop.
    /// How many it took back, if it did.
    fn restore_from_tail(
        &self,
        a: &AnchorFile,
        held: Option<&(u64, String)>,
    ) -> Result<Option<usize>, StoreError> {
        let (first, mut prev) = match held {
            Some((m, h)) => (m + 1, h.clone()),
            None => (0, GENESIS.to_string()),
        };
        let Some(start) = a.tail.iter().position(|r| r.seq == first) else {
            return Ok(None);
        };
        let missing = &a.tail[start..];
        let mut expected = first;
        for r in missing {
            if r.seq != expected || r.prev != prev || canonical_hash(&prev, r) != r.hash {
                return Ok(None);
            }
            prev = r.hash.clone();
            expected += 1;
        }
        if expected != a.seq + 1 || prev != a.hash {
            return Ok(None);
        }
        for r in missing {
            self.records.insert(r.seq.to_be_bytes(), r)?;
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((a.seq, a.hash.clone()));
        log::warn!(
            "audit trail: {} record(s) (from {first} to {}) not yet in the index at an unclean stop taken back from {ANCHOR_FILE}",
            missing.len(),
            a.seq
        );
        Ok(Some(missing.len()))
    }

    /// Appends an event; durable after the store's next flush (callers that answer a
    /// request flush before answering).
    pub fn append(&self, event: Event) -> Result<Record, StoreError> {
        let event = self.with_patients(event).bounded();
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
        let _ = self.first.compare_exchange(
            budget::NONE_HELD,
            seq,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        *last = Some((seq, rec.hash.clone()));
        self.anchor.note(&rec);
        drop(last);
        self.check_budget();
        if let Some(sink) = self.sink.get() {
            sink.appended(&rec);
        }
        Ok(rec)
    }

    /// `event` naming the patients of the studies its object names (a Study Instance UID,
    /// or several separated by commas), when it is on patient data and names none yet;
    /// studies not held, or without a Patient ID, add none.
    fn with_patients(&self, mut event: Event) -> Event {
        if !event.patients.is_empty() || !event.action.is_on_patient_data() {
            return event;
        }
        for uid in event.object.split(',').map(str::trim).take(MAX_PATIENTS) {
            if !crate::store::header::is_valid_uid(uid) {
                continue;
            }
            if let Some(p) = self.patients.patient_of(uid) {
                if !event.patients.contains(&p) {
                    event.patients.push(p);
                }
            }
        }
        event
    }

    /// Sets the sink told of every later append; only the first call sets one (`false`
    /// for a later call, whose sink is ignored).
    pub fn set_sink(&self, sink: std::sync::Arc<dyn AppendSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// The sink, when one is set.
    pub fn sink(&self) -> Option<&std::sync::Arc<dyn AppendSink>> {
        self.sink.get()
    }

    /// The hash of the last record (to anchor off the box), if any.
    pub fn head(&self) -> Option<(u64, String)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records from `from_seq` on, at most `limit`. A record that does not decode (edited
    /// on the disk, or written by a later release before a rollback) stands in the page as
    /// a failed record saying so, under its sequence number and without a hash, so that
    /// readers and the forwarding to the repository go on past it (`duli audit verify`
    /// reports the break).
    pub fn records(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let placeholder = |seq: u64, detail: String| Record {
            seq,
            at_ms: 0,
            event: Event::new("-", Action::Other, TRAIL_OBJECT)
                .detail(detail)
                .failed(),
            prev: String::new(),
            hash: String::new(),
        };
        let mut out: Vec<Record> = Vec::new();
        for kv in self.records.from_key(from_seq.to_be_bytes()).take(limit) {
            let seq = out.last().map_or(from_seq, |r| r.seq + 1);
            match kv {
                // Its place in the trail is its key: a record naming another sequence
                // number (edited on the disk) must not move the forwarding cursor.
                Ok((k, rec)) => match <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes) {
                    Ok(key_seq) if key_seq == rec.seq => out.push(rec),
                    Ok(key_seq) => out.push(placeholder(
                        key_seq,
                        format!("record {key_seq} names itself record {}", rec.seq),
                    )),
                    Err(_) => continue,
                },
                Err(StoreError::Corrupt { reason, .. }) => out.push(placeholder(
                    seq,
                    format!("record {seq} does not decode: {reason}"),
                )),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Walks the whole chain and reports the first broken link. A record stating a break
    /// ([`TRAIL_LOST`]) is such a link: the records missing before it (or the record
    /// itself) are reported, and the chain is checked on from it, a later broken link
    /// added to the reason.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let mut prev = GENESIS.to_string();
        let mut expected = 0u64;
        let mut records = 0u64;
        let mut lost: Option<BrokenLink> = None;
        // Records removed after forwarding ([`budget`]): the chain goes on from the last.
        let shed = self.shed_point()?;
        let mut shed_stated = false;
        if let Some(s) = &shed {
            prev.clone_from(&s.hash);
            expected = s.seq.saturating_add(1);
        }
        for kv in self.records.iter() {
            let stop = |lost: Option<BrokenLink>, reason: String| Verification {
                records,
                head: None,
                broken: Some(match lost {
                    Some(first) => BrokenLink {
                        seq: first.seq,
                        reason: format!("{}; and at record {expected}: {reason}", first.reason),
                    },
                    None => BrokenLink {
                        seq: expected,
                        reason,
                    },
                }),
            };
            let (k, rec) = match kv {
                Ok(entry) => entry,
                Err(StoreError::Corrupt { reason, .. }) => {
                    return Ok(stop(lost, format!("record does not parse: {reason}")))
                }
                Err(e) => return Err(e),
            };
            let key_seq = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes).ok();
            // Left by a removal cut off before its end.
            if shed
                .as_ref()
                .is_some_and(|s| key_seq.is_some_and(|k| k <= s.seq))
            {
                continue;
            }
            if key_seq == Some(rec.seq) && rec.seq >= expected && states_a_break(&rec) {
                let reason = if rec.seq > expected {
                    format!(
                        "records {expected} to {} are missing; record {} says: {}",
                        rec.seq - 1,
                        rec.seq,
                        rec.detail
                    )
                } else {
                    format!("record {} says: {}", rec.seq, rec.detail)
                };
                lost.get_or_insert(BrokenLink {
                    seq: expected,
                    reason,
                });
                // What it links to is gone: the chain is checked on from it.
                prev = rec.prev.clone();
            } else if rec.seq != expected || key_seq != Some(rec.seq) {
                return Ok(stop(
                    lost,
                    format!(
                        "sequence {} (key {:?}) where {expected} was expected: a record was removed or moved",
                        rec.seq, key_seq
                    ),
                ));
            } else if rec.prev != prev {
                return Ok(stop(
                    lost,
                    format!(
                        "previous hash {} does not match the hash {prev} of record {}",
                        rec.prev,
                        expected.wrapping_sub(1)
                    ),
                ));
            }
            let want = canonical_hash(&prev, &rec);
            if rec.hash != want {
                return Ok(stop(
                    lost,
                    format!("content changed: hash {} recomputes as {want}", rec.hash),
                ));
            }
            shed_stated = shed_stated || shed.as_ref().is_some_and(|s| Self::states_shed(&rec, s));
            prev = rec.hash;
            expected = rec.seq + 1;
            records += 1;
        }
        // Records removed from the start of the trail are accounted for only by a record
        // of the chain stating that removal: a shed point alone is anyone's.
        if let Some(s) = shed.as_ref().filter(|_| !shed_stated) {
            let unstated = BrokenLink {
                seq: 0,
                reason: format!(
                    "records 0 to {} are gone and no record of the trail states their \
                     removal after forwarding",
                    s.seq
                ),
            };
            return Ok(Verification {
                records,
                head: None,
                broken: Some(match lost {
                    Some(first) => BrokenLink {
                        seq: 0,
                        reason: format!("{}; and {}", unstated.reason, first.reason),
                    },
                    None => unstated,
                }),
            });
        }
        Ok(Verification {
            records,
            head: (records > 0).then_some(prev),
            broken: lost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trail of three views (its folder and store kept open with it).
    fn three_views() -> (tempfile::TempDir, Store, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..3 {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        (dir, store, audit)
    }

    /// A record edited on the disk to name another sequence number reads back under its
    /// own place, as a failed record saying so: the forwarding cursor, which goes on from
    /// the last record of a page, is never moved past records not yet forwarded.
    #[test]
    fn a_record_naming_another_place_reads_as_a_failed_record_at_its_own() {
        let (_dir, _store, audit) = three_views();
        let mut rec = audit.records(1, 1).unwrap().remove(0);
        rec.seq = 1_000_000;
        audit.records.insert(1u64.to_be_bytes(), &rec).unwrap();
        let page = audit.records(0, 10).unwrap();
        let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert!(!page[1].success, "{:?}", page[1]);
        assert!(page[1].detail.contains("names itself record 1000000"));
    }

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

    /// A record is never pruned, and outsiders' values reach it (a C-FIND's keys, a
    /// refusal's reason): each field is held to its bound, cut on a character boundary and
    /// marked, and the chain still verifies.
    #[test]
    fn outsiders_values_are_held_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let huge = "é".repeat(1 << 19);
        let rec = audit
            .append(
                Event::new(&huge, Action::Query, &huge)
                    .from(&huge)
                    .detail(huge.clone()),
            )
            .unwrap();
        assert!(rec.actor.len() <= MAX_FIELD && rec.actor.ends_with("…[cut]"));
        assert!(rec.source.len() <= MAX_FIELD && rec.object.len() <= MAX_FIELD);
        assert!(rec.detail.len() <= MAX_DETAIL && rec.detail.ends_with("…[cut]"));
        assert!(rec.detail.starts_with("éé"));
        assert_eq!(audit.records(0, 10).unwrap(), vec![rec]);
        assert_eq!(cut("short", 10), "short");
    }

    /// An event on patient data names the patients of the studies its object names (with
    /// the issuer, HL7 CX style); other events, unknown studies and studies without a
    /// Patient ID name none; the patients are in the chain: an edited one is found.
    #[test]
    fn records_on_patient_data_name_the_patients_of_their_studies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (study, patient, issuer) in [
            ("1.2.3", "PAT-1", "HOSP"),
            ("1.2.4", "PAT-2", ""),
            ("1.2.5", "", ""),
        ] {
            let instance = crate::model::InstanceRecord {
                sop_instance_uid: format!("{study}.1"),
                study_instance_uid: study.into(),
                ..Default::default()
            };
            let attrs = crate::model::StudyRecord {
                patient_id: patient.into(),
                issuer_of_patient_id: issuer.into(),
                ..Default::default()
            };
            store.commit_instance(&instance, &attrs).unwrap();
        }
        let audit = Audit::open(&store).unwrap();
        let named = |action: Action, object: &str| {
            audit
                .append(Event::new("ana", action, object))
                .unwrap()
                .patients
                .clone()
        };
        assert_eq!(named(Action::View, "1.2.3"), ["PAT-1^^^HOSP"]);
        assert_eq!(
            named(Action::Transfer, "1.2.3,1.2.4,1.2.3,1.2.5,1.2.9"),
            ["PAT-1^^^HOSP", "PAT-2"]
        );
        assert!(named(Action::Login, "1.2.3").is_empty());
        assert!(named(Action::Query, "worklist").is_empty());
        assert!(audit.verify().unwrap().broken.is_none());
        let raw = store
            .records::<serde_json::Value>(RecordTree::Audit)
            .unwrap();
        let mut edited = raw.get(1u64.to_be_bytes()).unwrap().unwrap();
        edited["patients"] = serde_json::json!(["PAT-2"]);
        raw.insert(1u64.to_be_bytes(), &edited).unwrap();
        assert_eq!(audit.verify().unwrap().broken.map(|b| b.seq), Some(1));
    }

    /// The receiving process of a transfer is in the chain: a record naming one verifies,
    /// one whose destination was changed (or removed) is found; a record without one hashes
    /// as records did before the field existed.
    #[test]
    fn the_destination_of_a_transfer_is_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let pushed = audit
            .append(Event::new("system", Action::Transfer, "1.2.3").to("ae:ARCHIVE"))
            .unwrap();
        let plain = audit
            .append(Event::new("ana", Action::View, "1.2.3"))
            .unwrap();
        assert!(plain.destination.is_empty());
        assert_eq!(
            canonical_hash(&plain.prev, &plain),
            {
                let body = serde_json::json!([
                    plain.seq,
                    plain.at_ms,
                    plain.actor,
                    plain.source,
                    plain.action,
                    plain.object,
                    plain.success,
                    plain.detail,
                    plain.prev
                ]);
                let mut input = plain.prev.as_bytes().to_vec();
                input.extend_from_slice(body.to_string().as_bytes());
                hex::encode(digest(&SHA256, &input).as_ref())
            },
            "a record without a destination hashes as before"
        );
        assert!(audit.verify().unwrap().broken.is_none());
        let raw = store
            .records::<serde_json::Value>(RecordTree::Audit)
            .unwrap();
        let mut edited = raw.get(pushed.seq.to_be_bytes()).unwrap().unwrap();
        assert_eq!(edited["destination"], "ae:ARCHIVE");
        edited["destination"] = serde_json::json!("ae:ELSEWHERE");
        raw.insert(pushed.seq.to_be_bytes(), &edited).unwrap();
        assert_eq!(
            audit.verify().unwrap().broken.map(|b| b.seq),
            Some(pushed.seq)
        );
    }

    /// A record that does not decode (here one a later release wrote, with an action this
    /// one does not know) stands in a page as a failed record saying so, under its
    /// number: reading and forwarding go on past it instead of stopping there for good.
    #[test]
    fn an_undecodable_record_is_read_as_a_record_saying_so() {
        let (_dir, store, audit) = three_views();
        let raw = store
            .records::<serde_json::Value>(RecordTree::Audit)
            .unwrap();
        let mut later = raw.get(1u64.to_be_bytes()).unwrap().unwrap();
        later["action"] = serde_json::json!("a_later_action");
        raw.insert(1u64.to_be_bytes(), &later).unwrap();
        let page = audit.records(0, 10).unwrap();
        let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(page[2].object, "1.2.2");
        assert!(!page[1].success, "{:?}", page[1]);
        assert!(
            page[1].detail.starts_with("record 1 does not decode"),
            "{:?}",
            page[1]
        );
        assert_eq!(audit.records(1, 1).unwrap()[0].seq, 1);
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
        let tree = store.records::<Record>(RecordTree::Audit).unwrap();
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
            .records::<Record>(RecordTree::Audit)
            .unwrap()
            .remove(1u64.to_be_bytes())
            .unwrap();
        assert_eq!(a2.verify().unwrap().broken.unwrap().seq, 1);
    }

    /// A trail of `n` records in a new store in `dir`, flushed; the hash of the last.
    fn trail_of(dir: &std::path::Path, n: u64) -> String {
        let store = Store::open(dir).unwrap();
        let audit = Audit::open(&store).unwrap();
        let mut last = String::new();
        for i in 0..n {
            last = audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap()
                .hash;
        }
        store.flush_blocking().unwrap();
        last
    }

    /// An index deleted (or opening empty) takes the trail with it: the rebuilt store's
    /// trail starts with a failed record that names the last known record and links to
    /// it, verification reports what is missing instead of an intact trail, and the next
    /// open adds nothing more.
    #[test]
    fn a_lost_index_leaves_a_break_that_verification_reports() {
        let dir = tempfile::tempdir().unwrap();
        let n = ANCHOR_TAIL as u64 + 8;
        let head = trail_of(dir.path(), n);
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();

        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        let records = audit.records(0, 100).unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        let first = &records[0];
        assert_eq!((first.seq, first.prev.as_str()), (n, head.as_str()));
        assert!(!first.success);
        assert!(
            first.detail.starts_with(&format!(
                "{TRAIL_LOST}: last known seq {} hash {head}; records 0 to {} are missing",
                n - 1,
                n - 1
            )),
            "{}",
            first.detail
        );
        let v = audit.verify().unwrap();
        let broken = v.broken.expect("not intact");
        assert_eq!(broken.seq, 0);
        assert!(
            broken
                .reason
                .starts_with(&format!("records 0 to {} are missing", n - 1)),
            "{}",
            broken.reason
        );
        // The trail goes on, still reported broken; a later open adds no second break.
        audit
            .append(Event::new("ana", Action::Login, "ana"))
            .unwrap();
        store.flush_blocking().unwrap();
        drop(audit);
        let audit = Audit::open(&store).unwrap();
        assert_eq!(audit.records(0, 100).unwrap().len(), 2);
        let v = audit.verify().unwrap();
        assert_eq!(v.records, 2);
        assert_eq!(v.broken.map(|b| b.seq), Some(0));
        // A record changed after the break is still found, after the loss.
        let tree = store.records::<Record>(RecordTree::Audit).unwrap();
        let mut rec = tree.get((n + 1).to_be_bytes()).unwrap().unwrap();
        rec.event.actor = "mallory".into();
        tree.insert((n + 1).to_be_bytes(), &rec).unwrap();
        let reason = audit.verify().unwrap().broken.unwrap().reason;
        assert!(
            reason.contains(&format!("and at record {}: content changed", n + 1)),
            "{reason}"
        );
    }

    /// An index that cannot be opened is set aside and rebuilt: the break record names
    /// the folder it was set aside as.
    #[test]
    fn a_set_aside_index_is_named_in_the_break() {
        let dir = tempfile::tempdir().unwrap();
        let n = ANCHOR_TAIL as u64 + 1;
        trail_of(dir.path(), n);
        let index = dir.path().join("index");
        std::fs::remove_dir_all(&index).unwrap();
        std::fs::write(&index, b"not an index").unwrap();

        let store = Store::open(dir.path()).unwrap();
        let aside = store.index_set_aside().expect("set aside").to_path_buf();
        let audit = Audit::open(&store).unwrap();
        let rec = audit.records(0, 10).unwrap().remove(0);
        assert_eq!(rec.seq, n);
        assert!(
            rec.detail.ends_with(&format!(
                "the unreadable index was set aside as {}",
                aside.display()
            )),
            "{}",
            rec.detail
        );
        assert!(audit.verify().unwrap().broken.is_some());
    }

    /// Records appended but not yet in the index at an unclean stop are taken back from
    /// the anchor: the trail stays intact, and says so.
    #[test]
    fn records_an_unclean_stop_lost_are_taken_back_from_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        trail_of(dir.path(), 5);
        let store = Store::open(dir.path()).unwrap();
        let tree = store.records::<Record>(RecordTree::Audit).unwrap();
        for seq in [3u64, 4] {
            tree.remove(seq.to_be_bytes()).unwrap();
        }
        let audit = Audit::open(&store).unwrap();
        let v = audit.verify().unwrap();
        assert_eq!((v.records, v.broken), (6, None));
        let last = audit.records(5, 1).unwrap().remove(0);
        assert!(
            last.success && last.detail.starts_with("2 record(s)"),
            "{last:?}"
        );
    }
}
