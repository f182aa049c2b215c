//! The one answer every service gives when a request does not succeed: a [`Refused`] is a
//! [`Cause`] (which fixes the DIMSE status) and an Error Comment (0000,0902) for the peer.
//!
//! Each service's error type converts into it (`From` next to the error: the store in
//! [`crate::receive::store`], queries in [`crate::qr::query`], request checks in
//! [`crate::receive::authorize`]), so the mapping from a condition to its status is written
//! once, here. [`Cause::ALL`] lists every cause; [`table`] renders them as the Markdown
//! table of the conformance statement, which a test keeps identical to the document.

use super::command::{Command, CommandField, SubOperations};
use super::status::Status;
use std::fmt;

/// Every condition under which a service refuses or fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The operation is not a service of the context's SOP class, or the peer holds only
    /// the SCP role on the context.
    NotAgreed,
    /// The Affected SOP Class UID differs from the context's abstract syntax.
    SopClassMismatch,
    /// The calling AE lacks the permission (C-STORE, C-MOVE, C-GET).
    NotPermitted,
    /// The calling AE lacks the permission (C-ECHO, C-FIND: their status lists have no 0124).
    NotPermittedNoStatus,
    /// A request that this association does not serve.
    Unrecognized,
    /// Another C-FIND, C-MOVE or C-GET is in progress on the association.
    Busy,
    /// The client (under whatever calling AE titles) sent more queries and retrieves in a
    /// minute than allowed.
    RateExceeded,
    /// A request names the Message ID of the operation in progress (PS3.7 C.5.3 0210).
    DuplicateInvocation,
    /// A C-STORE-RQ without Affected SOP Class or Instance UID.
    MissingUids,
    /// The data disk is below its reserve, or its free space cannot be read.
    DiskReserve,
    /// An admission check refused (the delivery outbox is full).
    Admission,
    /// The study already holds `dicom.max_instances_per_study` instances.
    StudyFull,
    /// A write, fsync, file placement, index commit or flush failed.
    WriteFailed,
    /// The data set cannot be parsed or breaks a data set limit.
    CannotUnderstand,
    /// The data set's SOP Class or Instance UID differs from the command's.
    DataSetMismatch,
    /// The SOP Instance UID belongs to a result object this device generated.
    Protected,
    /// The Patient ID begins with the prefix reserved for the console's manual uploads.
    ReservedPatientId,
    /// The request's SOP class is not a Query/Retrieve model.
    NotQueryRetrieve,
    /// The identifier does not decode in the context's transfer syntax.
    IdentifierUndecodable,
    /// The identifier lacks a valid Query/Retrieve Level or the unique key of its level, or
    /// a retrieve's unique key holds a wildcard.
    IdentifierInvalid,
    /// The index failed while matching.
    IndexFailed,
    /// More C-FIND matches than `dicom.max_find_matches`.
    TooManyMatches,
    /// A C-MOVE or C-GET that selects more instances than one retrieve may send.
    TooManyInstances,
    /// The Move Destination is not a C-MOVE destination.
    MoveDestinationUnknown,
    /// The destination could not be reached or did not accept the association.
    DestinationUnreachable,
    /// A Storage Commitment report names another SOP instance than the well-known one.
    CommitmentInstanceUnknown,
    /// A Storage Commitment report of an event type other than 1 or 2.
    CommitmentEventUnknown,
    /// A Storage Commitment report whose event information cannot be read, or whose
    /// transaction waits for another AE title's report.
    CommitmentReportRefused,
}

