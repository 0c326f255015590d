//! A `vhost-user` attachment end to end, without a VM: the test plays the
//! VMM and the guest's driver (`dataplane_io::vhost_user::frontend`) on a
//! lab gateway's vhost-user socket, and the guest's network stack by hand
//! (ARP, one UDP exchange with the server in the VPC namespace), on both
//! I/O paths.

use dataplane::testkit::{self, IpOpts};
use dataplane_io::vhost_user::frontend::{TestFrontend, BUF_LEN, QUEUE_SIZE};
use netlab::lab::{Lab, Options};
use netlab::{env_addr, INSIDE_GATEWAY, SERVER};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A lab whose one attachment is `vhost-user` on `socket`, with one
/// environment behind it.
fn lab(socket: &std::path::Path, backend: &str) -> Lab {
    lab_with(&[socket.to_path_buf()], backend, 0)
}

/// A lab with one `vhost-user` attachment per socket (`vm{i}`, one
/// environment each) and `workers` workers (0: the default).
fn lab_with(sockets: &[PathBuf], backend: &str, workers: usize) -> Lab {
    let opts = Options {
        vhost_user: Some(sockets.to_vec()),
        gateway_extra: format!("io.backend = \"{backend}\""),
        workers,
        ..Options::default()
    };
    Lab::build(&opts).expect("lab builds")
}

/// An ARP frame: `op` 1 (request) or 2 (reply).
fn arp(op: u16, src_mac: [u8; 6], src_ip: Ipv4Addr, dst_mac: [u8; 6], dst_ip: Ipv4Addr) -> Vec<u8> {
    let eth_dst = if op == 1 { [0xff; 6] } else { dst_mac };
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&if op == 1 { [0; 6] } else { dst_mac });
    f.extend_from_slice(&dst_ip.octets());
    f
}

/// The guest asks for its default gateway's MAC, as a guest's first frame
/// does; returns it.
fn resolve_gateway(fe: &mut TestFrontend) -> [u8; 6] {
    fe.send(&[&arp(1, GUEST_MAC, env_addr(0), [0; 6], INSIDE_GATEWAY)]);
    let reply = guest_wait(fe, Duration::from_secs(5), |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == INSIDE_GATEWAY.octets()
    })
    .expect("the gateway answers ARP for its address");
    let mut gw_mac = [0u8; 6];
    gw_mac.copy_from_slice(&reply[22..28]);
    gw_mac
}

/// The guest's side: answers ARP requests for its address; returns the
/// first frame `want` accepts.
fn guest_wait(fe: &mut TestFrontend, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let me = env_addr(0);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        fe.post_rx(BUF_LEN as u32);
        while let Some((_, f)) = fe.recv() {
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == me.octets() {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[22..28]);
                let who = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
                fe.reclaim_tx();
                fe.send(&[&arp(2, GUEST_MAC, me, mac, who)]);
                continue;
            }
            if want(&f) {
                return Some(f);
            }
        }
        fe.wait_call(Duration::from_millis(5));
    }
    None
}

