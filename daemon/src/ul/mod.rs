//! The DICOM upper layer as this SCP runs it: PDU framing with bounded reads
//! ([`framing`]), association negotiation as a pure function ([`negotiate`]), TLS from
//! [`crate::tls`], the writing half of an association ([`writer`]) and the requesting
//! side of an association, with outbound DICOM TLS ([`client`]). PDU encoding and decoding
//! are dicom-ul's.

pub mod client;
pub mod framing;
pub mod negotiate;
pub mod writer;

/// A byte stream an association runs on (TCP or TLS).
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
