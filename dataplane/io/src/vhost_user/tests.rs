//! The backend driven by a vhost-user frontend in the same process: frames
//! both ways, notifications, malformed chains, reconnection.

use super::frontend::{RawDesc, TestFrontend, BUF_LEN, QUEUE_SIZE};
use super::{RxDrop, VhostUserPort};
use crate::poll::wait_readable;
use crate::tap::VNET_HDR_LEN as HDR;
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use core::net::Ipv4Addr;
use dataplane::testkit::{self, IpOpts};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

const WAIT: Duration = Duration::from_secs(5);

fn sock_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("hp-vhost-{tag}-{}-{n}.sock", std::process::id()))
}

/// A UDP frame of `len` bytes (at least 42) whose payload is `seed`-dependent.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..len - 42).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let src = Ipv4Addr::new(172, 16, 0, 2);
    let dst = Ipv4Addr::new(10, 0, 0, 9);
    let seg = testkit::udp_segment(src, 4000 + u16::from(seed), dst, 53, &payload);
    testkit::ipv4_frame([2; 6], [4; 6], src, dst, dataplane::flow::UDP, IpOpts::default(), &seg)
}

/// The port's owner for a test: on every doorbell, drains the guest's
/// transmit queue and writes each frame back into its receive queue. Stops
/// when `stop` is set, and returns the port.
fn echo(mut port: VhostUserPort, stop: Arc<AtomicBool>) -> JoinHandle<VhostUserPort> {
    std::thread::spawn(move || {
        let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; HDR + 4096]).collect();
        let mut lens = [0usize; 32];
        while !stop.load(Ordering::Relaxed) {
            let _ = wait_readable(port.doorbell(), Duration::from_millis(5));
            port.reset();
            loop {
                let mut n = 0;
                let more = match port.guest_tx() {
                    None => false,
                    Some(mut tx) => {
                        while n < bufs.len() {
                            match tx.recv(&mut bufs[n]) {
                                Some(l) => {
                                    assert!(bufs[n][..HDR].iter().all(|&b| b == 0), "the header is zeroed");
                                    lens[n] = l;
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        tx.finish()
                    }
                };
                if n > 0 {
                    if let Some(mut rx) = port.guest_rx() {
                        for (b, &l) in bufs.iter_mut().zip(&lens[..n]) {
                            let _ = rx.send(&mut b[HDR..HDR + l], VnetHdr::default());
                        }
                    }
                }
                if !more {
                    break;
                }
            }
        }
        port
    })
}

/// Waits until the owner sees both queues running.
fn wait_running(port: &mut VhostUserPort) {
    let end = std::time::Instant::now() + WAIT;
    while !port.is_running() {
        assert!(std::time::Instant::now() < end, "the port never saw the queues running");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `frames` from the guest and checks each comes back byte-exact,
/// in order, with a header that claims nothing but one buffer.
fn round_trip(fe: &mut TestFrontend, frames: &[Vec<u8>]) {
    let mut got = Vec::new();
    let mut sent = 0;
    let end = std::time::Instant::now() + WAIT;
    while got.len() < frames.len() {
        assert!(std::time::Instant::now() < end, "{} of {} frames came back", got.len(), frames.len());
        fe.reclaim_tx();
        fe.post_rx(BUF_LEN as u32);
        if sent < frames.len() {
            let batch: Vec<&[u8]> = frames[sent..].iter().take(16).map(Vec::as_slice).collect();
            sent += fe.send(&batch);
        }
        while let Some(f) = fe.recv() {
            got.push(f);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let hdr_len = fe.hdr_len();
    for (i, ((h, f), want)) in got.iter().zip(frames).enumerate() {
        assert_eq!(f, want, "frame {i}");
        assert_eq!(h.len(), hdr_len);
        let mut expect = vec![0u8; hdr_len];
        if hdr_len == 12 {
            expect[10] = 1;
        }
        assert_eq!(h, &expect, "header of frame {i}");
    }
}

fn round_trip_with(drop_features: u64) {
    let path = sock_path("rt");
    let mut port = VhostUserPort::bind(&path).unwrap();
    assert!(!port.is_running());
    assert!(port.guest_tx().is_none() && port.guest_rx().is_none(), "no guest yet");
    let mut fe = TestFrontend::connect(&path, QUEUE_SIZE, drop_features).unwrap();
    wait_running(&mut port);
    let stop = Arc::new(AtomicBool::new(false));
    let owner = echo(port, Arc::clone(&stop));
    let frames: Vec<Vec<u8>> = (0..600).map(|i| frame(60 + (i * 37) % 1455, i as u8)).collect();
    round_trip(&mut fe, &frames);
    stop.store(true, Ordering::Relaxed);
    let port = owner.join().unwrap();
    let c = port.counters();
    assert_eq!(c.guest_tx_frames.load(Ordering::Relaxed), 600);
    assert_eq!(c.guest_rx_frames.load(Ordering::Relaxed), 600);
    assert_eq!(c.malformed_chains.load(Ordering::Relaxed), 0);
    drop(fe);
    drop(port);
    assert!(!path.exists(), "the socket is removed with the port");
}

#[test]
fn frames_round_trip_with_event_idx() {
    round_trip_with(0);
}

#[test]
fn frames_round_trip_without_event_idx() {
    round_trip_with(1 << VIRTIO_RING_F_EVENT_IDX);
}

#[test]
fn legacy_driver_gets_the_ten_byte_header() {
    round_trip_with(1 << VIRTIO_F_VERSION_1);
}

#[test]
fn kicks_are_suppressed_until_the_owner_has_drained() {
    // With EVENT_IDX the guest kicks once, then not again however much it
    // sends, until the owner drains the queue and re-arms; then once more.
    let path = sock_path("kick");
    let mut port = VhostUserPort::bind(&path).unwrap();
    let mut fe = TestFrontend::connect(&path, QUEUE_SIZE, 0).unwrap();
    wait_running(&mut port);
    port.reset();
    let frames: Vec<Vec<u8>> = (0..16).map(|i| frame(64, i as u8)).collect();
    let batch: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    for _ in 0..4 {
        assert_eq!(fe.send(&batch), 16);
    }
    assert_eq!(fe.tx.kicks, 1, "one kick for four batches");
    assert!(wait_readable(port.doorbell(), WAIT).unwrap(), "the kick rang the doorbell");
    port.reset();
    let mut buf = vec![0u8; HDR + 2048];
    let mut tx = port.guest_tx().unwrap();
    let mut n = 0;
    while tx.recv(&mut buf).is_some() {
        n += 1;
    }
    assert_eq!(n, 64);
    assert!(!tx.finish(), "drained and re-armed");
    assert_eq!(fe.send(&batch), 16);
    assert_eq!(fe.tx.kicks, 2, "re-armed: the next batch kicks");
    assert!(wait_readable(port.doorbell(), WAIT).unwrap());
}

#[test]
fn malformed_transmit_chains_are_dropped_and_counted() {
    let path = sock_path("bad");
    let mut port = VhostUserPort::bind(&path).unwrap();
    let mut fe = TestFrontend::connect(&path, QUEUE_SIZE, 0).unwrap();
    wait_running(&mut port);
    let good = frame(100, 7);
    let a = fe.tx.buf_addr(200);
    let b = fe.tx.buf_addr(201);
    fe.mem_write(a, &[0u8; 12]);
    fe.mem_write(a + 12, &good);
    let bad_chains: [&[RawDesc]; 5] = [
        // A device-writable descriptor in a transmit chain.
        &[RawDesc { addr: a, len: 112, write: true }],
        // Outside guest memory.
        &[RawDesc { addr: 1 << 40, len: 112, write: false }],
        // Shorter than a header and an Ethernet header.
        &[RawDesc { addr: a, len: 20, write: false }],
        // Longer than the owner's buffer.
        &[RawDesc { addr: a, len: 2048, write: false }, RawDesc { addr: b, len: 2048, write: false }],
        // Readable, then writable.
        &[RawDesc { addr: a, len: 12, write: false }, RawDesc { addr: a + 12, len: 100, write: true }],
    ];
    for c in bad_chains {
        assert!(fe.tx.push_raw(&fe.mem.clone(), c));
    }
    // A head index past the descriptor table.
    fe.tx.push_head(&fe.mem.clone(), QUEUE_SIZE + 3);
    // Then a good frame split over two descriptors (header, frame).
    assert!(fe.tx.push_raw(
        &fe.mem.clone(),
        &[RawDesc { addr: a, len: 12, write: false }, RawDesc { addr: a + 12, len: 100, write: false }]
    ));
    let mut buf = vec![0u8; HDR + 2048];
    let mut tx = port.guest_tx().expect("running");
    let len = tx.recv(&mut buf).expect("the good frame comes through");
    assert_eq!(&buf[HDR..HDR + len], &good[..]);
    assert_eq!(tx.recv(&mut buf), None);
    assert!(!tx.finish());
    let c = port.counters();
    assert_eq!(c.malformed_chains.load(Ordering::Relaxed), 6);
    assert_eq!(c.guest_tx_frames.load(Ordering::Relaxed), 1);
    // Every chain with a valid head went back to the guest.
    assert_eq!(fe.reclaim_tx(), 6);
}

#[test]
fn receive_side_drops_are_counted_and_buffers_kept() {
    let path = sock_path("rx");
    let mut port = VhostUserPort::bind(&path).unwrap();
    let mut fe = TestFrontend::connect(&path, QUEUE_SIZE, 0).unwrap();
    wait_running(&mut port);
    let mut f = frame(200, 1);
    // No receive buffer yet.
    assert_eq!(port.guest_rx().unwrap().send(&mut f, VnetHdr::default()), Err(RxDrop::NoBuffer));
    // A read-only buffer (malformed), then one too small, then a big one.
    let a = fe.rx.buf_addr(100);
    assert!(fe.rx.push_raw(&fe.mem.clone(), &[RawDesc { addr: a, len: 2048, write: false }]));
    let small = fe.rx.buf_addr(101);
    assert!(fe.rx.push_raw(&fe.mem.clone(), &[RawDesc { addr: small, len: 150, write: true }]));
    {
        let mut rx = port.guest_rx().unwrap();
        assert_eq!(rx.send(&mut f, VnetHdr::default()), Err(RxDrop::TooBig));
        // The small buffer was kept: a small frame fits it.
        let mut g = frame(60, 2);
        assert_eq!(rx.send(&mut g, VnetHdr::default()), Ok(()));
        // A superframe never goes to a guest without offloads.
        let gso = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1448, ..VnetHdr::default() };
        assert_eq!(rx.send(&mut g, gso), Err(RxDrop::Offload));
    }
    // The read-only chain came back unused, the small one with the frame.
    let (h, got) = fe.recv().expect("the malformed chain is returned");
    assert!(h.is_empty() && got.is_empty());
    let (_, got) = fe.recv().expect("the small frame");
    assert_eq!(got, frame(60, 2));
    let c = port.counters();
    assert_eq!(c.malformed_chains.load(Ordering::Relaxed), 1);
    assert_eq!(c.rx_no_buffer.load(Ordering::Relaxed), 1);
    assert_eq!(c.rx_too_big.load(Ordering::Relaxed), 1);
    assert_eq!(c.rx_offload.load(Ordering::Relaxed), 1);
    assert_eq!(c.guest_rx_frames.load(Ordering::Relaxed), 1);
}

#[test]
fn partial_checksums_are_completed_for_the_guest() {
    let path = sock_path("csum");
    let mut port = VhostUserPort::bind(&path).unwrap();
    let mut fe = TestFrontend::connect(&path, QUEUE_SIZE, 0).unwrap();
    wait_running(&mut port);
    fe.post_rx(BUF_LEN as u32);
    let want = frame(300, 9);
    let mut f = want.clone();
    // UDP checksum at 14 + 20 + 6: replace it by the pseudo-header seed.
    let field = 14 + 20 + 6;
    let (src, dst) = (Ipv4Addr::new(172, 16, 0, 2), Ipv4Addr::new(10, 0, 0, 9));
    let seed = dataplane::checksum::fold(dataplane::checksum::pseudo_header(
        src,
        dst,
        dataplane::flow::UDP,
        (f.len() - 34) as u16,
    ));
    f[field..field + 2].copy_from_slice(&seed.to_be_bytes());
    assert_ne!(f, want);
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..VnetHdr::default() };
    assert_eq!(port.guest_rx().unwrap().send(&mut f, hdr), Ok(()));
    let (_, got) = fe.wait_for(WAIT, TestFrontend::recv).unwrap();
    assert_eq!(got, want);
    assert!(testkit::checksums_ok(&got));
}

#[test]
fn a_vmm_can_reconnect() {
    let path = sock_path("again");
    let mut port = VhostUserPort::bind(&path).unwrap();
    let fe = TestFrontend::connect(&path, QUEUE_SIZE, 0).unwrap();
    wait_running(&mut port);
    drop(fe);
    // The owner sees the link withdrawn.
    let end = std::time::Instant::now() + WAIT;
    while port.is_running() {
        assert!(std::time::Instant::now() < end, "the first connection never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut fe = TestFrontend::connect(&path, 128, 0).unwrap();
    wait_running(&mut port);
    let stop = Arc::new(AtomicBool::new(false));
    let owner = echo(port, Arc::clone(&stop));
    let frames: Vec<Vec<u8>> = (0..50).map(|i| frame(80, i as u8)).collect();
    round_trip(&mut fe, &frames);
    stop.store(true, Ordering::Relaxed);
    let port = owner.join().unwrap();
    assert_eq!(port.counters().guest_tx_frames.load(Ordering::Relaxed), 50);
}

#[test]
fn binding_a_bad_path_names_it() {
    let e = VhostUserPort::bind("/nonexistent-dir/x.sock").expect_err("no such directory");
    assert!(e.to_string().contains("/nonexistent-dir/x.sock"), "{e}");
}

/// One raw vhost-user request (`flags`: version 1) and, for `reply`, the
/// 8-byte body of its answer.
fn raw_request(s: &mut std::os::unix::net::UnixStream, request: u32, body: &[u8], reply: bool) -> Option<u64> {
    use std::io::{Read, Write};
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    s.write_all(&m).ok()?;
    if !reply {
        return Some(0);
    }
    let mut r = [0u8; 20];
    s.read_exact(&mut r).ok()?;
    Some(u64::from_le_bytes(r[12..20].try_into().ok()?))
}

#[test]
fn a_ring_enabled_before_the_features_keeps_the_connection() {
    // QEMU's order: GET_FEATURES, then SET_VRING_ENABLE (at the guest's
    // device reset) before any SET_FEATURES.
    let path = sock_path("order");
    let _port = VhostUserPort::bind(&path).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let features = raw_request(&mut s, 1, &[], true).expect("GET_FEATURES answered");
    assert_eq!(features, super::device::FEATURES);
    raw_request(&mut s, 3, &[], false).expect("SET_OWNER");
    let mut enable = [0u8; 8];
    enable[4] = 1;
    raw_request(&mut s, 18, &enable, false).expect("SET_VRING_ENABLE sent");
    // Still served: the daemon did not drop the connection.
    assert_eq!(raw_request(&mut s, 1, &[], true), Some(features), "the connection survives");
}
