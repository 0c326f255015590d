//! Compiled security-group policy: the egress rules that decide which new
//! flows an environment may open.
//!
//! Security groups are stateful allow-lists. A [`RuleSet`] is the union of
//! the egress rules of every group attached to one shared ENI, compiled once
//! when the control plane publishes it. It is consulted only when a session
//! is created; packets of an established session (and replies) never see it.
//! An empty rule set denies every new flow.
//!
//! # Compiled form
//! Besides the rules as given, a rule set keeps one compact list per
//! protocol class (TCP, UDP, ICMP, any other protocol): the rules that can
//! admit that protocol (`All` rules in every list, their and ICMP rules'
//! ports as the whole range), each a destination network and mask and an
//! inclusive port range. A list is stored in groups of [`LANES`] rules,
//! field by field (64 bytes a group, one cache line), so that
//! [`RuleSet::allows`] checks a group's rules at once (vector compares, no
//! branch per rule); a group's unused lanes hold a rule that admits
//! nothing (`mask` 0, `net` 1). It scans only the list of the flow's
//! protocol, with no branch on the rule's kind. Both are built together in
//! [`RuleSet::new`] and never change after.

use core::fmt;
use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use core::str::FromStr;

/// An IPv4 prefix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: u32,
    prefix: u8,
}

impl Cidr {
    /// `0.0.0.0/0`.
    pub const ANY: Cidr = Cidr { addr: 0, prefix: 0 };

    /// The prefix `addr/prefix`; host bits are cleared. `None` if `prefix > 32`.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        if prefix > 32 {
            return None;
        }
        let a = u32::from_be_bytes(addr.octets());
        Some(Cidr { addr: a & Cidr::mask_of(prefix), prefix })
    }

    const fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        }
    }

    /// The network address.
    pub const fn network(self) -> Ipv4Addr {
        let b = self.addr.to_be_bytes();
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The prefix length.
    pub const fn prefix_len(self) -> u8 {
        self.prefix
    }

    /// The netmask as an integer.
    pub const fn mask(self) -> u32 {
        Cidr::mask_of(self.prefix)
    }

    /// The broadcast address (the last address of the prefix).
    pub const fn broadcast(self) -> Ipv4Addr {
        let b = (self.addr | !self.mask()).to_be_bytes();
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether `ip` is inside the prefix.
    #[inline]
    pub const fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from_be_bytes(ip.octets()) & self.mask() == self.addr
    }

    /// Whether the two prefixes share any address.
    pub const fn overlaps(self, other: Cidr) -> bool {
        let m = if self.prefix < other.prefix { self.mask() } else { other.mask() };
        self.addr & m == other.addr & m
    }

    /// How many addresses the prefix holds.
    pub const fn size(self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// Why a prefix string did not parse.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected an IPv4 prefix such as 10.0.0.0/16")]
pub struct CidrParseError;

impl FromStr for Cidr {
    type Err = CidrParseError;
    /// `a.b.c.d/n`; a bare address is a /32.
    fn from_str(s: &str) -> Result<Cidr, CidrParseError> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| CidrParseError)?;
        let prefix: u8 = p.trim().parse().map_err(|_| CidrParseError)?;
        Cidr::new(addr, prefix).ok_or(CidrParseError)
    }
}

/// The protocol a rule applies to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuleProto {
    /// Every protocol (AWS `-1`); the port range is ignored.
    All,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP; the port range is ignored.
    Icmp,
}

/// One egress allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Protocol.
    pub proto: RuleProto,
    /// Destination ports (TCP, UDP).
    pub ports: RangeInclusive<u16>,
    /// Destination prefix.
    pub dst: Cidr,
}

impl Rule {
    /// Allows everything (the AWS default egress rule).
    pub fn allow_all() -> Rule {
        Rule { proto: RuleProto::All, ports: 0..=65535, dst: Cidr::ANY }
    }

