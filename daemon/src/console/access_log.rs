//! Which accesses to patient data and which refusals were audited lately, so that each
//! is audited once per user and object per [`WINDOW`] rather than once per request.
//!
//! The study page is audited every time it is opened; the previews and heatmap it then
//! loads, a preview or heatmap fetched on its own, a worklist listing and a refused
//! request (wrong role, missing CSRF token) are audited the first time a user makes them
//! in a window. A client polling the worklist or a user probing routes thus leaves one
//! record per window and object, not one per request, and no access goes unrecorded: an
//! access counts as audited only once its record is written ([`AccessLog::once`]), so a
//! request whose record failed (disk full) leaves the next one to be audited.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an audited access covers the same user's repeats of it.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Most (user, object) pairs remembered; beyond, the oldest window is forgotten early
/// (a few more records, never fewer).
const MAX_REMEMBERED: usize = 50_000;

/// Recently audited (user, object) pairs, each kept as a SHA-256 of the pair: an entry's
/// size does not depend on what a request named.
#[derive(Debug, Default)]
pub struct AccessLog {
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

/// The table's key of `user`'s access to `object`.
fn key(user: &str, object: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(user.len() as u64).to_be_bytes());
    ctx.update(user.as_bytes());
    ctx.update(object.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl AccessLog {
    /// Audits `user`'s access to `object` by awaiting `write` (which writes the record
    /// durably) unless an access audited within the window covers it; the access is
    /// remembered only once `write` succeeded, so a failed record leaves the next access
    /// to be audited. Whether it wrote a record; the error of `write`.
    pub async fn once<E>(
        &self,
        user: &str,
        object: &str,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<bool, E> {
        if !self.first(user, object) {
            return Ok(false);
        }
        write.await?;
        self.note(user, object);
        Ok(true)
    }

    /// Whether no audited access of `user` to `object` covers this one (then audit it, and
    /// [`note`](Self::note) it once the record is written). Concurrent first accesses may
    /// all be audited: a few more records, never fewer.
    pub fn first(&self, user: &str, object: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, at| now.duration_since(*at) < WINDOW);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        !matches!(
            seen.get(&key(user, object)),
            Some(at) if now.duration_since(*at) < WINDOW
        )
    }

    /// Notes an audited access (its record written; also the study page's, audited
    /// elsewhere), so repeats and what it loads next are not audited again within the
    /// window.
    pub fn note(&self, user: &str, object: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(key(user, object), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_and_object_is_first_once_per_window() {
        let log = AccessLog::default();
        assert!(log.first("rita", "study 1.2"));
        log.note("rita", "study 1.2");
        assert!(!log.first("rita", "study 1.2"));
        assert!(log.first("theo", "study 1.2"), "another user");
        assert!(log.first("rita", "study 1.3"), "another object");
        log.note("ada", "study 1.4");
        assert!(!log.first("ada", "study 1.4"), "noted by the study page");
    }

    /// An access whose record could not be written (disk full) is not taken as audited:
    /// the retry within the window is audited, and only a written record covers repeats.
    #[test]
    fn an_access_whose_record_failed_is_audited_again() {
        let log = AccessLog::default();
        assert!(log.first("rita", "worklist"));
        // The record failed: nothing noted.
        assert!(log.first("rita", "worklist"), "the retry goes unrecorded");
    }

    /// The same through [`AccessLog::once`] with an audit sink that fails, then works.
    #[tokio::test]
    async fn once_remembers_an_access_only_after_its_record_is_written() {
        let log = AccessLog::default();
        let written = std::sync::atomic::AtomicUsize::new(0);
        let sink = |ok: bool| {
            let written = &written;
            async move {
                if ok {
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                } else {
                    Err("no space left on device")
                }
            }
        };
        assert_eq!(
            log.once("rita", "worklist", sink(false)).await,
            Err("no space left on device")
        );
        assert_eq!(log.once("rita", "worklist", sink(true)).await, Ok(true));
        assert_eq!(log.once("rita", "worklist", sink(true)).await, Ok(false));
        assert_eq!(written.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
