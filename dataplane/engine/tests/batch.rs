//! `Engine::process_batch` gives exactly what `Engine::process` gives frame
//! by frame: the same bytes in every buffer, the same actions, the same
//! frames to transmit, the same counters and the same sessions, for a mixed
//! vector (new flows, several frames of one new flow, replies to a session
//! created earlier in the same batch, established flows both ways, ICMP echo
//! and errors, fragments, hairpin, ARP, malformed frames) in several orders
//! and batch sizes, including more than one chunk of `BATCH`.

mod common;

use common::*;
use dataplane::counters::DropReason;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER, SERVER2};
use dataplane::wire::ETH_LEN;
use dataplane::{arp, Action, BatchFrame, PortId};
use std::net::Ipv4Addr;

/// Buffer per frame (room for ICMP errors).
const BUF: usize = 2048;

/// Two engines in the same state: the first takes frames one by one, the
/// second in batches. Sessions set up before the batch: an established UDP
/// flow, a TCP connection, an echo session; returns the harnesses and the
/// test frames.
fn setup() -> (Harness, Harness, Vec<(PortId, Vec<u8>)>) {
    let mut hs = [Harness::default(), Harness::default()];
    let mut eports = vec![];
    for h in &mut hs {
        let udp = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src().1;
        let tcp = h.out_ok(1, TCP, 6000, SERVER, 443, SYN).src().1;
        let synack = h.vpc_frame(SERVER, 443, ENI, tcp, TCP, SYN | ACK, b"");
        assert_eq!(h.send(PortId::OUTSIDE, synack).forwarded(), Some(h.env_port(1)));
        let echo = h.out_ok(2, ICMP, 77, SERVER, 0, 0).echo_id();
        let routed = h.out_ok(3, UDP, 5001, SERVER2, 443, 0);
        assert!(h.drain().is_empty());
        eports.push((udp, tcp, echo, routed.frame));
    }
    assert_eq!(eports[0], eports[1], "both engines start in the same state");
    let (udp, tcp, echo, routed) = eports.pop().unwrap();
    let [a, b] = hs;
    let h = &a;
    // Established, both ways.
    let mut v: Vec<(PortId, Vec<u8>)> = vec![
        (h.env_port(0), h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query")),
        (PortId::OUTSIDE, h.vpc_frame(SERVER, 53, ENI, udp, UDP, 0, b"answer")),
        (h.env_port(1), h.env_frame(1, TCP, 6000, SERVER, 443, ACK, b"GET /")),
        (PortId::OUTSIDE, h.vpc_frame(SERVER, 443, ENI, tcp, TCP, ACK, b"200 OK")),
        (h.env_port(2), h.env_frame(2, ICMP, 77, SERVER, 0, 0, b"ping")),
        (PortId::OUTSIDE, h.vpc_frame(SERVER, 0, ENI, echo, ICMP, 0, b"pong")),
    ];
    // A new flow on env 0's mapping (endpoint-independent: same ENI port),
    // three frames of it, and a reply to it: the reply finds the session
    // only if an earlier frame of the batch created it.
    for _ in 0..3 {
        v.push((h.env_port(0), h.env_frame(0, UDP, 5000, SERVER2, 53, 0, b"new")));
    }
    v.push((PortId::OUTSIDE, h.vpc_frame(SERVER2, 53, ENI, udp, UDP, 0, b"new back")));
    // New flows: UDP, a TCP SYN and a segment of it, an echo, a TCP
    // segment that does not open (dropped).
    v.push((h.env_port(4), h.env_frame(4, UDP, 7000, SERVER, 123, 0, b"ntp")));
    v.push((h.env_port(5), h.env_frame(5, TCP, 7001, SERVER2, 80, SYN, b"")));
    v.push((h.env_port(5), h.env_frame(5, TCP, 7001, SERVER2, 80, ACK, b"")));
    v.push((h.env_port(6), h.env_frame(6, ICMP, 99, SERVER2, 0, 0, b"ping")));
    v.push((h.env_port(7), h.env_frame(7, TCP, 7002, SERVER, 22, ACK, b"")));
    // Unsolicited inbound, and inbound to a port with no mapping.
    v.push((PortId::OUTSIDE, h.vpc_frame(SERVER, 9, ENI, 1, UDP, 0, b"x")));
    v.push((PortId::OUTSIDE, h.vpc_frame(SERVER2, 443, ENI, tcp, TCP, SYN, b"")));
    // An ICMP error from the VPC quoting the routed flow's translated packet.
    let quote = &routed[ETH_LEN..ETH_LEN + 28];
    let err = testkit::icmp_message(3, 3, [0; 4], quote);
    v.push((PortId::OUTSIDE, testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, ROUTER, ENI, ICMP, IpOpts::default(), &err)));
    // Hairpin: env 4 to env 0's ENI endpoint.
    v.push((h.env_port(4), h.env_frame(4, UDP, 7003, ENI, udp, 0, b"hairpin")));
    // Fragments of a new datagram, later ones first.
    let big = h.env_frame(3, UDP, 5005, SERVER, 9000, 0, &[7u8; 1200]);
    let mut frags = testkit::fragment(&big, 500);
    frags.reverse();
    v.extend(frags.into_iter().map(|f| (h.env_port(3), f)));
    // An ARP request, then malformed frames: truncated Ethernet, truncated
    // IP, bad IP checksum, an unknown port, a non-IP ethertype.
    let mut arp_req = vec![0u8; 64];
    let n = arp::write_request(&mut arp_req, [2, 0, 0, 0, 0, 0x33], SERVER2, ENI);
    arp_req.truncate(n);
    v.push((PortId::OUTSIDE, arp_req));
    v.push((h.env_port(0), vec![1, 2, 3]));
    let mut f = h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query");
    f.truncate(ETH_LEN + 10);
    v.push((h.env_port(0), f));
    let mut f = h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query");
    f[ETH_LEN + 10] ^= 0x55;
    v.push((h.env_port(0), f));
    v.push((PortId(99), h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query")));
    let mut f = h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query");
    f[12] = 0x86;
    f[13] = 0xdd;
    v.push((h.env_port(0), f));
    (a, b, v)
}

/// What an engine left behind: frames to transmit, counters, sessions.
type State = (Vec<(PortId, Vec<u8>)>, String, Vec<String>);

fn state(h: &mut Harness) -> State {
    let tx = h.drain();
    let counters = format!("{:?}", *h.engine.counters());
    let mut sessions = vec![];
    h.engine.sessions().for_each(|id, s| sessions.push(format!("{id} {s:?}")));
    (tx, counters, sessions)
}

/// Each frame copied into a buffer of [`BUF`] bytes.
fn buffers(frames: &[(PortId, Vec<u8>)]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|(_, f)| {
            let mut b = f.clone();
            b.resize(BUF, 0);
            b
        })
        .collect()
}

/// Runs `frames` through `one` frame by frame and through `batched` in
/// batches of `size`; asserts identical outcomes.
fn compare(one: &mut Harness, batched: &mut Harness, frames: &[(PortId, Vec<u8>)], size: usize) {
    let mut bufs_one: Vec<Vec<u8>> = vec![];
    let mut actions_one = vec![];
    for (port, f) in frames {
        let mut buf = f.clone();
        buf.resize(BUF, 0);
        actions_one.push(one.engine.process(one.now, *port, &mut buf, f.len()));
        bufs_one.push(buf);
    }
    let mut bufs = buffers(frames);
    let mut actions = vec![];
    for (chunk, bufs) in frames.chunks(size).zip(bufs.chunks_mut(size)) {
        let mut batch: Vec<BatchFrame> =
            chunk.iter().zip(bufs.iter_mut()).map(|((p, f), b)| BatchFrame::new(*p, b, f.len())).collect();
        batched.engine.process_batch(batched.now, &mut batch);
        actions.extend(batch.iter().map(|f| f.action));
    }
    for i in 0..frames.len() {
        assert_eq!(actions[i], actions_one[i], "frame {i}: action");
        assert!(bufs[i] == bufs_one[i], "frame {i}: buffer differs ({:?})", actions[i]);
    }
    assert_eq!(state(batched), state(one), "transmit queue, counters and sessions");
}

#[test]
fn a_batch_is_the_frames_one_by_one() {
    let (mut one, mut batched, frames) = setup();
    assert!(frames.len() < dataplane::engine::BATCH);
    compare(&mut one, &mut batched, &frames, frames.len());
    let created = one.engine.counters().sessions_created.iter().map(|c| c.get()).sum::<u64>();
    assert!(created >= 8, "new flows were created in the batch ({created} sessions in all)");
}

#[test]
fn batches_in_any_order_and_size_match() {
    for (seed, size) in [(1u64, 1), (2, 5), (3, 64), (4, 100), (5, 17)] {
        let (mut one, mut batched, mut frames) = setup();
        // Several rounds of the vector in a shuffled order: more than one
        // chunk, and later rounds mostly established.
        let base = frames.clone();
        for _ in 0..3 {
            frames.extend(base.iter().cloned());
        }
        let mut x = seed;
        for i in (1..frames.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            frames.swap(i, (x >> 33) as usize % (i + 1));
        }
        compare(&mut one, &mut batched, &frames, size);
    }
}

#[test]
fn actions_of_a_batch_are_the_expected_ones() {
    let (_, mut h, frames) = setup();
    let mut bufs = buffers(&frames);
    let mut batch: Vec<BatchFrame> =
        frames.iter().zip(bufs.iter_mut()).map(|((p, f), b)| BatchFrame::new(*p, b, f.len())).collect();
    h.engine.process_batch(h.now, &mut batch);
    let fwd = |a: Action, p: PortId| matches!(a, Action::Forward { port, .. } if port == p);
    // Established both ways, the new flow's frames and the reply to it.
    assert!(fwd(batch[0].action, PortId::OUTSIDE));
    assert!(fwd(batch[1].action, h.env_port(0)));
    for f in &batch[6..9] {
        assert!(fwd(f.action, PortId::OUTSIDE), "{:?}", f.action);
    }
    assert!(fwd(batch[9].action, h.env_port(0)), "reply to a flow the same batch created: {:?}", batch[9].action);
    assert!(matches!(batch.last().unwrap().action, Action::Drop(_)));
}

/// The established path of a batch (`engine/fast.rs`) against the frames
/// one by one, on frames of established flows that must leave it for the
/// general path: TTL 1, too big with and without DF both ways, IP options, a
/// frame to the attachment's gateway, FIN, SYN (a reopen) and RST both ways
/// and segments after them, a frame from the wrong port, hairpins both
/// ways (from an environment, and handed over by another worker), and the
/// next hop's ARP entry aging out between two batches.
#[test]
fn the_established_path_leaves_every_exception_to_the_general_path() {
    let (mut one, mut batched, _) = setup();
    let h = &one;
    let udp = |data: &[u8], o: IpOpts| h.env_frame_opts(0, UDP, 5000, SERVER, 53, 0, data, o);
    let tcp_port = {
        let out = one.engine.sessions();
        let mut p = 0;
        out.for_each(|_, s| {
            if s.proto == TCP && s.inside.port == 6000 {
                p = s.eni.port;
            }
        });
        p
    };
    assert_ne!(tcp_port, 0);
    let udp_port = {
        let mut p = 0;
        one.engine.sessions().for_each(|_, s| {
            if s.proto == UDP && s.inside.port == 5000 {
                p = s.eni.port;
            }
        });
        p
    };
    // A hairpin translated by another worker and handed over: the outside
    // port's MAC as source, an ENI address as source (its TTL went down
    // there already).
    let seg = testkit::udp_segment(ENI, 7777, ENI, udp_port, b"handed over");
    let handed_over = testkit::ipv4_frame(OUTSIDE_MAC, OUTSIDE_MAC, ENI, ENI, UDP, IpOpts::default(), &seg);
    let ack = |data: &[u8]| (h.env_port(1), h.env_frame(1, TCP, 6000, SERVER, 443, ACK, data));
    let back = |flags: u8| (PortId::OUTSIDE, h.vpc_frame(SERVER, 443, ENI, tcp_port, TCP, flags, b"data"));
    let mut v = vec![
        (h.env_port(0), udp(b"plain", IpOpts::default())),
        (h.env_port(0), udp(b"ttl 1", IpOpts { ttl: 1, ..IpOpts::default() })),
        (h.env_port(0), udp(&[1u8; 1600], IpOpts { df: true, ..IpOpts::default() })),
        (h.env_port(0), udp(&[2u8; 1600], IpOpts::default())),
        (h.env_port(0), udp(b"options", IpOpts { options: &[1, 1, 1, 0], ..IpOpts::default() })),
        (h.env_port(0), h.env_frame(0, UDP, 5000, testkit::GATEWAY, 53, 0, b"to the gateway")),
        (h.env_port(3), h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"wrong port")),
        (PortId::OUTSIDE, h.vpc_frame(SERVER, 53, ENI, udp_port, UDP, 0, &[3u8; 1600])),
        (PortId::OUTSIDE, h.vpc_frame(SERVER, 53, ENI, udp_port, UDP, 0, b"answer")),
        (PortId::OUTSIDE, handed_over.clone()),
        (PortId::OUTSIDE, handed_over),
        ack(b"one"),
        back(ACK),
        ack(b"two"),
        (h.env_port(1), h.env_frame(1, TCP, 6000, SERVER, 443, FIN | ACK, b"")),
        ack(b"after fin"),
        back(ACK),
        back(FIN | ACK),
        ack(b""),
        (h.env_port(1), h.env_frame(1, TCP, 6000, SERVER, 443, SYN, b"")),
        back(SYN | ACK),
        ack(b"reopened"),
        back(RST),
        back(ACK),
        ack(b"after rst"),
        back(RST),
        ack(b"after the second rst"),
        back(ACK),
        (h.env_port(4), h.env_frame(4, UDP, 7003, ENI, udp_port, 0, b"hairpin")),
        (h.env_port(4), h.env_frame(4, UDP, 7003, ENI, udp_port, 0, b"hairpin again")),
    ];
    let later = (h.env_port(0), udp(b"later", IpOpts::default()));
    // Frame by frame with the state compared after each (a state that
    // diverged for one frame may converge again later), then in batches.
    for f in v.chunks(1) {
        compare(&mut one, &mut batched, f, 1);
    }
    let n = v.len();
    for size in [3, n] {
        compare(&mut one, &mut batched, &v, size);
    }
    // The router's entry ages out: established frames wait for ARP, on
    // both paths alike.
    one.advance(std::time::Duration::from_secs(400));
    batched.advance(std::time::Duration::from_secs(400));
    v.truncate(1);
    v.push(later);
    compare(&mut one, &mut batched, &v, v.len());
}