impl Cause {
    /// Every cause, in the order of the conformance statement's table.
    pub const ALL: [Cause; 28] = [
        Cause::NotAgreed,
        Cause::SopClassMismatch,
        Cause::NotPermitted,
        Cause::NotPermittedNoStatus,
        Cause::Unrecognized,
        Cause::Busy,
        Cause::RateExceeded,
        Cause::DuplicateInvocation,
        Cause::MissingUids,
        Cause::DiskReserve,
        Cause::Admission,
        Cause::StudyFull,
        Cause::WriteFailed,
        Cause::CannotUnderstand,
        Cause::DataSetMismatch,
        Cause::Protected,
        Cause::ReservedPatientId,
        Cause::NotQueryRetrieve,
        Cause::IdentifierUndecodable,
        Cause::IdentifierInvalid,
        Cause::IndexFailed,
        Cause::TooManyMatches,
        Cause::TooManyInstances,
        Cause::MoveDestinationUnknown,
        Cause::DestinationUnreachable,
        Cause::CommitmentInstanceUnknown,
        Cause::CommitmentEventUnknown,
        Cause::CommitmentReportRefused,
    ];

    /// The DIMSE status that answers this cause.
    pub fn status(self) -> Status {
        match self {
            Cause::NotAgreed | Cause::Unrecognized => Status::UNRECOGNIZED_OPERATION,
            Cause::DuplicateInvocation => Status::DUPLICATE_INVOCATION,
            Cause::SopClassMismatch | Cause::NotPermittedNoStatus | Cause::NotQueryRetrieve => {
                Status::SOP_CLASS_NOT_SUPPORTED
            }
            Cause::NotPermitted | Cause::Protected => Status::NOT_AUTHORIZED,
            Cause::Busy
            | Cause::RateExceeded
            | Cause::DiskReserve
            | Cause::Admission
            | Cause::StudyFull
            | Cause::WriteFailed
            | Cause::TooManyMatches => Status::OUT_OF_RESOURCES,
            Cause::MissingUids | Cause::CannotUnderstand | Cause::ReservedPatientId => {
                Status::CANNOT_UNDERSTAND
            }
            Cause::DataSetMismatch => Status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            Cause::IdentifierUndecodable | Cause::IndexFailed => Status::UNABLE_TO_PROCESS,
            Cause::IdentifierInvalid => Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            Cause::TooManyInstances => Status::OUT_OF_RESOURCES_MATCHES,
            Cause::MoveDestinationUnknown => Status::MOVE_DESTINATION_UNKNOWN,
            Cause::DestinationUnreachable => Status::OUT_OF_RESOURCES_SUB_OPERATIONS,
            Cause::CommitmentInstanceUnknown => Status::NO_SUCH_SOP_INSTANCE,
            Cause::CommitmentEventUnknown => Status::NO_SUCH_EVENT_TYPE,
            Cause::CommitmentReportRefused => Status::PROCESSING_FAILURE,
        }
    }

