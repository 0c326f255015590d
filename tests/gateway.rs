//! End to end: real Linux TCP, UDP and ICMP from execution-environment
//! namespaces through the gateway (TAPs) to a VPC namespace.
//!
//! Each test builds its own [`Lab`] with uniquely named namespaces and TAPs;
//! dropping the lab removes them, also when an assertion fails (the drop
//! runs during unwinding). Tests need root; without it they say so and
//! return.

use dataplane::counters::DropReason;
use netlab::demo;
use netlab::lab::{Lab, Options, VPC_ROUTER};
use netlab::{env_addr, probe, INSIDE_GATEWAY, SERVER};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn lab(envs: usize, f: impl FnOnce(&mut Options)) -> Lab {
    let mut o = Options { envs, ..Options::default() };
    f(&mut o);
    Lab::build(&o).expect("lab builds")
}

/// A UDP server in the server namespace that answers each datagram with
/// the source it saw ("a.b.c.d:port") followed by the datagram itself.
fn udp_echo(lab: &Lab, port: u16) -> std::thread::JoinHandle<()> {
    let s = lab.server.run(move || UdpSocket::bind(SocketAddrV4::new(SERVER, port)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = format!("{from}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from);
        }
    })
}

/// `[gateway]` line choosing the workers' I/O path.
fn io(backend: &str) -> String {
    format!("io.backend = \"{backend}\"")
}

/// The gateway runs `backend` on every worker and made its system calls
/// through it.
#[track_caller]
fn check_backend(lab: &Lab, backend: &str) {
    let g = lab.gateway();
    assert_eq!(g.io_backend(), backend);
    // [read, write, epoll_wait, io_uring_enter, send, recv, wake]
    let s = g.syscalls();
    match backend {
        "uring" => assert!(s[3] > 0 && s[2] == 0, "io_uring_enter and no epoll_wait: {s:?}"),
        _ => assert!(s[2] > 0 && s[3] == 0 && s[0] > 0, "epoll_wait and read, no io_uring_enter: {s:?}"),
    }
}

