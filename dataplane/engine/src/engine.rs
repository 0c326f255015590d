//! The engine: one worker's NAT, driven frame by frame.
//!
//! # Contract
//! - [`Engine::process`] takes the time, the port a frame arrived on and the
//!   frame in a buffer the caller owns. It rewrites the frame in place and
//!   returns an [`Action`]: forward it (next-hop MAC filled in), send the
//!   reply it wrote over the frame back out the same port, keep it (queued
//!   for ARP or fragment reassembly), or drop it for a [`DropReason`] that it
//!   has counted. The buffer should be at least 590 bytes long (so a full
//!   ICMP error fits) whatever the frame's length; a shorter buffer gets a
//!   shorter quote in generated errors.
//! - [`Engine::poll_transmit`] hands out frames the engine made or released
//!   (gratuitous ARP, ARP requests, frames that waited for ARP, buffered
//!   fragments). Call it after `process` and after `expire` until it returns
//!   `None`.
//! - [`Engine::poll_timeout`] says when [`Engine::expire`] next has work.
//! - The engine never reads a clock, never does I/O, never panics on frame
//!   contents, and does not allocate on the established-flow path.
//!
//! # Path of a packet
//! Outbound (from an inside attachment): validate → session lookup by inside
//! key; on a hit, anti-spoofing is the session's attachment matching the
//! ingress port; on a miss, the environment is looked up, its ENI's egress
//! rules checked, a port taken and a session created. Then the source is
//! rewritten with incremental checksums and the frame goes to the next hop
//! on the VPC side, or, if it is addressed to one of our ENI addresses, is
//! hairpinned through the inbound path.
//!
//! Inbound (from the VPC): session lookup by outside key; on a miss, the
//! mapping and the filtering behaviour decide; unsolicited frames are dropped
//! silently (the link is one-way, as Lambda's V2N: no RST, no ICMP).
//!
//! # Fragments
//! Fragmented datagrams of every protocol are translated without
//! reassembly: the first fragment is translated as usual and its result
//! recorded; later fragments get the same addresses; fragments that arrive
//! before the first are buffered within the bounds of
//! [`crate::frag::FragConfig`]. Outbound fragmented datagrams get a fresh IP
//! identification so two environments' datagrams cannot collide behind one
//! ENI address (RFC 7857 §10). A DF=0 datagram larger than the egress MTU is
//! fragmented (in order); DF=1 gets ICMP fragmentation needed.

use crate::arp::{self, ArpTable};
use crate::bindings::{Bindings, Mac};
use crate::checksum::{self, Delta};
use crate::config::{ConfigError, EngineConfig, Filtering, Mapping};
use crate::counters::{Counters, DropReason};
use crate::flow::{proto_index, Endpoint, FlowKey, ICMP, TCP, UDP};
use crate::frag::{FragKey, FragTable, Later};
use crate::ports::PortPool;
use crate::session::{Session, SessionTable, NIL};
use crate::tcp::{self, Dir};
use crate::time::Instant;
use crate::wire::{self, get16, get_ip, icmp, ip, put16, put_ip, Ipv4, ETH_LEN, L4};
use crate::PortId;
use core::net::Ipv4Addr;
use smoltcp::wire::EthernetAddress;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What to do with a frame after [`Engine::process`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `frame[..len]` out of `port`.
    Forward {
        /// Egress port.
        port: PortId,
        /// Frame length.
        len: usize,
    },
    /// Send `frame[..len]` (a reply written over the frame) back out of the
    /// port it came from.
    Reply {
        /// Reply length.
        len: usize,
    },
    /// The engine kept the frame (queued for ARP, a buffered fragment) or
    /// needed nothing more from it (an ARP reply it learned from).
    Consumed,
    /// Dropped, and counted under the reason.
    Drop(DropReason),
    /// A hairpinned frame, translated outbound, addressed to a mapping in a
    /// port range this engine does not own (a sharded gateway gives each
    /// worker's engine its own slice of the ports): hand `frame[..len]` to
    /// the owner's engine as a frame from the outside port. Its MACs are set
    /// to the outside port's, so the owner accepts it.
    Redirect {
        /// Frame length.
        len: usize,
    },
}

/// What the device told us about a frame's offloads (virtio-net header).
/// The default is a plain frame with complete checksums.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The transport checksum is partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`):
    /// the field holds the pseudo-header sum and the next device completes
    /// it. The engine keeps it partial (addresses folded in, ports left to
    /// the completer).
    pub csum_partial: bool,
    /// Segment payload size of a TCP/UDP GSO superframe (0: not GSO). The
    /// frame is forwarded whole and segmented by the next device; MTU checks
    /// use the segment size and the engine never fragments it.
    pub gso_size: u16,
}

/// Something the control plane should know about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Ports in use on an ENI address reached the high-water mark.
    HighWater {
        /// The ENI address.
        addr: Ipv4Addr,
        /// IP protocol number.
        proto: u8,
        /// Ports in use.
        in_use: u32,
    },
    /// A new flow from an environment whose function has no active ENI.
    NoEni {
        /// The environment.
        env: Ipv4Addr,
    },
    /// A new flow found no free port on an ENI address.
    Exhausted {
        /// The ENI address.
        addr: Ipv4Addr,
        /// IP protocol number.
        proto: u8,
    },
}

/// Port use on one ENI address.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortUse {
    /// The ENI address.
    pub addr: Ipv4Addr,
    /// Ports (or, under address-and-port-dependent mapping, sessions) held
    /// by live flows for TCP, UDP and ICMP.
    pub in_use: [u32; 3],
    /// Ports (or sessions) held only by recyclable sessions: closed or
    /// reset TCP connections, sessions the VPC opened that were never
    /// answered. A new flow takes them when nothing else is free.
    pub closing: [u32; 3],
    /// Ports resting in quarantine.
    pub quarantined: [u32; 3],
    /// Ports per protocol in the range.
    pub capacity: u32,
    /// Whether the address is in the current bindings (false while it
    /// drains).
    pub bound: bool,
}

/// One ENI address's port pools.
struct Addr {
    pools: [PortPool; 3],
    /// Slot in [`Counters::addrs`], if one was free.
    gauge: Option<usize>,
    /// Sessions per protocol under address-and-port-dependent mapping.
    apdm: [u32; 3],
    /// Ports (sessions under address-and-port-dependent mapping) held by
    /// live flows, per protocol.
    live: [u32; 3],
    /// The session table's recyclable list for this address.
    list: u16,
    high: [bool; 3],
    bound: bool,
}

impl Addr {
    /// Ports (or sessions) held, live or recyclable.
    fn held(&self, pi: usize, mapping: Mapping) -> u32 {
        match mapping {
            Mapping::EndpointIndependent => self.pools[pi].in_use(),
            Mapping::AddressAndPortDependent => self.apdm[pi],
        }
    }

    /// The high-water mark of live ports for protocol `pi`. A mark above the
    /// pool (65,000 against 64,512 ports by default) must still fire while
    /// there is room for the time an address takes to add (its probe): at
    /// most 7/8 of the pool.
    fn mark(&self, pi: usize, cfg: &EngineConfig) -> u32 {
        let cap = self.pools[pi].capacity();
        match cfg.mapping {
            Mapping::EndpointIndependent => cfg.high_water.min(cap - cap / 8).max(1),
            Mapping::AddressAndPortDependent => cfg.high_water,
        }
    }

    /// Whether a new mapping can have a port here without recycling.
    fn has_room(&self, pi: usize, mapping: Mapping) -> bool {
        match mapping {
            Mapping::EndpointIndependent => self.pools[pi].available() > 0,
            Mapping::AddressAndPortDependent => self.apdm[pi] < self.pools[pi].capacity(),
        }
    }
}

/// Per-environment state the engine keeps (learned MAC, quotas).
#[derive(Copy, Clone, Debug, Default)]
struct EnvState {
    mac: Mac,
    /// Live sessions (the session quota counts these).
    sessions: u32,
    /// Ports held by live flows, per protocol (the port quota counts these).
    ports: [u32; 3],
    /// Sessions opened from the VPC and not answered yet.
    unanswered: u32,
    addr: Option<Ipv4Addr>,
}

/// What a session holds on behalf of its environment.
///
/// `Live` sessions count against the environment's quotas and are never
/// recycled. `Closing` ones (TCP after both FINs or an RST) and
/// `Unanswered` ones (opened from the VPC, nothing sent back yet) only wait
/// out their timers: they sit on their address's recyclable list, and a new
/// flow short of a table slot or a port takes the oldest.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Hold {
    Live,
    Closing,
    Unanswered,
}

impl Hold {
    fn of(s: &Session) -> Hold {
        Hold::from_parts(s.inbound_origin && s.out_packets == 0, s.proto == TCP && s.tcp.closing())
    }

    const fn from_parts(unanswered: bool, closing: bool) -> Hold {
        if unanswered {
            Hold::Unanswered
        } else if closing {
            Hold::Closing
        } else {
            Hold::Live
        }
    }
}

/// How far a new flow looks down an address's recyclable list for a
/// session whose removal gives it a port.
const RECYCLE_SCAN: usize = 64;

