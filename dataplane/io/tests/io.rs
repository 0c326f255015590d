//! Tests of the I/O edge against the real kernel: TAP creation and
//! configuration, multi-queue, virtio-net headers and offloads, and frames
//! exchanged with the kernel's ARP and TCP stacks in a throwaway network
//! namespace.
//!
//! Everything that creates devices needs root and prints "skipping: needs
//! root" otherwise. Devices are named `hpt{pid}{n}` and vanish when their
//! last descriptor closes; namespaces are deleted by a drop guard.

use dataplane::testkit;
use dataplane_io::vnet::{F_NEEDS_CSUM, GSO_NONE};
use dataplane_io::{
    check_net_admin, complete_checksum, ifreq, AfPacket, IoError, PacketReceiver, Poller, RxOptions, Tap, TapOptions,
    VnetHdr, OFFLOADS_TCP, PACKET_VNET_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_UFO, VNET_HDR_LEN,
};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The first line of every test here that makes devices: those tests are ignored unless built as root
/// (`cfg(root_tests)`, see build.rs), and fail loudly if run without it.
fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "needs root: TAP devices and network namespaces");
}

/// A unique interface name of at most 15 bytes.
fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("hpt{}{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    assert!(name.len() <= 15, "{name}");
    name
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace deleted on drop, even when the test panics.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let ns = format!("{}ns", unique_name());
        run(&["ip", "netns", "add", &ns]);
        Netns(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether interface `name` disappears within 2 s. Not immediate in general:
/// a process forked by a concurrent test (`Command::spawn`) holds a copy of
/// every descriptor until it execs, delaying the last close.
fn gone(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match ifreq::index(name) {
            Err(IoError::NoSuchInterface { .. }) => return true,
            _ if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn privileges_check_matches_euid() {
    require_root();
    assert!(check_net_admin().is_ok());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn create_configure_and_remove() {
    require_root();
    let name = unique_name();
    let tap = Tap::open(&name, TapOptions::default()).expect("open tap");
    assert_eq!(tap.name(), name);
    assert!(!tap.vnet_hdr());
    let idx = ifreq::index(&name).expect("index");
    assert!(idx > 0);

    tap.set_mtu(9000).expect("set mtu");
    assert_eq!(tap.mtu().expect("mtu"), 9000);
    assert_eq!(ifreq::mtu(&name).expect("mtu"), 9000);
    // The largest MTU a TAP takes is 65535 minus the Ethernet header.
    tap.set_mtu(65521).expect("set mtu 65521");
    assert_eq!(tap.mtu().expect("mtu"), 65521);
    for bad in [65522, 67, u32::MAX] {
        assert!(matches!(tap.set_mtu(bad), Err(IoError::Sys { op: "SIOCSIFMTU", .. })), "{bad}");
    }

    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    tap.set_hw_addr(mac).expect("set mac");
    assert_eq!(tap.hw_addr().expect("mac"), mac);
    // Multicast MACs are refused by the kernel, not by a panic.
    assert!(tap.set_hw_addr([0x01, 0, 0, 0, 0, 1]).is_err());

    tap.set_up().expect("up");
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).expect("sysfs flags");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex flags");
    assert_ne!(flags & libc::IFF_UP as u32, 0);
    assert_ne!(u32::from(ifreq::flags(&name).expect("flags")) & libc::IFF_UP as u32, 0);
    // Offloads without a virtio-net header are refused; turning them off is fine.
    assert!(matches!(tap.set_offload(OFFLOADS_TCP), Err(IoError::Sys { op: "TUNSETOFFLOAD", .. })));
    tap.set_offload(0).expect("no offloads");
    // Changing the MAC while up works on a TAP.
    tap.set_hw_addr([0x02, 0, 0, 0, 0, 9]).expect("set mac while up");

    // Nothing queued yet: a non-blocking read says so.
    let mut buf = [0u8; 2048];
    let err = loop {
        match tap.recv(&mut buf) {
            Ok(_) => continue, // IPv6 autoconfiguration chatter after going up
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);

    drop(tap);
    assert!(gone(&name), "device removed on close");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn vnet_header_and_offloads() {
    require_root();
    let name = unique_name();
    let tap = Tap::open(&name, TapOptions { vnet_hdr: true, multi_queue: false }).expect("open tap");
    assert!(tap.vnet_hdr());
    tap.set_offload(OFFLOADS_TCP).expect("offload tcp");
    tap.set_offload(0).expect("offload off");
    tap.set_offload(TUN_F_CSUM | TUN_F_UFO).expect("UFO is accepted with CSUM");
    assert!(tap.set_offload(TUN_F_TSO4).is_err(), "TSO needs CSUM");
    assert!(tap.set_offload(1 << 30).is_err(), "unknown offload flags are rejected");
    // A vnet-header device refuses a read buffer shorter than the header.
    let mut small = [0u8; VNET_HDR_LEN - 1];
    let err = tap.recv(&mut small).expect_err("short buffer");
    assert!(matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::EAGAIN)), "{err:?}");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn multi_queue() {
    require_root();
    let name = unique_name();
    let q0 = Tap::open(&name, TapOptions { vnet_hdr: true, multi_queue: true }).expect("open tap");
    let q1 = q0.open_queue().expect("second queue");
    let q2 = q1.open_queue().expect("third queue");
    assert_eq!(q2.name(), name);
    assert!(q2.vnet_hdr() && q2.multi_queue());
    let idx = ifreq::index(&name).expect("index");
    // Closing some queues keeps the device.
    drop(q0);
    drop(q2);
    assert_eq!(ifreq::index(&name).expect("index"), idx);
    // A single-queue open of a multi-queue device is refused clearly.
    assert!(matches!(Tap::open(&name, TapOptions::default()), Err(IoError::NotTap { .. })));
    drop(q1);
    assert!(gone(&name), "device removed when its last queue closes");

    // A single-queue device has no second queue.
    let single = Tap::open(&unique_name(), TapOptions::default()).expect("open tap");
    assert!(matches!(single.open_queue(), Err(IoError::NotTap { .. })));
    assert!(matches!(Tap::open(single.name(), TapOptions::default()), Err(IoError::NotTap { .. })));
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn bad_names_and_non_taps() {
    assert!(matches!(ifreq::index("nonexistent0"), Err(IoError::NoSuchInterface { .. })));
    assert!(matches!(Tap::open("", TapOptions::default()), Err(IoError::BadName { .. })));
    assert!(matches!(Tap::open("sixteen-bytes-xx", TapOptions::default()), Err(IoError::BadName { .. })));
    require_root();
    let err = Tap::open("lo", TapOptions::default()).expect_err("lo is not a TAP");
    assert!(matches!(err, IoError::NotTap { .. }), "{err:?}");
    assert!(err.to_string().contains("lo"), "{err}");
    assert!(matches!(ifreq::set_mtu("nonexistent0", 1500), Err(IoError::NoSuchInterface { .. })));
}

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
const OUR_IP: [u8; 4] = [10, 199, 0, 2];
const KERNEL_IP: [u8; 4] = [10, 199, 0, 1];

/// A TAP moved into a fresh namespace, addressed 10.199.0.1/24 and up.
fn tap_in_netns(opts: TapOptions) -> (Netns, Tap) {
    let ns = Netns::new();
    let name = unique_name();
    let tap = Tap::open(&name, opts).expect("open tap");
    run(&["ip", "link", "set", &name, "netns", &ns.0]);
    run(&["ip", "-n", &ns.0, "addr", "add", "10.199.0.1/24", "dev", &name]);
    run(&["ip", "-n", &ns.0, "link", "set", &name, "up"]);
    (ns, tap)
}

/// Reads frames (header stripped into the returned `VnetHdr`) until `want`
/// accepts one or 3 s pass.
fn recv_until(tap: &Tap, want: impl Fn(&[u8]) -> bool) -> Option<(VnetHdr, Vec<u8>)> {
    let poller = Poller::new().expect("poller");
    poller.add(tap, 1).expect("add");
    let mut events = dataplane_io::Events::with_capacity(4);
    let mut buf = vec![0u8; 65_536 + VNET_HDR_LEN];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        poller.wait(&mut events, Some(Duration::from_millis(100))).expect("wait");
        loop {
            let n = match tap.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            };
            let (hdr, frame) = if tap.vnet_hdr() {
                (VnetHdr::parse(&buf[..n]).expect("header"), &buf[VNET_HDR_LEN..n])
            } else {
                (VnetHdr::default(), &buf[..n])
            };
            if want(frame) {
                return Some((hdr, frame.to_vec()));
            }
        }
    }
    None
}

fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&OUR_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&KERNEL_IP);
    f
}

fn is_arp_reply(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == KERNEL_IP && f[32..38] == OUR_MAC
}

fn arp_round_trip(vnet_hdr: bool) {
    let (_ns, tap) = tap_in_netns(TapOptions { vnet_hdr, multi_queue: false });
    let req = arp_request();
    let sent = if vnet_hdr {
        tap.send_vectored(&VnetHdr::default().to_bytes(), &req).expect("send")
    } else {
        tap.send(&req).expect("send")
    };
    assert_eq!(sent, req.len() + if vnet_hdr { VNET_HDR_LEN } else { 0 });
    let (hdr, reply) = recv_until(&tap, is_arp_reply).expect("ARP reply from the kernel");
    assert_eq!(hdr.gso_type, GSO_NONE);
    assert_eq!(&reply[0..6], &OUR_MAC, "reply is unicast to us");
    // The kernel side's MAC as the reply names it is the device's.
    let kernel_mac: [u8; 6] = reply[22..28].try_into().expect("6 bytes");
    assert_eq!(&reply[6..12], &kernel_mac);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn arp_through_tap_in_netns() {
    require_root();
    arp_round_trip(false);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn arp_through_vnet_tap_in_netns() {
    require_root();
    arp_round_trip(true);
}

/// With `TUN_F_CSUM` the kernel hands us its TCP SYN with a partial checksum
/// (`F_NEEDS_CSUM`); completing it gives a valid frame.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn kernel_tcp_syn_with_partial_checksum() {
    require_root();
    let (ns, tap) = tap_in_netns(TapOptions { vnet_hdr: true, multi_queue: false });
    tap.set_offload(OFFLOADS_TCP).expect("offload");
    let mac = "02:00:00:aa:bb:cc";
    run(&["ip", "-n", &ns.0, "neigh", "replace", "10.199.0.2", "lladdr", mac, "dev", tap.name()]);
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/10.199.0.2/8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn connect");
    let _child = Reaped(child);
    let is_syn = |f: &[u8]| f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[47] & 0x02 != 0;
    let (hdr, mut frame) = recv_until(&tap, is_syn).expect("SYN from the kernel");
    eprintln!("kernel SYN vnet header: {hdr:?}");
    if hdr.needs_csum() {
        assert_eq!(hdr.flags & F_NEEDS_CSUM, F_NEEDS_CSUM);
        assert_eq!(usize::from(hdr.csum_start), 34);
        assert_eq!(usize::from(hdr.csum_offset), 16);
        assert!(!testkit::checksums_ok(&frame), "partial checksum should not verify yet");
        assert!(complete_checksum(&mut frame, hdr.csum_start.into(), hdr.csum_offset.into()));
    }
    assert!(testkit::checksums_ok(&frame));
}

/// A frame with the local experimental EtherType 0x88b5, so it cannot be
/// confused with the host's own traffic.
fn experimental_frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(std::iter::repeat_n(tag, 46));
    f
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn afpacket_on_a_tap() {
    assert!(matches!(AfPacket::open("nonexistent0", Duration::from_millis(10)), Err(IoError::NoSuchInterface { .. })));
    require_root();
    let tap = Tap::open(&unique_name(), TapOptions::default()).expect("open tap");
    tap.set_up().expect("up");
    let mut pkt = AfPacket::open(tap.name(), Duration::from_millis(20)).expect("af_packet");
    assert_eq!(pkt.mac(), tap.hw_addr().expect("mac"));
    assert_eq!(pkt.name(), tap.name());

    // Nothing of ours queued: recv times out (skipping host chatter).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match pkt.recv() {
            Ok(_) => assert!(Instant::now() < deadline, "never timed out"),
            Err(e) => {
                assert!(matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{e:?}");
                break;
            }
        }
    }

    // TAP → kernel → AF_PACKET: a frame to a foreign MAC arrives (promiscuous).
    let inbound = experimental_frame([0x02, 0x99, 0, 0, 0, 1], OUR_MAC, 0x5a);
    tap.send(&inbound).expect("tap send");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "frame never seen on AF_PACKET");
        match pkt.recv() {
            Ok(f) if f == inbound.as_slice() => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }

    // AF_PACKET → device transmit → TAP.
    let outbound = experimental_frame(OUR_MAC, pkt.mac(), 0xa5);
    pkt.send(&outbound).expect("af_packet send");
    let (_, got) = recv_until(&tap, |f| f.len() >= 14 && f[12..14] == [0x88, 0xb5]).expect("frame on the TAP");
    assert_eq!(got, outbound);
}

/// Workers on one outside TAP and one inside TAP, started with `probe` as
/// the io_uring probe.
fn workers_with(
    backend: dataplane_io::Backend,
    probe: impl FnOnce() -> std::io::Result<()>,
) -> (std::io::Result<dataplane_io::worker::Workers>, Vec<std::sync::Arc<Tap>>) {
    workers_on(backend, probe, dataplane_io::WorkerCpus::default())
}

/// [`workers_with`], the workers pinned to `cpus`.
fn workers_on(
    backend: dataplane_io::Backend,
    probe: impl FnOnce() -> std::io::Result<()>,
    cpus: dataplane_io::WorkerCpus,
) -> (std::io::Result<dataplane_io::worker::Workers>, Vec<std::sync::Arc<Tap>>) {
    use dataplane::config::EngineConfig;
    use dataplane::PortId;
    use dataplane_io::steer::Shards;
    use dataplane_io::worker::{OutsideTx, WorkerSpec, Workers};
    use std::sync::Arc;
    let topo = testkit::Topology::new(1, 1);
    let outside = Arc::new(Tap::open(&unique_name(), TapOptions::default()).expect("outside tap"));
    let inside = Arc::new(Tap::open(&unique_name(), TapOptions::default()).expect("inside tap"));
    let engine = dataplane::Engine::new(EngineConfig::default(), topo.bindings()).expect("engine");
    let dev = Arc::new(dataplane_io::Inside::Tap(Arc::clone(&inside)));
    let spec = WorkerSpec {
        engine,
        inside: vec![(PortId(1), Arc::clone(&dev))],
        outside: OutsideTx::Tap(Arc::clone(&outside)),
    };
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let settings = dataplane_io::IoSettings { backend, busy_poll: Duration::from_micros(200), cpus };
    let shards = Shards::weighted(EngineConfig::default().port_range, &[1]);
    let w = Workers::start_with_probe(vec![spec], vec![None, Some(dev)], shards, None, tx, settings, probe);
    (w, vec![outside, inside])
}

fn uring_unavailable() -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Waits until worker 0 has said which path it runs.
fn active(w: &dataplane_io::worker::Workers) -> dataplane_io::syscalls::ActiveBackend {
    use dataplane_io::syscalls::ActiveBackend;
    let t0 = Instant::now();
    while w.io_counters()[0].backend() == ActiveBackend::None && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    w.io_counters()[0].backend()
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn workers_fall_back_to_syscalls_when_io_uring_cannot_be_set_up() {
    use dataplane_io::syscalls::ActiveBackend;
    use dataplane_io::Backend;
    require_root();
    let (w, _taps) = workers_with(Backend::Auto, uring_unavailable);
    let w = w.expect("auto starts without io_uring");
    assert_eq!(w.backend(), Backend::Syscalls);
    assert_eq!(active(&w), ActiveBackend::Syscalls);
    // The worker runs: a call through its inbox and eventfd comes back.
    assert_eq!(w.call(0, |_| 7), Some(7));
    let io = &w.io_counters()[0];
    assert!(io.epoll_wait.get() > 0 && io.uring_enter.get() == 0, "{io:?}");
    w.stop().expect("stops");

    let (w, _taps) = workers_with(Backend::Uring, uring_unavailable);
    let e = w.err().expect("uring required: no start without it");
    assert!(e.to_string().contains("io_uring"), "{e}");
}

/// `gateway.io.cpus`: a worker runs on the CPU it was given, and only there
/// (its thread's affinity, read on the worker itself); unpinned, it keeps
/// every CPU the process has.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn workers_run_on_the_cpus_given() {
    use dataplane_io::{Backend, WorkerCpus};
    use rustix::thread::{sched_getaffinity, CpuSet};
    require_root();
    fn cpus_of(set: CpuSet) -> Vec<usize> {
        (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
    }
    let mine = cpus_of(sched_getaffinity(None).expect("affinity"));
    let last = *mine.last().expect("a CPU");
    let (w, _taps) = workers_on(Backend::Auto, dataplane_io::uring::probe, WorkerCpus::new(&[last]).unwrap());
    let w = w.expect("starts");
    let on = w.call(0, |_| sched_getaffinity(None).map(cpus_of).ok()).flatten();
    assert_eq!(on, Some(vec![last]));
    w.stop().expect("stops");
    let (w, _taps) = workers_with(Backend::Auto, dataplane_io::uring::probe);
    let w = w.expect("starts");
    assert_eq!(w.call(0, |_| sched_getaffinity(None).map(cpus_of).ok()).flatten(), Some(mine));
    w.stop().expect("stops");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn workers_on_io_uring_answer_calls_and_stop() {
    use dataplane_io::syscalls::ActiveBackend;
    use dataplane_io::Backend;
    require_root();
    if dataplane_io::uring::probe().is_err() {
        eprintln!("skipping: no io_uring on this kernel");
        return;
    }
    let (w, _taps) = workers_with(Backend::Uring, dataplane_io::uring::probe);
    let w = w.expect("starts");
    assert_eq!(active(&w), ActiveBackend::Uring);
    for i in 0..50 {
        assert_eq!(w.call(0, move |_| i), Some(i));
    }
    let io = &w.io_counters()[0];
    assert!(io.uring_enter.get() > 0 && io.epoll_wait.get() == 0, "{io:?}");
    let t0 = Instant::now();
    w.stop().expect("stops");
    assert!(t0.elapsed() < Duration::from_secs(2), "posted reads cancelled at stop");
}

/// A TAP queue found busy on io_uring (both of its posted reads brought a
/// frame in one loop iteration) has the rest of its backlog read at once
/// with plain `read`s: 300 frames queued while the worker was held in a
/// call all reach the engine, and the worker made `read` calls beside its
/// `io_uring_enter`s (it makes none on an idle queue).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn workers_on_io_uring_read_a_busy_queue_in_batches() {
    use dataplane::counters::DropReason;
    use dataplane_io::syscalls::ActiveBackend;
    use dataplane_io::Backend;
    require_root();
    if dataplane_io::uring::probe().is_err() {
        eprintln!("skipping: no io_uring on this kernel");
        return;
    }
    const FRAMES: u64 = 300;
    let (w, taps) = workers_with(Backend::Uring, dataplane_io::uring::probe);
    let w = w.expect("starts");
    assert_eq!(active(&w), ActiveBackend::Uring);
    let inside = &taps[1];
    inside.set_up().expect("up");
    let tx = dataplane_io::PacketSender::open(inside.name()).expect("packet socket on the inside TAP");
    assert_eq!(w.counters()[0].dropped(DropReason::NotForUs), 0);
    assert_eq!(w.io_counters()[0].read.get(), 0, "no read before any frame");
    // Hold the worker in a call while the frames queue on the TAP.
    let (go, wait) = crossbeam_channel::bounded::<()>(1);
    std::thread::scope(|s| {
        let held = s.spawn(|| w.call(0, move |_| wait.recv_timeout(Duration::from_secs(5)).is_ok()));
        std::thread::sleep(Duration::from_millis(50));
        for k in 0..FRAMES {
            tx.send(&udp_frame(40_000 + k as u16, k as u32)).expect("send");
        }
        go.send(()).expect("release the worker");
        assert_eq!(held.join().expect("call"), Some(true), "the worker was held while the frames queued");
    });
    let t0 = Instant::now();
    while w.counters()[0].dropped(DropReason::NotForUs) < FRAMES && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Addressed to a MAC that is not the gateway's: each frame is refused as not ours.
    assert_eq!(w.counters()[0].dropped(DropReason::NotForUs), FRAMES, "every queued frame reached the engine");
    let io = &w.io_counters()[0];
    assert!(io.read.get() > 0 && io.uring_enter.get() > 0, "plain reads drained the busy queue: {io:?}");
    assert!(io.uring_enter.get() < FRAMES / 4, "frames taken in batches, not a few per io_uring_enter: {io:?}");
    w.stop().expect("stops");
}

/// Issue 12 item 9: the AF_PACKET reader of a gateway with several workers
/// must not read back what the workers' own sockets transmit (each such
/// frame would cost a hand-over and a drop). A plain socket sees another
/// socket's transmissions on the same interface; the receiver does not,
/// and still sees frames arriving from the wire.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn afpacket_receiver_ignores_frames_sent_from_this_host() {
    require_root();
    let tap = Tap::open(&unique_name(), TapOptions::default()).expect("open tap");
    tap.set_up().expect("up");
    let mut plain = AfPacket::open(tap.name(), Duration::from_millis(20)).expect("af_packet");
    let mut rx = AfPacket::open_receiver(tap.name(), Duration::from_millis(20)).expect("receiver");
    let mut tx = AfPacket::open(tap.name(), Duration::from_millis(20)).expect("sender");
    let seen = |p: &mut AfPacket, want: &[u8]| {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(f) = p.recv() {
                if f == want {
                    return true;
                }
            }
        }
        false
    };
    let outbound = experimental_frame([0x02, 0x99, 0, 0, 0, 2], tx.mac(), 0x3c);
    tx.send(&outbound).expect("send");
    assert!(seen(&mut plain, &outbound), "a plain socket reads back other sockets' transmissions");
    assert!(!seen(&mut rx, &outbound), "the receiver read back a frame this host sent");
    let inbound = experimental_frame([0x02, 0x99, 0, 0, 0, 1], OUR_MAC, 0x5b);
    tap.send(&inbound).expect("tap send");
    assert!(seen(&mut rx, &inbound), "frames from the wire still arrive");
}

