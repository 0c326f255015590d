//! Timers at their real default values (virtual clock), TCP states, and ICMP
//! error translation.

mod common;

use common::*;
use dataplane::config::EngineConfig;
use dataplane::counters::DropReason;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER};
use dataplane::time::Instant;
use dataplane::{Action, PortId};
use std::net::Ipv4Addr;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Opens a TCP connection env 0:5000 → SERVER:80 through the full handshake.
fn established(h: &mut Harness) -> (Ipv4Addr, u16) {
    let e = h.out_ok(0, TCP, 5000, SERVER, 80, SYN).src();
    let f = h.vpc_frame(SERVER, 80, e.0, e.1, TCP, SYN | ACK, b"");
    assert!(h.send(PortId::OUTSIDE, f).forwarded().is_some());
    h.out_ok(0, TCP, 5000, SERVER, 80, ACK);
    e
}

fn reply_passes(h: &mut Harness, e: (Ipv4Addr, u16), proto: u8, fl: u8) -> bool {
    let sport = if proto == TCP { 80 } else { 53 };
    let f = h.vpc_frame(SERVER, sport, e.0, e.1, proto, fl, b"late");
    h.send(PortId::OUTSIDE, f).forwarded().is_some()
}

#[test]
fn udp_mapping_lives_300_seconds_by_default() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
    h.advance(secs(299));
    assert!(reply_passes(&mut h, e, UDP, 0), "alive at 299 s (RFC 4787 REQ-5c)");
    // Inbound traffic did not refresh it: it dies 300 s after the outbound packet.
    h.advance(secs(2));
    assert!(!reply_passes(&mut h, e, UDP, 0));
    assert_eq!(h.engine.counters().sessions_expired[1].get(), 1);
}

#[test]
fn udp_outbound_keepalive_keeps_the_mapping() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
    for _ in 0..6 {
        h.advance(secs(150));
        assert_eq!(h.out_ok(0, UDP, 5000, SERVER, 53, 0).src(), e);
    }
    assert!(reply_passes(&mut h, e, UDP, 0));
}

#[test]
fn tcp_established_lives_2h4m() {
    let mut h = Harness::default();
    let e = established(&mut h);
    h.advance(secs(7439));
    assert!(reply_passes(&mut h, e, TCP, ACK), "alive after 2 h 3 m 59 s (RFC 5382 REQ-5)");
    h.advance(secs(7441));
    assert!(!reply_passes(&mut h, e, TCP, ACK));
}

#[test]
fn tcp_syn_sent_is_transitory_240_seconds() {
    let mut h = Harness::default();
    let e = h.out_ok(0, TCP, 5000, SERVER, 80, SYN).src();
    h.advance(secs(239));
    assert!(reply_passes(&mut h, e, TCP, SYN | ACK), "alive at 3 m 59 s");
    let mut h = Harness::default();
    h.out_ok(0, TCP, 5000, SERVER, 80, SYN);
    h.advance(secs(241));
    assert_eq!(h.engine.sessions().len(), 0);
}

#[test]
fn tcp_closed_by_both_fins_goes_transitory() {
    let mut h = Harness::default();
    let e = established(&mut h);
    h.out_ok(0, TCP, 5000, SERVER, 80, FIN | ACK);
    assert!(reply_passes(&mut h, e, TCP, FIN | ACK));
    h.advance(secs(239));
    assert_eq!(h.engine.sessions().len(), 1);
    h.advance(secs(2));
    assert_eq!(h.engine.sessions().len(), 0, "gone 240 s after the second FIN");
}

#[test]
fn tcp_half_close_keeps_the_established_timer() {
    let mut h = Harness::default();
    let e = established(&mut h);
    h.out_ok(0, TCP, 5000, SERVER, 80, FIN | ACK);
    h.advance(secs(3600));
    assert!(reply_passes(&mut h, e, TCP, ACK), "half-closed connection still carries data");
}

#[test]
fn tcp_rst_keeps_the_session_four_minutes() {
    let mut h = Harness::default();
    let e = established(&mut h);
    assert!(reply_passes(&mut h, e, TCP, RST), "RST is translated (RFC 7857 §2.2)");
    h.advance(secs(60));
    h.out_ok(0, TCP, 5000, SERVER, 80, ACK);
    // Data after the RST returned the session to ESTABLISHED.
    h.advance(secs(600));
    assert!(reply_passes(&mut h, e, TCP, ACK));
    // Another RST, then silence: gone after 4 minutes.
    assert!(reply_passes(&mut h, e, TCP, RST));
    h.advance(secs(241));
    assert_eq!(h.engine.sessions().len(), 0);
}

