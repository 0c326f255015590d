//! Which worker owns a frame that arrived from the VPC.
//!
//! A gateway with several workers gives each worker's engine its own slice of
//! the ENI port range ([`Shards`]); a session lives on the worker whose slice
//! holds its ENI port, which is also the worker that reads the environment's
//! attachment (so outbound frames never change worker). A frame from the
//! outside port may be read by any worker, so the reader asks [`inbound`]
//! which ENI port it is addressed to and hands it to the owner:
//! - TCP/UDP: the destination port; ICMP echo reply: the identifier;
//! - ICMP errors: the source port (or identifier) of the embedded datagram,
//!   which is the ENI endpoint of the session the error is about;
//! - a later fragment carries no port: its datagram's key, to look up where
//!   the first fragment went ([`FragSteer`]);
//! - ARP concerns every worker (each keeps its own neighbour table).
//!
//! These functions read only fixed offsets with bounds checks; they never
//! validate checksums (the owner's engine does) and never panic.

use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::wire::{self, get16, icmp, ETH_LEN};

/// How an inbound frame is steered.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Steer {
    /// To the owner of this ENI port (or ICMP identifier).
    Port(u16),
    /// The first fragment of a datagram, to the owner of the port; later
    /// fragments follow it (remember the key).
    FirstFragment(u16, FragId),
    /// A later fragment: wherever the first one went.
    LaterFragment(FragId),
    /// ARP: every worker learns from it.
    Arp,
    /// Anything else: the reader's own engine handles (and counts) it.
    Local,
}

/// A fragmented datagram's identity (RFC 791: source, destination,
/// protocol, identification).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FragId {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Identification.
    pub ident: u16,
}

/// Classifies a frame from the outside port.
pub fn inbound(frame: &[u8]) -> Steer {
    if frame.len() < ETH_LEN {
        return Steer::Local;
    }
    match wire::ethertype(frame) {
        wire::ETHERTYPE_ARP => return Steer::Arp,
        wire::ETHERTYPE_IPV4 => {}
        _ => return Steer::Local,
    }
    let ip = &frame[ETH_LEN..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Steer::Local;
    }
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let flags_off = get16(ip, 6);
    let (mf, off) = (flags_off & 0x2000 != 0, flags_off & 0x1fff);
    let proto = ip[9];
    let id = FragId { src: addr(ip, 12), dst: addr(ip, 16), proto, ident: get16(ip, 4) };
    if off != 0 {
        return Steer::LaterFragment(id);
    }
    let Some(l4) = ip.get(hlen..) else {
        return Steer::Local;
    };
    let port = match proto {
        TCP | UDP if l4.len() >= 4 => Some(get16(l4, 2)),
        ICMP if l4.len() >= 8 && l4[0] == icmp::ECHO_REPLY => Some(get16(l4, 4)),
        ICMP if l4.len() >= 8 && wire::is_icmp_error(l4[0]) => embedded_port(&l4[8..]),
        _ => None,
    };
    match (port, mf) {
        (Some(p), false) => Steer::Port(p),
        (Some(p), true) => Steer::FirstFragment(p, id),
        (None, _) => Steer::Local,
    }
}

/// The ENI-side port of the datagram quoted in an ICMP error: its source
/// port, or its echo identifier.
fn embedded_port(e: &[u8]) -> Option<u16> {
    if e.len() < 20 || e[0] >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(e[0] & 0x0f) * 4;
    let l4 = e.get(hlen..)?;
    match e[9] {
        TCP | UDP if l4.len() >= 2 => Some(get16(l4, 0)),
        ICMP if l4.len() >= 6 && l4[0] == icmp::ECHO_REQUEST => Some(get16(l4, 4)),
        _ => None,
    }
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// The split of an ENI port range among workers: contiguous slices, sized
/// by weight (a gateway weighs each worker by the environments it serves,
/// so ports go where flows start). A worker of weight 0 owns no port: its
/// engine never allocates (it reads no attachment) and [`Shards::owner`]
/// never names it. Worker `i`'s engine is configured with
/// [`Shards::range`]`(i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    lo: u16,
    hi: u16,
    /// Exclusive end of each worker's slice, as an offset from `lo`
    /// (non-decreasing; the last is the number of ports).
    ends: Vec<u32>,
}

impl Shards {
    /// Splits `range` equally among `n` workers (at least one port each;
    /// `n` is capped at the number of ports).
    pub fn new(range: RangeInclusive<u16>, n: usize) -> Shards {
        Shards::weighted(range, &vec![1; n.max(1)])
    }

