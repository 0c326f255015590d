//! Property tests of the engine as a whole: translation round trips,
//! table/port/counter invariants under random operation sequences, and
//! robustness against arbitrary and mutated frames.

mod common;

use common::*;
use dataplane::config::{EngineConfig, Filtering, Mapping as MappingMode};
use dataplane::flow::{proto_index, Endpoint, FlowKey, ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, Topology, GATEWAY, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER, SERVER2};
use dataplane::wire::{self, put16, ETH_LEN};
use dataplane::{Action, PortId};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Proptest settings: `cases` cases (or `PROPTEST_CASES` when set, for a
/// longer run), no regression files written into the source tree (a
/// failure is reported with its minimal input).
fn config(cases: u32) -> ProptestConfig {
    let d = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { d.cases } else { cases };
    ProptestConfig { cases, failure_persistence: None, ..d }
}

/// Extra on-link VPC hosts the engine learns at start, with their MACs.
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
const HOST_A_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x14];
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const HOST_B_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfd];

/// Destinations: on-link (their own MAC) and off-link (the router's MAC).
const DESTS: [(Ipv4Addr, [u8; 6]); 6] = [
    (SERVER, SERVER_MAC),
    (HOST_A, HOST_A_MAC),
    (HOST_B, HOST_B_MAC),
    (SERVER2, ROUTER_MAC),
    (Ipv4Addr::new(10, 1, 2, 3), ROUTER_MAC),
    (Ipv4Addr::new(192, 168, 7, 7), ROUTER_MAC),
];