fn udp_ask(dst: SocketAddrV4, msg: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(400))).ok()?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..8 {
        s.send_to(msg, dst).ok()?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn fifty_environments_all_arrive_from_the_shared_eni_address() {
    netlab::require_root();
    let r = demo::run(&Options { envs: 50, ..Options::default() }).expect("demo runs");
    assert_eq!(r.envs_ok, 50, "{:#?}", r.per_env.iter().filter(|e| !e.errors.is_empty()).collect::<Vec<_>>());
    assert_eq!(r.server_saw_sources, vec![r.eni_address]);
    assert!(r.per_env.iter().all(|e| e.sessions == 3), "TCP, UDP and ICMP session per environment");
    let ports: std::collections::BTreeSet<_> = r.per_env.iter().filter_map(|e| e.tcp_seen_as.clone()).collect();
    assert_eq!(ports.len(), 50, "every environment has its own ENI port");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn ping_ttl_expiry_and_port_unreachable_come_back_translated() {
    netlab::require_root();
    ping_and_icmp_errors("uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn ping_ttl_expiry_and_port_unreachable_come_back_translated_on_syscalls() {
    netlab::require_root();
    ping_and_icmp_errors("syscalls");
}

fn ping_and_icmp_errors(backend: &str) {
    ping_and_icmp_errors_in(lab(1, |o| o.gateway_extra = io(backend)));
}

/// Ping, a TTL-expired probe at each hop and a closed port, from
/// environment 0 of `lab`.
fn ping_and_icmp_errors_in(lab: Lab) {
    let backend = lab.gateway().io_backend().to_string();
    let backend = backend.as_str();
    let (gw_hop, vpc_hop, closed) = lab.envs[0].run(|| {
        let ping = demo::icmp_echo(SERVER, 0x77, Duration::from_secs(3));
        assert!(ping.is_ok(), "ping: {ping:?}");
        let dst = SocketAddrV4::new(SERVER, 33434);
        let t = Duration::from_secs(3);
        (
            probe::udp_ttl_probe(dst, 1, t).expect("probe"),
            probe::udp_ttl_probe(dst, 2, t).expect("probe"),
            probe::udp_ttl_probe(dst, 64, t).expect("probe"),
        )
    });
    let gw_hop = gw_hop.expect("hop 1 answers");
    assert_eq!((gw_hop.from, gw_hop.icmp_type), (INSIDE_GATEWAY, probe::ICMP_TIME_EXCEEDED), "the gateway is hop 1");
    let vpc_hop = vpc_hop.expect("hop 2 answers");
    assert_eq!(
        (vpc_hop.from, vpc_hop.icmp_type),
        (VPC_ROUTER, probe::ICMP_TIME_EXCEEDED),
        "the VPC router's error about the ENI's packet reaches the environment"
    );
    let closed = closed.expect("the server answers");
    assert_eq!((closed.from, closed.icmp_type, closed.code), (SERVER, 3, probe::ICMP_PORT_UNREACH));
    let t = lab.gateway().totals();
    assert!(lab.gateway().counters().iter().map(|c| c.icmp_errors_translated.get()).sum::<u64>() >= 2, "{t:?}");
    check_backend(&lab, backend);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_security_group_blocks_new_connections_to_ports_it_does_not_allow() {
    netlab::require_root();
    let egress = r#"[ { protocol = "tcp", ports = "7100", destination = "10.1.0.0/24" }, { protocol = "icmp", destination = "0.0.0.0/0" } ]"#;
    let lab = lab(1, |o| o.egress = egress.into());
    let listeners = lab.server.run(|| {
        [7100u16, 7101].map(|p| {
            let l = TcpListener::bind(SocketAddrV4::new(SERVER, p)).expect("bind");
            l.set_nonblocking(true).unwrap();
            l
        })
    });
    let (allowed, denied) = lab.envs[0].run(|| {
        let t = Duration::from_millis(1500);
        let a = TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, 7100)), t).map(drop);
        let d = TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, 7101)), t).map(drop);
        (a, d)
    });
    assert!(allowed.is_ok(), "allowed port: {allowed:?}");
    assert!(denied.is_err(), "denied port connected");
    assert!(lab.gateway().totals().dropped(DropReason::PolicyDenied) >= 1);
    drop(listeners);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn unsolicited_traffic_from_the_vpc_gets_no_answer_and_reaches_no_environment() {
    netlab::require_root();
    let lab = lab(2, |_| {});
    let eni = lab.eni;
    let sinks: Vec<UdpSocket> = lab
        .envs
        .iter()
        .map(|ns| {
            ns.run(|| {
                let s = UdpSocket::bind("0.0.0.0:9999").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                s
            })
        })
        .collect();
    let tcp = lab.server.run(move || {
        for p in [9999u16, 1024, 30000, 65535] {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"unsolicited", SocketAddrV4::new(eni, p)).unwrap();
        }
        TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(eni, 9999)), Duration::from_millis(1200))
    });
    let err = tcp.expect_err("no TCP connection to the ENI address");
    assert_ne!(err.kind(), std::io::ErrorKind::ConnectionRefused, "no RST either: {err}");
    let mut buf = [0u8; 64];
    for s in &sinks {
        assert!(s.recv_from(&mut buf).is_err(), "an environment received unsolicited traffic");
    }
    assert!(lab.gateway().totals().dropped(DropReason::NoSession) >= 5);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn hairpinning_between_two_environments_uses_their_mappings() {
    netlab::require_root();
    hairpin("uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn hairpinning_between_two_environments_uses_their_mappings_on_syscalls() {
    netlab::require_root();
    hairpin("syscalls");
}

fn hairpin(backend: &str) {
    hairpin_in(lab(2, |o| {
        o.workers = 2;
        o.gateway_extra = io(backend);
    }));
}

/// Two environments reach each other through their ENI mappings; `lab`
/// has (at least) two environments.
fn hairpin_in(lab: Lab) {
    let backend = lab.gateway().io_backend().to_string();
    let backend = backend.as_str();
    // Two workers, so the two environments' mappings live on different
    // workers when their attachments do.
    let echo = udp_echo(&lab, 7300);
    // Each environment learns its own mapping from the server.
    let mapping = |i: usize| {
        lab.envs[i].run(move || {
            let s = UdpSocket::bind("0.0.0.0:6000").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            let mut buf = [0u8; 256];
            for _ in 0..8 {
                s.send_to(b"who am i", SocketAddrV4::new(SERVER, 7300)).unwrap();
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    return (s, text.split('|').next().unwrap().parse::<SocketAddrV4>().unwrap());
                }
            }
            panic!("no answer from the server");
        })
    };
    let (sock0, m0) = mapping(0);
    let (sock1, m1) = mapping(1);
    assert_eq!((*m0.ip(), *m1.ip()), (lab.eni, lab.eni));
    // Environment 0 sends to environment 1's ENI endpoint.
    sock0.send_to(b"hairpin", m1).unwrap_or_else(|e| panic!("send from env 0 (socket in its namespace): {e}"));
    let mut buf = [0u8; 64];
    let (n, from) = sock1.recv_from(&mut buf).expect("environment 1 receives the hairpinned datagram");
    assert_eq!(&buf[..n], b"hairpin");
    assert_eq!(from, SocketAddr::V4(m0), "seen as coming from environment 0's mapping");
    assert!(lab.gateway().counters().iter().map(|c| c.hairpinned.get()).sum::<u64>() >= 1);
    check_backend(&lab, backend);
    drop(lab);
    let _ = echo.join();
}

