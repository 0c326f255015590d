//! The established-flow path allocates nothing: a counting global allocator
//! watches the engine translate packets of established UDP, TCP and ICMP echo
//! sessions in both directions. Nor does the new-flow path once the
//! environment is known: first packets of new UDP flows and TCP SYNs from
//! environments that already have sessions, nor first flows of new
//! environments (their quota entries are made with the bindings).
//!
//! Everything runs in ONE `#[test]` so no other test of this binary runs
//! concurrently; counting is further limited to the test's own thread (a
//! thread-local flag), so the test harness's threads cannot disturb it.

mod common;

use common::*;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, SERVER, SERVER2};
use dataplane::time::Instant;
use dataplane::{Action, BatchFrame, Engine, PortId};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations (alloc, alloc_zeroed, realloc) made while counting.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Deallocations made while counting.
static FREES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted. Const-initialised and
    /// without a destructor, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counting touches only
// atomics and a const thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on; returns (allocations, deallocations) it made.
/// Sends each of `frames` through `engine` one by one (releasing whatever it
/// queues meanwhile); how many went out to the VPC.
fn send_all(engine: &mut Engine, now: Instant, buf: &mut [u8], frames: &[(PortId, Vec<u8>)]) -> usize {
    let mut forwarded = 0usize;
    for (port, f) in frames {
        buf[..f.len()].copy_from_slice(f);
        let a = engine.process(now, *port, black_box(&mut *buf), f.len());
        if matches!(a, Action::Forward { port: PortId::OUTSIDE, .. }) {
            forwarded += 1;
        }
        while engine.poll_transmit(now, buf).is_some() {}
    }
    forwarded
}

fn count<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCS.store(0, Ordering::SeqCst);
    FREES.store(0, Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(Ordering::SeqCst), FREES.load(Ordering::SeqCst))
}

/// A frame to replay: its ingress port, bytes, and the port it must leave by.
struct Template {
    name: &'static str,
    port: PortId,
    frame: Vec<u8>,
    egress: PortId,
}

