//! What the outbox holds: an entry (destination, kind, payload, state, attempts) and the
//! records of what was delivered; the selectors and the table of `duli outbox`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an entry goes. One delivery worker serves each destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Destination {
    /// The RIS over HL7/MLLP.
    Hl7,
    /// The cloud broker over MQTT.
    Mqtt,
    /// A PACS of `[[pacs.destinations]]` (C-STORE push), by name.
    Pacs(String),
}

impl Destination {
    /// The name used in keys, metrics (`dest` label) and the CLI: `hl7`, `mqtt`, `pacs:NAME`.
    pub fn name(&self) -> String {
        match self {
            Destination::Hl7 => "hl7".into(),
            Destination::Mqtt => "mqtt".into(),
            Destination::Pacs(n) => format!("pacs:{n}"),
        }
    }

    pub(super) fn prefix(&self) -> Vec<u8> {
        let mut p = self.name().into_bytes();
        p.push(0);
        p
    }

    pub(super) fn key(&self, id: u64) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A destination or retry selector that names nothing the outbox knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Not `hl7`, `mqtt` or `pacs:NAME`.
    #[error("unknown destination {0:?} (hl7, mqtt or pacs:NAME)")]
    UnknownDestination(String),
    /// Digits that are no entry id.
    #[error("entry id {0:?}: {1}")]
    BadEntryId(String, std::num::ParseIntError),
    /// Neither `all`, an entry id nor a destination.
    #[error("{0}; or `all`, or an entry id")]
    NotASelector(Box<SelectorError>),
}

impl FromStr for Destination {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hl7" => Ok(Destination::Hl7),
            "mqtt" => Ok(Destination::Mqtt),
            s => match s.strip_prefix("pacs:") {
                Some(n) if !n.is_empty() && !n.contains('\0') => {
                    Ok(Destination::Pacs(n.to_string()))
                }
                _ => Err(SelectorError::UnknownDestination(s.to_string())),
            },
        }
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.name()
    }
}

impl TryFrom<String> for Destination {
    type Error = SelectorError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A study report (HL7 ORU^R01 or MQTT report).
    Report,
    /// The radiologist's agree/disagree (MQTT).
    Feedback,
    /// The DICOM Structured Report of a result (PACS push).
    StructuredReport,
    /// The DICOM Secondary Capture with the heatmap (PACS push).
    SecondaryCapture,
    /// The heatmap as a DICOM Parametric Map (PACS push).
    ParametricMap,
    /// The withdrawal of a result from the patient it was reported for, once its study
    /// was given to another (HL7 ORU^R01 with every observation marked wrong). Never
    /// superseded by a later result: that is what it makes room for.
    Withdrawal,
    /// The IHE IOCM rejection note withdrawing result objects made for a former patient
    /// of the study (PACS push). Never superseded by a later result, like a withdrawal.
    RejectionNote,
}

impl Kind {
    /// The kind's name in JSON and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Report => "report",
            Kind::Feedback => "feedback",
            Kind::StructuredReport => "structured_report",
            Kind::SecondaryCapture => "secondary_capture",
            Kind::ParametricMap => "parametric_map",
            Kind::Withdrawal => "withdrawal",
            Kind::RejectionNote => "rejection_note",
        }
    }

    /// Whether the entry withdraws something sent before (a withdrawal, a rejection
    /// note) rather than carrying a result a later one may supersede.
    pub fn withdraws(self) -> bool {
        matches!(self, Kind::Withdrawal | Kind::RejectionNote)
    }
}

/// The bytes to send, built when the entry is enqueued so every attempt sends the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    /// An HL7 v2 message (segments separated by CR), sent in one MLLP frame.
    Hl7 {
        /// The message text.
        message: String,
    },
    /// An MQTT publication (QoS 1).
    Mqtt {
        /// Topic.
        topic: String,
        /// Body (JSON text).
        body: String,
        /// Retain flag.
        retain: bool,
    },
    /// Stored DICOM instances to push by C-STORE.
    Dicom {
        /// SOP Instance UIDs, looked up in the store at send time.
        sop_instance_uids: Vec<String>,
    },
}

/// Delivery state of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting for its first attempt (or re-queued by a technician).
    Queued,
    /// At least one attempt failed; the next is scheduled.
    Retrying,
    /// Refused `max_rejections` times: kept until a technician re-queues it.
    Dead,
}

impl EntryState {
    /// The state's name in metrics and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Queued => "queued",
            EntryState::Retrying => "retrying",
            EntryState::Dead => "dead",
        }
    }
}

