//! The vhost-user-net backend's frames/s, driven by a vhost-user frontend
//! in this process (no VM): the frontend plays the guest's driver on a
//! memfd-backed guest memory, the port's owner plays a gateway worker
//! (doorbell, then batches of [`BATCH`] frames).
//!
//! Three paths, each for `--secs` seconds (default 2), with `--size`-byte
//! frames (default 64; `--size 1514` for full frames):
//! - `guest→port`: the guest sends, the owner copies each frame into its
//!   buffer (the one copy of that direction);
//! - `port→guest`: the owner writes frames into the guest's receive
//!   buffers, the guest consumes and reposts them;
//! - `echo`: the guest sends, the owner writes every frame back, the guest
//!   consumes it (both copies; frames/s counted once).
//!
//! Run: `cargo bench --bench vhost_user -- --secs 2 --size 64` (`--only
//! guest|port|echo` for one path). Two
//! threads (guest and owner) on a shared 2-core machine: figures are rough,
//! compare paths within one run.

use dataplane::testkit::{self, IpOpts};
use dataplane_io::vhost_user::frontend::{TestFrontend, BUF_LEN, QUEUE_SIZE};
use dataplane_io::vhost_user::VhostUserPort;
use dataplane_io::worker::{BATCH, HDR};
use dataplane_io::{wait_readable, VnetHdr};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<u64> {
    std::env::args().skip_while(|a| a != name).nth(1).and_then(|v| v.parse().ok())
}

fn frame(len: usize) -> Vec<u8> {
    let (src, dst) = (Ipv4Addr::new(172, 16, 0, 2), Ipv4Addr::new(10, 0, 0, 9));
    let seg = testkit::udp_segment(src, 4000, dst, 53, &vec![0x5a; len.max(42) - 42]);
    testkit::ipv4_frame([2; 6], [4; 6], src, dst, dataplane::flow::UDP, IpOpts::default(), &seg)
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    GuestToPort,
    PortToGuest,
    Echo,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::GuestToPort => "guest→port",
            Path::PortToGuest => "port→guest",
            Path::Echo => "echo",
        }
    }
}

/// The owner: a worker's loop around the port.
fn owner(mut port: VhostUserPort, path: Path, size: usize, stop: Arc<AtomicBool>) -> VhostUserPort {
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; HDR + 2048]).collect();
    let mut lens = [0usize; BATCH];
    let mut out = frame(size);
    while !stop.load(Ordering::Relaxed) {
        if path == Path::PortToGuest {
            let sent = match port.guest_rx() {
                Some(mut rx) => (0..BATCH).take_while(|_| rx.send(&mut out, VnetHdr::default()).is_ok()).count(),
                None => 0,
            };
            if sent == 0 {
                // The guest's ring is full (a worker would drop): let it run.
                std::thread::sleep(Duration::from_micros(20));
            }
            continue;
        }
        let _ = wait_readable(port.doorbell(), Duration::from_millis(1));
        port.reset();
        loop {
            let mut n = 0;
            let more = match port.guest_tx() {
                Some(mut tx) => {
                    while n < BATCH {
                        match tx.recv(&mut bufs[n]) {
                            Some(l) => {
                                lens[n] = l;
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    tx.finish()
                }
                None => false,
            };
            if path == Path::Echo && n > 0 {
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
}

fn sock(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hp-vhost-bench-{tag}-{}.sock", std::process::id()))
}

/// Runs one path; frames/s (delivered to the owner for `guest→port`, to
/// the guest otherwise).
fn run(path: Path, size: usize, secs: u64) -> f64 {
    let sock = sock(path.label().split('→').next().unwrap_or("p"));
    let mut port = VhostUserPort::bind(&sock).expect("bind");
    let mut fe = TestFrontend::connect(&sock, QUEUE_SIZE, 0).expect("frontend");
    let end = Instant::now() + Duration::from_secs(5);
    while !port.is_running() {
        assert!(Instant::now() < end, "queues never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let t = std::thread::spawn(move || owner(port, path, size, s));
    let f = frame(size);
    let batch: Vec<&[u8]> = vec![f.as_slice(); BATCH];
    fe.post_rx(BUF_LEN as u32);
    let mut received = 0u64;
    let start = Instant::now();
    let dur = Duration::from_secs(secs);
    while start.elapsed() < dur {
        let mut progress = 0;
        if path != Path::PortToGuest {
            fe.reclaim_tx();
            progress += fe.send(&batch);
        }
        if path != Path::GuestToPort {
            let n = fe.consume_rx();
            received += n as u64;
            progress += n;
            fe.post_rx(BUF_LEN as u32);
        }
        if progress == 0 {
            // As a guest does: sleep until the device signals.
            fe.wait_call(Duration::from_millis(1));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let port = t.join().expect("owner");
    let c = port.counters();
    let frames = match path {
        Path::GuestToPort => c.guest_tx_frames.load(Ordering::Relaxed),
        _ => received,
    };
    assert_eq!(c.malformed_chains.load(Ordering::Relaxed), 0);
    frames as f64 / elapsed
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to filter on.
    let secs = arg("--secs").unwrap_or(2);
    let size = arg("--size").unwrap_or(64) as usize;
    println!("vhost-user backend, {size}-byte frames, {secs} s per path, batches of {BATCH}");
    println!("{:<12} {:>14} {:>10}", "path", "frames/s", "Gbit/s");
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    for path in [Path::GuestToPort, Path::PortToGuest, Path::Echo] {
        if only.as_deref().is_some_and(|o| !path.label().starts_with(o)) {
            continue;
        }
        let r = run(path, size, secs);
        println!("{:<12} {:>14.0} {:>10.2}", path.label(), r, r * size as f64 * 8.0 / 1e9);
    }
}
