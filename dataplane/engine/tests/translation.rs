//! Translation behaviour through the engine, with byte frames and a virtual
//! clock. Every rewritten frame's checksums are verified by full recompute.

mod common;

use common::*;
use dataplane::arp;
use dataplane::config::{EngineConfig, Filtering};
use dataplane::counters::DropReason;
use dataplane::engine::Event;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::policy::{Rule, RuleProto, RuleSet};
use dataplane::testkit::{self, flags::*, IpOpts, Topology, ROUTER_MAC, SERVER, SERVER2};
use dataplane::{Action, PortId};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn outbound_udp_is_translated_and_reply_restored() {
    let mut h = Harness::default();
    let out = h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    let (src, eport) = out.src();
    assert_eq!(src, ENI);
    assert!((1024..=65535).contains(&eport));
    assert_eq!(out.dst(), (SERVER, 53));
    assert_eq!(out.dst_mac(), SERVER_MAC, "on-link destination's MAC");
    assert_eq!(out.ip().ttl, 63);

    let reply = h.vpc_frame(SERVER, 53, ENI, eport, UDP, 0, b"answer");
    let back = h.send(PortId::OUTSIDE, reply);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    assert!(testkit::checksums_ok(&back.frame));
    assert_eq!(back.dst(), (testkit::env_ip(0), 5000));
    assert_eq!(back.src(), (SERVER, 53));
    assert_eq!(back.dst_mac(), testkit::env_mac(0));
    assert_eq!(&back.frame[6..12], &testkit::inside_mac(h.env_port(0).0));
    let c = h.engine.counters();
    assert_eq!((c.outbound.packets.get(), c.inbound.packets.get()), (1, 1));
    assert_eq!(c.sessions_created[1].get(), 1);
}

#[test]
fn off_link_destination_goes_to_the_router() {
    let mut h = Harness::default();
    let out = h.out_ok(0, TCP, 40000, SERVER2, 443, SYN);
    assert_eq!(out.dst_mac(), ROUTER_MAC);
}

#[test]
fn many_environments_share_one_eni_address_with_distinct_ports() {
    let mut h = Harness::new(EngineConfig::default(), Topology::new(4, 64));
    let mut ports = std::collections::HashSet::new();
    for env in 0..64 {
        let out = h.out_ok(env, UDP, 7000, SERVER, 9, 0);
        assert_eq!(out.src().0, ENI);
        assert!(ports.insert(out.src().1), "no two environments share an ENI port");
    }
}

#[test]
fn endpoint_independent_mapping_keeps_the_port_for_every_destination() {
    let mut h = Harness::default();
    let a = h.out_ok(0, UDP, 5000, SERVER, 1000, 0).src();
    let b = h.out_ok(0, UDP, 5000, SERVER, 2000, 0).src();
    let c = h.out_ok(0, UDP, 5000, SERVER2, 1000, 0).src();
    assert_eq!(a, b);
    assert_eq!(a, c);
    let t = h.out_ok(0, TCP, 5000, SERVER, 1000, SYN).src();
    assert_eq!(t.0, a.0, "paired: same ENI address across protocols");
}

#[test]
fn symmetric_mapping_gives_each_destination_its_own_session() {
    let mut h = Harness::with(EngineConfig::aws());
    let a = h.out_ok(0, UDP, 5000, SERVER, 1000, 0).src();
    let b = h.out_ok(0, UDP, 5000, SERVER, 2000, 0).src();
    assert_eq!(h.engine.sessions().len(), 2);
    assert_eq!(h.engine.sessions().mappings_len(), 0);
    // Filtering is address-and-port dependent: S:3000 cannot reach either.
    let f = h.vpc_frame(SERVER, 3000, ENI, a.1, UDP, 0, b"x");
    assert_eq!(h.send(PortId::OUTSIDE, f).action, Action::Drop(DropReason::NoSession));
    let f = h.vpc_frame(SERVER, 2000, ENI, b.1, UDP, 0, b"x");
    assert_eq!(h.send(PortId::OUTSIDE, f).forwarded(), Some(h.env_port(0)));
}

fn filtering(f: Filtering) -> (Harness, u16) {
    let mut h = Harness::with(EngineConfig { filtering: f, ..EngineConfig::default() });
    let e = h.out_ok(0, UDP, 5000, SERVER, 1000, 0).src().1;
    (h, e)
}

