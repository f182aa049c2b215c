//! The steps of an install, reported to an observer as they complete.
//!
//! The observer is how the command line shows progress, and how crash tests stop an
//! install exactly after a given step, as a power cut would: returning [`Interrupted`]
//! makes the install return at once without any clean-up.

use std::fmt;

/// A point an install has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Signature, manifest, hardware, version and payload hash all checked; nothing written.
    Verified,
    /// The boot target points at the running slot and the inactive slot is flagged not
    /// good: the slot may now be overwritten.
    Disarmed,
    /// This many payload bytes are written to the inactive slot (reported per chunk).
    Writing(u64),
    /// The payload is written and flushed to the slot.
    Written,
    /// The slot was read back and its SHA-256 matches the manifest.
    Rehashed,
    /// The boot target points at the new slot with the attempt counter set.
    Flipped,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Verified => f.write_str("verified"),
            Step::Disarmed => f.write_str("disarmed"),
            Step::Writing(n) => write!(f, "writing ({n} bytes)"),
            Step::Written => f.write_str("written"),
            Step::Rehashed => f.write_str("re-hashed"),
            Step::Flipped => f.write_str("boot target flipped"),
        }
    }
}

/// The observer stopped the install at this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("install interrupted after step: {0}")]
pub struct Interrupted(pub Step);

/// Called after each step; an error stops the install there.
pub type Observer = Box<dyn FnMut(Step) -> Result<(), Interrupted> + Send>;
