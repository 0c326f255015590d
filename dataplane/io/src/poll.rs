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

use rustix::event::{epoll, eventfd, EventfdFlags, PollFd, PollFlags, Timespec};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

/// A level-triggered epoll instance.
#[derive(Debug)]
pub struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Poller> {
        Ok(Poller { epfd: epoll::create(epoll::CreateFlags::CLOEXEC)? })
    }

    /// Watches `fd` for readability (level-triggered); `token` comes back in
    /// [`Events::tokens`].
    pub fn add(&self, fd: impl AsFd, token: u64) -> io::Result<()> {
        Ok(epoll::add(&self.epfd, fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN)?)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        Ok(epoll::delete(&self.epfd, fd)?)
    }

    /// Waits until a watched descriptor is readable or `timeout` passes
    /// (`None`: forever; rounded up to whole milliseconds). Returns how many
    /// events are in `events` (0 on timeout or when a signal interrupted the
    /// wait).
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        let timeout = timeout.map(round_up_to_ms);
        events.len = 0;
        match epoll::wait(&self.epfd, &mut events.buf[..], timeout.as_ref()) {
            Ok(n) => {
                events.len = n;
                Ok(n)
            }
            Err(rustix::io::Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// `t` rounded up to whole milliseconds (as `epoll_wait` counts), so a
/// sub-millisecond wait still waits.
fn round_up_to_ms(t: Duration) -> Timespec {
    let ms = t.as_nanos().div_ceil(1_000_000);
    let ms = i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000).min(i64::from(i32::MAX));
    Timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 }
}

/// Waits up to `timeout` for `fd` to be readable (for a listener: to have a
/// connection waiting). `Ok(false)` on timeout or when a signal interrupted
/// the wait.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> io::Result<bool> {
    match rustix::event::poll(&mut [PollFd::new(&fd, PollFlags::IN)], Some(&round_up_to_ms(timeout))) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

/// Room for the events of one [`Poller::wait`].
pub struct Events {
    buf: Vec<epoll::Event>,
    len: usize,
}

impl Events {
    /// Room for `capacity` events per wait (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        let empty = epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
        Events { buf: vec![empty; capacity.max(1)], len: 0 }
    }

    /// Events one wait can return.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Events the last wait returned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait returned none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokens of the descriptors that are ready.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.buf[..self.len].iter().map(|e| e.data.u64())
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("capacity", &self.capacity()).field("len", &self.len).finish()
    }
}

/// An eventfd that wakes a [`Poller`] from another thread.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker { fd: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)? })
    }

    /// Makes the eventfd readable (a full counter is already readable, so
    /// `EAGAIN` is not an error).
    pub fn wake(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Clears it; whether it had been woken.
    pub fn reset(&self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        match rustix::io::read(&self.fd, &mut count) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
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