/// IP option blocks (each a multiple of 4 bytes).
const OPTIONS: [&[u8]; 5] = [
    &[],
    &[1, 1, 1, 1],
    // Router alert (copied).
    &[0x94, 4, 0, 0],
    // Record route with two empty slots, then end of list.
    &[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    // Forty bytes of NOPs ending with end of list.
    &[
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 0,
    ],
];

fn small_config() -> EngineConfig {
    EngineConfig { max_sessions: 1024, ..EngineConfig::default() }
}

/// A harness whose engine also knows the extra on-link hosts.
fn harness(cfg: EngineConfig, topo: Topology) -> Harness {
    let mut h = Harness::new(cfg, topo);
    h.learn(HOST_A, HOST_A_MAC);
    h.learn(HOST_B, HOST_B_MAC);
    h
}

/// A transport segment from `src` to `dst`: TCP (with `flags`), UDP, or
/// ICMP echo (request when `request`, with the source port as identifier;
/// else a reply with the destination port as identifier).
fn segment(proto: u8, src: Endpoint, dst: Endpoint, flags: u8, request: bool, data: &[u8]) -> Vec<u8> {
    match proto {
        TCP => testkit::tcp_segment(src.ip, src.port, dst.ip, dst.port, flags, data),
        UDP => testkit::udp_segment(src.ip, src.port, dst.ip, dst.port, data),
        _ => testkit::echo(request, if request { src.port } else { dst.port }, 7, data),
    }
}

/// Header length of a transport protocol as the builders write it.
fn l4_header_len(proto: u8) -> usize {
    match proto {
        TCP => 20,
        _ => 8,
    }
}

/// Byte ranges of the frame a translation may change: MACs, TTL, IP
/// checksum, the rewritten address, the rewritten port (or echo
/// identifier) and the transport checksum.
fn mutable_ranges(frame: &[u8], proto: u8, outbound: bool) -> Vec<std::ops::Range<usize>> {
    let ip = wire::parse_ipv4(frame, ETH_LEN).expect("valid frame");
    let (o, l) = (ip.off, ip.l4());
    let addr = if outbound { o + 12..o + 16 } else { o + 16..o + 20 };
    let (port, csum) = match proto {
        TCP => (if outbound { 0 } else { 2 }, 16),
        UDP => (if outbound { 0 } else { 2 }, 6),
        _ => (4, 2),
    };
    vec![0..12, o + 8..o + 9, o + 10..o + 12, addr, l + port..l + port + 2, l + csum..l + csum + 2]
}

/// Asserts `after` equals `before` outside `ranges`.
fn same_except(before: &[u8], after: &[u8], ranges: &[std::ops::Range<usize>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(before.len(), after.len(), "frame length changed");
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if !ranges.iter().any(|r| r.contains(&i)) {
            prop_assert_eq!(a, b, "byte {} changed", i);
        }
    }
    Ok(())
}

// ----- 1. out and back ----------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn out_and_back_restores_the_original(
        env in 0u32..8,
        proto in prop::sample::select(vec![TCP, UDP, ICMP]),
        sport in any::<u16>(),
        dest in 0..DESTS.len(),
        dport in any::<u16>(),
        payload in prop::collection::vec(any::<u8>(), 0..200),
        reply_payload in prop::collection::vec(any::<u8>(), 0..200),
        opts in 0..OPTIONS.len(),
        reply_opts in 0..OPTIONS.len(),
        ttl in 2u8..=255,
        ident in any::<u16>(),
        df in any::<bool>(),
    ) {
        let mut h = harness(small_config(), Topology::new(3, 8));
        let (dst, dst_mac) = DESTS[dest];
        let dport = if proto == ICMP { 0 } else { dport };
        let src = testkit::env_ip(env);
        let port = h.env_port(env);
        let seg = segment(proto, Endpoint::new(src, sport), Endpoint::new(dst, dport), SYN, true, &payload);
        let o = IpOpts { ttl, ident, df, options: OPTIONS[opts], ..IpOpts::default() };
        let frame = testkit::ipv4_frame(testkit::inside_mac(port.0), testkit::env_mac(env), src, dst, proto, o, &seg);

        let out = h.send(port, frame.clone());
        prop_assert_eq!(out.forwarded(), Some(PortId::OUTSIDE), "outbound forwarded: {:?}", out.action);
        prop_assert!(testkit::checksums_ok(&out.frame), "outbound checksums");
        let ip = out.ip();
        prop_assert_eq!(ip.src, ENI);
        prop_assert_eq!(ip.dst, dst);
        prop_assert_eq!(ip.ttl, ttl - 1);
        prop_assert_eq!(out.dst_mac(), dst_mac, "next hop's MAC");
        prop_assert_eq!(&out.frame[6..12], &OUTSIDE_MAC[..]);
        same_except(&frame, &out.frame, &mutable_ranges(&frame, proto, true))?;
        let eport = if proto == ICMP { out.echo_id() } else { out.src().1 };

        // The destination answers the translated endpoint.
        let flags = SYN | ACK;
        let rseg = segment(proto, Endpoint::new(dst, dport), Endpoint::new(ENI, eport), flags, false, &reply_payload);
        let ro = IpOpts { options: OPTIONS[reply_opts], ..IpOpts::default() };
        let reply = testkit::ipv4_frame(OUTSIDE_MAC, dst_mac, dst, ENI, proto, ro, &rseg);
        let back = h.send(PortId::OUTSIDE, reply.clone());
        prop_assert_eq!(back.forwarded(), Some(port), "reply forwarded to the attachment: {:?}", back.action);
        prop_assert!(testkit::checksums_ok(&back.frame), "reply checksums");
        let bip = back.ip();
        prop_assert_eq!(bip.dst, src);
        prop_assert_eq!(bip.src, dst);
        if proto == ICMP {
            prop_assert_eq!(back.echo_id(), sport);
        } else {
            prop_assert_eq!(back.dst(), (src, sport));
            prop_assert_eq!(back.src(), (dst, dport));
        }
        prop_assert_eq!(back.dst_mac(), testkit::env_mac(env));
        prop_assert_eq!(&back.frame[6..12], &testkit::inside_mac(port.0)[..]);
        let data = bip.l4() + l4_header_len(proto);
        prop_assert_eq!(&back.frame[data..bip.end()], &reply_payload[..], "payload intact");
        same_except(&reply, &back.frame, &mutable_ranges(&reply, proto, false))?;
    }
}

// ----- 2. invariants under random operations ------------------------------

/// Destinations of the operation sequences.
const SEQ_DESTS: [Ipv4Addr; 3] = [SERVER, SERVER2, HOST_A];
const TCP_FLAGS: [u8; 6] = [SYN, SYN, ACK, FIN | ACK, RST, SYN | ACK];

#[derive(Clone, Debug)]
enum Op {
    /// A packet from an environment.
    Out { env: u32, proto: u8, sport: u16, dst: usize, dport: u16, flags: u8 },
    /// A reply from the remote of a flow seen going out, to its ENI endpoint.
    Reply { pick: Index, flags: u8 },
    /// A packet from some VPC endpoint to the ENI endpoint of a flow seen
    /// going out (admitted or not by the filtering).
    Unsolicited { pick: Index, src: usize, sport: u16, flags: u8 },
    /// The clock moves on (no expiry call).
    Advance(u64),
    /// `expire(now)`.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let proto = prop::sample::select(vec![TCP, UDP, ICMP]);
    let flags = prop::sample::select(TCP_FLAGS.to_vec());
    prop_oneof![
        6 => (0u32..8, proto, 1000u16..1024, 0..SEQ_DESTS.len(), prop::sample::select(vec![53u16, 80, 443]), flags.clone())
            .prop_map(|(env, proto, sport, dst, dport, flags)| Op::Out { env, proto, sport, dst, dport, flags }),
        3 => (any::<Index>(), flags.clone()).prop_map(|(pick, flags)| Op::Reply { pick, flags }),
        2 => (any::<Index>(), 0..SEQ_DESTS.len(), prop::sample::select(vec![53u16, 80, 9999]), flags)
            .prop_map(|(pick, src, sport, flags)| Op::Unsolicited { pick, src, sport, flags }),
        2 => (0u64..=400).prop_map(Op::Advance),
        2 => Just(Op::Expire),
    ]
}

