//! The unit every per-client limit counts (association shares, connections not yet
//! associated, console connection slots, login throttling): an IPv4 address, or an IPv6
//! /64. One IPv6 host holds a whole /64 and may rotate through its addresses (privacy
//! addresses), so counting single IPv6 addresses would give it as many shares as it
//! likes. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack listener sees
//! an IPv4 client) counts as the IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A client as per-client limits count it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a peer at `ip`.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V6(a) => {
                let mut octets = a.octets();
                octets[8..].fill(0);
                ClientKey(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Whether a configured address and a peer's are the same host (an IPv4-mapped IPv6
/// address equals its IPv4 address).
pub fn same_host(configured: IpAddr, peer: IpAddr) -> bool {
    configured.to_canonical() == peer.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key("2001:db8:1:2::10"), key("2001:db8:1:2:abcd:ef:1:2"));
        assert_ne!(key("2001:db8:1:2::10"), key("2001:db8:1:3::10"));
        assert_eq!(key("::ffff:10.0.0.7"), key("10.0.0.7"));
        assert_ne!(key("10.0.0.7"), key("10.0.0.8"));
        assert_eq!(key("2001:db8:1:2::10").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:10.0.0.7").to_string(), "10.0.0.7");
    }

    #[test]
    fn same_host_sees_through_ipv4_mapping_only() {
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(same_host(v4, "::ffff:10.0.0.7".parse().unwrap()));
        assert!(same_host("::ffff:10.0.0.7".parse().unwrap(), v4));
        assert!(!same_host(v4, "10.0.0.8".parse().unwrap()));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(!same_host(a, "2001:db8::2".parse().unwrap()));
    }
}