    /// Whether the rule admits a new flow.
    #[inline]
    pub fn allows(&self, proto: u8, dst: Ipv4Addr, dst_port: u16) -> bool {
        let proto_ok = match self.proto {
            RuleProto::All => true,
            RuleProto::Tcp => proto == crate::flow::TCP && self.ports.contains(&dst_port),
            RuleProto::Udp => proto == crate::flow::UDP && self.ports.contains(&dst_port),
            RuleProto::Icmp => proto == crate::flow::ICMP,
        };
        proto_ok && self.dst.contains(dst)
    }
}

/// One rule as [`RuleSet::allows`] checks it: `dst & mask == net` and
/// `lo <= dst_port <= hi`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Compiled {
    net: u32,
    mask: u32,
    lo: u16,
    hi: u16,
}

/// Rules a [`Group`] holds.
const LANES: usize = 4;

/// [`LANES`] compiled rules, field by field. Ports are widened to `i32`
/// (they fit) so that the range check is a signed compare, which baseline
/// x86-64 vectors have.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct Group {
    net: [u32; LANES],
    mask: [u32; LANES],
    lo: [i32; LANES],
    hi: [i32; LANES],
}

impl Group {
    /// A group whose every lane admits nothing: `d & 0 == 1` never holds.
    const EMPTY: Group = Group { net: [1; LANES], mask: [0; LANES], lo: [1; LANES], hi: [0; LANES] };

    /// Groups of a list's rules, in order, the last one padded.
    fn pack(rules: &[Compiled]) -> Box<[Group]> {
        rules
            .chunks(LANES)
            .map(|c| {
                let mut g = Group::EMPTY;
                for (i, r) in c.iter().enumerate() {
                    g.net[i] = r.net;
                    g.mask[i] = r.mask;
                    g.lo[i] = i32::from(r.lo);
                    g.hi[i] = i32::from(r.hi);
                }
                g
            })
            .collect()
    }

    /// Whether one of the group's rules admits `d:port`.
    #[inline(always)]
    fn admits(&self, d: u32, port: i32) -> bool {
        let hit: [bool; LANES] =
            core::array::from_fn(|i| (d & self.mask[i] == self.net[i]) & (self.lo[i] <= port) & (port <= self.hi[i]));
        hit.iter().fold(false, |a, &h| a | h)
    }
}

/// Compiled lists: TCP, UDP, ICMP, every other protocol.
const CLASSES: usize = 4;

/// The class (index into the compiled lists) of an IP protocol number.
#[inline]
const fn class(proto: u8) -> usize {
    match proto {
        crate::flow::TCP => 0,
        crate::flow::UDP => 1,
        crate::flow::ICMP => 2,
        _ => 3,
    }
}

/// The union of the egress rules of one ENI's security groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Per protocol class, the rules that can admit it, in groups (see the
    /// module doc).
    compiled: [Box<[Group]>; CLASSES],
}

impl RuleSet {
    /// Compiles a rule set (any order; duplicates are removed).
    pub fn new(mut rules: Vec<Rule>) -> RuleSet {
        let mut seen = std::collections::HashSet::new();
        rules.retain(|r| seen.insert(r.clone()));
        let mut lists: [Vec<Compiled>; CLASSES] = Default::default();
        for r in &rules {
            let (net, mask) = (u32::from(r.dst.network()), r.dst.mask());
            let any_port = Compiled { net, mask, lo: 0, hi: u16::MAX };
            let ports = Compiled { net, mask, lo: *r.ports.start(), hi: *r.ports.end() };
            match r.proto {
                RuleProto::All => lists.iter_mut().for_each(|l| l.push(any_port)),
                // An empty range (start > end) admits no port, as `contains`.
                RuleProto::Tcp => lists[class(crate::flow::TCP)].push(ports),
                RuleProto::Udp => lists[class(crate::flow::UDP)].push(ports),
                RuleProto::Icmp => lists[class(crate::flow::ICMP)].push(any_port),
            }
        }
        RuleSet { rules, compiled: lists.map(|l| Group::pack(&l)) }
    }

