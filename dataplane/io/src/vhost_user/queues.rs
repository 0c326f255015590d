//! The data path: frames out of the guest's transmit queue into worker
//! buffers ([`GuestTx`]), and frames from worker buffers into its receive
//! queue ([`GuestRx`]).
//!
//! A batch holds its queue's lock (a write lock on the vring, shared with
//! the protocol thread) and a snapshot of the guest's memory map for its
//! whole life, and signals the guest (the queue's *call* eventfd) at most
//! once, when dropped, if the driver asked for it (`EVENT_IDX` or the
//! ring's flags). Counters are added once per batch.
//!
//! Descriptors are read with `vm-memory`'s bounds-checked copies: a chain
//! pointing outside guest memory, or of the wrong direction, is returned
//! to the guest unused and counted (`malformed_chains`).

use super::device::{Link, Mem};
use crate::tap::VNET_HDR_LEN;
use crate::vnet::{complete_checksum, VnetHdr};
use dataplane::wire::ETH_LEN;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLockWriteGuard;
use vhost_user_backend::{VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::atomic::GuestMemoryLoadGuard;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};

/// Bytes before a frame in a worker buffer (the worker's `HDR`).
const HDR: usize = VNET_HDR_LEN;

/// The port's counters (frames), added to once per batch.
#[derive(Debug, Default)]
pub struct VhostCounters {
    /// Frames the guest sent, handed to the owner.
    pub guest_tx_frames: AtomicU64,
    /// Frames written into the guest.
    pub guest_rx_frames: AtomicU64,
    /// Descriptor chains returned unused: a write-only descriptor in a
    /// transmit chain or a read-only one in a receive chain, an address
    /// outside guest memory, a transmit chain too short for a header and an
    /// Ethernet header or too long for a buffer, a bad head index.
    pub malformed_chains: AtomicU64,
    /// Frames for the guest dropped: its receive queue had no buffer.
    pub rx_no_buffer: AtomicU64,
    /// Frames for the guest dropped: larger than its next receive buffer.
    pub rx_too_big: AtomicU64,
    /// Frames for the guest dropped: a GSO superframe, or a partial
    /// checksum that could not be completed.
    pub rx_offload: AtomicU64,
    /// Times a queue's available ring was unreadable or its index
    /// inconsistent (the queue is skipped until the driver fixes it).
    pub ring_errors: AtomicU64,
}

impl VhostCounters {
    /// Every counter by its stable name (the metric's `counter` label).
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        [
            ("guest_tx_frames", &self.guest_tx_frames),
            ("guest_rx_frames", &self.guest_rx_frames),
            ("malformed_chains", &self.malformed_chains),
            ("rx_no_buffer", &self.rx_no_buffer),
            ("rx_too_big", &self.rx_too_big),
            ("rx_offload", &self.rx_offload),
            ("ring_errors", &self.ring_errors),
        ]
        .map(|(k, v)| (k, v.load(Relaxed)))
    }
}

/// Local tallies of one batch.
#[derive(Default)]
struct Tally {
    frames: u64,
    malformed: u64,
    no_buffer: u64,
    too_big: u64,
    offload: u64,
    ring_errors: u64,
}

impl Tally {
    fn add_to(&self, c: &VhostCounters, frames: &AtomicU64) {
        for (n, a) in [
            (self.frames, frames),
            (self.malformed, &c.malformed_chains),
            (self.no_buffer, &c.rx_no_buffer),
            (self.too_big, &c.rx_too_big),
            (self.offload, &c.rx_offload),
            (self.ring_errors, &c.ring_errors),
        ] {
            if n > 0 {
                a.fetch_add(n, Relaxed);
            }
        }
    }
}

type Guard<'a> = RwLockWriteGuard<'a, VringState<Mem>>;

/// One queue locked for a batch.
struct Batch<'a> {
    mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
    vring: Guard<'a>,
    hdr_len: usize,
    counters: &'a VhostCounters,
    /// Chains added to the used ring in this batch.
    used: u32,
    tally: Tally,
}

impl<'a> Batch<'a> {
    /// Locks `vring` of `link`; `None` unless it is enabled and set up.
    fn new(link: &'a Link, vring: &'a vhost_user_backend::VringRwLock, counters: &'a VhostCounters) -> Option<Self> {
        let vring = vring.get_mut();
        if !(vring.is_enabled() && vring.get_queue().ready()) {
            return None;
        }
        Some(Batch {
            mem: link.mem.memory(),
            vring,
            hdr_len: link.hdr_len(),
            counters,
            used: 0,
            tally: Tally::default(),
        })
    }

