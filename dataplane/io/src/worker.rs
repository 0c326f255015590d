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
//! # I/O paths ([`crate::backend`])
//! - io_uring: each worker keeps reads posted on its TAP queues and on its
//!   eventfd (with pooled buffers), queues its writes while it processes a
//!   wake-up (a frame leaves in the buffer it arrived in: the buffer goes
//!   to the ring and a free one takes its place), and makes one
//!   `io_uring_enter` per loop iteration, which submits them and sleeps.
//! - syscalls: `epoll_wait`, then non-blocking `read`s (up to [`BATCH`] per
//!   device per wake-up) and one `write` per frame sent.
//!
//! On both, the frames of one wake-up (at most [`BATCH`] at a time) are
//! handed to the engine together, in `Worker::process_rx`; frames handed to
//! other workers are queued and each of those workers is woken once at the
//! end of the iteration. Every system call is counted ([`IoCounters`]).
//!
//! # Idle and stop
//! A worker sleeps (in `epoll_wait` or `io_uring_enter`) until a device is
//! readable, its inbox is woken or its engine's next timer is due: an idle
//! gateway uses no CPU. With a busy-poll time ([`IoSettings::busy_poll`]) it
//! first polls that long without sleeping. [`Workers::stop`] sets a flag and
//! wakes every worker.

use crate::afpacket::{PacketSender, SEND_BATCH};
use crate::backend::{Backend, IoSettings};
use crate::capture::Capture;
use crate::rx_source::RxSource;
use crate::steer::{self, FragSteer, Shards, Steer};
use crate::syscalls::{ActiveBackend, IoCounters};
use crate::uring::{Done, Ring};
use crate::{complete_checksum, Events, PacketReceiver, Poller, Tap, VnetHdr, Waker, PACKET_VNET_LEN, VNET_HDR_LEN};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use dataplane::bindings::Bindings;
use dataplane::counters::{Counters, DropReason};
use dataplane::engine::{Action, BatchFrame, Engine, Event, Offload};
use dataplane::time::Instant;
use dataplane::wire::ETH_LEN;
use dataplane::PortId;
use smallvec::SmallVec;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Room before each frame in a buffer, for the virtio-net header.
pub const HDR: usize = VNET_HDR_LEN;
/// Largest frame read: a 64 KiB GSO superframe plus its Ethernet header.
pub const MAX_FRAME: usize = 65_536 + ETH_LEN;
/// Frames read from one device per wake-up before the others get a turn.
pub const BATCH: usize = dataplane::engine::BATCH;
/// Capacity of each worker's inbox.
pub const INBOX: usize = 4096;
/// Spare buffers kept for handing frames between threads.
const SPARE: usize = 512;
/// Free buffers a worker keeps for itself.
const SPARE_LOCAL: usize = 2 * BATCH;
/// Reads a ring keeps posted on each TAP queue. Each posted read waits on
/// the queue's wait queue, and a frame's arrival wakes all of them (only
/// one gets it): more than 2 cost more than they save (measured with
/// `benches/io_churn.rs`: 16 per queue was ~25% slower at connection
/// churn than 2).
const READS_PER_FD: usize = 2;
/// Ring slots for writes in flight, beyond the reads.
const RING_WRITES: usize = 256;
/// After a failed read on the ring, how long before that queue is read
/// again (a device that went away must not spin the loop).
const READ_RETRY: Duration = Duration::from_millis(100);
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
    /// Its own send-only AF_PACKET socket, and its own receiving socket of
    /// the outside's fanout group when it has one (without: frames are
    /// read by the gateway's AF_PACKET reader thread). Either way frames
    /// are steered to their owners. Frames sent in one wake-up go
    /// together: on the ring, or in one `sendmmsg`.
    AfPacket(PacketSender, Option<Arc<PacketReceiver>>),
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

/// A frame read during this wake-up, waiting for the engine.
struct RxFrame {
    /// Where it came from.
    port: PortId,
    /// `buf[HDR..HDR + len]`, its virtio-net header (or zeros) before.
    buf: Vec<u8>,
    len: usize,
    /// An ARP copy from another worker: learn only, answer nothing.
    learn: bool,
}

/// A device the ring keeps reads posted on.
struct RingFd {
    port: PortId,
    src: RxSource,
    /// Reads posted now.
    posted: usize,
    /// After a read error: no read is posted before this time.
    retry_at: Option<std::time::Instant>,
}

