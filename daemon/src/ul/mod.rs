//! The DICOM upper layer as this SCP runs it: PDU framing with bounded reads
//! ([`framing`]), association negotiation as a pure function ([`negotiate`]), the TLS
//! transport ([`tls`]) and the writing half of an association ([`writer`]). PDU encoding
//! and decoding are dicom-ul's.

pub mod framing;
pub mod negotiate;
pub mod tls;
pub mod writer;
