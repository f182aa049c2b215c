//! The console's resource limits: connections (all together and per client address),
//! uploads (all together and per user), requests being served, live event streams and
//! requests that wait on other hosts (the C-ECHO test).
//!
//! [`Slots`] counts holders by key under a total and a per-key cap; a [`Slot`] gives its
//! place back when dropped, so a connection or upload that ends in any way (answer,
//! error, timeout, panic of its task) frees it.

use crate::client_key::ClientKey;
use crate::config::ConsoleConfig;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Why [`Slots::try_take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is taken.
    #[error("all {0} slots are in use")]
    Total(usize),
    /// This key holds as many slots as one key may.
    #[error("{0} slots already in use by this client")]
    PerKey(usize),
}

#[derive(Debug)]
struct Counts<K> {
    total: usize,
    per_key: HashMap<K, usize>,
}

/// Slots counted by key, with a total cap and a per-key cap.
#[derive(Debug)]
pub struct Slots<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<Counts<K>>>,
    total_cap: usize,
    per_key_cap: usize,
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// At most `total_cap` slots, at most `per_key_cap` of them for one key.
    pub fn new(total_cap: usize, per_key_cap: usize) -> Slots<K> {
        Slots {
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                per_key: HashMap::new(),
            })),
            total_cap,
            per_key_cap,
        }
    }

    /// Takes a slot for `key`, or says which cap refused it.
    pub fn try_take(&self, key: K) -> Result<Slot<K>, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = c.per_key.get(&key).copied().unwrap_or(0);
        if held >= self.per_key_cap {
            return Err(Refused::PerKey(self.per_key_cap));
        }
        if c.total >= self.total_cap {
            return Err(Refused::Total(self.total_cap));
        }
        c.total += 1;
        c.per_key.insert(key.clone(), held + 1);
        Ok(Slot {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

/// C-ECHO tests (requests waiting on other hosts) in flight at once, all users.
pub const OUTBOUND_TOTAL: usize = 4;
/// C-ECHO tests in flight at once for one user.
pub const OUTBOUND_PER_USER: usize = 1;

/// Uploads one user may send in an hour: each becomes a study analysed like a received
/// one, in the same queue, so uploads must not crowd out the modalities' studies.
pub const UPLOADS_PER_USER_PER_HOUR: u32 = 60;
/// Feedback records one user may give in an hour (each is stored, audited and queued for
/// the cloud in the outbox that received studies need room in).
pub const FEEDBACK_PER_USER_PER_HOUR: u32 = 120;
/// The hour those rates count in.
pub const RATE_WINDOW: Duration = Duration::from_secs(3600);

/// Password checks (PBKDF2, 600,000 iterations: a CPU-bound quarter second or so) run at
/// once, whoever asks: a flood of logins, right or wrong, keeps at most this many cores
/// busy, leaving the rest to analysis and to everyone else's requests.
pub const PASSWORD_CHECKS: usize = 2;
/// How long a login waits for a password check to be free before `503`.
pub const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(2);

/// The console's limits, built from `[console]`.
#[derive(Debug)]
pub struct Limits {
    /// Time a client has to send a request's headers.
    pub header_read: Duration,
    /// Time a connection may stay open with no request in flight; also the longest
    /// pause allowed while a request body arrives.
    pub idle: Duration,
    /// Open connections, by client address.
    pub connections: Slots<ClientKey>,
    /// Requests being served (handler running); idle connections hold none.
    pub requests: Arc<Semaphore>,
    /// Live event streams, by user.
    pub streams: Slots<String>,
    /// Largest upload (bytes).
    pub max_upload: usize,
    /// Uploads being received or processed, by user.
    pub uploads: Slots<String>,
    /// Uploads started in the last hour, by user ([`UPLOADS_PER_USER_PER_HOUR`]).
    pub upload_rate: crate::rate::Rate<String>,
    /// Feedback given in the last hour, by user ([`FEEDBACK_PER_USER_PER_HOUR`]).
    pub feedback_rate: crate::rate::Rate<String>,
    /// Password checks running ([`PASSWORD_CHECKS`]).
    pub password_checks: Arc<Semaphore>,
    /// Requests waiting on other hosts (a PACS that may never answer), by user. They hold
    /// one of these instead of a request permit, so they never keep others waiting.
    pub outbound: Slots<String>,
}

impl Limits {
    /// The limits of a configuration.
    pub fn new(c: &ConsoleConfig) -> Limits {
        let mb = usize::try_from(c.max_upload_mb).unwrap_or(usize::MAX);
        Limits {
            header_read: Duration::from_secs(c.header_read_timeout_secs),
            idle: Duration::from_secs(c.idle_timeout_secs),
            connections: Slots::new(c.max_connections, c.max_connections_per_address),
            requests: Arc::new(Semaphore::new(c.max_requests)),
            streams: Slots::new(c.max_event_streams, c.max_event_streams_per_user),
            max_upload: mb.saturating_mul(1024 * 1024),
            uploads: Slots::new(c.max_uploads, c.max_uploads_per_user),
            upload_rate: crate::rate::Rate::new(UPLOADS_PER_USER_PER_HOUR, RATE_WINDOW),
            feedback_rate: crate::rate::Rate::new(FEEDBACK_PER_USER_PER_HOUR, RATE_WINDOW),
            password_checks: Arc::new(Semaphore::new(PASSWORD_CHECKS)),
            outbound: Slots::new(OUTBOUND_TOTAL, OUTBOUND_PER_USER),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&ConsoleConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_enforce_both_caps_and_come_back_when_dropped() {
        let s: Slots<&str> = Slots::new(3, 2);
        let a1 = s.try_take("a").unwrap();
        let _a2 = s.try_take("a").unwrap();
        assert_eq!(s.try_take("a").unwrap_err(), Refused::PerKey(2));
        let _b1 = s.try_take("b").unwrap();
        assert_eq!(s.try_take("c").unwrap_err(), Refused::Total(3));
        assert_eq!(s.in_use(), 3);
        drop(a1);
        assert_eq!(s.in_use(), 2);
        let _c1 = s.try_take("c").unwrap();
        assert_eq!(s.try_take("a").unwrap_err(), Refused::Total(3));
    }

    #[test]
    fn a_key_whose_slots_are_all_back_is_forgotten() {
        let s: Slots<u32> = Slots::new(10, 1);
        for k in 0..100 {
            drop(s.try_take(k).unwrap());
        }
        assert!(s.counts.lock().unwrap().per_key.is_empty());
        assert_eq!(s.in_use(), 0);
    }
}
