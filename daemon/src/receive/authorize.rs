//! Whether one DIMSE request may run, decided per message and not only at negotiation:
//! the operation must be a service of its presentation context's SOP class, the command's
//! Affected SOP Class UID must be that SOP class, the calling AE must hold the permission
//! the operation needs, and the peer must hold the SCU role on the context.
//!
//! The decision is a pure function of the request, its accepted context and the calling
//! AE's permissions; a refusal carries the standard DIMSE status (PS3.7 Annex C, PS3.4)
//! and an Error Comment for the peer, and its full text for the log and the audit trail.

use crate::config::Permission;
use crate::dimse::command::{Command, CommandField};
use crate::dimse::refusal::{Cause, Refused};
use crate::dimse::status::Status;
use crate::dimse::uids;
use crate::ul::negotiate::AcceptedContext;
use std::collections::HashSet;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The operation is not a service of the context's SOP class (C-STORE on a
    /// Verification context, C-MOVE on a FIND context, ...).
    #[error("{operation} is not a service of {sop_class} (presentation context {pc_id})")]
    WrongContext {
        /// The operation requested.
        operation: CommandField,
        /// The abstract syntax of the context it arrived on.
        sop_class: String,
        /// The presentation context id.
        pc_id: u8,
    },
    /// The command names another SOP class than its context's abstract syntax.
    #[error(
        "{operation} names SOP class {affected} on presentation context {pc_id} of {sop_class}"
    )]
    SopClassMismatch {
        /// The operation requested.
        operation: CommandField,
        /// Affected SOP Class UID (0000,0002) of the command.
        affected: String,
        /// The abstract syntax of the context.
        sop_class: String,
        /// The presentation context id.
        pc_id: u8,
    },
    /// The calling AE lacks the permission the operation needs (`[dicom] allowed_peers`).
    #[error("{operation} needs the {permission} permission, which the calling AE lacks")]
    NotPermitted {
        /// The operation requested.
        operation: CommandField,
        /// The permission it needs.
        permission: Permission,
    },
    /// The calling AE at this address sent more queries and retrieves in the last minute
    /// than `dicom.max_qr_requests_per_minute`: each is a search or an export of patient
    /// data with an audit record, so a loop of them (a find permission is enough) would
    /// otherwise grow the audit trail, and the disk, without bound.
    #[error(
        "{operation} beyond {limit} queries and retrieves a minute from this calling AE and client"
    )]
    RateExceeded {
        /// The operation requested.
        operation: CommandField,
        /// `dicom.max_qr_requests_per_minute`.
        limit: u32,
    },
    /// Role selection left the peer the SCP role only on this context: it was accepted to
    /// receive C-GET sub-operations, not to send requests.
    #[error(
        "{operation} on presentation context {pc_id} of {sop_class}, where the peer holds only \
         the SCP role (accepted for C-GET sub-operations)"
    )]
    RoleNotAccepted {
        /// The operation requested.
        operation: CommandField,
        /// The abstract syntax of the context.
        sop_class: String,
        /// The presentation context id.
        pc_id: u8,
    },
}

impl Refusal {
    /// The cause that answers this refusal, which fixes its DIMSE status.
    ///
    /// A context or role the peers did not agree on is "unrecognized operation" (0211: the
    /// operation is not one of those agreed between the DIMSE service users); a SOP class
    /// other than the context's is "SOP class not supported" (0122); a missing permission is
    /// "not authorized" (0124) where the service defines it (C-STORE, C-MOVE, C-GET), and
    /// "SOP class not supported" for C-ECHO and C-FIND, whose status lists have no 0124.
    pub fn cause(&self) -> Cause {
        match self {
            Refusal::WrongContext { .. } | Refusal::RoleNotAccepted { .. } => Cause::NotAgreed,
            Refusal::SopClassMismatch { .. } => Cause::SopClassMismatch,
            Refusal::NotPermitted { operation, .. } => match operation {
                CommandField::CStoreRq | CommandField::CMoveRq | CommandField::CGetRq => {
                    Cause::NotPermitted
                }
                _ => Cause::NotPermittedNoStatus,
            },
            Refusal::RateExceeded { .. } => Cause::RateExceeded,
        }
    }