fn inbound_delivered(h: &mut Harness, src: Ipv4Addr, sport: u16, eport: u16) -> bool {
    let f = h.vpc_frame(src, sport, ENI, eport, UDP, 0, b"probe");
    let out = h.send(PortId::OUTSIDE, f);
    if out.forwarded().is_some() {
        assert!(testkit::checksums_ok(&out.frame));
        assert_eq!(out.dst(), (testkit::env_ip(0), 5000));
    }
    out.forwarded().is_some()
}

#[test]
fn endpoint_independent_filtering_admits_any_remote() {
    let (mut h, e) = filtering(Filtering::EndpointIndependent);
    assert!(inbound_delivered(&mut h, SERVER, 1001, e));
    assert!(inbound_delivered(&mut h, SERVER2, 1000, e));
}

#[test]
fn address_dependent_filtering_admits_only_contacted_addresses() {
    let (mut h, e) = filtering(Filtering::AddressDependent);
    assert!(inbound_delivered(&mut h, SERVER, 1001, e));
    assert!(!inbound_delivered(&mut h, SERVER2, 1000, e));
    assert_eq!(h.dropped(DropReason::Filtered), 1);
}

#[test]
fn address_and_port_dependent_filtering_admits_only_contacted_endpoints() {
    let (mut h, e) = filtering(Filtering::AddressAndPortDependent);
    assert!(!inbound_delivered(&mut h, SERVER, 1001, e));
    assert!(!inbound_delivered(&mut h, SERVER2, 1000, e));
    assert!(inbound_delivered(&mut h, SERVER, 1000, e));
}

#[test]
fn unsolicited_inbound_is_dropped_silently_and_counted() {
    let mut h = Harness::default();
    for (proto, fl) in [(UDP, 0), (TCP, SYN)] {
        let f = h.vpc_frame(SERVER, 1234, ENI, 40000, proto, fl, b"");
        assert_eq!(h.send(PortId::OUTSIDE, f).action, Action::Drop(DropReason::NoSession));
    }
    assert_eq!(h.dropped(DropReason::NoSession), 2);
    assert!(h.drain().is_empty(), "no RST, no ICMP");
}

#[test]
fn a_mapping_of_one_protocol_admits_nothing_of_another() {
    let mut h = Harness::default();
    let e = h.out_ok(0, TCP, 5000, SERVER, 80, SYN).src().1;
    let f = h.vpc_frame(SERVER, 80, ENI, e, UDP, 0, b"x");
    assert_eq!(h.send(PortId::OUTSIDE, f).action, Action::Drop(DropReason::NoSession));
}

#[test]
fn spoofed_source_is_dropped() {
    let mut h = Harness::default();
    // Environment 0 sits on port 1; the same frame arriving on port 2 is spoofed.
    let mut f = h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"x");
    f[0..6].copy_from_slice(&testkit::inside_mac(2));
    assert_eq!(h.send(PortId(2), f.clone()).action, Action::Drop(DropReason::Spoofed));
    // An address no environment has.
    let mut g = f.clone();
    g[0..6].copy_from_slice(&testkit::inside_mac(1));
    g[14 + 15] = 250;
    let c = dataplane::checksum::checksum(&{
        let mut hd = g[14..34].to_vec();
        hd[10] = 0;
        hd[11] = 0;
        hd
    });
    g[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(h.send(PortId(1), g).action, Action::Drop(DropReason::Spoofed));
    // Established sessions check the attachment too.
    h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    assert_eq!(h.send(PortId(2), f).action, Action::Drop(DropReason::Spoofed));
    assert_eq!(h.dropped(DropReason::Spoofed), 3);
}

#[test]
fn tcp_needs_a_syn_to_open() {
    let mut h = Harness::default();
    let f = h.env_frame(0, TCP, 5000, SERVER, 80, ACK, b"");
    assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::TcpNotSyn));
}

#[test]
fn icmp_echo_identifier_is_translated() {
    let mut h = Harness::default();
    let out = h.out_ok(0, ICMP, 0x1234, SERVER, 0, 0);
    let id = out.echo_id();
    assert_eq!(out.src().0, ENI);
    let reply = h.vpc_frame(SERVER, 0, ENI, id, ICMP, 0, b"hello");
    let back = h.send(PortId::OUTSIDE, reply);
    assert_eq!(back.forwarded(), Some(h.env_port(0)));
    assert!(testkit::checksums_ok(&back.frame));
    assert_eq!(back.echo_id(), 0x1234);
    // The same identifier to another host keeps the same translated one.
    assert_eq!(h.out_ok(0, ICMP, 0x1234, SERVER2, 0, 0).echo_id(), id);
}

