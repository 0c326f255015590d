//! Address allocation inside one subnet.
//!
//! As in AWS, five addresses of every subnet are never handed out: the
//! network address, the next three (the VPC router, the DNS server, and one
//! kept for future use) and the broadcast address. A /28 (16 addresses) thus
//! has 11 usable ones. Allocation is deterministic: the lowest free usable
//! address first.

use core::net::Ipv4Addr;
use std::collections::BTreeSet;

use dataplane::policy::Cidr;

/// Addresses reserved at the start of every subnet (network, router, DNS,
/// future use).
pub const RESERVED_HEAD: u32 = 4;

/// Why an address could not be allocated or reserved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is in use (AWS
    /// `SubnetOutOfIPAddresses`).
    #[error("SubnetOutOfIPAddresses: subnet {subnet} has no free address")]
    SubnetOutOfIPAddresses {
        /// The subnet's id.
        subnet: String,
    },
    /// The address is not inside the subnet.
    #[error("{addr} is not in subnet {subnet}")]
    NotInSubnet {
        /// The subnet's id.
        subnet: String,
        /// The address.
        addr: Ipv4Addr,
    },
    /// The address is one of the five reserved ones.
    #[error("{addr} is reserved in subnet {subnet} (network, router, DNS, future use or broadcast)")]
    Reserved {
        /// The subnet's id.
        subnet: String,
        /// The address.
        addr: Ipv4Addr,
    },
    /// The address is already allocated.
    #[error("{addr} is already in use in subnet {subnet}")]
    InUse {
        /// The subnet's id.
        subnet: String,
        /// The address.
        addr: Ipv4Addr,
    },
}

/// The allocator of one subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipam {
    subnet: String,
    cidr: Cidr,
    used: BTreeSet<u32>,
}

