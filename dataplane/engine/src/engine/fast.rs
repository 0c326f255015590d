//! The established path of a batch: a frame of a flow whose session exists
//! and whose packet changes nothing but the session's counters, handled in
//! one pass without the general path's detours.
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

use super::batch::{BatchFrame, Hint};
use super::rewrite::{rewrite, rewrite_inbound, Side};
use super::{Action, Engine, Offload};
use crate::flow::{TCP, UDP};
use crate::tcp::{self, Dir};
use crate::time::Instant;
use crate::wire;
use crate::PortId;

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

    /// Handles `f` as an established-flow frame if it is one (see the
    /// module doc) and says whether it did.
    #[inline]
    pub(super) fn fast(&mut self, now: Instant, f: &mut BatchFrame<'_>, h: &Hint) -> bool {
        let ip = &h.ip;
        if f.offload != Offload::default() || ip.mf || (ip.proto != TCP && ip.proto != UDP) || ip.ttl <= 1 {
            return false;
        }
        let frame = &mut *f.buf;
        let (l4, _, _, flags) = h.flow;
        if ip.proto == TCP && flags & OPEN_CLOSE != 0 {
            return false;
        }
        let action = if f.port.is_inside() {
            let Some(inside) = self.bindings.inside(f.port) else { return false };
            let out = self.bindings.outside();
            if wire::mac_at(frame, 0) != inside.mac
                || ip.dst == inside.gateway
                || ip.total() > usize::from(out.mtu)
                || self.is_eni(ip.dst)
            {
                return false;
            }
            let out_mac = out.mac;
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
}
