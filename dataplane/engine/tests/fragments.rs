//! Fragmented datagrams: translated without reassembly, in any order, within
//! bounded memory.

mod common;

use common::*;
use dataplane::checksum;
use dataplane::counters::DropReason;
use dataplane::flow::UDP;
use dataplane::testkit::{self, IpOpts, OUTSIDE_MAC, SERVER};
use dataplane::wire::{get16, parse_ipv4};
use dataplane::{Action, PortId};
use std::time::Duration;

/// Sends fragments and collects everything that leaves (forwarded now or
/// released later through poll_transmit).
fn send_all(h: &mut Harness, port: PortId, frags: &[Vec<u8>]) -> Vec<(PortId, Vec<u8>)> {
    let mut out = vec![];
    for f in frags {
        let o = h.send(port, f.clone());
        match o.action {
            Action::Forward { port, .. } => out.push((port, o.frame)),
            Action::Consumed => {}
            other => panic!("fragment refused: {other:?}"),
        }
        out.extend(h.drain());
    }
    out
}

fn udp_checksum_ok(frames: &[Vec<u8>]) -> bool {
    let payload = testkit::reassemble(frames).expect("no holes");
    let ip = parse_ipv4(&frames[0], 14).unwrap();
    let ps = checksum::pseudo_header(ip.src, ip.dst, UDP, payload.len() as u16);
    checksum::fold(checksum::sum(ps, &payload)) == 0xffff
}

#[test]
fn outbound_udp_fragments_in_reverse_order_are_translated() {
    let mut h = Harness::default();
    let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let whole = h.env_frame_opts(0, UDP, 5000, SERVER, 9, 0, &data, IpOpts { ident: 77, ..IpOpts::default() });
    let mut frags = testkit::fragment(&whole, 1500);
    assert_eq!(frags.len(), 3);
    frags.reverse();
    let port = h.env_port(0);
    let out = send_all(&mut h, port, &frags);
    assert_eq!(out.len(), 3, "all three fragments leave");
    let frames: Vec<Vec<u8>> = out
        .iter()
        .map(|(p, f)| {
            assert_eq!(*p, PortId::OUTSIDE);
            assert!(testkit::checksums_ok(f), "IP header checksum");
            f.clone()
        })
        .collect();
    let idents: Vec<u16> = frames.iter().map(|f| get16(f, 14 + 4)).collect();
    assert!(idents.iter().all(|&i| i == idents[0]), "one identification for the datagram");
    for f in &frames {
        let ip = parse_ipv4(f, 14).unwrap();
        assert_eq!((ip.src, ip.dst), (ENI, SERVER));
    }
    assert!(udp_checksum_ok(&frames), "UDP checksum over the reassembled datagram");
    let payload = testkit::reassemble(&frames).unwrap();
    assert_eq!(&payload[8..], &data[..]);
    assert_eq!(get16(&payload, 2), 9);
}

#[test]
fn inbound_udp_fragments_in_reverse_order_reach_the_environment() {
    let mut h = Harness::default();
    let e = h.out_ok(0, UDP, 5000, SERVER, 9, 0).src();
    let data = vec![0x5au8; 3000];
    let seg = testkit::udp_segment(SERVER, 9, e.0, e.1, &data);
    let whole =
        testkit::ipv4_frame(OUTSIDE_MAC, SERVER_MAC, SERVER, e.0, UDP, IpOpts { ident: 9, ..IpOpts::default() }, &seg);
    let mut frags = testkit::fragment(&whole, 1500);
    frags.reverse();
    let out = send_all(&mut h, PortId::OUTSIDE, &frags);
    assert_eq!(out.len(), frags.len());
    let frames: Vec<Vec<u8>> = out
        .into_iter()
        .map(|(p, f)| {
            assert_eq!(p, h.env_port(0));
            assert_eq!(&f[0..6], &testkit::env_mac(0));
            f
        })
        .collect();
    assert!(udp_checksum_ok(&frames));
    let payload = testkit::reassemble(&frames).unwrap();
    assert_eq!(get16(&payload, 2), 5000, "destination port restored");
}