#[test]
fn ping_to_the_gateway_is_answered() {
    let mut h = Harness::default();
    let gw = h.gateway();
    let f = h.env_frame(0, ICMP, 7, gw, 0, 0, b"ping");
    let out = h.send(h.env_port(0), f);
    assert!(matches!(out.action, Action::Reply { .. }));
    assert!(testkit::checksums_ok(&out.frame));
    assert_eq!(out.ip().src, gw);
    assert_eq!(out.ip().dst, testkit::env_ip(0));
    assert_eq!(out.frame[out.ip().l4()], 0);
}

#[test]
fn security_group_blocks_new_flows_and_an_edit_spares_established_ones() {
    let mut topo = Topology::new(1, 2);
    topo.enis[0].egress = Arc::new(RuleSet::new(vec![
        Rule { proto: RuleProto::Tcp, ports: 443..=443, dst: "10.0.0.0/16".parse().unwrap() },
        Rule { proto: RuleProto::Udp, ports: 53..=53, dst: "10.0.0.0/16".parse().unwrap() },
    ]));
    let mut h = Harness::new(EngineConfig::default(), topo.clone());
    h.out_ok(0, TCP, 5000, SERVER, 443, SYN);
    let f = h.env_frame(0, TCP, 5001, SERVER, 80, SYN, b"");
    assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::PolicyDenied));
    assert!(h.drain().is_empty(), "policy drops are silent");
    let f = h.env_frame(0, UDP, 5001, Ipv4Addr::new(192, 0, 2, 1), 53, 0, b"");
    assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::PolicyDenied));

    // Tighten: no more 443. The established flow continues; new ones are refused.
    topo.enis[0].egress = Arc::new(RuleSet::new(vec![Rule {
        proto: RuleProto::Udp,
        ports: 53..=53,
        dst: "10.0.0.0/16".parse().unwrap(),
    }]));
    h.engine.set_bindings(topo.bindings());
    h.out_ok(0, TCP, 5000, SERVER, 443, ACK);
    let f = h.env_frame(0, TCP, 5002, SERVER, 443, SYN, b"");
    assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::PolicyDenied));
    assert_eq!(h.dropped(DropReason::PolicyDenied), 3);
}

#[test]
fn rebinding_to_a_new_eni_moves_new_flows_and_keeps_old_ones() {
    let mut topo = Topology::new(1, 1);
    let mut h = Harness::new(EngineConfig::default(), topo.clone());
    let old = h.out_ok(0, TCP, 5000, SERVER, 443, SYN).src();
    topo.enis[0].id = 2;
    topo.enis[0].addrs = vec![Ipv4Addr::new(10, 0, 0, 11)];
    topo.envs[0].eni = 2;
    h.engine.set_bindings(topo.bindings());
    let grat = h.drain();
    assert_eq!(grat.len(), 1, "gratuitous ARP for the new address");
    assert_eq!(dataplane::arp::parse(&grat[0].1).unwrap().sender_ip, Ipv4Addr::new(10, 0, 0, 11));
    assert_eq!(h.out_ok(0, TCP, 5000, SERVER, 443, ACK).src(), old, "established flow keeps its ENI");
    let reply = h.vpc_frame(SERVER, 443, old.0, old.1, TCP, ACK, b"");
    assert_eq!(h.send(PortId::OUTSIDE, reply).forwarded(), Some(PortId(1)), "old address still answers while draining");
    assert_eq!(h.out_ok(0, TCP, 5001, SERVER, 443, SYN).src().0, Ipv4Addr::new(10, 0, 0, 11));
    assert!(h.engine.port_use().iter().any(|p| p.addr == ENI && !p.bound));
}

#[test]
fn hairpinning_delivers_with_the_senders_mapping_as_source() {
    let mut h = Harness::default();
    // B (env 1) opens a mapping; A (env 0) sends to B's ENI endpoint.
    let eb = h.out_ok(1, UDP, 6000, SERVER, 9, 0).src();
    let ea = h.out_ok(0, UDP, 5000, SERVER, 9, 0).src();
    let f = h.env_frame(0, UDP, 5000, eb.0, eb.1, 0, b"hairpin");
    let out = h.send(h.env_port(0), f);
    assert_eq!(out.forwarded(), Some(h.env_port(1)));
    assert!(testkit::checksums_ok(&out.frame));
    assert_eq!(out.src(), ea, "B sees A's external endpoint");
    assert_eq!(out.dst(), (testkit::env_ip(1), 6000));
    assert_eq!(out.ip().ttl, 63, "one router hop");
    assert_eq!(h.engine.counters().hairpinned.get(), 1);
}