/// An entry to enqueue, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// Destination.
    pub dest: Destination,
    /// What it carries.
    pub kind: Kind,
    /// Idempotency key (the report id).
    pub report_id: String,
    /// The study the entry is about (its Study Instance UID): the object of the audit
    /// record written when the entry leaves the box. Kept on the box only, never sent.
    pub study_instance_uid: String,
    /// What to send.
    pub payload: Payload,
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique, monotonic id (position in its destination's queue).
    pub id: u64,
    /// Destination.
    pub dest: Destination,
    /// What it carries.
    pub kind: Kind,
    /// Idempotency key: the report id, carried in every message.
    pub report_id: String,
    /// The study the entry is about (Study Instance UID), for the audit record of its
    /// delivery; empty in entries queued by a release that did not record it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub study_instance_uid: String,
    /// What to send.
    pub payload: Payload,
    /// Attempts made so far.
    pub attempts: u32,
    /// Explicit refusals so far (HL7 AE/AR, DICOM failure status).
    pub rejections: u32,
    /// Delivery state.
    pub state: EntryState,
    /// When the next attempt is due, milliseconds since the epoch.
    pub next_attempt_at: i64,
    /// The last failure or refusal, for technicians (our words and the peer's code).
    pub last_error: Option<String>,
    /// The peer's own words with the last refusal (MSA-3 of an HL7 ACK), which may name
    /// the patient: shown to console users only on request, and audited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_text: Option<String>,
    /// When the entry was committed, milliseconds since the epoch.
    pub created_at: i64,
}

/// What the outbox's figures and status read of an entry: everything but its payload,
/// which decoding skips without holding it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct EntryHead {
    pub(super) id: u64,
    pub(super) dest: Destination,
    pub(super) kind: Kind,
    pub(super) report_id: String,
    pub(super) attempts: u32,
    pub(super) state: EntryState,
    pub(super) next_attempt_at: i64,
    pub(super) last_error: Option<String>,
    #[serde(default)]
    pub(super) peer_text: Option<String>,
    pub(super) created_at: i64,
}

impl Entry {
    pub(super) fn key(&self) -> Vec<u8> {
        self.dest.key(self.id)
    }
}

/// What was delivered: one record per (report, destination, kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveredRecord {
    /// Report id.
    pub report_id: String,
    /// Destination.
    pub dest: Destination,
    /// Kind.
    pub kind: Kind,
    /// The entry's id.
    pub id: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// When the peer acknowledged it, milliseconds since the epoch.
    pub delivered_at: i64,
}

/// Delivery status of one message of a report, for the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// Destination.
    pub dest: Destination,
    /// Kind.
    pub kind: Kind,
    /// `queued`, `retrying`, `dead` or `delivered`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The peer's words with the last refusal, if any.
    pub peer_text: Option<String>,
}

/// Which entries a technician re-queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelector {
    /// One entry by id.
    Id(u64),
    /// Every dead or retrying entry of one destination.
    Destination(Destination),
    /// Every dead or retrying entry.
    All,
}

impl FromStr for RetrySelector {
    type Err = SelectorError;
    /// `all`, an entry id, or a destination name (`hl7`, `mqtt`, `pacs:NAME`): the
    /// argument of `duli outbox retry`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(RetrySelector::All),
            t if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) => t
                .parse()
                .map(RetrySelector::Id)
                .map_err(|e| SelectorError::BadEntryId(t.to_string(), e)),
            t => t
                .parse()
                .map(RetrySelector::Destination)
                .map_err(|e| SelectorError::NotASelector(Box::new(e))),
        }
    }
}

/// Renders entries as the table `duli outbox list` prints (one line per entry, payloads
/// left out), ages relative to `now_ms`.
pub fn render_table(entries: &[Entry], now_ms: i64) -> String {
    let mut out = format!(
        "{:>10}  {:<14} {:<18} {:<9} {:>8} {:>7} {:>9}  {:<24} {}\n",
        "ID", "DEST", "KIND", "STATE", "ATTEMPTS", "REFUSED", "AGE", "REPORT", "LAST ERROR"
    );
    for e in entries {
        let age = (now_ms - e.created_at).max(0) / 1000;
        out.push_str(&format!(
            "{:>10}  {:<14} {:<18} {:<9} {:>8} {:>7} {:>8}s  {:<24} {}\n",
            e.id,
            e.dest.name(),
            e.kind.as_str(),
            e.state.as_str(),
            e.attempts,
            e.rejections,
            age,
            e.report_id,
            match (&e.last_error, &e.peer_text) {
                (Some(error), Some(text)) => format!("{error}: {text}"),
                (error, _) => error.clone().unwrap_or_default(),
            }
        ));
    }
    out
}
impl Entry {
    /// A fresh entry with id `id`, created at `now` (ms), due at once.
    pub(super) fn new(id: u64, new: &NewEntry, now: i64) -> Entry {
        Entry {
            id,
            dest: new.dest.clone(),
            kind: new.kind,
            report_id: new.report_id.clone(),
            study_instance_uid: new.study_instance_uid.clone(),
            payload: new.payload.clone(),
            attempts: 0,
            rejections: 0,
            state: EntryState::Queued,
            next_attempt_at: now,
            last_error: None,
            peer_text: None,
            created_at: now,
        }
    }
}