/// One worker.
pub struct Worker {
    index: usize,
    engine: Engine,
    counters: Arc<Counters>,
    io: Arc<IoCounters>,
    settings: IoSettings,
    inside: Vec<(PortId, Arc<Tap>)>,
    outside: OutsideTx,
    /// What the worker reads of the outside (none: the AF_PACKET reader
    /// thread does).
    outside_rx: Option<RxSource>,
    fabric: Arc<Fabric>,
    inbox: Receiver<Msg>,
    waker: Arc<Waker>,
    frags: FragSteer,
    /// Free buffers (`BUF` bytes each), at most [`SPARE_LOCAL`].
    spare: Vec<Vec<u8>>,
    /// This wake-up's frames, handed to the engine by `process_rx`.
    rx: Vec<RxFrame>,
    /// Where the engine writes frames it generates (`poll_transmit`).
    scratch: Vec<u8>,
    /// Workers handed a frame since the last `wake_others`.
    to_wake: Vec<bool>,
    /// The ring, on the io_uring path.
    ring: Option<Ring>,
    /// The TAP queues the ring reads.
    ring_fds: Vec<RingFd>,
    /// Reads kept posted per TAP queue.
    reads_per_fd: usize,
    /// When the outside socket's kernel drops were last read (engine
    /// clock, ms).
    drops_read_at: u64,
    /// Frames for the AF_PACKET outside, sent together by `flush_packets`
    /// (syscalls path): buffer and frame length.
    packets: Vec<(Vec<u8>, usize)>,
}

impl Worker {
    /// A worker; `inbox` and `waker` are its entries in the fabric.
    pub fn new(
        index: usize,
        spec: WorkerSpec,
        fabric: Arc<Fabric>,
        inbox: Receiver<Msg>,
        io: Arc<IoCounters>,
        settings: IoSettings,
    ) -> Worker {
        let waker = Arc::clone(&fabric.wakers[index]);
        let n = fabric.wakers.len();
        let outside_rx = match &spec.outside {
            OutsideTx::Tap(t) => Some(RxSource::Tap(Arc::clone(t))),
            OutsideTx::AfPacket(_, rx) => rx.as_ref().map(|r| RxSource::Packet(Arc::clone(r))),
        };
        Worker {
            outside_rx,
            index,
            counters: spec.engine.counters(),
            engine: spec.engine,
            io,
            settings,
            inside: spec.inside,
            outside: spec.outside,
            fabric,
            inbox,
            waker,
            frags: FragSteer::new(),
            spare: Vec::with_capacity(SPARE_LOCAL),
            rx: Vec::with_capacity(BATCH),
            scratch: vec![0u8; BUF],
            to_wake: vec![false; n],
            ring: None,
            ring_fds: Vec::new(),
            reads_per_fd: 0,
            packets: Vec::with_capacity(SEND_BATCH),
            drops_read_at: 0,
        }
    }

    /// Runs until the fabric's stop flag is set, on the path `backend`
    /// chose ([`crate::backend::resolve`]; `Auto` falls back to syscalls
    /// when this thread cannot set up its ring).
    pub fn run(mut self) -> io::Result<()> {
        let fds = self.inside.len() + usize::from(self.outside_rx.is_some());
        self.reads_per_fd = READS_PER_FD;
        let slots = fds * self.reads_per_fd + RING_WRITES;
        // Deferred completion work suits a worker that sleeps in the ring;
        // one that busy-polls the completion queue needs it run at once.
        let defer = self.settings.busy_poll().is_zero();
        let mut ring = None;
        let backend = crate::backend::resolve(self.settings.backend, || {
            ring = Some(Ring::new(slots, defer)?);
            Ok(())
        })?;
        match (backend, ring) {
            (Backend::Uring, Some(r)) => self.run_uring(r),
            _ => self.run_syscalls(),
        }
    }

    /// How long the engine may sleep: until its next timer (`None`: no
    /// timer).
    fn timeout(&self) -> Option<Duration> {
        let now = self.fabric.now();
        self.engine.poll_timeout().map(|t| Duration::from_millis(t.millis().saturating_sub(now.millis())))
    }