#[test]
fn port_exhaustion_drops_counts_answers_and_never_evicts() {
    let cfg = EngineConfig { port_range: 2000..=2003, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, Topology::new(1, 8));
    let mut got = vec![];
    for env in 0..4 {
        got.push(h.out_ok(env, UDP, 5000, SERVER, 9, 0).src().1);
    }
    got.sort();
    assert_eq!(got, [2000, 2001, 2002, 2003]);
    let f = h.env_frame(4, UDP, 5000, SERVER, 9, 0, b"x");
    let out = h.send(h.env_port(4), f);
    assert!(matches!(out.action, Action::Reply { .. }), "ICMP 3/13 to the sender");
    let ip = out.ip();
    assert_eq!((out.frame[ip.l4()], out.frame[ip.l4() + 1]), (3, 13));
    assert!(testkit::checksums_ok(&out.frame));
    assert_eq!(h.dropped(DropReason::PortsExhausted), 1);
    // The high-water mark (65,000) is above this 4-port pool, so it fires
    // at the pool's size, then the exhaustion.
    assert_eq!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: UDP, in_use: 4 }));
    assert_eq!(h.engine.poll_event(), Some(Event::Exhausted { addr: ENI, proto: UDP }));
    // Existing mappings still work.
    for env in 0..4 {
        h.out_ok(env, UDP, 5000, SERVER, 9, 0);
    }
    // Different protocol has its own pool.
    h.out_ok(4, TCP, 5000, SERVER, 9, SYN);
}

#[test]
fn no_two_environments_ever_share_an_external_endpoint_under_pressure() {
    let cfg = EngineConfig { port_range: 3000..=3099, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, Topology::new(2, 200));
    let mut owner = std::collections::HashMap::new();
    for env in 0..200 {
        let f = h.env_frame(env, UDP, 4000, SERVER, 9, 0, b"x");
        let out = h.send(h.env_port(env), f);
        if out.forwarded().is_some() {
            assert!(owner.insert(out.src(), env).is_none());
        }
    }
    assert_eq!(owner.len(), 100);
}

#[test]
fn per_environment_quota() {
    let cfg = EngineConfig { env_port_quota: 3, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for p in 0..3 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    let f = h.env_frame(0, UDP, 5003, SERVER, 9, 0, b"x");
    assert!(matches!(h.send(h.env_port(0), f).action, Action::Reply { .. }));
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 1);
    // Another environment is unaffected; reusing a mapping needs no new port.
    h.out_ok(1, UDP, 5000, SERVER, 9, 0);
    h.out_ok(0, UDP, 5000, SERVER2, 9, 0);
}

#[test]
fn a_freed_port_is_quarantined_for_120_seconds() {
    let cfg = EngineConfig { port_range: 2000..=2001, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    let p0 = h.out_ok(0, UDP, 5000, SERVER, 9, 0).src().1;
    h.advance(Duration::from_secs(301));
    assert_eq!(h.engine.sessions().len(), 0, "UDP session expired after 300 s");
    // One port left: the other one is free, the freed one is quarantined.
    let p1 = h.out_ok(1, UDP, 5000, SERVER, 9, 0).src().1;
    assert_ne!(p0, p1);
    let f = h.env_frame(2, UDP, 5000, SERVER, 9, 0, b"x");
    assert!(!matches!(h.send(h.env_port(2), f).action, Action::Forward { .. }));
    h.advance(Duration::from_secs(121));
    assert_eq!(h.out_ok(2, UDP, 5000, SERVER, 9, 0).src().1, p0);
}

#[test]
fn session_table_full_is_a_counted_drop() {
    let cfg = EngineConfig { max_sessions: 4, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for p in 0..4 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    // Refused at once: ICMP administratively prohibited back to the sender.
    let f = h.env_frame(0, UDP, 5010, SERVER, 9, 0, b"x");
    let out = h.send(h.env_port(0), f);
    assert!(matches!(out.action, Action::Reply { .. }), "{:?}", out.action);
    assert_eq!(h.dropped(DropReason::TableFull), 1);
    // Without ICMP on exhaustion (the aws profile) it is a silent drop.
    let cfg = EngineConfig { max_sessions: 4, icmp_on_exhaustion: false, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for p in 0..4 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    let f = h.env_frame(0, UDP, 5010, SERVER, 9, 0, b"x");
    assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::TableFull));
    let pu = h.engine.port_use();
    assert_eq!(pu[0].in_use[1], 4, "the refused flow's port went back");
}

/// Under address-and-port-dependent mapping (the aws profile) a port is
/// counted as held (a session per port) when it is chosen: a flow the full
/// table refuses gives that count back, as under endpoint-independent
/// mapping above.
#[test]
fn a_full_table_gives_the_refused_flows_port_back_under_symmetric_mapping() {
    let cfg = EngineConfig { max_sessions: 4, ..EngineConfig::aws() };
    let mut h = Harness::with(cfg);
    for p in 0..4 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    for p in 0..3 {
        let f = h.env_frame(0, UDP, 5010 + p, SERVER, 9, 0, b"x");
        assert_eq!(h.send(h.env_port(0), f).action, Action::Drop(DropReason::TableFull));
    }
    let pu = h.engine.port_use();
    assert_eq!((pu[0].in_use[1], pu[0].closing[1]), (4, 0), "the refused flows' ports went back");
    // Once the sessions expire (350 s idle in this profile), nothing is
    // left held.
    h.advance(Duration::from_secs(351));
    assert_eq!(h.engine.sessions().len(), 0);
    let pu = h.engine.port_use();
    assert_eq!((pu[0].in_use[1], pu[0].closing[1]), (0, 0));
}

#[test]
fn high_water_mark_raises_one_event() {
    let cfg = EngineConfig { high_water: 3, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for p in 0..5 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    assert_eq!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: UDP, in_use: 3 }));
    assert_eq!(h.engine.poll_event(), None);
}

