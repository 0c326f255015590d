//! Workers workers: threads that move frames between devices and engines.
//!
//! # Design
//! A gateway runs `n` workers (one per core by default). Each worker owns one
//! [`Engine`] whose port range is its slice of the ENI ports
//! ([`Shards`]), the inside attachments assigned to it, and one queue of the
//! outside device (a multi-queue TAP, or an AF_PACKET sender). Flow state is
//! never shared:
//! - an environment's frames are read only by the worker that owns its
//!   attachment, and its sessions take ports from that worker's slice;
//! - a frame from the VPC may arrive on any worker's outside queue (the
//!   kernel spreads them by flow hash); the reader looks up the owner of its
//!   ENI port ([`crate::steer`]) and, when it is another worker, hands the
//!   frame over through that worker's inbox (a crossbeam channel) and wakes
//!   it. Replies usually return to the queue they left from, so most frames
//!   stay on their worker;
//! - ARP from the VPC is handled by the reader and copied to every other
//!   worker, whose engines learn from it and send no reply;
//! - a hairpin into another worker's ports comes back from the engine as
//!   [`Action::Redirect`] and goes to the owner the same way.
//!
//! # Frames and buffers
//! Every frame sits at offset [`HDR`] of a buffer; the bytes before it hold
//! the virtio-net header when the device has one (`IFF_VNET_HDR`), so
//! offload state (partial checksums, GSO) travels with the frame to its
//! egress device without copying. A device without that header gets the
//! checksum completed in software; a GSO superframe cannot go to one (it is
//! dropped as `tx_failed`: offloads are only enabled when every device has
//! the header). Buffers handed between threads come from a shared pool
//! (a bounded channel) and go back to it, so the steady state allocates
//! nothing.
//!
//! # Idle and stop
//! A worker blocks in `epoll_wait` until a device is readable, its inbox is
//! woken or its engine's next timer is due: an idle gateway uses no CPU.
//! Reads are non-blocking and batched ([`BATCH`] frames per device per
//! wake-up). [`Workers::stop`] sets a flag and wakes every worker.

use crate::capture::Capture;
use crate::steer::{self, FragSteer, Shards, Steer};
use crate::{complete_checksum, AfPacket, Events, Poller, Tap, VnetHdr, Waker, VNET_HDR_LEN};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use dataplane::bindings::Bindings;
use dataplane::counters::{Counters, DropReason};
use dataplane::engine::{Action, Engine, Event, Offload};
use dataplane::time::Instant;
use dataplane::wire::{get16, ETH_LEN};
use dataplane::PortId;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Room before each frame in a buffer, for the virtio-net header.
pub const HDR: usize = VNET_HDR_LEN;
/// Largest frame read: a 64 KiB GSO superframe plus its Ethernet header.
pub const MAX_FRAME: usize = 65_536 + ETH_LEN;
/// Frames read from one device per wake-up before the others get a turn.
pub const BATCH: usize = 64;
/// Capacity of each worker's inbox.
pub const INBOX: usize = 4096;
/// Spare buffers kept for handing frames between threads.
const SPARE: usize = 512;
/// Buffer size: header room, the largest frame, and room for a reply.
const BUF: usize = HDR + MAX_FRAME;

const TOKEN_WAKER: u64 = u64::MAX;
const TOKEN_OUTSIDE: u64 = u64::MAX - 1;

/// A message to a worker.
pub enum Msg {
    /// A frame from the outside port that this worker owns:
    /// `buf[HDR..HDR + len]`, with its virtio-net header (or zeros) before.
    Frame {
        /// The buffer.
        buf: Vec<u8>,
        /// Frame length.
        len: usize,
    },
    /// An ARP frame from the outside, to learn from (no reply is sent).
    Learn {
        /// The buffer (frame at `HDR`).
        buf: Vec<u8>,
        /// Frame length.
        len: usize,
    },
    /// New bindings (security groups, ENIs, environments).
    Bindings(Arc<Bindings>),
    /// Run a function on the worker's engine (queries from the control
    /// plane: sessions, port use).
    Call(Box<dyn FnOnce(&mut Engine) + Send>),
}

/// How a worker sends to the outside.
pub enum OutsideTx {
    /// Its own queue of the outside TAP (also read by it).
    Tap(Arc<Tap>),
    /// Its own AF_PACKET socket (frames are read by the gateway's AF_PACKET
    /// reader thread and steered to their owners).
    AfPacket(AfPacket),
}