/// The established path takes the session its key's bucket pointed at when
/// the batch started (pass 2) only if that slot still holds the key: here a
/// new flow earlier in the same batch recycles the slot of a reset TCP
/// connection (the table is full), and a late segment of that connection
/// must then find no session, as frame by frame, instead of being
/// translated with the new flow's session.
#[test]
fn a_slot_recycled_earlier_in_the_batch_is_not_taken_for_its_old_flow() {
    let cfg = || dataplane::config::EngineConfig { max_sessions: 2, ..Default::default() };
    let (mut one, mut batched) = (Harness::with(cfg()), Harness::with(cfg()));
    for h in [&mut one, &mut batched] {
        let tcp = h.out_ok(1, TCP, 6000, SERVER, 443, SYN).src().1;
        let synack = h.vpc_frame(SERVER, 443, ENI, tcp, TCP, SYN | ACK, b"");
        assert_eq!(h.send(PortId::OUTSIDE, synack).forwarded(), Some(h.env_port(1)));
        h.out_ok(1, TCP, 6000, SERVER, 443, ACK);
        h.out_ok(0, UDP, 5000, SERVER, 53, 0);
        let rst = h.vpc_frame(SERVER, 443, ENI, tcp, TCP, RST, b"");
        assert_eq!(h.send(PortId::OUTSIDE, rst).forwarded(), Some(h.env_port(1)));
        assert_eq!(h.engine.sessions().len(), 2, "the table is full");
        assert!(h.drain().is_empty());
    }
    let h = &one;
    let v = vec![
        // Same attachment, so the recycled slot's session has the old
        // flow's port.
        (h.env_port(1), h.env_frame(1, TCP, 6001, SERVER2, 443, SYN, b"")),
        (h.env_port(1), h.env_frame(1, TCP, 6000, SERVER, 443, ACK, b"late")),
    ];
    compare(&mut one, &mut batched, &v, v.len());
    let mut keys = vec![];
    one.engine.sessions().for_each(|_, s| keys.push((s.proto, s.inside.port)));
    keys.sort();
    assert_eq!(keys, [(TCP, 6001), (UDP, 5000)], "the new flow took the reset connection's slot");
}

