//! `AF_PACKET` rings: a receive ring ([`RxRing`]), the sizes of both
//! rings ([`RingConfig`]) and the mapping a ring lives in; the transmit
//! ring is [`crate::tx_ring::TxRing`]. Mapped into the process, frames
//! cross into and out of the kernel without a system call each.
//!
//! # Receive ([`RxRing`])
//! Two layouts ([`RxLayout`]):
//! - slots (`TPACKET_V2`, the default): fixed slots of
//!   [`RingConfig::rx_frame_size`] bytes; the kernel copies a frame into
//!   the next slot, marks it `TP_STATUS_USER` and wakes a reader blocked in
//!   `poll`/`epoll` at once. A frame longer than a slot (a 64 KiB
//!   superframe in 2 KiB slots) is queued whole on the socket instead
//!   (`PACKET_COPY_THRESH`; its slot marked `TP_STATUS_COPY` holds its
//!   start) and read with [`RxRing::recv_copied`], in the same order.
//!   [`RingConfig::superframes`] makes the slots long enough for a
//!   superframe ([`SUPERFRAME_SLOT`]): a sender's TCP stream then crosses
//!   in the ring like any frame. Measured on a TCP stream from a
//!   namespace with BBR, that carries more than receiving each superframe
//!   from the socket: with one `recv` per superframe the stream was paced
//!   lower while both CPUs idled part of the time (the README's attach
//!   figures).
//! - blocks (`TPACKET_V3`): blocks of [`RingConfig::block_size`] bytes,
//!   frames of any length packed one after the other; a block is handed over
//!   when it is full or [`RingConfig::retire`] after it was opened. Fewer
//!   wake-ups under load, but at light load every frame waits up to that
//!   long (at least 1 ms): measured, that costs round-trip-bound traffic
//!   (TCP connects, a TCP stream's ACKs) far more than the wake-ups save,
//!   hence slots by default.
//!
//! [`RxRing::drain`] walks the frames handed over, in ring order and in
//! place, then gives each slot or block back (`TP_STATUS_KERNEL`). Per
//! frame (`struct tpacket2_hdr` or `tpacket3_hdr`): the frame starts
//! `tp_mac` bytes after its header and is `tp_snaplen` bytes long (`tp_len`
//! on the wire: a shorter snapshot that was not queued whole is reported as
//! truncated); with `PACKET_VNET_HDR` the kernel writes the
//! [`PACKET_VNET_LEN`]-byte `virtio_net_hdr` right before the frame
//! (`tpacket_rcv`, since Linux 4.20; the option must be set before the
//! ring). Frames the ring has no room for are dropped by the kernel and
//! counted ([`RxRing::take_drops`]).
//!
//! Invariants: one reader at a time ([`RxRing::drain`] on another thread
//! while one runs returns at once); a slot or block is read only while it
//! is ours and given back only once the walk over it is done (the frames lent to
//! the walk's closure cannot outlive the call); every offset read from the
//! ring is checked against its slot or block before use, so a corrupt ring
//! stops the walk there instead of reading out of bounds.
//!
//! # Setup order (the kernel's rules)
//! `PACKET_IGNORE_OUTGOING` and `PACKET_VNET_HDR`, then `PACKET_VERSION`,
//! then `PACKET_RX_RING`/`PACKET_TX_RING` (`PACKET_VNET_HDR` is refused with
//! `EBUSY` once a ring exists), `mmap`, `bind`, and last the fanout group
//! (only a bound socket may join).
//!
//! Units: sizes in bytes, [`RingConfig::retire`] in milliseconds (the
//! kernel's unit; at least 1).

use crate::error::IoError;
use crate::packet_rx::{self, RxOptions, PACKET_VNET_LEN};
use crate::{ifreq, VnetHdr, VNET_HDR_LEN};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// `SOL_PACKET` option: the ring's header layout.
pub(crate) const PACKET_VERSION: libc::c_int = 10;
/// `SOL_PACKET` option: set up the receive ring.
const PACKET_RX_RING: libc::c_int = 5;
/// `SOL_PACKET` option: set up the transmit ring.
pub(crate) const PACKET_TX_RING: libc::c_int = 13;
/// `SOL_PACKET` option: skip malformed frames of the transmit ring.
pub(crate) const PACKET_LOSS: libc::c_int = 14;
/// `SOL_PACKET` option: queue frames longer than a slot on the socket.
const PACKET_COPY_THRESH: libc::c_int = 7;
/// `PACKET_VERSION` values.
pub(crate) const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;
/// Slot and block status bits.
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_COPY: u32 = 2;
pub(crate) const TP_STATUS_SEND_REQUEST: u32 = 1;
pub(crate) const TP_STATUS_SENDING: u32 = 2;

