//! Hairpins (an environment reaching another one through its ENI
//! endpoint), within one engine and across two engines that split the port
//! range the way a sharded gateway's workers do.

mod common;

use common::{Harness, ENI};
use dataplane::config::EngineConfig;
use dataplane::flow::{ICMP, UDP};
use dataplane::testkit::{self, IpOpts, Topology, SERVER};
use dataplane::wire::{self, get16, ETH_LEN};
use dataplane::{Action, PortId};

/// Two engines over the same bindings: `a` owns ports 1024..=30000, `b`
/// the rest. Attachment 2 (environments 1 and 3) has a 1,000-byte MTU.
fn pair() -> (Harness, Harness) {
    let topo = || {
        let mut t = Topology::new(2, 4);
        t.inside[1].mtu = 1000;
        t
    };
    let a = Harness::new(EngineConfig { port_range: 1024..=30000, ..EngineConfig::default() }, topo());
    let b = Harness::new(EngineConfig { port_range: 30001..=65535, seed: 7, ..EngineConfig::default() }, topo());
    (a, b)
}

/// Issue 12 item 9: a hairpin into another engine's ports is one router
/// hop, like one within an engine: TTL goes down by one, not two.
#[test]
fn a_hairpin_across_engines_decrements_ttl_once() {
    let (mut a, mut b) = pair();
    let eb = b.out_ok(1, UDP, 6000, SERVER, 9, 0).src();
    assert!(eb.1 > 30000);
    a.out_ok(0, UDP, 5000, SERVER, 9, 0);
    let f = a.env_frame(0, UDP, 5000, eb.0, eb.1, 0, b"hairpin");
    let ttl = wire::parse_ipv4(&f, ETH_LEN).unwrap().ttl;
    let out = a.send(a.env_port(0), f);
    assert!(matches!(out.action, Action::Redirect { .. }), "{:?}", out.action);
    let there = b.send(PortId::OUTSIDE, out.frame);
    assert_eq!(there.forwarded(), Some(b.env_port(1)));
    assert!(testkit::checksums_ok(&there.frame));
    assert_eq!(there.dst(), (testkit::env_ip(1), 6000));
    assert_eq!(there.ip().ttl, ttl - 1, "one router hop");
}

/// The ICMP error "fragmentation needed" a hairpin earns, checked as the
/// sender must see it: addressed to it, quoting what it sent.
fn assert_frag_needed_for_env0(out: &common::Out, h: &Harness) {
    assert_eq!(out.forwarded(), Some(h.env_port(0)), "{:?}", out.action);
    assert!(testkit::checksums_ok(&out.frame));
    let ip = out.ip();
    assert_eq!((ip.proto, ip.dst), (ICMP, testkit::env_ip(0)), "to the sender, not the ENI address");
    let l4 = ip.l4();
    assert_eq!((out.frame[l4], out.frame[l4 + 1]), (3, 4));
    assert_eq!(get16(&out.frame, l4 + 6), 1000, "next-hop MTU");
    let e = l4 + 8;
    let quoted_src =
        std::net::Ipv4Addr::new(out.frame[e + 12], out.frame[e + 13], out.frame[e + 14], out.frame[e + 15]);
    let hl = usize::from(out.frame[e] & 0x0f) * 4;
    assert_eq!((quoted_src, get16(&out.frame, e + hl)), (testkit::env_ip(0), 5000), "quotes what the sender sent");
}

/// Issue 12 item 9: a DF datagram hairpinned to an environment behind a
/// smaller MTU gets "fragmentation needed" back to its sender.
#[test]
fn a_hairpinned_frag_needed_reaches_the_sender() {
    let (mut a, _) = pair();
    let e1 = a.out_ok(1, UDP, 6000, SERVER, 9, 0).src();
    a.out_ok(0, UDP, 5000, SERVER, 9, 0);
    let o = IpOpts { df: true, ..IpOpts::default() };
    let f = a.env_frame_opts(0, UDP, 5000, e1.0, e1.1, 0, &[1u8; 1200], o);
    let out = a.send(a.env_port(0), f);
    assert_frag_needed_for_env0(&out, &a);
}

/// The same across engines: the error goes back to the sender's engine.
#[test]
fn a_hairpinned_frag_needed_across_engines_reaches_the_sender() {
    let (mut a, mut b) = pair();
    let eb = b.out_ok(1, UDP, 6000, SERVER, 9, 0).src();
    a.out_ok(0, UDP, 5000, SERVER, 9, 0);
    let o = IpOpts { df: true, ..IpOpts::default() };
    let f = a.env_frame_opts(0, UDP, 5000, eb.0, eb.1, 0, &[1u8; 1200], o);
    let out = a.send(a.env_port(0), f);
    assert!(matches!(out.action, Action::Redirect { .. }), "{:?}", out.action);
    let there = b.send(PortId::OUTSIDE, out.frame);
    assert!(matches!(there.action, Action::Redirect { .. }), "back to the sender's engine: {:?}", there.action);
    assert_eq!(there.ip().dst, ENI);
    let back = a.send(PortId::OUTSIDE, there.frame);
    assert_frag_needed_for_env0(&back, &a);
}