/// How to translate the later fragments of a datagram: the first
/// fragment's final header values.
#[derive(Copy, Clone, Debug)]
struct FragXlate {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    egress: PortId,
    mac: Mac,
}

/// Capacity of the queue of frames the engine generates itself.
const TX_QUEUE: usize = 256;
/// Largest frame the engine generates itself (gratuitous ARP).
const TX_FRAME: usize = 64;
/// Largest quote of the original datagram in a generated ICMP error
/// (RFC 1812 §4.3.2.3: the error stays within 576 bytes).
const ICMP_QUOTE: usize = 576 - 28;

/// One worker's NAT.
pub struct Engine {
    cfg: EngineConfig,
    bindings: Arc<Bindings>,
    table: SessionTable,
    addrs: HashMap<Ipv4Addr, Addr, foldhash::fast::RandomState>,
    envs: HashMap<Ipv4Addr, EnvState, foldhash::fast::RandomState>,
    arp: ArpTable,
    frags: FragTable<FragXlate>,
    tx: VecDeque<(PortId, [u8; TX_FRAME], usize)>,
    /// Fragments of a datagram the engine split, waiting to be sent.
    frag_out: VecDeque<(PortId, Vec<u8>)>,
    /// Buffers of sent fragments, reused.
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    counters: Arc<Counters>,
    ident: u16,
    seed: u64,
    /// Offloads of the frame being processed.
    rx: Offload,
    /// Addresses being probed (RFC 5227) and whether another host has
    /// claimed them.
    probes: Vec<(Ipv4Addr, bool)>,
    /// The latest time the engine was given.
    now: Instant,
    /// Recyclable list ids not given to an address.
    free_lists: Vec<u16>,
}

impl Engine {
    /// An engine with `config`, forwarding as `bindings` say. All tables are
    /// allocated here.
    pub fn new(config: EngineConfig, bindings: Arc<Bindings>) -> Result<Engine, ConfigError> {
        config.validate()?;
        let mut e = Engine {
            table: SessionTable::new(config.max_sessions, config.timeouts, config.seed),
            arp: ArpTable::new(config.arp.clone(), EthernetAddress(bindings.outside().mac)),
            frags: FragTable::new(config.frag),
            addrs: HashMap::default(),
            envs: HashMap::default(),
            tx: VecDeque::with_capacity(TX_QUEUE),
            frag_out: VecDeque::with_capacity(TX_QUEUE),
            spare: Vec::with_capacity(TX_QUEUE),
            events: VecDeque::with_capacity(64),
            counters: Arc::new(Counters::default()),
            ident: (config.seed >> 16) as u16,
            seed: config.seed,
            rx: Offload::default(),
            probes: Vec::new(),
            now: Instant::ZERO,
            free_lists: (0..crate::session::LISTS as u16).rev().collect(),
            bindings: Arc::clone(&bindings),
            cfg: config,
        };
        e.counters.sessions_capacity.set(e.table.capacity() as u64);
        e.set_bindings(bindings);
        Ok(e)
    }

    /// The settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The bindings in force.
    pub fn bindings(&self) -> &Arc<Bindings> {
        &self.bindings
    }

    /// The counters; any thread may read them.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The session table, to inspect.
    pub fn sessions(&self) -> &SessionTable {
        &self.table
    }

    /// Replaces the bindings. New flows use the new snapshot at once;
    /// established sessions keep their ENI endpoint until they end. An ENI
    /// address that is new here is announced with a gratuitous ARP; one that
    /// left keeps its port pool until its last session ends.
    pub fn set_bindings(&mut self, b: Arc<Bindings>) {
        for a in self.addrs.values_mut() {
            a.bound = false;
        }
        let range = self.cfg.port_range.clone();
        for eni in b.enis() {
            for &addr in &eni.addrs {
                if let Some(a) = self.addrs.get_mut(&addr) {
                    a.bound = true;
                    continue;
                }
                let seed = self.seed ^ u64::from(u32::from(addr)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let q = self.cfg.port_quarantine;
                let pools = [
                    PortPool::new(range.clone(), q, seed ^ 1),
                    PortPool::new(range.clone(), q, seed ^ 2),
                    PortPool::new(range.clone(), q, seed ^ 3),
                ];
                let gauge = self.counters.addrs.iter().position(|g| g.addr().is_none());
                if let Some(g) = gauge {
                    self.counters.addrs[g].set_addr(Some(addr), pools[0].capacity());
                }
                // Out of list ids (over a thousand addresses), addresses
                // share the last one.
                let list = self.free_lists.pop().unwrap_or(crate::session::LISTS as u16 - 1);
                let a = Addr { pools, gauge, apdm: [0; 3], live: [0; 3], list, high: [false; 3], bound: true };
                self.addrs.insert(addr, a);
                let mut f = [0u8; TX_FRAME];
                let n = arp::write_announcement(&mut f, EthernetAddress(b.outside().mac), addr);
                if n > 0 && self.tx.len() < TX_QUEUE {
                    self.tx.push_back((PortId::OUTSIDE, f, n));
                    self.counters.arp_gratuitous.inc();
                }
            }
        }
        // Resolve the VPC router before the first flow needs it, so a burst
        // of new flows does not overflow the queue of frames waiting for it.
        let sender = b.enis().iter().flat_map(|e| e.addrs.first()).next().copied();
        let unresolved = |r: Ipv4Addr| !self.arp.is_resolved(self.now, r);
        if let (Some(router), Some(sender)) = (b.outside().router.filter(|&r| unresolved(r)), sender) {
            let mut f = [0u8; TX_FRAME];
            let n = arp::write_request(&mut f, EthernetAddress(b.outside().mac), sender, router);
            if n > 0 && self.tx.len() < TX_QUEUE {
                self.tx.push_back((PortId::OUTSIDE, f, n));
                self.counters.arp_requests.inc();
            }
        }
        if let Some(sender) = sender {
            self.arp.set_sender(sender);
        }
        self.bindings = b;
        self.forget_idle_addrs();
    }

    fn forget_idle_addrs(&mut self) {
        let m = self.cfg.mapping;
        let Engine { addrs, counters, free_lists, .. } = self;
        addrs.retain(|_, a| {
            let keep = a.bound || (0..3).any(|i| a.held(i, m) > 0);
            if !keep {
                if let Some(g) = a.gauge {
                    counters.addrs[g].set_addr(None, 0);
                }
                if usize::from(a.list) < crate::session::LISTS - 1 {
                    free_lists.push(a.list);
                }
            }
            keep
        });
    }

    /// Publishes one address's port use for other threads, and re-arms its
    /// high-water mark once live use is back below it.
    fn publish(counters: &Counters, a: &mut Addr, pi: usize, cfg: &EngineConfig) {
        if a.live[pi] < a.mark(pi, cfg) {
            a.high[pi] = false;
        }
        if let Some(g) = a.gauge {
            let held = a.held(pi, cfg.mapping);
            counters.addrs[g].set(pi, a.live[pi], held.saturating_sub(a.live[pi]), a.pools[pi].quarantined());
        }
    }

    /// Port use per ENI address.
    pub fn port_use(&self) -> Vec<PortUse> {
        let m = self.cfg.mapping;
        let mut v: Vec<PortUse> = self
            .addrs
            .iter()
            .map(|(&addr, a)| PortUse {
                addr,
                in_use: a.live,
                closing: [0, 1, 2].map(|i| a.held(i, m).saturating_sub(a.live[i])),
                quarantined: [0, 1, 2].map(|i| a.pools[i].quarantined()),
                capacity: a.pools[0].capacity(),
                bound: a.bound,
            })
            .collect();
        v.sort_by_key(|p| p.addr);
        v
    }

    /// Sends an ARP probe for `addr` on the outside port (RFC 5227 §2.1.1:
    /// sender address 0.0.0.0) and watches the link for anyone claiming it:
    /// an ARP from `addr`, or another host's probe for it. Call again to
    /// send the next probe; [`Engine::probe_result`] ends the watch.
    pub fn probe(&mut self, addr: Ipv4Addr) {
        if !self.probes.iter().any(|(a, _)| *a == addr) {
            if self.probes.len() >= 64 {
                self.probes.remove(0);
            }
            self.probes.push((addr, false));
        }
        let mut f = [0u8; TX_FRAME];
        let n = arp::write_probe(&mut f, EthernetAddress(self.bindings.outside().mac), addr);
        if n > 0 && self.tx.len() < TX_QUEUE {
            self.tx.push_back((PortId::OUTSIDE, f, n));
            self.counters.arp_requests.inc();
        }
    }

    /// Ends the watch on `addr`: whether anyone claimed it (None if it was
    /// not being probed).
    pub fn probe_result(&mut self, addr: Ipv4Addr) -> Option<bool> {
        let i = self.probes.iter().position(|(a, _)| *a == addr)?;
        Some(self.probes.remove(i).1)
    }

    /// The next control-plane event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn event(&mut self, e: Event) {
        if self.events.len() < self.events.capacity().max(64) {
            self.events.push_back(e);
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// When [`Engine::expire`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.table.poll_timeout(), self.arp.poll_timeout(), self.frags.poll_timeout()].into_iter().flatten().min()
    }

    /// Expires idle sessions (freeing their ports into quarantine), gives up
    /// ARP resolutions and fragment buffers that timed out.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        let Engine { table, addrs, envs, counters, cfg, .. } = self;
        table.expire(now, |s, removed| {
            Engine::account_removed(envs, addrs, counters, cfg, now, s, removed);
        });
        self.counters.sessions_recyclable.set(self.table.recyclable_len() as u64);
        for a in self.addrs.values_mut() {
            for pi in 0..3 {
                if a.pools[pi].quarantined() > 0 {
                    a.pools[pi].expire(now);
                    Engine::publish(&self.counters, a, pi, &self.cfg);
                }
            }
        }
        self.forget_idle_addrs();
        let dropped = self.arp.expire(now);
        self.counters.drops[DropReason::ArpUnresolved as usize].add(dropped as u64);
        let dropped = self.frags.expire(now);
        self.counters.drops[DropReason::Fragment as usize].add(dropped as u64);
    }

