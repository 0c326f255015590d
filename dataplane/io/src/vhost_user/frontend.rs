//! The VMM's side, for tests and benches: a vhost-user frontend
//! (`vhost::vhost_user::Frontend`) that shares a memfd-backed guest memory
//! with the backend, and a driver-side split virtqueue per queue (what a
//! guest's virtio-net driver does: descriptors, available ring, used ring,
//! kicks).
//!
//! Guest memory layout (guest-physical, from 0): per queue, its descriptor
//! table, available ring and used ring (4 KiB aligned), then
//! `size` buffers of [`BUF_LEN`] bytes each. Buffer `i` belongs to
//! descriptor `i`. Units: bytes.

use super::device::{HDR_V1, RX_QUEUE, TX_QUEUE};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes per buffer (a 1500-byte MTU frame, its header and room).
pub const BUF_LEN: u64 = 2048;
/// Queue size used unless told otherwise.
pub const QUEUE_SIZE: u16 = 256;

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// One descriptor of a hand-made chain ([`DriverQueue::push_raw`]).
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The driver's side of one split virtqueue.
pub struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    /// Guest → device notifications.
    pub kick: EventFd,
    /// Device → guest notifications.
    pub call: EventFd,
    avail_idx: u16,
    last_used: u16,
    free: Vec<u16>,
    event_idx: bool,
    /// Kicks sent.
    pub kicks: u64,
}

impl DriverQueue {
    fn new(size: u16, base: u64) -> io::Result<(DriverQueue, u64)> {
        let s = u64::from(size);
        let align = |x: u64| x.div_ceil(4096) * 4096;
        let desc = base;
        let avail = desc + 16 * s;
        let used = align(avail + 6 + 2 * s);
        let bufs = align(used + 6 + 8 * s);
        let end = bufs + s * BUF_LEN;
        let q = DriverQueue {
            size,
            desc,
            avail,
            used,
            bufs,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            event_idx: false,
            kicks: 0,
        };
        Ok((q, end))
    }

    /// Free descriptors.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(i))).expect("descriptor table in memory");
    }

    /// Puts chain `head` in the available ring (not yet published).
    fn offer(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).expect("avail ring in memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index and kicks if the device asked
    /// (`EVENT_IDX`: its `avail_event`; else the used ring's flags).
    fn publish(&mut self, mem: &GuestMemoryMmap, old: u16) {
        mem.store(self.avail_idx.to_le(), GuestAddress(self.avail + 2), Ordering::Release).expect("avail idx");
        std::sync::atomic::fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let at = GuestAddress(self.used + 4 + 8 * u64::from(self.size));
            let ev = u16::from_le(mem.load(at, Ordering::Acquire).unwrap_or(0));
            self.avail_idx.wrapping_sub(ev).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
        } else {
            let flags = u16::from_le(mem.load(GuestAddress(self.used), Ordering::Acquire).unwrap_or(0));
            flags & 1 == 0
        };
        if kick {
            self.kicks += 1;
            let _ = self.kick.write(1);
        }
    }

    /// Tells the device we want a call at the next used entry (EVENT_IDX).
    fn want_call(&self, mem: &GuestMemoryMmap) {
        let at = GuestAddress(self.avail + 4 + 2 * u64::from(self.size));
        let _ = mem.store(self.last_used.to_le(), at, Ordering::Release);
    }

    /// The next used entry: (descriptor head, bytes written).
    fn next_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx = u16::from_le(mem.load(GuestAddress(self.used + 2), Ordering::Acquire).ok()?);
        if idx == self.last_used {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let mut e = [0u8; 8];
        mem.read_slice(&mut e, GuestAddress(at)).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        Some((id as u16, u32::from_le_bytes([e[4], e[5], e[6], e[7]])))
    }

    /// Frees the descriptors of chain `head` (following `NEXT`).
    fn release(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let mut i = head;
        for _ in 0..self.size {
            if i >= self.size {
                return;
            }
            self.free.push(i);
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, GuestAddress(self.desc + 16 * u64::from(i))).is_err() {
                return;
            }
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
                return;
            }
            i = u16::from_le_bytes([d[14], d[15]]);
        }
    }

    /// Offers a hand-made chain (descriptors taken from the free list, in
    /// order, linked with `NEXT`) and publishes it. False when there are
    /// not enough free descriptors.
    pub fn push_raw(&mut self, mem: &GuestMemoryMmap, descs: &[RawDesc]) -> bool {
        if descs.is_empty() || self.free.len() < descs.len() {
            return false;
        }
        let ids: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap_or(0)).collect();
        for (k, d) in descs.iter().enumerate() {
            let mut flags = if d.write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = ids.get(k + 1).copied().unwrap_or(0);
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(mem, ids[k], d.addr, d.len, flags, next);
        }
        let old = self.avail_idx;
        self.offer(mem, ids[0]);
        self.publish(mem, old);
        true
    }

    /// Offers `head` as is (whatever descriptor it names, even one past
    /// the table) and publishes it.
    pub fn push_head(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let old = self.avail_idx;
        self.offer(mem, head);
        self.publish(mem, old);
    }

    /// Guest-physical address of buffer `i`.
    pub fn buf_addr(&self, i: u16) -> u64 {
        self.bufs + u64::from(i) * BUF_LEN
    }
}