#[test]
fn tcp_simultaneous_open_with_endpoint_independent_filtering() {
    let mut h = Harness::default();
    let e = h.out_ok(0, TCP, 5000, SERVER, 80, SYN).src();
    // The remote's own SYN (not a SYN-ACK) crosses ours.
    assert!(reply_passes(&mut h, e, TCP, SYN));
    h.out_ok(0, TCP, 5000, SERVER, 80, SYN | ACK);
    h.advance(secs(3600));
    assert!(reply_passes(&mut h, e, TCP, ACK), "established, not transitory");
}

#[test]
fn inbound_syn_on_a_mapping_opens_a_session_held_six_seconds() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 80, 0).src();
    let e = h.out_ok(0, TCP, 5000, SERVER, 80, SYN).src().1.max(e.1);
    let _ = e;
    let m = h.out_ok(0, TCP, 5000, SERVER, 80, ACK).src();
    // A second remote sends a SYN to the TCP mapping (EIF admits it).
    let f = h.vpc_frame(testkit::SERVER2, 7000, m.0, m.1, TCP, SYN, b"");
    assert_eq!(h.send(PortId::OUTSIDE, f).forwarded(), Some(h.env_port(0)));
    assert_eq!(h.engine.sessions().len(), 3);
    h.advance(secs(7));
    assert_eq!(h.engine.sessions().len(), 2, "unanswered inbound SYN gone after 6 s");
    // A non-SYN from a new remote never opens anything.
    let f = h.vpc_frame(testkit::SERVER2, 7001, m.0, m.1, TCP, ACK, b"");
    assert_eq!(h.send(PortId::OUTSIDE, f).action, Action::Drop(DropReason::Filtered));
}

#[test]
fn icmp_echo_session_lives_60_seconds() {
    let mut h = Harness::default();
    let id = h.out_ok(0, ICMP, 77, SERVER, 0, 0).echo_id();
    h.advance(secs(59));
    let f = h.vpc_frame(SERVER, 0, ENI, id, ICMP, 0, b"hello");
    assert!(h.send(PortId::OUTSIDE, f.clone()).forwarded().is_some(), "late reply at 59 s");
    h.advance(secs(2));
    assert_eq!(h.send(PortId::OUTSIDE, f).action, Action::Drop(DropReason::NoSession));
}

#[test]
fn timeouts_are_configurable() {
    let mut cfg = EngineConfig::default();
    cfg.timeouts.udp = secs(120);
    let mut h = Harness::with(cfg);
    h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    h.advance(secs(119));
    assert_eq!(h.engine.sessions().len(), 1);
    h.advance(secs(2));
    assert_eq!(h.engine.sessions().len(), 0);
}

#[test]
fn poll_timeout_tells_when_expiry_has_work() {
    let mut h = Harness::default();
    assert_eq!(h.engine.poll_timeout(), None, "nothing to do when idle");
    h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    h.engine.expire(h.now);
    let t = h.engine.poll_timeout().expect("a session is live");
    assert!(t > h.now && t <= h.now + secs(1), "{t:?}");
}

/// An ICMP error from `from` about the packet `about` (an outbound frame as
/// it left the gateway), sent to the ENI address.
fn icmp_error_about(about: &[u8], kind: u8, code: u8, rest: [u8; 4], from: Ipv4Addr) -> Vec<u8> {
    // Read the quoted header's fields raw: it may be deliberately broken.
    let hlen = usize::from(about[14] & 0x0f) * 4;
    let src = Ipv4Addr::new(about[26], about[27], about[28], about[29]);
    let quote = &about[14..(14 + hlen + 8).min(about.len())];
    let msg = testkit::icmp_message(kind, code, rest, quote);
    testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, from, src, ICMP, IpOpts::default(), &msg)
}