#[test]
fn two_environments_with_the_same_ip_id_do_not_collide() {
    let mut h = Harness::default();
    let mut idents = vec![];
    for env in 0..2 {
        let whole =
            h.env_frame_opts(env, UDP, 5000, SERVER, 9, 0, &[1u8; 3000], IpOpts { ident: 1234, ..IpOpts::default() });
        let port = h.env_port(env);
        let out = send_all(&mut h, port, &testkit::fragment(&whole, 1500));
        assert_eq!(out.len(), 3);
        idents.push(get16(&out[0].1, 14 + 4));
    }
    assert_ne!(idents[0], idents[1], "RFC 7857 §10: identifications differ behind one address");
}

#[test]
fn a_flood_of_incomplete_fragments_does_not_stall_other_traffic() {
    let mut h = Harness::default();
    // 20,000 datagrams whose first fragment never comes.
    for id in 0..20_000u32 {
        let whole = h.env_frame_opts(
            0,
            UDP,
            6000,
            SERVER,
            9,
            0,
            &[2u8; 2000],
            IpOpts { ident: id as u16, ..IpOpts::default() },
        );
        let frags = testkit::fragment(&whole, 1500);
        let a = h.send(h.env_port(0), frags[1].clone()).action;
        assert!(matches!(a, Action::Consumed | Action::Drop(DropReason::Fragment)));
    }
    // Unfragmented traffic and a complete fragmented datagram still pass.
    h.out_ok(1, UDP, 5000, SERVER, 9, 0);
    let whole = h.env_frame_opts(1, UDP, 5001, SERVER, 9, 0, &[3u8; 3000], IpOpts { ident: 4242, ..IpOpts::default() });
    let port = h.env_port(1);
    let out = send_all(&mut h, port, &testkit::fragment(&whole, 1500));
    assert_eq!(out.len(), 3);
    // The incomplete ones are given up and counted.
    h.advance(Duration::from_secs(6));
    assert!(h.dropped(DropReason::Fragment) > 0);
}

#[test]
fn a_df0_datagram_over_the_egress_mtu_is_fragmented_in_order() {
    let mut topo = testkit::Topology::new(1, 1);
    topo.outside.mtu = 576;
    let mut h = Harness::new(dataplane::config::EngineConfig::default(), topo);
    let data: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
    let o = IpOpts { options: &[0x94, 0x04, 0, 0, 0x07, 0x03, 0x04, 0], ..IpOpts::default() };
    let f = h.env_frame_opts(0, UDP, 5000, SERVER, 9, 0, &data, o);
    let first = h.send(h.env_port(0), f);
    assert_eq!(first.forwarded(), Some(PortId::OUTSIDE));
    let mut frames = vec![first.frame];
    frames.extend(h.drain().into_iter().map(|(p, f)| {
        assert_eq!(p, PortId::OUTSIDE);
        f
    }));
    assert_eq!(frames.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        let ip = parse_ipv4(f, 14).expect("valid header");
        assert!(ip.total() <= 576);
        assert_eq!(ip.src, ENI);
        assert_eq!(ip.mf, i < 2, "MF on all but the last");
        assert_eq!(ip.hlen(), if i == 0 { 28 } else { 24 }, "only the copied option (router alert) is repeated");
    }
    assert!(udp_checksum_ok(&frames));
    assert_eq!(&testkit::reassemble(&frames).unwrap()[8..], &data[..]);
}

