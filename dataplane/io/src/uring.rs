//! One worker's io_uring: reads and writes of whole frames, posted with the
//! buffer that holds them and reaped in batches.
//!
//! # Ownership of buffers
//! A buffer given to [`Ring::post_read`] or [`Ring::post_write`] (a `Vec`
//! whose heap block the kernel reads or writes) is held in the ring's slot
//! table until its completion is reaped, then handed back in a [`Done`]; the
//! `Vec` itself is never resized while posted, so its heap block stays put.
//! On drop, the ring cancels what is still posted and waits (up to
//! [`DRAIN_LIMIT`]) for the completions; buffers whose completion never came
//! are leaked rather than freed under the kernel.
//!
//! # Capacity
//! At most [`Ring::slots`] operations are posted at once: the completion
//! queue has twice as many entries, so it cannot overflow. A post that finds
//! every slot taken gives its buffer back (the caller writes with a plain
//! system call instead). A full submission queue is submitted at once.
//!
//! # System calls
//! The only system call is `io_uring_enter`, counted in
//! [`IoCounters::uring_enter`]: [`Ring::wait`] submits everything queued and
//! waits for one completion or a timeout in one call; [`Ring::submit`]
//! submits without waiting.

use crate::syscalls::IoCounters;
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Longest wait for cancelled operations on drop.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// `user_data` of the eventfd read (slots are numbered from 0).
const WAKE: u64 = u64::MAX;
/// `user_data` of cancellation requests (their completions are ignored).
const CANCEL: u64 = u64::MAX - 1;

/// What a posted operation was.
enum Kind {
    Free,
    Read(u32),
    Write,
    Poll(u32),
}

struct Slot {
    kind: Kind,
    buf: Vec<u8>,
}

/// A reaped completion.
pub enum Done {
    /// A read on descriptor `fd` (the index given to [`Ring::post_read`]):
    /// `res` bytes (negative: `-errno`) at the offset it was posted with.
    Read {
        /// The caller's descriptor index.
        fd: u32,
        /// The buffer.
        buf: Vec<u8>,
        /// Bytes read, or `-errno`.
        res: i32,
    },
    /// A write finished: bytes written, or `-errno`.
    Write {
        /// The buffer, free again.
        buf: Vec<u8>,
        /// Bytes written, or `-errno`.
        res: i32,
    },
    /// The eventfd read completed: the worker was woken.
    Wake,
    /// Descriptor `fd` (the index given to [`Ring::post_poll`]) became
    /// readable, or the poll failed.
    Ready {
        /// The caller's descriptor index.
        fd: u32,
    },
}

/// One worker's ring. See the module docs.
pub struct Ring {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    posted: usize,
    wake_buf: Box<[u8; 8]>,
    wake_posted: bool,
}

