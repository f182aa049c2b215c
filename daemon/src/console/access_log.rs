//! Which accesses to patient data and which refusals were audited lately, so that each
//! is audited once per user and object per [`WINDOW`] rather than once per request.
//!
//! The study page is audited every time it is opened; the previews and heatmap it then
//! loads, a preview or heatmap fetched on its own, a worklist listing and a refused
//! request (wrong role, missing CSRF token) are audited the first time a user makes them
//! in a window. A client polling the worklist or a user probing routes thus leaves one
//! record per window and object, not one per request, and no access goes unrecorded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an audited access covers the same user's repeats of it.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Most (user, object) pairs remembered; beyond, the oldest window is forgotten early
/// (a few more records, never fewer).
const MAX_REMEMBERED: usize = 50_000;

/// Recently audited (user, object) pairs.
#[derive(Debug, Default)]
pub struct AccessLog {
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl AccessLog {
    /// Whether `user`'s access to `object` is the first in its window (then audit it);
    /// it is remembered either way.
    pub fn first(&self, user: &str, object: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, at| now.duration_since(*at) < WINDOW);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        match seen.get(&(user.to_string(), object.to_string())) {
            Some(at) if now.duration_since(*at) < WINDOW => false,
            _ => {
                seen.insert((user.to_string(), object.to_string()), now);
                true
            }
        }
    }

    /// Notes an access audited elsewhere (the study page), so what it loads next is not
    /// audited again within the window.
    pub fn note(&self, user: &str, object: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert((user.to_string(), object.to_string()), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_and_object_is_first_once_per_window() {
        let log = AccessLog::default();
        assert!(log.first("rita", "study 1.2"));
        assert!(!log.first("rita", "study 1.2"));
        assert!(log.first("theo", "study 1.2"), "another user");
        assert!(log.first("rita", "study 1.3"), "another object");
        log.note("ada", "study 1.4");
        assert!(!log.first("ada", "study 1.4"), "noted by the study page");
    }
}