#[test]
fn icmp_port_unreachable_is_translated_back() {
    let mut h = Harness::default();
    let out = h.out_ok(0, UDP, 5000, SERVER, 9999, 0);
    let err = icmp_error_about(&out.frame, 3, 3, [0; 4], SERVER);
    let back = h.send(PortId::OUTSIDE, err);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    assert!(testkit::checksums_ok(&back.frame), "outer IP, ICMP and embedded IP checksums");
    let ip = back.ip();
    assert_eq!(ip.dst, testkit::env_ip(0));
    let l = ip.l4();
    assert_eq!((back.frame[l], back.frame[l + 1]), (3, 3), "type and code unchanged");
    // The embedded header is quoted with its first 8 transport bytes only.
    let emb = &back.frame[l + 8..];
    assert_eq!(emb.len(), 28);
    assert_eq!(&emb[12..16], &testkit::env_ip(0).octets());
    assert_eq!(u16::from_be_bytes([emb[20], emb[21]]), 5000);
    assert_eq!(dataplane::checksum::checksum(&emb[..20]), 0, "embedded IP header checksum valid");
}

#[test]
fn icmp_error_embedded_fields_are_reverted() {
    let mut h = Harness::default();
    let out = h.out_ok(0, UDP, 5000, SERVER, 9999, 0);
    // Quote the whole datagram so the embedded UDP checksum can be verified.
    let ip = out.ip();
    let msg = testkit::icmp_message(3, 3, [0; 4], &out.frame[14..ip.end()]);
    let err = testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, SERVER, ENI, ICMP, IpOpts::default(), &msg);
    let back = h.send(PortId::OUTSIDE, err);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    let l = back.ip().l4();
    let emb = &back.frame[l + 8..];
    assert_eq!(&emb[12..16], &testkit::env_ip(0).octets(), "embedded source is the environment");
    assert_eq!(u16::from_be_bytes([emb[20], emb[21]]), 5000, "embedded source port");
    // The embedded datagram, taken out, is exactly what the environment sent.
    let sent = h.env_frame(0, UDP, 5000, SERVER, 9999, 0, b"hello");
    assert_eq!(&emb[20..], &sent[14 + 20..], "transport header, checksum and data as the environment sent them");
    assert_eq!(dataplane::checksum::checksum(&emb[..20]), 0, "embedded IP header checksum valid");
}

#[test]
fn time_exceeded_from_a_router_is_translated() {
    let mut h = Harness::default();
    let out = h.out_ok(0, TCP, 5000, testkit::SERVER2, 80, SYN);
    let err = icmp_error_about(&out.frame, 11, 0, [0; 4], ROUTER);
    let back = h.send(PortId::OUTSIDE, err);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    assert!(testkit::checksums_ok(&back.frame));
    assert_eq!(back.ip().src, ROUTER, "errors from other hosts are not filtered (REQ-12a)");
    assert_eq!(h.engine.counters().icmp_errors_translated.get(), 1);
}

#[test]
fn icmp_error_about_an_echo_is_translated() {
    let mut h = Harness::default();
    let out = h.out_ok(0, ICMP, 0x4242, SERVER, 0, 0);
    let err = icmp_error_about(&out.frame, 3, 1, [0; 4], ROUTER);
    let back = h.send(PortId::OUTSIDE, err);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    assert!(testkit::checksums_ok(&back.frame));
    let l = back.ip().l4();
    let emb = &back.frame[l + 8..];
    assert_eq!(u16::from_be_bytes([emb[24], emb[25]]), 0x4242);
}

#[test]
fn icmp_errors_with_bad_checksums_are_dropped() {
    let mut h = Harness::default();
    let out = h.out_ok(0, UDP, 5000, SERVER, 9999, 0);
    let mut err = icmp_error_about(&out.frame, 3, 3, [0; 4], SERVER);
    err[14 + 20 + 2] ^= 0x55;
    assert_eq!(h.send(PortId::OUTSIDE, err).action, Action::Drop(DropReason::BadIcmpChecksum));
    // Bad embedded IP header checksum, with the ICMP checksum made right.
    let mut bad = out.frame.clone();
    bad[14 + 10] ^= 0x01;
    let err = icmp_error_about(&bad, 3, 3, [0; 4], SERVER);
    assert_eq!(h.send(PortId::OUTSIDE, err).action, Action::Drop(DropReason::BadIcmpChecksum));
}

