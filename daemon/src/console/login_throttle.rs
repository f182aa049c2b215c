//! Login throttling: failed logins (and wrong first-time setup codes) slow further
//! attempts down.
//!
//! Every attempt is counted by three counters:
//!
//! - its **pair** of target (an account, or first-time setup) and client (an IPv4 address
//!   or an IPv6 /64, [`ClientKey`]): the strict throttle, [`FREE_FAILURES_PAIR`] free
//!   failures. A client guessing one account's password is slowed down without keeping
//!   the account's user out at another workstation.
//! - its **client**, whatever it tries: [`FREE_FAILURES_CLIENT`], so that one client
//!   spraying many accounts is slowed down too.
//! - its **target**, from every client: the softer cap, [`FREE_FAILURES_TARGET`], so that
//!   guessing spread over many addresses is still slowed down. This cap does not hold back
//!   a client that has logged in to the account within [`KNOWN_MEMORY`] (its usual
//!   workstation), so clients elsewhere on the LAN failing on purpose cannot lock the
//!   account's user out of it either; such a client still meets its pair and client
//!   throttles.
//!
//! Beyond its free failures each further attempt on a counter must wait twice as long as
//! the one before, from 1 s up to [`MAX_BACKOFF`]. A counter forgets one failure per
//! [`FAILURE_DECAY`] without a new one: a client at the longest wait stays there as long as
//! it keeps trying (the wait cannot reset itself when it ends), so in the long run no
//! counter lets more than about one failure per [`FAILURE_DECAY`] through, while a typo
//! now and then is forgotten within minutes.
//!
//! An attempt counts as a failure when it begins, before its password is checked, so that
//! attempts made in parallel cannot all pass the check before any of them has failed. A
//! success hands its [`Attempt`] back: its pair is cleared, and exactly the one failure it
//! counted against its client and target is given back. Failures counted against other
//! accounts from the same client, or against the account from other clients, stay.
//!
//! The counters and known clients live in memory and are written through to the store
//! ([`LoginThrottle::open`]; wall-clock times on disk), so a restart of the daemon does
//! not forget them: a restarted daemon makes a client wait as long as before. A wait
//! whose failure lies before the monotonic clock began (a box rebooted minutes ago) counts
//! from the start.

use crate::client_key::ClientKey;
use crate::store::records::{RecordTree, Records};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failures of one target from one client before throttling starts.
pub const FREE_FAILURES_PAIR: u32 = 5;
/// Failures from one client, whatever it tries, before throttling starts.
pub const FREE_FAILURES_CLIENT: u32 = 20;
/// Failures of one target from all clients (but those it knows) before throttling starts.
pub const FREE_FAILURES_TARGET: u32 = 50;
/// Longest wait imposed between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// A counter forgets one failure per this long without a new one. As long as the longest
/// wait: a client that keeps trying at the longest wait stays at it.
pub const FAILURE_DECAY: Duration = MAX_BACKOFF;
/// How long a client that logged in to an account is exempt from the account's softer cap.
pub const KNOWN_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most counters kept; beyond it they are all forgotten (only a flood from very many
/// addresses gets there, each of them throttled on its own).
const MAX_COUNTERS: usize = 100_000;
/// Most known (account, client) pairs kept; beyond it the oldest is forgotten.
const MAX_KNOWN: usize = 10_000;

/// What an attempt tries to open.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A login to the account of this name (as typed).
    Account(String),
    /// First-time setup with its one-time code: its own counters, which no login name
    /// shares.
    Setup,
}

/// One counter of failures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Key {
    /// A target from one client (`None`: a client whose address is not known).
    Pair(Target, Option<ClientKey>),
    /// A target from every client.
    Target(Target),
    /// One client, whatever it tries.
    Client(ClientKey),
}

impl Key {
    /// The failures this counter allows before throttling starts.
    fn free(&self) -> u32 {
        match self {
            Key::Pair(..) => FREE_FAILURES_PAIR,
            Key::Target(_) => FREE_FAILURES_TARGET,
            Key::Client(_) => FREE_FAILURES_CLIENT,
        }
    }
}