    /// A rule set that allows every flow.
    pub fn allow_all() -> RuleSet {
        RuleSet::new(vec![Rule::allow_all()])
    }

    /// Whether a new flow of `proto` to `dst:dst_port` is allowed.
    #[inline]
    pub fn allows(&self, proto: u8, dst: Ipv4Addr, dst_port: u16) -> bool {
        let d = u32::from(dst);
        let port = i32::from(dst_port);
        self.compiled[class(proto)].iter().any(|g| g.admits(d, port))
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{ICMP, TCP, UDP};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_contains_overlap() {
        let c: Cidr = "10.0.1.77/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.1.0/24");
        assert!(c.contains(ip("10.0.1.255")));
        assert!(!c.contains(ip("10.0.2.0")));
        assert_eq!(c.broadcast(), ip("10.0.1.255"));
        assert_eq!(c.size(), 256);
        assert!(c.overlaps("10.0.0.0/16".parse().unwrap()));
        assert!(!c.overlaps("10.0.2.0/24".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert!(Cidr::ANY.contains(ip("203.0.113.9")));
    }

    #[test]
    fn rules_match_protocol_port_and_prefix() {
        let set = RuleSet::new(vec![
            Rule { proto: RuleProto::Tcp, ports: 443..=443, dst: "10.0.0.0/16".parse().unwrap() },
            Rule { proto: RuleProto::Udp, ports: 53..=53, dst: "10.0.0.2/32".parse().unwrap() },
            Rule { proto: RuleProto::Icmp, ports: 0..=0, dst: "10.0.5.0/24".parse().unwrap() },
        ]);
        assert!(set.allows(TCP, ip("10.0.9.9"), 443));
        assert!(!set.allows(TCP, ip("10.0.9.9"), 80));
        assert!(!set.allows(TCP, ip("10.1.0.1"), 443));
        assert!(set.allows(UDP, ip("10.0.0.2"), 53));
        assert!(!set.allows(UDP, ip("10.0.0.3"), 53));
        assert!(!set.allows(TCP, ip("10.0.0.2"), 53));
        assert!(set.allows(ICMP, ip("10.0.5.1"), 0));
        assert!(!RuleSet::default().allows(TCP, ip("10.0.0.1"), 443));
        assert!(RuleSet::allow_all().allows(UDP, ip("192.0.2.1"), 9));
    }

    /// The compiled lists admit exactly the flows some rule admits
    /// ([`Rule::allows`]), for every protocol (TCP, UDP, ICMP, others),
    /// `All` rules, empty and single-port ranges, /0 to /32 prefixes.
    #[test]
    fn compiled_lists_agree_with_the_rules() {
        use proptest::prelude::*;
        let proto = prop_oneof![Just(TCP), Just(UDP), Just(ICMP), Just(47u8), any::<u8>()];
        let kind = prop_oneof![Just(RuleProto::All), Just(RuleProto::Tcp), Just(RuleProto::Udp), Just(RuleProto::Icmp)];
        // Few distinct addresses and ports, so flows hit rules often.
        let addr = (0u32..4).prop_map(|x| Ipv4Addr::from(0x0a00_0000 | (x << 6) | x));
        let port = prop_oneof![0u16..8, Just(443u16), Just(u16::MAX)];
        let rule = (kind, port.clone(), port.clone(), addr.clone(), 0u8..=32)
            .prop_map(|(proto, a, b, net, len)| Rule { proto, ports: a..=b, dst: Cidr::new(net, len).unwrap() });
        let flows = proptest::collection::vec((proto, addr, port), 1..16);
        proptest!(|(rules in proptest::collection::vec(rule, 0..12), flows in flows)| {
            let set = RuleSet::new(rules.clone());
            for (p, dst, dport) in flows {
                let want = rules.iter().any(|r| r.allows(p, dst, dport));
                prop_assert_eq!(set.allows(p, dst, dport), want, "proto {} to {}:{}", p, dst, dport);
            }
        });
    }
}
