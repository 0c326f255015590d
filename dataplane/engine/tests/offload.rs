//! Frames that carry offload state (virtio-net header: partial checksums,
//! GSO superframes) and hairpins into another worker's port range.

mod common;

use common::{Harness, ENI};
use dataplane::checksum::{fold, pseudo_header, sum};
use dataplane::config::EngineConfig;
use dataplane::flow::{TCP, UDP};
use dataplane::testkit::{self, IpOpts, Topology, OUTSIDE_MAC, SERVER};
use dataplane::wire::{self, get16, put16, ETH_LEN};
use dataplane::{Action, Offload, PortId};

/// Turns the transport checksum of an IPv4 frame into a partial one, as
/// Linux hands it over with `CHECKSUM_PARTIAL`: the folded pseudo-header
/// sum, not complemented. Returns the checksum field's offset.
fn make_partial(frame: &mut [u8]) -> usize {
    let ip = wire::parse_ipv4(frame, ETH_LEN).unwrap();
    let at = ip.l4() + if ip.proto == TCP { 16 } else { 6 };
    let len = (ip.end() - ip.l4()) as u16;
    put16(frame, at, fold(pseudo_header(ip.src, ip.dst, ip.proto, len)));
    at
}

/// Completes a partial checksum the way the next device does.
fn complete(frame: &mut [u8], at: usize) {
    let ip = wire::parse_ipv4(frame, ETH_LEN).unwrap();
    let c = !fold(sum(0, &frame[ip.l4()..ip.end()]));
    put16(frame, at, c);
}

fn run(h: &mut Harness, port: PortId, frame: &[u8], offload: Offload) -> (Action, Vec<u8>) {
    let mut buf = frame.to_vec();
    buf.resize(frame.len().max(2048), 0);
    let action = h.engine.process_offload(h.now, port, &mut buf, frame.len(), offload);
    if let Action::Forward { len, .. } | Action::Reply { len } | Action::Redirect { len } = action {
        buf.truncate(len);
    }
    (action, buf)
}

#[test]
fn partial_checksums_stay_partial_and_complete_to_valid_both_ways() {
    for proto in [TCP, UDP] {
        let mut h = Harness::default();
        // Open the flow with a plain frame (a TCP SYN) so the ARP is resolved.
        let first = h.out_ok(0, proto, 40000, SERVER, 5201, 0x02);
        let (eni_ip, eni_port) = first.src();
        let mut f = h.env_frame(0, proto, 40000, SERVER, 5201, 0x10, &[7u8; 1000]);
        let at = make_partial(&mut f);
        let port = h.env_port(0);
        let (action, mut out) = run(&mut h, port, &f, Offload { csum_partial: true, gso_size: 0 });
        assert_eq!(action, Action::Forward { port: PortId::OUTSIDE, len: f.len() }, "{proto}");
        let ip = wire::parse_ipv4(&out, ETH_LEN).unwrap();
        assert_eq!((ip.src, get16(&out, ip.l4())), (eni_ip, eni_port));
        // Still partial: the field is the new pseudo-header sum...
        let len = (ip.end() - ip.l4()) as u16;
        assert_eq!(get16(&out, at), fold(pseudo_header(ip.src, ip.dst, proto, len)));
        // ...and completing it gives a valid checksum over the new ports.
        complete(&mut out, at);
        assert!(testkit::checksums_ok(&out));

        // The reply, partial too, back to the environment.
        let mut r = h.vpc_frame(SERVER, 5201, eni_ip, eni_port, proto, 0x10, &[9u8; 700]);
        let at = make_partial(&mut r);
        let (action, mut back) = run(&mut h, PortId::OUTSIDE, &r, Offload { csum_partial: true, gso_size: 0 });
        assert!(matches!(action, Action::Forward { .. }), "{action:?}");
        let ip = wire::parse_ipv4(&back, ETH_LEN).unwrap();
        assert_eq!((ip.dst, get16(&back, ip.l4() + 2)), (testkit::env_ip(0), 40000));
        complete(&mut back, at);
        assert!(testkit::checksums_ok(&back));
    }
}

#[test]
fn a_gso_superframe_passes_whole_where_its_segments_fit_the_mtu() {
    let mut h = Harness::default();
    h.out_ok(0, TCP, 40000, SERVER, 5201, 0x02);
    let o = IpOpts { df: true, ..IpOpts::default() };
    // 20 segments of 1448 bytes: 28,960 bytes of payload in one frame.
    let mut f = h.env_frame_opts(0, TCP, 40000, SERVER, 5201, 0x10, &[3u8; 1448 * 20], o);
    let at = make_partial(&mut f);
    let gso = Offload { csum_partial: true, gso_size: 1448 };
    let mut buf = f.clone();
    buf.resize(f.len() + 600, 0);
    let action = h.engine.process_offload(h.now, h.env_port(0), &mut buf, f.len(), gso);
    assert_eq!(action, Action::Forward { port: PortId::OUTSIDE, len: f.len() });
    buf.truncate(f.len());
    complete(&mut buf, at);
    assert!(testkit::checksums_ok(&buf));
    // Without GSO the same DF frame is too big for the 1500-byte outside.
    let mut plain = h.env_frame_opts(0, TCP, 40000, SERVER, 5201, 0x10, &[3u8; 1448 * 20], o);
    let len = plain.len();
    plain.resize(len + 600, 0);
    let action = h.engine.process(h.now, h.env_port(0), &mut plain, len);
    assert!(matches!(action, Action::Reply { .. }), "fragmentation needed: {action:?}");
    // A GSO frame whose segments exceed the MTU is refused the same way.
    let big = Offload { csum_partial: true, gso_size: 1600 };
    let (action, _) = run(&mut h, PortId(1), &f, big);
    assert!(matches!(action, Action::Reply { .. }), "{action:?}");
}

