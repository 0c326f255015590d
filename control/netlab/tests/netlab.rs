//! Integration tests of the namespace lab. They need root; without it each test prints "skipping: needs root".

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netlab::probe::{self, IcmpReport, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED};
use netlab::{KernelNat, Netns, INSIDE_GATEWAY, SERVER, VPC_ROUTER};

/// The names `ip netns list` shows.
fn listed() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn namespace_is_removed_on_drop_and_on_panic() {
    netlab::require_root();
    let name = netlab::unique("tns");
    {
        let ns = Netns::new(name.clone()).unwrap();
        assert!(listed().contains(&name));
        // The loopback is up: a socket can talk to itself.
        let echoed = ns.run(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"hi", s.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 8];
            s.recv(&mut buf).unwrap()
        });
        assert_eq!(echoed, 2);
    }
    assert!(!listed().contains(&name), "{name} left behind by drop");

    // A process left running in the namespace is killed, not left as a stray.
    let name = netlab::unique("tns");
    let ns = Netns::new(name.clone()).unwrap();
    let mut child = ns.spawn(&["sleep", "30"]).unwrap();
    drop(ns);
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep should have been killed");
    assert!(!listed().contains(&name));

    let name = netlab::unique("tns");
    let inner = name.clone();
    let result = std::panic::catch_unwind(move || {
        let _ns = Netns::new(inner).unwrap();
        panic!("test body fails while the namespace exists (expected)");
    });
    assert!(result.is_err());
    assert!(!listed().contains(&name), "{name} left behind by unwinding");
    assert!(!Path::new("/run/netns").join(&name).exists());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn errors_name_the_command_and_its_stderr() {
    netlab::require_root();
    let ns = Netns::new(netlab::unique("ter")).unwrap();
    let err = ns.addr_add("nosuchlink", "10.9.9.9/24").unwrap_err().to_string();
    assert!(err.contains("ip -n") && err.contains("addr add 10.9.9.9/24 dev nosuchlink"), "{err}");
    assert!(err.contains("nosuchlink"), "{err}");
    let err = ns.ip_batch(&["link set lo up", "link set nosuchlink up"]).unwrap_err().to_string();
    assert!(err.contains("link set nosuchlink up"), "{err}");
    let err = ns.exec(&["no-such-tool-hp"]).unwrap_err().to_string();
    assert!(err.contains("no-such-tool-hp"), "{err}");
    // Creating a name that exists fails and must not delete the existing namespace.
    assert!(Netns::new(ns.name()).is_err());
    assert!(listed().contains(&ns.name().to_owned()));
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn veth_pair_carries_udp_between_namespace_threads() {
    netlab::require_root();
    let a = Netns::new(netlab::unique("tva")).unwrap();
    let b = Netns::new(netlab::unique("tvb")).unwrap();
    netlab::veth("v0", Some(&a), "v1", Some(&b)).unwrap();
    a.addr_add("v0", "10.99.0.1/24").unwrap();
    b.addr_add("v1", "10.99.0.2/24").unwrap();
    a.link_up("v0").unwrap();
    b.link_up("v1").unwrap();

    let receiver = b.run(|| UdpSocket::bind("10.99.0.2:0").unwrap());
    receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dst = receiver.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    });
    a.thread(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"across the veth", dst).unwrap();
    })
    .join()
    .unwrap();
    let (payload, from) = server.join().unwrap();
    assert_eq!(payload, b"across the veth");
    assert_eq!(from.ip(), Ipv4Addr::new(10, 99, 0, 1));
    assert!(probe::ping(&a, Ipv4Addr::new(10, 99, 0, 2), 2).unwrap());
    assert!(!probe::ping(&a, Ipv4Addr::new(10, 99, 0, 3), 1).unwrap());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn kernel_nat_masquerades_and_relays_icmp_errors() {
    netlab::require_root();
    let started = Instant::now();
    let lab = KernelNat::build("t", 3, true).unwrap();
    eprintln!("KernelNat::build(3 envs) took {:?}", started.elapsed());
    let listener = lab.server_ns().run(|| TcpListener::bind((SERVER, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();

    for i in 0..lab.envs() {
        let mut stream = lab.env_ns(i).run(move || {
            TcpStream::connect_timeout(&SocketAddr::from((SERVER, port)), Duration::from_secs(5)).unwrap()
        });
        stream.write_all(&[i as u8]).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        accepted.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut which = [0u8; 1];
        accepted.read_exact(&mut which).unwrap();
        assert_eq!(which[0] as usize, i);
        assert_eq!(peer.ip(), lab.eni_addr(), "env {i} should be masqueraded to the ENI address");
        // The reply path works too (the VPC has no route to 172.16/12, so this proves the reverse NAT).
        accepted.write_all(b"ok").unwrap();
        let mut reply = [0u8; 2];
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ok");
    }

    let probe_from_env0 = |ttl: u8, port: u16| {
        let dst = SocketAddrV4::new(lab.server_addr(), port);
        lab.env_ns(0).run(move || probe::udp_ttl_probe(dst, ttl, Duration::from_secs(3)).unwrap())
    };
    // 33434: the traceroute port, on which nothing listens.
    assert_eq!(
        probe_from_env0(1, 33434),
        Some(IcmpReport { from: INSIDE_GATEWAY, icmp_type: ICMP_TIME_EXCEEDED, code: 0 })
    );
    assert_eq!(
        probe_from_env0(2, 33434),
        Some(IcmpReport { from: VPC_ROUTER, icmp_type: ICMP_TIME_EXCEEDED, code: 0 })
    );
    assert_eq!(
        probe_from_env0(64, 33434),
        Some(IcmpReport { from: SERVER, icmp_type: ICMP_DEST_UNREACH, code: ICMP_PORT_UNREACH })
    );
    assert!(probe::ping(lab.env_ns(1), SERVER, 2).unwrap());

    let names: Vec<String> =
        [lab.gw_ns(), lab.vpc_ns(), lab.server_ns(), lab.env_ns(0)].iter().map(|ns| ns.name().to_owned()).collect();
    let started = Instant::now();
    drop(lab);
    eprintln!("KernelNat drop took {:?}", started.elapsed());
    let left = listed();
    assert!(names.iter().all(|n| !left.contains(n)), "left behind: {left:?}");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn kernel_nat_without_offloads_and_many_envs() {
    netlab::require_root();
    let started = Instant::now();
    let lab = KernelNat::build("tm", 50, false).unwrap();
    eprintln!("KernelNat::build(50 envs, no offloads) took {:?}", started.elapsed());
    let features = lab.env_ns(49).exec(&["ethtool", "-k", "gw"]).unwrap();
    let features = String::from_utf8_lossy(&features.stdout);
    assert!(features.contains("tcp-segmentation-offload: off"), "{features}");
    let listener = lab.server_ns().run(|| UdpSocket::bind((SERVER, 0)).unwrap());
    listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dst = listener.local_addr().unwrap();
    lab.env_ns(49).run(move || UdpSocket::bind("0.0.0.0:0").unwrap().send_to(b"x", dst).unwrap());
    let (_, from) = listener.recv_from(&mut [0u8; 4]).unwrap();
    assert_eq!(from.ip(), lab.eni_addr());
    let started = Instant::now();
    drop(lab);
    eprintln!("KernelNat drop (50 envs) took {:?}", started.elapsed());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn sweep_stale_removes_namespaces_of_dead_processes_only() {
    netlab::require_root();
    // A prefix of this process's own, so that concurrent runs of this test do not sweep each other's bait.
    let me = radix36(std::process::id());
    let prefix = format!("s{me}");
    // A pid that is certainly dead: a child we have reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("{prefix}-{}-0-gw", radix36(dead));
    let out = Command::new("ip").args(["netns", "add", &stale]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let live = Netns::new(format!("{prefix}-{me}-0-gw")).unwrap();

    let removed = netlab::sweep_stale(&prefix);
    assert_eq!(removed, vec![stale.clone()]);
    let left = listed();
    assert!(!left.contains(&stale), "stale namespace survived: {left:?}");
    assert!(left.contains(&live.name().to_owned()), "a live process's namespace was swept");
}

fn radix36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}