/// What one worker is given.
pub struct WorkerSpec {
    /// The engine (its port range is this worker's shard).
    pub engine: Engine,
    /// Attachments this worker reads.
    pub inside: Vec<(PortId, Arc<Tap>)>,
    /// The outside.
    pub outside: OutsideTx,
}

/// What all workers share.
pub struct Fabric {
    /// Egress TAP of every inside port, indexed by `PortId.0`.
    pub inside: Vec<Option<Arc<Tap>>>,
    /// The port split.
    pub shards: Shards,
    /// Every worker's inbox.
    pub inboxes: Vec<Sender<Msg>>,
    /// Every worker's waker.
    pub wakers: Vec<Arc<Waker>>,
    /// Set to stop every worker.
    pub stop: AtomicBool,
    /// Where engines' events go (the control plane reads them).
    pub events: Sender<(usize, Event)>,
    /// Time zero of the engines' clock.
    pub epoch: std::time::Instant,
    /// Spare buffers for frames handed between threads: taken by the
    /// sender, given back by the receiver once it is done.
    pub pool: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// Capture tap points (`hyperplane capture`): one relaxed load per
    /// frame while off.
    pub capture: Capture,
}

impl Fabric {
    /// The engines' clock: milliseconds since the epoch (plus one second,
    /// so no timer is ever at zero).
    pub fn now(&self) -> Instant {
        Instant::from_millis(1000 + self.epoch.elapsed().as_millis() as u64)
    }

    /// A buffer for a frame handed to another thread (`BUF` bytes).
    pub fn take_buf(&self) -> Vec<u8> {
        self.pool.1.try_recv().unwrap_or_else(|_| vec![0u8; BUF])
    }

    /// Returns a buffer to the pool (dropped when the pool is full).
    pub fn give_buf(&self, b: Vec<u8>) {
        let _ = self.pool.0.try_send(b);
    }