/// Where a transmit slot's frame starts: `TPACKET_ALIGN(sizeof(struct
/// tpacket2_hdr))` (the kernel's offset for a `SOCK_RAW` socket without
/// `PACKET_TX_HAS_OFF`).
pub const TX_DATA: usize = 32;
/// Bytes of `struct tpacket_block_desc` the kernel keeps before the first
/// frame of a block (at least; the block says where its first frame is).
const BLOCK_DESC: usize = 48;
/// Bytes of `struct tpacket3_hdr`.
const FRAME_HDR: usize = 48;

/// How a receive ring hands frames over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxLayout {
    /// `TPACKET_V3`: frames packed in blocks, a block handed over when full
    /// or [`RingConfig::retire`] after it was opened (fewest wake-ups; up
    /// to that long a wait for a frame when traffic is light).
    Blocks,
    /// `TPACKET_V2`: fixed slots of [`RingConfig::rx_frame_size`] bytes,
    /// each handed over (and the reader woken) as soon as it is written. A
    /// frame longer than a slot (a superframe) is queued whole on the
    /// socket (`PACKET_COPY_THRESH`), its slot marked `TP_STATUS_COPY`, and
    /// read from there with [`RxRing::recv_copied`].
    Frames,
}

/// Sizes of a socket's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// How the receive ring hands frames over.
    pub rx_layout: RxLayout,
    /// [`RxLayout::Frames`]: slot size, a power of two from 256 to 64 KiB
    /// (in 64 KiB blocks), or a multiple of 16 above 64 KiB and up to 1 MiB
    /// (in 1 MiB blocks).
    pub rx_frame_size: usize,
    /// [`RxLayout::Frames`]: slots (rounded up to whole blocks).
    pub rx_frames: usize,
    /// [`RxLayout::Blocks`]: receive block size: a multiple of the page size, at least
    /// [`MIN_BLOCK`] (a block holds a 64 KiB superframe).
    pub block_size: usize,
    /// [`RxLayout::Blocks`]: receive blocks.
    pub blocks: usize,
    /// [`RxLayout::Blocks`]: how long the kernel fills a block before it
    /// hands it over anyway, milliseconds, at least 1.
    pub retire: Duration,
    /// Transmit slot size: a power of two, at least 256 (frames longer than
    /// it less [`TX_DATA`] go another way).
    pub tx_frame_size: usize,
    /// Transmit slots (a multiple of the slots per 64 KiB block).
    pub tx_frames: usize,
}

/// The smallest receive block: a 64 KiB superframe, its Ethernet, virtio
/// and ring headers.
pub const MIN_BLOCK: usize = 128 << 10;

/// A receive slot that holds a superframe: the 65,535-byte IPv4 packet
/// that GSO builds at most, its Ethernet header, the virtio-net header and
/// the slot's `tpacket2_hdr` (65 KiB; 15 slots to a 1 MiB block).
pub const SUPERFRAME_SLOT: usize = 65 << 10;

impl RingConfig {
    /// Receive slots of [`SUPERFRAME_SLOT`] bytes, 256 asked for (270 in
    /// 18 blocks of 1 MiB: 18 MiB),
    /// for a socket that takes offloads (`PACKET_VNET_HDR`): every frame,
    /// a superframe too, is handed over in its slot. Transmit as
    /// [`RingConfig::default`].
    pub fn superframes() -> RingConfig {
        RingConfig { rx_frame_size: SUPERFRAME_SLOT, rx_frames: 256, ..RingConfig::default() }
    }
}

impl Default for RingConfig {
    /// Receive: 2,048 slots of 2 KiB (4 MiB; a 1500-byte MTU frame per
    /// slot), handed over one by one ([`RxLayout::Frames`]; blocks would be
    /// 32 of 128 KiB retired after 1 ms). Transmit: 1,024 slots of 2 KiB.
    fn default() -> RingConfig {
        RingConfig {
            rx_layout: RxLayout::Frames,
            rx_frame_size: 2048,
            rx_frames: 2048,
            block_size: MIN_BLOCK,
            blocks: 32,
            retire: Duration::from_millis(1),
            tx_frame_size: 2048,
            tx_frames: 1024,
        }
    }
}

