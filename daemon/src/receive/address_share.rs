//! Each client's share of the association slots (`dicom.max_associations`): at most
//! `dicom.max_associations_per_address` at once, so that one device (or one attacker)
//! holding associations open cannot leave none for the modalities. A client is a
//! [`ClientKey`]: an IPv4 address or an IPv6 /64.

use crate::client_key::ClientKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Associations open per client.
#[derive(Debug)]
pub struct AddressShare {
    counts: Arc<Mutex<HashMap<ClientKey, usize>>>,
    cap: usize,
}

/// One client's association, counted until dropped.
#[derive(Debug)]
pub struct Held {
    counts: Arc<Mutex<HashMap<ClientKey, usize>>>,
    client: ClientKey,
}

impl AddressShare {
    /// At most `cap` associations per address.
    pub fn new(cap: usize) -> AddressShare {
        AddressShare {
            counts: Arc::new(Mutex::new(HashMap::new())),
            cap,
        }
    }

    /// Counts one more association of `client`, or `Err(held)` with how many it holds
    /// when that is its share already.
    pub fn try_take(&self, client: ClientKey) -> Result<Held, usize> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(client).or_insert(0);
        if *n >= self.cap {
            return Err(*n);
        }
        *n += 1;
        Ok(Held {
            counts: self.counts.clone(),
            client,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_gives_it_back() {
        let share = AddressShare::new(2);
        let a = ClientKey::of("10.0.0.1".parse().unwrap());
        let b = ClientKey::of("10.0.0.2".parse().unwrap());
        let one = share.try_take(a).unwrap();
        let _two = share.try_take(a).unwrap();
        assert_eq!(share.try_take(a).unwrap_err(), 2);
        assert!(share.try_take(b).is_ok(), "another address is not affected");
        drop(one);
        assert!(share.try_take(a).is_ok());
    }

    #[test]
    fn addresses_of_one_ipv6_64_share_one_share() {
        let share = AddressShare::new(1);
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        let _held = share.try_take(key("2001:db8:5:6::1")).unwrap();
        assert_eq!(share.try_take(key("2001:db8:5:6:ffff::2")).unwrap_err(), 1);
        assert!(share.try_take(key("2001:db8:5:7::1")).is_ok());
    }
}