#[test]
fn established_flows_do_not_allocate() {
    // The counter counts: a deliberate allocation while counting is seen.
    let ((), allocs, frees) = count(|| {
        let v: Vec<u8> = Vec::with_capacity(10);
        black_box(&v);
    });
    assert!(allocs >= 1, "the counting allocator counts allocations (saw {allocs})");
    assert!(frees >= 1, "the counting allocator counts deallocations (saw {frees})");

    let mut h = Harness::default();
    let mut t: Vec<Template> = vec![];

    // UDP, on-link server.
    let out = h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    let (eni, eport) = out.src();
    assert_eq!(eni, ENI);
    let f = h.env_frame(0, UDP, 5000, SERVER, 53, 0, b"query");
    t.push(Template { name: "udp out", port: h.env_port(0), frame: f, egress: PortId::OUTSIDE });
    let f = h.vpc_frame(SERVER, 53, ENI, eport, UDP, 0, b"answer");
    t.push(Template { name: "udp in", port: PortId::OUTSIDE, frame: f, egress: h.env_port(0) });

    // UDP, off-link server (through the router).
    let out = h.out_ok(3, UDP, 5001, SERVER2, 443, 0);
    let (_, eport2) = out.src();
    let f = h.env_frame(3, UDP, 5001, SERVER2, 443, 0, b"quic");
    t.push(Template { name: "udp out (routed)", port: h.env_port(3), frame: f, egress: PortId::OUTSIDE });
    let f = h.vpc_frame(SERVER2, 443, ENI, eport2, UDP, 0, b"quic back");
    t.push(Template { name: "udp in (routed)", port: PortId::OUTSIDE, frame: f, egress: h.env_port(3) });

    // TCP: three-way handshake, then data segments both ways.
    let out = h.out_ok(1, TCP, 6000, SERVER, 443, SYN);
    let (_, tport) = out.src();
    let synack = h.vpc_frame(SERVER, 443, ENI, tport, TCP, SYN | ACK, b"");
    assert_eq!(h.send(PortId::OUTSIDE, synack).forwarded(), Some(h.env_port(1)));
    h.out_ok(1, TCP, 6000, SERVER, 443, ACK);
    let f = h.env_frame(1, TCP, 6000, SERVER, 443, ACK, b"GET / HTTP/1.1");
    t.push(Template { name: "tcp out", port: h.env_port(1), frame: f, egress: PortId::OUTSIDE });
    let f = h.vpc_frame(SERVER, 443, ENI, tport, TCP, ACK, b"HTTP/1.1 200 OK");
    t.push(Template { name: "tcp in", port: PortId::OUTSIDE, frame: f, egress: h.env_port(1) });

    // ICMP echo.
    let out = h.out_ok(2, ICMP, 77, SERVER, 0, 0);
    let ident = out.echo_id();
    let f = h.env_frame(2, ICMP, 77, SERVER, 0, 0, b"ping");
    t.push(Template { name: "echo request", port: h.env_port(2), frame: f, egress: PortId::OUTSIDE });
    let f = h.vpc_frame(SERVER, 0, ENI, ident, ICMP, 0, b"ping");
    t.push(Template { name: "echo reply", port: PortId::OUTSIDE, frame: f, egress: h.env_port(2) });

    // Every template is forwarded as expected, with valid checksums, before
    // any counting (a dropped packet would not exercise the path).
    let mut buf = vec![0u8; 2048];
    for tp in &t {
        let n = tp.frame.len();
        buf[..n].copy_from_slice(&tp.frame);
        let a = h.engine.process(h.now, tp.port, &mut buf, n);
        match a {
            Action::Forward { port, len } => {
                assert_eq!(port, tp.egress, "{}: egress", tp.name);
                assert!(testkit::checksums_ok(&buf[..len]), "{}: checksums", tp.name);
            }
            other => panic!("{}: expected forward, got {other:?}", tp.name),
        }
    }
    assert!(h.drain().is_empty(), "nothing is queued for ARP or fragments");
    let sessions = h.engine.sessions().len();
    assert_eq!(sessions, 4);

    const ROUNDS: usize = 10_000;
    let now = h.now;
    let engine = &mut h.engine;
    let (forwarded, allocs, frees) = count(|| {
        let mut forwarded = 0usize;
        for _ in 0..ROUNDS {
            for tp in &t {
                let n = tp.frame.len();
                buf[..n].copy_from_slice(&tp.frame);
                let a = engine.process(now, tp.port, black_box(&mut buf), n);
                if matches!(a, Action::Forward { port, .. } if port == tp.egress) {
                    forwarded += 1;
                }
            }
            while engine.poll_transmit(now, &mut buf).is_some() {}
        }
        forwarded
    });
    assert_eq!(forwarded, ROUNDS * t.len(), "every packet was forwarded");
    assert_eq!(allocs, 0, "established-flow packets allocated {allocs} times");
    assert_eq!(frees, 0, "established-flow packets freed {frees} times");
    assert_eq!(h.engine.sessions().len(), sessions, "no session was created or lost");

    // The batch path: the same templates, a vector of all of them at a time.
    let mut bufs: Vec<Vec<u8>> = t.iter().map(|_| vec![0u8; 2048]).collect();
    let engine = &mut h.engine;
    let mut frames: Vec<BatchFrame> =
        t.iter().zip(bufs.iter_mut()).map(|(tp, b)| BatchFrame::new(tp.port, b, tp.frame.len())).collect();
    let (forwarded, allocs, frees) = count(|| {
        let mut forwarded = 0usize;
        for _ in 0..ROUNDS / 10 {
            for (f, tp) in frames.iter_mut().zip(&t) {
                f.buf[..tp.frame.len()].copy_from_slice(&tp.frame);
            }
            engine.process_batch(now, black_box(&mut frames));
            for (f, tp) in frames.iter().zip(&t) {
                if matches!(f.action, Action::Forward { port, .. } if port == tp.egress) {
                    forwarded += 1;
                }
            }
        }
        forwarded
    });
    assert_eq!(forwarded, ROUNDS / 10 * t.len(), "every packet of every batch was forwarded");
    assert_eq!(allocs, 0, "established-flow batches allocated {allocs} times");
    assert_eq!(frees, 0, "established-flow batches freed {frees} times");

    // New flows (each its own source port, so its own mapping, port and
    // session) from environments 0 to 3, which have sessions already:
    // frames built before counting.
    const NEW: u16 = 2_000;
    let firsts: Vec<(PortId, Vec<u8>)> = (0..NEW)
        .map(|i| {
            let env = u32::from(i % 4);
            let (proto, flags) = if i % 2 == 0 { (UDP, 0) } else { (TCP, SYN) };
            (h.env_port(env), h.env_frame(env, proto, 20_000 + i, SERVER2, 443, flags, b""))
        })
        .collect();
    let before = h.engine.sessions().len();
    let engine = &mut h.engine;
    let (forwarded, allocs, frees) = count(|| send_all(engine, now, &mut buf, &firsts));
    assert_eq!(forwarded, usize::from(NEW), "every first packet was forwarded");
    assert_eq!(h.engine.sessions().len(), before + usize::from(NEW), "every first packet made a session");
    assert_eq!(allocs, 0, "new flows allocated {allocs} times");
    assert_eq!(frees, 0, "new flows freed {frees} times");

    // First flows of environments the engine has not seen yet: their
    // quota entries were made when the bindings were set.
    const ENVS: u32 = 200;
    let mut h = Harness::new(Default::default(), testkit::Topology::new(2, ENVS));
    let firsts: Vec<(PortId, Vec<u8>)> =
        (0..ENVS).map(|env| (h.env_port(env), h.env_frame(env, UDP, 30_000, SERVER2, 443, 0, b""))).collect();
    let now = h.now;
    let engine = &mut h.engine;
    let (forwarded, allocs, frees) = count(|| send_all(engine, now, &mut buf, &firsts));
    assert_eq!(forwarded, ENVS as usize, "every first packet was forwarded");
    assert_eq!(h.engine.sessions().len(), ENVS as usize, "every first packet made a session");
    assert_eq!(allocs, 0, "first flows of {ENVS} new environments allocated {allocs} times");
    assert_eq!(frees, 0, "first flows of {ENVS} new environments freed {frees} times");
}