/// A UDP frame from 10.199.0.9:`sport` to 10.199.0.1:7000 whose payload is
/// `tag` (checksums complete).
fn udp_frame(sport: u16, tag: u32) -> Vec<u8> {
    let (src, dst) = (std::net::Ipv4Addr::new(10, 199, 0, 9), std::net::Ipv4Addr::new(10, 199, 0, 1));
    let udp = testkit::udp_segment(src, sport, dst, 7000, &tag.to_be_bytes());
    testkit::ipv4_frame([0x02, 0x99, 0, 0, 0, 1], OUR_MAC, src, dst, 17, testkit::IpOpts::default(), &udp)
}

/// Receives from `rx` until `want` accepts a frame (header and frame
/// split when the socket has one) or 3 s pass.
fn recv_packet(rx: &PacketReceiver, want: impl Fn(&[u8]) -> bool) -> Option<(VnetHdr, Vec<u8>)> {
    let mut buf = vec![0u8; 65_536 + 64];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let n = match rx.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => panic!("recv: {e}"),
        };
        let (hdr, frame) = if rx.vnet_hdr() {
            let mut h = [0u8; VNET_HDR_LEN];
            h[..PACKET_VNET_LEN].copy_from_slice(&buf[..PACKET_VNET_LEN]);
            (VnetHdr::parse(&h).expect("header"), &buf[PACKET_VNET_LEN..n])
        } else {
            (VnetHdr::default(), &buf[..n])
        };
        if want(frame) {
            return Some((hdr, frame.to_vec()));
        }
    }
    None
}

