//! System calls made by the I/O threads, counted by kind.
//!
//! Every worker (and the AF_PACKET reader) owns one [`IoCounters`] and is its
//! only writer: each count is a [`Counter`] (a relaxed load and store, no
//! locked instruction, no lock). Any thread reads them, e.g. to divide their
//! sum by the packets forwarded ([`IoCounters::total`]).
//!
//! Units: every count is a number of system calls, counted when the call
//! is made, whether it succeeds or not. One `io_uring_enter` may carry many
//! reads and writes; those count as `uring_enter` only.

use dataplane::counters::Counter;
use std::sync::atomic::{AtomicU8, Ordering};

/// Kinds of system call, in the order [`IoCounters::by_kind`] lists them.
pub const KINDS: [&str; 7] = ["read", "write", "epoll_wait", "io_uring_enter", "send", "recv", "wake"];

/// Which I/O path a thread runs (see [`crate::backend`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ActiveBackend {
    /// Not started yet, or not a worker.
    None = 0,
    /// `read`/`write` and `epoll_wait`.
    Syscalls = 1,
    /// One io_uring per worker.
    Uring = 2,
}

impl ActiveBackend {
    /// `"none"`, `"syscalls"` or `"uring"`.
    pub fn label(self) -> &'static str {
        match self {
            ActiveBackend::None => "none",
            ActiveBackend::Syscalls => "syscalls",
            ActiveBackend::Uring => "uring",
        }
    }
}

/// One thread's system calls. See the module docs.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// `read(2)` on a TAP or an eventfd.
    pub read: Counter,
    /// `write(2)` on a TAP.
    pub write: Counter,
    /// `epoll_wait(2)`.
    pub epoll_wait: Counter,
    /// `io_uring_enter(2)`.
    pub uring_enter: Counter,
    /// `send(2)`/`sendmmsg(2)` on an AF_PACKET socket.
    pub send: Counter,
    /// `recv(2)` on an AF_PACKET socket.
    pub recv: Counter,
    /// `write(2)` on another worker's eventfd, to wake it.
    pub wake: Counter,
    backend: AtomicU8,
}

impl IoCounters {
    /// Counts, in [`KINDS`] order.
    pub fn by_kind(&self) -> [u64; 7] {
        [
            self.read.get(),
            self.write.get(),
            self.epoll_wait.get(),
            self.uring_enter.get(),
            self.send.get(),
            self.recv.get(),
            self.wake.get(),
        ]
    }

    /// All system calls so far.
    pub fn total(&self) -> u64 {
        self.by_kind().iter().sum()
    }

    /// The I/O path this thread runs.
    pub fn backend(&self) -> ActiveBackend {
        match self.backend.load(Ordering::Relaxed) {
            1 => ActiveBackend::Syscalls,
            2 => ActiveBackend::Uring,
            _ => ActiveBackend::None,
        }
    }

    /// Records the I/O path this thread runs (its owner only).
    pub fn set_backend(&self, b: ActiveBackend) {
        self.backend.store(b as u8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_totals_line_up() {
        let c = IoCounters::default();
        c.read.add(3);
        c.uring_enter.inc();
        c.wake.add(2);
        assert_eq!(c.by_kind(), [3, 0, 0, 1, 0, 0, 2]);
        assert_eq!(c.total(), 6);
        assert_eq!(c.backend(), ActiveBackend::None);
        c.set_backend(ActiveBackend::Uring);
        assert_eq!(c.backend().label(), "uring");
    }
}