/// 100 MB over TCP from an environment to the server, checked byte for
/// byte (a running hash both ends compute).
fn bulk_transfer(offloads: bool, backend: &str) {
    let lab = lab(1, |o| {
        o.offloads = offloads;
        o.gateway_extra = io(backend);
    });
    assert_eq!(lab.gateway().offloads, offloads);
    transfer_in(&lab, Direction::Upload);
}

/// Which way a bulk transfer goes.
#[derive(Clone, Copy, Debug)]
enum Direction {
    /// Environment 0 → server.
    Upload,
    /// Server → environment 0 (the environment connects and reads).
    Download,
}

/// Writes 100 MB of pseudo-random bytes to `c`; returns their hash.
fn write_100_mb(c: &mut TcpStream) -> u64 {
    const TOTAL: usize = 100 * 1000 * 1000;
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut h = Fnv::default();
    let mut x = 0x9e37_79b9u32;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = TOTAL;
    while left > 0 {
        let n = left.min(chunk.len());
        for b in &mut chunk[..n] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        c.write_all(&chunk[..n]).expect("write");
        h.feed(&chunk[..n]);
        left -= n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    h.0
}

/// Reads `c` to its end; returns the byte count and hash.
fn read_all(c: &mut TcpStream) -> (usize, u64) {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut h = Fnv::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.feed(&buf[..n]);
                got += n;
            }
            Err(e) => panic!("read after {got} bytes: {e}"),
        }
    }
    (got, h.0)
}

/// 100 MB over TCP between environment 0 of `lab` and the server in
/// `dir`, checked byte for byte (a running hash both ends compute).
fn transfer_in(lab: &Lab, dir: Direction) {
    let backend = lab.gateway().io_backend().to_string();
    let t0 = std::time::Instant::now();
    let l = lab.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, 7400)).expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        match dir {
            Direction::Upload => read_all(&mut c),
            Direction::Download => (0, write_100_mb(&mut c)),
        }
    });
    let client = lab.envs[0].run(move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, 7400)), Duration::from_secs(5))
                .expect("connect");
        match dir {
            Direction::Upload => (0, write_100_mb(&mut c)),
            Direction::Download => read_all(&mut c),
        }
    });
    let server = server.join().expect("server");
    let ((got, received), (_, sent)) = match dir {
        Direction::Upload => (server, client),
        Direction::Download => (client, server),
    };
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("{dir:?}: 100 MB in {secs:.2} s ({:.0} Mbit/s; rough, shared machine)", 800.0 / secs);
    assert_eq!(got, 100 * 1000 * 1000, "{dir:?}");
    assert_eq!(received, sent, "{dir:?}: bytes arrive exactly");
    check_backend(lab, &backend);
}

#[derive(Default)]
struct Fnv(u64);