/// A shared mapping of a ring, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; access to
// it goes through the ring types, whose own rules (one reader, status
// words read and written atomically) make it safe from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the ring(s) of `fd`.
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> Result<Mapping, IoError> {
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel
        // checks `len` against the rings it set up and the pointer is only
        // used after the check for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        let p = if p == libc::MAP_FAILED {
            // MAP_LOCKED may exceed RLIMIT_MEMLOCK: map unlocked instead.
            // SAFETY: as above.
            let q = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if q == libc::MAP_FAILED {
                return Err(IoError::sys("mmap (packet ring)", io::Error::last_os_error()));
            }
            q
        } else {
            p
        };
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| IoError::sys("mmap (packet ring)", io::Error::from(io::ErrorKind::InvalidData)))?;
        Ok(Mapping { base, len })
    }

    /// The status word at byte `at` (4-byte aligned, inside the mapping).
    pub(crate) fn status(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at.is_multiple_of(4) && at + 4 <= self.len);
        // SAFETY: `at + 4 <= len` and `at` is 4-aligned (callers pass block
        // and slot starts, page and 16-byte aligned); the word is shared with
        // the kernel, so it is only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// A native-endian u32 at byte `at` (inside the mapping).
    fn u32_at(&self, at: usize) -> u32 {
        debug_assert!(at + 4 <= self.len);
        // SAFETY: in bounds (callers check `at + 4 <= len`); an unaligned
        // read of plain bytes the kernel no longer writes (the block is ours).
        unsafe { self.base.as_ptr().add(at).cast::<u32>().read_unaligned() }
    }

    /// A native-endian u16 at byte `at` (inside the mapping).
    fn u16_at(&self, at: usize) -> u16 {
        debug_assert!(at + 2 <= self.len);
        // SAFETY: as for `u32_at`.
        unsafe { self.base.as_ptr().add(at).cast::<u16>().read_unaligned() }
    }

    /// `len` bytes at `at` (inside the mapping).
    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        debug_assert!(at + len <= self.len);
        // SAFETY: in bounds (callers check); the bytes belong to a block or
        // slot the kernel does not write while it is ours, and the slice
        // lives no longer than `&self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at), len) }
    }

    /// `len` writable bytes at `at` (inside the mapping).
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self, at: usize, len: usize) -> &mut [u8] {
        debug_assert!(at + len <= self.len);
        // SAFETY: in bounds (callers check); only a transmit slot that is
        // ours (`TP_STATUS_AVAILABLE`) is written, by its single owner
        // (`TxRing` takes `&mut self`), and the slice does not outlive the
        // call that fills it.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(at), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mmap returned; no reference into
        // it outlives the ring that owns this mapping.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// One frame of a receive block, lent to [`RxRing::drain`]'s closure.
#[derive(Debug)]
pub struct RingFrame<'a> {
    /// The frame's offload header (`PACKET_VNET_HDR`), when the ring has one.
    pub vnet: Option<VnetHdr>,
    /// The frame from its Ethernet header (`tp_snaplen` bytes).
    pub frame: &'a [u8],
    /// Its length on the wire (`tp_len`): longer than `frame` when the block
    /// had no room for all of it.
    pub wire_len: usize,
    /// [`RxLayout::Frames`]: the frame did not fit its slot and was queued
    /// whole on the socket: read it with [`RxRing::recv_copied`] (`frame`
    /// is only its start).
    pub copied: bool,
}

impl RingFrame<'_> {
    /// Whether only part of the frame is here and none of it elsewhere
    /// (drop it).
    pub fn truncated(&self) -> bool {
        self.frame.len() < self.wire_len && !self.copied
    }
}

/// A receiving `AF_PACKET` socket with a receive ring. See the module
/// docs.
#[derive(Debug)]
pub struct RxRing {
    // Field order: the mapping goes before the socket is closed.
    map: Mapping,
    fd: OwnedFd,
    layout: RxLayout,
    /// Blocks: block size; frames: slot size.
    block_size: usize,
    /// Blocks: blocks; frames: slots.
    blocks: usize,
    /// Frames: slots per kernel block.
    per_block: usize,
    /// Frames: bytes of a kernel block (slots never straddle blocks).
    slot_block: usize,
    /// The next block (or slot) to read (only changed under `busy`).
    next: AtomicU32,
    /// Set while a `drain` runs.
    busy: AtomicBool,
    vnet_hdr: bool,
    name: String,
}

