//! Throttled login attempts, counted instead of audited one by one.
//!
//! A password spray against a throttled account or address must not append (and fsync)
//! an audit record per attempt. The first throttled attempt of a window is audited at
//! once (so the attack shows up immediately); the rest are only counted, and one summary
//! record per [`WINDOW`] gives their number, accounts and addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most account names and addresses listed in a summary (the count is always exact).
pub const MAX_LISTED: usize = 20;

/// What the caller should audit for a throttled attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The first throttled attempt of a window: audit it.
    First,
    /// Counted for the window's summary: nothing to write now.
    Counted,
}

/// The throttled attempts of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Throttled attempts in the window.
    pub attempts: u64,
    /// How long the window ran.
    pub duration: Duration,
    /// Account names tried (at most [`MAX_LISTED`]).
    pub accounts: BTreeSet<String>,
    /// Client addresses (at most [`MAX_LISTED`]).
    pub addresses: BTreeSet<String>,
    /// Whether more accounts or addresses were seen than listed.
    pub truncated: bool,
}

impl Summary {
    /// The audit record's detail text.
    pub fn detail(&self) -> String {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        format!(
            "{} throttled login attempts in {} s; accounts: {}; addresses: {}{}",
            self.attempts,
            self.duration.as_secs().max(1),
            list(&self.accounts),
            list(&self.addresses),
            if self.truncated { " (and more)" } else { "" }
        )
    }
}

#[derive(Debug)]
struct Window {
    started: Instant,
    summary: Summary,
}

fn list(set: &mut BTreeSet<String>, truncated: &mut bool, v: String) {
    if set.len() < MAX_LISTED {
        set.insert(v);
    } else if !set.contains(&v) {
        *truncated = true;
    }
}

/// The counter of throttled attempts.
#[derive(Debug, Default)]
pub struct ThrottleLog {
    window: Mutex<Option<Window>>,
}

impl ThrottleLog {
    /// Counts a throttled attempt for `user` from `addr`.
    pub fn note(&self, user: &str, addr: Option<IpAddr>) -> Noted {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let first = w.is_none();
        let win = w.get_or_insert_with(|| Window {
            started: Instant::now(),
            summary: Summary {
                attempts: 0,
                duration: Duration::ZERO,
                accounts: BTreeSet::new(),
                addresses: BTreeSet::new(),
                truncated: false,
            },
        });
        let s = &mut win.summary;
        s.attempts = s.attempts.saturating_add(1);
        list(&mut s.accounts, &mut s.truncated, user.to_string());
        if let Some(a) = addr {
            list(&mut s.addresses, &mut s.truncated, a.to_string());
        }
        if first {
            Noted::First
        } else {
            Noted::Counted
        }
    }

    /// The summary of a window that ran for [`WINDOW`] (or of the open one when
    /// `now_anyway`, e.g. at shutdown); a window holding only the first, already
    /// audited attempt needs no summary. The next attempt opens a new window.
    pub fn take(&self, now_anyway: bool) -> Option<Summary> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let due = w
            .as_ref()
            .is_some_and(|win| now_anyway || win.started.elapsed() >= WINDOW);
        if !due {
            return None;
        }
        let win = w.take()?;
        let mut s = win.summary;
        s.duration = win.started.elapsed();
        (s.attempts > 1).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spray_is_one_first_record_and_one_summary() {
        let log = ThrottleLog::default();
        let addr: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(log.note("ada", Some(addr)), Noted::First);
        for i in 0..1000 {
            assert_eq!(log.note(&format!("user{i}"), Some(addr)), Noted::Counted);
        }
        assert_eq!(log.take(false), None, "the window is still open");
        let s = log.take(true).unwrap();
        assert_eq!(s.attempts, 1001);
        assert_eq!(s.accounts.len(), MAX_LISTED);
        assert!(s.truncated);
        assert_eq!(s.addresses.len(), 1);
        assert!(s.detail().starts_with("1001 throttled login attempts"));
        // A new window starts with a new first record.
        assert_eq!(log.note("ada", None), Noted::First);
        assert_eq!(
            log.take(true),
            None,
            "a lone first attempt needs no summary"
        );
    }
}
