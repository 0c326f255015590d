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
//!
//! # Files
//! Each file adds an `impl Engine` block for one direction or concern (as
//! VPP's nat44-ed splits in2out and out2in):
//! - this one: the types, [`Engine::new`], [`Engine::set_bindings`], the
//!   `poll_*` calls, [`Engine::expire`], [`Engine::process`] and dispatch;
//! - `batch.rs`: [`Engine::process_batch`], frames in vectors with the
//!   index buckets and sessions prefetched;
//! - `outbound.rs` (environment → VPC) and `inbound.rs` (VPC → environment);
//! - `icmp.rs`: ICMP errors translated both ways, and generated;
//! - `fragment.rs`: fragment forwarding and fragmenting;
//! - `neighbor.rs`: ARP on every port and the probes of new addresses;
//! - `hold.rs`: what sessions hold (ports, quotas, high-water marks) and
//!   the recycling of ended ones;
//! - `rewrite.rs`: the header rewrites, free functions;
//! - `admin.rs`: what the control plane asks between frames (sessions
//!   walked a chunk at a time, removed on an operator's request, the
//!   environments with live sessions).

mod addr_set;
mod admin;
mod batch;
mod fast;
mod fragment;
mod hold;
mod icmp;
mod inbound;
mod neighbor;
mod outbound;
mod quotas;
mod rewrite;

pub use admin::Walk;
pub use batch::{BatchFrame, BATCH};
pub use hold::{PROBE_LIMIT, REMOTE_TIME_WAIT, UNANSWERED_GRACE};

use crate::arp::{self, ArpTable};
use crate::bindings::{Bindings, Mac};
use crate::config::{EngineConfig, EngineConfigError};
use crate::counters::{Counters, DropReason};
use crate::flow::{TCP, UDP};
use crate::frag::FragTable;
use crate::ports::PortPool;
use crate::session::SessionTable;
use crate::tcp::Dir;
use crate::time::Instant;
use crate::wire::{self, Ipv4, ETH_LEN, L4};
use crate::PortId;
use core::net::Ipv4Addr;
use fragment::FragXlate;
use hold::Addr;
use quotas::EnvQuotas;
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
    /// worker's engine its own slice of the ports), or an ICMP error about a
    /// hairpinned datagram, for the sender's session in such a range: hand
    /// `frame[..len]` to the owner's engine (`steer::inbound` names it) as
    /// a frame from the outside port. Its MACs are set to the outside
    /// port's, so the owner accepts it (and knows it for a hairpin).
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

/// Events an engine holds for the control plane.
pub const EVENTS: usize = 64;
/// Of those, how many may be `NoEni` (the rest are kept for capacity).
pub const EVENTS_NO_ENI: usize = 32;

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
    /// Of `closing`: ports of connections the remote closed first less than
    /// [`REMOTE_TIME_WAIT`] ago, which count towards the high-water mark
    /// (see [`crate::counters::PortGauge::cooling`]).
    pub cooling: [u32; 3],
    /// Ports resting in quarantine.
    pub quarantined: [u32; 3],
    /// Ports per protocol in the range.
    pub capacity: u32,
    /// Whether the address is in the current bindings (false while it
    /// drains).
    pub bound: bool,
}

/// Capacity of the queue of frames the engine generates itself.
const TX_QUEUE: usize = 256;
/// Largest frame the engine generates itself (gratuitous ARP).
const TX_FRAME: usize = 64;

/// One worker's NAT.
pub struct Engine {
    cfg: EngineConfig,
    bindings: Arc<Bindings>,
    table: SessionTable,
    addrs: HashMap<Ipv4Addr, Addr, foldhash::fast::RandomState>,
    /// The keys of `addrs`, for the per-frame membership test.
    addr_set: addr_set::AddrSet,
    /// Environments' quotas and learned MACs.
    envs: EnvQuotas,
    arp: ArpTable,
    frags: FragTable<FragXlate>,
    tx: VecDeque<(PortId, [u8; TX_FRAME], usize)>,
    /// Fragments of a datagram the engine split, waiting to be sent.
    frag_out: VecDeque<(PortId, Vec<u8>)>,
    /// New addresses whose gratuitous ARP found the transmit queue full:
    /// announced by [`Engine::poll_transmit`] once it has drained.
    announce: Vec<Ipv4Addr>,
    /// Buffers of sent fragments, reused.
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    counters: Arc<Counters>,
    ident: u16,
    seed: u64,
    /// Session-table lookups made choosing ports under
    /// address-and-port-dependent mapping, since start.
    port_probes: u64,
    /// Offloads of the frame being processed.
    rx: Offload,
    /// Addresses being probed (RFC 5227) and whether another host has
    /// claimed them.
    probes: Vec<(Ipv4Addr, bool)>,
    /// The latest time the engine was given.
    now: Instant,
    /// Recyclable list ids not given to an address.
    free_lists: Vec<u16>,
    /// The flow key hashed for the frame being processed by a batch.
    hint: Option<batch::Hint>,
    /// The transport header the batch parsed for the frame in hand, taken
    /// (once) by the first [`Engine::flow_of_frame`] of that frame.
    hint_flow: Option<Flow>,
    /// When every address last had its cooling sessions moved
    /// ([`Engine::cool_all`]).
    cooled_at: Instant,
    /// Where [`Engine::evict_unanswered`] looks next in the session slab
    /// (a clock hand).
    evict_at: u32,
}