/// Issue 16: a frame whose checksum is only partial (as a veth, bridge or
/// virtio NIC passes on what the host sends) reaches a receiver with
/// `PACKET_VNET_HDR` marked so, with where its checksum starts and lies; a
/// receiver without the header gets the same bytes and no way to tell.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn packet_receiver_reads_the_partial_checksum_state() {
    require_root();
    let tap = Tap::open(&unique_name(), TapOptions { vnet_hdr: true, multi_queue: false }).expect("open tap");
    tap.set_up().expect("up");
    let t = Some(Duration::from_millis(20));
    let with =
        PacketReceiver::open(tap.name(), RxOptions { vnet_hdr: true, fanout: None, steer: false, read_timeout: t })
            .expect("receiver with header");
    let without =
        PacketReceiver::open(tap.name(), RxOptions { vnet_hdr: false, fanout: None, steer: false, read_timeout: t })
            .expect("receiver without");
    let mut frame = udp_frame(5555, 0xc0ffee);
    // The checksum field of a partial frame holds the pseudo-header sum
    // only; any value does here.
    frame[40..42].copy_from_slice(&[0x12, 0x34]);
    let hdr =
        VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 34, csum_offset: 6 };
    let mut out = hdr.to_bytes().to_vec();
    out.extend_from_slice(&frame);
    tap.send(&out).expect("tap send");
    let ours = |f: &[u8]| f.len() == frame.len() && f[36..38] == 7000u16.to_be_bytes();
    let (got, bytes) = recv_packet(&with, ours).expect("frame with its header");
    assert_eq!(bytes, frame);
    assert!(got.needs_csum(), "{got:?}");
    assert_eq!((got.csum_start, got.csum_offset), (34, 6));
    let (_, bytes) = recv_packet(&without, ours).expect("frame without a header");
    assert_eq!(bytes, frame, "the same bytes, partial checksum and all");
}