/// A flow seen leaving: (proto, remote, ENI endpoint).
type Seen = (u8, Endpoint, Endpoint);

fn run_op(h: &mut Harness, seen: &mut Vec<Seen>, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Out { env, proto, sport, dst, dport, flags } => {
            let dst = SEQ_DESTS[dst];
            let dport = if proto == ICMP { 0 } else { dport };
            let f = h.env_frame(env, proto, sport, dst, dport, flags, b"x");
            let out = h.send(h.env_port(env), f);
            match out.action {
                Action::Forward { port, .. } => {
                    prop_assert_eq!(port, PortId::OUTSIDE);
                    prop_assert!(testkit::checksums_ok(&out.frame));
                    let ip = out.ip();
                    let eport = if proto == ICMP { out.echo_id() } else { out.src().1 };
                    let eni = Endpoint::new(ip.src, eport);
                    prop_assert!(h.engine.config().port_range.contains(&eport), "ENI port {} in range", eport);
                    let remote = Endpoint::new(dst, dport);
                    // The session it went through maps it as forwarded.
                    let key = FlowKey { proto, local: Endpoint::new(testkit::env_ip(env), sport), remote };
                    let sid = h.engine.sessions().find_inside(&key);
                    prop_assert!(sid.is_some(), "forwarded without a session");
                    prop_assert_eq!(h.engine.sessions().get(sid.unwrap()).eni, eni);
                    if !seen.contains(&(proto, remote, eni)) {
                        seen.push((proto, remote, eni));
                    }
                }
                Action::Reply { .. } => prop_assert!(testkit::checksums_ok(&out.frame), "generated ICMP checksums"),
                Action::Redirect { .. } => prop_assert!(false, "one engine owns every port"),
                Action::Consumed | Action::Drop(_) => {}
            }
        }
        Op::Reply { pick, flags } | Op::Unsolicited { pick, flags, .. } => {
            if seen.is_empty() {
                return Ok(());
            }
            let (proto, mut remote, eni) = seen[pick.index(seen.len())];
            if let Op::Unsolicited { src, sport, .. } = *op {
                remote = Endpoint::new(SEQ_DESTS[src], if proto == ICMP { 0 } else { sport });
            }
            let seg = segment(
                proto,
                Endpoint::new(remote.ip, remote.port),
                Endpoint::new(eni.ip, eni.port),
                flags,
                false,
                b"y",
            );
            let f = testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, remote.ip, eni.ip, proto, IpOpts::default(), &seg);
            let back = h.send(PortId::OUTSIDE, f);
            if let Action::Forward { port, .. } = back.action {
                prop_assert!(testkit::checksums_ok(&back.frame));
                let key = FlowKey { proto, local: eni, remote };
                let sid = h.engine.sessions().find_outside(&key);
                prop_assert!(sid.is_some(), "forwarded inbound without a session");
                let s = *h.engine.sessions().get(sid.unwrap());
                prop_assert_eq!(port, s.port);
                let ip = back.ip();
                let dport = if proto == ICMP { back.echo_id() } else { back.dst().1 };
                prop_assert_eq!(Endpoint::new(ip.dst, dport), s.inside, "delivered to the session's environment");
            }
        }
        Op::Advance(s) => h.now = h.now + Duration::from_secs(s),
        Op::Expire => h.engine.expire(h.now),
    }
    Ok(())
}

