//! Whether an address is one of the engine's ENI addresses, in a few
//! instructions: every frame asks it (a frame from the VPC must be addressed
//! to one; a frame from an environment to one is a hairpin).
//!
//! A 256-slot table indexed by the address's last byte holds that address,
//! [`EMPTY`] when no ENI address ends in that byte, or [`SHARED`] when
//! several do (then the caller asks its map). ENI addresses of one subnet
//! differ in their last byte up to 256 of them, so the answer is almost
//! always exact without the map. Neither sentinel can be an ENI address
//! (`0.0.0.0` and `255.255.255.255`). The table is rebuilt from the map
//! whenever the set of addresses changes (rarely: an address added to or
//! released from the ENI), never on the per-frame path.

use core::net::Ipv4Addr;

/// No ENI address ends in this byte.
const EMPTY: u32 = 0;
/// Several ENI addresses end in this byte.
const SHARED: u32 = u32::MAX;

/// The answer of [`AddrSet::get`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Member {
    /// One of ours.
    Yes,
    /// Not ours.
    No,
    /// Ask the map (several ENI addresses share the last byte).
    Ask,
}

/// See the module doc.
pub(super) struct AddrSet {
    slots: Box<[u32; 256]>,
}

impl AddrSet {
    /// An empty set.
    pub(super) fn new() -> AddrSet {
        AddrSet { slots: Box::new([EMPTY; 256]) }
    }

    /// Replaces the contents with `addrs`.
    pub(super) fn rebuild(&mut self, addrs: impl Iterator<Item = Ipv4Addr>) {
        self.slots.fill(EMPTY);
        for a in addrs {
            let a = u32::from(a);
            let slot = &mut self.slots[(a & 0xff) as usize];
            *slot = if *slot == EMPTY || *slot == a { a } else { SHARED };
        }
    }

    /// Whether `ip` is in the set (see [`Member`]).
    #[inline]
    pub(super) fn get(&self, ip: Ipv4Addr) -> Member {
        let a = u32::from(ip);
        match self.slots[(a & 0xff) as usize] {
            s if s == a && a != EMPTY => Member::Yes,
            SHARED => Member::Ask,
            _ => Member::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_for_distinct_last_bytes_and_asks_when_shared() {
        let mut s = AddrSet::new();
        let a = Ipv4Addr::new(10, 0, 0, 4);
        let b = Ipv4Addr::new(10, 0, 0, 5);
        let c = Ipv4Addr::new(10, 0, 1, 4);
        s.rebuild([a, b].into_iter());
        assert_eq!(s.get(a), Member::Yes);
        assert_eq!(s.get(b), Member::Yes);
        assert_eq!(s.get(c), Member::No);
        assert_eq!(s.get(Ipv4Addr::new(10, 0, 0, 6)), Member::No);
        assert_eq!(s.get(Ipv4Addr::UNSPECIFIED), Member::No);
        s.rebuild([a, b, c].into_iter());
        assert_eq!(s.get(a), Member::Ask);
        assert_eq!(s.get(c), Member::Ask);
        assert_eq!(s.get(b), Member::Yes);
        s.rebuild([b].into_iter());
        assert_eq!(s.get(a), Member::No);
        assert_eq!(s.get(b), Member::Yes);
    }
}