    /// The next frame the engine made or released: copied into `buf`,
    /// returned with its egress port and length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(PortId, usize)> {
        if let Some((port, f, n)) = self.tx.pop_front() {
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            return Some((port, n));
        }
        if let Some((port, f)) = self.frag_out.pop_front() {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            self.spare.push(f);
            return Some((port, n));
        }
        if let Some((port, n)) = self.arp.poll_transmit(buf) {
            if port == PortId::OUTSIDE && n >= ETH_LEN && wire::ethertype(buf) == wire::ETHERTYPE_ARP {
                self.counters.arp_requests.inc();
            }
            return Some((port, n));
        }
        while let Some((t, _port, n)) = self.frags.poll_released(buf) {
            match self.forward_fragment(now, t, buf, n) {
                Action::Forward { port, len } => return Some((port, len)),
                Action::Drop(r) => self.counters.count_drop(r),
                // A fragment is never redirected: see `remember_first_fragment`.
                Action::Reply { .. } | Action::Consumed | Action::Redirect { .. } => {}
            }
        }
        None
    }

    /// Handles one frame that arrived on `port`; `frame[..len]` holds it and
    /// the rest of `frame` is room for a reply.
    pub fn process(&mut self, now: Instant, port: PortId, frame: &mut [u8], len: usize) -> Action {
        self.process_offload(now, port, frame, len, Offload::default())
    }

    /// [`Engine::process`] for a frame that carries offload state from the
    /// device (a TAP with `IFF_VNET_HDR`). A forwarded frame keeps it: the
    /// caller sends it on with the same offload header. Replies the engine
    /// writes (ARP, ICMP errors) carry none.
    pub fn process_offload(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut [u8],
        len: usize,
        offload: Offload,
    ) -> Action {
        self.counters.rx_frames.inc();
        self.rx = offload;
        self.now = now;
        let len = len.min(frame.len());
        let mut action = self.dispatch(now, port, frame, len);
        if let Action::Forward { port, len } = action {
            let mtu = self.mtu(port);
            if len - ETH_LEN > mtu && offload.gso_size == 0 {
                action = self.fragment(frame, port, len, mtu);
            }
        }
        if let Action::Drop(r) = action {
            self.counters.count_drop(r);
        }
        action
    }

    fn port_mac(&self, port: PortId) -> Option<Mac> {
        if port == PortId::OUTSIDE {
            Some(self.bindings.outside().mac)
        } else {
            self.bindings.inside(port).map(|p| p.mac)
        }
    }

    fn dispatch(&mut self, now: Instant, port: PortId, frame: &mut [u8], len: usize) -> Action {
        if len < ETH_LEN {
            return Action::Drop(DropReason::Truncated);
        }
        let Some(our_mac) = self.port_mac(port) else {
            return Action::Drop(DropReason::NotForUs);
        };
        let dst_mac: Mac = [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]];
        match wire::ethertype(frame) {
            wire::ETHERTYPE_ARP => self.on_arp(now, port, our_mac, frame, len),
            wire::ETHERTYPE_IPV4 => {
                if dst_mac != our_mac {
                    return Action::Drop(DropReason::NotForUs);
                }
                let mut ip = match wire::parse_ipv4(&frame[..len], ETH_LEN) {
                    Ok(ip) => ip,
                    Err(r) => return Action::Drop(r),
                };
                if self.rx != Offload::default() {
                    self.apply_offload(frame, &mut ip);
                }
                if port.is_inside() {
                    self.outbound(now, port, frame, ip)
                } else {
                    self.inbound(now, frame, ip, false)
                }
            }
            _ => Action::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Marks a parsed header with the frame's offloads: a partial checksum
    /// only on TCP/UDP first fragments, and the on-wire length of one GSO
    /// segment (IP header + transport header + `gso_size`).
    fn apply_offload(&self, frame: &[u8], ip: &mut Ipv4) {
        let transport = (ip.proto == TCP || ip.proto == UDP) && ip.frag_off == 0;
        ip.partial = self.rx.csum_partial && transport;
        if self.rx.gso_size != 0 && transport {
            let l4_len = match ip.proto {
                TCP => frame.get(ip.l4() + 12).map_or(20, |b| usize::from(b >> 4) * 4),
                _ => 8,
            };
            ip.wire_len = (ip.hlen + l4_len + usize::from(self.rx.gso_size)).min(ip.total);
        }
    }

    fn on_arp(&mut self, now: Instant, port: PortId, our_mac: Mac, frame: &mut [u8], len: usize) -> Action {
        let Some(msg) = arp::parse(&frame[..len]) else {
            return Action::Drop(DropReason::BadArp);
        };
        let ours = if port.is_inside() {
            // Learn the environment's MAC, if the sender is one of ours here.
            if let Some(env) = self.bindings.env(msg.sender_ip) {
                if env.port == port {
                    self.envs.entry(msg.sender_ip).or_default().mac = msg.sender_mac.0;
                }
            }
            self.bindings.inside(port).is_some_and(|p| p.gateway == msg.target_ip)
        } else {
            // Someone using an address we probe, or probing it too (a
            // probe from another MAC; ours come back on an AF_PACKET link).
            let our = msg.sender_mac.0 == our_mac;
            for (a, claimed) in &mut self.probes {
                if !our && (msg.sender_ip == *a || (msg.sender_ip.is_unspecified() && msg.target_ip == *a)) {
                    *claimed = true;
                }
            }
            let ours = self.addrs.contains_key(&msg.target_ip);
            self.arp.learn(now, msg.sender_ip, msg.sender_mac, ours);
            ours
        };
        if ours && msg.operation == arp::ArpOp::Request {
            self.counters.arp_replies.inc();
            let n = arp::write_reply(frame, &msg, EthernetAddress(our_mac));
            return Action::Reply { len: n };
        }
        if ours {
            Action::Consumed
        } else {
            Action::Drop(DropReason::Local)
        }
    }

    // ----- outbound ------------------------------------------------------

    fn outbound(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let Some(inside) = self.bindings.inside(port) else {
            return Action::Drop(DropReason::NotForUs);
        };
        let gateway = inside.gateway;
        if ip.dst == gateway {
            return self.local_echo(frame, ip);
        }
        if ip.ttl <= 1 {
            return self.icmp_error(frame, ip, icmp::TIME_EXCEEDED, 0, 0, gateway, DropReason::TtlExceeded);
        }
        if ip.frag_off != 0 {
            return self.later_fragment(now, port, frame, ip);
        }
        let hairpin = self.addrs.contains_key(&ip.dst);
        if ip.df && !hairpin && ip.wire_len > usize::from(self.bindings.outside().mtu) {
            let mtu = u32::from(self.bindings.outside().mtu);
            return self.too_big(frame, ip, mtu, gateway);
        }
        let l4 = match wire::parse_l4(frame, &ip) {
            Ok(l4) => l4,
            Err(r) => return Action::Drop(r),
        };
        let (sport, dport, flags) = match l4 {
            L4::Tcp { sport, dport, flags } => (sport, dport, flags),
            L4::Udp { sport, dport } => (sport, dport, 0),
            L4::Echo { request: true, ident } => (ident, 0, 0),
            L4::Echo { request: false, .. } => return Action::Drop(DropReason::UnsupportedIcmp),
            L4::IcmpError { .. } => return self.icmp_error_out(now, port, frame, ip),
        };
        let key =
            FlowKey { proto: ip.proto, local: Endpoint::new(ip.src, sport), remote: Endpoint::new(ip.dst, dport) };
        let sid = match self.table.find_inside(&key) {
            Some(sid) => {
                let s = self.table.get_mut(sid);
                if s.port != port {
                    return Action::Drop(DropReason::Spoofed);
                }
                let unanswered = s.inbound_origin && s.out_packets == 0;
                s.last_seen = now;
                s.out_packets += 1;
                s.out_bytes += ip.total as u64;
                let mut before = None;
                if ip.proto == TCP {
                    let f = tcp::Flags::from_byte(flags);
                    let prev = s.tcp;
                    // A SYN on the 5-tuple of an ended connection is a new
                    // connection (the client reused its port): the session
                    // starts over with its mapping (RFC 6146 TRANS state).
                    let reopen = f.opens() && prev.closing();
                    let next = if reopen { tcp::State::initial(Dir::Out) } else { prev.next(Dir::Out, f) };
                    if next != prev {
                        s.tcp = next;
                        if reopen {
                            s.created = now;
                            (s.out_packets, s.out_bytes, s.in_packets, s.in_bytes) = (1, ip.total as u64, 0, 0);
                            self.counters.sessions_reopened.inc();
                        }
                        self.table.reschedule(sid);
                        before = Some(Hold::from_parts(unanswered, prev.closing()));
                    }
                }
                if unanswered {
                    before = Some(Hold::Unanswered);
                }
                if let Some(b) = before {
                    self.rehold(sid, b);
                }
                sid
            }
            None => {
                let src_mac = [frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]];
                match self.new_outbound(now, port, key, flags, src_mac, ip.total) {
                    Ok(sid) => sid,
                    Err(r) => return self.refuse(frame, ip, r, gateway),
                }
            }
        };
        let eni = self.table.get(sid).eni;
        rewrite(frame, &ip, l4, Side::Src, eni);
        if ip.mf && ip.proto != ICMP {
            // A fragmented datagram gets a fresh identification (RFC 7857 §10).
            let id = self.next_ident();
            set_ident(frame, &ip, id);
        }
        self.counters.outbound.count(ip.total);
        let foreign = hairpin && ip.proto != ICMP && !self.cfg.port_range.contains(&dport);
        let action = if foreign {
            // Another worker's mapping: it continues there, as a frame from
            // the VPC addressed to the ENI.
            self.counters.hairpinned.inc();
            let mac = self.bindings.outside().mac;
            wire::set_macs(frame, mac, mac);
            Action::Redirect { len: ip.end() }
        } else if hairpin {
            self.counters.hairpinned.inc();
            let ip2 = Ipv4 { src: eni.ip, ttl: ip.ttl - 1, ..ip };
            self.inbound(now, frame, ip2, true)
        } else {
            self.send_outside(now, frame, ip.end(), eni.ip, ip.dst)
        };
        if ip.mf {
            self.remember_first_fragment(now, port, frame, &ip, action);
        }
        action
    }

    /// Creates the session for a new outbound flow. Short of a table slot,
    /// a mapping slot or a port, it recycles closing and unanswered
    /// sessions (oldest first); live ones are never touched (RFC 6888
    /// REQ-11d).
    fn new_outbound(
        &mut self,
        now: Instant,
        port: PortId,
        key: FlowKey,
        flags: u8,
        src_mac: Mac,
        bytes: usize,
    ) -> Result<u32, DropReason> {
        let b = Arc::clone(&self.bindings);
        let env = b.env(key.local.ip).filter(|e| e.port == port).ok_or(DropReason::Spoofed)?;
        if key.proto == TCP && !tcp::Flags::from_byte(flags).opens() {
            return Err(DropReason::TcpNotSyn);
        }
        let Some(eni) = b.eni(env.eni).filter(|e| !e.addrs.is_empty()) else {
            // Its function has no active ENI (being created, or reclaimed
            // while idle): the control plane wants to know.
            self.event(Event::NoEni { env: key.local.ip });
            return Err(DropReason::NoEni);
        };
        if !eni.egress.allows(key.proto, key.remote.ip, key.remote.port) {
            return Err(DropReason::PolicyDenied);
        }
        let pi = proto_index(key.proto);
        let st = *self.envs.entry(key.local.ip).or_default();
        if st.sessions >= self.cfg.env_session_quota {
            return Err(DropReason::QuotaExceeded);
        }
        let existing = match self.cfg.mapping {
            Mapping::EndpointIndependent => self.table.find_mapping_inside(key.proto, key.local),
            Mapping::AddressAndPortDependent => None,
        };
        // A mapping held only by recyclable sessions becomes live again.
        let revived = existing.is_some_and(|m| self.table.mapping(m).live == 0);
        let (mapping, eni_ep, fresh) = match existing {
            Some(m) => (m, self.table.mapping(m).eni, false),
            None => {
                if st.ports[pi] >= self.cfg.env_port_quota {
                    return Err(DropReason::QuotaExceeded);
                }
                let addr = self.pick_addr(&eni.addrs, st.addr, pi);
                let Some(ep) = self.take_port(now, addr, pi, key) else {
                    self.event(Event::Exhausted { addr, proto: key.proto });
                    return Err(DropReason::PortsExhausted);
                };
                let m = match self.cfg.mapping {
                    Mapping::EndpointIndependent => loop {
                        match self.table.insert_mapping(key.proto, key.local, ep, port, src_mac) {
                            Ok(m) => break m,
                            // Mappings are never more than sessions: a full
                            // mapping slab is a full table.
                            Err(_) if self.recycle_session(now, NIL) => {}
                            Err(_) => {
                                self.release_unused_port(ep, pi);
                                return Err(DropReason::TableFull);
                            }
                        }
                    },
                    Mapping::AddressAndPortDependent => NIL,
                };
                (m, ep, true)
            }
        };
        let mut s = Session::new(key.proto, key.local, key.remote, eni_ep, port, src_mac, now);
        s.tcp = tcp::State::initial(Dir::Out);
        s.out_packets = 1;
        s.out_bytes = bytes as u64;
        let sid = loop {
            match self.table.insert(s, mapping) {
                Ok(sid) => break sid,
                Err(_) if self.recycle_session(now, mapping) => {}
                Err(_) => {
                    if fresh {
                        if mapping != NIL {
                            // The mapping has no session: drop it with its port.
                            self.table.drop_empty_mapping(mapping);
                        }
                        self.release_unused_port(eni_ep, pi);
                    }
                    return Err(DropReason::TableFull);
                }
            }
        };
        self.counters.sessions_created[pi].inc();
        let st = self.envs.entry(key.local.ip).or_default();
        st.mac = src_mac;
        st.sessions += 1;
        if fresh || revived {
            st.ports[pi] += 1;
            st.addr = Some(eni_ep.ip);
            if let Some(a) = self.addrs.get_mut(&eni_ep.ip) {
                a.live[pi] += 1;
                if fresh && self.cfg.mapping == Mapping::AddressAndPortDependent {
                    a.apdm[pi] += 1;
                }
            }
            self.check_high_water(eni_ep.ip, key.proto);
        }
        Ok(sid)
    }

    /// Moves a session whose hold changed (it closed, reopened, or the
    /// environment answered it) between the quotas and its address's
    /// recyclable list. `before` is its hold before the change.
    fn rehold(&mut self, sid: u32, before: Hold) {
        let s = *self.table.get(sid);
        let after = Hold::of(&s);
        if after == before {
            return;
        }
        let pi = proto_index(s.proto);
        let env = self.envs.entry(s.inside.ip).or_default();
        match before {
            Hold::Live => env.sessions = env.sessions.saturating_sub(1),
            Hold::Unanswered => env.unanswered = env.unanswered.saturating_sub(1),
            Hold::Closing => {}
        }
        match after {
            Hold::Live => env.sessions += 1,
            Hold::Unanswered => env.unanswered += 1,
            Hold::Closing => {}
        }
        if (before == Hold::Live) == (after == Hold::Live) {
            return;
        }
        let live = after == Hold::Live;
        let list = self.addrs.get(&s.eni.ip).map_or(crate::session::LISTS as u16 - 1, |a| a.list);
        if self.table.set_recyclable(sid, (!live).then_some(list)) {
            if live {
                env.ports[pi] += 1;
            } else {
                env.ports[pi] = env.ports[pi].saturating_sub(1);
            }
            if let Some(a) = self.addrs.get_mut(&s.eni.ip) {
                if live {
                    a.live[pi] += 1;
                } else {
                    a.live[pi] = a.live[pi].saturating_sub(1);
                }
            }
            if live {
                self.check_high_water(s.eni.ip, s.proto);
            } else if let Some(a) = self.addrs.get_mut(&s.eni.ip) {
                Engine::publish(&self.counters, a, pi, &self.cfg);
            }
        }
    }

    /// Accounts for a session that left the table (expired or recycled):
    /// the environment's quotas, its address's live ports and port pool.
    /// A TCP mapping whose last session ended in a close gives its port
    /// back at once: its closing timer was the quarantine (RFC 6888 REQ-8
    /// exempts TCP closed under state tracking); other ports rest.
    fn account_removed(
        envs: &mut HashMap<Ipv4Addr, EnvState, foldhash::fast::RandomState>,
        addrs: &mut HashMap<Ipv4Addr, Addr, foldhash::fast::RandomState>,
        counters: &Counters,
        cfg: &EngineConfig,
        now: Instant,
        s: &Session,
        removed: crate::session::Removed,
    ) {
        let pi = proto_index(s.proto);
        counters.sessions_expired[pi].inc();
        let hold = if s.recyclable() { Hold::of(s) } else { Hold::Live };
        if let Some(e) = envs.get_mut(&s.inside.ip) {
            match hold {
                Hold::Live => e.sessions = e.sessions.saturating_sub(1),
                Hold::Unanswered => e.unanswered = e.unanswered.saturating_sub(1),
                Hold::Closing => {}
            }
            if removed.port_left_live {
                e.ports[pi] = e.ports[pi].saturating_sub(1);
            }
        }
        let Some(a) = addrs.get_mut(&s.eni.ip) else { return };
        if removed.port_left_live {
            a.live[pi] = a.live[pi].saturating_sub(1);
        }
        match cfg.mapping {
            Mapping::EndpointIndependent => {
                if let Some(m) = removed.mapping {
                    if s.proto == TCP && (s.tcp.closing() || s.recyclable()) {
                        a.pools[pi].release_now(m.eni.port);
                    } else {
                        a.pools[pi].release(now, m.eni.port);
                    }
                }
            }
            Mapping::AddressAndPortDependent => a.apdm[pi] = a.apdm[pi].saturating_sub(1),
        }
        Engine::publish(counters, a, pi, cfg);
    }

    /// Removes recyclable session `sid` early to give its slot (and maybe
    /// its port) to a new flow.
    fn recycle(&mut self, now: Instant, sid: u32) {
        let s = *self.table.get(sid);
        let removed = self.table.remove(sid);
        self.counters.sessions_recycled.inc();
        let Engine { addrs, envs, counters, cfg, .. } = self;
        Engine::account_removed(envs, addrs, counters, cfg, now, &s, removed);
    }

    /// Frees one session slot: recycles the session that has been
    /// recyclable longest on any address, sparing the sessions of mapping
    /// `keep` (the one the new flow is joining). Whether it freed one.
    fn recycle_session(&mut self, now: Instant, keep: u32) -> bool {
        let mut best: Option<(Instant, u32)> = None;
        for a in self.addrs.values() {
            let mut id = self.table.list_head(a.list);
            // Skip (at most a few) sessions of the kept mapping.
            for _ in 0..RECYCLE_SCAN {
                match id {
                    Some(i) if keep != NIL && self.table.get(i).mapping == keep => id = self.table.list_next(i),
                    _ => break,
                }
            }
            if let Some(i) = id {
                let seen = self.table.get(i).last_seen;
                if best.is_none_or(|(t, _)| seen < t) {
                    best = Some((seen, i));
                }
            }
        }
        match best {
            Some((_, sid)) => {
                self.recycle(now, sid);
                true
            }
            None => false,
        }
    }

    /// Frees a TCP port on `addr` for a new flow towards `remote` by
    /// recycling, oldest first, a mapping held only by ended connections
    /// (under address-and-port-dependent mapping: an ended connection to the
    /// same remote). Whether a port was freed.
    fn recycle_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, remote: Endpoint) -> bool {
        if pi != proto_index(TCP) {
            // Only TCP knows when a flow has ended; other ports wait out
            // their timers and quarantine.
            return false;
        }
        let Some(list) = self.addrs.get(&addr).map(|a| a.list) else {
            return false;
        };
        let mut id = self.table.list_head(list);
        let mut victim = None;
        for _ in 0..RECYCLE_SCAN {
            let Some(i) = id else { break };
            let s = self.table.get(i);
            let fits = s.proto == TCP
                && s.eni.ip == addr
                && match self.cfg.mapping {
                    Mapping::EndpointIndependent => self.table.mapping(s.mapping).live == 0,
                    Mapping::AddressAndPortDependent => s.remote == remote,
                };
            if fits {
                victim = Some(i);
                break;
            }
            id = self.table.list_next(i);
        }
        let Some(sid) = victim else {
            return false;
        };
        let m = self.table.get(sid).mapping;
        if m == NIL {
            self.recycle(now, sid);
            return true;
        }
        // Every session of the mapping is recyclable (it has no live one):
        // take them all, and the port comes back with the last.
        let mut batch = [0u32; 16];
        loop {
            let n = self.table.mapping_sessions(m, &mut batch);
            let last = n == self.table.mapping(m).sessions as usize;
            for &i in &batch[..n] {
                self.recycle(now, i);
            }
            if last || n == 0 {
                return true;
            }
        }
    }

    /// The ENI address for a new mapping: the one the environment already
    /// uses ("paired", RFC 4787 REQ-2) while it has a port free or one to
    /// recycle, else the first below the high-water mark with a port free,
    /// else any with a port free, else any with a port to recycle.
    fn pick_addr(&self, addrs: &[Ipv4Addr], paired: Option<Ipv4Addr>, pi: usize) -> Ipv4Addr {
        let m = self.cfg.mapping;
        let get = |a: &Ipv4Addr| self.addrs.get(a);
        let room = |a: &Ipv4Addr| get(a).is_some_and(|s| s.has_room(pi, m));
        let recyclable =
            |a: &Ipv4Addr| pi == proto_index(TCP) && get(a).is_some_and(|s| self.table.list_len(s.list) > 0);
        if let Some(p) = paired.filter(|p| addrs.contains(p) && (room(p) || recyclable(p))) {
            return p;
        }
        let below = |a: &Ipv4Addr| room(a) && get(a).is_some_and(|s| s.live[pi] < s.mark(pi, &self.cfg));
        addrs
            .iter()
            .find(|a| below(a))
            .or_else(|| addrs.iter().find(|a| room(a)))
            .or_else(|| addrs.iter().find(|a| recyclable(a)))
            .copied()
            .unwrap_or(addrs[0])
    }

    /// A port on `addr` for a new mapping of `key`: a free one, or one a
    /// recycled ended connection gave back.
    fn take_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, key: FlowKey) -> Option<Endpoint> {
        for _ in 0..2 {
            let ep = match self.cfg.mapping {
                Mapping::EndpointIndependent => {
                    let a = self.addrs.get_mut(&addr)?;
                    let p = if self.cfg.port_preservation {
                        a.pools[pi].allocate_preferred(now, key.local.port)
                    } else {
                        a.pools[pi].allocate(now)
                    };
                    p.map(|p| Endpoint::new(addr, p))
                }
                Mapping::AddressAndPortDependent => self.probe_port(addr, key),
            };
            if ep.is_some() {
                return ep;
            }
            if !self.recycle_port(now, addr, pi, key.remote) {
                return None;
            }
        }
        None
    }

    /// Address-and-port-dependent mapping: a random port whose outside key
    /// towards this remote is unused (random probes, then a scan).
    fn probe_port(&mut self, addr: Ipv4Addr, key: FlowKey) -> Option<Endpoint> {
        let range = self.cfg.port_range.clone();
        let a = self.addrs.get_mut(&addr)?;
        let pi = proto_index(key.proto);
        let free = |t: &SessionTable, p: u16| {
            t.find_outside(&FlowKey { proto: key.proto, local: Endpoint::new(addr, p), remote: key.remote }).is_none()
        };
        for _ in 0..32 {
            let p = a.pools[pi].random_port();
            if free(&self.table, p) {
                return Some(Endpoint::new(addr, p));
            }
        }
        let start = a.pools[pi].random_port();
        let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
        let n = hi - lo + 1;
        (0..n)
            .map(|i| (lo + (u32::from(start) - lo + i) % n) as u16)
            .find(|&p| free(&self.table, p))
            .map(|p| Endpoint::new(addr, p))
    }

    /// Gives back a port taken for a flow that could not be created: it
    /// was never used, so it needs no quarantine.
    fn release_unused_port(&mut self, ep: Endpoint, pi: usize) {
        if self.cfg.mapping == Mapping::EndpointIndependent {
            if let Some(a) = self.addrs.get_mut(&ep.ip) {
                a.pools[pi].release_now(ep.port);
                Engine::publish(&self.counters, a, pi, &self.cfg);
            }
        }
    }

    fn check_high_water(&mut self, addr: Ipv4Addr, proto: u8) {
        let pi = proto_index(proto);
        let Some(a) = self.addrs.get_mut(&addr) else { return };
        Engine::publish(&self.counters, a, pi, &self.cfg);
        let in_use = a.live[pi];
        if in_use >= a.mark(pi, &self.cfg) && !a.high[pi] {
            a.high[pi] = true;
            self.event(Event::HighWater { addr, proto, in_use });
        }
    }

    /// A new flow that could not be created: dropped, and for port
    /// exhaustion answered with ICMP 3/13 when configured (RFC 5508 REQ-8).
    fn refuse(&mut self, frame: &mut [u8], ip: Ipv4, r: DropReason, gateway: Ipv4Addr) -> Action {
        let answer = self.cfg.icmp_on_exhaustion
            && matches!(r, DropReason::PortsExhausted | DropReason::QuotaExceeded | DropReason::TableFull);
        if answer {
            return self.icmp_error(frame, ip, icmp::UNREACHABLE, icmp::ADMIN_PROHIBITED, 0, gateway, r);
        }
        Action::Drop(r)
    }

    /// Sends a translated frame to its next hop on the VPC side.
    fn send_outside(&mut self, now: Instant, frame: &mut [u8], end: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Action {
        let out = self.bindings.outside();
        let our_mac = out.mac;
        let Some(hop) = self.bindings.next_hop(dst) else {
            return Action::Drop(DropReason::NoRoute);
        };
        match self.arp.lookup(now, hop) {
            Some(mac) => {
                wire::set_macs(frame, mac.0, our_mac);
                Action::Forward { port: PortId::OUTSIDE, len: end }
            }
            None => {
                // A queued frame leaves later without its offload header:
                // finish a partial checksum now; a superframe cannot wait.
                if self.rx.gso_size != 0 {
                    return Action::Drop(DropReason::ArpUnresolved);
                }
                if self.rx.csum_partial {
                    finish_partial(&mut frame[..end]);
                }
                wire::set_macs(frame, wire::BROADCAST, our_mac);
                match self.arp.queue(now, PortId::OUTSIDE, hop, src, &frame[..end]) {
                    arp::Queued::Waiting => Action::Consumed,
                    arp::Queued::Full => Action::Drop(DropReason::ArpUnresolved),
                }
            }
        }
    }

    /// Answers an echo request to the gateway's inside address.
    fn local_echo(&mut self, frame: &mut [u8], ip: Ipv4) -> Action {
        let l4 = ip.l4();
        if ip.proto != ICMP || ip.is_fragment() || ip.payload_len() < 8 || frame[l4] != icmp::ECHO_REQUEST {
            return Action::Drop(DropReason::Local);
        }
        if checksum::fold(checksum::sum(0, &frame[l4..ip.end()])) != 0xffff {
            return Action::Drop(DropReason::BadIcmpChecksum);
        }
        frame[l4] = icmp::ECHO_REPLY;
        let c = checksum::update16(get16(frame, l4 + 2), u16::from(icmp::ECHO_REQUEST) << 8, 0);
        put16(frame, l4 + 2, c);
        put_ip(frame, ip.off + ip::SRC, ip.dst);
        put_ip(frame, ip.off + ip::DST, ip.src);
        swap_macs(frame);
        Action::Reply { len: ip.end() }
    }

    // ----- inbound -------------------------------------------------------

    /// A frame from the VPC (or a hairpinned one, already translated on its
    /// way out and with its TTL already decremented).
    fn inbound(&mut self, now: Instant, frame: &mut [u8], ip: Ipv4, hairpin: bool) -> Action {
        if !self.addrs.contains_key(&ip.dst) {
            return Action::Drop(DropReason::NotForUs);
        }
        if !hairpin && ip.ttl <= 1 {
            return self.icmp_error(frame, ip, icmp::TIME_EXCEEDED, 0, 0, ip.dst, DropReason::TtlExceeded);
        }
        if ip.frag_off != 0 {
            return self.later_fragment(now, PortId::OUTSIDE, frame, ip);
        }
        let l4 = match wire::parse_l4(frame, &ip) {
            Ok(l4) => l4,
            Err(r) => return Action::Drop(r),
        };
        let (sport, dport, flags) = match l4 {
            L4::Tcp { sport, dport, flags } => (sport, dport, flags),
            L4::Udp { sport, dport } => (sport, dport, 0),
            L4::Echo { request: false, ident } => (0, ident, 0),
            L4::Echo { request: true, .. } => return Action::Drop(DropReason::NoSession),
            L4::IcmpError { .. } => return self.icmp_error_in(now, frame, ip, hairpin),
        };
        let key =
            FlowKey { proto: ip.proto, local: Endpoint::new(ip.dst, dport), remote: Endpoint::new(ip.src, sport) };
        let sid = match self.table.find_outside(&key) {
            Some(sid) => {
                let s = self.table.get_mut(sid);
                s.in_packets += 1;
                s.in_bytes += ip.total as u64;
                if ip.proto == TCP {
                    // TCP is refreshed by both directions; UDP and ICMP only
                    // by outbound traffic (RFC 4787 REQ-6, REQ-6a not taken).
                    s.last_seen = now;
                    let next = s.tcp.next(Dir::In, tcp::Flags::from_byte(flags));
                    if next != s.tcp {
                        let before = Hold::of(s);
                        s.tcp = next;
                        self.table.reschedule(sid);
                        self.rehold(sid, before);
                    }
                }
                sid
            }
            None => match self.new_inbound(now, key, flags, ip.total) {
                Ok(sid) => sid,
                Err(r) => return Action::Drop(r),
            },
        };
        let s = *self.table.get(sid);
        let Some(inside) = self.bindings.inside(s.port) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let (mtu, port_mac) = (usize::from(inside.mtu), inside.mac);
        if ip.df && ip.wire_len > mtu {
            // Quote the packet as it arrived: undo nothing, it is untouched.
            return self.too_big(frame, ip, mtu as u32, ip.dst);
        }
        rewrite_inbound(frame, &ip, l4, s.inside, !hairpin);
        wire::set_macs(frame, s.env_mac, port_mac);
        self.counters.inbound.count(ip.total);
        let action = Action::Forward { port: s.port, len: ip.end() };
        if ip.mf && !hairpin {
            self.remember_first_fragment(now, PortId::OUTSIDE, frame, &ip, action);
        }
        action
    }

    /// An inbound frame with no session: admitted only to an existing
    /// endpoint-independent mapping, as the filtering behaviour allows.
    fn new_inbound(&mut self, now: Instant, key: FlowKey, flags: u8, bytes: usize) -> Result<u32, DropReason> {
        if self.cfg.mapping != Mapping::EndpointIndependent || key.proto == ICMP {
            return Err(DropReason::NoSession);
        }
        let m = self.table.find_mapping_outside(key.proto, key.local).ok_or(DropReason::NoSession)?;
        let allowed = match self.cfg.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self.table.mapping_has_remote(m, key.remote, false),
            Filtering::AddressAndPortDependent => false,
        };
        if !allowed {
            return Err(DropReason::Filtered);
        }
        if key.proto == TCP && !tcp::Flags::from_byte(flags).opens() {
            return Err(DropReason::Filtered);
        }
        let map = *self.table.mapping(m);
        let st = self.envs.entry(map.inside.ip).or_default();
        // Its own budget: never the environment's quotas, and recyclable by
        // any new outbound flow until the environment answers.
        if st.unanswered >= self.cfg.env_inbound_quota {
            return Err(DropReason::InboundQuota);
        }
        let mut s = Session::new(key.proto, map.inside, key.remote, map.eni, map.port, map.env_mac, now);
        s.inbound_origin = true;
        s.tcp = tcp::State::initial(Dir::In);
        s.in_packets = 1;
        s.in_bytes = bytes as u64;
        let sid = self.table.insert(s, m).map_err(|_| DropReason::TableFull)?;
        self.counters.sessions_created[proto_index(key.proto)].inc();
        self.envs.entry(map.inside.ip).or_default().unanswered += 1;
        // Inserted as live for the instant: taking it off again leaves the
        // mapping's live count as it was.
        let list = self.addrs.get(&map.eni.ip).map_or(crate::session::LISTS as u16 - 1, |a| a.list);
        self.table.set_recyclable(sid, Some(list));
        Ok(sid)
    }

    // ----- ICMP errors ---------------------------------------------------

    /// An ICMP error from the VPC about a tracked flow: the embedded packet
    /// (one we sent, from an ENI endpoint) is reverted to the environment's
    /// endpoint, the outer destination too; no session is refreshed.
    fn icmp_error_in(&mut self, now: Instant, frame: &mut [u8], ip: Ipv4, hairpin: bool) -> Action {
        let _ = now;
        let emb = match embedded(frame, &ip) {
            Ok(e) => e,
            Err(r) => return Action::Drop(r),
        };
        // The embedded packet went ENI → remote.
        let key = FlowKey {
            proto: emb.proto,
            local: Endpoint::new(emb.src, emb.sport),
            remote: Endpoint::new(emb.dst, emb.dport),
        };
        let Some(sid) = self.table.find_outside(&key) else {
            return Action::Drop(DropReason::IcmpErrorNoSession);
        };
        let s = *self.table.get(sid);
        if ip.dst != s.eni.ip {
            return Action::Drop(DropReason::IcmpErrorNoSession);
        }
        let Some(inside) = self.bindings.inside(s.port) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let port_mac = inside.mac;
        rewrite_embedded(frame, &ip, &emb, Side::Src, s.inside);
        rewrite_ip(frame, &ip, Side::Dst, s.inside.ip, !hairpin);
        wire::set_macs(frame, s.env_mac, port_mac);
        self.counters.icmp_errors_translated.inc();
        self.counters.inbound.count(ip.total);
        Action::Forward { port: s.port, len: ip.end() }
    }

    /// An ICMP error from an environment about a packet it received (RFC
    /// 5508 REQ-5): the embedded packet (remote → environment) and the outer
    /// source become the ENI endpoint. It refreshes nothing (RFC 7857 §7).
    fn icmp_error_out(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let emb = match embedded(frame, &ip) {
            Ok(e) => e,
            Err(r) => return Action::Drop(r),
        };
        let key = FlowKey {
            proto: emb.proto,
            local: Endpoint::new(emb.dst, emb.dport),
            remote: Endpoint::new(emb.src, emb.sport),
        };
        let Some(sid) = self.table.find_inside(&key) else {
            return Action::Drop(DropReason::IcmpErrorNoSession);
        };
        let s = *self.table.get(sid);
        if s.port != port || ip.src != s.inside.ip {
            return Action::Drop(DropReason::Spoofed);
        }
        rewrite_embedded(frame, &ip, &emb, Side::Dst, s.eni);
        rewrite_ip(frame, &ip, Side::Src, s.eni.ip, true);
        self.counters.icmp_errors_translated.inc();
        self.counters.outbound.count(ip.total);
        if self.addrs.contains_key(&ip.dst) {
            self.counters.hairpinned.inc();
            let ip2 = Ipv4 { src: s.eni.ip, ttl: ip.ttl - 1, ..ip };
            return self.inbound(now, frame, ip2, true);
        }
        self.send_outside(now, frame, ip.end(), s.eni.ip, ip.dst)
    }

    /// Writes an ICMP error about the datagram in `frame` over it, to go back
    /// where it came from, from `src`. Never about an ICMP error or a later
    /// fragment (RFC 1122 §3.2.2).
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        ip: Ipv4,
        kind: u8,
        code: u8,
        rest: u32,
        src: Ipv4Addr,
        counted: DropReason,
    ) -> Action {
        let about_error =
            ip.proto == ICMP && ip.frag_off == 0 && frame.get(ip.l4()).is_some_and(|&t| wire::is_icmp_error(t));
        let allowed = match kind {
            icmp::TIME_EXCEEDED => self.cfg.icmp_time_exceeded,
            _ => true,
        };
        // The reply needs room for its own IP and ICMP headers in the
        // caller's buffer; a buffer that cannot hold them gets no error.
        let fits = frame.len() >= ETH_LEN + 28;
        if about_error || ip.frag_off != 0 || !allowed || !fits {
            return Action::Drop(counted);
        }
        self.counters.count_drop(counted);
        self.counters.icmp_generated.inc();
        let room = frame.len().saturating_sub(ETH_LEN + 28);
        let quote = ip.total.min(ICMP_QUOTE).min(room);
        let mut q = [0u8; ICMP_QUOTE];
        q[..quote].copy_from_slice(&frame[ip.off..ip.off + quote]);
        swap_macs(frame);
        let ident = self.next_ident();
        let total = 28 + quote;
        let h = &mut frame[ETH_LEN..ETH_LEN + total];
        h[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, ICMP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        put16(h, 2, total as u16);
        put16(h, 4, ident);
        put_ip(h, ip::SRC, src);
        put_ip(h, ip::DST, ip.src);
        let c = checksum::checksum(&h[..20]);
        put16(h, ip::CHECKSUM, c);
        h[20] = kind;
        h[21] = code;
        h[22..24].copy_from_slice(&[0, 0]);
        h[24..28].copy_from_slice(&rest.to_be_bytes());
        h[28..].copy_from_slice(&q[..quote]);
        let c = checksum::checksum(&h[20..]);
        put16(h, 22, c);
        Action::Reply { len: ETH_LEN + total }
    }

    /// A DF datagram larger than the egress MTU: ICMP fragmentation needed
    /// with the next-hop MTU (RFC 1191).
    fn too_big(&mut self, frame: &mut [u8], ip: Ipv4, mtu: u32, src: Ipv4Addr) -> Action {
        self.icmp_error(frame, ip, icmp::UNREACHABLE, icmp::FRAG_NEEDED, mtu & 0xffff, src, DropReason::MtuExceeded)
    }

    /// The largest IP datagram `port` carries.
    fn mtu(&self, port: PortId) -> usize {
        if port == PortId::OUTSIDE {
            usize::from(self.bindings.outside().mtu)
        } else {
            self.bindings.inside(port).map_or(usize::MAX, |p| usize::from(p.mtu))
        }
    }

    /// Fragments a forwarded DF=0 datagram that is larger than its egress
    /// MTU (RFC 791 §3.2, RFC 4787 REQ-13a): the first fragment is written
    /// over the frame and returned, the others queue for
    /// [`Engine::poll_transmit`] in order. Later fragments carry only the
    /// options marked "copied".
    fn fragment(&mut self, frame: &mut [u8], port: PortId, len: usize, mtu: usize) -> Action {
        let Ok(ip) = wire::parse_ipv4(&frame[..len], ETH_LEN) else {
            return Action::Drop(DropReason::MtuExceeded);
        };
        let mut opts = [0u8; 40];
        let olen = copied_options(&frame[ip.off + 20..ip.off + ip.hlen], &mut opts);
        let first = mtu.saturating_sub(ip.hlen) / 8 * 8;
        let step = mtu.saturating_sub(20 + olen) / 8 * 8;
        let payload = ip.payload_len();
        if first == 0 || step == 0 {
            return Action::Drop(DropReason::MtuExceeded);
        }
        let mut off = first;
        while off < payload {
            let end = (off + step).min(payload);
            if self.frag_out.len() >= TX_QUEUE {
                return Action::Drop(DropReason::Fragment);
            }
            let mut f = self.spare.pop().unwrap_or_default();
            f.clear();
            f.extend_from_slice(&frame[..ip.off + 20]);
            f.extend_from_slice(&opts[..olen]);
            f.extend_from_slice(&frame[ip.l4() + off..ip.l4() + end]);
            let more = end < payload || ip.mf;
            write_fragment_header(&mut f[ip.off..], 20 + olen, end - off, ip.frag_off + off, more);
            self.frag_out.push_back((port, f));
            off = end;
        }
        write_fragment_header(&mut frame[ip.off..], ip.hlen, first, ip.frag_off, true);
        Action::Forward { port, len: ip.off + ip.hlen + first }
    }

    // ----- fragments -----------------------------------------------------

    /// Records how the first fragment of a datagram was translated, so its
    /// other fragments follow.
    fn remember_first_fragment(&mut self, now: Instant, _port: PortId, frame: &[u8], ip: &Ipv4, action: Action) {
        let (egress, mac) = match action {
            Action::Forward { port, .. } => (port, [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]]),
            Action::Consumed => (PortId::OUTSIDE, wire::BROADCAST),
            _ => return,
        };
        let t = FragXlate {
            src: get_ip(frame, ip.off + ip::SRC),
            dst: get_ip(frame, ip.off + ip::DST),
            ident: get16(frame, ip.off + ip::IDENT),
            egress,
            mac,
        };
        let key = FragKey { src: ip.src, dst: ip.dst, protocol: ip.proto, ident: ip.ident };
        self.frags.first(now, key, t, ip.payload_len() as u32);
    }

    /// A fragment other than the first.
    fn later_fragment(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let key = FragKey { src: ip.src, dst: ip.dst, protocol: ip.proto, ident: ip.ident };
        let len = ip.end();
        match self.frags.later(now, key, port, &frame[..len], ip.frag_off as u32, ip.payload_len() as u32, ip.mf) {
            Later::Translate(t) => self.forward_fragment(now, t, frame, len),
            Later::Buffered => Action::Consumed,
            Later::Drop => Action::Drop(DropReason::Fragment),
        }
    }

    /// Translates a later fragment with its datagram's record and sends it.
    fn forward_fragment(&mut self, now: Instant, t: FragXlate, frame: &mut [u8], len: usize) -> Action {
        let ip = match wire::parse_ipv4(&frame[..len], ETH_LEN) {
            Ok(ip) => ip,
            Err(r) => return Action::Drop(r),
        };
        if ip.ttl <= 1 {
            return Action::Drop(DropReason::TtlExceeded);
        }
        let mut d = Delta::ZERO.addr(ip.src, t.src).addr(ip.dst, t.dst).word(ip.ident, t.ident);
        d = d.word(u16::from(ip.ttl) << 8 | u16::from(ip.proto), u16::from(ip.ttl - 1) << 8 | u16::from(ip.proto));
        put_ip(frame, ip.off + ip::SRC, t.src);
        put_ip(frame, ip.off + ip::DST, t.dst);
        put16(frame, ip.off + ip::IDENT, t.ident);
        frame[ip.off + ip::TTL] = ip.ttl - 1;
        let c = d.apply(get16(frame, ip.off + ip::CHECKSUM));
        put16(frame, ip.off + ip::CHECKSUM, c);
        if t.egress == PortId::OUTSIDE {
            self.counters.outbound.count(ip.total);
            self.send_outside(now, frame, ip.end(), t.src, t.dst)
        } else {
            let Some(mac) = self.port_mac(t.egress) else {
                return Action::Drop(DropReason::NoRoute);
            };
            self.counters.inbound.count(ip.total);
            wire::set_macs(frame, t.mac, mac);
            Action::Forward { port: t.egress, len: ip.end() }
        }
    }
}

