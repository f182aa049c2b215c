//! Which refusals reach the audit trail: each refused association (an unknown calling AE,
//! a wrong called AE, a busy box, a failed TLS handshake, a client certificate that is not
//! the one an AE is bound to) and each refused request of an accepted association is
//! recorded once per address, calling AE title, kind of refusal and [`WINDOW`], so
//! AE-title guessing and a certificate that does not match leave a trace while a flood of
//! attempts (which needs no login on the plain port) cannot fill the trail; the log keeps
//! every one. The table is bounded: past [`MAX_KEYS`] distinct keys in one window, further
//! keys are not recorded until entries expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one address and calling AE title are recorded once.
pub const WINDOW: Duration = Duration::from_secs(600);

/// Most distinct (address, calling AE, kind) keys remembered at once.
pub const MAX_KEYS: usize = 4096;

/// When each address and calling AE title was last recorded.
#[derive(Debug, Default)]
pub struct Rejections {
    seen: Mutex<HashMap<(IpAddr, String, String), Instant>>,
}

impl Rejections {
    /// Whether a refusal of kind `kind` (empty for a refused association; the certificate
    /// offered for an identity mismatch; the command and status for a refused request) of
    /// `calling` from `ip` at `now` is to be recorded: the first in its window is, later
    /// ones are not.
    pub fn first_in_window(&self, ip: IpAddr, calling: &str, kind: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            ip,
            calling.chars().take(16).collect::<String>(),
            kind.chars().take(80).collect::<String>(),
        );
        if let Some(at) = seen.get(&key) {
            if now.saturating_duration_since(*at) < WINDOW {
                return false;
            }
        }
        if seen.len() >= MAX_KEYS && !seen.contains_key(&key) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < WINDOW);
            if seen.len() >= MAX_KEYS {
                return false;
            }
        }
        seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_address_ae_and_window_and_bounded() {
        let r = Rejections::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.first_in_window(a, "GUESS1", "", t0));
        assert!(!r.first_in_window(a, "GUESS1", "", t0 + Duration::from_secs(5)));
        assert!(r.first_in_window(a, "GUESS2", "", t0), "another AE title");
        assert!(r.first_in_window(b, "GUESS1", "", t0), "another address");
        assert!(
            r.first_in_window(a, "GUESS1", "cert:ab12", t0),
            "another kind"
        );
        assert!(!r.first_in_window(a, "GUESS1", "cert:ab12", t0 + Duration::from_secs(1)));
        assert!(
            r.first_in_window(a, "GUESS1", "cert:cd34", t0),
            "another certificate"
        );
        assert!(r.first_in_window(a, "GUESS1", "", t0 + WINDOW));
        // Bounded: a flood of distinct titles stops being recorded at the bound.
        let flood = (0..MAX_KEYS + 10)
            .filter(|i| r.first_in_window(a, &format!("X{i}"), "", t0))
            .count();
        assert!(flood <= MAX_KEYS);
        assert!(r.seen.lock().unwrap().len() <= MAX_KEYS);
        // Once the window passed, room again.
        assert!(r.first_in_window(a, "LATER", "", t0 + WINDOW * 3));
    }
}