#[test]
fn a_second_eni_address_takes_new_mappings_past_the_high_water_mark() {
    let mut topo = Topology::new(1, 4);
    topo.enis[0].addrs.push(Ipv4Addr::new(10, 0, 0, 12));
    let cfg = EngineConfig { high_water: 2, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, topo);
    let a = h.out_ok(0, UDP, 1, SERVER, 9, 0).src().0;
    let b = h.out_ok(1, UDP, 1, SERVER, 9, 0).src().0;
    let c = h.out_ok(2, UDP, 1, SERVER, 9, 0).src().0;
    assert_eq!((a, b), (ENI, ENI));
    assert_eq!(c, Ipv4Addr::new(10, 0, 0, 12));
    // Paired: environment 0 keeps its address for new mappings.
    assert_eq!(h.out_ok(0, UDP, 2, SERVER, 9, 0).src().0, ENI);
}

#[test]
fn ttl_expiry_is_answered_with_time_exceeded() {
    let mut h = Harness::default();
    let o = IpOpts { ttl: 1, ..IpOpts::default() };
    let f = h.env_frame_opts(0, UDP, 5000, SERVER, 33434, 0, b"trace", o);
    let out = h.send(h.env_port(0), f.clone());
    assert!(matches!(out.action, Action::Reply { .. }));
    assert!(testkit::checksums_ok(&out.frame));
    let ip = out.ip();
    assert_eq!((ip.src, ip.dst), (h.gateway(), testkit::env_ip(0)));
    assert_eq!((out.frame[ip.l4()], out.frame[ip.l4() + 1]), (11, 0));
    assert_eq!(&out.frame[ip.l4() + 8..], &f[14..], "quotes the datagram");
    assert_eq!(out.dst_mac(), testkit::env_mac(0));
    assert_eq!(h.dropped(DropReason::TtlExceeded), 1);
    assert_eq!(h.engine.sessions().len(), 0);
}

#[test]
fn df_datagram_over_the_outside_mtu_gets_fragmentation_needed() {
    let mut topo = Topology::new(1, 1);
    topo.outside.mtu = 1000;
    let mut h = Harness::new(EngineConfig::default(), topo);
    let o = IpOpts { df: true, ..IpOpts::default() };
    let f = h.env_frame_opts(0, UDP, 5000, SERVER, 9, 0, &[7u8; 1200], o);
    let out = h.send(h.env_port(0), f);
    assert!(matches!(out.action, Action::Reply { .. }));
    assert!(testkit::checksums_ok(&out.frame));
    let ip = out.ip();
    let l = ip.l4();
    assert_eq!((out.frame[l], out.frame[l + 1]), (3, 4));
    assert_eq!(u16::from_be_bytes([out.frame[l + 6], out.frame[l + 7]]), 1000, "next-hop MTU");
    assert!(out.frame.len() <= 14 + 576);
    assert_eq!(h.dropped(DropReason::MtuExceeded), 1);
}