// ----- rewriting ---------------------------------------------------------

/// Completes a partial TCP/UDP checksum (the field holds the pseudo-header
/// sum) over the segment, as a device with checksum offload would.
fn finish_partial(frame: &mut [u8]) {
    let Ok(ip) = wire::parse_ipv4(frame, ETH_LEN) else {
        return;
    };
    let at = match ip.proto {
        TCP if ip.end() >= ip.l4() + 20 => ip.l4() + 16,
        UDP if ip.end() >= ip.l4() + 8 => ip.l4() + 6,
        _ => return,
    };
    let c = !checksum::fold(checksum::sum(0, &frame[ip.l4()..ip.end()]));
    put16(frame, at, if c == 0 && ip.proto == UDP { 0xffff } else { c });
}

/// Which endpoint of a packet is rewritten.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

fn swap_macs(frame: &mut [u8]) {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&dst);
}

/// Rewrites one IP address of the header at `ip` (and decrements TTL when
/// `dec_ttl`), updating the header checksum incrementally. Returns the
/// pseudo-header delta for the transport checksum.
#[inline]
fn rewrite_ip(frame: &mut [u8], ip: &Ipv4, side: Side, new: Ipv4Addr, dec_ttl: bool) -> Delta {
    let (off, old) = match side {
        Side::Src => (ip.off + ip::SRC, ip.src),
        Side::Dst => (ip.off + ip::DST, ip.dst),
    };
    let addr = Delta::ZERO.addr(old, new);
    let mut d = addr;
    if dec_ttl {
        let ttl = frame[ip.off + ip::TTL];
        let t = ttl.saturating_sub(1);
        d = d.word(u16::from(ttl) << 8 | u16::from(ip.proto), u16::from(t) << 8 | u16::from(ip.proto));
        frame[ip.off + ip::TTL] = t;
    }
    put_ip(frame, off, new);
    let c = d.apply(get16(frame, ip.off + ip::CHECKSUM));
    put16(frame, ip.off + ip::CHECKSUM, c);
    addr
}

