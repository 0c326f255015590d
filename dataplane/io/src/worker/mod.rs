//! Workers: threads that move frames between devices and engines.
//!
//! This module holds a worker's state and what it does with a vector of
//! frames (steering, hand-over, the engine call, dispatch); `io_loops` its
//! two I/O loops (read/write + epoll, and io_uring), `tx` transmission, and
//! `pool` the [`Workers`] that start, call and stop the threads.
//!
//! # Design
//! A gateway runs `n` workers (one per core by default). Each worker owns one
//! [`Engine`] whose port range is its slice of the ENI ports
//! ([`Shards`]), the inside attachments assigned to it, and one queue of the
//! outside device (a multi-queue TAP, or an AF_PACKET sender). Flow state is
//! never shared:
//! - an environment's frames are read only by the worker that owns its
//!   attachment, and its sessions take ports from that worker's slice;
//! - a frame from the VPC may arrive on any worker's outside queue (where
//!   the kernel runs the outside's steering program, [`crate::steer_ebpf`]
//!   or [`crate::fanout_bpf`], a TCP/UDP frame or echo reply arrives on its
//!   owner's; otherwise the kernel spreads them by flow hash, replies
//!   usually returning to the queue they left from); the reader looks up
//!   the owner of its ENI port ([`crate::steer`]) and, when it is another
//!   worker, hands the frame over through that worker's inbox (a crossbeam
//!   channel) and wakes it;
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
//! - an AF_PACKET outside on packet rings ([`OutsideTx::Ring`], either
//!   path), and direct (`af-packet`) attachments on them: the worker walks
//!   each receive ring in place when it is readable (epoll, or a poll
//!   posted on the io_uring), copying each frame once into a buffer, and
//!   frames for the outside, or for an attachment it owns, go into that
//!   interface's transmit ring ([`RingSender`]), kicked with one `send` at
//!   the end of the iteration.
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
use crate::inside::Inside;
use crate::rx_source::RxSource;
use crate::steer::{self, FragSteer, Shards, Steer};
use crate::syscalls::{ActiveBackend, IoCounters};
use crate::uring::{Done, Ring};
use crate::vhost_user::VhostUserPort;
use crate::{
    complete_checksum, Events, PacketReceiver, Poller, RingSender, RxRing, Tap, VnetHdr, Waker, PACKET_VNET_LEN,
    VNET_HDR_LEN,
};
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
/// churn than 2). A queue whose posted reads all brought a frame in one
/// iteration is busy: the rest of its backlog (up to [`BATCH`] frames) is
/// read at once with plain `read`s, so a loaded queue is taken in whole
/// batches rather than two frames per `io_uring_enter` (64-byte UDP through
/// one TAP, `benches/compare.rs`: about 1.5× the frames forwarded). A batch
/// of `RWF_NOWAIT` reads on the ring instead forwarded 4% more of those but
/// cost connection churn (`benches/io_churn.rs`) up to a quarter of its
/// rate, its reads mostly finding the queue empty; a `read` stops at the
/// first.
const READS_PER_FD: usize = 2;
/// Ring slots for writes in flight, beyond the reads.
const RING_WRITES: usize = 256;
/// After a failed read on the ring, how long before that queue is read
/// again (a device that went away must not spin the loop).
const READ_RETRY: Duration = Duration::from_millis(100);
/// Buffer size: header room, the largest frame, and room for a reply.
const BUF: usize = HDR + MAX_FRAME;

/// Blocks of a receive ring (the outside's, an attachment's) walked per
/// wake-up before the other devices get a turn.
const RING_BLOCKS: usize = 2;
/// The io_uring descriptor index of the readiness poll on the worker's
/// first receive ring (the outside's, when it has one); the `k`-th ring's
/// is `RING_RX_POLL - k` (reads are indexed from 0).
const RING_RX_POLL: u32 = u32::MAX;
/// How soon the receive ring is looked at again when no poll could be
/// posted on it (io_uring), and a refused transmit ring kick retried.
const RING_RX_RETRY: Duration = Duration::from_millis(1);

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
    /// A frame for a vhost-user attachment this worker owns, from another
    /// worker: `buf[HDR..HDR + len]`, its virtio-net header before it.
    Guest {
        /// The attachment's port.
        port: PortId,
        /// The buffer.
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
    /// Its own rings on the outside interface ([`crate::packet_ring`]): a
    /// receive ring, its member of the outside's fanout group, and a
    /// transmit ring with its plain socket for what the ring cannot take
    /// ([`RingSender`]), kicked once per wake-up.
    Ring {
        /// The receive ring (read by this worker only).
        rx: Arc<RxRing>,
        /// The transmit ring.
        tx: RingSender,
    },
}

/// What one worker is given.
pub struct WorkerSpec {
    /// The engine (its port range is this worker's shard).
    pub engine: Engine,
    /// Attachments this worker reads.
    pub inside: Vec<(PortId, Arc<Inside>)>,
    /// The outside.
    pub outside: OutsideTx,
}

