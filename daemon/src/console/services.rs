//! What the console needs of the other stages, as traits: the delivery outbox (its
//! figures, entries and retries) and the hand-off of feedback to delivery. The daemon
//! passes the real stages ([`Outbox`], [`Recorder`]); tests may pass their own.

use crate::record::Recorder;
use crate::report::Feedback;
use crate::store::outbox::{
    DeliveryStatus, DestStats, Entry, Fill, Outbox, OutboxError, RetrySelector,
};

/// The delivery outbox as the console reads and nudges it.
pub trait DeliveryQueue: Send + Sync + std::fmt::Debug {
    /// Per-destination figures (every destination with a worker or an entry).
    fn stats(&self) -> Result<Vec<DestStats>, OutboxError>;
    /// The first `per_destination` entries of each destination, in destination and queue
    /// order.
    fn first_entries(&self, per_destination: usize) -> Result<Vec<Entry>, OutboxError>;
    /// How full the outbox is.
    fn fill(&self) -> Fill;
    /// The delivery status of each message of one report.
    fn status_of(&self, report_id: &str) -> Result<Vec<DeliveryStatus>, OutboxError>;
    /// Re-queues dead entries and makes retrying ones due now; how many changed.
    fn retry(&self, which: &RetrySelector) -> Result<u64, OutboxError>;
    /// The entry with id `id`, if it is still queued.
    fn entry(&self, id: u64) -> Result<Option<Entry>, OutboxError>;
}

impl DeliveryQueue for Outbox {
    fn stats(&self) -> Result<Vec<DestStats>, OutboxError> {
        Outbox::stats(self)
    }

    fn first_entries(&self, per_destination: usize) -> Result<Vec<Entry>, OutboxError> {
        Outbox::first_of_each(self, per_destination)
    }

    fn fill(&self) -> Fill {
        Outbox::fill(self)
    }

    fn status_of(&self, report_id: &str) -> Result<Vec<DeliveryStatus>, OutboxError> {
        Outbox::status_of(self, report_id)
    }

    fn retry(&self, which: &RetrySelector) -> Result<u64, OutboxError> {
        Outbox::retry(self, which)
    }

    fn entry(&self, id: u64) -> Result<Option<Entry>, OutboxError> {
        Outbox::entry(self, id)
    }
}

/// Why feedback could not be handed to delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feedback not queued for delivery: {0}")]
pub struct FeedbackNotQueued(pub String);

/// Where radiologist feedback goes after it is stored: the cloud, through the outbox.
pub trait FeedbackSink: Send + Sync + std::fmt::Debug {
    /// Queues `feedback`, given by a user of `role`, for delivery.
    fn queue_feedback(&self, feedback: &Feedback, role: &str) -> Result<(), FeedbackNotQueued>;

    /// Whether feedback may be queued now: not while the delivery queue is nearly full,
    /// where the room left belongs to the results of received studies.
    fn has_room(&self) -> bool;
}

impl FeedbackSink for Recorder {
    fn queue_feedback(&self, feedback: &Feedback, role: &str) -> Result<(), FeedbackNotQueued> {
        self.record_feedback(feedback, role)
            .map_err(|e| FeedbackNotQueued(e.to_string()))
    }

    fn has_room(&self) -> bool {
        self.feedback_has_room()
    }
}
