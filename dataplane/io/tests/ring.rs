//! Tests of the packet rings ([`dataplane_io::packet_ring`]) against the
//! real kernel, on a veth pair: our end stays in this namespace, its peer
//! lives in a throwaway namespace where a thread (moved there with
//! `setns`) plays the VPC side.
//!
//! Root only (see build.rs). Names are `hpr{pid}{n}`; the namespace is
//! deleted by a drop guard even when a test panics, which deletes the
//! peer and with it our end.

use dataplane::testkit;
use dataplane_io::packet_ring::RxLayout;
use dataplane_io::vnet::F_NEEDS_CSUM;
use dataplane_io::{
    IoCounters, PacketReceiver, PacketSender, RingConfig, RingSender, RxOptions, RxRing, TxRing, VnetHdr,
    PACKET_VNET_LEN, SUPERFRAME_SLOT,
};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "needs root: network namespaces and veth pairs");
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Our MAC on the veth end (set explicitly so frames to it are ours).
const OURS: [u8; 6] = [0x02, 0x68, 0x72, 0, 0, 1];
/// The peer's address and ours (the peer's neighbour entry points at OURS).
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);

/// A veth pair, its peer in a namespace of its own; both go on drop.
struct Veth {
    ns: String,
    ours: String,
    peer: String,
    peer_mac: [u8; 6],
}

impl Veth {
    fn new() -> Veth {
        static N: AtomicU32 = AtomicU32::new(0);
        let k = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("hpr{}{}", std::process::id(), k);
        assert!(base.len() < 15, "{base}: one more letter must fit 15 bytes");
        let v = Veth {
            ns: format!("{base}n"),
            ours: format!("{base}a"),
            peer: format!("{base}b"),
            peer_mac: [0x02, 0x68, 0x72, 0, 0, 2],
        };
        run(&["ip", "netns", "add", &v.ns]);
        run(&["ip", "link", "add", &v.ours, "type", "veth", "peer", "name", &v.peer]);
        run(&["ip", "link", "set", &v.peer, "netns", &v.ns]);
        let mac = OURS.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        run(&["ip", "link", "set", &v.ours, "address", &mac, "up"]);
        let ns = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", &v.ns];
            a.extend_from_slice(args);
            run(&a);
        };
        ns(&["ip", "link", "set", &v.peer, "address", "02:68:72:00:00:02", "up"]);
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&["ip", "addr", "add", &format!("{PEER_IP}/24"), "dev", &v.peer]);
        ns(&["ip", "neigh", "add", &OUR_IP.to_string(), "lladdr", &mac, "dev", &v.peer]);
        v
    }

    /// A receiver on the peer's end, opened in its namespace: frames with
    /// their virtio-net header, reads that give up after 20 ms.
    fn peer_receiver(&self) -> PacketReceiver {
        let peer = self.peer.clone();
        self.in_peer(move || {
            let t = Some(Duration::from_millis(20));
            PacketReceiver::open(&peer, RxOptions { vnet_hdr: true, read_timeout: t, ..RxOptions::default() })
                .expect("peer receiver")
        })
    }

    /// Runs `f` on a thread inside the peer's namespace.
    fn in_peer<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(format!("/var/run/netns/{}", self.ns)).expect("netns file");
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns");
                f()
            })
            .join()
            .expect("peer thread")
        })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.ours]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A UDP frame from the peer to us, port `sport` to 7000, payload `tag`.
fn udp_frame(peer_mac: [u8; 6], sport: u16, tag: u32) -> Vec<u8> {
    let udp = testkit::udp_segment(PEER_IP, sport, OUR_IP, 7000, &tag.to_be_bytes());
    testkit::ipv4_frame(peer_mac, OURS, PEER_IP, OUR_IP, 17, testkit::IpOpts::default(), &udp)
}

