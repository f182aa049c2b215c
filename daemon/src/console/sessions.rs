//! Console sessions, login throttling and CSRF protection.
//!
//! - A session is a random 256-bit token in an `HttpOnly; Secure; SameSite=Strict`
//!   cookie; the store keeps only its SHA-256 (tree `sessions`), so a copy of the store
//!   does not hand out live sessions. Sessions end after an idle time and, however active,
//!   an absolute time after login. The cookies carry no `Max-Age` or `Expires`: the
//!   browser drops them when it closes, and the server ends the session by its lifetimes.
//! - Only the user's own requests restart the idle timer ([`Activity::User`]); what the
//!   page does on its own (reloads after live events, the event stream) is
//!   [`Activity::Background`], so an unattended page still idles out.
//! - Lifetimes hold against wall-clock steps: the daemon also measures each session it
//!   has seen on the monotonic clock, and a session ends when either clock says so; a
//!   session whose login or last request lies more than [`CLOCK_TOLERANCE`] in the future
//!   (written while the clock was ahead, or the clock has stepped back since) is invalid.
//! - Failed logins are slowed down per account and client address, per address, and
//!   (softer) per account ([`super::login_throttle`]), answered with 429 and
//!   `Retry-After`. Throttled attempts are counted, not audited one by one
//!   ([`super::throttle_log`]).
//! - Every ended session (logout, user removed, disabled or role changed, expiry found)
//!   bumps [`Sessions::ended`], so live event streams re-check their session at once.
//! - CSRF: every state-changing request of a session must carry the session's own random
//!   token in the `X-CSRF-Token` header (double submit: the page reads it from the
//!   `__Host-duli_csrf` cookie or from the login answer). A cross-site page can neither
//!   read the cookie nor set the header.
//! - Both cookies carry the `__Host-` prefix, so no other host of the domain can set them,
//!   and a request with more than one session cookie is refused.

use crate::accounts::Role;
use crate::store::records::RecordTree;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie. The `__Host-` prefix makes browsers accept it only from
/// this host, over HTTPS, with `Path=/` and no `Domain`: another host of the same domain
/// cannot plant one that shadows it.
pub const SESSION_COOKIE: &str = "__Host-duli_session";
/// Name of the cookie holding the CSRF token (readable by the page); `__Host-` as the
/// session cookie.
pub const CSRF_COOKIE: &str = "__Host-duli_csrf";
/// Header that must repeat the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How far in the future a session's login or last request may lie (clock adjustments
/// of a synchronised clock) before the session is invalid.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

/// One session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// User name.
    pub user: String,
    /// The user's role at login.
    pub role: Role,
    /// CSRF token (hex), sent back in `X-CSRF-Token`.
    pub csrf: String,
    /// Login time, milliseconds since the epoch.
    pub created_ms: i64,
    /// Last request, milliseconds since the epoch.
    pub last_seen_ms: i64,
    /// Client address at login.
    pub source: String,
}

/// Whether a request is the user's own activity, which restarts its session's idle timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A request of the user (a click, a search, opening a page).
    User,
    /// A request the page makes on its own (a reload after a live event, the event
    /// stream): the session must be live, but its idle timer goes on running.
    Background,
}

/// Errors of the session store.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

/// A session's login and last request on the monotonic clock, for the sessions this
/// process has seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    created: Instant,
    last_seen: Instant,
}

impl Seen {
    /// From the stored wall-clock times, for a session first seen at `now_ms` (times in
    /// the future count as now).
    fn from_wall(s: &Session, now_ms: i64) -> Seen {
        let now = Instant::now();
        let ago = |ms: i64| crate::clock::instant_of_wall(ms, now_ms, now);
        Seen {
            created: ago(s.created_ms),
            last_seen: ago(s.last_seen_ms),
        }
    }

    fn expired(&self, idle: Duration, max: Duration) -> bool {
        self.last_seen.elapsed() >= idle || self.created.elapsed() >= max
    }
}