    /// The end of every loop iteration: frames from other threads, due
    /// timers, what the engine generated, wake-ups owed to other workers.
    fn finish_iteration(&mut self) {
        self.drain_inbox();
        self.process_rx();
        let now = self.fabric.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.expire(now);
        }
        self.flush();
        self.flush_packets();
        self.wake_others();
        if now.millis() >= self.drops_read_at + 1000 {
            self.drops_read_at = now.millis();
            if let Some(RxSource::Packet(p)) = &self.outside_rx {
                count_kernel_drops(p, &self.counters);
            }
        }
    }

    /// Sends the frames queued for the AF_PACKET outside: one `sendmmsg`
    /// per [`SEND_BATCH`] frames. A frame the kernel refuses is dropped
    /// (`tx_failed`) and the rest go on.
    fn flush_packets(&mut self) {
        let OutsideTx::AfPacket(sender, _) = &self.outside else {
            return;
        };
        let mut done = 0;
        while done < self.packets.len() {
            let mut frames: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
            let n = (self.packets.len() - done).min(SEND_BATCH);
            let start = packet_start(sender);
            for (f, (buf, len)) in frames.iter_mut().zip(&self.packets[done..done + n]) {
                *f = &buf[start..HDR + len];
            }
            self.io.send.inc();
            match sender.send_batch(&frames[..n]) {
                Ok(0) | Err(_) => {
                    self.counters.count_drop(DropReason::TxFailed);
                    done += 1;
                }
                Ok(k) => done += k,
            }
        }
        let mut packets = std::mem::take(&mut self.packets);
        for (buf, _) in packets.drain(..) {
            self.put_spare(buf);
        }
        self.packets = packets;
    }

    /// The read/write + epoll path.
    fn run_syscalls(&mut self) -> io::Result<()> {
        self.io.set_backend(ActiveBackend::Syscalls);
        let poller = Poller::new()?;
        poller.add(self.waker.as_fd(), TOKEN_WAKER)?;
        if let Some(src) = &self.outside_rx {
            poller.add(src.as_fd(), TOKEN_OUTSIDE)?;
        }
        for (i, (_, tap)) in self.inside.iter().enumerate() {
            poller.add(tap.as_fd(), i as u64)?;
        }
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<u64> = Vec::with_capacity(256);
        self.flush();
        let busy = self.settings.busy_poll();
        while !self.fabric.stop.load(Ordering::Relaxed) {
            let mut n = 0;
            if !busy.is_zero() {
                let end = std::time::Instant::now() + busy;
                loop {
                    self.io.epoll_wait.inc();
                    n = poller.wait(&mut events, Some(Duration::ZERO))?;
                    if n > 0 || !self.inbox.is_empty() || std::time::Instant::now() >= end {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if n == 0 && self.inbox.is_empty() {
                self.io.epoll_wait.inc();
                poller.wait(&mut events, self.timeout())?;
            }
            ready.clear();
            ready.extend(events.tokens());
            for &token in &ready {
                match token {
                    TOKEN_WAKER => {
                        self.io.read.inc();
                        let _ = self.waker.reset();
                    }
                    TOKEN_OUTSIDE => {
                        if let Some(src) = self.outside_rx.clone() {
                            self.read_batch(PortId::OUTSIDE, &src);
                        }
                    }
                    i => {
                        if let Some((port, tap)) = self.inside.get(i as usize).cloned() {
                            self.read_batch(port, &RxSource::Tap(tap));
                        }
                    }
                }
            }
            self.finish_iteration();
        }
        Ok(())
    }

    /// Reads up to [`BATCH`] frames from `src` (one `read` or `recv` each).
    fn read_batch(&mut self, port: PortId, src: &RxSource) {
        for _ in 0..BATCH {
            let mut buf = self.take_spare();
            match src {
                RxSource::Tap(_) => self.io.read.inc(),
                RxSource::Packet(_) => self.io.recv.inc(),
            }
            let Some(len) = read(src, &mut buf) else {
                self.put_spare(buf);
                break;
            };
            self.accept(port, buf, len);
        }
    }

    /// Takes a frame just read: steers a frame from the outside to its
    /// owner, queues the others for the engine.
    fn accept(&mut self, port: PortId, buf: Vec<u8>, len: usize) {
        self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: received
        if port == PortId::OUTSIDE {
            let now = self.fabric.now();
            if let Some(owner) = self.steer(now, &buf[HDR..HDR + len]) {
                self.hand_over(owner, buf, len);
                return;
            }
        }
        self.rx.push(RxFrame { port, buf, len, learn: false });
        if self.rx.len() >= BATCH {
            self.process_rx();
        }
    }

    /// The io_uring path: reads kept posted on every TAP queue and on the
    /// eventfd; completions reaped, frames processed, writes queued; one
    /// `io_uring_enter` per iteration submits the writes and new reads and
    /// waits.
    fn run_uring(&mut self, ring: Ring) -> io::Result<()> {
        self.io.set_backend(ActiveBackend::Uring);
        self.ring = Some(ring);
        if let Some(src) = &self.outside_rx {
            self.ring_fds.push(RingFd { port: PortId::OUTSIDE, src: src.clone(), posted: 0, retry_at: None });
        }
        for (port, tap) in &self.inside {
            let src = RxSource::Tap(Arc::clone(tap));
            self.ring_fds.push(RingFd { port: *port, src, posted: 0, retry_at: None });
        }
        let mut done: Vec<Done> = Vec::with_capacity(self.ring.as_ref().map_or(0, Ring::slots));
        self.refill_reads()?;
        self.flush();
        let busy = self.settings.busy_poll();
        while !self.fabric.stop.load(Ordering::Relaxed) {
            let ready = self.ring.as_mut().is_some_and(Ring::has_completions) || !self.inbox.is_empty();
            let timeout = if ready { None } else { self.uring_timeout() };
            let Some(ring) = self.ring.as_mut() else { break };
            if ready {
                ring.submit(&self.io)?;
            } else {
                let mut got = false;
                if !busy.is_zero() {
                    ring.submit(&self.io)?;
                    let end = std::time::Instant::now() + busy;
                    while std::time::Instant::now() < end {
                        if ring.has_completions() || !self.inbox.is_empty() {
                            got = true;
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
                if !got {
                    ring.wait(timeout, &self.io)?;
                }
            }
            ring.reap(&mut done);
            for d in done.drain(..) {
                match d {
                    Done::Read { fd, buf, res } => self.read_done(fd as usize, buf, res),
                    Done::Write { buf, res } => {
                        if res < 0 {
                            self.counters.count_drop(DropReason::TxFailed);
                        }
                        self.put_spare(buf);
                    }
                    Done::Wake => {}
                }
            }
            self.finish_iteration();
            self.refill_reads()?;
        }
        // Dropping the ring cancels the reads still posted.
        self.ring = None;
        Ok(())
    }

    /// The ring's wait: the engine's next timer, or the next retry of a
    /// queue whose read failed.
    fn uring_timeout(&self) -> Option<Duration> {
        let now = std::time::Instant::now();
        let retry = self.ring_fds.iter().filter_map(|f| f.retry_at).map(|t| t.saturating_duration_since(now)).min();
        match (self.timeout(), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A read on ring queue `fd` completed with `res` bytes (or `-errno`).
    fn read_done(&mut self, fd: usize, buf: Vec<u8>, res: i32) {
        let Some(f) = self.ring_fds.get_mut(fd) else {
            self.put_spare(buf);
            return;
        };
        f.posted = f.posted.saturating_sub(1);
        let port = f.port;
        let mut buf = buf;
        let len = match usize::try_from(res) {
            Ok(0) => {
                // End of file: the device is going away; do not spin on it.
                f.retry_at = Some(std::time::Instant::now() + READ_RETRY);
                None
            }
            Ok(n) => f.src.finish(&mut buf, n).filter(|&l| l <= MAX_FRAME),
            Err(_) => {
                if res != -libc::EAGAIN && res != -libc::ECANCELED {
                    f.retry_at = Some(std::time::Instant::now() + READ_RETRY);
                }
                None
            }
        };
        match len {
            Some(len) => self.accept(port, buf, len),
            None => self.put_spare(buf),
        }
    }

    /// Posts reads until every ring queue has its share posted, and the
    /// eventfd read.
    fn refill_reads(&mut self) -> io::Result<()> {
        let Some(mut ring) = self.ring.take() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let r = ring.post_wake(self.waker.as_raw_fd(), &self.io);
        for i in 0..self.ring_fds.len() {
            let f = &mut self.ring_fds[i];
            if f.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            f.retry_at = None;
            while self.ring_fds[i].posted < self.reads_per_fd && ring.has_room() {
                let buf = self.take_spare();
                let f = &mut self.ring_fds[i];
                match ring.post_read(i as u32, f.src.as_raw_fd(), buf, f.src.offset(), &self.io) {
                    Ok(()) => f.posted += 1,
                    Err(buf) => {
                        self.put_spare(buf);
                        break;
                    }
                }
            }
        }
        self.ring = Some(ring);
        r
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
                        let mut b = self.take_spare();
                        // No offload state: a reused buffer's header is stale.
                        b[..HDR].fill(0);
                        b[HDR..HDR + frame.len()].copy_from_slice(frame);
                        self.push_to(w, Msg::Learn { buf: b, len: frame.len() });
                    }
                }
                self.index
            }
            Steer::Local => self.index,
        };
        (owner != self.index).then_some(owner)
    }

    /// Sends the frame in `buf` (its header before it) to `owner` as an
    /// outside frame; the buffer goes with it.
    fn hand_over(&mut self, owner: usize, buf: Vec<u8>, len: usize) {
        self.push_to(owner, Msg::Frame { buf, len });
    }

    /// Queues `msg` in worker `w`'s inbox; it is woken at the end of this
    /// iteration (one wake-up however many frames it was handed).
    fn push_to(&mut self, w: usize, msg: Msg) {
        match self.fabric.inboxes[w].try_send(msg) {
            Ok(()) => self.to_wake[w] = true,
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => {
                self.counters.count_drop(DropReason::InboxFull);
                if let Msg::Frame { buf, .. } | Msg::Learn { buf, .. } = m {
                    self.put_spare(buf);
                }
            }
        }
    }

    /// Wakes the workers handed frames this iteration.
    fn wake_others(&mut self) {
        for w in 0..self.to_wake.len() {
            if std::mem::take(&mut self.to_wake[w]) {
                self.io.wake.inc();
                let _ = self.fabric.wakers[w].wake();
            }
        }
    }

    /// A free buffer (`BUF` bytes): a local spare, else one from the shared
    /// pool (allocated only when that is empty too).
    fn take_spare(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| self.fabric.take_buf())
    }

    /// Keeps a free buffer locally, or gives it back to the shared pool.
    fn put_spare(&mut self, b: Vec<u8>) {
        if b.len() != BUF {
            return;
        }
        if self.spare.len() < SPARE_LOCAL {
            self.spare.push(b);
        } else {
            self.fabric.give_buf(b);
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Frame { buf, len } => self.queue_rx(PortId::OUTSIDE, buf, len, false),
                Msg::Learn { buf, len } => self.queue_rx(PortId::OUTSIDE, buf, len, true),
                Msg::Bindings(b) => {
                    self.process_rx();
                    self.engine.set_bindings(b);
                }
                Msg::Call(f) => {
                    self.process_rx();
                    f(&mut self.engine);
                }
            }
        }
    }

    fn queue_rx(&mut self, port: PortId, buf: Vec<u8>, len: usize, learn: bool) {
        if buf.len() != BUF || len > MAX_FRAME {
            self.counters.count_drop(DropReason::Truncated);
            return;
        }
        self.rx.push(RxFrame { port, buf, len, learn });
        if self.rx.len() >= BATCH {
            self.process_rx();
        }
    }

    /// Hands this wake-up's frames (at most [`BATCH`]) to the engine, in the
    /// order they were read. This is the one place where frames meet the
    /// engine: a batch API takes `self.rx` whole here.
    fn process_rx(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let mut rx = std::mem::take(&mut self.rx);
        let now = self.fabric.now();
        // ARP copies from other workers only teach the engine; they go first
        // and one by one, so the batch below already sees what they taught.
        for f in rx.iter_mut().filter(|f| f.learn) {
            self.handle(now, f.port, &mut f.buf, f.len, true);
        }
        let mut at = 0;
        while at < rx.len() {
            // A vector of up to BATCH frames (skipping ARP copies): the
            // engine hashes every key and prefetches buckets and sessions
            // before it translates any frame (see `Engine::process_batch`).
            let mut actions = [(Action::Consumed, VnetHdr::default(), Offload::default()); BATCH];
            let mut frames: SmallVec<[BatchFrame<'_>; BATCH]> = SmallVec::new();
            let mut end = at;
            for f in rx[at..].iter_mut() {
                if frames.len() == BATCH {
                    break;
                }
                end += 1;
                if f.learn {
                    continue;
                }
                let hdr = VnetHdr::parse(&f.buf[..HDR]).unwrap_or_default();
                actions[frames.len()].1 = hdr;
                let mut b = BatchFrame::new(f.port, &mut f.buf[HDR..], f.len);
                b.offload =
                    Offload { csum_partial: hdr.needs_csum(), gso_size: if hdr.is_gso() { hdr.gso_size } else { 0 } };
                frames.push(b);
            }
            self.engine.process_batch(now, &mut frames);
            for (i, f) in frames.iter().enumerate() {
                actions[i].0 = f.action;
                actions[i].2 = f.offload;
            }
            drop(frames);
            for (f, &(action, hdr, out)) in rx[at..end].iter_mut().filter(|f| !f.learn).zip(actions.iter()) {
                self.dispatch(now, f.port, &mut f.buf, action, hdr, out, false);
            }
            at = end;
        }
        for f in rx.drain(..) {
            self.put_spare(f.buf);
        }
        self.rx = rx;
    }

    /// Processes the frame at `buf[HDR..HDR + len]` (its virtio-net header,
    /// or zeros, before it) on its own. `learn_only`: an ARP copy; nothing
    /// is sent back.
    fn handle(&mut self, now: Instant, port: PortId, buf: &mut Vec<u8>, len: usize, learn_only: bool) {
        let hdr = VnetHdr::parse(&buf[..HDR]).unwrap_or_default();
        let offload = Offload { csum_partial: hdr.needs_csum(), gso_size: if hdr.is_gso() { hdr.gso_size } else { 0 } };
        let action = self.engine.process_offload(now, port, &mut buf[HDR..], len, offload);
        let out = self.engine.forwarded_offload();
        self.dispatch(now, port, buf, action, hdr, out, learn_only);
    }

    /// Carries out what the engine decided for the frame in `buf` (which
    /// arrived on `port` with offload header `hdr`; `out`: the offload state
    /// it leaves with). A frame sent on the ring leaves with its buffer:
    /// `buf` is then replaced by a free one.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        now: Instant,
        port: PortId,
        buf: &mut Vec<u8>,
        action: Action,
        hdr: VnetHdr,
        out: Offload,
        learn_only: bool,
    ) {
        match action {
            Action::Forward { port: egress, len } => {
                // The engine may have completed a partial checksum (a
                // datagram it fragmented).
                let hdr = if out.csum_partial { hdr } else { VnetHdr { flags: 0, ..hdr } };
                self.emit(egress, buf, len, hdr)
            }
            Action::Reply { len } if !learn_only => self.emit(port, buf, len, VnetHdr::default()),
            Action::Redirect { len } => {
                // The owner of the ENI port it is for (an ICMP error about
                // a hairpin: of its quoted source port).
                let owner = match steer::inbound(&buf[HDR..HDR + len]) {
                    Steer::Port(p) | Steer::FirstFragment(p, _) => self.fabric.shards.owner(p),
                    _ => self.index,
                };
                if owner == self.index {
                    // Not ours after all (bindings changed): our engine decides.
                    let mut b = self.take_spare();
                    b[..HDR + len].copy_from_slice(&buf[..HDR + len]);
                    self.handle(now, PortId::OUTSIDE, &mut b, len, false);
                    self.put_spare(b);
                } else {
                    let fresh = self.take_spare();
                    let b = std::mem::replace(buf, fresh);
                    self.hand_over(owner, b, len);
                }
            }
            _ => {}
        }
    }

    /// Sends `buf[HDR..HDR + len]` out of `port` with offload header `hdr`.
    fn emit(&mut self, port: PortId, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) {
        self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: sent
        let Worker { outside, fabric, ring, spare, io, packets, .. } = self;
        let mut tx = Tx { ring, spare, fabric, io };
        let ok = if port == PortId::OUTSIDE {
            match outside {
                OutsideTx::Tap(t) => tx.tap(t, buf, len, hdr),
                OutsideTx::AfPacket(s, _) => {
                    let start = packet_start(s);
                    if s.vnet_hdr() {
                        // The socket's header is the TAP's less its last
                        // two bytes: it ends where the frame starts.
                        buf[start..HDR].copy_from_slice(&hdr.to_bytes()[..PACKET_VNET_LEN]);
                    }
                    if !s.vnet_hdr() && !finish_in_software(buf, len, hdr) {
                        false
                    } else if tx.ring_write(s.as_raw_fd(), buf, start..HDR + len) {
                        true
                    } else {
                        let fresh = tx.spare.pop().unwrap_or_else(|| tx.fabric.take_buf());
                        packets.push((std::mem::replace(buf, fresh), len));
                        if packets.len() >= SEND_BATCH {
                            self.flush_packets();
                        }
                        true
                    }
                }
            }
        } else {
            match fabric.inside.get(usize::from(port.0)).and_then(Option::as_ref) {
                Some(t) => tx.tap(t, buf, len, hdr),
                None => false,
            }
        };
        if !ok {
            self.counters.count_drop(DropReason::TxFailed);
        }
    }

    /// Sends what the engine generated or released, and its events.
    fn flush(&mut self) {
        let now = self.fabric.now();
        let mut buf = std::mem::take(&mut self.scratch);
        while let Some((port, len)) = self.engine.poll_transmit(now, &mut buf[HDR..]) {
            self.emit(port, &mut buf, len, VnetHdr::default());
        }
        self.scratch = buf;
        // An event the channel has no room for stays in the engine's queue
        // until the next flush: events that drive capacity are not lost.
        while let Some(ev) = self.engine.peek_event() {
            if self.fabric.events.try_send((self.index, ev)).is_err() {
                break;
            }
            self.engine.poll_event();
        }
    }
}

/// What a transmission needs from the worker (borrowed apart from the
/// engine).
struct Tx<'a> {
    ring: &'a mut Option<Ring>,
    spare: &'a mut Vec<Vec<u8>>,
    fabric: &'a Fabric,
    io: &'a IoCounters,
}

