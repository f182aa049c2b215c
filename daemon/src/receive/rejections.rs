//! Which refused associations reach the audit trail: each refusal (an unknown calling AE,
//! a wrong called AE, a busy box, a failed TLS handshake) is recorded once per address,
//! calling AE title and [`WINDOW`], so AE-title guessing leaves a trace while a flood of
//! attempts cannot fill the trail. The table is bounded: past [`MAX_KEYS`] distinct keys
//! in one window, further keys are not recorded until entries expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one address and calling AE title are recorded once.
pub const WINDOW: Duration = Duration::from_secs(600);

/// Most distinct (address, calling AE) keys remembered at once.
pub const MAX_KEYS: usize = 4096;

/// When each address and calling AE title was last recorded.
#[derive(Debug, Default)]
pub struct Rejections {
    seen: Mutex<HashMap<(IpAddr, String), Instant>>,
}

impl Rejections {
    /// Whether a refusal of `calling` from `ip` at `now` is to be recorded: the first in
    /// its window is, later ones are not.
    pub fn first_in_window(&self, ip: IpAddr, calling: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ip, calling.chars().take(16).collect::<String>());
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
        assert!(r.first_in_window(a, "GUESS1", t0));
        assert!(!r.first_in_window(a, "GUESS1", t0 + Duration::from_secs(5)));
        assert!(r.first_in_window(a, "GUESS2", t0), "another AE title");
        assert!(r.first_in_window(b, "GUESS1", t0), "another address");
        assert!(r.first_in_window(a, "GUESS1", t0 + WINDOW));
        // Bounded: a flood of distinct titles stops being recorded at the bound.
        let flood = (0..MAX_KEYS + 10)
            .filter(|i| r.first_in_window(a, &format!("X{i}"), t0))
            .count();
        assert!(flood <= MAX_KEYS);
        assert!(r.seen.lock().unwrap().len() <= MAX_KEYS);
        // Once the window passed, room again.
        assert!(r.first_in_window(a, "LATER", t0 + WINDOW * 3));
    }
}
