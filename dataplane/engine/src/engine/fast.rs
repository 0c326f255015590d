//! The direct paths of a batch, each handling one common kind of frame in
//! one pass without the general path's detours: the established path (a
//! frame of a flow whose session exists and whose packet changes nothing
//! but the session's counters) and the new-flow path (the first packet of
//! an outbound flow).
//!
//! [`Engine::fast`] takes a frame of a batch (with its parsed header, flow
//! and hash from pass 1) only when every one of these holds, and otherwise
//! leaves it, untouched, to the general path:
//! - no offload state (no partial checksum, no GSO), not a fragment, TCP or
//!   UDP;
//! - addressed to the port's MAC; TTL above 1; the datagram fits the egress
//!   MTU (no fragmentation, no "too big");
//! - outbound: not to the attachment's gateway, not a hairpin (the
//!   destination is no ENI address), the session is the sender's port's and
//!   has been answered, the next hop's MAC is known and fresh;
//! - inbound: to an ENI address, not a hairpin handed over by another
//!   worker (the source MAC is not ours);
//! - TCP: no SYN, FIN or RST, and the state machine stays where it is.
//!
//! What it does then is exactly what the general path does for such a frame
//! (same bytes, action, counters and session fields): the frame is checked
//! before anything is changed, so a frame left to the general path finds
//! the engine as it was (the next hop's entry may be marked used, which the
//! general path does too). `tests/batch.rs` holds the two paths to that.
//!
//! [`Engine::fast_new`] takes a frame whose key pass 2 found stored nowhere
//! when every one of these holds, and otherwise leaves it, untouched, to
//! the general path:
//! - as the established path: no offload state, not a fragment, TCP or UDP,
//!   TTL above 1, addressed to the port's MAC, not to the attachment's
//!   gateway, not a hairpin, the datagram fits the egress MTU;
//! - outbound; TCP: a segment that may open a connection (a SYN without
//!   ACK or RST);
//! - the index holds no session under the key now (an earlier frame of
//!   the batch may have created it since pass 2).
//!
//! The flow is then created exactly as by the general path (the same
//! [`Engine::new_outbound`]), and the frame leaves the same way: translated
//! and sent towards its next hop (queued for ARP when the hop's MAC is not
//! known), or, when the flow is refused, dropped or answered as the general
//! path would ([`Engine::refuse`]); both end in [`Engine::settle`], as a
//! frame of the general path does. In vectors of first packets it costs
//! about 190 instructions a flow less than the general path (1,589 against
//! 1,779 for UDP, `examples/new_flows.rs`).

use super::batch::{BatchFrame, Hint};
use super::rewrite::{rewrite, rewrite_inbound, Side};
use super::{Action, Engine, Offload};
use crate::flow::{TCP, UDP};
use crate::tcp::{self, Dir};
use crate::time::Instant;
use crate::wire::{self, Ipv4};
use crate::PortId;
use core::net::Ipv4Addr;

/// FIN, SYN and RST in a TCP flags byte: a segment with any of them may
/// change the connection's state.
const OPEN_CLOSE: u8 = 0x07;

impl Engine {
    /// The session of the hint's key (its inside key, or its outside key
    /// when `outside`): the hint's candidate if that is it, else looked up.
    #[inline(always)]
    fn find_hinted(&self, h: &Hint, outside: bool) -> Option<u32> {
        if (h.cand as usize) < self.table.capacity() {
            let s = self.table.get(h.cand);
            let local = if outside { s.eni } else { s.inside };
            if local == h.key.local && s.remote == h.key.remote && s.proto == h.key.proto {
                return Some(h.cand);
            }
        }
        if outside {
            self.table.find_outside_hashed(&h.key, h.hash)
        } else {
            self.table.find_inside_hashed(&h.key, h.hash)
        }
    }

    /// The checks both direct paths make of a frame from an attachment:
    /// addressed to the port's MAC, not to the attachment's gateway, not a
    /// hairpin (the destination is no ENI address), the datagram fits the
    /// egress MTU. The attachment's gateway address when they hold.
    #[inline(always)]
    fn plain_outbound(&self, f: &BatchFrame<'_>, ip: &Ipv4) -> Option<Ipv4Addr> {
        let inside = self.bindings.inside(f.port)?;
        if wire::mac_at(f.buf, 0) != inside.mac
            || ip.dst == inside.gateway
            || ip.total() > usize::from(self.bindings.outside().mtu)
            || self.is_eni(ip.dst)
        {
            return None;
        }
        Some(inside.gateway)
    }