/// Rewrites the source (outbound) or destination (inbound) endpoint of a
/// TCP, UDP or ICMP echo packet with incremental checksums (RFC 1624).
#[inline]
fn rewrite(frame: &mut [u8], ip: &Ipv4, l4: L4, side: Side, new: Endpoint) {
    let addr = rewrite_ip(frame, ip, side, new.ip, true);
    rewrite_l4(frame, ip, l4, side, addr, new.port);
}

/// Rewrites the transport port (or echo identifier) on `side` and updates
/// the transport checksum with the address delta `addr` from
/// [`rewrite_ip`]. A partial checksum (offload) takes only the address
/// delta: the ports are summed by whoever completes it.
#[inline]
fn rewrite_l4(frame: &mut [u8], ip: &Ipv4, l4: L4, side: Side, addr: Delta, port: u16) {
    let l = ip.l4();
    let port_off = if side == Side::Src { 0 } else { 2 };
    let (at, coff, udp, pseudo) = match l4 {
        L4::Tcp { .. } => (l + port_off, l + 16, false, true),
        L4::Udp { .. } => (l + port_off, l + 6, true, true),
        L4::Echo { .. } => (l + 4, l + 2, false, false),
        L4::IcmpError { .. } => return,
    };
    let old = get16(frame, at);
    put16(frame, at, port);
    let base = if pseudo { addr } else { Delta::ZERO };
    let c = get16(frame, coff);
    let c = if ip.partial {
        base.apply_partial(c)
    } else if udp {
        base.word(old, port).apply_udp(c)
    } else {
        base.word(old, port).apply(c)
    };
    put16(frame, coff, c);
}

