//! The control socket's protocol, shared by the daemon and the command line: one JSON
//! [`Request`] line, one JSON [`Response`] line. The `data` of an `ok` response is the
//! request's typed [`Answer`], tagged with its kind on the wire; the typed client calls
//! ([`super::client`]) take the variant their request answers ([`FromAnswer`]) and refuse
//! any other.

use crate::accounts::{PasswordHash, Role, UserInfo};
use crate::audit::{Event, Head, VerificationReport};
use crate::model::{InstanceRecord, StudyRecord};
use crate::store::ReindexReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A command for the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Rebuild the instance index from the files.
    Reindex,
    /// Counts of instances and studies per state.
    Status,
    /// List studies.
    Studies,
    /// Verify the audit trail's hash chain.
    AuditVerify,
    /// List outbox entries (optionally of one destination).
    OutboxList {
        /// `hl7`, `mqtt` or `pacs:NAME`; all when absent.
        #[serde(default)]
        dest: Option<String>,
    },
    /// Re-queue dead entries and make retrying ones due now: `all`, an entry id, or a
    /// destination.
    OutboxRetry {
        /// What to retry.
        selector: String,
    },
    /// List the instances of one study, or of every study.
    Instances {
        /// Study Instance UID; all studies when absent.
        #[serde(default)]
        study: Option<String>,
    },
    /// Create a console user (the password is hashed by the CLI; only the hash travels).
    UserAdd {
        /// Login name.
        name: String,
        /// Role.
        role: Role,
        /// PBKDF2 hash of the password.
        password_hash: PasswordHash,
    },
    /// List console users (names, roles, never hashes).
    UserList,
    /// Append a record to the audit trail (technician commands: firmware, provisioning).
    AuditAppend(Event),
}

impl Request {
    /// The request that appends `event` to the audit trail.
    pub fn audit(event: Event) -> Request {
        Request::AuditAppend(event)
    }

    /// How long the command line waits for the daemon's answer: a reindex reads every
    /// stored file, listings and the audit check walk whole trees, the rest is quick.
    pub fn timeout(&self) -> std::time::Duration {
        let secs = match self {
            Request::Reindex => 4 * 3600,
            Request::AuditVerify
            | Request::Studies
            | Request::Instances { .. }
            | Request::OutboxList { .. } => 15 * 60,
            Request::Status
            | Request::OutboxRetry { .. }
            | Request::UserAdd { .. }
            | Request::UserList
            | Request::AuditAppend(_) => 2 * 60,
        };
        std::time::Duration::from_secs(secs)
    }
}

/// The answer to a [`Request`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `data` is the command's result.
    Ok {
        /// The command's [`Answer`].
        data: Answer,
    },
    /// Failed; `message` says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl Response {
    /// The response carrying `answer`.
    pub fn answer(answer: Answer) -> Response {
        Response::Ok { data: answer }
    }

    /// The response of a failed request.
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response::Error {
            message: e.to_string(),
        }
    }
}

/// The typed answer of each request (the `data` of [`Response::Ok`]; on the wire
/// `{"answer": "<kind>", "value": ...}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum Answer {
    /// [`Request::Reindex`].
    Reindexed(ReindexReport),
    /// [`Request::Status`].
    Status(StoreStatus),
    /// [`Request::Studies`].
    Studies(Vec<StudyRecord>),
    /// [`Request::AuditVerify`].
    AuditVerified(VerificationReport),
    /// [`Request::OutboxList`].
    OutboxListed(OutboxListing),
    /// [`Request::OutboxRetry`].
    Requeued(Requeued),
    /// [`Request::Instances`].
    Instances(Vec<InstanceRecord>),
    /// [`Request::UserAdd`].
    UserAdded(UserAdded),
    /// [`Request::UserList`].
    Users(Vec<UserInfo>),
    /// [`Request::AuditAppend`]: the new record's place in the chain.
    AuditAppended(Head),
}

impl Answer {
    /// The answer's value as JSON, without its tag (what `duli status` and the others print).
    pub fn value(&self) -> serde_json::Value {
        let value = match self {
            Answer::Reindexed(v) => serde_json::to_value(v),
            Answer::Status(v) => serde_json::to_value(v),
            Answer::Studies(v) => serde_json::to_value(v),
            Answer::AuditVerified(v) => serde_json::to_value(v),
            Answer::OutboxListed(v) => serde_json::to_value(v),
            Answer::Requeued(v) => serde_json::to_value(v),
            Answer::Instances(v) => serde_json::to_value(v),
            Answer::UserAdded(v) => serde_json::to_value(v),
            Answer::Users(v) => serde_json::to_value(v),
            Answer::AuditAppended(v) => serde_json::to_value(v),
        };
        value.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}

/// A type some request answers: taken out of the [`Answer`] of that request, `None` for
/// any other answer.
pub trait FromAnswer: Sized {
    /// The value when `answer` is of this type's variant.
    fn from_answer(answer: Answer) -> Option<Self>;
}

macro_rules! from_answer {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(impl FromAnswer for $ty {
            fn from_answer(answer: Answer) -> Option<Self> {
                match answer {
                    Answer::$variant(v) => Some(v),
                    _ => None,
                }
            }
        })*
    };
}

from_answer! {
    Reindexed => ReindexReport,
    Status => StoreStatus,
    Studies => Vec<StudyRecord>,
    AuditVerified => VerificationReport,
    OutboxListed => OutboxListing,
    Requeued => Requeued,
    Instances => Vec<InstanceRecord>,
    UserAdded => UserAdded,
    Users => Vec<UserInfo>,
    AuditAppended => Head,
}

/// Answer of [`Request::Status`]: instances, studies per state, and the forwarding of the
/// audit trail when it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Instances in the index.
    pub instances: u64,
    /// Studies per state name.
    pub studies: BTreeMap<String, u64>,
    /// The state of the forwarding to the audit record repository (`[audit] syslog`);
    /// absent when it is off, or when the store was read without a running daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_forward: Option<crate::audit_forward::status::ForwardStatus>,
    /// The inference stage's model, as the running daemon has it: `ready`, `starting` or
    /// `waiting for model: <why>`; absent when the store was read without a running daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Answer of [`Request::OutboxList`]: the entries as the table `duli outbox list` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxListing {
    /// One line per entry, with a header.
    pub table: String,
    /// Number of entries.
    pub entries: usize,
}

/// Answer of [`Request::OutboxRetry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requeued {
    /// Entries re-queued or made due now.
    pub requeued: u64,
}

/// Answer of [`Request::UserAdd`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdded {
    /// Login name.
    pub created: String,
    /// Role.
    pub role: Role,
}