    /// The services that answer with this cause, as the conformance statement names them.
    pub fn services(self) -> &'static str {
        match self {
            Cause::NotAgreed | Cause::SopClassMismatch | Cause::Unrecognized => "any",
            Cause::NotPermitted => "C-STORE, C-MOVE, C-GET",
            Cause::NotPermittedNoStatus => "C-ECHO, C-FIND",
            Cause::TooManyMatches => "C-FIND",
            Cause::TooManyInstances => "C-MOVE, C-GET",
            Cause::Busy | Cause::RateExceeded | Cause::DuplicateInvocation => {
                "C-FIND, C-MOVE, C-GET"
            }
            Cause::MissingUids
            | Cause::DiskReserve
            | Cause::Admission
            | Cause::StudyFull
            | Cause::WriteFailed
            | Cause::CannotUnderstand
            | Cause::DataSetMismatch
            | Cause::Protected
            | Cause::ReservedPatientId => "C-STORE",
            Cause::NotQueryRetrieve
            | Cause::IdentifierUndecodable
            | Cause::IdentifierInvalid
            | Cause::IndexFailed => "C-FIND, C-MOVE, C-GET",
            Cause::MoveDestinationUnknown | Cause::DestinationUnreachable => "C-MOVE",
            Cause::CommitmentInstanceUnknown
            | Cause::CommitmentEventUnknown
            | Cause::CommitmentReportRefused => "N-EVENT-REPORT (Storage Commitment)",
        }
    }

    /// The condition, as the conformance statement describes it.
    pub fn condition(self) -> &'static str {
        match self {
            Cause::NotAgreed => {
                "the operation is not a service of the context's SOP class, or the peer holds \
                 only the SCP role on the context"
            }
            Cause::SopClassMismatch => {
                "the Affected SOP Class UID differs from the context's abstract syntax"
            }
            Cause::NotPermitted | Cause::NotPermittedNoStatus => {
                "the calling AE lacks the operation's permission (`allowed_peers`)"
            }
            Cause::Unrecognized => "a request this association does not serve",
            Cause::Busy => "another operation is in progress on the association",
            Cause::RateExceeded => {
                "the client (an IPv4 address, an IPv6 /64, under whatever calling AE titles) \
                 sent more C-FIND, C-MOVE and C-GET requests \
                 in the last minute than `[dicom] max_qr_requests_per_minute` (default 300); \
                 the refusal counts toward the 8 that abort an association"
            }
            Cause::DuplicateInvocation => {
                "the request names the Message ID of the operation in progress"
            }
            Cause::MissingUids => "the command lacks Affected SOP Class or Instance UID",
            Cause::DiskReserve => {
                "free disk below `[retention] disk_reserve_mb` when the C-STORE starts"
            }
            Cause::Admission => "the delivery outbox is full",
            Cause::StudyFull => {
                "a new instance of a study that already holds `[dicom] max_instances_per_study` \
                 (default 10000) instances"
            }
            Cause::WriteFailed => {
                "a write, fsync, file placement, index commit or index flush failed"
            }
            Cause::CannotUnderstand => {
                "the data set cannot be parsed, breaks a data set limit, or lacks \
                 Study/Series/SOP Instance UID"
            }
            Cause::DataSetMismatch => {
                "the data set's SOP Class or SOP Instance UID differs from the command's"
            }
            Cause::Protected => {
                "the SOP Instance UID belongs to a result object this device generated (SR, \
                 heatmap): it cannot be replaced from outside"
            }
            Cause::ReservedPatientId => {
                "the Patient ID begins with `UPLOAD-`, reserved for the console's manual \
                 uploads (whose results are never sent)"
            }
            Cause::NotQueryRetrieve => "the context is not a Query/Retrieve model",
            Cause::IdentifierUndecodable => {
                "the identifier does not decode in the context's transfer syntax"
            }
            Cause::IdentifierInvalid => {
                "the identifier lacks a valid Query/Retrieve Level or its level's unique key, or a C-MOVE/C-GET unique key holds a wildcard"
            }
            Cause::IndexFailed => "the index failed",
            Cause::TooManyMatches => {
                "more matches than `[dicom] max_find_matches` (default 10000): the first ones \
                 are answered (pending), then this final status asks to narrow the query"
            }
            Cause::TooManyInstances => {
                "the identifier selects more than 50000 instances (`qr::select::MAX_RETRIEVE_INSTANCES`): \
                 nothing is sent; retrieve by study or series"
            }
            Cause::MoveDestinationUnknown => {
                "the Move Destination is not a `[[pacs.destinations]]` entry with `move = true`"
            }
            Cause::DestinationUnreachable => {
                "the destination cannot be reached or refuses the association (every \
                 sub-operation fails)"
            }
            Cause::CommitmentInstanceUnknown => {
                "the Affected SOP Instance UID is not the well-known Storage Commitment \
                 instance"
            }
            Cause::CommitmentEventUnknown => "the Event Type ID is neither 1 nor 2",
            Cause::CommitmentReportRefused => {
                "the event information cannot be read (no Transaction UID, items without \
                 their UIDs, over 10000 instances, a data set limit), or the transaction \
                 was sent to another AE title than the caller's"
            }
        }
    }
}