/// The table, port and counter invariants.
fn check_invariants(h: &Harness) -> Result<(), TestCaseError> {
    let t = h.engine.sessions();
    let mode = h.engine.config().mapping;
    let mut outside = HashSet::new();
    let mut inside = HashSet::new();
    let mut per_proto = [0u64; 3];
    let mut sessions_per_addr: HashMap<(Ipv4Addr, usize), u32> = HashMap::new();
    let mut live_per_addr: HashMap<(Ipv4Addr, usize), u32> = HashMap::new();
    let mut mapping_live: HashMap<u32, u32> = HashMap::new();
    let mut mapping_ids: HashMap<u32, u32> = HashMap::new();
    let mut count = 0usize;
    let mut err = None;
    t.for_each(|id, s| {
        count += 1;
        if !outside.insert((s.proto, s.eni, s.remote)) {
            err.get_or_insert(format!("two sessions share the outside key of session {id}: {s:?}"));
        }
        if !inside.insert((s.proto, s.inside, s.remote)) {
            err.get_or_insert(format!("two sessions share the inside key of session {id}: {s:?}"));
        }
        per_proto[proto_index(s.proto)] += 1;
        *sessions_per_addr.entry((s.eni.ip, proto_index(s.proto))).or_default() += 1;
        if !s.recyclable() {
            *live_per_addr.entry((s.eni.ip, proto_index(s.proto))).or_default() += 1;
        }
        if mode == MappingMode::EndpointIndependent {
            *mapping_ids.entry(s.mapping).or_default() += 1;
            if !s.recyclable() {
                *mapping_live.entry(s.mapping).or_default() += 1;
            }
            if s.mapping == dataplane::session::NIL {
                err.get_or_insert(format!("session {id} without a mapping: {s:?}"));
            } else {
                let m = t.mapping(s.mapping);
                if m.eni != s.eni || m.inside != s.inside || m.proto != s.proto || m.port != s.port {
                    err.get_or_insert(format!("session {id} {s:?} disagrees with its mapping {m:?}"));
                }
            }
        } else if s.mapping != dataplane::session::NIL {
            err.get_or_insert(format!("session {id} has a mapping under symmetric mapping"));
        }
    });
    if let Some(e) = err {
        return Err(TestCaseError::fail(e));
    }
    prop_assert_eq!(count, t.len(), "len() counts live sessions");

    // Ports held (live or recyclable) and held live, per (address, protocol).
    let mut expected: HashMap<(Ipv4Addr, usize), u32> = HashMap::new();
    let mut expected_live: HashMap<(Ipv4Addr, usize), u32> = HashMap::new();
    match mode {
        MappingMode::EndpointIndependent => {
            prop_assert_eq!(mapping_ids.len(), t.mappings_len(), "every live mapping has a session");
            let mut eni_eps = HashSet::new();
            let mut inside_eps = HashSet::new();
            for (&id, &n) in &mapping_ids {
                let m = t.mapping(id);
                prop_assert_eq!(m.sessions, n, "mapping {:?} counts its sessions", m);
                let live = mapping_live.get(&id).copied().unwrap_or(0);
                prop_assert_eq!(m.live, live, "mapping {:?} counts its live sessions", m);
                prop_assert!(eni_eps.insert((m.proto, m.eni)), "two mappings share ENI endpoint {:?}", m);
                prop_assert!(inside_eps.insert((m.proto, m.inside)), "two mappings share inside endpoint {:?}", m);
                *expected.entry((m.eni.ip, proto_index(m.proto))).or_default() += 1;
                if live > 0 {
                    *expected_live.entry((m.eni.ip, proto_index(m.proto))).or_default() += 1;
                }
            }
        }
        MappingMode::AddressAndPortDependent => {
            prop_assert_eq!(t.mappings_len(), 0);
            expected = sessions_per_addr;
            expected_live = live_per_addr;
        }
    }
    let uses = h.engine.port_use();
    for u in &uses {
        for pi in 0..3 {
            let want = expected.get(&(u.addr, pi)).copied().unwrap_or(0);
            let live = expected_live.get(&(u.addr, pi)).copied().unwrap_or(0);
            prop_assert_eq!(u.in_use[pi], live, "ports held live on {} proto index {}", u.addr, pi);
            prop_assert_eq!(u.in_use[pi] + u.closing[pi], want, "ports held on {} proto index {}", u.addr, pi);
            prop_assert!(want <= u.capacity || mode == MappingMode::AddressAndPortDependent);
        }
    }
    for &(addr, pi) in expected.keys() {
        prop_assert!(uses.iter().any(|u| u.addr == addr), "{} (proto index {}) in port_use()", addr, pi);
    }

    // Counters.
    let c = h.engine.counters();
    for (pi, &live) in per_proto.iter().enumerate() {
        let (made, gone) = (c.sessions_created[pi].get(), c.sessions_expired[pi].get());
        prop_assert_eq!(made.checked_sub(gone), Some(live), "created - expired == live, proto index {}", pi);
    }
    Ok(())
}

