//! Property tests of the engine as a whole: translation round trips and
//! table/port/counter invariants under random operation sequences
//! (robustness against arbitrary and mutated frames: `robustness.rs`).

mod common;

use common::props::*;
use common::*;
use dataplane::config::{EngineConfig, Filtering, Mapping as MappingMode};
use dataplane::flow::{proto_index, Endpoint, FlowKey, ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, Topology, OUTSIDE_MAC, ROUTER_MAC, SERVER, SERVER2};
use dataplane::{Action, PortId};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

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
        let mapping = t.mapping_of(id);
        if mode == MappingMode::EndpointIndependent {
            *mapping_ids.entry(mapping).or_default() += 1;
            if !s.recyclable() {
                *mapping_live.entry(mapping).or_default() += 1;
            }
            if mapping == dataplane::session::NIL {
                err.get_or_insert(format!("session {id} without a mapping: {s:?}"));
            } else {
                let m = t.mapping(mapping);
                if m.eni != s.eni || m.inside != s.inside || m.proto != s.proto || m.port != s.port {
                    err.get_or_insert(format!("session {id} {s:?} disagrees with its mapping {m:?}"));
                }
            }
        } else if mapping != dataplane::session::NIL {
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