#[test]
fn ip_options_pass_through() {
    let mut h = Harness::default();
    let o = IpOpts { options: &[1, 1, 1, 1], ..IpOpts::default() };
    let f = h.env_frame_opts(0, UDP, 5000, SERVER, 9, 0, b"opt", o);
    let out = h.send(h.env_port(0), f);
    assert_eq!(out.forwarded(), Some(PortId::OUTSIDE));
    assert!(testkit::checksums_ok(&out.frame));
    assert_eq!(out.ip().hlen(), 24);
    assert_eq!(&out.frame[34..38], &[1, 1, 1, 1]);
    assert_eq!(out.src().0, ENI);
}

#[test]
fn bad_headers_are_dropped_by_reason() {
    let mut h = Harness::default();
    let good = h.env_frame(0, UDP, 5000, SERVER, 9, 0, b"x");
    let port = h.env_port(0);
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![];
    cases.push((good[..10].to_vec(), DropReason::Truncated));
    let mut f = good.clone();
    f[14] = 0x55;
    cases.push((f, DropReason::BadIpVersion));
    let mut f = good.clone();
    f[14] = 0x43;
    cases.push((f, DropReason::BadIpHeaderLength));
    let mut f = good.clone();
    f[16] = 0xff;
    cases.push((f, DropReason::BadIpTotalLength));
    let mut f = good.clone();
    f[22] = 0x33;
    cases.push((f, DropReason::BadIpChecksum));
    let mut f = good.clone();
    f[12] = 0x86;
    f[13] = 0xdd;
    cases.push((f, DropReason::UnsupportedEthertype));
    let mut f = good.clone();
    f[0] = 0x04;
    cases.push((f, DropReason::NotForUs));
    let f = testkit::ipv4_frame(
        testkit::inside_mac(port.0),
        testkit::env_mac(0),
        testkit::env_ip(0),
        SERVER,
        47,
        IpOpts::default(),
        &[0; 8],
    );
    cases.push((f, DropReason::UnsupportedProtocol));
    let f = testkit::ipv4_frame(
        testkit::inside_mac(port.0),
        testkit::env_mac(0),
        testkit::env_ip(0),
        SERVER,
        UDP,
        IpOpts::default(),
        &[0; 4],
    );
    cases.push((f, DropReason::BadL4Header));
    let f = testkit::ipv4_frame(
        testkit::inside_mac(port.0),
        testkit::env_mac(0),
        testkit::env_ip(0),
        Ipv4Addr::new(224, 0, 0, 5),
        UDP,
        IpOpts::default(),
        &[0; 8],
    );
    cases.push((f, DropReason::BadAddress));
    for (f, why) in cases {
        assert_eq!(h.send(port, f).action, Action::Drop(why), "{why:?}");
        assert_eq!(h.dropped(why), 1, "{why:?} counted");
    }
}

#[test]
fn arp_is_answered_for_the_gateway_inside_and_the_eni_outside() {
    let mut h = Harness::default();
    let mut f = vec![0u8; 64];
    let n = dataplane::arp::write_request(&mut f, testkit::env_mac(0), testkit::env_ip(0), h.gateway());
    f.truncate(n);
    let out = h.send(h.env_port(0), f);
    assert!(matches!(out.action, Action::Reply { .. }));
    let m = dataplane::arp::parse(&out.frame).unwrap();
    assert_eq!(m.sender_ip, h.gateway());
    assert_eq!(m.sender_mac, testkit::inside_mac(h.env_port(0).0));
    assert_eq!(m.target_ip, testkit::env_ip(0));
    // Not for an address that is not ours.
    let mut f = vec![0u8; 64];
    let n = dataplane::arp::write_request(&mut f, ROUTER_MAC, testkit::ROUTER, Ipv4Addr::new(10, 0, 0, 77));
    f.truncate(n);
    assert!(matches!(h.send(PortId::OUTSIDE, f).action, Action::Drop(_)));
}

#[test]
fn unresolved_next_hop_queues_then_releases_after_arp() {
    let mut h = Harness::default();
    let dst = Ipv4Addr::new(10, 0, 0, 200);
    let f = h.env_frame(0, UDP, 5000, dst, 9, 0, b"queued");
    assert_eq!(h.send_raw(h.env_port(0), f).action, Action::Consumed);
    let tx = h.drain();
    assert_eq!(tx.len(), 1, "one ARP request");
    let req = dataplane::arp::parse(&tx[0].1).unwrap();
    assert_eq!(req.target_ip, dst);
    assert_eq!(req.sender_ip, ENI);
    // The host answers.
    let mac = [2, 0, 0, 0, 0, 200];
    let mut r = vec![0u8; 64];
    let n = dataplane::arp::write_request(&mut r, mac, dst, ENI);
    r.truncate(n);
    h.send(PortId::OUTSIDE, r);
    let tx = h.drain();
    assert_eq!(tx.len(), 1, "the queued frame");
    assert_eq!(&tx[0].1[0..6], &mac);
    assert!(testkit::checksums_ok(&tx[0].1));
}