fn run_sequence(cfg: EngineConfig, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = harness(cfg, Topology::new(2, 8));
    let mut seen = vec![];
    check_invariants(&h)?;
    for (i, op) in ops.iter().enumerate() {
        run_op(&mut h, &mut seen, op).map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        check_invariants(&h).map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn invariants_hold_under_endpoint_independent_mapping(
        ops in prop::collection::vec(op(), 1..120),
        port_end in prop::sample::select(vec![1026u16, 1030, 1100]),
        max_sessions in prop::sample::select(vec![8usize, 24, 96]),
        quotas in prop::sample::select(vec![(16_384u32, 65_536u32), (2, 4)]),
        preserve in any::<bool>(),
        filtering in prop::sample::select(vec![
            Filtering::EndpointIndependent,
            Filtering::AddressDependent,
            Filtering::AddressAndPortDependent,
        ]),
    ) {
        let cfg = EngineConfig {
            port_range: 1024..=port_end,
            max_sessions,
            env_port_quota: quotas.0,
            env_session_quota: quotas.1,
            port_preservation: preserve,
            filtering,
            ..EngineConfig::default()
        };
        run_sequence(cfg, &ops)?;
    }

    #[test]
    fn invariants_hold_under_symmetric_mapping(
        ops in prop::collection::vec(op(), 1..120),
        port_end in prop::sample::select(vec![1026u16, 1030, 1100]),
        max_sessions in prop::sample::select(vec![8usize, 24, 96]),
        quotas in prop::sample::select(vec![(16_384u32, 65_536u32), (2, 4)]),
    ) {
        let cfg = EngineConfig {
            port_range: 1024..=port_end,
            max_sessions,
            env_port_quota: quotas.0,
            env_session_quota: quotas.1,
            ..EngineConfig::aws()
        };
        run_sequence(cfg, &ops)?;
    }
}

// ----- 3. arbitrary and mutated frames ------------------------------------

/// An engine with traffic in flight and a set of valid frames around it:
/// outbound and inbound packets of live flows, ICMP errors both ways,
/// fragments both ways, TTL 1, oversized DF, ARP, echo to the gateway.
struct World {
    h: Harness,
    bases: Vec<(PortId, Vec<u8>)>,
    /// Frames the engine answers with an ICMP error (TTL 1, DF and larger
    /// than the attachment's MTU, new flows once ports run out).
    errors: Vec<(PortId, Vec<u8>)>,
}

fn world() -> World {
    let mut topo = Topology::new(2, 8);
    // Attachment 2 has a small MTU: inbound frames to it get fragmented or
    // answered with fragmentation needed.
    topo.inside[1].mtu = 576;
    // A small port range so that new flows soon exhaust it (ICMP 3/13).
    let cfg = EngineConfig { max_sessions: 64, port_range: 1024..=1031, ..EngineConfig::default() };
    let mut h = harness(cfg, topo);
    let mut bases = vec![];
    let mut errors = vec![];
    let flows = [(0u32, UDP, SERVER), (1, TCP, SERVER2), (2, ICMP, SERVER), (3, UDP, HOST_A), (5, TCP, SERVER)];
    for (env, proto, dst) in flows {
        let port = h.env_port(env);
        let sport = 5000 + env as u16;
        let dport = if proto == ICMP { 0 } else { 53 };
        let data = vec![0x5a; 40];
        let f = h.env_frame(env, proto, sport, dst, dport, SYN, &data);
        bases.push((port, f.clone()));
        let out = h.send(port, f);
        assert_eq!(out.forwarded(), Some(PortId::OUTSIDE), "world setup: {:?}", out.action);
        let eport = if proto == ICMP { out.echo_id() } else { out.src().1 };
        let seg =
            segment(proto, Endpoint::new(dst, dport), Endpoint::new(ENI, eport), SYN | ACK, false, &vec![0xa5; 700]);
        let reply = testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, dst, ENI, proto, IpOpts::default(), &seg);
        bases.push((PortId::OUTSIDE, reply.clone()));
        let df = testkit::ipv4_frame(
            OUTSIDE_MAC,
            ROUTER_MAC,
            dst,
            ENI,
            proto,
            IpOpts { df: true, ..IpOpts::default() },
            &seg,
        );
        bases.push((PortId::OUTSIDE, df.clone()));
        errors.push((PortId::OUTSIDE, df));
        // Fragments of the reply, and of a large outbound datagram.
        for frag in testkit::fragment(&reply, 300) {
            bases.push((PortId::OUTSIDE, frag));
        }
        let big = h.env_frame(env, proto, sport, dst, dport, ACK, &vec![0x33; 900]);
        for frag in testkit::fragment(&big, 400) {
            bases.push((port, frag));
        }
        // TTL 1 both ways.
        let o = IpOpts { ttl: 1, ..IpOpts::default() };
        errors.push((port, h.env_frame_opts(env, proto, sport, dst, dport, SYN, &data, o)));
        errors.push((PortId::OUTSIDE, testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, dst, ENI, proto, o, &seg)));
        bases.extend(errors[errors.len() - 2..].iter().cloned());
        // The router reports the outbound packet unreachable.
        let oip = out.ip();
        let quote = &out.frame[oip.off..oip.end().min(oip.off + oip.hlen + 8)];
        let msg = testkit::icmp_message(3, 3, [0; 4], quote);
        bases.push((
            PortId::OUTSIDE,
            testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, ROUTER, ENI, ICMP, IpOpts::default(), &msg),
        ));
        let msg = testkit::icmp_message(11, 0, [0; 4], &out.frame[oip.off..oip.end()]);
        bases.push((
            PortId::OUTSIDE,
            testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, ROUTER, ENI, ICMP, IpOpts::default(), &msg),
        ));
        // The environment reports the inbound packet unreachable.
        // A transport header claiming more than the datagram holds.
        let mut small = testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, dst, ENI, proto, IpOpts::default(), &seg[..60]);
        testkit::fix_checksums(&mut small);
        let back = h.send(PortId::OUTSIDE, reply);
        if back.forwarded().is_some() {
            let bip = back.ip();
            let msg = testkit::icmp_message(3, 3, [0; 4], &back.frame[bip.off..bip.off + bip.hlen + 8]);
            let src = testkit::env_ip(env);
            let e = testkit::ipv4_frame(
                testkit::inside_mac(port.0),
                testkit::env_mac(env),
                src,
                dst,
                ICMP,
                IpOpts::default(),
                &msg,
            );
            bases.push((port, e));
        }
        bases.push((PortId::OUTSIDE, small));
    }
    // New flows: the port range runs out (ICMP 3/13 once it has).
    for env in 0..8 {
        for proto in [TCP, UDP, ICMP] {
            let f = h.env_frame(env, proto, 6000 + env as u16, SERVER, 7, SYN, b"new flow");
            bases.push((h.env_port(env), f.clone()));
            errors.push((h.env_port(env), f));
        }
    }
    // Hairpin: an environment to the ENI address.
    bases.push((PortId(1), h.env_frame(0, UDP, 5000, ENI, 1024, 0, b"hairpin")));
    // Echo to the gateway.
    let e = testkit::echo(true, 9, 1, b"ping");
    let src = testkit::env_ip(0);
    bases.push((
        PortId(1),
        testkit::ipv4_frame(testkit::inside_mac(1), testkit::env_mac(0), src, GATEWAY, ICMP, IpOpts::default(), &e),
    ));
    // ARP: a VPC host asks for the ENI address, an environment for its gateway.
    let mut a = vec![0u8; 64];
    let n = dataplane::arp::write_request(&mut a, smoltcp::wire::EthernetAddress(ROUTER_MAC), ROUTER, ENI);
    bases.push((PortId::OUTSIDE, a[..n].to_vec()));
    let mut a = vec![0u8; 64];
    let mac = smoltcp::wire::EthernetAddress(testkit::env_mac(0));
    let n = dataplane::arp::write_request(&mut a, mac, testkit::env_ip(0), GATEWAY);
    bases.push((PortId(1), a[..n].to_vec()));
    h.drain();
    World { h, bases, errors }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    Append(Vec<u8>),
    /// Sets the TTL (so ICMP time exceeded is generated).
    Ttl(u8),
    /// Sets an IP header byte (version/IHL, lengths, flags, protocol...).
    Header(Index, u8),
    /// Sets the IP total length (small values: datagrams shorter than
    /// their transport header, or than an ICMP error's quote).
    TotalLen(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        1 => (0u8..3).prop_map(Mutation::Ttl),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Header(i, b)),
        1 => (0u16..64).prop_map(Mutation::TotalLen),
    ]
}