    /// Sends `msg` to worker `i` and wakes it; false when its inbox is full.
    pub fn send(&self, i: usize, msg: Msg) -> bool {
        match self.inboxes[i].try_send(msg) {
            Ok(()) => {
                let _ = self.wakers[i].wake();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// One worker.
pub struct Worker {
    index: usize,
    engine: Engine,
    counters: Arc<Counters>,
    inside: Vec<(PortId, Arc<Tap>)>,
    outside: OutsideTx,
    fabric: Arc<Fabric>,
    inbox: Receiver<Msg>,
    waker: Arc<Waker>,
    frags: FragSteer,
}

impl Worker {
    /// A worker; `inbox` and `waker` are its entries in the fabric.
    pub fn new(index: usize, spec: WorkerSpec, fabric: Arc<Fabric>, inbox: Receiver<Msg>) -> Worker {
        let waker = Arc::clone(&fabric.wakers[index]);
        Worker {
            index,
            counters: spec.engine.counters(),
            engine: spec.engine,
            inside: spec.inside,
            outside: spec.outside,
            fabric,
            inbox,
            waker,
            frags: FragSteer::new(),
        }
    }

    /// Runs until the fabric's stop flag is set.
    pub fn run(mut self) -> io::Result<()> {
        let poller = Poller::new()?;
        poller.add(self.waker.as_fd(), TOKEN_WAKER)?;
        if let OutsideTx::Tap(t) = &self.outside {
            poller.add(t.as_fd(), TOKEN_OUTSIDE)?;
        }
        for (i, (_, tap)) in self.inside.iter().enumerate() {
            poller.add(tap.as_fd(), i as u64)?;
        }
        let mut buf = vec![0u8; BUF];
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<u64> = Vec::with_capacity(256);
        self.flush(&mut buf);
        while !self.fabric.stop.load(Ordering::Relaxed) {
            let now = self.fabric.now();
            let timeout =
                self.engine.poll_timeout().map(|t| Duration::from_millis(t.millis().saturating_sub(now.millis())));
            poller.wait(&mut events, timeout)?;
            ready.clear();
            ready.extend(events.tokens());
            for &token in &ready {
                match token {
                    TOKEN_WAKER => {
                        let _ = self.waker.reset();
                    }
                    TOKEN_OUTSIDE => self.read_outside(&mut buf),
                    i => self.read_inside(i as usize, &mut buf),
                }
            }
            self.drain_inbox();
            let now = self.fabric.now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.expire(now);
            }
            self.flush(&mut buf);
        }
        Ok(())
    }

    fn read_inside(&mut self, i: usize, buf: &mut [u8]) {
        let Some((port, tap)) = self.inside.get(i).cloned() else {
            return;
        };
        for _ in 0..BATCH {
            let Some(len) = read(&tap, buf) else {
                break;
            };
            self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: received
            let now = self.fabric.now();
            self.handle(now, port, buf, len, false);
        }
    }

    fn read_outside(&mut self, buf: &mut [u8]) {
        let OutsideTx::Tap(tap) = &self.outside else {
            return;
        };
        let tap = Arc::clone(tap);
        for _ in 0..BATCH {
            let Some(len) = read(&tap, buf) else {
                break;
            };
            self.fabric.capture.frame(PortId::OUTSIDE, &buf[HDR..HDR + len]); // capture: received
            let now = self.fabric.now();
            if let Some(owner) = self.steer(now, &buf[HDR..HDR + len]) {
                self.hand_over(owner, buf, len, false);
                continue;
            }
            self.handle(now, PortId::OUTSIDE, buf, len, false);
        }
    }

    /// The worker that owns an outside frame, when it is not this one. ARP
    /// is copied to every other worker here and handled locally too.
    fn steer(&mut self, now: Instant, frame: &[u8]) -> Option<usize> {
        let shards = &self.fabric.shards;
        if shards.len() == 1 {
            return None;
        }
        let owner = match steer::inbound(frame) {
            Steer::Port(p) => shards.owner(p),
            Steer::FirstFragment(p, id) => {
                let o = shards.owner(p);
                self.frags.record(id, o, now.millis());
                o
            }
            Steer::LaterFragment(id) => self.frags.lookup(&id, now.millis()).unwrap_or(self.index),
            Steer::Arp => {
                for w in 0..shards.len() {
                    if w != self.index {
                        let mut b = self.take_buf();
                        b[HDR..HDR + frame.len()].copy_from_slice(frame);
                        if !self.fabric.send(w, Msg::Learn { buf: b, len: frame.len() }) {
                            self.counters.count_drop(DropReason::InboxFull);
                        }
                    }
                }
                self.index
            }
            Steer::Local => self.index,
        };
        (owner != self.index).then_some(owner)
    }

    /// Copies `buf[..HDR + len]` into a spare buffer and sends it to `owner`
    /// as an outside frame. `learn` sends it as an ARP copy instead.
    fn hand_over(&mut self, owner: usize, buf: &[u8], len: usize, learn: bool) {
        let mut b = self.take_buf();
        b[..HDR + len].copy_from_slice(&buf[..HDR + len]);
        let msg = if learn { Msg::Learn { buf: b, len } } else { Msg::Frame { buf: b, len } };
        if !self.fabric.send(owner, msg) {
            self.counters.count_drop(DropReason::InboxFull);
        }
    }

    fn take_buf(&self) -> Vec<u8> {
        self.fabric.take_buf()
    }

    fn give_buf(&self, b: Vec<u8>) {
        self.fabric.give_buf(b);
    }

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Frame { mut buf, len } => {
                    let now = self.fabric.now();
                    self.handle(now, PortId::OUTSIDE, &mut buf, len, false);
                    self.give_buf(buf);
                }
                Msg::Learn { mut buf, len } => {
                    let now = self.fabric.now();
                    self.handle(now, PortId::OUTSIDE, &mut buf, len, true);
                    self.give_buf(buf);
                }
                Msg::Bindings(b) => self.engine.set_bindings(b),
                Msg::Call(f) => f(&mut self.engine),
            }
        }
    }

    /// Processes the frame at `buf[HDR..HDR + len]` (its virtio-net header,
    /// or zeros, before it). `learn_only`: an ARP copy; nothing is sent back.
    fn handle(&mut self, now: Instant, port: PortId, buf: &mut [u8], len: usize, learn_only: bool) {
        let hdr = VnetHdr::parse(&buf[..HDR]).unwrap_or_default();
        let offload = Offload { csum_partial: hdr.needs_csum(), gso_size: if hdr.is_gso() { hdr.gso_size } else { 0 } };
        let action = self.engine.process_offload(now, port, &mut buf[HDR..], len, offload);
        match action {
            Action::Forward { port: egress, len } => self.emit(egress, buf, len, hdr),
            Action::Reply { len } if !learn_only => self.emit(port, buf, len, VnetHdr::default()),
            Action::Redirect { len } => {
                let l4 = dataplane::wire::parse_ipv4(&buf[HDR..HDR + len], ETH_LEN).map(|ip| ip.l4());
                let owner = l4.map_or(self.index, |l| self.fabric.shards.owner(get16(&buf[HDR..], l + 2)));
                if owner == self.index {
                    // Not ours after all (bindings changed): our engine decides.
                    let mut b = self.take_buf();
                    b[..HDR + len].copy_from_slice(&buf[..HDR + len]);
                    self.handle(now, PortId::OUTSIDE, &mut b, len, false);
                    self.give_buf(b);
                } else {
                    self.hand_over(owner, buf, len, false);
                }
            }
            _ => {}
        }
    }

