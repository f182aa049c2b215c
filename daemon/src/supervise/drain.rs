//! How long each part of the daemon may take to wind down at shutdown, in one place.
//!
//! When the stop signal turns, the listeners stop accepting and every stage winds down at
//! once; [`super::Shutdown::stop`] waits for each up to its limit below, so the daemon's
//! stages take at most the longest of them. Delivery stops after them (it may still carry
//! what they recorded), then the store is flushed. [`GRACEFUL_STOP`] adds these up (the
//! longest of the stages, delivery, the flush allowance), and the shipped unit's `TimeoutStopSec` leaves room above it (a test reads the unit), so systemd
//! never kills a daemon that is still stopping as designed.

use std::time::Duration;

/// An open DICOM association runs on to its release (a transfer in progress finishes).
pub const ASSOCIATIONS: Duration = Duration::from_secs(15);

/// A DICOM listener waits for its connections (their associations' drain, and closing).
pub const LISTENERS: Duration = Duration::from_secs(20);

/// The study tracker ends once the storage SCP, the holder of its event sender, is gone.
pub const TRACKER: Duration = Duration::from_secs(25);

/// The inference stage finishes the studies in flight once assembly has stopped.
pub const INFERENCE: Duration = Duration::from_secs(30);

/// The console finishes the requests in progress (HTTP graceful shutdown).
pub const CONSOLE: Duration = Duration::from_secs(3);

/// The delivery workers finish the message in flight (the MQTT one publishes `offline`).
pub const DELIVERY: Duration = Duration::from_secs(10);

/// Allowance for the final flush of the store (waited for, not cut short: what is
/// acknowledged must reach the disk).
pub const FLUSH: Duration = Duration::from_secs(5);

/// The longest graceful stop: the daemon's stages together, then delivery, then the flush.
pub const GRACEFUL_STOP: Duration = max(max(max(LISTENERS, TRACKER), INFERENCE), CONSOLE)
    .saturating_add(DELIVERY)
    .saturating_add(FLUSH);

const fn max(a: Duration, b: Duration) -> Duration {
    if a.as_nanos() >= b.as_nanos() {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage waits for what it stops after, and the shipped unit gives the whole stop
    /// more time than it can take.
    #[test]
    fn the_unit_gives_a_graceful_stop_the_time_it_can_take() {
        assert!(
            ASSOCIATIONS < LISTENERS,
            "a listener waits for its associations"
        );
        assert!(LISTENERS < TRACKER, "the tracker ends after the SCP");
        assert!(LISTENERS < INFERENCE, "inference ends after assembly");
        let unit = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/duli.service"),
        )
        .unwrap();
        let stop = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("the unit sets TimeoutStopSec");
        let secs: u64 = stop.trim().trim_end_matches('s').parse().unwrap();
        assert!(
            Duration::from_secs(secs) > GRACEFUL_STOP,
            "TimeoutStopSec={secs}s but a graceful stop may take {GRACEFUL_STOP:?}"
        );
    }
}