fn apply(f: &mut Vec<u8>, m: &Mutation) {
    let n = f.len();
    match m {
        Mutation::Flip(i, b) if n > 0 => f[i.index(n)] ^= 1 << b,
        Mutation::Set(i, v) if n > 0 => f[i.index(n)] = *v,
        Mutation::Insert(i, v) => f.insert(i.index(n + 1), *v),
        Mutation::Remove(i) if n > 0 => {
            f.remove(i.index(n));
        }
        Mutation::Truncate(i) => f.truncate(i.index(n + 1)),
        Mutation::Append(v) => f.extend_from_slice(v),
        Mutation::Ttl(t) if n > ETH_LEN + 8 => f[ETH_LEN + 8] = *t,
        Mutation::Header(i, v) if n >= ETH_LEN + 20 => f[ETH_LEN + i.index(20)] = *v,
        Mutation::TotalLen(t) if n >= ETH_LEN + 20 => put16(f, ETH_LEN + 2, *t),
        _ => {}
    }
}

/// What a frame handed out by the engine must satisfy: within the buffer,
/// and, when every input had valid checksums, valid checksums if IPv4.
fn check_emitted(frame: &[u8], inputs_valid: bool, what: &str) -> Result<(), TestCaseError> {
    if inputs_valid && frame.len() >= ETH_LEN && wire::ethertype(frame) == wire::ETHERTYPE_IPV4 {
        prop_assert!(testkit::checksums_ok(frame), "{} has bad checksums: {:02x?}", what, frame);
    }
    Ok(())
}

