//! Property tests of the engine's robustness: arbitrary and mutated frames
//! never make it panic, overrun a buffer or emit a bad checksum.

mod common;

use common::props::*;
use common::*;
use dataplane::config::EngineConfig;
use dataplane::flow::{Endpoint, ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, Topology, GATEWAY, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER, SERVER2};
use dataplane::wire::{self, put16, ETH_LEN};
use dataplane::{Action, PortId};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::time::Duration;

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
        let quote = &out.frame[oip.off()..oip.end().min(oip.off() + oip.hlen() + 8)];
        let msg = testkit::icmp_message(3, 3, [0; 4], quote);
        bases.push((
            PortId::OUTSIDE,
            testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, ROUTER, ENI, ICMP, IpOpts::default(), &msg),
        ));
        let msg = testkit::icmp_message(11, 0, [0; 4], &out.frame[oip.off()..oip.end()]);
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
            let msg = testkit::icmp_message(3, 3, [0; 4], &back.frame[bip.off()..bip.off() + bip.hlen() + 8]);
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
    let n = dataplane::arp::write_request(&mut a, ROUTER_MAC, ROUTER, ENI);
    bases.push((PortId::OUTSIDE, a[..n].to_vec()));
    let mut a = vec![0u8; 64];
    let mac = testkit::env_mac(0);
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
