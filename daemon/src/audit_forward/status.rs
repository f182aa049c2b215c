//! The forwarder's state as the console shows it: connected or not (and why not), the
//! last record forwarded, and how many wait.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A snapshot of the forwarder's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    /// The repository (`host:port`).
    pub target: String,
    /// Whether the link is TLS.
    pub tls: bool,
    /// Whether a connection to the repository is open.
    pub connected: bool,
    /// Sequence number of the last record written to the repository and flushed, by
    /// this run or an earlier one (`None` before the first).
    pub last_forwarded: Option<u64>,
    /// Records of the trail not forwarded yet.
    pub backlog: u64,
    /// The last failure (connect, handshake, write, store), until the next connection.
    pub last_error: Option<String>,
    /// When `connected` last changed (milliseconds since the epoch).
    pub since_ms: i64,
}

/// What changes as the forwarder runs.
#[derive(Debug, Default)]
struct State {
    connected: bool,
    next_seq: Option<u64>,
    last_error: Option<String>,
    since_ms: i64,
}

/// The forwarder's live state (shared with the console).
#[derive(Debug)]
pub struct Status {
    target: String,
    tls: bool,
    state: Mutex<State>,
}

impl Status {
    /// Not connected yet, to `target`.
    pub fn new(target: String, tls: bool) -> Status {
        Status {
            target,
            tls,
            state: Mutex::new(State {
                since_ms: crate::clock::now_millis(),
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection is open.
    pub fn connected(&self) {
        let mut s = self.state();
        s.connected = true;
        s.last_error = None;
        s.since_ms = crate::clock::now_millis();
    }

    /// No connection, because of `why`; whether that repeats the last failure while
    /// not connected.
    pub fn failed(&self, why: String) -> bool {
        let mut s = self.state();
        let repeated = !s.connected && s.last_error.as_ref() == Some(&why);
        if s.connected {
            s.since_ms = crate::clock::now_millis();
        }
        s.connected = false;
        s.last_error = Some(why);
        repeated
    }

    /// Records before `next_seq` are forwarded.
    pub fn forwarded_to(&self, next_seq: u64) {
        self.state().next_seq = Some(next_seq);
    }

    /// The state, with the backlog counted against `head` (the last record's sequence
    /// number, if any).
    pub fn snapshot(&self, head: Option<u64>) -> ForwardStatus {
        let s = self.state();
        let total = head.map_or(0, |h| h.saturating_add(1));
        ForwardStatus {
            target: self.target.clone(),
            tls: self.tls,
            connected: s.connected,
            last_forwarded: s.next_seq.and_then(|n| n.checked_sub(1)),
            backlog: total.saturating_sub(s.next_seq.unwrap_or(0)),
            last_error: s.last_error.clone(),
            since_ms: s.since_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_and_last_forwarded_follow_the_cursor() {
        let s = Status::new("r:6514".into(), true);
        let v = s.snapshot(Some(9));
        assert_eq!(
            (v.last_forwarded, v.backlog, v.connected),
            (None, 10, false)
        );
        s.forwarded_to(4);
        s.connected();
        let v = s.snapshot(Some(9));
        assert_eq!(
            (v.last_forwarded, v.backlog, v.connected),
            (Some(3), 6, true)
        );
        assert!(!s.failed("closed".into()));
        assert!(s.failed("closed".into()), "the same failure again");
        assert!(!s.failed("refused".into()));
        let v = s.snapshot(Some(3));
        assert_eq!((v.backlog, v.connected), (0, false));
        assert_eq!(v.last_error.as_deref(), Some("refused"));
        assert_eq!(s.snapshot(None).backlog, 0);
    }
}
