//! Streams read and written against a total deadline.
//!
//! A socket's read timeout bounds one `read`: a client that trickles a byte
//! just inside it keeps a connection (and its slot) forever. A
//! [`Deadline`] sets, before every read or write, the time left until one
//! deadline for the whole request, and fails with `TimedOut` once it has
//! passed. Times are wall-clock [`Instant`]s; the set-up cost is one
//! `setsockopt` per read or write (control traffic only).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A socket whose read and write timeouts can be set.
pub trait Timeouts {
    /// `SO_RCVTIMEO`.
    fn read_timeout(&self, d: Duration) -> io::Result<()>;
    /// `SO_SNDTIMEO`.
    fn write_timeout(&self, d: Duration) -> io::Result<()>;
}

impl Timeouts for UnixStream {
    fn read_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
    fn write_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

impl Timeouts for TcpStream {
    fn read_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
    fn write_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

/// `S`, read and written until one deadline.
#[derive(Debug)]
pub struct Deadline<S> {
    inner: S,
    until: Instant,
}

impl<S: Timeouts> Deadline<S> {
    /// `inner` with `budget` from now.
    pub fn new(inner: S, budget: Duration) -> Deadline<S> {
        Deadline { inner, until: Instant::now() + budget }
    }

    /// Starts a new budget from now (the next request).
    pub fn renew(&mut self, budget: Duration) {
        self.until = Instant::now() + budget;
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request deadline passed"));
        }
        Ok(left)
    }
}

/// A socket timeout (`EAGAIN`) is the deadline passing.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        return io::Error::new(io::ErrorKind::TimedOut, "request deadline passed");
    }
    e
}

impl<S: Timeouts + Read> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.read_timeout(left)?;
        self.inner.read(buf).map_err(timed_out)
    }
}

impl<S: Timeouts + Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.write_timeout(left)?;
        self.inner.write(buf).map_err(timed_out)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// Issue 12 item 10: a client trickling one byte at a time, each one
    /// well within a per-read timeout, is cut off at the total deadline.
    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                if theirs.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Per read, 200 ms would never expire: a byte comes every 50 ms.
        let start = Instant::now();
        let mut r = BufReader::new(Deadline::new(ours, Duration::from_millis(300)));
        let mut line = Vec::new();
        let err = r.read_until(b'\n', &mut line).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        drop(r);
        trickle.join().unwrap();
    }

    #[test]
    fn renewing_gives_the_next_request_its_own_budget() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut d = Deadline::new(ours, Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(150));
        theirs.write_all(b"a\n").unwrap();
        let mut b = [0u8; 2];
        assert_eq!(d.read(&mut b).unwrap_err().kind(), io::ErrorKind::TimedOut);
        d.renew(Duration::from_millis(100));
        assert_eq!(d.read(&mut b).unwrap(), 2);
    }
}