    /// Splits `range` among `weights.len()` workers in proportion to their
    /// weights; every worker of non-zero weight gets at least one port.
    /// All zero (or none): equal shares.
    pub fn weighted(range: RangeInclusive<u16>, weights: &[u32]) -> Shards {
        let (lo, hi) = (*range.start(), *range.end().max(range.start()));
        let ports = u64::from(hi - lo) + 1;
        let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
        if w.is_empty() || w.iter().all(|&x| x == 0) {
            w = vec![1; weights.len().max(1)];
        }
        // More workers than ports: only the first `ports` take part.
        let mut active = 0u64;
        for x in w.iter_mut() {
            if *x > 0 {
                if active == ports {
                    *x = 0;
                } else {
                    active += 1;
                }
            }
        }
        let total: u64 = w.iter().sum();
        // One port each, the rest by weight; the last sharing worker takes
        // the remainder.
        let spare = ports - active;
        let last = w.iter().rposition(|&x| x > 0).unwrap_or(0);
        let mut ends = Vec::with_capacity(w.len());
        let mut at = 0u64;
        for (i, &x) in w.iter().enumerate() {
            if x > 0 {
                at += if i == last { ports - at } else { 1 + spare * x / total };
            }
            ends.push(at as u32);
        }
        Shards { lo, hi, ends }
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether worker `i` owns any port.
    pub fn owns_ports(&self, i: usize) -> bool {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.ends.get(i).is_some_and(|&e| e > start)
    }

    /// Worker `i`'s ports (for a worker that owns none, the range's first
    /// port, which its engine never allocates).
    pub fn range(&self, i: usize) -> RangeInclusive<u16> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let end = self.ends.get(i).copied().unwrap_or(start);
        if end <= start {
            return self.lo..=self.lo;
        }
        let lo = u32::from(self.lo);
        (lo + start) as u16..=(lo + end - 1) as u16
    }

    /// The slices of the workers that own ports, in ascending port order:
    /// `(worker, first port, last port)`. The kernel steering programs
    /// ([`crate::fanout_bpf`], [`crate::steer_ebpf`]) are built from these.
    pub fn port_slices(&self) -> impl Iterator<Item = (usize, u16, u16)> + '_ {
        (0..self.len()).filter(|&w| self.owns_ports(w)).map(|w| {
            let r = self.range(w);
            (w, *r.start(), *r.end())
        })
    }

    /// The worker that owns `port`; ports outside the range go to worker 0
    /// (whose engine drops and counts whatever has no session).
    pub fn owner(&self, port: u16) -> usize {
        if port < self.lo || port > self.hi {
            return 0;
        }
        let off = u32::from(port - self.lo);
        self.ends.partition_point(|&e| e <= off).min(self.ends.len() - 1)
    }
}

/// Where the first fragments of recent datagrams went, so their later
/// fragments follow. A small direct-mapped table: an entry is overwritten by
/// a newer datagram that hashes to the same slot, and entries older than
/// [`FragSteer::TTL_MS`] are ignored. No allocation after construction.
pub struct FragSteer {
    slots: Box<[(Option<FragId>, u16, u64)]>,
    /// Mixed into every slot choice: random per table, so a VPC host
    /// cannot pick identifications that evict another datagram's record.
    seed: u64,
}

impl FragSteer {
    /// Slots in the table.
    pub const SLOTS: usize = 1024;
    /// How long a first fragment's owner is remembered, milliseconds.
    pub const TTL_MS: u64 = 30_000;

    /// An empty table.
    pub fn new() -> FragSteer {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        FragSteer { slots: vec![(None, 0, 0); Self::SLOTS].into_boxed_slice(), seed }
    }