/// The sessions of the console, and the login throttle.
#[derive(Debug)]
pub struct Sessions {
    records: Records<Session>,
    idle: Duration,
    max: Duration,
    /// Monotonic times of the sessions seen by this process, by token key.
    seen: Mutex<HashMap<String, Seen>>,
    ended: tokio::sync::watch::Sender<u64>,
    /// The throttle of failed logins and wrong setup codes.
    pub login_throttle: super::login_throttle::LoginThrottle,
    /// Throttled login attempts of the current window.
    pub throttled: super::throttle_log::ThrottleLog,
}

fn token_key(token: &str) -> String {
    hex::encode(digest(&SHA256, token.as_bytes()).as_ref())
}

fn random_hex(bytes: usize) -> Result<String, SessionError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SessionError::Random)?;
    Ok(hex::encode(buf))
}

/// Compares two strings in constant time (for tokens).
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Opens the sessions tree with the idle and absolute lifetimes.
    pub fn open(store: &Store, idle: Duration, max: Duration) -> Result<Sessions, StoreError> {
        Ok(Sessions {
            records: store.records(RecordTree::Sessions)?,
            idle,
            max,
            login_throttle: super::login_throttle::LoginThrottle::open(store)?,
            seen: Mutex::new(HashMap::new()),
            ended: tokio::sync::watch::channel(0).0,
            throttled: Default::default(),
        })
    }

    /// Changes whenever a session ends (logout, user change, expiry).
    pub fn ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ended.subscribe()
    }

    fn bump_ended(&self) {
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether session `s` (key `key`) has ended at `now_ms`: idle or past its absolute
    /// lifetime by the wall clock or by the monotonic clock (for a session this process
    /// has seen; one seen for the first time starts from its wall-clock times), or with a
    /// login or last request more than [`CLOCK_TOLERANCE`] in the future. `refresh`
    /// restarts its monotonic idle timer when it has not ended (a request of the user).
    fn ended_at(&self, key: &str, s: &Session, now_ms: i64, refresh: bool) -> bool {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let ahead = now_ms.saturating_add(ms(CLOCK_TOLERANCE));
        if s.created_ms > ahead || s.last_seen_ms > ahead {
            return true;
        }
        if now_ms >= s.last_seen_ms.saturating_add(ms(self.idle))
            || now_ms >= s.created_ms.saturating_add(ms(self.max))
        {
            return true;
        }
        let mut seen = self.seen();
        let mono = seen
            .entry(key.to_string())
            .or_insert_with(|| Seen::from_wall(s, now_ms));
        if mono.expired(self.idle, self.max) {
            return true;
        }
        if refresh {
            mono.last_seen = Instant::now();
        }
        false
    }

    /// Removes the session of `key` (store and monotonic times) and announces it.
    fn end(&self, key: &str) -> Result<(), StoreError> {
        self.records.remove(key)?;
        self.seen().remove(key);
        self.bump_ended();
        Ok(())
    }

    /// Whether the session of `token` is still live, without refreshing its idle timer
    /// (a live event stream is not user activity).
    pub fn is_live(&self, token: &str) -> Result<bool, StoreError> {
        let key = token_key(token);
        let Some(s) = self.records.get(&key)? else {
            return Ok(false);
        };
        Ok(!self.ended_at(&key, &s, crate::clock::now_millis(), false))
    }

    /// The absolute lifetime of a session after its login.
    pub fn max_age(&self) -> Duration {
        self.max
    }

    /// Starts a session; returns the token for the cookie and the session.
    pub fn create(
        &self,
        user: &str,
        role: Role,
        source: &str,
    ) -> Result<(String, Session), SessionError> {
        let token = random_hex(32)?;
        let now = crate::clock::now_millis();
        let session = Session {
            user: user.to_string(),
            role,
            csrf: random_hex(32)?,
            created_ms: now,
            last_seen_ms: now,
            source: source.to_string(),
        };
        // Sessions this process saw end on the monotonic clock, never looked up since:
        // removed, so that a wall clock stepped back cannot revive them.
        let stale: Vec<String> = {
            let mut seen = self.seen();
            let stale = seen
                .iter()
                .filter(|(_, v)| v.expired(self.idle, self.max))
                .map(|(k, _)| k.clone())
                .collect();
            let key = token_key(&token);
            seen.insert(
                key,
                Seen {
                    created: Instant::now(),
                    last_seen: Instant::now(),
                },
            );
            stale
        };
        for key in &stale {
            self.end(key)?;
        }
        self.records.insert(token_key(&token), &session)?;
        Ok((token, session))
    }

    /// The live session of a token; expired sessions are removed and answer `None`. A
    /// request of the user ([`Activity::User`]) restarts the session's idle timer, one the
    /// page makes on its own ([`Activity::Background`]) does not.
    pub fn lookup(&self, token: &str, activity: Activity) -> Result<Option<Session>, StoreError> {
        if token.len() != 64 {
            return Ok(None);
        }
        let key = token_key(token);
        let Some(mut s) = self.records.get(&key)? else {
            return Ok(None);
        };
        let now = crate::clock::now_millis();
        let refresh = activity == Activity::User;
        if self.ended_at(&key, &s, now, refresh) {
            self.end(&key)?;
            return Ok(None);
        }
        if !refresh {
            return Ok(Some(s));
        }
        // Write the new idle timer at most once a second (or at once when the clock has
        // stepped back since the last request), as an update of the record as it is now: a
        // session ended since it was read (logout, the user removed, disabled or changed)
        // stays ended instead of being written back with its old role. The time written is
        // now, never a later time read before a backwards step.
        if now - s.last_seen_ms >= 1000 || now < s.last_seen_ms {
            let Some(fresh) = self.records.update(&key, |r| {
                r.last_seen_ms = now;
            })?
            else {
                return Ok(None);
            };
            s = fresh;
        }
        Ok(Some(s))
    }

    /// Ends the session of a token.
    pub fn remove(&self, token: &str) -> Result<(), StoreError> {
        self.end(&token_key(token))
    }

    /// Ends every session of a user (removed, disabled or role changed).
    pub fn remove_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.records.iter() {
            // A session record that does not decode belongs to no one: skipped.
            let Ok((k, s)) = kv else { continue };
            if s.user == user {
                self.records.remove(&k)?;
                self.seen().remove(String::from_utf8_lossy(&k).as_ref());
                n += 1;
            }
        }
        self.bump_ended();
        Ok(n)
    }
}