/// The new-flow path of a batch takes only a plain first packet of an
/// outbound TCP or UDP flow whose key the index does not hold; everything
/// else is the general path's, and whatever the flow's creation gives
/// (a session, a refusal answered or dropped, a frame waiting for ARP) is
/// what the general path gives. Each frame opens a flow no earlier frame
/// did, so each reaches the new-flow path's checks.
#[test]
fn the_new_flow_path_leaves_every_exception_to_the_general_path() {
    use dataplane::config::EngineConfig;
    use dataplane::policy::{Rule, RuleProto, RuleSet};
    use std::sync::Arc;
    // Environment 2 may hold two sessions; a refused flow is answered.
    let cfg = || EngineConfig { env_session_quota: 2, icmp_on_exhaustion: true, ..EngineConfig::default() };
    // UDP only towards SERVER and to SERVER2 port 53; TCP anywhere.
    let topo = || {
        let mut t = testkit::Topology::new(2, 8);
        let cidr = |s: &str| s.parse().expect("literal prefix");
        t.enis[0].egress = Arc::new(RuleSet::new(vec![
            Rule { proto: RuleProto::Udp, ports: 1..=65535, dst: cidr("10.0.0.100/32") },
            Rule { proto: RuleProto::Udp, ports: 53..=53, dst: cidr("10.0.9.9/32") },
            Rule { proto: RuleProto::Tcp, ports: 1..=65535, dst: cidr("0.0.0.0/0") },
        ]));
        t
    };
    let (mut one, mut batched) = (Harness::new(cfg(), topo()), Harness::new(cfg(), topo()));
    let unresolved = Ipv4Addr::new(10, 0, 0, 77);
    // One set of first packets; `base` makes every flow of a set new.
    let frames = |h: &Harness, base: u16| -> Vec<(PortId, Vec<u8>)> {
        let udp = |env: u32, k: u16, dst: Ipv4Addr, dport: u16, data: &[u8], o: IpOpts| {
            (h.env_port(env), h.env_frame_opts(env, UDP, base + k, dst, dport, 0, data, o))
        };
        let tcp =
            |env: u32, k: u16, flags: u8| (h.env_port(env), h.env_frame(env, TCP, base + k, SERVER2, 443, flags, b""));
        let plain = IpOpts::default();
        let mut wrong_mac = udp(0, 9, SERVER, 53, b"not ours", plain);
        wrong_mac.1[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x44]);
        let mut wrong_port = udp(0, 10, SERVER, 53, b"wrong port", plain);
        wrong_port.0 = h.env_port(1);
        wrong_port.1[0..6].copy_from_slice(&testkit::inside_mac(wrong_port.0 .0));
        assert_ne!(wrong_port.0, h.env_port(0));
        vec![
            udp(0, 0, SERVER, 53, b"plain", plain),
            udp(0, 1, SERVER, 53, b"ttl 1", IpOpts { ttl: 1, ..plain }),
            udp(0, 2, SERVER, 53, &[1u8; 1600], IpOpts { df: true, ..plain }),
            udp(0, 3, SERVER, 53, &[2u8; 1600], plain),
            udp(0, 4, SERVER, 53, b"options", IpOpts { options: &[1, 1, 1, 0], ..plain }),
            udp(0, 5, testkit::GATEWAY, 53, b"to the gateway", plain),
            udp(0, 6, ENI, 4000, b"hairpin to no mapping", plain),
            udp(0, 7, unresolved, 53, b"waits for ARP", plain),
            udp(0, 8, SERVER2, 123, b"denied", plain),
            udp(0, 11, SERVER2, 53, b"allowed", plain),
            wrong_mac,
            wrong_port,
            tcp(1, 0, SYN),
            tcp(1, 1, ACK),
            tcp(1, 2, SYN | ACK),
            tcp(1, 3, RST),
            // Environment 2: the third flow is over its quota.
            udp(2, 0, SERVER, 53, b"first", plain),
            udp(2, 1, SERVER, 53, b"second", plain),
            udp(2, 2, SERVER, 53, b"over the quota", plain),
        ]
    };
    // One frame a batch, the state compared after each; then whole sets
    // (new flows again) in batches of 3 and of all of them.
    let v = frames(&one, 10_000);
    for f in v.chunks(1) {
        compare(&mut one, &mut batched, f, 1);
    }
    for (base, size) in [(20_000, 3), (30_000, 64)] {
        one.advance(std::time::Duration::from_secs(400));
        batched.advance(std::time::Duration::from_secs(400));
        let v = frames(&one, base);
        compare(&mut one, &mut batched, &v, size.min(v.len()));
    }
    for r in [DropReason::PolicyDenied, DropReason::Spoofed, DropReason::TcpNotSyn, DropReason::NotForUs] {
        assert!(one.dropped(r) > 0, "{r:?} was exercised");
    }
    assert!(one.engine.counters().icmp_generated.get() > 0, "a refusal was answered");
}

