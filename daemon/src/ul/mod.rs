//! The DICOM upper layer as this SCP runs it: PDU framing with bounded reads
//! ([`framing`]), association negotiation as a pure function ([`negotiate`]) and the TLS
//! transport ([`tls`]). PDU encoding and decoding are dicom-ul's.

pub mod framing;
pub mod negotiate;
pub mod tls;

/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Explicit VR Big Endian (retired, still sent by old modalities).
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
/// Deflated Explicit VR Little Endian.
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// Every transfer syntax the SCP stores (as received), in preference order.
pub const STORAGE_TRANSFER_SYNTAXES: [&str; 13] = [
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    DEFLATED_EXPLICIT_VR_LE,
    "1.2.840.10008.1.2.4.50", // JPEG Baseline
    "1.2.840.10008.1.2.4.51", // JPEG Extended
    "1.2.840.10008.1.2.4.57", // JPEG Lossless
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE Lossless
];