fn exchange(backend: &str) {
    netlab::require_root();
    let socket = PathBuf::from(format!("/tmp/hp-vhost-e2e-{backend}-{}.sock", std::process::id()));
    let lab = lab(&socket, backend);
    let server = lab.server.run(|| UdpSocket::bind(SocketAddrV4::new(SERVER, 7777))).expect("server socket");
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut fe = TestFrontend::connect(&socket, QUEUE_SIZE, 0).expect("the gateway's vhost-user socket");
    fe.post_rx(BUF_LEN as u32);
    let me = env_addr(0);

    // ARP for the default gateway.
    let gw_mac = resolve_gateway(&mut fe);

    // One datagram out, seen from the ENI address; the answer comes back in.
    let seg = testkit::udp_segment(me, 5555, SERVER, 7777, b"hello from the guest");
    let f = testkit::ipv4_frame(gw_mac, GUEST_MAC, me, SERVER, dataplane::flow::UDP, IpOpts::default(), &seg);
    fe.reclaim_tx();
    assert_eq!(fe.send(&[&f]), 1);
    let mut buf = [0u8; 256];
    let (n, from) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("the server gets the datagram: {e}; {:?}", lab.gateway().totals()));
    assert_eq!(&buf[..n], b"hello from the guest");
    let std::net::SocketAddr::V4(from) = from else { panic!("{from}") };
    assert_eq!(*from.ip(), lab.eni, "seen from the ENI address");
    server.send_to(b"pong", from).unwrap();
    let back = guest_wait(&mut fe, Duration::from_secs(5), |f| f.len() >= 42 && f[23] == 17 && f.ends_with(b"pong"))
        .expect("the answer reaches the guest");
    assert_eq!(&back[30..34], &me.octets(), "to the environment's own address");
    assert_eq!(u16::from_be_bytes([back[36], back[37]]), 5555);
    assert!(testkit::checksums_ok(&back));
    // The device adds its counts when a batch ends, just after the guest
    // could see the frames: a moment's wait.
    let end = Instant::now() + Duration::from_secs(2);
    let c = loop {
        let c = lab.runtime().shared().stats().io.vhost_user["vm0"].clone();
        if c["guest_rx_frames"] >= 2 || Instant::now() > end {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((c["guest_tx_frames"], c["malformed_chains"]), (2, 0), "ARP and the datagram, counted: {c:?}");
    assert!(c["guest_rx_frames"] >= 2, "the ARP reply and the answer: {c:?}");
    drop(fe);
    drop(lab);
    assert!(!socket.exists(), "the socket goes with the gateway");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_vhost_user_guest_reaches_the_vpc_from_the_eni_address() {
    exchange("uring");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_vhost_user_guest_reaches_the_vpc_on_syscalls() {
    exchange("syscalls");
}

/// A frame for a vhost-user guest produced on a worker that does not own
/// the guest's port is handed to the owner (only the owner writes the
/// guest's queues) and reaches the guest. Two workers, two vhost-user
/// attachments (one each; the second has no VMM); the first guest's flow
/// gets its session on the worker that does not own its port (its first
/// datagram given to that worker's engine directly, as after the guest
/// moved between attachments), so the server's replies to its ENI port are
/// steered there, translated, handed over, and written by the owner: every
/// reply arrives, the other worker woke the owner for them, and the
/// flow's session exists only on the other worker.
fn handed_over(backend: &str) {
    netlab::require_root();
    let sockets: Vec<PathBuf> = (0..2)
        .map(|i| PathBuf::from(format!("/tmp/hp-vhost-hand-{backend}-{i}-{}.sock", std::process::id())))
        .collect();
    let socket = &sockets[0];
    let t0 = Instant::now();
    let lab = lab_with(&sockets, backend, 2);
    let Some(owner) = (match lab.gateway().inside[0].as_ref() {
        dataplane_io::Inside::VhostUser(v) => v.owner(),
        _ => None,
    }) else {
        panic!("a worker owns the vhost-user port")
    };
    let other = 1 - owner;
    let server = lab.server.run(|| UdpSocket::bind(SocketAddrV4::new(SERVER, 7778))).expect("server socket");
    let mut fe = TestFrontend::connect(socket, QUEUE_SIZE, 0).expect("the gateway's vhost-user socket");
    fe.post_rx(BUF_LEN as u32);
    let me = env_addr(0);
    let gw_mac = resolve_gateway(&mut fe);

    // The guest's datagram, processed by the other worker's engine (the
    // engines' clock: milliseconds since the gateway started, plus 1000;
    // counted from before the lab was built, so never behind it).
    let seg = testkit::udp_segment(me, 5600, SERVER, 7778, b"from the guest");
    let f = testkit::ipv4_frame(gw_mac, GUEST_MAC, me, SERVER, dataplane::flow::UDP, IpOpts::default(), &seg);
    let port = dataplane::PortId(1);
    // Forwarded at once (the port read from the translated frame), or
    // held until the VPC router's address is resolved and then sent by
    // that worker (the port seen by the server).
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mapped = lab
        .gateway()
        .call(other, move |e| {
            let now = dataplane::time::Instant::from_millis(1000 + t0.elapsed().as_millis() as u64);
            let mut buf = f.clone();
            let len = buf.len();
            buf.resize(2048, 0);
            match e.process(now, port, &mut buf, len) {
                dataplane::engine::Action::Forward { port, .. } if port == dataplane::PortId::OUTSIDE => {
                    Ok(Some(u16::from_be_bytes([buf[34], buf[35]])))
                }
                dataplane::engine::Action::Consumed => Ok(None),
                a => Err(format!("{a:?}")),
            }
        })
        .expect("the other worker runs")
        .unwrap_or_else(|a| panic!("the other worker's engine takes the guest's datagram: {a}"))
        .unwrap_or_else(|| {
            let mut buf = [0u8; 256];
            let (n, from) = server.recv_from(&mut buf).expect("the datagram, once the router is resolved");
            assert_eq!(&buf[..n], b"from the guest");
            let std::net::SocketAddr::V4(from) = from else { panic!("{from}") };
            assert_eq!(*from.ip(), lab.eni, "seen from the ENI address");
            from.port()
        });
    let wakes = |w: usize| lab.gateway().io_counters()[w].wake.get();
    let woken_before = wakes(other);
    const N: usize = 20;
    for i in 0..N {
        server.send_to(format!("reply {i:02}").as_bytes(), SocketAddrV4::new(lab.eni, mapped)).unwrap();
    }
    let mut got = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(10);
    while got.len() < N && Instant::now() < end {
        let back = guest_wait(&mut fe, Duration::from_millis(500), |f| {
            f.len() >= 42 && f[23] == 17 && u16::from_be_bytes([f[36], f[37]]) == 5600
        });
        if let Some(b) = back {
            assert!(testkit::checksums_ok(&b));
            assert_eq!(&b[30..34], &me.octets(), "to the guest's own address");
            got.insert(b[b.len() - 8..].to_vec());
        }
    }
    assert_eq!(got.len(), N, "{backend}: every reply reached the guest: {:?}", lab.gateway().totals());
    assert!(wakes(other) > woken_before, "{backend}: worker {other} handed the frames to worker {owner}");
    let sessions = lab.gateway().query(|e| e.sessions().len());
    assert!(sessions[other] == 1 && sessions[owner] == 0, "{backend}: the flow lives on worker {other}: {sessions:?}");
    drop(fe);
    drop(lab);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_frame_for_a_vhost_user_guest_from_another_worker_is_handed_to_its_owner() {
    handed_over("uring");
    handed_over("syscalls");
}
