//! DIMSE protocol layer (PS3.7), as a pure codec.
//!
//! This module turns the P-DATA values that the upper layer (`dicom-ul`) delivers into typed
//! DIMSE messages and back. It knows nothing of sockets, the store or the async runtime:
//!
//! - [`uids`]: the SOP class and transfer syntax UIDs the product negotiates.
//! - [`status`]: DIMSE status codes and their classification (PS3.7 Annex C).
//! - [`refusal`]: the one answer of a request that does not succeed (cause → status, Error
//!   Comment), and the conformance statement's table of them.
//! - [`command`]: the command set (group 0000) of C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET,
//!   C-CANCEL, N-ACTION and N-EVENT-REPORT, encoded and decoded in Implicit VR Little Endian.
//! - [`commitment`]: the data sets of Storage Commitment (the request's instances, the
//!   archive's report of those it keeps and those it does not).
//! - [`assembler`]: reassembly of incoming P-DATA fragments into command sets, with data-set
//!   fragments passed through unbuffered so large instances can be streamed to disk.
//! - [`fragment`]: the reverse, splitting an outgoing command or data set into P-DATA values
//!   that fit the peer's maximum PDU length.

pub mod assembler;
pub mod command;
pub mod commitment;
pub mod fragment;
pub mod refusal;
pub mod status;
pub mod uids;

pub use assembler::{Assembler, Event};
pub use command::{decode, encode, Command, CommandField, Priority, SubOperations};
pub use fragment::fragments;
pub use refusal::{Cause, Refused};
pub use status::{Status, StatusClass};

use dicom_core::Tag;

/// Everything that can go wrong while decoding DIMSE messages or reassembling P-DATA.
///
/// After any of these the association is in an undefined state: the caller should answer
/// with A-ABORT (or a failure status where the command could still be identified).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DimseError {
    /// The command set ended in the middle of an element header or value.
    #[error(
        "command set truncated at byte {offset}: {needed} more bytes needed, {available} available"
    )]
    Truncated {
        /// Offset in the command set where the incomplete part starts.
        offset: usize,
        /// Bytes the element header or value announced.
        needed: usize,
        /// Bytes actually left in the input.
        available: usize,
    },
    /// An element used undefined length, which a command set never may.
    #[error("command element {0} has undefined length")]
    UndefinedLength(Tag),
    /// An element's value length does not fit its value representation.
    #[error("command element {tag} has invalid length {length}")]
    InvalidLength {
        /// The element.
        tag: Tag,
        /// Its announced value length.
        length: u32,
    },
    /// A mandatory command element is absent.
    #[error("command set lacks mandatory element {0}")]
    MissingElement(Tag),
    /// A P-DATA value arrived on a presentation context that was not accepted.
    #[error("presentation context {0} was not accepted on this association")]
    UnknownPresentationContext(u8),
    /// A fragment arrived on another presentation context than the message it continues.
    #[error("fragment on presentation context {got} while a message on context {expected} is in progress")]
    PresentationContextMismatch {
        /// Presentation context of the message in progress.
        expected: u8,
        /// Presentation context of the offending fragment.
        got: u8,
    },
    /// A data-set fragment arrived when no command announced a data set (or the command set
    /// was still incomplete).
    #[error(
        "data set fragment on presentation context {0} without a command announcing a data set"
    )]
    UnexpectedData(u8),
    /// A command fragment arrived while the data set of the previous command was expected.
    #[error("command fragment on presentation context {0} while a data set is expected")]
    UnexpectedCommand(u8),
    /// The command set grew beyond the configured limit.
    #[error("command set exceeds {limit} bytes")]
    CommandTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}