impl Tx<'_> {
    /// Writes a frame to a TAP: with its offload header when the TAP has
    /// one, otherwise with checksums completed in software. On the ring the
    /// write is queued (submitted at the next `io_uring_enter`) and the
    /// buffer goes with it, `buf` getting a free one; a ring out of slots,
    /// and the syscalls path, write at once.
    fn tap(&mut self, tap: &Tap, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) -> bool {
        let start = if tap.vnet_hdr() {
            let _ = hdr.write(&mut buf[..HDR]);
            0
        } else {
            if !finish_in_software(buf, len, hdr) {
                return false;
            }
            HDR
        };
        if self.ring_write(tap.as_raw_fd(), buf, start..HDR + len) {
            return true;
        }
        self.io.write.inc();
        tap.send(&buf[start..HDR + len]).is_ok()
    }

    /// Queues a write of `buf[range]` to `fd` on the ring, the buffer going
    /// with it and `buf` getting a free one; false (nothing done) without a
    /// ring or with every slot taken.
    fn ring_write(&mut self, fd: std::os::fd::RawFd, buf: &mut Vec<u8>, range: std::ops::Range<usize>) -> bool {
        let Some(ring) = self.ring.as_mut().filter(|r| r.has_room()) else {
            return false;
        };
        let fresh = self.spare.pop().unwrap_or_else(|| self.fabric.take_buf());
        let frame = std::mem::replace(buf, fresh);
        match ring.post_write(fd, frame, range, self.io) {
            Ok(()) => true,
            Err(frame) => {
                let fresh = std::mem::replace(buf, frame);
                self.spare.push(fresh);
                false
            }
        }
    }
}

