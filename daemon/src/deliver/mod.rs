//! Delivery: the outbox and the channels that drain it.
//!
//! In the order a report flows through them:
//!
//! - [`crate::report`]: the [`crate::report::Report`] every message is made from.
//! - [`plan`]: turns a report into the outbox entries it owes (HL7, MQTT, PACS push); the
//!   record stage ([`crate::record`]) commits them with the result.
//! - [`crate::store::outbox`]: the durable, ordered, bounded queue (kept by the store);
//!   written in the same transaction as the result.
//! - [`worker`]: one task per destination; sends the head entry through a [`Channel`],
//!   then marks it delivered, retried or rejected.
//! - [`export_audit`]: the audit record of each delivery that takes patient data off the
//!   box (to the RIS, to a PACS), written by the worker before it marks the entry.
//! - [`hl7`]: ORU^R01 codec, MLLP framing, ACK parsing, and the MLLP channel.
//! - [`mqtt`]: report/feedback/health payloads, topics, and the MQTT channel.
//! - [`pacs`]: the C-STORE push of result objects to PACS, with Storage Commitment where a
//!   destination asks for it; [`commitment`]: the transactions waiting for the PACS's
//!   report, which the SCP hands in.
//! - [`service`]: starts the outbox, the workers and the health message in the daemon.
//! - [`crate::tls`]: the rustls client configuration (ring provider) both channels use.
//!
//! The PACS push (C-STORE SCU of the SR and SC) is a third [`Channel`] implementation
//! serving [`crate::store::outbox::Destination::Pacs`] entries whose payload is
//! [`crate::store::outbox::Payload::Dicom`].

pub mod commitment;
pub mod export_audit;
pub mod hl7;
pub mod mqtt;
pub mod pacs;
pub mod plan;
pub mod service;
pub mod worker;

use std::future::Future;

/// The outcome of one delivery attempt: the one mapping every channel reports through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The peer took responsibility (HL7 `AA`/`CA`, MQTT PubAck, C-STORE Success): the
    /// entry is removed.
    Acked,
    /// The peer explicitly refused (HL7 `AE`/`AR`/`CE`/`CR`, a DICOM failure status), or
    /// the entry can never be sent (an MQTT message over the packet limit): counted towards
    /// `max_rejections`, then dead-lettered.
    Rejected(Refusal),
    /// The entry can never be sent as it is (an HL7 message without the Patient ID the RIS
    /// files it under, a RIS that keeps acknowledging another message): dead-lettered at
    /// once, counted as a refusal, with the reason; it is listed and can be re-queued.
    Unsendable(String),
    /// No answer (unreachable, timeout, broken connection, garbage): retried with backoff,
    /// for as long as it takes.
    Failed(String),
    /// The message went out in full and the peer ended the exchange without answering it
    /// (closed the connection, aborted the association, timed out): retried like
    /// [`Delivery::Failed`], and counted, so a message the peer cannot take without
    /// dropping the connection is told apart from a peer that is down
    /// ([`worker`]'s probe).
    Dropped(String),
}

/// A refusal: what the journal may carry (a code, our own description), and the peer's own
/// words, which may name the patient (a RIS's "patient 123456 SMITH not found") and so are
/// kept only with the outbox entry, apart from the code (read on request, audited, in the
/// console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code or our own description (HL7 `AE`, `status A700`, "cannot be sent: ...").
    pub summary: String,
    /// The peer's text (MSA-3 of an HL7 ACK), when it gave one.
    pub peer_text: Option<String>,
}

impl Refusal {
    /// A refusal in our own words (nothing of the peer's).
    pub fn ours(summary: impl Into<String>) -> Refusal {
        Refusal {
            summary: summary.into(),
            peer_text: None,
        }
    }

    /// A refusal coded `code` with the peer's text `text` (none when empty).
    pub fn from_peer(code: impl Into<String>, text: &str) -> Refusal {
        Refusal {
            summary: code.into(),
            peer_text: (!text.is_empty()).then(|| text.to_string()),
        }
    }

    /// What the journal (which reaches support bundles) carries: the summary, and where
    /// the peer's words are when there are some.
    pub fn for_the_journal(&self) -> String {
        match &self.peer_text {
            Some(_) => format!(
                "{} (the peer's text is kept with the entry: `duli outbox list`)",
                self.summary
            ),
            None => self.summary.clone(),
        }
    }
}

/// One outbound channel (HL7, MQTT, DICOM push). A worker owns its channel and calls it
/// for one entry at a time, in queue order.
pub trait Channel: Send + 'static {
    /// Sends one entry and waits for the peer's answer.
    fn deliver(
        &mut self,
        entry: &crate::store::outbox::Entry,
    ) -> impl Future<Output = Delivery> + Send;

    /// Background work while the queue is empty (keeping a session up, publishing
    /// status). Must be cancel-safe: the worker drops it when an entry arrives.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Called once when the worker stops (e.g. to publish an `offline` status).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