impl Engine {
    /// An engine with `config`, forwarding as `bindings` say. All tables are
    /// allocated here.
    pub fn new(config: EngineConfig, bindings: Arc<Bindings>) -> Result<Engine, EngineConfigError> {
        config.validate()?;
        let mut e = Engine {
            table: SessionTable::new(config.max_sessions, config.timeouts, config.seed),
            arp: ArpTable::new(config.arp.clone(), bindings.outside().mac),
            // Seeded like the session table, so that which datagrams share
            // a bucket cannot be worked out from the source.
            frags: FragTable::with_seed(config.frag, config.seed ^ 0x6672_6167_6d65_6e74),
            addrs: HashMap::default(),
            addr_set: addr_set::AddrSet::new(),
            envs: EnvQuotas::default(),
            tx: VecDeque::with_capacity(TX_QUEUE),
            frag_out: VecDeque::with_capacity(TX_QUEUE),
            announce: Vec::new(),
            spare: Vec::with_capacity(TX_QUEUE),
            events: VecDeque::with_capacity(EVENTS),
            counters: Arc::new(Counters::default()),
            ident: (config.seed >> 16) as u16,
            seed: config.seed,
            port_probes: 0,
            rx: Offload::default(),
            probes: Vec::new(),
            now: Instant::ZERO,
            free_lists: (0..crate::session::LISTS as u16).rev().collect(),
            hint: None,
            hint_flow: None,
            cooled_at: Instant::ZERO,
            evict_at: 0,
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
                let cool = self.free_lists.pop().unwrap_or(list);
                let a = Addr {
                    pools,
                    gauge,
                    apdm: [0; 3],
                    live: [0; 3],
                    warm: [0; 3],
                    list,
                    cool,
                    high: [false; 3],
                    bound: true,
                };
                self.addrs.insert(addr, a);
                self.addr_set.rebuild(self.addrs.keys().copied());
                if self.queue_outside(|f| arp::write_announcement(f, b.outside().mac, addr)) {
                    self.counters.arp_gratuitous.inc();
                } else {
                    self.counters.arp_gratuitous_deferred.inc();
                    self.announce.push(addr);
                }
            }
        }
        // Resolve the VPC router before the first flow needs it, so a burst
        // of new flows does not overflow the queue of frames waiting for it.
        let sender = b.enis().iter().flat_map(|e| e.addrs.first()).next().copied();
        let unresolved = |r: Ipv4Addr| !self.arp.is_resolved(self.now, r);
        if let (Some(router), Some(sender)) = (b.outside().router.filter(|&r| unresolved(r)), sender) {
            if self.queue_outside(|f| arp::write_request(f, b.outside().mac, sender, router)) {
                self.counters.arp_requests.inc();
            }
        }
        if let Some(sender) = sender {
            self.arp.set_sender(sender);
        }
        self.envs.rebind(&self.bindings, &b);
        self.bindings = b;
        self.forget_idle_addrs();
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
                closing: [0, 1, 2].map(|i| a.closing(i, m)),
                cooling: [0, 1, 2].map(|i| a.cooling(i, m)),
                quarantined: [0, 1, 2].map(|i| a.pools[i].quarantined()),
                capacity: a.pools[0].capacity(),
                bound: a.bound,
            })
            .collect();
        v.sort_by_key(|p| p.addr);
        v
    }

    /// Session-table lookups made so far choosing external ports under
    /// address-and-port-dependent mapping (the `aws` profile): the work new
    /// flows cost, bounded per flow by [`hold::PROBE_LIMIT`].
    pub fn port_probes(&self) -> u64 {
        self.port_probes
    }

    /// The next control-plane event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next control-plane event, left in the queue: a caller that
    /// cannot pass it on yet (its channel is full) keeps it here and
    /// [`Engine::poll_event`]s it once it has.
    pub fn peek_event(&self) -> Option<Event> {
        self.events.front().copied()
    }

    /// Queues an event; false when it was not queued (the caller raises it
    /// again later: a high-water mark stays armed).
    ///
    /// The queue holds [`EVENTS`]. Events about capacity (`HighWater`,
    /// `Exhausted`) coalesce by address and protocol, so at most one of each
    /// per address waits; `NoEni`, which any environment can raise once per
    /// new flow, coalesces by environment and may fill only
    /// [`EVENTS_NO_ENI`] slots, leaving the rest to capacity events.
    fn event(&mut self, e: Event) -> bool {
        if matches!(e, Event::NoEni { .. }) && self.events.len() >= EVENTS_NO_ENI {
            return false;
        }
        for q in self.events.iter_mut() {
            match (q, e) {
                (Event::HighWater { addr, proto, in_use }, Event::HighWater { addr: a, proto: p, in_use: n })
                    if *addr == a && *proto == p =>
                {
                    *in_use = n;
                    return true;
                }
                (Event::Exhausted { addr, proto }, Event::Exhausted { addr: a, proto: p })
                    if *addr == a && *proto == p =>
                {
                    return true
                }
                (Event::NoEni { env }, Event::NoEni { env: v }) if *env == v => return true,
                _ => {}
            }
        }
        if self.events.len() >= EVENTS {
            return false;
        }
        self.events.push_back(e);
        true
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
        let Engine { table, addrs, envs, bindings, counters, cfg, .. } = self;
        table.expire(now, |s, removed| {
            Engine::account_removed(envs, bindings, addrs, counters, cfg, now, s, removed, false);
        });
        self.counters.sessions_recyclable.set(self.table.recyclable_len() as u64);
        self.cool_all(now);
        for a in self.addrs.values_mut() {
            for pi in 0..3 {
                if a.pools[pi].quarantined() > 0 {
                    a.pools[pi].expire(now);
                }
                Engine::publish(&self.counters, a, pi, &self.cfg);
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
        while let Some(addr) = self.announce.pop() {
            if !self.addrs.get(&addr).is_some_and(|a| a.bound) {
                continue;
            }
            let n = arp::write_announcement(buf, self.bindings.outside().mac, addr);
            if n > 0 {
                self.counters.arp_gratuitous.inc();
                return Some((PortId::OUTSIDE, n));
            }
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
        let action = self.dispatch(now, port, frame, len);
        self.hint_flow = None;
        self.settle(frame, action, offload)
    }

    /// The end of a frame's processing on the general path and the batch's
    /// new-flow path: a forwarded datagram longer than its port's MTU
    /// fragmented (unless the device segments it), a drop counted under its
    /// reason. (The established path forwards only what fits and drops
    /// nothing.)
    #[inline(always)]
    pub(super) fn settle(&mut self, frame: &mut [u8], mut action: Action, offload: Offload) -> Action {
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

    /// The offload state the frame just forwarded still carries: the
    /// caller writes its offload header from this, not from what the frame
    /// came with. The two differ when the engine had to complete a partial
    /// checksum (a datagram it fragmented: a device completing it over the
    /// first fragment alone would get it wrong).
    pub fn forwarded_offload(&self) -> Offload {
        self.rx
    }

    /// Whether `ip` is one of this engine's ENI addresses.
    #[inline]
    pub(super) fn is_eni(&self, ip: Ipv4Addr) -> bool {
        match self.addr_set.get(ip) {
            addr_set::Member::Yes => true,
            addr_set::Member::No => false,
            addr_set::Member::Ask => self.addrs.contains_key(&ip),
        }
    }

    /// [`flow_of`] for the frame in hand: what the batch parsed, the first
    /// time it is asked for a frame (a hairpin's second leg, or any later
    /// call, parses the rewritten frame again).
    #[inline]
    fn flow_of_frame(&mut self, frame: &[u8], ip: &Ipv4, dir: Dir) -> Result<Option<Flow>, DropReason> {
        match self.hint_flow.take() {
            Some(f) => Ok(Some(f)),
            None => flow_of(frame, ip, dir),
        }
    }

    fn port_mac(&self, port: PortId) -> Option<Mac> {
        if port == PortId::OUTSIDE {
            Some(self.bindings.outside().mac)
        } else {
            self.bindings.inside(port).map(|p| p.mac)
        }
    }

    fn dispatch(&mut self, now: Instant, port: PortId, frame: &mut [u8], len: usize) -> Action {
        self.hint_flow = None;
        if len < ETH_LEN {
            return Action::Drop(DropReason::Truncated);
        }
        let Some(our_mac) = self.port_mac(port) else {
            return Action::Drop(DropReason::NotForUs);
        };
        let dst_mac: Mac = wire::mac_at(frame, 0);
        match wire::ethertype(frame) {
            wire::ETHERTYPE_ARP => self.on_arp(now, port, our_mac, frame, len),
            wire::ETHERTYPE_IPV4 => {
                if dst_mac != our_mac {
                    return Action::Drop(DropReason::NotForUs);
                }
                // A batch parsed this frame's header already (and only
                // gives a hint for a frame whose header parsed).
                let parsed = match self.hint {
                    Some(h) => {
                        self.hint_flow = Some(h.flow);
                        Ok(h.ip)
                    }
                    None => wire::parse_ipv4(&frame[..len], ETH_LEN),
                };
                let mut ip = match parsed {
                    Ok(ip) => ip,
                    Err(r) => return Action::Drop(r),
                };
                if self.rx != Offload::default() {
                    self.apply_offload(frame, &mut ip);
                }
                if port.is_inside() {
                    self.outbound(now, port, frame, ip)
                } else {
                    // A hairpin another engine translated and handed over
                    // (`Action::Redirect`: the outside port's MAC as source
                    // too, one of our ENI addresses as source): its TTL went
                    // down there.
                    let hairpin = wire::mac_at(frame, 6) == our_mac && self.is_eni(ip.src);
                    self.inbound(now, frame, ip, hairpin)
                }
            }
            _ => Action::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Marks a parsed header with the frame's offloads: a partial checksum
    /// only on TCP/UDP first fragments, and the on-wire length of one GSO
    /// segment (IP header + transport header + `gso_size`).
    fn apply_offload(&self, frame: &[u8], ip: &mut Ipv4) {
        let transport = (ip.proto == TCP || ip.proto == UDP) && ip.frag_off() == 0;
        ip.partial = self.rx.csum_partial && transport;
        if self.rx.gso_size != 0 && transport {
            let l4_len = match ip.proto {
                TCP => frame.get(ip.l4() + 12).map_or(20, |b| usize::from(b >> 4) * 4),
                _ => 8,
            };
            ip.set_wire_len(ip.hlen() + l4_len + usize::from(self.rx.gso_size));
        }
    }

    /// The largest IP datagram `port` carries.
    fn mtu(&self, port: PortId) -> usize {
        if port == PortId::OUTSIDE {
            usize::from(self.bindings.outside().mtu)
        } else {
            self.bindings.inside(port).map_or(usize::MAX, |p| usize::from(p.mtu))
        }
    }
}

/// A transport header and what a flow key takes from it: `(l4, sport,
/// dport, tcp flags)` (see [`flow_of`]).
type Flow = (L4, u16, u16, u8);

/// The transport header of a packet going `dir` and what its flow key takes
/// from it: `(l4, sport, dport, tcp flags)`. An echo's identifier is the
/// environment's "port": the source of a request going out, the destination
/// of a reply coming in; an echo the other way is dropped (`UnsupportedIcmp`
/// going out, `NoSession` coming in). `Ok(None)`: an ICMP error, which has
/// its own path.
#[inline]
fn flow_of(frame: &[u8], ip: &Ipv4, dir: Dir) -> Result<Option<Flow>, DropReason> {
    let l4 = wire::parse_l4(frame, ip)?;
    let (sport, dport, flags) = match (l4, dir) {
        (L4::Tcp { sport, dport, flags }, _) => (sport, dport, flags),
        (L4::Udp { sport, dport }, _) => (sport, dport, 0),
        (L4::Echo { request: true, ident }, Dir::Out) => (ident, 0, 0),
        (L4::Echo { request: false, ident }, Dir::In) => (0, ident, 0),
        (L4::Echo { .. }, Dir::Out) => return Err(DropReason::UnsupportedIcmp),
        (L4::Echo { .. }, Dir::In) => return Err(DropReason::NoSession),
        (L4::IcmpError { .. }, _) => return Ok(None),
    };
    Ok(Some((l4, sport, dport, flags)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frag::FragKey;
    use crate::testkit::Topology;

    /// Issue 12 item 6: the fragment table's index is seeded from the
    /// engine's seed, so which datagrams share a bucket differs from one
    /// gateway to the next (it was a constant, public in the source).
    #[test]
    fn the_fragment_index_is_seeded_per_engine() {
        let b = Topology::new(1, 1).bindings();
        let buckets = |seed: u64| {
            let e = Engine::new(EngineConfig { seed, ..EngineConfig::default() }, Arc::clone(&b)).unwrap();
            (0..64u16)
                .map(|ident| {
                    let key = FragKey {
                        src: Ipv4Addr::new(10, 1, 0, 2),
                        dst: Ipv4Addr::new(192, 0, 2, 1),
                        protocol: 17,
                        ident,
                    };
                    e.frags.bucket_of(&key)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(buckets(1), buckets(1));
        assert_ne!(buckets(1), buckets(2));
    }
}