/// One non-blocking read into `buf`, the frame landing at `HDR` (its
/// header before it, see [`RxSource`]). None when nothing is waiting (or on
/// error, which the next wake-up retries).
fn read(src: &RxSource, buf: &mut [u8]) -> Option<usize> {
    let n = src.read(buf).ok()?;
    src.finish(buf, n).filter(|&l| l <= MAX_FRAME)
}

/// Adds the frames the kernel dropped at `rx` since the last read to
/// `counters` (`rx_overflow`).
fn count_kernel_drops(rx: &PacketReceiver, counters: &Counters) {
    if let Ok(n) = rx.take_drops() {
        counters.count_drops(DropReason::RxOverflow, n);
    }
}

/// Where a frame for `s` starts in its buffer: at its virtio-net header
/// when the socket takes one (the [`PACKET_VNET_LEN`] bytes before
/// [`HDR`]), else at the frame.
fn packet_start(s: &PacketSender) -> usize {
    if s.vnet_hdr() {
        HDR - PACKET_VNET_LEN
    } else {
        HDR
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
    io: Vec<Arc<IoCounters>>,
    backend: Backend,
    reader: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per spec. `outside_rx`: for an AF_PACKET outside,
    /// the socket the reader thread receives on (it steers every frame to
    /// its owner). `settings`: the I/O path; with [`Backend::Uring`] the
    /// start fails when no ring can be set up, with [`Backend::Auto`] the
    /// workers use syscalls then.
    pub fn start(
        specs: Vec<WorkerSpec>,
        inside: Vec<Option<Arc<Tap>>>,
        shards: Shards,
        outside_rx: Option<PacketReceiver>,
        events: Sender<(usize, Event)>,
        settings: IoSettings,
    ) -> io::Result<Workers> {
        Workers::start_with_probe(specs, inside, shards, outside_rx, events, settings, crate::uring::probe)
    }

    /// [`Workers::start`] with the io_uring probe given (tests inject a
    /// failure with it).
    pub fn start_with_probe(
        specs: Vec<WorkerSpec>,
        inside: Vec<Option<Arc<Tap>>>,
        shards: Shards,
        outside_rx: Option<PacketReceiver>,
        events: Sender<(usize, Event)>,
        mut settings: IoSettings,
        probe: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<Workers> {
        // Decided once here; a worker whose own ring then fails falls back
        // under `Auto` and stops with the error under `Uring`.
        let backend = crate::backend::resolve(settings.backend, probe)?;
        if backend == Backend::Syscalls {
            settings.backend = Backend::Syscalls;
        }
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
        let io: Vec<Arc<IoCounters>> = (0..n + usize::from(outside_rx.is_some())).map(|_| Arc::default()).collect();
        let mut threads = Vec::with_capacity(n);
        for (i, (spec, rx)) in specs.into_iter().zip(receivers).enumerate() {
            let w = Worker::new(i, spec, Arc::clone(&fabric), rx, Arc::clone(&io[i]), settings);
            let t = std::thread::Builder::new().name(format!("hp-worker-{i}")).spawn(move || {
                let r = w.run();
                if let Err(e) = &r {
                    tracing::error!(worker = i, error = %e, "worker stopped");
                }
                r
            })?;
            threads.push(t);
        }
        let mut counters = counters;
        let reader = match outside_rx {
            Some(rx) => {
                let f = Arc::clone(&fabric);
                // Its own counters: a worker's have a single writer.
                let c = Arc::new(Counters::default());
                counters.push(Arc::clone(&c));
                let r = Arc::clone(&io[n]);
                Some(
                    std::thread::Builder::new()
                        .name("hp-afpacket".into())
                        .spawn(move || af_packet_reader(rx, f, c, r))?,
                )
            }
            None => None,
        };
        Ok(Workers { fabric, threads, counters, io, backend, reader })
    }

    /// System calls of each worker, in worker order, then of the AF_PACKET
    /// reader when there is one.
    pub fn io_counters(&self) -> &[Arc<IoCounters>] {
        &self.io
    }

    /// The I/O path chosen at start ([`Backend::Uring`] or
    /// [`Backend::Syscalls`]; a worker may still have fallen back, see
    /// [`IoCounters::backend`]).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The capture tap points every worker shares.
    pub fn capture(&self) -> &Capture {
        &self.fabric.capture
    }

    /// Each worker's counters, then (with an AF_PACKET outside) the reader
    /// thread's own (frames it drops); sum them for the gateway's.
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
/// hands it to the worker that owns it (ARP to all). A frame is received
/// straight into a pool buffer at [`HDR`], its offload header (when the
/// socket gives one) moved to the start of the buffer, and the buffer goes
/// to the owner: no copy but for ARP's extra copies.
fn af_packet_reader(rx: PacketReceiver, fabric: Arc<Fabric>, counters: Arc<Counters>, io: Arc<IoCounters>) {
    let mut frags = FragSteer::new();
    let mut spare: Option<Vec<u8>> = None;
    let vnet = rx.vnet_hdr();
    let start = if vnet { HDR - PACKET_VNET_LEN } else { HDR };
    let mut drops_read_at = std::time::Instant::now();
    while !fabric.stop.load(Ordering::Relaxed) {
        if drops_read_at.elapsed() >= Duration::from_secs(1) {
            drops_read_at = std::time::Instant::now();
            count_kernel_drops(&rx, &counters);
        }
        let mut b = spare.take().unwrap_or_else(|| fabric.take_buf());
        io.recv.inc();
        let n = match rx.recv(&mut b[start..]) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    counters.count_drop(DropReason::Truncated);
                }
                spare = Some(b);
                continue;
            }
        };
        let len = n.saturating_sub(HDR - start);
        if len == 0 || len > MAX_FRAME {
            counters.count_drop(DropReason::Truncated);
            spare = Some(b);
            continue;
        }
        if vnet {
            // The socket's 10-byte header, where the workers read the
            // TAP's 12-byte one (its last two bytes are ignored).
            b.copy_within(start..HDR, 0);
        }
        b[HDR - 2..HDR].fill(0);
        if !vnet {
            b[..HDR].fill(0);
        }
        fabric.capture.frame(PortId::OUTSIDE, &b[HDR..HDR + len]); // capture: received
        let now = fabric.now();
        let shards = &fabric.shards;
        let frame = &b[HDR..HDR + len];
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
        // ARP: worker 0 answers, the others learn from copies.
        for w in (targets.0 + 1..targets.1).rev() {
            let mut c = fabric.take_buf();
            c[..HDR].fill(0);
            c[HDR..HDR + len].copy_from_slice(&b[HDR..HDR + len]);
            io.wake.inc();
            if !fabric.send(w, Msg::Learn { buf: c, len }) {
                counters.count_drop(DropReason::InboxFull);
            }
        }
        io.wake.inc();
        if !fabric.send(targets.0, Msg::Frame { buf: b, len }) {
            counters.count_drop(DropReason::InboxFull);
        }
    }
}
