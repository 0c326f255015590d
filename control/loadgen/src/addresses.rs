//! The address plan the emulated environments use: their own addresses, the NAT's inside address they route
//! through (and resolve with ARP), and the responder's address they send to.
//!
//! # Invariants
//!
//! - [`Addresses::lab`] is the plan of our lab and of the kernel topology: environment `i` is
//!   [`netlab::env_addr`]`(i)` in `172.16.0.0/16`, the gateway [`INSIDE_GATEWAY`], the responder [`SERVER`].
//! - [`Addresses::net`] (a NAT someone else runs, `--env-net`, `--gateway`, `--responder`): environment `i` is the
//!   `i`-th host address of the network, counting from the network address + 1 and skipping the gateway's; the
//!   network and broadcast addresses are never used. [`Addresses::env_index`] is its inverse: `env_index(env(i)) ==
//!   Some(i)` for every `i < capacity()`, and `None` for any address that is not an environment's.

use netlab::{env_addr, INSIDE_GATEWAY, MAX_ENVS, SERVER};
use std::net::Ipv4Addr;

/// How environment addresses are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// [`netlab::env_addr`].
    Lab,
    /// Host addresses of `base/prefix`, the gateway skipped.
    Net { base: u32, prefix: u8 },
}

/// Where the environments are, whom they route through and whom they talk to. See the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    plan: Plan,
    /// The NAT's inside address (the environments' default gateway).
    pub gateway: Ipv4Addr,
    /// The responder's address.
    pub server: Ipv4Addr,
}

impl Addresses {
    /// The lab's plan (ours and the kernel topology).
    pub const fn lab() -> Addresses {
        Addresses { plan: Plan::Lab, gateway: INSIDE_GATEWAY, server: SERVER }
    }

    /// Environments numbered in `net/prefix` (host bits of `net` ignored) behind `gateway`, sending to `server`.
    /// The error says which of the three is wrong and why.
    pub fn net(
        net: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Result<Addresses, (&'static str, String)> {
        if !(8..=30).contains(&prefix) {
            return Err(("env_net", format!("/{prefix}: the prefix must be 8..=30 (room for environments)")));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(net) & mask;
        let inside = |a: Ipv4Addr| u32::from(a) & mask == base;
        let a = Addresses { plan: Plan::Net { base, prefix }, gateway, server };
        let g = u32::from(gateway);
        if !inside(gateway) || g == base || g == base | !mask {
            return Err(("gateway", format!("{gateway} is not a host address of {}/{prefix}", Ipv4Addr::from(base))));
        }
        if inside(server) {
            return Err((
                "responder",
                format!("{server} is inside the environments' network {}/{prefix}: it must be beyond the NAT", {
                    Ipv4Addr::from(base)
                }),
            ));
        }
        Ok(a)
    }

    /// How many environments the plan numbers.
    pub fn capacity(&self) -> usize {
        match self.plan {
            Plan::Lab => MAX_ENVS,
            // Host addresses less the gateway's.
            Plan::Net { prefix, .. } => (1usize << (32 - prefix)) - 3,
        }
    }

    /// The environments' prefix length (their addresses are on-link to the gateway within it).
    pub fn prefix(&self) -> u8 {
        match self.plan {
            Plan::Lab => 16,
            Plan::Net { prefix, .. } => prefix,
        }
    }

    /// Environment `i`'s address.
    ///
    /// # Panics
    /// If `i >= self.capacity()`.
    pub fn env(&self, i: usize) -> Ipv4Addr {
        match self.plan {
            Plan::Lab => env_addr(i),
            Plan::Net { base, .. } => {
                assert!(i < self.capacity(), "environment {i} is beyond the plan ({} environments)", self.capacity());
                let h = base + 1 + i as u32;
                Ipv4Addr::from(if h >= u32::from(self.gateway) { h + 1 } else { h })
            }
        }
    }

    /// The environment whose address is `a`, if any (see the module doc).
    pub fn env_index(&self, a: Ipv4Addr) -> Option<usize> {
        match self.plan {
            Plan::Lab => super::env_of_addr(a),
            Plan::Net { base, .. } => {
                let (a, g) = (u32::from(a), u32::from(self.gateway));
                let j = a.checked_sub(base + 1)? as usize;
                let i = match a.cmp(&g) {
                    std::cmp::Ordering::Less => j,
                    std::cmp::Ordering::Equal => return None,
                    std::cmp::Ordering::Greater => j - 1,
                };
                (i < self.capacity()).then_some(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_numbers_its_hosts_around_the_gateway_and_back() {
        let a = Addresses::net(
            Ipv4Addr::new(192, 168, 7, 99),
            24,
            Ipv4Addr::new(192, 168, 7, 3),
            Ipv4Addr::new(198, 51, 100, 2),
        )
        .expect("valid");
        assert_eq!(a.capacity(), 253);
        assert_eq!(a.env(0), Ipv4Addr::new(192, 168, 7, 1));
        assert_eq!(a.env(1), Ipv4Addr::new(192, 168, 7, 2));
        assert_eq!(a.env(2), Ipv4Addr::new(192, 168, 7, 4), "the gateway's address is skipped");
        assert_eq!(a.env(252), Ipv4Addr::new(192, 168, 7, 254), "the broadcast address is not used");
        for i in 0..a.capacity() {
            assert_eq!(a.env_index(a.env(i)), Some(i));
        }
        for other in [[192, 168, 7, 0], [192, 168, 7, 3], [192, 168, 7, 255], [192, 168, 8, 1], [10, 0, 0, 1]] {
            assert_eq!(a.env_index(Ipv4Addr::from(other)), None, "{other:?}");
        }
        assert_eq!(a.prefix(), 24);
    }

    #[test]
    fn a_bad_plan_names_what_is_wrong() {
        let g = Ipv4Addr::new(10, 9, 0, 1);
        let s = Ipv4Addr::new(10, 8, 0, 2);
        let field = |net: [u8; 4], p, g, s| Addresses::net(Ipv4Addr::from(net), p, g, s).map(|_| ()).unwrap_err().0;
        assert_eq!(field([10, 9, 0, 0], 31, g, s), "env_net");
        assert_eq!(field([10, 9, 0, 0], 24, Ipv4Addr::new(10, 7, 0, 1), s), "gateway");
        assert_eq!(field([10, 9, 0, 0], 24, Ipv4Addr::new(10, 9, 0, 255), s), "gateway");
        assert_eq!(field([10, 9, 0, 0], 16, g, Ipv4Addr::new(10, 9, 3, 3)), "responder");
    }

    #[test]
    fn the_lab_plan_is_netlabs() {
        let a = Addresses::lab();
        assert_eq!(a.env(260), env_addr(260));
        assert_eq!(a.env_index(env_addr(260)), Some(260));
        assert_eq!((a.gateway, a.server, a.prefix()), (INSIDE_GATEWAY, SERVER, 16));
    }
}