/// What all workers share.
pub struct Fabric {
    /// Device of every inside port, indexed by `PortId.0`.
    pub inside: Vec<Option<Arc<Inside>>>,
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
    /// Posted reads that brought a frame in this loop iteration.
    filled: usize,
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
    inside: Vec<(PortId, Arc<Inside>)>,
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
    /// The vhost-user ports this worker owns.
    vhost: Vec<(PortId, VhostUserPort)>,
    /// A guest's transmit queue was left with frames waiting: look again
    /// before sleeping.
    vhost_more: bool,
    /// Frames for this worker's guests, written by `flush_guests` (one
    /// queue lock per port per iteration): port, buffer (header before the
    /// frame), frame length.
    to_guest: Vec<(PortId, Vec<u8>, usize)>,
    /// Frames just read from a guest, before they are accepted.
    from_guest: Vec<(Vec<u8>, usize)>,
    /// On the io_uring path, per receive ring (the outside's first, then
    /// the attachments' in `inside` order), whether a readiness poll is
    /// posted on it.
    ring_rx_polled: Vec<bool>,
    /// The transmit rings of the direct attachments this worker owns.
    inside_tx: Vec<(PortId, RingSender)>,
    /// Index into `inside_tx` by `PortId.0` ([`NO_RING`]: none here).
    inside_tx_at: Vec<u32>,
}

/// No transmit ring of this worker's for that port.
const NO_RING: u32 = u32::MAX;

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
        let vhost: Vec<(PortId, VhostUserPort)> = spec
            .inside
            .iter()
            .filter_map(|(port, dev)| match dev.as_ref() {
                Inside::VhostUser(v) => v.take(index).map(|p| (*port, p)),
                _ => None,
            })
            .collect();
        for (_, p) in &vhost {
            p.forward_doorbell(Arc::clone(&waker));
        }
        // The transmit rings of the direct attachments this worker owns.
        let mut inside_tx = Vec::new();
        let mut inside_tx_at = vec![NO_RING; fabric.inside.len()];
        for (port, dev) in &spec.inside {
            if let (Inside::Packet(p), Some(at)) = (dev.as_ref(), inside_tx_at.get_mut(usize::from(port.0))) {
                if let Some(r) = p.take_ring_tx() {
                    *at = inside_tx.len() as u32;
                    inside_tx.push((*port, r));
                }
            }
        }
        let outside_rx = match &spec.outside {
            OutsideTx::Tap(t) => Some(RxSource::Tap(Arc::clone(t))),
            OutsideTx::AfPacket(_, rx) => rx.as_ref().map(|r| RxSource::Packet(Arc::clone(r))),
            OutsideTx::Ring { rx, .. } => Some(RxSource::Ring(Arc::clone(rx))),
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
            vhost,
            vhost_more: false,
            to_guest: Vec::with_capacity(BATCH),
            from_guest: Vec::with_capacity(BATCH),
            ring_rx_polled: Vec::new(),
            inside_tx,
            inside_tx_at,
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

    /// How long the worker may sleep: until its engine's next timer
    /// (`None`: no timer). Slots of a transmit ring (the outside's or an
    /// attachment's) that a refused kick left marked shorten it to
    /// [`RING_RX_RETRY`], so they are kicked again soon.
    fn timeout(&self) -> Option<Duration> {
        let now = self.fabric.now();
        let t = self.engine.poll_timeout().map(|t| Duration::from_millis(t.millis().saturating_sub(now.millis())));
        match &self.outside {
            OutsideTx::Ring { tx, .. } if tx.pending() > 0 => Some(t.map_or(RING_RX_RETRY, |t| t.min(RING_RX_RETRY))),
            _ if self.inside_tx.iter().any(|(_, r)| r.pending() > 0) => {
                Some(t.map_or(RING_RX_RETRY, |t| t.min(RING_RX_RETRY)))
            }
            _ => t,
        }
    }

    /// The end of every loop iteration: frames from other threads, due
    /// timers, what the engine generated, wake-ups owed to other workers.
    fn finish_iteration(&mut self) {
        self.read_guests();
        self.drain_inbox();
        self.process_rx();
        let now = self.fabric.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.expire(now);
        }
        self.flush();
        self.flush_packets();
        self.flush_guests();
        self.kick_ring();
        self.wake_others();
        if now.millis() >= self.drops_read_at + 1000 {
            self.drops_read_at = now.millis();
            let drops = match &self.outside_rx {
                Some(RxSource::Packet(p)) => p.take_drops(),
                Some(RxSource::Ring(r)) => r.take_drops(),
                _ => Ok(0),
            };
            count_kernel_drops(drops, &self.counters);
            for (_, dev) in &self.inside {
                if let Inside::Packet(p) = dev.as_ref() {
                    count_kernel_drops(p.take_drops(), &self.counters);
                }
            }
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
                if let Msg::Frame { buf, .. } | Msg::Learn { buf, .. } | Msg::Guest { buf, .. } = m {
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
                Msg::Guest { port, buf, len } => self.to_guest.push((port, buf, len)),
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

mod io_loops;
mod pool;
mod tx;
mod vhost;

pub use pool::Workers;
use tx::count_kernel_drops;