    /// Sends `buf[HDR..HDR + len]` out of `port` with offload header `hdr`.
    fn emit(&mut self, port: PortId, buf: &mut [u8], len: usize, hdr: VnetHdr) {
        self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: sent
        let ok = if port == PortId::OUTSIDE {
            match &mut self.outside {
                OutsideTx::Tap(t) => write(t, buf, len, hdr),
                OutsideTx::AfPacket(a) => finish_in_software(buf, len, hdr) && a.send(&buf[HDR..HDR + len]).is_ok(),
            }
        } else {
            match self.fabric.inside.get(usize::from(port.0)).and_then(Option::as_ref) {
                Some(t) => write(t, buf, len, hdr),
                None => false,
            }
        };
        if !ok {
            self.counters.count_drop(DropReason::TxFailed);
        }
    }

    /// Sends what the engine generated or released, and its events.
    fn flush(&mut self, buf: &mut [u8]) {
        let now = self.fabric.now();
        while let Some((port, len)) = self.engine.poll_transmit(now, &mut buf[HDR..]) {
            self.emit(port, buf, len, VnetHdr::default());
        }
        while let Some(ev) = self.engine.poll_event() {
            let _ = self.fabric.events.try_send((self.index, ev));
        }
    }
}

/// One non-blocking read into `buf`, the frame landing at `HDR`. None when
/// nothing is waiting (or on error, which the next wake-up retries).
fn read(tap: &Tap, buf: &mut [u8]) -> Option<usize> {
    let start = if tap.vnet_hdr() { 0 } else { HDR };
    if !tap.vnet_hdr() {
        buf[..HDR].fill(0);
    }
    match tap.recv(&mut buf[start..]) {
        Ok(n) if tap.vnet_hdr() && n >= HDR => Some(n - HDR),
        Ok(n) if !tap.vnet_hdr() => Some(n),
        _ => None,
    }
}

/// Writes a frame to a TAP: with its offload header when the TAP has one,
/// otherwise with checksums completed in software.
fn write(tap: &Tap, buf: &mut [u8], len: usize, hdr: VnetHdr) -> bool {
    if tap.vnet_hdr() {
        let _ = hdr.write(&mut buf[..HDR]);
        tap.send(&buf[..HDR + len]).is_ok()
    } else {
        finish_in_software(buf, len, hdr) && tap.send(&buf[HDR..HDR + len]).is_ok()
    }
}

