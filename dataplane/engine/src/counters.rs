//! Counters and drop reasons.
//!
//! Every frame the engine does not forward or answer is dropped for exactly one
//! [`DropReason`] and counted under it; nothing is logged per packet.
//!
//! Each engine (one per worker thread) owns one [`Counters`]. Only that worker
//! writes it, so an increment is a relaxed load and store (no locked
//! read-modify-write instruction on the packet path); any other thread may read
//! it at any time through an `Arc` and sees each counter's value as of some
//! recent moment. Counters only grow.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A monotonically increasing counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value; any thread.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value one worker sets and any thread reads.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value. Only the owning worker calls this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value; any thread.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident => $label:literal, )*) => {
        /// Why a frame was dropped. Each variant's label is its metric name.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name, )*
        }

        impl DropReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// How many reasons there are.
            pub const COUNT: usize = DropReason::ALL.len();

            /// The reason's stable label (used as the `reason` metric label).
            pub const fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header, or than its own headers claim.
    Truncated => "truncated",
    /// An EtherType other than IPv4 and ARP.
    UnsupportedEthertype => "unsupported_ethertype",
    /// Destination MAC is neither ours nor broadcast.
    NotForUs => "not_for_us",
    /// Malformed ARP (hardware or protocol type, lengths).
    BadArp => "bad_arp",
    /// IPv4 version field is not 4.
    BadIpVersion => "bad_ip_version",
    /// IPv4 header length below 20 bytes or beyond the total length.
    BadIpHeaderLength => "bad_ip_header_length",
    /// IPv4 total length beyond the frame or below the header length.
    BadIpTotalLength => "bad_ip_total_length",
    /// IPv4 header checksum does not verify.
    BadIpChecksum => "bad_ip_checksum",
    /// Source or destination address that is never forwarded (multicast,
    /// broadcast, loopback, unspecified).
    BadAddress => "bad_address",
    /// TCP/UDP/ICMP header truncated or its length field inconsistent.
    BadL4Header => "bad_l4_header",
    /// An IP protocol other than TCP, UDP and ICMP.
    UnsupportedProtocol => "unsupported_protocol",
    /// An ICMP type that is neither echo nor a translatable error.
    UnsupportedIcmp => "unsupported_icmp",
    /// ICMP checksum (or the embedded IP header checksum of an error) is bad.
    BadIcmpChecksum => "bad_icmp_checksum",
    /// An ICMP error whose embedded packet matches no session.
    IcmpErrorNoSession => "icmp_error_no_session",
    /// TTL reached zero here (an ICMP time exceeded is sent when allowed).
    TtlExceeded => "ttl_exceeded",
    /// DF set and larger than the egress MTU (fragmentation needed is sent).
    MtuExceeded => "mtu_exceeded",
    /// Inside source address not assigned to the attachment it came from.
    Spoofed => "spoofed_source",
    /// Inside frame to an address the gateway does not route.
    NoRoute => "no_route",
    /// Environment not bound to any shared ENI (or its ENI has no address).
    NoEni => "no_eni",
    /// The environment's security groups do not allow this new flow.
    PolicyDenied => "policy_denied",
    /// No free port on the ENI address for this protocol.
    PortsExhausted => "ports_exhausted",
    /// The environment holds as many live mappings or sessions as its
    /// quotas allow.
    QuotaExceeded => "quota_exceeded",
    /// An environment already has its budget of sessions opened from the
    /// VPC that it has not answered.
    InboundQuota => "inbound_quota",
    /// The session table is full.
    TableFull => "table_full",
    /// Inbound frame matching no session and no mapping (unsolicited).
    NoSession => "no_session",
    /// Inbound frame refused by the filtering behaviour.
    Filtered => "filtered",
    /// A TCP segment that may not open a session (no SYN, or SYN+ACK, RST).
    TcpNotSyn => "tcp_not_syn",
    /// Fragment buffer full, too many fragments, or an incomplete datagram
    /// timed out.
    Fragment => "fragment",
    /// Waiting for ARP resolution: queue full, or resolution failed.
    ArpUnresolved => "arp_unresolved",
    /// Addressed to the gateway itself, and not something it answers.
    Local => "local",
    /// The egress device refused the frame (its queue was full, or it is
    /// gone), or it needs an offload the egress device lacks.
    TxFailed => "tx_failed",
    /// A frame for another worker found its inbox full.
    InboxFull => "inbox_full",
    /// The kernel dropped frames for want of room in an AF_PACKET outside
    /// socket's receive buffer (counted from `PACKET_STATISTICS`).
    RxOverflow => "rx_overflow",
}