impl RxRing {
    /// Opens a receiving socket on the existing interface `name` with the
    /// options of a [`crate::PacketReceiver`] (`read_timeout` is ignored: a
    /// ring is never read by a blocking call) and a ring of `cfg`'s size.
    ///
    /// Errors: those of [`crate::PacketReceiver::open`], and
    /// [`IoError::Sys`] naming `PACKET_VERSION`, `PACKET_RX_RING` or `mmap`
    /// when the kernel has no such ring or refuses its size, or the size
    /// asked for is not one the module docs allow.
    pub fn open(name: &str, opts: RxOptions, cfg: RingConfig) -> Result<RxRing, IoError> {
        ifreq::validate_name(name)?;
        let page = page_size();
        let bad = |what: &'static str| IoError::sys(what, io::Error::from(io::ErrorKind::InvalidInput));
        let (version, req, total, unit, count, per_block, slot_block) = match cfg.rx_layout {
            RxLayout::Blocks => {
                if cfg.block_size < MIN_BLOCK || !cfg.block_size.is_multiple_of(page) || cfg.blocks == 0 {
                    return Err(bad("PACKET_RX_RING (block size)"));
                }
                let total = cfg.block_size.checked_mul(cfg.blocks).filter(|&t| t <= u32::MAX as usize);
                let Some(total) = total else {
                    return Err(bad("PACKET_RX_RING (ring size)"));
                };
                let req = libc::tpacket_req3 {
                    tp_block_size: cfg.block_size as u32,
                    tp_block_nr: cfg.blocks as u32,
                    // The frame fields only size the ring here: one "frame"
                    // per 2 KiB of it.
                    tp_frame_size: 2048,
                    tp_frame_nr: (total / 2048) as u32,
                    tp_retire_blk_tov: cfg.retire.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                (TPACKET_V3, req, total, cfg.block_size, cfg.blocks, 1, cfg.block_size)
            }
            RxLayout::Frames => {
                let fs = cfg.rx_frame_size;
                let small = fs.is_power_of_two() && (256..=SLOT_BLOCK).contains(&fs);
                let big = fs > SLOT_BLOCK && fs.is_multiple_of(16) && fs <= BIG_SLOT_BLOCK;
                if !(small || big) || cfg.rx_frames == 0 {
                    return Err(bad("PACKET_RX_RING (frame size)"));
                }
                let slot_block = if small { SLOT_BLOCK } else { BIG_SLOT_BLOCK };
                let per_block = slot_block / fs;
                let blocks = cfg.rx_frames.div_ceil(per_block);
                let total = blocks.checked_mul(slot_block).filter(|&t| t <= u32::MAX as usize);
                let Some(total) = total else {
                    return Err(bad("PACKET_RX_RING (ring size)"));
                };
                let req = libc::tpacket_req3 {
                    tp_block_size: slot_block as u32,
                    tp_block_nr: blocks as u32,
                    tp_frame_size: fs as u32,
                    tp_frame_nr: (blocks * per_block) as u32,
                    tp_retire_blk_tov: 0,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                (TPACKET_V2, req, total, fs, blocks * per_block, per_block, slot_block)
            }
        };
        let fd = packet_rx::raw_socket(0)?;
        packet_rx::before_bind(&fd, opts)?;
        packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_VERSION, version, "PACKET_VERSION")?;
        if cfg.rx_layout == RxLayout::Frames {
            // Superframes queued whole on the socket (its receive buffer,
            // sized by `after_bind`) rather than cut to a slot.
            packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_COPY_THRESH, 1 as libc::c_int, "PACKET_COPY_THRESH")?;
            // A V2 ring takes the first four fields (`struct tpacket_req`).
            let v2 = libc::tpacket_req {
                tp_block_size: req.tp_block_size,
                tp_block_nr: req.tp_block_nr,
                tp_frame_size: req.tp_frame_size,
                tp_frame_nr: req.tp_frame_nr,
            };
            packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_RX_RING, v2, "PACKET_RX_RING")?;
        } else {
            packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_RX_RING, req, "PACKET_RX_RING")?;
        }
        let map = Mapping::new(&fd, total)?;
        packet_rx::bind(&fd, name, libc::ETH_P_ALL as u16)?;
        packet_rx::after_bind(&fd, name, RxOptions { read_timeout: None, ..opts })?;
        Ok(RxRing {
            map,
            fd,
            layout: cfg.rx_layout,
            block_size: unit,
            blocks: count,
            per_block,
            slot_block,
            next: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            vnet_hdr: opts.vnet_hdr,
            name: name.to_owned(),
        })
    }

    /// How the ring hands frames over.
    pub fn layout(&self) -> RxLayout {
        self.layout
    }

    /// Where block (or slot) `i` starts in the mapping.
    fn unit(&self, i: usize) -> usize {
        match self.layout {
            RxLayout::Blocks => i * self.block_size,
            RxLayout::Frames => (i / self.per_block) * self.slot_block + (i % self.per_block) * self.block_size,
        }
    }

    /// Whether the next block is ours (frames are waiting; no system call).
    pub fn ready(&self) -> bool {
        let b = self.next.load(Ordering::Relaxed) as usize;
        self.status(b).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// The status word of block (or slot) `b`.
    fn status(&self, b: usize) -> &AtomicU32 {
        match self.layout {
            // `struct tpacket_block_desc`: version, offset_to_priv, then the
            // v1 header whose first word is `block_status`.
            RxLayout::Blocks => self.map.status(self.unit(b) + 8),
            // `struct tpacket2_hdr`: `tp_status` first.
            RxLayout::Frames => self.map.status(self.unit(b)),
        }
    }

    /// Walks the frames of up to `max_blocks` handed-over blocks (with
    /// [`RxLayout::Frames`]: `max_blocks` times 64 slots), in order, calling
    /// `f` for each (see [`RingFrame`]), and gives each block (slot) back
    /// after its last frame. Returns the frames walked (0 when nothing was
    /// waiting, or when another thread is draining).
    pub fn drain(&self, max_blocks: usize, mut f: impl FnMut(RingFrame<'_>)) -> usize {
        if self.busy.swap(true, Ordering::Acquire) {
            return 0;
        }
        let units = match self.layout {
            RxLayout::Blocks => max_blocks,
            RxLayout::Frames => max_blocks.saturating_mul(64),
        };
        let mut frames = 0;
        let mut b = self.next.load(Ordering::Relaxed) as usize;
        for _ in 0..units {
            let status = self.status(b);
            let st = status.load(Ordering::Acquire);
            if st & TP_STATUS_USER == 0 {
                break;
            }
            frames += match self.layout {
                RxLayout::Blocks => self.walk(b, &mut f),
                RxLayout::Frames => self.slot(b, st, &mut f),
            };
            status.store(TP_STATUS_KERNEL, Ordering::Release);
            b = (b + 1) % self.blocks;
        }
        self.next.store(b as u32, Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        frames
    }

    /// The frame in slot `b` (ours, status `st`), checked against the
    /// slot's bounds; 0 or 1.
    fn slot(&self, b: usize, st: u32, f: &mut impl FnMut(RingFrame<'_>)) -> usize {
        let start = self.unit(b);
        let end = start + self.block_size;
        // struct tpacket2_hdr: tp_len (4), tp_snaplen (8), tp_mac (12).
        let wire = self.map.u32_at(start + 4) as usize;
        let snap = self.map.u32_at(start + 8) as usize;
        let mac = usize::from(self.map.u16_at(start + 12));
        let hdr = if self.vnet_hdr { PACKET_VNET_LEN } else { 0 };
        let from = start + mac;
        if mac < TX_DATA + hdr || from.checked_add(snap).is_none_or(|e| e > end) {
            return 0;
        }
        let vnet = (hdr > 0).then(|| self.vnet_at(from));
        f(RingFrame { vnet, frame: self.map.bytes(from, snap), wire_len: wire, copied: st & TP_STATUS_COPY != 0 });
        1
    }

    /// The virtio-net header right before the frame at `from`.
    fn vnet_at(&self, from: usize) -> VnetHdr {
        let mut h = [0u8; VNET_HDR_LEN];
        h[..PACKET_VNET_LEN].copy_from_slice(self.map.bytes(from - PACKET_VNET_LEN, PACKET_VNET_LEN));
        VnetHdr::parse(&h).unwrap_or_default()
    }

    /// The frames of block `b` (ours), checked against the block's bounds.
    fn walk(&self, b: usize, f: &mut impl FnMut(RingFrame<'_>)) -> usize {
        let start = self.unit(b);
        let end = start + self.block_size;
        // tpacket_hdr_v1: block_status (8), num_pkts (12),
        // offset_to_first_pkt (16).
        let count = self.map.u32_at(start + 12) as usize;
        let mut at = start + self.map.u32_at(start + 16) as usize;
        let hdr = if self.vnet_hdr { PACKET_VNET_LEN } else { 0 };
        let mut walked = 0;
        for _ in 0..count {
            if at < start + BLOCK_DESC || at + FRAME_HDR > end {
                break;
            }
            // struct tpacket3_hdr: tp_next_offset (0), tp_snaplen (12),
            // tp_len (16), tp_mac (24).
            let next = self.map.u32_at(at) as usize;
            let snap = self.map.u32_at(at + 12) as usize;
            let wire = self.map.u32_at(at + 16) as usize;
            let mac = usize::from(self.map.u16_at(at + 24));
            let from = at + mac;
            if mac < FRAME_HDR + hdr || from.checked_add(snap).is_none_or(|e| e > end) {
                break;
            }
            let vnet = (hdr > 0).then(|| self.vnet_at(from));
            f(RingFrame { vnet, frame: self.map.bytes(from, snap), wire_len: wire, copied: false });
            walked += 1;
            if next == 0 {
                break;
            }
            at += next;
        }
        walked
    }

    /// Receives the next frame queued whole on the socket (one marked
    /// [`RingFrame::copied`], in the same order) into `buf`, preceded by
    /// its [`PACKET_VNET_LEN`]-byte header when the ring has one; the bytes
    /// written. Errors: `WouldBlock` when none is queued, `InvalidData` for
    /// a frame longer than `buf` (dropped).
    pub fn recv_copied(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`, a
        // live exclusive slice; MSG_TRUNC only changes the returned length.
        let n = unsafe {
            libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC | libc::MSG_DONTWAIT)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame longer than the buffer"));
        }
        Ok(n)
    }

    /// Frames the kernel dropped (no room in the ring) since the last call
    /// (`PACKET_STATISTICS`, which resets on read).
    pub fn take_drops(&self) -> io::Result<u64> {
        packet_rx::take_drops(&self.fd)
    }

    /// Sets the program of this socket's `PACKET_FANOUT_CBPF` group (see
    /// [`crate::PacketReceiver::set_fanout_program`]).
    pub fn set_fanout_program(&self, prog: &[libc::sock_filter]) -> Result<(), IoError> {
        packet_rx::set_fanout_program(&self.fd, prog)
    }

    /// Whether frames come with their offload header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsFd for RxRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RxRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Block size of the slot rings (slots never straddle blocks).
pub(crate) const SLOT_BLOCK: usize = 64 << 10;
/// Block size of the receive rings whose slots are longer than
/// [`SLOT_BLOCK`].
const BIG_SLOT_BLOCK: usize = 1 << 20;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<libc::tpacket3_hdr>(), FRAME_HDR);
        assert_eq!(std::mem::size_of::<libc::tpacket_block_desc>(), BLOCK_DESC);
        assert_eq!(std::mem::size_of::<libc::tpacket2_hdr>(), TX_DATA);
        assert_eq!(std::mem::offset_of!(libc::tpacket3_hdr, tp_snaplen), 12);
        assert_eq!(std::mem::offset_of!(libc::tpacket3_hdr, tp_len), 16);
        assert_eq!(std::mem::offset_of!(libc::tpacket3_hdr, tp_mac), 24);
        assert_eq!(std::mem::offset_of!(libc::tpacket2_hdr, tp_len), 4);
    }

    #[test]
    fn bad_sizes_are_refused_before_any_socket() {
        let small = RingConfig { rx_layout: RxLayout::Blocks, block_size: 4096, ..RingConfig::default() };
        let e = RxRing::open("lo", RxOptions::default(), small).unwrap_err();
        assert!(e.to_string().contains("block size"), "{e}");
        // Up to 64 KiB a power of two; above, a multiple of 16 that fits
        // a 1 MiB block.
        for fs in [3000, 65_544, (1 << 20) + 16] {
            let odd = RingConfig { rx_frame_size: fs, ..RingConfig::default() };
            let e = RxRing::open("lo", RxOptions::default(), odd).unwrap_err();
            assert!(e.to_string().contains("frame size"), "{fs}: {e}");
        }
    }
}