/// Completes a partial checksum for a device without offloads; false for a
/// GSO superframe, which such a device cannot take.
fn finish_in_software(buf: &mut [u8], len: usize, hdr: VnetHdr) -> bool {
    if hdr.is_gso() {
        return false;
    }
    if hdr.needs_csum() {
        return complete_checksum(&mut buf[HDR..HDR + len], usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
    }
    true
}

/// A running gateway: its workers and what they share.
pub struct Workers {
    fabric: Arc<Fabric>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    counters: Vec<Arc<Counters>>,
    reader: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per spec. `outside_rx`: for an AF_PACKET outside,
    /// the socket the reader thread receives on (it steers every frame to
    /// its owner).
    pub fn start(
        specs: Vec<WorkerSpec>,
        inside: Vec<Option<Arc<Tap>>>,
        shards: Shards,
        outside_rx: Option<AfPacket>,
        events: Sender<(usize, Event)>,
    ) -> io::Result<Workers> {
        let n = specs.len();
        let mut inboxes = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        let mut wakers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(INBOX);
            inboxes.push(tx);
            receivers.push(rx);
            wakers.push(Arc::new(Waker::new()?));
        }
        let fabric = Arc::new(Fabric {
            inside,
            shards,
            inboxes,
            wakers,
            stop: AtomicBool::new(false),
            events,
            epoch: std::time::Instant::now(),
            pool: crossbeam_channel::bounded(SPARE),
            capture: Capture::new(),
        });
        let counters: Vec<Arc<Counters>> = specs.iter().map(|s| s.engine.counters()).collect();
        let mut threads = Vec::with_capacity(n);
        for (i, (spec, rx)) in specs.into_iter().zip(receivers).enumerate() {
            let w = Worker::new(i, spec, Arc::clone(&fabric), rx);
            let t = std::thread::Builder::new().name(format!("hp-worker-{i}")).spawn(move || {
                let r = w.run();
                if let Err(e) = &r {
                    tracing::error!(worker = i, error = %e, "worker stopped");
                }
                r
            })?;
            threads.push(t);
        }
        let reader = match outside_rx {
            Some(rx) => {
                let f = Arc::clone(&fabric);
                let c = Arc::clone(&counters[0]);
                Some(std::thread::Builder::new().name("hp-afpacket".into()).spawn(move || af_packet_reader(rx, f, c))?)
            }
            None => None,
        };
        Ok(Workers { fabric, threads, counters, reader })
    }

    /// The capture tap points every worker shares.
    pub fn capture(&self) -> &Capture {
        &self.fabric.capture
    }

    /// Each worker's counters (sum them for the gateway's).
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Sends `msg` to worker `i` (control path: waits while its inbox is
    /// full).
    pub fn send(&self, i: usize, msg: Msg) {
        if self.fabric.inboxes[i].send(msg).is_ok() {
            let _ = self.fabric.wakers[i].wake();
        }
    }

    /// Replaces the bindings on every worker.
    pub fn set_bindings(&self, b: &Arc<Bindings>) {
        for i in 0..self.workers() {
            self.send(i, Msg::Bindings(Arc::clone(b)));
        }
    }

    /// Runs `f` on worker `i`'s engine and returns its result (None if the
    /// worker has stopped).
    pub fn call<R: Send + 'static>(&self, i: usize, f: impl FnOnce(&mut Engine) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(
            i,
            Msg::Call(Box::new(move |e| {
                let _ = tx.send(f(e));
            })),
        );
        rx.recv().ok()
    }

    /// Runs `f` on every worker's engine and collects the results in worker
    /// order.
    pub fn query<R: Send + 'static>(&self, f: impl Fn(&mut Engine) -> R + Send + Sync + 'static) -> Vec<R> {
        let f = Arc::new(f);
        let (tx, rx) = crossbeam_channel::bounded(self.workers());
        for i in 0..self.workers() {
            let (f, tx) = (Arc::clone(&f), tx.clone());
            self.send(
                i,
                Msg::Call(Box::new(move |e| {
                    let _ = tx.send((i, f(e)));
                })),
            );
        }
        drop(tx);
        let mut out: Vec<(usize, R)> = rx.iter().collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Stops every worker and waits for them; returns the first error a
    /// worker stopped with.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.fabric.stop.store(true, Ordering::Relaxed);
        for w in &self.fabric.wakers {
            let _ = w.wake();
        }
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
                Err(_) => {
                    if first.is_ok() {
                        first = Err(io::Error::other("a worker panicked"));
                    }
                }
            }
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        first
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The AF_PACKET reader: receives every frame on the outside interface and
/// hands it to the worker that owns it (ARP to all).
fn af_packet_reader(mut rx: AfPacket, fabric: Arc<Fabric>, counters: Arc<Counters>) {
    let mut frags = FragSteer::new();
    while !fabric.stop.load(Ordering::Relaxed) {
        let frame = match rx.recv() {
            Ok(f) => f,
            Err(_) => continue,
        };
        if frame.len() > MAX_FRAME {
            counters.count_drop(DropReason::Truncated);
            continue;
        }
        fabric.capture.frame(PortId::OUTSIDE, frame); // capture: received
        let now = fabric.now();
        let shards = &fabric.shards;
        let targets: (usize, usize) = match steer::inbound(frame) {
            Steer::Port(p) => (shards.owner(p), shards.owner(p) + 1),
            Steer::FirstFragment(p, id) => {
                frags.record(id, shards.owner(p), now.millis());
                (shards.owner(p), shards.owner(p) + 1)
            }
            Steer::LaterFragment(id) => {
                let o = frags.lookup(&id, now.millis()).unwrap_or(0);
                (o, o + 1)
            }
            Steer::Arp => (0, shards.len()),
            Steer::Local => (0, 1),
        };
        for w in targets.0..targets.1 {
            let mut b = fabric.take_buf();
            b[..HDR].fill(0);
            b[HDR..HDR + frame.len()].copy_from_slice(frame);
            let len = frame.len();
            // ARP: worker 0 answers, the others only learn.
            let msg = if w == 0 { Msg::Frame { buf: b, len } } else { Msg::Learn { buf: b, len } };
            if !fabric.send(w, msg) {
                counters.count_drop(DropReason::InboxFull);
            }
        }
    }
}