/// Feeds `frame` to the engine in a buffer of `buf_len` bytes (at least the
/// frame's length when `None`) and checks the result.
fn feed(
    h: &mut Harness,
    port: PortId,
    frame: &[u8],
    buf_len: Option<usize>,
    all_valid: &mut bool,
) -> Result<(), TestCaseError> {
    let valid = testkit::checksums_ok(frame);
    *all_valid &= valid || frame.len() < ETH_LEN || wire::ethertype(frame) != wire::ETHERTYPE_IPV4;
    let mut buf = frame.to_vec();
    buf.resize(buf_len.unwrap_or(2048.max(frame.len())), 0);
    let action = h.engine.process(h.now, port, &mut buf, frame.len());
    if let Action::Forward { len, .. } | Action::Reply { len } = action {
        prop_assert!(len <= buf.len(), "{:?} longer than the buffer ({})", action, buf.len());
        prop_assert!(len >= ETH_LEN, "{:?} shorter than an Ethernet header", action);
        // A quote cut short by a small buffer may end inside the quoted
        // header, which `checksums_ok` cannot verify: check full buffers.
        if buf.len() >= 590 {
            check_emitted(&buf[..len], valid, "output")?;
        }
    }
    let mut out = vec![0u8; 2048];
    while let Some((_, n)) = h.engine.poll_transmit(h.now, &mut out) {
        prop_assert!(n <= out.len());
        check_emitted(&out[..n], *all_valid, "transmitted frame")?;
    }
    Ok(())
}

const PORTS: [PortId; 4] = [PortId::OUTSIDE, PortId(1), PortId(2), PortId(9)];

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn random_bytes_never_panic(
        frames in prop::collection::vec((0..PORTS.len(), prop::collection::vec(any::<u8>(), 0..1600), 0u8..3), 1..6),
    ) {
        let mut w = world();
        let mut all_valid = true;
        for (port, mut f, shape) in frames {
            let port = PORTS[port];
            // Shape 1: our MAC and IPv4 ethertype; shape 2: also a plausible
            // IPv4 header with correct checksums.
            if shape >= 1 && f.len() >= ETH_LEN {
                let mac = if port == PortId::OUTSIDE { OUTSIDE_MAC } else { testkit::inside_mac(port.0) };
                f[..6].copy_from_slice(&mac);
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                if shape == 2 && f.len() >= ETH_LEN + 20 {
                    f[ETH_LEN] = 0x45;
                    let total = (f.len() - ETH_LEN) as u16;
                    put16(&mut f, ETH_LEN + 2, total);
                    testkit::fix_checksums(&mut f);
                }
            }
            feed(&mut w.h, port, &f, None, &mut all_valid)?;
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_keep_checksums(
        steps in prop::collection::vec(
            (any::<Index>(), prop::collection::vec(mutation(), 0..4), any::<bool>(), prop::option::weighted(0.1, 0..PORTS.len()), 0u64..3),
            1..8,
        ),
    ) {
        let mut w = world();
        let mut all_valid = true;
        for (pick, muts, fix, port, secs) in steps {
            let (base_port, mut f) = w.bases[pick.index(w.bases.len())].clone();
            for m in &muts {
                apply(&mut f, m);
            }
            if fix {
                testkit::fix_checksums(&mut f);
            }
            let port = port.map_or(base_port, |p| PORTS[p]);
            w.h.now = w.h.now + Duration::from_secs(secs);
            feed(&mut w.h, port, &f, None, &mut all_valid)?;
            if secs == 2 {
                w.h.engine.expire(w.h.now);
            }
        }
    }

    #[test]
    fn short_buffers_are_never_overrun(
        steps in prop::collection::vec(
            // Under 42 bytes: see `icmp_errors_fit_tiny_buffers`.
            (any::<Index>(), prop::collection::vec(mutation(), 0..3), any::<bool>(), prop_oneof![42usize..64, 42usize..590]),
            1..8,
        ),
    ) {
        let mut w = world();
        let mut all_valid = true;
        for (pick, muts, fix, buf_len) in steps {
            let (port, mut f) = w.bases[pick.index(w.bases.len())].clone();
            for m in &muts {
                apply(&mut f, m);
            }
            if fix {
                testkit::fix_checksums(&mut f);
            }
            feed(&mut w.h, port, &f, Some(buf_len), &mut all_valid)?;
        }
    }
}

/// Feeds a frame of `w.errors` (one the engine answers with an ICMP error),
/// cut to a datagram of `total` bytes (its IP header claiming so, checksums
/// fixed), `many` times in a buffer only `extra` bytes longer than the
/// datagram but at least `floor` bytes: the error must be written within
/// the buffer, quoting what fits.
fn icmp_error_in_short_buffer(
    pick: Index,
    total: Option<usize>,
    extra: usize,
    many: usize,
    floor: usize,
) -> Result<(), TestCaseError> {
    let mut w = world();
    let (port, mut f) = w.errors[pick.index(w.errors.len())].clone();
    if let Some(t) = total {
        let t = t.min(f.len() - ETH_LEN);
        f.truncate(ETH_LEN + t);
        put16(&mut f, ETH_LEN + 2, t as u16);
        testkit::fix_checksums(&mut f);
    }
    let mut all_valid = true;
    let buf_len = (f.len() + extra).max(floor);
    // Repeated: a new flow is refused for want of ports only after the
    // first few took the last ones.
    for _ in 0..many {
        feed(&mut w.h, port, &f, Some(buf_len), &mut all_valid)?;
    }
    Ok(())
}

/// Frame-to-buffer length strategies biased towards the tiny cases.
fn short_total() -> impl Strategy<Value = Option<usize>> {
    prop::option::of(prop_oneof![20usize..28, 20usize..64, 20usize..600])
}

fn short_extra() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..8, 0usize..16, 0usize..600]
}