impl Fnv {
    fn feed(&mut self, b: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_100_mb_tcp_transfer_arrives_byte_exact_with_offloads() {
    netlab::require_root();
    bulk_transfer(true, "uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_100_mb_tcp_transfer_arrives_byte_exact_with_offloads_on_syscalls() {
    netlab::require_root();
    bulk_transfer(true, "syscalls");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_100_mb_tcp_transfer_arrives_byte_exact_without_offloads() {
    netlab::require_root();
    bulk_transfer(false, "uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_100_mb_tcp_transfer_arrives_byte_exact_without_offloads_on_syscalls() {
    netlab::require_root();
    bulk_transfer(false, "syscalls");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_4000_byte_udp_datagram_arrives_whole_both_ways_at_mtu_1500() {
    netlab::require_root();
    udp_4000("uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_4000_byte_udp_datagram_arrives_whole_both_ways_at_mtu_1500_on_syscalls() {
    netlab::require_root();
    udp_4000("syscalls");
}

fn udp_4000(backend: &str) {
    udp_4000_in(lab(1, |o| o.gateway_extra = io(backend)));
}

/// A 4000-byte datagram from environment 0 of `lab` to the server and back.
fn udp_4000_in(lab: Lab) {
    let backend = lab.gateway().io_backend().to_string();
    let backend = backend.as_str();
    let echo = udp_echo(&lab, 7500);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 + 3) as u8).collect();
    let p = payload.clone();
    let reply = lab.envs[0].run(move || udp_ask(SocketAddrV4::new(SERVER, 7500), &p)).expect("an answer");
    let text_end = reply.iter().position(|&b| b == b'|').expect("source|payload");
    let seen: SocketAddrV4 = std::str::from_utf8(&reply[..text_end]).unwrap().parse().unwrap();
    assert_eq!(*seen.ip(), lab.eni, "the server saw the ENI address");
    assert_eq!(&reply[text_end + 1..], &payload[..], "4000 bytes out and back, whole");
    check_backend(&lab, backend);
    let _ = env_addr(0);
    drop(lab);
    let _ = echo.join();
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn every_namespace_and_tap_is_removed_when_a_test_fails() {
    netlab::require_root();
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = std::sync::Arc::clone(&names);
    let r = std::panic::catch_unwind(move || {
        let lab = lab(2, |_| {});
        let mut v = n2.lock().unwrap();
        v.extend(lab.envs.iter().map(|n| n.name().to_string()));
        v.extend(lab.taps.iter().cloned());
        drop(v);
        panic!("a failing test");
    });
    assert!(r.is_err());
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = std::process::Command::new("ip").args(["-all", "netns", "exec", "ip", "-o", "link"]).output();
    let list = String::from_utf8_lossy(&netns.stdout).to_string()
        + &links.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let root_links = std::fs::read_dir("/sys/class/net").unwrap().filter_map(|e| e.ok()).map(|e| e.file_name());
    let root_links: Vec<String> = root_links.map(|n| n.to_string_lossy().to_string()).collect();
    for n in names.lock().unwrap().iter() {
        assert!(!list.contains(n.as_str()), "{n} left behind");
        assert!(!root_links.contains(n), "{n} left behind in the root namespace");
    }
    let _: Ipv4Addr = INSIDE_GATEWAY;
}

/// The outside on a veth through AF_PACKET, as a new user would set it
/// up: the VPC end keeps the offloads Linux gives a veth (checksum and
/// segmentation offload on), so the VPC's replies arrive with partial
/// checksums and as TSO superframes. Two workers, 200 environments each
/// making a TCP request/response, a UDP exchange and a ping.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn two_hundred_environments_through_af_packet_on_a_veth_with_default_offloads() {
    netlab::require_root();
    let r = demo::run(&Options { envs: 200, workers: 2, af_packet: true, ..Options::default() }).expect("demo runs");
    assert!(r.offloads, "offloads stay on with an AF_PACKET outside");
    let failed: Vec<_> = r.per_env.iter().filter(|e| !e.errors.is_empty()).take(5).collect();
    assert_eq!(r.envs_ok, 200, "drops {:?}, first failures {failed:#?}", r.drops);
    assert_eq!(r.server_saw_sources, vec![r.eni_address]);
    assert_eq!(r.drops.get("bad_checksum"), None, "{:?}", r.drops);
    assert_eq!(r.drops.get("rx_overflow"), None, "the sockets' buffers hold the burst: {:?}", r.drops);
    assert_eq!(r.drops.get("not_for_us"), None, "the workers read back none of their own frames: {:?}", r.drops);
}

/// Two environments on two workers, 16 UDP flows each: the kernel's
/// fanout program delivers every reply from the VPC to the socket of the
/// worker that owns its ENI port, so no worker hands a frame over (each
/// hand-over wakes the owner; only ARP copies do). By flow hash about half
/// the replies would land on the other worker.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn the_kernel_steers_each_frame_from_the_vpc_to_the_worker_owning_its_port() {
    netlab::require_root();
    let lab = af_packet_lab(2, 2);
    assert_eq!(lab.gateway().outside_rx, "fanout-steered");
    let echo = udp_echo(&lab, 7600);
    for i in 0..2 {
        for k in 0..16 {
            let msg = format!("flow {k}");
            let reply = lab.envs[i].run(move || udp_ask(SocketAddrV4::new(SERVER, 7600), msg.as_bytes()));
            assert!(reply.is_some(), "environment {i}, flow {k}: no answer");
        }
    }
    let s = lab.gateway().syscalls();
    // [read, write, epoll_wait, io_uring_enter, send, recv, wake]
    assert!(s[6] <= 4, "wake-ups of another worker (hand-overs and ARP copies): {s:?}");
    check_fanout(&lab);
    drop(lab);
    let _ = echo.join();
}

/// Issue 11: the outside TAP's steering program gives each frame from the
/// VPC to the queue of the worker owning its ENI port: 32 datagrams from
/// the VPC to ports of both workers' slices reach their owners with no
/// hand-over (each would wake the owner). By flow hash about half would
/// land on the other worker's queue. (The datagrams have no session: each
/// owner drops its own and counts it.)
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn the_outside_tap_steers_each_frame_from_the_vpc_to_the_worker_owning_its_port() {
    netlab::require_root();
    let lab = lab(2, |o| {
        o.workers = 2;
        o.gateway_extra = "port_range = \"20000-20031\"".into();
    });
    let g = lab.gateway();
    assert_eq!(g.outside_rx, "tap-steered");
    // Two environments on two workers weigh equally: halves of the range.
    let owner = |p: u16| usize::from(p >= 20016);
    let eni = lab.eni;
    let send = move |ports: Vec<u16>| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for p in ports {
            s.send_to(b"to the owner", SocketAddrV4::new(eni, p)).unwrap();
        }
    };
    // The VPC router resolves the ENI first (ARP is copied to every worker).
    lab.server.run(move || send(vec![20000]));
    std::thread::sleep(Duration::from_millis(300));
    let wakes = |w: usize| g.io_counters()[w].wake.get();
    let no_session = |w: usize| g.counters()[w].dropped(DropReason::NoSession);
    let (wakes0, drops0) = ([wakes(0), wakes(1)], [no_session(0), no_session(1)]);
    lab.server.run(move || send((20000..=20031).collect()));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while no_session(0) + no_session(1) < drops0[0] + drops0[1] + 32 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in 0..2 {
        let mine = (20000..=20031u16).filter(|&p| owner(p) == w).count() as u64;
        assert_eq!(no_session(w) - drops0[w], mine, "worker {w} dropped the datagrams to its own ports");
        assert_eq!(wakes(w) - wakes0[w], 0, "worker {w} handed frames over");
    }
}

/// With `outside.fanout = false` one reader thread reads for both workers
/// (the path taken where the kernel refuses a fanout group): the same
/// traffic passes, the VPC's partial checksums and superframes included.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn one_af_packet_reader_thread_feeds_every_worker_without_fanout() {
    netlab::require_root();
    let lab = lab(2, |o| {
        o.af_packet = true;
        o.workers = 2;
        o.outside_extra = "fanout = false".into();
    });
    let g = lab.gateway();
    assert_eq!(g.io_counters().len(), g.workers() + 1, "a reader thread after the workers");
    transfer_in(&lab, Direction::Download);
    let t = lab.gateway().totals();
    assert_eq!(t.dropped(DropReason::NotForUs), 0, "the reader reads back none of the workers' frames: {:?}", t.drops);
    hairpin_in(lab);
}

/// Each worker reads its own socket of a `PACKET_FANOUT` group: no reader
/// thread (its system calls would be counted after the workers').
#[track_caller]
fn check_fanout(lab: &Lab) {
    let g = lab.gateway();
    assert_eq!(g.io_counters().len(), g.workers(), "one socket per worker, no reader thread");
    let t = g.totals();
    assert_eq!(t.dropped(DropReason::NotForUs), 0, "the workers read back none of their own frames: {:?}", t.drops);
}

fn af_packet_lab(envs: usize, workers: usize) -> Lab {
    lab(envs, |o| {
        o.af_packet = true;
        o.workers = workers;
    })
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn ping_and_icmp_errors_through_af_packet_on_a_veth_with_default_offloads() {
    netlab::require_root();
    ping_and_icmp_errors_in(af_packet_lab(1, 1));
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn hairpinning_through_af_packet_on_a_veth_with_default_offloads() {
    netlab::require_root();
    let lab = af_packet_lab(2, 2);
    check_fanout(&lab);
    hairpin_in(lab);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_4000_byte_udp_datagram_arrives_whole_through_af_packet_on_a_veth_with_default_offloads() {
    netlab::require_root();
    udp_4000_in(af_packet_lab(1, 1));
}

/// 100 MB each way through an AF_PACKET outside on a veth with default
/// offloads: uploads leave as TSO superframes, downloads arrive as ones
/// with partial checksums.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_100_mb_tcp_transfer_each_way_arrives_byte_exact_through_af_packet_on_a_veth() {
    netlab::require_root();
    let lab = af_packet_lab(1, 2);
    assert!(lab.gateway().offloads);
    transfer_in(&lab, Direction::Upload);
    transfer_in(&lab, Direction::Download);
    check_fanout(&lab);
    assert_eq!(lab.gateway().outside_rx, "fanout-steered");
    assert!(lab.gateway().outside_ring, "on packet rings (the default)");
}

/// Issue 16: on packet rings (the default) the workers read the VPC side
/// without a system call per frame (no `recv` but for a superframe, which
/// the ring queues whole on the socket) and send to it through the
/// transmit ring (a kick per wake-up; one kick for many frames is checked
/// in `dataplane/io/tests/ring.rs`), on both I/O paths; the VPC's partial
/// checksums and superframes pass both ways.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn af_packet_rings_read_and_write_without_a_system_call_per_frame() {
    netlab::require_root();
    for (k, backend) in ["syscalls", "uring"].into_iter().enumerate() {
        let lab = lab(1, |o| {
            o.af_packet = true;
            o.workers = 2;
            o.gateway_extra = io(backend);
        });
        assert!(lab.gateway().outside_ring, "{backend}: on packet rings");
        let port = 7800 + k as u16;
        let echo = udp_echo(&lab, port);
        for i in 0..40 {
            let msg = format!("ask {i}");
            let reply = lab.envs[0].run(move || udp_ask(SocketAddrV4::new(SERVER, port), msg.as_bytes()));
            assert!(reply.is_some(), "{backend}: ask {i}: no answer");
        }
        // [read, write, epoll_wait, io_uring_enter, send, recv, wake]
        let s = lab.gateway().syscalls();
        assert_eq!(s[5], 0, "{backend}: no recv for small frames on rings: {s:?}");
        assert!(s[4] > 0, "{backend}: the transmit rings were kicked: {s:?}");
        transfer_in(&lab, Direction::Download);
        transfer_in(&lab, Direction::Upload);
        let t = lab.gateway().totals();
        let s = lab.gateway().syscalls();
        let (inbound, outbound) = (t.inbound.0, t.outbound.0);
        assert!(s[4] > 0 && outbound > 1000, "{backend}: frames out through the rings: {outbound}, sends {s:?}");
        assert!(inbound > 1000, "{backend}: frames in through the rings: {inbound}");
        check_fanout(&lab);
        check_backend(&lab, backend);
        drop(lab);
        let _ = echo.join();
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn af_packet_sends_are_gathered_with_sendmmsg_on_syscalls() {
    netlab::require_root();
    let lab = lab(2, |o| {
        o.af_packet = true;
        o.gateway_extra = io("syscalls");
        o.outside_extra = "ring = false".into();
    });
    assert!(!lab.gateway().outside_ring);
    assert!(lab.gateway().offloads);
    let echo = udp_echo(&lab, 7700);
    for i in 0..2 {
        let reply = lab.envs[i].run(|| udp_ask(SocketAddrV4::new(SERVER, 7700), b"through af_packet"));
        let reply = reply.unwrap_or_else(|| panic!("environment {i}: no answer"));
        assert!(reply.ends_with(b"|through af_packet"), "{}", String::from_utf8_lossy(&reply));
        assert!(reply.starts_with(lab.eni.to_string().as_bytes()), "seen from the ENI address");
    }
    check_backend(&lab, "syscalls");
    // [read, write, epoll_wait, io_uring_enter, send, recv, wake]
    let s = lab.gateway().syscalls();
    assert!(s[4] > 0 && s[5] > 0, "sendmmsg to the outside, recv by the workers: {s:?}");
    check_fanout(&lab);
    drop(lab);
    let _ = echo.join();
}

/// Issue 15: environments attached directly (`kind = "af-packet"` on the
/// root-namespace end of each environment's veth, as on a VMM's TAP):
/// ping and ICMP errors, hairpin, a 4000-byte datagram, 100 MB each way
/// byte-exact, on both I/O paths.
fn direct_lab(envs: usize, backend: &str, offloads: bool) -> Lab {
    lab(envs, |o| {
        o.direct_veth = true;
        o.offloads = offloads;
        o.gateway_extra = io(backend);
    })
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veths")]
fn direct_attach_on_a_veth_ping_hairpin_and_udp() {
    netlab::require_root();
    for backend in ["uring", "syscalls"] {
        let l = direct_lab(2, backend, true);
        assert!(l.gateway().inside.iter().all(|d| d.kind() == "af-packet"));
        assert!(l.gateway().inside.iter().all(|d| d.on_rings()), "{backend}: on packet rings by default");
        ping_and_icmp_errors_in(l);
        hairpin_in(direct_lab(2, backend, true));
        udp_4000_in(direct_lab(1, backend, true));
    }
}

/// `ring = false` on a direct attachment keeps the plain sockets (one
/// `recv` per frame read): still ping, ICMP errors, hairpin and a
/// 4000-byte datagram, on both I/O paths.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veths")]
fn direct_attach_on_plain_sockets_with_ring_false() {
    netlab::require_root();
    let plain = |envs: usize, backend: &str| {
        lab(envs, |o| {
            o.direct_veth = true;
            o.gateway_extra = io(backend);
            o.attachment_extra = "ring = false".into();
        })
    };
    for backend in ["uring", "syscalls"] {
        let l = plain(2, backend);
        assert!(l.gateway().inside.iter().all(|d| d.kind() == "af-packet" && !d.on_rings()), "{backend}");
        ping_and_icmp_errors_in(l);
        hairpin_in(plain(2, backend));
        let l = plain(1, backend);
        assert!(!l.gateway().inside[0].on_rings());
        udp_4000_in(l);
    }
}

/// Issue 15/16: a direct attachment on packet rings reads and writes
/// without a system call per frame. Worker 0 (the only one) is held busy
/// while 100 datagrams queue on the attachment, and again while the 100
/// replies queue on the outside (also on rings), so each direction is one
/// burst: on rings, every system call the gateway makes for those 200
/// frames comes to well under one per frame (a walk of the ring, one kick
/// per wake-up, no `recv`); on plain sockets (`ring = false`), at least
/// one per frame (a `recv` each in, a `send` each out on syscalls).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veths")]
fn direct_attach_rings_read_and_write_without_a_system_call_per_frame() {
    netlab::require_root();
    const N: usize = 100;
    for (backend, ring) in [("syscalls", true), ("uring", true), ("syscalls", false)] {
        let l = lab(1, |o| {
            o.direct_veth = true;
            o.af_packet = true;
            o.workers = 1;
            o.gateway_extra = io(backend);
            o.attachment_extra = format!("ring = {ring}");
        });
        assert_eq!(l.gateway().inside[0].on_rings(), ring, "{backend}");
        assert!(l.gateway().outside_ring, "{backend}: the outside on rings too");
        let port = 7950;
        let server = l.server.run(move || UdpSocket::bind(SocketAddrV4::new(SERVER, port)).expect("bind"));
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let env = l.envs[0].run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
        env.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = SocketAddrV4::new(SERVER, port);
        let mut buf = [0u8; 2048];
        // The session and the neighbours first, outside the count.
        env.send_to(b"warm", dst).unwrap();
        let (_, from) = server.recv_from(&mut buf).expect("warm-up datagram");
        server.send_to(b"warm", from).unwrap();
        env.recv_from(&mut buf).expect("warm-up reply");
        let g = l.gateway();
        let before = g.syscalls();
        let out = std::thread::scope(|s| {
            // Holds worker 0 until released (at most 5 s).
            let hold = || {
                let (held_tx, held) = std::sync::mpsc::sync_channel::<()>(1);
                let (release, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
                s.spawn(move || {
                    g.call(0, move |_| {
                        let _ = held_tx.send(());
                        let _ = release_rx.recv_timeout(Duration::from_secs(5));
                    })
                });
                held.recv_timeout(Duration::from_secs(5)).expect("worker held");
                release
            };
            let release = hold();
            for i in 0..N {
                env.send_to(format!("ask {i}").as_bytes(), dst).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
            drop(release);
            for i in 0..N {
                server.recv_from(&mut buf).unwrap_or_else(|e| panic!("{backend} ring={ring}: request {i}: {e}"));
            }
            let release = hold();
            for i in 0..N {
                server.send_to(format!("reply {i}").as_bytes(), from).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
            drop(release);
            (0..N).filter(|_| env.recv_from(&mut buf).is_ok()).count()
        });
        assert_eq!(out, N, "{backend} ring={ring}: every reply arrived");
        let after = g.syscalls();
        // [read, write, epoll_wait, io_uring_enter, send, recv, wake]
        let d: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let calls: u64 = d[..6].iter().sum();
        let per_frame = calls as f64 / (2 * N) as f64;
        eprintln!("{backend} ring={ring}: {per_frame:.2} system calls per frame ({d:?})");
        if ring {
            assert_eq!(d[5], 0, "{backend}: no recv for small frames on rings: {d:?}");
            assert!(d[4] > 0, "{backend}: the transmit rings were kicked: {d:?}");
            assert!(per_frame < 0.25, "{backend}: {per_frame:.2} system calls per frame on rings: {d:?}");
        } else {
            assert!(d[5] >= N as u64, "{backend}: a recv per frame read on plain sockets: {d:?}");
            assert!(per_frame >= 1.0, "{backend}: {per_frame:.2} system calls per frame on plain sockets: {d:?}");
        }
        check_backend(&l, backend);
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veths")]
fn direct_attach_on_a_veth_carries_100_mb_each_way_byte_exact() {
    netlab::require_root();
    // Offloads on only: the environment's veth hands over TCP superframes
    // whatever the gateway asks, and without offloads the outside TAP has
    // no way to take them (see the README's Attaching microVMs).
    for backend in ["uring", "syscalls"] {
        let l = direct_lab(1, backend, true);
        transfer_in(&l, Direction::Upload);
        transfer_in(&l, Direction::Download);
        let t = l.gateway().totals();
        assert_eq!(t.dropped(DropReason::TxFailed), 0, "{backend}: {t:?}");
    }
}

/// Issue 15: an `af-packet` attachment whose interface is missing, or whose
/// MTU is below the attachment's, stops the start with an error naming the
/// interface (and nothing is left behind).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veths")]
fn a_direct_attach_on_a_missing_or_too_small_interface_is_refused() {
    netlab::require_root();
    let missing = netlab::unique("hpl");
    let e = Lab::build(&Options { direct: Some(vec![missing.clone()]), ..Options::default() }).err().expect("refused");
    assert!(e.to_string().contains(&missing), "{e}");
    let small = netlab::unique("hpl");
    let peer = netlab::unique("hpl");
    netlab::veth(&small, None, &peer, None).expect("veth");
    netlab::ip_batch(None, &[format!("link set {small} mtu 1400 up")]).expect("mtu");
    let e = Lab::build(&Options { direct: Some(vec![small.clone()]), ..Options::default() }).err().expect("refused");
    let text = e.to_string();
    let _ = netlab::ip_batch(None, &[format!("link del {small}")]);
    assert!(text.contains(&small) && text.contains("mtu = 1500") && text.contains("1400"), "{text}");
}

/// Issue 16: an idle gateway on packet rings sleeps: its workers make
/// (almost) no system calls while nothing arrives, on both I/O paths (a
/// ring that stayed readable, or a poll that kept completing, would spin).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn an_idle_gateway_on_packet_rings_sleeps() {
    netlab::require_root();
    for backend in ["syscalls", "uring"] {
        let lab = lab(1, |o| {
            o.af_packet = true;
            o.workers = 2;
            o.gateway_extra = io(backend);
        });
        assert!(lab.gateway().outside_ring, "{backend}: on packet rings");
        let port = 7900;
        let echo = udp_echo(&lab, port);
        let reply = lab.envs[0].run(move || udp_ask(SocketAddrV4::new(SERVER, port), b"wake up"));
        assert!(reply.is_some(), "{backend}: no answer");
        std::thread::sleep(Duration::from_millis(300));
        let before: u64 = lab.gateway().syscalls().iter().sum();
        std::thread::sleep(Duration::from_millis(1000));
        let after: u64 = lab.gateway().syscalls().iter().sum();
        assert!(after - before < 100, "{backend}: {} system calls in an idle second", after - before);
        drop(lab);
        let _ = echo.join();
    }
}