/// Issue 12 item 6: one environment opening a datagram record per first
/// fragment (1,024, the table's size, and never finishing them) must not
/// block another environment's fragmented traffic.
#[test]
fn a_flood_of_first_fragments_does_not_block_another_environment() {
    let mut h = Harness::default();
    for id in 0..1024u32 {
        let o = IpOpts { ident: id as u16, ..IpOpts::default() };
        let whole = h.env_frame_opts(0, UDP, 6000, SERVER, 9, 0, &[2u8; 2000], o);
        let first = testkit::fragment(&whole, 1500).swap_remove(0);
        assert_eq!(h.send(h.env_port(0), first).forwarded(), Some(PortId::OUTSIDE));
    }
    let whole = h.env_frame_opts(1, UDP, 5001, SERVER, 9, 0, &[3u8; 3000], IpOpts { ident: 4242, ..IpOpts::default() });
    let port = h.env_port(1);
    let out = send_all(&mut h, port, &testkit::fragment(&whole, 1500));
    assert_eq!(out.len(), 3);
    let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
    assert!(udp_checksum_ok(&frames));
}

/// Issue 12 item 6: a later fragment that claims another environment's
/// datagram (its source address, identification) but arrives on a
/// different attachment is dropped, not translated into that datagram.
#[test]
fn a_later_fragment_from_another_attachment_is_not_translated() {
    let mut h = Harness::default();
    let (victim, spoofer) = (0, 1);
    assert_ne!(h.env_port(victim), h.env_port(spoofer));
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
    let whole = h.env_frame_opts(victim, UDP, 5000, SERVER, 9, 0, &data, IpOpts { ident: 77, ..IpOpts::default() });
    let frags = testkit::fragment(&whole, 1500);
    let first = h.send(h.env_port(victim), frags[0].clone());
    assert_eq!(first.forwarded(), Some(PortId::OUTSIDE));
    // The same fragment with other bytes, on the spoofer's attachment.
    let mut forged = frags[1].clone();
    forged[0..6].copy_from_slice(&testkit::inside_mac(h.env_port(spoofer).0));
    let n = forged.len();
    forged[n - 100..].fill(0xee);
    let o = h.send(h.env_port(spoofer), forged);
    assert_eq!(o.action, Action::Drop(DropReason::Fragment), "forged fragment translated");
    // The genuine ones still pass and the datagram is intact.
    let mut frames = vec![first.frame];
    let vp = h.env_port(victim);
    frames.extend(send_all(&mut h, vp, &frags[1..]).into_iter().map(|(_, f)| f));
    assert_eq!(frames.len(), 3);
    assert!(udp_checksum_ok(&frames));
    assert_eq!(&testkit::reassemble(&frames).unwrap()[8..], &data[..]);
}

/// Issue 12 item 6: the same forgery before the first fragment arrives
/// (buffered, then released) is dropped too.
#[test]
fn a_buffered_fragment_from_another_attachment_is_not_released_into_the_datagram() {
    let mut h = Harness::default();
    let (victim, spoofer) = (0, 1);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 5) as u8).collect();
    let whole = h.env_frame_opts(victim, UDP, 5000, SERVER, 9, 0, &data, IpOpts { ident: 78, ..IpOpts::default() });
    let frags = testkit::fragment(&whole, 1500);
    let mut forged = frags[2].clone();
    forged[0..6].copy_from_slice(&testkit::inside_mac(h.env_port(spoofer).0));
    let n = forged.len();
    forged[n - 10..].fill(0xee);
    assert_eq!(h.send(h.env_port(spoofer), forged).action, Action::Consumed);
    let before = h.dropped(DropReason::Fragment);
    let vp = h.env_port(victim);
    let out = send_all(&mut h, vp, &frags);
    let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
    assert_eq!(frames.len(), 3, "the forged one is not among them");
    assert!(udp_checksum_ok(&frames));
    assert_eq!(&testkit::reassemble(&frames).unwrap()[8..], &data[..]);
    // Counted at the next timer pass, which is due at once.
    assert!(h.engine.poll_timeout().is_some_and(|t| t <= h.now));
    let now = h.now;
    h.engine.expire(now);
    assert_eq!(h.dropped(DropReason::Fragment), before + 1, "the forged one is counted");
}
