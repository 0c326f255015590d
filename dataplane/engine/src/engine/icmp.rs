//! ICMP errors: translated both ways (the quoted packet and the outer
//! header), and generated (time exceeded, fragmentation needed,
//! administratively prohibited).

use super::rewrite::{rewrite_ip, swap_macs, Side};
use super::{Action, Engine};
use crate::checksum::{self, Delta};
use crate::counters::DropReason;
use crate::flow::{Endpoint, FlowKey, ICMP, TCP, UDP};
use crate::session::Session;
use crate::tcp::Dir;
use crate::time::Instant;
use crate::wire::{self, get16, get_ip, icmp, ip, put16, put_ip, Ipv4, ETH_LEN};
use crate::PortId;
use core::net::Ipv4Addr;

/// Largest quote of the original datagram in a generated ICMP error
/// (RFC 1812 §4.3.2.3: the error stays within 576 bytes).
const ICMP_QUOTE: usize = 576 - 28;

impl Engine {
    /// An ICMP error from the VPC about a tracked flow: the embedded packet
    /// (one we sent, from an ENI endpoint) is reverted to the environment's
    /// endpoint, the outer destination too; no session is refreshed.
    pub(super) fn icmp_error_in(&mut self, now: Instant, frame: &mut [u8], ip: Ipv4, hairpin: bool) -> Action {
        let _ = now;
        let (emb, s) = match self.icmp_error_session(frame, &ip, Dir::In) {
            Ok(found) => found,
            Err(r) => return Action::Drop(r),
        };
        if ip.dst != s.eni.ip {
            return Action::Drop(DropReason::IcmpErrorNoSession);
        }
        let Some(inside) = self.bindings.inside(s.port) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let port_mac = inside.mac;
        self.translate_icmp_error(frame, &ip, &emb, Side::Src, s.inside, !hairpin);
        wire::set_macs(frame, s.env_mac, port_mac);
        self.counters.inbound.count(ip.total());
        Action::Forward { port: s.port, len: ip.end() }
    }

    /// An ICMP error from an environment about a packet it received (RFC
    /// 5508 REQ-5): the embedded packet (remote → environment) and the outer
    /// source become the ENI endpoint. It refreshes nothing (RFC 7857 §7).
    pub(super) fn icmp_error_out(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let (emb, s) = match self.icmp_error_session(frame, &ip, Dir::Out) {
            Ok(found) => found,
            Err(r) => return Action::Drop(r),
        };
        if s.port != port || ip.src != s.inside.ip {
            return Action::Drop(DropReason::Spoofed);
        }
        self.translate_icmp_error(frame, &ip, &emb, Side::Dst, s.eni, true);
        self.counters.outbound.count(ip.total());
        if self.is_eni(ip.dst) {
            self.counters.hairpinned.inc();
            let ip2 = ip.with_src_ttl(s.eni.ip, ip.ttl - 1);
            return self.inbound(now, frame, ip2, true);
        }
        self.send_outside(now, frame, ip.end(), s.eni.ip, ip.dst)
    }

    /// The packet an ICMP error quotes, validated, and the session it
    /// belongs to. From the VPC (`Dir::In`) the quoted packet went ENI →
    /// remote and is found by its outside key; from an environment
    /// (`Dir::Out`) it went remote → environment and is found by its inside
    /// key.
    fn icmp_error_session(&self, frame: &[u8], ip: &Ipv4, dir: Dir) -> Result<(Embedded, Session), DropReason> {
        let emb = embedded(frame, ip)?;
        let (src, dst) = (Endpoint::new(emb.src, emb.sport), Endpoint::new(emb.dst, emb.dport));
        let found = match dir {
            Dir::In => self.table.find_outside(&FlowKey { proto: emb.proto, local: src, remote: dst }),
            Dir::Out => self.table.find_inside(&FlowKey { proto: emb.proto, local: dst, remote: src }),
        };
        let sid = found.ok_or(DropReason::IcmpErrorNoSession)?;
        Ok((emb, *self.table.get(sid)))
    }

