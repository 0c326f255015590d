//! Fragments: later fragments translated as their datagram's first was
//! (or buffered until it comes), and forwarded DF=0 datagrams larger than
//! the egress MTU split (RFC 791, RFC 4787 REQ-13a).

use super::rewrite::finish_partial;
use super::{Action, Engine, TX_QUEUE};
use crate::bindings::Mac;
use crate::checksum::{self, Delta};
use crate::counters::DropReason;
use crate::frag::{FragKey, Later};
use crate::time::Instant;
use crate::wire::{self, get16, get_ip, ip, put16, put_ip, Ipv4, ETH_LEN};
use crate::PortId;
use core::net::Ipv4Addr;

/// How to translate the later fragments of a datagram: the first
/// fragment's final header values.
#[derive(Copy, Clone, Debug)]
pub(super) struct FragXlate {
    pub(super) src: Ipv4Addr,
    pub(super) dst: Ipv4Addr,
    pub(super) ident: u16,
    pub(super) egress: PortId,
    pub(super) mac: Mac,
}

impl Engine {
    /// Fragments a forwarded DF=0 datagram that is larger than its egress
    /// MTU (RFC 791 §3.2, RFC 4787 REQ-13a): the first fragment is written
    /// over the frame and returned, the others queue for
    /// [`Engine::poll_transmit`] in order. Later fragments carry only the
    /// options marked "copied".
    pub(super) fn fragment(&mut self, frame: &mut [u8], port: PortId, len: usize, mtu: usize) -> Action {
        let Ok(ip) = wire::parse_ipv4(&frame[..len], ETH_LEN) else {
            return Action::Drop(DropReason::MtuExceeded);
        };
        let mut opts = [0u8; 40];
        let olen = copied_options(&frame[ip.off() + 20..ip.off() + ip.hlen()], &mut opts);
        let first = mtu.saturating_sub(ip.hlen()) / 8 * 8;
        let step = mtu.saturating_sub(20 + olen) / 8 * 8;
        let payload = ip.payload_len();
        if first == 0 || step == 0 {
            return Action::Drop(DropReason::MtuExceeded);
        }
        // A partial checksum is completed over the whole datagram now: the
        // next device would complete it over the first fragment alone. The
        // first fragment then leaves without the offload
        // ([`Engine::forwarded_offload`]).
        if self.rx.csum_partial {
            if ip.frag_off() == 0 {
                finish_partial(&mut frame[..len]);
            }
            self.rx.csum_partial = false;
        }
        let mut off = first;
        while off < payload {
            let end = (off + step).min(payload);
            if self.frag_out.len() >= TX_QUEUE {
                return Action::Drop(DropReason::Fragment);
            }
            let mut f = self.spare.pop().unwrap_or_default();
            f.clear();
            f.extend_from_slice(&frame[..ip.off() + 20]);
            f.extend_from_slice(&opts[..olen]);
            f.extend_from_slice(&frame[ip.l4() + off..ip.l4() + end]);
            let more = end < payload || ip.mf;
            write_fragment_header(&mut f[ip.off()..], 20 + olen, end - off, ip.frag_off() + off, more);
            self.frag_out.push_back((port, f));
            off = end;
        }
        write_fragment_header(&mut frame[ip.off()..], ip.hlen(), first, ip.frag_off(), true);
        Action::Forward { port, len: ip.off() + ip.hlen() + first }
    }

    /// Records how the first fragment of a datagram was translated, so its
    /// other fragments follow.
    pub(super) fn remember_first_fragment(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &[u8],
        ip: &Ipv4,
        action: Action,
    ) {
        let (egress, mac) = match action {
            Action::Forward { port, .. } => (port, wire::mac_at(frame, 0)),
            Action::Consumed => (PortId::OUTSIDE, wire::BROADCAST),
            _ => return,
        };
        let t = FragXlate {
            src: get_ip(frame, ip.off() + ip::SRC),
            dst: get_ip(frame, ip.off() + ip::DST),
            ident: get16(frame, ip.off() + ip::IDENT),
            egress,
            mac,
        };
        let key = FragKey { src: ip.src, dst: ip.dst, protocol: ip.proto, ident: ip.ident };
        // Its other fragments must arrive on `port` too (the table drops
        // the ones that name this datagram from elsewhere: forged).
        self.frags.first(now, key, port, t, ip.payload_len() as u32);
    }