/// Protocols sessions are counted by.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProtoIndex {
    /// TCP.
    Tcp = 0,
    /// UDP.
    Udp = 1,
    /// ICMP query (echo).
    Icmp = 2,
}

/// Packets and bytes in one direction.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Frames.
    pub packets: Counter,
    /// Bytes of IP datagram (Ethernet header excluded).
    pub bytes: Counter,
}

impl Traffic {
    /// Counts one frame carrying an IP datagram of `bytes` bytes.
    #[inline]
    pub fn count(&self, bytes: usize) {
        self.packets.inc();
        self.bytes.add(bytes as u64);
    }
}

/// How many ENI addresses one worker publishes port use for.
pub const ADDR_GAUGES: usize = 256;

/// Port use on one ENI address, published for other threads. A slot whose
/// address is 0 is unused.
///
/// Per protocol, every port of the worker's slice is in exactly one of four
/// states: held by a live flow (`in_use`), held only by closing or
/// unanswered sessions that a new flow may recycle (`closing`), resting in
/// quarantine (`quarantined`), or free. `cooling` is the part of `closing`
/// whose connections the remote closed first (see [`PortGauge::cooling`]).
#[derive(Debug, Default)]
pub struct AddrGauge {
    addr: AtomicU32,
    in_use: [AtomicU32; 3],
    closing: [AtomicU32; 3],
    cooling: [AtomicU32; 3],
    quarantined: [AtomicU32; 3],
    capacity: AtomicU32,
}

/// One address's port use as published: see [`AddrGauge`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PortGauge {
    /// Ports held by live flows, per [`ProtoIndex`].
    pub in_use: [u32; 3],
    /// Ports held only by recyclable (closing or unanswered) sessions.
    pub closing: [u32; 3],
    /// Of `closing`: ports of ended TCP connections that the remote closed
    /// first. The remote may hold them in its TIME_WAIT, so they carry no
    /// new connection to it for [`crate::engine::REMOTE_TIME_WAIT`] and
    /// count towards the high-water mark that grows the ENI by an address.
    /// Updated when a new flow takes a port or a timer fires, so on an idle
    /// gateway it may lag by up to the next timer.
    pub cooling: [u32; 3],
    /// Ports in quarantine.
    pub quarantined: [u32; 3],
    /// Ports per protocol in this worker's slice.
    pub capacity: u32,
}

impl AddrGauge {
    /// The address, if the slot is in use.
    pub fn addr(&self) -> Option<core::net::Ipv4Addr> {
        match self.addr.load(Ordering::Relaxed) {
            0 => None,
            a => Some(a.into()),
        }
    }

    /// Ports in use for TCP, UDP and ICMP (see [`ProtoIndex`]).
    pub fn in_use(&self) -> [u32; 3] {
        [0, 1, 2].map(|i| self.in_use[i].load(Ordering::Relaxed))
    }

    /// Everything published for the slot.
    pub fn gauge(&self) -> PortGauge {
        let load = |a: &[AtomicU32; 3]| [0, 1, 2].map(|i| a[i].load(Ordering::Relaxed));
        PortGauge {
            in_use: load(&self.in_use),
            closing: load(&self.closing),
            cooling: load(&self.cooling),
            quarantined: load(&self.quarantined),
            capacity: self.capacity.load(Ordering::Relaxed),
        }
    }

