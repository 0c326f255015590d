//! Readiness polling (epoll) and a cross-thread waker (eventfd).
//!
//! A worker registers its descriptors (TAP queues, sockets, a [`Waker`]) with
//! a [`Poller`] under caller-chosen `u64` tokens and blocks in
//! [`Poller::wait`]; readiness is level-triggered `EPOLLIN`, so a descriptor
//! stays ready until it has been read until `WouldBlock`, and a worker that
//! reads only a batch per wakeup is woken again. `EPOLLERR`/`EPOLLHUP` are
//! reported under the same token (the following read shows the error).
//!
//! [`Poller::wait`] does not retry on `EINTR`: a signal makes it return
//! `Ok(0)`, so the caller gets a chance to check its stop flag. Another
//! thread stops a worker by setting that flag and calling [`Waker::wake`].
//!
//! Units: timeouts are [`Duration`]s, rounded *up* to whole milliseconds (so
//! a 100 µs timeout sleeps 1 ms rather than spinning); `None` waits forever.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An epoll instance. Close-on-exec; closed on drop.
#[derive(Debug)]
pub struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    /// Creates an epoll instance (`epoll_create1(EPOLL_CLOEXEC)`).
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is
        // checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by
        // nobody else.
        Ok(Poller { epfd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Registers `fd` for level-triggered `EPOLLIN` under `token`.
    ///
    /// The registration lasts until [`Poller::delete`] or until every
    /// descriptor referring to the open file is closed; registering the same
    /// descriptor twice fails with `EEXIST`.
    pub fn add(&self, fd: impl AsFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_fd(), &mut ev)
    }

    /// Removes `fd` from the interest list.
    pub fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_fd(), &mut ev)
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, ev: &mut libc::epoll_event) -> io::Result<()> {
        // SAFETY: `ev` is a valid, exclusively borrowed epoll_event that
        // outlives the call; both descriptors are open (borrowed/owned).
        let rc = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd.as_raw_fd(), ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until at least one registered descriptor is ready or `timeout`
    /// passes, filling `events` (up to its capacity) and returning how many
    /// are ready: 0 on timeout and on `EINTR` (not retried, see the module
    /// docs).
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        events.len = 0;
        let cap = libc::c_int::try_from(events.buf.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events.buf` is valid for writes of `cap` (≤ its length)
        // epoll_events for the duration of the call.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), events.buf.as_mut_ptr(), cap, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        events.len = n as usize;
        Ok(events.len)
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

/// A reusable buffer for the results of [`Poller::wait`], of fixed capacity
/// (at least 1). Holds the events of the last wait only.
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    /// A buffer for up to `capacity` events per wait (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        Events { buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)], len: 0 }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// How many events the last wait returned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait returned no events.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokens of the ready descriptors from the last wait.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        // Copy out of the (on x86-64 packed) struct; never take a reference.
        self.buf[..self.len].iter().map(|e| e.u64)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("capacity", &self.capacity()).field("len", &self.len).finish()
    }
}

/// An eventfd another thread can signal to wake a [`Poller::wait`].
///
/// Register it with [`Poller::add`] under its own token; when that token is
/// reported, call [`Waker::reset`] (the eventfd is level-triggered: it stays
/// readable until reset). Non-blocking and close-on-exec.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// Creates the eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`, counter 0).
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody
        // else.
        Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Makes the eventfd readable. Never blocks; waking an already woken
    /// waker is a no-op (a saturated counter's `EAGAIN` is ignored).
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: `one` is valid for reads of 8 bytes for the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Drains the counter so the eventfd is no longer readable. Returns
    /// whether it had been woken.
    pub fn reset(&self) -> io::Result<bool> {
        let mut count: u64 = 0;
        // SAFETY: `count` is valid for writes of 8 bytes for the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(true)
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn timeout_returns_zero() {
        let p = Poller::new().expect("epoll");
        let w = Waker::new().expect("eventfd");
        p.add(&w, 7).expect("add");
        let mut ev = Events::with_capacity(4);
        let t0 = Instant::now();
        assert_eq!(p.wait(&mut ev, Some(Duration::from_millis(10))).expect("wait"), 0);
        assert!(t0.elapsed() >= Duration::from_millis(9));
        assert!(ev.is_empty());
        assert_eq!(ev.tokens().count(), 0);
    }

    #[test]
    fn waker_wakes_blocked_wait() {
        let p = Poller::new().expect("epoll");
        let w = Arc::new(Waker::new().expect("eventfd"));
        p.add(&*w, 42).expect("add");
        let w2 = Arc::clone(&w);
        let t0 = Instant::now();
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.wake().expect("wake");
        });
        let mut ev = Events::with_capacity(4);
        let n = p.wait(&mut ev, Some(Duration::from_secs(5))).expect("wait");
        assert!(t0.elapsed() < Duration::from_secs(1), "woken late: {:?}", t0.elapsed());
        assert_eq!(n, 1);
        assert_eq!(ev.tokens().collect::<Vec<_>>(), vec![42]);
        th.join().expect("thread");
        // Level-triggered: still ready until reset.
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).expect("wait"), 1);
        assert!(w.reset().expect("reset"));
        assert!(!w.reset().expect("reset"));
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).expect("wait"), 0);
    }

    #[test]
    fn repeated_wakes_and_delete() {
        let p = Poller::new().expect("epoll");
        let w = Waker::new().expect("eventfd");
        p.add(&w, 1).expect("add");
        assert!(p.add(&w, 1).is_err(), "double add is EEXIST");
        for _ in 0..3 {
            w.wake().expect("wake");
        }
        let mut ev = Events::with_capacity(0);
        assert_eq!(ev.capacity(), 1);
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).expect("wait"), 1);
        p.delete(&w).expect("delete");
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).expect("wait"), 0);
    }
}
