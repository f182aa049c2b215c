//! The Query/Retrieve SCP (PS3.4 Annex C): C-FIND, C-MOVE and C-GET over the store's index,
//! in the Study Root and Patient Root information models.
//!
//! - [`index`]: secondary index keys (patient ID, accession, study date, name) kept by the
//!   store in the same transaction as the study records.
//! - [`matching`]: attribute matching rules (wildcards, ranges, lists, case).
//! - [`charset`]: identifiers without Specific Character Set, and the responses' own.
//! - [`identifier`]: request identifiers decoded within bounds, responses encoded.
//! - [`query`]: identifiers to queries, queries to matches and response identifiers.
//! - [`select`]: the unique keys of a retrieve identifier to the instances to send.
//! - [`payload`]: the data set of a sub-operation, as stored or transcoded to a syntax the
//!   peer accepted.
//! - [`find`], [`c_move`], [`c_get`]: the three services, each run as a task by the
//!   association loop ([`crate::receive::association`]) so C-CANCEL can stop it.

pub mod c_get;
pub mod c_move;
pub mod charset;
pub mod find;
pub mod identifier;
pub use crate::store::qr_index as index;
pub mod matching;
pub mod payload;
pub mod query;
pub mod select;

pub use query::{Level, Model};

use crate::audit::Audit;
use crate::audit::{Action, Event};
use crate::config::PacsDestination;
use crate::dimse::command::Command;
use crate::store::Store;
use crate::ul::negotiate::Accepted;
use crate::ul::writer::SharedWriter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Which service a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// C-FIND.
    Find,
    /// C-MOVE.
    Move,
    /// C-GET.
    Get,
}

/// What the Q/R services use of the appliance: nothing else of the SCP reaches them.
pub struct Context {
    /// The store the index and the files are read from.
    pub store: Arc<Store>,
    /// The audit trail queries and retrieves are recorded in.
    pub audit: Arc<Audit>,
    /// Our AE title (Retrieve AE Title, calling AE of C-MOVE associations).
    pub ae_title: String,
    /// Known AEs (`[[pacs.destinations]]`); those with `move = true` are C-MOVE destinations.
    pub move_destinations: Vec<PacsDestination>,
    /// What re-encoding an instance for a peer that does not take the stored syntax may
    /// cost (`inference.max_pixels`, `retention.disk_reserve_mb`).
    pub re_encoding: payload::Limits,
    /// Most C-FIND matches answered for one request (`dicom.max_find_matches`).
    pub max_find_matches: usize,
}

/// One C-FIND, C-MOVE or C-GET request, with what its service needs from the association.
pub struct Op {
    /// The appliance's side of the services.
    pub ctx: Arc<Context>,
    /// Where responses (and C-GET sub-operations) are written.
    pub writer: SharedWriter,
    /// Presentation context of the request.
    pub pc_id: u8,
    /// Its abstract syntax (the Q/R SOP class).
    pub abstract_syntax: String,
    /// Its transfer syntax (identifiers are decoded and encoded in it).
    pub transfer_syntax: String,
    /// Message ID of the request (what a C-CANCEL names).
    pub message_id: Option<u16>,
    /// The request's command set.
    pub rq: Command,
    /// The request's identifier, still encoded.
    pub identifier: Vec<u8>,
    /// The negotiated association (contexts, roles, calling AE).
    pub accepted: Arc<Accepted>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Set when the peer sends C-CANCEL for this request, when its association ends, or
    /// when the service itself stops its matching.
    pub cancel: Arc<Stop>,
    /// C-STORE responses of the peer (C-GET sub-operations).
    pub store_rsps: mpsc::Receiver<Command>,
    /// Set once the association has logged that the peer omits Specific Character Set
    /// (0008,0005) before non-ASCII values (the warning is given once per association).
    pub charset_warned: Arc<AtomicBool>,
    /// The Message IDs of the C-STORE sub-operations this association's C-GETs send: one
    /// sequence for the whole association, so that a late response to an earlier C-GET's
    /// sub-operation is never taken for one of a later C-GET.
    pub sub_operation_ids: Arc<std::sync::atomic::AtomicU16>,
}