    fn slot(&self, id: &FragId) -> usize {
        let h = u64::from(u32::from(id.src)) ^ u64::from(u32::from(id.dst)).rotate_left(17);
        let h =
            (h ^ u64::from(id.ident) << 32 ^ u64::from(id.proto) << 48 ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ h >> 29 ^ self.seed.rotate_left(31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h >> 54) as usize % Self::SLOTS
    }

    /// Records that `id`'s first fragment went to `owner` at `now_ms`.
    pub fn record(&mut self, id: FragId, owner: usize, now_ms: u64) {
        self.slots[self.slot(&id)] = (Some(id), owner as u16, now_ms);
    }

    /// Where `id`'s first fragment went, if it is remembered.
    pub fn lookup(&self, id: &FragId, now_ms: u64) -> Option<usize> {
        match self.slots[self.slot(id)] {
            (Some(k), owner, t) if k == *id && now_ms.saturating_sub(t) <= Self::TTL_MS => Some(usize::from(owner)),
            _ => None,
        }
    }
}

impl Default for FragSteer {
    fn default() -> FragSteer {
        FragSteer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::testkit::{self, IpOpts};

    const A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn frame(proto: u8, seg: &[u8], o: IpOpts) -> Vec<u8> {
        testkit::ipv4_frame([2; 6], [4; 6], A, ENI, proto, o, seg)
    }

    #[test]
    fn ports_of_each_kind_of_inbound_frame() {
        let o = IpOpts::default();
        assert_eq!(inbound(&frame(UDP, &testkit::udp_segment(A, 53, ENI, 40000, b"x"), o)), Steer::Port(40000));
        assert_eq!(inbound(&frame(TCP, &testkit::tcp_segment(A, 80, ENI, 1234, 0x12, b""), o)), Steer::Port(1234));
        assert_eq!(inbound(&frame(ICMP, &testkit::echo(false, 777, 1, b"p"), o)), Steer::Port(777));
        // An error about ENI:5555 → A:53.
        let quoted = testkit::ipv4_frame([0; 6], [0; 6], ENI, A, UDP, o, &testkit::udp_segment(ENI, 5555, A, 53, b""));
        let err = testkit::icmp_message(3, 3, [0; 4], &quoted[ETH_LEN..]);
        assert_eq!(inbound(&frame(ICMP, &err, o)), Steer::Port(5555));
        // An echo request to the ENI has no session anywhere.
        assert_eq!(inbound(&frame(ICMP, &testkit::echo(true, 9, 1, b""), o)), Steer::Local);
    }

    #[test]
    fn fragments_and_arp() {
        let seg = testkit::udp_segment(A, 53, ENI, 40000, &[0; 64]);
        let first = frame(UDP, &seg, IpOpts { mf: true, ident: 42, ..IpOpts::default() });
        let id = FragId { src: A, dst: ENI, proto: UDP, ident: 42 };
        assert_eq!(inbound(&first), Steer::FirstFragment(40000, id));
        let later = frame(UDP, &[0; 16], IpOpts { frag_off: 72, ident: 42, ..IpOpts::default() });
        assert_eq!(inbound(&later), Steer::LaterFragment(id));
        let mut arp = vec![0u8; 42];
        let n = dataplane::arp::write_request(&mut arp, [2; 6], A, ENI);
        assert_eq!(inbound(&arp[..n]), Steer::Arp);
    }

    #[test]
    fn garbage_never_panics() {
        let seg = testkit::tcp_segment(A, 80, ENI, 1234, 0x12, b"");
        let f = frame(TCP, &seg, IpOpts::default());
        for n in 0..f.len() {
            let _ = inbound(&f[..n]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut b = [0u8; 80];
            for v in &mut b {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            b[12] = 0x08;
            b[13] = 0x00;
            b[14] = 0x40 | (b[14] & 0x0f);
            let _ = inbound(&b[..(x as usize % 80)]);
        }
    }

    #[test]
    fn shards_cover_the_range_once() {
        for n in 1..=5 {
            let s = Shards::new(1024..=65535, n);
            let mut next = 1024u32;
            for i in 0..n {
                let r = s.range(i);
                assert_eq!(u32::from(*r.start()), next);
                assert_eq!(s.owner(*r.start()), i);
                assert_eq!(s.owner(*r.end()), i);
                next = u32::from(*r.end()) + 1;
            }
            assert_eq!(next, 65536);
            assert_eq!(s.owner(80), 0);
        }
        let few = Shards::new(2000..=2001, 8);
        assert_eq!((few.range(0), few.range(1)), (2000..=2000, 2001..=2001));
        assert!(!few.owns_ports(2));
        assert_eq!((few.owner(2000), few.owner(2001)), (0, 1));
    }

    #[test]
    fn weighted_shards_follow_the_environments() {
        // One worker serves every environment: it owns every port.
        let s = Shards::weighted(1024..=65535, &[10, 0]);
        assert_eq!(s.range(0), 1024..=65535);
        assert!(!s.owns_ports(1));
        assert_eq!(s.owner(65535), 0);
        // 3:1.
        let s = Shards::weighted(1000..=1999, &[3, 1]);
        assert_eq!(s.range(0), 1000..=1748);
        assert_eq!(s.range(1), 1749..=1999);
        for p in 1000..=1999 {
            let o = s.owner(p);
            assert!(s.range(o).contains(&p));
        }
        // All zero: equal.
        assert_eq!(Shards::weighted(1..=10, &[0, 0]), Shards::new(1..=10, 2));
    }

    #[test]
    fn frag_steer_remembers_and_forgets() {
        let mut t = FragSteer::new();
        let id = FragId { src: A, dst: ENI, proto: UDP, ident: 7 };
        assert_eq!(t.lookup(&id, 0), None);
        t.record(id, 3, 1000);
        assert_eq!(t.lookup(&id, 2000), Some(3));
        assert_eq!(t.lookup(&FragId { ident: 8, ..id }, 2000), None);
        assert_eq!(t.lookup(&id, 1000 + FragSteer::TTL_MS + 1), None);
    }

    /// A VPC host that knows how slots are chosen must not be able to pick
    /// identifications that evict another datagram's record: each table
    /// picks its slots with a seed of its own (issue 12 item 6). The
    /// attacker computes collisions on a table of its own (`u`).
    #[test]
    fn frag_steer_slots_cannot_be_predicted_from_another_table() {
        let mut t = FragSteer::new();
        let u = FragSteer::new();
        let mut survived = 0;
        for v in 0..8u16 {
            let victim = FragId { src: A, dst: ENI, proto: UDP, ident: v };
            t.record(victim, 1, 1000);
            let evil = (1000..=u16::MAX)
                .map(|ident| FragId { src: Ipv4Addr::new(10, 1, 0, 66), ident, ..victim })
                .find(|x| u.slot(x) == u.slot(&victim))
                .expect("a colliding identification in the attacker's table");
            t.record(evil, 0, 1000);
            survived += usize::from(t.lookup(&victim, 1000) == Some(1));
        }
        assert!(survived >= 7, "{survived} of 8 records survived identifications chosen to collide");
    }
}
