//! The rewrites a translation makes: addresses, ports and identifiers with
//! incremental checksums (RFC 1624), partial checksums completed, MACs
//! swapped.

use crate::checksum::{self, Delta};
use crate::flow::{Endpoint, TCP, UDP};
use crate::wire::{self, get16, ip, put16, Ipv4, ETH_LEN, L4};
use core::net::Ipv4Addr;

/// Completes a partial TCP/UDP checksum (the field holds the pseudo-header
/// sum) over the segment, as a device with checksum offload would.
pub(super) fn finish_partial(frame: &mut [u8]) {
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
pub(super) enum Side {
    Src,
    Dst,
}

pub(super) fn swap_macs(frame: &mut [u8]) {
    let dst = wire::mac_at(frame, 0);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&dst);
}

/// Rewrites one IP address of the header at `ip` (and decrements TTL when
/// `dec_ttl`), updating the header checksum incrementally. Returns the
/// pseudo-header delta for the transport checksum.
#[inline(always)]
pub(super) fn rewrite_ip(frame: &mut [u8], ip: &Ipv4, side: Side, new: Ipv4Addr, dec_ttl: bool) -> Delta {
    // The fixed header once (`parse_ipv4` checked it lies in the frame), so
    // the fields below are read and written without a bounds check each.
    let h: &mut [u8; 20] = (&mut frame[ip.off()..ip.off() + 20]).try_into().expect("20 bytes");
    let (off, old) = match side {
        Side::Src => (ip::SRC, ip.src),
        Side::Dst => (ip::DST, ip.dst),
    };
    let addr = Delta::ZERO.addr(old, new);
    let mut d = addr;
    if dec_ttl {
        let ttl = h[ip::TTL];
        let t = ttl.saturating_sub(1);
        d = d.word(u16::from(ttl) << 8 | u16::from(ip.proto), u16::from(t) << 8 | u16::from(ip.proto));
        h[ip::TTL] = t;
    }
    h[off..off + 4].copy_from_slice(&new.octets());
    let c = d.apply(u16::from_be_bytes([h[ip::CHECKSUM], h[ip::CHECKSUM + 1]]));
    h[ip::CHECKSUM..ip::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    addr
}

/// Rewrites the source (outbound) or destination (inbound) endpoint of a
/// TCP, UDP or ICMP echo packet with incremental checksums (RFC 1624).
#[inline]
pub(super) fn rewrite(frame: &mut [u8], ip: &Ipv4, l4: L4, side: Side, new: Endpoint) {
    let addr = rewrite_ip(frame, ip, side, new.ip, true);
    rewrite_l4(frame, ip, l4, side, addr, new.port);
}

/// Rewrites the transport port (or echo identifier) on `side` and updates
/// the transport checksum with the address delta `addr` from
/// [`rewrite_ip`]. A partial checksum (offload) takes only the address
/// delta: the ports are summed by whoever completes it.
#[inline(always)]
pub(super) fn rewrite_l4(frame: &mut [u8], ip: &Ipv4, l4: L4, side: Side, addr: Delta, port: u16) {
    let l = ip.l4();
    let port_off = if side == Side::Src { 0 } else { 2 };
    // (port or identifier offset, checksum offset, UDP's zero rule, the
    // checksum covers the pseudo-header); offsets from the transport header.
    let (at, coff, udp, pseudo) = match l4 {
        L4::Tcp { .. } => (port_off, 16, false, true),
        L4::Udp { .. } => (port_off, 6, true, true),
        L4::Echo { .. } => (4, 2, false, false),
        L4::IcmpError { .. } => return,
    };
    // The header up to the end of the later of the two fields, once
    // (`parse_l4` checked it lies in the segment).
    let seg = &mut frame[l..l + at.max(coff) + 2];
    let old = get16(seg, at);
    put16(seg, at, port);
    let base = if pseudo { addr } else { Delta::ZERO };
    let c = get16(seg, coff);
    let c = if ip.partial {
        base.apply_partial(c)
    } else if udp {
        base.word(old, port).apply_udp(c)
    } else {
        base.word(old, port).apply(c)
    };
    put16(seg, coff, c);
}

/// The inbound rewrite: destination endpoint.
#[inline]
pub(super) fn rewrite_inbound(frame: &mut [u8], ip: &Ipv4, l4: L4, new: Endpoint, dec_ttl: bool) {
    // Hairpinned frames had their TTL decremented on the way out.
    let addr = rewrite_ip(frame, ip, Side::Dst, new.ip, dec_ttl);
    rewrite_l4(frame, ip, l4, Side::Dst, addr, new.port);
}