fn to_u32(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

impl Ipam {
    /// An allocator for subnet `subnet` (its id, used in errors) with block
    /// `cidr`, nothing allocated.
    pub fn new(subnet: impl Into<String>, cidr: Cidr) -> Ipam {
        Ipam { subnet: subnet.into(), cidr, used: BTreeSet::new() }
    }

    /// The subnet's id.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The subnet's block.
    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// First and last usable address as integers; `None` if there are none
    /// (prefixes longer than /29).
    fn usable_range(&self) -> Option<(u32, u32)> {
        if self.cidr.size() < u64::from(RESERVED_HEAD) + 2 {
            return None;
        }
        let first = to_u32(self.cidr.network()) + RESERVED_HEAD;
        let last = to_u32(self.cidr.broadcast()) - 1;
        (first <= last).then_some((first, last))
    }

    /// Whether `addr` may ever be handed out: in the subnet and not reserved.
    pub fn is_usable(&self, addr: Ipv4Addr) -> bool {
        self.usable_range().is_some_and(|(lo, hi)| (lo..=hi).contains(&to_u32(addr)))
    }

    /// Usable addresses in the subnet (size less the five reserved).
    pub fn capacity(&self) -> u64 {
        self.usable_range().map_or(0, |(lo, hi)| u64::from(hi - lo) + 1)
    }

    /// Usable addresses not allocated.
    pub fn available(&self) -> u64 {
        self.capacity() - self.used.len() as u64
    }

    /// Whether `addr` is allocated.
    pub fn is_allocated(&self, addr: Ipv4Addr) -> bool {
        self.used.contains(&to_u32(addr))
    }

    /// The allocated addresses, lowest first.
    pub fn allocated(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.used.iter().map(|&a| Ipv4Addr::from(a))
    }

    /// Allocates the lowest free usable address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        self.allocate_excluding(&[])
    }

    /// Allocates the lowest free usable address not in `avoid` (for example
    /// an address someone on the link already answered ARP for). The
    /// avoided addresses stay free.
    pub fn allocate_excluding(&mut self, avoid: &[Ipv4Addr]) -> Result<Ipv4Addr, IpamError> {
        let out = || IpamError::SubnetOutOfIPAddresses { subnet: self.subnet.clone() };
        let (lo, hi) = self.usable_range().ok_or_else(out)?;
        let avoid: BTreeSet<u32> = avoid.iter().map(|&a| to_u32(a)).collect();
        // Walk the allocated and avoided addresses in order: the first gap
        // is the answer. O(allocated + avoided).
        let mut taken = self.used.range(lo..=hi).chain(avoid.range(lo..=hi)).copied().collect::<Vec<_>>();
        taken.sort_unstable();
        taken.dedup();
        let mut candidate = lo;
        for t in taken {
            if t != candidate {
                break;
            }
            if candidate == hi {
                return Err(out());
            }
            candidate += 1;
        }
        self.used.insert(candidate);
        Ok(Ipv4Addr::from(candidate))
    }

    /// Marks a given address as allocated (an address kept from an earlier
    /// plan, or one in use by something else on the link).
    pub fn reserve(&mut self, addr: Ipv4Addr) -> Result<(), IpamError> {
        let subnet = self.subnet.clone();
        if !self.cidr.contains(addr) {
            return Err(IpamError::NotInSubnet { subnet, addr });
        }
        if !self.is_usable(addr) {
            return Err(IpamError::Reserved { subnet, addr });
        }
        if !self.used.insert(to_u32(addr)) {
            return Err(IpamError::InUse { subnet, addr });
        }
        Ok(())
    }

    /// Returns an address to the pool; `false` if it was not allocated.
    pub fn release(&mut self, addr: Ipv4Addr) -> bool {
        self.used.remove(&to_u32(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ipam(c: &str) -> Ipam {
        Ipam::new("subnet-a", c.parse().unwrap())
    }

    #[test]
    fn slash_28_has_eleven_usable_addresses_lowest_first() {
        let mut p = ipam("10.0.1.16/28");
        assert_eq!(p.capacity(), 11);
        assert_eq!(p.available(), 11);
        let got: Vec<_> = (0..11).map(|_| p.allocate().unwrap()).collect();
        let want: Vec<_> = (20..=30).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        assert_eq!(got, want);
        assert_eq!(p.available(), 0);
        assert_eq!(p.allocate(), Err(IpamError::SubnetOutOfIPAddresses { subnet: "subnet-a".into() }));
        assert_eq!(
            p.allocate().unwrap_err().to_string(),
            "SubnetOutOfIPAddresses: subnet subnet-a has no free address"
        );
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let p = ipam("10.0.0.0/24");
        for r in ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.255"] {
            assert!(!p.is_usable(ip(r)), "{r}");
        }
        assert!(p.is_usable(ip("10.0.0.4")));
        assert!(p.is_usable(ip("10.0.0.254")));
        assert!(!p.is_usable(ip("10.0.1.4")));
        assert_eq!(p.capacity(), 251);
        let mut p = ipam("10.0.0.0/29");
        assert_eq!(p.capacity(), 3);
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.4"));
        for tiny in ["10.0.0.0/30", "10.0.0.0/31", "10.0.0.0/32"] {
            let mut p = ipam(tiny);
            assert_eq!(p.capacity(), 0);
            assert!(p.allocate().is_err());
        }
    }

    #[test]
    fn release_reuses_the_lowest_and_exclusion_skips() {
        let mut p = ipam("10.0.0.0/24");
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!((a, b), (ip("10.0.0.4"), ip("10.0.0.5")));
        assert!(p.release(a));
        assert!(!p.release(a));
        assert_eq!(p.available(), 250);
        assert_eq!(p.allocate_excluding(&[ip("10.0.0.4"), ip("10.0.0.6")]).unwrap(), ip("10.0.0.7"));
        assert!(!p.is_allocated(ip("10.0.0.6")));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.4"));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.6"));
        assert_eq!(p.allocated().count(), 4);
    }

    #[test]
    fn exclusion_can_exhaust_and_reserve_checks() {
        let mut p = ipam("10.0.0.0/29");
        let all = [ip("10.0.0.4"), ip("10.0.0.5"), ip("10.0.0.6")];
        assert!(matches!(p.allocate_excluding(&all), Err(IpamError::SubnetOutOfIPAddresses { .. })));
        assert_eq!(p.available(), 3);
        p.reserve(ip("10.0.0.5")).unwrap();
        assert!(matches!(p.reserve(ip("10.0.0.5")), Err(IpamError::InUse { .. })));
        assert!(matches!(p.reserve(ip("10.0.0.1")), Err(IpamError::Reserved { .. })));
        assert!(matches!(p.reserve(ip("10.0.0.7")), Err(IpamError::Reserved { .. })));
        assert!(matches!(p.reserve(ip("10.0.1.5")), Err(IpamError::NotInSubnet { .. })));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.4"));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.6"));
        assert!(p.allocate().is_err());
    }
}