/// The counters an attempt on `target` from `client` counts against.
fn keys(target: &Target, client: Option<ClientKey>) -> Vec<Key> {
    let mut keys = vec![
        Key::Pair(target.clone(), client),
        Key::Target(target.clone()),
    ];
    keys.extend(client.map(Key::Client));
    keys
}

/// The failures of one counter.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Failures at the last one.
    count: u32,
    /// The last failure.
    last: Instant,
    /// Which incarnation of the counter this is (a forgotten counter counted again is a
    /// new one), so that an attempt gives back only what it counted.
    id: u64,
}

impl Counter {
    /// The failures still remembered at `now`: one fewer per [`FAILURE_DECAY`] since the
    /// last.
    fn remembered(&self, now: Instant) -> u32 {
        let periods =
            now.saturating_duration_since(self.last).as_millis() / FAILURE_DECAY.as_millis().max(1);
        self.count
            .saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
    }

    /// How long an attempt at `now` must still wait, with `free` free failures.
    fn wait(&self, free: u32, now: Instant) -> Duration {
        (self.last + backoff(self.count, free)).saturating_duration_since(now)
    }
}

/// The wait after `count` failures with `free` free ones: none, then 1 s doubling up to
/// [`MAX_BACKOFF`].
fn backoff(count: u32, free: u32) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let exp = (count - free).min(20);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// An attempt that passed the throttle and is counted as a failure. Hand it to
/// [`LoginThrottle::succeeded`] when it succeeds; dropped, the failure stays counted.
#[derive(Debug)]
pub struct Attempt {
    target: Target,
    client: Option<ClientKey>,
    /// The counters it counted against, with their incarnations.
    counted: Vec<(Key, u64)>,
}

/// The counters and the known clients, under one lock.
#[derive(Debug, Default)]
struct State {
    counters: HashMap<Key, Counter>,
    /// When each client last logged in to each account.
    known: HashMap<(String, ClientKey), Instant>,
    /// The incarnation of the next counter made.
    next_id: u64,
}

impl State {
    /// Forgets the counters whose failures have all decayed by `now`; returns them.
    fn forget(&mut self, now: Instant) -> Vec<Key> {
        let gone: Vec<Key> = self
            .counters
            .iter()
            .filter(|(_, c)| c.remembered(now) == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.counters.remove(k);
        }
        gone
    }

    /// Keeps the counters within [`MAX_COUNTERS`] before more are made; returns whether
    /// they were all forgotten.
    fn make_room(&mut self) -> bool {
        let full = self.counters.len() > MAX_COUNTERS;
        if full {
            self.counters.clear();
        }
        full
    }

    /// Whether `client` logged in to `target` within [`KNOWN_MEMORY`] before `now`.
    fn is_known(&self, target: &Target, client: Option<ClientKey>, now: Instant) -> bool {
        let (Target::Account(name), Some(client)) = (target, client) else {
            return false;
        };
        self.known
            .get(&(name.clone(), client))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_MEMORY)
    }

    /// The longest wait any of `keys` imposes at `now` (the target's cap not for a known
    /// client).
    fn wait(&self, keys: &[Key], known: bool, now: Instant) -> Duration {
        keys.iter()
            .filter(|k| !(known && matches!(k, Key::Target(_))))
            .filter_map(|k| self.counters.get(k).map(|c| c.wait(k.free(), now)))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Counts a failure against `key` at `now`; the counter's incarnation.
    fn count(&mut self, key: Key, now: Instant) -> u64 {
        let next = self.next_id;
        let c = self.counters.entry(key).or_insert(Counter {
            count: 0,
            last: now,
            id: next,
        });
        if c.id == next {
            self.next_id = next.wrapping_add(1);
        }
        c.count = c.remembered(now).saturating_add(1);
        c.last = now;
        c.id
    }

    /// Gives back the failure counted against `key` in incarnation `id` (none when the
    /// counter was forgotten since).
    fn give_back(&mut self, key: &Key, id: u64) {
        if let Some(c) = self.counters.get_mut(key).filter(|c| c.id == id) {
            c.count = c.count.saturating_sub(1);
        }
    }

    /// Notes that `client` logged in to `name` at `now`; returns the pairs it forgot to
    /// make room.
    fn remember_known(
        &mut self,
        name: &str,
        client: ClientKey,
        now: Instant,
    ) -> Vec<(String, ClientKey)> {
        self.known.insert((name.to_string(), client), now);
        let mut gone = Vec::new();
        if self.known.len() > MAX_KNOWN {
            gone.extend(
                self.known
                    .iter()
                    .filter(|(_, at)| now.saturating_duration_since(**at) >= KNOWN_MEMORY)
                    .map(|(k, _)| k.clone()),
            );
            for k in &gone {
                self.known.remove(k);
            }
        }
        if self.known.len() > MAX_KNOWN {
            let oldest = self
                .known
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.known.remove(&k);
                gone.push(k);
            }
        }
        gone
    }
}

