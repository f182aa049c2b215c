//! Event rates by key: at most so many events per key in a window, for the limits that
//! count volume rather than concurrency (console uploads and feedback per user, DICOM
//! queries and retrieves per calling AE and client).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered before the ones whose window ended are forgotten.
const PRUNE_AT: usize = 1024;

/// Most keys counted at once: past it (every window still running) an event of a new key
/// is refused, so keys an outsider chooses (calling AE titles, rotated addresses) cannot
/// grow the table without bound.
pub const MAX_KEYS: usize = 4096;

/// At most `limit` events per key in a window that starts at the key's first event; the
/// window's end says how long to wait. Keys whose window ended are forgotten as others
/// arrive, so the map holds only keys active within the last window.
#[derive(Debug)]
pub struct Rate<K: Hash + Eq + Clone> {
    windows: Mutex<HashMap<K, (Instant, u32)>>,
    limit: u32,
    window: Duration,
}

impl<K: Hash + Eq + Clone> Rate<K> {
    /// At most `limit` events per key and `window`.
    pub fn new(limit: u32, window: Duration) -> Rate<K> {
        Rate {
            windows: Mutex::new(HashMap::new()),
            limit,
            window,
        }
    }

    /// Counts one event of `key` at `now`; `Err` with the time left in the key's window
    /// when it already had `limit` (the event is then not counted).
    pub fn try_take_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        if w.len() >= PRUNE_AT && !w.contains_key(&key) {
            w.retain(|_, (start, _)| now.duration_since(*start) < window);
            if w.len() >= MAX_KEYS {
                return Err(window);
            }
        }
        let entry = w.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }

    /// The most events a key may have in a window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// [`Rate::try_take_at`] now.
    pub fn try_take(&self, key: K) -> Result<(), Duration> {
        self.try_take_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_counts_per_key_within_its_window_and_forgets_ended_ones() {
        let r: Rate<u32> = Rate::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.try_take_at(1, t0).is_ok());
        assert!(r.try_take_at(1, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            r.try_take_at(1, t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert!(r.try_take_at(2, t0 + Duration::from_secs(20)).is_ok());
        assert!(r.try_take_at(1, t0 + Duration::from_secs(60)).is_ok());
        for k in 10..1100 {
            r.try_take_at(k, t0 + Duration::from_secs(70)).unwrap();
        }
        r.try_take_at(5000, t0 + Duration::from_secs(200)).unwrap();
        assert_eq!(
            r.windows.lock().unwrap().len(),
            1,
            "ended windows forgotten"
        );
        // A full table refuses new keys (not the ones it counts) until windows end.
        let full: Rate<u32> = Rate::new(1, Duration::from_secs(60));
        for k in 0..MAX_KEYS as u32 {
            full.try_take_at(k, t0).unwrap();
        }
        assert!(full.try_take_at(1_000_000, t0).is_err());
        assert!(full
            .try_take_at(1_000_000, t0 + Duration::from_secs(61))
            .is_ok());
    }
}