/// The tag of a frame `udp_frame` made (to port 7000), if it is one.
fn tag(f: &[u8]) -> Option<u32> {
    (f.len() == 14 + 20 + 8 + 4 && f[36..38] == 7000u16.to_be_bytes())
        .then(|| u32::from_be_bytes([f[42], f[43], f[44], f[45]]))
}

fn small_ring() -> RingConfig {
    RingConfig { blocks: 8, ..RingConfig::default() }
}

/// Both receive layouts (slots handed over one by one, and blocks).
const LAYOUTS: [RxLayout; 2] = [RxLayout::Frames, RxLayout::Blocks];

/// Drains `ring` until `take` (given each frame, its header and whether it
/// is truncated) returns true, or 3 s pass.
fn drain_until(ring: &RxRing, mut take: impl FnMut(Option<VnetHdr>, &[u8], bool) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut done = false;
    while !done && Instant::now() < deadline {
        if ring.drain(usize::MAX, |f| done |= take(f.vnet, f.frame, f.truncated())) == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A datagram the peer's kernel sends over the veth leaves with a partial
/// checksum (the veth's default offloads); the ring hands over the frame
/// with its virtio-net header saying so, where the checksum starts and
/// where it lies.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn a_partial_checksum_arrives_with_its_vnet_header_through_the_ring() {
    require_root();
    for layout in LAYOUTS {
        partial_checksum_through(layout);
    }
}

fn partial_checksum_through(layout: RxLayout) {
    let v = Veth::new();
    let opts = RxOptions { vnet_hdr: true, ..RxOptions::default() };
    let ring = RxRing::open(&v.ours, opts, RingConfig { rx_layout: layout, ..small_ring() }).expect("rx ring");
    assert_eq!(ring.layout(), layout);
    v.in_peer(|| {
        let s = UdpSocket::bind((PEER_IP, 5555)).expect("bind");
        s.send_to(b"partial checksum", (OUR_IP, 7000)).expect("send");
    });
    let mut got = None;
    drain_until(&ring, |h, f, _| {
        if f.len() > 42 && f[36..38] == 7000u16.to_be_bytes() {
            got = Some((h, f.to_vec()));
        }
        got.is_some()
    });
    let (hdr, frame) = got.unwrap_or_else(|| panic!("{layout:?}: the datagram through the ring"));
    let hdr = hdr.expect("a ring with PACKET_VNET_HDR gives a header");
    assert!(hdr.flags & F_NEEDS_CSUM != 0, "{layout:?}: {hdr:?}");
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6), "{layout:?}: {hdr:?}");
    assert_eq!(&frame[42..], b"partial checksum");
    assert!(!testkit::checksums_ok(&frame), "the checksum is only the pseudo-header's");
    let mut done = frame.clone();
    assert!(dataplane_io::complete_checksum(&mut done, 34, 6));
    assert!(testkit::checksums_ok(&done));
}

/// A burst several blocks long waits in the ring while nobody reads and
/// then arrives whole, in order, nothing dropped. (The blocks are retired
/// late here: a block is handed over when full or when its retire time
/// passes, and a ring nobody reads is full after `blocks` retire times.)
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn a_burst_longer_than_a_block_arrives_whole_and_in_order() {
    require_root();
    // Blocks: each frame takes at least 96 bytes of a block (header,
    // offload header, frame, alignment), so 6,000 are over 4 blocks' worth.
    let blocks = RingConfig { rx_layout: RxLayout::Blocks, retire: Duration::from_millis(500), ..small_ring() };
    assert!(6000 * 96 > 4 * blocks.block_size && 6000 * 160 < blocks.blocks * blocks.block_size);
    // Slots: 32 per 64 KiB block; 1,500 fill most of the 2,048.
    let slots = RingConfig { rx_layout: RxLayout::Frames, ..small_ring() };
    for (cfg, n) in [(blocks, 6000u32), (slots, 1500)] {
        let v = Veth::new();
        let opts = RxOptions { vnet_hdr: true, ..RxOptions::default() };
        let ring = RxRing::open(&v.ours, opts, cfg).expect("rx ring");
        let mac = v.peer_mac;
        let peer = v.peer.clone();
        v.in_peer(move || {
            let tx = PacketSender::open(&peer).expect("peer sender");
            for i in 0..n {
                tx.send(&udp_frame(mac, 9000, i)).expect("send");
            }
        });
        let mut tags = Vec::new();
        drain_until(&ring, |_, f, cut| {
            assert!(!cut, "truncated");
            tags.extend(tag(f));
            tags.len() == n as usize
        });
        let layout = cfg.rx_layout;
        assert_eq!(tags.len(), n as usize, "{layout:?}: frames through the ring");
        assert!(tags.windows(2).all(|w| w[0] + 1 == w[1]), "{layout:?}: in order");
        assert_eq!(ring.take_drops().expect("stats"), 0, "{layout:?}");
    }
}