#[test]
fn port_use_is_published_for_other_threads() {
    let mut h = Harness::default();
    for p in 0..3 {
        h.out_ok(0, UDP, 5000 + p, SERVER, 9, 0);
    }
    h.out_ok(0, TCP, 5000, SERVER, 9, SYN);
    let c = h.engine.counters();
    let seen = std::thread::spawn(move || c.port_use()).join().unwrap();
    assert_eq!(seen, vec![(ENI, [1, 3, 0])]);
    h.advance(Duration::from_secs(241));
    assert_eq!(h.engine.counters().port_use(), vec![(ENI, [0, 3, 0])], "SYN_SENT expired after 240 s");
    h.advance(Duration::from_secs(60));
    assert_eq!(h.engine.counters().port_use(), vec![(ENI, [0, 0, 0])], "UDP after 300 s");
}

#[test]
fn a_high_water_mark_above_the_pool_fires_at_seven_eighths_of_it() {
    let cfg = EngineConfig { port_range: 2000..=2031, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, Topology::new(1, 40));
    while h.engine.poll_event().is_some() {}
    for env in 0..27 {
        h.out_ok(env, UDP, 5000, SERVER, 9, 0);
    }
    assert_eq!(h.engine.poll_event(), None, "27 of 32 ports");
    h.out_ok(27, UDP, 5000, SERVER, 9, 0);
    assert_eq!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: UDP, in_use: 28 }));
}

#[test]
fn a_full_address_spills_to_the_next_even_below_the_high_water_mark() {
    // Two ports per address, default high-water mark (65,000, far above the
    // pool): the third mapping must go to the second address.
    let mut topo = Topology::new(1, 4);
    topo.enis[0].addrs.push(Ipv4Addr::new(10, 0, 0, 12));
    let cfg = EngineConfig { port_range: 2000..=2001, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, topo);
    let a = h.out_ok(0, UDP, 1, SERVER, 9, 0).src().0;
    let b = h.out_ok(1, UDP, 1, SERVER, 9, 0).src().0;
    let c = h.out_ok(2, UDP, 1, SERVER, 9, 0).src().0;
    assert_eq!((a, b), (ENI, ENI));
    assert_eq!(c, Ipv4Addr::new(10, 0, 0, 12));
}

#[test]
fn an_arp_probe_finds_an_address_in_use_and_passes_a_free_one() {
    let mut h = Harness::default();
    let taken = Ipv4Addr::new(10, 0, 0, 50);
    let free = Ipv4Addr::new(10, 0, 0, 51);
    h.engine.probe(taken);
    h.engine.probe(free);
    let sent = h.drain();
    let probes: Vec<_> = sent.iter().filter_map(|(_, f)| arp::parse(f)).collect();
    assert_eq!(probes.len(), 2);
    assert!(probes.iter().all(|m| m.sender_ip.is_unspecified()), "RFC 5227 probes");
    assert_eq!(probes[0].target_ip, taken);
    // The host that has .50 answers the probe.
    let mut r = vec![0u8; 64];
    let n = arp::write_reply(&mut r, &probes[0], [2, 0, 0, 0, 0, 0x50]);
    r.truncate(n);
    // A reply carries the owner's address as its sender.
    assert_eq!(arp::parse(&r).unwrap().sender_ip, taken);
    h.send_raw(PortId::OUTSIDE, r);
    assert_eq!(h.engine.probe_result(taken), Some(true));
    assert_eq!(h.engine.probe_result(free), Some(false));
    assert_eq!(h.engine.probe_result(free), None, "the watch ended");
}

#[test]
fn a_new_flow_without_an_active_eni_is_dropped_and_reported() {
    let mut topo = Topology::new(1, 2);
    topo.enis.push(dataplane::bindings::Eni { id: 0, addrs: vec![], egress: Arc::new(RuleSet::allow_all()) });
    topo.envs[1].eni = 0;
    let mut h = Harness::new(EngineConfig::default(), topo);
    while h.engine.poll_event().is_some() {}
    let f = h.env_frame(1, UDP, 5000, SERVER, 9, 0, b"x");
    assert_eq!(h.send(h.env_port(1), f).action, Action::Drop(DropReason::NoEni));
    assert_eq!(h.engine.poll_event(), Some(Event::NoEni { env: testkit::env_ip(1) }));
}