    /// Returns chain `head` to the guest with `len` bytes written; false
    /// (counted as malformed) for a head index outside the queue.
    fn give_back(&mut self, head: u16, len: u32) -> bool {
        let ok = self.vring.get_queue_mut().add_used(&*self.mem, head, len).is_ok();
        if ok {
            self.used += 1;
        } else {
            self.tally.malformed += 1;
        }
        ok
    }

    /// Signals the guest if it asked to be, and adds the tallies.
    fn end(&mut self, frames: &AtomicU64) {
        if self.used > 0 {
            self.used = 0;
            let mem = &*self.mem;
            if self.vring.get_queue_mut().needs_notification(mem).unwrap_or(true) {
                let _ = self.vring.signal_used_queue();
            }
        }
        self.tally.add_to(self.counters, frames);
        self.tally = Tally::default();
    }
}

/// A batch of frames from the guest's transmit queue. Call
/// [`GuestTx::recv`] until it returns `None` or the batch is full, then
/// [`GuestTx::finish`].
pub struct GuestTx<'a> {
    b: Batch<'a>,
    /// The last `recv` found the queue empty.
    drained: bool,
    finished: bool,
}

impl<'a> GuestTx<'a> {
    pub(crate) fn new(link: &'a Link, counters: &'a VhostCounters) -> Option<GuestTx<'a>> {
        let mut b = Batch::new(link, &link.tx, counters)?;
        // No kicks while we are reading anyway (a no-op with EVENT_IDX).
        let _ = b.vring.get_queue_mut().disable_notification(&*b.mem);
        Some(GuestTx { b, drained: false, finished: false })
    }

    /// Copies the guest's next frame into `buf`: the frame at
    /// `buf[HDR..HDR + len]`, a zeroed header before it (see the module
    /// docs of [`super`]). Returns `len`, or `None` when the queue is empty.
    /// Malformed chains are given back, counted and skipped.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let hdr_len = self.b.hdr_len;
        let start = HDR - hdr_len;
        loop {
            let b = &mut self.b;
            let mem = &*b.mem;
            let Some(chain) = pop(b.vring.get_queue_mut(), mem, &mut b.tally) else {
                self.drained = true;
                return None;
            };
            let head = chain.head_index();
            let n = read_chain(chain, mem, buf.get_mut(start..).unwrap_or_default());
            if !self.b.give_back(head, 0) {
                continue;
            }
            match n {
                Some(n) if n >= hdr_len + ETH_LEN => {
                    buf[..HDR].fill(0);
                    self.b.tally.frames += 1;
                    return Some(n - hdr_len);
                }
                _ => self.b.tally.malformed += 1,
            }
        }
    }

    /// Ends the batch: signals the guest if it asked, and re-arms its kicks
    /// when the queue was drained. Returns whether frames may be waiting:
    /// then call [`super::VhostUserPort::guest_tx`] again without waiting
    /// for the doorbell.
    pub fn finish(mut self) -> bool {
        self.finished = true;
        self.rearm()
    }

    /// Re-enables kicks after draining; whether more frames arrived.
    fn rearm(&mut self) -> bool {
        if !self.drained {
            return true;
        }
        matches!(self.b.vring.get_queue_mut().enable_notification(&*self.b.mem), Ok(true))
    }
}

impl Drop for GuestTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.rearm();
        }
        let c = self.b.counters;
        self.b.end(&c.guest_tx_frames);
    }
}

/// Why a frame was not written into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The guest's receive queue has no buffer.
    NoBuffer,
    /// The frame does not fit the guest's next receive buffer.
    TooBig,
    /// A GSO superframe, or a partial checksum that could not be completed.
    Offload,
}

/// A batch of frames written into the guest's receive queue; the guest is
/// signalled once, when the batch is dropped.
pub struct GuestRx<'a> {
    b: Batch<'a>,
}

