//! What this SCP offers: the SOP classes by service and permission, and the transfer
//! syntaxes it stores, built from the configuration into a negotiation [`Policy`].

use crate::config::{Config, Permission};
use crate::ul::negotiate::Policy;
use crate::ul::STORAGE_TRANSFER_SYNTAXES;

/// Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Storage SOP classes accepted by default: radiography, secondary capture, the general
/// image classes a chest workflow meets, and the SR classes (results come back as SR).
pub const STORAGE_CLASSES: &[(&str, &str)] = &[
    (
        "1.2.840.10008.5.1.4.1.1.1",
        "Computed Radiography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1",
        "Digital X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "Digital X-Ray Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7",
        "Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.1",
        "Multi-frame Single Bit Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.4",
        "Multi-frame True Color Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.1",
        "X-Ray Angiographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.4",
        "VL Photographic Image Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
];

/// Builds the negotiation policy of the configured SCP.
pub fn policy(config: &Config) -> Policy {
    let mut abstract_syntaxes = vec![(VERIFICATION.to_string(), Permission::Echo)];
    abstract_syntaxes.extend(
        STORAGE_CLASSES
            .iter()
            .map(|(uid, _)| (uid.to_string(), Permission::Store)),
    );
    Policy {
        ae_title: config.dicom.ae_title.clone(),
        allowed_peers: config.dicom.allowed_peers.clone(),
        abstract_syntaxes,
        accept_any_storage: config.dicom.accept_any_storage,
        transfer_syntaxes: STORAGE_TRANSFER_SYNTAXES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        max_pdu: config.dicom.max_pdu,
        scp_role_classes: Vec::new(),
    }
}