#[test]
fn the_vpc_router_is_resolved_before_the_first_flow_needs_it() {
    let topo = Topology::new(1, 1);
    let mut e = dataplane::Engine::new(EngineConfig::default(), topo.bindings()).unwrap();
    let mut buf = vec![0u8; 2048];
    let mut asked = vec![];
    while let Some((port, n)) = e.poll_transmit(dataplane::time::Instant::from_secs(1), &mut buf) {
        if let Some(m) = arp::parse(&buf[..n]) {
            asked.push((port, m.sender_ip, m.target_ip));
        }
    }
    assert!(asked.contains(&(PortId::OUTSIDE, ENI, testkit::ROUTER)), "{asked:?}");
}

/// Issue 12 item 5: an environment whose function has no ENI floods new
/// flows (each one a `NoEni` event) while nobody drains the queue; a
/// high-water crossing on another environment's address must still reach
/// the control plane, now or on a later flow once the queue has room.
#[test]
fn a_flood_of_no_eni_events_does_not_lose_a_high_water_event() {
    let mut topo = Topology::new(1, 200);
    topo.enis.push(dataplane::bindings::Eni { id: 0, addrs: vec![], egress: Arc::new(RuleSet::allow_all()) });
    for env in &mut topo.envs[3..] {
        env.eni = 0;
    }
    let cfg = EngineConfig { high_water: 4, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, topo);
    while h.engine.poll_event().is_some() {}
    for env in 3..200 {
        for sport in 0..3 {
            let f = h.env_frame(env, UDP, 10_000 + sport, SERVER, 9, 0, b"x");
            assert_eq!(h.send(h.env_port(env), f).action, Action::Drop(DropReason::NoEni));
        }
    }
    for sport in 0..4 {
        h.out_ok(0, UDP, 5000 + sport, SERVER, 9, 0);
    }
    let mut seen = false;
    while let Some(e) = h.engine.poll_event() {
        seen |= matches!(e, Event::HighWater { addr: ENI, proto: UDP, .. });
    }
    if !seen {
        // The queue was full: the next flow over the mark raises it again.
        h.out_ok(1, UDP, 5000, SERVER, 9, 0);
        while let Some(e) = h.engine.poll_event() {
            seen |= matches!(e, Event::HighWater { addr: ENI, proto: UDP, .. });
        }
    }
    assert!(seen, "the high-water event was lost");
    // NoEni events took at most their share of the queue, one per environment.
    for env in 3..200 {
        let f = h.env_frame(env, UDP, 20_000, SERVER, 9, 0, b"x");
        h.send(h.env_port(env), f);
    }
    let mut no_eni = std::collections::HashSet::new();
    while let Some(e) = h.engine.poll_event() {
        if let Event::NoEni { env } = e {
            assert!(no_eni.insert(env), "one event per environment");
        }
    }
    assert_eq!(no_eni.len(), dataplane::engine::EVENTS_NO_ENI);
}

/// Issue 12 item 7: under address-and-port-dependent mapping (the `aws`
/// profile), a new flow towards a destination that holds every port of the
/// address costs a bounded number of session-table lookups, not a scan of
/// the whole range (20,000 ports here; 64,512 by default).
#[test]
fn choosing_a_port_towards_a_full_destination_is_bounded() {
    let cfg = EngineConfig { port_range: 10_000..=29_999, env_port_quota: 65_535, ..EngineConfig::aws() };
    let mut h = Harness::new(cfg, Topology::new(1, 4));
    let mut opened = 0;
    for i in 0..21_000u32 {
        let env = i % 4;
        let f = h.env_frame(env, UDP, 1024 + (i / 4) as u16, SERVER, 5432, 0, b"q");
        if h.send(h.env_port(env), f).forwarded() == Some(PortId::OUTSIDE) {
            opened += 1;
        }
    }
    assert!(opened > 19_000, "{opened} flows opened");
    // Every further new flow towards the same server: bounded work.
    for i in 0..10u16 {
        let before = h.engine.port_probes();
        let f = h.env_frame(0, UDP, 60_000 + i, SERVER, 5432, 0, b"q");
        h.send(h.env_port(0), f);
        let spent = h.engine.port_probes() - before;
        assert!(spent <= 2 * dataplane::engine::PROBE_LIMIT, "{spent} lookups for one new flow");
    }
}
