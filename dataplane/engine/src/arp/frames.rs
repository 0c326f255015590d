//! ARP frames for Ethernet/IPv4 (RFC 826): [`parse`] and the writers of
//! requests, replies, announcements and probes. Always [`FRAME_LEN`] (42)
//! bytes: a 14-byte Ethernet header and a 28-byte ARP body, no padding.
//! They never panic: a buffer that is too short yields `None` or a length
//! of 0.

use crate::bindings::Mac;
use core::net::Ipv4Addr;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, ETHERNET_HEADER_LEN,
};

/// Length of the ARP body for Ethernet/IPv4 (RFC 826), in bytes.
pub const ARP_LEN: usize = 28;

/// Length of an Ethernet frame carrying ARP for Ethernet/IPv4, without
/// padding or FCS, in bytes.
pub const FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_LEN;

/// An ARP operation this module understands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// Who-has (operation 1).
    Request,
    /// Is-at (operation 2).
    Reply,
}

/// A parsed Ethernet/IPv4 ARP message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArpMessage {
    /// Request or reply.
    pub operation: ArpOp,
    /// Sender hardware address (SHA).
    pub sender_mac: Mac,
    /// Sender protocol address (SPA); 0.0.0.0 in an RFC 5227 probe.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (THA); usually zero in a request.
    pub target_mac: Mac,
    /// Target protocol address (TPA).
    pub target_ip: Ipv4Addr,
}

/// Parses an Ethernet frame carrying ARP for Ethernet/IPv4 (htype 1, ptype
/// 0x0800, hlen 6, plen 4, operation 1 or 2).
///
/// `None` for any other EtherType (802.1Q tags included), any other ARP
/// hardware, protocol, lengths or operation, or a truncated frame. Bytes past
/// the ARP body (padding) are ignored; the Ethernet addresses are not
/// checked. Never panics.
pub fn parse(frame: &[u8]) -> Option<ArpMessage> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    // `Repr::parse` checks the lengths and the hardware and protocol types.
    match ArpRepr::parse(&arp).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } => {
            let operation = match operation {
                ArpOperation::Request => ArpOp::Request,
                ArpOperation::Reply => ArpOp::Reply,
                _ => return None,
            };
            Some(ArpMessage {
                operation,
                sender_mac: source_hardware_addr.0,
                sender_ip: source_protocol_addr,
                target_mac: target_hardware_addr.0,
                target_ip: target_protocol_addr,
            })
        }
        _ => None,
    }
}

/// Writes a whole ARP frame (Ethernet header and body) into `buf`; the
/// Ethernet source and the sender hardware address are both `sha`.
/// Returns [`FRAME_LEN`], or 0 if `buf` is shorter.
fn emit(buf: &mut [u8], eth_dst: EthernetAddress, sha: EthernetAddress, repr: ArpRepr) -> usize {
    let Some(buf) = buf.get_mut(..FRAME_LEN) else {
        return 0;
    };
    // `buf` is exactly FRAME_LEN long: every accessor below is in bounds.
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_dst_addr(eth_dst);
    eth.set_src_addr(sha);
    eth.set_ethertype(EthernetProtocol::Arp);
    let mut arp = ArpPacket::new_unchecked(eth.payload_mut());
    repr.emit(&mut arp);
    FRAME_LEN
}

/// A request-shaped ARP body (RFC 826 request, THA zero) sent to broadcast.
fn emit_request(buf: &mut [u8], our_mac: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(our_mac),
        source_protocol_addr: spa,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: tpa,
    };
    emit(buf, EthernetAddress::BROADCAST, EthernetAddress(our_mac), repr)
}

/// Rewrites a received request frame in place into the reply for
/// `msg.target_ip` from `our_mac`, and returns the reply length
/// ([`FRAME_LEN`]).
///
/// The reply goes to `msg.sender_mac` (Ethernet destination and THA) and
/// `msg.sender_ip` (TPA), with SHA and Ethernet source `our_mac` and SPA
/// `msg.target_ip`. `frame` must be at least [`FRAME_LEN`] bytes; if it is
/// shorter nothing is written and 0 is returned. Bytes past [`FRAME_LEN`]
/// (padding) are left as they were.
pub fn write_reply(frame: &mut [u8], msg: &ArpMessage, our_mac: Mac) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(our_mac),
        source_protocol_addr: msg.target_ip,
        target_hardware_addr: EthernetAddress(msg.sender_mac),
        target_protocol_addr: msg.sender_ip,
    };
    emit(frame, EthernetAddress(msg.sender_mac), EthernetAddress(our_mac), repr)
}

/// Writes a broadcast who-has request for `target_ip` from
/// (`our_mac`, `sender_ip`) into `buf`; returns [`FRAME_LEN`], or 0 if `buf`
/// is too small.
pub fn write_request(buf: &mut [u8], our_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> usize {
    emit_request(buf, our_mac, sender_ip, target_ip)
}

/// Writes a gratuitous ARP announcing `ip` at `our_mac` (RFC 5227 §2.3
/// announcement: a broadcast request with sender and target IP both `ip`,
/// THA zero). Returns [`FRAME_LEN`], or 0 if `buf` is too small.
pub fn write_announcement(buf: &mut [u8], our_mac: Mac, ip: Ipv4Addr) -> usize {
    emit_request(buf, our_mac, ip, ip)
}

/// Writes an RFC 5227 §2.1.1 probe for `ip`: a broadcast request with sender
/// IP 0.0.0.0, THA zero and target IP `ip`. Returns [`FRAME_LEN`], or 0 if
/// `buf` is too small.
pub fn write_probe(buf: &mut [u8], our_mac: Mac, ip: Ipv4Addr) -> usize {
    emit_request(buf, our_mac, Ipv4Addr::UNSPECIFIED, ip)
}