/// A connected frontend with its guest memory and both queues.
pub struct TestFrontend {
    fe: Frontend,
    /// The guest's memory (the same memfd the backend maps).
    pub mem: GuestMemoryMmap,
    /// Queue 0: frames to the guest.
    pub rx: DriverQueue,
    /// Queue 1: frames from the guest.
    pub tx: DriverQueue,
    /// The features accepted.
    pub features: u64,
}

impl TestFrontend {
    /// Connects to `path` and sets the device up as a VMM does: features
    /// (all offered, less `drop_features`), memory table, both queues
    /// (`size` descriptors each), enabled.
    pub fn connect(path: &Path, size: u16, drop_features: u64) -> io::Result<TestFrontend> {
        let (mut rx, end) = DriverQueue::new(size, 0)?;
        let (mut tx, end) = DriverQueue::new(size, end)?;
        let len = end.div_ceil(1 << 20) << 20;
        let fd = rustix::fs::memfd_create("hp-vhost-test", rustix::fs::MemfdFlags::CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(len)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            len as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(err)?;
        let region = mem.find_region(GuestAddress(0)).ok_or_else(|| err("no region"))?;
        let host = mem.get_host_address(GuestAddress(0)).map_err(err)? as u64;
        let handle = region.file_offset().ok_or_else(|| err("no file"))?.file().as_raw_fd();

        let mut fe = Frontend::connect(path, 2).map_err(err)?;
        fe.set_owner().map_err(err)?;
        let offered = fe.get_features().map_err(err)?;
        let features = offered & !drop_features;
        fe.set_features(features).map_err(err)?;
        if features & vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let pf = fe.get_protocol_features().map_err(err)?;
            fe.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK).map_err(err)?;
        }
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: len,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: handle,
        };
        fe.set_mem_table(&[region]).map_err(err)?;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (i, q) in [(RX_QUEUE, &mut rx), (TX_QUEUE, &mut tx)] {
            q.event_idx = event_idx;
            fe.set_vring_num(i, size).map_err(err)?;
            let cfg = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: host + q.desc,
                used_ring_addr: host + q.used,
                avail_ring_addr: host + q.avail,
                log_addr: None,
            };
            fe.set_vring_addr(i, &cfg).map_err(err)?;
            fe.set_vring_base(i, 0).map_err(err)?;
            fe.set_vring_call(i, &q.call).map_err(err)?;
            fe.set_vring_kick(i, &q.kick).map_err(err)?;
        }
        if features & vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            for i in [RX_QUEUE, TX_QUEUE] {
                fe.set_vring_enable(i, true).map_err(err)?;
            }
        }
        Ok(TestFrontend { fe, mem, rx, tx, features })
    }

    /// Writes `data` into guest memory at guest-physical `addr`.
    pub fn mem_write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).expect("address in guest memory");
    }

    /// The underlying frontend (more requests, or drop to disconnect).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// The header length for the accepted features.
    pub fn hdr_len(&self) -> usize {
        if self.features & (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1) != 0 {
            HDR_V1
        } else {
            super::device::HDR_LEGACY
        }
    }

    /// The guest sends `frames` (a zero header before each), published
    /// together with at most one kick. Returns how many were queued (fewer
    /// when the transmit queue is full; [`TestFrontend::reclaim_tx`] frees
    /// it).
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        let hdr = self.hdr_len();
        let old = self.tx.avail_idx;
        let mut n = 0;
        for f in frames {
            let total = hdr + f.len();
            if total as u64 > BUF_LEN {
                continue;
            }
            let Some(i) = self.tx.free.pop() else { break };
            let at = self.tx.buf_addr(i);
            let zero = [0u8; HDR_V1];
            self.mem.write_slice(&zero[..hdr], GuestAddress(at)).expect("buffer in memory");
            self.mem.write_slice(f, GuestAddress(at + hdr as u64)).expect("buffer in memory");
            self.tx.write_desc(&self.mem, i, at, total as u32, 0, 0);
            self.tx.offer(&self.mem, i);
            n += 1;
        }
        if n > 0 {
            self.tx.publish(&self.mem, old);
        }
        n
    }

    /// Frees transmit descriptors the device is done with; how many chains.
    pub fn reclaim_tx(&mut self) -> usize {
        let mut n = 0;
        while let Some((head, _)) = self.tx.next_used(&self.mem) {
            self.tx.release(&self.mem, head);
            n += 1;
        }
        self.tx.want_call(&self.mem);
        n
    }

    /// Offers every free receive descriptor as a `buf_len`-byte writable
    /// buffer; how many.
    pub fn post_rx(&mut self, buf_len: u32) -> usize {
        let old = self.rx.avail_idx;
        let mut n = 0;
        while let Some(i) = self.rx.free.pop() {
            let at = self.rx.buf_addr(i);
            self.rx.write_desc(&self.mem, i, at, buf_len.min(BUF_LEN as u32), VRING_DESC_F_WRITE as u16, 0);
            self.rx.offer(&self.mem, i);
            n += 1;
        }
        if n > 0 {
            self.rx.publish(&self.mem, old);
        }
        n
    }

    /// The next frame the device wrote into the guest (chains of one
    /// descriptor): its header and the frame (`(header, frame)`), the buffer freed for reposting; `None`
    /// when nothing is used yet. A used entry with a length shorter than
    /// the header comes back as an empty frame.
    pub fn recv(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let (head, len) = self.rx.next_used(&self.mem)?;
        let hdr = self.hdr_len();
        let mut out = vec![0u8; (len as usize).min(BUF_LEN as usize)];
        if head < self.rx.size {
            // The head descriptor's buffer (chains posted here have one).
            let mut d = [0u8; 16];
            let at = GuestAddress(self.rx.desc + 16 * u64::from(head));
            if self.mem.read_slice(&mut d, at).is_ok() {
                let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
                let _ = self.mem.read_slice(&mut out, GuestAddress(addr));
            }
        }
        self.rx.release(&self.mem, head);
        self.rx.want_call(&self.mem);
        let frame = out.split_off(hdr.min(out.len()));
        Some((out, frame))
    }

    /// Counts the frames the device wrote, freeing their buffers, without
    /// reading them (benches).
    pub fn consume_rx(&mut self) -> usize {
        let mut n = 0;
        while let Some((head, _)) = self.rx.next_used(&self.mem) {
            self.rx.release(&self.mem, head);
            n += 1;
        }
        self.rx.want_call(&self.mem);
        n
    }

    /// Sleeps until the device signals either queue (its *call* eventfds)
    /// or `timeout` passes, as a guest waits for an interrupt; clears both.
    pub fn wait_call(&self, timeout: Duration) {
        use rustix::event::{poll, PollFd, PollFlags};
        // SAFETY: both descriptors are owned by `self.rx` and `self.tx`,
        // which outlive these borrows (they end with this function).
        let (a, b) = unsafe {
            (
                std::os::fd::BorrowedFd::borrow_raw(self.rx.call.as_raw_fd()),
                std::os::fd::BorrowedFd::borrow_raw(self.tx.call.as_raw_fd()),
            )
        };
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let _ = poll(&mut [PollFd::new(&a, PollFlags::IN), PollFd::new(&b, PollFlags::IN)], Some(&ts));
        let _ = self.rx.call.read();
        let _ = self.tx.call.read();
    }

    /// Waits until `f` returns `Some`, polling every 100 µs, for at most
    /// `timeout`.
    pub fn wait_for<T>(&mut self, timeout: Duration, mut f: impl FnMut(&mut Self) -> Option<T>) -> Option<T> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return Some(v);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
