//! Flow identities: protocol numbers and the keys sessions are found by.
//!
//! A session is found by its inside key when a packet leaves an environment
//! and by its outside key when a packet comes back. For ICMP echo the
//! identifier stands in for the environment's port and the remote port is 0.

use core::net::Ipv4Addr;

/// IP protocol number of ICMP.
pub const ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;

/// An address and a port (or ICMP identifier).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port, or ICMP echo identifier.
    pub port: u16,
}

impl Endpoint {
    /// `ip:port`.
    pub const fn new(ip: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint { ip, port }
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// A protocol and two endpoints: `(proto, local, remote)`.
///
/// As an inside key, `local` is the environment's endpoint; as an outside
/// key, `local` is the ENI endpoint. `remote` is the VPC endpoint in both.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number.
    pub proto: u8,
    /// The environment's or the ENI's endpoint.
    pub local: Endpoint,
    /// The remote (VPC) endpoint.
    pub remote: Endpoint,
}

/// Maps a protocol number to its index in per-protocol arrays (TCP 0, UDP 1,
/// ICMP 2).
#[inline]
pub const fn proto_index(proto: u8) -> usize {
    match proto {
        TCP => 0,
        UDP => 1,
        _ => 2,
    }
}
