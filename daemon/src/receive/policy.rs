//! What this SCP offers: the SOP classes by service and permission, and the transfer
//! syntaxes it stores, built from the configuration into a negotiation [`Policy`].

use crate::config::{Config, Permission};
use crate::dimse::uids;
use crate::ul::negotiate::Policy;

/// Builds the negotiation policy of the configured SCP.
pub fn policy(config: &Config) -> Policy {
    let mut abstract_syntaxes = vec![(uids::VERIFICATION.to_string(), Permission::Echo)];
    abstract_syntaxes.extend(
        uids::STORAGE_SOP_CLASSES
            .iter()
            .map(|uid| (uid.to_string(), Permission::Store)),
    );
    abstract_syntaxes.extend([
        (uids::STUDY_ROOT_QR_FIND.to_string(), Permission::Find),
        (uids::PATIENT_ROOT_QR_FIND.to_string(), Permission::Find),
        (uids::STUDY_ROOT_QR_MOVE.to_string(), Permission::Move),
        (uids::PATIENT_ROOT_QR_MOVE.to_string(), Permission::Move),
        (uids::STUDY_ROOT_QR_GET.to_string(), Permission::Get),
        (uids::PATIENT_ROOT_QR_GET.to_string(), Permission::Get),
        (
            uids::STORAGE_COMMITMENT_PUSH_MODEL.to_string(),
            Permission::Commitment,
        ),
    ]);
    Policy {
        ae_title: config.dicom.ae_title.clone(),
        allowed_peers: config.dicom.allowed_peers.clone(),
        abstract_syntaxes,
        accept_any_storage: config.dicom.accept_any_storage,
        transfer_syntaxes: uids::TRANSFER_SYNTAXES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        max_pdu: config.dicom.max_pdu,
        // C-GET sends instances back as C-STORE on the requesting association: the peer
        // may take the SCP role for every storage class we keep.
        scp_role_classes: uids::STORAGE_SOP_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}