proptest! {
    #![proptest_config(config(512))]

    /// Buffers of at least 42 bytes (Ethernet + IPv4 + ICMP headers).
    #[test]
    fn icmp_errors_fit_short_buffers(pick in any::<Index>(), total in short_total(), extra in short_extra(), many in 1usize..12) {
        icmp_error_in_short_buffer(pick, total, extra, many, ETH_LEN + 28)?;
    }

    /// Any buffer that holds the datagram, down to 34 bytes.
    #[test]
    fn icmp_errors_fit_tiny_buffers(pick in any::<Index>(), total in short_total(), extra in short_extra(), many in 1usize..12) {
        icmp_error_in_short_buffer(pick, total, extra, many, 0)?;
    }
}

/// The minimal case of the bug `icmp_errors_fit_tiny_buffers` finds: a
/// bare 20-byte IPv4 header with TTL 1 (valid header checksum), in a
/// 34-byte buffer, from an environment or from the VPC. The engine answers
/// time exceeded with `room = 0`, `quote = 0`, then writes the 28-byte
/// ICMP error at `frame[14..42]`: index out of range.
#[test]
fn icmp_error_about_bare_ip_header_in_34_byte_buffer() {
    for port in [PortId(1), PortId::OUTSIDE] {
        let mut w = world();
        let o = IpOpts { ttl: 1, ..IpOpts::default() };
        let mut f = if port == PortId::OUTSIDE {
            testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, SERVER, ENI, UDP, o, &[])
        } else {
            w.h.env_frame_opts(0, UDP, 7777, SERVER, 53, 0, b"", o)
        };
        f.truncate(ETH_LEN + 20);
        put16(&mut f, ETH_LEN + 2, 20);
        testkit::fix_checksums(&mut f);
        assert_eq!(f.len(), 34);
        let mut buf = f.clone();
        let action = w.h.engine.process(w.h.now, port, &mut buf, 34);
        assert!(!matches!(action, Action::Forward { .. }), "{action:?}");
    }
}

/// The world's base frames are what they claim: every IPv4 one has valid
/// checksums (so the "valid input" checks above are meaningful).
#[test]
fn world_frames_are_valid() {
    let w = world();
    assert!(w.bases.len() > 40);
    for (_, f) in w.bases.iter().chain(&w.errors) {
        if wire::ethertype(f) == wire::ETHERTYPE_IPV4 {
            assert!(testkit::checksums_ok(f), "{f:02x?}");
        }
    }
}