#[test]
fn icmp_error_with_no_session_is_dropped() {
    let mut h = Harness::default();
    let sent = h.env_frame(0, UDP, 5000, SERVER, 9999, 0, b"x");
    // Pretend it left as ENI:4444 (no such session).
    let mut fake = sent.clone();
    fake[26..30].copy_from_slice(&ENI.octets());
    fake[34..36].copy_from_slice(&4444u16.to_be_bytes());
    let c = dataplane::checksum::checksum(&{
        let mut hd = fake[14..34].to_vec();
        hd[10] = 0;
        hd[11] = 0;
        hd
    });
    fake[24..26].copy_from_slice(&c.to_be_bytes());
    let err = icmp_error_about(&fake, 3, 3, [0; 4], SERVER);
    assert_eq!(h.send(PortId::OUTSIDE, err).action, Action::Drop(DropReason::IcmpErrorNoSession));
}

#[test]
fn icmp_error_neither_refreshes_nor_deletes_a_session() {
    let mut h = Harness::default();
    let out = h.out_ok(0, UDP, 5000, SERVER, 9999, 0);
    let e = out.src();
    h.advance(Duration::from_secs(200));
    let err = icmp_error_about(&out.frame, 3, 1, [0; 4], ROUTER);
    assert!(h.send(PortId::OUTSIDE, err).forwarded().is_some());
    assert_eq!(h.engine.sessions().len(), 1, "not deleted");
    let f = h.vpc_frame(SERVER, 9999, e.0, e.1, UDP, 0, b"x");
    assert!(h.send(PortId::OUTSIDE, f).forwarded().is_some(), "mapping still works (REQ-12)");
    h.advance(Duration::from_secs(101));
    assert_eq!(h.engine.sessions().len(), 0, "the error did not refresh it");
}

#[test]
fn icmp_error_from_an_environment_is_translated_outbound() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
    let reply = h.vpc_frame(SERVER, 53, e.0, e.1, UDP, 0, b"data");
    let delivered = h.send(PortId::OUTSIDE, reply);
    // The environment answers it with port unreachable.
    let ip = delivered.ip();
    let msg = testkit::icmp_message(3, 3, [0; 4], &delivered.frame[14..ip.end()]);
    let port = h.env_port(0);
    let f = testkit::ipv4_frame(
        testkit::inside_mac(port.0),
        testkit::env_mac(0),
        testkit::env_ip(0),
        SERVER,
        ICMP,
        IpOpts::default(),
        &msg,
    );
    let out = h.send(port, f);
    assert_eq!(out.forwarded(), Some(PortId::OUTSIDE));
    assert!(testkit::checksums_ok(&out.frame));
    assert_eq!(out.ip().src, ENI, "outer source is the ENI address");
    let l = out.ip().l4();
    let emb = &out.frame[l + 8..];
    assert_eq!(&emb[16..20], &ENI.octets(), "embedded destination reverted to the ENI");
    assert_eq!(u16::from_be_bytes([emb[22], emb[23]]), e.1);
}

#[test]
fn inbound_ttl_expiry_answers_from_the_eni_address() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
    let seg = testkit::udp_segment(SERVER, 53, e.0, e.1, b"x");
    let f =
        testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, SERVER, e.0, UDP, IpOpts { ttl: 1, ..IpOpts::default() }, &seg);
    let out = h.send(PortId::OUTSIDE, f);
    assert!(matches!(out.action, Action::Reply { .. }));
    assert_eq!((out.ip().src, out.ip().dst), (ENI, SERVER));
    assert!(testkit::checksums_ok(&out.frame));
}

#[test]
fn reply_larger_than_the_inside_mtu() {
    let mut topo = testkit::Topology::new(1, 1);
    topo.inside[0].mtu = 600;
    let mut h = Harness::new(EngineConfig::default(), topo);
    let e = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
    let seg = testkit::udp_segment(SERVER, 53, e.0, e.1, &[1u8; 800]);
    let f =
        testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, SERVER, e.0, UDP, IpOpts { df: true, ..IpOpts::default() }, &seg);
    let out = h.send(PortId::OUTSIDE, f);
    assert!(matches!(out.action, Action::Reply { .. }));
    let l = out.ip().l4();
    assert_eq!((out.frame[l], out.frame[l + 1]), (3, 4));
    assert_eq!(u16::from_be_bytes([out.frame[l + 6], out.frame[l + 7]]), 600);
}

#[test]
fn the_clock_never_goes_backwards_for_expiry() {
    let mut h = Harness::default();
    h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    h.engine.expire(Instant::ZERO);
    assert_eq!(h.engine.sessions().len(), 1);
}