    /// The DIMSE status that answers this refusal (see [`Refusal::cause`]).
    pub fn status(&self) -> Status {
        self.cause().status()
    }

    /// A short Error Comment (0000,0902) for the peer (at most 64 characters).
    pub fn comment(&self) -> &'static str {
        match self {
            Refusal::WrongContext { .. } => {
                "operation is not a service of this context's SOP class"
            }
            Refusal::SopClassMismatch { .. } => "Affected SOP Class UID differs from the context's",
            Refusal::NotPermitted { .. } => "calling AE is not permitted this operation",
            Refusal::RoleNotAccepted { .. } => "peer holds only the SCP role on this context",
            Refusal::RateExceeded { .. } => "too many queries and retrieves a minute; slow down",
        }
    }
}

impl From<&Refusal> for Refused {
    fn from(r: &Refusal) -> Refused {
        Refused::new(r.cause(), r.comment())
    }
}

/// The permission a request needs, which is also the service its context must offer;
/// `None` for anything that is not a request we serve (responses, C-CANCEL, N-services).
pub fn permission_for(operation: CommandField) -> Option<Permission> {
    match operation {
        CommandField::CEchoRq => Some(Permission::Echo),
        CommandField::CStoreRq => Some(Permission::Store),
        CommandField::CFindRq => Some(Permission::Find),
        CommandField::CMoveRq => Some(Permission::Move),
        CommandField::CGetRq => Some(Permission::Get),
        CommandField::NEventReportRq => Some(Permission::Commitment),
        _ => None,
    }
}

/// The service a SOP class offers, named by the permission that uses it.
pub fn service_of(sop_class: &str) -> Option<Permission> {
    match sop_class {
        uids::VERIFICATION => Some(Permission::Echo),
        uids::STUDY_ROOT_QR_FIND | uids::PATIENT_ROOT_QR_FIND => Some(Permission::Find),
        uids::STUDY_ROOT_QR_MOVE | uids::PATIENT_ROOT_QR_MOVE => Some(Permission::Move),
        uids::STUDY_ROOT_QR_GET | uids::PATIENT_ROOT_QR_GET => Some(Permission::Get),
        uids::STORAGE_COMMITMENT_PUSH_MODEL => Some(Permission::Commitment),
        uid if uids::is_storage_sop_class(uid) => Some(Permission::Store),
        _ => None,
    }
}