    /// Rewrites an ICMP error about a tracked flow: the quoted packet's
    /// `side` endpoint becomes `new`, and the outer header's other address
    /// (where the error goes, or where it comes from) `new`'s address.
    fn translate_icmp_error(
        &mut self,
        frame: &mut [u8],
        ip: &Ipv4,
        emb: &Embedded,
        side: Side,
        new: Endpoint,
        dec_ttl: bool,
    ) {
        rewrite_embedded(frame, ip, emb, side, new);
        let outer = if side == Side::Src { Side::Dst } else { Side::Src };
        rewrite_ip(frame, ip, outer, new.ip, dec_ttl);
        self.counters.icmp_errors_translated.inc();
    }

    /// Writes an ICMP error about the datagram in `frame` over it, to go back
    /// where it came from, from `src`. Never about an ICMP error or a later
    /// fragment (RFC 1122 §3.2.2).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn icmp_error(
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
            ip.proto == ICMP && ip.frag_off() == 0 && frame.get(ip.l4()).is_some_and(|&t| wire::is_icmp_error(t));
        let allowed = match kind {
            icmp::TIME_EXCEEDED => self.cfg.icmp_time_exceeded,
            _ => true,
        };
        // The reply needs room for its own IP and ICMP headers in the
        // caller's buffer; a buffer that cannot hold them gets no error.
        let fits = frame.len() >= ETH_LEN + 28;
        if about_error || ip.frag_off() != 0 || !allowed || !fits {
            return Action::Drop(counted);
        }
        self.counters.count_drop(counted);
        self.counters.icmp_generated.inc();
        let room = frame.len().saturating_sub(ETH_LEN + 28);
        let quote = ip.total().min(ICMP_QUOTE).min(room);
        let mut q = [0u8; ICMP_QUOTE];
        q[..quote].copy_from_slice(&frame[ip.off()..ip.off() + quote]);
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

    /// A hairpinned DF datagram (already translated outbound) too big for
    /// its destination's attachment: the error, from the ENI address it was
    /// sent to, goes to the sender the way an error from the VPC about its
    /// flow would, translated back through the sender's session; when that
    /// session is another engine's, the error is handed over to it.
    pub(super) fn hairpin_too_big(&mut self, now: Instant, frame: &mut [u8], ip: Ipv4, mtu: u32) -> Action {
        let len = match self.too_big(frame, ip, mtu, ip.dst) {
            Action::Reply { len } => len,
            other => return other,
        };
        let Ok(err) = wire::parse_ipv4(&frame[..len], ETH_LEN) else {
            return Action::Drop(DropReason::MtuExceeded);
        };
        if self.icmp_error_session(frame, &err, Dir::In).is_ok() {
            return self.icmp_error_in(now, frame, err, true);
        }
        let mac = self.bindings.outside().mac;
        wire::set_macs(frame, mac, mac);
        Action::Redirect { len }
    }

    /// A DF datagram larger than the egress MTU: ICMP fragmentation needed
    /// with the next-hop MTU (RFC 1191).
    pub(super) fn too_big(&mut self, frame: &mut [u8], ip: Ipv4, mtu: u32, src: Ipv4Addr) -> Action {
        self.icmp_error(frame, ip, icmp::UNREACHABLE, icmp::FRAG_NEEDED, mtu & 0xffff, src, DropReason::MtuExceeded)
    }
}

/// The packet quoted in an ICMP error.
#[derive(Copy, Clone, Debug)]
pub(super) struct Embedded {
    /// Offset of the embedded IP header.
    pub(super) off: usize,
    pub(super) hlen: usize,
    /// Bytes of it present (to the end of the outer datagram).
    pub(super) len: usize,
    pub(super) proto: u8,
    pub(super) src: Ipv4Addr,
    pub(super) dst: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) dport: u16,
}

/// Validates an ICMP error (checksum, RFC 5508 REQ-3) and its embedded
/// header; for ICMP the "ports" are (identifier, 0) as the session keys
/// them.
pub(super) fn embedded(frame: &[u8], ip: &Ipv4) -> Result<Embedded, DropReason> {
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
pub(super) fn rewrite_embedded(frame: &mut [u8], ip: &Ipv4, e: &Embedded, side: Side, new: Endpoint) {
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
