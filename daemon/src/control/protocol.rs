//! The control socket's protocol, shared by the daemon and the command line: one JSON
//! [`Request`] line, one JSON [`Response`] line. The `data` of an `ok` response is the
//! request's typed answer ([`Answer`]); the typed client calls ([`super::client`]) decode
//! it into the type their request answers.

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
}

/// The answer to a [`Request`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `data` is the command's result.
    Ok {
        /// The command's [`Answer`] as JSON.
        data: serde_json::Value,
    },
    /// Failed; `message` says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl Response {
    /// The response carrying `answer`.
    pub fn answer(answer: &Answer) -> Response {
        match serde_json::to_value(answer) {
            Ok(data) => Response::Ok { data },
            Err(e) => Response::Error {
                message: format!("answer not encodable: {e}"),
            },
        }
    }

    /// The response of a failed request.
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response::Error {
            message: e.to_string(),
        }
    }
}

/// The typed answer of each request (the `data` of [`Response::Ok`]; on the wire without
/// a tag: the request says which it is).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
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

/// Answer of [`Request::Status`]: instances, and studies per state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Instances in the index.
    pub instances: u64,
    /// Studies per state name.
    pub studies: BTreeMap<String, u64>,
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