/// Decides whether `rq`, received on `context`, may run for a calling AE holding
/// `permissions`. Commands that are not requests we serve pass: the association loop
/// answers them itself (a C-CANCEL names an operation already authorized, a C-STORE-RSP
/// answers one of our C-GET sub-operations, any other request is "unrecognized operation",
/// any other response ends the association).
pub fn authorize(
    rq: &Command,
    context: &AcceptedContext,
    permissions: &HashSet<Permission>,
) -> Result<(), Refusal> {
    let operation = rq.command_field;
    let Some(needed) = permission_for(operation) else {
        return Ok(());
    };
    let sop_class = &context.abstract_syntax;
    if service_of(sop_class) != Some(needed) {
        return Err(Refusal::WrongContext {
            operation,
            sop_class: sop_class.clone(),
            pc_id: context.id,
        });
    }
    // A command without Affected SOP Class UID is taken to mean its context's class.
    if let Some(affected) = rq.affected_sop_class_uid.as_deref() {
        let affected = affected.trim_end_matches(['\0', ' ']);
        if !affected.is_empty() && affected != sop_class {
            return Err(Refusal::SopClassMismatch {
                operation,
                // A UID has at most 64 characters; longer text is cut for the log.
                affected: affected.chars().take(64).collect(),
                sop_class: sop_class.clone(),
                pc_id: context.id,
            });
        }
    }
    if !permissions.contains(&needed) {
        return Err(Refusal::NotPermitted {
            operation,
            permission: needed,
        });
    }
    // The report of Storage Commitment comes from its SCP: the archive that proposed the
    // SCP role, or (as older archives do) no role selection at all.
    if !context.peer_scu && operation != CommandField::NEventReportRq {
        return Err(Refusal::RoleNotAccepted {
            operation,
            sop_class: sop_class.clone(),
            pc_id: context.id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::command::Priority;
    use Permission::*;

    const CR: &str = uids::COMPUTED_RADIOGRAPHY;
    const DX: &str = uids::DIGITAL_XRAY_PRESENTATION;
    const FIND: &str = uids::STUDY_ROOT_QR_FIND;
    const MOVE: &str = uids::STUDY_ROOT_QR_MOVE;
    const GET: &str = uids::PATIENT_ROOT_QR_GET;
    const VERIFICATION: &str = uids::VERIFICATION;
    const COMMIT: &str = uids::STORAGE_COMMITMENT_PUSH_MODEL;

    fn context(abstract_syntax: &str, peer_scu: bool) -> AcceptedContext {
        AcceptedContext {
            id: 7,
            abstract_syntax: abstract_syntax.to_string(),
            transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
            peer_scu,
        }
    }

    fn request(field: CommandField, affected: Option<&str>) -> Command {
        let mut rq = match field {
            CommandField::CEchoRq => Command::echo_rq(1),
            CommandField::CStoreRq => Command::store_rq(1, CR, "1.2.3.4", Priority::Medium),
            CommandField::CFindRq => Command::find_rq(1, FIND, Priority::Medium),
            CommandField::CMoveRq => Command::move_rq(1, MOVE, Priority::Medium, "DEST"),
            CommandField::CGetRq => Command::get_rq(1, GET, Priority::Medium),
            other => Command::new(other),
        };
        rq.affected_sop_class_uid = affected.map(str::to_string);
        rq
    }

    fn perms(list: &[Permission]) -> HashSet<Permission> {
        list.iter().copied().collect()
    }

    /// Expected outcome: `None` = allowed, `Some(status)` = refused with it.
    type Case = (
        &'static str,
        CommandField,
        Option<&'static str>,
        &'static str,
        bool,
        &'static [Permission],
        Option<u16>,
    );

    const ALL: &[Permission] = &[Echo, Store, Find, Move, Get];
    const QR_ONLY: &[Permission] = &[Echo, Find, Move, Get];

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // Each operation on its own kind of context, with its permission: allowed.
        ("echo", CommandField::CEchoRq, Some(VERIFICATION), VERIFICATION, true, ALL, None),
        ("store", CommandField::CStoreRq, Some(CR), CR, true, ALL, None),
        ("find", CommandField::CFindRq, Some(FIND), FIND, true, ALL, None),
        ("move", CommandField::CMoveRq, Some(MOVE), MOVE, true, ALL, None),
        ("get", CommandField::CGetRq, Some(GET), GET, true, ALL, None),
        ("no affected class", CommandField::CStoreRq, None, CR, true, ALL, None),
        ("padded affected class", CommandField::CFindRq, Some("1.2.840.10008.5.1.4.1.2.2.1\0"), FIND, true, ALL, None),
        // The operation is not a service of the context's SOP class: 0211.
        ("store on verification", CommandField::CStoreRq, Some(CR), VERIFICATION, true, ALL, Some(0x0211)),
        ("store on verification naming it", CommandField::CStoreRq, Some(VERIFICATION), VERIFICATION, true, ALL, Some(0x0211)),
        ("move on find", CommandField::CMoveRq, Some(MOVE), FIND, true, ALL, Some(0x0211)),
        ("get on move", CommandField::CGetRq, Some(GET), MOVE, true, ALL, Some(0x0211)),
        ("find on storage", CommandField::CFindRq, Some(FIND), CR, true, ALL, Some(0x0211)),
        ("echo on storage", CommandField::CEchoRq, Some(VERIFICATION), CR, true, ALL, Some(0x0211)),
        ("find on verification", CommandField::CFindRq, Some(FIND), VERIFICATION, true, &[Echo], Some(0x0211)),
        ("store on unknown class", CommandField::CStoreRq, Some("1.2.3"), "1.2.3", true, ALL, Some(0x0211)),
        // The command names another SOP class than its context's: 0122.
        ("store names another class", CommandField::CStoreRq, Some(DX), CR, true, ALL, Some(0x0122)),
        ("find names the get class", CommandField::CFindRq, Some(GET), FIND, true, ALL, Some(0x0122)),
        // The calling AE lacks the permission: 0124 where the service defines it.
        ("store without store", CommandField::CStoreRq, Some(CR), CR, true, QR_ONLY, Some(0x0124)),
        ("move without move", CommandField::CMoveRq, Some(MOVE), MOVE, true, &[Echo, Find], Some(0x0124)),
        ("get without get", CommandField::CGetRq, Some(GET), GET, true, &[Echo, Find], Some(0x0124)),
        ("find without find", CommandField::CFindRq, Some(FIND), FIND, true, &[Echo, Store], Some(0x0122)),
        ("echo without echo", CommandField::CEchoRq, None, VERIFICATION, true, &[Store], Some(0x0122)),
        // The exact attack: storage offered by role selection to a C-GET SCU without store.
        ("store on a get-receiver context", CommandField::CStoreRq, Some(CR), CR, false, QR_ONLY, Some(0x0124)),
        // With `store`, a context where the peer took only the SCP role still refuses it.
        ("store where the peer is SCP only", CommandField::CStoreRq, Some(CR), CR, false, ALL, Some(0x0211)),
        // Not requests we serve: the loop answers them.
        ("cancel", CommandField::CCancelRq, None, FIND, true, &[], None),
        ("store response", CommandField::CStoreRsp, Some(CR), CR, false, &[], None),
        ("n-action", CommandField::NActionRq, None, CR, true, &[], None),
        // A PACS's Storage Commitment report: from the SCP role it proposed, or with no
        // role selection; only with the commitment permission, only on its context.
        ("commitment report from its SCP", CommandField::NEventReportRq, Some(COMMIT), COMMIT, false, &[Commitment], None),
        ("commitment report, default roles", CommandField::NEventReportRq, Some(COMMIT), COMMIT, true, &[Commitment], None),
        ("commitment report without permission", CommandField::NEventReportRq, Some(COMMIT), COMMIT, false, &[Echo, Store], Some(0x0122)),
        ("commitment report on storage", CommandField::NEventReportRq, Some(COMMIT), CR, true, &[Commitment, Store], Some(0x0211)),
    ];

    #[test]
    fn decision_table() {
        for &(name, field, affected, abstract_syntax, peer_scu, permissions, expected) in CASES {
            let rq = request(field, affected);
            let got = authorize(
                &rq,
                &context(abstract_syntax, peer_scu),
                &perms(permissions),
            );
            assert_eq!(
                got.as_ref().err().map(|r| r.status().0),
                expected,
                "{name}: {got:?}"
            );
        }
    }

    #[test]
    fn refusals_read_well_and_fit_an_error_comment() {
        let rq = request(CommandField::CStoreRq, Some(CR));
        let refusal = authorize(&rq, &context(CR, false), &perms(QR_ONLY)).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "C-STORE-RQ needs the store permission, which the calling AE lacks"
        );
        let refusals = [
            authorize(&rq, &context(VERIFICATION, true), &perms(ALL)).unwrap_err(),
            authorize(&rq, &context(DX, true), &perms(ALL)).unwrap_err(),
            refusal,
            authorize(&rq, &context(CR, false), &perms(ALL)).unwrap_err(),
        ];
        for r in &refusals {
            assert!(r.comment().len() <= 64, "{}", r.comment());
            assert!(!r.status().is_ok());
        }
        assert!(refusals[0].to_string().contains("presentation context 7"));
    }

    #[test]
    fn every_offered_class_has_its_service() {
        assert_eq!(service_of(VERIFICATION), Some(Echo));
        for uid in uids::STORAGE_SOP_CLASSES {
            assert_eq!(service_of(uid), Some(Store), "{uid}");
        }
        assert_eq!(service_of(uids::PATIENT_ROOT_QR_FIND), Some(Find));
        assert_eq!(service_of(uids::PATIENT_ROOT_QR_MOVE), Some(Move));
        assert_eq!(service_of(uids::STUDY_ROOT_QR_GET), Some(Get));
        assert_eq!(service_of("1.2.840.10008.5.1.4.1.2.3.1"), None);
        assert_eq!(service_of(""), None);
    }
}