impl Op {
    /// The Message ID of the next C-STORE sub-operation (never 0).
    pub fn next_sub_operation_id(&self) -> u16 {
        loop {
            let id = self
                .sub_operation_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1);
            if id != 0 {
                return id;
            }
        }
    }

    /// The information model of the request.
    pub fn model(&self) -> Option<Model> {
        Model::of_sop_class(&self.abstract_syntax)
    }

    /// Appends an audit record as the calling AE.
    pub fn audit(&self, action: Action, object: &str, detail: String, failed: bool) {
        let requestor = format!("ae:{}", self.accepted.calling_ae);
        let transfer = action == Action::Transfer;
        let mut e = Event::new(&requestor, action, object)
            .from(&self.peer.ip().to_canonical().to_string())
            .detail(detail);
        // Instances transferred go to the Move Destination, or back to a C-GET's requestor.
        if transfer {
            let destination = match self.rq.command_field {
                crate::dimse::CommandField::CMoveRq => self
                    .rq
                    .move_destination
                    .as_deref()
                    .map(|d| format!("ae:{}", d.trim()))
                    .filter(|d| d.len() > 3),
                crate::dimse::CommandField::CGetRq => Some(requestor.clone()),
                _ => None,
            };
            if let Some(d) = destination {
                e = e.to(&d);
            }
        }
        if failed {
            e = e.failed();
        }
        if let Err(err) = self.ctx.audit.append(e) {
            log::error!("audit trail: cannot record a Q/R event: {err}");
        }
    }

    /// True once the request is to stop, for whatever reason ([`Stop::is_set`]).
    pub fn cancelled(&self) -> bool {
        self.cancel.is_set()
    }

    /// True when the request stops because the peer cancelled it (C-CANCEL, or a release
    /// before the final response), not because its association ended or it stopped itself.
    pub fn cancelled_by_peer(&self) -> bool {
        self.cancel.by_peer()
    }
}

/// Why a running request stops, shared by the association loop, the service task and its
/// matching thread: not at all, cancelled by the peer, or stopped (association aborted or
/// lost, or the service ending its own matching). The first reason set is kept, so a
/// C-FIND cut off by an abort is never recorded as cancelled by a peer that did not ask.
#[derive(Debug, Default)]
pub struct Stop(AtomicU8);

impl Stop {
    const RUNNING: u8 = 0;
    const BY_PEER: u8 = 1;
    const STOPPED: u8 = 2;

    /// Marks the request cancelled by its peer, unless it is already stopping.
    pub fn cancel_by_peer(&self) {
        self.set(Self::BY_PEER);
    }

    /// Marks the request stopped for a reason other than the peer's cancel, unless it is
    /// already stopping.
    pub fn stop(&self) {
        self.set(Self::STOPPED);
    }

    fn set(&self, why: u8) {
        let _ = self
            .0
            .compare_exchange(Self::RUNNING, why, Ordering::AcqRel, Ordering::Acquire);
    }

    /// True once either reason is set.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire) != Self::RUNNING
    }

    /// True when the peer's cancel came first.
    pub fn by_peer(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::BY_PEER
    }
}

/// Runs one request to its final response; returns a line for the log.
pub async fn serve(kind: Operation, op: Op) -> String {
    match kind {
        Operation::Find => find::serve(op).await,
        Operation::Move => c_move::serve(op).await,
        Operation::Get => c_get::serve(op).await,
    }
}

/// The objects a retrieve touched, for the audit trail: the study UIDs, each once,
/// comma-separated (the ATNA export, [`crate::console::atna`], makes each its own
/// participant object), or `-` when it touched none.
pub fn audit_object(instances: &[crate::model::InstanceRecord]) -> String {
    let mut studies: Vec<&str> = Vec::new();
    for i in instances {
        if !studies.contains(&i.study_instance_uid.as_str()) {
            studies.push(&i.study_instance_uid);
        }
    }
    if studies.is_empty() {
        "-".to_string()
    } else {
        studies.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::Stop;

    #[test]
    fn the_first_reason_to_stop_is_kept() {
        let aborted = Stop::default();
        assert!(!aborted.is_set());
        aborted.stop();
        aborted.cancel_by_peer();
        assert!(aborted.is_set() && !aborted.by_peer());

        let cancelled = Stop::default();
        cancelled.cancel_by_peer();
        cancelled.stop();
        assert!(cancelled.is_set() && cancelled.by_peer());
    }
}