    /// Handles `f` as an established-flow frame if it is one (see the
    /// module doc) and says whether it did.
    #[inline]
    pub(super) fn fast(&mut self, now: Instant, f: &mut BatchFrame<'_>, h: &Hint) -> bool {
        let ip = &h.ip;
        if !plain(f, ip) {
            return false;
        }
        let (l4, _, _, flags) = h.flow;
        if ip.proto == TCP && flags & OPEN_CLOSE != 0 {
            return false;
        }
        let outbound = f.port.is_inside();
        if outbound && self.plain_outbound(f, ip).is_none() {
            return false;
        }
        let frame = &mut *f.buf;
        let action = if outbound {
            let out_mac = self.bindings.outside().mac;
            let Some(sid) = self.find_hinted(h, false) else { return false };
            let s = self.table.get(sid);
            if s.port != f.port || (s.inbound_origin && s.no_out()) {
                return false;
            }
            if ip.proto == TCP && s.tcp.next(Dir::Out, tcp::Flags::from_byte(flags)) != s.tcp {
                return false;
            }
            let Some(hop) = self.bindings.next_hop(ip.dst) else { return false };
            let Some(mac) = self.arp.lookup(now, hop) else { return false };
            self.table.count_out(sid, ip.total());
            let s = self.table.get_mut(sid);
            s.last_seen = now;
            let eni = s.eni;
            rewrite(frame, ip, l4, Side::Src, eni);
            wire::set_macs(frame, mac, out_mac);
            self.counters.outbound.count(ip.total());
            Action::Forward { port: PortId::OUTSIDE, len: ip.end() }
        } else {
            let our_mac = self.bindings.outside().mac;
            if wire::mac_at(frame, 0) != our_mac || wire::mac_at(frame, 6) == our_mac || !self.is_eni(ip.dst) {
                return false;
            }
            let Some(sid) = self.find_hinted(h, true) else { return false };
            let s = self.table.get(sid);
            if ip.proto == TCP && s.tcp.next(Dir::In, tcp::Flags::from_byte(flags)) != s.tcp {
                return false;
            }
            let Some(inside) = self.bindings.inside(s.port) else { return false };
            if ip.total() > usize::from(inside.mtu) {
                return false;
            }
            let port_mac = inside.mac;
            self.table.count_in(sid, ip.total());
            let s = self.table.get_mut(sid);
            if ip.proto == TCP {
                s.last_seen = now;
            }
            let (s_port, s_inside, s_env_mac) = (s.port, s.inside, s.env_mac);
            rewrite_inbound(frame, ip, l4, s_inside, true);
            wire::set_macs(frame, s_env_mac, port_mac);
            self.counters.inbound.count(ip.total());
            Action::Forward { port: s_port, len: ip.end() }
        };
        self.counters.rx_frames.inc();
        self.rx = Offload::default();
        self.now = now;
        f.action = action;
        f.offload = Offload::default();
        true
    }

    /// Handles `f` as the first frame of a new outbound flow if it is one
    /// (see the module doc) and says whether it did.
    #[inline]
    pub(super) fn fast_new(&mut self, now: Instant, f: &mut BatchFrame<'_>, h: &Hint) -> bool {
        let ip = &h.ip;
        if !plain(f, ip) || !f.port.is_inside() {
            return false;
        }
        let (l4, _, _, flags) = h.flow;
        if ip.proto == TCP && !tcp::Flags::from_byte(flags).opens() {
            return false;
        }
        let Some(gateway) = self.plain_outbound(f, ip) else { return false };
        if self.table.find_inside_hashed(&h.key, h.hash).is_some() {
            return false;
        }
        let frame = &mut *f.buf;
        // From here on the frame is the general path's new outbound flow.
        self.counters.rx_frames.inc();
        self.rx = Offload::default();
        self.now = now;
        let src_mac = wire::mac_at(frame, 6);
        let action = match self.new_outbound(now, f.port, h.key, h.hash, flags, src_mac, ip.total()) {
            Ok(sid) => {
                let eni = self.table.get(sid).eni;
                rewrite(frame, ip, l4, Side::Src, eni);
                self.counters.outbound.count(ip.total());
                self.send_outside(now, frame, ip.end(), eni.ip, ip.dst)
            }
            Err(r) => self.refuse(frame, *ip, r, gateway),
        };
        f.action = self.settle(frame, action, Offload::default());
        f.offload = self.forwarded_offload();
        true
    }
}

/// What both direct paths ask of any frame: no offload state (no partial
/// checksum, no GSO), not a fragment, TCP or UDP, TTL above 1.
#[inline(always)]
fn plain(f: &BatchFrame<'_>, ip: &Ipv4) -> bool {
    f.offload == Offload::default() && !ip.mf && (ip.proto == TCP || ip.proto == UDP) && ip.ttl > 1
}
