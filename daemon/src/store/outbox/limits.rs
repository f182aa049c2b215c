//! How full the outbox may get, how failed deliveries back off, and the counters per
//! destination.

use rand::Rng;
use serde::Serialize;
use std::time::Duration;

/// Size bounds of the outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxLimits {
    /// Maximum number of entries.
    pub max_entries: u64,
    /// Maximum bytes of encoded entries.
    pub max_bytes: u64,
    /// Fraction of either bound at which the near-full alarm is raised.
    pub near_full_ratio: f64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_entries: 200_000,
            max_bytes: 512 * 1024 * 1024,
            near_full_ratio: 0.8,
        }
    }
}

/// Exponential backoff with jitter: attempt n waits a random time in
/// `[d/2, d]` with `d = min(cap, base · 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter).
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 1 s doubling to 2 min: a peer back from an outage of any length is reached again
    /// within two minutes (urgent reports should not wait longer), and one connection
    /// attempt every minute or two costs an unreachable peer nothing.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(120),
        }
    }
}

impl Backoff {
    /// The delay after `attempts` failed attempts (at least 1).
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.cap)
            .max(Duration::from_millis(1));
        let ms = full.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }

    /// How long to wait at `now_ms` before trying an entry due at `due_at_ms` (both
    /// milliseconds since the epoch): zero when due, else until its due time but never
    /// longer than the cap. No attempt is ever put off by more than the cap, so a due time
    /// further away was computed on a wall clock that has since stepped backwards; the
    /// entry is then tried once the cap has passed (the wait is measured on a monotonic
    /// timer), not when the wall clock catches up.
    pub fn wait(&self, due_at_ms: i64, now_ms: i64) -> Duration {
        let ms = due_at_ms.saturating_sub(now_ms).max(0) as u64;
        Duration::from_millis(ms).min(self.cap)
    }
}

/// Fill level against the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fill {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (encoded entries).
    pub bytes: u64,
    /// Entry bound.
    pub max_entries: u64,
    /// Byte bound.
    pub max_bytes: u64,
}

/// Per-destination figures for metrics and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DestStats {
    /// Destination name.
    pub dest: String,
    /// Entries waiting for a first attempt.
    pub queued: u64,
    /// Entries waiting for a retry.
    pub retrying: u64,
    /// Dead-lettered entries.
    pub dead: u64,
    /// Age in seconds of the oldest entry that is queued or retrying (0 when none).
    pub oldest_seconds: f64,
    /// Entries delivered since start.
    pub delivered_total: u64,
    /// Failed attempts (peer unreachable, timeout) since start.
    pub failed_total: u64,
    /// Explicit refusals since start.
    pub rejected_total: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) delivered: u64,
    pub(super) failed: u64,
    pub(super) rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the wall clock stepped back by a day, the head entry's due time lies a day
    /// ahead: it is tried within the backoff cap, not a day later.
    #[test]
    fn a_due_time_beyond_the_cap_waits_only_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(120),
        };
        let now = 1_800_000_000_000_i64;
        let day = 86_400_000_i64;
        assert_eq!(b.wait(now + day, now), Duration::from_secs(120));
        assert_eq!(b.wait(i64::MAX, now), Duration::from_secs(120));
        assert_eq!(b.wait(now + 3_000, now), Duration::from_secs(3));
        assert_eq!(b.wait(now, now), Duration::ZERO);
        assert_eq!(b.wait(now - day, now), Duration::ZERO);
        assert_eq!(b.wait(i64::MIN, now), Duration::ZERO);
    }
}