/// One record of the throttle in the store: a counter or a known client, with wall-clock
/// times (ms since the epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Saved {
    /// A failure counter.
    Counter {
        /// What it counts.
        key: Key,
        /// Failures at the last one.
        count: u32,
        /// The last failure.
        last_ms: i64,
        /// Its incarnation.
        id: u64,
    },
    /// A client that logged in to an account.
    Known {
        /// The account.
        name: String,
        /// The client.
        client: ClientKey,
        /// When it last logged in.
        at_ms: i64,
    },
}

/// Prefix of the keys of saved counters.
const COUNTER_PREFIX: &str = "c";
/// Prefix of the keys of saved known clients.
const KNOWN_PREFIX: &str = "k";

/// The store key of what `value` (a [`Key`] or an account and client) identifies: a
/// prefix and the hex SHA-256 of its JSON, so a name of any length or character is a
/// fixed-size key.
fn saved_key(prefix: &str, value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &json);
    format!("{prefix}{}", hex::encode(d.as_ref()))
}

/// The login throttle of the console.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    state: Mutex<State>,
    /// Where its records are written through to (none: in memory only).
    saved: Option<Records<Saved>>,
}

impl LoginThrottle {
    /// The throttle with the counters and known clients the store kept (those not yet
    /// forgotten), writing every change through to it.
    pub fn open(store: &Store) -> Result<LoginThrottle, StoreError> {
        let saved: Records<Saved> = store.records(RecordTree::LoginThrottle)?;
        let (now, now_ms) = (Instant::now(), crate::clock::now_millis());
        let mut state = State::default();
        let mut stale = Vec::new();
        for entry in saved.iter() {
            let (key, record) = match entry {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("login throttle: a stored record is unreadable and dropped: {e}");
                    continue;
                }
            };
            match record {
                Saved::Counter {
                    key: k,
                    count,
                    last_ms,
                    id,
                } => {
                    let last = crate::clock::instant_of_wall(last_ms, now_ms, now);
                    let c = Counter { count, last, id };
                    if c.remembered(now) == 0 || state.counters.len() >= MAX_COUNTERS {
                        stale.push(key);
                        continue;
                    }
                    state.next_id = state.next_id.max(id.wrapping_add(1));
                    state.counters.insert(k, c);
                }
                Saved::Known {
                    name,
                    client,
                    at_ms,
                } => {
                    let at = crate::clock::instant_of_wall(at_ms, now_ms, now);
                    if now_ms.saturating_sub(at_ms) >= KNOWN_MEMORY.as_millis() as i64
                        || state.known.len() >= MAX_KNOWN
                    {
                        stale.push(key);
                        continue;
                    }
                    state.known.insert((name, client), at);
                }
            }
        }
        for key in stale {
            saved.remove(key)?;
        }
        Ok(LoginThrottle {
            state: Mutex::new(state),
            saved: Some(saved),
        })
    }

    /// Writes the counters `keys` as `state` has them (removing those it no longer has),
    /// at monotonic `now`. A store that cannot be written leaves the throttle working in
    /// memory (logged).
    fn save_counters<'k>(
        &self,
        state: &State,
        keys: impl IntoIterator<Item = &'k Key>,
        now: Instant,
    ) {
        let Some(saved) = &self.saved else {
            return;
        };
        let now_ms = crate::clock::now_millis();
        for key in keys {
            let id = saved_key(COUNTER_PREFIX, key);
            let written = match state.counters.get(key) {
                Some(c) => saved
                    .insert(
                        &id,
                        &Saved::Counter {
                            key: key.clone(),
                            count: c.count,
                            last_ms: crate::clock::wall_of_instant(c.last, now_ms, now),
                            id: c.id,
                        },
                    )
                    .map(|_| ()),
                None => saved.remove(&id).map(|_| ()),
            };
            if let Err(e) = written {
                log::warn!("login throttle: cannot keep a counter in the store: {e}");
            }
        }
    }

    /// Writes (or, `at` = `None`, removes) the known client `pair`.
    fn save_known(&self, pair: &(String, ClientKey), at: Option<Instant>, now: Instant) {
        let Some(saved) = &self.saved else {
            return;
        };
        let id = saved_key(KNOWN_PREFIX, pair);
        let written = match at {
            Some(at) => saved
                .insert(
                    &id,
                    &Saved::Known {
                        name: pair.0.clone(),
                        client: pair.1,
                        at_ms: crate::clock::wall_of_instant(at, crate::clock::now_millis(), now),
                    },
                )
                .map(|_| ()),
            None => saved.remove(&id).map(|_| ()),
        };
        if let Err(e) = written {
            log::warn!("login throttle: cannot keep a known client in the store: {e}");
        }
    }

    /// Removes every saved counter (after [`State::make_room`] forgot them all).
    fn drop_saved_counters(&self) {
        let Some(saved) = &self.saved else {
            return;
        };
        let keys: Vec<Vec<u8>> = saved
            .scan_prefix(COUNTER_PREFIX)
            .filter_map(|e| e.ok().map(|(k, _)| k))
            .collect();
        for k in keys {
            if let Err(e) = saved.remove(k) {
                log::warn!("login throttle: cannot drop a counter from the store: {e}");
            }
        }
    }

    /// The state, also after a panic elsewhere while it was held.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one attempt on `target` from `addr`. `Err(wait)`: the client must wait that
    /// long first, and nothing is counted. Otherwise the attempt counts as a failure at
    /// once; hand the [`Attempt`] to [`LoginThrottle::succeeded`] if it succeeds.
    pub fn begin(&self, target: Target, addr: Option<IpAddr>) -> Result<Attempt, Duration> {
        self.begin_at(target, addr, Instant::now())
    }

    /// [`LoginThrottle::begin`] at `now`.
    pub fn begin_at(
        &self,
        target: Target,
        addr: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let client = addr.map(ClientKey::of);
        let keys = keys(&target, client);
        let mut state = self.state();
        let forgotten = state.forget(now);
        self.save_counters(&state, &forgotten, now);
        let wait = state.wait(&keys, state.is_known(&target, client, now), now);
        if !wait.is_zero() {
            return Err(wait);
        }
        if state.make_room() {
            self.drop_saved_counters();
        }
        let counted: Vec<(Key, u64)> = keys
            .into_iter()
            .map(|k| {
                let id = state.count(k.clone(), now);
                (k, id)
            })
            .collect();
        self.save_counters(&state, counted.iter().map(|(k, _)| k), now);
        Ok(Attempt {
            target,
            client,
            counted,
        })
    }

    /// Records that `attempt` succeeded: its pair's failures are forgotten, the failure it
    /// counted against its client and target is given back (nothing else), and its client
    /// is known to its account from now on.
    pub fn succeeded(&self, attempt: Attempt) {
        self.succeeded_at(attempt, Instant::now());
    }

    /// [`LoginThrottle::succeeded`] at `now`.
    pub fn succeeded_at(&self, attempt: Attempt, now: Instant) {
        let mut state = self.state();
        for (key, id) in &attempt.counted {
            match key {
                Key::Pair(..) => {
                    state.counters.remove(key);
                }
                Key::Target(_) | Key::Client(_) => state.give_back(key, *id),
            }
        }
        self.save_counters(&state, attempt.counted.iter().map(|(k, _)| k), now);
        if let (Target::Account(name), Some(client)) = (&attempt.target, attempt.client) {
            for gone in state.remember_known(name, client, now) {
                self.save_known(&gone, None, now);
            }
            self.save_known(&(name.clone(), client), Some(now), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Target {
        Target::Account(name.to_string())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// Fails `n` attempts on `target` from `addr` at `now` (each must pass).
    fn fail(t: &LoginThrottle, target: &Target, addr: Option<IpAddr>, n: u32, now: Instant) {
        for i in 0..n {
            if let Err(w) = t.begin_at(target.clone(), addr, now) {
                panic!("attempt {i} on {target:?} from {addr:?} waits {w:?}");
            }
        }
    }

    #[test]
    fn throttle_grows_per_pair_and_resets_on_success() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        let a = ip("10.1.2.3");
        // Attempts count when they begin: five in flight at once (none finished) leave
        // the sixth waiting, as five failed ones would.
        fail(&t, &account("bob"), a, FREE_FAILURES_PAIR, now);
        let wait = t.begin_at(account("bob"), a, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Another account from the same address is not throttled.
        let carol = t.begin_at(account("carol"), a, now).unwrap();
        t.succeeded_at(carol, now);
        // After the wait the right password gets in and clears the pair.
        let later = now + Duration::from_secs(1);
        let bob = t.begin_at(account("bob"), a, later).unwrap();
        t.succeeded_at(bob, later);
        fail(&t, &account("bob"), a, FREE_FAILURES_PAIR, later);
    }

    #[test]
    fn the_client_share_holds_against_attempts_in_flight() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        // One account each, all begun before any ends: the client runs out at its share.
        let passed = (0..FREE_FAILURES_CLIENT + 10)
            .filter(|i| {
                t.begin_at(account(&format!("user{i}")), ip("10.1.2.4"), now)
                    .is_ok()
            })
            .count();
        assert_eq!(passed, FREE_FAILURES_CLIENT as usize);
    }

    /// The longest wait does not end in a clean slate: a client that waits it out and
    /// fails again is at the longest wait again, not back at its free attempts; only a
    /// long silence (one failure forgotten per [`FAILURE_DECAY`]) gives them back.
    #[test]
    fn the_longest_wait_does_not_reset_itself() {
        let t = LoginThrottle::default();
        let a = ip("10.1.2.5");
        let bob = account("bob");
        let mut now = Instant::now();
        fail(&t, &bob, a, FREE_FAILURES_PAIR, now);
        // Each attempt as soon as it is allowed, until the wait is the longest.
        let mut wait = t.begin_at(bob.clone(), a, now).unwrap_err();
        while wait < MAX_BACKOFF {
            now += wait;
            fail(&t, &bob, a, 1, now);
            wait = t.begin_at(bob.clone(), a, now).unwrap_err();
        }
        // Several rounds at the longest wait: it stays the longest.
        for round in 0..8 {
            now += MAX_BACKOFF;
            assert!(
                t.begin_at(bob.clone(), a, now).is_ok(),
                "round {round}: the wait has passed"
            );
            let wait = t.begin_at(bob.clone(), a, now).unwrap_err();
            assert_eq!(wait, MAX_BACKOFF, "round {round}");
        }
        // A day without attempts forgets them all.
        now += Duration::from_secs(24 * 3600);
        fail(&t, &bob, a, FREE_FAILURES_PAIR, now);
    }

    /// A client failing on purpose at one account is throttled itself and does not keep
    /// the account's user out elsewhere; guessing from many clients meets the account's
    /// softer cap, which does not hold back a client that logged in to it before.
    #[test]
    fn a_client_failing_on_purpose_does_not_lock_the_account_out() {
        let t = LoginThrottle::default();
        let before = Instant::now();
        let now = before + Duration::from_secs(3600);
        let ada = account("ada");
        let (attacker, desk, own) = (ip("10.9.9.9"), ip("10.1.1.1"), ip("10.1.1.2"));
        // Ada has logged in from her own workstation before.
        let first = t.begin_at(ada.clone(), own, before).unwrap();
        t.succeeded_at(first, before);
        // The attacker's own attempts are throttled; ada elsewhere is not.
        fail(&t, &ada, attacker, FREE_FAILURES_PAIR, now);
        assert!(t.begin_at(ada.clone(), attacker, now).is_err());
        let a = t.begin_at(ada.clone(), desk, now).unwrap();
        t.succeeded_at(a, now);
        // Guessing spread over many addresses reaches the account's softer cap...
        let spread = FREE_FAILURES_TARGET / FREE_FAILURES_PAIR + 1;
        for i in 0..spread {
            let addr = ip(&format!("10.8.0.{}", i + 1));
            for _ in 0..FREE_FAILURES_PAIR {
                let _ = t.begin_at(ada.clone(), addr, now);
            }
        }
        // ...which slows down a client new to the account, also with the right password...
        assert!(t.begin_at(ada.clone(), ip("10.1.1.3"), now).is_err());
        // ...but not the clients ada logged in from before.
        for addr in [own, desk] {
            let a = t.begin_at(ada.clone(), addr, now).unwrap();
            t.succeeded_at(a, now);
        }
        // Known for a while after its last login only.
        let own = own.map(ClientKey::of);
        let last_login = now;
        let nearly = last_login + KNOWN_MEMORY - Duration::from_secs(1);
        assert!(t.state().is_known(&ada, own, nearly));
        assert!(!t.state().is_known(&ada, own, last_login + KNOWN_MEMORY));
    }

    /// First-time setup counts against its own counters: failures on an account named
    /// like the old setup key do not throttle setup, nor wrong codes such an account.
    #[test]
    fn setup_has_counters_no_login_name_shares() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        let a = ip("10.1.2.6");
        for name in ["first-time-setup", "account:first-time-setup", "setup", ""] {
            fail(&t, &account(name), a, FREE_FAILURES_PAIR, now);
            assert!(t.begin_at(account(name), a, now).is_err());
        }
        assert!(t.begin_at(Target::Setup, ip("10.1.2.7"), now).is_ok());
        let t = LoginThrottle::default();
        fail(&t, &Target::Setup, a, FREE_FAILURES_PAIR, now);
        assert!(t.begin_at(Target::Setup, a, now).is_err());
        assert!(t.begin_at(account("first-time-setup"), a, now).is_ok());
    }

    /// A success gives back the one failure its attempt counted against its client, not
    /// the failures counted against other accounts from there; nor does it clear the
    /// account's failures from other clients. An attempt whose counter was forgotten and
    /// counted anew gives back nothing.
    #[test]
    fn a_success_gives_back_only_its_own_attempt() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        let a = ip("10.1.2.8");
        for i in 0..FREE_FAILURES_CLIENT - 1 {
            fail(&t, &account(&format!("user{i}")), a, 1, now);
        }
        let ok = t.begin_at(account("ada"), a, now).unwrap();
        t.succeeded_at(ok, now);
        // The client is one short of its share again, not emptied.
        fail(&t, &account("zed"), a, 1, now);
        assert!(t.begin_at(account("yan"), a, now).is_err());

        // The account's failures from other clients stay after a success: one short of
        // its cap, a success, then one client's free failures reach it.
        let t = LoginThrottle::default();
        for i in 0..FREE_FAILURES_TARGET / FREE_FAILURES_PAIR - 1 {
            let addr = ip(&format!("10.7.0.{}", i + 1));
            fail(&t, &account("ada"), addr, FREE_FAILURES_PAIR, now);
        }
        let ok = t.begin_at(account("ada"), ip("10.7.1.1"), now).unwrap();
        t.succeeded_at(ok, now);
        fail(&t, &account("ada"), ip("10.7.2.1"), FREE_FAILURES_PAIR, now);
        assert!(t.begin_at(account("ada"), ip("10.7.1.2"), now).is_err());

        // A counter forgotten while the attempt ran is not given anything back.
        let t = LoginThrottle::default();
        let stale = t.begin_at(account("bob"), a, now).unwrap();
        let later = now + FAILURE_DECAY;
        for i in 0..FREE_FAILURES_CLIENT {
            fail(&t, &account(&format!("user{i}")), a, 1, later);
        }
        t.succeeded_at(stale, later);
        assert!(t.begin_at(account("eve"), a, later).is_err());
    }

    /// The counters and the known clients are kept in the store: a throttle opened again
    /// (a restarted daemon) makes the client wait as before, still exempts the account's
    /// known client from the softer cap, and drops from the store what it forgets.
    #[test]
    fn counters_and_known_clients_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let saved = |store: &crate::store::Store| {
            store
                .records::<Saved>(RecordTree::LoginThrottle)
                .unwrap()
                .iter()
                .count()
        };
        let now = Instant::now();
        {
            let t = LoginThrottle::open(&store).unwrap();
            // The account's usual workstation logs in.
            let ok = t.begin_at(account("ada"), ip("10.0.0.7"), now).unwrap();
            t.succeeded_at(ok, now);
            // Another client guesses until it must wait; the account takes failures from
            // many addresses up to its softer cap.
            fail(
                &t,
                &account("ada"),
                ip("10.0.0.66"),
                FREE_FAILURES_PAIR,
                now,
            );
            for i in 0..FREE_FAILURES_TARGET - FREE_FAILURES_PAIR {
                let addr = ip(&format!("10.1.{}.{}", i / 200, i % 200 + 1));
                drop(t.begin_at(account("ada"), addr, now).unwrap());
            }
            assert!(t.begin_at(account("ada"), ip("10.0.0.66"), now).is_err());
            assert!(t.begin_at(account("ada"), ip("10.0.0.99"), now).is_err());
        }
        assert!(saved(&store) > 0);
        let t = LoginThrottle::open(&store).unwrap();
        assert!(
            t.begin_at(account("ada"), ip("10.0.0.66"), Instant::now())
                .is_err(),
            "the guessing client still waits after the restart"
        );
        assert!(
            t.begin_at(account("ada"), ip("10.0.0.99"), Instant::now())
                .is_err(),
            "the softer cap holds after the restart"
        );
        assert!(
            t.begin_at(account("ada"), ip("10.0.0.7"), Instant::now())
                .is_ok(),
            "the known client is still exempt from it"
        );
        // Once every failure has decayed, the counters leave the store too; the known
        // client stays.
        let later = Instant::now() + FAILURE_DECAY * 100;
        assert!(t.begin_at(account("bob"), ip("10.9.9.9"), later).is_ok());
        drop(t);
        let left: Vec<Saved> = store
            .records::<Saved>(RecordTree::LoginThrottle)
            .unwrap()
            .iter()
            .map(|e| e.unwrap().1)
            .collect();
        assert!(
            left.iter().all(|r| match r {
                Saved::Known { name, .. } => name == "ada",
                Saved::Counter { key, .. } => {
                    let k = format!("{key:?}");
                    k.contains("bob") || k.contains("10.9.9.9")
                }
            }),
            "{left:?}"
        );
        assert!(left.iter().any(|r| matches!(r, Saved::Known { .. })));
    }
}