/// With slots, a frame longer than a slot (here a 4,000-byte frame on a
/// 9000-byte MTU link; a superframe alike) is queued whole on the socket,
/// its slot says so, and it is received from there with its header, in
/// order with the frames around it.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn a_frame_longer_than_a_slot_is_received_whole_from_the_socket() {
    require_root();
    let walk = big_frame_between_two(9000, 4000, small_ring());
    assert_eq!(walk, [false, true, false]);
}

/// With slots of [`RingConfig::superframes`], a frame of 60,000 bytes (on
/// a link whose MTU lets the peer send it, as a superframe) lands in its
/// slot like the small frames around it: nothing is queued on the socket.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn a_superframe_lands_in_its_slot_of_a_superframe_ring() {
    require_root();
    let cfg = RingConfig::superframes();
    assert!(cfg.rx_frame_size >= SUPERFRAME_SLOT && SUPERFRAME_SLOT > 65_535 + 14 + PACKET_VNET_LEN);
    let walk = big_frame_between_two(65_535, 60_000, cfg);
    assert_eq!(walk, [false, false, false], "nothing was queued on the socket");
}

/// On a veth of `mtu`, the peer sends a small frame, a `len`-byte frame and
/// another small one; a ring of `cfg` (with virtio-net headers) must hand
/// over all three in order, the big one whole, received from the socket
/// where its slot is marked copied. Returns which slots were marked copied.
fn big_frame_between_two(mtu: usize, len: usize, cfg: RingConfig) -> Vec<bool> {
    let v = Veth::new();
    let mtu = mtu.to_string();
    run(&["ip", "link", "set", &v.ours, "mtu", &mtu]);
    run(&["ip", "netns", "exec", &v.ns, "ip", "link", "set", &v.peer, "mtu", &mtu]);
    let opts = RxOptions { vnet_hdr: true, ..RxOptions::default() };
    let ring = RxRing::open(&v.ours, opts, cfg).expect("rx ring");
    assert_eq!(ring.layout(), RxLayout::Frames);
    let (mac, peer) = (v.peer_mac, v.peer.clone());
    let big = {
        let udp = testkit::udp_segment(PEER_IP, 9001, OUR_IP, 7000, &vec![0x5a; len - 42]);
        testkit::ipv4_frame(mac, OURS, PEER_IP, OUR_IP, 17, testkit::IpOpts::default(), &udp)
    };
    let sent = big.clone();
    v.in_peer(move || {
        let tx = PacketSender::open(&peer).expect("peer sender");
        tx.send(&udp_frame(mac, 9000, 1)).expect("before");
        tx.send(&sent).expect("big");
        tx.send(&udp_frame(mac, 9000, 2)).expect("after");
    });
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65_600];
    let mut walk = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.len() < 3 && Instant::now() < deadline {
        ring.drain(usize::MAX, |f| {
            walk.push(f.copied);
            if f.copied {
                let n = ring.recv_copied(&mut buf).expect("the copied frame is queued");
                let hdr = VnetHdr::parse(&[&buf[..PACKET_VNET_LEN], &[0, 0]].concat()).expect("header");
                assert_eq!(&buf[PACKET_VNET_LEN..n], &big[..], "the whole frame");
                assert!(!hdr.needs_csum() && !hdr.is_gso(), "{hdr:?}");
                seen.push(u32::MAX);
            } else {
                assert!(!f.truncated(), "{} bytes", f.frame.len());
                if f.frame == &big[..] {
                    seen.push(u32::MAX);
                } else {
                    seen.extend(tag(f.frame));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(seen, [1, u32::MAX, 2], "in order, the big one whole (slots copied: {walk:?})");
    walk
}

/// Two rings of one fanout group share the frames: each frame reaches
/// exactly one of them, and different flows reach both.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn rings_of_a_fanout_group_each_get_a_share() {
    require_root();
    let v = Veth::new();
    let group = (std::process::id() as u16) ^ 0x3c3c;
    let opts = RxOptions { vnet_hdr: true, fanout: Some(group), ..RxOptions::default() };
    let rings = [
        RxRing::open(&v.ours, opts, small_ring()).expect("first member"),
        RxRing::open(&v.ours, opts, small_ring()).expect("second member"),
    ];
    const FLOWS: u32 = 64;
    let (mac, peer) = (v.peer_mac, v.peer.clone());
    v.in_peer(move || {
        let tx = PacketSender::open(&peer).expect("peer sender");
        for i in 0..FLOWS {
            tx.send(&udp_frame(mac, 20_000 + i as u16, i)).expect("send");
        }
    });
    let mut seen = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.iter().map(Vec::len).sum::<usize>() < FLOWS as usize && Instant::now() < deadline {
        for (k, r) in rings.iter().enumerate() {
            r.drain(usize::MAX, |f| seen[k].extend(tag(f.frame)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut all = seen.concat();
    all.sort_unstable();
    assert_eq!(all, (0..FLOWS).collect::<Vec<_>>(), "every frame exactly once");
    assert!(seen.iter().all(|s| !s.is_empty()), "both members got flows: {} and {}", seen[0].len(), seen[1].len());
}

/// What the transmit ring sends leaves on the wire (the peer gets it,
/// offload header and all), and neither a lone receive ring nor one in a
/// fanout group reads it back; frames from the wire still arrive.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn the_transmit_ring_sends_and_no_ring_reads_our_own_frames() {
    require_root();
    let v = Veth::new();
    let lone = RxRing::open(&v.ours, RxOptions { vnet_hdr: true, ..RxOptions::default() }, small_ring()).expect("rx");
    let group = (std::process::id() as u16) ^ 0x4b4b;
    let member =
        RxRing::open(&v.ours, RxOptions { vnet_hdr: true, fanout: Some(group), ..RxOptions::default() }, small_ring())
            .expect("member");
    let mut tx = TxRing::open(&v.ours, true, small_ring()).expect("tx ring");
    let peer_rx = v.peer_receiver();
    // Our frames: to the peer, from us.
    const OUT: u32 = 300;
    for i in 0..OUT {
        let udp = testkit::udp_segment(OUR_IP, 7000, PEER_IP, 6000, &(0xa000_0000 | i).to_be_bytes());
        let f = testkit::ipv4_frame(OURS, v.peer_mac, OUR_IP, PEER_IP, 17, testkit::IpOpts::default(), &udp);
        let mut framed = VnetHdr::default().to_bytes()[..PACKET_VNET_LEN].to_vec();
        framed.extend_from_slice(&f);
        assert!(tx.push(&framed), "slot {i}");
    }
    assert_eq!(tx.pending(), OUT as usize);
    assert_eq!(tx.kick(), 1, "one send for every frame (the peer's backlog holds them)");
    assert_eq!(tx.pending(), 0);
    let mut buf = vec![0u8; 65_600];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while got < OUT && Instant::now() < deadline {
        if let Ok(n) = peer_rx.recv(&mut buf) {
            let f = &buf[PACKET_VNET_LEN..n];
            if f.len() == 46 && f[36..38] == 6000u16.to_be_bytes() && f[42] == 0xa0 {
                got += 1;
            }
        }
    }
    assert_eq!(got, OUT, "the peer got what the transmit ring sent");
    // A frame from the wire, after ours: once it is in, ours would be too.
    let (mac, peer) = (v.peer_mac, v.peer.clone());
    v.in_peer(move || PacketSender::open(&peer).expect("peer sender").send(&udp_frame(mac, 4444, 77)).expect("send"));
    for r in [&lone, &member] {
        let mut ours = 0;
        let mut wire = false;
        drain_until(r, |_, f, _| {
            if f.len() == 46 && f[36..38] == 6000u16.to_be_bytes() {
                ours += 1;
            }
            wire |= tag(f) == Some(77);
            wire
        });
        assert!(wire, "the frame from the wire arrived");
        assert_eq!(ours, 0, "a ring read back frames this host sent");
    }
    // A frame longer than a slot is refused (it goes another way).
    assert!(!tx.push(&vec![0u8; tx.max_frame() + 1]));
}

/// A frame the transmit ring cannot take goes to the plain socket as a
/// queued write ([`RingSender::divert`]): the frames pushed before it are
/// kicked first, and every frame after it in the same wake-up takes the
/// plain way too until the wake-up's kick, so the peer gets them all in
/// the order they were sent.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and veth pairs")]
fn a_diverted_frame_keeps_its_place_among_the_ring_frames() {
    require_root();
    let v = Veth::new();
    let io = IoCounters::default();
    let mut tx = RingSender::open(&v.ours, true, small_ring()).expect("ring sender");
    let peer_rx = v.peer_receiver();
    // Frame `i` carries `i` in its payload, padded to `len` bytes of UDP payload.
    let frame = |i: u32, len: usize| {
        let mut payload = vec![0u8; len];
        payload[..4].copy_from_slice(&(0xb000_0000 | i).to_be_bytes());
        let udp = testkit::udp_segment(OUR_IP, 7000, PEER_IP, 6000, &payload);
        let f = testkit::ipv4_frame(OURS, v.peer_mac, OUR_IP, PEER_IP, 17, testkit::IpOpts::default(), &udp);
        let mut framed = VnetHdr::default().to_bytes()[..PACKET_VNET_LEN].to_vec();
        framed.extend_from_slice(&f);
        framed
    };
    // The veth's MTU is 1500: 1400 bytes fit it, and not a 2 KiB slot.
    let (small, big) = (frame(0, 4), frame(1, 1400));
    assert!(!tx.takes_plain(&small));
    assert!(tx.takes_plain(&frame(1, 2100)), "longer than a slot");
    assert!(tx.send(&small, &io), "frame 0 into the ring");
    assert_eq!(tx.pending(), 1);
    // Frame 1 as the worker does it for a frame the ring cannot take.
    let fd = tx.divert(&io);
    assert_eq!(tx.pending(), 0, "the ring was kicked before the diverted frame");
    // SAFETY: write(2) of a buffer we own, on a descriptor the sender keeps open.
    let n = unsafe { libc::write(fd, big.as_ptr().cast(), big.len()) };
    assert_eq!(n, big.len() as isize, "the diverted write");
    assert!(tx.takes_plain(&frame(2, 4)), "the rest of the wake-up follows it");
    tx.kick(&io);
    assert!(!tx.takes_plain(&frame(2, 4)), "the kick ends the wake-up");
    assert!(tx.send(&frame(2, 4), &io));
    tx.kick(&io);
    let mut buf = vec![0u8; 65_600];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < 3 && Instant::now() < deadline {
        if let Ok(n) = peer_rx.recv(&mut buf) {
            let f = &buf[PACKET_VNET_LEN..n];
            if f.len() >= 46 && f[36..38] == 6000u16.to_be_bytes() && f[42] == 0xb0 {
                got.push(f[45]);
            }
        }
    }
    assert_eq!(got, [0, 1, 2], "in the order sent");
}