    /// A fragment other than the first.
    pub(super) fn later_fragment(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let key = FragKey { src: ip.src, dst: ip.dst, protocol: ip.proto, ident: ip.ident };
        let len = ip.end();
        match self.frags.later(now, key, port, &frame[..len], ip.frag_off() as u32, ip.payload_len() as u32, ip.mf) {
            Later::Translate(t) => self.forward_fragment(now, t, frame, len),
            Later::Buffered => Action::Consumed,
            Later::Drop => Action::Drop(DropReason::Fragment),
        }
    }

    /// Translates a later fragment with its datagram's record and sends it.
    pub(super) fn forward_fragment(&mut self, now: Instant, t: FragXlate, frame: &mut [u8], len: usize) -> Action {
        let ip = match wire::parse_ipv4(&frame[..len], ETH_LEN) {
            Ok(ip) => ip,
            Err(r) => return Action::Drop(r),
        };
        if ip.ttl <= 1 {
            return Action::Drop(DropReason::TtlExceeded);
        }
        let mut d = Delta::ZERO.addr(ip.src, t.src).addr(ip.dst, t.dst).word(ip.ident, t.ident);
        d = d.word(u16::from(ip.ttl) << 8 | u16::from(ip.proto), u16::from(ip.ttl - 1) << 8 | u16::from(ip.proto));
        put_ip(frame, ip.off() + ip::SRC, t.src);
        put_ip(frame, ip.off() + ip::DST, t.dst);
        put16(frame, ip.off() + ip::IDENT, t.ident);
        frame[ip.off() + ip::TTL] = ip.ttl - 1;
        let c = d.apply(get16(frame, ip.off() + ip::CHECKSUM));
        put16(frame, ip.off() + ip::CHECKSUM, c);
        if t.egress == PortId::OUTSIDE {
            self.counters.outbound.count(ip.total());
            self.send_outside(now, frame, ip.end(), t.src, t.dst)
        } else {
            let Some(mac) = self.port_mac(t.egress) else {
                return Action::Drop(DropReason::NoRoute);
            };
            self.counters.inbound.count(ip.total());
            wire::set_macs(frame, t.mac, mac);
            Action::Forward { port: t.egress, len: ip.end() }
        }
    }
}

/// Keeps the options whose "copied" flag is set (RFC 791), padded with
/// end-of-list to a multiple of 4 bytes; returns their length.
pub(super) fn copied_options(opts: &[u8], out: &mut [u8; 40]) -> usize {
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
pub(super) fn write_fragment_header(h: &mut [u8], hlen: usize, payload: usize, offset: usize, more: bool) {
    h[0] = 0x40 | (hlen / 4) as u8;
    put16(h, 2, (hlen + payload) as u16);
    let df_bit = get16(h, 6) & 0x4000;
    put16(h, 6, df_bit | (u16::from(more) << 13) | ((offset / 8) as u16 & 0x1fff));
    put16(h, ip::CHECKSUM, 0);
    let c = checksum::checksum(&h[..hlen]);
    put16(h, ip::CHECKSUM, c);
}

pub(super) fn set_ident(frame: &mut [u8], ip: &Ipv4, id: u16) {
    let old = get16(frame, ip.off() + ip::IDENT);
    put16(frame, ip.off() + ip::IDENT, id);
    let c = Delta::ZERO.word(old, id).apply(get16(frame, ip.off() + ip::CHECKSUM));
    put16(frame, ip.off() + ip::CHECKSUM, c);
}