impl Ring {
    /// A ring for `slots` operations in flight (rounded up to a power of
    /// two, at most 4096). Fails when the kernel has no io_uring, forbids it
    /// (`/proc/sys/kernel/io_uring_disabled`, seccomp), or lacks the
    /// features used here (`EXT_ARG` timeouts, 5.11; `NODROP`).
    ///
    /// `defer`: `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): completion work runs
    /// only inside this thread's `io_uring_enter`, batched, instead of
    /// interrupting it; then [`Ring::has_completions`] sees nothing new
    /// until the next [`Ring::wait`] or [`Ring::submit`], so a busy-polling
    /// caller passes false. Only the creating thread may use such a ring.
    pub fn new(slots: usize, defer: bool) -> io::Result<Ring> {
        let entries = slots.clamp(8, 4096).next_power_of_two() as u32;
        let build = |defer: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(entries * 2);
            if defer {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            b.build(entries)
        };
        let ring = match build(defer) {
            // Before 6.1: no deferred completion work; run without.
            Err(e) if defer && e.raw_os_error() == Some(libc::EINVAL) => build(false)?,
            r => r?,
        };
        let p = ring.params();
        if !p.is_feature_ext_arg() || !p.is_feature_nodrop() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "kernel lacks IORING_FEAT_EXT_ARG or NODROP"));
        }
        let n = entries as usize;
        let slots = (0..n).map(|_| Slot { kind: Kind::Free, buf: Vec::new() }).collect();
        let free = (0..n as u32).rev().collect();
        Ok(Ring { ring, slots, free, posted: 0, wake_buf: Box::new([0; 8]), wake_posted: false })
    }

    /// Operations that can be in flight at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether another read or write can be posted.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Pushes one entry, submitting a full queue first.
    fn push(&mut self, e: &squeue::Entry, io: &IoCounters) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.submit(io)?;
        }
        // SAFETY: every entry pushed here points at memory that outlives the
        // operation: a posted buffer held in `slots` (or `wake_buf`) until its
        // completion is reaped, and on drop either reaped or leaked (see the
        // module docs); descriptors are the caller's open TAPs/eventfd, kept
        // open by the worker (and the fabric) for the ring's lifetime.
        unsafe { self.ring.submission().push(e) }.map_err(|_| io::Error::other("submission queue full"))
    }

    fn take_slot(&mut self, kind: Kind, buf: Vec<u8>) -> Result<(u32, *mut u8), Vec<u8>> {
        let Some(i) = self.free.pop() else {
            return Err(buf);
        };
        let s = &mut self.slots[i as usize];
        s.kind = kind;
        s.buf = buf;
        self.posted += 1;
        Ok((i, s.buf.as_mut_ptr()))
    }

    fn untake(&mut self, i: u32) -> Vec<u8> {
        let s = &mut self.slots[i as usize];
        s.kind = Kind::Free;
        self.posted -= 1;
        self.free.push(i);
        std::mem::take(&mut s.buf)
    }

    /// Posts a read of one frame from `raw` into `buf[offset..]`; `fd` is
    /// the caller's index for it, returned with the completion. Gives the
    /// buffer back when no slot is free or the entry cannot be queued.
    pub fn post_read(
        &mut self,
        fd: u32,
        raw: RawFd,
        buf: Vec<u8>,
        offset: usize,
        io: &IoCounters,
    ) -> Result<(), Vec<u8>> {
        let len = buf.len().saturating_sub(offset).min(u32::MAX as usize) as u32;
        let (i, ptr) = self.take_slot(Kind::Read(fd), buf)?;
        // `offset <= buf.len()` (len saturates to 0 otherwise and the read
        // returns 0 bytes): the pointer stays inside the block.
        let ptr = ptr.wrapping_add(offset.min(self.slots[i as usize].buf.len()));
        let e = opcode::Read::new(types::Fd(raw), ptr, len).build().user_data(u64::from(i));
        match self.push(&e, io) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.untake(i)),
        }
    }

    /// Posts a write of `buf[range]` to `raw`. Gives the buffer back when no
    /// slot is free or the entry cannot be queued.
    pub fn post_write(
        &mut self,
        raw: RawFd,
        buf: Vec<u8>,
        range: Range<usize>,
        io: &IoCounters,
    ) -> Result<(), Vec<u8>> {
        if range.start > range.end || range.end > buf.len() {
            return Err(buf);
        }
        let (i, ptr) = self.take_slot(Kind::Write, buf)?;
        let e = opcode::Write::new(types::Fd(raw), ptr.wrapping_add(range.start), range.len() as u32)
            .build()
            .user_data(u64::from(i));
        match self.push(&e, io) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.untake(i)),
        }
    }

    /// Posts a one-shot wait for `raw` to become readable (`POLLIN`); `fd`
    /// is the caller's index for it, returned in [`Done::Ready`]. False
    /// when no slot is free or the entry cannot be queued.
    pub fn post_poll(&mut self, fd: u32, raw: RawFd, io: &IoCounters) -> bool {
        let Ok((i, _)) = self.take_slot(Kind::Poll(fd), Vec::new()) else {
            return false;
        };
        let e = opcode::PollAdd::new(types::Fd(raw), libc::POLLIN as u32).build().user_data(u64::from(i));
        match self.push(&e, io) {
            Ok(()) => true,
            Err(_) => {
                self.untake(i);
                false
            }
        }
    }

    /// Posts the read on the worker's eventfd `raw` unless one is posted.
    pub fn post_wake(&mut self, raw: RawFd, io: &IoCounters) -> io::Result<()> {
        if self.wake_posted {
            return Ok(());
        }
        let e = opcode::Read::new(types::Fd(raw), self.wake_buf.as_mut_ptr(), 8).build().user_data(WAKE);
        self.push(&e, io)?;
        self.wake_posted = true;
        Ok(())
    }

    /// Whether completions are waiting to be reaped (no system call).
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Whether entries are queued but not submitted.
    pub fn has_pending(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits what is queued, without waiting (one `io_uring_enter`; none
    /// when nothing is queued).
    pub fn submit(&mut self, io: &IoCounters) -> io::Result<()> {
        if !self.has_pending() {
            return Ok(());
        }
        io.uring_enter.inc();
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and waits until a completion arrives or
    /// `timeout` passes (`None`: no limit): one `io_uring_enter`.
    pub fn wait(&mut self, timeout: Option<Duration>, io: &IoCounters) -> io::Result<()> {
        io.uring_enter.inc();
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every waiting completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Done>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            let (ud, res) = (c.user_data(), c.result());
            match ud {
                WAKE => {
                    self.wake_posted = false;
                    out.push(Done::Wake);
                }
                CANCEL => {}
                i => {
                    let Some(s) = self.slots.get_mut(i as usize) else {
                        continue;
                    };
                    let kind = std::mem::replace(&mut s.kind, Kind::Free);
                    let buf = std::mem::take(&mut s.buf);
                    self.posted -= 1;
                    self.free.push(i as u32);
                    match kind {
                        Kind::Read(fd) => out.push(Done::Read { fd, buf, res }),
                        Kind::Write => out.push(Done::Write { buf, res }),
                        Kind::Poll(fd) => out.push(Done::Ready { fd }),
                        Kind::Free => {}
                    }
                }
            }
        }
    }

    /// Operations posted and not yet reaped (the eventfd read included).
    pub fn in_flight(&self) -> usize {
        self.posted + usize::from(self.wake_posted)
    }

    /// Cancels everything posted and waits for the completions, up to
    /// [`DRAIN_LIMIT`]; true when nothing is left in flight.
    fn drain(&mut self) -> bool {
        let io = IoCounters::default();
        let mut done = Vec::new();
        let targets: Vec<u64> = (0..self.slots.len() as u64)
            .filter(|&i| !matches!(self.slots[i as usize].kind, Kind::Free))
            .chain(self.wake_posted.then_some(WAKE))
            .collect();
        for ud in targets {
            let e = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
            if self.push(&e, &io).is_err() {
                return false;
            }
        }
        let end = Instant::now() + DRAIN_LIMIT;
        while self.in_flight() > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait(Some(left.min(Duration::from_millis(100))), &io).is_err() {
                break;
            }
            self.reap(&mut done);
            done.clear();
        }
        self.in_flight() == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight() > 0 && !self.drain() {
            tracing::warn!(in_flight = self.in_flight(), "io_uring operations not cancelled: leaking their buffers");
            for s in &mut self.slots {
                std::mem::forget(std::mem::take(&mut s.buf));
            }
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}

/// Checks that a ring with the features used here can be set up.
pub fn probe() -> io::Result<()> {
    Ring::new(8, true).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Waker;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_posted_eventfd_read_completes_when_woken_and_a_write_reaps_its_buffer() {
        let Ok(mut ring) = Ring::new(8, true) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        let io = IoCounters::default();
        let w = Waker::new().expect("eventfd");
        ring.post_wake(w.as_raw_fd(), &io).expect("post");
        ring.post_wake(w.as_raw_fd(), &io).expect("second post is a no-op");
        ring.wait(Some(Duration::from_millis(20)), &io).expect("wait");
        let mut done = Vec::new();
        ring.reap(&mut done);
        assert!(done.is_empty(), "not woken yet");
        w.wake().expect("wake");
        ring.wait(Some(Duration::from_secs(2)), &io).expect("wait");
        ring.reap(&mut done);
        assert!(matches!(done.as_slice(), [Done::Wake]));
        assert_eq!(io.uring_enter.get(), 2);
        assert_eq!(ring.in_flight(), 0);
        // A write to the eventfd (8 bytes: a counter increment).
        let buf = 1u64.to_ne_bytes().to_vec();
        ring.post_write(w.as_raw_fd(), buf, 0..8, &io).expect("post write");
        assert_eq!(ring.in_flight(), 1);
        ring.wait(Some(Duration::from_secs(2)), &io).expect("wait");
        done.clear();
        ring.reap(&mut done);
        match done.as_slice() {
            [Done::Write { buf, res: 8 }] => assert_eq!(buf.len(), 8),
            _ => panic!("one write of 8 bytes"),
        }
        assert!(w.reset().expect("reset"), "the write reached the eventfd");
        assert!(ring.post_write(w.as_raw_fd(), vec![0; 4], 2..8, &io).is_err(), "range past the buffer");
    }

    #[test]
    fn a_full_slot_table_gives_the_buffer_back_and_drop_cancels_posted_reads() {
        let Ok(mut ring) = Ring::new(8, true) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        let io = IoCounters::default();
        let w = Waker::new().expect("eventfd");
        for i in 0..ring.slots() {
            ring.post_read(i as u32, w.as_raw_fd(), vec![0; 8], 0, &io).expect("room");
        }
        assert!(!ring.has_room());
        assert!(ring.post_read(99, w.as_raw_fd(), vec![0; 8], 0, &io).is_err());
        ring.submit(&io).expect("submit");
        let t0 = Instant::now();
        drop(ring);
        assert!(t0.elapsed() < DRAIN_LIMIT, "reads cancelled, not timed out");
    }
}