/// Issue 16: sockets of one `PACKET_FANOUT` group share the frames: each
/// frame reaches exactly one of them, and different flows reach both.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_fanout_group_gives_each_frame_to_one_socket() {
    require_root();
    let tap = Tap::open(&unique_name(), TapOptions::default()).expect("open tap");
    tap.set_up().expect("up");
    let group = (std::process::id() as u16) ^ 0x5a5a;
    let opts = RxOptions { vnet_hdr: true, fanout: Some(group), steer: false, read_timeout: None };
    let socks = [
        PacketReceiver::open(tap.name(), opts).expect("first member"),
        PacketReceiver::open(tap.name(), opts).expect("second member"),
    ];
    const FLOWS: u32 = 64;
    for i in 0..FLOWS {
        tap.send(&udp_frame(20_000 + i as u16, i)).expect("tap send");
    }
    let mut seen = vec![Vec::new(); 2];
    let mut buf = vec![0u8; 65_536 + 64];
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.iter().map(Vec::len).sum::<usize>() < FLOWS as usize && Instant::now() < deadline {
        for (k, s) in socks.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                let f = &buf[PACKET_VNET_LEN..n];
                if f.len() == 14 + 20 + 8 + 4 && f[36..38] == 7000u16.to_be_bytes() {
                    seen[k].push(u32::from_be_bytes([f[42], f[43], f[44], f[45]]));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut all: Vec<u32> = seen.concat();
    all.sort_unstable();
    assert_eq!(all, (0..FLOWS).collect::<Vec<_>>(), "every frame exactly once");
    assert!(seen.iter().all(|s| !s.is_empty()), "both members got flows: {} and {}", seen[0].len(), seen[1].len());
}

/// Issue 16: members of a fanout group, like a lone receiver, do not read
/// back what this host sends on the interface (the workers' own frames):
/// joining a group replaces each socket's own hook by the group's, so the
/// group must be told too (`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_fanout_group_ignores_frames_sent_from_this_host() {
    require_root();
    let tap = Tap::open(&unique_name(), TapOptions::default()).expect("open tap");
    tap.set_up().expect("up");
    let group = (std::process::id() as u16) ^ 0xa5a5;
    let opts =
        RxOptions { vnet_hdr: true, fanout: Some(group), steer: false, read_timeout: Some(Duration::from_millis(20)) };
    let socks = [
        PacketReceiver::open(tap.name(), opts).expect("first member"),
        PacketReceiver::open(tap.name(), opts).expect("second member"),
    ];
    let tx = dataplane_io::PacketSender::open(tap.name()).expect("sender");
    let seen = |want: &[u8]| socks.iter().any(|s| recv_packet(s, |f| f == want).is_some());
    let outbound = experimental_frame([0x02, 0x99, 0, 0, 0, 2], OUR_MAC, 0x3d);
    tx.send(&outbound).expect("send");
    assert!(!seen(&outbound), "a member read back a frame this host sent");
    let inbound = experimental_frame([0x02, 0x99, 0, 0, 0, 1], OUR_MAC, 0x5c);
    tap.send(&inbound).expect("tap send");
    assert!(seen(&inbound), "frames from the wire still arrive");
}