/// The inbound rewrite: destination endpoint.
#[inline]
fn rewrite_inbound(frame: &mut [u8], ip: &Ipv4, l4: L4, new: Endpoint, dec_ttl: bool) {
    // Hairpinned frames had their TTL decremented on the way out.
    let addr = rewrite_ip(frame, ip, Side::Dst, new.ip, dec_ttl);
    rewrite_l4(frame, ip, l4, Side::Dst, addr, new.port);
}

/// Keeps the options whose "copied" flag is set (RFC 791), padded with
/// end-of-list to a multiple of 4 bytes; returns their length.
fn copied_options(opts: &[u8], out: &mut [u8; 40]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < opts.len() {
        let kind = opts[i];
        let len = match kind {
            0 => break,
            1 => 1,
            _ => match opts.get(i + 1) {
                Some(&l) if l >= 2 && i + usize::from(l) <= opts.len() => usize::from(l),
                _ => break,
            },
        };
        if kind & 0x80 != 0 && n + len <= out.len() {
            out[n..n + len].copy_from_slice(&opts[i..i + len]);
            n += len;
        }
        i += len;
    }
    let padded = n.div_ceil(4) * 4;
    out[n..padded].fill(0);
    padded
}

/// Rewrites an IP header (at `h[0..]`) for a fragment: header length,
/// total length, offset and MF; recomputes its checksum.
fn write_fragment_header(h: &mut [u8], hlen: usize, payload: usize, offset: usize, more: bool) {
    h[0] = 0x40 | (hlen / 4) as u8;
    put16(h, 2, (hlen + payload) as u16);
    let df_bit = get16(h, 6) & 0x4000;
    put16(h, 6, df_bit | (u16::from(more) << 13) | ((offset / 8) as u16 & 0x1fff));
    put16(h, ip::CHECKSUM, 0);
    let c = checksum::checksum(&h[..hlen]);
    put16(h, ip::CHECKSUM, c);
}