#[test]
fn a_hairpin_into_another_workers_ports_is_redirected_translated() {
    // This engine owns ports 1024..=30000; ports above belong to another.
    let cfg = EngineConfig { port_range: 1024..=30000, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, Topology::new(2, 4));
    let ea = h.out_ok(0, UDP, 5000, SERVER, 9, 0).src();
    let f = h.env_frame(0, UDP, 5000, ENI, 40000, 0, b"to a mapping elsewhere");
    let (action, out) = run(&mut h, PortId(1), &f, Offload::default());
    assert!(matches!(action, Action::Redirect { .. }), "{action:?}");
    assert!(testkit::checksums_ok(&out));
    let ip = wire::parse_ipv4(&out, ETH_LEN).unwrap();
    assert_eq!((ip.src, get16(&out, ip.l4())), ea, "leaves with the sender's mapping");
    assert_eq!((ip.dst, get16(&out, ip.l4() + 2)), (ENI, 40000));
    assert_eq!(&out[0..6], &OUTSIDE_MAC, "addressed to the outside port, so the owner accepts it");
    // A hairpin inside its own range is handled here (and dropped: no
    // mapping on port 20000).
    let f = h.env_frame(0, UDP, 5000, ENI, 20000, 0, b"x");
    let (action, _) = run(&mut h, PortId(1), &f, Offload::default());
    assert!(matches!(action, Action::Drop(_)), "{action:?}");
}

#[test]
fn a_partial_frame_queued_for_arp_leaves_with_a_complete_checksum() {
    // A router whose MAC the engine has not learned yet.
    let mut topo = Topology::new(1, 2);
    topo.outside.router = Some(std::net::Ipv4Addr::new(10, 0, 0, 99));
    let mut h = Harness::new(EngineConfig::default(), topo);
    let dst = std::net::Ipv4Addr::new(192, 0, 2, 7);
    let mut f = h.env_frame(0, TCP, 40000, dst, 443, 0x02, b"");
    make_partial(&mut f);
    let (action, _) = run(&mut h, PortId(1), &f, Offload { csum_partial: true, gso_size: 0 });
    assert_eq!(action, Action::Consumed, "queued for ARP");
    // The router answers; the queued SYN comes out complete.
    let mut r = vec![0u8; 64];
    let n = dataplane::arp::write_request(&mut r, [2, 0, 0, 0, 0, 0x63], std::net::Ipv4Addr::new(10, 0, 0, 99), ENI);
    r.truncate(n);
    h.send_raw(PortId::OUTSIDE, r);
    let out: Vec<_> = h.drain().into_iter().filter(|(_, f)| wire::ethertype(f) == wire::ETHERTYPE_IPV4).collect();
    assert_eq!(out.len(), 1);
    assert!(testkit::checksums_ok(&out[0].1), "checksum completed before queueing");
    // A GSO superframe cannot wait for ARP.
    let mut g = h.env_frame(1, TCP, 40001, std::net::Ipv4Addr::new(192, 0, 2, 8), 443, 0x02, &[0; 3000]);
    make_partial(&mut g);
    let mut topo = Topology::new(1, 2);
    topo.outside.router = Some(std::net::Ipv4Addr::new(10, 0, 0, 98));
    let mut h2 = Harness::new(EngineConfig::default(), topo);
    let (action, _) = run(&mut h2, PortId(1), &g, Offload { csum_partial: true, gso_size: 1448 });
    assert_eq!(action, Action::Drop(dataplane::counters::DropReason::ArpUnresolved));
}

/// Issue 12 item 4: a partial-checksum datagram that must be fragmented
/// (9000-byte MTU inside, 1500 outside) leaves with a checksum valid over
/// the whole datagram. The device completes the first fragment's checksum
/// only if the engine says the frame is still partial.
#[test]
fn a_partial_datagram_fragmented_on_the_way_out_has_a_valid_checksum() {
    let mut topo = Topology::new(1, 1);
    topo.inside[0].mtu = 9000;
    let mut h = Harness::new(EngineConfig::default(), topo);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let mut f = h.env_frame(0, UDP, 40000, SERVER, 5201, 0, &data);
    let at = make_partial(&mut f);
    let port = h.env_port(0);
    let mut buf = f.clone();
    buf.resize(9100, 0);
    let action = h.engine.process_offload(h.now, port, &mut buf, f.len(), Offload { csum_partial: true, gso_size: 0 });
    let Action::Forward { port: PortId::OUTSIDE, len } = action else { panic!("{action:?}") };
    buf.truncate(len);
    if h.engine.forwarded_offload().csum_partial {
        complete(&mut buf, at);
    }
    let mut frames = vec![buf];
    frames.extend(h.drain().into_iter().map(|(_, f)| f));
    assert_eq!(frames.len(), 3, "3,008 bytes of UDP in 1,500-byte fragments");
    for f in &frames {
        assert!(wire::parse_ipv4(f, ETH_LEN).unwrap().total() <= 1500);
    }
    let seg = testkit::reassemble(&frames).unwrap();
    assert_eq!(&seg[8..], &data[..]);
    let ip = wire::parse_ipv4(&frames[0], ETH_LEN).unwrap();
    let ok = fold(sum(pseudo_header(ip.src, ip.dst, UDP, seg.len() as u16), &seg)) == 0xffff;
    assert!(ok, "UDP checksum over the reassembled datagram");
}