    /// Publishes the slot's address (0 frees it) and its ports per protocol.
    /// Owning worker only.
    pub fn set_addr(&self, a: Option<core::net::Ipv4Addr>, capacity: u32) {
        self.addr.store(a.map_or(0, u32::from), Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        if a.is_none() {
            for g in self.in_use.iter().chain(&self.closing).chain(&self.cooling).chain(&self.quarantined) {
                g.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Publishes one protocol's port states (`cooling`: of `closing`).
    /// Owning worker only.
    pub fn set(&self, proto: usize, in_use: u32, closing: u32, cooling: u32, quarantined: u32) {
        self.in_use[proto].store(in_use, Ordering::Relaxed);
        self.closing[proto].store(closing, Ordering::Relaxed);
        self.cooling[proto].store(cooling, Ordering::Relaxed);
        self.quarantined[proto].store(quarantined, Ordering::Relaxed);
    }
}

/// The per-worker counter block.
#[derive(Debug)]
pub struct Counters {
    /// Frames received, all ports.
    pub rx_frames: Counter,
    /// Translated inside → outside (including hairpinned).
    pub outbound: Traffic,
    /// Translated outside → inside.
    pub inbound: Traffic,
    /// ICMP errors generated (time exceeded, fragmentation needed,
    /// unreachable).
    pub icmp_generated: Counter,
    /// ICMP errors from outside translated to an environment.
    pub icmp_errors_translated: Counter,
    /// ARP requests answered.
    pub arp_replies: Counter,
    /// ARP requests sent to resolve a next hop.
    pub arp_requests: Counter,
    /// Gratuitous ARPs sent.
    pub arp_gratuitous: Counter,
    /// Gratuitous ARPs that found the transmit queue full and went out
    /// later (when it had drained).
    pub arp_gratuitous_deferred: Counter,
    /// Frames between two environments through their mappings.
    pub hairpinned: Counter,
    /// Sessions created, by [`ProtoIndex`].
    pub sessions_created: [Counter; 3],
    /// Sessions that ended (idle timer, recycled or flushed), by
    /// [`ProtoIndex`].
    pub sessions_expired: [Counter; 3],
    /// Closing or unanswered sessions removed early to give a new flow their
    /// table slot or port (also counted in `sessions_expired`).
    pub sessions_recycled: Counter,
    /// Outbound sessions nobody answered, removed from a full table to give
    /// a new flow their slot (see [`crate::engine::UNANSWERED_GRACE`]; also
    /// counted in `sessions_expired`).
    pub sessions_evicted: Counter,
    /// Closing or reset TCP sessions that a new SYN on the same 5-tuple
    /// opened again.
    pub sessions_reopened: Counter,
    /// Sessions removed by an operator (`hyperplane flush`, `sessions
    /// --delete`; also counted in `sessions_expired`).
    pub sessions_flushed: Counter,
    /// Session table capacity.
    pub sessions_capacity: Gauge,
    /// Sessions in the table that a new flow may recycle (closing TCP,
    /// unanswered sessions from the VPC), as of the last timer tick.
    pub sessions_recyclable: Gauge,
    /// Drops, by [`DropReason`] (`as usize`).
    pub drops: [Counter; DropReason::COUNT],
    /// Port use per ENI address (the first [`ADDR_GAUGES`] addresses).
    pub addrs: [AddrGauge; ADDR_GAUGES],
    /// ENI addresses the engine tracks without a slot in `addrs` (past
    /// [`ADDR_GAUGES`]): while non-zero, port use is complete only in
    /// `Engine::port_use`. A slot freed by a removed address goes to one of
    /// them.
    pub addrs_ungauged: Gauge,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            rx_frames: Counter::default(),
            outbound: Traffic::default(),
            inbound: Traffic::default(),
            icmp_generated: Counter::default(),
            icmp_errors_translated: Counter::default(),
            arp_replies: Counter::default(),
            arp_requests: Counter::default(),
            arp_gratuitous: Counter::default(),
            arp_gratuitous_deferred: Counter::default(),
            hairpinned: Counter::default(),
            sessions_created: Default::default(),
            sessions_expired: Default::default(),
            sessions_recycled: Counter::default(),
            sessions_evicted: Counter::default(),
            sessions_reopened: Counter::default(),
            sessions_flushed: Counter::default(),
            sessions_capacity: Gauge::default(),
            sessions_recyclable: Gauge::default(),
            drops: core::array::from_fn(|_| Counter::default()),
            addrs: core::array::from_fn(|_| AddrGauge::default()),
            addrs_ungauged: Gauge::default(),
        }
    }
}

impl Counters {
    /// Ports held by live flows per ENI address, as last published.
    pub fn port_use(&self) -> Vec<(core::net::Ipv4Addr, [u32; 3])> {
        self.addrs.iter().filter_map(|g| Some((g.addr()?, g.in_use()))).collect()
    }

    /// Every port state per ENI address, as last published.
    pub fn port_gauges(&self) -> Vec<(core::net::Ipv4Addr, PortGauge)> {
        self.addrs.iter().filter_map(|g| Some((g.addr()?, g.gauge()))).collect()
    }

    /// Counts a drop.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].inc();
    }

    /// Counts `n` drops for one reason.
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n);
    }

    /// The count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }

    /// Live sessions of one protocol (created minus expired).
    pub fn live_sessions(&self, p: ProtoIndex) -> u64 {
        let i = p as usize;
        self.sessions_created[i].get() - self.sessions_expired[i].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.label()), "duplicate label {}", r.label());
            assert!(r.label().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn counts_are_visible_from_another_thread() {
        let c = std::sync::Arc::new(Counters::default());
        c.count_drop(DropReason::Spoofed);
        c.count_drop(DropReason::Spoofed);
        c.outbound.count(100);
        let r = std::sync::Arc::clone(&c);
        let (d, b) =
            std::thread::spawn(move || (r.dropped(DropReason::Spoofed), r.outbound.bytes.get())).join().unwrap();
        assert_eq!((d, b), (2, 100));
        assert_eq!(c.dropped_total(), 2);
    }
}
