//! Which I/O path the workers run, and the fallback between them.
//!
//! - [`Backend::Uring`]: one io_uring per worker ([`crate::uring`]): reads
//!   kept posted on every TAP queue and on the worker's eventfd,
//!   transmissions queued while a wake-up is processed, and one
//!   `io_uring_enter` per loop iteration that submits them and waits.
//! - [`Backend::Syscalls`]: the portable path: `epoll_wait`, then
//!   non-blocking `read(2)`/`write(2)`, one call per frame.
//! - [`Backend::Auto`] (the default): io_uring when a ring with the needed
//!   features can be set up, otherwise the syscalls path; the reason is
//!   logged once per process.
//!
//! [`resolve`] is the one place that decides; it is given the probe so a
//! failure can be injected in tests.
//!
//! Units: [`IoSettings::busy_poll`] is a duration, at most
//! [`MAX_BUSY_POLL`]; [`WorkerCpus`] holds CPU numbers as the kernel counts
//! them (`sched_setaffinity`), below [`WorkerCpus::MAX`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest busy-poll accepted.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

/// The requested I/O path.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when it can be set up, otherwise syscalls.
    #[default]
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// `read`/`write` and `epoll`.
    Syscalls,
}

/// How the workers do their I/O.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IoSettings {
    /// The requested path.
    pub backend: Backend,
    /// How long a worker with nothing to do keeps polling (without
    /// sleeping) before it blocks; zero: block at once. At most
    /// [`MAX_BUSY_POLL`] (longer values are clamped).
    pub busy_poll: Duration,
    /// The CPUs the workers are pinned to; none: the scheduler places them.
    pub cpus: WorkerCpus,
}

impl IoSettings {
    /// The busy-poll time, clamped to [`MAX_BUSY_POLL`].
    pub fn busy_poll(&self) -> Duration {
        self.busy_poll.min(MAX_BUSY_POLL)
    }
}

/// The CPUs the workers run on: worker `i` is pinned to the `i mod n`-th
/// of the `n` CPUs held, in ascending order (so with as many CPUs as
/// workers each has its own). Empty (the default): no worker is pinned.
/// A set of CPU numbers below [`WorkerCpus::MAX`], `Copy` as the rest of
/// [`IoSettings`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCpus {
    bits: [u64; WorkerCpus::MAX / 64],
}

impl WorkerCpus {
    /// One more than the highest CPU number held (the kernel's default
    /// `cpu_set_t` size).
    pub const MAX: usize = 1024;

    /// The set of `cpus` (repeats count once); `None` if one is
    /// [`WorkerCpus::MAX`] or more.
    pub fn new(cpus: &[usize]) -> Option<WorkerCpus> {
        let mut set = WorkerCpus::default();
        for &c in cpus {
            if c >= WorkerCpus::MAX {
                return None;
            }
            set.bits[c / 64] |= 1 << (c % 64);
        }
        Some(set)
    }

    /// The CPUs held, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..WorkerCpus::MAX).filter(|&c| self.bits[c / 64] & (1 << (c % 64)) != 0)
    }

    /// No CPU held: workers are not pinned.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&b| b == 0)
    }

    /// The CPU worker `i` is pinned to; `None` when the set is empty.
    pub fn for_worker(&self, i: usize) -> Option<usize> {
        let n = self.iter().count();
        (n > 0).then(|| self.iter().nth(i % n)).flatten()
    }
}

/// The path to run: [`Backend::Uring`] or [`Backend::Syscalls`] (never
/// `Auto`). `probe` tries to set up io_uring; with `Auto`, its failure
/// selects syscalls (logged once per process), with `Uring` it is the
/// error returned.
pub fn resolve(requested: Backend, probe: impl FnOnce() -> io::Result<()>) -> io::Result<Backend> {
    match requested {
        Backend::Syscalls => Ok(Backend::Syscalls),
        Backend::Uring => {
            probe().map(|()| Backend::Uring).map_err(|e| io::Error::new(e.kind(), format!("io_uring: {e}")))
        }
        Backend::Auto => match probe() {
            Ok(()) => Ok(Backend::Uring),
            Err(e) => {
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "io_uring unavailable, workers use read/write and epoll");
                }
                Ok(Backend::Syscalls)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    #[test]
    fn auto_falls_back_to_syscalls_when_the_probe_fails() {
        assert_eq!(resolve(Backend::Auto, unavailable).unwrap(), Backend::Syscalls);
        assert_eq!(resolve(Backend::Auto, || Ok(())).unwrap(), Backend::Uring);
    }

    #[test]
    fn uring_requested_fails_with_the_reason() {
        let e = resolve(Backend::Uring, unavailable).unwrap_err();
        assert!(e.to_string().starts_with("io_uring: "), "{e}");
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(resolve(Backend::Uring, || Ok(())).unwrap(), Backend::Uring);
    }

    #[test]
    fn syscalls_requested_never_probes() {
        let r = resolve(Backend::Syscalls, || panic!("probed"));
        assert_eq!(r.unwrap(), Backend::Syscalls);
    }

    #[test]
    fn workers_take_the_cpus_in_turn() {
        let set = WorkerCpus::new(&[5, 1, 3, 1]).unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), [1, 3, 5]);
        let cpus: Vec<_> = (0..5).map(|i| set.for_worker(i)).collect();
        assert_eq!(cpus, [Some(1), Some(3), Some(5), Some(1), Some(3)]);
        assert_eq!(WorkerCpus::default().for_worker(0), None);
        assert!(WorkerCpus::default().is_empty() && !set.is_empty());
        assert_eq!(WorkerCpus::new(&[WorkerCpus::MAX - 1]).unwrap().for_worker(7), Some(1023));
        assert_eq!(WorkerCpus::new(&[2, WorkerCpus::MAX]), None);
    }

    #[test]
    fn busy_poll_is_clamped() {
        let s = IoSettings { busy_poll: Duration::from_secs(5), ..IoSettings::default() };
        assert_eq!(s.busy_poll(), MAX_BUSY_POLL);
    }
}