/// The `Set-Cookie` values that start a session: browser-session cookies (no `Max-Age`
/// or `Expires`), gone when the browser closes; the server ends the session itself after
/// its idle and absolute lifetimes.
pub fn login_cookies(token: &str, csrf: &str) -> [String; 2] {
    [
        format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict"),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; SameSite=Strict"),
    ]
}

/// The `Set-Cookie` values that end a session.
pub fn logout_cookies() -> [String; 2] {
    [
        format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
        format!("{CSRF_COOKIE}=; Path=/; Max-Age=0; Secure; SameSite=Strict"),
    ]
}

/// The value of cookie `name` in a `Cookie` header (the first, when it appears more than
/// once).
pub fn cookie_value<'a>(header: &'a str, name: &'a str) -> Option<&'a str> {
    cookie_values(header, name).next()
}

/// Every value of cookie `name` in a `Cookie` header, in order.
pub fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_sessions_are_announced_and_liveness_does_not_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s =
            Sessions::open(&store, Duration::from_millis(300), Duration::from_secs(60)).unwrap();
        let mut ended = s.ended();
        let (a, _) = s.create("ana", Role::Radiologist, "").unwrap();
        let (b, _) = s.create("bea", Role::Radiologist, "").unwrap();
        assert!(s.is_live(&a).unwrap());
        assert!(!ended.has_changed().unwrap());
        s.remove(&a).unwrap();
        assert!(ended.has_changed().unwrap(), "logout announced");
        ended.mark_unchanged();
        assert!(!s.is_live(&a).unwrap());
        s.remove_user("bea").unwrap();
        assert!(ended.has_changed().unwrap(), "user change announced");
        assert!(!s.is_live(&b).unwrap());
        // Asking whether a session lives is not activity: it still idles out.
        let (c, _) = s.create("cy", Role::Radiologist, "").unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = s.is_live(&c).unwrap();
        }
        assert!(!s.is_live(&c).unwrap(), "idle expiry despite the checks");
    }

    /// A refresh of the idle timer racing the end of a session never brings it back: one
    /// thread keeps looking the session up (each lookup due to write its idle timer) while
    /// another ends the user's sessions; once that has returned, the session is gone.
    #[test]
    fn a_refresh_racing_remove_user_never_resurrects_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = Sessions::open(&store, Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        let records = store.records::<Session>(RecordTree::Sessions).unwrap();
        for round in 0..300 {
            let (token, _) = s.create("ana", Role::Admin, "").unwrap();
            let key = token_key(&token);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                let looper = scope.spawn(|| {
                    start.wait();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Age the idle timer (without recreating a removed record) so
                        // that every lookup writes it back.
                        let _ = records.update(&key, |r| r.last_seen_ms -= 5_000);
                        let _ = s.lookup(&token, Activity::User).unwrap();
                    }
                });
                start.wait();
                std::thread::sleep(Duration::from_micros(50 * (round % 7)));
                assert_eq!(s.remove_user("ana").unwrap(), 1, "round {round}");
                std::thread::sleep(Duration::from_micros(200));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                looper.join().unwrap();
            });
            assert!(
                s.lookup(&token, Activity::User).unwrap().is_none(),
                "round {round}: the session came back after remove_user"
            );
            assert!(records.get(&key).unwrap().is_none(), "round {round}");
        }
    }

    #[test]
    fn tokens_are_stored_hashed_and_sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s =
            Sessions::open(&store, Duration::from_millis(300), Duration::from_secs(60)).unwrap();
        let (token, sess) = s.create("ana", Role::Radiologist, "127.0.0.1").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(sess.csrf.len(), 64);
        let tree = store.records::<Session>(RecordTree::Sessions).unwrap();
        assert!(tree.get(token.as_bytes()).unwrap().is_none());
        assert!(tree.get(token_key(&token).as_bytes()).unwrap().is_some());
        assert_eq!(
            s.lookup(&token, Activity::User).unwrap().unwrap().user,
            "ana"
        );
        std::thread::sleep(Duration::from_millis(350));
        assert!(
            s.lookup(&token, Activity::User).unwrap().is_none(),
            "idle expiry"
        );
        assert!(tree.is_empty());

        let s =
            Sessions::open(&store, Duration::from_secs(60), Duration::from_millis(200)).unwrap();
        let (token, _) = s.create("ana", Role::Radiologist, "").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            s.lookup(&token, Activity::User).unwrap().is_none(),
            "absolute expiry"
        );
    }

    /// A session written while the clock was a day ahead (or before the clock stepped
    /// back by a day) is not valid: it would otherwise live until real time caught up.
    /// A last request ahead by more than the tolerance is refused the same way; clock
    /// adjustments within it are not.
    #[test]
    fn a_session_from_the_future_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = Sessions::open(&store, Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        let records = store.records::<Session>(RecordTree::Sessions).unwrap();
        let day = 86_400_000;
        let ahead = |ms_created: i64, ms_seen: i64| {
            let (token, _) = s.create("ana", Role::Radiologist, "").unwrap();
            records
                .update(token_key(&token), |r| {
                    r.created_ms += ms_created;
                    r.last_seen_ms += ms_seen;
                })
                .unwrap();
            token
        };
        let token = ahead(day, day);
        assert!(!s.is_live(&token).unwrap());
        assert!(s.lookup(&token, Activity::User).unwrap().is_none());
        assert!(records.get(token_key(&token)).unwrap().is_none());
        // The same after a restart (no monotonic times of it in memory).
        let token = ahead(day, day);
        let restarted =
            Sessions::open(&store, Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        assert!(restarted.lookup(&token, Activity::User).unwrap().is_none());
        let token = ahead(0, 2 * 60_000 + 1_000);
        assert!(s.lookup(&token, Activity::User).unwrap().is_none());
        let token = ahead(5_000, 5_000);
        assert!(
            s.lookup(&token, Activity::User).unwrap().is_some(),
            "within the tolerance"
        );
    }

    /// A wall clock stepped back by D does not give a session D more: it is measured on
    /// the monotonic clock too. (A step back is simulated by moving the stored times
    /// forward by as much.)
    #[test]
    fn a_backwards_clock_step_does_not_extend_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let records = store.records::<Session>(RecordTree::Sessions).unwrap();
        let step_back = |token: &str, ms: i64| {
            records
                .update(token_key(token), |r| {
                    r.created_ms += ms;
                    r.last_seen_ms += ms;
                })
                .unwrap();
        };
        // Idle lifetime 300 ms: 350 ms idle, then the clock steps back by 350 ms.
        let s =
            Sessions::open(&store, Duration::from_millis(300), Duration::from_secs(60)).unwrap();
        let (token, _) = s.create("ana", Role::Radiologist, "").unwrap();
        assert!(s.lookup(&token, Activity::User).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(350));
        step_back(&token, 350);
        assert!(!s.is_live(&token).unwrap(), "idle expiry despite the step");
        assert!(
            s.lookup(&token, Activity::User).unwrap().is_none(),
            "idle expiry despite the step"
        );
        // Absolute lifetime 300 ms, active all along, then the same step.
        let s =
            Sessions::open(&store, Duration::from_secs(60), Duration::from_millis(300)).unwrap();
        let (token, _) = s.create("ana", Role::Radiologist, "").unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(90));
            let _ = s.lookup(&token, Activity::User).unwrap();
        }
        step_back(&token, 400);
        assert!(
            s.lookup(&token, Activity::User).unwrap().is_none(),
            "absolute expiry despite the step"
        );
    }

    /// Requests the page makes on its own find the session without keeping it alive: it
    /// idles out while they go on; the user's own requests restart its idle timer.
    #[test]
    fn background_lookups_do_not_keep_a_session_alive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let records = store.records::<Session>(RecordTree::Sessions).unwrap();
        // Idle 2 s (the stored idle timer is written at most once a second).
        let s = Sessions::open(&store, Duration::from_secs(2), Duration::from_secs(60)).unwrap();
        let (user, _) = s.create("ana", Role::Radiologist, "").unwrap();
        let (background, _) = s.create("bea", Role::Radiologist, "").unwrap();
        let written = records.get(token_key(&background)).unwrap().unwrap();
        for _ in 0..11 {
            std::thread::sleep(Duration::from_millis(250));
            assert!(s.lookup(&user, Activity::User).unwrap().is_some());
            if let Some(found) = s.lookup(&background, Activity::Background).unwrap() {
                assert_eq!(found.last_seen_ms, written.last_seen_ms, "not written");
            }
        }
        assert!(
            s.lookup(&background, Activity::Background)
                .unwrap()
                .is_none(),
            "idle expiry despite the background requests"
        );
        assert!(records.get(token_key(&background)).unwrap().is_none());
        assert!(
            s.lookup(&user, Activity::User).unwrap().is_some(),
            "the user's requests kept the session"
        );
    }

    #[test]
    fn cookies_carry_the_security_attributes() {
        let [session, csrf] = login_cookies("t", "c");
        assert!(session.contains("HttpOnly") && session.contains("Secure"));
        for cookie in [&session, &csrf] {
            assert!(
                !cookie.contains("Max-Age") && !cookie.contains("Expires"),
                "a browser-session cookie: {cookie}"
            );
        }
        assert!(session.contains("SameSite=Strict"));
        assert!(!csrf.contains("HttpOnly") && csrf.contains("Secure"));
        assert!(session.starts_with("__Host-duli_session=t; Path=/;"));
        assert!(csrf.starts_with("__Host-duli_csrf=c; Path=/;"));
        assert!(!session.contains("Domain") && !csrf.contains("Domain"));
        assert_eq!(
            cookie_value("a=1; __Host-duli_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(
            cookie_values("duli_session=a; __Host-duli_session=b", SESSION_COOKIE)
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