impl<'a> GuestRx<'a> {
    pub(crate) fn new(link: &'a Link, counters: &'a VhostCounters) -> Option<GuestRx<'a>> {
        let mut b = Batch::new(link, &link.rx, counters)?;
        // We never wait for receive buffers: no kicks for them.
        let _ = b.vring.get_queue_mut().disable_notification(&*b.mem);
        Some(GuestRx { b })
    }

    /// Writes `frame` (with offload state `hdr`) into the guest's next
    /// receive buffer. A partial checksum is completed in place first. On
    /// error the frame is dropped and counted; the guest's buffer is kept
    /// for the next frame.
    pub fn send(&mut self, frame: &mut [u8], hdr: VnetHdr) -> Result<(), RxDrop> {
        if hdr.is_gso()
            || (hdr.needs_csum()
                && !complete_checksum(frame, usize::from(hdr.csum_start), usize::from(hdr.csum_offset)))
        {
            self.b.tally.offload += 1;
            return Err(RxDrop::Offload);
        }
        // virtio_net_hdr_v1 without offloads: one buffer (`num_buffers`).
        let mut h = [0u8; VNET_HDR_LEN];
        h[10] = 1;
        let h = &h[..self.b.hdr_len];
        let total = h.len() + frame.len();
        loop {
            let b = &mut self.b;
            let mem = &*b.mem;
            let Some(chain) = pop(b.vring.get_queue_mut(), mem, &mut b.tally) else {
                b.tally.no_buffer += 1;
                return Err(RxDrop::NoBuffer);
            };
            let head = chain.head_index();
            match write_chain(chain, mem, h, frame) {
                Write::Done => {
                    if self.b.give_back(head, total as u32) {
                        self.b.tally.frames += 1;
                        return Ok(());
                    }
                }
                Write::Short => {
                    self.b.vring.get_queue_mut().go_to_previous_position();
                    self.b.tally.too_big += 1;
                    return Err(RxDrop::TooBig);
                }
                Write::Malformed => {
                    if self.b.give_back(head, 0) {
                        self.b.tally.malformed += 1;
                    }
                }
            }
        }
    }
}

impl Drop for GuestRx<'_> {
    fn drop(&mut self) {
        let c = self.b.counters;
        self.b.end(&c.guest_rx_frames);
    }
}

/// The next available chain of `queue`; `None` when there is none (or the
/// ring is unreadable, counted).
fn pop<'m>(
    queue: &mut virtio_queue::Queue,
    mem: &'m GuestMemoryMmap,
    tally: &mut Tally,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(_) => {
            tally.ring_errors += 1;
            None
        }
    }
}

/// Copies the readable chain into `out`; the bytes copied, or `None` for a
/// malformed chain (a write-only descriptor, an address outside guest
/// memory, more bytes than `out` holds).
fn read_chain(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, out: &mut [u8]) -> Option<usize> {
    let mut n = 0usize;
    for d in chain {
        if d.is_write_only() {
            return None;
        }
        let end = n.checked_add(d.len() as usize).filter(|&e| e <= out.len())?;
        mem.read_slice(&mut out[n..end], d.addr()).ok()?;
        n = end;
    }
    Some(n)
}

/// How writing a frame into a receive chain went.
enum Write {
    /// Header and frame written.
    Done,
    /// The chain is too small (nothing to give back: it can be reused).
    Short,
    /// A read-only descriptor, or an address outside guest memory.
    Malformed,
}

/// Writes `hdr` then `frame` across the writable chain.
fn write_chain(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, hdr: &[u8], frame: &[u8]) -> Write {
    let total = hdr.len() + frame.len();
    let mut pos = 0usize;
    for d in chain {
        if pos == total {
            break;
        }
        if !d.is_write_only() {
            return Write::Malformed;
        }
        let take = (d.len() as usize).min(total - pos);
        let mut at = d.addr();
        let mut left = take;
        // The part of the header still to write, then the frame.
        if pos < hdr.len() {
            let k = left.min(hdr.len() - pos);
            if mem.write_slice(&hdr[pos..pos + k], at).is_err() {
                return Write::Malformed;
            }
            at = GuestAddress(at.0.wrapping_add(k as u64));
            pos += k;
            left -= k;
        }
        if left > 0 {
            let f = pos - hdr.len();
            if mem.write_slice(&frame[f..f + left], at).is_err() {
                return Write::Malformed;
            }
            pos += left;
        }
    }
    if pos == total {
        Write::Done
    } else {
        Write::Short
    }
}