/// A request refused or failed: its cause and the Error Comment for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why; fixes the status.
    pub cause: Cause,
    /// The Error Comment (cut to 64 characters when sent) and the log line's reason.
    pub comment: String,
}

impl Refused {
    /// A refusal for `cause` with `comment`.
    pub fn new(cause: Cause, comment: impl Into<String>) -> Refused {
        Refused {
            cause,
            comment: comment.into(),
        }
    }

    /// The DIMSE status that answers it.
    pub fn status(&self) -> Status {
        self.cause.status()
    }

    /// The final response to `rq` carrying this refusal's status and Error Comment (no
    /// sub-operation counts for C-MOVE and C-GET).
    pub fn response(&self, rq: &Command) -> Command {
        failure_rsp(rq, self.status(), &self.comment)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}: {}", self.status().0, self.comment)
    }
}

impl std::error::Error for Refused {}

/// The final response to request `rq` with a failure `status` and an Error Comment.
pub fn failure_rsp(rq: &Command, status: Status, comment: &str) -> Command {
    let none = SubOperations::default();
    let rsp = match rq.command_field {
        CommandField::CEchoRq => Command::echo_rsp(rq, status),
        CommandField::CStoreRq => Command::store_rsp(rq, status),
        CommandField::CFindRq => Command::find_rsp(rq, status),
        CommandField::CMoveRq => Command::move_rsp(rq, status, none),
        CommandField::CGetRq => Command::get_rsp(rq, status, none),
        CommandField::NEventReportRq => Command::event_report_rsp(rq, status),
        _ => Command {
            status: Some(status),
            ..unrecognized(rq)
        },
    };
    rsp.with_error_comment(comment)
}

/// "Unrecognized operation" (0211) for a request an association does not serve.
pub fn unrecognized(rq: &Command) -> Command {
    Command {
        message_id_being_responded_to: rq.message_id,
        affected_sop_class_uid: rq.affected_sop_class_uid.clone(),
        status: Some(Cause::Unrecognized.status()),
        ..Command::new(CommandField::from_code(rq.command_field.code() | 0x8000))
    }
}

/// The conformance statement's table of failure statuses, one row per [`Cause`].
pub fn table() -> String {
    let mut out = String::from("| services | condition | status |\n|---|---|---|\n");
    for cause in Cause::ALL {
        out.push_str(&format!(
            "| {} | {} | `{:04X}` |\n",
            cause.services(),
            cause.condition(),
            cause.status().0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::status::StatusClass;

    #[test]
    fn every_cause_is_a_failure_and_listed_once() {
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(c.status().class(), StatusClass::Failure, "{c:?}");
            assert!(!Cause::ALL[i + 1..].contains(c), "{c:?} listed twice");
        }
    }

    /// The conformance statement carries the table rendered from [`Cause`], between its
    /// markers: a status changed here and not there (or the other way round) fails.
    #[test]
    fn the_conformance_statement_table_matches_the_causes() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dicom-conformance.md"),
        )
        .unwrap();
        let begin = "<!-- failure-statuses:begin -->\n";
        let end = "<!-- failure-statuses:end -->";
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("end marker") + start;
        assert_eq!(
            &doc[start..stop],
            table(),
            "docs/dicom-conformance.md is out of date; paste dimse::refusal::table()"
        );
    }

    #[test]
    fn a_refusal_answers_its_request_with_its_status_and_comment() {
        let rq = Command::find_rq(
            7,
            crate::dimse::uids::STUDY_ROOT_QR_FIND,
            crate::dimse::Priority::Medium,
        );
        let rsp = Refused::new(Cause::IdentifierInvalid, "no level").response(&rq);
        assert_eq!(rsp.status, Some(Status(0xA900)));
        assert_eq!(rsp.message_id_being_responded_to, Some(7));
        assert_eq!(rsp.error_comment.as_deref(), Some("no level"));
    }
}