/// Issue 11: with the steering program ([`dataplane_io::steer_ebpf`]) set
/// on a two-queue TAP, the kernel gives every UDP datagram it sends to the
/// queue of the worker owning its destination port, and every ICMP echo
/// reply to the owner of its identifier, for both workers. (Without a
/// program the kernel picks a queue by flow hash: half the flows would
/// land on the other queue.)
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_steering_program_gives_each_frame_to_the_queue_owning_its_port() {
    use dataplane_io::steer::Shards;
    use dataplane_io::steer_ebpf;
    use std::net::Ipv4Addr;
    require_root();
    let shards = Shards::new(1024..=65535, 2);
    let name = unique_name();
    let q0 = Tap::open(&name, TapOptions { vnet_hdr: false, multi_queue: true }).expect("open tap");
    let q1 = q0.open_queue().expect("second queue");
    let prog = steer_ebpf::load(&steer_ebpf::program(&shards).expect("a program")).expect("the kernel loads it");
    q0.set_steering_program(Some(std::os::fd::AsFd::as_fd(&prog))).expect("TUNSETSTEERINGEBPF");
    drop(prog);
    let kernel_mac = q0.hw_addr().expect("the device's MAC");
    let ns = Netns::new();
    run(&["ip", "link", "set", &name, "netns", &ns.0]);
    run(&["ip", "-n", &ns.0, "addr", "add", "10.199.0.1/24", "dev", &name]);
    run(&["ip", "-n", &ns.0, "link", "set", &name, "up"]);
    run(&["ip", "-n", &ns.0, "neigh", "replace", "10.199.0.2", "lladdr", "02:00:00:aa:bb:cc", "dev", &name]);
    let ports: Vec<u16> = (0..16u32).map(|k| (1100 + k * 4000) as u16).collect();
    assert!(ports.iter().any(|&p| shards.owner(p) == 0) && ports.iter().any(|&p| shards.owner(p) == 1));
    let script: String = ports.iter().map(|p| format!("echo x > /dev/udp/10.199.0.2/{p};")).collect();
    run(&["ip", "netns", "exec", &ns.0, "timeout", "3", "bash", "-c", &script]);
    // Echo requests written to queue 0: the kernel's replies carry their identifiers.
    let idents = [1100u16, 40_000];
    let (us, kernel) = (Ipv4Addr::from(OUR_IP), Ipv4Addr::from(KERNEL_IP));
    for id in idents {
        let echo = testkit::echo(true, id, 1, b"steer");
        let f = testkit::ipv4_frame(kernel_mac, OUR_MAC, us, kernel, 1, testkit::IpOpts::default(), &echo);
        q0.send(&f).expect("echo request");
    }
    let mut udp: Vec<(u16, usize)> = Vec::new();
    let mut replies: Vec<(u16, usize)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(3);
    while (udp.len() < ports.len() || replies.len() < idents.len()) && Instant::now() < deadline {
        for (k, q) in [&q0, &q1].into_iter().enumerate() {
            while let Ok(n) = q.recv(&mut buf) {
                let f = &buf[..n];
                if n < 42 || f[12..14] != [0x08, 0x00] || f[30..34] != OUR_IP {
                    continue;
                }
                let l4 = &f[14 + usize::from(f[14] & 0x0f) * 4..];
                match f[23] {
                    17 => udp.push((u16::from_be_bytes([l4[2], l4[3]]), k)),
                    1 if l4[0] == 0 => replies.push((u16::from_be_bytes([l4[4], l4[5]]), k)),
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    udp.sort_unstable();
    let want: Vec<(u16, usize)> = ports.iter().map(|&p| (p, shards.owner(p))).collect();
    assert_eq!(udp, want, "each datagram on its port owner's queue");
    replies.sort_unstable();
    let want: Vec<(u16, usize)> = idents.iter().map(|&i| (i, shards.owner(i))).collect();
    assert_eq!(replies, want, "each echo reply on its identifier owner's queue");
}

/// `steer_ebpf::constant(q)` puts every frame the kernel sends into a
/// multi-queue TAP on queue `q` (the load generator's TAP uses queue 0, the
/// one its reader reads). Queue 1 here, so that nothing lands there by
/// chance: without the program the flows spread over both queues.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_constant_steering_program_puts_every_frame_on_its_queue() {
    use dataplane_io::steer_ebpf;
    require_root();
    let name = unique_name();
    let q0 = Tap::open(&name, TapOptions { vnet_hdr: false, multi_queue: true }).expect("open tap");
    let q1 = q0.open_queue().expect("second queue");
    let prog = steer_ebpf::load(&steer_ebpf::constant(1)).expect("the kernel loads it");
    q0.set_steering_program(Some(std::os::fd::AsFd::as_fd(&prog))).expect("TUNSETSTEERINGEBPF");
    drop(prog);
    let ns = Netns::new();
    run(&["ip", "link", "set", &name, "netns", &ns.0]);
    run(&["ip", "-n", &ns.0, "addr", "add", "10.199.0.1/24", "dev", &name]);
    run(&["ip", "-n", &ns.0, "link", "set", &name, "up"]);
    run(&["ip", "-n", &ns.0, "neigh", "replace", "10.199.0.2", "lladdr", "02:00:00:aa:bb:cc", "dev", &name]);
    let ports: Vec<u16> = (0..16u16).map(|k| 1100 + k * 4000).collect();
    let script: String = ports.iter().map(|p| format!("echo x > /dev/udp/10.199.0.2/{p};")).collect();
    run(&["ip", "netns", "exec", &ns.0, "timeout", "3", "bash", "-c", &script]);
    let mut seen: Vec<(u16, usize)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.len() < ports.len() && Instant::now() < deadline {
        for (k, q) in [&q0, &q1].into_iter().enumerate() {
            while let Ok(n) = q.recv(&mut buf) {
                let f = &buf[..n];
                if n >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 {
                    let l4 = &f[14 + usize::from(f[14] & 0x0f) * 4..];
                    seen.push((u16::from_be_bytes([l4[2], l4[3]]), k));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.sort_unstable();
    let want: Vec<(u16, usize)> = ports.iter().map(|&p| (p, 1)).collect();
    assert_eq!(seen, want, "every datagram on queue 1");
}

/// A program the verifier refuses is an error naming the load and the
/// verifier's reason, not a panic (the gateway then keeps hashing).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_refused_steering_program_is_an_error_with_the_verifiers_reason() {
    use dataplane_io::steer_ebpf::{self, BpfInsn};
    require_root();
    // `exit` with r0 never written.
    let err = steer_ebpf::load(&[BpfInsn { code: 0x95, regs: 0, off: 0, imm: 0 }]).expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, IoError::Sys { .. }), "{err:?}");
    assert!(text.contains("BPF_PROG_LOAD") && text.contains("R0"), "{text}");
}
