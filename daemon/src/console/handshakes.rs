//! Connections still in their TLS handshake, oldest first: when every console connection
//! slot is taken, the oldest of them gives its slot to the new connection. A client that
//! finished its handshake keeps its slot (the idle and header-read timeouts then govern
//! it), so bare TCP connections that never speak TLS cannot hold the console: each new
//! connection evicts one of them.

use super::limits::Slot;
use crate::client_key::ClientKey;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

/// A connection's slot while its handshake runs: taken back by the task once the
/// handshake is done, or by an eviction.
pub type Held = Arc<Mutex<Option<Slot<ClientKey>>>>;

/// The connections in their handshake.
#[derive(Default)]
pub struct Handshakes {
    waiting: Mutex<Waiting>,
}

/// The queue, and its length at which finished entries are next swept out (so that a
/// flood costs amortised O(1) per connection, not a walk of the queue each time).
#[derive(Default)]
struct Waiting {
    queue: VecDeque<(Held, AbortHandle)>,
    sweep_at: usize,
}

fn in_handshake(held: &Held) -> bool {
    held.lock().map(|s| s.is_some()).unwrap_or(false)
}

impl Handshakes {
    /// A cell for a new connection's slot.
    pub fn hold(slot: Slot<ClientKey>) -> Held {
        Arc::new(Mutex::new(Some(slot)))
    }

    /// Takes the slot back from `held` (the handshake finished): it can no longer be
    /// evicted. `None` when it was evicted meanwhile.
    pub fn finish(held: &Held) -> Option<Slot<ClientKey>> {
        held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Registers the task serving `held`.
    pub fn register(&self, held: Held, task: AbortHandle) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Entries whose handshake finished are dropped from the front as they are met,
        // and from anywhere whenever the queue doubled since the last sweep.
        while w.queue.front().is_some_and(|(h, _)| !in_handshake(h)) {
            w.queue.pop_front();
        }
        if w.queue.len() >= w.sweep_at {
            w.queue.retain(|(h, _)| in_handshake(h));
            w.sweep_at = (2 * w.queue.len()).max(64);
        }
        w.queue.push_back((held, task));
    }

    /// Frees the slot of the oldest connection still in its handshake and stops its task;
    /// `false` when there is none.
    pub fn evict_oldest(&self) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((held, task)) = w.queue.pop_front() {
            let slot = held.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(slot) = slot {
                drop(slot);
                task.abort();
                return true;
            }
        }
        false
    }

    /// Connections registered and still in their handshake.
    pub fn waiting(&self) -> usize {
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.queue.iter().filter(|(h, _)| in_handshake(h)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::limits::Slots;

    #[tokio::test]
    async fn the_oldest_handshake_gives_its_slot_and_finished_ones_keep_theirs() {
        let slots: Slots<ClientKey> = Slots::new(2, 2);
        let ip = ClientKey::of("127.0.0.2".parse().unwrap());
        let hs = Handshakes::default();
        let idle = || tokio::spawn(std::future::pending::<()>());
        let first = Handshakes::hold(slots.try_take(ip).unwrap());
        let t1 = idle();
        hs.register(first.clone(), t1.abort_handle());
        let second = Handshakes::hold(slots.try_take(ip).unwrap());
        let t2 = idle();
        hs.register(second.clone(), t2.abort_handle());
        assert!(slots.try_take(ip).is_err(), "full");
        // The second finishes its handshake: it keeps its slot.
        let kept = Handshakes::finish(&second).unwrap();
        assert_eq!(hs.waiting(), 1);
        assert!(hs.evict_oldest());
        assert!(t1.await.unwrap_err().is_cancelled());
        assert!(Handshakes::finish(&first).is_none(), "evicted");
        assert!(slots.try_take(ip).is_ok(), "its slot is free");
        assert!(!hs.evict_oldest(), "none left in a handshake");
        drop(kept);
        t2.abort();
    }
}
