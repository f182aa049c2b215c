//! Connections that have not associated yet (TLS handshake, A-ASSOCIATE-RQ under the ARTIM
//! timer), counted apart from the association cap so that silent sockets never hold an
//! association slot.
//!
//! Two bounds keep a flood of silent connections from locking real peers out: at most
//! `per_address` unassociated connections from one address (a [`ClientKey`]: an IPv4
//! address or an IPv6 /64) and `total` from everywhere.
//! A newcomer is never turned away: over a bound, the oldest unassociated connection of
//! that address (over the total: of the address holding the most) is evicted instead, so
//! a real peer, which sends its A-ASSOCIATE-RQ within milliseconds, gets its turn even when
//! it shares an address with a flood of silent sockets (a NAT, a reading-room gateway) —
//! unless that flood opens more than `per_address` connections within the peer's own
//! handshake (a residual risk in docs/security.md).

use crate::client_key::ClientKey;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The table of unassociated connections, shared by the listeners.
#[derive(Debug)]
pub struct Unassociated {
    total: usize,
    per_address: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    count: usize,
    by_address: HashMap<ClientKey, VecDeque<Entry>>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    eviction: Arc<Eviction>,
}

/// The eviction signal of one connection.
#[derive(Debug, Default)]
struct Eviction {
    done: AtomicBool,
    notify: Notify,
}

impl Eviction {
    fn fire(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// One admitted connection's place in the table, released when dropped (once it has
/// associated, been closed, or been evicted).
#[derive(Debug)]
pub struct Slot {
    table: Arc<Unassociated>,
    address: ClientKey,
    id: u64,
    eviction: Arc<Eviction>,
}

/// What [`Unassociated::admit`] did.
#[derive(Debug)]
pub struct Admission {
    /// The newcomer's slot.
    pub slot: Slot,
    /// The address whose oldest unassociated connection was evicted to make room.
    pub evicted: Option<ClientKey>,
}

impl Unassociated {
    /// A table with the given bounds (each at least 1; `per_address` at most `total`).
    pub fn new(total: usize, per_address: usize) -> Arc<Unassociated> {
        let total = total.max(1);
        Arc::new(Unassociated {
            total,
            per_address: per_address.clamp(1, total),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table stays consistent at every step: a panic elsewhere cannot leave it torn.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `address`, evicting an older unassociated one when a
    /// bound would be exceeded.
    pub fn admit(self: &Arc<Self>, address: ClientKey) -> Admission {
        let mut inner = self.lock();
        let own = inner.by_address.get(&address).map_or(0, VecDeque::len);
        let victim = if own >= self.per_address {
            Some(address)
        } else if inner.count >= self.total {
            inner
                .by_address
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(a, _)| *a)
        } else {
            None
        };
        let evicted = victim.and_then(|a| {
            let entry = inner.by_address.get_mut(&a)?.pop_front()?;
            entry.eviction.fire();
            inner.count -= 1;
            if inner.by_address.get(&a).is_some_and(VecDeque::is_empty) {
                inner.by_address.remove(&a);
            }
            Some(a)
        });
        inner.next_id += 1;
        let id = inner.next_id;
        let eviction = Arc::new(Eviction::default());
        inner
            .by_address
            .entry(address)
            .or_default()
            .push_back(Entry {
                id,
                eviction: eviction.clone(),
            });
        inner.count += 1;
        Admission {
            slot: Slot {
                table: self.clone(),
                address,
                id,
                eviction,
            },
            evicted,
        }
    }

    /// Unassociated connections now held.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// True when no connection is waiting to associate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, address: ClientKey, id: u64) {
        let mut inner = self.lock();
        let Some(queue) = inner.by_address.get_mut(&address) else {
            return;
        };
        let Some(at) = queue.iter().position(|e| e.id == id) else {
            return; // evicted: already gone
        };
        queue.remove(at);
        if queue.is_empty() {
            inner.by_address.remove(&address);
        }
        inner.count -= 1;
    }
}

impl Slot {
    /// The client this connection counts for.
    pub fn client(&self) -> ClientKey {
        self.address
    }

    /// Resolves once this connection has been evicted to make room for a newer one.
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            if self.eviction.done.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// True once this connection has been evicted.
    pub fn is_evicted(&self) -> bool {
        self.eviction.done.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.address, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> ClientKey {
        ClientKey::of(std::net::IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn one_address_over_its_bound_loses_its_oldest() {
        let table = Unassociated::new(100, 3);
        let first: Vec<Slot> = (0..3).map(|_| table.admit(ip(1)).slot).collect();
        assert_eq!(table.len(), 3);
        let other = table.admit(ip(2));
        assert!(other.evicted.is_none());
        let newcomer = table.admit(ip(1));
        assert_eq!(newcomer.evicted, Some(ip(1)));
        assert!(first[0].is_evicted());
        assert!(!first[1].is_evicted() && !first[2].is_evicted());
        assert!(!other.slot.is_evicted() && !newcomer.slot.is_evicted());
        assert_eq!(table.len(), 4);
        // Dropping an evicted slot releases nothing twice.
        drop(first);
        assert_eq!(table.len(), 2);
        drop(other);
        drop(newcomer);
        assert!(table.is_empty());
    }

    #[test]
    fn over_the_total_the_busiest_address_pays() {
        let table = Unassociated::new(5, 4);
        let flood: Vec<Slot> = (0..4).map(|_| table.admit(ip(9)).slot).collect();
        let quiet = table.admit(ip(1)).slot;
        let newcomer = table.admit(ip(2));
        assert_eq!(newcomer.evicted, Some(ip(9)));
        assert!(flood[0].is_evicted());
        assert!(!quiet.is_evicted());
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn a_flood_never_evicts_the_newest_and_the_table_stays_bounded() {
        let table = Unassociated::new(8, 8);
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(table.admit(ip(7)).slot);
            assert!(table.len() <= 8);
        }
        let peer = table.admit(ip(7)).slot;
        assert!(!peer.is_evicted());
        assert_eq!(held.iter().filter(|s| !s.is_evicted()).count(), 7);
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection() {
        let table = Unassociated::new(1, 1);
        let old = table.admit(ip(1)).slot;
        let waiter = tokio::spawn(async move {
            old.evicted().await;
            old.is_evicted()
        });
        tokio::task::yield_now().await;
        let _new = table.admit(ip(2)).slot;
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("evicted connection not woken")
            .unwrap();
        assert!(woke);
    }
}
