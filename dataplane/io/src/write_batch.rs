//! Many whole frames written to one descriptor with one system call: a small io_uring of its own whose write
//! entries point into the caller's frames.
//!
//! Contract: [`WriteBatch::write`] queues one write per frame (to a TAP queue, each write is one frame), submits
//! them with one `io_uring_enter` that waits for them all, and reaps every completion before it returns, so the
//! frames are borrowed for the call only. Nothing is left queued or in flight after it returns: on an error from
//! the kernel the ring is torn down and replaced (entries it never read go with it). A TAP write runs inline in the
//! submission, as `write(2)` would (the kernel's receive path included); what the batch saves is the system call
//! per frame. Frames beyond [`WriteBatch::capacity`] are not written (the count returned says how many were).

use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// An io_uring for batches of writes. See the module docs.
pub struct WriteBatch {
    ring: IoUring,
    entries: u32,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch").field("entries", &self.entries).finish()
    }
}

impl WriteBatch {
    /// A ring for batches of up to `entries` frames (rounded up to a power of two, 8..=1024). Fails where the
    /// kernel has no io_uring or forbids it.
    pub fn new(entries: usize) -> io::Result<WriteBatch> {
        let entries = entries.clamp(8, 1024).next_power_of_two() as u32;
        let ring = IoUring::builder().setup_cqsize(entries * 2).build(entries)?;
        Ok(WriteBatch { ring, entries })
    }

    /// The most frames one [`WriteBatch::write`] takes.
    pub fn capacity(&self) -> usize {
        self.entries as usize
    }

    /// Writes each of `frames` (at most [`WriteBatch::capacity`]) to `fd` and waits for all of them; returns how
    /// many were written whole. An error means the kernel refused the submission itself (nothing was written, or
    /// the count is unknown).
    pub fn write<F: AsRef<[u8]>>(&mut self, fd: BorrowedFd<'_>, frames: &[F]) -> io::Result<usize> {
        let frames = &frames[..frames.len().min(self.entries as usize)];
        let raw = fd.as_raw_fd();
        {
            let mut sq = self.ring.submission();
            for (k, f) in frames.iter().enumerate() {
                let f = f.as_ref();
                let e = opcode::Write::new(types::Fd(raw), f.as_ptr(), f.len() as u32).build().user_data(k as u64);
                // SAFETY: the entry points into `frames`, borrowed for this call, and `fd`, open for it; this call
                // does not return before every submitted entry has completed and been reaped, and on an error the
                // ring (with any entry the kernel never read) is replaced before returning (see the module docs).
                // The queue is empty on entry and holds `entries` slots, so the push cannot fail.
                if unsafe { sq.push(&e) }.is_err() {
                    break;
                }
            }
        }
        let want = frames.len();
        let (mut reaped, mut whole) = (0usize, 0usize);
        while reaped < want {
            match self.ring.submit_and_wait(want - reaped) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    // Tear the ring down: it cannot be trusted to have consumed the queue.
                    self.ring = IoUring::builder().setup_cqsize(self.entries * 2).build(self.entries)?;
                    return Err(e);
                }
            }
            let mut cq = self.ring.completion();
            cq.sync();
            for c in &mut cq {
                reaped += 1;
                let len = frames.get(c.user_data() as usize).map_or(usize::MAX, |f| f.as_ref().len());
                if usize::try_from(c.result()).is_ok_and(|n| n == len) {
                    whole += 1;
                }
            }
        }
        Ok(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_writes_every_frame_in_one_call() {
        let Ok(mut w) = WriteBatch::new(16) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        assert_eq!(w.capacity(), 16);
        let (mut r, tx) = std::io::pipe().expect("pipe");
        let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 3]).collect();
        let n = w.write(tx.as_fd(), &frames).expect("write");
        assert_eq!(n, 16, "at most the capacity");
        drop(tx);
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), 48);
        let mut sorted = got.chunks(3).map(|c| c[0]).collect::<Vec<_>>();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..16).collect::<Vec<u8>>());
        // Again: nothing was left behind in the ring.
        let (_r2, tx2) = std::io::pipe().expect("pipe");
        assert_eq!(w.write(tx2.as_fd(), &frames[..4]).expect("write"), 4);
    }
}