/// One frame of a random run: from an environment (a new or an existing
/// flow, any TCP flags, sometimes TTL 1, IP options or too big for the
/// VPC's MTU), or from the VPC back to the ENI endpoint of a flow an
/// earlier frame opened (or to no mapping at all when it opened none).
#[derive(Clone, Debug)]
enum Op {
    Out { env: u32, proto: u8, sport: u16, dest: usize, dport: u16, flags: u8, ttl1: bool, opts: usize, big: bool },
    Reply { of: proptest::sample::Index, flags: u8 },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    const FLAGS: [u8; 7] = [SYN, SYN | ACK, ACK, FIN | ACK, RST, RST | ACK, 0];
    let flags = proptest::sample::select(&FLAGS[..]);
    prop_oneof![
        4 => (0..8u32, proptest::sample::select(&[UDP, TCP, ICMP][..]), 0..4u16, 0..6usize, 0..3u16, flags.clone(),
              proptest::bool::weighted(0.05), 0..5usize, proptest::bool::weighted(0.05))
            .prop_map(|(env, proto, sport, dest, dport, flags, ttl1, opts, big)| Op::Out {
                env, proto, sport, dest, dport, flags, ttl1, opts, big
            }),
        2 => (any::<proptest::sample::Index>(), flags).prop_map(|(of, flags)| Op::Reply { of, flags }),
    ]
}