fn set_ident(frame: &mut [u8], ip: &Ipv4, id: u16) {
    let old = get16(frame, ip.off + ip::IDENT);
    put16(frame, ip.off + ip::IDENT, id);
    let c = Delta::ZERO.word(old, id).apply(get16(frame, ip.off + ip::CHECKSUM));
    put16(frame, ip.off + ip::CHECKSUM, c);
}

/// The packet quoted in an ICMP error.
#[derive(Copy, Clone, Debug)]
struct Embedded {
    /// Offset of the embedded IP header.
    off: usize,
    hlen: usize,
    /// Bytes of it present (to the end of the outer datagram).
    len: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

/// Validates an ICMP error (checksum, RFC 5508 REQ-3) and its embedded
/// header; for ICMP the "ports" are (identifier, 0) as the session keys
/// them.
fn embedded(frame: &[u8], ip: &Ipv4) -> Result<Embedded, DropReason> {
    if ip.is_fragment() {
        return Err(DropReason::Fragment);
    }
    let msg = &frame[ip.l4()..ip.end()];
    if checksum::fold(checksum::sum(0, msg)) != 0xffff {
        return Err(DropReason::BadIcmpChecksum);
    }
    let off = ip.l4() + 8;
    let e = frame.get(off..ip.end()).ok_or(DropReason::BadL4Header)?;
    if e.len() < 28 || e[0] >> 4 != 4 {
        return Err(DropReason::BadL4Header);
    }
    let hlen = usize::from(e[0] & 0x0f) * 4;
    if hlen < 20 || e.len() < hlen + 8 {
        return Err(DropReason::BadL4Header);
    }
    if checksum::fold(checksum::sum(0, &e[..hlen])) != 0xffff {
        return Err(DropReason::BadIcmpChecksum);
    }
    let proto = e[9];
    let (src, dst) = (get_ip(e, 12), get_ip(e, 16));
    let t = &e[hlen..];
    let (sport, dport) = match proto {
        TCP | UDP => (get16(t, 0), get16(t, 2)),
        ICMP if t[0] == icmp::ECHO_REQUEST => (get16(t, 4), 0),
        ICMP if t[0] == icmp::ECHO_REPLY => (0, get16(t, 4)),
        _ => return Err(DropReason::UnsupportedIcmp),
    };
    Ok(Embedded { off, hlen, len: e.len(), proto, src, dst, sport, dport })
}

/// Rewrites one endpoint of the embedded packet (its address, its IP header
/// checksum, its port or identifier and, when quoted, its transport
/// checksum), then recomputes the ICMP checksum over the message.
fn rewrite_embedded(frame: &mut [u8], ip: &Ipv4, e: &Embedded, side: Side, new: Endpoint) {
    let (aoff, old_ip) = match side {
        Side::Src => (e.off + ip::SRC, e.src),
        Side::Dst => (e.off + ip::DST, e.dst),
    };
    let addr = Delta::ZERO.addr(old_ip, new.ip);
    put_ip(frame, aoff, new.ip);
    let c = addr.apply(get16(frame, e.off + ip::CHECKSUM));
    put16(frame, e.off + ip::CHECKSUM, c);
    let t = e.off + e.hlen;
    let tlen = e.len - e.hlen;
    match e.proto {
        TCP | UDP => {
            let poff = t + if side == Side::Src { 0 } else { 2 };
            let old = get16(frame, poff);
            put16(frame, poff, new.port);
            let d = addr.word(old, new.port);
            if e.proto == TCP && tlen >= 18 {
                let c = d.apply(get16(frame, t + 16));
                put16(frame, t + 16, c);
            } else if e.proto == UDP {
                let c = d.apply_udp(get16(frame, t + 6));
                put16(frame, t + 6, c);
            }
        }
        _ => {
            // Echo: the identifier is the ENI/inside "port".
            let old = get16(frame, t + 4);
            put16(frame, t + 4, new.port);
            let c = Delta::ZERO.word(old, new.port).apply(get16(frame, t + 2));
            put16(frame, t + 2, c);
        }
    }
    let l = ip.l4();
    put16(frame, l + 2, 0);
    let c = checksum::checksum(&frame[l..ip.end()]);
    put16(frame, l + 2, c);
}