proptest::proptest! {
    #![proptest_config(common::props::config(48))]

    /// Random traffic (new flows, established flows both ways, TCP opening
    /// and closing in any order, exceptions) through one engine frame by
    /// frame and through another in batches of a random size: the same
    /// bytes, actions, counters, transmit queue and sessions. A table of 16
    /// sessions makes new flows recycle and be refused too.
    #[test]
    fn random_traffic_in_batches_is_the_frames_one_by_one(
        ops in proptest::collection::vec(op(), 1..90),
        size in 1usize..40,
        small in proptest::bool::ANY,
    ) {
        use common::props::{harness, DESTS, OPTIONS};
        use dataplane::config::EngineConfig;
        let cfg = || EngineConfig { max_sessions: if small { 16 } else { 1024 }, ..EngineConfig::default() };
        let topo = || testkit::Topology::new(2, 8);
        let (mut one, mut batched, mut oracle) = (harness(cfg(), topo()), harness(cfg(), topo()), harness(cfg(), topo()));
        // The frames, each made once the oracle (frame by frame) has seen
        // the ones before it, so a reply carries the ENI port of its flow.
        let mut frames: Vec<(PortId, Vec<u8>)> = vec![];
        let mut outs: Vec<(u32, u8, u16, Ipv4Addr, u16)> = vec![];
        for op in &ops {
            let f = match op.clone() {
                Op::Out { env, proto, sport, dest, dport, flags, ttl1, opts, big } => {
                    let (dst, _) = DESTS[dest];
                    let (sport, dport) = (40_000 + sport, [53, 443, 8080][usize::from(dport)]);
                    let o = IpOpts { ttl: if ttl1 { 1 } else { 64 }, options: OPTIONS[opts], ..IpOpts::default() };
                    let data = if big { vec![9u8; 1600] } else { b"data".to_vec() };
                    outs.push((env, proto, sport, dst, dport));
                    (oracle.env_port(env), oracle.env_frame_opts(env, proto, sport, dst, dport, flags, &data, o))
                }
                Op::Reply { of, flags } => {
                    let Some(&(env, proto, sport, dst, dport)) = outs.get(of.index(outs.len().max(1))) else { continue };
                    let mut eni = (ENI, 1);
                    oracle.engine.sessions().for_each(|_, s| {
                        if s.proto == proto && s.inside.ip == testkit::env_ip(env) && s.inside.port == sport
                            && s.remote.ip == dst && s.remote.port == dport {
                            eni = (s.eni.ip, s.eni.port);
                        }
                    });
                    let (sport_back, dport_back) = if proto == ICMP { (0, eni.1) } else { (dport, eni.1) };
                    (PortId::OUTSIDE, oracle.vpc_frame(dst, sport_back, eni.0, dport_back, proto, flags, b"back"))
                }
            };
            let mut buf = f.1.clone();
            buf.resize(BUF, 0);
            oracle.engine.process(oracle.now, f.0, &mut buf, f.1.len());
            oracle.drain();
            frames.push(f);
        }
        compare(&mut one, &mut batched, &frames, size);
    }
}
